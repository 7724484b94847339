"""dolambda's S3 wrapper against a real moto server over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from dolambda._aws.errors import Kind, kind_of, translate, translated
from dolambda._aws.percall import build_user_agent_once, resolve_endpoints_per_bucket, unreferenced
from dolambda._aws.s3 import RequestCounter, open_s3
from dolambda._errors import ConfigError, DeployError, StorageError
from tests.moto_server import MotoServer

BUCKET = "s3-client-tests"
CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with MotoServer() as url:
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", **CREDS).create_bucket(
            Bucket=BUCKET
        )
        yield url


def test_delete_keys_deletes_every_batch_of_a_large_key_list(moto_url: str) -> None:
    # 2,500 keys: three DeleteObjects (1,000 a call), sent side by side; keys that do not
    # exist are fine (a cleanup may list tasks that were never written)
    keys = [f"jobs/big/{i:05d}" for i in range(2_500)]
    real = [keys[0], keys[999], keys[1_000], keys[2_499]]
    sync = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", **CREDS)
    for key in real:
        sync.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    counter = RequestCounter()

    async def delete() -> None:
        async with open_s3(
            bucket=BUCKET,
            region="us-east-1",
            profile=None,
            endpoint_url=moto_url,
            pool=8,
            counter=counter,
            credentials=CREDS,
        ) as s3:
            await s3.delete_keys(iter(keys))

    asyncio.run(delete())
    assert counter.counts == {"delete": 3}
    left = sync.list_objects_v2(Bucket=BUCKET, Prefix="jobs/big/").get("Contents", [])
    assert left == []


# --- the one botocore -> dolambda table -------------------------------------------------


def _client_error(code: str, status: int = 400, message: str = "") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}},
        },
        "Op",
    )


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_client_error("NoSuchKey", 404), Kind.NO_SUCH_KEY),
        (_client_error("404", 404), Kind.NOT_FOUND),
        (_client_error("NoSuchBucket", 404), Kind.NO_SUCH_BUCKET),
        (_client_error("PreconditionFailed", 412), Kind.EXISTS),
        (_client_error("ConditionalRequestConflict", 409), Kind.WRITE_CONFLICT),
        (_client_error("AccessDenied", 403), Kind.DENIED),
        (_client_error("SomethingNew", 403), Kind.DENIED),  # by status
        (_client_error("InvalidAccessKeyId", 403), Kind.CREDENTIALS_REJECTED),  # code beats status
        (
            _client_error("InvalidParameterValueException", 400, "cannot be assumed"),
            Kind.ROLE_NOT_READY,
        ),
        (
            _client_error("InvalidParameterValueException", 400, "runtime python9"),
            Kind.RUNTIME_REFUSED,
        ),
        (_client_error("InvalidParameterValueException"), Kind.FAILED),
        (NoCredentialsError(), Kind.NO_CREDENTIALS),
        (EndpointConnectionError(endpoint_url="http://x"), Kind.UNREACHABLE),
        (ValueError("Invalid endpoint: nope"), Kind.BAD_ENDPOINT),
        (ValueError("something else"), Kind.FAILED),
        (RuntimeError("boom"), Kind.FAILED),
    ],
)
def test_the_most_specific_row_gives_the_kind(exc: BaseException, kind: Kind) -> None:
    assert kind_of(exc) is kind


def test_each_side_says_its_own_sentence() -> None:
    denied = _client_error("AccessDenied", 403, "not authorized")
    client = translate(denied, "client", action="reading", resource="s3://b/k", bucket="b")
    assert isinstance(client, StorageError)
    assert str(client) == (
        "access to s3://b/k was denied (AccessDenied) while reading; check the credentials and "
        "that their policy allows it"
    )
    deploy = translate(denied, "deploy", action="s3:GetObject", resource="bucket b")
    assert isinstance(deploy, DeployError)
    assert "may not perform s3:GetObject on bucket b (AWS said: not authorized)" in str(deploy)
    # a row with nothing to say for a side lets the next match speak: the client has no
    # sentence of its own for a bucket name taken by another account
    taken = _client_error("BucketAlreadyExists", 409)
    assert "another AWS account" in str(translate(taken, "deploy", action="a", resource="r"))
    said = str(translate(taken, "client", action="writing", resource="bucket 'b'"))
    assert said.startswith("S3/Lambda request failed for bucket 'b' while writing: ClientError")
    creds = translate(NoCredentialsError(), "client", action="", resource="")
    assert isinstance(creds, ConfigError) and "AWS_PROFILE" in str(creds)


def test_translated_passes_dolambda_errors_and_uncaught_classes_through() -> None:
    with pytest.raises(ConfigError, match="mine"), translated("client", action="a", resource="r"):
        raise ConfigError("mine")
    aws_only = translated("deploy", action="a", resource="r", catch=(ClientError,))
    with pytest.raises(KeyError), aws_only:
        raise KeyError("a bug, not AWS")
    aws_only = translated("deploy", action="a", resource="r", catch=(ClientError,))
    with pytest.raises(DeployError, match="a on r failed: NoSuchEntity") as info, aws_only:
        raise _client_error("NoSuchEntity", 404)
    assert isinstance(info.value.__cause__, ClientError)


def test_s3_errors_over_http(moto_url: str) -> None:
    async def run() -> tuple[bytes | None, BaseException]:
        async with open_s3(
            bucket="no-such-bucket-here",
            region="us-east-1",
            profile=None,
            endpoint_url=moto_url,
            pool=2,
            counter=RequestCounter(),
            credentials=CREDS,
        ) as missing_bucket:
            try:
                await missing_bucket.put("k", b"x")
            except StorageError as exc:
                error: BaseException = exc
        async with open_s3(
            bucket=BUCKET,
            region="us-east-1",
            profile=None,
            endpoint_url=moto_url,
            pool=2,
            counter=RequestCounter(),
            credentials=CREDS,
        ) as s3:
            return await s3.get("no/such/key"), error

    missing_key, missing_bucket = asyncio.run(run())
    assert missing_key is None
    assert "bucket 'no-such-bucket-here' does not exist (region us-east-1)" in str(missing_bucket)


def test_a_409_on_the_result_put_is_retried_and_only_412_means_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """S3 answers a conditional PUT that races another write with 409 and says to retry it;
    moto never races, so a client that fails twice stands in for S3 here."""
    from dolambda._aws import worker
    from dolambda._wire.models import TaskOutcome

    monkeypatch.setattr(worker.time, "sleep", lambda s: None)

    class RacingS3:
        def __init__(self, errors: list[Exception]) -> None:
            self.errors, self.puts = errors, 0

        def put_object(self, **kw: Any) -> None:
            self.puts += 1
            if self.errors:
                raise self.errors.pop(0)

    outcome = TaskOutcome(job_id="20260101T000000-abcdef01", task_id=0)
    racing = RacingS3([_client_error("ConditionalRequestConflict", 409)] * 2)
    assert worker.put_result(racing, "b", "p", b"k" * 32, outcome) is True
    assert racing.puts == 3
    exists = RacingS3([_client_error("PreconditionFailed", 412)])
    assert worker.put_result(exists, "b", "p", b"k" * 32, outcome) is False
    assert exists.puts == 1


# --- S3's endpoint rules: once per bucket, not per key ------------------------------------


def _count_rule_evaluations(client: Any) -> list[int]:
    ruleset = client._ruleset_resolver._provider.ruleset
    calls = [0]
    evaluate = ruleset.evaluate

    def counted(params: Any) -> Any:
        calls[0] += 1
        return evaluate(params)

    ruleset.evaluate = counted
    return calls


def test_the_clients_resolve_s3_endpoints_once_per_bucket_not_per_key(moto_url: str) -> None:
    """botocore evaluates S3's endpoint rules again for every new key (its cache is keyed
    by Key, which no rule reads; boto/botocore#3692 fixed it upstream): the worker's boto3
    client and the job client evaluate them once, and every request still works."""
    plain = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", **CREDS)
    plain_calls = _count_rule_evaluations(plain)
    fixed = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", **CREDS)
    assert resolve_endpoints_per_bucket(fixed) == ("Key", "Prefix", "CopySource")
    assert resolve_endpoints_per_bucket(fixed) == ("Key", "Prefix", "CopySource")  # (once)
    calls = _count_rule_evaluations(fixed)
    for client in (plain, fixed):
        for i in range(20):
            client.put_object(Bucket=BUCKET, Key=f"ep/{id(client)}/{i}", Body=b"x")
            client.get_object(Bucket=BUCKET, Key=f"ep/{id(client)}/{i}")["Body"].read()
    assert plain_calls[0] >= 20
    assert calls[0] == 1
    fixed.copy_object(
        Bucket=BUCKET, Key="ep/copy", CopySource={"Bucket": BUCKET, "Key": f"ep/{id(fixed)}/0"}
    )
    listed = fixed.list_objects_v2(Bucket=BUCKET, Prefix="ep/copy")["Contents"]
    assert [o["Key"] for o in listed] == ["ep/copy"]

    async def job_client() -> int:
        async with open_s3(
            bucket=BUCKET,
            region="us-east-1",
            profile=None,
            endpoint_url=moto_url,
            pool=8,
            counter=RequestCounter(),
            credentials=CREDS,
        ) as s3:
            counted = _count_rule_evaluations(s3.client)
            for i in range(10):
                await s3.put(f"ep/async/{i}", b"y")
                assert await s3.get(f"ep/async/{i}") == b"y"
            return counted[0]

    assert asyncio.run(job_client()) == 1


def test_a_parameter_a_rule_refers_to_is_kept() -> None:
    ruleset = {
        "parameters": {"Bucket": {}, "Key": {}, "Prefix": {}},
        "rules": [{"conditions": [{"fn": "isSet", "argv": [{"ref": "Key"}]}], "rules": []}],
    }
    assert unreferenced(ruleset) == ("Prefix",)  # (CopySource: not declared here)


def test_the_user_agent_is_built_once_per_set_of_features_and_is_the_same(moto_url: str) -> None:
    """botocore builds the User-Agent twice a request; built once per set of feature ids,
    the header sent is the very one botocore would have built."""
    sent: dict[str, list[str]] = {"plain": [], "once": []}
    clients = {
        name: boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", **CREDS)
        for name in sent
    }
    creator = clients["once"]._user_agent_creator
    built = [0]
    original = creator.to_string

    def counted() -> str:
        built[0] += 1
        text: str = original()
        return text

    creator.to_string = counted
    assert build_user_agent_once(clients["once"]) and build_user_agent_once(clients["once"])
    for name, client in clients.items():
        client.meta.events.register(
            "before-send.s3",
            lambda request, name=name, **_: sent[name].append(request.headers["User-Agent"]),
        )
        for i in range(3):
            client.put_object(Bucket=BUCKET, Key=f"ua/{name}/{i}", Body=b"x")
            client.get_object(Bucket=BUCKET, Key=f"ua/{name}/{i}")["Body"].read()
        client.list_objects_v2(Bucket=BUCKET, Prefix="ua/")
    assert sent["once"] == sent["plain"]
    assert len(set(sent["once"])) >= 2  # (the requests' feature ids differ: m/...)
    # 7 requests, each building it twice without: once per set of features with
    assert built[0] <= len(set(sent["once"])) + 2 < 14
