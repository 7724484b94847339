"""Iterations to tasks: zip the variables, filter with ``when``, expand nested
loops, and group the leaves into chunks, lazily; and the checks of a loop and
its body before any work starts.

The planner yields :class:`~dolambda._core.tasks.PlannedTask` chunks and, for
nested loops, an :class:`~dolambda._core.tasks.InnerDone` once an inner loop has
been fully enumerated, so the combine tree knows how many results to wait for.
It reads a loop through :class:`~dolambda._core.spec.LoopSpec`.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dolambda._core.spec import ERROR_MODES, LoopSpec, all_variables, levels
from dolambda._core.tasks import HIDDEN, InnerDone, Leaf, PlannedTask
from dolambda._errors import InvalidArgument, InvalidArgumentType


def accepted_names(fn: Callable[..., Any]) -> tuple[set[str], set[str], bool]:
    """(names it accepts by keyword, names it requires, whether it takes **kwargs)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return set(), set(), True  # cannot tell: let the call decide
    accepted: set[str] = set()
    required: set[str] = set()
    var_kw = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            accepted.add(p.name)
            if p.default is p.empty:
                required.add(p.name)
        elif p.kind is p.POSITIONAL_ONLY and p.default is p.empty:
            required.add(p.name)
    return accepted, required, var_kw


def check_signature(fn: Callable[..., Any], variables: Iterable[str], role: str) -> None:
    """Raise InvalidArgument unless ``fn(**{v: ... for v in variables})`` binds."""
    names = list(variables)
    accepted, required, var_kw = accepted_names(fn)
    fn_name = getattr(fn, "__qualname__", repr(fn))
    missing = [n for n in names if n not in accepted] if not var_kw else []
    unknown = sorted(required - set(names))
    if missing or unknown:
        try:
            params_of = inspect.signature(fn).parameters.values()
            positional_only = {p.name for p in params_of if p.kind is p.POSITIONAL_ONLY}
        except (TypeError, ValueError):
            positional_only = set()
        by_position = [n for n in missing if n in positional_only]
        missing = [n for n in missing if n not in positional_only]
        unknown = [n for n in unknown if n not in by_position]
        parts = []
        if by_position:
            text = (
                f"{', '.join(repr(n) for n in by_position)} can only be passed by position "
                "(dolambda passes variables by name): wrap it in a function that takes them "
                "by name"
            )
            if not missing and not unknown and set(names) == set(by_position):
                ordered = ", ".join(p.name for p in params_of if p.name in by_position)
                text += f", e.g. lambda {ordered}: {getattr(fn, '__name__', 'fn')}({ordered})"
            parts.append(text)
        if missing:
            parts.append(f"it does not accept {', '.join(repr(n) for n in missing)}")
        if unknown:
            parts.append(
                f"it requires {', '.join(repr(n) for n in unknown)}, which the loop does not define"
            )
        params = ", ".join(sorted(accepted | required)) or "no parameters"
        loop_vars = ", ".join(names) or "no variables"
        raise InvalidArgument(
            f"the {role} {fn_name!r} takes ({params}) but the loop's variables are "
            f"({loop_vars}): {'; '.join(parts)}. Name the parameters after the variables "
            "or add **kwargs."
        )


def _iterable(name: str, value: Any, outer: dict[str, Any], nested: bool) -> Iterator[Any]:
    if callable(value) and not hasattr(value, "__iter__"):
        if not nested:
            raise InvalidArgumentType(
                f"foreach: variable {name!r} is a function; only the inner loop of "
                ".nest() can take a function of the outer variables"
            )
        accepted, _, var_kw = accepted_names(value)
        kwargs = outer if var_kw else {k: v for k, v in outer.items() if k in accepted}
        value = value(**kwargs)
    try:
        return iter(value)
    except TypeError:
        raise InvalidArgumentType(
            f"foreach: variable {name!r} is not iterable (got {type(value).__name__} "
            f"{value!r}); pass a list, range, generator or other iterable"
        ) from None


def iter_plan(loop: LoopSpec) -> Iterator[Leaf | InnerDone]:
    """Yield every leaf of ``loop`` (and InnerDone markers), lazily, in iteration order."""
    counter = itertools.count()
    yield from _walk(loop, {}, (), (), counter, nested=False)


def _walk(
    loop: LoopSpec,
    outer: dict[str, Any],
    path: tuple[int, ...],
    slots: tuple[int, ...],
    counter: Iterator[int],
    *,
    nested: bool,
) -> Iterator[Leaf | InnerDone]:
    names = [n for n, _ in loop.variables]
    iterators = [_iterable(n, v, outer, nested) for n, v in loop.variables]
    kept = 0
    for i, values in enumerate(zip(*iterators, strict=False)):
        kwargs = {**outer, **{n: v for n, v in zip(names, values, strict=True) if n != HIDDEN}}
        if loop.predicate is not None and not loop.predicate(**kwargs):
            continue
        if loop.inner_loop is None:
            yield Leaf(next(counter), (*path, i), (*slots, kept), kwargs)
        else:
            inner_slots = (*slots, kept)
            count = 0
            for item in _walk(
                loop.inner_loop, kwargs, (*path, i), inner_slots, counter, nested=True
            ):
                depth = len(item.slots) if isinstance(item, Leaf) else len(item.prefix)
                if depth == len(inner_slots) + 1:
                    count += 1
                yield item
            yield InnerDone(inner_slots, (*path, i), count)
        kept += 1


def plan_tasks(loop: LoopSpec, chunk_size: int) -> Iterator[PlannedTask | InnerDone]:
    """The loop's tasks of ``chunk_size`` leaves, lazily (a generator is pulled one
    chunk at a time). InnerDone markers follow the task holding the leaves they describe."""
    names = tuple(all_variables(loop))
    if loop.inner_loop is None:
        return _flat_tasks(loop, names, chunk_size)
    return _group(iter_plan(loop), chunk_size, names)


def _flat_tasks(loop: LoopSpec, names: tuple[str, ...], chunk_size: int) -> Iterator[PlannedTask]:
    """A loop without nesting, column by column: no per-leaf objects."""
    iterators = [_iterable(n, v, {}, nested=False) for n, v in loop.variables]
    rows: Iterator[tuple[Any, ...]] = zip(*iterators, strict=False)
    keep = [i for i, (n, _) in enumerate(loop.variables) if n != HIDDEN]
    if len(keep) != len(iterators):  # times(n): counted, never passed to the body
        rows = (tuple(row[i] for i in keep) for row in rows)
    predicate = loop.predicate
    source: Iterator[Any] = rows
    if predicate is not None:  # a kept leaf's path is its position before filtering
        source = (
            (i, row)
            for i, row in enumerate(rows)
            if predicate(**dict(zip(names, row, strict=True)))
        )
    task_id = first = 0
    while block := list(itertools.islice(source, chunk_size)):
        if predicate is None:
            yield PlannedTask(task_id, first, block, names)
        else:
            paths: list[tuple[int, ...]] = [(i,) for i, _ in block]
            yield PlannedTask(task_id, first, [row for _, row in block], names, paths)
        task_id += 1
        first += len(block)


def _group(
    items: Iterator[Leaf | InnerDone], chunk_size: int, names: tuple[str, ...]
) -> Iterator[PlannedTask | InnerDone]:
    task_id = 0
    leaves: list[Leaf] = []
    markers: list[InnerDone] = []
    for item in items:
        if isinstance(item, InnerDone):
            markers.append(item)
            continue
        leaves.append(item)
        if len(leaves) >= chunk_size:
            yield PlannedTask.from_leaves(task_id, leaves, names)
            task_id += 1
            leaves = []
            yield from markers
            markers = []
    if leaves:
        yield PlannedTask.from_leaves(task_id, leaves, names)
    yield from markers


def check_loop(loop: LoopSpec, body: Callable[..., Any]) -> None:
    """Validate a loop and its body before any work starts."""
    for name, value in loop.variables:
        if not hasattr(value, "__iter__"):
            _iterable(name, value, {}, nested=False)
    if not callable(body):
        raise InvalidArgumentType(f"the loop body must be a function, got {type(body).__name__}")
    check_signature(body, all_variables(loop), "body")
    names: list[str] = []
    for level in levels(loop):
        if level is not loop:
            for name, value in level.variables:
                if callable(value) and not hasattr(value, "__iter__"):
                    _check_inner_callable(name, value, names)
        names = names + [n for n, _ in level.variables if n != HIDDEN]
        if level.predicate is not None:
            check_signature(level.predicate, names, "when() predicate")
    if loop.error_mode is not None and loop.error_mode not in ERROR_MODES:
        raise InvalidArgument(f"errorhandling: unknown mode {loop.error_mode!r}")


def _check_inner_callable(name: str, fn: Callable[..., Any], outer: list[str]) -> None:
    """An inner loop's variable given as a function must be callable with the outer
    variables it names (it receives only the ones it accepts)."""
    _, required, _ = accepted_names(fn)
    unknown = sorted(required - set(outer))
    if unknown:
        fn_name = getattr(fn, "__qualname__", repr(fn))
        raise InvalidArgument(
            f"nest: the inner loop's variable {name!r} is the function {fn_name!r}, which "
            f"requires {', '.join(repr(n) for n in unknown)}, but the outer loop's variables "
            f"are ({', '.join(outer) or 'no variables'}); name its parameters after them"
        )
