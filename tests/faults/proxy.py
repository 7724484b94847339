"""A fault-injecting HTTP/1.1 reverse proxy for S3 on 127.0.0.1.

``FaultProxy(upstream)`` listens on a free port and forwards every request to
``upstream`` (a moto server). While ``faults`` are enabled, a seeded share of the
S3 requests (SigV4 credential scope ``.../s3/aws4_request``) is answered with an
S3-style XML ``503 SlowDown`` or ``500 InternalError``, or the connection is closed
without an answer, instead of being forwarded. Everything else (the emulator's
``/_dolambda/`` mailbox, the Lambda and IAM APIs, ``/moto-api/``) always passes.

It runs an asyncio server on its own thread; ``stats`` counts what it did, split
by caller: ``client`` (aiobotocore, the dolambda client) and ``worker`` (botocore,
the Lambda handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

NEVER_FAULT = ("/_dolambda", "/moto-api", "/2015-03-31", "/2014-11-13", "/2017-")

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message>"
    b"<RequestId>FAULTPROXY</RequestId></Error>"
)
INTERNAL = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message>"
    b"<RequestId>FAULTPROXY</RequestId></Error>"
)


@dataclass
class Faults:
    """Shares of S3 requests to fault (their sum must be <= 1)."""

    slowdown: float = 0.0  # 503 SlowDown
    internal: float = 0.0  # 500 InternalError
    drop: float = 0.0  # close the connection without an answer

    def pick(self, rng: random.Random) -> str | None:
        r = rng.random()
        for name, share in (
            ("slowdown", self.slowdown),
            ("internal", self.internal),
            ("drop", self.drop),
        ):
            if r < share:
                return name
            r -= share
        return None


@dataclass
class ProxyStats:
    forwarded: Counter[str] = field(default_factory=Counter)  # by caller
    faults: Counter[tuple[str, str]] = field(default_factory=Counter)  # (caller, kind)

    def faulted(self, caller: str | None = None) -> int:
        return sum(n for (c, _), n in self.faults.items() if caller in (None, c))


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = bytearray()
        while True:
            size_line = await reader.readline()
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    length = int(headers.get("content-length", "0") or 0)
    return await reader.readexactly(length) if length else b""


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, list[tuple[str, str]]] | None:
    first = await reader.readline()
    if not first:
        return None
    lines: list[tuple[str, str]] = []
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        lines.append((name.strip(), value.strip()))
    return first.decode("latin-1").rstrip("\r\n"), lines


class FaultProxy:
    """``with FaultProxy(upstream, seed=1) as proxy:`` then ``proxy.url``; set ``proxy.faults``."""

    def __init__(self, upstream: str, seed: int = 0) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.faults = Faults()
        self.stats = ProxyStats()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    def start(self) -> FaultProxy:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        port = fut.result(timeout=10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._server.wait_closed(), 2)
            for w in list(self._writers):
                w.transport.abort()  # open keep-alive connections: their handlers see EOF
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:
                await asyncio.wait(tasks, timeout=5)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_faults(self, **shares: float) -> None:
        with self._lock:
            self.faults = Faults(**shares)

    def _decide(self, path: str, headers: dict[str, str]) -> tuple[str, str | None]:
        agent = headers.get("user-agent", "").lower()
        caller = "client" if "aiobotocore" in agent else "worker"
        is_s3 = "/s3/aws4_request" in headers.get("authorization", "")
        if not is_s3 or path.startswith(NEVER_FAULT):
            return caller, None
        with self._lock:
            return caller, self.faults.pick(self._rng)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await _read_head(reader)
                if head is None:
                    return
                request_line, header_lines = head
                headers = {k.lower(): v for k, v in header_lines}
                method, path, _ = request_line.split(" ", 2)
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await writer.drain()
                body = await _read_body(reader, headers)
                caller, fault = self._decide(path, headers)
                if fault is not None:
                    self.stats.faults[(caller, fault)] += 1
                if fault == "drop":
                    return  # the finally closes the connection: no status line at all
                if fault is not None:
                    status = (
                        b"503 Slow Down" if fault == "slowdown" else b"500 Internal Server Error"
                    )
                    payload = SLOWDOWN if fault == "slowdown" else INTERNAL
                    writer.write(
                        b"HTTP/1.1 " + status + b"\r\nContent-Type: application/xml\r\n"
                        b"Content-Length: " + str(len(payload)).encode() + b"\r\n"
                        b"x-amz-request-id: FAULTPROXY\r\n\r\n"
                        + (b"" if method == "HEAD" else payload)
                    )
                    await writer.drain()
                    continue
                self.stats.forwarded[caller] += 1
                response = await self._forward(method, path, header_lines, body)
                writer.write(response)
                await writer.drain()
                if "connection: close" in headers.get("connection", "").lower():
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _forward(
        self, method: str, path: str, header_lines: list[tuple[str, str]], body: bytes
    ) -> bytes:
        """One request on a fresh upstream connection; the whole response, re-framed."""
        up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        try:
            out = [f"{method} {path} HTTP/1.1"]
            for name, value in header_lines:
                low = name.lower()
                if low in (
                    "connection",
                    "transfer-encoding",
                    "content-length",
                    "keep-alive",
                    "expect",
                ):
                    continue
                if low == "host":
                    value = f"{self.upstream_host}:{self.upstream_port}"
                out.append(f"{name}: {value}")
            out.append(f"Content-Length: {len(body)}")
            out.append("Connection: close")
            up_writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)
            await up_writer.drain()
            head = await _read_head(up_reader)
            if head is None:
                raise ConnectionError("upstream closed")
            status_line, resp_headers = head
            status = int(status_line.split(" ", 2)[1])
            lower = {k.lower(): v for k, v in resp_headers}
            if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                data = b""
            elif "content-length" in lower or "chunked" in lower.get("transfer-encoding", ""):
                data = await _read_body(up_reader, lower)
            else:
                data = await up_reader.read()
            lines = [status_line]
            for name, value in resp_headers:
                if name.lower() in ("connection", "transfer-encoding", "keep-alive"):
                    continue
                if name.lower() == "content-length" and method != "HEAD":
                    continue
                lines.append(f"{name}: {value}")
            if method != "HEAD":
                lines.append(f"Content-Length: {len(data)}")
            return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()


def summary(stats: ProxyStats) -> dict[str, Any]:
    return {
        "forwarded": dict(stats.forwarded),
        "faults": {f"{c}:{k}": n for (c, k), n in sorted(stats.faults.items())},
    }
