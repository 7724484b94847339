"""The local backend: tasks run on worker processes of this machine (doParallel).

::

    client event loop                         worker processes (python -m ..._procworker)
    ─────────────────                         ─────────────────────────────────────────
    one driver per worker ── job blobs once ─► WorkerState (manifest + body cached)
                           ── task bytes ────► run_task_blob (the one execution path)
                           ◄─ outcome bytes ──┘
    EOF on the result pipe = the worker died: its task becomes a "crashed" failure
    and a fresh worker takes its place.

Workers are started with ``subprocess`` rather than ``multiprocessing`` so the
user's ``__main__`` is never re-imported, and they are kept warm between jobs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from multiprocessing.connection import Connection

from dolambda._backends.base import Backend, JobContext, TaskResult
from dolambda._backends.fan_in import fan_in
from dolambda._backends.sealing import SealedJob, decode_outcome
from dolambda._core.tasks import PlannedTask
from dolambda._errors import BackendError, InvalidArgument, InvalidArgumentType
from dolambda._wire import codec
from dolambda._wire.codec import outcome_context
from dolambda._wire.models import TaskFailure, TaskOutcome


class _Proc:
    """One worker process and its two pipe ends."""

    def __init__(self) -> None:
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        env = dict(os.environ)
        paths = [p for p in sys.path if p] + [os.getcwd()]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "dolambda._backends._procworker", str(task_r), str(result_w)],
            pass_fds=(task_r, result_w),
            env=env,
            start_new_session=True,  # Ctrl-C reaches the client, which stops us
        )
        os.close(task_r)
        os.close(result_w)
        self.tx = Connection(task_w, readable=False)
        self.rx = Connection(result_r, writable=False)
        self.job_id: str | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        self.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)

    def close(self) -> None:
        for conn in (self.tx, self.rx):
            with contextlib.suppress(OSError):
                conn.close()

    def exit_reason(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        code = self.popen.returncode
        if code is None:
            return "stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"was killed by {name}"
        return f"exited with code {code}"


async def _readable(conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    fd = conn.fileno()
    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


class LocalBackend(Backend):
    """Run iterations on ``workers`` local processes (default: the number of CPUs).

    >>> from dolambda import foreach, LocalBackend, register
    >>> register(LocalBackend(workers=2))
    """

    name = "local"
    body_must_pickle = True

    def __init__(self, workers: int | None = None) -> None:
        if workers is None:
            workers = os.cpu_count() or 1
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise InvalidArgumentType(f"LocalBackend: workers must be an integer, got {workers!r}")
        if workers < 1:
            raise InvalidArgument(f"LocalBackend: workers must be at least 1, got {workers}")
        self._workers = workers
        self._idle: list[_Proc] = []
        self._lock = threading.Lock()
        # at most `workers` processes alive across every job using this backend at once
        self._live = 0
        self._waiters: collections.deque[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[_Proc | None]]
        ] = collections.deque()

    @property
    def workers(self) -> int:
        return self._workers

    def __repr__(self) -> str:
        return f"LocalBackend(workers={self._workers})"

    async def _acquire(self) -> _Proc:
        """A warm idle process, a new one within the budget, or the next one released."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_Proc | None] | None
        with self._lock:
            while self._idle:
                proc = self._idle.pop()
                if proc.alive():
                    return proc
                proc.close()
                self._live -= 1
            if self._live < self._workers:
                self._live += 1
                fut = None
            else:
                fut = loop.create_future()
                self._waiters.append((loop, fut))
        if fut is not None:
            got: _Proc | None = await fut
            if got is not None:
                return got
        try:
            return _Proc()
        except BaseException:
            self._discard()
            raise

    def _hand_over(self, proc: _Proc | None) -> bool:
        """Give ``proc`` (or a permit to start one, if None) to a waiter; lock held."""
        while self._waiters:
            loop, fut = self._waiters.popleft()
            if fut.done():
                continue

            def deliver(fut: asyncio.Future[_Proc | None] = fut) -> None:
                if fut.done():  # cancelled meanwhile: pass it on
                    if proc is not None:
                        self._give_back(proc)
                    else:
                        self._discard()
                else:
                    fut.set_result(proc)

            try:
                loop.call_soon_threadsafe(deliver)
            except RuntimeError:  # that loop is closed
                continue
            return True
        return False

    def _give_back(self, proc: _Proc) -> None:
        with self._lock:
            if self._hand_over(proc):
                return
            self._idle.append(proc)

    def _discard(self, proc: _Proc | None = None) -> None:
        """A process died or was killed: free its place in the budget."""
        if proc is not None:
            proc.kill()  # reaped too: one that lost only its task pipe may still run
        with self._lock:
            if self._hand_over(None):
                return
            self._live -= 1

    @staticmethod
    def _stop(proc: _Proc) -> None:
        with contextlib.suppress(OSError):
            proc.tx.send_bytes(pickle.dumps(("stop", None)))
        proc.close()

    def shutdown(self) -> None:
        """Stop the warm worker processes (they are also stopped at exit)."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._live -= len(idle)
        for proc in idle:
            self._stop(proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.shutdown()

    @staticmethod
    def _send(proc: _Proc, job: SealedJob, task: PlannedTask, blob: bytes) -> None:
        if proc.job_id != job.job_id:
            proc.tx.send_bytes(
                pickle.dumps(("job", (job.job_id, job.key, job.sealed_manifest, job.sealed_body)))
            )
            proc.job_id = job.job_id
        proc.tx.send_bytes(pickle.dumps(("task", (job.job_id, task.task_id, blob))))

    @staticmethod
    async def _receive(proc: _Proc, job: SealedJob, task: PlannedTask) -> TaskResult:
        await _readable(proc.rx)
        try:
            data = proc.rx.recv_bytes()
        except (EOFError, OSError):
            first, last = task.first, task.first + len(task) - 1
            span = f"iteration {first}" if first == last else f"iterations {first}-{last}"
            raise _WorkerDied(
                f"the worker process (pid {proc.pid}) {proc.exit_reason()} while running {span}"
            ) from None
        outcome = codec.unseal_model(
            TaskOutcome, data, key=job.key, context=outcome_context(job.job_id, task.task_id)
        )
        return decode_outcome(outcome)

    async def run_tasks(
        self, job: JobContext, tasks: AsyncIterator[PlannedTask]
    ) -> AsyncGenerator[TaskResult, None]:
        sealed = SealedJob(job)  # a fresh key for every job
        out: asyncio.Queue[TaskResult | BaseException | None] = asyncio.Queue()
        pull_lock = asyncio.Lock()
        short_tasks = False  # set once tasks prove short: then each worker gets one queued

        async def next_task() -> tuple[PlannedTask, bytes] | None:
            async with pull_lock:
                if job.cancelled.is_set():
                    return None
                task = await anext(tasks, None)
                return None if task is None else (task, sealed.sealed_task(task))

        async def drive() -> None:
            nonlocal short_tasks
            proc: _Proc | None = None
            # sent to `proc`, oldest (running) first; a second one waits in the pipe so
            # the worker never idles between short tasks (only small ones: the pipe
            # must take it without blocking while the worker is busy)
            sent: collections.deque[tuple[PlannedTask, bytes]] = collections.deque()
            # taken from the job but on no live process (not sent yet, or queued on one
            # that died): they go out before anything new is taken
            backlog: collections.deque[tuple[PlannedTask, bytes]] = collections.deque()
            exhausted = False
            dead_on_arrival = 0
            try:
                while True:
                    while not sent or (short_tasks and len(sent) < 2):
                        if not backlog:
                            got = None if exhausted else await next_task()
                            if got is None:
                                exhausted = True
                                break
                            backlog.append(got)
                        item = backlog[0]
                        if sent and len(item[1]) > _PIPE_SAFE:
                            break
                        if proc is None:
                            proc = await self._acquire()
                        try:
                            self._send(proc, sealed, *item)
                        except OSError:  # the process is gone
                            if sent:
                                break  # with our tasks on it: its death is read below
                            self._discard(proc)  # gone while idle: none of ours ran there
                            proc = None
                            dead_on_arrival += 1
                            if dead_on_arrival >= 3:
                                raise BackendError(
                                    "LocalBackend: worker processes exit before taking a "
                                    f"task; check that `{sys.executable} -m "
                                    "dolambda._backends._procworker` can start"
                                ) from None
                            continue
                        sent.append(backlog.popleft())
                    if not sent:
                        break
                    assert proc is not None
                    task = sent[0][0]
                    try:
                        result = await self._receive(proc, sealed, task)
                    except _WorkerDied as died:
                        result = TaskResult(
                            task.task_id, failure=TaskFailure(kind="crashed", message=str(died))
                        )
                        sent.popleft()
                        self._discard(proc)
                        proc = None
                        backlog.extendleft(reversed(sent))  # queued behind it: never ran
                        sent.clear()
                    else:
                        sent.popleft()
                        dead_on_arrival = 0
                        if result.stats is not None:
                            short_tasks = result.stats.duration < _SHORT_TASK
                    await out.put(result)
                if proc is not None:
                    self._give_back(proc)
                    proc = None
            except BaseException:
                if proc is not None and sent:  # never reuse a process mid-task
                    proc.kill()
                    self._discard()
                elif proc is not None:
                    self._give_back(proc)
                raise

        async for result in fan_in(out, [drive() for _ in range(self._workers)]):
            yield result


#: a task blob this small fits the pipe's buffer while the worker is busy (Linux: 64 KiB)
_PIPE_SAFE = 16 * 1024
#: tasks shorter than this (seconds, as the worker measured) are sent one ahead
_SHORT_TASK = 0.05


class _WorkerDied(Exception):
    pass
