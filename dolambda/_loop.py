"""The public :class:`Loop`: the loop spec plus the verbs that run it, and
:func:`foreach` / :func:`times` that start one.

The builders (``when``, ``combine``, ``errorhandling``, ``seed``, ``chunk_size``,
``export``, ``noexport``, ``nest``, the decorator) live on
:class:`~dolambda._core.spec.LoopSpec` and return a new ``Loop``; nothing runs until
a verb (``do``, ``do_parallel``, ``do_lambda``, ``run``, ``arun``, ``submit``, ``await``).

Every verb takes ``progress``: ``None`` (the default, on every backend) draws a tqdm bar
on stderr when stderr is a terminal or in Jupyter, and none otherwise (tqdm's own rule);
``True`` or ``False`` force it. A Lambda job with a bar ends with a one-line summary of
its stats and cost, on stderr too.
"""

from __future__ import annotations

import asyncio
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


def _dolambda_names(cls: type) -> list[str]:
    """The attributes dolambda's own classes in ``cls``'s MRO define, without pydantic's
    machinery (``model_*``, ``__pydantic_*__``) and private helpers: what ``dir()`` and
    ``help()`` show of a loop."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] != "dolambda":
            continue
        for name in vars(klass):
            if name.startswith("model_"):
                continue
            if name.startswith("_") and name not in _SHOWN_DUNDERS:
                continue
            names.add(name)
    return sorted(names)


#: the special methods of a loop a user calls: the decorator form and ``await loop``
_SHOWN_DUNDERS = frozenset({"__call__", "__await__"})


class _LoopType(type(LoopSpec)):  # type: ignore[misc]  # pydantic's ModelMetaclass
    """Keeps ``help(Loop)`` and ``dir(Loop)`` to dolambda's own methods: the spec is a
    frozen pydantic model (validated, immutable, picklable), but ``model_dump``, ``json``,
    ``copy`` and the rest of pydantic's API are not part of dolambda's."""

    def __dir__(cls) -> list[str]:
        return _dolambda_names(cls)


class Loop(LoopSpec, metaclass=_LoopType):
    """A foreach loop spec. Build one with :func:`foreach` or :func:`times`.

    >>> from dolambda import foreach
    >>> foreach(x=range(5)).when(lambda x: x % 2 == 0).combine("+").do(lambda x: x * 10)
    60
    """

    def __dir__(self) -> list[str]:
        return _dolambda_names(type(self))

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
        if job.backend.run_on_portal or _sync.in_running_loop():
            # on the helper loop; Job.result() finishes a cancel on Ctrl-C
            return job.start_on_portal().result()
        with asyncio.Runner() as runner:  # Ctrl-C cancels the job, which stops its workers
            return runner.run(job._run())

    def do(self, fn: Callable[..., Any] | None = None, *, progress: bool | None = None) -> Any:
        """R's ``%do%``: run every iteration sequentially in this process."""
        return self._wait(self._job(fn, SequentialBackend, progress))

    def do_parallel(
        self,
        fn: Callable[..., Any] | None = None,
        workers: int | None = None,
        *,
        progress: bool | None = None,
    ) -> Any:
        """Run on local worker processes (doParallel); ``workers`` defaults to the CPU count."""
        return self._wait(self._job(fn, lambda: local_backend(workers), progress))

    def do_lambda(
        self,
        fn: Callable[..., Any] | None = None,
        backend: Backend | None = None,
        *,
        progress: bool | None = None,
        memory: int | None = None,
    ) -> Any:
        """Run on AWS Lambda through the S3 queue (the given, registered or deployed backend);
        ``memory`` (MB): on the smallest of the function's memory tiers that has it."""

        def resolve() -> Backend:
            chosen = resolve_remote_backend(backend)
            if memory is None:
                return chosen
            with_memory = getattr(chosen, "with_memory", None)
            if with_memory is None:  # (a Lambda backend of one's own, without tiers)
                raise InvalidArgument(
                    f"memory={memory!r}: {type(chosen).__name__} has no memory tiers to "
                    "choose from; use a LambdaBackend"
                )
            result: Backend = with_memory(memory)
            return result

        return self._wait(self._job(fn, resolve, progress))

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


def foreach(*unnamed: Any, **variables: Any) -> Loop:
    """Start a loop over the keyword variables, advanced in lockstep (like ``zip``).

    Each variable is named, as in R's ``foreach(x = 1:3)``; an unnamed one is an error
    that says so.

    >>> from dolambda import foreach
    >>> foreach(x=range(3), y="abc").do(lambda x, y: y * x)
    ['', 'b', 'cc']
    """
    if unnamed:
        raise InvalidArgumentType(_name_the_variables(unnamed))
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


def _name_the_variables(unnamed: tuple[Any, ...]) -> str:
    """The message for ``foreach(range(3))``: name the variable, with the user's own values."""
    shown = [repr(value) for value in unnamed]
    if any(len(text) > 40 for text in shown):
        shown = ["..."] * len(shown)
    names = ("x", "y", "z") if len(shown) <= 3 else tuple(f"x{i}" for i in range(len(shown)))
    example = ", ".join(f"{name}={text}" for name, text in zip(names, shown, strict=False))
    return (
        f"foreach takes its iteration variables as keywords: name each one, e.g. "
        f"foreach({example}); the body then receives them by those names"
    )


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
