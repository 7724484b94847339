"""The Lambda worker's watchdog: a task's iterations run in a warm child process, and the
handler reports that child's timeout, out-of-memory kill or crash itself, in seconds.

Why: with Lambda's own retries off (the client owns retries), an invocation that Lambda
stops (timeout, the memory limit, a crash) leaves no result, and the client would only
notice at its deadline. So the handler (the parent, under the Lambda runtime) does no
work itself: it forks a child once and keeps it warm across invocations::

    handler (parent)                                      child (forked once, warm)
    ────────────────                                      ─────────────────────────
    GET task, verify it ─── ("run", task blob, ...) ────► open_task (job cached here)
    fetch job / code    ◄── ("job",) | ("code", digest) ── (the child never talks to S3)
       for the child    ─── ("ok", blobs) | ("error",..) ─►
    keep each result    ◄── ("it", k, ticks, value, err) ─ run_iterations, one row a time
    PUT the outcome     ◄── ("end", peak MB) ───────────── waits for the next task
    deadline near: SIGKILL the child, PUT a timeout outcome (finished iterations kept)
    child gone (SIGKILL: the memory limit; other signal or exit: a crash): PUT it

The pipe is :func:`multiprocessing.Pipe` (a socketpair): Lambda has no ``/dev/shm``,
so no ``multiprocessing.Queue`` or ``Pool``. ``fork``, not ``spawn``: the child starts
in milliseconds with the parent's imports (spawn would import dolambda, dill and
pydantic again, ~0.3 s, on every restart), and only the parent's one thread runs at
fork time. Lambda limits memory per execution environment (its cgroup), and Linux's
OOM killer then kills the largest process, which is the child doing the work: the
parent survives to report it. The child's peak RSS comes from ``wait4``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

from dolambda._core.execute import (
    BodyNotLoaded,
    CodeUnavailable,
    OutputTail,
    WorkerState,
    captured_output,
    failure_of,
    memory_used_mb,
    open_task,
    run_iterations,
    task_stats,
)
from dolambda._wire import codec
from dolambda._wire.models import IterationError, TaskFailure, TaskOutcome, TaskSpec, pack_ticks

#: seconds before the end of the invocation at which the child is stopped, so the
#: handler can still write the timeout result (at most an eighth of the invocation, but
#: not under MIN_MARGIN, nor over a quarter of it)
DEFAULT_MARGIN = 2.0
MIN_MARGIN = 0.25
#: a child killed by SIGKILL ran out of memory when it and the runtime used this share of
#: the function's memory (the cgroup counts their shared pages once, RSS twice: a bound)
OOM_SHARE = 0.8


#: seconds between two looks at the job's cancel marker while a task runs: a cancelled
#: job's running tasks stop within this, not after their last iteration (one HEAD each:
#: at 1,000 workers ~200 requests a second, ~0.5% of what the invocations cost)
CANCEL_CHECK_EVERY = 5.0


def margin_from_env() -> float:
    """``DOLAMBDA_WATCHDOG_MARGIN`` (seconds), else :data:`DEFAULT_MARGIN`."""
    text = os.environ.get("DOLAMBDA_WATCHDOG_MARGIN", "")
    try:
        value = float(text) if text else DEFAULT_MARGIN
    except ValueError:
        value = DEFAULT_MARGIN
    return value if value > 0 else DEFAULT_MARGIN


def enabled_from_env() -> bool:
    """The watchdog is on unless ``DOLAMBDA_WATCHDOG=0`` (or the OS cannot fork)."""
    return hasattr(os, "fork") and os.environ.get("DOLAMBDA_WATCHDOG", "1") != "0"


class ChildFailed(Exception):
    """A request the child made of the parent failed (its message says why)."""


@dataclass
class _Progress:
    """What the parent knows of the task the child is running."""

    ticks: list[float] = field(default_factory=list)
    blobs: list[bytes | None] = field(default_factory=list)
    errors: list[IterationError] = field(default_factory=list)
    child_peak_mb: float = 0.0
    output: OutputTail = field(default_factory=OutputTail)  # what the body wrote


class Watchdog:
    """The parent's side: one warm child, restarted when it dies."""

    def __init__(self, margin: float | None = None) -> None:
        self.margin = margin_from_env() if margin is None else margin
        self._pid: int | None = None
        self._conn: Connection | None = None
        self.tasks_run = 0  # tasks this environment ran (cold start: the first)
        self.restarts = 0

    # ── the child process ──

    def _start(self) -> Connection:
        if self._conn is not None and self._pid is not None:
            return self._conn
        parent_end, child_end = Pipe(duplex=True)
        pid = os.fork()
        if pid == 0:  # the child: serve tasks until the parent goes away
            code = 0
            try:
                parent_end.close()
                _serve(child_end)
            except BaseException:
                traceback.print_exc()
                code = 70
            finally:
                _flush()
                os._exit(code)
        child_end.close()
        self._pid, self._conn = pid, parent_end
        return parent_end

    def _reap(self, kill: bool) -> tuple[int | None, float]:
        """Stop (when ``kill``) and reap the child: its wait status and peak RSS in MB."""
        pid, conn = self._pid, self._conn
        self._pid = self._conn = None
        if conn is not None:
            conn.close()
        if pid is None:
            return None, 0.0
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            _, status, usage = os.wait4(pid, 0)
        except ChildProcessError:
            return None, 0.0
        return status, usage.ru_maxrss / 1024  # KB on Linux

    def close(self) -> None:
        self._reap(kill=True)

    # ── one task ──

    def run(
        self,
        task_blob: bytes,
        task: TaskSpec,
        *,
        key: bytes,
        remaining: Callable[[], float],
        fetch_job: Callable[[], tuple[bytes, bytes]],
        fetch_code: Callable[[str], bytes],
        stats: dict[str, Any],
        cancelled: Callable[[], bool] | None = None,
    ) -> TaskOutcome | None:
        """Run a verified task in the child; an outcome for the caller to write, or None
        when the job was cancelled while it ran (the child is stopped: nothing to write).

        ``remaining()`` is the invocation's time left in seconds
        (``context.get_remaining_time_in_millis() / 1000``); ``cancelled()`` says whether
        the job's cancel marker exists, asked every :data:`CANCEL_CHECK_EVERY` seconds.
        """
        started, t0 = time.time(), time.perf_counter()
        cold = self.tasks_run == 0
        self.tasks_run += 1
        budget = remaining()
        # short invocations (the emulator's tests) keep most of their time
        margin = min(self.margin, max(MIN_MARGIN, budget / 8), budget / 4)
        deadline = time.monotonic() + budget - margin
        progress = _Progress()
        job_id, task_id = task.job_id, task.task_id

        def outcome(failure: TaskFailure | None, errors: list[IterationError]) -> TaskOutcome:
            ticks = progress.ticks
            return TaskOutcome(
                job_id=job_id,
                task_id=task_id,
                attempt=task.attempt,
                ticks=pack_ticks(ticks if len(ticks) > 1 else ()),
                errors=tuple(sorted(errors, key=lambda e: e.position)),
                values=codec.join_values(progress.blobs) if progress.blobs else b"",
                failure=failure,
                output=progress.output.text(),
                stats=task_stats(
                    stats,
                    started=started,
                    duration=time.perf_counter() - t0,
                    cold=cold,
                    memory_mb=max(progress.child_peak_mb, memory_used_mb()),
                ),
            )

        conn = self._start()
        try:
            conn.send(("run", task_blob, key, job_id, task_id))
        except OSError:  # the warm child is gone: start another
            self._reap(kill=True)
            conn = self._start()
            conn.send(("run", task_blob, key, job_id, task_id))
        look = time.monotonic() + CANCEL_CHECK_EVERY
        while True:
            now = time.monotonic()
            if cancelled is not None and now >= look:
                look = now + CANCEL_CHECK_EVERY
                if cancelled():
                    self._reap(kill=True)
                    return None
            wait = min(deadline, look) - now
            try:
                if wait <= 0 or not conn.poll(wait):
                    if time.monotonic() < deadline:
                        continue
                    return self._timed_out(task, progress, budget, margin, outcome)
                message = conn.recv()
            except (EOFError, OSError):
                return self._died(task, progress, stats, outcome)
            kind = message[0]
            if kind == "it":
                _, k, tick0, tick1, blob, error, text = message
                if text:
                    progress.output.add(text)
                if not progress.ticks:
                    progress.ticks.append(tick0)
                progress.ticks.append(tick1)
                progress.blobs.append(blob)
                if error is not None:
                    progress.errors.append(error.model_copy(update={"position": k}))
            elif kind == "end":
                progress.child_peak_mb = float(message[1])
                return outcome(None, progress.errors)
            elif kind == "failed":
                return outcome(message[1], [])
            elif kind == "job":
                conn.send(_answer(fetch_job))
            elif kind == "code":
                conn.send(_answer(functools.partial(fetch_code, message[1])))

    def _timed_out(
        self,
        task: TaskSpec,
        progress: _Progress,
        budget: float,
        margin: float,
        outcome: Callable[[TaskFailure | None, list[IterationError]], TaskOutcome],
    ) -> TaskOutcome:
        _, peak = self._reap(kill=True)
        progress.child_peak_mb = peak
        done = len(progress.blobs)
        where = (
            f"iteration {task.first + done} (the task's {_ordinal(done + 1)} of {task.count})"
            if task.paths is None
            else f"the task's {_ordinal(done + 1)} iteration of {task.count}"
        )
        message = (
            f"the task ran past the function's timeout: {where} was still running "
            f"{budget - margin:.2f} s into the invocation, {margin:.2f} s before its "
            f"deadline, so the worker stopped it{_kept(done)}"
        )
        return outcome(TaskFailure(kind="timeout", message=message), progress.errors)

    def _died(
        self,
        task: TaskSpec,
        progress: _Progress,
        stats: dict[str, Any],
        outcome: Callable[[TaskFailure | None, list[IterationError]], TaskOutcome],
    ) -> TaskOutcome:
        status, peak = self._reap(kill=False)
        self.restarts += 1
        progress.child_peak_mb = peak
        done = len(progress.blobs)
        where = (
            f"iteration {task.first + done} (the task's {_ordinal(done + 1)} of {task.count})"
            if task.paths is None
            else f"the task's {_ordinal(done + 1)} iteration of {task.count}"
        )
        limit = int(stats.get("memory_limit_mb", 0) or 0)
        signum = os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else None
        if signum == signal.SIGKILL and (not limit or peak + memory_used_mb() >= OOM_SHARE * limit):
            # the kernel's OOM killer (Lambda's memory limit is the environment's cgroup)
            # kills the largest process with SIGKILL: the child, near the limit. Lambda
            # itself stops the whole environment at the timeout, never the child alone.
            message = (
                f"the task ran out of memory (the function's limit is {limit} MB): {where} "
                f"was running when the worker's process was killed (SIGKILL) at a peak of "
                f"{peak:.0f} MB resident{_kept(done)}"
            )
            return outcome(TaskFailure(kind="memory", message=message), progress.errors)
        if signum is not None:
            how = f"was killed by signal {signal.Signals(signum).name}"
        elif status is not None and os.WIFEXITED(status):
            how = f"exited with status {os.WEXITSTATUS(status)} (os._exit?)"
        else:
            how = "is gone"
        message = (
            f"the worker running the task crashed: its process {how} while {where} was "
            f"running (peak {peak:.0f} MB resident){_kept(done)}"
        )
        return outcome(TaskFailure(kind="crashed", message=message), progress.errors)


def _kept(done: int) -> str:
    return f"; the {done} iteration(s) before it finished and are kept" if done else ""


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _answer(fetch: Callable[[], Any]) -> tuple[Any, ...]:
    """What the parent sends back for a child's request: the bytes, or why not."""
    try:
        return ("ok", fetch())
    except CodeUnavailable as exc:
        return ("error", "code", str(exc))
    except BodyNotLoaded as exc:
        return ("error", "load", str(exc))
    except Exception as exc:
        return ("error", "internal", f"{type(exc).__name__}: {exc}")


# ── the child ──


def _serve(conn: Connection) -> None:
    """The child's loop: one task per ``("run", ...)`` message, until the pipe closes."""
    state = WorkerState()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        _, task_blob, key, job_id, task_id = message
        _run_one(conn, state, task_blob, key=key, job_id=job_id, task_id=task_id)


def _ask(conn: Connection, *request: Any) -> Any:
    conn.send(request)
    reply = conn.recv()
    if reply[0] == "ok":
        return reply[1]
    if reply[1] == "code":
        raise CodeUnavailable(reply[2])
    if reply[1] == "load":
        raise BodyNotLoaded(reply[2])
    raise ChildFailed(reply[2])


def _run_one(
    conn: Connection, state: WorkerState, task_blob: bytes, *, key: bytes, job_id: str, task_id: int
) -> None:
    try:
        task, job, rows = open_task(
            state,
            task_blob,
            key=key,
            job_id=job_id,
            task_id=task_id,
            fetch_job=lambda: _ask(conn, "job"),
            fetch_code=lambda digest: _ask(conn, "code", digest),
        )
    except Exception as exc:
        conn.send(("failed", failure_of(exc)))
        return
    body, names, seed, positional = (
        job.body,
        job.manifest.variables,
        job.manifest.seed,
        job.positional,
    )
    paths = task.paths
    tail = OutputTail()  # the task's output, sent to the parent a row at a time
    with captured_output(tail):
        for k, row in enumerate(rows):
            # one row at a time, so each result reaches the parent as soon as it exists
            mark = tail.total
            run = run_iterations(
                body,
                names,
                [row],
                first=task.first + k,
                paths=None if paths is None else paths[k : k + 1],
                seed=seed,
                positional=positional,
                tail=tail,
            )
            errors, blobs = codec.encode_each(run.values, run.errors)
            _flush()  # what the body printed reaches the log before a kill could lose it
            message = ("it", k, run.ticks[0], run.ticks[-1], blobs[0], errors.get(0))
            conn.send((*message, tail.since(mark)))
    conn.send(("end", memory_used_mb()))


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
