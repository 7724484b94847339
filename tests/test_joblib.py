"""The "dolambda" joblib backend (dolambda.joblib / dolambda._joblib)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

joblib = pytest.importorskip("joblib")

import dolambda.joblib  # noqa: E402  (registers the backend)
from dolambda import register  # noqa: E402
from dolambda._errors import InvalidArgumentType  # noqa: E402
from dolambda._joblib import DolambdaJoblibBackend, register_joblib_backend  # noqa: E402
from tests.helpers import LOCAL2  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def square(x: int) -> int:
    return x * x


def pid(_: int) -> int:
    return os.getpid()


def fail_on_seven(x: int) -> int:
    if x == 7:
        raise KeyError(x)
    return x


def inner_parallel(x: int) -> list[int]:
    """A joblib call nested inside a batch: it runs sequentially where the batch runs."""
    return list(joblib.Parallel(n_jobs=4)(joblib.delayed(square)(x + i) for i in range(3)))


def test_import_dolambda_does_not_import_joblib() -> None:
    code = "import sys, dolambda; print('joblib' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_registration_is_idempotent() -> None:
    from joblib.parallel import BACKENDS

    assert BACKENDS["dolambda"] is DolambdaJoblibBackend
    register_joblib_backend()
    register_joblib_backend()
    assert BACKENDS["dolambda"] is DolambdaJoblibBackend
    assert dolambda.joblib.BACKEND_NAME == "dolambda"


@pytest.mark.parametrize("how", ["local", "sequential"])
def test_parallel_on_registered_backend(how: str) -> None:
    register(LOCAL2 if how == "local" else "sequential")
    with joblib.parallel_config(backend="dolambda"):
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(square)(i) for i in range(30))
    assert out == [i * i for i in range(30)]


def test_parallel_on_given_backend_runs_elsewhere() -> None:
    with joblib.parallel_config(backend="dolambda", dolambda_backend=LOCAL2):
        pids = joblib.Parallel(n_jobs=2)(joblib.delayed(pid)(i) for i in range(6))
    assert os.getpid() not in set(pids)


def test_exception_propagates_and_backend_stays_usable() -> None:
    register(LOCAL2)
    with joblib.parallel_config(backend="dolambda"):
        with pytest.raises(KeyError):
            joblib.Parallel(n_jobs=2)(joblib.delayed(fail_on_seven)(i) for i in range(20))
        # reusing the same backend instance after abort_everything()
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(square)(i) for i in range(4)) == [
            0,
            1,
            4,
            9,
        ]


def test_generator_output() -> None:
    register("sequential")
    with joblib.parallel_config(backend="dolambda"):
        gen = joblib.Parallel(n_jobs=2, return_as="generator")(
            joblib.delayed(square)(i) for i in range(5)
        )
        assert list(gen) == [0, 1, 4, 9, 16]


def test_effective_n_jobs_follows_the_backend() -> None:
    register(LOCAL2)
    with joblib.parallel_config(backend="dolambda"):
        assert joblib.effective_n_jobs(-1) == 2
        assert joblib.effective_n_jobs(5) == 5
    backend = DolambdaJoblibBackend(dolambda_backend=LOCAL2)
    assert backend.effective_n_jobs(-2) == 1
    assert backend.effective_n_jobs(None) == 1
    with pytest.raises(ValueError, match="n_jobs == 0"):
        backend.effective_n_jobs(0)


def test_nested_parallel_runs_sequentially_in_the_worker() -> None:
    register(LOCAL2)
    with joblib.parallel_config(backend="dolambda"):
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(inner_parallel)(x) for x in range(3))
    assert out == [[square(x + i) for i in range(3)] for x in range(3)]


def test_nothing_registered_warns() -> None:
    with (
        pytest.warns(RuntimeWarning, match="no parallel backend registered"),
        joblib.parallel_config(backend="dolambda"),
    ):
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(square)(i) for i in range(4))
    assert out == [0, 1, 4, 9]


def test_rejects_a_non_backend() -> None:
    with (
        pytest.raises(InvalidArgumentType, match="dolambda_backend"),
        joblib.parallel_config(backend="dolambda", dolambda_backend="local"),
    ):
        pass  # pragma: no cover


def test_sklearn_cross_val_score_same_scores() -> None:
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500)
    expected = cross_val_score(model, X, y, cv=4)
    with joblib.parallel_config(backend="dolambda", dolambda_backend=LOCAL2):
        scores = cross_val_score(model, X, y, cv=4, n_jobs=2)
    assert list(scores) == list(expected)
