"""Property-based: ``.do`` and ``.do_parallel`` agree, whatever the loop."""

from __future__ import annotations

import operator
import os
import random
import tempfile
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dolambda import TaskError, foreach, rng
from dolambda._core.combine import CombineSpec

# Keep hypothesis' storage (example database, constants cache) out of the project root:
# pyproject's norecursedirs replaces pytest's defaults, so a .hypothesis directory there
# makes hypothesis warn at collection, and warnings are errors in this project.
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "dolambda-hypothesis")
)

# each .do_parallel run costs ~10-50 ms: keep the example counts modest
PARALLEL = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOCAL = settings(max_examples=60, deadline=None)

#: combine choices and whether their result depends on the order of the values
COMBINES: list[tuple[Any, bool]] = [
    ("list", True),
    ("c", True),
    ("+", False),
    ("max", False),
    ("min", False),
    ("rbind", True),
    (operator.add, False),
    (sum, False),
    (lambda *v: sum(v), False),
    (lambda a, b: [*a, b] if isinstance(a, list) else [a, b], True),
]

CHUNKS = st.sampled_from([1, 2, 3, 7, "auto"])


def _body(bad: frozenset[int]) -> Any:
    def body(x: int) -> int:
        if x in bad:
            raise ValueError(f"bad {x}")
        return (x * 7919) % 101

    return body


def _normalise(value: Any, ordered: bool) -> Any:
    if isinstance(value, BaseException):
        return (type(value).__name__, str(value))
    if isinstance(value, list):
        items = [_normalise(v, ordered) for v in value]
        return items if ordered else sorted(items, key=repr)
    return value


def _outcome(loop: Any, body: Any, parallel: bool, ordered: bool) -> Any:
    try:
        result = loop.do_parallel(body, workers=2) if parallel else loop.do(body)
    except TaskError as exc:
        return ("TaskError", exc.index)
    return ("ok", _normalise(result, ordered))


@PARALLEL
@given(
    n=st.integers(0, 40),
    chunk=CHUNKS,
    combine=st.sampled_from(range(len(COMBINES))),
    use_init=st.booleans(),
    inorder=st.booleans(),
    mode=st.sampled_from(["stop", "remove", "pass"]),
    bad=st.frozensets(st.integers(0, 40), max_size=4),
)
def test_do_and_do_parallel_agree(
    n: int,
    chunk: Any,
    combine: int,
    use_init: bool,
    inorder: bool,
    mode: str,
    bad: frozenset[int],
) -> None:
    fn, order_sensitive = COMBINES[combine]
    if mode == "pass" and fn not in ("list", "c", "rbind"):
        fn, order_sensitive = "list", True  # exceptions cannot be added up
    kwargs: dict[str, Any] = {"inorder": inorder}
    if use_init:
        kwargs["init"] = [] if fn in ("list", "c", "rbind") or order_sensitive else 0
    loop = foreach(x=range(n)).chunk_size(chunk).errorhandling(mode).combine(fn, **kwargs)
    body = _body(bad)
    ordered = inorder or not order_sensitive
    expected = _outcome(loop, body, parallel=False, ordered=ordered)
    got = _outcome(loop, body, parallel=True, ordered=ordered)
    if expected[0] == "TaskError":
        # stop fails fast: the parallel run may report any failing iteration first
        assert got[0] == "TaskError"
        assert got[1] in bad
        assert mode == "stop"
        assert expected[1] == min(b for b in bad if b < n)
    else:
        assert got == expected
        failing = {b for b in bad if b < n}
        assert mode != "stop" or not failing


def _draws(i: int) -> tuple[float, float, float]:
    return (float(rng().random()), random.random(), float(np.random.random()))


@PARALLEL
@given(
    n=st.integers(0, 25),
    seed=st.integers(0, 2**32),
    chunk=CHUNKS,
    keep=st.integers(1, 4),
)
def test_seeded_loops_agree_and_ignore_filters(n: int, seed: int, chunk: Any, keep: int) -> None:
    loop = foreach(i=range(n)).seed(seed).chunk_size(chunk)
    full = loop.do(_draws)
    assert loop.do_parallel(_draws, workers=2) == full
    filtered = loop.when(lambda i: i % keep == 0).do_parallel(_draws, workers=2)
    assert filtered == full[::keep]
    assert foreach(i=range(n // 2)).seed(seed).do(_draws) == full[: n // 2]


@PARALLEL
@given(
    sizes=st.lists(st.integers(0, 4), min_size=0, max_size=6),
    chunk=CHUNKS,
    inner_mode=st.sampled_from([None, "remove", "pass"]),
    bad=st.frozensets(st.integers(0, 3), max_size=2),
)
def test_nested_loops_agree(
    sizes: list[int], chunk: Any, inner_mode: str | None, bad: frozenset[int]
) -> None:
    inner = foreach(j=lambda i: range(sizes[i])).combine("c")
    if inner_mode is not None:
        inner = inner.errorhandling(inner_mode)
    loop = foreach(i=range(len(sizes))).chunk_size(chunk).nest(inner)

    def body(i: int, j: int) -> list[int]:
        if j in bad:
            raise ValueError(f"bad {i} {j}")
        return [i, j]

    expected = _outcome(loop, body, parallel=False, ordered=True)
    got = _outcome(loop, body, parallel=True, ordered=True)
    if expected[0] == "TaskError":
        assert got[0] == "TaskError"
    else:
        assert got == expected


@LOCAL
@given(
    values=st.lists(st.integers(-50, 50), max_size=30),
    maxcombine=st.integers(2, 8),
    use_init=st.booleans(),
    fn=st.sampled_from(["list", "c", "+", "max", "min", "rbind", "cbind", sum]),
)
def test_batching_does_not_change_associative_results(
    values: list[int], maxcombine: int, use_init: bool, fn: Any
) -> None:
    kwargs: dict[str, Any] = {"init": 0} if use_init else {}
    if use_init and fn in ("rbind", "cbind"):
        kwargs["init"] = []
    loop = foreach(v=values)
    whole = loop.combine(fn, maxcombine=1000, **kwargs).do(lambda v: v)
    batched = loop.combine(fn, maxcombine=maxcombine, **kwargs).do(lambda v: v)
    assert batched == whole


@LOCAL
@given(
    values=st.lists(st.integers(0, 9), max_size=30),
    maxcombine=st.integers(2, 6),
    order=st.randoms(use_true_random=False),
    init=st.booleans(),
)
def test_inorder_buffer_combines_in_slot_order(
    values: list[int], maxcombine: int, order: random.Random, init: bool
) -> None:
    """The accumulator, fed slots in any arrival order, makes the calls of in-order."""

    def run(arrival: list[int]) -> tuple[Any, list[tuple[Any, ...]]]:
        calls: list[tuple[Any, ...]] = []

        def rec(*v: Any) -> Any:
            calls.append(v)
            return sum(v)

        spec = CombineSpec(fn=rec, maxcombine=maxcombine, **({"init": 0} if init else {}))
        acc = spec.accumulator()
        for slot in arrival:
            acc.put(slot, values[slot])
        return acc.finish(), calls

    slots = list(range(len(values)))
    shuffled = slots[:]
    order.shuffle(shuffled)
    assert run(shuffled) == run(slots)
