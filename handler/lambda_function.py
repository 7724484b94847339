"""The AWS Lambda entry point: S3 events (or direct invokes) -> the shared worker.

Environment: DOLAMBDA_SIGNING_KEY (hex or text), DOLAMBDA_PREFIX (default
"dolambda"), optionally DOLAMBDA_BUCKET to refuse events from other buckets,
and AWS_ENDPOINT_URL_S3 for a local S3 (the emulator).
"""

from __future__ import annotations

import os
from typing import Any

import boto3

from dolambda._worker import WorkerState, process_s3_task, signing_key_from_env, task_records

_state = WorkerState()  # warm containers keep the loaded job (manifest + body)
_s3: Any = None


def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    global _s3
    if _s3 is None:
        _s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or None)
    prefix = os.environ.get("DOLAMBDA_PREFIX", "dolambda")
    only_bucket = os.environ.get("DOLAMBDA_BUCKET") or None
    key = signing_key_from_env()
    outcomes: dict[str, int] = {}
    for bucket, object_key, inline in task_records(event):
        if only_bucket is not None and bucket != only_bucket:
            print(f"dolambda: ignoring event from bucket {bucket!r} (serving {only_bucket!r})")
            what = "ignored"
        elif key is None:
            print("dolambda: DOLAMBDA_SIGNING_KEY is not set; refusing to run anything")
            what = "no-key"
        else:
            what = process_s3_task(
                _s3,
                bucket,
                object_key,
                prefix=prefix,
                signing_key=key,
                state=_state,
                context=context,
                inline_task=inline,
            )
        outcomes[what] = outcomes.get(what, 0) + 1
    return {"outcomes": outcomes}
