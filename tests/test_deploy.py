"""dolambda deploy / doctor / destroy against a moto server over HTTP, and the package build."""

from __future__ import annotations

import importlib
import json
import os
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from dolambda import cli
from dolambda import deploy as dep
from dolambda._aws.errors import translate
from dolambda._backends.lambda_ import code as lambda_code
from dolambda._config import config_path, load_config
from dolambda._errors import InvalidArgument
from dolambda._wire import keys
from dolambda.deploy.aws import Clients, call
from dolambda.deploy.bucket import bucket_region
from dolambda.deploy.package import WORKER_MODULES, python_version, wheel_platforms
from dolambda.deploy.settings import validate_bucket_name
from tests.moto_server import MotoServer, free_port

BUCKET = "dl-test-queue"
ACCOUNT = "123456789012"
RUNTIME = f"python{python_version()}"


@pytest.fixture(scope="module")
def server() -> Iterator[MotoServer]:
    srv = MotoServer()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def url(server: MotoServer) -> str:
    server.reset()
    return server.url


@pytest.fixture(scope="session")
def small_package(tmp_path_factory: pytest.TempPathFactory) -> dep.Package:
    """dolambda's own files only: enough for moto, which never runs the code."""
    return dep.build_package(dependencies=False, cache=tmp_path_factory.mktemp("pkgcache"))


@pytest.fixture(scope="session")
def local_package(tmp_path_factory: pytest.TempPathFactory) -> dep.Package:
    """A real build with pip, for this machine's platform (one per test session)."""
    cache = tmp_path_factory.mktemp("localcache")
    try:
        return dep.build_package(target="local", cache=cache)
    except dep.DeployError as exc:
        if "pip could not install" in str(exc):
            pytest.skip(f"pip cannot fetch the dependencies here: {exc}")
        raise


def settings(url: str, **kw: Any) -> dep.DeploySettings:
    base: dict[str, Any] = {"bucket": BUCKET, "region": "us-east-1", "endpoint_url": url}
    return dep.DeploySettings(**{**base, **kw})


def clients(url: str, region: str = "us-east-1") -> dict[str, Any]:
    return {
        name: boto3.client(name, region_name=region, endpoint_url=url)
        for name in ("s3", "iam", "lambda")
    }


def run_deploy(url: str, pkg: dep.Package, **kw: Any) -> list[dep.Change]:
    return dep.deploy(settings(url, **kw), package=pkg)


def actions(changes: list[dep.Change]) -> dict[str, str]:
    return {c.resource.split(" ")[0] + " " + c.resource.split(" ")[1]: c.action for c in changes}


# --- deploy -----------------------------------------------------------------------------


def test_deploy_into_empty_account_creates_everything(url: str, small_package: dep.Package) -> None:
    changes = run_deploy(url, small_package)
    assert {c.action for c in changes} <= {"created", "unchanged", "skipped"}
    assert all(str(c).count("\n") == 0 for c in changes)
    c = clients(url)
    s3, iam, lam = c["s3"], c["iam"], c["lambda"]
    # bucket
    pab = s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert all(pab.values()) and len(pab) == 4
    enc = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]
    assert enc["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    rules = s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert [r["ID"] for r in rules] == ["dolambda-dolambda-expire"]
    assert rules[0]["Filter"] == {"Prefix": "dolambda/"} and rules[0]["Expiration"] == {"Days": 7}
    # role: assumable by Lambda only, one inline least-privilege policy
    role = iam.get_role(RoleName="dolambda-dolambda")["Role"]
    trust = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust[0]["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert iam.list_attached_role_policies(RoleName="dolambda-dolambda")["AttachedPolicies"] == []
    doc = iam.get_role_policy(RoleName="dolambda-dolambda", PolicyName="dolambda-least-privilege")
    grants = {
        (a, r)
        for st in doc["PolicyDocument"]["Statement"]
        for a in st["Action"]
        for r in st["Resource"]
    }
    logs = f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/aws/lambda/dolambda"
    assert grants == {
        ("s3:GetObject", f"arn:aws:s3:::{BUCKET}/dolambda/queue/*"),
        ("s3:GetObject", f"arn:aws:s3:::{BUCKET}/dolambda/jobs/*"),
        ("s3:GetObject", f"arn:aws:s3:::{BUCKET}/dolambda/bodies/*"),
        ("s3:GetObject", f"arn:aws:s3:::{BUCKET}/dolambda/code/*"),
        ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/dolambda/results/*"),
        *{
            (a, r)
            for a in ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents")
            for r in (logs, logs + ":*")
        },
        # the 404 (not 403) for a task object that is gone, scoped to the prefix
        ("s3:ListBucket", f"arn:aws:s3:::{BUCKET}"),
        # a remote dispatcher: task objects under queue/, and its own function
        ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/dolambda/queue/*.task"),
        ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/dolambda/queue/*.itask"),
        ("lambda:InvokeFunction", f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:dolambda"),
    }
    [listing] = [st for st in doc["PolicyDocument"]["Statement"] if st["Sid"] == "ListOwnKeys"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["dolambda/*"]}}
    # function
    fn = lam.get_function(FunctionName="dolambda")["Configuration"]
    assert fn["Runtime"] == RUNTIME
    assert fn["Handler"] == "handler.lambda_function.lambda_handler"
    assert (fn["MemorySize"], fn["Timeout"], fn["Architectures"]) == (1024, 900, ["x86_64"])
    assert fn["Role"] == role["Arn"]
    assert fn["CodeSha256"] == small_package.code_sha256
    env = fn["Environment"]["Variables"]
    assert env["DOLAMBDA_PREFIX"] == "dolambda" and env["DOLAMBDA_BUCKET"] == BUCKET
    assert len(bytes.fromhex(env["DOLAMBDA_SIGNING_KEY"])) == 32
    eic = lam.get_function_event_invoke_config(FunctionName="dolambda")
    # the client owns retries, and the worker reports its own failures: no destination
    assert eic["MaximumRetryAttempts"] == 0 and eic["MaximumEventAgeInSeconds"] > 0
    assert not (eic.get("DestinationConfig") or {}).get("OnFailure", {}).get("Destination")
    # permission: S3, this bucket, this account
    st = json.loads(lam.get_policy(FunctionName="dolambda")["Policy"])["Statement"]
    assert len(st) == 1 and st[0]["Principal"] == {"Service": "s3.amazonaws.com"}
    assert st[0]["Condition"]["ArnLike"]["AWS:SourceArn"] == f"arn:aws:s3:::{BUCKET}"
    assert st[0]["Condition"]["StringEquals"]["AWS:SourceAccount"] == ACCOUNT
    # notification
    notif = s3.get_bucket_notification_configuration(Bucket=BUCKET)
    (entry,) = notif["LambdaFunctionConfigurations"]
    assert entry["Id"] == "dolambda-dolambda"
    assert entry["LambdaFunctionArn"] == fn["FunctionArn"]
    assert entry["Events"] == ["s3:ObjectCreated:*"]
    rules_ = {r["Name"].lower(): r["Value"] for r in entry["Filter"]["Key"]["FilterRules"]}
    assert rules_ == {"prefix": "dolambda/queue/", "suffix": ".task"}
    # client config, mode 0600
    config = load_config()
    assert config is not None
    assert (config.bucket, config.function_name, config.region) == (BUCKET, "dolambda", "us-east-1")
    assert config.signing_key == env["DOLAMBDA_SIGNING_KEY"] and config.endpoint_url == url
    assert stat.S_IMODE(os.stat(config_path()).st_mode) == 0o600


def test_second_deploy_changes_nothing(url: str, small_package: dep.Package) -> None:
    run_deploy(url, small_package)
    key = load_config().signing_key  # type: ignore[union-attr]
    again = run_deploy(url, small_package)
    assert [c.action for c in again if c.action not in ("unchanged", "skipped")] == []
    assert len(again) >= 12
    assert load_config().signing_key == key  # type: ignore[union-attr]


def test_rotate_key_replaces_it_in_function_and_config(
    url: str, small_package: dep.Package
) -> None:
    run_deploy(url, small_package)
    old = load_config().signing_key  # type: ignore[union-attr]
    run_deploy(url, small_package, rotate_key=True)
    new = load_config().signing_key  # type: ignore[union-attr]
    assert new and new != old
    fn = clients(url)["lambda"].get_function_configuration(FunctionName="dolambda")
    assert fn["Environment"]["Variables"]["DOLAMBDA_SIGNING_KEY"] == new


def test_deploy_updates_only_what_differs(url: str, small_package: dep.Package) -> None:
    run_deploy(url, small_package)
    env0 = clients(url)["lambda"].get_function_configuration(FunctionName="dolambda")
    again = run_deploy(url, small_package, memory_mb=2048, timeout=300, expire_days=3)
    changed = {c.resource: c for c in again if c.action != "unchanged" and c.action != "skipped"}
    assert set(changed) == {
        "function dolambda",
        # (a new timeout: the tiers' versions are published again; 2048 MB is now the base)
        "memory tiers of dolambda",
        "lifecycle rule dolambda-dolambda-expire",
        f"client config {config_path()}",
    }
    assert "memorysize" in changed["function dolambda"].detail
    fn = clients(url)["lambda"].get_function_configuration(FunctionName="dolambda")
    assert (fn["MemorySize"], fn["Timeout"]) == (2048, 300)
    assert fn["Environment"] == env0["Environment"]  # signing key kept


def test_deploy_keeps_users_notifications_and_lifecycle(
    url: str, small_package: dep.Package
) -> None:
    c = clients(url)
    s3 = c["s3"]
    s3.create_bucket(Bucket=BUCKET)
    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=url)
    queue_arn = sqs.get_queue_attributes(
        QueueUrl=sqs.create_queue(QueueName="users-queue")["QueueUrl"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    user_notif = {
        "Id": "users-uploads",
        "QueueArn": queue_arn,
        "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "uploads/"}]}},
    }
    s3.put_bucket_notification_configuration(
        Bucket=BUCKET, NotificationConfiguration={"QueueConfigurations": [user_notif]}
    )
    user_rule = {
        "ID": "users-logs",
        "Filter": {"Prefix": "logs/"},
        "Status": "Enabled",
        "Expiration": {"Days": 30},
    }
    s3.put_bucket_lifecycle_configuration(
        Bucket=BUCKET, LifecycleConfiguration={"Rules": [user_rule]}
    )
    changes = run_deploy(url, small_package)
    assert actions(changes)["bucket dl-test-queue"] == "unchanged"
    notif = s3.get_bucket_notification_configuration(Bucket=BUCKET)
    assert [q["Id"] for q in notif["QueueConfigurations"]] == ["users-uploads"]
    assert [x["Id"] for x in notif["LambdaFunctionConfigurations"]] == ["dolambda-dolambda"]
    rules = s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert sorted(r["ID"] for r in rules) == ["dolambda-dolambda-expire", "users-logs"]
    again = run_deploy(url, small_package)
    assert {c.action for c in again} <= {"unchanged", "skipped"}


def test_large_package_goes_through_s3(url: str, small_package: dep.Package) -> None:
    changes = dep.deploy(settings(url), package=small_package, upload_limit=1)
    assert actions(changes)["function dolambda"] == "created"
    keys = [
        o["Key"]
        for o in clients(url)["s3"].list_objects_v2(Bucket=BUCKET, Prefix="dolambda/deploy/")[
            "Contents"
        ]
    ]
    zips = [k for k in keys if k.endswith(".zip")]
    assert len(zips) == 1 and set(keys) - set(zips) == {"dolambda/deploy/dolambda.package.json"}
    fn = clients(url)["lambda"].get_function_configuration(FunctionName="dolambda")
    assert fn["CodeSha256"] == small_package.code_sha256


def test_deploy_reuses_signing_key_from_function(url: str, small_package: dep.Package) -> None:
    run_deploy(url, small_package)
    key = load_config().signing_key  # type: ignore[union-attr]
    config_path().unlink()
    changes = run_deploy(url, small_package)
    assert load_config().signing_key == key  # type: ignore[union-attr]
    assert actions(changes)["function dolambda"] == "unchanged"


def test_deploy_installs_the_key_layout_of_keys_py(
    url: str, small_package: dep.Package, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trigger filter and the policy's S3 resources come from keys.py: change the layout
    there (another queue directory and task suffix) and deploy and doctor follow it."""
    monkeypatch.setattr(keys, "TASK_SUFFIX", ".job")
    monkeypatch.setattr(keys, "queue_root", lambda prefix: f"{keys.root(prefix)}inbox/")
    prefix = "team-a/runs"
    run_deploy(url, small_package, prefix=prefix)
    c = clients(url)
    config = c["s3"].get_bucket_notification_configuration(Bucket=BUCKET)
    [entry] = config["LambdaFunctionConfigurations"]
    rules = {r["Name"].lower(): r["Value"] for r in entry["Filter"]["Key"]["FilterRules"]}
    assert (rules["prefix"], rules["suffix"]) == ("team-a/runs/inbox/", ".job")
    assert (rules["prefix"], rules["suffix"]) == keys.trigger_filter(prefix)
    doc = c["iam"].get_role_policy(
        RoleName="dolambda-dolambda", PolicyName="dolambda-least-privilege"
    )["PolicyDocument"]
    resources = {st["Sid"]: st["Resource"] for st in doc["Statement"]}
    objects = f"arn:aws:s3:::{BUCKET}/"
    assert resources["ReadTasksAndJobs"] == [objects + g for g in keys.worker_read_globs(prefix)]
    assert f"{objects}team-a/runs/inbox/*" in resources["ReadTasksAndJobs"]
    assert resources["WriteResults"] == [objects + g for g in keys.worker_write_globs(prefix)]
    # a remote dispatcher writes task objects under the moved queue, with its suffix
    assert resources["DispatchTasks"] == [objects + g for g in keys.dispatcher_write_globs(prefix)]
    assert f"{objects}team-a/runs/inbox/*.job" in resources["DispatchTasks"]
    assert resources["InvokeItself"] == ["arn:aws:lambda:us-east-1:123456789012:function:dolambda"]
    results = dep.doctor(settings(url, prefix=prefix))
    assert [str(r) for r in results if not r.ok] == []
    assert "OK  notification (team-a/runs/inbox/*.job -> dolambda)" in [str(r) for r in results]


# --- doctor -----------------------------------------------------------------------------


def test_doctor_healthy(url: str, small_package: dep.Package) -> None:
    run_deploy(url, small_package)
    ran: list[bool] = []
    results = dep.doctor(settings(url), round_trip=lambda: ran.append(True))
    assert [str(r) for r in results if not r.ok] == []
    names = [r.name for r in results]
    for name in (
        "credentials",
        "region",
        "bucket",
        "function",
        "runtime",
        "notification",
        "permission",
        "role policy",
        "signing key",
        "package record",
        "round trip",
    ):
        assert name in names
    assert ran == [True]
    assert all(str(r).startswith("OK  ") for r in results)


def _break_notification(url: str) -> None:
    clients(url)["s3"].put_bucket_notification_configuration(
        Bucket=BUCKET, NotificationConfiguration={}
    )


def _break_permission(url: str) -> None:
    clients(url)["lambda"].remove_permission(
        FunctionName="dolambda", StatementId="dolambda-s3-invoke"
    )


def _break_runtime(url: str) -> None:
    other = "python3.12" if RUNTIME != "python3.12" else "python3.11"
    clients(url)["lambda"].update_function_configuration(FunctionName="dolambda", Runtime=other)


def _break_policy(url: str) -> None:
    doc = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    clients(url)["iam"].put_role_policy(
        RoleName="dolambda-dolambda", PolicyName="extra", PolicyDocument=json.dumps(doc)
    )


def _break_signing_key(url: str) -> None:
    lam = clients(url)["lambda"]
    env = lam.get_function_configuration(FunctionName="dolambda")["Environment"]["Variables"]
    env["DOLAMBDA_SIGNING_KEY"] = "00" * 32
    lam.update_function_configuration(FunctionName="dolambda", Environment={"Variables": env})


def _break_async_retries(url: str) -> None:
    """What an older dolambda deployed: Lambda's 2 retries, failures sent to itself."""
    lam = clients(url)["lambda"]
    arn = lam.get_function(FunctionName="dolambda")["Configuration"]["FunctionArn"]
    lam.put_function_event_invoke_config(
        FunctionName="dolambda",
        MaximumRetryAttempts=2,
        MaximumEventAgeInSeconds=6 * 3600,
        DestinationConfig={"OnFailure": {"Destination": arn}},
    )


def _break_package_record(url: str) -> None:
    key = keys.package_record_key("dolambda", "dolambda")
    clients(url)["s3"].delete_object(Bucket=BUCKET, Key=key)


@pytest.mark.parametrize(
    ("breaker", "check"),
    [
        (_break_async_retries, "async invoke config"),
        (_break_package_record, "package record"),
        (_break_notification, "notification"),
        (_break_permission, "permission"),
        (_break_runtime, "runtime"),
        (_break_policy, "role policy"),
        (_break_signing_key, "signing key"),
    ],
)
def test_doctor_finds_each_broken_piece_alone(
    url: str, small_package: dep.Package, breaker: Any, check: str
) -> None:
    run_deploy(url, small_package)
    breaker(url)
    results = dep.doctor(settings(url))
    failed = [r for r in results if not r.ok]
    # the memory tiers are versions of $LATEST: a runtime or environment changed on
    # $LATEST alone leaves them running the old one, and doctor says so too
    also = ["memory tiers"] if check in ("runtime", "signing key") else []
    assert sorted(r.name for r in failed) == sorted([check, *also]), [str(r) for r in results]
    line = str(next(r for r in failed if r.name == check))
    assert line.startswith(f"FAIL {check}: ") and " — fix: dolambda deploy --bucket " in line
    # the fix it names repairs it (deploy again), except the extra policy which deploy
    # does not own: doctor keeps telling the user about it
    dep.deploy(settings(url), package=small_package)
    after = [r.name for r in dep.doctor(settings(url)) if not r.ok]
    assert after == ([] if check != "role policy" else ["role policy"])


def test_doctor_without_deployment_and_round_trip_failure(
    url: str, small_package: dep.Package
) -> None:
    results = dep.doctor(settings(url))
    failed = {r.name: r for r in results if not r.ok}
    assert set(failed) == {"bucket", "function"}
    assert "does not exist" in failed["bucket"].detail
    run_deploy(url, small_package)

    def broken() -> None:
        raise TimeoutError("no result after 60 s")

    results = dep.doctor(settings(url), round_trip=broken)
    assert [str(r) for r in results if not r.ok] == [
        f"FAIL round trip: a tiny job failed: TimeoutError: no result after 60 s — fix: "
        f"dolambda deploy --bucket {BUCKET} --region us-east-1 --endpoint-url {url}"
    ]


# --- destroy ----------------------------------------------------------------------------


def test_destroy_removes_ours_and_keeps_the_users(url: str, small_package: dep.Package) -> None:
    s3 = clients(url)["s3"]
    s3.create_bucket(Bucket=BUCKET)
    sns = boto3.client("sns", region_name="us-east-1", endpoint_url=url)
    topic = sns.create_topic(Name="users-topic")["TopicArn"]
    s3.put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={
            "TopicConfigurations": [
                {"Id": "users", "TopicArn": topic, "Events": ["s3:ObjectRemoved:*"]}
            ]
        },
    )
    s3.put_bucket_lifecycle_configuration(
        Bucket=BUCKET,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "users-tmp",
                    "Filter": {"Prefix": "tmp/"},
                    "Status": "Enabled",
                    "Expiration": {"Days": 1},
                }
            ]
        },
    )
    run_deploy(url, small_package)
    ident = lambda_code.record_id("dolambda", "us-east-1", url)
    assert lambda_code.load_local_record(ident) == small_package.record
    s3.put_object(Bucket=BUCKET, Key="data/users-file.csv", Body=b"1,2,3")
    s3.put_object(Bucket=BUCKET, Key="dolambda/results/j/0000000.out", Body=b"x")
    logs = boto3.client("logs", region_name="us-east-1", endpoint_url=url)
    logs.create_log_group(logGroupName="/aws/lambda/dolambda")  # Lambda makes it on first run
    logs.create_log_group(logGroupName="/aws/lambda/dolambda-users-other")
    changes = dep.destroy(settings(url))
    assert ("deleted", "log group /aws/lambda/dolambda") in [
        (c.action, c.resource) for c in changes
    ]
    left = [g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]]
    assert left == ["/aws/lambda/dolambda-users-other"]
    assert {c.action for c in changes} <= {"deleted", "kept"}
    c = clients(url)
    with pytest.raises(ClientError):
        c["lambda"].get_function(FunctionName="dolambda")
    with pytest.raises(ClientError):
        c["iam"].get_role(RoleName="dolambda-dolambda")
    notif = s3.get_bucket_notification_configuration(Bucket=BUCKET)
    assert "LambdaFunctionConfigurations" not in notif
    assert [t["Id"] for t in notif["TopicConfigurations"]] == ["users"]
    rules = s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert [r["ID"] for r in rules] == ["users-tmp"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert keys == ["data/users-file.csv"]
    assert load_config() is None
    assert lambda_code.load_local_record(ident) is None  # this machine's copy went too
    # twice is harmless
    again = dep.destroy(settings(url))
    assert {c.action for c in again} <= {"absent", "kept", "deleted"}
    assert ("absent", "function dolambda") in [(c.action, c.resource) for c in again]


def test_destroy_delete_bucket(url: str, small_package: dep.Package) -> None:
    run_deploy(url, small_package)
    clients(url)["s3"].put_object(Bucket=BUCKET, Key="other/file", Body=b"x")
    dep.destroy(settings(url), delete_bucket=True)
    assert bucket_region(Clients(settings(url)), BUCKET) is None


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("ab", "3 to 63"),
        ("My_Bucket", "lowercase"),
        ("-bucket", "begin and end"),
        ("a..b", "adjacent"),
        ("192.168.0.1", "IP address"),
        ("xn--bucket", "reserved"),
        ("b" * 64, "3 to 63"),
    ],
)
def test_invalid_bucket_names_fail_before_any_call(name: str, why: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: any call would fail differently
    with pytest.raises(InvalidArgument, match=why) as info:
        dep.deploy(dep.DeploySettings(bucket=name, endpoint_url=dead, region="us-east-1"))
    assert repr(name) in str(info.value)
    validate_bucket_name("fine-bucket.name-1")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"memory_mb": 64}, "memory 64 MB is out of range"),
        ({"memory_mb": 10241}, "memory 10241 MB"),
        ({"timeout": 0}, "timeout 0 s is out of range"),
        ({"timeout": 901}, "timeout 901 s"),
        ({"architecture": "sparc"}, "architecture 'sparc'"),
        ({"requirements": Path("/nonexistent/req.txt")}, "requirements file"),
        ({"function_name": "bad name!"}, "function name"),
        ({"prefix": "/"}, "prefix"),
    ],
)
def test_bad_settings(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        dep.deploy(dep.DeploySettings(bucket="good-bucket", region="us-east-1", **kw))


def test_runtime_that_does_not_exist(url: str, small_package: dep.Package) -> None:
    with pytest.raises(InvalidArgument, match=r"no python3\.8 runtime"):
        dep.deploy(settings(url), package=small_package, python="3.8")
    with pytest.raises(InvalidArgument, match=r"python3\.99"):
        dep.deploy(settings(url), package=small_package, python="3.99")
    assert "3.11" in dep.LAMBDA_PYTHONS and "3.13" in dep.LAMBDA_PYTHONS


def test_bucket_in_another_region(url: str, small_package: dep.Package) -> None:
    clients(url, "eu-west-1")["s3"].create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    with pytest.raises(dep.DeployError, match="is in eu-west-1, not us-east-1: pass --region"):
        run_deploy(url, small_package)
    changes = run_deploy(url, small_package, region="eu-west-1")
    assert actions(changes)["bucket dl-test-queue"] == "unchanged"
    fn = clients(url, "eu-west-1")["lambda"].get_function_configuration(FunctionName="dolambda")
    assert fn["FunctionArn"].startswith("arn:aws:lambda:eu-west-1:")


class _Raising:
    def __init__(self, code: str, status: int, headers: dict[str, str] | None = None) -> None:
        response: Any = {
            "Error": {
                "Code": code,
                "Message": f"User: arn:aws:iam::1:user/u is not authorized ({code})",
            },
            "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}},
        }
        self.error = ClientError(response, "Op")

    def __getattr__(self, name: str) -> Any:
        def fail(**kw: Any) -> Any:
            raise self.error

        return fail


def test_botocore_errors_are_translated() -> None:
    class FakeClients:
        s3 = _Raising("403", 403)

    with pytest.raises(dep.DeployError, match="belongs to another AWS account"):
        bucket_region(FakeClients(), "someone-elses")  # type: ignore[arg-type]
    FakeClients.s3 = _Raising("301", 301, {"x-amz-bucket-region": "ap-south-1"})
    with pytest.raises(dep.DeployError, match="pass --region ap-south-1"):
        bucket_region(FakeClients(), "far-away")  # type: ignore[arg-type]
    denied = _Raising("AccessDenied", 403)
    with pytest.raises(dep.DeployError, match="may not perform iam:CreateRole on role r"):
        call("iam:CreateRole", "role r", denied.create_role, RoleName="r")
    taken = translate(
        _Raising("BucketAlreadyExists", 409).error,
        "deploy",
        action="s3:CreateBucket",
        resource="bucket b",
    )
    assert "another AWS account" in str(taken)
    expired = translate(
        _Raising("ExpiredToken", 400).error, "deploy", action="sts:GetCallerIdentity", resource="x"
    )
    assert "rejected" in str(expired)


def test_no_credentials_is_a_clear_error(
    url: str, small_package: dep.Package, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(dep.DeployError, match="no AWS credentials"):
        run_deploy(url, small_package)
    with pytest.raises(dep.DeployError, match="profile"):
        run_deploy(url, small_package, profile="no-such-profile")


# --- package ----------------------------------------------------------------------------


def test_the_package_ships_exactly_what_the_handler_imports() -> None:
    """The worker's modules are the files importing the handler and dolambda's own loop
    bodies (the Executor's, the demo's: they travel by reference) loads, never aioboto3."""
    code = (
        "import sys, json, handler.lambda_function, dolambda._core.bodies;"
        "print(json.dumps({m: getattr(sys.modules[m], '__file__', None) for m in sys.modules "
        "if m.split('.')[0] in ('dolambda', 'aioboto3', 'aiobotocore', 'aiohttp')}))"
    )
    root = Path(__file__).parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    loaded: dict[str, str] = json.loads(out.stdout)
    assert all(m.split(".")[0] == "dolambda" for m in loaded), sorted(loaded)
    pkg = root / "dolambda"
    files = {Path(f).relative_to(pkg).as_posix() for m, f in loaded.items() if m != "dolambda"}
    assert files == set(WORKER_MODULES)


def test_small_package_contents(small_package: dep.Package) -> None:
    with zipfile.ZipFile(small_package.path) as zf:
        every = set(zf.namelist())
        init = zf.read("dolambda/__init__.py").decode()
    pycs = {n for n in every if "/__pycache__/" in n}
    names = every - pycs - {"package.json"}
    tag = sys.implementation.cache_tag
    assert (
        pycs
        == {  # compiled: a zip's 1980 mtimes would make pip's timestamp pycs stale
            f"{n.rpartition('/')[0]}/__pycache__/{n.rpartition('/')[2][:-3]}.{tag}.pyc"
            for n in names
        }
    )
    assert {
        "handler/lambda_function.py",
        "handler/__init__.py",
        "dolambda/__init__.py",
        "dolambda/_aws/__init__.py",
        "dolambda/_aws/dispatcher.py",
        "dolambda/_aws/errors.py",
        "dolambda/_aws/percall.py",
        "dolambda/_aws/watchdog.py",
        "dolambda/_aws/worker.py",
        "dolambda/_code/__init__.py",
        "dolambda/_code/archive.py",
        "dolambda/_code/loader.py",
        "dolambda/_core/__init__.py",
        "dolambda/_core/bodies.py",
        "dolambda/_core/execute.py",
        "dolambda/_core/seeds.py",
        "dolambda/_wire/__init__.py",
        "dolambda/_wire/models.py",
        "dolambda/_wire/codec.py",
        "dolambda/_wire/events.py",
        "dolambda/_wire/keys.py",
        "dolambda/_errors.py",
    } == names
    assert not [ln for ln in init.splitlines() if ln.startswith(("import ", "from "))]
    again = dep.build_package(dependencies=False, cache=small_package.path.parent)
    assert again.cached and again.path == small_package.path


def test_unzipped_limit_lists_largest_packages(tmp_path: Path) -> None:
    with pytest.raises(
        dep.DeployError, match=r"over Lambda's .* largest packages: (dolambda|handler)"
    ):
        dep.build_package(dependencies=False, cache=tmp_path, unzipped_limit=1000)


def test_local_package_runs_the_handler_without_aioboto3(
    local_package: dep.Package, tmp_path: Path
) -> None:
    with zipfile.ZipFile(local_package.path) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path / "pkg")
    tops = {n.split("/")[0] for n in names}
    assert {"dill", "pydantic", "pydantic_core", "numpy", "handler", "dolambda"} <= tops
    # the SDK is bundled, pinned to the client's (AWS no longer documents the runtime's)
    assert {"boto3", "botocore", "s3transfer"} <= tops
    assert not tops & {"aioboto3", "aiobotocore", "bin"}
    from importlib.metadata import version

    held = local_package.record["distributions"]
    for dist in ("boto3", "botocore", "dill", "pydantic", "numpy"):
        assert held[dist] == version(dist), dist
    assert (
        json.loads(
            dict.fromkeys(names) and zipfile.ZipFile(local_package.path).read("package.json")
        )
        == local_package.record
    )
    # every module is compiled to an unchecked hash-based pyc (flags 0b01 in the header)
    with zipfile.ZipFile(local_package.path) as zf:
        pyc = zf.read(next(n for n in names if n.startswith("numpy/__pycache__/__init__.")))
    assert int.from_bytes(pyc[4:8], "little") == 0b01
    assert "dolambda/_loop.py" not in names
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import handler.lambda_function as h, dolambda, dill, pydantic;"
        "assert dolambda.__file__.startswith(sys.argv[1]), dolambda.__file__;"
        "assert 'aioboto3' not in sys.modules;"
        "print(h.lambda_handler({'Records': []}, None))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "pkg")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "{'outcomes': {}}" in out.stdout
    again = dep.build_package(target="local", cache=local_package.path.parent)
    assert again.cached and again.code_sha256 == local_package.code_sha256


def test_lambda_platform_build(tmp_path: Path) -> None:
    """pip picks wheels for Lambda's OS and architecture, not this machine's (arm64 here)."""
    from importlib.metadata import version

    req = tmp_path / "requirements.txt"
    req.write_text(f"pydantic=={version('pydantic')}\n")
    try:
        pkg = dep.build_package(
            target="lambda",
            architecture="arm64",
            dependencies=False,
            requirements=req,
            cache=tmp_path / "cache",
        )
    except dep.DeployError as exc:
        pytest.skip(f"pip cannot fetch the Lambda-platform wheels here: {exc}")
    with zipfile.ZipFile(pkg.path) as zf:
        names = zf.namelist()
    tag = python_version().replace(".", "")
    assert any(
        n.startswith("pydantic_core/") and f"cpython-{tag}-aarch64-linux-gnu" in n for n in names
    )
    assert not any(n.startswith(("boto3/", "botocore/")) for n in names)
    assert any(n.endswith(".pyc") for n in names)  # compiled: /var/task is read-only


def test_wheel_platforms_follow_the_runtimes_glibc() -> None:
    old = wheel_platforms("3.11", "x86_64")  # Amazon Linux 2: glibc 2.26
    assert "manylinux2014_x86_64" in old and "manylinux_2_26_x86_64" in old
    assert "manylinux_2_28_x86_64" not in old
    new = wheel_platforms("3.12", "arm64")  # Amazon Linux 2023: glibc 2.34
    assert "manylinux_2_34_aarch64" in new and "manylinux_2_35_aarch64" not in new


def test_requirements_that_do_not_resolve_show_pips_reason(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("dolambda-no-such-package-xyz==9.9.9\n")
    with pytest.raises(dep.DeployError) as info:
        dep.build_package(dependencies=False, requirements=req, cache=tmp_path / "c")
    text = str(info.value)
    assert "pip could not install the requirements in" in text and str(req) in text
    assert "Lambda platform" in text
    assert "ERROR" in text or "error" in text


# --- CLI --------------------------------------------------------------------------------


def test_cli_help_shows_examples() -> None:
    for command in ("deploy", "doctor", "destroy"):
        result = CliRunner().invoke(cli.main, [command, "--help"])
        assert result.exit_code == 0 and "Example" in result.output
        assert "dolambda " + command in result.output


def test_cli_deploy_doctor_destroy(
    url: str, small_package: dep.Package, monkeypatch: pytest.MonkeyPatch
) -> None:
    prebuilt = replace(small_package, cached=True)
    monkeypatch.setattr(dep, "build_package", lambda **kw: prebuilt)
    runner = CliRunner()
    args = ["--bucket", BUCKET, "--region", "us-east-1", "--endpoint-url", url]
    result = runner.invoke(cli.main, ["deploy", *args])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(ln.startswith("created   function dolambda") for ln in lines)
    result = runner.invoke(cli.main, ["deploy", *args])
    assert all(ln.split()[0] in ("unchanged", "skipped") for ln in result.output.splitlines())
    result = runner.invoke(cli.main, ["doctor", "--no-round-trip"])  # all from the config
    assert result.exit_code == 0, result.output
    assert all(ln.startswith("OK  ") for ln in result.output.splitlines())
    _break_permission(url)
    result = runner.invoke(cli.main, ["doctor", "--no-round-trip"])
    assert result.exit_code == 1
    assert "FAIL permission: " in result.output
    result = runner.invoke(cli.main, ["deploy", *args, "--memory", "99999"])
    assert result.exit_code != 0 and "memory 99999 MB is out of range" in result.output
    result = runner.invoke(cli.main, ["destroy"])  # no terminal and no --yes: refused
    assert result.exit_code == 2 and "pass --yes to confirm" in result.output
    assert "deleted" not in result.output
    result = runner.invoke(cli.main, ["destroy", "--yes"])
    assert result.exit_code == 0, result.output
    assert "deleted   function dolambda" in result.output


def test_cli_destroy_asks_on_a_terminal(
    url: str, small_package: dep.Package, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_deploy(url, small_package)
    monkeypatch.setattr(cli, "_interactive", lambda: True)
    runner = CliRunner()
    args = ["destroy", "--bucket", BUCKET, "--region", "us-east-1", "--endpoint-url", url]
    said_no = runner.invoke(cli.main, [*args, "--delete-bucket"], input="n\n")
    assert said_no.exit_code == 1 and "EVERY object" in said_no.output
    assert bucket_region(Clients(settings(url)), BUCKET) == "us-east-1"  # nothing deleted
    said_yes = runner.invoke(cli.main, args, input="y\n")
    assert said_yes.exit_code == 0, said_yes.output
    assert "deleted   function dolambda" in said_yes.output


class _Lambda:
    """A Lambda client whose calls fail with the given errors, then succeed: IAM's eventual
    consistency and an identity's missing permissions cannot be produced by moto."""

    def __init__(self, errors: dict[str, list[ClientError]]) -> None:
        self.errors = errors
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        def op(**kw: Any) -> Any:
            self.calls.append(name)
            pending = self.errors.get(name, [])
            if pending:
                raise pending.pop(0)
            return {}

        return op


def _error(code: str, message: str, status: int = 400) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "Op",
    )


def test_event_invoke_config_is_retried_while_the_role_settles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dolambda.deploy import function

    monkeypatch.setattr(function, "ROLE_SETTLE_PAUSE", 0.0)
    invalid = "The destination ARN arn:aws:lambda:us-east-1:1:function:dolambda is invalid."
    lam = _Lambda(
        {
            "put_function_event_invoke_config": [
                _error("InvalidParameterValueException", invalid),
                _error("InvalidParameterValueException", invalid),
            ],
            "get_function_event_invoke_config": [_error("ResourceNotFoundException", "no", 404)],
        }
    )

    class FakeClients:
        region, account, partition = "us-east-1", "1", "aws"

    fake = FakeClients()
    fake.lam = lam  # type: ignore[attr-defined]
    change = function.ensure_event_invoke_config(dep.DeploySettings(bucket=BUCKET), fake)  # type: ignore[arg-type]
    assert change.action == "created"
    assert lam.calls.count("put_function_event_invoke_config") == 3
    # any other invalid parameter is not retried
    lam.errors["put_function_event_invoke_config"] = [
        _error("InvalidParameterValueException", "MaximumRetryAttempts must be at most 2")
    ]
    lam.errors["get_function_event_invoke_config"] = [_error("ResourceNotFoundException", "", 404)]
    with pytest.raises(dep.DeployError, match="PutFunctionEventInvokeConfig"):
        function.ensure_event_invoke_config(dep.DeploySettings(bucket=BUCKET), fake)  # type: ignore[arg-type]


def test_recursion_config_access_denied_is_skipped_not_fatal() -> None:
    from dolambda.deploy import function

    denied = "User: arn:aws:iam::1:user/u is not authorized to perform: lambda:Get*"
    lam = _Lambda({"get_function_recursion_config": [_error("AccessDeniedException", denied, 403)]})

    class FakeClients:
        pass

    fake = FakeClients()
    fake.lam = lam  # type: ignore[attr-defined]
    change = function.ensure_recursion_config(dep.DeploySettings(bucket=BUCKET), fake)  # type: ignore[arg-type]
    assert change.action == "skipped" and "may not" in change.detail


def test_doctor_round_trip_hook_from_cli(url: str, small_package: dep.Package) -> None:
    run_deploy(url, small_package)
    calls: list[str] = []
    command = cli.make_doctor_command(lambda s: lambda: calls.append(s.bucket))
    result = CliRunner().invoke(command, [])
    assert result.exit_code == 0, result.output
    assert calls == [BUCKET] and "OK  round trip" in result.output


@pytest.mark.parametrize("region", ["us-east-1", "cn-north-1", "us-gov-west-1"])
def test_doctor_knows_every_partitions_regions(region: str) -> None:
    doctor = importlib.import_module("dolambda.deploy.doctor")  # the facade's doctor() shadows it

    class FakeClients:
        pass

    fake = FakeClients()
    fake.region = region  # type: ignore[attr-defined]
    assert doctor._region(dep.DeploySettings(bucket=BUCKET), fake) == region  # type: ignore[arg-type]
    fake.region = "mars-north-1"  # type: ignore[attr-defined]
    with pytest.raises(doctor._Failed, match="not a region with AWS Lambda"):
        doctor._region(dep.DeploySettings(bucket=BUCKET), fake)  # type: ignore[arg-type]


# --- memory tiers (issue 16 item 2) -----------------------------------------------------


def _tiers(url: str) -> dict[str, int]:
    lam = clients(url)["lambda"]
    out = {}
    for alias in lam.list_aliases(FunctionName="dolambda")["Aliases"]:
        conf = lam.get_function_configuration(FunctionName="dolambda", Qualifier=alias["Name"])
        out[alias["Name"]] = conf["MemorySize"]
    return out


def test_deploy_publishes_memory_tiers_as_versions_behind_aliases(
    url: str, small_package: dep.Package
) -> None:
    changes = run_deploy(url, small_package)
    lam = clients(url)["lambda"]
    # the default tiers above the base memory, each its own version of the one function
    assert _tiers(url) == {"mem-2048": 2048, "mem-4096": 4096, "mem-10240": 10240}
    assert lam.get_function_configuration(FunctionName="dolambda")["MemorySize"] == 1024
    for alias in ("mem-2048", "mem-10240"):  # Lambda's retries off on each alias too
        got = lam.get_function_event_invoke_config(FunctionName="dolambda", Qualifier=alias)
        assert got["MaximumRetryAttempts"] == 0
    config = load_config()
    assert config is not None and config.memory_tiers == [2048, 4096, 10240]
    assert ("created", "memory tiers of dolambda") in [(c.action, c.resource) for c in changes]
    again = run_deploy(url, small_package)
    assert ("unchanged", "memory tiers of dolambda") in [(c.action, c.resource) for c in again]
    healthy = dep.doctor(settings(url))
    assert [str(r) for r in healthy if not r.ok] == []
    assert "memory tiers" in [r.name for r in healthy]
    # a tier pointing at the wrong version: doctor names it, deploy repairs it
    two = lam.get_alias(FunctionName="dolambda", Name="mem-2048")["FunctionVersion"]
    lam.update_alias(FunctionName="dolambda", Name="mem-4096", FunctionVersion=two)
    failed = [r for r in dep.doctor(settings(url)) if not r.ok]
    assert [r.name for r in failed] == ["memory tiers"], [str(r) for r in failed]
    assert "mem-4096: its version has 2048 MB" in str(failed[0])
    run_deploy(url, small_package)
    assert _tiers(url)["mem-4096"] == 4096
    # fewer tiers: the others' aliases go, and the versions no alias uses
    run_deploy(url, small_package, memory_tiers=(2048,))
    assert _tiers(url) == {"mem-2048": 2048}
    versions = lam.list_versions_by_function(FunctionName="dolambda")["Versions"]
    assert sorted(v["Version"] for v in versions) == sorted(["$LATEST", two])
    with pytest.raises(InvalidArgument, match="not above the function's base memory"):
        settings(url, memory_tiers=(512,)).validate()
