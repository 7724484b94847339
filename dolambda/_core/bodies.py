"""Loop bodies dolambda itself sends to the workers: the Executor's call wrappers (joblib's
backend runs on the Executor) and the demo's dart thrower.

dill pickles a module-level function by reference, so the worker must import the module
that defines it; these live here, among the worker's modules that the deployed package
holds (``dolambda.deploy.package.WORKER_MODULES``), and not in client modules
(``dolambda._executor``, ``dolambda._demo``) that the package does not hold.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable
from typing import Any

from dolambda._core.seeds import rng

#: where an exception raised by the user's callable carries its worker-side traceback
TB_ATTR = "_dolambda_remote_traceback"


def invoke(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call ``fn`` and wrap its value in a 1-tuple, so that a *returned* exception
    object is never mistaken for a raised one (errorhandling "pass" delivers those)."""
    try:
        return (fn(*args, **kwargs),)
    except (KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as exc:
        with contextlib.suppress(Exception):  # survives pickling (it is in __dict__)
            setattr(exc, TB_ATTR, "".join(traceback.format_exception(exc)))
        raise


def call_same(fn: Callable[..., Any], call: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
    """One ``Executor.submit`` of a callable shared by the whole batch."""
    return invoke(fn, call[0], call[1])


def call_any(call: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]) -> Any:
    """One ``Executor.submit`` whose callable travels with its arguments."""
    return invoke(call[0], call[1], call[2])


def call_star(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """One item of ``Executor.map``."""
    return invoke(fn, args, {})


def throw_darts(batch: int, samples: int) -> int:
    """How many of ``samples`` random points in the unit square fall in the quarter circle."""
    points = rng().random((samples, 2))
    return int(((points**2).sum(axis=1) <= 1.0).sum())
