"""AWS's limits, at their edges: Invoke payload sizes (the emulator rejects exactly what
Lambda rejects, and the client inlines only what fits), the direct-upload threshold,
the offered runtimes, and the account's concurrency quota."""

from __future__ import annotations

import gc
import json
import random
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from dolambda import LambdaBackend, foreach
from dolambda._backends.lambda_.dispatch import EVENT_PAYLOAD_LIMIT, INLINE_LIMIT, invoke_payload
from dolambda.emulator import Emulator

pytestmark = pytest.mark.timeout(120)

MB = 1024 * 1024


@pytest.fixture
def invoke_emulator(moto_url: str) -> Iterator[Emulator]:
    name = f"lim-{uuid.uuid4().hex[:10]}"
    with Emulator(
        workers=1,
        timeout=30,
        endpoint_url=moto_url,
        bucket=name,
        function_name=name,
        trigger="invoke",
    ) as emu:
        yield emu


def padded(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes that the handler ignores."""
    frame = len(json.dumps({"pad": ""}).encode())
    body = json.dumps({"pad": "x" * (size - frame)}).encode()
    assert len(body) == size
    return body


def size_of(x: bytes) -> int:
    return len(x)


# --------------------------------------------------------------------------- Invoke payloads


# botocore's own (sync) connection after the 1 MB request is dropped by urllib3 without a
# close; it is this test's boto3 client's socket, not dolambda's: collected here, ignored
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_emulator_rejects_exactly_what_lambda_rejects(invoke_emulator: Emulator) -> None:
    """1 MB for Event (since October 2025), 6 MB for RequestResponse: the limit itself is
    accepted, one byte more is Lambda's 413 RequestEntityTooLargeException."""
    emu = invoke_emulator
    lam = boto3.client("lambda", endpoint_url=emu.endpoint_url, region_name=emu.region)
    try:
        check_invoke_limits(lam, emu.function_name)
    finally:
        lam.close()
        gc.collect()
    assert emu.wait_idle(20)
    assert emu.stats.events == 2  # the two that fit, and nothing else


def check_invoke_limits(lam: Any, name: str) -> None:

    ok = lam.invoke(FunctionName=name, InvocationType="Event", Payload=padded(1 * MB))
    assert ok["StatusCode"] == 202
    with pytest.raises(ClientError) as info:
        lam.invoke(FunctionName=name, InvocationType="Event", Payload=padded(1 * MB + 1))
    error = info.value.response
    assert error["Error"]["Code"] == "RequestEntityTooLargeException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert error["Error"]["Message"] == (
        f"{MB + 1} byte payload is too large for the Event invocation type (limit {MB} bytes)"
    )

    answer = lam.invoke(FunctionName=name, Payload=padded(6 * MB))
    assert "FunctionError" not in answer
    assert json.loads(answer["Payload"].read()) == {"outcomes": {}}
    with pytest.raises(ClientError) as info:
        lam.invoke(FunctionName=name, Payload=padded(6 * MB + 1))
    error = info.value.response
    assert error["Error"]["Code"] == "RequestEntityTooLargeException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert error["Error"]["Message"] == (
        f"Request must be smaller than {6 * MB} bytes for the InvokeFunction operation"
    )


def test_inline_payloads_stay_under_the_limit_with_room_for_the_failure_record() -> None:
    assert EVENT_PAYLOAD_LIMIT == MB
    # the on-failure record wraps the payload: keep room for its context and the error
    assert 32 * 1024 <= EVENT_PAYLOAD_LIMIT - INLINE_LIMIT <= 128 * 1024
    key = "dolambda/queue/0123456789abcdef/00000000.invoke"
    frame = len(json.dumps({"bucket": "b", "key": key, "task": ""}).encode())
    # the largest blob whose payload fits, and the first that does not (base64: 3 -> 4)
    fits = (INLINE_LIMIT - frame) // 4 * 3
    at_edge = invoke_payload("b", key, bytes(fits))
    assert "task" in at_edge and len(json.dumps(at_edge).encode()) <= INLINE_LIMIT
    over = invoke_payload("b", key, bytes(fits + 1))
    assert over == {"bucket": "b", "key": key}
    assert fits > 700 * 1024  # tasks up to ~700 KiB travel inline


@pytest.mark.parametrize(("size", "inline"), [(200 * 1024, True), (800 * 1024, False)])
def test_tasks_travel_inline_when_they_fit_and_through_s3_when_not(
    invoke_emulator: Emulator, size: int, inline: bool
) -> None:
    """A 200 KiB task (273 KiB once base64'd: over the old 256 KB limit) rides in the Invoke;
    an 800 KiB one (over 1 MB in base64) goes through S3. Both run."""
    emu = invoke_emulator
    blob = random.Random(size).randbytes(size)  # incompressible
    backend = LambdaBackend(**emu.backend_settings())
    assert foreach(x=[blob]).do_lambda(size_of, backend=backend) == [size]
    [event] = [e for s, e in emu.recent_events if s == "invoke"]
    assert ("task" in event) is inline
    if inline:
        assert len(json.dumps(event).encode()) <= INLINE_LIMIT
