"""The emulated function's configuration, the test knobs, and the counters the emulator keeps.

:class:`EmulatorConfig` is what ``Emulator(...)`` was given, validated once and frozen:
the function (name, concurrency, timeout, memory, handler), where it lives (bucket,
region, prefix), how events reach it (trigger, discovery) and the fault knobs.
:class:`EmulatorStats` counts what happened since the emulator started.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dolambda._errors import InvalidArgument
from dolambda._wire.codec import signing_key_bytes

#: the checkout that holds ``dolambda/`` (the moto server runs from it; the workers get
#: dolambda and the handler in the function's package instead)
SOURCE_ROOT = Path(__file__).resolve().parents[2]

#: the deployed function's handler (``dolambda.deploy.function.HANDLER``)
PACKAGE_HANDLER = "handler.lambda_function.lambda_handler"


@dataclass
class EmulatorStats:
    """Counters since :meth:`Emulator.start` (a snapshot: ``emu.stats`` copies them)."""

    events: int = 0  #: events received (S3 notifications, Invoke calls, polled tasks)
    invocations: int = 0  #: handler calls started
    completed: int = 0  #: handler calls that returned
    errors: int = 0  #: handler calls that raised (the worker stays warm), or init failures
    cold_starts: int = 0  #: invocations that were a fresh worker's first
    timeouts: int = 0  #: workers killed at the function timeout
    killed: int = 0  #: workers killed for exceeding the memory limit
    crashed: int = 0  #: workers that died on their own (os._exit, segfault, ...)
    dropped: int = 0  #: events dropped on purpose (drop_fraction)
    duplicated: int = 0  #: events delivered twice on purpose (duplicate_events)
    slowed: int = 0  #: invocations slowed on purpose (slow_fraction)
    retried: int = 0  #: failed async invocations queued again (retries)
    expired: int = 0  #: async events discarded past the maximum event age
    destination_records: int = 0  #: invocation records written to the on-failure destination
    max_concurrency: int = 0  #: most invocations running at once
    #: synchronous invokes answered 429 (beyond the function's concurrency, as on Lambda)
    throttled: int = 0


@dataclass(frozen=True)
class EmulatorConfig:
    """The settings of one emulator; :func:`make_config` validates and normalises them."""

    workers: int
    bucket: str
    function_name: str
    region: str
    prefix: str
    timeout: float
    memory_mb: int
    signing_key: str  # hex
    trigger: str  # "s3" | "invoke"
    duplicate_events: bool
    drop_fraction: float
    event_delay: float
    seed: int
    discovery: str  # "auto" | "events" | "poll" (as asked; the emulator resolves "auto")
    shuffle: bool
    # the function's event-invoke config (dolambda deploy: 0 retries, 6 h, no
    # destination): Lambda's retries of a failed async invocation (0-2), the maximum
    # event age (seconds), the S3 bucket of the on-failure destination (or None)
    retries: int
    max_event_age: float
    on_failure: str | None
    # Lambda's retry delays (1 and 2 minutes) and the event age, times this
    time_scale: float
    poll_interval: float
    port: int
    handler: str
    # a directory of the user's own handler, or None for the function's package alone;
    # the workers get that directory as their task root and the package as a layer
    task_root: str | None
    # distributions installed here that the function's package holds besides dolambda's
    # own (as `dolambda deploy --requirements` adds them), sorted
    requirements: tuple[str, ...]
    # the account's concurrency quota (GetAccountSettings), as the client reads it
    account_concurrency: int = 1000
    # this fraction of invocations (seeded) takes slow_factor times a typical one's time
    slow_fraction: float = 0.0
    slow_factor: float = 20.0
    # the function's larger memory tiers (MB), each a published version behind the
    # alias ``mem-<MB>`` (dolambda deploy --memory-tiers); () : the base memory only
    memory_tiers: tuple[int, ...] = ()


def make_config(
    *,
    workers: int,
    bucket: str,
    function_name: str,
    region: str,
    prefix: str,
    timeout: float,
    memory_mb: int,
    signing_key: str | bytes | None,
    trigger: str,
    duplicate_events: bool,
    drop_fraction: float,
    event_delay: float,
    seed: int,
    discovery: str,
    shuffle: bool,
    retries: int,
    on_failure: str | None,
    poll_interval: float,
    port: int,
    handler: str | None,
    task_root: str | os.PathLike[str] | None,
    requirements: Iterable[str] = (),
    max_event_age: float = 6 * 3600,
    time_scale: float = 1.0,
    account_concurrency: int = 1000,
    slow_fraction: float = 0.0,
    slow_factor: float = 20.0,
    memory_tiers: Iterable[int] = (),
) -> EmulatorConfig:
    """The validated configuration; :class:`InvalidArgument` names the first bad setting."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidArgument(f"Emulator: workers must be a positive integer, got {workers!r}")
    if trigger not in ("s3", "invoke"):
        raise InvalidArgument(f"Emulator: trigger must be 's3' or 'invoke', got {trigger!r}")
    if discovery not in ("auto", "events", "poll"):
        raise InvalidArgument(
            f"Emulator: discovery must be 'auto', 'events' or 'poll', got {discovery!r}"
        )
    if not 0.0 <= float(drop_fraction) <= 1.0:
        raise InvalidArgument(f"Emulator: drop_fraction must be in [0, 1], got {drop_fraction}")
    if not 0.0 <= float(slow_fraction) <= 1.0:
        raise InvalidArgument(f"Emulator: slow_fraction must be in [0, 1], got {slow_fraction}")
    if not float(slow_factor) >= 1.0:
        raise InvalidArgument(
            f"Emulator: slow_factor must be >= 1 (times a typical invocation), got {slow_factor}"
        )
    if not float(timeout) > 0 or not int(memory_mb) > 0:
        raise InvalidArgument("Emulator: timeout and memory_mb must be positive")
    if float(event_delay) < 0 or float(poll_interval) <= 0:
        raise InvalidArgument("Emulator: event_delay and poll_interval out of range")
    # the ranges PutFunctionEventInvokeConfig accepts:
    # https://docs.aws.amazon.com/lambda/latest/api/API_PutFunctionEventInvokeConfig.html
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 2:
        raise InvalidArgument(
            f"Emulator: retries is Lambda's MaximumRetryAttempts, 0 to 2; got {retries!r}"
        )
    if not 60 <= float(max_event_age) <= 21600:
        raise InvalidArgument(
            "Emulator: max_event_age is Lambda's MaximumEventAgeInSeconds, 60 to 21600; "
            f"got {max_event_age!r}"
        )
    if not float(time_scale) > 0:
        raise InvalidArgument(f"Emulator: time_scale must be positive, got {time_scale!r}")
    from dolambda._aws.invoke import check_tiers

    tiers = check_tiers(int(memory_mb), memory_tiers, "Emulator")
    wanted = (requirements,) if isinstance(requirements, str) else tuple(requirements)
    if not all(isinstance(r, str) and r.strip() for r in wanted):
        raise InvalidArgument(
            f"Emulator: requirements must be distribution names (e.g. ['pandas']), got "
            f"{requirements!r}"
        )
    destination = _destination_bucket(on_failure)
    if (
        isinstance(account_concurrency, bool)
        or not isinstance(account_concurrency, int)
        or account_concurrency < 1
    ):
        raise InvalidArgument(
            f"Emulator: account_concurrency must be a positive integer, got {account_concurrency!r}"
        )
    key = signing_key_bytes(signing_key) if signing_key else secrets.token_bytes(32)
    if len(key) < 16:
        raise InvalidArgument("Emulator: the signing key must be at least 16 bytes")
    return EmulatorConfig(
        workers=workers,
        bucket=bucket,
        function_name=function_name,
        region=region,
        prefix=prefix,
        timeout=float(timeout),
        memory_mb=int(memory_mb),
        signing_key=key.hex(),
        trigger=trigger,
        duplicate_events=bool(duplicate_events),
        drop_fraction=float(drop_fraction),
        event_delay=float(event_delay),
        seed=seed,
        discovery=discovery,
        shuffle=bool(shuffle),
        retries=int(retries),
        max_event_age=float(max_event_age),
        on_failure=destination,
        time_scale=float(time_scale),
        poll_interval=float(poll_interval),
        port=port,
        # a directory of one's own holds lambda_function.py unless told otherwise
        handler=handler or ("lambda_function.lambda_handler" if task_root else PACKAGE_HANDLER),
        task_root=str(Path(task_root).resolve()) if task_root else None,
        requirements=tuple(sorted({r.strip() for r in wanted})),
        account_concurrency=account_concurrency,
        slow_fraction=float(slow_fraction),
        slow_factor=float(slow_factor),
        memory_tiers=tiers,
    )


def _destination_bucket(on_failure: str | None) -> str | None:
    """The bucket of an S3 on-failure destination given as a name or ``arn:aws:s3:::name``."""
    if on_failure is None:
        return None
    if not isinstance(on_failure, str) or not on_failure:
        raise InvalidArgument(
            f"Emulator: on_failure is an S3 bucket (name or ARN) or None, got {on_failure!r}"
        )
    if on_failure.startswith("arn:"):
        parts = on_failure.split(":")
        if len(parts) != 6 or parts[2] != "s3" or not parts[5] or "/" in parts[5]:
            raise InvalidArgument(
                f"Emulator: on_failure {on_failure!r} is not an S3 bucket ARN; the emulator "
                "delivers on-failure records to an S3 bucket only"
            )
        return parts[5]
    return on_failure
