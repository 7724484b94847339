"""One emulated Lambda execution environment: ``python -m dolambda.emulator.worker``.

Like the Python runtime, it imports the handler module once (``_HANDLER`` =
``module.function``, found in ``LAMBDA_TASK_ROOT``) and then serves invocations
one at a time; module globals persist between them (warm reuse).

Protocol with the emulator: one JSON object per line. The emulator writes
``{"request_id", "event", "deadline_ms", "invoked_function_arn"}`` to stdin;
we answer on the original stdout (saved before stdout is pointed at stderr, so
the handler's prints become log lines, as in CloudWatch)::

    {"type": "ready", "init_ms": ...}                       once, after the import
    {"type": "init_error", "errorType": ..., "errorMessage": ...}
    {"type": "result", "request_id": ..., "ok": true, "payload": <json text>,
     "cold": bool, "duration_ms": ..., "max_rss_mb": ...}
    {"type": "result", ..., "ok": false, "errorType": ..., "errorMessage": ..., "stackTrace": [...]}

The process exits when stdin closes. Being killed (timeout, memory) is the
emulator's doing.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
import traceback
from typing import IO, Any


class LambdaContext:
    """The context object the AWS Python runtime passes to the handler."""

    def __init__(self, request_id: str, deadline_ms: int, invoked_function_arn: str) -> None:
        self.aws_request_id = request_id
        self.invoked_function_arn = invoked_function_arn
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        # a string, as in the AWS runtime (it comes from AWS_LAMBDA_FUNCTION_MEMORY_SIZE)
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity: Any = None
        self.client_context: Any = None
        self.tenant_id: str | None = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))

    def __repr__(self) -> str:
        return (
            f"LambdaContext(aws_request_id={self.aws_request_id!r}, "
            f"function_name={self.function_name!r}, "
            f"memory_limit_in_mb={self.memory_limit_in_mb!r})"
        )


def _send(out: IO[str], message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _error(exc: BaseException) -> dict[str, Any]:
    return {
        "errorType": type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }


def _limit_address_space() -> None:
    """A backstop against runaway allocations; the emulator's RSS watch is the real limit."""
    text = os.environ.get("DOLAMBDA_EMULATOR_RLIMIT_AS_MB")
    if not text:
        return
    limit = int(text) * 1024 * 1024
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError):  # pragma: no cover - platform without RLIMIT_AS
        pass


def main() -> None:
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # the handler's prints go to the log stream
    _limit_address_space()
    task_root = os.environ.get("LAMBDA_TASK_ROOT") or os.getcwd()
    if task_root not in sys.path:
        sys.path.insert(0, task_root)
    t0 = time.perf_counter()
    try:
        module_name, _, function_name = os.environ.get(
            "_HANDLER", "lambda_function.lambda_handler"
        ).rpartition(".")
        handler = getattr(importlib.import_module(module_name), function_name)
    except Exception as exc:
        traceback.print_exc()
        _send(out, {"type": "init_error", **_error(exc)})
        sys.exit(1)
    _send(out, {"type": "ready", "init_ms": (time.perf_counter() - t0) * 1000})

    cold = True
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        request_id = str(message["request_id"])
        context = LambdaContext(
            request_id, int(message["deadline_ms"]), str(message.get("invoked_function_arn", ""))
        )
        started = time.perf_counter()
        answer: dict[str, Any] = {"type": "result", "request_id": request_id, "cold": cold}
        cold = False
        try:
            result = handler(message["event"], context)
            try:
                payload = json.dumps(result)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"Unable to marshal response: {exc}") from exc
            answer.update(ok=True, payload=payload)
        except Exception as exc:
            error = _error(exc)
            print(f"[ERROR] {error['errorType']}: {error['errorMessage']}", file=sys.stderr)
            traceback.print_exc()
            answer.update(ok=False, **error)
        sys.stdout.flush()
        sys.stderr.flush()
        answer["duration_ms"] = (time.perf_counter() - started) * 1000
        answer["max_rss_mb"] = _max_rss_mb()
        _send(out, answer)


if __name__ == "__main__":
    main()
