"""The Lambda Runtime API (``2018-06-01``) for one execution environment.

The runtime inside the environment (AWS's ``awslambdaric``) long-polls for work
and posts what became of it; the emulator hands invocations in and waits for
their outcome::

    emulator                       RuntimeAPI (127.0.0.1:<port>)          awslambdaric
    ────────                       ─────────────────────────────          ────────────
    hand(Invocation) ─► queue ─►   GET  /runtime/invocation/next  ◄────── poll (blocks)
                                   200: event, Lambda-Runtime-* headers ─► handler(event, ctx)
    wait(id, timeout) ◄─ outcome ◄ POST /runtime/invocation/{id}/response ◄─ return value
                                   POST /runtime/invocation/{id}/error    ◄─ exception
                                   POST /runtime/init/error               ◄─ import failed

What it answers follows Lambda, as documented in
https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html and as AWS's own
runtime interface emulator renders it (aws/aws-lambda-runtime-interface-emulator,
``lambda/rapi/handler/*.go``, ``lambda/rapi/rendering/render_error.go``):
202 for an accepted post; 400 ``InvalidRequestID`` for a request id that is not
in flight (unknown, or already answered); 403 ``InvalidStateTransition`` for an
init error after init, or a post while nothing is in flight; 413 for a response
over 6 MB (the invocation then fails with ``Function.ResponseSizeTooLarge``).

The function error type comes from the ``Lambda-Runtime-Function-Error-Type``
header when the runtime sends one, else from the body's ``errorType``:
awslambdaric 4.x sends the header on ``/init/error`` but not on
``/invocation/{id}/error`` (its C client sends only the X-Ray cause header).

Standard library only: this module runs beside the worker processes, not in them.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = [
    "MAX_RESPONSE_BYTES",
    "FunctionError",
    "InitError",
    "Invocation",
    "Posted",
    "Response",
    "RuntimeAPI",
]

log = logging.getLogger(__name__)

API_VERSION = "2018-06-01"

#: Lambda's limit on a function's response (``interop.MaxPayloadSize`` in the RIE).
MAX_RESPONSE_BYTES = 6 * 1024 * 1024

ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"

_RESPONSE = re.compile(rf"^/{API_VERSION}/runtime/invocation/([^/]+)/(response|error)$")
_NEXT = f"/{API_VERSION}/runtime/invocation/next"
_INIT_ERROR = f"/{API_VERSION}/runtime/init/error"


@dataclass(frozen=True, slots=True)
class Invocation:
    """One event for the runtime: what ``GET /next`` returns (body and headers)."""

    request_id: str
    payload: bytes
    deadline_ms: int  # Unix epoch milliseconds, the ``Lambda-Runtime-Deadline-Ms`` header
    function_arn: str
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class Response:
    """The handler returned: its marshalled return value."""

    request_id: str
    payload: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class FunctionError:
    """The handler raised (or its result could not be marshalled): Lambda's error shape."""

    request_id: str
    error_type: str
    error_message: str
    stack_trace: tuple[str, ...] = ()
    payload: bytes = b""  # the body as posted (JSON: errorMessage, errorType, stackTrace)


@dataclass(frozen=True, slots=True)
class InitError:
    """The runtime could not initialise (e.g. ``Runtime.ImportModuleError``); it exits."""

    error_type: str
    error_message: str
    stack_trace: tuple[str, ...] = ()
    payload: bytes = b""


#: What the runtime posted for an invocation.
Posted = Response | FunctionError | InitError


def _error_fields(body: bytes, header_type: str | None) -> tuple[str, str, tuple[str, ...]]:
    """errorType, errorMessage and stackTrace of a posted error body (any of them may lack)."""
    try:
        doc: Any = json.loads(body) if body else {}
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    trace = doc.get("stackTrace") or ()
    return (
        header_type or str(doc.get("errorType") or "Unknown"),
        str(doc.get("errorMessage") or ""),
        tuple(str(line) for line in trace) if isinstance(trace, list) else (),
    )


@dataclass
class _State:
    """Everything the HTTP threads and the emulator share, under one condition."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    queue: deque[Invocation] = field(default_factory=deque)
    in_flight: dict[str, Invocation] = field(default_factory=dict)
    posted: dict[str, Posted] = field(default_factory=dict)
    init_error: InitError | None = None
    ready: bool = False  # the runtime has asked for work once: init is done
    gone: bool = False  # the runtime process exited, or the API was closed


class _Handler(BaseHTTPRequestHandler):
    """One HTTP request from the runtime; the state lives on the server."""

    server: _Server
    protocol_version = "HTTP/1.1"  # awslambdaric's curl keeps the connection alive

    def setup(self) -> None:
        super().setup()
        # Headers and body are separate writes: with Nagle's algorithm on, the body waits
        # for the peer's delayed ACK (~40 ms on Linux), twice per invocation.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("runtime api: " + format, *args)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _refuse(self, status: int, error_type: str, message: str) -> None:
        body = json.dumps({"errorMessage": message, "errorType": error_type}).encode()
        self._send(status, body, {"Content-Type": "application/json"})

    def do_GET(self) -> None:
        if self.path != _NEXT:
            self._refuse(404, "NotFound", f"no such resource: {self.path}")
            return
        state = self.server.state
        with state.cond:
            if state.in_flight:
                # Lambda: asking for the next event before answering this one is refused.
                self._refuse(403, "InvalidStateTransition", "an invocation is in flight")
                return
            state.ready = True
            state.cond.notify_all()
            while not state.queue and not state.gone:
                state.cond.wait()
            if state.gone:
                self._refuse(500, "ServiceException", "the execution environment is closing")
                return
            inv = state.queue.popleft()
            state.in_flight[inv.request_id] = inv
        self._send(
            200,
            inv.payload,
            {
                "Content-Type": "application/json",
                "Lambda-Runtime-Aws-Request-Id": inv.request_id,
                "Lambda-Runtime-Deadline-Ms": str(inv.deadline_ms),
                "Lambda-Runtime-Invoked-Function-Arn": inv.function_arn,
                "Lambda-Runtime-Trace-Id": inv.trace_id,
            },
        )

    def do_POST(self) -> None:
        body = self._body()
        state = self.server.state
        if self.path == _INIT_ERROR:
            with state.cond:
                if state.ready or state.init_error is not None:
                    self._refuse(403, "InvalidStateTransition", "init has already finished")
                    return
                error_type, message, trace = _error_fields(
                    body, self.headers.get(ERROR_TYPE_HEADER)
                )
                state.init_error = InitError(error_type, message, trace, body)
                state.cond.notify_all()
            self._send(202, b'{"status":"OK"}', {"Content-Type": "application/json"})
            return
        match = _RESPONSE.match(self.path)
        if match is None:
            self._refuse(404, "NotFound", f"no such resource: {self.path}")
            return
        request_id, kind = match.groups()
        with state.cond:
            if not state.in_flight:
                self._refuse(403, "InvalidStateTransition", "no invocation is in flight")
                return
            if request_id not in state.in_flight:
                self._refuse(400, "InvalidRequestID", "Invalid request ID")
                return
            del state.in_flight[request_id]
            too_large = ""
            outcome: Posted
            if kind == "response" and len(body) > MAX_RESPONSE_BYTES:
                too_large = (
                    f"Response payload size ({len(body)} bytes) exceeded maximum allowed "
                    f"payload size ({MAX_RESPONSE_BYTES} bytes)."
                )
                outcome = FunctionError(request_id, "Function.ResponseSizeTooLarge", too_large)
            elif kind == "response":
                ctype = self.headers.get("Content-Type") or "application/json"
                outcome = Response(request_id, body, ctype)
            else:
                error_type, message, trace = _error_fields(
                    body, self.headers.get(ERROR_TYPE_HEADER)
                )
                outcome = FunctionError(request_id, error_type, message, trace, body)
            state.posted[request_id] = outcome
            state.cond.notify_all()
        if too_large:
            self._refuse(413, "RequestEntityTooLarge", too_large)
        else:
            self._send(202, b'{"status":"OK"}', {"Content-Type": "application/json"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: _State) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A runtime killed mid-request (timeout, kill) resets its connection: expected.
        log.debug("runtime api: connection from %s failed", client_address, exc_info=True)


class RuntimeAPI:
    """The Runtime API of one execution environment, served on ``127.0.0.1`` (port 0).

    ``address`` (``host:port``) is what the environment gets as
    ``AWS_LAMBDA_RUNTIME_API``. The emulator :meth:`hand`\\ s an invocation in and
    :meth:`wait`\\ s for what the runtime posted; :meth:`process_exited` tells it that
    the runtime is gone, so that nobody waits for an answer that cannot come.
    """

    def __init__(self) -> None:
        self._state = _State()
        self._server = _Server(self._state)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="lambda-runtime-api", daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def ready(self) -> bool:
        """Whether the runtime has asked for an invocation (its init phase is over)."""
        with self._state.cond:
            return self._state.ready

    @property
    def init_error(self) -> InitError | None:
        with self._state.cond:
            return self._state.init_error

    def hand(self, invocation: Invocation) -> None:
        """Queue an invocation for the runtime's next ``GET /next``."""
        with self._state.cond:
            self._state.queue.append(invocation)
            self._state.cond.notify_all()

    def wait_ready(self, timeout: float | None) -> bool:
        """Wait until the runtime asks for work; False on an init error, exit or timeout."""
        state = self._state
        with state.cond:
            state.cond.wait_for(
                lambda: state.ready or state.init_error is not None or state.gone, timeout
            )
            return state.ready

    def wait(self, request_id: str, timeout: float | None) -> Posted | None:
        """What the runtime posted for ``request_id`` (an init error counts), or None when
        nothing came within ``timeout`` seconds or the runtime is gone."""
        state = self._state
        with state.cond:
            state.cond.wait_for(
                lambda: request_id in state.posted or state.init_error is not None or state.gone,
                timeout,
            )
            if request_id in state.posted:
                return state.posted.pop(request_id)
            # An invocation that never reached the runtime is withdrawn.
            state.queue = deque(inv for inv in state.queue if inv.request_id != request_id)
            state.in_flight.pop(request_id, None)
            return state.init_error

    def process_exited(self) -> None:
        """The runtime process is gone: wake every waiter (no answer will come)."""
        with self._state.cond:
            self._state.gone = True
            self._state.cond.notify_all()

    def close(self) -> None:
        """Stop serving; blocked ``GET /next`` calls are answered 500."""
        self.process_exited()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> RuntimeAPI:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
