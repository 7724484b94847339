"""The worker reports its own failures (issue 14 item 3), and the emulator applies the
function's event-invoke config as Lambda does (issue 13 §2).

Each failure runs on the isolated emulator (the deployed package under awslambdaric,
Lambda's own retries off as dolambda deploy sets them): a task past the function
timeout, past the memory limit, or whose process crashes (``os._exit``, a segfault)
must come back as an error result for its iteration within the function timeout plus
a few seconds, with the iterations that finished before it kept.
"""

from __future__ import annotations

import itertools
import json
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dolambda import TaskError, foreach
from dolambda.emulator import Emulator
from tests.faults.conftest import Marks, backend_for, s3_client, summarise, wait_for

#: how long after the function timeout a failure may take to reach the client: the
#: worker's margin, the result's PUT and the client's next LIST, on a loaded machine
SLACK = 5.0


def failing_body(marks_dir: str, how: str, victim: int) -> Callable[[int], int]:
    """Records each execution; iteration ``victim`` fails in the way ``how`` says."""

    def body(x: int) -> int:
        import os as _os
        import time as _time
        import uuid as _uuid

        with open(_os.path.join(marks_dir, f"{x}-{_uuid.uuid4().hex}"), "w"):
            pass
        if x == victim:
            if how == "timeout":
                _time.sleep(120)
            elif how == "memory":
                hog = bytearray(700 << 20)  # zero pages: touch them so they are resident
                for i in range(0, len(hog), 4096):
                    hog[i] = 1
                _time.sleep(120)
            elif how == "exit":
                _os._exit(3)
            elif how == "segfault":
                import ctypes

                ctypes.string_at(0)
        return x * x

    return body


CASES = {
    # how: (function timeout, memory, the failure kind, what its message says)
    "timeout": (4.0, 1024, "timeout", "ran past the function's timeout: iteration 1 (the"),
    "memory": (20.0, 300, "memory", "the function's limit is 300 MB"),
    "exit": (20.0, 1024, "crashed", "exited with status 3"),
    "segfault": (20.0, 1024, "crashed", "killed by signal SIGSEGV"),
}


@pytest.mark.parametrize("how", list(CASES))
def test_failure_is_reported_within_the_timeout(
    how: str, make_emulator: Callable[..., Emulator], marks: Marks
) -> None:
    timeout, memory_mb, kind, says = CASES[how]
    emu = make_emulator(timeout=timeout, memory_mb=memory_mb, workers=2)
    # warm both environments first: the figure is the failure's, not a cold start's
    foreach(x=range(4)).chunk_size(1).run(lambda x: x, backend=backend_for(emu))
    n, chunk, victim = 6, 3, 1  # task 0 holds iterations 0, 1 (the victim) and 2
    started = time.monotonic()
    job = (
        foreach(x=range(n))
        .chunk_size(chunk)
        .errorhandling("pass")
        .submit(
            failing_body(marks.path, how, victim),
            backend=backend_for(emu, retries=0),
            progress=False,
        )
    )
    result = job.result(timeout=timeout + 60)
    took = time.monotonic() - started
    summarise(f"watchdog: {how}", n, None, marks, job.stats.retries, kind, started)
    # reported by the worker, within the function timeout plus a few seconds; a timed-out
    # chunk is split before its iteration is reported (issue 16 item 3): the victim's
    # half of the rest runs to the timeout once more, down to the victim alone at worst
    rounds = 3 if kind == "timeout" else 1
    assert took < rounds * timeout + SLACK, took
    # the iteration that finished before the victim is kept; the victim names its failure
    assert result[0] == 0 and result[3:] == [9, 16, 25], result
    error = result[victim]
    assert isinstance(error, TaskError) and error.index == victim, result
    assert error.error_type == kind, error
    assert says in str(error), str(error)
    assert f"iteration {victim}" in str(error), str(error)
    if kind in ("timeout", "memory"):  # split (a timed-out or out-of-memory chunk, issue
        # 16): the iteration after it runs in its own half, and only the failing one fails
        assert result[2] == 4, result
    else:  # the iteration after it never started: it fails with the task
        assert isinstance(result[2], TaskError) and result[2].error_type == kind
        assert marks.counts()[2] == 0
    # the runtime survived: Lambda itself timed nothing out and lost no environment
    stats = emu.stats
    assert stats.timeouts == 0 and stats.crashed == 0, stats
    # (the out-of-memory chunk of 3 is split down to the victim alone: it runs out of
    # memory in the chunk, in its half of 2, and alone, and no tier is above the base)
    assert stats.killed == (3 if how == "memory" else 0), stats
    # and the warm environment's next job runs (a new child, the same environment)
    cold = stats.cold_starts
    again = foreach(x=range(4)).chunk_size(1).run(lambda x: x + 1, backend=backend_for(emu))
    assert again == [1, 2, 3, 4]
    assert emu.stats.cold_starts == cold


def test_a_task_past_the_timeout_is_retried_by_the_client(
    make_emulator: Callable[..., Emulator], marks: Marks
) -> None:
    """The client owns retries: a timed-out task is sent again at once (no 1-minute
    wait), and the result of the new attempt is the task's result."""
    emu = make_emulator(timeout=3.0)
    marks_dir = marks.path  # a string: the body must not capture the test's objects

    def body(x: int) -> int:
        import os as _os
        import time as _time
        import uuid as _uuid

        runs = sum(1 for p in _os.listdir(marks_dir) if p.startswith(f"{x}-"))
        with open(_os.path.join(marks_dir, f"{x}-{_uuid.uuid4().hex}"), "w"):
            pass
        if x == 1 and runs == 0:
            _time.sleep(60)
        return -x

    started = time.monotonic()
    result = foreach(x=range(3)).chunk_size(1).run(body, backend=backend_for(emu, retries=1))
    took = time.monotonic() - started
    assert result == [0, -1, -2]
    assert marks.counts()[1] == 2
    assert took < 3.0 + 2 * SLACK, took
    assert emu.stats.timeouts == 0 and emu.stats.retried == 0  # Lambda retried nothing


def test_a_result_of_an_older_attempt_is_ignored(
    make_emulator: Callable[..., Emulator], marks: Marks
) -> None:
    """Attempt 0 outlives the client's deadline, so the client sends attempt 1; attempt
    0's result then arrives first and must not be taken for the task's (it is cleared,
    and attempt 1's result is the one delivered)."""
    emu = make_emulator(timeout=10.0)
    marks_dir = marks.path

    def body(x: int) -> int:
        import os as _os
        import time as _time
        import uuid as _uuid

        runs = sum(1 for p in _os.listdir(marks_dir) if p.startswith(f"{x}-"))
        with open(_os.path.join(marks_dir, f"{x}-{_uuid.uuid4().hex}"), "w"):
            pass
        # attempt 0 runs past the client's deadline (2 s + 2 s grace): attempt 1 is sent
        # at ~4 s and finishes 2.5 s later, so attempt 0's result (at 5 s) comes first
        _time.sleep(5.0 if runs == 0 else 2.5)
        return runs + 1

    backend = backend_for(emu, retries=1, task_timeout=2.0)
    # warm both environments: attempt 1 must not pay a cold start
    foreach(x=range(2)).chunk_size(1).run(lambda x: x, backend=backend)
    assert foreach(x=range(1)).chunk_size(1).run(body, backend=backend) == [2]
    assert marks.counts()[0] == 2


# ── the event-invoke config in the emulator ──

RAISING_HANDLER = """
import json
import time

CALLS = {calls!r}


def lambda_handler(event, context):
    with open(CALLS, "a") as f:
        left = context.get_remaining_time_in_millis()
        f.write(json.dumps({{"at": time.monotonic(), "remaining": left}}) + "\\n")
    raise RuntimeError("this handler always fails")
"""


def _raising_emulator(
    make_emulator: Callable[..., Emulator], tmp_path: Path, **kwargs: Any
) -> tuple[Emulator, Path]:
    root = tmp_path / "task-root"
    root.mkdir()
    calls = tmp_path / "calls.jsonl"
    (root / "lambda_function.py").write_text(
        textwrap.dedent(RAISING_HANDLER).format(calls=str(calls))
    )
    emu = make_emulator(task_root=root, workers=1, **kwargs)
    return emu, calls


def _records(emu: Emulator, bucket: str) -> list[dict[str, Any]]:
    s3 = s3_client(emu.endpoint_url)
    prefix = f"aws/lambda/async/{emu.function_name}/"
    found = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return [json.loads(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()) for o in found]


def test_emulator_retries_on_lambdas_schedule_then_writes_the_record(
    make_emulator: Callable[..., Emulator], tmp_path: Path, moto_url: str
) -> None:
    """retries=2: three attempts, 1 and then 2 (scaled) minutes apart; then the
    invocation record lands where Lambda puts it in an S3 on-failure destination."""
    scale = 0.02  # 60 s -> 1.2 s, 120 s -> 2.4 s
    dest = f"dlq-{uuid.uuid4().hex[:12]}"
    s3_client(moto_url).create_bucket(Bucket=dest)
    emu, calls = _raising_emulator(
        make_emulator, tmp_path, retries=2, time_scale=scale, on_failure=f"arn:aws:s3:::{dest}"
    )
    key = f"{emu.prefix}/queue/job-1/0000001.task"
    s3_client(emu.endpoint_url).put_object(Bucket=emu.bucket, Key=key, Body=b"x")
    wait_for(lambda: len(_records(emu, dest)) == 1, 60, "the on-failure record")
    at = [json.loads(line)["at"] for line in calls.read_text().splitlines()]
    assert len(at) == 3, at
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert 60 * scale <= gaps[0] < 60 * scale + 2.0, gaps
    assert 120 * scale <= gaps[1] < 120 * scale + 2.0, gaps
    (record,) = _records(emu, dest)
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["responsePayload"]["errorType"] == "RuntimeError"
    assert "always fails" in record["responsePayload"]["errorMessage"]
    assert record["requestPayload"]["Records"][0]["s3"]["object"]["key"].endswith("0000001.task")
    assert emu.stats.retried == 2 and emu.stats.destination_records == 1


def test_emulator_follows_the_functions_event_invoke_config(
    make_emulator: Callable[..., Emulator], tmp_path: Path, moto_url: str
) -> None:
    """The rules come from the function, as on Lambda: deploy's config (no retries) until
    a put-function-event-invoke-config says 1 retry and an S3 destination; the events
    after it follow the new config."""
    import boto3

    scale = 0.02
    dest = f"dlq-{uuid.uuid4().hex[:12]}"
    s3_client(moto_url).create_bucket(Bucket=dest)
    emu, calls = _raising_emulator(make_emulator, tmp_path, time_scale=scale)
    lam = boto3.client("lambda", endpoint_url=emu.endpoint_url, region_name=emu.region)
    got = lam.get_function_event_invoke_config(FunctionName=emu.function_name)
    assert got["MaximumRetryAttempts"] == 0  # as deployed
    lam.put_function_event_invoke_config(
        FunctionName=emu.function_name,
        MaximumRetryAttempts=1,
        MaximumEventAgeInSeconds=3600,
        DestinationConfig={"OnFailure": {"Destination": f"arn:aws:s3:::{dest}"}},
    )
    dispatcher = emu._dispatcher
    assert dispatcher is not None
    wait_for(lambda: dispatcher.rules.retries == 1, 10, "the emulator to read the new config")
    key = f"{emu.prefix}/queue/job-1/0000001.task"
    s3_client(emu.endpoint_url).put_object(Bucket=emu.bucket, Key=key, Body=b"x")
    wait_for(lambda: len(_records(emu, dest)) == 1, 60, "the on-failure record")
    assert len(calls.read_text().splitlines()) == 2  # the attempt and its one retry
    (record,) = _records(emu, dest)
    assert record["requestContext"]["approximateInvokeCount"] == 2
    assert emu.stats.retried == 1


def test_emulator_with_the_deployed_config_runs_a_failed_event_once(
    make_emulator: Callable[..., Emulator], tmp_path: Path
) -> None:
    """dolambda deploy's config (0 retries, no destination): one attempt, no record."""
    emu, calls = _raising_emulator(make_emulator, tmp_path)
    key = f"{emu.prefix}/queue/job-1/0000001.task"
    s3_client(emu.endpoint_url).put_object(Bucket=emu.bucket, Key=key, Body=b"x")
    wait_for(lambda: calls.exists() and emu.wait_idle(0.1), 30, "the one invocation")
    assert len(calls.read_text().splitlines()) == 1
    assert emu.stats.retried == 0 and emu.stats.destination_records == 0


def test_emulator_discards_an_event_past_the_maximum_age(
    make_emulator: Callable[..., Emulator], tmp_path: Path
) -> None:
    """An event that waited longer than max_event_age is not run; its record says so."""
    dest = f"dlq-{uuid.uuid4().hex[:12]}"
    emu, calls = _raising_emulator(
        make_emulator,
        tmp_path,
        max_event_age=60,
        time_scale=0.01,  # 0.6 s
        event_delay=1.5,
        on_failure=dest,
    )
    s3_client(emu.endpoint_url).create_bucket(Bucket=dest)
    key = f"{emu.prefix}/queue/job-1/0000001.task"
    s3_client(emu.endpoint_url).put_object(Bucket=emu.bucket, Key=key, Body=b"x")
    wait_for(lambda: len(_records(emu, dest)) == 1, 30, "the EventAgeExceeded record")
    (record,) = _records(emu, dest)
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert not calls.exists()
    assert emu.stats.expired == 1 and emu.stats.invocations == 0


def test_emulator_event_invoke_config_is_validated(moto_url: str) -> None:
    from dolambda import DolambdaError

    for bad in ({"retries": 3}, {"max_event_age": 30}, {"time_scale": 0}):
        with pytest.raises(DolambdaError, match="Emulator: "):
            Emulator(endpoint_url=moto_url, **bad)  # type: ignore[arg-type]
    with pytest.raises(DolambdaError, match="not an S3 bucket ARN"):
        Emulator(endpoint_url=moto_url, on_failure="arn:aws:sqs:us-east-1:1:q")
