"""DESIGN §2 errorhandling, and bad input rejected with clear messages."""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dolambda
from dolambda import DolambdaError, TaskError, foreach, times
from tests.helpers import both, fail_on, identity, run

# ------------------------------------------------------------------ errorhandling modes


def _div(x: int) -> float:
    return 10 / (x - 2)


@both
def test_stop_raises_task_error_naming_index_and_variables(how: str) -> None:
    with pytest.raises(TaskError) as info:
        run(foreach(x=range(5), label="abcde"), lambda x, label: _div(x), how)
    err = info.value
    assert isinstance(err, DolambdaError)
    assert err.index == 2
    assert err.variables == {"x": 2, "label": "c"}
    assert err.error_type == "ZeroDivisionError"
    assert isinstance(err.exception, ZeroDivisionError)
    text = str(err)
    assert "iteration 2" in text
    assert "x=2" in text
    assert "label='c'" in text
    assert "ZeroDivisionError: division by zero" in text
    # the remote traceback shows the body's frame
    assert "Traceback (most recent call last)" in err.remote_traceback
    assert "in _div" in err.remote_traceback
    assert "return 10 / (x - 2)" in err.remote_traceback
    assert "Remote traceback" in text


@both
def test_stop_reports_zero_based_index(how: str) -> None:
    with pytest.raises(TaskError) as info:
        run(foreach(x=[7, 8, 9]), fail_on(frozenset({7})), how)
    assert info.value.index == 0
    assert info.value.variables == {"x": 7}


def test_stop_fails_fast_sequentially() -> None:
    ran: list[int] = []

    def body(x: int) -> int:
        ran.append(x)
        if x == 3:
            raise ValueError("three")
        return x

    with pytest.raises(TaskError, match="iteration 3"):
        foreach(x=range(100)).do(body)
    assert ran == [0, 1, 2, 3]


def test_stop_fails_fast_in_parallel(tmp_path: Path) -> None:
    def body(x: int) -> int:
        import time

        (tmp_path / f"ran-{x}").touch()
        if x == 1:
            raise ValueError("early failure")
        time.sleep(0.02)
        return x

    with pytest.raises(TaskError, match="iteration 1"):
        foreach(x=range(200)).chunk_size(1).do_parallel(body, workers=2)
    ran = len(list(tmp_path.iterdir()))
    assert ran < 100, f"{ran} of 200 iterations ran after the failure"


@both
def test_remove_drops_failed_iterations(how: str) -> None:
    body = fail_on(frozenset({0, 3, 4}))
    assert run(foreach(x=range(6)).errorhandling("remove"), body, how) == [10, 20, 50]
    combined = foreach(x=range(6)).errorhandling("remove").combine("+")
    assert run(combined, body, how) == 80
    all_fail = foreach(x=range(3)).errorhandling("remove")
    assert run(all_fail, fail_on(frozenset({0, 1, 2})), how) == []
    assert run(all_fail.combine("+", init=0), fail_on(frozenset({0, 1, 2})), how) == 0


@both
def test_pass_gives_the_exception_object(how: str) -> None:
    result = run(foreach(x=range(4)).errorhandling("pass"), fail_on(frozenset({1, 2})), how)
    assert result[0] == 0
    assert result[3] == 30
    for x in (1, 2):
        assert type(result[x]) is ValueError
        assert result[x].args == (f"bad {x}",)


@both
def test_pass_with_combine(how: str) -> None:
    loop = foreach(x=range(3)).errorhandling("pass").combine(lambda a, b: [*a, type(b)], init=[])
    assert run(loop, _div, how) == [float, float, ZeroDivisionError]


@both
def test_sys_exit_in_body_is_an_iteration_error(how: str) -> None:
    def body(x: int) -> int:
        if x == 1:
            sys.exit(4)
        return x

    with pytest.raises(TaskError) as info:
        run(foreach(x=range(3)), body, how)
    assert info.value.index == 1
    assert "sys.exit(4)" in str(info.value)
    result = run(foreach(x=range(3)).errorhandling("pass"), body, how)
    assert result[0] == 0
    assert result[2] == 2
    assert isinstance(result[1], SystemExit)


def test_unpicklable_result_fails_its_iteration_only() -> None:
    def body(x: int) -> Any:
        return (i for i in range(3)) if x == 1 else x

    result = foreach(x=range(3)).errorhandling("pass").do_parallel(body, workers=2)
    assert result[0] == 0
    assert result[2] == 2
    assert isinstance(result[1], TaskError)
    with pytest.raises(TaskError, match=r"iteration 1.*cannot be pickled"):
        foreach(x=range(3)).do_parallel(body, workers=2)


# ------------------------------------------------------------------ dying workers


def _exit_on_2(x: int) -> int:
    if x == 2:
        os._exit(3)
    return x


def _sigkill_on_2(x: int) -> int:
    if x == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


@pytest.mark.parametrize(
    ("body", "reason"), [(_exit_on_2, "exited with code 3"), (_sigkill_on_2, "SIGKILL")]
)
def test_worker_death_is_a_task_error_not_a_hang(body: Any, reason: str) -> None:
    loop = foreach(x=range(5)).chunk_size(1)
    with pytest.raises(TaskError, match=reason) as info:
        loop.do_parallel(body, workers=2)
    assert info.value.index == 2
    assert "iteration 2" in str(info.value)
    assert info.value.variables == {"x": 2}
    passed = loop.errorhandling("pass").do_parallel(body, workers=2)
    assert [passed[i] for i in (0, 1, 3, 4)] == [0, 1, 3, 4]
    assert isinstance(passed[2], TaskError)
    removed = loop.errorhandling("remove").do_parallel(body, workers=2)
    assert removed == [0, 1, 3, 4]
    # the pool replaced the dead worker
    assert foreach(x=range(4)).combine("+").do_parallel(identity, workers=2) == 6


# ------------------------------------------------------------------ serialization


def test_body_capturing_a_socket_names_it() -> None:
    sock = socket.socket()
    try:

        def body(x: int) -> int:
            return sock.fileno() + x

        assert foreach(x=range(2)).do(body) == [sock.fileno(), sock.fileno() + 1]
        with pytest.raises(dolambda.DolambdaError, match=r"captures 'sock'.*socket"):
            foreach(x=range(2)).do_parallel(body, workers=2)
    finally:
        sock.close()


def test_body_capturing_a_generator_names_it() -> None:
    gen: Iterator[int] = iter(x for x in range(10))
    with pytest.raises(dolambda.DolambdaError, match=r"captures 'gen'.*generator"):
        foreach(x=range(2)).do_parallel(lambda x: next(gen), workers=2)


def test_unpicklable_variable_names_it() -> None:
    gens = [iter(x for x in range(2)), iter(x for x in range(2))]
    with pytest.raises(DolambdaError, match=r"variable 'g' of iteration 0.*generator"):
        foreach(g=gens).do_parallel(lambda g: 1, workers=2)
    assert foreach(g=gens).do(lambda g: next(g)) == [0, 0]


# ------------------------------------------------------------------ bad input


def test_foreach_without_variables() -> None:
    with pytest.raises(ValueError, match=r"at least one iteration variable.*times\(n\)"):
        foreach()


def test_foreach_positional_argument() -> None:
    with pytest.raises(TypeError):
        foreach(range(3))  # type: ignore[call-arg]


@pytest.mark.parametrize("value", [3, 2.5, None, True])
def test_non_iterable_variable(value: Any) -> None:
    with pytest.raises(TypeError, match=r"variable 'x' is not iterable") as info:
        foreach(ok=range(3), x=value)
    assert isinstance(info.value, DolambdaError)


def test_callable_variable_outside_nest() -> None:
    with pytest.raises(TypeError, match=r"variable 'x' is a function.*nest"):
        foreach(x=lambda: range(3)).do(identity)


def test_body_parameters_must_match_variables() -> None:
    loop = foreach(x=range(3), y=range(3))
    with pytest.raises(ValueError, match=r"body.*takes \(x\).*\(x, y\).*does not accept 'y'"):
        loop.do(identity)
    with pytest.raises(ValueError, match=r"requires 'z', which the loop does not define"):
        loop.do(lambda x, y, z: 1)
    with pytest.raises(ValueError, match="does not accept"):
        loop.do_parallel(lambda x: 1, workers=2)
    with pytest.raises(ValueError, match=r"\(no variables\).*requires 'x'"):
        times(2).do(lambda x: 1)
    # defaults and **kwargs are fine
    assert loop.do(lambda x, y, z=5: x + y + z) == [5, 7, 9]


def test_when_predicate_parameters_must_match() -> None:
    with pytest.raises(ValueError, match=r"when\(\) predicate.*does not accept 'y'"):
        foreach(x=range(3), y=range(3)).when(lambda x: True).do(lambda x, y: 1)
    with pytest.raises(TypeError, match="when"):
        foreach(x=range(3)).when(True)  # type: ignore[arg-type]
    inner = foreach(j=range(2)).when(lambda j: True)  # must also accept the outer i
    with pytest.raises(ValueError, match=r"when\(\) predicate.*does not accept 'i'"):
        foreach(i=range(2)).nest(inner).do(lambda i, j: 1)


def test_inner_callable_parameters_must_match_outer_variables() -> None:
    # BUG fixed in _plan.py: this raised a bare TypeError from inside the planner
    loop = foreach(i=range(3)).nest(foreach(j=lambda k: range(k)))
    with pytest.raises(ValueError, match=r"variable 'j'.*requires 'k'.*outer loop's variables"):
        loop.do(lambda i, j: 1)


def test_no_body() -> None:
    with pytest.raises(ValueError, match="no loop body"):
        foreach(x=range(2)).do()
    with pytest.raises(TypeError, match="body must be a function"):
        foreach(x=range(2))(42)  # type: ignore[arg-type]


def test_invalid_errorhandling_mode() -> None:
    with pytest.raises(ValueError, match=r"unknown mode 'ignore'.*'stop', 'remove' or 'pass'"):
        foreach(x=range(3)).errorhandling("ignore")


@pytest.mark.parametrize("size", [0, -1])
def test_chunk_size_must_be_positive(size: int) -> None:
    with pytest.raises(ValueError, match=rf"chunk_size.*at least 1.*{size}"):
        foreach(x=range(3)).chunk_size(size)


def test_chunk_size_type() -> None:
    with pytest.raises(TypeError, match="chunk_size"):
        foreach(x=range(3)).chunk_size("big")
    with pytest.raises(TypeError, match="chunk_size"):
        foreach(x=range(3)).chunk_size(2.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [-1, 1.5, "7", True])
def test_invalid_seed(seed: Any) -> None:
    with pytest.raises((ValueError, TypeError), match="seed: expected a non-negative integer"):
        foreach(x=range(3)).seed(seed)


@pytest.mark.parametrize("n", [-1, 2.0, "3"])
def test_invalid_times(n: Any) -> None:
    with pytest.raises((ValueError, TypeError), match="times: expected a non-negative integer"):
        times(n)


def test_nest_validation() -> None:
    with pytest.raises(ValueError, match=r"redefines i"):
        foreach(i=range(2)).nest(foreach(i=range(2)))
    with pytest.raises(TypeError, match="nest"):
        foreach(i=range(2)).nest(range(3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not have a body"):
        foreach(i=range(2)).nest(foreach(j=range(2))(lambda j: j))


def test_nest_detects_deep_name_clash() -> None:
    with pytest.raises(ValueError, match="redefines i"):
        foreach(i=range(2)).nest(foreach(j=range(2)).nest(foreach(i=range(2))))


def test_times_nested_in_times() -> None:
    assert times(2).nest(times(3)).do(lambda: 1) == [[1, 1, 1], [1, 1, 1]]


def test_generator_error_propagates_unchanged() -> None:
    def gen() -> Iterator[int]:
        yield 1
        raise KeyError("source broke")

    with pytest.raises(KeyError, match="source broke"):
        foreach(x=gen()).do(identity)


def test_backend_argument_type() -> None:
    with pytest.raises(TypeError, match="backend"):
        foreach(x=range(2)).run(identity, backend="local")  # type: ignore[arg-type]


def test_local_backend_workers_validation() -> None:
    with pytest.raises(ValueError, match="workers must be at least 1"):
        dolambda.LocalBackend(0)
    with pytest.raises(TypeError, match="workers must be an integer"):
        dolambda.LocalBackend(1.5)  # type: ignore[arg-type]
