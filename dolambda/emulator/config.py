"""The emulated function's configuration, the test knobs, and the counters the emulator keeps.

:class:`EmulatorConfig` is what ``Emulator(...)`` was given, validated once and frozen:
the function (name, concurrency, timeout, memory, handler), where it lives (bucket,
region, prefix), how events reach it (trigger, discovery) and the fault knobs.
:class:`EmulatorStats` counts what happened since the emulator started.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from dolambda._errors import InvalidArgument
from dolambda._wire.codec import signing_key_bytes

#: the checkout that holds ``dolambda/`` and ``handler/`` (the legacy workers import both
#: from here; the isolated ones get them in the function's package)
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
    max_concurrency: int = 0  #: most invocations running at once


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
    retries: int
    # like the deployed setup: an async invocation that failed for good is sent to the
    # function itself as an on-failure destination record (it writes an error result)
    on_failure: bool
    poll_interval: float
    port: int
    handler: str
    # a directory of the user's own handler, or None for the function's package alone;
    # isolated workers get that directory as their task root and the package as a layer
    task_root: str | None
    pythonpath: str
    # the workers are isolated Lambda environments (Sandbox), not the legacy worker
    # processes that share this interpreter's environment
    isolated: bool
    # this fraction of invocations (seeded) takes slow_factor times a typical one's time
    slow_fraction: float = 0.0
    slow_factor: float = 20.0


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
    on_failure: bool,
    poll_interval: float,
    port: int,
    handler: str | None,
    task_root: str | os.PathLike[str] | None,
    isolated: bool = False,
    slow_fraction: float = 0.0,
    slow_factor: float = 20.0,
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
    if float(event_delay) < 0 or float(poll_interval) <= 0 or int(retries) < 0:
        raise InvalidArgument("Emulator: event_delay, poll_interval and retries out of range")
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
        on_failure=bool(on_failure),
        poll_interval=float(poll_interval),
        port=port,
        # a directory of one's own holds lambda_function.py unless told otherwise
        handler=handler or ("lambda_function.lambda_handler" if task_root else PACKAGE_HANDLER),
        task_root=str(Path(task_root).resolve()) if task_root else None,
        pythonpath=str(SOURCE_ROOT),
        isolated=bool(isolated),
        slow_fraction=float(slow_fraction),
        slow_factor=float(slow_factor),
    )
