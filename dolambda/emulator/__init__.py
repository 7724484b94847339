"""A local AWS Lambda emulator that runs the real handler, the way Lambda does.

::

  client (LambdaBackend, endpoint_url=E)     moto server at E (python -m dolambda.emulator.moto)
  ──────────────────────────────────────     ─────────────────────────────────────────────────────
  PUT <prefix>/queue/<job>/<task>.task ────► S3: the bucket notification matches a
                                             LambdaFunctionConfiguration (prefix, suffix,
                                             ObjectCreated:*) -> an AWS-shaped record
  lambda.Invoke(InvocationType="Event", ───► Lambda Invoke API       │ (key quote_plus'ed)
    {"bucket", "key", "task"})                       │               │
                                                     ▼               ▼
                                             per-function mailbox (patched moto, no Docker)
                                                     │ GET /_dolambda/poll (long poll)
  this module ───────────────────────────────────────┼───────────────────────────────────────
                                                     ▼
                                             intake thread: drop_fraction, duplicate_events,
                                                     │      event_delay, shuffle (seeded)
                                                     ▼
                                             pending heap (by due time)
                                                     │ dispatcher: at most `workers` at once,
                                                     ▼ the warmest idle worker first
  results/<job>/<task>.out ◄─ PUT If-None-Match ─ worker process (python -m
                                                  dolambda.emulator.worker): imports
                                                  handler/lambda_function.py once (cold start),
                                                  then lambda_handler(event, context) for each
                                                  invocation (warm reuse). Killed at the timeout
                                                  or when its RSS passes memory_mb; a fresh one
                                                  takes its place on the next event.

With an ``endpoint_url`` that is a plain S3 server (no notifications, e.g.
SeaweedFS), ``discovery="poll"`` LISTs ``<prefix>/queue/`` every
``poll_interval`` seconds instead and makes the same S3 event records for new
``.task`` objects (only ``trigger="s3"`` works then).

>>> import dolambda.emulator
>>> with dolambda.emulator.start(workers=2) as backend:    # doctest: +SKIP
...     dolambda.foreach(x=range(10)).combine(sum).run(lambda x: x * x, backend=backend)
285
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import itertools
import json
import logging
import math
import os
import queue
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from dolambda._errors import BackendError, InvalidArgument
from dolambda._wire import keys as _keys
from dolambda._wire.codec import signing_key_bytes
from dolambda.emulator.events import API, s3_event

__all__ = ["Emulator", "EmulatorStats", "launch_moto", "serve", "start"]

log = logging.getLogger("dolambda.emulator")

_TIMEOUT = object()  # a worker gave no answer in time


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
    retried: int = 0  #: failed async invocations queued again (retries)
    max_concurrency: int = 0  #: most invocations running at once


@dataclass
class _Invocation:
    event: Any
    source: str  # "s3" | "invoke" | "poll"
    reply_id: str | None = None  # a RequestResponse Invoke waiting in moto
    attempt: int = 0
    error: tuple[str, str] | None = None  # (errorType, errorMessage) of the last failure


class _Process:
    """One execution environment: a worker process and the threads reading it."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str, tag: str) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,  # Ctrl-C in a terminal reaches the emulator, not the workers
        )
        self.pid = self.proc.pid
        self.tag = f"{tag}[{self.pid}]"
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.logs: deque[str] = deque(maxlen=50)
        self.kill_reason: str | None = None
        self.kill_detail = ""
        self.served = 0
        self.init_ms = 0.0
        threading.Thread(target=self._read_messages, name=f"{self.tag}-out", daemon=True).start()
        threading.Thread(target=self._read_logs, name=f"{self.tag}-log", daemon=True).start()

    def _read_messages(self) -> None:
        assert self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                with contextlib.suppress(ValueError):
                    self.messages.put(json.loads(raw))
        except (OSError, ValueError):
            pass
        finally:
            self.messages.put(None)

    def _read_logs(self) -> None:
        assert self.proc.stderr is not None
        with contextlib.suppress(OSError, ValueError):
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                self.logs.append(line)
                log.info("%s %s", self.tag, line)

    def wait(self, timeout: float) -> Any:
        """The next message, None when the process is gone, or _TIMEOUT."""
        try:
            return self.messages.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return _TIMEOUT

    def send(self, message: dict[str, Any]) -> bool:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as f:
                pages = int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            return 0.0
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)

    def kill(self, reason: str, detail: str = "") -> None:
        if self.kill_reason is None:
            self.kill_reason, self.kill_detail = reason, detail
        with contextlib.suppress(ProcessLookupError, OSError):
            self.proc.kill()

    def close(self) -> None:
        """Stop the process and reap it (stdin EOF first, then SIGKILL)."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill("stopped")
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()


class _Slot:
    """One unit of concurrency; holds a warm process between invocations."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: _Process | None = None


class Emulator:
    """Run ``handler/lambda_function.py`` like AWS Lambda, fed by a local S3 (moto).

    ``workers`` is the function's concurrency limit; ``timeout`` (seconds) and
    ``memory_mb`` its configuration. With no ``endpoint_url`` a moto server is
    started on 127.0.0.1 (a free port unless ``port``) and set up: bucket, role,
    function, S3 invoke permission and, for ``trigger="s3"``, the bucket
    notification. Test knobs: ``duplicate_events`` (every async event twice),
    ``drop_fraction`` (seeded), ``event_delay`` (seconds before delivery) and
    ``shuffle`` (a random delay in ``[0, max(event_delay, 0.05)]`` instead).
    ``retries``: how often a failed async invocation (error, timeout, kill) is
    queued again, as Lambda's async-invoke config does (the default 0 leaves
    lost work to the client). ``handler``/``task_root`` name another handler.
    """

    def __init__(
        self,
        workers: int = 2,
        endpoint_url: str | None = None,
        bucket: str = "dolambda-emulator",
        function_name: str = "dolambda",
        region: str = "us-east-1",
        prefix: str = "dolambda",
        timeout: float = 60.0,
        memory_mb: int = 1024,
        signing_key: str | bytes | None = None,
        trigger: str = "s3",
        duplicate_events: bool = False,
        drop_fraction: float = 0.0,
        event_delay: float = 0.0,
        seed: int = 0,
        discovery: str = "auto",
        *,
        shuffle: bool = False,
        retries: int = 0,
        on_failure: bool = True,
        poll_interval: float = 0.1,
        port: int = 0,
        handler: str = "lambda_function.lambda_handler",
        task_root: str | os.PathLike[str] | None = None,
    ) -> None:
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
        if not float(timeout) > 0 or not int(memory_mb) > 0:
            raise InvalidArgument("Emulator: timeout and memory_mb must be positive")
        if float(event_delay) < 0 or float(poll_interval) <= 0 or int(retries) < 0:
            raise InvalidArgument("Emulator: event_delay, poll_interval and retries out of range")
        key = signing_key_bytes(signing_key) if signing_key else secrets.token_bytes(32)
        if len(key) < 16:
            raise InvalidArgument("Emulator: the signing key must be at least 16 bytes")
        self.workers = workers
        self.bucket = bucket
        self.function_name = function_name
        self.region = region
        self.prefix = prefix
        self.timeout = float(timeout)
        self.memory_mb = int(memory_mb)
        self.signing_key: str = key.hex()
        self.trigger = trigger
        self.duplicate_events = bool(duplicate_events)
        self.drop_fraction = float(drop_fraction)
        self.event_delay = float(event_delay)
        self.shuffle = bool(shuffle)
        self.retries = int(retries)
        # like the deployed setup: an async invocation that failed for good is sent to the
        # function itself as an on-failure destination record (it writes an error result)
        self.on_failure = bool(on_failure)
        self.poll_interval = float(poll_interval)
        self.seed = seed
        self.discovery = discovery
        self.port = port
        self.handler = handler
        root = Path(__file__).resolve().parents[2]
        self.task_root = str(Path(task_root).resolve() if task_root else root / "handler")
        self._pythonpath = str(root)
        self._given_endpoint = endpoint_url
        self.endpoint_url: str = endpoint_url or ""
        self.function_arn = ""
        #: the most recent events handed to the dispatcher, as ``(source, event)``
        self.recent_events: deque[tuple[str, Any]] = deque(maxlen=1000)

        self._rng = random.Random(seed)
        self._cond = threading.Condition()
        self._stats = EmulatorStats()
        self._pending: list[tuple[float, int, _Invocation]] = []
        self._seq = itertools.count()
        self._slots = [_Slot(i) for i in range(workers)]
        self._idle: list[_Slot] = list(reversed(self._slots))  # pop() takes the warmest
        self._busy = 0
        self._running: set[threading.Thread] = set()
        self._stopping = threading.Event()
        self._marker_s3: Any = None  # the client that wrote emulator.json (discovery="poll")
        self._threads: list[threading.Thread] = []
        self._moto: subprocess.Popen[bytes] | None = None
        self._poll_conn: http.client.HTTPConnection | None = None
        self._backend: Any = None
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Emulator:
        if self._started:
            return self
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        if self._given_endpoint is None:
            self.endpoint_url = self._start_moto()
        mode = self.discovery
        if mode == "auto":
            mode = "events" if self._given_endpoint is None or self._has_mailbox() else "poll"
        if mode == "events" and self._given_endpoint is not None and not self._has_mailbox():
            raise BackendError(
                f"Emulator: {self.endpoint_url} is not a dolambda emulator moto server "
                "(no /_dolambda/ping); use discovery='poll' for a plain S3 server"
            )
        if mode == "poll" and self.trigger == "invoke":
            raise InvalidArgument(
                "Emulator: trigger='invoke' needs the emulator's own moto server; polling S3 "
                "(discovery='poll') only sees task objects, so use trigger='s3'"
            )
        self.discovery = mode
        session = self._session()
        from dolambda.emulator import setup

        if mode == "events":
            self.function_arn = setup.ensure_all(
                session,
                self.endpoint_url,
                bucket=self.bucket,
                region=self.region,
                function_name=self.function_name,
                prefix=self.prefix,
                timeout=self.timeout,
                memory_mb=self.memory_mb,
                notify=self.trigger == "s3",
            )
            intake = self._events_loop
        else:
            s3 = session.client("s3", endpoint_url=self.endpoint_url)
            setup.ensure_bucket(s3, self.bucket, self.region)
            self.function_arn = (
                f"arn:aws:lambda:{self.region}:123456789012:function:{self.function_name}"
            )
            # no notification on a plain S3 server: tell clients who runs the tasks instead
            s3.put_object(
                Bucket=self.bucket,
                Key=_keys.emulator_key(self.prefix),
                Body=json.dumps({"function_name": self.function_name, "pid": os.getpid()}),
            )
            self._marker_s3 = s3
            intake = self._poll_loop
        for target, name in (
            (intake, "intake"),
            (self._dispatch_loop, "dispatch"),
            (self._memory_loop, "memory"),
        ):
            thread = threading.Thread(target=target, name=f"dolambda-emulator-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info(
            "emulator: function %s (%d workers, timeout %gs, %d MB) on %s, discovery=%s",
            self.function_name,
            self.workers,
            self.timeout,
            self.memory_mb,
            self.endpoint_url,
            mode,
        )

    def stop(self) -> None:
        """Stop everything this emulator started; safe to call twice."""
        self._stopping.set()
        s3, self._marker_s3 = self._marker_s3, None
        if s3 is not None:
            with contextlib.suppress(Exception):
                s3.delete_object(Bucket=self.bucket, Key=_keys.emulator_key(self.prefix))
        with self._cond:
            self._cond.notify_all()
        for slot in self._slots:
            process = slot.process
            if process is not None:
                process.kill("stopped")
        if self._moto is not None:
            self._moto.terminate()  # long polls and in-flight S3 calls fail at once
        deadline = time.monotonic() + 10
        for thread in self._threads:
            while thread.is_alive() and time.monotonic() < deadline:
                conn = self._poll_conn
                if conn is not None and conn.sock is not None:
                    with contextlib.suppress(OSError):
                        conn.sock.shutdown(socket.SHUT_RDWR)
                thread.join(timeout=0.05)
        for thread in list(self._running):
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        for slot in self._slots:
            if slot.process is not None:
                slot.process.close()
                slot.process = None
        if self._moto is not None:
            moto, self._moto = self._moto, None
            try:
                moto.wait(timeout=5)
            except subprocess.TimeoutExpired:
                moto.kill()
                moto.wait()
            for stream in (moto.stdin, moto.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ public views

    @property
    def stats(self) -> EmulatorStats:
        with self._cond:
            return replace(self._stats)

    @property
    def backend(self) -> Any:
        """A ``LambdaBackend`` wired to this emulator (created on first use)."""
        if self._backend is None:
            from dolambda._backends.lambda_ import LambdaBackend

            self._backend = LambdaBackend(**self.backend_settings())
        return self._backend

    def backend_settings(self) -> dict[str, Any]:
        """The ``LambdaBackend(...)`` keyword arguments that talk to this emulator."""
        return {
            "bucket": self.bucket,
            "function_name": self.function_name,
            "region": self.region,
            "endpoint_url": self.endpoint_url,
            "prefix": self.prefix,
            "trigger": self.trigger,
            "task_timeout": self.timeout,
            "max_concurrency": self.workers,
            "signing_key": self.signing_key,
            # the emulator's S3 accepts any key: never depend on the user's AWS setup
            "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        }

    def worker_pids(self) -> list[int]:
        """The process ids of the live workers."""
        return [s.process.pid for s in self._slots if s.process is not None]

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until nothing is pending or running (events still in flight in S3 excepted)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    # ------------------------------------------------------------------ moto

    def _session(self) -> Any:
        import boto3

        return boto3.session.Session(
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            region_name=self.region,
        )

    def _start_moto(self) -> str:
        self._moto, url = launch_moto(self.port)
        return url

    def _has_mailbox(self) -> bool:
        try:
            status, data = self._get(f"{API}/ping", timeout=5)
        except (OSError, http.client.HTTPException, ValueError):
            return False
        return status == 200 and isinstance(data, dict) and data.get("dolambda") == 1

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        url = urlsplit(self.endpoint_url)
        host = url.hostname or "127.0.0.1"
        if url.scheme == "https":
            return http.client.HTTPSConnection(host, url.port or 443, timeout=timeout)
        return http.client.HTTPConnection(host, url.port or 80, timeout=timeout)

    def _get(self, path: str, timeout: float) -> tuple[int, Any]:
        conn = self._connection(timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()

    def _reply(self, reply_id: str, payload: str, error: bool) -> None:
        conn = self._connection(10)
        try:
            body = json.dumps({"id": reply_id, "payload": payload, "error": error})
            conn.request(
                "POST", f"{API}/reply", body=body, headers={"Content-Type": "application/json"}
            )
            conn.getresponse().read()
        except (OSError, http.client.HTTPException) as exc:
            log.warning("emulator: could not answer a synchronous invoke: %s", exc)
        finally:
            conn.close()

    # ------------------------------------------------------------------ event intake

    def _events_loop(self) -> None:
        """Long-poll moto's mailbox for this function's events."""
        query = urlencode(
            {"function": self.function_name, "region": self.region, "wait": 5, "max": 100}
        )
        failures = 0
        while not self._stopping.is_set():
            conn = self._connection(timeout=30)
            self._poll_conn = conn
            try:
                conn.request("GET", f"{API}/poll?{query}")
                response = conn.getresponse()
                data = json.loads(response.read() or b"{}")
                failures = 0
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if self._stopping.is_set():
                    break
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("emulator: cannot reach %s (%s); retrying", self.endpoint_url, exc)
                self._stopping.wait(min(2.0, 0.05 * failures))
                continue
            finally:
                self._poll_conn = None
                conn.close()
            for item in data.get("events", []) if isinstance(data, dict) else []:
                try:
                    event = json.loads(item.get("payload") or "{}")
                except ValueError:
                    log.warning("emulator: dropping an invocation whose payload is not JSON")
                    if item.get("reply"):
                        self._reply(
                            str(item["id"]),
                            json.dumps(
                                {
                                    "errorType": "InvalidRequestContentException",
                                    "errorMessage": "Could not parse request body into json",
                                }
                            ),
                            True,
                        )
                    continue
                reply_id = str(item["id"]) if item.get("reply") else None
                self._intake(event, str(item.get("source", "invoke")), reply_id)

    def _poll_filters(self, s3: Any) -> list[tuple[str, str, str]]:
        """``(prefix, suffix, configuration id)`` from the bucket's notification configuration
        for this function, or the queue's when the server has none."""
        try:
            config = s3.get_bucket_notification_configuration(Bucket=self.bucket)
        except Exception:
            config = {}
        filters: list[tuple[str, str, str]] = []
        for entry in config.get("LambdaFunctionConfigurations", []):
            arn = str(entry.get("LambdaFunctionArn", ""))
            if arn.split(":")[6:7] != [self.function_name]:
                continue
            if not any(
                e in ("s3:ObjectCreated:*", "s3:ObjectCreated:Put") for e in entry.get("Events", [])
            ):
                continue
            rules = entry.get("Filter", {}).get("Key", {}).get("FilterRules", [])
            values = {str(r.get("Name", "")).lower(): str(r.get("Value", "")) for r in rules}
            filters.append(
                (
                    values.get("prefix", ""),
                    values.get("suffix", ""),
                    str(entry.get("Id", "dolambda-queue")),
                )
            )
        return filters or [(_keys.queue_root(self.prefix), _keys.TASK_SUFFIX, "dolambda-queue")]

    def _poll_loop(self) -> None:
        """Discover new task objects by LISTing (for S3 servers without notifications)."""
        s3 = self._session().client("s3", endpoint_url=self.endpoint_url)
        filters = self._poll_filters(s3)
        seen: dict[str, str] = {}
        while not self._stopping.is_set():
            current: dict[str, tuple[str, int, str]] = {}
            try:
                for prefix, suffix, config_id in filters:
                    pages = s3.get_paginator("list_objects_v2").paginate(
                        Bucket=self.bucket, Prefix=prefix
                    )
                    for page in pages:
                        for obj in page.get("Contents", []):
                            if obj["Key"].endswith(suffix):
                                current[obj["Key"]] = (
                                    str(obj.get("ETag", "")),
                                    int(obj.get("Size", 0)),
                                    config_id,
                                )
            except Exception as exc:
                if not self._stopping.is_set():
                    log.warning("emulator: LIST s3://%s failed: %s", self.bucket, exc)
            else:
                for key, (etag, size, config_id) in current.items():
                    if seen.get(key) != etag:
                        event = s3_event(
                            region=self.region,
                            bucket=self.bucket,
                            key=key,
                            size=size,
                            etag=etag,
                            configuration_id=config_id,
                        )
                        self._intake(event, "poll", None)
                seen = {key: value[0] for key, value in current.items()}
            self._stopping.wait(self.poll_interval)

    def _intake(self, event: Any, source: str, reply_id: str | None) -> None:
        """Apply the test knobs and queue the invocation(s)."""
        with self._cond:
            self._stats.events += 1
            copies = 1
            if reply_id is None:  # only asynchronous events are dropped or duplicated
                if self.drop_fraction and self._rng.random() < self.drop_fraction:
                    self._stats.dropped += 1
                    log.info("emulator: dropped an event (drop_fraction=%g)", self.drop_fraction)
                    return
                if self.duplicate_events:
                    copies = 2
                    self._stats.duplicated += 1
            self.recent_events.append((source, event))
            for _ in range(copies):
                self._queue(_Invocation(event, source, reply_id), self._delay())

    def _delay(self) -> float:
        if self.shuffle:
            return self._rng.uniform(0.0, max(self.event_delay, 0.05))
        return self.event_delay

    def _queue(self, invocation: _Invocation, delay: float) -> None:
        """Push onto the pending heap; the caller holds ``self._cond``."""
        heapq.heappush(self._pending, (time.monotonic() + delay, next(self._seq), invocation))
        self._cond.notify_all()

    # ------------------------------------------------------------------ dispatch

    def _dispatch_loop(self) -> None:
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
                slot = self._idle.pop()
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

    def _run(self, slot: _Slot, invocation: _Invocation) -> None:
        ok = False
        try:
            ok = self._invoke(slot, invocation)
        except Exception:
            log.exception("emulator: internal error while invoking the function")
        finally:
            with self._cond:
                self._busy -= 1
                if slot.process is None:
                    self._idle.insert(0, slot)  # cold slots last: reuse warm ones first
                else:
                    self._idle.append(slot)
                if (
                    not ok
                    and invocation.reply_id is None
                    and invocation.attempt < self.retries
                    and not self._stopping.is_set()
                ):
                    self._stats.retried += 1
                    self._queue(replace(invocation, attempt=invocation.attempt + 1), 1.0)
                elif (
                    not ok
                    and invocation.reply_id is None
                    and self.on_failure
                    and invocation.source != "destination"
                    and invocation.error is not None
                    and not self._stopping.is_set()
                ):
                    self._queue(self._destination(invocation), 0.0)
                self._running.discard(threading.current_thread())
                self._cond.notify_all()

    def _destination(self, invocation: _Invocation) -> _Invocation:
        """The on-failure destination record Lambda sends for a failed async invocation."""
        error_type, message = invocation.error or ("Runtime.Unknown", "")
        record = {
            "version": "1.0",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": f"{self.function_arn}:$LATEST",
                "condition": "RetriesExhausted",
                "approximateInvokeCount": invocation.attempt + 1,
            },
            "requestPayload": invocation.event,
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": "Unhandled",
            },
            "responsePayload": {"errorType": error_type, "errorMessage": message},
        }
        return _Invocation(event=record, source="destination")

    def _spawn(self, slot: _Slot) -> _Process | None:
        process = _Process(
            [sys.executable, "-m", "dolambda.emulator.worker"],
            self._worker_env(),
            self.task_root,
            f"{self.function_name}#{slot.index}",
        )
        slot.process = process
        if self._stopping.is_set():
            process.kill("stopped")
        message = process.wait(max(30.0, self.timeout))
        if isinstance(message, dict) and message.get("type") == "ready":
            process.init_ms = float(message.get("init_ms", 0.0))
            return process
        if message is _TIMEOUT:
            process.kill("init timeout")
        detail = (
            f"{message.get('errorType')}: {message.get('errorMessage')}"
            if isinstance(message, dict)
            else "\n".join(process.logs)
        )
        log.error("emulator: worker init failed (Runtime.ImportModuleError?): %s", detail)
        process.close()
        slot.process = None
        return None

    def _invoke(self, slot: _Slot, invocation: _Invocation) -> bool:
        """One handler call on the slot's process; True when the handler returned."""
        if self._stopping.is_set():
            return False
        process = slot.process
        if process is None or process.kill_reason is not None or process.proc.poll() is not None:
            if process is not None:
                process.close()
            process = self._spawn(slot)
            if process is None:
                with self._cond:
                    self._stats.errors += 1
                self._answer(invocation, "Runtime.InitError", "the handler failed to import")
                return False
        request_id = str(uuid.uuid4())
        cold = process.served == 0
        process.served += 1
        with self._cond:
            self._stats.invocations += 1
            if cold:
                self._stats.cold_starts += 1
        deadline_ms = int((time.time() + self.timeout) * 1000)
        log.info("%s START RequestId: %s Version: $LATEST", process.tag, request_id)
        started = time.perf_counter()
        sent = process.send(
            {
                "request_id": request_id,
                "event": invocation.event,
                "deadline_ms": deadline_ms,
                "invoked_function_arn": self.function_arn,
            }
        )
        answer: Any = None
        while sent:
            answer = process.wait(self.timeout - (time.perf_counter() - started))
            if not isinstance(answer, dict) or answer.get("request_id") == request_id:
                break
        elapsed_ms = (time.perf_counter() - started) * 1000
        if answer is _TIMEOUT:
            process.kill("timeout")
            answer = None
        if isinstance(answer, dict) and answer.get("request_id") == request_id:
            with self._cond:
                if answer.get("ok"):
                    self._stats.completed += 1
                else:
                    self._stats.errors += 1
            self._report(
                process,
                request_id,
                float(answer.get("duration_ms", elapsed_ms)),
                float(answer.get("max_rss_mb", 0.0)),
                cold,
            )
            if answer.get("ok"):
                self._answer(invocation, None, str(answer.get("payload", "null")))
                return True
            self._answer(invocation, str(answer.get("errorType")), str(answer.get("errorMessage")))
            return False
        # the process is gone: killed by us (timeout, memory) or crashed
        process.proc.wait()
        reason = process.kill_reason
        with self._cond:
            if reason == "timeout":
                self._stats.timeouts += 1
            elif reason == "memory":
                self._stats.killed += 1
            elif reason != "stopped":
                self._stats.crashed += 1
        if reason == "timeout":
            message = f"Task timed out after {self.timeout:.2f} seconds"
            log.warning("%s %s %s", process.tag, request_id, message)
            error_type = "Sandbox.Timedout"
        elif reason == "memory":
            message = (
                f"Runtime exited with error: signal: killed (out of memory: {process.kill_detail})"
            )
            log.warning("%s %s killed for memory: %s", process.tag, request_id, process.kill_detail)
            error_type = "Runtime.OutOfMemory"
        else:
            message = f"Runtime exited with error: exit status {process.proc.returncode}"
            log.warning("%s %s %s", process.tag, request_id, message)
            error_type = "Runtime.ExitError"
        self._report(process, request_id, elapsed_ms, process.rss_mb(), cold)
        process.close()
        slot.process = None
        self._answer(invocation, error_type, message)
        return False

    def _report(
        self, process: _Process, request_id: str, duration_ms: float, rss_mb: float, cold: bool
    ) -> None:
        init = f"\tInit Duration: {process.init_ms:.2f} ms" if cold else ""
        log.info(
            "%s REPORT RequestId: %s\tDuration: %.2f ms\tBilled Duration: %d ms\t"
            "Memory Size: %d MB\tMax Memory Used: %d MB%s",
            process.tag,
            request_id,
            duration_ms,
            math.ceil(duration_ms),
            self.memory_mb,
            math.ceil(rss_mb),
            init,
        )

    def _answer(self, invocation: _Invocation, error_type: str | None, text: str) -> None:
        """Answer a synchronous Invoke (asynchronous ones have nobody waiting)."""
        if error_type is not None:
            invocation.error = (error_type, text)
        if invocation.reply_id is None:
            return
        if error_type is None:
            self._reply(invocation.reply_id, text, False)
        else:
            payload = json.dumps({"errorType": error_type, "errorMessage": text})
            self._reply(invocation.reply_id, payload, True)

    def _memory_loop(self) -> None:
        """Kill a worker whose resident memory passes ``memory_mb`` (Lambda's OOM kill)."""
        while not self._stopping.wait(0.02):
            for slot in self._slots:
                process = slot.process
                if process is None or process.kill_reason is not None:
                    continue
                rss = process.rss_mb()
                if rss > self.memory_mb:
                    process.kill("memory", f"RSS {rss:.0f} MB > limit {self.memory_mb} MB")

    def _worker_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DOLAMBDA_"))}
        minor = f"{sys.version_info.major}.{sys.version_info.minor}"
        stream = time.strftime("%Y/%m/%d") + f"/[$LATEST]{secrets.token_hex(16)}"
        env.update(
            {
                "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
                "AWS_DEFAULT_REGION": self.region,
                "AWS_REGION": self.region,
                "AWS_ENDPOINT_URL_S3": self.endpoint_url,
                "AWS_ENDPOINT_URL": self.endpoint_url,  # no AWS service is reachable from here
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_EXECUTION_ENV": f"AWS_Lambda_python{minor}",
                "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
                "AWS_LAMBDA_FUNCTION_TIMEOUT": str(math.ceil(self.timeout)),
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.function_name}",
                "AWS_LAMBDA_LOG_STREAM_NAME": stream,
                "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
                "LAMBDA_TASK_ROOT": self.task_root,
                "_HANDLER": self.handler,
                "DOLAMBDA_SIGNING_KEY": self.signing_key,
                "DOLAMBDA_PREFIX": self.prefix,
                "DOLAMBDA_BUCKET": self.bucket,
                "DOLAMBDA_EMULATOR_RLIMIT_AS_MB": str(self.memory_mb * 2 + 2048),
                "PYTHONPATH": os.pathsep.join(
                    p for p in (self._pythonpath, os.environ.get("PYTHONPATH")) if p
                ),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env


def launch_moto(port: int = 0, timeout: float = 60.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start the emulator's moto server (``python -m dolambda.emulator.moto``).

    Returns the process and its URL. The server exits when the process's stdin
    closes, so it never outlives its parent; stop it with ``terminate()``.
    Several emulators (different function names) can share one server.
    """
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dolambda.emulator.moto", "--watch-stdin", "--port", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    ready: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        with contextlib.suppress(OSError, ValueError):
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").strip()
                if line.startswith("DOLAMBDA-MOTO-READY"):
                    ready.put(line)
                elif line:
                    log.debug("moto: %s", line)
        ready.put(None)

    threading.Thread(target=read, name="dolambda-emulator-moto-out", daemon=True).start()
    try:
        line = ready.get(timeout=timeout)
    except queue.Empty:
        line = None
    if line is None:
        proc.kill()
        proc.wait()
        raise BackendError(f"Emulator: the moto server did not start within {timeout:g} s")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


@contextlib.contextmanager
def start(**kwargs: Any) -> Iterator[Any]:
    """``with start(workers=2) as backend:`` a started :class:`Emulator`'s ``LambdaBackend``."""
    with Emulator(**kwargs) as emulator:
        yield emulator.backend


def serve(**kwargs: Any) -> None:
    """Run an emulator until Ctrl-C (the ``dolambda emulator`` command)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        with Emulator(**kwargs) as emulator:
            settings = emulator.backend_settings()
            args = ", ".join(f"{k}={v!r}" for k, v in settings.items())
            print(
                f"dolambda emulator: endpoint {emulator.endpoint_url} "
                f"({emulator.workers} workers, discovery={emulator.discovery})"
            )
            print(f"  from dolambda import LambdaBackend\n  backend = LambdaBackend({args})")
            print(
                "  (any AWS credentials work: export AWS_ACCESS_KEY_ID=testing "
                "AWS_SECRET_ACCESS_KEY=testing)"
            )
            print("Ctrl-C to stop.", flush=True)
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
            print(f"dolambda emulator: stopping ({emulator.stats})", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
