"""What a new user meets first (issue 15's papercuts), each case on the backends it concerns:
independent seeded streams, the error names, the messages, the sync/async verbs, the combine
shapes, job-level failures and where the output goes."""

from __future__ import annotations

import io
import pickle
import pydoc
import random
import sys
import warnings
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from dolambda import (
    Backend,
    InvalidArgumentType,
    Job,
    JobCancelled,
    Loop,
    SerializationError,
    TaskError,
    VersionMismatch,
    foreach,
    register,
)
from tests.bodies.papercuts import three_streams
from tests.helpers import LOCAL2, identity, square

# ------------------------------------------------------------------ seeds (#3)


def _documented_streams(seed: int, k: int) -> tuple[list[float], list[float], list[float]]:
    """What ``.seed()``'s docstring says iteration k draws from each generator."""

    def words(*key: int) -> Any:
        return np.random.SeedSequence(seed, spawn_key=key).generate_state(4)

    python = random.Random(int.from_bytes(words(k, 0).tobytes(), "little"))
    legacy = np.random.RandomState(words(k, 1))
    own = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k,)))
    return (
        [float(x) for x in own.random(3)],
        [python.random() for _ in range(3)],
        [float(x) for x in legacy.random_sample(3)],
    )


def test_seeded_random_and_numpy_global_streams_are_independent(backend: Backend) -> None:
    result = foreach(i=range(4)).seed(7).run(three_streams, backend=backend)
    for own, python, legacy in result:
        assert len({*own, *python, *legacy}) == 9  # no two generators share a draw
    assert result == [_documented_streams(7, k) for k in range(4)]


# ------------------------------------------------------------------ messages (#16, #20)


def test_unnamed_foreach_variable_says_to_name_it() -> None:
    with pytest.raises(InvalidArgumentType, match=r"name each one, e\.g\. foreach\(x=range"):
        foreach(range(3))
    with pytest.raises(TypeError, match=r"foreach\(x=\[1, 2\], y='ab'\)"):
        foreach([1, 2], "ab")


def test_run_without_a_backend_warns_once_per_process() -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")  # count every warning given, not pytest's dedup
        assert foreach(x=range(3)).run(identity) == [0, 1, 2]
        assert foreach(x=range(2)).combine(sum).run(identity) == 1
        foreach(x=range(2)).submit(identity).result(timeout=60)
    assert [str(w.message).split(":")[0] for w in record] == ["no parallel backend registered"]
    register("sequential")  # registering the sequential backend is not "none registered"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert foreach(x=range(2)).run(identity) == [0, 1]
    assert record == []
    register(None)  # back to a fresh process's state: the warning is armed again
    with pytest.warns(RuntimeWarning, match="no parallel backend registered"):
        foreach(x=range(2)).run(identity)


# ------------------------------------------------------------------ as_completed (#13)


def test_as_completed_works_with_a_plain_for(backend: Backend) -> None:
    job = foreach(x=range(8)).chunk_size(1).submit(square, backend=backend)
    seen = [item for item in job.as_completed()]
    assert sorted(seen) == [(x, x * x) for x in range(8)]
    assert job.done()
    assert sorted(job.as_completed()) == sorted(seen)  # again, once finished: the same items
    assert job.result(timeout=60) == [x * x for x in range(8)]


def test_plain_for_over_as_completed_raises_the_jobs_error(backend: Backend) -> None:
    job = foreach(x=range(4)).submit(lambda x: 1 // (x - 2), backend=backend)
    with pytest.raises(TaskError, match="iteration 2"):
        for _ in job.as_completed():
            pass


def test_plain_for_over_a_job_cancelled_before_it_ran_ends() -> None:
    # cancelled before it reached the portal's loop (deterministically: before start),
    # and right after submit (either side of the start): JobCancelled, never a hang or a
    # bare concurrent.futures.CancelledError
    early = Job(foreach(x=range(100)), square, LOCAL2)
    early.cancel()
    early.start_on_portal()
    with pytest.raises(JobCancelled):
        for _ in early.as_completed():
            pass
    with pytest.raises(JobCancelled):
        early.result(timeout=60)
    job = foreach(x=range(100)).chunk_size(1).submit(square, backend=LOCAL2)
    job.cancel()
    with pytest.raises(JobCancelled):
        for _ in job.as_completed():
            pass


# ------------------------------------------------------------------ job-level failures (#2)


class OpensAFileWhenUnpickled:
    """Captured by a body, it pickles fine here and fails to unpickle on any worker."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, ("/nonexistent-dolambda-dir/data.csv",))


REMOTE = pytest.mark.parametrize("remote", ["local", "lambda"])


def _remote(name: str, request: pytest.FixtureRequest) -> Backend:
    if name == "local":
        return LOCAL2
    backend: Backend = request.getfixturevalue("lambda_backend")
    return backend


@REMOTE
@pytest.mark.parametrize("mode", ["stop", "remove", "pass"])
def test_a_body_that_cannot_be_unpickled_is_a_job_error(
    remote: str, mode: str, request: pytest.FixtureRequest
) -> None:
    captured = OpensAFileWhenUnpickled()
    loop = foreach(x=range(6)).chunk_size(2).errorhandling(mode).combine("+")
    with pytest.raises(SerializationError) as info:
        loop.run(lambda x: x + len(str(captured)), backend=_remote(remote, request))
    text = str(info.value)
    assert not isinstance(info.value, TaskError)
    assert "cannot be unpickled on the worker" in text and "FileNotFoundError" in text
    assert "no iteration of this job can run" in text and "inside the body" in text  # the fix


@REMOTE
def test_a_version_mismatch_is_a_job_error_even_when_removing(
    remote: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a client on another Python than its workers: its manifest says so
    monkeypatch.setattr("dolambda._backends.sealing.python_version", lambda: "3.1")
    loop = foreach(x=range(4)).errorhandling("remove")
    with pytest.raises(VersionMismatch, match=r"cannot run on the .* Python 3\.1"):
        loop.run(identity, backend=_remote(remote, request))


# ------------------------------------------------------------------ quiet output (#6)


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, as a shell's is."""

    def isatty(self) -> bool:
        return True


def test_no_bar_and_no_summary_when_stderr_is_not_a_terminal(
    backend: Backend, capfd: pytest.CaptureFixture[str]
) -> None:
    assert foreach(x=range(4)).combine(sum).run(square, backend=backend) == 14
    out, err = capfd.readouterr()
    assert "dolambda" not in out and "dolambda" not in err


def test_on_a_terminal_every_backend_draws_a_bar_and_the_summary_goes_to_stderr(
    backend: Backend, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert foreach(x=range(4)).combine(sum).run(square, backend=backend) == 14
    assert f"dolambda[{backend.name}]" in terminal.getvalue()
    assert "4/4" in terminal.getvalue()
    if backend.prints_summary:  # the cost line, once, after the bar
        assert terminal.getvalue().count("dolambda: 4 iterations") == 1
    out, _ = capfd.readouterr()
    assert "dolambda" not in out  # the program's stdout is its own
    terminal.truncate(0)
    assert foreach(x=range(4)).run(square, backend=backend, progress=False) == [0, 1, 4, 9]
    assert terminal.getvalue() == ""


def test_do_parallel_and_do_lambda_default_alike(
    lambda_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    loop = foreach(x=range(3))
    assert loop.do_parallel(square, workers=2) == [0, 1, 4]
    assert "dolambda[local]" in terminal.getvalue()
    assert loop.do_lambda(square, backend=lambda_backend) == [0, 1, 4]
    assert "dolambda[lambda]" in terminal.getvalue()
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: neither draws
    assert loop.do_parallel(square, workers=2) == loop.do_lambda(square, backend=lambda_backend)
    assert sys.stderr.getvalue() == ""


# ------------------------------------------------------------------ help(Loop) (#15)


def test_help_and_dir_of_a_loop_show_dolambdas_methods_only() -> None:
    text = pydoc.render_doc(Loop, renderer=pydoc.plaintext)
    for verb in ("do", "do_parallel", "do_lambda", "run", "arun", "submit", "seed", "nest"):
        assert f"\n |  {verb}(self" in text or f"\n |  async {verb}(self" in text, verb
    for pydantics in (
        "model_dump",
        "model_copy",
        "json(",
        "copy(",
        "dict(",
        "schema",
        "BaseModel:",
    ):
        assert pydantics not in text, pydantics
    loop = foreach(x=range(3)).combine("+")
    assert not [name for name in dir(loop) if name.startswith("model_") or name == "json"]
    assert {"do", "run", "submit", "when", "combine", "__call__", "__await__"} <= set(dir(Loop))


def test_a_loop_is_still_an_immutable_picklable_spec() -> None:
    loop = foreach(x=range(4)).combine("+").seed(3)
    with pytest.raises(ValidationError):
        loop.seed_value = 5  # type: ignore[misc]
    copy = pickle.loads(pickle.dumps(loop))
    assert type(copy) is Loop and copy.do(square) == loop.do(square) == 14
    assert type(loop.when(lambda x: True)) is Loop  # every builder keeps the public type
