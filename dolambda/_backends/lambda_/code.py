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
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import sys
import time
from collections.abc import AsyncIterator

from dolambda._aws.s3 import S3
from dolambda._backends.base import JobContext
from dolambda._code.archive import CodeArchive, build_archive, seal_archive
from dolambda._code.finder import CodeNeeds, ForceItem, find_code, pickled_modules
from dolambda._core.tasks import PlannedTask
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


def job_archive(job: JobContext, sample: PlannedTask | None) -> CodeArchive | None:
    """The archive of the job's local modules (None when it needs none); raises
    SerializationError (what cannot ship) or InvalidArgument (a bad ``export``)."""
    needs = job_needs(job, sample)
    return build_archive(needs.local) if needs.local else None


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
