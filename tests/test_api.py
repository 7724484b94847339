"""DESIGN §1 in this process: one sorted ``__all__``, a documented example for each public
name (a docstring for each error class), the error tree's shape, the verbs. That
``__all__`` is exactly the documented names and that each resolves is checked in a fresh
interpreter (tests/test_public_api.py)."""

from __future__ import annotations

import inspect

import pytest

import dolambda
from dolambda import _errors
from tests.test_public_api import DESIGN_NAMES

#: public names whose docstring has no ``>>>`` example yet (remove a name once it has one)
MISSING_EXAMPLES: set[str] = set()

#: every class of the error tree (a name here need not be exported yet)
ERROR_TREE = frozenset(
    name
    for name, value in vars(_errors).items()
    if isinstance(value, type) and issubclass(value, _errors.DolambdaError)
)


def test_all_is_sorted_and_unique() -> None:
    assert list(dolambda.__all__) == sorted(dolambda.__all__)
    assert len(set(dolambda.__all__)) == len(dolambda.__all__)


def _docstring_cases() -> list[object]:
    # an error class needs a docstring, not an example (test_every_error_class_says_...)
    names = sorted((DESIGN_NAMES | set(dolambda.__all__)) - ERROR_TREE)
    cases: list[object] = []
    for name in names:
        marks = []
        if name in MISSING_EXAMPLES:
            marks.append(
                pytest.mark.xfail(reason=f"BUG: {name}'s docstring has no >>> example", strict=True)
            )
        elif name not in dolambda.__all__:
            marks.append(pytest.mark.xfail(reason=f"{name} is not exported yet", strict=True))
        cases.append(pytest.param(name, marks=marks))
    return cases


@pytest.mark.parametrize("name", _docstring_cases())
def test_public_name_has_docstring_with_example(name: str) -> None:
    assert name in dolambda.__all__
    doc = inspect.getdoc(getattr(dolambda, name)) or ""
    assert doc.strip(), f"{name} has no docstring"
    assert ">>>" in doc, f"{name}'s docstring has no >>> example"


@pytest.mark.parametrize("name", sorted(ERROR_TREE))
def test_every_error_class_says_what_it_means(name: str) -> None:
    """httpx's ``_exceptions.py``: each class of the tree has a docstring of its own."""
    error = getattr(_errors, name)
    assert error.__doc__ and error.__doc__.strip(), f"{name} has no docstring"
    assert name in (_errors.__doc__ or ""), f"{name} is not drawn in the tree of _errors.py"


def test_error_tree() -> None:
    assert issubclass(dolambda.TaskError, dolambda.DolambdaError)
    assert issubclass(dolambda.DolambdaError, Exception)
    assert all(issubclass(getattr(_errors, name), _errors.DolambdaError) for name in ERROR_TREE)


def test_loop_verbs_exist() -> None:
    loop = dolambda.foreach(x=range(2))
    for verb in ("do", "do_parallel", "do_lambda", "run", "arun", "submit"):
        assert callable(getattr(loop, verb)), verb
    for builder in ("when", "combine", "errorhandling", "seed", "chunk_size", "nest"):
        assert callable(getattr(loop, builder)), builder
    assert callable(dolambda.Job.attach)
