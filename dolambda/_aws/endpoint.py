"""A local endpoint (the emulator, moto) that is not running fails at once, not after retries.

botocore retries a refused connection like any other (8 attempts with backoff: ~26 s
for ``dolambda jobs``), which is right for AWS but useless for ``127.0.0.1``, where a
refused connection means that nothing listens there. :func:`refused` tries one TCP
connection to a loopback endpoint before the clients are made.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

PROBE_TIMEOUT = 1.0  # seconds; a loopback connection is accepted or refused in microseconds


def loopback_address(endpoint_url: str | None) -> tuple[str, int] | None:
    """``(host, port)`` of an http(s) endpoint on this machine, else None."""
    if not endpoint_url:
        return None
    try:
        parts = urlsplit(endpoint_url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if host is None:
        return None
    if host != "localhost":
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return None
        except ValueError:
            return None
    return host, port or (443 if parts.scheme == "https" else 80)


def refused(endpoint_url: str | None) -> str | None:
    """For a loopback ``endpoint_url`` where nothing listens: the sentence to say; else None."""
    address = loopback_address(endpoint_url)
    if address is None:
        return None
    try:
        with socket.create_connection(address, timeout=PROBE_TIMEOUT):
            return None
    except OSError as exc:
        why = "connection refused" if isinstance(exc, ConnectionRefusedError) else str(exc)
        return (
            f"nothing answers at {endpoint_url} ({why}): is the emulator running? Start it "
            "with `dolambda emulator`, or check the endpoint URL"
        )
