"""dolambda: R's foreach for Python, with AWS Lambda as a backend.

>>> from dolambda import foreach
>>> foreach(x=range(10)).combine(sum).do(lambda x: x * x)
285
"""

from dolambda._backends.base import Backend
from dolambda._backends.lambda_ import LambdaBackend
from dolambda._backends.local import LocalBackend
from dolambda._errors import DolambdaError, TaskError
from dolambda._job import Job
from dolambda._loop import Loop, foreach, times
from dolambda._registry import register, registered
from dolambda._worker import rng

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "DolambdaError",
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
