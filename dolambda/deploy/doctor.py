"""``dolambda doctor``: check every piece of a deployed setup, one sentence per problem."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from dolambda._aws.errors import Kind, kind_of
from dolambda._config import load_config
from dolambda._errors import DolambdaError
from dolambda.deploy.aws import Clients, as_list, call
from dolambda.deploy.bucket import (
    PUBLIC_ACCESS_BLOCK,
    bucket_region,
    find_notification,
    lifecycle_rule,
    lifecycle_rules,
    notification_config,
    notification_problem,
    trigger_glob,
)
from dolambda.deploy.function import (
    HANDLER,
    MAX_EVENT_AGE,
    MAX_RETRY_ATTEMPTS,
    get_event_invoke_config,
    get_function,
    on_failure_destination,
    permission_ok,
    permission_statement,
    tier_problem,
    tier_version,
)
from dolambda.deploy.package import python_version, runtime_for
from dolambda.deploy.role import normalize_policy, role_policy
from dolambda.deploy.settings import DeploySettings, fix_command


@dataclass(frozen=True)
class CheckResult:
    """One doctor check: its name, whether it passed, what is wrong, and the command to fix it."""

    name: str
    ok: bool
    detail: str = ""
    fix: str = ""

    def __str__(self) -> str:
        if self.ok:
            return f"OK  {self.name}" + (f" ({self.detail})" if self.detail else "")
        return f"FAIL {self.name}: {self.detail}" + (f" — fix: {self.fix}" if self.fix else "")


class _Failed(Exception):
    def __init__(self, detail: str, fix: str = "") -> None:
        super().__init__(detail)
        self.detail, self.fix = detail, fix


def _credentials_fix(exc: DolambdaError, options: str) -> str:
    """The fix for a failed credentials check: a network failure is not a credentials one."""
    cause = exc.__cause__
    if cause is not None and (isinstance(cause, OSError) or kind_of(cause) is Kind.UNREACHABLE):
        return "check the network and --endpoint-url (is the emulator running?)"
    return f"aws configure (or pass {options})"


def doctor(
    settings: DeploySettings,
    *,
    round_trip: Callable[[], None] | None = None,
    python: str | None = None,
    config_signing_key: str | None = None,
) -> list[CheckResult]:
    """Check a deployed setup; one :class:`CheckResult` per check, failures included.

    ``config_signing_key`` is the client's key (default: from the config file when it
    describes this bucket and function). ``round_trip`` runs one tiny job; it is only
    tried when every other check passed. Checks that depend on a failed one are left out.
    """
    s = settings
    fix = fix_command(s)
    results: list[CheckResult] = []

    def check(name: str, fn: Callable[[], str]) -> bool:
        try:
            detail = fn()
        except _Failed as exc:
            results.append(CheckResult(name, False, exc.detail, exc.fix or fix))
            return False
        except DolambdaError as exc:
            results.append(CheckResult(name, False, str(exc), fix))
            return False
        results.append(CheckResult(name, True, detail))
        return True

    holder: dict[str, Any] = {}

    def credentials() -> str:
        try:
            holder["c"] = Clients(s)
        except DolambdaError as exc:
            raise _Failed(str(exc), _credentials_fix(exc, "--profile / --region")) from exc
        try:
            ident = holder["c"].identity()
        except DolambdaError as exc:
            raise _Failed(str(exc), _credentials_fix(exc, "--profile")) from exc
        return f"account {ident.get('Account')}, {ident.get('Arn')}"

    if not check("credentials", credentials):
        return results
    c: Clients = holder["c"]
    check("region", lambda: _region(s, c))
    bucket_ok = check("bucket", lambda: _bucket(s, c))
    if bucket_ok:
        check("bucket settings", lambda: _bucket_settings(s, c))
    function: dict[str, Any] | None = None

    def function_check() -> str:
        nonlocal function
        function = get_function(s, c)
        if function is None:
            raise _Failed(f"function {s.function_name} does not exist in {c.region}")
        return _function(s, function)

    if check("function", function_check) and function is not None:
        fn = function
        check("runtime", lambda: _runtime(fn, python))
        check("async invoke config", lambda: _event_invoke(s, c))
        check("memory tiers", lambda: _memory_tiers(s, c, fn))
        check("concurrency", lambda: _concurrency(s, c))
        check("permission", lambda: _permission(s, c))
        if bucket_ok:
            check("notification", lambda: _notification(s, c, str(fn["FunctionArn"])))
        check("role policy", lambda: _role_policy(s, c, str(fn["Role"])))
        check("signing key", lambda: _signing_key(s, fn, config_signing_key))
        if bucket_ok:
            check("package record", lambda: _package_record(s, c, fn))
    if round_trip is not None and all(r.ok for r in results):
        rt = round_trip

        def run_round_trip() -> str:
            try:
                rt()
            except Exception as exc:
                raise _Failed(f"a tiny job failed: {type(exc).__name__}: {exc}") from exc
            return "a tiny job ran on the function"

        check("round trip", run_round_trip)
    return results


def _region(s: DeploySettings, c: Clients) -> str:
    if s.endpoint_url:
        return f"{c.region} (endpoint {s.endpoint_url})"
    import boto3

    # every partition's regions (aws, aws-cn, aws-us-gov, ...), not only the default's
    session = boto3.Session()
    known = {
        region
        for partition in session.get_available_partitions()
        for region in session.get_available_regions("lambda", partition_name=partition)
    }
    if known and c.region not in known:
        raise _Failed(f"{c.region} is not a region with AWS Lambda", "pass --region REGION")
    return c.region


def _bucket(s: DeploySettings, c: Clients) -> str:
    region = bucket_region(c, s.bucket)
    if region is None:
        raise _Failed(f"bucket {s.bucket} does not exist")
    if region != c.region:
        raise _Failed(
            f"bucket {s.bucket} is in {region}, not {c.region}",
            fix_command(replace(s, region=region)),
        )
    return f"{s.bucket} in {region}"


def _bucket_settings(s: DeploySettings, c: Clients) -> str:
    problems = []
    got = call(
        "s3:GetBucketPublicAccessBlock",
        f"bucket {s.bucket}",
        c.s3.get_public_access_block,
        missing=True,
        Bucket=s.bucket,
    )
    block = (got or {}).get("PublicAccessBlockConfiguration") or {}
    if not all(block.get(k) for k in PUBLIC_ACCESS_BLOCK):
        problems.append("public access is not fully blocked")
    enc = call(
        "s3:GetEncryptionConfiguration",
        f"bucket {s.bucket}",
        c.s3.get_bucket_encryption,
        missing=True,
        Bucket=s.bucket,
    )
    if not ((enc or {}).get("ServerSideEncryptionConfiguration") or {}).get("Rules"):
        problems.append("no default encryption")
    rules = [r for r in lifecycle_rules(s, c) if r.get("ID") == s.lifecycle_rule_id]
    want = lifecycle_rule(s)
    if not rules:
        problems.append(f"no lifecycle rule {s.lifecycle_rule_id}")
    elif rules[0].get("Filter") != want["Filter"] or rules[0].get("Status") != "Enabled":
        problems.append(f"lifecycle rule {s.lifecycle_rule_id} does not expire {s.root}")
    if problems:
        raise _Failed("; ".join(problems))
    return "public access blocked, encrypted, lifecycle rule"


def _function(s: DeploySettings, fn: dict[str, Any]) -> str:
    env = (fn.get("Environment") or {}).get("Variables") or {}
    problems = []
    if fn.get("Handler") != HANDLER:
        problems.append(f"handler is {fn.get('Handler')!r}, not {HANDLER!r}")
    if env.get("DOLAMBDA_PREFIX") != s.clean_prefix:
        problems.append(
            f"DOLAMBDA_PREFIX is {env.get('DOLAMBDA_PREFIX')!r}, not {s.clean_prefix!r}"
        )
    if env.get("DOLAMBDA_BUCKET") != s.bucket:
        problems.append(f"DOLAMBDA_BUCKET is {env.get('DOLAMBDA_BUCKET')!r}, not {s.bucket!r}")
    if fn.get("State") not in (None, "Active"):
        problems.append(f"state is {fn.get('State')} ({fn.get('StateReason', '')})")
    if problems:
        raise _Failed(f"function {s.function_name}: " + "; ".join(problems))
    return f"{s.function_name}, {fn.get('MemorySize')} MB, {fn.get('Timeout')} s"


def _runtime(fn: dict[str, Any], python: str | None) -> str:
    version = python or python_version()
    want = runtime_for(version)
    if fn.get("Runtime") != want:
        raise _Failed(
            f"the function runs {fn.get('Runtime')} but this client runs Python {version}; "
            "pickled bodies only load in the same Python minor version"
        )
    return want


def _memory_tiers(s: DeploySettings, c: Clients, fn: dict[str, Any]) -> str:
    """Each memory tier's alias points at a version of $LATEST with the tier's memory,
    and has the function's async invoke config (an alias has one of its own)."""
    from dolambda._aws.invoke import tier_alias
    from dolambda.deploy.emulated import emulator_function

    tiers = s.tiers
    emulated = emulator_function(s, c, fn) if s.memory_tiers is None else None
    if emulated is not None:  # an emulator's function: its tiers (deploy keeps them)
        tiers = tuple(emulated["Tiers"])
    problems = []
    for mb in tiers:
        alias = tier_alias(mb)
        problem = tier_problem(fn, tier_version(s, c, mb), mb)
        if not problem:
            try:
                _event_invoke(s, c, alias)
            except _Failed as exc:
                problem = exc.detail.removesuffix("; run dolambda deploy")
        if problem:
            problems.append(f"{alias}: {problem}")
    if problems:
        raise _Failed("; ".join(problems) + "; run dolambda deploy")
    return ", ".join(f"{mb} MB" for mb in tiers) or "none"


def _package_record(s: DeploySettings, c: Clients, fn: dict[str, Any]) -> str:
    """The record of what the deployed package holds, which clients read before they
    dispatch (to name a distribution the function lacks): present, readable, and for
    this function's architecture (its Python is the runtime check's)."""
    from dolambda._wire.keys import package_record_key

    key = package_record_key(s.clean_prefix, s.function_name)
    where = f"s3://{s.bucket}/{key}"
    got = call(
        "s3:GetObject",
        f"package record {where}",
        c.s3.get_object,
        missing=True,
        Bucket=s.bucket,
        Key=key,
    )
    if got is None:
        raise _Failed(
            f"no package record at {where}: clients cannot tell before dispatch which "
            "distributions the function lacks (a job that needs one fails on every task)"
        )
    try:
        record = json.loads(got["Body"].read())
        dists = dict(record["distributions"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _Failed(f"the package record at {where} is not readable ({exc})") from exc
    problems = []
    arch = (fn.get("Architectures") or ["x86_64"])[0]
    if record.get("architecture") not in (None, arch):
        problems.append(
            f"it describes a {record.get('architecture')} package, the function is {arch}"
        )
    if problems:
        raise _Failed(f"the package record at {where} is stale: " + "; ".join(problems))
    return f"{len(dists)} distributions"


def _event_invoke(s: DeploySettings, c: Clients, qualifier: str | None = None) -> str:
    got = get_event_invoke_config(s, c, qualifier)
    if got is None:
        raise _Failed("no async invoke config (retries and event age are Lambda's defaults)")
    if got.get("MaximumRetryAttempts") != MAX_RETRY_ATTEMPTS:
        raise _Failed(
            f"Lambda retries a failed invocation {got.get('MaximumRetryAttempts')} time(s); "
            f"dolambda wants {MAX_RETRY_ATTEMPTS} (the client owns retries: Lambda's come "
            "minutes apart and run a hopeless task again); run dolambda deploy"
        )
    if got.get("MaximumEventAgeInSeconds") != MAX_EVENT_AGE:
        raise _Failed(
            f"max event age {got.get('MaximumEventAgeInSeconds')} s differs from dolambda's "
            f"{MAX_EVENT_AGE} s; run dolambda deploy"
        )
    destination = on_failure_destination(got)
    if destination:
        raise _Failed(
            f"an on-failure destination is set ({destination}); dolambda deploys none (the "
            "worker reports its own failures): run dolambda deploy"
        )
    return "Lambda's retries off, no on-failure destination"


def _permission(s: DeploySettings, c: Clients) -> str:
    problem = permission_ok(permission_statement(s, c), s, c)
    if problem == "missing":
        raise _Failed(
            f"S3 may not invoke {s.function_name}: no permission statement for "
            f"s3.amazonaws.com from bucket {s.bucket}"
        )
    if problem:
        raise _Failed(f"the S3 invoke permission is wrong: {problem}")
    return f"s3.amazonaws.com from {s.bucket}"


def _notification(s: DeploySettings, c: Clients, arn: str) -> str:
    problem = notification_problem(find_notification(notification_config(s, c), s), s, arn)
    if problem:
        raise _Failed(problem)
    return f"{trigger_glob(s)} -> {s.function_name}"


def _role_policy(s: DeploySettings, c: Clients, role_arn: str) -> str:
    """Every Allow must be within dolambda's policy, and all of dolambda's policy is needed.

    A grant is an (action, resource, condition) triple: an ``s3:ListBucket`` without
    dolambda's ``s3:prefix`` condition lists the whole bucket, so it is wider, not equal.
    """
    role = role_arn.rsplit("/", 1)[-1]
    what = f"role {role}"
    allowed: set[tuple[str, str, str]] = set()
    for st in role_policy(s, c)["Statement"]:
        cond = _condition_key(st.get("Condition"))
        allowed |= {(a, r, cond) for a in st["Action"] for r in st["Resource"]}
    granted: set[tuple[str, str, str]] = set()
    wider: list[str] = []
    names = call("iam:ListRolePolicies", what, c.iam.list_role_policies, RoleName=role)
    for name in names.get("PolicyNames", []):
        doc = call(
            "iam:GetRolePolicy", what, c.iam.get_role_policy, RoleName=role, PolicyName=name
        )["PolicyDocument"]
        for st in as_list(normalize_policy(doc).get("Statement")):
            if st.get("Effect") != "Allow":
                continue
            if "NotAction" in st or "NotResource" in st:
                wider.append(f"policy {name} uses NotAction/NotResource")
                continue
            cond = _condition_key(st.get("Condition"))
            for a in as_list(st.get("Action")):
                for r in as_list(st.get("Resource")):
                    if (a, r, cond) in allowed:
                        granted.add((a, r, cond))
                    else:
                        when = f" when {cond}" if cond != "{}" else ""
                        wider.append(f"policy {name} allows {a} on {r}{when}")
    attached = call(
        "iam:ListAttachedRolePolicies", what, c.iam.list_attached_role_policies, RoleName=role
    )
    for pol in attached.get("AttachedPolicies", []):
        wider.append(f"managed policy {pol.get('PolicyName')} is attached")
    if wider:
        raise _Failed(f"{what} is wider than needed: " + "; ".join(sorted(set(wider))[:6]))
    missing = sorted(allowed - granted)
    if missing:
        listing = "; ".join(
            f"{a} on {r}" + (f" when {cond}" if cond != "{}" else "") for a, r, cond in missing[:4]
        )
        raise _Failed(f"{what} lacks what the worker needs: {listing}")
    return f"{role}: least privilege"


def _condition_key(condition: Any) -> str:
    """A statement's Condition in one canonical text (single values as one-item lists)."""
    canonical = {
        str(op): {
            str(k): sorted(as_list(v)) for k, v in (keys.items() if isinstance(keys, dict) else [])
        }
        for op, keys in (condition.items() if isinstance(condition, dict) else [])
    }
    return json.dumps(canonical, sort_keys=True)


def _signing_key(s: DeploySettings, fn: dict[str, Any], key: str | None) -> str:
    if key is None:
        config = load_config()
        if config is None or config.bucket != s.bucket or config.function_name != s.function_name:
            raise _Failed(f"no client config for bucket {s.bucket} and function {s.function_name}")
        key = config.signing_key
    deployed = ((fn.get("Environment") or {}).get("Variables") or {}).get("DOLAMBDA_SIGNING_KEY")
    if not deployed:
        raise _Failed(f"function {s.function_name} has no DOLAMBDA_SIGNING_KEY")
    if not key:
        raise _Failed("the client config has no signing key")
    if deployed != key:
        raise _Failed(
            "the function's DOLAMBDA_SIGNING_KEY differs from the client config's key; "
            "every task would fail its signature check"
        )
    return "function and client config agree"


def _concurrency(s: DeploySettings, c: Clients) -> str:
    """How many invocations Lambda runs at once for the function (the client sizes its
    jobs from it): a reservation of 0 fails; a quota below AWS's default is said."""
    from dolambda._aws.concurrency import DEFAULT_CONCURRENCY, concurrency_from

    what = f"function {s.function_name}"
    try:
        settings = call("lambda:GetAccountSettings", "the account", c.lam.get_account_settings)
        reserved = call(
            "lambda:GetFunctionConcurrency",
            what,
            c.lam.get_function_concurrency,
            missing=True,
            FunctionName=s.function_name,
        )
    except DolambdaError as exc:  # e.g. no lambda:GetAccountSettings: the client assumes 1,000
        return f"unknown ({exc}); the client assumes {DEFAULT_CONCURRENCY:,}"
    found = concurrency_from(settings, reserved)
    if found.reserved == 0:
        raise _Failed(
            f"{what} has a reserved concurrency of 0: Lambda throttles every invocation",
            f"aws lambda delete-function-concurrency --function-name {s.function_name}",
        )
    line = found.describe()
    if found.account is not None and found.account < DEFAULT_CONCURRENCY:
        line += (
            f"; below AWS's default of {DEFAULT_CONCURRENCY:,} (new accounts start lower and "
            "are raised with use): ask for more in Service Quotas (Lambda, Concurrent executions)"
        )
    return line
