"""The registered backend (R's registerDoParallel / getDoParName / getDoParWorkers)."""

from __future__ import annotations

import importlib
import threading
import warnings
from typing import Any

from dolambda._backends.base import Backend
from dolambda._backends.local import LocalBackend
from dolambda._backends.sequential import SequentialBackend
from dolambda._errors import ConfigError, InvalidArgumentType

_lock = threading.Lock()
_registered: Backend | None = None
_local_by_workers: dict[int | None, LocalBackend] = {}
#: R's foreach warns once per session that %dopar% runs sequentially; so do we, once per
#: process (and once more after ``register(None)``, which returns to a fresh process's state)
_warned_sequential = False


def register(backend: Backend | str | None) -> None:
    """Register the backend that ``.run()``, ``.arun()`` and ``.submit()`` use.

    Accepts a backend object, ``"sequential"``, ``"local"``, or ``None`` to
    unregister. With none registered, ``.run()`` runs sequentially and warns once
    per process, as R's foreach does (``register(None)`` re-arms the warning).

    >>> from dolambda import register, registered, LocalBackend
    >>> register(LocalBackend(workers=2)); registered()
    ('local', 2)
    >>> register("sequential")
    """
    global _registered, _warned_sequential
    if isinstance(backend, str):
        if backend == "sequential":
            backend = SequentialBackend()
        elif backend == "local":
            backend = local_backend(None)
        else:
            raise InvalidArgumentType(
                f"register: unknown backend name {backend!r}; use 'sequential', 'local', "
                "or a backend object such as LambdaBackend(...) or LocalBackend(workers=4)"
            )
    elif backend is not None and not isinstance(backend, Backend):
        raise InvalidArgumentType(
            f"register: expected a backend (LambdaBackend, LocalBackend, 'sequential'), got "
            f"{type(backend).__name__}"
        )
    with _lock:
        _registered = backend
        if backend is None:
            _warned_sequential = False


def registered() -> tuple[str, int]:
    """``(name, workers)`` of the registered backend, like R's getDoParName/getDoParWorkers.

    >>> from dolambda import register, registered
    >>> register("sequential"); registered()
    ('sequential', 1)
    """
    backend = _registered
    if backend is None:
        return ("sequential", 1)
    return backend.describe()


def current() -> Backend | None:
    return _registered


def local_backend(workers: int | None) -> LocalBackend:
    """A warm LocalBackend shared by every ``do_parallel`` call with this worker count."""
    with _lock:
        backend = _local_by_workers.get(workers)
        if backend is None:
            backend = LocalBackend(workers)
            _local_by_workers[workers] = backend
        return backend


def resolve_run_backend(backend: Any, *, offload: bool) -> Backend:
    """The backend for ``.run``/``.arun``/``.submit``: given, registered, or sequential."""
    if backend is not None:
        if not isinstance(backend, Backend):
            raise InvalidArgumentType(
                f"backend: expected a backend object, got {type(backend).__name__}"
            )
        return backend
    global _warned_sequential
    chosen = _registered
    if chosen is None:
        with _lock:
            warn, _warned_sequential = not _warned_sequential, True
        if warn:
            warnings.warn(
                "no parallel backend registered: running sequentially (this warning is "
                "given once). Register one with dolambda.register(LocalBackend()) or "
                "register(LambdaBackend(...)).",
                RuntimeWarning,
                stacklevel=5,
            )
        return SequentialBackend(offload=offload)
    if isinstance(chosen, SequentialBackend) and offload and not chosen.offload:
        return SequentialBackend(offload=True)
    return chosen


def resolve_remote_backend(backend: Any, *, lambda_only: bool = True) -> Backend:
    """The backend for ``do_lambda`` and ``Job.attach``: given, registered, or configured."""
    if backend is not None:
        if not isinstance(backend, Backend) or (lambda_only and not backend.runs_on_lambda):
            raise InvalidArgumentType(
                f"backend: expected a LambdaBackend, got {type(backend).__name__}; use "
                ".run(fn, backend=...) for other backends"
            )
        return backend
    chosen = _registered
    if chosen is not None and chosen.runs_on_lambda:
        return chosen
    return _deployed_lambda_backend()


def _deployed_lambda_backend() -> Backend:
    """The LambdaBackend that ``dolambda deploy`` configured.

    Loaded by name, when first needed: the Lambda backend imports aioboto3 (about
    half a second), which a loop that runs sequentially or locally never needs.
    """
    try:
        module = importlib.import_module("dolambda._backends.lambda_")
    except ImportError as exc:  # pragma: no cover
        raise ConfigError("the Lambda backend is not available") from exc
    backend: Backend = module.LambdaBackend.from_config()
    return backend
