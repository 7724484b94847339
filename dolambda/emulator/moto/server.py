"""A moto server whose Lambda hands events to the dolambda emulator instead of Docker.

Run as ``python -m dolambda.emulator.moto --port 0`` (:func:`~dolambda.emulator.moto.launch_moto`
does this); it prints ``DOLAMBDA-MOTO-READY <port>`` once it listens on 127.0.0.1.

Two patches on moto, both at the point where moto would run a function:

* ``moto.s3.notifications._invoke_awslambda`` (a bucket notification matched a
  ``LambdaFunctionConfiguration``) and ``LambdaFunction.invoke`` (the ``Invoke``
  API) put the event in a per-function mailbox instead of starting a container.
  ``Event`` invocations return 202 at once; ``RequestResponse`` ones wait for
  the emulator's answer (up to the function timeout + 30 s); ``DryRun`` does nothing.
* ``moto.s3.notifications._get_s3_event`` builds the full AWS record
  (``userIdentity``, ``requestParameters``, ``responseElements``, ``sequencer``...).

The emulator long-polls the mailbox over HTTP, next to S3 on the same port::

    GET  /_dolambda/ping                                     -> {"dolambda": 1}
    GET  /_dolambda/poll?function=NAME&region=R&wait=S&max=N -> {"events": [...]}
    POST /_dolambda/reply  {"id": ..., "payload": "...", "error": false}
    POST /_dolambda/account {"concurrent_executions": N}    (GetAccountSettings' quota)

Lambda's ``GetAccountSettings``, which moto lacks, is answered in front of moto too.

An event taken from the mailbox belongs to the emulator (moto keeps no copy).

S3 and Lambda requests signed with credentials that moto's STS issued for a role
(``AssumeRole``: the emulator's workers act as the function's role) are authorized
against that role's policies before moto sees them (:mod:`dolambda.emulator.moto.authorize`;
a Lambda ``Invoke`` needs ``lambda:InvokeFunction`` on the function, any other Lambda
action is denied): a denied S3 one is S3's ``403 AccessDenied``, and a GET or HEAD of
a missing key is 403, not 404, unless the role may list the bucket, as on S3. Every
other request is let through as moto lets everything through.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any
from urllib.parse import parse_qs

from dolambda.emulator.events import API, s3_record
from dolambda.emulator.moto import READY
from dolambda.emulator.moto.authorize import S3Request, allowed, s3_request

#: the request bytes Lambda's Invoke accepts: 1 MB for ``InvocationType="Event"`` (since
#: October 2025; 256 KB before), 6 MB for ``RequestResponse``. Lambda answers 413
#: ``RequestEntityTooLargeException`` past them, with these messages.
#: https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html
ASYNC_PAYLOAD_LIMIT = 1024 * 1024
SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024

StartResponse = Callable[..., Any]

#: GetAccountSettings (``GET /2016-08-19/account-settings``), which moto lacks, answered
#: from here: AccountLimit.ConcurrentExecutions is this quota (AWS's default is 1,000;
#: new accounts get less), UnreservedConcurrentExecutions what the functions' reserved
#: concurrency leaves of it. ``POST /_dolambda/account {"concurrent_executions": N}``
#: sets it (``Emulator(account_concurrency=N)`` does).
#: https://docs.aws.amazon.com/lambda/latest/api/API_GetAccountSettings.html
ACCOUNT_SETTINGS_PATH = re.compile(r"^/2016-08-19/account-settings/?$")
ACCOUNT = {"concurrent_executions": 1000}

#: CreateFunction and UpdateFunctionCode requests (the zip base64'd in JSON) that Lambda
#: refuses, as it says: "Request must be smaller than 69905067 bytes for the ... operation"
#: (its "50 MB zipped" direct-upload quota, once base64'd). moto takes any size.
CODE_REQUEST_LIMIT = 69_905_067
#: Lambda's Invoke: ``POST /2015-03-31/functions/<name, ARN or partial ARN>/invocations``
INVOKE_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations/?$")
CODE_REQUESTS = (
    ("POST", re.compile(r"^/2015-03-31/functions/?$"), "CreateFunction"),
    ("PUT", re.compile(r"^/2015-03-31/functions/[^/]+/code/?$"), "UpdateFunctionCode"),
)


class Mailbox:
    """Pending invocations per function, and the answers to synchronous ones."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queues: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
        self._replies: dict[str, dict[str, Any] | None] = {}

    def put(self, function: str, item: dict[str, Any]) -> None:
        with self._cond:
            self._queues[function].append(item)
            self._cond.notify_all()

    def take(self, function: str, wait: float, limit: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + wait
        with self._cond:
            queue = self._queues[function]
            while not queue:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(remaining)
            return [queue.popleft() for _ in range(min(limit, len(queue)))]

    def call(self, function: str, item: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """Queue a synchronous invocation and wait for its answer (None: no answer in time)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._replies[item["id"]] = None
            self._queues[function].append(item)
            self._cond.notify_all()
            while self._replies.get(item["id"]) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._replies.pop(item["id"], None)

    def reply(self, answer: dict[str, Any]) -> bool:
        with self._cond:
            if answer.get("id") not in self._replies:
                return False
            self._replies[answer["id"]] = answer
            self._cond.notify_all()
            return True


MAILBOX = Mailbox()


def function_key(region: str, name: str) -> str:
    return f"{region}/{name}"


def _item(
    source: str, payload: str, reply: bool = False, version: str = "$LATEST", memory: int = 0
) -> dict[str, Any]:
    """A mailbox entry; ``version`` and ``memory`` are those of the version invoked (an
    alias resolves to one: a memory tier runs with its version's MemorySize)."""
    return {
        "id": uuid.uuid4().hex,
        "source": source,
        "payload": payload,
        "reply": reply,
        "version": version,
        "memory": memory,
    }


# --------------------------------------------------------------------------- moto patches


def patch_lambda_qualifiers() -> None:
    """Where moto's Lambda API differs from Lambda's for versions and aliases (the memory
    tiers): applied by the emulator's server, and by the tests' plain moto server."""
    from moto.awslambda import models as lambda_models
    from moto.awslambda.responses import LambdaResponse

    # moto's Invoke reads the query parameter "qualifier", but the API's (and boto3's) is
    # "Qualifier": an Invoke of an alias or version ran $LATEST. Lambda runs the version
    # the qualifier names: https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html
    moto_invoke = LambdaResponse.invoke

    def invoke_qualified(self: Any) -> Any:
        named = self.querystring.get("Qualifier")
        if named and not self.querystring.get("qualifier"):
            self.querystring["qualifier"] = named
        return moto_invoke(self)

    setattr(LambdaResponse, "invoke", invoke_qualified)  # noqa: B010

    # An event-invoke config belongs to a function, version or alias (the Qualifier);
    # moto ignores the qualifier (every config lands on $LATEST), and a version it
    # publishes copies $LATEST's config, where Lambda's new version has none (so Lambda's
    # defaults, 2 retries, apply to it):
    # https://docs.aws.amazon.com/lambda/latest/api/API_PutFunctionEventInvokeConfig.html
    from urllib.parse import unquote

    from moto.awslambda.exceptions import UnknownEventConfig
    from moto.core.responses import ActionResult

    def _qualified(response: Any) -> Any:
        name = unquote(response.path.rsplit("/", 2)[1])
        qualifier = (response.querystring.get("Qualifier") or [None])[0]
        return response.backend.get_function(name, qualifier)

    def put_event_invoke_config(self: Any) -> Any:
        fn = _qualified(self)
        config = lambda_models.EventInvokeConfig(fn.function_arn, fn.last_modified, self.json_body)
        fn.event_invoke_config = [config]
        return ActionResult(config.response())

    def get_event_invoke_config(self: Any) -> Any:
        fn = _qualified(self)
        if not fn.event_invoke_config:
            raise UnknownEventConfig(fn.function_arn)
        return ActionResult(fn.event_invoke_config[0].response())

    setattr(LambdaResponse, "put_function_event_invoke_config", put_event_invoke_config)  # noqa: B010
    setattr(LambdaResponse, "get_function_event_invoke_config", get_event_invoke_config)  # noqa: B010
    moto_publish = lambda_models.LambdaBackend.publish_version

    def publish_version(self: Any, function_name: str, description: str = "") -> Any:
        version = moto_publish(self, function_name, description)
        if version is not None and not getattr(version, "_dolambda_published", False):
            version.event_invoke_config = []  # a new version has no config of its own
            setattr(version, "_dolambda_published", True)  # noqa: B010
        return version

    setattr(lambda_models.LambdaBackend, "publish_version", publish_version)  # noqa: B010


def patch_moto() -> None:
    from moto.awslambda import models as lambda_models
    from moto.awslambda.exceptions import LambdaClientError
    from moto.awslambda.utils import get_backend
    from moto.s3 import notifications

    def get_s3_event(
        event_name: Any, bucket: Any, key: Any, notification_id: str
    ) -> dict[str, list[dict[str, Any]]]:
        name = event_name.value if isinstance(event_name, Enum) else str(event_name)
        versioned = bool(getattr(bucket, "is_versioned", False))
        return {
            "Records": [
                s3_record(
                    region=bucket.region_name,
                    bucket=bucket.name,
                    key=key.name,
                    size=key.size,
                    etag=key.etag,
                    configuration_id=notification_id,
                    event_name=name,
                    version_id=str(key.version_id) if versioned else None,
                )
            ]
        }

    def invoke_awslambda(account_id: str, event_body: Any, fn_arn: str, region_name: str) -> None:
        try:
            fn = get_backend(account_id, region_name).get_function(fn_arn)
        except Exception:  # like S3: a notification for a missing function goes nowhere
            return
        MAILBOX.put(function_key(fn.region, fn.function_name), _item("s3", json.dumps(event_body)))

    def too_large(message: str) -> Exception:
        error = LambdaClientError("RequestEntityTooLargeException", message)
        error.code = 413
        return error

    def invoke(self: Any, body: Any, request_headers: Any, response_headers: Any) -> bytes:
        headers = request_headers or {}
        kind = headers.get("x-amz-invocation-type") or headers.get("X-Amz-Invocation-Type")
        kind = kind or "RequestResponse"
        size = len(body) if isinstance(body, bytes) else len((body or "").encode())
        if kind == "Event" and size > ASYNC_PAYLOAD_LIMIT:
            raise too_large(
                f"{size} byte payload is too large for the Event invocation type "
                f"(limit {ASYNC_PAYLOAD_LIMIT} bytes)"
            )
        if kind != "Event" and size > SYNC_PAYLOAD_LIMIT:
            raise too_large(
                f"Request must be smaller than {SYNC_PAYLOAD_LIMIT} bytes for the "
                "InvokeFunction operation"
            )
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        payload = body or "{}"
        try:
            json.loads(payload)
        except ValueError as exc:
            raise LambdaClientError(
                "InvalidRequestContentException", f"Could not parse request body into json: {exc}"
            ) from exc
        if kind == "DryRun":
            return b""
        target = function_key(self.region, self.function_name)
        # moto resolved the qualifier: ``self`` is the version invoked (an alias's too)
        version, memory = str(self.version or "$LATEST"), int(self.memory_size or 0)
        if kind == "Event":
            item = _item("invoke", payload, version=version, memory=memory)
            if version != "$LATEST":  # a version's own event-invoke config (or Lambda's 2)
                configs = getattr(self, "event_invoke_config", None) or []
                item["retries"] = int(
                    (configs[0].config if configs else {}).get("MaximumRetryAttempts", 2)
                )
            MAILBOX.put(target, item)
            return b""
        answer = MAILBOX.call(
            target,
            _item("invoke", payload, reply=True, version=version, memory=memory),
            float(self.timeout or 3) + 30,
        )
        if answer is None:
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps(
                {"errorType": "Emulator.NoAnswer", "errorMessage": "no emulator answered"}
            ).encode()
        if answer.get("throttled"):
            # beyond the function's concurrency Lambda runs nothing and answers 429
            # https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html
            throttle = LambdaClientError("TooManyRequestsException", "Rate Exceeded.")
            throttle.code = 429
            raise throttle
        if answer.get("error"):
            response_headers["x-amz-function-error"] = "Unhandled"
        return str(answer.get("payload", "null")).encode()

    # PutFunctionEventInvokeConfig replaces the function's config ("If a configuration
    # already exists for a function ... this operation overwrites it"); moto appends and
    # GetFunctionEventInvokeConfig keeps answering with the first one:
    # https://docs.aws.amazon.com/lambda/latest/api/API_PutFunctionEventInvokeConfig.html
    def put_function_event_invoke_config(
        self: Any, function_name: str, config: dict[str, Any]
    ) -> dict[str, Any]:
        fn = self.get_function(function_name)
        event_config = lambda_models.EventInvokeConfig(fn.function_arn, fn.last_modified, config)
        fn.event_invoke_config = [event_config]
        return dict(event_config.response())

    patch_lambda_qualifiers()
    patch_speed()
    notifications._get_s3_event = get_s3_event
    notifications._invoke_awslambda = invoke_awslambda
    setattr(lambda_models.LambdaFunction, "invoke", invoke)  # noqa: B010
    setattr(  # noqa: B010
        lambda_models.LambdaBackend,
        "put_function_event_invoke_config",
        put_function_event_invoke_config,
    )


def patch_speed() -> None:
    """What moto repeats on every request and need not: its server looks up each
    request's backend in the list of moto's packages, which it reads from the disk each
    time (``os.listdir`` and a ``stat`` of every entry: ~90 system calls, ~2.7 ms of
    the ~7 ms an S3 GET took here). The list cannot change while the server runs."""
    from moto import backends

    original = backends.list_of_moto_modules
    if getattr(original, "_dolambda_cached", False):
        return
    names = tuple(original())

    def list_of_moto_modules() -> tuple[str, ...]:
        return names

    setattr(list_of_moto_modules, "_dolambda_cached", True)  # noqa: B010
    backends.list_of_moto_modules = list_of_moto_modules


# --------------------------------------------------------------------------- HTTP


def code_request_too_large(
    environ: dict[str, Any], path: str
) -> Callable[[StartResponse], Iterable[bytes]] | None:
    """Lambda's 413 for a function-code request past :data:`CODE_REQUEST_LIMIT` (None: fine)."""
    size = int(environ.get("CONTENT_LENGTH") or 0)
    if size <= CODE_REQUEST_LIMIT or "/lambda/" not in str(environ.get("HTTP_AUTHORIZATION")):
        return None
    method = environ.get("REQUEST_METHOD")
    operation = next((op for m, rx, op in CODE_REQUESTS if m == method and rx.match(path)), None)
    if operation is None:
        return None
    stream = environ["wsgi.input"]
    while size > 0:  # read it all: a client cut off mid-send sees a reset, not the answer
        chunk = stream.read(min(size, 1 << 20))
        if not chunk:
            break
        size -= len(chunk)
    body = json.dumps(
        {
            "Type": "User",
            "message": f"Request must be smaller than {CODE_REQUEST_LIMIT} bytes for the "
            f"{operation} operation",
        }
    ).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("x-amzn-ErrorType", "RequestEntityTooLargeException"),
    ]

    def answer(start_response: StartResponse) -> Iterable[bytes]:
        start_response("413 Request Entity Too Large", headers)
        return [body]

    return answer


def account_settings(environ: dict[str, Any]) -> dict[str, Any]:
    """Lambda's GetAccountSettings answer for the caller's account and region."""
    from moto.awslambda.models import lambda_backends
    from moto.iam.models import get_account_id_from

    # SigV4: "... Credential=<key id>/<date>/<region>/lambda/aws4_request, ..."
    scope = re.search(r"Credential=([^/]+)/[^/]+/([^/]+)/", str(environ.get("HTTP_AUTHORIZATION")))
    key, region = scope.groups() if scope else ("", "us-east-1")
    functions = list(lambda_backends[get_account_id_from(key)][region].list_functions())
    limit = ACCOUNT["concurrent_executions"]
    reserved = sum(int(f.reserved_concurrency or 0) for f in functions)
    return {
        "AccountLimit": {
            "TotalCodeSize": 80_530_636_800,
            "CodeSizeUnzipped": 262_144_000,
            "CodeSizeZipped": 52_428_800,
            "ConcurrentExecutions": limit,
            "UnreservedConcurrentExecutions": max(limit - reserved, 0),
        },
        "AccountUsage": {
            "TotalCodeSize": sum(int(f.code_size or 0) for f in functions),
            "FunctionCount": len(functions),
        },
    }


class App:
    """moto's WSGI app with the mailbox endpoints and the role's S3 authorization in front."""

    def __init__(self, inner: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]) -> None:
        self.inner = inner

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        if ACCOUNT_SETTINGS_PATH.match(path) and environ.get("REQUEST_METHOD") == "GET":
            body = json.dumps(account_settings(environ)).encode()
            start_response(
                "200 OK",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        refused = code_request_too_large(environ, path)
        if refused is not None:
            return refused(start_response)
        if not path.startswith(API + "/"):
            session = assumed_role_session(environ)
            if session is None:
                return self.inner(environ, start_response)
            if _credential(environ)[1] == "lambda":
                return self.lambda_authorized(session, environ, start_response)
            return self.authorized(session, environ, start_response)
        try:
            status, data = self.handle(path[len(API) :], environ)
        except Exception as exc:  # a bad request must not take the server down
            status, data = "400 Bad Request", {"error": f"{type(exc).__name__}: {exc}"}
        body = json.dumps(data).encode()
        start_response(
            status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]

    def handle(self, path: str, environ: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        query = {k: v[0] for k, v in parse_qs(str(environ.get("QUERY_STRING", ""))).items()}
        if path == "/ping":
            return "200 OK", {"dolambda": 1, "pid": os.getpid()}
        if path == "/poll":
            target = function_key(query.get("region", "us-east-1"), query["function"])
            wait = min(max(float(query.get("wait", "0")), 0.0), 20.0)
            events = MAILBOX.take(target, wait, max(1, int(query.get("max", "10"))))
            return "200 OK", {"events": events}
        if path == "/account":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            asked = json.loads(environ["wsgi.input"].read(length) or b"{}")
            limit = asked["concurrent_executions"]
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError(f"concurrent_executions must be a positive integer, got {limit!r}")
            ACCOUNT["concurrent_executions"] = limit
            return "200 OK", dict(ACCOUNT)
        if path == "/reply":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            answer = json.loads(environ["wsgi.input"].read(length) or b"{}")
            return "200 OK", {"delivered": MAILBOX.reply(answer)}
        return "404 Not Found", {"error": f"no such endpoint {API}{path}"}

    # ── S3 as the role ──

    def authorized(
        self, session: Any, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        """Run an S3 request signed by the role's session only if its policies allow it."""
        token = environ.get("HTTP_X_AMZ_SECURITY_TOKEN") or _query_value(
            environ, "X-Amz-Security-Token"
        )
        if token != session.session_token:
            return s3_error(
                start_response,
                environ,
                "InvalidToken",
                "The provided token is malformed or otherwise invalid.",
                "400 Bad Request",
            )
        body = b""
        method = str(environ.get("REQUEST_METHOD", "GET"))
        query = str(environ.get("QUERY_STRING", ""))
        if method == "POST" and "delete" in parse_qs(query, keep_blank_values=True):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = io.BytesIO(body)  # moto reads it again
        request = s3_request(method, _raw_path(environ), query, body=body)
        policies = role_policies(session)
        for action, resource, context in request.checks:
            if not allowed(policies, action, resource, context):
                return s3_error(
                    start_response,
                    environ,
                    "AccessDenied",
                    f"User: {assumed_role_arn(session)} is not authorized to perform: {action} "
                    f'on resource: "{resource}" because no identity-based policy allows the '
                    f"{action} action",
                    "403 Forbidden",
                )
        for action, resource in kms_checks(request, method, environ):
            if not allowed(policies, action, resource, {}):
                return s3_error(
                    start_response,
                    environ,
                    "AccessDenied",
                    f"User: {assumed_role_arn(session)} is not authorized to perform: {action} "
                    f"on resource: {resource} because no identity-based policy allows the "
                    f"{action} action (the object is encrypted with this KMS key)",
                    "403 Forbidden",
                )
        if not request.reads_object:
            return self.inner(environ, start_response)
        return self.read_object(request, policies, environ, start_response, session)

    def lambda_authorized(
        self, session: Any, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        """A Lambda request signed by the role's session: an ``Invoke`` runs only if its
        policies allow ``lambda:InvokeFunction`` on the function's ARN (qualified when
        the request names a version or alias); any other Lambda action is denied (the
        worker calls no other)."""
        path = str(environ.get("PATH_INFO", ""))
        token = environ.get("HTTP_X_AMZ_SECURITY_TOKEN")
        match = INVOKE_PATH.match(path)
        action = "lambda:InvokeFunction" if match else "lambda:" + path.strip("/")
        resource = "*"
        if match:
            region = _credential_region(environ)
            name, _, qualifier = match.group(1).rpartition(":function:")[2].partition(":")
            qualifier = qualifier or (_query_value(environ, "Qualifier") or "")
            resource = f"arn:aws:lambda:{region}:{session.account_id}:function:{name}"
            resource += f":{qualifier}" if qualifier and qualifier != "$LATEST" else ""
        if (
            token == session.session_token
            and match
            and allowed(role_policies(session), action, resource, {})
        ):
            return self.inner(environ, start_response)
        message = (
            f"User: {assumed_role_arn(session)} is not authorized to perform: {action} on "
            f"resource: {resource} because no identity-based policy allows the {action} action"
        )
        body = json.dumps({"Type": "User", "message": message}).encode()
        start_response(
            "403 Forbidden",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("x-amzn-ErrorType", "AccessDeniedException"),
            ],
        )
        return [body]

    def read_object(
        self,
        request: S3Request,
        policies: list[Any],
        environ: dict[str, Any],
        start_response: StartResponse,
        session: Any,
    ) -> Iterable[bytes]:
        """A GET/HEAD of one object: S3 answers 404 for a missing key only to a principal
        allowed ``s3:ListBucket`` (with the key as ``s3:prefix``), 403 to any other."""
        seen: list[tuple[str, list[tuple[str, str]]]] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen.append((status, headers))
            return lambda data: None  # moto never uses write()

        body = self.inner(environ, capture)
        status, headers = seen[-1] if seen else ("500 Internal Server Error", [])
        bucket_arn = f"arn:{request.partition}:s3:::{request.bucket}"
        if status.startswith("404") and not allowed(
            policies, "s3:ListBucket", bucket_arn, {"s3:prefix": request.key}
        ):
            close = getattr(body, "close", None)
            if close is not None:
                close()
            return s3_error(
                start_response,
                environ,
                "AccessDenied",
                f"User: {assumed_role_arn(session)} is not authorized to perform: "
                f's3:ListBucket on resource: "{bucket_arn}" because no identity-based policy '
                "allows the s3:ListBucket action (S3 answers 403, not 404, for a missing key "
                "to a principal that may not list the bucket)",
                "403 Forbidden",
            )
        start_response(status, headers)
        return body


def kms_checks(request: S3Request, method: str, environ: dict[str, Any]) -> list[tuple[str, str]]:
    """What an object request needs of KMS besides S3: with SSE-KMS, S3 calls KMS as the
    requester, so writing an object needs ``kms:GenerateDataKey`` and reading one
    ``kms:Decrypt`` on its key (https://docs.aws.amazon.com/AmazonS3/latest/userguide/
    UsingKMSEncryption.html, "Permissions"). The key of a write is the request's
    ``x-amz-server-side-encryption-aws-kms-key-id`` or the bucket's default; of a read,
    the one the object was written with. The AWS managed ``aws/s3`` key needs no grant
    (its key policy lets the account's principals use it through S3)."""
    if not request.key or method not in ("GET", "HEAD", "PUT", "POST"):
        return []
    action, _resource, _ = request.checks[0]
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    try:
        bucket = backend.get_bucket(request.bucket)
    except Exception:  # no such bucket: S3's own answer follows
        return []
    key_id: str | None = None
    if action == "s3:PutObject":
        if environ.get("HTTP_X_AMZ_SERVER_SIDE_ENCRYPTION", "").startswith("aws:kms"):
            key_id = environ.get("HTTP_X_AMZ_SERVER_SIDE_ENCRYPTION_AWS_KMS_KEY_ID") or ""
        else:
            rule = ((bucket.encryption or {}).get("Rule") or {}).get(
                "ApplyServerSideEncryptionByDefault"
            ) or {}
            if str(rule.get("SSEAlgorithm", "")).startswith("aws:kms"):
                key_id = rule.get("KMSMasterKeyID") or ""
        need = "kms:GenerateDataKey"
    elif action in ("s3:GetObject", "s3:GetObjectVersion"):
        obj = bucket.keys.get(request.key)
        if obj is not None and str(obj.encryption or "").startswith("aws:kms"):
            key_id = obj.kms_key_id or ""
        need = "kms:Decrypt"
    else:
        return []
    if key_id is None:
        return []
    arn = _customer_key_arn(key_id, _credential_region(environ))
    return [(need, arn)] if arn else []


def _customer_key_arn(key_id: str, region: str) -> str | None:
    """The ARN of a customer managed KMS key, None for the AWS managed one (or none)."""
    if not key_id or key_id.endswith("alias/aws/s3"):
        return None
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.kms.models import kms_backends

    if key_id.startswith("arn:"):
        region = key_id.split(":")[3] or region
    try:
        key = kms_backends[DEFAULT_ACCOUNT_ID][region].describe_key(key_id)
    except Exception:  # a key KMS does not know: name what was asked for
        return key_id if key_id.startswith("arn:") else None
    if getattr(key, "key_manager", "CUSTOMER") == "AWS":
        return None
    return str(key.arn)


def _credential_region(environ: dict[str, Any]) -> str:
    auth = str(environ.get("HTTP_AUTHORIZATION", ""))
    scope = auth.partition("Credential=")[2].partition(",")[0].strip()
    if not scope:
        scope = _query_value(environ, "X-Amz-Credential") or ""
    parts = scope.split("/")
    return parts[2] if len(parts) >= 5 else "us-east-1"


def _query_value(environ: dict[str, Any], name: str) -> str | None:
    values = parse_qs(str(environ.get("QUERY_STRING", ""))).get(name)
    return values[0] if values else None


def _raw_path(environ: dict[str, Any]) -> str:
    """The request path as sent (percent-encoded; WSGI's PATH_INFO is decoded latin-1)."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        return str(raw).split("?", 1)[0]
    return str(environ.get("PATH_INFO", "")).encode("latin-1").decode("utf-8", "replace")


def _credential(environ: dict[str, Any]) -> tuple[str, str]:
    """``(access key id, service)`` of a SigV4-signed request (header or presigned URL)."""
    auth = str(environ.get("HTTP_AUTHORIZATION", ""))
    scope = auth.partition("Credential=")[2].partition(",")[0].strip()
    if not scope:
        scope = _query_value(environ, "X-Amz-Credential") or ""
    parts = scope.split("/")
    return (parts[0], parts[3]) if len(parts) >= 5 else ("", "")


def assumed_role_session(environ: dict[str, Any]) -> Any | None:
    """moto's STS session whose access key signed this S3 or Lambda request, or None
    (not a role's)."""
    key, service = _credential(environ)
    if service not in ("s3", "lambda") or not key:
        return None
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.sts.models import sts_backends

    for session in list(sts_backends[DEFAULT_ACCOUNT_ID]["aws"].assumed_roles):
        if session.access_key_id == key:
            return session
    return None


def assumed_role_arn(session: Any) -> str:
    account, role = session.account_id, str(session.role_arn).rsplit("/", 1)[-1]
    return f"arn:aws:sts::{account}:assumed-role/{role}/{session.session_name}"


def role_policies(session: Any) -> list[Any]:
    """The role's inline and attached policies, read at each request (a changed policy
    applies at once; a deleted role allows nothing)."""
    from moto.iam.models import iam_backends

    backend = iam_backends[session.account_id]["aws"]
    name = str(session.role_arn).rsplit("/", 1)[-1]
    try:
        role = backend.get_role(name)
    except Exception:  # the role is gone (destroy): its credentials allow nothing
        return []
    docs: list[Any] = list(role.policies.values())
    for managed in list(role.managed_policies.values()):
        docs += [v.document for v in managed.versions if v.is_default]
    return docs


def s3_error(
    start_response: StartResponse,
    environ: dict[str, Any],
    code: str,
    message: str,
    status: str,
) -> Iterable[bytes]:
    """S3's XML error (no body for HEAD, as S3 answers a HEAD)."""
    request_id = uuid.uuid4().hex[:16].upper()
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{_xml(message)}</Message>"
        f"<RequestId>{request_id}</RequestId><HostId>{request_id}</HostId></Error>"
    ).encode()
    head = environ.get("REQUEST_METHOD") == "HEAD"
    start_response(
        status,
        [
            ("Content-Type", "application/xml"),
            ("Content-Length", "0" if head else str(len(text))),
            ("x-amz-request-id", request_id),
        ],
    )
    return [] if head else [text]


def _xml(text: str) -> str:
    from xml.sax.saxutils import escape

    return escape(text, {'"': "&quot;"})


def _exit_when_parent_goes() -> None:
    """The emulator holds our stdin; when it dies (even by SIGKILL), we follow."""
    try:
        while sys.stdin.buffer.read(65536):
            pass
    finally:
        os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dolambda.emulator.moto")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--watch-stdin", action="store_true", help="exit when stdin closes")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    patch_moto()
    if not args.verbose:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = App(DomainDispatcherApplication(create_backend_app))
    server = make_server(args.host, args.port, app, True, request_handler=MotoRequestHandler)
    port = server.server_address[1]
    os.environ.setdefault("MOTO_PORT", str(port))
    if args.watch_stdin:
        threading.Thread(target=_exit_when_parent_goes, daemon=True).start()
    print(f"{READY} {port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
