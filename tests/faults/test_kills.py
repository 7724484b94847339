"""Workers that die: killed before reading the task, mid-body, after computing but before
writing the result; tasks past the function timeout; tasks past the memory limit.

Kills outside the body go through a wrapper handler (``Emulator(handler=..., task_root=...)``)
that calls the real ``handler.lambda_function.lambda_handler`` and SIGKILLs its own process at
the chosen point, on the first attempt of each victim task only.
"""

from __future__ import annotations

import os
import random
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dolambda import TaskError, foreach
from dolambda.emulator import Emulator
from tests.faults.conftest import Marks, backend_for, run_job, summarise

POINTS = ("before-read", "mid-body", "after-compute")

#: the function timeout here: a cold environment's first invocation (its S3 client, the
#: job's body and code) takes up to ~1 s on a loaded 2-core machine, and a fresh one
#: replaces each killed one, so no task other than the chosen ones may come near it
COLD_ROOM = 3.0

WRAPPER = '''
import os
import signal
from urllib.parse import unquote_plus

import boto3

import handler.lambda_function as real

KILLS = {kills!r}
PLAN = {plan!r}  # task id -> kill point


def first_time(point, task):
    try:
        path = os.path.join(KILLS, f"{{point}}-{{task}}")
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def task_of(key):
    return int(key.rsplit("/", 1)[-1].split(".", 1)[0])


class KillBeforeResult:
    """The handler's S3 client, dying just before the first result write of a victim."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put_object(self, **kwargs):
        task = task_of(kwargs["Key"])
        if PLAN.get(task) == "after-compute" and first_time("after-compute", task):
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.put_object(**kwargs)


def lambda_handler(event, context):
    for record in event.get("Records", []):
        task = task_of(unquote_plus(record["s3"]["object"]["key"]))
        if PLAN.get(task) == "before-read" and first_time("before-read", task):
            os.kill(os.getpid(), signal.SIGKILL)
    if not isinstance(real._s3, KillBeforeResult):
        inner = real._s3 or boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3"))
        real._s3 = KillBeforeResult(inner)
    return real.lambda_handler(event, context)
'''


def killing_body(marks_dir: str, kills_dir: str, victims: list[int], chunk: int) -> Any:
    """Records each execution; on a mid-body victim task, the task's last iteration kills its
    worker on the first attempt (so the earlier iterations of the chunk already ran)."""

    def body(x: int) -> tuple[int, int]:
        import os as _os
        import signal as _signal
        import uuid as _uuid

        with open(_os.path.join(marks_dir, f"{x}-{_uuid.uuid4().hex}"), "w"):
            pass
        task = x // chunk
        if task in victims and x % chunk == chunk - 1:
            try:
                fd = _os.open(
                    _os.path.join(kills_dir, f"mid-body-{task}"),
                    _os.O_CREAT | _os.O_EXCL | _os.O_WRONLY,
                )
            except FileExistsError:
                return (x, x * x)
            _os.close(fd)
            _os.kill(_os.getpid(), _signal.SIGKILL)
        return (x, x * x)

    return body


@pytest.mark.parametrize("point", [*POINTS, "mixed"])
def test_worker_killed(
    point: str, make_emulator: Callable[..., Emulator], marks: Marks, tmp_path: Path
) -> None:
    n, chunk = 16, 2
    tasks = n // chunk
    rng = random.Random(f"kill-{point}")
    victims = sorted(rng.sample(range(tasks), 3))
    plan = {t: (POINTS[i % 3] if point == "mixed" else point) for i, t in enumerate(victims)}
    kills = tmp_path / "kills"
    kills.mkdir()
    root = tmp_path / "task-root"
    root.mkdir()
    (root / "killing_handler.py").write_text(WRAPPER.format(kills=str(kills), plan=plan))
    emu = make_emulator(timeout=COLD_ROOM, handler="killing_handler.lambda_handler", task_root=root)
    mid = [t for t, p in plan.items() if p == "mid-body"]

    started = time.monotonic()
    loop = foreach(x=range(n)).chunk_size(chunk)
    expected = [(x, x * x) for x in range(n)]
    job = loop.submit(
        killing_body(marks.path, str(kills), mid, chunk),
        backend=backend_for(emu, retries=2),
        progress=False,
    )
    result = job.result(timeout=90)
    row = summarise(
        f"worker killed: {point}",
        n,
        result,
        marks,
        job.stats.retries,
        "ok" if result == expected else "WRONG RESULT",
        started,
    )
    assert result == expected == loop.do(lambda x: (x, x * x))
    assert row.lost == row.duplicated == 0
    assert sorted(p.name for p in kills.iterdir()) == sorted(f"{p}-{t}" for t, p in plan.items())
    # a kill inside the body kills the worker's child (the watchdog reports it, the
    # environment lives on); a kill outside it takes the whole environment
    assert emu.stats.crashed == len([t for t, p in plan.items() if p != "mid-body"])
    assert job.stats.retries == len(victims)
    # the iterations of a task killed before reading it ran once; the others ran twice
    counts = marks.counts()
    for t in range(tasks):
        want = 2 if plan.get(t) in ("mid-body", "after-compute") else 1
        assert [counts[x] for x in range(t * chunk, (t + 1) * chunk)] == [want] * chunk, t


def sleepy_body(marks_dir: str, once: int, always: int) -> Any:
    def body(x: int) -> tuple[int, int]:
        import os as _os
        import time as _time
        import uuid as _uuid

        with open(_os.path.join(marks_dir, f"{x}-{_uuid.uuid4().hex}"), "w"):
            pass
        runs = sum(1 for p in _os.listdir(marks_dir) if p.startswith(f"{x}-"))
        if x == always or (x == once and runs == 1):
            _time.sleep(60)
        return (x, x * x)

    return body


def test_task_past_the_function_timeout(
    make_emulator: Callable[..., Emulator], marks: Marks
) -> None:
    """One task times out once (the retry succeeds), another on every attempt (reported)."""
    emu = make_emulator(timeout=COLD_ROOM)
    n = 8
    started = time.monotonic()
    job = (
        foreach(x=range(n))
        .chunk_size(1)
        .errorhandling("pass")
        .submit(sleepy_body(marks.path, 3, 5), backend=backend_for(emu, retries=1), progress=False)
    )
    result = job.result(timeout=90)
    good = [r for r in result if isinstance(r, tuple)]
    summarise(
        "task past function timeout", n, good, marks, job.stats.retries, "1 reported", started
    )
    assert [r for i, r in enumerate(result) if i != 5] == [(x, x * x) for x in range(n) if x != 5]
    error = result[5]
    assert isinstance(error, TaskError)
    assert error.index == 5 and error.error_type == "timeout"
    assert "ran past the function's timeout: iteration 5" in str(error), str(error)
    assert "before its deadline, so the worker stopped it" in str(error), str(error)
    # x=3 once, x=5 twice: each stopped by the worker's watchdog before Lambda's deadline
    assert emu.stats.timeouts == 0
    assert marks.counts()[3] == 2 and marks.counts()[5] == 2
    assert job.stats.retries == 2


def hog_body(marks_dir: str, hog: int, mb: int) -> Any:
    def body(x: int) -> tuple[int, int]:
        import os as _os
        import time as _time
        import uuid as _uuid

        with open(_os.path.join(marks_dir, f"{x}-{_uuid.uuid4().hex}"), "w"):
            pass
        if x == hog:
            block = b"m" * (mb << 20)  # written, so resident
            _time.sleep(5)
            return (x, len(block))
        return (x, x * x)

    return body


MEMORY_MB = 200


@pytest.fixture(scope="module")
def memory_run(moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One job whose iteration 2 passes the memory limit on every attempt (shared by the
    behaviour test and the xfail that states what it should say)."""
    marks = Marks(tmp_path_factory.mktemp("memory") / "marks")
    name = f"flt-mem-{os.getpid()}"
    emu = Emulator(
        endpoint_url=moto_url,
        bucket=name,
        function_name=name,
        workers=2,
        timeout=2.0,
        memory_mb=MEMORY_MB,
        # Lambda's memory limit holds for the environment (runtime and children), and the
        # OOM killer takes the largest process: the isolated runtime does the same
    )
    emu.start()
    try:
        started = time.monotonic()
        job = (
            foreach(x=range(4))
            .chunk_size(1)
            .errorhandling("pass")
            .submit(
                hog_body(marks.path, 2, 600), backend=backend_for(emu, retries=1), progress=False
            )
        )
        result = job.result(timeout=90)
        good = [r for r in result if isinstance(r, tuple)]
        summarise(
            "task past memory limit", 4, good, marks, job.stats.retries, "1 reported", started
        )
        yield result, emu.stats, marks
    finally:
        emu.stop()


def test_task_past_the_memory_limit_is_reported(memory_run: Any) -> None:
    result, stats, marks = memory_run
    assert [result[i] for i in (0, 1, 3)] == [(0, 0), (1, 1), (3, 9)]
    assert isinstance(result[2], TaskError) and result[2].index == 2
    assert result[2].error_type == "memory"
    assert stats.killed == 2  # both attempts' children killed by the emulator's memory watch
    assert stats.crashed == 0  # the runtime itself survived to report it
    assert marks.counts()[2] == 2


def test_memory_error_is_distinct_and_names_the_limit(memory_run: Any) -> None:
    error = memory_run[0][2]
    assert isinstance(error, TaskError)
    assert error.error_type == "memory", error.error_type
    assert f"{MEMORY_MB} MB" in str(error), str(error)


def test_wrapper_handler_is_transparent_without_victims(
    make_emulator: Callable[..., Emulator], marks: Marks, tmp_path: Path
) -> None:
    """The kill wrapper itself changes nothing when it has no victim."""
    root = tmp_path / "task-root"
    root.mkdir()
    (root / "killing_handler.py").write_text(
        textwrap.dedent(WRAPPER).format(kills=str(tmp_path), plan={})
    )
    emu = make_emulator(handler="killing_handler.lambda_handler", task_root=root)
    run_job("wrapper handler, no kill", backend_for(emu), marks, n=6, chunk=2)
    assert emu.stats.crashed == 0
    assert os.path.isdir(marks.path)
