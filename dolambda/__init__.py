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

if _TYPE_CHECKING:  # for type checkers only: at run time the table below is used
    from dolambda._backends.base import Backend as Backend
    from dolambda._backends.lambda_ import LambdaBackend as LambdaBackend
    from dolambda._backends.local import LocalBackend as LocalBackend
    from dolambda._core.seeds import rng as rng
    from dolambda._errors import BackendError as BackendError
    from dolambda._errors import ConfigError as ConfigError
    from dolambda._errors import DeployError as DeployError
    from dolambda._errors import DolambdaError as DolambdaError
    from dolambda._errors import InvalidArgument as InvalidArgument
    from dolambda._errors import InvalidArgumentType as InvalidArgumentType
    from dolambda._errors import JobCancelled as JobCancelled
    from dolambda._errors import SerializationError as SerializationError
    from dolambda._errors import SignatureError as SignatureError
    from dolambda._errors import StorageError as StorageError
    from dolambda._errors import TaskError as TaskError
    from dolambda._errors import VersionMismatch as VersionMismatch
    from dolambda._executor import Executor as Executor
    from dolambda._job import Job as Job
    from dolambda._loop import Loop as Loop
    from dolambda._loop import foreach as foreach
    from dolambda._loop import times as times
    from dolambda._registry import register as register
    from dolambda._registry import registered as registered

__version__ = "0.1.0"

#: every public name and the module it is imported from on first use: the one table
#: that drives both the lazy imports and ``__all__``
_WHERE = {
    # the whole exception tree (drawn in dolambda/_errors.py)
    "BackendError": "dolambda._errors",
    "ConfigError": "dolambda._errors",
    "DeployError": "dolambda._errors",
    "DolambdaError": "dolambda._errors",
    "InvalidArgument": "dolambda._errors",
    "InvalidArgumentType": "dolambda._errors",
    "JobCancelled": "dolambda._errors",
    "SerializationError": "dolambda._errors",
    "SignatureError": "dolambda._errors",
    "StorageError": "dolambda._errors",
    "TaskError": "dolambda._errors",
    "VersionMismatch": "dolambda._errors",
    # everything else
    "Backend": "dolambda._backends.base",
    "Executor": "dolambda._executor",
    "Job": "dolambda._job",
    "LambdaBackend": "dolambda._backends.lambda_",
    "LocalBackend": "dolambda._backends.local",
    "Loop": "dolambda._loop",
    "foreach": "dolambda._loop",
    "register": "dolambda._registry",
    "registered": "dolambda._registry",
    "rng": "dolambda._core.seeds",
    "times": "dolambda._loop",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> _Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'dolambda' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
