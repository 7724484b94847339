"""dolambda.Executor: a concurrent.futures.Executor whose calls run as dolambda jobs."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import os
import threading
import types
from collections.abc import Iterator
from typing import Any

import pytest

from dolambda import LocalBackend, Loop, foreach, register
from dolambda._errors import InvalidArgument, SerializationError, TaskError
from dolambda._executor import Executor, RemoteTraceback
from tests.helpers import LOCAL2

BACKENDS = ("local", "sequential")


@pytest.fixture
def job_variables(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The variables of every dolambda loop the executor builds, in order."""
    seen: list[dict[str, Any]] = []

    def recording_foreach(**variables: Any) -> Loop:
        seen.append(variables)
        return foreach(**variables)

    monkeypatch.setattr("dolambda._executor.foreach", recording_foreach)
    return seen


@pytest.fixture(params=BACKENDS)
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    """An Executor on 2 local worker processes, or on the registered sequential backend."""
    if request.param == "local":
        ex = Executor(LOCAL2)
    else:
        register("sequential")
        ex = Executor()
    with ex:
        yield ex


def square(x: int) -> int:
    return x * x


def negate(x: int) -> int:
    return -x


def power(base: int, exp: int = 2) -> int:
    return int(base**exp)


def boom(x: int) -> int:
    raise ValueError(f"boom {x}")


def fail_on_three(x: int) -> int:
    if x == 3:
        raise KeyError(x)
    return x


def make_exception(x: int) -> Exception:
    return ValueError(f"returned {x}")


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("has a generator")
        self.gen = (i for i in range(1))  # dill cannot pickle generators


def raise_unpicklable(x: int) -> int:
    raise Unpicklable()


def pid(_: Any = None) -> int:
    return os.getpid()


def slow_early(i: int, n: int) -> int:
    """Earlier items take longer, so completion order is the reverse of input order."""
    threading.Event().wait(0.04 * (n - i))
    return i


# ------------------------------------------------------------------ submit


def test_submit_result(executor: Executor) -> None:
    futures = [executor.submit(square, i) for i in range(10)]
    assert all(isinstance(f, cf.Future) for f in futures)
    assert [f.result(timeout=60) for f in futures] == [i * i for i in range(10)]
    assert executor.submit(power, 2, exp=5).result(timeout=60) == 32


def test_submit_exception_is_the_original(executor: Executor) -> None:
    ok = executor.submit(square, 3)
    bad = executor.submit(boom, 7)
    error = bad.exception(timeout=60)
    assert isinstance(error, ValueError)
    assert str(error) == "boom 7"
    with pytest.raises(ValueError, match="boom 7"):
        bad.result()
    assert ok.result(timeout=60) == 9  # same batch, unaffected


def test_remote_exception_carries_the_worker_traceback() -> None:
    with Executor(LOCAL2) as ex:
        error = ex.submit(boom, 1).exception(timeout=60)
    assert isinstance(error, ValueError)
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "boom 1" in str(error.__cause__)
    assert "in boom" in str(error.__cause__)


def test_unpicklable_exception_becomes_task_error() -> None:
    with Executor(LOCAL2) as ex:
        error = ex.submit(raise_unpicklable, 1).exception(timeout=60)
    assert isinstance(error, TaskError)
    assert error.error_type == "Unpicklable"
    assert "has a generator" in str(error)


def test_returned_exception_is_a_result(executor: Executor) -> None:
    future = executor.submit(make_exception, 4)
    value = future.result(timeout=60)
    assert isinstance(value, ValueError)
    assert str(value) == "returned 4"
    assert future.exception() is None


def test_as_completed(executor: Executor) -> None:
    futures = {executor.submit(square, i): i for i in range(8)}
    seen = {futures[f]: f.result() for f in cf.as_completed(futures, timeout=60)}
    assert seen == {i: i * i for i in range(8)}


def test_wait(executor: Executor) -> None:
    futures = [executor.submit(square, i) for i in range(5)]
    done, not_done = cf.wait(futures, timeout=60)
    assert not not_done
    assert {f.result() for f in done} == {0, 1, 4, 9, 16}
    bad = [executor.submit(boom, 1), executor.submit(square, 2)]
    done, _ = cf.wait(bad, timeout=60, return_when=cf.FIRST_EXCEPTION)
    assert bad[0] in done


def test_runs_on_the_given_backend() -> None:
    with Executor(LOCAL2) as ex:
        pids = {f.result(timeout=60) for f in [ex.submit(pid) for _ in range(4)]}
    assert os.getpid() not in pids


def test_registered_backend_is_used() -> None:
    register(LOCAL2)
    with Executor() as ex:  # no warning: filterwarnings=error would fail this test
        assert ex.backend is LOCAL2
        assert ex.submit(pid).result(timeout=60) != os.getpid()


def test_no_registered_backend_warns_once() -> None:
    with pytest.warns(RuntimeWarning, match="no parallel backend registered") as record:
        ex = Executor()
    assert len(record) == 1
    with ex:
        assert [f.result(timeout=60) for f in [ex.submit(square, i) for i in range(3)]] == [
            0,
            1,
            4,
        ]
        assert list(ex.map(square, range(3))) == [0, 1, 4]


def test_submits_close_together_become_one_job(job_variables: list[dict[str, Any]]) -> None:
    register("sequential")
    ex = Executor(batch_window=60)  # only shutdown() flushes the batch
    futures = [ex.submit(square, i) for i in range(10)] + [ex.submit(negate, 5)]
    ex.shutdown(wait=True)
    assert [len(v["call"]) for v in job_variables] == [11]
    assert [f.result() for f in futures] == [i * i for i in range(10)] + [-5]


def test_max_jobs_holds_calls_until_the_running_batch_ends(
    job_variables: list[dict[str, Any]],
) -> None:
    register("sequential")
    entered, gate = threading.Event(), threading.Event()

    def gated(x: int) -> int:
        entered.set()
        assert gate.wait(30)
        return x

    with Executor(max_jobs=1) as ex:
        first = ex.submit(gated, 0)
        assert entered.wait(30)  # the first batch is running
        later = [ex.submit(square, i) for i in range(3)]
        assert not any(f.done() for f in later)
        gate.set()
        assert first.result(timeout=60) == 0
        assert [f.result(timeout=60) for f in later] == [0, 1, 4]
    assert [len(v["call"]) for v in job_variables] == [1, 3]
    assert Executor(LOCAL2)._max_jobs == 1  # the default on a LocalBackend
    with pytest.raises(ValueError, match="max_jobs"):
        Executor(LOCAL2, max_jobs=0)


def test_cancel_before_the_batch_starts() -> None:
    register("sequential")
    ex = Executor(batch_window=60)
    keep = ex.submit(square, 3)
    drop = ex.submit(square, 4)
    assert drop.cancel()
    ex.shutdown(wait=True)
    assert drop.cancelled()
    assert keep.result() == 9


def test_whole_job_failure_reaches_every_future_of_the_batch() -> None:
    ex = Executor(LOCAL2, batch_window=60)
    futures = [ex.submit(pid, (i for i in range(2))), ex.submit(pid, 1)]
    ex.shutdown(wait=True)
    for future in futures:
        assert isinstance(future.exception(), SerializationError)


def test_chunk_size() -> None:
    with Executor(LOCAL2, chunk_size=3) as ex:
        assert [f.result(timeout=60) for f in [ex.submit(square, i) for i in range(7)]] == [
            i * i for i in range(7)
        ]
        assert list(ex.map(square, range(7), chunksize=2)) == [i * i for i in range(7)]
    with pytest.raises(InvalidArgument, match="chunk_size"):
        Executor(LOCAL2, chunk_size=0)
    with pytest.raises(ValueError, match="batch_window"):
        Executor(LOCAL2, batch_window=-1)


async def test_usable_from_async_code() -> None:
    register(LOCAL2)
    with Executor() as ex:
        assert await asyncio.wrap_future(ex.submit(square, 6)) == 36
        # blocking on a future inside a running loop: the job runs on dolambda's helper loop
        assert ex.submit(square, 7).result(timeout=60) == 49
        assert list(ex.map(square, range(3))) == [0, 1, 4]


# ------------------------------------------------------------------ map


def test_map_keeps_input_order(executor: Executor) -> None:
    n = 6
    assert list(executor.map(slow_early, range(n), itertools.repeat(n))) == list(range(n))


def test_map_zips_and_stops_at_shortest(executor: Executor) -> None:
    assert list(executor.map(power, [2, 3, 4], [1, 2])) == [2, 9]
    assert list(executor.map(square, [])) == []


def test_map_raises_at_the_failing_position(executor: Executor) -> None:
    results = executor.map(fail_on_three, range(6))
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(KeyError):
        next(results)


def test_map_yields_results_lazily() -> None:
    register("sequential")  # in-process: the body can wait on an Event of this test
    gate = threading.Event()

    def gated(x: int) -> int:
        if x == 1:
            assert gate.wait(30)
        return x

    with Executor() as ex:
        results = ex.map(gated, range(3))
        assert next(results) == 0  # while item 1 is still blocked
        gate.set()
        assert list(results) == [1, 2]


def test_map_consumes_an_infinite_input_lazily_and_stops_when_closed() -> None:
    register("sequential")
    pulled = itertools.count()

    def naturals() -> Iterator[int]:
        for i in itertools.count():
            next(pulled)
            yield i

    ex = Executor()
    results = ex.map(square, naturals())
    assert [next(results) for _ in range(5)] == [0, 1, 4, 9, 16]
    assert isinstance(results, types.GeneratorType)
    results.close()  # cancels the rest of the job
    ex.shutdown(wait=True)  # returns: the job stopped
    assert next(pulled) < 10_000


def test_map_timeout() -> None:
    register("sequential")
    gate = threading.Event()

    def blocked(x: int) -> int:
        assert gate.wait(30)
        return x

    with Executor() as ex:
        results = ex.map(blocked, [1], timeout=0.2)
        with pytest.raises(TimeoutError):
            next(results)
        gate.set()


def test_map_is_one_job(job_variables: list[dict[str, Any]]) -> None:
    with Executor(LOCAL2) as ex:
        assert list(ex.map(square, range(20))) == [i * i for i in range(20)]
    assert [list(v) for v in job_variables] == [["args"]]


# ------------------------------------------------------------------ shutdown


def test_submit_and_map_after_shutdown_raise(executor: Executor) -> None:
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(square, 1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.map(square, [1])
    executor.shutdown()  # idempotent


def test_shutdown_wait_finishes_everything(executor: Executor) -> None:
    futures = [executor.submit(square, i) for i in range(6)]
    executor.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [i * i for i in range(6)]


def test_shutdown_cancel_futures_cancels_waiting_calls() -> None:
    register("sequential")
    ex = Executor(batch_window=60)
    futures = [ex.submit(square, i) for i in range(4)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in futures)


def test_context_manager_waits_and_shuts_down() -> None:
    with Executor(LOCAL2) as ex:
        futures = [ex.submit(square, i) for i in range(4)]
    assert all(f.done() for f in futures)
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


def test_fresh_local_backend_and_repr() -> None:
    backend = LocalBackend(1)
    try:
        with Executor(backend) as ex:
            assert "local" in repr(ex)
            assert ex.submit(square, 5).result(timeout=60) == 25
        assert "shut down" in repr(ex)
    finally:
        backend.shutdown()
