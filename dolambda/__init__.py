"""dolambda: R's foreach for Python, with AWS Lambda as a backend.

>>> from dolambda import foreach
>>> foreach(x=range(10)).combine(sum).do(lambda x: x * x)
285

Names are imported on first use, so the Lambda worker (which imports only
``dolambda._aws.worker``) does not pay for the client's aioboto3.
"""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

if _TYPE_CHECKING:
    from dolambda._backends.base import Backend
    from dolambda._backends.lambda_ import LambdaBackend
    from dolambda._backends.local import LocalBackend
    from dolambda._core.seeds import rng
    from dolambda._errors import DolambdaError, TaskError
    from dolambda._executor import Executor
    from dolambda._job import Job
    from dolambda._loop import Loop, foreach, times
    from dolambda._registry import register, registered

__version__ = "0.1.0"

_WHERE = {
    "Backend": "dolambda._backends.base",
    "DolambdaError": "dolambda._errors",
    "Executor": "dolambda._executor",
    "Job": "dolambda._job",
    "LambdaBackend": "dolambda._backends.lambda_",
    "LocalBackend": "dolambda._backends.local",
    "Loop": "dolambda._loop",
    "TaskError": "dolambda._errors",
    "foreach": "dolambda._loop",
    "register": "dolambda._registry",
    "registered": "dolambda._registry",
    "rng": "dolambda._core.seeds",
    "times": "dolambda._loop",
}

__all__ = [
    "Backend",
    "DolambdaError",
    "Executor",
    "Job",
    "LambdaBackend",
    "LocalBackend",
    "Loop",
    "TaskError",
    "foreach",
    "register",
    "registered",
    "rng",
    "times",
]


def __getattr__(name: str) -> _Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'dolambda' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
