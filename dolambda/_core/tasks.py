"""The task types: what the planner produces and every backend consumes.

A *leaf* is one call of the body. Its ``path`` is its iteration index at each
nesting level (counted before ``when`` filters, so seeds and error messages do
not depend on the filter), its ``slots`` its position among the *kept*
iterations at each level (what the combine tree orders by). A
:class:`PlannedTask` is a chunk of consecutive leaves, column by column; an
:class:`InnerDone` says how many kept iterations an inner loop had, once it has
been fully enumerated.

This module imports nothing of dolambda: backends depend on it, not on the planner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HIDDEN = "_times_"  # the variable of times(n): counted, never passed to the body


@dataclass(frozen=True)
class Leaf:
    """One call of the body: its index among all leaves, its path, slots and variables."""

    index: int
    path: tuple[int, ...]
    slots: tuple[int, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class InnerDone:
    """The inner loop under ``prefix`` (outer slots) has ``count`` kept iterations."""

    prefix: tuple[int, ...]
    path: tuple[int, ...]
    count: int


@dataclass
class PlannedTask:
    """A chunk of consecutive leaves, column by column.

    Leaf ``k`` has index ``first + k``, argument values ``rows[k]`` (in the order of
    ``names``, the job's variables), path ``paths[k]`` and slots ``slots[k]``. For the
    common flat loop ``paths`` is None when every path is ``(first + k,)`` (no
    ``when`` filter) and ``slots`` is None when every slot is ``(first + k,)``.
    """

    task_id: int
    first: int
    rows: list[tuple[Any, ...]]
    names: tuple[str, ...]
    paths: list[tuple[int, ...]] | None = None
    slots: list[tuple[int, ...]] | None = None

    @classmethod
    def from_leaves(cls, task_id: int, leaves: list[Leaf], names: tuple[str, ...]) -> PlannedTask:
        first = leaves[0].index
        if [leaf.index for leaf in leaves] != list(range(first, first + len(leaves))):
            raise ValueError("a task's leaves must have consecutive indexes")
        return cls(
            task_id,
            first,
            [tuple(leaf.kwargs[n] for n in names) for leaf in leaves],
            names,
            [leaf.path for leaf in leaves],
            [leaf.slots for leaf in leaves],
        )

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def flat(self) -> bool:
        """Whether every leaf sits directly under the top-level combine at slot ``index``."""
        return self.slots is None

    def path(self, k: int) -> tuple[int, ...]:
        return (self.first + k,) if self.paths is None else self.paths[k]

    def slot(self, k: int) -> tuple[int, ...]:
        return (self.first + k,) if self.slots is None else self.slots[k]

    def top_indexes(self, n: int) -> list[int] | range:
        """The top-level iteration index of each of the first ``n`` leaves."""
        if self.paths is None:
            return range(self.first, self.first + n)
        return [p[0] for p in self.paths[:n]]

    def leaf(self, k: int) -> Leaf:
        return Leaf(
            self.first + k,
            self.path(k),
            self.slot(k),
            dict(zip(self.names, self.rows[k], strict=True)),
        )
