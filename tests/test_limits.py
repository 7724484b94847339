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
from tests.bodies.common import identity, size_of

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


# --------------------------------------------------------------------------- deploy


def test_direct_upload_keeps_a_margin_under_lambdas_request_limit() -> None:
    """The zip rides base64'd in a JSON request Lambda caps at 69,905,067 bytes: at the
    threshold, with the largest configuration deploy sends, the request still fits
    (50 MiB, Lambda's nominal "50 MB", does not)."""
    from botocore import serialize
    from botocore.session import get_session

    from dolambda.deploy.package import DIRECT_UPLOAD_LIMIT, LAMBDA_REQUEST_LIMIT

    operation = get_session().get_service_model("lambda").operation_model("CreateFunction")
    serializer = serialize.create_serializer(operation.metadata["protocol"])

    def request_bytes(zipped: int) -> int:
        params = {
            "FunctionName": "f" * 64,
            "Runtime": "python3.14",
            "Role": "arn:aws:iam::123456789012:role/" + "r" * 64,
            "Handler": "handler.lambda_function.lambda_handler",
            "Code": {"ZipFile": bytes(zipped)},
            "Description": "dolambda worker (S3 queue)",
            "Timeout": 900,
            "MemorySize": 10240,
            "PackageType": "Zip",
            "Architectures": ["arm64"],
            # Lambda caps a function's environment at 4 KB in all
            "Environment": {"Variables": {"DOLAMBDA_SIGNING_KEY": "k" * 4000}},
        }
        return len(serializer.serialize_to_request(params, operation)["body"])

    assert request_bytes(DIRECT_UPLOAD_LIMIT) <= LAMBDA_REQUEST_LIMIT - 1024 * 1024
    assert request_bytes(50 * MB) > LAMBDA_REQUEST_LIMIT


@pytest.mark.parametrize(("python", "since"), [("3.9", "2025-12-15"), ("3.10", "2026-06-30")])
def test_deprecated_runtimes_are_not_offered(python: str, since: str) -> None:
    from dolambda import deploy as dep
    from dolambda._errors import InvalidArgument

    assert dep.LAMBDA_PYTHONS == ("3.11", "3.12", "3.13", "3.14")
    settings = dep.DeploySettings(bucket="good-bucket", region="us-east-1")
    # refused before any AWS call (nothing listens on this endpoint)
    with pytest.raises(InvalidArgument, match=rf"python{python} runtime is deprecated") as info:
        dep.deploy(settings, python=python)
    assert since in str(info.value) and "python3.11, python3.12" in str(info.value)


# --------------------------------------------------------------------------- failure labels


# --------------------------------------------------------------------------- concurrency


def test_the_client_sizes_jobs_from_the_accounts_concurrency() -> None:
    """A new account's quota of 10 (the emulator's GetAccountSettings says so): the client
    plans ~4 tasks per available execution instead of assuming 1,000; a reservation on
    the function wins; a reservation of 0 fails before anything is sent."""
    from dolambda._errors import ConfigError

    with Emulator(workers=2, timeout=30, account_concurrency=10) as emu:
        lam = boto3.client("lambda", endpoint_url=emu.endpoint_url, region_name=emu.region)
        try:
            settings = lam.get_account_settings()["AccountLimit"]
            assert settings["ConcurrentExecutions"] == 10
            assert settings["UnreservedConcurrentExecutions"] == 10

            backend = LambdaBackend(**{**emu.backend_settings(), "max_concurrency": None})
            assert backend.workers == 1000  # nothing read yet
            assert foreach(x=range(200)).do_lambda(identity, backend=backend) == list(range(200))
            assert backend.workers == 10
            assert emu.wait_idle(20)
            # 200 iterations over 4 x 10 tasks: 40 tasks of 5, not 200 tasks of 1
            assert emu.stats.invocations == 40

            lam.put_function_concurrency(
                FunctionName=emu.function_name, ReservedConcurrentExecutions=3
            )
            reserved = LambdaBackend(**{**emu.backend_settings(), "max_concurrency": None})
            assert foreach(x=range(12)).do_lambda(identity, backend=reserved) == list(range(12))
            assert reserved.workers == 3 and reserved.chunk_size_for(120) == 10

            # explicit max_concurrency wins and asks nothing
            explicit = LambdaBackend(**{**emu.backend_settings(), "max_concurrency": 7})
            assert foreach(x=range(3)).do_lambda(identity, backend=explicit) == [0, 1, 2]
            assert explicit.workers == 7

            lam.put_function_concurrency(
                FunctionName=emu.function_name, ReservedConcurrentExecutions=0
            )
            events = emu.stats.events
            throttled = LambdaBackend(**{**emu.backend_settings(), "max_concurrency": None})
            with pytest.raises(ConfigError, match="reserved concurrency of 0") as info:
                foreach(x=range(3)).do_lambda(identity, backend=throttled)
            assert emu.function_name in str(info.value)
            assert emu.stats.events == events  # nothing was sent
        finally:
            lam.close()


def test_doctor_reports_the_concurrency(tmp_path: Any) -> None:
    from dolambda import deploy as dep

    with Emulator(workers=1, timeout=30, account_concurrency=10) as emu:
        settings = dep.DeploySettings(
            bucket=emu.bucket,
            function_name=emu.function_name,
            region=emu.region,
            endpoint_url=emu.endpoint_url,
        )
        # deployed as `dolambda deploy` does it, so the function check (and this one) runs
        dep.deploy(settings, package=dep.build_package(dependencies=False, cache=tmp_path))

        def concurrency() -> Any:
            [result] = [r for r in dep.doctor(settings) if r.name == "concurrency"]
            return result

        low = concurrency()
        assert low.ok, str(low)
        assert low.detail.startswith("10 at once (the account's quota is 10, 10 unreserved)")
        assert "below AWS's default of 1,000" in low.detail and "Service Quotas" in low.detail

        lam = boto3.client("lambda", endpoint_url=emu.endpoint_url, region_name=emu.region)
        try:
            lam.put_function_concurrency(
                FunctionName=emu.function_name, ReservedConcurrentExecutions=0
            )
        finally:
            lam.close()
        blocked = concurrency()
        assert not blocked.ok
        assert "reserved concurrency of 0" in blocked.detail
        assert blocked.fix.startswith("aws lambda delete-function-concurrency")


def test_a_zip_past_the_request_limit_goes_through_s3(moto_url: str, tmp_path: Any) -> None:
    """The emulator's Lambda refuses a CreateFunction past 69,905,067 bytes as Lambda does;
    deploy's threshold sends such a zip through S3 instead."""
    import base64
    import hashlib

    from dolambda import deploy as dep
    from dolambda._errors import DeployError

    zipped = tmp_path / "big.zip"
    data = bytes(50 * MB)  # Lambda's nominal "50 MB", which base64 takes past the limit
    zipped.write_bytes(data)
    package = dep.Package(
        path=zipped,
        code_sha256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
        size=len(data),
        unzipped_size=len(data),
        cached=False,
    )
    name = f"lim-{uuid.uuid4().hex[:10]}"
    settings = dep.DeploySettings(
        bucket=name, function_name=name, region="us-east-1", endpoint_url=moto_url
    )
    with pytest.raises(DeployError, match="smaller than 69905067 bytes for the CreateFunction"):
        dep.deploy(settings, package=package, upload_limit=len(data))
    changes = dep.deploy(settings, package=package)  # the default threshold: via S3
    assert any(str(c).startswith("created   function") for c in changes), changes
