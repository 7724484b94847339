"""One deterministic, content-addressed source archive of a job's local modules.

The archive is a zip of the local modules' *source* (``.py`` files and the
non-Python data files inside a package; never ``__pycache__``, ``.pyc`` or dot
files), each stored under its import name (``mysim.py``, ``mypkg/__init__.py``,
``mypkg/sub/core.py``), so that the extracted directory on ``sys.path`` makes
``import mysim`` work. Entries are sorted and stored (not deflated) with a fixed
timestamp and fixed permissions, so the same sources always give the same bytes;
the archive's sha256 is its address (:func:`code_key`) and any edited file gives a
new one. It is signed like the body, for the context :func:`code_context`; the
codec's seal compresses it on the wire.

What cannot ship is refused here, before anything is uploaded, with an error that
names the module and what to do: a package holding compiled extensions, a module
whose source cannot be read, an archive over the size limit.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import io
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dolambda._errors import SerializationError
from dolambda._wire import codec
from dolambda._wire import keys as _keys

if TYPE_CHECKING:  # the Lambda worker imports this module for unseal_archive: no finder
    from dolambda._code.finder import LocalModule

DEFAULT_SIZE_LIMIT = 50 * 1024 * 1024  # bytes of source; Lambda's /tmp holds 512 MB
COMPILED_SUFFIXES = tuple(
    sorted({".so", ".pyd", ".dylib", *importlib.machinery.EXTENSION_SUFFIXES})
)
_BYTECODE_SUFFIXES = (".pyc", ".pyo")
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can store
_FILE_MODE = 0o100644 << 16  # a regular file, rw-r--r--
_UNIX = 3
_INSTALL = "build it into the function instead: `dolambda deploy --requirements ...`"


@dataclass(frozen=True)
class CodeArchive:
    """A built archive: its bytes, its address and what it holds."""

    data: bytes  # the zip
    digest: str  # sha256 of ``data``, hex
    modules: tuple[str, ...]  # top-level import names, sorted
    files: tuple[str, ...]  # entry names, sorted
    size: int  # bytes of source inside (uncompressed)


def code_key(prefix: str, digest: str) -> str:
    """The S3 key of the archive with ``digest``: ``<prefix>/code/<digest>.zip``."""
    return _keys.code_key(prefix, digest)


def code_context(digest: str) -> str:
    """The HMAC context the archive with ``digest`` is sealed for."""
    return f"code/{digest}"


def seal_archive(archive: CodeArchive, *, key: bytes) -> bytes:
    """The archive signed for upload (compressed by the codec when large)."""
    return codec.seal(archive.data, key=key, context=code_context(archive.digest))


def unseal_archive(blob: bytes, digest: str, *, key: bytes) -> bytes:
    """Verify a downloaded archive's signature and return the zip bytes (the loader
    checks the sha256)."""
    return codec.unseal(blob, key=key, context=code_context(digest))


def archive_entries(module: LocalModule) -> Iterator[tuple[str, Path]]:
    """The entry names and source files of one local module, or raise
    SerializationError when it cannot ship."""
    if module.problem:
        raise SerializationError(
            f"the module {module.name!r} ({module.path}) cannot travel with the job: "
            f"{module.problem}. dolambda ships Python source only; make its .py source "
            f"importable, or {_INSTALL}"
        )
    if not module.is_package:
        if module.path.suffix != ".py" or not module.path.is_file():
            raise SerializationError(
                f"the module {module.name!r} cannot travel with the job: {module.path} is "
                f"not a readable .py source file; {_INSTALL}"
            )
        yield f"{module.name}.py", module.path
        return
    if not module.path.is_dir():
        raise SerializationError(
            f"the package {module.name!r} cannot travel with the job: {module.path} is "
            "not a directory"
        )
    for file in sorted(module.path.rglob("*")):
        rel = file.relative_to(module.path)
        if any(part == "__pycache__" or part.startswith(".") for part in rel.parts):
            continue
        if not file.is_file():
            continue
        if file.name.endswith(COMPILED_SUFFIXES):
            raise SerializationError(
                f"the local package {module.name!r} contains a compiled extension, {file}; "
                "dolambda ships Python source only, and the function cannot load an "
                f"extension built for this machine. Make the package installable and {_INSTALL}"
            )
        if file.suffix in _BYTECODE_SUFFIXES:
            if not file.with_suffix(".py").is_file():
                raise SerializationError(
                    f"the local package {module.name!r} holds {file}, compiled bytecode "
                    f"with no .py source next to it; dolambda ships source only. Restore "
                    f"the source, or {_INSTALL}"
                )
            continue
        yield f"{module.name}/{rel.as_posix()}", file


def build_archive(
    modules: Iterable[LocalModule], *, size_limit: int = DEFAULT_SIZE_LIMIT
) -> CodeArchive:
    """Zip the sources of ``modules`` (as :func:`dolambda._code.finder.find_code`
    returns them in ``CodeNeeds.local``), or raise SerializationError."""
    chosen = sorted(modules, key=lambda m: m.name)
    entries: list[tuple[str, Path]] = []
    for module in chosen:
        entries.extend(archive_entries(module))
    entries.sort()
    sizes = [(file.stat().st_size, name) for name, file in entries]
    total = sum(size for size, _ in sizes)
    if total > size_limit:
        largest = ", ".join(f"{name} ({_mb(size)})" for size, name in sorted(sizes)[::-1][:5])
        raise SerializationError(
            f"the code that travels with the job ({', '.join(m.name for m in chosen)}) "
            f"holds {_mb(total)} of files, over the {_mb(size_limit)} limit; the largest: "
            f"{largest}. Keep large data out of the package (put it in S3), or {_INSTALL}"
        )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, file in entries:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = _FILE_MODE
            info.create_system = _UNIX
            info.compress_type = zipfile.ZIP_STORED
            zf.writestr(info, file.read_bytes())
    data = buffer.getvalue()
    return CodeArchive(
        data=data,
        digest=hashlib.sha256(data).hexdigest(),
        modules=tuple(m.name for m in chosen),
        files=tuple(name for name, _ in entries),
        size=total,
    )


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB" if size >= 100 * 1024 else f"{size} bytes"
