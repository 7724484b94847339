"""Dispatch: the pending heap, the choice of worker, and what happens after a failure.

Invocations wait in a heap ordered by due time (the intake may delay them). The
dispatch loop starts the next due one when a slot is idle, at most ``workers`` at
once, on the warmest idle slot (the one that served last; cold slots go to the
back), each on its own thread. A synchronous ``Invoke`` gets its answer through
``reply``. Asynchronous ones follow the function's event-invoke config, as Lambda
does (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html):

- a failed invocation (an error, a timeout, a kill) is retried up to ``retries``
  (0-2) times, the first retry one minute after the failure and the second two
  minutes after that (:data:`RETRY_DELAYS`);
- an event that waited longer than ``max_event_age`` is discarded, not run;
- an event that failed for good (``RetriesExhausted``) or aged out
  (``EventAgeExceeded``) goes to the on-failure destination when one is set: an S3
  bucket, where Lambda writes the invocation record as a JSON object named
  ``aws/lambda/async/<function>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<uuid>``
  (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html).

Every delay and age is multiplied by ``time_scale`` (1.0: Lambda's own; tests shrink
it). At-least-once delivery stays: the intake may still duplicate events.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from dolambda.emulator.config import EmulatorConfig, EmulatorStats
from dolambda.emulator.runtime import Answer, Runtime, Slot

log = logging.getLogger("dolambda.emulator")

#: answer a synchronous Invoke: ``reply(reply_id, payload_text, is_error)``
Reply = Callable[[str, str, bool], None]


#: seconds Lambda waits before the first and the second retry of a failed event
RETRY_DELAYS = (60.0, 120.0)


@dataclass
class Invocation:
    """One event on its way to the handler."""

    event: Any
    source: str  # "s3" | "invoke" | "poll"
    reply_id: str | None = None  # a RequestResponse Invoke waiting in moto
    attempt: int = 0
    error: tuple[str, str] | None = None  # (errorType, errorMessage) of the last failure
    received: float = field(default_factory=time.monotonic)  # when Lambda queued the event
    slowed: float = 1.0  # slow_fraction: runs this many times as long as a typical one
    version: str = "$LATEST"  # the function version invoked (an alias resolves to one)
    memory_mb: int | None = None  # that version's MemorySize (None: the emulator's own)
    #: that version's MaximumRetryAttempts (None: the function's, which `follow` reads)
    retries: int | None = None


def destination_record(
    invocation: Invocation, function_arn: str, condition: str = "RetriesExhausted"
) -> dict[str, Any]:
    """The invocation record Lambda sends to an on-failure destination."""
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": f"{function_arn}:$LATEST",
            "condition": condition,
            "approximateInvokeCount": invocation.attempt + (condition != "EventAgeExceeded"),
        },
        "requestPayload": invocation.event,
    }
    if invocation.error is not None:
        error_type, message = invocation.error
        record["responseContext"] = {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        }
        record["responsePayload"] = {"errorType": error_type, "errorMessage": message}
    return record


def destination_key(function_name: str, when: float | None = None) -> str:
    """Where Lambda puts an invocation record in an S3 on-failure destination."""
    t = time.gmtime(when)
    day, stamp = time.strftime("%Y/%m/%d", t), time.strftime("%Y-%m-%dT%H.%M.%S", t)
    return f"aws/lambda/async/{function_name}/{day}/{stamp}-{uuid.uuid4()}"


@dataclass(frozen=True)
class AsyncRules:
    """The function's event-invoke config, as the dispatcher applies it."""

    retries: int  # MaximumRetryAttempts
    max_event_age: float  # MaximumEventAgeInSeconds
    on_failure: str | None  # the bucket of an S3 on-failure destination


#: what Lambda applies to a function with no event-invoke config: 2 retries, 6 hours
#: https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html
LAMBDA_DEFAULT_RULES = AsyncRules(retries=2, max_event_age=21600.0, on_failure=None)


def rules_of(config: dict[str, Any] | None) -> AsyncRules:
    """The rules of a ``GetFunctionEventInvokeConfig`` answer (None: no config, Lambda's
    defaults). A destination that is not an S3 bucket (a function, a queue, a topic) is
    one the emulator cannot deliver to: it is logged and left out."""
    if config is None:
        return LAMBDA_DEFAULT_RULES
    destination = str(
        ((config.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination") or ""
    )
    bucket: str | None = None
    parts = destination.split(":")
    if len(parts) == 6 and parts[0] == "arn" and parts[2] == "s3" and parts[5]:
        bucket = parts[5]
    elif destination:
        log.warning(
            "emulator: the function's on-failure destination %s is not an S3 bucket; the "
            "emulator delivers records to S3 buckets only, so none are sent",
            destination,
        )
    return AsyncRules(
        retries=int(config.get("MaximumRetryAttempts", LAMBDA_DEFAULT_RULES.retries)),
        max_event_age=float(
            config.get("MaximumEventAgeInSeconds", LAMBDA_DEFAULT_RULES.max_event_age)
        ),
        on_failure=bucket,
    )


class Dispatcher:
    """The pending heap and the slots' threads; every field is guarded by ``cond``."""

    def __init__(
        self,
        config: EmulatorConfig,
        runtime: Runtime,
        *,
        stats: EmulatorStats,
        cond: threading.Condition,
        stopping: threading.Event,
        reply: Reply,
    ) -> None:
        self._config = config
        #: the function's event-invoke config; :meth:`follow` keeps it current
        self.rules = AsyncRules(config.retries, config.max_event_age, config.on_failure)
        self._destination_s3: Any = None  # the S3 client that writes destination records
        self._runtime = runtime
        self._stats = stats
        self._cond = cond
        self._stopping = stopping
        self._reply = reply
        self._pending: list[tuple[float, int, Invocation]] = []
        self._seq = itertools.count()
        self._idle: list[Slot] = list(reversed(runtime.slots))  # pop() takes the warmest
        self._busy = 0
        self._running: set[threading.Thread] = set()
        # seconds the recent invocations' handlers took (for slow_fraction)
        self._durations: deque[float] = deque(maxlen=64)

    def queue(self, invocation: Invocation, delay: float) -> None:
        """Push onto the pending heap; the caller holds ``cond``."""
        heapq.heappush(self._pending, (time.monotonic() + delay, next(self._seq), invocation))
        self._cond.notify_all()

    def admits_sync(self) -> bool:
        """Whether a synchronous invoke may run now; the caller holds ``cond``.

        Lambda does not queue a synchronous invoke beyond the function's concurrency:
        it answers 429 TooManyRequestsException (the caller retries). The synchronous
        invokes already waiting for a slot count as running.
        https://docs.aws.amazon.com/lambda/latest/dg/lambda-concurrency.html and
        https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html
        """
        waiting = sum(1 for _, _, i in self._pending if i.reply_id is not None)
        return self._busy + waiting < len(self._runtime.slots)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is pending or running."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def join_running(self, deadline: float) -> None:
        """Wait (until ``deadline`` on the monotonic clock) for the running calls to end."""
        for thread in list(self._running):
            thread.join(timeout=max(0.1, deadline - time.monotonic()))

    def loop(self) -> None:
        """Start each due invocation on the warmest idle slot, until the emulator stops."""
        while True:
            with self._cond:
                while True:
                    if self._stopping.is_set():
                        return
                    now = time.monotonic()
                    wait: float | None = None
                    if self._pending:
                        due = self._pending[0][0]
                        if due <= now and self._idle:
                            break
                        if due > now:
                            wait = due - now
                    self._cond.wait(wait if wait is not None else 1.0)
                _, _, invocation = heapq.heappop(self._pending)
                if self._expired(invocation):
                    continue
                slot = self._pick(invocation)
                self._busy += 1
                self._stats.max_concurrency = max(self._stats.max_concurrency, self._busy)
                thread = threading.Thread(
                    target=self._run,
                    args=(slot, invocation),
                    name=f"dolambda-emulator-slot{slot.index}",
                    daemon=True,
                )
                self._running.add(thread)
            thread.start()

    def _pick(self, invocation: Invocation) -> Slot:
        """The warmest idle slot whose environment serves the invoked version (Lambda
        runs each version in environments of its own), else the warmest idle one (its
        environment is replaced); the caller holds ``cond``."""
        for i in range(len(self._idle) - 1, -1, -1):
            process = self._idle[i].process
            if process is not None and process.version == invocation.version:
                return self._idle.pop(i)
        return self._idle.pop()

    def _run(self, slot: Slot, invocation: Invocation) -> None:
        ok = False
        try:
            if invocation.slowed > 1.0:  # a stalled environment: it holds its slot
                self._stopping.wait((invocation.slowed - 1.0) * self._typical_duration())
            started = time.monotonic()
            answer = self._runtime.invoke(
                slot, invocation.event, invocation.version, invocation.memory_mb
            )
            if answer is not None and answer.ok:  # (a slowed one's handler time only)
                with self._cond:
                    self._durations.append(time.monotonic() - started)
            if answer is not None:
                self._answer(invocation, answer)
                ok = answer.ok
        except Exception:
            log.exception("emulator: internal error while invoking the function")
        finally:
            with self._cond:
                self._busy -= 1
                if slot.process is None:
                    self._idle.insert(0, slot)  # cold slots last: reuse warm ones first
                else:
                    self._idle.append(slot)
                if not ok and invocation.reply_id is None and not self._stopping.is_set():
                    retries = self.rules.retries
                    if invocation.retries is not None:  # a version's own config
                        retries = invocation.retries
                    if invocation.attempt < retries:
                        self._stats.retried += 1
                        delay = RETRY_DELAYS[invocation.attempt] * self._config.time_scale
                        self.queue(replace(invocation, attempt=invocation.attempt + 1), delay)
                    else:
                        self._to_destination(invocation, "RetriesExhausted")
                self._running.discard(threading.current_thread())
                self._cond.notify_all()

    def follow(self, read: Callable[[], AsyncRules], interval: float = 1.0) -> None:
        """Apply the function's event-invoke config as it is now, and read it again every
        ``interval`` seconds until the emulator stops (a ``put-function-event-invoke-config``
        takes effect here as on Lambda, where it applies to the events that follow)."""
        while not self._stopping.is_set():
            try:
                self.rules = read()
            except Exception:
                log.debug("emulator: the function's event-invoke config could not be read")
            self._stopping.wait(interval)

    def _expired(self, invocation: Invocation) -> bool:
        """An asynchronous event older than the maximum event age is discarded (the
        caller holds ``cond``)."""
        if invocation.reply_id is not None:
            return False
        age = time.monotonic() - invocation.received
        if age <= self.rules.max_event_age * self._config.time_scale:
            return False
        self._stats.expired += 1
        log.warning(
            "emulator: discarded an event after %.1f s in the queue (EventAgeExceeded)", age
        )
        self._to_destination(invocation, "EventAgeExceeded")
        return True

    def _to_destination(self, invocation: Invocation, condition: str) -> None:
        """Write the invocation record to the on-failure destination, if there is one.

        Lambda does it on its own time: so does this (a thread), and a record that
        cannot be delivered is logged (Lambda counts ``DestinationDeliveryFailures``)."""
        bucket = self.rules.on_failure
        if bucket is None:
            return
        record = destination_record(invocation, self._runtime.function_arn, condition)
        key = destination_key(self._config.function_name)
        threading.Thread(
            target=self._deliver,
            args=(bucket, key, record),
            name="dolambda-emulator-destination",
            daemon=True,
        ).start()

    def _deliver(self, bucket: str, key: str, record: dict[str, Any]) -> None:
        try:
            if self._destination_s3 is None:
                from dolambda.emulator.setup import session

                self._destination_s3 = session(self._config.region).client(
                    "s3", endpoint_url=self._runtime.endpoint_url
                )
            self._destination_s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=json.dumps(record).encode(),
                ContentType="application/json",
            )
            with self._cond:
                self._stats.destination_records += 1
        except Exception:
            log.exception(
                "emulator: the on-failure record for s3://%s/%s was not delivered", bucket, key
            )

    def _typical_duration(self) -> float:
        """The median of the recent invocations' durations (0.1 s before any returned)."""
        with self._cond:
            recent = sorted(self._durations)
        return recent[len(recent) // 2] if recent else 0.1

    def _answer(self, invocation: Invocation, answer: Answer) -> None:
        """Record a failure; answer a synchronous Invoke (asynchronous ones have nobody waiting)."""
        if answer.error_type is not None:
            invocation.error = (answer.error_type, answer.text)
        if invocation.reply_id is None:
            return
        if answer.error_type is None:
            self._reply(invocation.reply_id, answer.text, False)
        else:
            payload = json.dumps({"errorType": answer.error_type, "errorMessage": answer.text})
            self._reply(invocation.reply_id, payload, True)
