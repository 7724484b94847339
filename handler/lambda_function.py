"""The AWS Lambda entry point: S3 events (or direct invokes) -> the worker (dolambda._aws.worker).

Environment: DOLAMBDA_SIGNING_KEY (hex or text), DOLAMBDA_PREFIX (default
"dolambda"), optionally DOLAMBDA_BUCKET to refuse events from other buckets,
and AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL_LAMBDA for a local S3 and Lambda (the
emulator). DOLAMBDA_WATCHDOG=0 runs tasks in this process instead of the warm child
(dolambda._aws.watchdog) that lets the worker report a timeout, out-of-memory kill or
crash itself; DOLAMBDA_WATCHDOG_MARGIN (seconds, default 2) is how long before the
deadline the child is stopped. A remote dispatcher's event queues a job's tasks with
both clients (dolambda._aws.dispatcher), invoking this function (AWS_LAMBDA_FUNCTION_NAME).
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config

from dolambda._aws.dispatcher import THREADS
from dolambda._aws.percall import lighten
from dolambda._aws.watchdog import Watchdog, enabled_from_env
from dolambda._aws.worker import handle_event, signing_key_from_env
from dolambda._core.execute import WorkerState

_state = WorkerState()  # warm containers keep the loaded job (manifest + body)
_watchdog = Watchdog() if enabled_from_env() else None  # the warm child runs the tasks
# as many connections as a dispatcher has requests in flight (botocore's default is 10)
_config = Config(max_pool_connections=THREADS)
_s3: Any = None
_lambda: Any = None


def _lambda_client() -> Any:
    """The Lambda client, made on first use (a remote dispatcher's, or for its tasks)."""
    global _lambda
    if _lambda is None:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_LAMBDA") or None
        _lambda = boto3.client("lambda", endpoint_url=endpoint, config=_config)
    return _lambda


def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    global _s3
    if _s3 is None:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or None
        _s3 = boto3.client("s3", endpoint_url=endpoint, config=_config)
        lighten(_s3)  # (S3's endpoint rules once, not for each key; the User-Agent once)
    results: list[dict[str, str]] = []  # (trigger="call": the results, in the response)
    outcomes = handle_event(
        event,
        context,
        _s3,
        prefix=os.environ.get("DOLAMBDA_PREFIX", "dolambda"),
        signing_key=signing_key_from_env(),
        state=_state,
        only_bucket=os.environ.get("DOLAMBDA_BUCKET") or None,
        watchdog=_watchdog,
        results=results,
        lambda_client=_lambda_client,
        function_name=os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "dolambda"),
    )
    if results:
        return {"outcomes": outcomes, "results": results}
    return {"outcomes": outcomes}
