"""The column-by-column task path: planning, wire, run, combine (see _plan.PlannedTask)."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dolambda import TaskError, foreach, times
from dolambda._backends.base import JobContext
from dolambda._backends.sealing import SealedJob
from dolambda._core.combine import CombineSpec
from dolambda._core.execute import WorkerState, run_iterations, run_task_blob
from dolambda._core.plan import _group, iter_plan, plan_tasks
from dolambda._core.spec import all_variables
from dolambda._core.tasks import HIDDEN, InnerDone, PlannedTask
from dolambda._wire.models import TaskOutcome, pack_ticks, unpack_ticks


def _leaves(items: list[Any]) -> list[tuple[int, tuple[int, ...], tuple[int, ...], dict[str, Any]]]:
    out = []
    for item in items:
        if isinstance(item, PlannedTask):
            for leaf in map(item.leaf, range(len(item))):
                out.append((leaf.index, leaf.path, leaf.slots, leaf.kwargs))
    return out


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 40),
    m=st.integers(0, 40),
    chunk=st.integers(1, 9),
    keep=st.sampled_from([None, 2, 3]),
    use_times=st.booleans(),
)
def test_flat_plan_matches_the_leaf_by_leaf_plan(
    n: int, m: int, chunk: int, keep: int | None, use_times: bool
) -> None:
    loop = times(n) if use_times else foreach(x=range(n), y=[f"v{i}" for i in range(m)])
    if keep is not None:
        predicate: Any = (lambda: True) if use_times else (lambda x, y, k=keep: x % k == 0)
        loop = loop.when(predicate)
    names = tuple(all_variables(loop))
    assert HIDDEN not in names
    flat = list(plan_tasks(loop, chunk))
    reference = list(_group(iter_plan(loop), chunk, names))
    assert _leaves(flat) == _leaves(reference)
    assert [len(t) for t in flat if isinstance(t, PlannedTask)] == [
        len(t) for t in reference if isinstance(t, PlannedTask)
    ]
    assert all(isinstance(t, PlannedTask) and t.flat for t in flat)


def test_nested_plan_keeps_explicit_paths_and_markers() -> None:
    loop = foreach(a=range(3)).nest(foreach(b=lambda a: range(a)))
    items = list(plan_tasks(loop, 2))
    tasks = [t for t in items if isinstance(t, PlannedTask)]
    assert [t.leaf(k).kwargs for t in tasks for k in range(len(t))] == [
        {"a": 1, "b": 0},
        {"a": 2, "b": 0},
        {"a": 2, "b": 1},
    ]
    assert not any(t.flat for t in tasks)
    assert [t.path(k) for t in tasks for k in range(len(t))] == [(1, 0), (2, 0), (2, 1)]
    assert sum(isinstance(i, InnerDone) for i in items) == 3


def test_leaves_must_be_consecutive() -> None:
    task = PlannedTask(0, 0, [(1,), (2,)], ("x",))
    with pytest.raises(ValueError, match="consecutive"):
        PlannedTask.from_leaves(0, [task.leaf(1), task.leaf(0)], ("x",))


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(0, 30),
    fn=st.sampled_from(["list", "c", "+", "max", "varargs", "pairwise"]),
    inorder=st.booleans(),
    maxcombine=st.sampled_from([None, 2, 3, 7]),
    seed=st.integers(0, 10_000),
)
def test_runs_combine_like_single_values(
    n: int, fn: str, inorder: bool, maxcombine: int | None, seed: int
) -> None:
    """Delivering values as runs (any split, any order, some slots skipped) combines
    exactly as delivering them one by one in slot order."""
    rng = random.Random(seed)
    values = [[i] if fn == "c" else i for i in range(n)]
    skipped = {i for i in range(n) if rng.random() < 0.2}
    combine: Any = {
        "varargs": lambda *xs: "<" + ".".join(map(str, xs)) + ">",  # shows every batch
        "pairwise": lambda a, b: f"({a}.{b})",
    }.get(fn, fn)
    multi = None if fn != "pairwise" else False
    spec = CombineSpec(
        combine,
        inorder=inorder,
        multicombine=multi,
        maxcombine=2 if fn == "pairwise" else maxcombine,
    )
    reference = spec.accumulator()
    for i in range(n):
        if i in skipped:
            reference.skip(i)
        else:
            reference.put(i, values[i])
    runs: list[tuple[int, list[Any] | None]] = []
    i = 0
    while i < n:
        if i in skipped:
            runs.append((i, None))
            i += 1
            continue
        j = i
        while j < n and j not in skipped and j - i < rng.randint(1, 6):
            j += 1
        runs.append((i, values[i:j]))
        i = j
    if not inorder:
        runs.sort(key=lambda r: r[0])  # without inorder, arrival order is the result's order
    else:
        rng.shuffle(runs)
    acc = spec.accumulator()
    for start, run in runs:
        if run is None:
            acc.skip(start)
        else:
            acc.put_run(start, run)
    assert acc.finish() == reference.finish()


def test_ticks_pack_as_float64() -> None:
    ticks = [1000.0, 1000.000001, 1000.25, 1003.75]
    assert unpack_ticks(pack_ticks(ticks)) == ticks
    assert TaskOutcome(job_id="j", task_id=0, ticks=pack_ticks(ticks)).ran == 3
    assert TaskOutcome(job_id="j", task_id=0).ran == 0


def test_run_iterations_times_and_seeds_each_iteration() -> None:
    def body(x: int) -> float:
        import random as r

        return r.random() if x != 2 else 1 / 0

    rows = [(i,) for i in range(4)]
    run = run_iterations(body, ("x",), rows, first=10, seed=7)
    again = run_iterations(body, ("x",), rows[1:], first=11, seed=7)
    assert len(run.ticks) == 5 and run.ticks == sorted(run.ticks)  # one reading around each
    assert list(run.errors) == [2] and run.errors[2].error_type == "ZeroDivisionError"
    assert isinstance(run.values[2], ZeroDivisionError)
    assert run.values[1] == again.values[0] and run.values[3] == again.values[2]  # by path


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"count": 3}, "2 argument rows and no paths for 3 iterations"),
        ({"paths": ((0,),)}, "2 argument rows and 1 paths for 2 iterations"),
    ],
)
def test_a_task_whose_columns_do_not_match_its_count_is_refused(
    update: dict[str, Any], message: str
) -> None:
    def body(x: int) -> int:
        return x

    ctx = SealedJob(
        JobContext(
            job_id="j1", body=body, seed=None, variables=("x",), chunk_size=2, errorhandling="stop"
        )
    )
    spec = ctx.encode_task(PlannedTask(0, 0, [(1,), (2,)], ("x",))).model_copy(update=update)
    from dolambda._wire import codec
    from dolambda._wire.codec import task_context

    blob = codec.seal_model(spec, key=ctx.key, context=task_context("j1", 0))
    outcome = run_task_blob(
        WorkerState(),
        blob,
        key=ctx.key,
        job_id="j1",
        task_id=0,
        fetch_job=lambda: (ctx.sealed_manifest, ctx.sealed_body),
    )
    assert outcome.failure is not None and outcome.failure.kind == "internal"
    assert message in outcome.failure.message


def _die_at_20(x: int) -> int:
    if x == 20:
        os._exit(3)
    return x * 2


def test_a_dying_worker_with_a_task_queued_behind_it_loses_only_its_own() -> None:
    """Short tasks are sent one ahead; when a worker dies, the task queued behind the
    one it was running runs elsewhere and nothing else is lost."""
    out = (
        foreach(x=range(60)).chunk_size(1).errorhandling("pass").do_parallel(_die_at_20, workers=2)
    )
    assert isinstance(out[20], TaskError) and out[20].error_type == "crashed"
    assert "iteration 20" in str(out[20])
    assert [v for i, v in enumerate(out) if i != 20] == [x * 2 for x in range(60) if x != 20]


def _swapped(y: int, x: int) -> tuple[int, int]:
    return (x, y)


def _extra(x: int, scale: int = 10, **more: Any) -> int:
    return x * scale


@pytest.mark.parametrize(
    ("fn", "names", "expected"),
    [
        (lambda x: x, ("x",), True),
        (lambda x, y=1: x, ("x",), True),
        (_swapped, ("x", "y"), False),
        (lambda *, x: x, ("x",), False),
        (lambda **kw: kw, ("x",), False),
        (lambda x, /: x, ("x",), False),
        (print, ("x",), False),
    ],
)
def test_binds_positionally_only_when_it_binds_the_same(
    fn: Any, names: tuple[str, ...], expected: bool
) -> None:
    from dolambda._core.execute import binds_positionally

    assert binds_positionally(fn, names) is expected


@pytest.mark.parametrize("verb", ["do", "do_parallel"])
def test_parameters_in_another_order_than_the_variables_bind_by_name(verb: str) -> None:
    loop = foreach(x=range(5), y=range(10, 15))
    run = getattr(loop, verb)
    assert run(_swapped) == [(x, x + 10) for x in range(5)]
    assert run(_extra) == [x * 10 for x in range(5)]


def _close_my_task_pipe_on_1(x: int) -> int:
    """At x == 1 the worker loses its task pipe (as if it died between two tasks):
    the client's next write to it fails with a broken pipe."""
    import sys

    if x == 1:
        os.close(int(sys.argv[1]))
    return x * 2


def test_a_worker_gone_while_a_task_is_sent_to_it_is_not_a_client_error() -> None:
    out = (
        foreach(x=range(8))
        .chunk_size(1)
        .errorhandling("pass")
        .do_parallel(_close_my_task_pipe_on_1, workers=1)
    )
    # the task queued in the lost pipe may be reported as crashed; nothing else is lost
    for x, value in enumerate(out):
        if isinstance(value, TaskError):
            assert x == 2 and value.error_type == "crashed"
        else:
            assert value == x * 2
