"""Cancel under at-least-once delivery: no new iteration starts after cancel (beyond the
tasks already running), and only the cancel marker and late results remain."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from dolambda import foreach
from dolambda._errors import JobCancelled
from dolambda.emulator import Emulator
from tests.faults.conftest import Marks, Row, backend_for, job_keys, marking_body, record, wait_for


def test_cancel_with_duplicated_and_delayed_events(
    make_emulator: Callable[..., Emulator], marks: Marks
) -> None:
    workers, n = 2, 30
    emu = make_emulator(workers=workers, timeout=5.0, duplicate_events=True, event_delay=0.3)
    started = time.monotonic()
    job = (
        foreach(x=range(n))
        .chunk_size(1)
        .submit(marking_body(marks.path, 0.25), backend=backend_for(emu), progress=False)
    )
    wait_for(lambda: emu.stats.events >= n and job.progress.done >= 2, 30, "a running job")
    job.cancel()
    with pytest.raises(JobCancelled):
        job.result(timeout=30)
    at_cancel = marks.total()
    # every event (both copies of each) is handled: the late ones find their task gone
    wait_for(lambda: emu.wait_idle(0.2), 30, "the emulator to go idle")
    after = marks.total()
    done = job.progress.done
    record(
        Row(
            "cancel (duplicated + delayed events)",
            n,
            n - done,
            0,
            after,
            job.stats.retries,
            f"cancelled after {done}; {after - at_cancel} started after cancel",
            time.monotonic() - started,
        )
    )
    assert after - at_cancel <= workers  # only tasks that had already fetched their object
    assert after < n
    leftovers = [k for k in job_keys(emu, job.id) if not k.endswith("/cancel")]
    assert all("/results/" in k for k in leftovers), leftovers
    assert len(leftovers) <= workers * 2
