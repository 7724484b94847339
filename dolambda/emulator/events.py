"""S3 event records in AWS's exact shape, and the wire between the patched moto and the emulator.

Pure functions with no moto import: the patched moto server (:mod:`dolambda.emulator.moto`)
and the emulator's polling discovery (:mod:`dolambda.emulator.intake`) build records here.
See https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html
"""

from __future__ import annotations

import base64
import itertools
import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

#: path prefix of the emulator's endpoints inside the moto server
API = "/_dolambda"
#: the principal that S3 events name (AWS shows the uploader's id; any stable value will do)
PRINCIPAL = "AWS:AIDAEMULATORDOLAMBDA"
OWNER = "A3EMULATORDOLAMBDA"

_seq_lock = threading.Lock()
_seq = itertools.count(int(time.time() * 1000) << 16)


def sequencer() -> str:
    """A hex string that grows with every event (S3's ordering hint for one key)."""
    with _seq_lock:
        return f"{next(_seq):018X}"


def event_time(at: float | None = None) -> str:
    """``2024-01-02T03:04:05.678Z``, as S3 writes it."""
    moment = datetime.fromtimestamp(time.time() if at is None else at, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def s3_record(
    *,
    region: str,
    bucket: str,
    key: str,
    size: int,
    etag: str,
    configuration_id: str,
    event_name: str = "ObjectCreated:Put",
    version_id: str | None = None,
    at: float | None = None,
) -> dict[str, Any]:
    """One record of an S3 event notification; ``key`` is the plain key (encoded here)."""
    obj: dict[str, Any] = {"key": quote_plus(key), "size": int(size), "eTag": etag.strip('"')}
    if version_id and version_id != "null":
        obj["versionId"] = version_id
    obj["sequencer"] = sequencer()
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": event_time(at),
        "eventName": event_name[3:] if event_name.startswith("s3:") else event_name,
        "userIdentity": {"principalId": PRINCIPAL},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {
            "x-amz-request-id": secrets.token_hex(8).upper(),
            "x-amz-id-2": base64.b64encode(secrets.token_bytes(48)).decode(),
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": configuration_id,
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": OWNER},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": obj,
        },
    }


def s3_event(**kwargs: Any) -> dict[str, Any]:
    """An event as S3 sends it to Lambda: one record per event."""
    return {"Records": [s3_record(**kwargs)]}
