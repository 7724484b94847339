"""A joblib parallel backend named ``"dolambda"``, built on :class:`dolambda.Executor`.

Activate it with ``import dolambda.joblib`` (or :func:`register_joblib_backend`),
then::

    with joblib.parallel_config(backend="dolambda"):
        Parallel(n_jobs=8)(delayed(f)(x) for x in xs)      # on the registered backend

    with joblib.parallel_config(backend="dolambda", dolambda_backend=LocalBackend(4)):
        cross_val_score(model, X, y, n_jobs=4)              # on the given backend

joblib's batches (``BatchedCalls``) are submitted to an :class:`~dolambda.Executor`,
which groups the batches dispatched together into one dolambda job. This module
imports joblib; ``import dolambda`` never does.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

from joblib import register_parallel_backend
from joblib._parallel_backends import (
    AutoBatchingMixin,
    ParallelBackendBase,
    SequentialBackend,
)

from dolambda import _registry
from dolambda._backends.base import Backend
from dolambda._errors import InvalidArgumentType
from dolambda._executor import Executor

BACKEND_NAME = "dolambda"


class DolambdaJoblibBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib backend running each batch of calls as an iteration of a dolambda job.

    Constructor parameters (pass them to ``joblib.parallel_config(backend="dolambda",
    ...)``): ``dolambda_backend`` (a dolambda backend; default: the one registered
    with :func:`dolambda.register` when the ``Parallel`` call starts),
    ``chunk_size`` and ``batch_window`` (see :class:`~dolambda.Executor`).

    ``n_jobs=-1`` means the backend's worker count (``LocalBackend(workers=...)``,
    a Lambda backend's concurrency); a positive ``n_jobs`` is taken as given (joblib
    keeps about ``2 * n_jobs`` batches in flight). Calls nested inside a batch run
    sequentially on the worker. Shared memory (``require="sharedmem"``) is not
    supported: the calls run in other processes.
    """

    supports_retrieve_callback = True
    supports_inner_max_num_threads = False
    supports_sharedmem = False
    uses_threads = False
    default_n_jobs = -1

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        dolambda_backend: Backend | None = None,
        chunk_size: int | str = 1,
        batch_window: float = 0.005,
        **backend_kwargs: Any,
    ) -> None:
        super().__init__(
            nesting_level=nesting_level,
            inner_max_num_threads=inner_max_num_threads,
            **backend_kwargs,
        )
        if dolambda_backend is not None and not isinstance(dolambda_backend, Backend):
            raise InvalidArgumentType(
                "dolambda joblib backend: dolambda_backend must be a dolambda backend "
                f"(LocalBackend, LambdaBackend, ...), got {type(dolambda_backend).__name__}"
            )
        self.dolambda_backend = dolambda_backend
        self.chunk_size = chunk_size
        self.batch_window = batch_window
        self._executor: Executor | None = None
        self.parallel: Any = None

    def __repr__(self) -> str:
        return f"DolambdaJoblibBackend(dolambda_backend={self.dolambda_backend!r})"

    # ------------------------------------------------------------------ sizing

    def _target_workers(self) -> int:
        if self._executor is not None:
            return self._executor.backend.workers
        target = self.dolambda_backend or _registry.current()
        return target.workers if target is not None else 1

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            return max(self._target_workers() + 1 + n_jobs, 1)
        return n_jobs

    # ------------------------------------------------------------------ lifecycle

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        """Start an Executor on the dolambda backend; returns the effective n_jobs."""
        self.parallel = parallel
        if self._executor is None:
            self._executor = Executor(
                self.dolambda_backend, chunk_size=self.chunk_size, batch_window=self.batch_window
            )
        return self.effective_n_jobs(n_jobs)

    def submit(
        self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None
    ) -> concurrent.futures.Future[Any]:
        if self._executor is None:
            self.configure(n_jobs=getattr(self.parallel, "n_jobs", -1), parallel=self.parallel)
        assert self._executor is not None
        future = self._executor.submit(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def apply_async(
        self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None
    ) -> concurrent.futures.Future[Any]:
        """joblib < 1.4 spelling of :meth:`submit`."""
        return self.submit(func, callback)

    def retrieve_result_callback(self, out: concurrent.futures.Future[Any]) -> Any:
        return out.result()

    def terminate(self) -> None:
        """The Parallel call is over: release the Executor once its jobs wound down
        (their futures are all set by now; this waits for the backend's cleanup), so
        nothing of the call is left running; the backend's warm workers stay up."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A call failed: cancel the batches not yet started and stop running jobs."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor._abort()
        if ensure_ready and executor is not None:
            self._executor = Executor(
                executor.backend, chunk_size=self.chunk_size, batch_window=self.batch_window
            )

    def get_nested_backend(self) -> tuple[Any, int | None]:
        """Calls nested inside a batch run sequentially on the worker that runs it."""
        level = (self.nesting_level or 0) + 1
        return SequentialBackend(nesting_level=level), None


def register_joblib_backend(make_default: bool = False) -> None:
    """Register the ``"dolambda"`` joblib backend (idempotent).

    >>> import joblib
    >>> from dolambda._joblib import register_joblib_backend
    >>> register_joblib_backend()
    >>> from dolambda import register
    >>> register("sequential")
    >>> with joblib.parallel_config(backend="dolambda"):
    ...     joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-x) for x in range(4))
    [0, 1, 2, 3]
    """
    register_parallel_backend(BACKEND_NAME, DolambdaJoblibBackend, make_default=make_default)
