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

    async def invoke(self, payload: dict[str, Any]) -> None:
        """Send ``payload`` as one asynchronous invocation (counted as an "invoke")."""
        self._count("invoke")
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
            )
