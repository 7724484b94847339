"""The exception tree. Every error dolambda raises is a :class:`DolambdaError`.

::

    DolambdaError
    ├── InvalidArgument (also ValueError)      a bad argument to the public API
    │   └── InvalidArgumentType (also TypeError)
    ├── SerializationError                      a body, variable or result dill cannot carry
    ├── TaskError                               an iteration failed (or its task died)
    ├── JobCancelled                            the job was cancelled before it finished
    ├── SignatureError                          an object with a missing or wrong HMAC
    ├── VersionMismatch                         client and worker disagree on Python/dill/wire
    └── BackendError                            the backend itself failed
        ├── ConfigError                         missing region, key, bucket setting...
        ├── StorageError                        S3 said no (translated in ``dolambda._aws.errors``)
        └── DeployError                         deploy, doctor or destroy could not finish
"""

from __future__ import annotations

from typing import Any


class DolambdaError(Exception):
    """Base class of every error raised by dolambda.

    >>> from dolambda import DolambdaError, foreach
    >>> try:
    ...     foreach()
    ... except DolambdaError as exc:
    ...     print(type(exc).__name__)
    InvalidArgument
    """


class InvalidArgument(DolambdaError, ValueError):
    """An argument to the public API has a wrong value; the message names it."""


class InvalidArgumentType(InvalidArgument, TypeError):
    """An argument to the public API has a wrong type; the message names it."""


class SerializationError(DolambdaError):
    """A body, an iteration variable or a result cannot be serialized with dill."""


class JobCancelled(DolambdaError):
    """The job was cancelled (``job.cancel()``, Ctrl-C, or a stop on error)."""


class SignatureError(DolambdaError):
    """An object's HMAC signature is missing or wrong; nothing from it was unpickled."""


class VersionMismatch(DolambdaError):
    """The worker runs a different Python, dill or wire version than the client."""


class BackendError(DolambdaError):
    """The backend (worker processes, S3, Lambda) failed for a reason outside the body."""


class ConfigError(BackendError):
    """A setting is missing or wrong (region, signing key, bucket, function)."""


class StorageError(BackendError):
    """S3 refused or failed a request; the message names the bucket and key."""


class DeployError(BackendError):
    """Deploying, checking or destroying the AWS setup failed; the message says why."""


class TaskError(DolambdaError):
    """An iteration raised, or the task that ran it died.

    ``index`` is the 0-based iteration index (for nested loops, ``path`` holds the
    index at every level), ``variables`` the iteration's variables as the client
    knows them, ``remote_traceback`` the formatted traceback from the worker and
    ``exception`` the original exception when it could be carried back, and ``output``
    the last lines its task wrote to stdout and stderr before it failed (on the
    backends that run tasks in other processes; ``job.output(index)`` has all of it).

    >>> from dolambda import TaskError, foreach
    >>> try:
    ...     foreach(x=range(3)).do(lambda x: 1 / (x - 1))
    ... except TaskError as exc:
    ...     print(exc.index, exc.variables, exc.error_type)
    1 {'x': 1} ZeroDivisionError
    """

    def __init__(
        self,
        message: str,
        *,
        index: int | None = None,
        path: tuple[int, ...] = (),
        variables: dict[str, Any] | None = None,
        error_type: str = "",
        remote_traceback: str = "",
        exception: BaseException | None = None,
        output: str = "",
    ) -> None:
        super().__init__(message)
        self.index = index
        self.path = path
        self.variables = variables or {}
        self.error_type = error_type
        self.remote_traceback = remote_traceback
        self.exception = exception
        #: the last lines its task wrote to stdout/stderr before it failed (remote backends)
        self.output = output

    def __str__(self) -> str:
        text = super().__str__()
        if self.output:
            text += "\n\nOutput of its task (last lines):\n" + self.output.rstrip()
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_task_error,
            (
                self.args[0] if self.args else "",
                self.index,
                self.path,
                self.variables,
                self.error_type,
                self.remote_traceback,
            ),
        )


def _rebuild_task_error(
    message: str,
    index: int | None,
    path: tuple[int, ...],
    variables: dict[str, Any],
    error_type: str,
    remote_traceback: str,
) -> TaskError:
    return TaskError(
        message,
        index=index,
        path=path,
        variables=variables,
        error_type=error_type,
        remote_traceback=remote_traceback,
    )
