"""Lambda Invoke for ``trigger="invoke"``: one asynchronous ``Invoke`` per task.

The payload is ``{"bucket", "key", "task": <base64, when small>}`` (what
:func:`dolambda._aws.worker.task_records` reads). ``InvocationType="Event"``:
Lambda queues the event and answers at once; the worker writes the result to
S3 as for an S3-triggered task. Errors become dolambda errors through the one
table in :mod:`dolambda._aws.errors`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from dolambda._aws.errors import translated
from dolambda._errors import InvalidArgument

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
    ) -> None:
        self.client = client  # None when the run was opened without Lambda (trigger="s3")
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
