"""The public :class:`Loop`: the loop spec plus the verbs that run it, and
:func:`foreach` / :func:`times` that start one.

The builders (``when``, ``combine``, ``errorhandling``, ``seed``, ``chunk_size``,
``export``, ``noexport``, ``nest``, the decorator) live on
:class:`~dolambda._core.spec.LoopSpec` and return a new ``Loop``; nothing runs until
a verb (``do``, ``do_parallel``, ``do_lambda``, ``run``, ``arun``, ``submit``, ``await``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from dolambda import _sync
from dolambda._backends.base import Backend
from dolambda._backends.sequential import SequentialBackend
from dolambda._core.plan import check_loop
from dolambda._core.spec import LoopSpec
from dolambda._errors import InvalidArgument, InvalidArgumentType
from dolambda._job import Job
from dolambda._registry import local_backend, resolve_remote_backend, resolve_run_backend


class Loop(LoopSpec):
    """A foreach loop spec. Build one with :func:`foreach` or :func:`times`.

    >>> from dolambda import foreach
    >>> foreach(x=range(5)).when(lambda x: x % 2 == 0).combine("+").do(lambda x: x * 10)
    60
    """

    # ------------------------------------------------------------------ verbs

    def _body(self, fn: Callable[..., Any] | None) -> Callable[..., Any]:
        if fn is not None and self.bound_body is not None:
            raise InvalidArgument(
                "this loop already has a body (bound with the decorator); call the verb "
                "without a function"
            )
        body = fn if fn is not None else self.bound_body
        if body is None:
            raise InvalidArgument("no loop body: pass a function, e.g. loop.do(lambda x: x * 2)")
        check_loop(self, body)
        return body

    def _job(
        self,
        fn: Callable[..., Any] | None,
        backend: Callable[[], Backend],
        progress: bool | None,
    ) -> Job:
        body = self._body(fn)  # a bad body is reported before any backend is looked up
        return Job(self, body, backend(), progress=progress)

    @staticmethod
    def _wait(job: Job) -> Any:
        return _sync.run_sync(job._run(), portal=job.backend.run_on_portal)

    def do(self, fn: Callable[..., Any] | None = None, *, progress: bool | None = None) -> Any:
        """R's ``%do%``: run every iteration sequentially in this process."""
        return self._wait(self._job(fn, SequentialBackend, progress))

    def do_parallel(
        self,
        fn: Callable[..., Any] | None = None,
        workers: int | None = None,
        *,
        progress: bool | None = False,
    ) -> Any:
        """Run on local worker processes (doParallel); ``workers`` defaults to the CPU count."""
        return self._wait(self._job(fn, lambda: local_backend(workers), progress))

    def do_lambda(
        self,
        fn: Callable[..., Any] | None = None,
        backend: Backend | None = None,
        *,
        progress: bool | None = None,
    ) -> Any:
        """Run on AWS Lambda through the S3 queue (the given, registered or deployed backend)."""
        return self._wait(self._job(fn, lambda: resolve_remote_backend(backend), progress))

    def run(
        self,
        fn: Callable[..., Any] | None = None,
        backend: Backend | None = None,
        *,
        progress: bool | None = None,
    ) -> Any:
        """R's ``%dopar%``: the given or registered backend (sequential + a warning if none)."""
        resolve = lambda: resolve_run_backend(backend, offload=False)  # noqa: E731
        return self._wait(self._job(fn, resolve, progress))

    async def arun(
        self,
        fn: Callable[..., Any] | None = None,
        backend: Backend | None = None,
        *,
        progress: bool | None = None,
    ) -> Any:
        """``run`` for async code: awaits the job without blocking the event loop."""
        job = self._job(fn, lambda: resolve_run_backend(backend, offload=True), progress)
        return await job._run()

    def submit(
        self,
        fn: Callable[..., Any] | None = None,
        backend: Backend | None = None,
        *,
        progress: bool | None = None,
    ) -> Job:
        """Start the loop in the background and return its :class:`Job` handle."""
        # always on the helper loop, so job.result() may block anywhere (Jupyter included)
        # and `await job` works from any event loop
        job = self._job(fn, lambda: resolve_run_backend(backend, offload=True), progress)
        return job.start_on_portal()

    def __await__(self) -> Generator[Any, None, Any]:
        if self.bound_body is None:
            raise InvalidArgument(
                "only a loop with a body can be awaited; use `await loop.arun(fn)`"
            )
        return self.arun().__await__()


def foreach(**variables: Any) -> Loop:
    """Start a loop over the keyword variables, advanced in lockstep (like ``zip``).

    >>> from dolambda import foreach
    >>> foreach(x=range(3), y="abc").do(lambda x, y: y * x)
    ['', 'b', 'cc']
    """
    if not variables:
        raise InvalidArgument(
            "foreach() needs at least one iteration variable as a keyword, e.g. "
            "foreach(x=range(10)); for a loop without variables use times(n)"
        )
    for name, value in variables.items():
        if not (hasattr(value, "__iter__") or callable(value)):
            raise InvalidArgumentType(
                f"foreach: variable {name!r} is not iterable (got {type(value).__name__} "
                f"{value!r}); pass a list, range, generator or other iterable"
            )
    return Loop(variables=tuple(variables.items()))


def times(n: int) -> Loop:
    """A loop of ``n`` iterations whose body takes no arguments (R's ``times(n) %do%``).

    >>> from dolambda import times
    >>> times(3).do(lambda: 1)
    [1, 1, 1]
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise InvalidArgumentType(f"times: expected a non-negative integer, got {n!r}")
    if n < 0:
        raise InvalidArgument(f"times: expected a non-negative integer, got {n}")
    return Loop(variables=(("_times_", range(n)),))
