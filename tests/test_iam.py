"""The emulator's workers act as the deployed role, and its S3 enforces the role's policy.

The emulator sets its function up with deploy's code (the role and its least-privilege
policy exactly), takes the role's credentials from STS and hands them to the workers;
its S3 server authorizes every request signed with them against the role's policy, and
answers a GET/HEAD of a missing key as S3 does: 404 only to a principal that may list
the bucket, 403 to any other
(https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html, "Permissions").
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from dolambda import DolambdaError, LambdaBackend, foreach
from dolambda._wire import keys
from dolambda.deploy import DeploySettings
from dolambda.emulator import Emulator
from tests.bodies import iam as iam_bodies

POLICY = "dolambda-least-privilege"


def client(emu: Emulator, service: str, **creds: Any) -> Any:
    if not creds:
        creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    return boto3.client(service, endpoint_url=emu.endpoint_url, region_name=emu.region, **creds)


def role_name(emu: Emulator) -> str:
    return DeploySettings(bucket=emu.bucket, function_name=emu.function_name).role_name


def role_session(emu: Emulator) -> Any:
    """An S3 client holding the role's credentials from STS, as the workers hold them."""
    arn = client(emu, "iam").get_role(RoleName=role_name(emu))["Role"]["Arn"]
    creds = client(emu, "sts").assume_role(RoleArn=arn, RoleSessionName="test")["Credentials"]
    return client(
        emu,
        "s3",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


def policy(emu: Emulator) -> dict[str, Any]:
    doc = client(emu, "iam").get_role_policy(RoleName=role_name(emu), PolicyName=POLICY)
    return dict(doc["PolicyDocument"])


@contextlib.contextmanager
def policy_without(emu: Emulator, sid: str, action: str | None = None) -> Iterator[None]:
    """The role's policy with statement ``sid`` (or only ``action`` in it) removed; then the
    original policy restored, whatever happened."""
    original = policy(emu)
    changed = copy.deepcopy(original)
    statements = []
    for st in changed["Statement"]:
        if st["Sid"] == sid:
            st["Action"] = [a for a in st["Action"] if action is not None and a != action]
            if not st["Action"]:
                continue
        statements.append(st)
    assert len(json.dumps(statements)) < len(json.dumps(original["Statement"]))
    changed["Statement"] = statements
    iam = client(emu, "iam")
    iam.put_role_policy(
        RoleName=role_name(emu), PolicyName=POLICY, PolicyDocument=json.dumps(changed)
    )
    try:
        yield
    finally:
        iam.put_role_policy(
            RoleName=role_name(emu), PolicyName=POLICY, PolicyDocument=json.dumps(original)
        )


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(workers=2, timeout=30) as instance:
        yield instance


def error_code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


# --- the S3 server as the role ------------------------------------------------------------


def test_the_role_may_do_what_its_policy_says_and_nothing_else(emu: Emulator) -> None:
    admin, role = client(emu, "s3"), role_session(emu)
    task = keys.task_key(emu.prefix, "job-a", 0)
    result = keys.result_key(emu.prefix, "job-a", 0)
    admin.put_object(Bucket=emu.bucket, Key=task, Body=b"task")
    admin.put_object(Bucket=emu.bucket, Key="elsewhere/data", Body=b"secret")
    assert role.get_object(Bucket=emu.bucket, Key=task)["Body"].read() == b"task"
    role.put_object(Bucket=emu.bucket, Key=result, Body=b"out")  # results/: allowed
    role.put_object(Bucket=emu.bucket, Key=task, Body=b"task")  # a task: a remote dispatcher's
    manifest = keys.manifest_key(emu.prefix, "job-a")
    denied = [
        lambda: role.get_object(Bucket=emu.bucket, Key="elsewhere/data"),
        lambda: role.get_object(Bucket=emu.bucket, Key=result),  # results are write-only
        lambda: role.put_object(Bucket=emu.bucket, Key=manifest, Body=b"x"),  # never a job's
        # in the queue only task objects (not one the bucket's notification ignores)
        lambda: role.put_object(Bucket=emu.bucket, Key=task + ".txt", Body=b"x"),
        lambda: role.delete_object(Bucket=emu.bucket, Key=task),
        lambda: role.list_objects_v2(Bucket=emu.bucket),  # no prefix: the whole bucket
        lambda: role.list_objects_v2(Bucket=emu.bucket, Prefix="elsewhere/"),
        lambda: role.list_buckets(),
    ]
    for attempt in denied:
        with pytest.raises(ClientError) as info:
            attempt()
        assert error_code(info.value) == "AccessDenied"
        assert "assumed-role/" in str(info.value) and "is not authorized to perform" in str(
            info.value
        )
    listed = role.list_objects_v2(Bucket=emu.bucket, Prefix=keys.queue_root(emu.prefix))
    assert task in [o["Key"] for o in listed["Contents"]]
    # the client (any other key) is not the role: everything stays allowed
    assert admin.get_object(Bucket=emu.bucket, Key="elsewhere/data")["Body"].read() == b"secret"


def role_lambda(emu: Emulator) -> Any:
    """A Lambda client holding the role's credentials, as the workers hold them."""
    arn = client(emu, "iam").get_role(RoleName=role_name(emu))["Role"]["Arn"]
    creds = client(emu, "sts").assume_role(RoleArn=arn, RoleSessionName="test")["Credentials"]
    return client(
        emu,
        "lambda",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


def test_the_role_may_invoke_its_own_function_and_no_other(emu: Emulator) -> None:
    """A remote dispatcher invokes its own function (its tasks, its child dispatchers):
    lambda:InvokeFunction on that function's ARN, nothing else of Lambda's."""
    lam = role_lambda(emu)
    gone = json.dumps({"bucket": emu.bucket, "key": keys.task_key(emu.prefix, "job-iam", 0)})
    answer = lam.invoke(FunctionName=emu.function_name, Payload=gone)
    assert json.loads(answer["Payload"].read()) == {"outcomes": {"gone": 1}}
    denied = [
        lambda: lam.invoke(FunctionName="another-function", Payload=gone),
        lambda: lam.invoke(FunctionName=emu.function_name, Payload=gone, Qualifier="mem-2048"),
        lambda: lam.get_function(FunctionName=emu.function_name),
    ]
    for attempt in denied:
        with pytest.raises(ClientError) as info:
            attempt()
        assert error_code(info.value) == "AccessDeniedException"
        assert "is not authorized to perform: lambda:" in str(info.value)
    with policy_without(emu, "InvokeItself"):
        with pytest.raises(ClientError) as info:
            lam.invoke(FunctionName=emu.function_name, Payload=gone)
        assert error_code(info.value) == "AccessDeniedException"


def test_a_wrong_session_token_is_refused(emu: Emulator) -> None:
    arn = client(emu, "iam").get_role(RoleName=role_name(emu))["Role"]["Arn"]
    creds = client(emu, "sts").assume_role(RoleArn=arn, RoleSessionName="forged-test")[
        "Credentials"
    ]
    forged = client(
        emu,
        "s3",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token="forged",
    )
    with pytest.raises(ClientError) as info:
        forged.get_object(Bucket=emu.bucket, Key=keys.task_key(emu.prefix, "job-a", 0))
    assert error_code(info.value) == "InvalidToken"


def test_a_missing_key_is_404_with_list_bucket_and_403_without(emu: Emulator) -> None:
    role = role_session(emu)
    missing = keys.task_key(emu.prefix, "job-gone", 7)
    with pytest.raises(ClientError) as info:
        role.get_object(Bucket=emu.bucket, Key=missing)
    assert error_code(info.value) == "NoSuchKey"
    with pytest.raises(ClientError) as info:
        role.head_object(Bucket=emu.bucket, Key=missing)
    assert error_code(info.value) == "404"
    # outside the prefix the (prefix-scoped) ListBucket does not reach: 403 as on S3
    with pytest.raises(ClientError) as info:
        role.get_object(Bucket=emu.bucket, Key="elsewhere/missing")
    assert error_code(info.value) == "AccessDenied"
    with policy_without(emu, "ListOwnKeys"):
        with pytest.raises(ClientError) as info:
            role.get_object(Bucket=emu.bucket, Key=missing)
        assert error_code(info.value) == "AccessDenied"
        assert "s3:ListBucket" in str(info.value)
        with pytest.raises(ClientError) as info:
            role.head_object(Bucket=emu.bucket, Key=missing)
        assert error_code(info.value) == "403"
    with pytest.raises(ClientError) as info:  # restored: 404 again
        role.get_object(Bucket=emu.bucket, Key=missing)
    assert error_code(info.value) == "NoSuchKey"


# --- the workers as the role ---------------------------------------------------------------


def test_workers_hold_the_roles_temporary_credentials(emu: Emulator) -> None:
    got = foreach(x=range(2)).do_lambda(
        iam_bodies.credentials_seen, backend=emu.backend, progress=False
    )
    assert got == [("ASIA", True, emu.region)] * 2  # STS keys start ASIA; a token is set


def _invoke(emu: Emulator, key: str, kind: str) -> Any:
    payload = json.dumps({"bucket": emu.bucket, "key": key}).encode()
    lam = client(emu, "lambda")
    return lam.invoke(FunctionName=emu.function_name, InvocationType=kind, Payload=payload)


def _results(emu: Emulator, job: str) -> list[str]:
    got = client(emu, "s3").list_objects_v2(
        Bucket=emu.bucket, Prefix=keys.results_dir(emu.prefix, job)
    )
    return [o["Key"] for o in got.get("Contents", [])]


def test_a_task_that_is_gone_is_skipped_not_an_error(emu: Emulator) -> None:
    """Issue 14.5: a late event for a task deleted by a cancel or a cleanup. With the role's
    s3:ListBucket the GET is 404, the worker skips it and the invocation succeeds: no error
    result, nothing for Lambda to retry."""
    job = "job-cancelled"
    gone = keys.task_key(emu.prefix, job, 3)
    answer = _invoke(emu, gone, "RequestResponse")
    assert "FunctionError" not in answer
    assert json.loads(answer["Payload"].read()) == {"outcomes": {"gone": 1}}
    before = emu.stats
    _invoke(emu, gone, "Event")  # as S3 or the client sends it
    wait_for(lambda: emu.stats.completed > before.completed, 30, "the async invocation")
    assert emu.wait_idle(30)
    after = emu.stats
    assert (after.errors, after.retried) == (before.errors, before.retried)
    assert _results(emu, job) == []


def test_without_list_bucket_a_gone_task_is_reported_as_denied(emu: Emulator) -> None:
    """The same event when the policy lacks s3:ListBucket: the GET is 403, so the worker
    cannot tell "gone" from "denied". With Lambda's retries off and no destination it
    writes a failure naming AWS's AccessDenied (for a job that is gone, a stray result
    nobody reads; deploy's policy grants the listing, so this does not happen there)."""
    gone = keys.task_key(emu.prefix, "job-cancelled-2", 0)
    with policy_without(emu, "ListOwnKeys"):
        answer = _invoke(emu, gone, "RequestResponse")
        assert answer.get("FunctionError") is None
    s3 = client(emu, "s3")
    found = s3.list_objects_v2(
        Bucket=emu.bucket, Prefix=keys.results_dir(emu.prefix, "job-cancelled-2")
    )
    assert [o["Key"] for o in found.get("Contents", [])] == [
        keys.result_key(emu.prefix, "job-cancelled-2", 0)
    ]


def test_a_permission_removed_from_the_policy_fails_the_job_then_restored_it_runs(
    emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13 §3: without s3:PutObject on results/ no result can be written; the job
    fails (an error, not a hang) and the function's error is AWS's AccessDenied naming
    the action and the key. With the policy restored the same job runs."""
    backend = LambdaBackend(**{**emu.backend_settings(), "task_timeout": 4.0, "retries": 0})
    loop = foreach(x=range(2)).combine(sum)
    caplog.set_level(logging.INFO, logger="dolambda.emulator")
    started = time.monotonic()
    with policy_without(emu, "WriteResults", "s3:PutObject"), pytest.raises(DolambdaError):
        loop.do_lambda(iam_bodies.square, backend=backend, progress=False)
    assert time.monotonic() - started < 60
    denied = [r.getMessage() for r in caplog.records if "AccessDenied" in r.getMessage()]
    assert denied, "the function's log shows no AccessDenied"
    assert any("s3:PutObject" in m and "/results/" in m for m in denied), denied[:3]
    assert loop.do_lambda(iam_bodies.square, backend=backend, progress=False) == 1


def test_the_servers_authorization_follows_the_policy_live(emu: Emulator) -> None:
    """A policy change applies to the next request (the server reads the role's policy each
    time), so a test can break and restore a permission without restarting anything."""
    role = role_session(emu)
    result = keys.result_key(emu.prefix, "job-live", 0)
    with policy_without(emu, "WriteResults", "s3:PutObject"):
        with pytest.raises(ClientError) as info:
            role.put_object(Bucket=emu.bucket, Key=result, Body=b"x")
        assert error_code(info.value) == "AccessDenied"
    role.put_object(Bucket=emu.bucket, Key=result, Body=base64.b64encode(b"x"))


# --- doctor checks the listing's scope --------------------------------------------------------


def _doctor_role_policy(emu: Emulator) -> str:
    from dolambda.deploy import doctor

    settings = DeploySettings(bucket=emu.bucket, endpoint_url=emu.endpoint_url, region=emu.region)
    [result] = [
        r for r in doctor(settings, config_signing_key=emu.signing_key) if r.name == "role policy"
    ]
    return str(result)


def test_doctor_wants_the_prefix_scoped_list_bucket(emu: Emulator) -> None:
    """Issue 14.5, doctor's side: the role's s3:ListBucket is needed (a missing one is named),
    and one without the s3:prefix condition lists the whole bucket: wider than needed."""
    assert _doctor_role_policy(emu).startswith("OK  role policy")
    with policy_without(emu, "ListOwnKeys"):
        text = _doctor_role_policy(emu)
        assert "FAIL role policy" in text and "lacks" in text and "s3:ListBucket" in text
        assert "s3:prefix" in text
    original = policy(emu)
    unscoped = copy.deepcopy(original)
    for st in unscoped["Statement"]:
        st.pop("Condition", None)
    iam = client(emu, "iam")
    iam.put_role_policy(
        RoleName=role_name(emu), PolicyName=POLICY, PolicyDocument=json.dumps(unscoped)
    )
    try:
        text = _doctor_role_policy(emu)
        assert "wider than needed" in text and "s3:ListBucket" in text, text
    finally:
        iam.put_role_policy(
            RoleName=role_name(emu), PolicyName=POLICY, PolicyDocument=json.dumps(original)
        )
    assert _doctor_role_policy(emu).startswith("OK  role policy")


def test_a_read_permission_removed_fails_the_job_with_awss_access_denied_named(
    emu: Emulator,
) -> None:
    """Issue 13 §3: without s3:GetObject the worker cannot read its task; the invocation
    fails with AWS's AccessDenied, and the worker's report of it comes back to the client
    as an error naming it: in seconds, not a hang."""
    backend = LambdaBackend(**{**emu.backend_settings(), "retries": 0})
    loop = foreach(x=range(2)).combine(sum)
    started = time.monotonic()
    with policy_without(emu, "ReadTasksAndJobs"), pytest.raises(DolambdaError) as info:
        loop.do_lambda(iam_bodies.square, backend=backend, progress=False)
    text = str(info.value)
    assert "AccessDenied" in text and "s3:GetObject" in text, text
    assert time.monotonic() - started < 30
    assert loop.do_lambda(iam_bodies.square, backend=backend, progress=False) == 1


# --- a bucket encrypted with a customer managed KMS key (issue 14.10) ---------------------------


def _ensure_role_policy(emu: Emulator) -> str:
    """deploy's own role-policy step against the emulator's function: its change line."""
    from dolambda.deploy.aws import Clients
    from dolambda.deploy.role import ensure_role_policy
    from dolambda.emulator.setup import deploy_settings

    settings = deploy_settings(emu.config, emu.endpoint_url)
    return str(ensure_role_policy(settings, Clients(settings)))


@contextlib.contextmanager
def bucket_encrypted_with_a_customer_key(emu: Emulator) -> Iterator[str]:
    """The emulator's bucket encrypting by default with a new customer managed key, named
    by an alias (deploy resolves it to the key ARN); then SSE-S3 again, and deploy's own
    role-policy step run again (which takes the grant away: least privilege)."""
    kms, s3 = client(emu, "kms"), client(emu, "s3")
    key = kms.create_key(Description="dolambda test key")["KeyMetadata"]
    alias = f"alias/dolambda-test-{key['KeyId'][:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
    s3.put_bucket_encryption(
        Bucket=emu.bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {
                        "SSEAlgorithm": "aws:kms",
                        "KMSMasterKeyID": alias,
                    }
                }
            ]
        },
    )
    try:
        yield str(key["Arn"])
    finally:
        s3.put_bucket_encryption(
            Bucket=emu.bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )
        _ensure_role_policy(emu)


def test_a_customer_kms_key_on_the_bucket_is_needed_by_the_role_and_granted_by_deploy(
    emu: Emulator,
) -> None:
    """With SSE-KMS under a customer managed key, S3 calls KMS as the requester: the role
    needs kms:GenerateDataKey to write and kms:Decrypt to read
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingKMSEncryption.html). The
    emulator's S3 denies the role without them, doctor names what is missing, and
    deploy's role-policy step grants exactly that key; a job then runs."""
    role, admin = role_session(emu), client(emu, "s3")
    result = keys.result_key(emu.prefix, "job-kms", 0)
    with bucket_encrypted_with_a_customer_key(emu) as key_arn:
        with pytest.raises(ClientError) as info:
            role.put_object(Bucket=emu.bucket, Key=result, Body=b"x")
        assert error_code(info.value) == "AccessDenied"
        assert "kms:GenerateDataKey" in str(info.value) and key_arn in str(info.value)
        task = keys.task_key(emu.prefix, "job-kms", 0)
        admin.put_object(Bucket=emu.bucket, Key=task, Body=b"task")  # encrypted with the key
        with pytest.raises(ClientError) as info:
            role.get_object(Bucket=emu.bucket, Key=task)
        assert "kms:Decrypt" in str(info.value)
        text = _doctor_role_policy(emu)
        assert "FAIL role policy" in text and "kms:GenerateDataKey" in text, text

        change = _ensure_role_policy(emu)
        assert "updated" in change, change
        [grant] = [st for st in policy(emu)["Statement"] if st["Sid"] == "BucketKey"]
        assert grant["Resource"] == [key_arn]  # the key ARN, not the alias
        assert sorted(grant["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey"]
        role.put_object(Bucket=emu.bucket, Key=result, Body=base64.b64encode(b"x"))
        assert role.get_object(Bucket=emu.bucket, Key=task)["Body"].read() == b"task"
        assert _doctor_role_policy(emu).startswith("OK  role policy")
        backend = LambdaBackend(**{**emu.backend_settings(), "retries": 0})
        loop = foreach(x=range(3)).combine(sum)
        assert loop.do_lambda(iam_bodies.square, backend=backend, progress=False) == 5
    # back on SSE-S3, deploy's step took the grant away again (least privilege)
    assert all(st["Sid"] != "BucketKey" for st in policy(emu)["Statement"])
    assert _doctor_role_policy(emu).startswith("OK  role policy")


# --- the evaluator's rules (no server) ----------------------------------------------------------


def test_the_evaluator_follows_iams_rules() -> None:
    from dolambda.emulator.moto.authorize import allowed, s3_request

    obj = "arn:aws:s3:::b/dolambda/queue/j/1.task"
    grant = {"Effect": "Allow", "Action": "s3:Get*", "Resource": "arn:aws:s3:::b/dolambda/*"}
    deny = {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "*"}
    assert allowed([{"Statement": [grant]}], "s3:GetObject", obj, {})
    assert allowed([json.dumps({"Statement": grant})], "S3:getobject", obj, {})  # actions fold
    assert not allowed([{"Statement": [grant]}, {"Statement": [deny]}], "s3:GetObject", obj, {})
    assert not allowed([{"Statement": [grant]}], "s3:GetObject", "arn:aws:s3:::b/other", {})
    assert not allowed([], "s3:GetObject", obj, {})  # nothing allows: denied
    listing = {
        "Effect": "Allow",
        "Action": "s3:ListBucket",
        "Resource": "arn:aws:s3:::b",
        "Condition": {"StringLike": {"s3:prefix": ["dolambda/*"]}},
    }
    policies = [{"Statement": [listing]}]
    assert allowed(policies, "s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "dolambda/x"})
    assert not allowed(policies, "s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "other/"})
    assert not allowed(policies, "s3:ListBucket", "arn:aws:s3:::b", {})  # no prefix given
    unknown = {**listing, "Condition": {"DateGreaterThan": {"aws:CurrentTime": "2020"}}}
    assert not allowed([{"Statement": [unknown]}], "s3:ListBucket", "arn:aws:s3:::b", {})
    not_action = {"Effect": "Allow", "NotAction": "s3:Delete*", "Resource": "*"}
    assert allowed([{"Statement": [not_action]}], "s3:PutObject", obj, {})
    assert not allowed([{"Statement": [not_action]}], "s3:DeleteObject", obj, {})
    # requests -> actions
    assert s3_request("GET", "/b/dolambda/queue/j/1.task", "").checks[0][:2] == (
        "s3:GetObject",
        obj,
    )
    assert s3_request("HEAD", "/b/k%2Bplus", "").reads_object
    assert s3_request("PUT", "/b/k", "").checks[0][0] == "s3:PutObject"
    assert s3_request("PUT", "/b/k", "partNumber=1&uploadId=x").checks[0][0] == "s3:PutObject"
    assert s3_request("GET", "/b", "list-type=2&prefix=dolambda%2F").checks[0] == (
        "s3:ListBucket",
        "arn:aws:s3:::b",
        {"s3:prefix": "dolambda/"},
    )
    deleted = s3_request("POST", "/b", "delete", body=b"<Delete><Key>a</Key><Key>b&amp;c</Key>")
    assert [c[:2] for c in deleted.checks] == [
        ("s3:DeleteObject", "arn:aws:s3:::b/a"),
        ("s3:DeleteObject", "arn:aws:s3:::b/b&c"),
    ]
    assert s3_request("GET", "/b", "versioning").checks[0][0] == "s3:GetBucketVersioning"
    assert s3_request("GET", "/b", "delimiter=%2F&marker=a").checks[0][0] == "s3:ListBucket"
    assert s3_request("GET", "/", "").checks[0][0] == "s3:ListAllMyBuckets"
