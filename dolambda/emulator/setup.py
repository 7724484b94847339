"""The few AWS resources the emulator needs in its moto server, created only when missing.

This is deliberately small: ``dolambda deploy`` is the real, complete setup
(least-privilege policy, async-invoke config, lifecycle...). Here: the bucket,
an IAM role, the function (a placeholder zip: the emulator runs the real
handler from this checkout), the S3 invoke permission and the bucket
notification (the trigger filter of :mod:`dolambda._wire.keys` -> the function).
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import zipfile
from typing import Any

from dolambda._aws.errors import Kind, kind_of
from dolambda._wire import keys as _keys

TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
PLACEHOLDER = (
    "# placeholder: the dolambda emulator runs handler/lambda_function.py itself\n"
    "def lambda_handler(event, context):\n    return None\n"
)


def session(region: str) -> Any:
    """A boto3 session for the emulator's own calls (any credentials work on its server)."""
    import boto3  # here, not at the top: worker processes import this package and need none

    return boto3.session.Session(
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        region_name=region,
    )


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except Exception as exc:
        if kind_of(exc) not in (Kind.NOT_FOUND, Kind.NO_SUCH_BUCKET):
            raise
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except Exception as exc:
        if kind_of(exc) not in (Kind.BUCKET_OWNED, Kind.BUCKET_TAKEN):
            raise


def ensure_function(
    session: Any, endpoint_url: str, *, function_name: str, timeout: float, memory_mb: int
) -> str:
    """The function's ARN; the role and the function are created when missing."""
    lam = session.client("lambda", endpoint_url=endpoint_url)
    try:
        return str(lam.get_function(FunctionName=function_name)["Configuration"]["FunctionArn"])
    except Exception as exc:
        if kind_of(exc) is not Kind.NO_SUCH_FUNCTION:
            raise
    iam = session.client("iam", endpoint_url=endpoint_url)
    role_name = f"{function_name}-emulator-role"
    try:
        role_arn = iam.get_role(RoleName=role_name)["Role"]["Arn"]
    except Exception as exc:
        if kind_of(exc) is not Kind.NO_SUCH_ENTITY:
            raise
        role_arn = iam.create_role(RoleName=role_name, AssumeRolePolicyDocument=json.dumps(TRUST))[
            "Role"
        ]["Arn"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("lambda_function.py", PLACEHOLDER)
    created = lam.create_function(
        FunctionName=function_name,
        Runtime=f"python{sys.version_info.major}.{sys.version_info.minor}",
        Role=role_arn,
        Handler="lambda_function.lambda_handler",
        Code={"ZipFile": buf.getvalue()},
        Timeout=max(1, min(900, math.ceil(timeout))),
        MemorySize=max(128, min(10240, int(memory_mb))),
        Description="dolambda emulator (the handler runs in the emulator's workers)",
    )
    return str(created["FunctionArn"])


def ensure_permission(session: Any, endpoint_url: str, function_name: str, bucket: str) -> None:
    lam = session.client("lambda", endpoint_url=endpoint_url)
    try:
        policy = json.loads(lam.get_policy(FunctionName=function_name)["Policy"])
        for statement in policy.get("Statement", []):
            principal = statement.get("Principal", {})
            service = principal.get("Service") if isinstance(principal, dict) else principal
            if service == "s3.amazonaws.com":
                return
    except Exception as exc:
        if kind_of(exc) is not Kind.NO_SUCH_FUNCTION:
            raise
    try:
        lam.add_permission(
            FunctionName=function_name,
            StatementId=f"s3-invoke-{bucket}"[:100],
            Action="lambda:InvokeFunction",
            Principal="s3.amazonaws.com",
            SourceArn=f"arn:aws:s3:::{bucket}",
        )
    except Exception as exc:
        if kind_of(exc) is not Kind.CONFLICT:
            raise


def ensure_notification(s3: Any, bucket: str, function_arn: str, prefix: str) -> None:
    """Add our LambdaFunctionConfiguration unless one for this function already exists."""
    config = s3.get_bucket_notification_configuration(Bucket=bucket)
    config.pop("ResponseMetadata", None)
    lambdas = list(config.get("LambdaFunctionConfigurations", []))
    name = function_arn.split(":")[6] if function_arn.count(":") >= 6 else function_arn
    for entry in lambdas:
        arn = str(entry.get("LambdaFunctionArn", ""))
        if arn == function_arn or (arn.count(":") >= 6 and arn.split(":")[6] == name):
            return
    prefix_rule, suffix_rule = _keys.trigger_filter(prefix)
    lambdas.append(
        {
            "Id": "dolambda-queue",
            "LambdaFunctionArn": function_arn,
            "Events": ["s3:ObjectCreated:*"],
            "Filter": {
                "Key": {
                    "FilterRules": [
                        {"Name": "prefix", "Value": prefix_rule},
                        {"Name": "suffix", "Value": suffix_rule},
                    ]
                }
            },
        }
    )
    config["LambdaFunctionConfigurations"] = lambdas
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=config)


def ensure_all(
    session: Any,
    endpoint_url: str,
    *,
    bucket: str,
    region: str,
    function_name: str,
    prefix: str,
    timeout: float,
    memory_mb: int,
    notify: bool,
) -> str:
    """Everything above; returns the function ARN."""
    s3 = session.client("s3", endpoint_url=endpoint_url)
    ensure_bucket(s3, bucket, region)
    arn = ensure_function(
        session, endpoint_url, function_name=function_name, timeout=timeout, memory_mb=memory_mb
    )
    ensure_permission(session, endpoint_url, function_name, bucket)
    if notify:
        ensure_notification(s3, bucket, arn, prefix)
    return arn
