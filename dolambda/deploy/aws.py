"""Deployment plumbing: settings, input validation, AWS clients, names, policies, errors.

Every botocore error raised while deploying becomes a :class:`DeployError` through
the one table in :mod:`dolambda._aws.errors` (see :func:`call`), whose message
names the bucket, function, role or action concerned and says what to do.
Input is validated before any AWS call.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dolambda._aws.errors import MISSING, kind_of, translated
from dolambda._errors import DeployError, InvalidArgument

# The Python versions AWS Lambda has a managed runtime for (``python3.X``). The one list.
LAMBDA_PYTHONS: tuple[str, ...] = ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14")
ARCHITECTURES: dict[str, str] = {"x86_64": "x86_64", "arm64": "aarch64"}  # Lambda -> wheel tag
# The glibc of each runtime's OS: Amazon Linux 2 (2.26) up to 3.11, Amazon Linux 2023 (2.34) after.
LAMBDA_GLIBC: dict[str, int] = {
    "3.9": 26,
    "3.10": 26,
    "3.11": 26,
    "3.12": 34,
    "3.13": 34,
    "3.14": 34,
}
MEMORY_RANGE = (128, 10240)  # MB
TIMEOUT_RANGE = (1, 900)  # seconds
HANDLER = "handler.lambda_function.lambda_handler"
MAX_EVENT_AGE = 6 * 3600  # seconds an async event may wait before Lambda drops it
MAX_RETRY_ATTEMPTS = 2
PERMISSION_SID = "dolambda-s3-invoke"


def python_version() -> str:
    """The client's own ``major.minor``: the deployed runtime must match it (dill)."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def wheel_platforms(version: str, architecture: str) -> list[str]:
    """pip ``--platform`` tags whose wheels run on the Lambda runtime ``python<version>``."""
    arch = ARCHITECTURES[architecture]
    newest = LAMBDA_GLIBC.get(version, 26)
    return [f"manylinux2014_{arch}", *(f"manylinux_2_{m}_{arch}" for m in range(17, newest + 1))]


def runtime_for(version: str) -> str:
    """``python3.X`` for ``version``, or an error explaining that Lambda has no such runtime."""
    if version not in LAMBDA_PYTHONS:
        raise InvalidArgument(
            f"AWS Lambda has no python{version} runtime (it has "
            f"{', '.join('python' + v for v in LAMBDA_PYTHONS)}). The function must run the "
            "client's own Python minor version, because dill pickles are not portable across "
            f"versions: run dolambda from Python {LAMBDA_PYTHONS[-3]} or another supported version"
        )
    return f"python{version}"


@dataclass(frozen=True)
class DeploySettings:
    """What ``dolambda deploy`` builds; ``doctor`` and ``destroy`` use the same settings."""

    bucket: str
    function_name: str = "dolambda"
    region: str | None = None
    profile: str | None = None
    memory_mb: int = 1024
    timeout: int = 900
    architecture: str = "x86_64"
    requirements: Path | None = None
    prefix: str = "dolambda"
    endpoint_url: str | None = None
    expire_days: int = 7
    rotate_key: bool = False  # replace the signing key (function and client config together)

    @property
    def clean_prefix(self) -> str:
        return self.prefix.strip("/")

    @property
    def role_name(self) -> str:
        return f"dolambda-{self.function_name}"[:64]

    @property
    def role_policy_name(self) -> str:
        return "dolambda-least-privilege"

    @property
    def notification_id(self) -> str:
        return f"dolambda-{self.function_name}"

    @property
    def lifecycle_rule_id(self) -> str:
        return f"dolambda-{self.clean_prefix}-expire"

    @property
    def deploy_prefix(self) -> str:
        return f"{self.clean_prefix}/deploy/"

    def validate(self) -> None:
        """Raise :class:`InvalidArgument` naming the first bad setting; makes no AWS call."""
        validate_bucket_name(self.bucket)
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.function_name):
            raise InvalidArgument(
                f"function name {self.function_name!r} is not valid: use 1-64 letters, digits, "
                "hyphens or underscores"
            )
        prefix = self.clean_prefix
        if not prefix or not re.fullmatch(r"[A-Za-z0-9!_.*'()/-]+", prefix) or ".." in prefix:
            raise InvalidArgument(
                f"prefix {self.prefix!r} is not valid: use a non-empty key prefix of letters, "
                "digits and !_.*'()/- (it scopes the queue, the policy and the lifecycle rule)"
            )
        low, high = MEMORY_RANGE
        if not low <= self.memory_mb <= high:
            raise InvalidArgument(
                f"memory {self.memory_mb} MB is out of range: Lambda allows {low} to {high} MB"
            )
        low, high = TIMEOUT_RANGE
        if not low <= self.timeout <= high:
            raise InvalidArgument(
                f"timeout {self.timeout} s is out of range: Lambda allows {low} to {high} seconds"
            )
        if self.architecture not in ARCHITECTURES:
            raise InvalidArgument(
                f"architecture {self.architecture!r} is not one of {', '.join(ARCHITECTURES)}"
            )
        if not 1 <= self.expire_days <= 36500:
            raise InvalidArgument(f"expire days {self.expire_days} must be between 1 and 36500")
        if self.requirements is not None and not Path(self.requirements).is_file():
            raise InvalidArgument(f"requirements file {self.requirements} does not exist")


def validate_bucket_name(name: str) -> None:
    """S3's bucket naming rules, checked locally so a bad name fails before any call."""
    why = None
    if not 3 <= len(name) <= 63:
        why = "it must be 3 to 63 characters long"
    elif not re.fullmatch(r"[a-z0-9.-]+", name):
        why = "only lowercase letters, digits, dots and hyphens are allowed"
    elif not (name[0].isalnum() and name[-1].isalnum()):
        why = "it must begin and end with a letter or digit"
    elif ".." in name or ".-" in name or "-." in name:
        why = "dots may not be adjacent to each other or to a hyphen"
    elif name.startswith(("xn--", "sthree-", "amzn-s3-demo-")):
        why = "the prefixes xn--, sthree- and amzn-s3-demo- are reserved"
    elif name.endswith(("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")):
        why = "the suffixes -s3alias, --ol-s3, .mrap, --x-s3 and --table-s3 are reserved"
    else:
        try:
            ipaddress.IPv4Address(name)
            why = "it must not be formatted as an IP address"
        except ValueError:
            pass
    if why:
        raise InvalidArgument(f"bucket name {name!r} is not a valid S3 bucket name: {why}")


def fix_command(settings: DeploySettings, verb: str = "deploy") -> str:
    """The ``dolambda`` command line that (re)creates this setup."""
    parts = ["dolambda", verb, "--bucket", settings.bucket]
    defaults = DeploySettings(bucket=settings.bucket)
    if settings.function_name != defaults.function_name:
        parts += ["--function", settings.function_name]
    if settings.region:
        parts += ["--region", settings.region]
    if settings.profile:
        parts += ["--profile", settings.profile]
    if settings.clean_prefix != defaults.prefix:
        parts += ["--prefix", settings.clean_prefix]
    if settings.endpoint_url:
        parts += ["--endpoint-url", settings.endpoint_url]
    return shlex.join(parts)


# --- AWS clients -------------------------------------------------------------------------


class Clients:
    """boto3 clients for s3, iam, lambda and sts built from (region, profile, endpoint_url)."""

    def __init__(self, settings: DeploySettings) -> None:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

        with translated(
            "deploy",
            action="session",
            resource=f"profile {settings.profile}",
            catch=(BotoCoreError,),
        ):
            session = boto3.Session(profile_name=settings.profile, region_name=settings.region)
        region = settings.region or session.region_name
        if not region:
            raise DeployError(
                "no AWS region: pass --region (or set AWS_REGION / a region in your AWS profile)"
            )
        self.region: str = region
        config = Config(retries={"max_attempts": 5, "mode": "standard"})
        kw: dict[str, Any] = {"region_name": region, "config": config}
        if settings.endpoint_url:
            kw["endpoint_url"] = settings.endpoint_url
        self.s3: Any = session.client("s3", **kw)
        self.iam: Any = session.client("iam", **kw)
        self.lam: Any = session.client("lambda", **kw)
        self.sts: Any = session.client("sts", **kw)
        self._identity: dict[str, Any] | None = None

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            self._identity = call(
                "sts:GetCallerIdentity", "your AWS credentials", self.sts.get_caller_identity
            )
        return self._identity

    @property
    def account(self) -> str:
        return str(self.identity()["Account"])

    @property
    def partition(self) -> str:
        arn = str(self.identity().get("Arn", "arn:aws:"))
        return arn.split(":")[1] if arn.count(":") >= 2 else "aws"


def call(
    action: str,
    resource: str,
    fn: Callable[..., Any],
    /,
    *,
    missing: bool = False,
    **kwargs: Any,
) -> Any:
    """``fn(**kwargs)``, with errors translated; with ``missing``, None when it does not exist."""
    from botocore.exceptions import BotoCoreError, ClientError

    with translated("deploy", action=action, resource=resource, catch=(ClientError, BotoCoreError)):
        try:
            return fn(**kwargs)
        except ClientError as exc:
            if missing and kind_of(exc) in MISSING:
                return None
            raise


# --- policies ---------------------------------------------------------------------------


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
    return (
        f"arn:{clients.partition}:lambda:{clients.region}:{clients.account}:"
        f"function:{settings.function_name}"
    )


def role_policy(settings: DeploySettings, clients: Clients) -> dict[str, Any]:
    """The function's only permissions: read tasks and jobs, write results, its own logs,
    and invoke itself as its on-failure destination (to report a timed-out or
    out-of-memory task as an error result)."""
    s3 = f"arn:{clients.partition}:s3:::{settings.bucket}/{settings.clean_prefix}"
    logs = log_group_arn(settings, clients)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadTasksAndJobs",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"{s3}/queue/*", f"{s3}/jobs/*"],
            },
            {
                "Sid": "WriteResults",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": [f"{s3}/results/*"],
            },
            {
                "Sid": "OwnLogs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": [logs, f"{logs}:*"],
            },
            {
                "Sid": "ReportFailuresToItself",
                "Effect": "Allow",
                "Action": ["lambda:InvokeFunction"],
                "Resource": [function_arn(settings, clients)],
            },
        ],
    }


def normalize_policy(doc: Any) -> Any:
    """A policy document in a canonical form (decoded, lists sorted) for comparison."""
    if isinstance(doc, str):
        from urllib.parse import unquote

        doc = json.loads(doc if doc.lstrip().startswith("{") else unquote(doc))
    return _canonical(doc)


def _canonical(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _canonical(v) for k, v in doc.items()}
    if isinstance(doc, list):
        items = [_canonical(v) for v in doc]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    return doc


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]
