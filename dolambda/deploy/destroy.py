"""``dolambda destroy``: remove what ``dolambda deploy`` made, and nothing else.

Our notification entry and lifecycle rule are taken out of the bucket's configuration
(the user's entries stay), the function (with its permission and async-invoke config),
our role with its inline policy and the function's log group are deleted, and so are
the objects (every version) under
``<prefix>/``. The bucket and every other object stay unless ``delete_bucket``.
"""

from __future__ import annotations

from collections.abc import Callable

from dolambda._config import config_path, load_config
from dolambda._errors import DeployError, DolambdaError
from dolambda.deploy.aws import Clients, call
from dolambda.deploy.bucket import (
    bucket_region,
    find_notification,
    lifecycle_rules,
    notification_config,
    put_lifecycle,
    put_notifications,
)
from dolambda.deploy.function import PERMISSION_SID, get_function
from dolambda.deploy.settings import Change, DeploySettings, validate_bucket_name

Echo = Callable[[str], None]


def destroy(
    settings: DeploySettings, *, delete_bucket: bool = False, echo: Echo | None = None
) -> list[Change]:
    """Remove what :func:`deploy` made; keep the bucket and others' objects unless asked."""
    s = settings
    validate_bucket_name(s.bucket)
    c = Clients(s)
    c.identity()
    changes: list[Change] = []

    def step(change: Change) -> None:
        changes.append(change)
        if echo is not None:
            echo(str(change))

    region = bucket_region(c, s.bucket)
    if region is not None and region != c.region:
        raise DeployError(
            f"bucket {s.bucket} is in {region}, not {c.region}: pass --region {region}"
        )
    if region is not None:
        step(_remove_notification(s, c))
        step(_remove_lifecycle_rule(s, c))
    function = get_function(s, c)
    if function is not None:
        call(
            "lambda:RemovePermission",
            f"function {s.function_name}",
            c.lam.remove_permission,
            missing=True,
            FunctionName=s.function_name,
            StatementId=PERMISSION_SID,
        )
        step(Change("deleted", f"invoke permission {PERMISSION_SID}"))
        # without a Qualifier, DeleteFunction deletes every version and alias (the memory
        # tiers): https://docs.aws.amazon.com/lambda/latest/api/API_DeleteFunction.html
        call(
            "lambda:DeleteFunction",
            f"function {s.function_name}",
            c.lam.delete_function,
            FunctionName=s.function_name,
        )
        step(Change("deleted", f"function {s.function_name}"))
    else:
        step(Change("absent", f"function {s.function_name}"))
    step(_remove_role(s, c))
    step(_remove_log_group(s, c))
    if region is not None:
        count = _delete_objects(s, c, prefix=s.root)
        step(Change("deleted", f"objects under s3://{s.bucket}/{s.root}", f"{count}"))
        if delete_bucket:
            count = _delete_objects(s, c, prefix="")
            call("s3:DeleteBucket", f"bucket {s.bucket}", c.s3.delete_bucket, Bucket=s.bucket)
            step(Change("deleted", f"bucket {s.bucket}", f"and its {count} other object(s)"))
        else:
            step(Change("kept", f"bucket {s.bucket}", "pass --delete-bucket to delete it"))
    else:
        step(Change("absent", f"bucket {s.bucket}"))
    step(_remove_config(s))
    step(_remove_local_record(s, c))
    return changes


def _remove_notification(s: DeploySettings, c: Clients) -> Change:
    what = f"notification {s.notification_id}"
    config = notification_config(s, c)
    if find_notification(config, s) is None:
        return Change("absent", what)
    config["LambdaFunctionConfigurations"] = [
        e
        for e in config.get("LambdaFunctionConfigurations", [])
        if e.get("Id") != s.notification_id
    ]
    if not config["LambdaFunctionConfigurations"]:
        del config["LambdaFunctionConfigurations"]
    put_notifications(s, c, config)
    return Change("deleted", what)


def _remove_lifecycle_rule(s: DeploySettings, c: Clients) -> Change:
    what = f"lifecycle rule {s.lifecycle_rule_id}"
    rules = lifecycle_rules(s, c)
    others = [r for r in rules if r.get("ID") != s.lifecycle_rule_id]
    if len(others) == len(rules):
        return Change("absent", what)
    put_lifecycle(s, c, others)
    return Change("deleted", what)


def _remove_role(s: DeploySettings, c: Clients) -> Change:
    what = f"role {s.role_name}"
    if call("iam:GetRole", what, c.iam.get_role, missing=True, RoleName=s.role_name) is None:
        return Change("absent", what)
    call(
        "iam:DeleteRolePolicy",
        what,
        c.iam.delete_role_policy,
        missing=True,
        RoleName=s.role_name,
        PolicyName=s.role_policy_name,
    )
    inline = call("iam:ListRolePolicies", what, c.iam.list_role_policies, RoleName=s.role_name)
    attached = call(
        "iam:ListAttachedRolePolicies",
        what,
        c.iam.list_attached_role_policies,
        RoleName=s.role_name,
    )
    others = [
        *inline.get("PolicyNames", []),
        *(p.get("PolicyName") for p in attached.get("AttachedPolicies", [])),
    ]
    if others:
        return Change("kept", what, f"dolambda's policy removed; it also has {', '.join(others)}")
    call("iam:DeleteRole", what, c.iam.delete_role, RoleName=s.role_name)
    return Change("deleted", what, "and its inline policy")


def _remove_log_group(s: DeploySettings, c: Clients) -> Change:
    """Lambda creates ``/aws/lambda/<function>`` on the first invocation (the role may
    create it); it outlives the function unless deleted."""
    name = f"/aws/lambda/{s.function_name}"
    what = f"log group {name}"
    found = call(
        "logs:DescribeLogGroups",
        what,
        c.logs.describe_log_groups,
        logGroupNamePrefix=name,
    )
    if not any(g.get("logGroupName") == name for g in found.get("logGroups", [])):
        return Change("absent", what)
    call("logs:DeleteLogGroup", what, c.logs.delete_log_group, missing=True, logGroupName=name)
    return Change("deleted", what)


def _delete_objects(s: DeploySettings, c: Clients, *, prefix: str) -> int:
    what = f"s3://{s.bucket}/{prefix}"
    count = 0
    paginator = c.s3.get_paginator("list_object_versions")
    pages = call(
        "s3:ListBucketVersions",
        what,
        lambda: list(paginator.paginate(Bucket=s.bucket, Prefix=prefix)),
    )
    for page in pages:
        items = [
            {"Key": o["Key"], "VersionId": o["VersionId"]}
            for o in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
        ]
        for i in range(0, len(items), 1000):
            batch = [
                {"Key": o["Key"]} if o["VersionId"] in (None, "null") else o
                for o in items[i : i + 1000]
            ]
            call(
                "s3:DeleteObject",
                what,
                c.s3.delete_objects,
                Bucket=s.bucket,
                Delete={"Objects": batch, "Quiet": True},
            )
            count += len(batch)
    return count


def _remove_local_record(s: DeploySettings, c: Clients) -> Change:
    """This machine's copy of the function's package record (``packages.json``): a
    destroyed function's record must not answer for a later function of that name."""
    from dolambda._backends.lambda_ import code as _code

    ident = _code.record_id(s.function_name, c.region, s.endpoint_url)
    what = f"package record of {s.function_name} in {_code.records_path()}"
    return Change("deleted" if _code.remove_local_record(ident) else "absent", what)


def _remove_config(s: DeploySettings) -> Change:
    path = config_path()
    try:
        config = load_config()
    except DolambdaError:
        config = None
    if config is None or config.bucket != s.bucket or config.function_name != s.function_name:
        return Change("kept" if config else "absent", f"client config {path}")
    path.unlink()
    return Change("deleted", f"client config {path}")
