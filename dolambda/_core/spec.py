"""The loop spec: a typed, frozen pydantic model and its builder methods.

Every builder validates its argument and returns a copy of the same class
(a :class:`~dolambda.Loop` stays a ``Loop``); nothing runs here. The verbs
that run a spec live in :mod:`dolambda._loop`; the planner and the run engine
read a spec through the fields declared here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict

from dolambda._core.combine import MISSING, CombineSpec
from dolambda._core.tasks import HIDDEN
from dolambda._errors import InvalidArgument, InvalidArgumentType

ErrorMode = Literal["stop", "remove", "pass"]
ERROR_MODES: tuple[ErrorMode, ...] = ("stop", "remove", "pass")


class LoopSpec(BaseModel):
    """What a foreach loop is: its variables, filter, combine, error handling, seed,
    chunking, inner loop and (decorator form) body."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    #: (name, values) pairs in lockstep; values are an iterable, or (inner loops only)
    #: a function of the outer variables returning one
    variables: tuple[tuple[str, Any], ...] = ()
    predicate: Callable[..., Any] | None = None
    combine_spec: CombineSpec = CombineSpec()
    error_mode: ErrorMode | None = None
    seed_value: int | None = None
    chunk: int | Literal["auto"] = "auto"
    inner_loop: LoopSpec | None = None
    bound_body: Callable[..., Any] | None = None
    #: modules (names, module objects, or paths of a .py file or package directory)
    #: that travel with a remote job whether or not detection finds them
    exported: tuple[str | os.PathLike[str] | ModuleType, ...] = ()
    #: top-level module names detection may find that never travel with a remote job
    not_exported: tuple[str, ...] = ()

    def __repr__(self) -> str:
        names = ", ".join(n for n, _ in self.variables) or "<no variables>"
        text = f"foreach({names})"
        if self.inner_loop is not None:
            text += f".nest({self.inner_loop!r})"
        if self.bound_body is not None:
            text += f" -> {getattr(self.bound_body, '__qualname__', self.bound_body)}"
        return f"<{text}>"

    def when(self, predicate: Callable[..., bool]) -> Self:
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
    ) -> Self:
        """How results are combined: a shorthand (``"list"``, ``"c"``, ``"+"``, ``"*"``,
        ``"max"``, ``"min"``, ``"cbind"``, ``"rbind"``), a 2-argument function (a fold),
        a 1-argument reducer such as ``sum`` (called on lists), or a ``*args`` function.

        ``"rbind"`` gives one row per result: a DataFrame for ``pd.Series`` and dict
        results (a dict is a row of its values where pandas is not installed), a 2-D
        numpy array for arrays, else a list of rows.

        >>> from dolambda import foreach
        >>> foreach(x=range(4)).combine(sum).do(lambda x: x)
        6

        With zero iterations the combine is never called: the result is ``init`` if
        given, else ``None`` (R's ``NULL``), not ``sum([]) == 0``:

        >>> foreach(x=range(0)).combine(sum).do(lambda x: x) is None
        True
        >>> foreach(x=range(0)).combine(sum, init=0).do(lambda x: x)
        0
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

    def errorhandling(self, mode: str) -> Self:
        """``"stop"`` (raise TaskError, cancel the rest), ``"remove"`` (drop failed
        iterations) or ``"pass"`` (the exception object is the result)."""
        if mode not in ERROR_MODES:
            raise InvalidArgument(
                f"errorhandling: unknown mode {mode!r}; use 'stop', 'remove' or 'pass'"
            )
        return self.model_copy(update={"error_mode": mode})

    def seed(self, seed: int) -> Self:
        """Reproducible random streams, the same on every backend and for any chunk size.

        Before iteration k's body runs (path ``(k,)``; ``(i, j)`` in a nest), three
        generators are seeded, each from its own stream so their draws are independent:
        :func:`dolambda.rng` is ``default_rng(SeedSequence(seed, spawn_key=(k,)))``,
        Python's ``random`` is seeded from ``SeedSequence(seed, spawn_key=(k, 0))`` and
        numpy's global generator (``np.random.random()``) from
        ``SeedSequence(seed, spawn_key=(k, 1))``. Other generators are not touched.
        """
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidArgumentType(f"seed: expected a non-negative integer, got {seed!r}")
        if seed < 0:
            raise InvalidArgument(f"seed: expected a non-negative integer, got {seed}")
        return self.model_copy(update={"seed_value": seed})

    def chunk_size(self, size: int | str) -> Self:
        """Iterations per task: a positive integer, or ``"auto"`` (the default)."""
        if size != "auto":
            if isinstance(size, bool) or not isinstance(size, int):
                raise InvalidArgumentType(
                    f"chunk_size: expected a positive integer or 'auto', got {size!r}"
                )
            if size < 1:
                raise InvalidArgument(f"chunk_size: must be at least 1, got {size}")
        return self.model_copy(update={"chunk": size})

    def export(self, *modules: str | os.PathLike[str] | ModuleType) -> Self:
        """R's ``.export``: these modules travel with a remote job (as source) even when
        detection does not find them, e.g. one the body imports with
        ``importlib.import_module``. Each is a module name (``"mysim"``; its top-level
        package ships), a module object, or the path of a ``.py`` file or a package
        directory. Replaces an earlier ``export``; ``export()`` clears it. Only the
        outermost loop's setting counts.

        >>> from dolambda import foreach
        >>> foreach(x=range(3)).export("json_helpers", "src/mypkg").exported
        ('json_helpers', 'src/mypkg')
        """
        for item in modules:
            if isinstance(item, ModuleType | os.PathLike):
                continue
            if not isinstance(item, str):
                raise InvalidArgumentType(
                    f"export: expected module names, modules or paths, got "
                    f"{type(item).__name__} {item!r}"
                )
            if not _is_path(item) and not all(p.isidentifier() for p in item.split(".")):
                raise InvalidArgument(
                    f"export: {item!r} is neither a module name (e.g. 'mysim' or "
                    "'mypkg.sub') nor a path (a .py file or a package directory)"
                )
        clash = {_top_name(m) for m in modules} & set(self.not_exported)
        if clash:
            raise InvalidArgument(
                f"export: {', '.join(sorted(clash))} is also given to noexport; pick one"
            )
        return self.model_copy(update={"exported": tuple(modules)})

    def noexport(self, *names: str) -> Self:
        """R's ``.noexport``: these top-level modules never travel with a remote job,
        even when detection finds them (the function's package must then hold them).
        Replaces an earlier ``noexport``; ``noexport()`` clears it.

        >>> from dolambda import foreach
        >>> foreach(x=range(3)).noexport("mysim").not_exported
        ('mysim',)
        """
        for name in names:
            if not isinstance(name, str):
                raise InvalidArgumentType(
                    f"noexport: expected top-level module names, got {type(name).__name__} {name!r}"
                )
            if not name.isidentifier():
                raise InvalidArgument(
                    f"noexport: {name!r} is not a top-level module name (a whole package "
                    "travels or does not: give 'mypkg', not 'mypkg.sub' or a path)"
                )
        clash = set(names) & {_top_name(m) for m in self.exported}
        if clash:
            raise InvalidArgument(
                f"noexport: {', '.join(sorted(clash))} is also given to export; pick one"
            )
        return self.model_copy(update={"not_exported": tuple(names)})

    def nest(self, inner: LoopSpec) -> Self:
        """R's ``%:%``: run ``inner`` for each iteration of this loop.

        >>> from dolambda import foreach
        >>> foreach(i=range(3)).nest(foreach(j=lambda i: range(i))).do(lambda i, j: (i, j))
        [[], [(1, 0)], [(2, 0), (2, 1)]]
        """
        if not isinstance(inner, LoopSpec):
            raise InvalidArgumentType(
                f"nest: expected a foreach(...) loop, got {type(inner).__name__}"
            )
        if inner.bound_body is not None:
            raise InvalidArgument(
                "nest: the inner loop must not have a body; bind it to the outer loop"
            )
        clash = set(all_variables(self)) & set(all_variables(inner))
        if clash:
            raise InvalidArgument(
                f"nest: the inner loop redefines {', '.join(sorted(clash))}; use other names"
            )
        if self.inner_loop is None:
            return self.model_copy(update={"inner_loop": inner})
        return self.model_copy(update={"inner_loop": self.inner_loop.nest(inner)})

    def __call__(self, fn: Callable[..., Any]) -> Self:
        """Decorator form: ``@foreach(x=...)`` binds the function as the loop body."""
        if self.bound_body is not None:
            raise InvalidArgument(
                "this loop already has a body; call a verb (.do(), .run(), ...) to run it"
            )
        if not callable(fn):
            raise InvalidArgumentType(f"the loop body must be a function, got {type(fn).__name__}")
        return self.model_copy(update={"bound_body": fn})


def _is_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.endswith(".py")


def _top_name(item: str | os.PathLike[str] | ModuleType) -> str:
    """The top-level module name an export item ships as."""
    if isinstance(item, ModuleType):
        return item.__name__.partition(".")[0]
    text = os.fspath(item)
    if isinstance(item, os.PathLike) or _is_path(text):
        name = os.path.basename(text.rstrip("/" + os.sep))
        return name[:-3] if name.endswith(".py") else name
    return text.partition(".")[0]


def levels(spec: LoopSpec) -> list[LoopSpec]:
    """The spec and its inner loops, outermost first."""
    out: list[LoopSpec] = []
    level: LoopSpec | None = spec
    while level is not None:
        out.append(level)
        level = level.inner_loop
    return out


def all_variables(spec: LoopSpec) -> list[str]:
    """The variables the body receives, outer loops' first (``times(n)``'s counter is not one)."""
    return [n for level in levels(spec) for n, _ in level.variables if n != HIDDEN]
