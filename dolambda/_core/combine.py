"""Combine semantics (R's ``.combine``, ``.init``, ``.final``, ``.inorder``,
``.multicombine``, ``.maxcombine``), identical on every backend.

A :class:`CombineSpec` is the user's choice, validated when given. An
:class:`Accumulator` is one run of it: values arrive with their *slot* (the
position among the loop's kept iterations), are buffered until their turn when
``inorder`` is on, and are combined in batches of ``maxcombine`` (the
accumulator counts as one). The combine function always runs in the client.
"""

from __future__ import annotations

import copy
import inspect
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from dolambda._errors import InvalidArgument, InvalidArgumentType

SHORTHANDS = ("list", "c", "+", "*", "max", "min", "cbind", "rbind")
Kind = Literal["list", "pairwise", "reducer", "varargs"]


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"

    def __reduce__(self) -> str:
        return "MISSING"  # unpickles as this module's singleton: `is MISSING` keeps working


MISSING: Any = _Missing()


def _positional_shape(fn: Callable[..., Any]) -> Kind | None:
    """Classify a combine callable by its positional parameters."""
    if fn in (max, min):
        return "reducer"
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    required = 0
    optional = 0
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return "varargs" if required <= 1 else None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            if p.default is p.empty:
                required += 1
            else:
                optional += 1
    if required == 2:
        return "pairwise"
    if required == 1:
        return "reducer"
    if required == 0 and optional >= 2:
        return "pairwise"
    if required == 0 and optional == 1:
        return "reducer"
    return None


def _splice(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            out.extend(v)
        else:
            out.append(v)
    return out


def _is_array(v: Any) -> bool:
    return type(v).__module__ == "numpy" and type(v).__name__ == "ndarray"


def _is_pandas(v: Any) -> bool:
    return type(v).__module__.startswith("pandas") and type(v).__name__ in ("DataFrame", "Series")


def _pandas_if_installed() -> Any:
    """pandas, or None where it is not installed (the combine runs in the client)."""
    try:
        import pandas as pd
    except ImportError:
        return None
    return pd


def _as_rows(v: Any) -> list[list[Any]]:
    if isinstance(v, dict):  # no pandas here: a dict is the row of its values
        return [list(v.values())]
    if isinstance(v, (list, tuple)):
        if v and all(isinstance(r, (list, tuple)) for r in v):
            return [list(r) for r in v]
        return [list(v)]
    return [[v]]


def _is_empty(v: Any) -> bool:
    """R's rbind/cbind ignore NULL and zero-length arguments (e.g. an empty ``init``)."""
    if v is None:
        return True
    if isinstance(v, (list, tuple)):
        return len(v) == 0
    return _is_array(v) and v.size == 0


def _rbind_pandas(pd: Any, values: list[Any]) -> Any:
    """R's rbind of named vectors: each Series or dict is one row (a Series' name, when it
    has one, is the row label); DataFrames keep their rows and labels."""
    rows_without_label = False
    labelled = False
    pieces = []
    for v in values:
        if isinstance(v, pd.Series):
            rows_without_label = rows_without_label or v.name is None
            labelled = labelled or v.name is not None
            pieces.append(v.to_frame().T)
        elif isinstance(v, dict):
            rows_without_label = True
            pieces.append(pd.DataFrame([v]))
        else:
            labelled = labelled or not isinstance(v.index, pd.RangeIndex)
            pieces.append(v)
    # rows without labels (and an accumulator built from them): number them 0..n-1, the
    # same whatever the batches were
    return pd.concat(pieces, axis=0, ignore_index=rows_without_label and not labelled)


def _bind(values: list[Any], *, by_row: bool) -> Any:
    values = [v for v in values if not _is_empty(v)]
    if not values:
        return []
    if by_row and any(isinstance(v, dict) for v in values):
        pandas = _pandas_if_installed()
        if pandas is not None:
            return _rbind_pandas(pandas, values)
    if any(_is_pandas(v) for v in values):
        import pandas as pd  # only when results are pandas objects

        if by_row:
            return _rbind_pandas(pd, values)
        return pd.concat(values, axis=1)
    if any(_is_array(v) for v in values):
        import numpy as np  # only when results are numpy arrays

        return np.vstack(values) if by_row else np.column_stack(values)
    if by_row:
        rows: list[list[Any]] = []
        for v in values:
            rows.extend(_as_rows(v))
        return rows
    columns: list[list[Any]] = []
    for v in values:
        if isinstance(v, (list, tuple)) and v and all(isinstance(r, (list, tuple)) for r in v):
            columns.extend([list(c) for c in zip(*v, strict=True)])
        elif isinstance(v, (list, tuple)):
            columns.append(list(v))
        else:
            columns.append([v])
    heights = {len(c) for c in columns}
    if len(heights) > 1:
        raise InvalidArgument(
            f"cbind: columns have different lengths {sorted(heights)}; every result must "
            "have the same length"
        )
    return [list(r) for r in zip(*columns, strict=True)]


@dataclass(frozen=True)
class CombineSpec:
    """A validated combine choice; see ``foreach(...).combine``."""

    fn: str | Callable[..., Any] = "list"
    init: Any = MISSING
    final: Callable[[Any], Any] | None = None
    inorder: bool = True
    multicombine: bool | None = None
    maxcombine: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.fn, str):
            if self.fn not in SHORTHANDS:
                raise InvalidArgument(
                    f"combine: unknown shorthand {self.fn!r}; use one of "
                    f"{', '.join(repr(s) for s in SHORTHANDS)} or a function"
                )
        elif not callable(self.fn):
            raise InvalidArgumentType(
                f"combine: expected a function or one of {', '.join(SHORTHANDS)}, "
                f"got {type(self.fn).__name__} {self.fn!r}"
            )
        elif _positional_shape(self.fn) is None:
            raise InvalidArgument(
                f"combine: {getattr(self.fn, '__qualname__', self.fn)!r} must take two "
                "positional arguments (a pairwise fold), one (a reducer called on a list), "
                "or *args"
            )
        if self.final is not None and not callable(self.final):
            raise InvalidArgumentType(
                f"combine: final must be a function of one argument, got {self.final!r}"
            )
        if not isinstance(self.inorder, bool):
            raise InvalidArgumentType(
                f"combine: inorder must be True or False, got {self.inorder!r}"
            )
        if self.multicombine is not None and not isinstance(self.multicombine, bool):
            raise InvalidArgumentType(
                f"combine: multicombine must be True, False or None, got {self.multicombine!r}"
            )
        if self.maxcombine is not None:
            if isinstance(self.maxcombine, bool) or not isinstance(self.maxcombine, int):
                raise InvalidArgumentType(
                    f"combine: maxcombine must be an integer >= 2, got {self.maxcombine!r}"
                )
            if self.maxcombine < 2:
                raise InvalidArgument(
                    f"combine: maxcombine must be at least 2 (the accumulator and one "
                    f"result), got {self.maxcombine}"
                )
        if (
            callable(self.fn)
            and _positional_shape(self.fn) == "pairwise"
            and self.multicombine
            and (self.maxcombine or 100) > 2
        ):
            raise InvalidArgument(
                f"combine: {getattr(self.fn, '__qualname__', self.fn)!r} takes two arguments, "
                "so it cannot multicombine; pass maxcombine=2, use *args, or leave "
                "multicombine off"
            )

    @property
    def kind(self) -> Kind:
        if self.fn == "list":
            return "list"
        if self.fn in ("+", "*"):
            return "pairwise"
        if isinstance(self.fn, str):
            return "reducer"
        shape = _positional_shape(self.fn)
        assert shape is not None
        return shape

    @property
    def is_default_list(self) -> bool:
        return self.fn == "list"

    def effective_multicombine(self) -> bool:
        if self.multicombine is not None:
            return self.multicombine
        return self.kind != "pairwise"

    def effective_maxcombine(self) -> int:
        if self.maxcombine is not None:
            return self.maxcombine
        return 100 if self.effective_multicombine() else 2

    def call(self, values: list[Any], has_acc: bool) -> Any:
        """Combine one batch. ``values[0]`` is the accumulator when ``has_acc``."""
        fn = self.fn
        if fn == "list":
            if has_acc:
                acc = values[0]
                acc.extend(values[1:])
                return acc
            return list(values)
        if fn == "c":
            return _splice(values)
        if fn == "+":
            return _fold(operator.add, values)
        if fn == "*":
            return _fold(operator.mul, values)
        if fn == "max":
            return max(values)
        if fn == "min":
            return min(values)
        if fn == "rbind":
            return _bind(values, by_row=True)
        if fn == "cbind":
            return _bind(values, by_row=False)
        assert callable(fn)
        kind = self.kind
        if kind == "reducer":
            return fn(values)
        if kind == "varargs":
            return fn(*values)
        return _fold(fn, values)

    def accumulator(self) -> Accumulator:
        return Accumulator(self)


def _fold(fn: Callable[[Any, Any], Any], values: list[Any]) -> Any:
    acc = values[0]
    for v in values[1:]:
        acc = fn(acc, v)
    return acc


def _fresh(init: Any) -> Any:
    """A private copy of ``init`` (the object itself when it cannot be copied)."""
    if init is MISSING:
        return MISSING
    try:
        return copy.deepcopy(init)
    except Exception:
        return init


class Accumulator:
    """One run of a combine: ``put``/``skip`` slots as they complete, then ``finish``."""

    def __init__(self, spec: CombineSpec) -> None:
        self.spec = spec
        self._max = spec.effective_maxcombine()
        # each run starts from its own copy of init: a combine that mutates its
        # accumulator must not leak into the next run or into a sibling inner loop
        self._init = _fresh(spec.init)
        self._has_acc = self._init is not MISSING
        self._acc: Any = (
            ([self._init] if spec.is_default_list else self._init) if self._has_acc else None
        )
        self._waiting: list[Any] = []
        # runs that arrived before their turn: first slot -> (length, values or None)
        self._buffer: dict[int, tuple[int, list[Any] | None]] = {}
        self._next = 0
        self.count = 0

    def put(self, slot: int, value: Any) -> None:
        """Offer the value of the iteration in ``slot``."""
        self.put_run(slot, [value])

    def put_run(self, start: int, values: list[Any]) -> None:
        """Offer the values of the consecutive slots ``start, start + 1, ...``."""
        if not self.spec.inorder:
            self._take_all(values)
        elif start != self._next:
            self._buffer[start] = (len(values), values)  # until the slots before it come
        else:
            self._next += len(values)
            self._take_all(values)
            self._drain()

    def skip(self, slot: int) -> None:
        """Mark ``slot`` as having no value (a removed failure)."""
        if not self.spec.inorder:
            return
        self._buffer[slot] = (1, None)
        self._drain()

    def _drain(self) -> None:
        while (run := self._buffer.pop(self._next, None)) is not None:
            length, values = run
            self._next += length
            if values is not None:
                self._take_all(values)

    def _take_all(self, values: list[Any]) -> None:
        if self.spec.is_default_list:  # concatenation: batch boundaries cannot show
            self.count += len(values)
            self._waiting.extend(values)
            if len(self._waiting) + (1 if self._has_acc else 0) >= self._max:
                self._combine()
            return
        for value in values:
            self._take(value)

    def _take(self, value: Any) -> None:
        self.count += 1
        self._waiting.append(value)
        if len(self._waiting) + (1 if self._has_acc else 0) >= self._max:
            self._combine()

    def _combine(self) -> None:
        if self.spec.is_default_list and not self._has_acc:
            self._acc, self._has_acc = list(self._waiting), True
        else:
            values = [self._acc, *self._waiting] if self._has_acc else self._waiting
            self._acc = self.spec.call(values, self._has_acc)
            self._has_acc = True
        self._waiting = []

    def finish(self) -> Any:
        """Flush what is waiting (in slot order for anything buffered) and apply final."""
        for slot in sorted(self._buffer):
            _, values = self._buffer.pop(slot)
            if values is not None:
                self._take_all(values)
        spec = self.spec
        if self._waiting:
            if self._has_acc or len(self._waiting) > 1 or spec.is_default_list:
                self._combine()
            else:
                self._acc, self._has_acc = self._waiting[0], True
                self._waiting = []
        if not self._has_acc:
            self._acc = [] if spec.is_default_list else None
        elif self.count == 0 and self._init is not MISSING:
            self._acc = self._init
        result = self._acc
        if spec.final is not None:
            result = spec.final(result)
        return result
