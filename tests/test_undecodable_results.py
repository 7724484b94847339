"""A result the client cannot unpickle is an error for its iteration, never ``None``.

The body returns an instance of a class from a module that exists only in the worker
(made there at run time), so the client's unpickling fails as it does on AWS when the
function has a class or a numpy the client lacks.
"""

from __future__ import annotations

import sys

import pytest

from dolambda import Backend, TaskError, foreach
from tests.bodies.results import only_in_the_worker


@pytest.fixture
def remote(backend: Backend) -> Backend:
    if not backend.body_must_pickle:
        pytest.skip("results never leave this process on the sequential backend")
    return backend


def test_stop_names_the_iteration_and_the_unpickling_error(remote: Backend) -> None:
    sys.modules.pop("dl_only_in_the_worker", None)
    loop = foreach(x=range(4)).chunk_size(1)
    with pytest.raises(TaskError) as info:
        loop.run(only_in_the_worker, backend=remote)
    assert info.value.index in (1, 3)  # stop fails fast on the first to arrive: either odd one
    assert info.value.error_type == "SerializationError"
    assert "cannot be unpickled in the client" in str(info.value)
    assert "dl_only_in_the_worker" in str(info.value)


def test_remove_drops_them_and_pass_gives_the_error(remote: Backend) -> None:
    sys.modules.pop("dl_only_in_the_worker", None)
    loop = foreach(x=range(6)).chunk_size(2)
    assert loop.errorhandling("remove").run(only_in_the_worker, backend=remote) == [0, 2, 4]
    passed = loop.errorhandling("pass").run(only_in_the_worker, backend=remote)
    assert [v for v in passed if not isinstance(v, Exception)] == [0, 2, 4]
    errors = [v for v in passed if isinstance(v, Exception)]
    assert len(errors) == 3 and all("cannot be unpickled" in str(e) for e in errors)
