"""The function's IAM role: trust (Lambda only) and its one least-privilege inline policy.

The policy lets the worker read the queue and the jobs, list the keys under the prefix
(see :func:`role_policy` for why), write results and its own logs, queue tasks and
invoke its own function (a remote dispatcher), and use the bucket's
customer managed KMS key when the bucket encrypts with one; the S3 resources are the key globs of
:mod:`dolambda._wire.keys`, so they follow the key layout.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from dolambda._wire import keys as _keys
from dolambda.deploy.aws import Clients, call
from dolambda.deploy.bucket import bucket_kms_key
from dolambda.deploy.settings import Change, DeploySettings


def trust_policy() -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }


def log_group_arn(settings: DeploySettings, clients: Clients) -> str:
    return (
        f"arn:{clients.partition}:logs:{clients.region}:{clients.account}:"
        f"log-group:/aws/lambda/{settings.function_name}"
    )


def function_arn(settings: DeploySettings, clients: Clients) -> str:
    """The function's unqualified ARN ($LATEST: what a remote dispatcher invokes)."""
    return (
        f"arn:{clients.partition}:lambda:{clients.region}:{clients.account}:"
        f"function:{settings.function_name}"
    )


def role_policy(settings: DeploySettings, clients: Clients) -> dict[str, Any]:
    """The function's only permissions: read tasks and jobs, list keys under the prefix,
    write results and its own logs, and what a remote dispatcher needs (issue 17.2):
    write task objects under ``queue/`` and ``lambda:InvokeFunction`` on this function
    alone, unqualified (the tasks it invokes and its child dispatchers run on $LATEST;
    a memory tier's alias is only ever invoked by the client). There is no on-failure
    destination: the worker's watchdog reports timed-out and out-of-memory tasks.

    Why ``s3:ListBucket`` (issue 14.5): a GET of a missing key is ``404 NoSuchKey`` only
    to a principal that may list the bucket, ``403 AccessDenied`` to any other
    (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html, "Permissions").
    The worker's "task gone (cancelled, or the job cleaned up): skip it" path needs the
    404; without it each such event is a function error that Lambda retries. Treating a
    403 under ``queue/`` as gone instead would also swallow a real denial (a policy that
    lost its ``s3:GetObject``), so the grant is the honest fix. It is scoped with an
    ``s3:prefix`` condition to dolambda's own keys: S3 decides the 404 by evaluating
    ``s3:ListBucket`` with the requested key as ``s3:prefix`` (Ceph RGW matched AWS on
    exactly this: https://github.com/ceph/ceph/pull/68577), so the worker can neither
    list nor probe keys outside ``<prefix>/``.

    A bucket encrypted by default with a customer managed KMS key (issue 14.10) adds
    ``kms:GenerateDataKey`` and ``kms:Decrypt`` on that key, and only that key: see
    :func:`dolambda.deploy.bucket.bucket_kms_key`.
    """
    bucket = f"arn:{clients.partition}:s3:::{settings.bucket}"
    objects = bucket + "/"
    logs = log_group_arn(settings, clients)
    kms_key = bucket_kms_key(settings, clients)
    kms = [
        {
            "Sid": "BucketKey",
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": [kms_key],
        }
    ]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadTasksAndJobs",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [objects + g for g in _keys.worker_read_globs(settings.prefix)],
            },
            {
                "Sid": "ListOwnKeys",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [bucket],
                "Condition": list_condition(settings.prefix),
            },
            {
                "Sid": "WriteResults",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": [objects + g for g in _keys.worker_write_globs(settings.prefix)],
            },
            {
                "Sid": "DispatchTasks",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": [objects + g for g in _keys.dispatcher_write_globs(settings.prefix)],
            },
            {
                "Sid": "InvokeItself",
                "Effect": "Allow",
                "Action": ["lambda:InvokeFunction"],
                "Resource": [function_arn(settings, clients)],
            },
            {
                "Sid": "OwnLogs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": [logs, f"{logs}:*"],
            },
            *(kms if kms_key else []),
        ],
    }


def list_condition(prefix: str) -> dict[str, Any]:
    """The condition that scopes the worker's ``s3:ListBucket`` to keys under ``prefix``."""
    return {"StringLike": {"s3:prefix": [f"{_keys.root(prefix)}*"]}}


def normalize_policy(doc: Any) -> Any:
    """A policy document in a canonical form (decoded, lists sorted) for comparison."""
    if isinstance(doc, str):
        doc = json.loads(doc if doc.lstrip().startswith("{") else unquote(doc))
    return _canonical(doc)


def _canonical(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _canonical(v) for k, v in doc.items()}
    if isinstance(doc, list):
        items = [_canonical(v) for v in doc]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    return doc


def ensure_role(s: DeploySettings, c: Clients) -> tuple[Change, str]:
    what = f"role {s.role_name}"
    got = call("iam:GetRole", what, c.iam.get_role, missing=True, RoleName=s.role_name)
    trust = trust_policy()
    if got is None:
        created = call(
            "iam:CreateRole",
            what,
            c.iam.create_role,
            RoleName=s.role_name,
            AssumeRolePolicyDocument=json.dumps(trust),
            Description=f"dolambda worker for function {s.function_name}",
        )
        return Change("created", what), str(created["Role"]["Arn"])
    role = got["Role"]
    if normalize_policy(role.get("AssumeRolePolicyDocument")) != normalize_policy(trust):
        call(
            "iam:UpdateAssumeRolePolicy",
            what,
            c.iam.update_assume_role_policy,
            RoleName=s.role_name,
            PolicyDocument=json.dumps(trust),
        )
        return Change("updated", what, "trust policy (lambda.amazonaws.com)"), str(role["Arn"])
    return Change("unchanged", what), str(role["Arn"])


def ensure_role_policy(s: DeploySettings, c: Clients) -> Change:
    what = f"role policy {s.role_name}/{s.role_policy_name}"
    want = role_policy(s, c)
    got = call(
        "iam:GetRolePolicy",
        what,
        c.iam.get_role_policy,
        missing=True,
        RoleName=s.role_name,
        PolicyName=s.role_policy_name,
    )
    if got is not None and normalize_policy(got["PolicyDocument"]) == normalize_policy(want):
        return Change("unchanged", what, "least privilege")
    call(
        "iam:PutRolePolicy",
        what,
        c.iam.put_role_policy,
        RoleName=s.role_name,
        PolicyName=s.role_policy_name,
        PolicyDocument=json.dumps(want),
    )
    return Change("updated" if got else "created", what, "least privilege")
