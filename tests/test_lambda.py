"""The Lambda backend end to end: HTTP to a moto server, the function's package in the
emulator's isolated Lambda environments, both triggers. Bodies pickled by reference live
in :mod:`tests.bodies.lambda_` (they travel with the job; the workers lack pytest)."""

from __future__ import annotations

import asyncio
import copy
import math
import operator
import os
import pickle
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

import dolambda
from dolambda import DolambdaError, LambdaBackend, TaskError, foreach, rng, times
from dolambda._errors import (
    ConfigError,
    JobCancelled,
    SerializationError,
    StorageError,
    VersionMismatch,
)
from dolambda._wire import codec
from dolambda._wire import keys as _keys
from tests.bodies.lambda_ import cheap, noisy, takes_20ms

emulator = pytest.importorskip("dolambda.emulator")


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    instance = emulator.Emulator(workers=2, timeout=4.0)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def backend_for(emu: Any, **kwargs: Any) -> LambdaBackend:
    settings: dict[str, Any] = {
        "bucket": emu.backend.bucket,
        "function_name": emu.backend.function_name,
        "region": emu.backend.region,
        "endpoint_url": emu.endpoint_url,
        "prefix": emu.backend.prefix,
        "signing_key": emu.signing_key,
        "task_timeout": 4.0,
        "max_concurrency": 2,
    }
    settings.update(kwargs)
    return LambdaBackend(**settings)


@pytest.fixture(params=["s3", "invoke", "call"])
def backend(request: pytest.FixtureRequest, emu: Any) -> LambdaBackend:
    return backend_for(emu, trigger=request.param)


def s3_client(emu: Any) -> Any:
    return boto3.client("s3", endpoint_url=emu.endpoint_url, region_name="us-east-1")


def all_keys(emu: Any, prefix: str = "") -> list[str]:
    out: list[str] = []
    for page in (
        s3_client(emu)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=emu.backend.bucket, Prefix=prefix)
    ):
        out.extend(o["Key"] for o in page.get("Contents", ()))
    return out


def job_keys(emu: Any, job_id: str) -> list[str]:
    return [k for k in all_keys(emu) if f"/{job_id}/" in k]


CASES: list[tuple[str, Any, Any]] = [
    ("list", foreach(x=range(7)), noisy),
    ("empty", foreach(x=[]), noisy),
    ("one", foreach(x=[3]).combine(operator.add), noisy),
    ("zip", foreach(x=range(5), y="abc"), lambda x, y: y * x),
    ("sum", foreach(x=range(30)).combine(sum), noisy),
    ("c", foreach(x=range(6)).combine("c"), lambda x: [x, None, -x]),
    ("rbind", foreach(x=range(4)).combine("rbind"), lambda x: [x, x + 1]),
    ("cbind", foreach(x=range(3)).combine("cbind"), lambda x: [x, 2 * x]),
    ("concat", foreach(x=range(12)).chunk_size(1).combine(operator.add, init=""), lambda x: str(x)),
    ("final", foreach(x=range(5)).combine("+", final=lambda t: t / 2), noisy),
    ("when", foreach(x=range(10)).when(lambda x: x % 3 == 0), noisy),
    ("times", times(4), lambda: "hi"),
    (
        "nest",
        foreach(i=range(4)).nest(foreach(j=lambda i: range(i)).combine("+", init=0)),
        lambda i, j: i * 10 + j,
    ),
    ("pass", foreach(x=range(5)).errorhandling("pass"), lambda x: 1 / (x - 2)),
    ("remove", foreach(x=range(5)).errorhandling("remove"), lambda x: 1 / (x - 2)),
    ("seed", foreach(x=range(9)).seed(7).chunk_size(4), lambda x: float(rng().random())),
]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, BaseException) and isinstance(b, BaseException):
        return type(a) is type(b) and str(a) == str(b)
    return bool(a == b)


@pytest.mark.parametrize("name,loop,body", CASES, ids=[c[0] for c in CASES])
def test_same_result_as_do(backend: LambdaBackend, name: str, loop: Any, body: Any) -> None:
    expected = loop.do(body)
    got = loop.do_lambda(body, backend=backend, progress=False)
    assert _same(got, expected), (name, got, expected)


def test_stop_names_iteration_and_carries_traceback(backend: LambdaBackend) -> None:
    with pytest.raises(TaskError) as info:
        foreach(x=range(6)).chunk_size(1).do_lambda(lambda x: 1 / (x - 4), backend=backend)
    assert info.value.index == 4
    assert info.value.variables == {"x": 4}
    assert "ZeroDivisionError" in str(info.value)
    assert "Traceback" in info.value.remote_traceback


def test_job_objects_are_cleaned_up(emu: Any) -> None:
    backend = backend_for(emu)
    job = foreach(x=range(10)).chunk_size(3).submit(noisy, backend=backend)
    assert job.result() == [x * x for x in range(10)]
    assert job_keys(emu, job.id) == []


def test_keep_leaves_objects(emu: Any) -> None:
    backend = backend_for(emu, keep=True)
    job = foreach(x=range(4)).chunk_size(2).submit(noisy, backend=backend)
    job.result()
    keys = job_keys(emu, job.id)
    assert any(k.endswith("manifest.json") for k in keys)
    assert sum(k.endswith(".out") for k in keys) == 2


def test_stats_report_tasks_and_requests(emu: Any) -> None:
    backend = backend_for(emu)
    job = foreach(x=range(8)).chunk_size(2).submit(noisy, backend=backend, progress=False)
    job.result()
    stats = job.stats
    assert stats.task_count == 4
    assert stats.iterations == 8
    assert stats.client_s3_requests.get("put", 0) >= 4
    assert all(t.s3_requests >= 2 for t in stats.tasks)
    assert stats.cost_usd > 0
    assert "8 iterations in 4 tasks" in stats.summary()


def test_closure_and_large_capture_uploaded_once(emu: Any) -> None:
    backend = backend_for(emu)
    big = list(range(200_000))
    offset = 5

    def body(x: int) -> int:
        return big[x] + offset

    job = foreach(x=range(20)).chunk_size(1).submit(body, backend=backend, progress=False)
    assert job.result() == [x + offset for x in range(20)]
    puts = job.stats.client_s3_requests.get("put", 0)
    assert puts < 30  # manifest + body + plan + 20 tasks + cancel: body not per task
    # a body this large is not copied into its tasks: the cold workers GET it
    assert max(t.s3_requests for t in job.stats.tasks) == 4  # task, manifest, body, result
    assert {t.s3_requests for t in job.stats.tasks} <= {2, 4}


@pytest.mark.parametrize("trigger", ["s3", "invoke", "call"])
def test_small_job_travels_in_its_tasks(emu: Any, trigger: str) -> None:
    # every worker is new to this job: none of them fetches the manifest or the body
    backend = backend_for(emu, trigger=trigger, keep=True)
    offset = 7

    def body(x: int) -> int:
        return x + offset

    job = foreach(x=range(12)).chunk_size(1).submit(body, backend=backend, progress=False)
    assert job.result() == [x + offset for x in range(12)]
    # s3: GET task + PUT result; invoke, call: the task is in the payload, PUT result only
    expected = {"s3": 2, "invoke": 1, "call": 1}[trigger]
    assert [t.s3_requests for t in job.stats.tasks] == [expected] * 12
    # the job objects are still written (after the tasks), so the job can be attached
    keys = job_keys(emu, job.id)
    assert any(k.endswith("manifest.json") for k in keys)
    assert any(k.endswith("plan.json") for k in keys)
    digest = codec.digest(codec.dumps_body(body))
    tag = codec.key_tag(bytes.fromhex(emu.signing_key), digest)
    assert _keys.body_key(emu.prefix, digest, tag) in all_keys(emu)  # shared, by content


def test_main_module_function_runs(emu: Any, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from dolambda import LambdaBackend, foreach

            def double(x):
                return 2 * x

            backend = LambdaBackend(bucket={emu.backend.bucket!r}, region="us-east-1",
                endpoint_url={emu.endpoint_url!r}, signing_key={emu.signing_key!r},
                function_name={emu.backend.function_name!r}, prefix={emu.backend.prefix!r})
            print(foreach(x=range(5)).combine(sum).do_lambda(double, backend=backend,
                progress=False))
            """
        )
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "20"


def test_the_portal_closes_its_warm_clients_at_exit(emu: Any, tmp_path: Path) -> None:
    # sync verbs keep clients warm on the portal loop; its exit hook (atexit) shuts that
    # loop's async generators down, which closes them, as asyncio.run does for its loop
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from dolambda import LambdaBackend, _sync, foreach

            backend = LambdaBackend(bucket={emu.backend.bucket!r}, region="us-east-1",
                endpoint_url={emu.endpoint_url!r}, signing_key={emu.signing_key!r},
                function_name={emu.backend.function_name!r}, prefix={emu.backend.prefix!r})
            def double(x):
                return 2 * x

            print(foreach(x=range(5)).combine(sum).do_lambda(double, backend=backend,
                progress=False))
            [kept] = backend._shared[_sync.portal_loop()].values()
            session = kept["s3"]._endpoint.http_session
            print(sorted(kept), bool(session._sessions))
            _sync._stop_portal()  # what atexit runs
            print(sorted(kept), bool(session._sessions))
            """
        )
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == [
        "20",
        "['call', 'keeper', 'lambda', 's3'] True",
        "[] False",
    ]


async def test_two_jobs_at_once_from_one_loop(emu: Any) -> None:
    backend = backend_for(emu)
    a, b = await asyncio.gather(
        foreach(x=range(15)).chunk_size(2).arun(noisy, backend=backend, progress=False),
        foreach(x=range(15))
        .chunk_size(3)
        .combine(sum)
        .arun(lambda x: -x, backend=backend, progress=False),
    )
    assert a == [x * x for x in range(15)]
    assert b == -sum(range(15))


def test_async_runs_keep_clients_warm_per_loop_and_close_them_with_it(emu: Any) -> None:
    backend = backend_for(emu)
    seen: list[tuple[Any, Any]] = []

    async def three_jobs() -> list[int]:
        out = []
        for k in range(3):
            out.append(
                await foreach(x=range(4), k=[k] * 4)
                .combine(sum)
                .arun(lambda x, k: x + k, backend=backend)
            )
            loop = asyncio.get_running_loop()
            [kept] = backend._shared[loop].values()
            seen.append((loop, kept["s3"]))
        return out

    assert asyncio.run(three_jobs()) == [6, 10, 14]
    # one client for the three jobs on that loop
    assert len({id(client) for _, client in seen}) == 1
    first_loop = seen[0][0]
    # asyncio.run shut the loop's async generators down: the clients were closed
    assert backend._shared[first_loop] == {"us-east-1": {}}
    # a new loop in the same thread gets clients of its own, and works
    seen.clear()
    assert asyncio.run(three_jobs()) == [6, 10, 14]
    assert seen[0][0] is not first_loop


def test_a_used_backend_can_be_pickled_and_the_copy_runs(emu: Any) -> None:
    backend = backend_for(emu)
    assert foreach(x=range(3)).combine(sum).do_lambda(noisy, backend=backend) == 5
    copied = pickle.loads(pickle.dumps(backend))  # its warm clients stay behind
    assert copied.bucket == backend.bucket and copied.key == backend.key
    assert foreach(x=range(3)).combine(sum).do_lambda(noisy, backend=copied) == 5
    assert copy.deepcopy(backend).function_name == backend.function_name


async def test_sync_run_inside_running_loop(emu: Any) -> None:
    backend = backend_for(emu)
    assert foreach(x=range(6)).combine(sum).run(noisy, backend=backend, progress=False) == 55


def test_registered_backend_and_run(emu: Any) -> None:
    backend = backend_for(emu)
    dolambda.register(backend)
    assert dolambda.registered() == ("lambda", 2)

    @foreach(x=range(5))
    def cube(x: int) -> int:
        return x**3

    assert cube.combine(sum).run(progress=False) == 100
    assert cube.combine(sum).do_lambda(progress=False) == 100


def test_cancel_stops_new_work_and_cleans_up(emu: Any, tmp_path: Path) -> None:
    backend = backend_for(emu, task_timeout=30.0)
    marker = tmp_path / "ran"
    marker.mkdir()

    def slow(x: int) -> int:
        (marker / str(x)).touch()
        time.sleep(0.3)
        return x

    job = foreach(x=range(40)).chunk_size(1).submit(slow, backend=backend, progress=False)
    deadline = time.monotonic() + 30
    while job.progress.done < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    job.cancel()
    with pytest.raises(JobCancelled):
        job.result(timeout=30)
    started = len(list(marker.iterdir()))
    # at most the tasks already running (2 workers) plus in-flight events start after cancel
    settle = time.monotonic() + 3
    while time.monotonic() < settle:
        time.sleep(0.1)
    assert len(list(marker.iterdir())) <= started + 2
    assert len(list(marker.iterdir())) < 40
    leftovers = [k for k in job_keys(emu, job.id) if not k.endswith("/cancel")]
    assert all("/results/" in k for k in leftovers)  # only late results of running tasks


@pytest.mark.parametrize("trigger", ["s3", "call"])
def test_task_past_timeout_is_reported_not_hung(emu: Any, trigger: str) -> None:
    backend = backend_for(emu, retries=0, trigger=trigger)

    def sleepy(x: int) -> int:
        if x == 1:
            time.sleep(30)
        return x

    started = time.monotonic()
    got = (
        foreach(x=range(3))
        .chunk_size(1)
        .errorhandling("pass")
        .do_lambda(sleepy, backend=backend, progress=False)
    )
    assert got[0] == 0 and got[2] == 2
    assert isinstance(got[1], TaskError)
    assert got[1].error_type == "timeout"  # reported by the worker's watchdog
    assert "ran past the function's timeout: iteration 1" in str(got[1])
    assert time.monotonic() - started < 25


@pytest.mark.parametrize("trigger", ["s3", "call"])
def test_worker_killed_mid_task_is_retried(emu: Any, tmp_path: Path, trigger: str) -> None:
    backend = backend_for(emu, retries=2, trigger=trigger)
    flag = tmp_path / "killed-once"

    def fragile(x: int) -> int:
        if x == 2 and not flag.exists():
            flag.touch()
            os.kill(os.getpid(), 9)
        return x + 100

    got = foreach(x=range(4)).chunk_size(1).do_lambda(fragile, backend=backend, progress=False)
    assert got == [100, 101, 102, 103]
    assert flag.exists()


def test_version_mismatch_is_an_error_naming_both(
    emu: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dolambda._backends.sealing as sealing

    monkeypatch.setattr(sealing, "python_version", lambda: "3.99")
    backend = backend_for(emu)
    with pytest.raises(VersionMismatch) as info:  # a job error, not iteration 0's (#15.2)
        foreach(x=range(2)).do_lambda(noisy, backend=backend, progress=False)
    assert "3.99" in str(info.value)
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in str(info.value)


@pytest.mark.parametrize("trigger", ["s3", "call"])
def test_attach_after_client_dies(emu: Any, tmp_path: Path, trigger: str) -> None:
    script = tmp_path / "client.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from dolambda import LambdaBackend, foreach

            def slow(x):
                time.sleep(0.2)
                return x * 3

            backend = LambdaBackend(bucket={emu.backend.bucket!r}, region="us-east-1",
                endpoint_url={emu.endpoint_url!r}, signing_key={emu.signing_key!r},
                function_name={emu.backend.function_name!r}, prefix={emu.backend.prefix!r},
                task_timeout=30.0, trigger={trigger!r})
            job = foreach(x=range(12)).chunk_size(1).combine(sum).submit(slow, backend=backend,
                progress=False)
            print(job.id, flush=True)
            while job.progress.done < 2:
                time.sleep(0.01)
            print("gathering", flush=True)
            time.sleep(60)
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        job_id = proc.stdout.readline().strip()
        assert proc.stdout.readline().strip() == "gathering"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    backend = backend_for(emu, task_timeout=30.0, trigger=trigger)
    job = dolambda.Job.attach(job_id, backend)
    assert job.id == job_id
    assert job.result(timeout=60) == 3 * sum(range(12))
    assert job_keys(emu, job_id) == []


def test_attach_unknown_job_is_clear(emu: Any) -> None:
    with pytest.raises(DolambdaError, match="no job"):
        dolambda.Job.attach("20260101T000000-deadbeef", backend_for(emu))


def test_unknown_bucket_names_it(emu: Any) -> None:
    backend = backend_for(emu, bucket="no-such-bucket-here")
    with pytest.raises(StorageError, match="no-such-bucket-here"):
        foreach(x=range(2)).do_lambda(noisy, backend=backend, progress=False)


def test_missing_signing_key(emu: Any) -> None:
    backend = backend_for(emu, signing_key=None)
    with pytest.raises(ConfigError, match="signing key"):
        foreach(x=range(2)).do_lambda(noisy, backend=backend, progress=False)


def test_missing_region(emu: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    backend = backend_for(emu, region=None)
    with pytest.raises(ConfigError, match="AWS_DEFAULT_REGION"):
        foreach(x=range(2)).do_lambda(noisy, backend=backend, progress=False)


def test_no_credentials(emu: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    backend = backend_for(emu)
    with pytest.raises(ConfigError, match="credentials"):
        foreach(x=range(2)).do_lambda(noisy, backend=backend, progress=False)


def test_bucket_without_trigger_says_deploy(emu: Any) -> None:
    s3_client(emu).create_bucket(Bucket="bare-bucket")
    backend = backend_for(emu, bucket="bare-bucket")
    with pytest.raises(ConfigError, match="dolambda deploy"):
        foreach(x=range(2)).do_lambda(noisy, backend=backend, progress=False)


def test_unserializable_body_fails_before_upload(emu: Any) -> None:
    import socket

    backend = backend_for(emu)
    before = set(all_keys(emu))
    with socket.socket() as sock, pytest.raises(SerializationError, match="sock"):
        foreach(x=range(2)).do_lambda(lambda x: (sock, x), backend=backend)
    assert set(all_keys(emu)) == before


def test_memory_limit_is_a_distinct_error_naming_the_limit() -> None:
    with emulator.Emulator(workers=1, timeout=20.0, memory_mb=160) as small:
        backend = LambdaBackend(**{**small.backend_settings(), "retries": 0})

        def hog(x: int) -> int:
            if x == 1:
                block = b"x" * (400 << 20)  # 400 MB, written: resident
                return len(block)
            return x

        got = (
            foreach(x=range(3))
            .chunk_size(1)
            .errorhandling("pass")
            .do_lambda(hog, backend=backend, progress=False)
        )
    assert got[0] == 0 and got[2] == 2
    assert isinstance(got[1], TaskError)
    assert got[1].error_type == "memory"
    assert "out of memory" in str(got[1]) and "160 MB" in str(got[1])


def test_dropped_events_are_recovered_by_retries() -> None:
    with emulator.Emulator(workers=2, timeout=5.0, drop_fraction=0.3, seed=3) as lossy:
        backend = LambdaBackend(**{**lossy.backend_settings(), "retries": 4})
        job = (
            foreach(x=range(20))
            .chunk_size(1)
            .combine(sum)
            .submit(noisy, backend=backend, progress=False)
        )
        assert job.result(timeout=90) == sum(x * x for x in range(20))
        assert lossy.stats.dropped > 0
        assert job.stats.retries > 0


def test_duplicate_events_give_one_result_per_task() -> None:
    with emulator.Emulator(workers=2, timeout=10.0, duplicate_events=True) as dup:
        backend = LambdaBackend(**dup.backend_settings())
        got = foreach(x=range(12)).chunk_size(1).do_lambda(noisy, backend=backend, progress=False)
        assert got == [x * x for x in range(12)]
        assert dup.stats.duplicated > 0


def test_attach_refuses_a_job_whose_combine_cannot_travel_and_leaves_it_running(
    emu: Any, tmp_path: Path
) -> None:
    import socket

    backend = backend_for(emu, task_timeout=30.0)
    go = str(tmp_path / "go")  # the job runs until the test has tried to attach
    with socket.socket() as sock:

        def add(a: int, b: int) -> int:
            assert sock is not None  # captures something that cannot be pickled
            return a + b

        def slow(x: int) -> int:
            deadline = time.monotonic() + 25
            while not os.path.exists(go) and time.monotonic() < deadline:
                time.sleep(0.01)
            return x

        job = (
            foreach(x=range(8))
            .chunk_size(1)
            .combine(add)
            .submit(slow, backend=backend, progress=False)
        )
        deadline = time.monotonic() + 30
        while not any(k.endswith("plan.json") for k in job_keys(emu, job.id)):
            assert time.monotonic() < deadline, "the job was never dispatched"
            time.sleep(0.02)
        with pytest.raises(DolambdaError, match="could not be pickled"):
            dolambda.Job.attach(job.id, backend)
        Path(go).touch()
        assert job.result(timeout=60) == sum(range(8))  # attach did not cancel it


def test_auto_chunks_are_sized_from_the_last_run_of_the_same_body(emu: Any) -> None:
    """The first run of a body uses the count-based chunking; the next one sizes chunks
    from the seconds per iteration it measured: a cheap body goes in one task, a slow
    one still spreads over every worker."""
    from dolambda._core import run

    backend = backend_for(emu, max_concurrency=8)
    run._SECONDS_PER_ITERATION.clear()
    loop = foreach(x=range(2000))
    first = loop.submit(cheap, backend=backend, progress=False)
    assert first.result() == [x + 1 for x in range(2000)]
    assert first.stats.task_count == 32  # 2000 / (4 x 8)
    # the first run measured the body's seconds per iteration (under load it varies, so
    # the second run's count is checked against the formula for what was measured)
    assert len(run._SECONDS_PER_ITERATION) == 1
    measured = next(iter(run._SECONDS_PER_ITERATION.values()))
    assert 0 < measured < 1
    second = loop.submit(cheap, backend=backend, progress=False)
    assert second.result() == [x + 1 for x in range(2000)]
    expected = math.ceil(2000 / backend.chunk_size_for(2000, measured))
    assert second.stats.task_count == expected
    # a measured cheap body (a microsecond an iteration) goes in one task, not 32
    digest = next(iter(run._SECONDS_PER_ITERATION))
    run._SECONDS_PER_ITERATION[digest] = 1e-6
    third = loop.submit(cheap, backend=backend, progress=False)
    assert third.result() == [x + 1 for x in range(2000)]
    assert third.stats.task_count == 1

    slow = foreach(x=range(64))
    for _ in range(2):
        job = slow.submit(takes_20ms, backend=backend, progress=False)
        assert job.result() == list(range(64))
        assert job.stats.task_count >= 8  # at least one task a worker


async def test_a_cancel_that_arrives_as_the_gather_is_woken_is_not_lost() -> None:
    # the gather sleeps between LISTs until woken; a job cancelled in the same loop step
    # as the wake-up (e.g. just as its dispatch finished) must stop, not poll on
    from dolambda._backends.lambda_.gather import sleep_unless_woken

    wake = asyncio.Event()
    sleeping = asyncio.create_task(sleep_unless_woken(wake, 30.0))
    await asyncio.sleep(0)  # it is waiting now
    wake.set()
    sleeping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(sleeping, 5)
    # and an uncancelled sleep ends when woken, long before its timeout
    wake.clear()
    sleeping = asyncio.create_task(sleep_unless_woken(wake, 30.0))
    await asyncio.sleep(0)
    wake.set()
    await asyncio.wait_for(sleeping, 5)
