"""DESIGN §2, case by case, on every backend (the ``backend`` fixture: sequential, 2 local
worker processes, the emulator's Lambda): iteration, nesting, seeds, the verbs (decorator,
run, arun, submit, cancel), immutability; and what only ``.do`` promises (laziness)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dolambda
from dolambda import Backend, DolambdaError, Job, TaskError, foreach, register, rng, times
from dolambda._code.finder import find_code
from dolambda._errors import JobCancelled
from tests.bodies.semantics import draws, fail_j1, pair, where_am_i
from tests.helpers import LOCAL2, as_str, identity, slow_early, square

#: the checkout these tests live in
CHECKOUT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _outside_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every case runs from a working directory outside the checkout, as a user's script
    does: the bodies' module (:mod:`tests.bodies`) reaches the emulator's Lambda workers
    only in the job's code archive, never from the client's directory or environment."""
    monkeypatch.chdir(tmp_path)


def test_lambda_bodies_come_from_the_jobs_code_not_the_checkout(backend: Backend) -> None:
    """The body's module is one the workers cannot import by themselves: it travels (the
    finder ships ``tests``), and where it runs it is the shipped copy, in a working
    directory and on an import path that have nothing of the checkout's."""
    assert not Path.cwd().is_relative_to(CHECKOUT)
    [seen] = foreach(x=[7]).run(where_am_i, backend=backend)
    assert seen["x"] == 7
    if backend.name != "lambda":  # the sequential and local backends share this checkout
        assert Path(str(seen["file"])).is_relative_to(CHECKOUT)
        return
    assert [m.name for m in find_code(objects=[where_am_i]).local] == ["tests"]
    shipped = Path(str(seen["file"]))
    assert shipped.parts[-3:] == ("tests", "bodies", "semantics.py")
    assert not shipped.resolve().is_relative_to(CHECKOUT)
    assert not Path(str(seen["cwd"])).resolve().is_relative_to(CHECKOUT)
    path = [Path(p).resolve() for p in seen["path"] if p]  # type: ignore[attr-defined]
    assert not any(p.is_relative_to(CHECKOUT) for p in path)


# ------------------------------------------------------------------ iteration


def test_no_combine_gives_list_in_order_keeping_none(backend: Backend) -> None:
    result = foreach(x=range(6)).run(lambda x: None if x % 2 else x, backend=backend)
    assert result == [0, None, 2, None, 4, None]


def test_variables_advance_in_lockstep_and_stop_at_shortest(backend: Backend) -> None:
    loop = foreach(x=range(10), y="abc", z=[1.5, 2.5, 3.5, 4.5])
    result = loop.run(lambda x, y, z: (x, y, z), backend=backend)
    assert result == [(0, "a", 1.5), (1, "b", 2.5), (2, "c", 3.5)]
    assert foreach(x=range(5), y=[]).run(lambda x, y: x, backend=backend) == []


def test_infinite_generator_zipped_with_finite(backend: Backend) -> None:
    result = foreach(x=itertools.count(), y=range(4)).run(lambda x, y: x * y, backend=backend)
    assert result == [0, 1, 4, 9]


def test_single_iteration_and_empty(backend: Backend) -> None:
    assert foreach(x=["only"]).run(identity, backend=backend) == ["only"]
    assert foreach(x=iter(())).run(identity, backend=backend) == []


def test_times(backend: Backend) -> None:
    assert times(3).run(lambda: "hi", backend=backend) == ["hi", "hi", "hi"]
    assert times(0).run(lambda: "hi", backend=backend) == []
    assert times(4).combine("+").run(lambda: 2, backend=backend) == 8


def test_when_filters(backend: Backend) -> None:
    loop = foreach(x=range(10), y=range(10, 20)).when(lambda x, y: x % 3 == 0)
    assert loop.run(lambda x, y: x + y, backend=backend) == [10, 16, 22, 28]
    assert loop.when(lambda x, y: False).run(lambda x, y: 1, backend=backend) == []


def test_closures_and_lambdas(backend: Backend) -> None:
    offset = 1000
    table = {i: chr(97 + i) for i in range(5)}

    def body(x: int) -> str:
        return f"{table[x]}{x + offset}"

    assert foreach(x=range(3)).run(body, backend=backend) == ["a1000", "b1001", "c1002"]
    assert foreach(x=range(3)).run(lambda x: table[x] * (offset // 500), backend=backend) == [
        "aa",
        "bb",
        "cc",
    ]


def test_body_taking_kwargs(backend: Backend) -> None:
    assert foreach(x=range(2), y="ab").run(lambda **kw: sorted(kw.items()), backend=backend) == [
        [("x", 0), ("y", "a")],
        [("x", 1), ("y", "b")],
    ]


def test_body_that_prints(backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    def noisy(x: int) -> int:
        print(f"iteration {x} says hello")
        return x

    assert foreach(x=range(3)).run(noisy, backend=backend) == [0, 1, 2]
    if backend.name == "sequential":
        assert "iteration 2 says hello" in capsys.readouterr().out


# ------------------------------------------------------------------ laziness (.do)


def test_do_consumes_generators_lazily() -> None:
    consumed: list[int] = []
    ran: list[tuple[int, int]] = []

    def gen() -> Iterator[int]:
        for i in range(100):
            consumed.append(i)
            if i == 3:
                raise RuntimeError("generator exhausted its patience")
            yield i

    def body(x: int) -> int:
        ran.append((x, len(consumed)))
        return x

    with pytest.raises(RuntimeError, match="patience"):
        foreach(x=gen()).do(body)
    # every body ran before the next item was pulled; nothing was read ahead
    assert ran == [(0, 1), (1, 2), (2, 3)]
    assert consumed == [0, 1, 2, 3]


def test_do_stops_pulling_infinite_generator_at_shortest() -> None:
    consumed: list[int] = []

    def naturals() -> Iterator[int]:
        for i in itertools.count():
            consumed.append(i)
            yield i

    assert foreach(y=range(3), x=naturals()).do(lambda x, y: x) == [0, 1, 2]
    assert consumed == [0, 1, 2]  # the shorter variable comes first: no extra pull


def test_do_interleaves_body_and_generator() -> None:
    log: list[str] = []

    def gen() -> Iterator[int]:
        for i in range(3):
            log.append(f"pull {i}")
            yield i

    foreach(x=gen()).do(lambda x: log.append(f"body {x}"))
    assert log == ["pull 0", "body 0", "pull 1", "body 1", "pull 2", "body 2"]


# ------------------------------------------------------------------ nesting


def test_nest_with_callable_inner_iterable(backend: Backend) -> None:
    loop = foreach(i=range(4)).nest(foreach(j=lambda i: range(i)))
    assert loop.run(pair, backend=backend) == [
        [],
        [(1, 0)],
        [(2, 0), (2, 1)],
        [(3, 0), (3, 1), (3, 2)],
    ]


def test_nest_when_at_both_levels(backend: Backend) -> None:
    loop = (
        foreach(i=range(5))
        .when(lambda i: i % 2 == 0)
        .nest(foreach(j=lambda i: range(i + 1)).when(lambda i, j: j != 1))
    )
    assert loop.run(pair, backend=backend) == [
        [(0, 0)],
        [(2, 0), (2, 2)],
        [(4, 0), (4, 2), (4, 3), (4, 4)],
    ]


def test_nest_inner_combine_and_final_per_outer_value(backend: Backend) -> None:
    inner = foreach(j=lambda i: range(i + 1)).combine("+", final=lambda s: ("sum", s))
    result = foreach(i=range(4)).nest(inner).run(lambda i, j: j, backend=backend)
    assert result == [("sum", 0), ("sum", 1), ("sum", 3), ("sum", 6)]
    outer = foreach(i=range(4)).combine(lambda a, b: [*a, b[1]], init=[]).nest(inner)
    assert outer.run(lambda i, j: j, backend=backend) == [0, 1, 3, 6]


def test_nest_three_levels_and_zero_inner(backend: Backend) -> None:
    loop = (
        foreach(a=range(2))
        .nest(foreach(b=lambda a: range(a + 1)).combine("c"))
        .nest(foreach(c=lambda a, b: ["x"] * b))
    )
    result = loop.run(lambda a, b, c: f"{a}{b}{c}", backend=backend)
    # a=0: one level-2 result ([] from an empty level 3) and no init -> that value as is;
    # a=1: level 2 splices its level-3 lists [] and ["11x"] with "c"
    assert result == [[], ["11x"]]


def test_nest_inner_sees_outer_values_and_uses_times(backend: Backend) -> None:
    loop = foreach(i=range(3)).nest(times(2))
    assert loop.run(lambda i: i * 10, backend=backend) == [[0, 0], [10, 10], [20, 20]]


def test_nest_leaf_failure_uses_inner_errorhandling(backend: Backend) -> None:
    loop = foreach(i=range(3)).nest(foreach(j=range(3)).errorhandling("remove"))
    assert loop.run(fail_j1, backend=backend) == [[0, 2], [10, 12], [20, 22]]


def test_nest_outer_explicit_errorhandling_wins(backend: Backend) -> None:
    loop = (
        foreach(i=range(2)).errorhandling("pass").nest(foreach(j=range(3)).errorhandling("remove"))
    )
    result = loop.run(fail_j1, backend=backend)
    assert [r[0] for r in result] == [0, 10]
    assert [r[2] for r in result] == [2, 12]
    assert all(isinstance(r[1], ValueError) for r in result)
    assert str(result[1][1]) == "leaf 1,1"

    stop = foreach(i=range(2)).errorhandling("stop").nest(foreach(j=range(3)).errorhandling("pass"))
    with pytest.raises(TaskError) as info:
        stop.run(fail_j1, backend=backend)
    assert info.value.path[1] == 1


def test_nest_default_is_stop_with_path(backend: Backend) -> None:
    with pytest.raises(TaskError) as info:
        foreach(i=range(1, 2)).nest(foreach(j=range(3))).run(fail_j1, backend=backend)
    err = info.value
    assert err.index == 0  # the outer index, 0-based
    assert err.path == (0, 1)
    assert err.variables == {"i": 1, "j": 1}
    assert "i=1" in str(err)
    assert "j=1" in str(err)
    assert "leaf 1,1" in str(err)


def test_nest_outer_remove_drops_leaves_only(backend: Backend) -> None:
    loop = foreach(i=range(2)).errorhandling("remove").nest(foreach(j=range(3)))
    assert loop.run(fail_j1, backend=backend) == [[0, 2], [10, 12]]


# ------------------------------------------------------------------ seeds


def _reference(n: int, seed: int = 1234) -> list[Any]:
    return foreach(i=range(n)).seed(seed).do(draws)


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("chunk", [1, 7, "auto"])
def test_seeded_results_identical_everywhere(workers: int, chunk: Any) -> None:
    expected = _reference(20)
    loop = foreach(i=range(20)).seed(1234).chunk_size(chunk)
    assert loop.do_parallel(draws, workers=workers) == expected
    assert loop.do(draws) == expected


@pytest.mark.parametrize("chunk", [1, 7, "auto"])
def test_seeded_results_identical_on_every_backend(backend: Backend, chunk: Any) -> None:
    loop = foreach(i=range(20)).seed(1234).chunk_size(chunk)
    assert loop.run(draws, backend=backend) == _reference(20)


def test_seeded_streams_match_the_documented_construction() -> None:
    result = foreach(i=range(3)).seed(99).do(lambda i: float(rng().random()))
    expected = [
        float(np.random.default_rng(np.random.SeedSequence(99, spawn_key=(k,))).random())
        for k in range(3)
    ]
    assert result == expected


def test_seeded_streams_differ_per_iteration_and_seed(backend: Backend) -> None:
    a = foreach(i=range(5)).seed(1).run(draws, backend=backend)
    b = foreach(i=range(5)).seed(2).run(draws, backend=backend)
    assert len({r[0] for r in a}) == 5
    assert a != b


def test_shorter_seeded_loop_is_prefix(backend: Backend) -> None:
    long = _reference(15, seed=7)
    assert foreach(i=range(6)).seed(7).run(draws, backend=backend) == long[:6]


def test_seed_streams_follow_index_not_filter(backend: Backend) -> None:
    full = _reference(10, seed=5)
    kept = foreach(i=range(10)).seed(5).when(lambda i: i % 3 == 0).run(draws, backend=backend)
    assert kept == [full[i] for i in range(0, 10, 3)]


def test_seeded_nested_loops(backend: Backend) -> None:
    loop = foreach(i=range(3)).nest(foreach(j=lambda i: range(i + 1))).seed(11)
    body = lambda i, j: float(rng().random())  # noqa: E731
    assert loop.run(body, backend=backend) == loop.do(body)


def test_rng_outside_a_loop_is_a_generator() -> None:
    assert isinstance(rng(), np.random.Generator)


# ------------------------------------------------------------------ decorator form


@foreach(x=range(5))
def squares(x: int) -> int:
    return x * x


def test_decorator_verbs() -> None:
    assert squares.combine(sum).do() == 30
    assert squares.combine(sum).do_parallel(workers=2) == 30
    assert squares.do() == [0, 1, 4, 9, 16]
    with pytest.warns(RuntimeWarning, match="no parallel backend registered") as record:
        assert squares.combine(sum).run() == 30
    assert len(record) == 1


def test_decorator_run_on_a_backend(backend: Backend) -> None:
    assert squares.combine(sum).run(backend=backend) == 30
    assert squares.when(lambda x: x % 2 == 0).run(backend=backend) == [0, 4, 16]
    assert squares.submit(backend=backend).result(timeout=60) == [0, 1, 4, 9, 16]


async def test_decorator_await_and_arun(backend: Backend) -> None:
    register(backend)
    assert await squares.combine(sum) == 30
    assert await foreach(x=range(5)).combine(sum).arun(square) == 30
    assert await squares.when(lambda x: x > 2).arun() == [9, 16]


def test_decorator_rejects_second_body() -> None:
    with pytest.raises(DolambdaError, match="already has a body"):
        squares.do(square)
    with pytest.raises(DolambdaError, match="already has a body"):
        squares(square)


def test_unbound_loop_is_not_awaitable() -> None:
    async def main() -> None:
        await foreach(x=range(2))

    with pytest.raises(DolambdaError, match="arun"):
        asyncio.run(main())


# ------------------------------------------------------------------ run / register


def test_run_without_backend_warns_once_and_runs_sequentially() -> None:
    thread_ids: list[int] = []

    def body(x: int) -> int:
        thread_ids.append(threading.get_ident())
        return x

    with pytest.warns(RuntimeWarning) as record:
        assert foreach(x=range(4)).run(body) == [0, 1, 2, 3]
    assert len(record) == 1
    assert "register" in str(record[0].message)
    assert set(thread_ids) == {threading.get_ident()}  # ran here, in this process


def test_run_warning_points_at_the_callers_line() -> None:
    with pytest.warns(RuntimeWarning) as record:
        foreach(x=range(2)).run(identity)
    assert record[0].filename == __file__


def test_registered_and_run_on_registered_backend() -> None:
    assert dolambda.registered() == ("sequential", 1)
    register(LOCAL2)
    assert dolambda.registered() == ("local", 2)
    assert foreach(x=range(4)).combine(sum).run(square) == 14  # no warning: it's an error here
    register("sequential")
    assert dolambda.registered() == ("sequential", 1)
    assert foreach(x=range(4)).combine(sum).run(square) == 14


def test_run_with_explicit_backend() -> None:
    assert foreach(x=range(3)).run(square, backend=LOCAL2) == [0, 1, 4]


def test_register_rejects_garbage() -> None:
    with pytest.raises(TypeError, match="register"):
        register("nonsense")
    with pytest.raises(TypeError, match="register"):
        register(42)  # type: ignore[arg-type]


# ------------------------------------------------------------------ submit / Job


def test_submit_result_and_progress(backend: Backend) -> None:
    job = foreach(x=range(6)).combine(sum).submit(square, backend=backend)
    assert isinstance(job, Job)
    assert job.result(timeout=60) == 55
    assert job.done()
    progress = job.progress
    assert (progress.done, progress.total, progress.failed) == (6, 6, 0)
    assert isinstance(job.id, str)
    assert job.id


async def test_submit_await_and_as_completed(backend: Backend) -> None:
    job = foreach(x=range(8)).chunk_size(1).submit(square, backend=backend)
    seen = [item async for item in job.as_completed()]
    assert sorted(seen) == [(x, x * x) for x in range(8)]
    assert await job == [x * x for x in range(8)]


async def test_as_completed_raises_the_jobs_error(backend: Backend) -> None:
    job = foreach(x=range(4)).submit(lambda x: 1 // (x - 2), backend=backend)
    with pytest.raises(TaskError):
        async for _ in job.as_completed():
            pass


def test_cancel_then_result_raises(backend: Backend) -> None:

    def body(x: int) -> int:
        import time

        time.sleep(0.05)
        return x

    job = foreach(x=range(400)).chunk_size(1).submit(body, backend=backend)
    # wait (bounded) until something has finished, then cancel
    next(_first_progress(job))
    job.cancel()
    with pytest.raises(JobCancelled):
        job.result(timeout=60)
    assert isinstance(JobCancelled("x"), DolambdaError)
    assert job.progress.done < 400


def _first_progress(job: Job) -> Iterator[int]:
    async def first() -> int:
        async for index, _ in job.as_completed():
            return index
        return -1

    yield asyncio.run(first())


async def test_cancel_from_async(backend: Backend) -> None:
    loop = foreach(x=range(400)).chunk_size(1)
    job = loop.submit(lambda x: __import__("time").sleep(0.05), backend=backend)
    async for _ in job.as_completed():
        break
    job.cancel()
    with pytest.raises(JobCancelled):
        await job


def test_submit_sequential_without_backend_warns() -> None:
    with pytest.warns(RuntimeWarning):
        job = foreach(x=range(3)).submit(square)
    assert job.result(timeout=60) == [0, 1, 4]


# ------------------------------------------------------------------ sync verbs in a running loop


async def test_sync_verbs_inside_running_event_loop(backend: Backend) -> None:
    assert foreach(x=range(4)).combine(sum).do_parallel(square, workers=2) == 14
    assert foreach(x=range(4)).do(square) == [0, 1, 4, 9]
    with pytest.warns(RuntimeWarning):
        assert foreach(x=range(4)).combine(sum).run(square) == 14
    assert foreach(x=range(4)).combine(sum).run(square, backend=backend) == 14
    register(backend)
    assert foreach(x=range(4)).combine(sum).run(square) == 14
    # the event loop keeps running meanwhile
    assert await asyncio.sleep(0, result="alive") == "alive"


async def test_arun_does_not_block_the_event_loop(backend: Backend) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    register(backend)  # a registered sequential backend runs the body on a thread here
    result = await foreach(x=range(6)).arun(slow_early)
    stop.set()
    await task
    assert result == [str(x) for x in range(6)]
    assert ticks >= 3


# ------------------------------------------------------------------ immutability


def test_every_builder_returns_a_new_unchanged_spec() -> None:
    base = foreach(x=range(5))
    snapshot = repr(base), base.model_dump()
    derived = [
        base.when(lambda x: x > 1),
        base.combine("+"),
        base.combine(sum, init=0, final=str, inorder=False, multicombine=True, maxcombine=3),
        base.errorhandling("pass"),
        base.seed(3),
        base.chunk_size(2),
        base.nest(foreach(y=range(2))),
        base(square),
    ]
    for new in derived:
        assert new is not base
        assert new != base
    assert (repr(base), base.model_dump()) == snapshot
    assert base.do(identity) == [0, 1, 2, 3, 4]
    assert derived[1].do(identity) == 10
    with pytest.raises((TypeError, ValueError)):
        base.seed_value = 5  # frozen


def test_spec_reusable_across_runs_and_backends(backend: Backend) -> None:
    loop = foreach(x=range(5)).combine("+").seed(1)
    assert loop.do(square) == loop.run(square, backend=backend) == loop.do(square) == 30
    assert loop.run(square, backend=backend) == loop.do_parallel(square, workers=2) == 30


def test_inner_loop_unchanged_by_nesting() -> None:
    inner = foreach(j=range(2)).combine("+")
    outer = foreach(i=range(2)).nest(inner)
    assert inner.do(identity if False else (lambda j: j)) == 1
    assert outer.do(lambda i, j: j) == [1, 1]


def test_strings_and_results_of_any_type(backend: Backend) -> None:
    assert foreach(x="ab").run(lambda x: {x: [x]}, backend=backend) == [{"a": ["a"]}, {"b": ["b"]}]
    assert foreach(x=range(3)).run(as_str, backend=backend) == ["0", "1", "2"]
