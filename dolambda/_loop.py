"""The immutable loop spec and its verbs.

Every method returns a new :class:`Loop` (a frozen pydantic model); nothing
runs until a verb (``do``, ``do_parallel``, ``do_lambda``, ``run``, ``arun``,
``submit``). Arguments are validated when they are given.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from pydantic import BaseModel, ConfigDict

from dolambda import _sync
from dolambda._backends.base import Backend
from dolambda._backends.sequential import SequentialBackend
from dolambda._core.combine import MISSING, CombineSpec
from dolambda._core.plan import check_loop
from dolambda._errors import InvalidArgument, InvalidArgumentType
from dolambda._job import Job
from dolambda._registry import local_backend, resolve_remote_backend, resolve_run_backend

ERROR_MODES = ("stop", "remove", "pass")


class Loop(BaseModel):
    """A foreach loop spec. Build one with :func:`foreach` or :func:`times`.

    >>> from dolambda import foreach
    >>> foreach(x=range(5)).when(lambda x: x % 2 == 0).combine("+").do(lambda x: x * 10)
    60
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    variables: Any = ()
    predicate: Any = None
    combine_spec: Any = CombineSpec()
    error_mode: Any = None
    seed_value: Any = None
    chunk: Any = "auto"
    inner_loop: Any = None
    bound_body: Any = None

    def __repr__(self) -> str:
        names = ", ".join(n for n, _ in self.variables) or "<no variables>"
        text = f"foreach({names})"
        if self.inner_loop is not None:
            text += f".nest({self.inner_loop!r})"
        if self.bound_body is not None:
            text += f" -> {getattr(self.bound_body, '__qualname__', self.bound_body)}"
        return f"<{text}>"

    # ------------------------------------------------------------------ builders

    def when(self, predicate: Callable[..., bool]) -> Loop:
        """Keep only the iterations for which ``predicate(**variables)`` is true."""
        if not callable(predicate):
            raise InvalidArgumentType(
                f"when: expected a function of the loop variables, got {type(predicate).__name__}"
            )
        return self.model_copy(update={"predicate": predicate})

    def combine(
        self,
        fn: str | Callable[..., Any] = "list",
        *,
        init: Any = MISSING,
        final: Callable[[Any], Any] | None = None,
        inorder: bool = True,
        multicombine: bool | None = None,
        maxcombine: int | None = None,
    ) -> Loop:
        """How results are combined: a shorthand (``"list"``, ``"c"``, ``"+"``, ``"*"``,
        ``"max"``, ``"min"``, ``"cbind"``, ``"rbind"``), a 2-argument function (a fold),
        a 1-argument reducer such as ``sum`` (called on lists), or a ``*args`` function.

        >>> from dolambda import foreach
        >>> foreach(x=range(4)).combine(sum).do(lambda x: x)
        6
        """
        spec = CombineSpec(
            fn=fn,
            init=init,
            final=final,
            inorder=inorder,
            multicombine=multicombine,
            maxcombine=maxcombine,
        )
        return self.model_copy(update={"combine_spec": spec})

    def errorhandling(self, mode: str) -> Loop:
        """``"stop"`` (raise TaskError, cancel the rest), ``"remove"`` (drop failed
        iterations) or ``"pass"`` (the exception object is the result)."""
        if mode not in ERROR_MODES:
            raise InvalidArgument(
                f"errorhandling: unknown mode {mode!r}; use 'stop', 'remove' or 'pass'"
            )
        return self.model_copy(update={"error_mode": mode})

    def seed(self, seed: int) -> Loop:
        """Reproducible random streams: iteration k uses ``SeedSequence(seed, spawn_key=(k,))``."""
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidArgumentType(f"seed: expected a non-negative integer, got {seed!r}")
        if seed < 0:
            raise InvalidArgument(f"seed: expected a non-negative integer, got {seed}")
        return self.model_copy(update={"seed_value": seed})

    def chunk_size(self, size: int | str) -> Loop:
        """Iterations per task: a positive integer, or ``"auto"`` (the default)."""
        if size != "auto":
            if isinstance(size, bool) or not isinstance(size, int):
                raise InvalidArgumentType(
                    f"chunk_size: expected a positive integer or 'auto', got {size!r}"
                )
            if size < 1:
                raise InvalidArgument(f"chunk_size: must be at least 1, got {size}")
        return self.model_copy(update={"chunk": size})

    def nest(self, inner: Loop) -> Loop:
        """R's ``%:%``: run ``inner`` for each iteration of this loop.

        >>> from dolambda import foreach
        >>> foreach(i=range(3)).nest(foreach(j=lambda i: range(i))).do(lambda i, j: (i, j))
        [[], [(1, 0)], [(2, 0), (2, 1)]]
        """
        if not isinstance(inner, Loop):
            raise InvalidArgumentType(
                f"nest: expected a foreach(...) loop, got {type(inner).__name__}"
            )
        if inner.bound_body is not None:
            raise InvalidArgument(
                "nest: the inner loop must not have a body; bind it to the outer loop"
            )
        from dolambda._core.plan import all_variables

        clash = set(all_variables(self)) & set(all_variables(inner))
        if clash:
            raise InvalidArgument(
                f"nest: the inner loop redefines {', '.join(sorted(clash))}; use other names"
            )
        if self.inner_loop is None:
            return self.model_copy(update={"inner_loop": inner})
        return self.model_copy(update={"inner_loop": self.inner_loop.nest(inner)})

    def __call__(self, fn: Callable[..., Any]) -> Loop:
        """Decorator form: ``@foreach(x=...)`` binds the function as the loop body."""
        if self.bound_body is not None:
            raise InvalidArgument(
                "this loop already has a body; call a verb (.do(), .run(), ...) to run it"
            )
        if not callable(fn):
            raise InvalidArgumentType(f"the loop body must be a function, got {type(fn).__name__}")
        return self.model_copy(update={"bound_body": fn})

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
        return _sync.run_sync(job._run(), portal=bool(getattr(job.backend, "run_on_portal", False)))

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
