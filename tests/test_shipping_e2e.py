"""The user's own modules travel with a Lambda job, end to end: HTTP to the session's
moto server, the function's package in the emulator's isolated Lambda environments.

Each test writes its package to ``tmp_path`` and puts that directory on this
process's ``sys.path`` at run time; the emulator's workers cannot import it (they are
isolated interpreters running the function's package), so only shipping makes the body
load.
Package names are unique per test: the workers are shared by the whole session.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from dolambda import LambdaBackend, StorageError, TaskError, foreach
from dolambda._code.archive import build_archive
from dolambda._code.finder import find_code
from dolambda._errors import InvalidArgument, InvalidArgumentType, SerializationError
from dolambda.emulator import Emulator


@pytest.fixture
def src(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A source directory on this process's ``sys.path`` (only); the modules imported
    from it leave ``sys.modules`` afterwards."""
    root = tmp_path / "src"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    try:
        yield root
    finally:
        for name, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", None) or "").startswith(str(root)):
                del sys.modules[name]
        importlib.invalidate_caches()


@pytest.fixture
def backend(lambda_emulator: Emulator) -> LambdaBackend:
    """A new backend (no memory of uploaded code) on the session's emulator."""
    return LambdaBackend(**lambda_emulator.backend_settings())


def unique(stem: str) -> str:
    return f"{stem}_{uuid.uuid4().hex[:8]}"


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def write_package(root: Path, name: str) -> None:
    """A package with a subpackage and relative imports (also one inside a function)."""
    write(
        root,
        {
            f"{name}/__init__.py": """
                OFFSET = 100
                from .core import simulate
            """,
            f"{name}/core.py": """
                from . import OFFSET
                from .sub.helpers import scale

                def simulate(x):
                    from .sub import late  # relative, inside a function
                    return scale(x) + OFFSET + late.BONUS
            """,
            f"{name}/sub/__init__.py": "",
            f"{name}/sub/helpers.py": """
                def scale(x):
                    return 2 * x
            """,
            f"{name}/sub/late.py": "BONUS = 7\n",
        },
    )


def s3_keys(emu: Emulator, under: str) -> set[str]:
    s3 = boto3.client("s3", endpoint_url=emu.endpoint_url, region_name=emu.region)
    found: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=emu.bucket, Prefix=f"{emu.prefix.strip('/')}/{under}"
    ):
        found.update(obj["Key"] for obj in page.get("Contents", ()))
    return found


def worker_pids(job: Any) -> set[str]:
    return {t.worker.rpartition(":")[2] for t in job.stats.tasks}


def test_a_local_package_travels_with_the_job(src: Path, backend: LambdaBackend) -> None:
    name = unique("shipkg")
    write_package(src, name)
    simulate = importlib.import_module(name).simulate
    loop = foreach(x=range(6)).chunk_size(2)
    # kept out: the workers cannot import it, the body does not load (a job failure,
    # not six iteration failures), which proves the test below can fail
    # nothing of the job can run: one job-level error, whatever the errorhandling
    with pytest.raises(SerializationError, match=f"ModuleNotFoundError: No module named '{name}'"):
        loop.noexport(name).run(simulate, backend=backend)
    assert loop.run(simulate, backend=backend) == [2 * x + 107 for x in range(6)]


def test_an_edited_module_runs_new_code_on_warm_workers(src: Path, backend: LambdaBackend) -> None:
    name = unique("editmod")
    module_file = src / f"{name}.py"
    module_file.write_text("def body(x):\n    return x + 1\n")
    module = importlib.import_module(name)
    loop = foreach(x=range(4)).chunk_size(1)
    first = loop.submit(module.body, backend=backend)
    assert first.result(timeout=60) == [1, 2, 3, 4]
    module_file.write_text("def body(x):\n    return x + 1000  # edited\n")
    module = importlib.reload(module)
    second = loop.submit(module.body, backend=backend)
    assert second.result(timeout=60) == [1000, 1001, 1002, 1003]
    # the same processes ran both jobs: they dropped the old module for the new one
    assert worker_pids(first) & worker_pids(second)


def test_export_ships_a_module_detection_cannot_see(src: Path, backend: LambdaBackend) -> None:
    hidden, name = unique("hidden"), unique("dynpkg")
    write(
        src,
        {
            f"{hidden}.py": "def value(x):\n    return x * 3\n",
            f"{name}.py": f"""
                import importlib

                def body(x):
                    # no import statement names it: no static scan finds it
                    return importlib.import_module({hidden!r}).value(x)
            """,
        },
    )
    body = importlib.import_module(name).body
    loop = foreach(x=range(3))
    with pytest.raises(TaskError, match=f"No module named '{hidden}'"):
        loop.run(body, backend=backend)
    assert loop.export(hidden).run(body, backend=backend) == [0, 3, 6]


def test_a_compiled_extension_is_refused_before_any_upload(
    src: Path, backend: LambdaBackend, lambda_emulator: Emulator
) -> None:
    name = unique("natpkg")
    write_package(src, name)
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (src / name / "sub" / f"fast{suffix}").write_bytes(b"\x7fELF not really")
    simulate = importlib.import_module(name).simulate
    before = {area: s3_keys(lambda_emulator, area) for area in ("code/", "jobs/", "queue/")}
    with pytest.raises(SerializationError, match=rf"{name}.*compiled extension.*fast") as info:
        foreach(x=range(3)).run(simulate, backend=backend)
    assert "dolambda deploy --requirements" in str(info.value)
    after = {area: s3_keys(lambda_emulator, area) for area in ("code/", "jobs/", "queue/")}
    assert after == before


def test_the_archive_is_uploaded_once(
    src: Path, backend: LambdaBackend, lambda_emulator: Emulator
) -> None:
    name = unique("oncepkg")
    write_package(src, name)
    simulate = importlib.import_module(name).simulate
    loop = foreach(x=range(4)).chunk_size(2)
    before = s3_keys(lambda_emulator, "code/")
    jobs = []
    for _ in range(2):  # one after the other: the second knows what the first put
        job = loop.submit(simulate, backend=backend)
        assert job.result(timeout=60) == [2 * x + 107 for x in range(4)]
        jobs.append(job)
    puts = [job.stats.client_s3_requests.get("put", 0) for job in jobs]
    assert puts[0] - puts[1] == 1  # the archive, by the first job only
    (added,) = s3_keys(lambda_emulator, "code/") - before
    s3 = boto3.client("s3", endpoint_url=lambda_emulator.endpoint_url, region_name="us-east-1")
    head = s3.head_object(Bucket=lambda_emulator.bucket, Key=added)
    stamp = (head["ETag"], head["LastModified"])
    # a new client remembers nothing: one conditional PUT finds the archive there (412)
    fresh = LambdaBackend(**lambda_emulator.backend_settings())
    third = loop.submit(simulate, backend=fresh)
    assert third.result(timeout=60) == [2 * x + 107 for x in range(4)]
    assert third.stats.client_s3_requests.get("put", 0) == puts[0]
    head = s3.head_object(Bucket=lambda_emulator.bucket, Key=added)
    assert (head["ETag"], head["LastModified"]) == stamp
    assert s3_keys(lambda_emulator, "code/") - before == {added}


def test_a_missing_archive_is_a_job_failure_naming_it(src: Path, backend: LambdaBackend) -> None:
    name = unique("gonepkg")
    write_package(src, name)
    simulate = importlib.import_module(name).simulate
    # the backend believes the archive is in the bucket (as after a lifecycle rule
    # expired it): it is not uploaded, and no worker has it cached
    archive = build_archive(find_code(objects=[simulate]).local)
    backend._code_known[archive.digest] = time.monotonic()
    with pytest.raises(
        StorageError, match=rf"code archive .*code/{archive.digest}\.zip.* cannot be"
    ):
        foreach(x=range(4)).chunk_size(2).run(simulate, backend=backend)
    # the backend forgot it: the next job uploads it again and runs
    loop = foreach(x=range(4)).chunk_size(2)
    assert loop.run(simulate, backend=backend) == [2 * x + 107 for x in range(4)]


# --- the loop spec's controls (no emulator) ---------------------------------------------


def test_export_and_noexport_are_immutable_builders(tmp_path: Path) -> None:
    base = foreach(x=range(3))
    exported = base.export("mysim", tmp_path / "extra.py", textwrap)
    kept_out = exported.noexport("big")
    assert base.exported == () and base.not_exported == ()
    assert exported.exported == ("mysim", tmp_path / "extra.py", textwrap)
    assert kept_out.not_exported == ("big",) and kept_out.exported == exported.exported
    assert kept_out.export().exported == ()  # a new call replaces, an empty one clears
    # locally the controls change nothing: the processes import what this one can
    assert kept_out.do(lambda x: x) == [0, 1, 2]


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda loop: loop.export(3), InvalidArgumentType, "export: expected module names"),
        (lambda loop: loop.export("not a name"), InvalidArgument, "neither a module name"),
        (lambda loop: loop.noexport("pkg.sub"), InvalidArgument, "not a top-level module"),
        (lambda loop: loop.noexport(Path("x")), InvalidArgumentType, "noexport: expected"),
        (lambda loop: loop.export("a.b").noexport("a"), InvalidArgument, "also given to export"),
        (lambda loop: loop.noexport("a").export("src/a"), InvalidArgument, "also given to"),
    ],
)
def test_bad_export_arguments_are_named(build: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        build(foreach(x=range(3)))


def test_an_export_of_the_standard_library_is_refused_before_any_upload(
    backend: LambdaBackend, lambda_emulator: Emulator
) -> None:
    before = s3_keys(lambda_emulator, "jobs/")
    with pytest.raises(InvalidArgument, match=r"cannot ship 'json'.*standard library"):
        foreach(x=range(3)).export("json").run(lambda x: x, backend=backend)
    assert s3_keys(lambda_emulator, "jobs/") == before
