"""The client process SIGKILLed mid-dispatch and mid-gather, then ``Job.attach``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import dolambda
from dolambda import DolambdaError
from dolambda.emulator import Emulator
from tests.faults.conftest import Marks, backend_for, job_keys, summarise, wait_for

CLIENT = """
import sys, time
from dolambda import LambdaBackend, foreach

MARKS = {marks!r}


def body(x):
    import os, time, uuid
    with open(os.path.join(MARKS, f"{{x}}-{{uuid.uuid4().hex}}"), "w"):
        pass
    time.sleep(0.15)
    return (x, x * x)


def slow_source(n):
    for i in range(n):
        yield i
        if {slow_dispatch!r}:
            time.sleep(0.2)  # planning is slow: the dispatch lasts about 0.2 s per task


backend = LambdaBackend(**{settings!r})
values = slow_source({n}) if {slow_dispatch!r} else range({n})
job = foreach(x=values).chunk_size(1).submit(body, backend=backend, progress=False)
print(job.id, flush=True)
while job.progress.done < 2:
    time.sleep(0.01)
print("running", flush=True)
time.sleep(120)
"""


def start_client(tmp_path: Path, emu: Emulator, marks: Marks, n: int, slow: bool) -> Any:
    script = tmp_path / "client.py"
    # no straggler backups: these tests count how often each iteration ran
    settings = {**emu.backend_settings(), "retries": 2, "backups": False}
    script.write_text(
        textwrap.dedent(CLIENT).format(marks=marks.path, settings=settings, n=n, slow_dispatch=slow)
    )
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)


def kill_when_running(proc: Any) -> str:
    try:
        assert proc.stdout is not None
        job_id = proc.stdout.readline().strip()
        assert proc.stdout.readline().strip() == "running"
        return job_id
    finally:
        proc.kill()  # SIGKILL: no finally block, no cleanup, no cancel marker
        proc.wait()
        proc.stdout.close()


def test_client_killed_mid_gather_then_attach(
    make_emulator: Callable[..., Emulator], marks: Marks, tmp_path: Path
) -> None:
    emu = make_emulator(timeout=3.0)
    n = 14
    started = time.monotonic()
    job_id = kill_when_running(start_client(tmp_path, emu, marks, n, slow=False))
    job = dolambda.Job.attach(job_id, backend_for(emu, retries=2, backups=False))
    result = job.result(timeout=60)
    expected = [(x, x * x) for x in range(n)]
    row = summarise(
        "client SIGKILL mid-gather + attach",
        n,
        result,
        marks,
        job.stats.retries,
        "ok" if result == expected else "WRONG RESULT",
        started,
    )
    assert result == expected
    assert row.lost == row.duplicated == 0
    assert marks.counts() == {x: 1 for x in range(n)}  # attach re-ran nothing
    assert job_keys(emu, job_id) == []


def test_client_killed_mid_dispatch_attach_refuses_and_cleans_up(
    make_emulator: Callable[..., Emulator], marks: Marks, tmp_path: Path
) -> None:
    """plan.json is written after the last task, so a job whose client died while
    dispatching cannot be finished: attach says so clearly, cancels its queued tasks and
    deletes its objects (only the cancel marker and late results of running tasks stay)."""
    emu = make_emulator(timeout=3.0)
    n = 40
    started = time.monotonic()
    job_id = kill_when_running(start_client(tmp_path, emu, marks, n, slow=True))
    with pytest.raises(DolambdaError, match="not fully dispatched") as info:
        dolambda.Job.attach(job_id, backend_for(emu))
    assert job_id in str(info.value) and "Submit the loop again" in str(info.value)
    assert "cancelled" in str(info.value)
    # nothing is left running and nothing ran twice
    wait_for(lambda: emu.wait_idle(0.2), 30, "the emulator to go idle")
    counts = marks.counts()
    assert counts and set(counts.values()) == {1}
    assert len(counts) < n
    left = job_keys(emu, job_id)
    assert all(k.endswith("/cancel") or "/results/" in k for k in left), left
    summarise(
        "client SIGKILL mid-dispatch: attach refuses",
        n,
        None,
        marks,
        0,
        f"refused and cleaned; {len(counts)} tasks ran, {len(left)} objects left",
        started,
    )
