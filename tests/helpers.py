"""Shared helpers for the semantics tests: one way to run a loop on each backend,
and combine functions that record how they were called. The bodies live in
:mod:`tests.bodies.common` (re-exported here): they must travel to Lambda workers,
which lack pytest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dolambda import LocalBackend, Loop
from tests.bodies.common import as_str, fail_on, identity, slow_early, square

__all__ = [
    "BACKENDS",
    "LOCAL2",
    "Recorder",
    "as_str",
    "both",
    "fail_on",
    "identity",
    "outcome",
    "run",
    "slow_early",
    "square",
]

#: one warm 2-worker backend shared by the tests that register a backend
LOCAL2 = LocalBackend(2)

#: the executors test_combine and test_errors check on (test_semantics takes every backend,
#: the emulator's included, from conftest's ``backend`` fixture)
BACKENDS = ("do", "do_parallel")


def run(loop: Loop, fn: Callable[..., Any] | None, how: str) -> Any:
    """Run ``loop`` with ``fn`` sequentially (``"do"``) or on 2 local workers."""
    if how == "do":
        return loop.do(fn)
    if how == "do_parallel":
        return loop.do_parallel(fn, workers=2)
    raise AssertionError(how)


def outcome(loop: Loop, fn: Callable[..., Any], how: str) -> tuple[str, Any]:
    """``("ok", result)`` or ``("error", exception type name)``, for comparisons."""
    try:
        return ("ok", run(loop, fn, how))
    except Exception as exc:
        return ("error", type(exc).__name__)


#: parametrize a test over ``.do`` and ``.do_parallel(workers=2)`` (argument ``how``)
both = pytest.mark.parametrize("how", BACKENDS)


class Recorder:
    """Combine functions that append their arguments to ``calls`` (the combine
    always runs in the client process, so this works on every backend)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def pairwise(self, a: Any, b: Any) -> Any:
        self.calls.append((a, b))
        return a + b

    def reducer(self, values: list[Any]) -> Any:
        self.calls.append(tuple(values))
        return sum(values)

    def varargs(self, *values: Any) -> Any:
        self.calls.append(values)
        return sum(values)
