"""Lambda Invoke for ``trigger="invoke"``: one asynchronous ``Invoke`` per task.

The payload is ``{"bucket", "key", "task": <base64, when small>}`` (what
:func:`dolambda._aws.worker.task_records` reads). ``InvocationType="Event"``:
Lambda queues the event and answers at once; the worker writes the result to
S3 as for an S3-triggered task. Errors become dolambda errors through the one
table in :mod:`dolambda._aws.errors`.

For ``trigger="call"``, :meth:`Invoker.call` invokes synchronously
(``InvocationType="RequestResponse"``) through its own client, whose read timeout
exceeds the function's: the answer is the handler's response. Lambda does not queue a
synchronous invoke beyond the function's concurrency: it answers 429
``TooManyRequestsException`` ("ConcurrentInvocationLimitExceeded", or the function's
reserved limit) without running the function, so a throttled call is safe to send
again; it is, after a jittered exponential backoff, and counted in ``throttles``.
https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html and
https://docs.aws.amazon.com/lambda/latest/dg/lambda-concurrency.html
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError

from dolambda._aws.errors import Kind, kind_of, translated
from dolambda._errors import InvalidArgument

#: a throttled call waits a random time up to this many seconds, doubling per throttle
#: of the same call up to THROTTLE_MAX (full jitter)
THROTTLE_BASE, THROTTLE_MAX = 0.05, 2.0


class CallFailed(Exception):
    """A synchronous invoke got no answer (read timeout, connection lost): the task may
    or may not have run; the caller sends it again or reports it lost."""


#: Lambda's memory range, MB: https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html
LAMBDA_MEMORY = (128, 10240)
#: the larger memory tiers ``dolambda deploy`` publishes by default (MB, above the base)
DEFAULT_TIERS = (2048, 4096, 10240)
#: a tier's alias: ``mem-<MB>``, pointing at a published version of the one function
TIER_ALIAS_PREFIX = "mem-"


def tier_alias(memory_mb: int) -> str:
    """The alias of the function's ``memory_mb`` tier (a version carries its own
    MemorySize: https://docs.aws.amazon.com/lambda/latest/dg/configuration-versions.html)."""
    return f"{TIER_ALIAS_PREFIX}{memory_mb}"


def check_tiers(base_mb: int, tiers: object, who: str) -> tuple[int, ...]:
    """``tiers`` as sorted, distinct MB sizes above ``base_mb`` within Lambda's range;
    InvalidArgument (naming ``who``'s ``memory_tiers``) otherwise.

    >>> check_tiers(1024, [4096, 2048], "deploy")
    (2048, 4096)
    """
    if isinstance(tiers, (str, bytes)) or not hasattr(tiers, "__iter__"):
        raise InvalidArgument(f"{who}: memory_tiers must be a list of MB sizes, got {tiers!r}")
    out = []
    for mb in tiers:
        if isinstance(mb, bool) or not isinstance(mb, int):
            raise InvalidArgument(f"{who}: memory_tiers holds {mb!r}, not a whole number of MB")
        if not 0 < mb <= LAMBDA_MEMORY[1]:
            raise InvalidArgument(
                f"{who}: memory tier {mb} MB is out of Lambda's range "
                f"({LAMBDA_MEMORY[0]} to {LAMBDA_MEMORY[1]} MB)"
            )
        if mb <= base_mb:
            raise InvalidArgument(
                f"{who}: memory tier {mb} MB is not above the function's base memory "
                f"({base_mb} MB): tiers are the larger sizes a task moves up to"
            )
        out.append(mb)
    return tuple(sorted(set(out)))


class Invoker:
    """Asynchronous Invoke of one function through a pooled aioboto3 Lambda client."""

    def __init__(
        self,
        client: Any,
        function_name: str,
        *,
        bucket: str,
        region: str,
        count: Callable[[str], None],
        call_client: Any = None,
    ) -> None:
        self.client = client  # None when the run was opened without Lambda (trigger="s3")
        #: the synchronous client (trigger="call"; None otherwise)
        self.call_client = call_client
        #: synchronous invokes Lambda answered 429 (each was sent again after a backoff)
        self.throttles = 0
        self.function_name = function_name
        self.bucket = bucket
        self.region = region
        self._count = count

    async def invoke(self, payload: dict[str, Any], qualifier: str | None = None) -> None:
        """Send ``payload`` as one asynchronous invocation (counted as an "invoke") of the
        function, or of its version or alias ``qualifier`` (a memory tier)."""
        self._count("invoke")
        extra = {} if qualifier is None else {"Qualifier": qualifier}
        with translated(
            "client",
            action=f"invoking {self.function_name}",
            resource=f"bucket {self.bucket!r}",
            bucket=self.bucket,
            region=self.region,
            function=self.function_name,
        ):
            await self.client.invoke(
                FunctionName=self.function_name,
                InvocationType="Event",
                Payload=json.dumps(payload).encode(),
                **extra,
            )

    async def call(
        self, payload: dict[str, Any], qualifier: str | None = None
    ) -> tuple[bytes, str | None]:
        """Invoke synchronously (``qualifier``: a memory tier's alias, else ``$LATEST``);
        ``(response payload, function error or None)``.

        Each attempt is counted as a "call"; a 429 is waited out (jittered exponential
        backoff) and sent again for as long as it takes: Lambda ran nothing. A function
        error (``X-Amz-Function-Error``: the handler raised, or its runtime died or
        timed out) is returned with its payload, for the caller to judge.
        """
        body = json.dumps(payload).encode()
        extra = {"Qualifier": qualifier} if qualifier else {}
        ceiling = THROTTLE_BASE
        while True:
            self._count("call")
            try:
                response = await self.call_client.invoke(
                    FunctionName=self.function_name,
                    InvocationType="RequestResponse",
                    Payload=body,
                    **extra,
                )
                async with response["Payload"] as stream:
                    answer: bytes = await stream.read()
            except Exception as exc:
                if kind_of(exc) is Kind.THROTTLED:
                    self.throttles += 1
                    await asyncio.sleep(random.uniform(0, ceiling))
                    ceiling = min(ceiling * 2, THROTTLE_MAX)
                    continue
                if isinstance(exc, (HTTPClientError, BotoConnectionError, OSError, TimeoutError)):
                    raise CallFailed(f"{type(exc).__name__}: {exc}") from exc
                with translated(
                    "client",
                    action=f"calling {self.function_name}",
                    resource=f"bucket {self.bucket!r}",
                    bucket=self.bucket,
                    region=self.region,
                    function=self.function_name,
                ):
                    raise
                raise  # (translated re-raises) pragma: no cover
            error = response.get("FunctionError")
            return answer, (str(error) if error else None)
