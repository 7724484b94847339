"""S3 misbehaving: 503 SlowDown, 500 InternalError and dropped connections, for the client
(aiobotocore) and the workers (boto3 in the handler) alike, through tests/faults/proxy.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from dolambda.emulator import Emulator
from tests.faults.conftest import SUMMARY, Marks, backend_for, job_keys, run_job
from tests.faults.proxy import FaultProxy


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_url, seed=1234) as p:
        yield p


def test_s3_errors_and_dropped_connections(
    proxy: FaultProxy, make_emulator: Callable[..., Emulator], marks: Marks, moto_url: str
) -> None:
    # everything goes through the proxy: the emulator's setup and mailbox (never faulted),
    # the client's S3 calls and the workers' (AWS_ENDPOINT_URL_S3 is the emulator's endpoint)
    emu = make_emulator(endpoint_url=proxy.url, timeout=3.0)
    backend = backend_for(emu, retries=4)
    assert backend.endpoint_url == proxy.url
    proxy.set_faults(slowdown=0.12, internal=0.08, drop=0.05)
    try:
        _, job, row = run_job("S3 503/500/dropped (25%)", backend, marks, n=24, chunk=2)
    finally:
        proxy.set_faults()
    assert row.lost == row.duplicated == 0
    assert set(marks.counts()) == set(range(24))
    faults = proxy.stats.faults
    for caller in ("client", "worker"):
        assert proxy.stats.faulted(caller) > 0, (caller, faults)
    assert sum(n for (_, kind), n in faults.items() if kind == "drop") > 0
    assert job_keys(emu, job.id, moto_url) == []  # cleanup survived the faults too
    SUMMARY[-1]["outcome"] += (
        f" ({proxy.stats.faulted('client')} client + {proxy.stats.faulted('worker')} worker "
        "requests faulted)"
    )
