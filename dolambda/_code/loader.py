"""The worker side of code shipping: put a job's source archive on ``sys.path``.

:func:`install` verifies the archive's sha256, extracts it atomically into
``<cache_dir>/<digest>/`` (or reuses that directory: warm workers, concurrent
invocations sharing a ``/tmp``), and puts it first on ``sys.path``. When another
digest of the same top-level modules was active, its directory leaves ``sys.path``
and those modules (and their submodules) leave ``sys.modules``, so the next
unpickling imports the new source: a warm worker never runs stale code. Installing
the digest that is already active does no filesystem work at all.

:func:`retain` takes every archive a job does not list off ``sys.path`` (and its
modules out of ``sys.modules``): on a warm worker, a module that job A shipped is not
importable by job B unless B ships it too, as it would not be on a fresh worker.

The Lambda worker imports this module, so it uses the standard library only (the
signature is checked by the caller, with the codec, before the bytes get here).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import re
import shutil
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterable
from pathlib import Path

from dolambda._errors import InvalidArgument, SignatureError

DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "dolambda-code"
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")

_lock = threading.Lock()
_dirs: dict[str, str] = {}  # digest -> its directory, as put on sys.path
_names: dict[str, frozenset[str]] = {}  # digest -> the top-level names it holds
_owner: dict[str, str] = {}  # top-level name -> the digest it was last imported from


def install(
    archive: bytes | str | os.PathLike[str],
    digest: str,
    cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
) -> Path:
    """Make the modules in ``archive`` (zip bytes or a path to them) importable and
    return their directory. Raises SignatureError when the bytes do not hash to
    ``digest``. ``archive`` is not read when ``digest`` is already extracted."""
    _check_digest(digest)
    with _lock:
        if _is_active(digest):
            return Path(_dirs[digest])
        target = Path(cache_dir) / digest
        if not target.is_dir():
            data = archive if isinstance(archive, bytes) else Path(archive).read_bytes()
            _extract(data, digest, target)
        _activate(digest, target)
        return target


def activate(digest: str, cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR) -> bool:
    """Put an already extracted digest first on ``sys.path`` without its archive;
    False when it is not in ``cache_dir`` (then fetch it and :func:`install` it)."""
    _check_digest(digest)
    with _lock:
        if _is_active(digest):
            return True
        target = Path(cache_dir) / digest
        if not target.is_dir():
            return False
        _activate(digest, target)
        return True


def retain(digests: Iterable[str]) -> list[str]:
    """Deactivate every active archive not in ``digests``: its directory leaves
    ``sys.path`` and its modules leave ``sys.modules`` (the extracted directory stays
    cached, for :func:`activate`). Returns the digests deactivated."""
    keep = set(digests)
    with _lock:
        gone = sorted(d for d in _dirs if d not in keep)
        names: set[str] = set()
        for digest in gone:
            where = _dirs.pop(digest)
            while where in sys.path:
                sys.path.remove(where)
            sys.path_importer_cache.pop(where, None)
            for name in _names.get(digest, frozenset()):
                if _owner.get(name) == digest:
                    del _owner[name]
                    names.add(name)
        if names:
            _forget_modules(names)
        return gone


def _forget_modules(tops: set[str]) -> None:
    for module in list(sys.modules):
        if module.partition(".")[0] in tops:
            del sys.modules[module]
    importlib.invalidate_caches()


def installed() -> dict[str, str]:
    """Each shipped top-level name and the digest it is currently imported from."""
    with _lock:
        return dict(_owner)


def _check_digest(digest: str) -> None:
    if not _DIGEST_RE.match(digest):
        raise InvalidArgument(f"{digest!r} is not a sha256 digest (64 lowercase hex digits)")


def _is_active(digest: str) -> bool:
    """Cheap: no filesystem access."""
    where = _dirs.get(digest)
    return (
        where is not None
        and all(_owner.get(name) == digest for name in _names[digest])
        and bool(sys.path)
        and where in sys.path
    )


def _extract(data: bytes, digest: str, target: Path) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise SignatureError(
            f"the code archive {digest} hashes to {actual}: it was altered or truncated; "
            "nothing from it was installed"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}-", dir=target.parent))
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for name in zf.namelist():
                parts = Path(name).parts
                if name.startswith("/") or ".." in parts or not parts:
                    raise SignatureError(f"the code archive {digest} holds a bad path {name!r}")
            zf.extractall(staging)
        try:
            staging.rename(target)  # atomic: a directory named by its digest is complete
        except OSError:
            if not target.is_dir():  # anything but "another invocation was first"
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _top_names(target: Path) -> frozenset[str]:
    names = set()
    for entry in target.iterdir():
        if entry.is_dir() and entry.name.isidentifier():
            names.add(entry.name)
        elif entry.suffix == ".py" and entry.stem.isidentifier():
            names.add(entry.stem)
    return frozenset(names)


def _activate(digest: str, target: Path) -> None:
    where = str(target)
    names = _names.get(digest)
    if names is None:
        names = _names[digest] = _top_names(target)
    _dirs[digest] = where
    stale = {d for d, held in _names.items() if d != digest and held & names}
    for path in [_dirs[d] for d in stale if d in _dirs] + [where]:
        while path in sys.path:
            sys.path.remove(path)
        sys.path_importer_cache.pop(path, None)
    sys.path.insert(0, where)
    changed = {name for name in names if _owner.get(name) != digest}
    if changed:
        _forget_modules(changed)
    for name in names:
        _owner[name] = digest
