"""What a deploy is asked for and how it reports: :class:`DeploySettings` and :class:`Change`.

The settings are validated locally before any AWS call. The client config file
(:mod:`dolambda._config`) is read here for ``doctor`` and ``destroy``
(:func:`settings_from_config`) and written after a deploy (:func:`write_client_config`).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dolambda._config import ClientConfig, config_path, load_config, save_config
from dolambda._errors import DeployError, DolambdaError, InvalidArgument
from dolambda._wire import keys as _keys
from dolambda.deploy.package import ARCHITECTURES

MEMORY_RANGE = (128, 10240)  # MB
TIMEOUT_RANGE = (1, 900)  # seconds


@dataclass(frozen=True)
class Change:
    """One line of a deploy/destroy report: ``created``, ``updated``, ``unchanged``, ..."""

    action: str
    resource: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.action:<9} {self.resource}" + (f": {self.detail}" if self.detail else "")


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
    #: the larger memory tiers (MB), each a published version behind the alias
    #: ``mem-<MB>``; None: the default tiers above ``memory_mb``; (): none
    memory_tiers: tuple[int, ...] | None = None

    @property
    def tiers(self) -> tuple[int, ...]:
        """The memory tiers to publish (validated: above ``memory_mb``, in Lambda's range)."""
        from dolambda._aws.invoke import DEFAULT_TIERS, check_tiers

        if self.memory_tiers is None:
            return tuple(t for t in DEFAULT_TIERS if t > self.memory_mb)
        tiers = check_tiers(self.memory_mb, list(self.memory_tiers), "deploy")
        if tiers and tiers[0] < MEMORY_RANGE[0]:
            raise InvalidArgument(
                f"memory tier {tiers[0]} MB is out of range: Lambda allows "
                f"{MEMORY_RANGE[0]} to {MEMORY_RANGE[1]} MB"
            )
        return tiers

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
    def root(self) -> str:
        """Every key dolambda writes for this setup starts with this (``<prefix>/``)."""
        return _keys.root(self.prefix)

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
        _ = self.tiers  # (validates memory_tiers)


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


#: the settings that the client config file records, and that fill what was not given
CONFIG_FIELDS = (
    "function_name",
    "region",
    "profile",
    "prefix",
    "endpoint_url",
    "memory_mb",
    "memory_tiers",
    "timeout",
    "architecture",
)


def settings_from_config(**options: Any) -> DeploySettings:
    """Settings from the given options, the missing ones from the client config file.

    Options that are None count as not given. The bucket comes from the config when
    not given (an error when there is no config); the other :data:`CONFIG_FIELDS` come
    from the config only when it describes the same bucket. The rest are defaults.
    """
    given = {k: v for k, v in options.items() if v is not None}
    config = load_config()
    if "bucket" not in given:
        if config is None:
            raise DeployError("no bucket: pass --bucket, or run `dolambda deploy --bucket NAME`")
        given["bucket"] = config.bucket
    if config is not None and config.bucket == given["bucket"]:
        for field in CONFIG_FIELDS:
            value = getattr(config, field)
            if field not in given and value is not None:
                given[field] = tuple(value) if isinstance(value, list) else value
    return DeploySettings(**given)


def write_client_config(s: DeploySettings, *, region: str, key: str) -> Change:
    """Record the deployed setup (and its signing key) for ``LambdaBackend()`` to read."""
    new = ClientConfig(
        bucket=s.bucket,
        function_name=s.function_name,
        region=region,
        prefix=s.clean_prefix,
        signing_key=key,
        endpoint_url=s.endpoint_url,
        profile=s.profile,
        memory_mb=s.memory_mb,
        memory_tiers=list(s.tiers),
        timeout=s.timeout,
        architecture=s.architecture,
    )
    try:
        old = load_config()
    except DolambdaError:
        old = None
    if old is not None and old.model_dump() == new.model_dump():
        return Change("unchanged", f"client config {config_path()}")
    path = save_config(new)
    return Change("created" if old is None else "updated", f"client config {path}")
