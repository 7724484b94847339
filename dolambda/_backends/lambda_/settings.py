"""The Lambda backend's settings, and the one function that merges them.

Explicit arguments win; a setting not given comes from the environment (the
signing key: ``DOLAMBDA_SIGNING_KEY``) or from the client config that ``dolambda
deploy`` or a running ``dolambda emulator`` wrote (:func:`dolambda._config.load_config`),
but only when that file describes the same bucket; else the defaults below.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from dolambda._config import ClientConfig, load_config
from dolambda._errors import ConfigError, InvalidArgument, InvalidArgumentType
from dolambda._wire.codec import signing_key_bytes

GRACE = 30.0  # seconds past the function timeout before a task counts as lost


@dataclass(frozen=True)
class LambdaSettings:
    """Where a LambdaBackend's jobs go and how they run (validated, merged)."""

    bucket: str
    function_name: str = "dolambda"
    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    prefix: str = "dolambda"
    trigger: Literal["s3", "invoke", "call"] = "s3"
    chunk_size: int | Literal["auto"] = "auto"
    retries: int = 2
    #: the function's timeout: seconds a task may run
    task_timeout: float = 900.0
    max_concurrency: int | None = None
    keep: bool = False
    #: the HMAC key shared with the function (None: not configured)
    signing_key: bytes | None = field(default=None, repr=False)
    #: explicit AWS credentials (else the standard chain)
    credentials: dict[str, str] = field(default_factory=dict, repr=False)
    memory_mb: int = 1024
    architecture: str = "x86_64"
    #: the function's larger memory tiers (MB), aliases ``mem-<MB>`` (deploy publishes them)
    memory_tiers: tuple[int, ...] = ()
    #: the memory (MB) the loop asked for: it starts on the smallest tier that has it
    memory: int | None = None
    #: who queues the tasks: the client, the function ("remote": one plan, one Invoke),
    #: or "auto": remote for jobs of many tasks (dispatch.REMOTE_FROM)
    dispatch: Literal["auto", "client", "remote"] = "auto"

    @property
    def ladder(self) -> tuple[int, ...]:
        """Every memory size a task may run with: the base memory, then the tiers."""
        return (self.memory_mb, *self.memory_tiers)

    @property
    def start_tier(self) -> int:
        """The index in :attr:`ladder` a task starts on: the smallest with ``memory``."""
        if self.memory is None:
            return 0
        for i, mb in enumerate(self.ladder):
            if mb >= self.memory:
                return i
        sizes = ", ".join(str(mb) for mb in self.ladder)
        raise InvalidArgument(
            f"LambdaBackend: memory={self.memory} MB is more than the function's largest "
            f"memory tier ({self.ladder[-1]} MB; it has {sizes} MB): ask for at most "
            f"{self.ladder[-1]}, or deploy a larger tier (dolambda deploy --memory-tiers ...)"
        )

    @property
    def key(self) -> bytes:
        """The signing key; ConfigError when none is configured."""
        if self.signing_key is None:
            raise ConfigError(
                "LambdaBackend: no signing key; pass signing_key=, set DOLAMBDA_SIGNING_KEY, or "
                "run `dolambda deploy` (it writes the key the function uses)"
            )
        return self.signing_key

    @property
    def grace(self) -> float:
        """Seconds past the function timeout before a task without a result counts as lost."""
        return min(GRACE, 1.0 + self.task_timeout / 2)


def resolve_settings(
    bucket: str | None = None,
    function_name: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
    prefix: str | None = None,
    trigger: str = "s3",
    chunk_size: int | str = "auto",
    retries: int = 2,
    task_timeout: float | None = None,
    max_concurrency: int | None = None,
    keep: bool = False,
    signing_key: str | bytes | None = None,
    *,
    memory: int | None = None,
    memory_mb: int | None = None,
    memory_tiers: object = None,
    dispatch: str = "auto",
    aws_access_key_id: str | None = None,
    aws_secret_access_key: str | None = None,
    aws_session_token: str | None = None,
    config: Callable[[], ClientConfig | None] = load_config,
    environ: Mapping[str, str] = os.environ,
) -> LambdaSettings:
    """Validate the explicit arguments and fill the rest from ``environ`` and ``config()``.

    Raises InvalidArgument (or InvalidArgumentType) naming a bad argument, and
    ConfigError when no bucket is given and none is configured.
    """
    _check_types(bucket, function_name, region, profile, endpoint_url, prefix, keep, signing_key)
    deployed = config()
    if bucket is None:
        if deployed is None:
            raise ConfigError(
                "LambdaBackend: no bucket given and no deployed setup found; pass "
                "bucket=..., run `dolambda deploy --bucket NAME` first, or start "
                "`dolambda emulator`"
            )
        bucket = deployed.bucket
    if not isinstance(bucket, str) or not bucket:
        raise InvalidArgumentType(f"LambdaBackend: bucket must be a bucket name, got {bucket!r}")
    # the config file describes one deployed setup: only its bucket's settings apply
    same = deployed if deployed is not None and deployed.bucket == bucket else None
    _check_values(trigger, chunk_size, retries, task_timeout, max_concurrency, dispatch)
    if (aws_access_key_id is None) != (aws_secret_access_key is None):
        raise InvalidArgument(
            "LambdaBackend: pass both aws_access_key_id and aws_secret_access_key, or neither "
            "(then the standard AWS credential chain is used)"
        )
    credentials = {
        k: v
        for k, v in (
            ("aws_access_key_id", aws_access_key_id),
            ("aws_secret_access_key", aws_secret_access_key),
            ("aws_session_token", aws_session_token),
        )
        if v is not None
    }
    if not credentials and same is not None and same.aws_access_key_id:
        # a running emulator's config: its S3 takes any key, so it records one to use
        credentials = {
            "aws_access_key_id": same.aws_access_key_id,
            "aws_secret_access_key": same.aws_secret_access_key or "",
        }
    for name, value in (("memory", memory), ("memory_mb", memory_mb)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 10240
        ):
            raise InvalidArgument(
                f"LambdaBackend: {name} must be a whole number of MB up to 10240 (Lambda's "
                f"largest), got {value!r}"
            )
    base_mb = memory_mb if memory_mb is not None else (same.memory_mb if same else 1024)
    from dolambda._aws.invoke import check_tiers

    tiers = check_tiers(
        base_mb,
        memory_tiers if memory_tiers is not None else (same.memory_tiers if same else []),
        "LambdaBackend",
    )
    key_text = (
        signing_key
        if signing_key is not None
        else (environ.get("DOLAMBDA_SIGNING_KEY") or (same.signing_key if same else None))
    )
    return LambdaSettings(
        bucket=bucket,
        function_name=function_name or (same.function_name if same else "dolambda"),
        region=region or (same.region if same else None),
        profile=profile or (same.profile if same else None),
        endpoint_url=endpoint_url or (same.endpoint_url if same else None),
        prefix=(prefix if prefix is not None else (same.prefix if same else "dolambda")).strip("/"),
        trigger=trigger,  # type: ignore[arg-type]  # checked above
        chunk_size=chunk_size,  # type: ignore[arg-type]  # checked above
        retries=retries,
        task_timeout=(
            float(task_timeout)
            if task_timeout is not None
            else (float(same.timeout) if same else 900.0)
        ),
        max_concurrency=max_concurrency
        if max_concurrency is not None
        else (same.max_concurrency if same else None),
        keep=bool(keep),
        signing_key=signing_key_bytes(key_text) if key_text else None,
        credentials=credentials,
        memory_mb=base_mb,
        architecture=same.architecture if same else "x86_64",
        memory_tiers=tiers,
        memory=memory,
        dispatch=dispatch,  # type: ignore[arg-type]  # checked above
    )


def _check_types(
    bucket: object,
    function_name: object,
    region: object,
    profile: object,
    endpoint_url: object,
    prefix: object,
    keep: object,
    signing_key: object,
) -> None:
    """The checks that need no config file, in the order they are reported."""
    if bucket is not None and (not isinstance(bucket, str) or not bucket):
        raise InvalidArgumentType(f"LambdaBackend: bucket must be a bucket name, got {bucket!r}")
    for name, value in (
        ("function_name", function_name),
        ("region", region),
        ("profile", profile),
        ("endpoint_url", endpoint_url),
        ("prefix", prefix),
    ):
        if value is not None and not isinstance(value, str):
            raise InvalidArgumentType(
                f"LambdaBackend: {name} must be a string, got {type(value).__name__} {value!r}"
            )
    if isinstance(endpoint_url, str) and not endpoint_url.startswith(("http://", "https://")):
        raise InvalidArgument(
            f"LambdaBackend: endpoint_url must be an http(s) URL such as "
            f"'http://127.0.0.1:5000', got {endpoint_url!r}"
        )
    if not isinstance(keep, bool):
        raise InvalidArgumentType(f"LambdaBackend: keep must be True or False, got {keep!r}")
    if signing_key is not None and not isinstance(signing_key, (str, bytes)):
        raise InvalidArgumentType(
            "LambdaBackend: signing_key must be a hex string, text or bytes, got "
            f"{type(signing_key).__name__}"
        )


def _check_values(
    trigger: object,
    chunk_size: object,
    retries: object,
    task_timeout: object,
    max_concurrency: object,
    dispatch: object = "auto",
) -> None:
    if trigger not in ("s3", "invoke", "call"):
        raise InvalidArgument(
            f"LambdaBackend: trigger must be 's3', 'invoke' or 'call', got {trigger!r}"
        )
    if dispatch not in ("auto", "client", "remote"):
        raise InvalidArgument(
            f"LambdaBackend: dispatch must be 'auto', 'client' or 'remote', got {dispatch!r}"
        )
    if dispatch == "remote" and trigger == "call":
        raise InvalidArgument(
            "LambdaBackend: dispatch='remote' needs trigger 's3' or 'invoke': with "
            "trigger='call' the client itself calls the function for each task"
        )
    if chunk_size != "auto" and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise InvalidArgument(
            f"LambdaBackend: chunk_size must be a positive integer or 'auto', got {chunk_size!r}"
        )
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidArgument(f"LambdaBackend: retries must be an integer >= 0, got {retries!r}")
    if task_timeout is not None and (
        isinstance(task_timeout, bool)
        or not isinstance(task_timeout, (int, float))
        or not task_timeout > 0
    ):
        raise InvalidArgument(
            "LambdaBackend: task_timeout must be a positive number of seconds, "
            f"got {task_timeout!r}"
        )
    if max_concurrency is not None and (
        isinstance(max_concurrency, bool)
        or not isinstance(max_concurrency, int)
        or max_concurrency < 1
    ):
        raise InvalidArgument(
            f"LambdaBackend: max_concurrency must be a positive integer, got {max_concurrency!r}"
        )
