"""Split a timed-out chunk: its halves run as tasks of their own, down to single iterations.

A task of several iterations that ran past the function's timeout is not run again
whole (it would time out again): its two halves are sent as two new tasks, and a half
that times out is split again, so only the iterations that really exceed the timeout
fail, each reported on its own ("iteration 5 failed: timeout: the task ran past the
function's timeout ..."). A half keeps its iterations' indexes, paths and slots, so
seeds and positions are those of the unsplit run and the results are identical.

A half's task id is fixed by its place in the split tree of its top task (node 1 is the
top task, node ``n``'s halves are ``2n`` and ``2n + 1``), in a range the planner never
uses (:data:`SPLIT_BASE` and up): a client that attaches to the job and splits the same
chunk again finds the halves' results already written. The engine still sees one
result for the top task: the halves' results are merged back into it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from dolambda._backends.base import TaskResult
from dolambda._backends.lambda_ import dispatch
from dolambda._backends.lambda_.state import Pending, RunState
from dolambda._core.tasks import PlannedTask
from dolambda._wire.models import IterationError

#: split tasks' ids start here (13 digits: their keys sort after every planned task's)
SPLIT_BASE = 10**13
#: nodes per top task: enough levels to split a chunk of 2**20 iterations to single ones
NODES = 1 << 21


def is_split(task_id: int) -> bool:
    return task_id >= SPLIT_BASE


def _node_id(top: int, node: int) -> int:
    return SPLIT_BASE + top * NODES + node


def _place(task_id: int) -> tuple[int, int]:
    """``(top task, node)`` of a task id (a planned task is node 1 of itself)."""
    if not is_split(task_id):
        return task_id, 1
    return divmod(task_id - SPLIT_BASE, NODES)


@dataclass
class Halves:
    """A split task waiting for its two halves' results."""

    parent: int  # the task id that was split
    entry: Pending  # its pending entry (its planned task and attempts)
    results: dict[int, TaskResult] = field(default_factory=dict)  # half's id -> result


def can_split(task_id: int, entry: Pending) -> bool:
    _, node = _place(task_id)
    return len(entry.planned) > 1 and 2 * node + 1 < NODES


async def split_task(run: RunState, task_id: int, entry: Pending) -> None:
    """Send the two halves of ``task_id`` (its timeout result stays where it is)."""
    planned = entry.planned
    top, node = _place(task_id)
    h = len(planned) // 2
    halves = [
        _half(planned, _node_id(top, 2 * node), 0, h),
        _half(planned, _node_id(top, 2 * node + 1), h, len(planned)),
    ]
    run.splits[task_id] = Halves(task_id, entry)
    now = time.monotonic()
    for half in halves:
        run.pending[half.task_id] = Pending(half, 0, now, tier=entry.tier)
        run.task_ids.append(half.task_id)  # (for the cleanup)
    del run.pending[task_id]
    for half in halves:
        blob = run.sealed.sealed_task(half, with_job=run.inline_job)
        async with run.uploads:
            await dispatch.send(run, half.task_id, blob)


def _half(planned: PlannedTask, task_id: int, lo: int, hi: int) -> PlannedTask:
    return PlannedTask(
        task_id,
        planned.first + lo,
        planned.rows[lo:hi],
        planned.names,
        None if planned.paths is None else planned.paths[lo:hi],
        None if planned.slots is None else planned.slots[lo:hi],
    )


def absorb(run: RunState, result: TaskResult) -> TaskResult | None:
    """A half's result: kept until its twin's arrives, then merged (recursively); the
    merged result of a top task is returned for the engine, else None."""
    task_id = result.task_id
    if not is_split(task_id):
        return result
    if result.stats is not None:  # every half's invocation counts in the job's stats
        run.job.stats.tasks.append(result.stats)
        result.stats = None
    top, node = _place(task_id)
    parent = top if node // 2 == 1 else _node_id(top, node // 2)
    waiting = run.splits[parent]
    waiting.results[node % 2] = result
    if len(waiting.results) < 2:
        return None
    del run.splits[parent]
    left, right = waiting.results[0], waiting.results[1]
    planned = waiting.entry.planned
    h = len(planned) // 2
    values, errors, ticks = _columns(left, h)
    right_values, right_errors, right_ticks = _columns(right, len(planned) - h)
    values += right_values
    errors.update(
        {h + k: e.model_copy(update={"position": h + k}) for k, e in right_errors.items()}
    )
    if ticks and right_ticks:
        shift = ticks[-1] - right_ticks[0]
        ticks += [t + shift for t in right_ticks[1:]]
    merged = TaskResult(
        parent,
        values=values,
        ticks=ticks,
        errors=errors,
        attempts=waiting.entry.attempt + left.attempts + right.attempts - 1,
    )
    return absorb(run, merged)


def _columns(
    result: TaskResult, n: int
) -> tuple[list[Any], dict[int, IterationError], list[float]]:
    """A half's values, errors and ticks for all of its ``n`` iterations: a failure of the
    whole half (its one iteration timed out, or it was lost) becomes each iteration's."""
    values = list(result.values[:n])
    errors = {k: e for k, e in result.errors.items() if k < len(values)}
    ticks = list(result.ticks[: len(values) + 1]) if len(result.ticks) > len(values) else []
    if len(values) < n:
        failure = result.failure
        kind = failure.kind if failure is not None else "lost"
        message = failure.message if failure is not None else "the worker returned no outcome"
        for k in range(len(values), n):
            values.append(None)
            errors[k] = IterationError(position=k, error_type=kind, error_message=message)
        ticks = []  # no clock for the iterations that did not run
    return values, errors, ticks
