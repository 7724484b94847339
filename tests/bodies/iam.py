"""Loop bodies the IAM tests send to the emulator's isolated workers (no pytest here: the
module travels with the job as the user's own code does)."""

from __future__ import annotations

import os


def square(x: int) -> int:
    return x * x


def credentials_seen(x: int) -> tuple[str, bool, str]:
    """What the worker's environment holds: the access key's kind, whether a session
    token is set, and the region (Lambda sets the role's temporary credentials)."""
    key = os.environ.get("AWS_ACCESS_KEY_ID", "")
    return key[:4], bool(os.environ.get("AWS_SESSION_TOKEN")), os.environ.get("AWS_REGION", "")
