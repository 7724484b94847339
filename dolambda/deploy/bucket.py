"""The bucket side of ``dolambda deploy``: the bucket, its public access block, default
encryption, lifecycle rule and notification, each merged with what the bucket already has.

The notification's filter is :func:`dolambda._wire.keys.trigger_filter`, and the lifecycle
rule covers :func:`dolambda._wire.keys.root`: both follow the key layout.
"""

from __future__ import annotations

from typing import Any

from dolambda._aws.errors import Kind, kind_of, translate
from dolambda._errors import DeployError
from dolambda._wire import keys as _keys
from dolambda.deploy.aws import Clients, as_list, call
from dolambda.deploy.settings import Change, DeploySettings

ENCRYPTION = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}
PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}
NOTIFICATION_KINDS = (
    "TopicConfigurations",
    "QueueConfigurations",
    "LambdaFunctionConfigurations",
    "EventBridgeConfiguration",
)


# --- bucket -----------------------------------------------------------------------------


def bucket_region(clients: Clients, bucket: str) -> str | None:
    """The bucket's region, None when it does not exist; errors when it is not ours."""
    from botocore.exceptions import BotoCoreError, ClientError

    what = f"bucket {bucket}"
    try:
        response = clients.s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        kind = kind_of(exc)
        if kind in (Kind.NOT_FOUND, Kind.NO_SUCH_BUCKET):
            return None
        if kind is Kind.DENIED:
            raise DeployError(
                f"{what} exists but belongs to another AWS account (or your credentials lack "
                "s3:ListBucket on it): choose another --bucket or use the owner's --profile"
            ) from exc
        raise translate(exc, "deploy", action="s3:ListBucket", resource=what) from exc
    except BotoCoreError as exc:
        raise translate(exc, "deploy", action="s3:ListBucket", resource=what) from exc
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    region = headers.get("x-amz-bucket-region") or response.get("BucketRegion")
    if not region:
        location = call("s3:GetBucketLocation", what, clients.s3.get_bucket_location, Bucket=bucket)
        region = location.get("LocationConstraint") or "us-east-1"
    return str(region)


def ensure_bucket(s: DeploySettings, c: Clients) -> Change:
    what = f"bucket {s.bucket}"
    region = bucket_region(c, s.bucket)
    if region is not None:
        if region != c.region:
            raise DeployError(
                f"{what} is in {region}, not {c.region}: pass --region {region} (the function "
                "must live in the bucket's region)"
            )
        return Change("unchanged", what, f"exists in {region}")
    kw: dict[str, Any] = {"Bucket": s.bucket}
    if c.region != "us-east-1":
        kw["CreateBucketConfiguration"] = {"LocationConstraint": c.region}
    from botocore.exceptions import ClientError

    try:
        c.s3.create_bucket(**kw)
    except ClientError as exc:
        if kind_of(exc) is not Kind.BUCKET_OWNED:
            raise translate(exc, "deploy", action="s3:CreateBucket", resource=what) from exc
    return Change("created", what, f"in {c.region}")


def ensure_public_access_block(s: DeploySettings, c: Clients) -> Change:
    what = f"public access block on {s.bucket}"
    got = call(
        "s3:GetBucketPublicAccessBlock",
        what,
        c.s3.get_public_access_block,
        missing=True,
        Bucket=s.bucket,
    )
    current = (got or {}).get("PublicAccessBlockConfiguration")
    if current is not None and all(current.get(k) for k in PUBLIC_ACCESS_BLOCK):
        return Change("unchanged", what)
    call(
        "s3:PutBucketPublicAccessBlock",
        what,
        c.s3.put_public_access_block,
        Bucket=s.bucket,
        PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK,
    )
    return Change("created" if current is None else "updated", what, "all public access blocked")


def ensure_encryption(s: DeploySettings, c: Clients) -> Change:
    what = f"default encryption on {s.bucket}"
    got = call(
        "s3:GetEncryptionConfiguration",
        what,
        c.s3.get_bucket_encryption,
        missing=True,
        Bucket=s.bucket,
    )
    rules = ((got or {}).get("ServerSideEncryptionConfiguration") or {}).get("Rules") or []
    algos = {r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") for r in rules}
    if "AES256" in algos:
        return Change("unchanged", what, "SSE-S3 (AES256)")
    if algos & {"aws:kms", "aws:kms:dsse"}:
        key = bucket_kms_key(s, c)
        if key is None:
            return Change("unchanged", what, "SSE-KMS with the AWS managed key aws/s3 kept")
        return Change(
            "unchanged",
            what,
            f"SSE-KMS with {key} kept (the role is granted kms:GenerateDataKey and "
            "kms:Decrypt on it)",
        )
    call(
        "s3:PutEncryptionConfiguration",
        what,
        c.s3.put_bucket_encryption,
        Bucket=s.bucket,
        ServerSideEncryptionConfiguration=ENCRYPTION,
    )
    return Change("created", what, "SSE-S3 (AES256)")


#: the alias of the AWS managed key for S3, which any principal S3 lets in may use through S3
AWS_MANAGED_S3_KEY = "alias/aws/s3"


def bucket_kms_key(s: DeploySettings, c: Clients) -> str | None:
    """The ARN of the customer managed KMS key the bucket encrypts new objects with by
    default, or None (SSE-S3, the AWS managed ``aws/s3`` key, or no bucket yet).

    With SSE-KMS, S3 calls KMS on the requester's behalf: writing an object needs
    ``kms:GenerateDataKey`` and reading it ``kms:Decrypt`` on the key, in the requester's
    IAM policy (https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingKMSEncryption.html,
    "Permissions"). The AWS managed key's own key policy already lets every principal of
    the account use it through S3
    (https://docs.aws.amazon.com/kms/latest/developerguide/concepts.html#aws-managed-cmk),
    so only a customer managed key is granted. An IAM statement names a key by its key
    ARN (an alias ARN there matches nothing:
    https://docs.aws.amazon.com/kms/latest/developerguide/cmks-in-iam-policies.html), so an
    alias or key id is resolved with ``kms:DescribeKey``.
    """
    got = call(
        "s3:GetEncryptionConfiguration",
        f"default encryption on {s.bucket}",
        c.s3.get_bucket_encryption,
        missing=True,
        Bucket=s.bucket,
    )
    rules = ((got or {}).get("ServerSideEncryptionConfiguration") or {}).get("Rules") or []
    for rule in rules:
        default = rule.get("ApplyServerSideEncryptionByDefault") or {}
        if default.get("SSEAlgorithm") not in ("aws:kms", "aws:kms:dsse"):
            continue
        key = str(default.get("KMSMasterKeyID") or "")
        if not key or key.endswith(AWS_MANAGED_S3_KEY):
            return None
        try:
            meta = call("kms:DescribeKey", f"KMS key {key}", c.kms.describe_key, KeyId=key)[
                "KeyMetadata"
            ]
        except DeployError as exc:
            if key.startswith("arn:") and ":key/" in key:
                return key  # a key ARN already: grant it even if we may not describe it
            raise DeployError(
                f"bucket {s.bucket} encrypts with KMS key {key}, which deploy cannot resolve "
                f"to a key ARN ({exc}); set the bucket's default encryption to the key's ARN, "
                "or allow kms:DescribeKey on it"
            ) from exc
        if meta.get("KeyManager") == "AWS":
            return None
        return str(meta["Arn"])
    return None


def lifecycle_rule(s: DeploySettings) -> dict[str, Any]:
    return {
        "ID": s.lifecycle_rule_id,
        "Filter": {"Prefix": s.root},
        "Status": "Enabled",
        "Expiration": {"Days": s.expire_days},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }


def lifecycle_rules(s: DeploySettings, c: Clients) -> list[dict[str, Any]]:
    got = call(
        "s3:GetLifecycleConfiguration",
        f"lifecycle of bucket {s.bucket}",
        c.s3.get_bucket_lifecycle_configuration,
        missing=True,
        Bucket=s.bucket,
    )
    return list((got or {}).get("Rules") or [])


def put_lifecycle(s: DeploySettings, c: Clients, rules: list[dict[str, Any]]) -> None:
    what = f"lifecycle of bucket {s.bucket}"
    if rules:
        call(
            "s3:PutLifecycleConfiguration",
            what,
            c.s3.put_bucket_lifecycle_configuration,
            Bucket=s.bucket,
            LifecycleConfiguration={"Rules": rules},
        )
    else:
        call("s3:PutLifecycleConfiguration", what, c.s3.delete_bucket_lifecycle, Bucket=s.bucket)


def ensure_lifecycle(s: DeploySettings, c: Clients) -> Change:
    what = f"lifecycle rule {s.lifecycle_rule_id}"
    rules = lifecycle_rules(s, c)
    want = lifecycle_rule(s)
    ours = [r for r in rules if r.get("ID") == s.lifecycle_rule_id]
    if ours == [want]:
        return Change("unchanged", what, f"expires {s.root} after {s.expire_days} days")
    others = [r for r in rules if r.get("ID") != s.lifecycle_rule_id]
    put_lifecycle(s, c, [*others, want])
    kept = f"; {len(others)} other rule(s) kept" if others else ""
    action = "updated" if ours else "created"
    return Change(action, what, f"expires {s.root} after {s.expire_days} days{kept}")


# --- notification ------------------------------------------------------------------------


def notification_config(s: DeploySettings, c: Clients) -> dict[str, Any]:
    got = call(
        "s3:GetBucketNotification",
        f"notifications of bucket {s.bucket}",
        c.s3.get_bucket_notification_configuration,
        Bucket=s.bucket,
    )
    return {k: got[k] for k in NOTIFICATION_KINDS if k in got}


def our_notification(s: DeploySettings, function_arn: str) -> dict[str, Any]:
    prefix, suffix = _keys.trigger_filter(s.prefix)
    return {
        "Id": s.notification_id,
        "LambdaFunctionArn": function_arn,
        "Events": ["s3:ObjectCreated:*"],
        "Filter": {
            "Key": {
                "FilterRules": [
                    {"Name": "prefix", "Value": prefix},
                    {"Name": "suffix", "Value": suffix},
                ]
            }
        },
    }


def trigger_glob(s: DeploySettings) -> str:
    """The trigger filter as one glob, for messages (``dolambda/queue/*.task``)."""
    prefix, suffix = _keys.trigger_filter(s.prefix)
    return f"{prefix}*{suffix}"


def notification_problem(entry: dict[str, Any] | None, s: DeploySettings, arn: str) -> str | None:
    """None when our notification entry is right, else what is wrong with it."""
    if entry is None:
        return f"no notification {s.notification_id} on bucket {s.bucket}"
    rules = (entry.get("Filter") or {}).get("Key", {}).get("FilterRules") or []
    got = {str(r.get("Name", "")).lower(): r.get("Value") for r in rules}
    prefix, suffix = _keys.trigger_filter(s.prefix)
    problems = []
    if entry.get("LambdaFunctionArn") != arn:
        problems.append(f"targets {entry.get('LambdaFunctionArn')}, not {arn}")
    if sorted(as_list(entry.get("Events"))) != ["s3:ObjectCreated:*"]:
        problems.append(f"events are {entry.get('Events')}, not s3:ObjectCreated:*")
    if got.get("prefix") != prefix:
        problems.append(f"prefix is {got.get('prefix')!r}, not {prefix!r}")
    if got.get("suffix") != suffix:
        problems.append(f"suffix is {got.get('suffix')!r}, not {suffix!r}")
    return "; ".join(problems) or None


def find_notification(config: dict[str, Any], s: DeploySettings) -> dict[str, Any] | None:
    for entry in config.get("LambdaFunctionConfigurations", []):
        if entry.get("Id") == s.notification_id:
            return dict(entry)
    return None


def put_notifications(s: DeploySettings, c: Clients, config: dict[str, Any]) -> None:
    call(
        "s3:PutBucketNotification",
        f"notifications of bucket {s.bucket}",
        c.s3.put_bucket_notification_configuration,
        Bucket=s.bucket,
        NotificationConfiguration=config,
    )


def ensure_notification(s: DeploySettings, c: Clients, function_arn: str) -> Change:
    what = f"notification {s.notification_id}"
    config = notification_config(s, c)
    entry = find_notification(config, s)
    detail = f"s3:ObjectCreated:* {trigger_glob(s)} -> {s.function_name}"
    if notification_problem(entry, s, function_arn) is None:
        return Change("unchanged", what, detail)
    others = [
        e
        for e in config.get("LambdaFunctionConfigurations", [])
        if e.get("Id") != s.notification_id
    ]
    config["LambdaFunctionConfigurations"] = [*others, our_notification(s, function_arn)]
    put_notifications(s, c, config)
    kept = sum(len(v) for k, v in config.items() if isinstance(v, list)) - 1
    return Change(
        "updated" if entry else "created",
        what,
        detail + (f"; {kept} other notification(s) kept" if kept else ""),
    )
