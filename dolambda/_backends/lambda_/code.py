"""The user's own code goes up with a job: the client side of :mod:`dolambda._code`.

Before anything of a job is uploaded, :func:`job_archive` finds the modules the job
needs from the pickled body and a sample of its first task's arguments (the finder
walks every opcode, so not every task), adds the loop's ``.export(...)`` and drops
its ``.noexport(...)``, and zips the local ones into one content-addressed archive;
what cannot ship (a compiled extension, an unreadable source, an archive too big)
raises SerializationError here, naming the module. :func:`upload_archive` then PUTs
it to ``<prefix>/code/<sha256>.zip`` with ``If-None-Match: *`` (one request; a 412
means it is there already) unless the backend remembers that digest, and the
digest goes in the job's manifest: the workers install it before they unpickle the
body (:func:`dolambda._core.execute.install_code`).

The installed distributions the job imports are checked against what the function's
package holds (:func:`check_function_distributions`), before dispatch. That record is
written by ``dolambda deploy`` in two places, read in this order:

1. ``<prefix>/deploy/<function>.package.json`` in the bucket (:func:`~dolambda._wire.
   keys.package_record_key`; the emulator writes it too). The bucket is the one truth
   every client shares: whichever machine deployed last wrote it. The client reads it
   only for a job that imports an installed distribution, and trusts it for
   :data:`RECORD_TRUST_SECONDS`. The prefix's lifecycle rule expires it with the
   rest, hence:
2. ``packages.json`` next to the client config (:func:`records_path`), keyed by the
   endpoint or region and the function, for the deploys made from this machine.

With neither (a function deployed by an older dolambda) the check is skipped.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import sys
import time
import warnings
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from dolambda._aws.s3 import S3
from dolambda._backends.base import JobContext
from dolambda._code.archive import CodeArchive, build_archive, seal_archive
from dolambda._code.distributions import FunctionPackage, check_distributions
from dolambda._code.finder import CodeNeeds, ForceItem, find_code, pickled_modules
from dolambda._config import config_dir
from dolambda._core.tasks import PlannedTask
from dolambda._errors import StorageError
from dolambda._wire import codec
from dolambda._wire import keys as _keys

SAMPLE_ROWS = 8  # argument rows of the first task scanned for the modules they need
# how long a backend trusts that a digest it uploaded (or found) is still in the bucket:
# deploy's lifecycle rule expires everything under the prefix after some days
TRUST_SECONDS = 3600.0


def job_needs(job: JobContext, sample: PlannedTask | None) -> CodeNeeds:
    """What the job needs beyond its pickles; editable installs of the user's own
    projects ship as local code (the function's package rarely holds them)."""
    pickles = [job.body_bytes]
    if sample is not None:
        # an argument that cannot pickle: the dispatch reports it, naming the variable
        with contextlib.suppress(Exception):
            pickles.append(codec.dumps(sample.rows[:SAMPLE_ROWS]))
    force: list[ForceItem] = list(job.export)
    if not force and not any(_may_need_code(blob) for blob in pickles):
        # nothing to ship, and no distribution metadata to read (~1 s the first time)
        return CodeNeeds(local=(), distributions=(), stdlib=(), missing=(), excluded=())
    needs = find_code(pickles=pickles, force=force, exclude=job.noexport)
    editable = [
        name
        for dist in needs.distributions
        if _is_editable(dist.name)
        for name in dist.imports
        if name not in job.noexport
    ]
    if editable:
        needs = find_code(pickles=pickles, force=[*force, *editable], exclude=job.noexport)
    return needs


def job_code(job: JobContext, sample: PlannedTask | None) -> tuple[CodeNeeds, CodeArchive | None]:
    """What the job needs, and the archive of its local modules (None when it needs
    none); raises SerializationError (what cannot ship) or InvalidArgument (a bad
    ``export``)."""
    needs = job_needs(job, sample)
    return needs, (build_archive(needs.local) if needs.local else None)


RECORD_TRUST_SECONDS = 60.0  # a redeploy reaches a running client within this
_warned: set[str] = set()  # version warnings given in this process


def records_path() -> Path:
    """``packages.json`` next to the client config: the package records of the
    functions deployed from this machine."""
    return config_dir() / "packages.json"


def record_id(function_name: str, region: str | None, endpoint_url: str | None) -> str:
    """The key of one function in :func:`records_path`."""
    return f"{endpoint_url or 'aws:' + (region or '')}/{function_name}"


def save_local_record(record: Mapping[str, Any], ident: str) -> Path:
    """Store ``record`` for the function ``ident`` (:func:`record_id`) in :func:`records_path`."""
    path = records_path()
    records = _read_records(path)
    records[ident] = dict(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.part")
    partial.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)
    return path


def remove_local_record(ident: str) -> bool:
    """Drop the function ``ident``'s entry from :func:`records_path` (destroy); True if
    there was one."""
    path = records_path()
    records = _read_records(path)
    if records.pop(ident, None) is None:
        return False
    partial = path.with_suffix(f".{os.getpid()}.part")
    partial.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)
    return True


def load_local_record(ident: str) -> dict[str, Any] | None:
    record = _read_records(records_path()).get(ident)
    return record if isinstance(record, dict) else None


def _read_records(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


async def function_package(
    s3: S3,
    prefix: str,
    function_name: str,
    ident: str,
    cache: dict[str, tuple[float, FunctionPackage | None]],
) -> FunctionPackage | None:
    """The function's package record: the bucket's copy, else this machine's; None
    when neither exists. Cached in ``cache`` for :data:`RECORD_TRUST_SECONDS`."""
    held = cache.get(ident)
    if held is not None and time.monotonic() - held[0] < RECORD_TRUST_SECONDS:
        return held[1]
    key = _keys.package_record_key(prefix, function_name)
    found: FunctionPackage | None = None
    try:
        blob = await s3.get(key)
    except StorageError:  # not readable with these credentials: the local copy may do
        blob = None
    if blob is not None:
        with contextlib.suppress(ValueError, AttributeError):
            found = FunctionPackage.from_record(
                json.loads(blob), function_name, f"s3://{s3.bucket}/{key}"
            )
    if found is None:
        local = load_local_record(ident)
        if local is not None:
            found = FunctionPackage.from_record(local, function_name, str(records_path()))
    cache[ident] = (time.monotonic(), found)
    return found


async def check_function_distributions(
    s3: S3,
    needs: CodeNeeds,
    *,
    prefix: str,
    function_name: str,
    ident: str,
    cache: dict[str, tuple[float, FunctionPackage | None]],
    seeded: bool = False,
) -> None:
    """ConfigError when the function lacks a distribution the job imports; a warning
    (once per process and versions) when a data-carrying one differs in version."""
    if not needs.distributions and not seeded:
        return
    function = await function_package(s3, prefix, function_name, ident, cache)
    if function is None:
        return
    for message in check_distributions(needs, function, seeded=seeded):
        if message not in _warned:
            _warned.add(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)


async def upload_archive(
    s3: S3, prefix: str, archive: CodeArchive, *, key: bytes, known: dict[str, float]
) -> None:
    """Make sure the archive is in the bucket: ``known`` maps the digests this backend
    put or found there to when (``time.monotonic()``)."""
    seen = known.get(archive.digest)
    if seen is not None and time.monotonic() - seen < TRUST_SECONDS:
        return
    await s3.put_if_absent(_keys.code_key(prefix, archive.digest), seal_archive(archive, key=key))
    known[archive.digest] = time.monotonic()


# what every function has: no shipping, no distribution to check
_ALWAYS_THERE = frozenset({"__main__", "__mp_main__", "builtins", "dolambda", "dill"})


def _may_need_code(blob: bytes) -> bool:
    """Whether a pickle refers to any module beyond the standard library, dill and
    dolambda (most bodies defined in ``__main__`` or a notebook do not)."""
    for module in pickled_modules(blob):
        top = module.partition(".")[0]
        if top not in _ALWAYS_THERE and top not in sys.stdlib_module_names:
            return True
    return False


def _is_editable(dist: str) -> bool:
    """Whether ``dist`` is an editable install (PEP 660: ``direct_url.json`` says
    ``dir_info.editable``), i.e. a project's source tree on this machine."""
    try:
        text = importlib.metadata.distribution(dist).read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return False
    if not text:
        return False
    try:
        info = json.loads(text).get("dir_info", {})
    except (ValueError, AttributeError):
        return False
    return isinstance(info, dict) and bool(info.get("editable"))


async def peek(
    tasks: AsyncIterator[PlannedTask],
) -> tuple[PlannedTask | None, AsyncIterator[PlannedTask]]:
    """The first task (planned now) and an iterator that yields it, then the rest."""
    first = await anext(tasks, None)

    async def chained() -> AsyncIterator[PlannedTask]:
        try:
            if first is not None:
                yield first
            async for task in tasks:
                yield task
        finally:
            close = getattr(tasks, "aclose", None)
            if close is not None:
                await close()

    return first, chained()
