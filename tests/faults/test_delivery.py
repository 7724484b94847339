"""At-least-once delivery: duplicated, shuffled, dropped and late events."""

from __future__ import annotations

from collections.abc import Callable

from dolambda.emulator import Emulator
from tests.faults.conftest import Marks, backend_for, run_job


def test_every_event_delivered_twice(make_emulator: Callable[..., Emulator], marks: Marks) -> None:
    emu = make_emulator(duplicate_events=True)
    _result, job, row = run_job("duplicate events", backend_for(emu), marks, n=16, chunk=2)
    assert row.lost == 0 and row.duplicated == 0
    assert emu.stats.duplicated == 8  # every task's event was doubled
    # a duplicate either ran the body again (its result write lost the conditional put)
    # or found the task already gone; never more than two executions per iteration
    assert set(marks.counts()) == set(range(16))
    assert max(marks.counts().values()) <= 2
    assert job.stats.retries == 0


def test_events_out_of_order(make_emulator: Callable[..., Emulator], marks: Marks) -> None:
    emu = make_emulator(shuffle=True, event_delay=0.5, seed=11)
    _result, _job, row = run_job("shuffled events", backend_for(emu), marks, n=20, chunk=1)
    assert row.lost == row.duplicated == 0
    assert marks.counts() == {i: 1 for i in range(20)}
    ran = [e for _, e in emu.recent_events]
    assert len(ran) == 20


def test_thirty_percent_of_events_dropped(
    make_emulator: Callable[..., Emulator], marks: Marks
) -> None:
    emu = make_emulator(drop_fraction=0.3, seed=5, timeout=2.0)
    # no straggler backups: each lost task is found by the client's deadline alone
    backend = backend_for(emu, retries=6, backups=False)
    _result, job, row = run_job("30% events dropped", backend, marks, n=24, chunk=2)
    assert row.lost == row.duplicated == 0
    dropped = emu.stats.dropped
    assert dropped > 0
    # every dropped event cost exactly one re-enqueue (the only way a task gets a new event)
    assert job.stats.retries == dropped
    assert set(marks.counts()) == set(range(24))


def test_events_delayed_past_the_first_poll(
    make_emulator: Callable[..., Emulator], marks: Marks
) -> None:
    emu = make_emulator(event_delay=1.5)
    _result, job, row = run_job("events delayed 1.5 s", backend_for(emu), marks, n=8, chunk=2)
    assert row.lost == row.duplicated == 0
    assert job.stats.retries == 0  # late is not lost: the deadline is timeout + grace
    assert marks.counts() == {i: 1 for i in range(8)}
