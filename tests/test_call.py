"""``trigger="call"`` on the real emulator: synchronous invokes whose responses carry the
results. Request counts, a result too large for the response, throttling (429) beyond
the function's concurrency, and a function error answered for a task."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from dolambda import LambdaBackend, TaskError, foreach
from dolambda._aws.worker import RESPONSE_BUDGET
from dolambda._errors import SignatureError
from dolambda.emulator import Emulator
from tests.bodies.call import BIG, big, exit_on_1, kill_runtime_on_1, sleeps, slow_square, square

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def emu(moto_url: str) -> Iterator[Emulator]:
    name = f"call-{uuid.uuid4().hex[:10]}"
    with Emulator(
        workers=2, timeout=6, endpoint_url=moto_url, bucket=name, function_name=name
    ) as instance:
        yield instance


def backend(emu: Emulator, **kwargs: Any) -> LambdaBackend:
    settings = {**emu.backend_settings(), "trigger": "call", "task_timeout": 6.0}
    settings.update(kwargs)
    return LambdaBackend(**settings)


def test_results_come_in_the_responses_without_s3_requests(emu: Emulator) -> None:
    """Per task: one call, no client S3 request, one worker request (its result PUT);
    the client's per-job constant is the same for 1 task and for 20."""
    counts = {}
    for n in (1, 20):
        job = foreach(x=range(n)).chunk_size(1).submit(square, backend=backend(emu), progress=False)
        assert job.result() == [x * x for x in range(n)]
        requests = dict(job.stats.client_s3_requests)
        assert requests.pop("call") == n
        counts[n] = requests
        # the result PUT (and a worker new to this test's module GETs its code archive)
        worker = [t.s3_requests for t in job.stats.tasks]
        assert set(worker) <= {1, 2} and worker.count(2) <= 2, worker
        assert job.stats.throttles == 0
    assert counts[1] == counts[20]
    assert "list" not in counts[20] and "get" not in counts[20]


def test_a_result_too_large_for_the_response_comes_through_s3(emu: Emulator) -> None:
    job = foreach(x=range(2)).chunk_size(1).submit(big, backend=backend(emu), progress=False)
    got = job.result()
    assert [len(b) for b in got] == [BIG] * 2
    assert 4 * BIG / 3 > RESPONSE_BUDGET
    assert job.stats.client_s3_requests.get("get") == 2  # one GET per large result


def test_calls_beyond_the_concurrency_are_throttled_and_sent_again(emu: Emulator) -> None:
    """The client believes in 6 concurrent calls; the function has 2: Lambda (the
    emulator) answers the others 429, the client backs off and the job completes."""
    before = emu.stats.throttled
    job = (
        foreach(x=range(12))
        .chunk_size(1)
        .submit(slow_square, backend=backend(emu, max_concurrency=6), progress=False)
    )
    assert job.result() == [x * x for x in range(12)]
    assert job.stats.throttles > 0
    assert emu.stats.throttled - before == job.stats.throttles
    assert f"{job.stats.throttles} calls throttled" in job.stats.summary()
    assert job.stats.client_s3_requests["call"] == 12 + job.stats.throttles


def test_the_emulator_throttles_synchronous_invokes_beyond_the_concurrency(
    emu: Emulator,
) -> None:
    """Two running calls fill the function; a third is refused with Lambda's 429."""
    from concurrent.futures import ThreadPoolExecutor

    from botocore.config import Config
    from botocore.exceptions import ClientError

    lam = boto3.client(
        "lambda",
        endpoint_url=emu.endpoint_url,
        region_name=emu.region,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=30),
    )
    job = (
        foreach(x=range(2))
        .chunk_size(1)
        .submit(
            sleeps,
            backend=backend(emu, max_concurrency=2),
            progress=False,
        )
    )
    try:
        deadline = time.monotonic() + 10
        while emu.stats.invocations - emu.stats.completed < 2:  # both slots busy
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with ThreadPoolExecutor(1) as pool:
            refused = pool.submit(
                lambda: lam.invoke(FunctionName=emu.function_name, Payload=b'{"hello": 1}')
            )
            with pytest.raises(ClientError) as info:
                refused.result(timeout=20)
        error = info.value.response
        assert error["Error"]["Code"] == "TooManyRequestsException"
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 429
    finally:
        assert job.result(timeout=30) == [0, 1]
    ok = lam.invoke(FunctionName=emu.function_name, Payload=b'{"hello": 1}')  # room again
    assert json.loads(ok["Payload"].read()) == {"outcomes": {}}


@pytest.mark.parametrize("trigger", ["invoke", "call"])
def test_a_dying_worker_is_the_same_iteration_error(emu: Emulator, trigger: str) -> None:
    got = (
        foreach(x=range(3))
        .chunk_size(1)
        .errorhandling("pass")
        .do_lambda(exit_on_1, backend=backend(emu, trigger=trigger, retries=1), progress=False)
    )
    assert got[0] == 0 and got[2] == 2
    assert isinstance(got[1], TaskError)
    assert got[1].error_type == "crashed"
    assert "exited with status 3" in str(got[1])


@pytest.mark.parametrize("trigger", ["invoke", "call"])
def test_a_wrong_signing_key_is_the_same_job_error(emu: Emulator, trigger: str) -> None:
    wrong = backend(emu, trigger=trigger, signing_key="11" * 32)
    with pytest.raises(SignatureError):
        foreach(x=range(2)).chunk_size(1).do_lambda(square, backend=wrong, progress=False)


@pytest.mark.parametrize("trigger", ["invoke", "call"])
def test_a_function_error_is_the_same_iteration_error(emu: Emulator, trigger: str) -> None:
    """The handler's own process dies: Lambda answers the call with a function error
    (X-Amz-Function-Error) and no result exists; with the invoke trigger nothing answers
    and the task's deadline passes. Either way iteration 1 is lost, the others are in."""
    started = time.monotonic()
    got = (
        foreach(x=range(3))
        .chunk_size(1)
        .errorhandling("pass")
        .do_lambda(
            kill_runtime_on_1,
            backend=backend(emu, trigger=trigger, retries=0, task_timeout=3.0),
            progress=False,
        )
    )
    assert got[0] == 0 and got[2] == 2
    assert isinstance(got[1], TaskError)
    assert got[1].error_type == "lost"
    assert "no result for task 1 after 1 attempt(s)" in str(got[1])
    if trigger == "call":
        assert "the function failed (Unhandled)" in str(got[1])
        # the answer, not the deadline: the task's 3 s timeout + its 2.5 s grace (a loaded
        # machine took 3.6 s to start three workers and answer)
        assert time.monotonic() - started < 3.0 + 2.5
