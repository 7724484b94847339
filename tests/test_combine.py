"""DESIGN §2, combine: every form, init, final, inorder, multicombine batching."""

from __future__ import annotations

import operator
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dolambda import DolambdaError, foreach
from tests.bodies.common import finish_after
from tests.helpers import Recorder, as_str, both, identity, run, slow_early

SHORTHANDS = ["list", "c", "+", "*", "max", "min", "cbind", "rbind"]


def _custom_reducer(values: list[Any]) -> Any:
    return sum(values) + 0


def _star(*values: Any) -> Any:
    return sum(values)


def _acc_star(acc: Any, *rest: Any) -> Any:
    return acc + sum(rest)


ALL_FORMS: list[Any] = [
    *SHORTHANDS,
    operator.add,
    lambda a, b: a + b,
    sum,
    max,
    _custom_reducer,
    _star,
    _acc_star,
]


# ------------------------------------------------------------------ zero / one result


@both
@pytest.mark.parametrize("form", ALL_FORMS)
def test_zero_iterations_without_init(form: Any, how: str) -> None:
    expected = [] if form == "list" else None
    assert run(foreach(x=[]).combine(form), identity, how) == expected


@both
@pytest.mark.parametrize("form", ALL_FORMS)
def test_zero_iterations_with_init_gives_init(form: Any, how: str) -> None:
    assert run(foreach(x=[]).combine(form, init=7), identity, how) == 7


def test_zero_iterations_default_list() -> None:
    assert foreach(x=[]).do(identity) == []
    assert foreach(x=range(0)).do_parallel(identity, workers=2) == []


@both
@pytest.mark.parametrize("form", ALL_FORMS)
def test_one_result_without_init_is_the_value(form: Any, how: str) -> None:
    result = run(foreach(x=[[3, 4]]).combine(form), identity, how)
    assert result == ([[3, 4]] if form == "list" else [3, 4])


@both
@pytest.mark.parametrize("kind", ["pairwise", "reducer", "varargs"])
def test_combine_never_called_with_one_result_and_no_init(kind: str, how: str) -> None:
    rec = Recorder()
    fn = getattr(rec, kind)
    assert run(foreach(x=[5]).combine(fn), identity, how) == 5
    assert rec.calls == []


@both
@pytest.mark.parametrize("kind", ["pairwise", "reducer", "varargs"])
def test_one_result_with_init_calls_combine_once(kind: str, how: str) -> None:
    rec = Recorder()
    fn = getattr(rec, kind)
    assert run(foreach(x=[5]).combine(fn, init=100), identity, how) == 105
    assert rec.calls == [(100, 5)]


@both
def test_zero_iterations_never_call_combine_or_skip_final(how: str) -> None:
    rec = Recorder()
    seen: list[Any] = []

    def final(acc: Any) -> Any:
        seen.append(acc)
        return ("final", acc)

    assert run(foreach(x=[]).combine(rec.pairwise, final=final), identity, how) == ("final", None)
    assert run(foreach(x=[]).combine("list", final=final), identity, how) == ("final", [])
    assert run(foreach(x=[]).combine(rec.reducer, init=0, final=final), identity, how) == (
        "final",
        0,
    )
    assert rec.calls == []
    assert seen == [None, [], 0]


# ------------------------------------------------------------------ each form


@both
@pytest.mark.parametrize(
    ("form", "expected", "with_init"),
    [
        ("list", [0, 1, 2, 3], ["init", 0, 1, 2, 3]),
        ("c", [0, 1, 2, 3], [-1, 0, 1, 2, 3]),
        ("+", 6, 106),
        ("*", 0, 0),
        ("max", 3, 100),
        ("min", 0, -1),
        (operator.add, 6, 106),
        (lambda a, b: a + b, 6, 106),
        (sum, 6, 106),
        (max, 3, 100),
        (_custom_reducer, 6, 106),
        (_star, 6, 106),
        (_acc_star, 6, 106),
    ],
)
def test_scalar_forms(form: Any, expected: Any, with_init: Any, how: str) -> None:
    loop = foreach(x=range(4))
    assert run(loop.combine(form), identity, how) == expected
    init = {"list": "init", "c": -1, "min": -1}.get(form, 100) if isinstance(form, str) else 100
    assert run(loop.combine(form, init=init), identity, how) == with_init


@both
def test_multiply(how: str) -> None:
    assert run(foreach(x=range(1, 5)).combine("*"), identity, how) == 24
    assert run(foreach(x=range(1, 5)).combine("*", init=10), identity, how) == 240


def _c_body(x: int) -> Any:
    return [None, x, [x, x], (x, "t"), "ab"][x % 5]


@both
def test_c_splices_lists_and_tuples_and_drops_none(how: str) -> None:
    result = run(foreach(x=range(6)).combine("c"), _c_body, how)
    # x=0 None dropped, 1 scalar, 2 list spliced, 3 tuple spliced, 4 string kept whole, 5 None
    assert result == [1, 2, 2, 3, "t", "ab"]
    with_init = run(foreach(x=range(6)).combine("c", init=[9, 8]), _c_body, how)
    assert with_init == [9, 8, 1, 2, 2, 3, "t", "ab"]


def _row(x: int) -> list[int]:
    return [x, x * 10]


def _arr(x: int) -> Any:
    return np.array([x, x * 10])


@both
def test_rbind_and_cbind_lists(how: str) -> None:
    loop = foreach(x=range(3))
    assert run(loop.combine("rbind"), _row, how) == [[0, 0], [1, 10], [2, 20]]
    assert run(loop.combine("cbind"), _row, how) == [[0, 1, 2], [0, 10, 20]]
    assert run(loop.combine("rbind"), identity, how) == [[0], [1], [2]]
    assert run(loop.combine("cbind"), identity, how) == [[0, 1, 2]]


@both
def test_rbind_and_cbind_with_init(how: str) -> None:
    loop = foreach(x=range(2))
    assert run(loop.combine("rbind", init=[[-1, -1]]), _row, how) == [[-1, -1], [0, 0], [1, 10]]
    assert run(loop.combine("cbind", init=[[-1], [-2]]), _row, how) == [[-1, 0, 1], [-2, 0, 10]]


@both
@pytest.mark.parametrize("form", ["rbind", "cbind"])
def test_bind_with_empty_init_ignores_it(form: str, how: str) -> None:
    # R's rbind/cbind ignore NULL and zero-length arguments; init=[] is "an empty matrix".
    # (BUG fixed in _combine.py: rbind added an empty row, cbind raised about lengths.)
    expected = run(foreach(x=range(3)).combine(form), _row, how)
    assert run(foreach(x=range(3)).combine(form, init=[]), _row, how) == expected
    assert run(foreach(x=range(1)).combine(form, init=[]), _row, how) == (
        [[0, 0]] if form == "rbind" else [[0], [0]]
    )


def _series(x: int) -> Any:
    import pandas as pd

    return pd.Series({"a": x, "b": x * 10})


def _named_series(x: int) -> Any:
    import pandas as pd

    return pd.Series({"a": x, "b": x * 10}, name=f"r{x}")


def _record(x: int) -> dict[str, int]:
    return {"a": x, "b": x * 10}


@both
@pytest.mark.parametrize("maxcombine", [None, 2])
def test_rbind_of_series_and_dicts_gives_one_row_per_result(how: str, maxcombine: Any) -> None:
    # R's rbind of named vectors gives rows (it was one long Series, and dicts gave a list
    # of one-element lists); the same rows whatever the batches
    pd = pytest.importorskip("pandas")
    loop = foreach(x=range(5)).combine("rbind", maxcombine=maxcombine)
    expected = pd.DataFrame({"a": range(5), "b": range(0, 50, 10)})
    for body in (_series, _record):
        frame = run(loop, body, how)
        assert isinstance(frame, pd.DataFrame)
        pd.testing.assert_frame_equal(frame, expected, check_dtype=False)
    named = run(loop, _named_series, how)
    assert list(named.index) == [f"r{x}" for x in range(5)]
    assert named.loc["r3", "b"] == 30


def test_rbind_of_dicts_without_pandas_gives_rows_of_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "pandas", None)  # import pandas fails
    assert foreach(x=range(3)).combine("rbind").do(_record) == [[0, 0], [1, 10], [2, 20]]


def test_a_reducer_over_zero_iterations_gives_none_unless_init() -> None:
    # as documented next to the combine(sum) example: R's NULL, not sum([]) == 0
    assert foreach(x=range(0)).combine(sum).do(identity) is None
    assert foreach(x=range(0)).combine(sum, init=0).do(identity) == 0


@both
def test_rbind_and_cbind_numpy(how: str) -> None:
    loop = foreach(x=range(3))
    rows = run(loop.combine("rbind"), _arr, how)
    cols = run(loop.combine("cbind"), _arr, how)
    assert isinstance(rows, np.ndarray)
    assert isinstance(cols, np.ndarray)
    np.testing.assert_array_equal(rows, [[0, 0], [1, 10], [2, 20]])
    np.testing.assert_array_equal(cols, [[0, 1, 2], [0, 10, 20]])
    with_init = run(loop.combine("rbind", init=np.array([[-1, -1]])), _arr, how)
    np.testing.assert_array_equal(with_init, [[-1, -1], [0, 0], [1, 10], [2, 20]])


@both
@pytest.mark.parametrize("form", ["rbind", "cbind"])
@pytest.mark.parametrize("body", [_row, _arr, identity])
def test_bind_batched_equals_unbatched(form: str, body: Any, how: str) -> None:
    loop = foreach(x=range(7))
    whole = run(loop.combine(form), body, how)
    batched = run(loop.combine(form, maxcombine=3), body, how)
    np.testing.assert_array_equal(np.asarray(batched), np.asarray(whole))


@both
def test_np_concatenate_reducer(how: str) -> None:
    result = run(foreach(x=range(3)).combine(np.concatenate), _arr, how)
    np.testing.assert_array_equal(result, [0, 0, 1, 10, 2, 20])
    batched = run(foreach(x=range(5)).combine(np.concatenate, maxcombine=2), _arr, how)
    np.testing.assert_array_equal(batched, np.concatenate([_arr(x) for x in range(5)]))


@both
def test_final(how: str) -> None:
    loop = foreach(x=range(4))
    assert run(loop.combine("+", final=lambda s: s * 100), identity, how) == 600
    assert run(loop.combine("list", final=tuple), identity, how) == (0, 1, 2, 3)
    assert run(loop.combine(sum, init=1, final=str), identity, how) == "7"
    assert run(loop.combine(final=len), identity, how) == 4


# ------------------------------------------------------------------ order


@both
@pytest.mark.parametrize("chunk", [1, 2, "auto"])
def test_non_commutative_inorder(chunk: Any, how: str) -> None:
    loop = foreach(x=range(8)).chunk_size(chunk)
    assert run(loop.combine(operator.add), slow_early, how) == "01234567"
    assert run(loop.combine(lambda a, b: [*a, b], init=[]), identity, how) == list(range(8))
    assert run(loop.combine(lambda *a: "".join(a)), as_str, how) == "01234567"


def test_inorder_despite_out_of_order_completion(tmp_path: Path) -> None:
    finished: list[str] = []

    def concat(a: str, b: str) -> str:
        return a + b

    def record_unordered(a: list[str], b: str) -> list[str]:
        finished.append(b)
        return [*a, b]

    # iteration 0 waits for iteration 5's marker, so it finishes after it on any load
    body = finish_after(str(tmp_path), first=0, last=5)
    loop = foreach(x=range(6)).chunk_size(1)
    unordered = loop.combine(record_unordered, init=[], inorder=False)
    assert sorted(unordered.do_parallel(body, workers=3)) == [str(i) for i in range(6)]
    # completion order differed from input order: 0 came after 5
    assert finished.index("0") > finished.index("5")
    for marker in tmp_path.iterdir():
        marker.unlink()
    assert loop.combine(concat).do_parallel(body, workers=3) == "012345"


@both
@pytest.mark.parametrize("chunk", [1, 3])
def test_inorder_false_same_multiset(chunk: int, how: str) -> None:
    loop = foreach(x=range(10)).chunk_size(chunk)
    result = run(loop.combine(lambda a, b: [*a, b], init=[], inorder=False), slow_early, how)
    assert sorted(result, key=int) == [str(i) for i in range(10)]
    listed = run(loop.combine("list", inorder=False), identity, how)
    assert sorted(listed) == list(range(10))
    assert run(loop.combine("+", inorder=False), identity, how) == 45


# ------------------------------------------------------------------ multicombine batching


def _calls(loop: Any, fn: Any, how: str) -> tuple[Any, list[tuple[Any, ...]]]:
    rec = Recorder()
    result = run(loop(rec), fn, how)
    return result, rec.calls


@both
def test_varargs_batches_of_maxcombine(how: str) -> None:
    result, calls = _calls(
        lambda rec: foreach(x=range(10)).combine(rec.varargs, maxcombine=3), identity, how
    )
    assert result == 45
    # the accumulator counts as one; the remainder is flushed at the end
    assert calls == [(0, 1, 2), (3, 3, 4), (10, 5, 6), (21, 7, 8), (36, 9)]


@both
def test_reducer_batches_with_init(how: str) -> None:
    result, calls = _calls(
        lambda rec: foreach(x=range(10)).combine(rec.reducer, init=100, maxcombine=4),
        identity,
        how,
    )
    assert result == 145
    assert calls == [(100, 0, 1, 2), (103, 3, 4, 5), (115, 6, 7, 8), (136, 9)]


@both
def test_pairwise_is_folded_left_to_right(how: str) -> None:
    result, calls = _calls(lambda rec: foreach(x=range(5)).combine(rec.pairwise), identity, how)
    assert result == 10
    assert calls == [(0, 1), (1, 2), (3, 3), (6, 4)]


@both
def test_default_maxcombine_is_100_for_reducers(how: str) -> None:
    result, calls = _calls(lambda rec: foreach(x=range(150)).combine(rec.reducer), identity, how)
    assert result == sum(range(150))
    assert [len(c) for c in calls] == [100, 51]
    assert calls[1][0] == sum(range(100))


@both
def test_multicombine_off_for_reducer_gives_pairs(how: str) -> None:
    _, calls = _calls(
        lambda rec: foreach(x=range(4)).combine(rec.reducer, multicombine=False), identity, how
    )
    assert calls == [(0, 1), (1, 2), (3, 3)]


@both
def test_same_call_sequence_on_every_backend(how: str) -> None:
    def loop(rec: Recorder) -> Any:
        return foreach(x=range(23)).chunk_size(2).combine(rec.varargs, init=0, maxcombine=5)

    def body(x: int) -> int:
        time.sleep(0.01 if x % 5 == 0 else 0)  # finish out of order on workers
        return x

    expected = _calls(loop, body, "do")
    assert _calls(loop, body, how) == expected


@both
def test_plus_with_multicombine(how: str) -> None:
    assert run(foreach(x=range(10)).combine("+", multicombine=True), identity, how) == 45


def test_maxcombine_validation() -> None:
    for bad in (1, 0, -3):
        with pytest.raises(DolambdaError, match=r"maxcombine must be at least 2.*got"):
            foreach(x=range(3)).combine(sum, maxcombine=bad)
    with pytest.raises(TypeError, match="maxcombine"):
        foreach(x=range(3)).combine(sum, maxcombine=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"two arguments.*multicombine"):
        foreach(x=range(3)).combine(operator.add, multicombine=True)
    # a pairwise function with multicombine and maxcombine=2 is fine
    loop = foreach(x=range(3)).combine(operator.add, multicombine=True, maxcombine=2)
    assert loop.do(identity) == 3


def test_combine_callable_shape_validation() -> None:
    with pytest.raises(ValueError, match=r"two positional arguments.*one.*\*args"):
        foreach(x=range(3)).combine(lambda a, b, c: a)
    with pytest.raises(TypeError, match="combine"):
        foreach(x=range(3)).combine(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="final"):
        foreach(x=range(3)).combine(sum, final=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="inorder"):
        foreach(x=range(3)).combine(sum, inorder="yes")  # type: ignore[arg-type]


def test_unknown_shorthand_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown shorthand 'sum'") as info:
        foreach(x=range(3)).combine("sum")
    for name in SHORTHANDS:
        assert repr(name) in str(info.value)


# ------------------------------------------------------------------ init is never shared


def _append(acc: list[Any], x: Any) -> list[Any]:
    acc.append(x)
    return acc


@both
def test_mutating_combine_does_not_leak_between_runs(how: str) -> None:
    # BUG fixed in _combine.py: init was shared by every run of the (immutable) spec,
    # so a combine appending to its accumulator saw the results of earlier runs.
    loop = foreach(x=range(3)).combine(_append, init=[])
    assert run(loop, identity, how) == [0, 1, 2]
    assert run(loop, identity, how) == [0, 1, 2]
    assert loop.combine_spec.init == []
    assert run(foreach(x=[]).combine(_append, init=[]), identity, how) == []


@both
def test_mutating_inner_combine_is_per_outer_value(how: str) -> None:
    inner = foreach(j=range(2)).combine(_append, init=[])
    result = run(foreach(i=range(3)).nest(inner), lambda i, j: (i, j), how)
    assert result == [[(i, 0), (i, 1)] for i in range(3)]
