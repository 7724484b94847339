"""Section dispatch (issue 17 item 2): dispatch from inside AWS.

Two rows. The client's requests to dispatch 10,000 chunk-1 tasks remotely (one plan,
one Invoke; target at most 10), against the client's own dispatch (a PUT a task). And
the time from ``submit`` to the last task queued, remote against the client's own
dispatch in the same run (target: no worse; both are bounded by the same local S3).

"Queued" is measured where it happens: the emulator counts the events it receives (one
per task object PUT, trigger="s3", and one per dispatcher), read every 5 ms; the job is
cancelled once the last task is queued (the figure is the dispatch's, not the tasks').
Each measurement has an emulator of its own (its own bucket and function on the one
server), stopped at once after it, so no queued task of one measurement runs in another.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

from dolambda import JobCancelled, LambdaBackend, foreach
from dolambda._backends.lambda_ import dispatch as _dispatch
from dolambda._wire.events import DispatchRange, tree_size
from dolambda.emulator import Emulator
from tests.benchmarks import workloads
from tests.benchmarks._common import Row, Server, log

SECTION = "17.2 remote dispatch"
#: the function's timeout (a dispatcher's share is MAX_SPAN here: 1,000 tasks)
TIMEOUT = 60.0


def _emulator(server: Server) -> Emulator:
    name = f"bench-dispatch-{uuid.uuid4().hex[:8]}"
    return Emulator(
        workers=2,
        endpoint_url=server.url,
        bucket=name,
        function_name=name,
        discovery="events" if server.events else "poll",
        timeout=TIMEOUT,
    )


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.005)


def _dispatch_once(
    server: Server, n: int, mode: str, *, until_queued: bool
) -> tuple[float | None, dict[str, int], int]:
    """Submit ``n`` chunk-1 tasks with ``dispatch=mode``; seconds from submit to the last
    task queued (None unless ``until_queued``: then the job is cancelled as soon as the
    dispatch started), the client's requests, and the dispatchers used."""
    with _emulator(server) as emu:
        settings = {**emu.backend_settings(), "task_timeout": TIMEOUT, "backups": False}
        backend = LambdaBackend(**settings, dispatch=mode)
        loop = foreach(x=range(n)).chunk_size(1)
        extra = (
            0
            if mode == "client"
            else tree_size(DispatchRange("b", "k", "j", 0, n, _dispatch.dispatch_span(TIMEOUT)))
        )
        base = emu.stats.events
        t0 = time.perf_counter()
        job = loop.submit(workloads.noop, backend=backend, progress=False)
        seconds = None
        if until_queued:
            _wait(lambda: emu.stats.events - base >= n + extra, 900, f"{n} tasks queued")
            seconds = time.perf_counter() - t0
        else:  # (the requests only: stop the dispatchers once the Invoke is out)
            _wait(lambda: emu.stats.events - base >= 1, 120, "the dispatch to start")
        job.cancel()
        with contextlib.suppress(JobCancelled):
            job.result(timeout=120)
        requests = dict(job.stats.client_s3_requests)
        # (a GET of a result is the gather's: what is left is the package record's)
        requests["get (not a result)"] = requests.pop("get", 0) - len(job.stats.tasks)
        return seconds, requests, job.stats.dispatchers


def _dispatch_requests(requests: dict[str, int]) -> int:
    """The requests that dispatched: PUTs (less the cancel marker the stop wrote),
    Invokes, and the GET of the function's package record (does it dispatch remotely?)
    and any HEAD ("other": of a large body); the gather's LISTs and result GETs and the cleanup's
    DeleteObjects are not."""
    return (
        requests.get("put", 0)
        - 1
        + requests.get("invoke", 0)
        + requests.get("get (not a result)", 0)
        + requests.get("other", 0)
    )


def dispatch_section(server: Server, quick: bool) -> list[Row]:
    """The section's rows (run.py: ``bench_dispatch.dispatch_section(servers.moto(), quick)``)."""
    rows: list[Row] = []
    big = 10_000
    _, remote_requests, dispatchers = _dispatch_once(server, big, "remote", until_queued=False)
    sent = _dispatch_requests(remote_requests)
    log(f"dispatch: {big} tasks remotely: {remote_requests}, {dispatchers} dispatchers")
    rows.append(
        Row(
            SECTION,
            f"client requests to dispatch {big:,} chunk-1 tasks remotely",
            sent,
            "requests",
            baseline_name="the client's own dispatch (a PUT a task, and the job's objects)",
            baseline_value=big + 4,
            target="value <= 10",
            note=(
                f"PUT manifest, body, code archive, dispatch plan, plan.json; GET the "
                f"function's package record and the bucket's notification check (once a "
                f"backend); 1 Invoke "
                f"({remote_requests}); {dispatchers} dispatchers in the function"
            ),
        )
    )
    n = 2_000 if quick else big
    times = {}
    for mode in ("client", "remote"):
        seconds, requests, _ = _dispatch_once(server, n, mode, until_queued=True)
        assert seconds is not None
        times[mode] = seconds
        log(f"dispatch: {n} tasks, {mode}: last queued after {seconds:.2f}s ({requests})")
    rows.append(
        Row(
            SECTION,
            f"submit to the last of {n:,} tasks queued, remote dispatch",
            times["remote"],
            "s",
            baseline_name="the client's own dispatch",
            baseline_value=times["client"],
            target="ratio <= 1",
            note="both bounded by the same local S3 server; on AWS see docs/scaling.md",
        )
    )
    return rows
