"""Ctrl-C and interpreter exit, as a user's script meets them: real subprocess scripts
against the session's emulator (or local processes), SIGINT sent to them, then the
bucket inspected. A script's stderr never shows dolambda's own tracebacks."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from dolambda import DolambdaError, Job, JobCancelled, LambdaBackend, foreach
from dolambda.emulator import Emulator

ROOT = Path(__file__).resolve().parents[1]

#: what dolambda must never print at exit (issue 15 item 5)
NOISE = (
    "Exception ignored",
    "error during closing of asynchronous generator",
    "an error occurred during closing of asynchronous generator",
    "asynchronous generator is already running",
    "was created in a different Context",
    "Task was destroyed but it is pending",
    "Unclosed client session",
)


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start_script(source: str, tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    environ = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    environ.pop("PYTHONWARNINGS", None)
    return subprocess.Popen(
        [sys.executable, str(script)],
        env=environ,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def assert_quiet(stderr: str, tracebacks: int = 0) -> None:
    for noise in NOISE:
        assert noise not in stderr, stderr
    assert stderr.count("Traceback") == tracebacks, stderr


def s3(emu: Emulator) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=emu.endpoint_url,
        region_name=emu.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def keys_under(emu: Emulator, where: str) -> list[str]:
    prefix = f"{emu.prefix}/{where}" if emu.prefix else where
    found = s3(emu).list_objects_v2(Bucket=emu.bucket, Prefix=prefix)
    return [o["Key"] for o in found.get("Contents", ())]


# one second an iteration; each marks that it started, so the test sees what ran
LAMBDA_SCRIPT = """
    import json, os, sys, time
    from dolambda import LambdaBackend, foreach

    backend = LambdaBackend(**json.loads(os.environ["SETTINGS"]))
    marks = os.environ["MARKS"]

    def body(x):
        open(os.path.join(marks, str(x)), "w").close()
        time.sleep(1)
        return x

    loop = foreach(x=range(60)).chunk_size(2)
"""


def settings_env(emu: Emulator, tmp_path: Path) -> dict[str, str]:
    marks = tmp_path / "marks"
    marks.mkdir()
    return {"SETTINGS": json.dumps(emu.backend_settings()), "MARKS": str(marks)}


def started(tmp_path: Path) -> int:
    return len(list((tmp_path / "marks").iterdir()))


def settle(count: Callable[[], int], quiet_for: float, timeout: float) -> int:
    """``count()`` once it has not changed for ``quiet_for`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_for:
            return now
    raise AssertionError(f"still changing after {timeout} s (at {last})")


def test_ctrl_c_finishes_the_cancel_before_the_script_exits(
    lambda_emulator: Emulator, tmp_path: Path
) -> None:
    source = (
        LAMBDA_SCRIPT
        + """
    try:
        loop.do_lambda(body, backend=backend, progress=False)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    """
    )
    proc = start_script(source, tmp_path, **settings_env(lambda_emulator, tmp_path))
    try:
        wait_for(lambda: started(tmp_path) >= 2, 60, "two iterations to start")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=40)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert stdout.strip() == "interrupted"
    said = re.search(
        r"dolambda: cancelling job (\S+): deleting (\d+) queued tasks; Ctrl-C again to leave them",
        stderr,
    )
    assert said, stderr
    job_id = said.group(1)
    assert int(said.group(2)) > 10  # 30 tasks of 2 iterations; at most 2 ran or finished
    assert f"dolambda: job {job_id} cancelled" in stderr
    assert_quiet(stderr)
    # the cancel was finished before the process exited: the marker is there, the queue
    # is empty, nothing of the job is left but results of the tasks that were running
    assert keys_under(lambda_emulator, f"jobs/{job_id}/") == [
        f"{lambda_emulator.prefix}/jobs/{job_id}/cancel"
    ]
    assert keys_under(lambda_emulator, f"queue/{job_id}/") == []
    at_exit = started(tmp_path)
    # the tasks that were running finish their 2 iterations; nothing else starts
    after = settle(lambda: started(tmp_path), quiet_for=3, timeout=30)
    assert after <= at_exit + 2 * 2, (at_exit, after)
    results = settle(
        lambda: len(keys_under(lambda_emulator, f"results/{job_id}/")), quiet_for=2, timeout=10
    )
    assert results <= 2


def test_a_script_that_exits_with_a_job_running_says_how_to_attach(
    lambda_emulator: Emulator, tmp_path: Path
) -> None:
    source = (
        LAMBDA_SCRIPT.replace("range(60)", "range(6)")
        + """
    job = loop.submit(body, backend=backend, progress=False)
    while not os.listdir(marks):
        time.sleep(0.05)
    print(job.id, flush=True)
    """
    )
    proc = start_script(source, tmp_path, **settings_env(lambda_emulator, tmp_path))
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    job_id = stdout.strip()
    assert f"resume it with Job.attach({job_id!r}, backend)" in stderr, stderr
    assert_quiet(stderr)
    # the job was left as it was: it can be attached, and gives every result
    backend = LambdaBackend(**lambda_emulator.backend_settings())
    assert Job.attach(job_id, backend).result(timeout=60) == list(range(6))


def test_a_script_that_raises_with_a_job_in_flight_shows_only_its_error(
    lambda_emulator: Emulator, tmp_path: Path
) -> None:
    source = (
        LAMBDA_SCRIPT
        + """
    job = loop.submit(body, backend=backend, progress=False)
    while not os.listdir(marks):
        time.sleep(0.05)
    raise ValueError("the script's own error")
    """
    )
    proc = start_script(source, tmp_path, **settings_env(lambda_emulator, tmp_path))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "ValueError: the script's own error" in stderr
    assert_quiet(stderr, tracebacks=1)
    job_id = re.search(r"Job\.attach\('(\S+)', backend\)\.cancel\(\)", stderr)
    assert job_id, stderr
    Job.attach(job_id.group(1), LambdaBackend(**lambda_emulator.backend_settings())).cancel()


EXECUTOR_SCRIPT = """
    import json, os
    from dolambda import Executor, LambdaBackend

    backend = LambdaBackend(**json.loads(os.environ["SETTINGS"]))
"""


@pytest.mark.parametrize("closed", ["with", "dropped"])
def test_executor_submit_leaves_nothing_at_exit(
    lambda_emulator: Emulator, tmp_path: Path, closed: str
) -> None:
    if closed == "with":
        body = """
    with Executor(backend) as ex:
        futures = [ex.submit(pow, 2, k) for k in range(5)]
    print(sum(f.result() for f in futures))
    """
    else:  # the executor is never shut down: the process exits with it
        body = """
    ex = Executor(backend)
    futures = [ex.submit(pow, 2, k) for k in range(5)]
    print(sum(f.result() for f in futures))
    """
    proc = start_script(EXECUTOR_SCRIPT + body, tmp_path, **settings_env(lambda_emulator, tmp_path))
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert stdout.strip() == "31"
    assert_quiet(stderr)
    assert stderr == "", stderr


def test_joblib_backend_leaves_nothing_at_exit(moto_url: str, tmp_path: Path) -> None:
    source = """
    import json, os
    import joblib
    import dolambda.joblib
    from dolambda import LambdaBackend

    backend = LambdaBackend(**json.loads(os.environ["SETTINGS"]))
    with joblib.parallel_config(backend="dolambda", dolambda_backend=backend):
        print(sum(joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-x) for x in range(8))))
    """
    name = f"jl-{uuid.uuid4().hex[:10]}"
    # joblib's batches travel as joblib objects: the function must hold joblib (as
    # `dolambda deploy --requirements` adds it on AWS)
    with Emulator(
        workers=2,
        timeout=30,
        endpoint_url=moto_url,
        bucket=name,
        function_name=name,
        requirements=["joblib"],
    ) as emu:
        proc = start_script(source, tmp_path, **settings_env(emu, tmp_path))
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert stdout.strip() == "28"
    assert_quiet(stderr)
    assert stderr == "", stderr


def test_ctrl_c_on_local_processes_is_quiet(tmp_path: Path) -> None:
    source = """
    import os, sys, time
    from dolambda import LocalBackend, foreach

    def body(x, marks):
        open(os.path.join(marks, str(x)), "w").close()
        time.sleep(0.5)
        return x

    if __name__ == "__main__":
        marks = os.environ["MARKS"]
        loop = foreach(x=range(40), marks=[marks] * 40)
        job = loop.submit(body, backend=LocalBackend(2), progress=False)
        try:
            job.result()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
    """
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = start_script(source, tmp_path, MARKS=str(marks))
    try:
        wait_for(lambda: started(tmp_path) >= 2, 60, "two iterations to start")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=40)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stdout
    assert re.search(r"dolambda: cancelling job \S+: stopping its tasks", stderr), stderr
    assert re.search(r"dolambda: job \S+ cancelled", stderr), stderr
    assert_quiet(stderr)
    assert settle(lambda: started(tmp_path), quiet_for=1.5, timeout=20) < 40


def test_a_second_ctrl_c_leaves_at_once(lambda_emulator: Emulator, tmp_path: Path) -> None:
    # the S3 the cancel talks to answers slowly (its withdraw takes 60 s): the second
    # Ctrl-C must not wait for it
    source = (
        LAMBDA_SCRIPT
        + """
    import asyncio
    from dolambda._backends.lambda_ import dispatch

    withdraw = dispatch.withdraw

    async def slow_withdraw(run, finished):
        await asyncio.sleep(60)
        await withdraw(run, finished)

    dispatch.withdraw = slow_withdraw
    try:
        loop.do_lambda(body, backend=backend, progress=False)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    """
    )
    proc = start_script(source, tmp_path, **settings_env(lambda_emulator, tmp_path))
    try:
        wait_for(lambda: started(tmp_path) >= 1, 60, "an iteration to start")
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "Ctrl-C again to leave them" in line, line
        proc.send_signal(signal.SIGINT)
        left_at = time.monotonic()
        stdout, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - left_at
    finally:
        proc.kill()
    assert took < 10, took
    assert proc.returncode == 130, stderr
    assert "interrupted" in stdout
    assert re.search(r"dolambda: left job (\S+) as it was", stderr), stderr
    assert_quiet(stderr)
    job_id = re.search(r"cancelling job (\S+):", line)
    assert job_id is not None
    # the job was left as it was; stop it (one left before its plan was stored cannot be
    # attached: attach then discards it, and says so)
    with contextlib.suppress(DolambdaError):
        Job.attach(job_id.group(1), LambdaBackend(**lambda_emulator.backend_settings())).cancel()


async def test_cancelling_an_await_of_a_job_stops_the_job() -> None:
    import asyncio

    from dolambda import foreach
    from tests.helpers import LOCAL2

    job = foreach(x=range(40)).chunk_size(1).submit(_slow, backend=LOCAL2, progress=False)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(job, timeout=0.5)
    await asyncio.to_thread(wait_for, job.done, 20, "the job to stop")
    assert job.progress.done < 40


def _slow(x: int) -> int:
    time.sleep(0.3)
    return x


def test_a_running_task_stops_when_its_job_is_cancelled(
    lambda_emulator: Emulator, tmp_path: Path
) -> None:
    """A cancel deletes the queued tasks; a task already running looks at the job's cancel
    marker every CANCEL_CHECK_EVERY seconds and stops there (on AWS a chunk left running
    is paid for to its end), writing no result."""
    from dolambda._aws.watchdog import CANCEL_CHECK_EVERY
    from tests.bodies.common import marks_then_sleeps

    marks = tmp_path / "marks"
    marks.mkdir()
    backend = LambdaBackend(**{**lambda_emulator.backend_settings(), "backups": False})
    loop = foreach(x=range(100)).chunk_size(100)  # one task of 100 half-second iterations
    job = loop.submit(marks_then_sleeps(str(marks), 0.5), backend=backend, progress=False)
    wait_for(lambda: started(tmp_path) >= 2, 60, "the task to start")
    job.cancel()
    with pytest.raises(JobCancelled):
        job.result(timeout=60)
    at_cancel = started(tmp_path)
    after = settle(lambda: started(tmp_path), quiet_for=3, timeout=CANCEL_CHECK_EVERY + 30)
    # it stopped within one look at the marker (two iterations a second), not at 100
    assert after <= at_cancel + 2 * (CANCEL_CHECK_EVERY + 2), (at_cancel, after)
    assert after < 100
    assert keys_under(lambda_emulator, f"results/{job.id}/") == []
