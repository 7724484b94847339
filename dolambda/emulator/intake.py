"""Event intake: how events reach the emulator, and the fault knobs applied on the way in.

Two ways to discover events:

* ``discovery="events"``: :class:`MailboxClient` long-polls the patched moto server's
  per-function mailbox (``GET /_dolambda/poll``), which holds the S3 notifications and
  ``Invoke`` calls for the function; a synchronous ``Invoke`` is answered with
  ``POST /_dolambda/reply``.
* ``discovery="poll"`` (a plain S3 server, no notifications): :meth:`Intake.poll_loop`
  LISTs the bucket under the notification's filter (the queue's by default) every
  ``poll_interval`` seconds and makes the S3 event record for each new task object.

Every event then goes through :meth:`Intake.receive`, which applies the test knobs
(seeded): ``drop_fraction`` and ``duplicate_events`` (asynchronous events only), and
``event_delay`` or ``shuffle`` (a random delay), before it joins the dispatcher's heap;
``slow_fraction`` marks invocations (each copy of a duplicated event on its own, so a
task sent again is normally not slowed again) that the dispatcher runs ``slow_factor``
times as long as a typical one.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import random
import socket
import threading
from collections import deque
from typing import Any
from urllib.parse import urlencode, urlsplit

from dolambda._errors import BackendError
from dolambda._wire import keys as _keys
from dolambda.emulator import setup
from dolambda.emulator.config import EmulatorConfig, EmulatorStats
from dolambda.emulator.dispatch import Dispatcher, Invocation
from dolambda.emulator.events import API, s3_event

log = logging.getLogger("dolambda.emulator")


class MailboxClient:
    """The emulator's side of the moto server's ``/_dolambda/`` endpoints."""

    def __init__(self, endpoint_url: str) -> None:
        self.endpoint_url = endpoint_url
        self._poll_conn: http.client.HTTPConnection | None = None

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

    def has_mailbox(self) -> bool:
        """Whether the endpoint is the emulator's own moto server."""
        try:
            status, data = self._get(f"{API}/ping", timeout=5)
        except (OSError, http.client.HTTPException, ValueError):
            return False
        return status == 200 and isinstance(data, dict) and data.get("dolambda") == 1

    def take(self, function_name: str, region: str) -> Any:
        """One long poll for the function's events (raises on a connection problem)."""
        query = urlencode({"function": function_name, "region": region, "wait": 5, "max": 100})
        conn = self._connection(timeout=30)
        self._poll_conn = conn
        try:
            conn.request("GET", f"{API}/poll?{query}")
            response = conn.getresponse()
            return json.loads(response.read() or b"{}")
        finally:
            self._poll_conn = None
            conn.close()

    def interrupt(self) -> None:
        """Cut a long poll short (the emulator is stopping)."""
        conn = self._poll_conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def set_account_concurrency(self, limit: int) -> None:
        """The concurrency quota the server's GetAccountSettings reports."""
        conn = self._connection(10)
        try:
            body = json.dumps({"concurrent_executions": limit})
            conn.request(
                "POST", f"{API}/account", body=body, headers={"Content-Type": "application/json"}
            )
            response = conn.getresponse()
            answer = response.read()
            if response.status != 200:
                raise BackendError(
                    f"Emulator: the moto server refused the account quota: {answer!r}"
                )
        finally:
            conn.close()

    def reply(self, reply_id: str, payload: str, error: bool, throttled: bool = False) -> None:
        """Answer a synchronous Invoke waiting in the moto server (``throttled``: with a
        429 instead of running it)."""
        conn = self._connection(10)
        try:
            body = json.dumps(
                {"id": reply_id, "payload": payload, "error": error, "throttled": throttled}
            )
            conn.request(
                "POST", f"{API}/reply", body=body, headers={"Content-Type": "application/json"}
            )
            conn.getresponse().read()
        except (OSError, http.client.HTTPException) as exc:
            log.warning("emulator: could not answer a synchronous invoke: %s", exc)
        finally:
            conn.close()


class Intake:
    """Discovery loops and fault knobs in front of the dispatcher (shares its ``cond``)."""

    def __init__(
        self,
        config: EmulatorConfig,
        *,
        endpoint_url: str,
        mailbox: MailboxClient,
        dispatcher: Dispatcher,
        stats: EmulatorStats,
        cond: threading.Condition,
        stopping: threading.Event,
        recent_events: deque[tuple[str, Any]],
    ) -> None:
        self.config = config
        self.endpoint_url = endpoint_url
        self._mailbox = mailbox
        self._dispatcher = dispatcher
        self._stats = stats
        self._cond = cond
        self._stopping = stopping
        self._recent = recent_events
        self._rng = random.Random(config.seed)

    def events_loop(self) -> None:
        """Long-poll moto's mailbox for this function's events."""
        failures = 0
        while not self._stopping.is_set():
            try:
                data = self._mailbox.take(self.config.function_name, self.config.region)
                failures = 0
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if self._stopping.is_set():
                    break
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("emulator: cannot reach %s (%s); retrying", self.endpoint_url, exc)
                self._stopping.wait(min(2.0, 0.05 * failures))
                continue
            for item in data.get("events", []) if isinstance(data, dict) else []:
                try:
                    event = json.loads(item.get("payload") or "{}")
                except ValueError:
                    log.warning("emulator: dropping an invocation whose payload is not JSON")
                    if item.get("reply"):
                        self._mailbox.reply(
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
                version = str(item.get("version") or "$LATEST")
                # $LATEST runs with the emulator's own memory_mb (moto's record of it is
                # clamped to Lambda's range); a published version with its MemorySize
                memory = None if version == "$LATEST" else int(item.get("memory") or 0) or None
                retries = item.get("retries")
                self.receive(
                    event,
                    str(item.get("source", "invoke")),
                    reply_id,
                    version,
                    memory,
                    None if retries is None else int(retries),
                )

    def poll_filters(self, s3: Any) -> list[tuple[str, str, str]]:
        """``(prefix, suffix, configuration id)`` from the bucket's notification configuration
        for this function, or the queue's when the server has none."""
        try:
            config = s3.get_bucket_notification_configuration(Bucket=self.config.bucket)
        except Exception:
            config = {}
        filters: list[tuple[str, str, str]] = []
        for entry in config.get("LambdaFunctionConfigurations", []):
            arn = str(entry.get("LambdaFunctionArn", ""))
            if arn.split(":")[6:7] != [self.config.function_name]:
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
        return filters or [(*_keys.trigger_filter(self.config.prefix), "dolambda-queue")]

    def poll_loop(self) -> None:
        """Discover new task objects by LISTing (for S3 servers without notifications)."""
        c = self.config
        s3 = setup.session(c.region).client("s3", endpoint_url=self.endpoint_url)
        filters = self.poll_filters(s3)
        seen: dict[str, str] = {}
        while not self._stopping.is_set():
            current: dict[str, tuple[str, int, str]] = {}
            try:
                for prefix, suffix, config_id in filters:
                    pages = s3.get_paginator("list_objects_v2").paginate(
                        Bucket=c.bucket, Prefix=prefix
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
                    log.warning("emulator: LIST s3://%s failed: %s", c.bucket, exc)
            else:
                for key, (etag, size, config_id) in current.items():
                    if seen.get(key) != etag:
                        event = s3_event(
                            region=c.region,
                            bucket=c.bucket,
                            key=key,
                            size=size,
                            etag=etag,
                            configuration_id=config_id,
                        )
                        self.receive(event, "poll", None)
                seen = {key: value[0] for key, value in current.items()}
            self._stopping.wait(c.poll_interval)

    def receive(
        self,
        event: Any,
        source: str,
        reply_id: str | None,
        version: str = "$LATEST",
        memory_mb: int | None = None,
        retries: int | None = None,
    ) -> None:
        """Apply the test knobs and queue the invocation(s)."""
        c = self.config
        with self._cond:
            # (a throttled invoke never reaches the function: not an event)
            throttled = reply_id is not None and not self._dispatcher.admits_sync()
            if throttled:
                self._stats.throttled += 1
            else:
                self._stats.events += 1
        if throttled:
            assert reply_id is not None
            self._mailbox.reply(reply_id, "", False, throttled=True)
            return
        with self._cond:
            copies = 1
            if reply_id is None:  # only asynchronous events are dropped or duplicated
                if c.drop_fraction and self._rng.random() < c.drop_fraction:
                    self._stats.dropped += 1
                    log.info("emulator: dropped an event (drop_fraction=%g)", c.drop_fraction)
                    return
                if c.duplicate_events:
                    copies = 2
                    self._stats.duplicated += 1
            self._recent.append((source, event))
            for _ in range(copies):
                invocation = Invocation(
                    event,
                    source,
                    reply_id,
                    slowed=self._slowed(),
                    version=version,
                    memory_mb=memory_mb,
                    retries=retries,
                )
                self._dispatcher.queue(invocation, self._delay())

    def _slowed(self) -> float:
        """The factor this invocation is slowed by (1.0: not at all); the caller holds cond.

        No draw when the knob is off, so the other knobs' seeded choices stay the same.
        """
        c = self.config
        if not c.slow_fraction or self._rng.random() >= c.slow_fraction:
            return 1.0
        self._stats.slowed += 1
        log.info(
            "emulator: slowing an invocation %gx (slow_fraction=%g)", c.slow_factor, c.slow_fraction
        )
        return c.slow_factor

    def _delay(self) -> float:
        if self.config.shuffle:
            return self._rng.uniform(0.0, max(self.config.event_delay, 0.05))
        return self.config.event_delay
