"""The Lambda function and what hangs on it: code and configuration, signing key,
async-invoke config (Lambda's retries off, no destination), recursion detection,
and the permission that lets the bucket invoke it.

Each ``ensure_*`` compares, changes only what differs, and reports one
:class:`~dolambda.deploy.settings.Change`.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from dolambda._aws.errors import Kind, kind_of, translate
from dolambda._config import load_config
from dolambda._errors import DeployError
from dolambda._wire import keys as _keys
from dolambda.deploy.aws import Clients, as_list, call
from dolambda.deploy.package import DIRECT_UPLOAD_LIMIT, Package
from dolambda.deploy.settings import Change, DeploySettings

HANDLER = "handler.lambda_function.lambda_handler"
MAX_EVENT_AGE = 6 * 3600  # seconds an async event may wait before Lambda drops it
#: Lambda's own retries of a failed asynchronous invocation: none. Lambda's schedule
#: (1 then 2 more minutes, the on-failure record only after the last attempt) reports a
#: timed-out task only after ~3 timeouts + 3 minutes, long after the client gave up; the
#: worker reports its own failures instead (dolambda._aws.watchdog) and the client
#: retries. https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html
MAX_RETRY_ATTEMPTS = 0
PERMISSION_SID = "dolambda-s3-invoke"


def function_arn(settings: DeploySettings, clients: Clients) -> str:
    return (
        f"arn:{clients.partition}:lambda:{clients.region}:{clients.account}:"
        f"function:{settings.function_name}"
    )


def get_function(s: DeploySettings, c: Clients) -> dict[str, Any] | None:
    got = call(
        "lambda:GetFunction",
        f"function {s.function_name}",
        c.lam.get_function,
        missing=True,
        FunctionName=s.function_name,
    )
    return None if got is None else dict(got["Configuration"])


def signing_key(s: DeploySettings, function: dict[str, Any] | None) -> str:
    """The key already deployed, else the client config's, else 32 fresh random bytes (hex)."""
    if s.rotate_key:
        return secrets.token_hex(32)
    env = ((function or {}).get("Environment") or {}).get("Variables") or {}
    if env.get("DOLAMBDA_SIGNING_KEY"):
        return str(env["DOLAMBDA_SIGNING_KEY"])
    try:
        config = load_config()
    except Exception:
        config = None
    if (
        config is not None
        and config.signing_key
        and config.bucket == s.bucket
        and config.function_name == s.function_name
    ):
        return config.signing_key
    return secrets.token_hex(32)


def _code(s: DeploySettings, c: Clients, package: Package, limit: int) -> dict[str, Any]:
    if package.size <= limit:
        return {"ZipFile": package.read()}
    key = _keys.deploy_package_key(s.prefix, s.function_name, package.path.stem)
    with package.path.open("rb") as body:
        call(
            "s3:PutObject",
            f"s3://{s.bucket}/{key}",
            c.s3.put_object,
            Bucket=s.bucket,
            Key=key,
            Body=body,
        )
    return {"S3Bucket": s.bucket, "S3Key": key}


def _wait(s: DeploySettings, c: Clients, timeout: float = 300.0) -> dict[str, Any]:
    """Wait until the function is Active and no update is in progress (real AWS is async)."""
    deadline = time.monotonic() + timeout
    while True:
        conf: dict[str, Any] = call(
            "lambda:GetFunctionConfiguration",
            f"function {s.function_name}",
            c.lam.get_function_configuration,
            FunctionName=s.function_name,
        )
        busy = conf.get("State") == "Pending" or conf.get("LastUpdateStatus") == "InProgress"
        if conf.get("State") == "Failed" or conf.get("LastUpdateStatus") == "Failed":
            reason = conf.get("StateReason") or conf.get("LastUpdateStatusReason") or "unknown"
            raise DeployError(f"function {s.function_name} failed to deploy: {reason}")
        if not busy or time.monotonic() > deadline:
            return conf
        time.sleep(1.0)


def ensure_function(
    s: DeploySettings,
    c: Clients,
    *,
    package: Package,
    runtime: str,
    role_arn: str,
    key: str,
    existing: dict[str, Any] | None,
    upload_limit: int = DIRECT_UPLOAD_LIMIT,
) -> tuple[Change, str]:
    what = f"function {s.function_name}"
    ours = {
        "DOLAMBDA_SIGNING_KEY": key,
        "DOLAMBDA_PREFIX": s.clean_prefix,
        "DOLAMBDA_BUCKET": s.bucket,
    }
    config: dict[str, Any] = {
        "Runtime": runtime,
        "Role": role_arn,
        "Handler": HANDLER,
        "MemorySize": s.memory_mb,
        "Timeout": s.timeout,
        "Description": "dolambda worker (S3 queue)",
    }
    if existing is None:
        code = _code(s, c, package, upload_limit)
        created = _create_function(s, c, config, code, ours)
        _wait(s, c)
        detail = f"{runtime}, {s.architecture}, {s.memory_mb} MB, {s.timeout} s"
        return Change("created", what, detail), str(created["FunctionArn"])
    changed = []
    if existing.get("CodeSha256") != package.code_sha256 or as_list(
        existing.get("Architectures") or ["x86_64"]
    ) != [s.architecture]:
        code = _code(s, c, package, upload_limit)
        call(
            "lambda:UpdateFunctionCode",
            what,
            c.lam.update_function_code,
            FunctionName=s.function_name,
            Architectures=[s.architecture],
            **code,
        )
        changed.append("code")
        _wait(s, c)
    env = dict((existing.get("Environment") or {}).get("Variables") or {})
    update = {k: v for k, v in config.items() if existing.get(k) != v}
    if any(env.get(k) != v for k, v in ours.items()):
        update["Environment"] = {"Variables": {**env, **ours}}
    if update:
        call(
            "lambda:UpdateFunctionConfiguration",
            what,
            c.lam.update_function_configuration,
            FunctionName=s.function_name,
            **update,
        )
        changed += [k.lower() for k in update]
        _wait(s, c)
    arn = str(existing["FunctionArn"])
    if changed:
        return Change("updated", what, ", ".join(changed)), arn
    return Change("unchanged", what), arn


def _create_function(
    s: DeploySettings, c: Clients, config: dict[str, Any], code: dict[str, Any], env: dict[str, str]
) -> dict[str, Any]:

    out: dict[str, Any] = _retry_while_role_settles(
        "lambda:CreateFunction",
        f"function {s.function_name}",
        lambda: c.lam.create_function(
            FunctionName=s.function_name,
            Code=code,
            Architectures=[s.architecture],
            Environment={"Variables": env},
            PackageType="Zip",
            **config,
        ),
    )
    return out


#: how long a call that depends on a just-written IAM role or policy is retried (IAM is
#: eventually consistent: https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_general.html#troubleshoot_general_eventual-consistency),
#: and the pause between tries
ROLE_SETTLE_SECONDS = 90.0
ROLE_SETTLE_PAUSE = 3.0


def _retry_while_role_settles(action: str, what: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, tried again while Lambda says the role is not usable yet.

    Lambda validates a new function's role (CreateFunction: "cannot be assumed") and an
    on-failure destination against the role's policy (PutFunctionEventInvokeConfig:
    "The destination ARN ... is invalid") seconds after both were written; Terraform's
    AWS provider retries exactly these two.
    """
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + ROLE_SETTLE_SECONDS
    while True:
        try:
            return fn()
        except ClientError as exc:
            settling = kind_of(exc) in (Kind.ROLE_NOT_READY, Kind.DESTINATION_NOT_READY)
            if not settling or time.monotonic() > deadline:
                raise translate(exc, "deploy", action=action, resource=what) from exc
            time.sleep(ROLE_SETTLE_PAUSE)


def get_event_invoke_config(
    s: DeploySettings, c: Clients, qualifier: str | None = None
) -> dict[str, Any] | None:
    """The event-invoke config of the function, or of its version or alias ``qualifier``
    (each has its own: https://docs.aws.amazon.com/lambda/latest/api/API_PutFunctionEventInvokeConfig.html)."""
    extra = {} if qualifier is None else {"Qualifier": qualifier}
    got = call(
        "lambda:GetFunctionEventInvokeConfig",
        f"function {s.function_name}" + (f":{qualifier}" if qualifier else ""),
        c.lam.get_function_event_invoke_config,
        missing=True,
        FunctionName=s.function_name,
        **extra,
    )
    return None if got is None else dict(got)


def ensure_event_invoke_config(
    s: DeploySettings, c: Clients, qualifier: str | None = None
) -> Change:
    """Lambda's retries off and no destination, on the function or on ``qualifier``."""
    what = f"async invoke config of {s.function_name}" + (f":{qualifier}" if qualifier else "")
    extra = {} if qualifier is None else {"Qualifier": qualifier}
    got = get_event_invoke_config(s, c, qualifier)
    # No on-failure destination: with the worker reporting its own timeouts, memory kills
    # and crashes, what is left (an init failure, a runtime killed outright) the client's
    # deadline catches. Put overwrites the whole config ("If you exclude any settings,
    # they are removed"), so this also drops the destination older deploys set:
    # https://docs.aws.amazon.com/lambda/latest/api/API_PutFunctionEventInvokeConfig.html
    want: dict[str, Any] = {
        "MaximumRetryAttempts": MAX_RETRY_ATTEMPTS,
        "MaximumEventAgeInSeconds": MAX_EVENT_AGE,
    }
    detail = (
        f"Lambda's retries off ({MAX_RETRY_ATTEMPTS}), events kept {MAX_EVENT_AGE // 3600} h, "
        "no on-failure destination"
    )
    if (
        got is not None
        and all(got.get(k) == v for k, v in want.items())
        and not on_failure_destination(got)
    ):
        return Change("unchanged", what, detail)
    _retry_while_role_settles(
        "lambda:PutFunctionEventInvokeConfig",
        what,
        lambda: c.lam.put_function_event_invoke_config(
            FunctionName=s.function_name, **extra, **want
        ),
    )
    return Change("updated" if got else "created", what, detail)


def on_failure_destination(config: dict[str, Any]) -> str:
    """The on-failure destination of an event-invoke config ("" when none)."""
    destination = (config.get("DestinationConfig") or {}).get("OnFailure") or {}
    return str(destination.get("Destination") or "")


def ensure_recursion_config(s: DeploySettings, c: Clients) -> Change:
    from botocore.exceptions import ClientError

    what = f"recursive loop detection of {s.function_name}"
    try:
        got = c.lam.get_function_recursion_config(FunctionName=s.function_name)
        if got.get("RecursiveLoop") == "Terminate":
            return Change("unchanged", what, "Terminate")
        c.lam.put_function_recursion_config(FunctionName=s.function_name, RecursiveLoop="Terminate")
        return Change("updated", what, "Terminate")
    except ClientError as exc:
        if kind_of(exc) in (Kind.NOT_FOUND, Kind.UNSUPPORTED):
            return Change(
                "skipped", what, "this endpoint does not support it (AWS default: Terminate)"
            )
        if kind_of(exc) is Kind.DENIED:
            # optional: Lambda already stops recursive loops by default ("Terminate",
            # https://docs.aws.amazon.com/lambda/latest/dg/invocation-recursion.html);
            # an identity without lambda:*FunctionRecursionConfig must not fail the deploy
            return Change(
                "skipped",
                what,
                "your credentials may not read or set it (AWS default: Terminate)",
            )
        raise translate(
            exc, "deploy", action="lambda:PutFunctionRecursionConfig", resource=what
        ) from exc


def permission_statement(s: DeploySettings, c: Clients) -> dict[str, Any] | None:
    got = call(
        "lambda:GetPolicy",
        f"resource policy of {s.function_name}",
        c.lam.get_policy,
        missing=True,
        FunctionName=s.function_name,
    )
    if got is None:
        return None
    for st in json.loads(got["Policy"]).get("Statement", []):
        if st.get("Sid") == PERMISSION_SID:
            return dict(st)
    return None


def permission_ok(st: dict[str, Any] | None, s: DeploySettings, c: Clients) -> str | None:
    """None when the statement is right, else what is wrong with it."""
    if st is None:
        return "missing"
    cond = st.get("Condition") or {}
    source_arn = {k.lower(): v for d in cond.values() for k, v in d.items()}.get("aws:sourcearn")
    source_account = {k.lower(): v for d in cond.values() for k, v in d.items()}.get(
        "aws:sourceaccount"
    )
    principal = st.get("Principal")
    principal = principal.get("Service") if isinstance(principal, dict) else principal
    problems = []
    if principal != "s3.amazonaws.com":
        problems.append(f"principal is {principal!r}, not s3.amazonaws.com")
    if as_list(st.get("Action")) != ["lambda:InvokeFunction"]:
        problems.append(f"action is {st.get('Action')!r}")
    if source_arn != f"arn:{c.partition}:s3:::{s.bucket}":
        problems.append(f"source ARN is {source_arn!r}, not this bucket")
    if source_account != c.account:
        problems.append(f"source account is {source_account!r}, not {c.account}")
    return "; ".join(problems) or None


def ensure_permission(s: DeploySettings, c: Clients) -> Change:
    what = f"invoke permission {PERMISSION_SID}"
    st = permission_statement(s, c)
    problem = permission_ok(st, s, c)
    detail = f"s3.amazonaws.com from bucket {s.bucket}, account {c.account}"
    if problem is None:
        return Change("unchanged", what, detail)
    if st is not None:
        call(
            "lambda:RemovePermission",
            what,
            c.lam.remove_permission,
            FunctionName=s.function_name,
            StatementId=PERMISSION_SID,
        )
    call(
        "lambda:AddPermission",
        what,
        c.lam.add_permission,
        FunctionName=s.function_name,
        StatementId=PERMISSION_SID,
        Action="lambda:InvokeFunction",
        Principal="s3.amazonaws.com",
        SourceArn=f"arn:{c.partition}:s3:::{s.bucket}",
        SourceAccount=c.account,
    )
    return Change("updated" if st else "created", what, detail)


#: the settings a tier's version must share with ``$LATEST`` (all but MemorySize)
TIER_SAME = ("CodeSha256", "Runtime", "Role", "Handler", "Timeout", "Environment")


def tier_problem(latest: dict[str, Any], version: dict[str, Any] | None, memory_mb: int) -> str:
    """What is wrong with a tier's version ("" when it is ``$LATEST`` at ``memory_mb``)."""
    if version is None:
        return "missing"
    if version.get("MemorySize") != memory_mb:
        return f"its version has {version.get('MemorySize')} MB"
    stale = [k for k in TIER_SAME if version.get(k) != latest.get(k)]
    return f"its version has another {', '.join(stale)} than $LATEST" if stale else ""


def tier_version(s: DeploySettings, c: Clients, memory_mb: int) -> dict[str, Any] | None:
    """The configuration of the version the tier's alias points at (None: no alias)."""
    from dolambda._aws.invoke import tier_alias

    got = call(
        "lambda:GetFunctionConfiguration",
        f"memory tier {tier_alias(memory_mb)} of {s.function_name}",
        c.lam.get_function_configuration,
        missing=True,
        FunctionName=s.function_name,
        Qualifier=tier_alias(memory_mb),
    )
    return None if got is None else dict(got)


def tier_aliases(s: DeploySettings, c: Clients) -> dict[int, str]:
    """The function's memory tiers now: MB -> the version its ``mem-<MB>`` alias names."""
    from dolambda._aws.invoke import TIER_ALIAS_PREFIX

    aliases = call(
        "lambda:ListAliases",
        f"memory tiers of {s.function_name}",
        c.lam.list_aliases,
        FunctionName=s.function_name,
    ).get("Aliases", [])
    out = {}
    for a in aliases:
        size = str(a["Name"])[len(TIER_ALIAS_PREFIX) :]
        if str(a["Name"]).startswith(TIER_ALIAS_PREFIX) and size.isdigit():
            out[int(size)] = str(a["FunctionVersion"])
    return dict(sorted(out.items()))


def ensure_memory_tiers(s: DeploySettings, c: Clients) -> Change:
    """Each memory tier as a published version of the one function behind the alias
    ``mem-<MB>`` (a version's memory is immutable, so a tier is ``$LATEST`` published
    with another MemorySize: https://docs.aws.amazon.com/lambda/latest/dg/configuration-versions.html),
    with Lambda's retries off on each alias (an alias has an event-invoke config of its
    own; without one Lambda retries twice:
    https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html).
    Aliases of tiers no longer wanted are deleted, and so are versions no alias uses."""
    from dolambda._aws.invoke import tier_alias

    what = f"memory tiers of {s.function_name}"
    tiers = s.tiers
    latest = _wait(s, c)
    had = tier_aliases(s, c)
    stale = [mb for mb in tiers if tier_problem(latest, tier_version(s, c, mb), mb)]
    for mb in stale:
        # $LATEST at the tier's memory, published, then back to the base memory
        _update_memory(s, c, mb)
        version = call(
            "lambda:PublishVersion",
            what,
            c.lam.publish_version,
            FunctionName=s.function_name,
            CodeSha256=latest.get("CodeSha256"),
            Description=f"dolambda memory tier {mb} MB",
        )["Version"]
        action, method = (
            ("lambda:UpdateAlias", c.lam.update_alias)
            if mb in had
            else ("lambda:CreateAlias", c.lam.create_alias)
        )
        call(
            action,
            what,
            method,
            FunctionName=s.function_name,
            Name=tier_alias(mb),
            FunctionVersion=version,
        )
    if stale:
        _update_memory(s, c, s.memory_mb)
    for mb in tiers:
        ensure_event_invoke_config(s, c, tier_alias(mb))
    gone = [mb for mb in had if mb not in tiers]
    for mb in gone:
        call(
            "lambda:DeleteAlias",
            what,
            c.lam.delete_alias,
            FunctionName=s.function_name,
            Name=tier_alias(mb),
        )
    if stale or gone:
        _delete_unused_versions(s, c)
    detail = ", ".join(f"{mb} MB" for mb in tiers) or "none (the base memory only)"
    if not stale and not gone:
        return Change("unchanged", what, detail)
    return Change("updated" if had else "created", what, detail)


def _update_memory(s: DeploySettings, c: Clients, memory_mb: int) -> None:
    call(
        "lambda:UpdateFunctionConfiguration",
        f"memory tiers of {s.function_name}",
        c.lam.update_function_configuration,
        FunctionName=s.function_name,
        MemorySize=memory_mb,
    )
    _wait(s, c)


def _delete_unused_versions(s: DeploySettings, c: Clients) -> None:
    """Published versions no alias points at (older tiers) take code storage: delete them."""
    what = f"versions of {s.function_name}"
    used = {
        str(a["FunctionVersion"])
        for a in call(
            "lambda:ListAliases", what, c.lam.list_aliases, FunctionName=s.function_name
        ).get("Aliases", [])
    }
    paginator = c.lam.get_paginator("list_versions_by_function")  # (50 a page)
    pages = call(
        "lambda:ListVersionsByFunction",
        what,
        lambda: list(paginator.paginate(FunctionName=s.function_name)),
    )
    for v in (v for page in pages for v in page.get("Versions", [])):
        number = str(v.get("Version"))
        if number != "$LATEST" and number not in used:
            call(
                "lambda:DeleteFunction",
                what,
                c.lam.delete_function,
                missing=True,
                FunctionName=s.function_name,
                Qualifier=number,
            )
