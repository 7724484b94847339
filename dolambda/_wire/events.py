"""The Lambda event payloads dolambda sends: a task's Invoke and a remote dispatcher's.

A task's asynchronous Invoke is ``{"bucket", "key", "task": <base64, when small>}``
(:func:`invoke_payload`; the client and a remote dispatcher send the same one). A
remote dispatcher's is ``{"dispatch": {"bucket", "key", "job", "first", "last",
"span", "depth"}}`` (:func:`dispatch_event`): queue the tasks at positions
``first <= i < last`` of the job's sealed dispatch plan (``key``), itself, or through
child dispatchers when the range holds more than ``span`` tasks. The worker reads
them (:func:`dolambda._aws.worker.task_records`, :func:`parse_dispatch`).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

#: the most bytes an asynchronous (``InvocationType="Event"``) Invoke request may carry:
#: 1 MB since October 2025 (256 KB before); synchronous ones may carry 6 MB.
#: https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html and
#: https://docs.aws.amazon.com/lambda/latest/dg/API_Invoke.html
EVENT_PAYLOAD_LIMIT = 1024 * 1024
#: room left in the payload: Lambda's on-failure record for an invocation embeds its
#: payload (``requestPayload``) next to ``requestContext``, ``responseContext`` and the
#: error (``responsePayload``, a message and maybe a stack trace), so a payload at the
#: limit would leave no room for the record that reports its failure
RECORD_HEADROOM = 64 * 1024
#: the largest JSON payload (bucket, key and the base64 task) dolambda sends inline;
#: a larger task goes to S3 and the payload names its key. Base64 grows a task by 4/3,
#: so tasks up to ~720 KiB travel inline.
INLINE_LIMIT = EVENT_PAYLOAD_LIMIT - RECORD_HEADROOM


#: what a worker of this version does beyond running tasks; deploy (and the emulator)
#: record it in the function's package record, and the client dispatches remotely only
#: to a function whose record says so: a function deployed by an older dolambda ignores
#: a dispatch event, and its job would wait the lost-task timer (minutes) for every task
REMOTE_DISPATCH = "remote-dispatch"
FEATURES = (REMOTE_DISPATCH,)

#: children of one dispatcher, and the most levels of dispatchers in a tree
#: (:func:`split_range`; :mod:`dolambda._aws.dispatcher` says why so few)
FANOUT = 32
LEVELS = 3


def invoke_payload(bucket: str, key: str, blob: bytes) -> dict[str, Any]:
    """The Invoke payload for the task ``blob`` at ``key``: the task inline when the
    encoded payload stays within :data:`INLINE_LIMIT`, else only its key (then the
    caller PUTs the task first).

    >>> len(json.dumps(invoke_payload("b", "k", bytes(700 * 1024)))) <= INLINE_LIMIT
    True
    >>> "task" in invoke_payload("b", "k", bytes(800 * 1024))
    False
    """
    payload: dict[str, Any] = {"bucket": bucket, "key": key}
    if 4 * -(-len(blob) // 3) < INLINE_LIMIT:  # base64 length: skip encoding what cannot fit
        inline = {**payload, "task": base64.b64encode(blob).decode()}
        if len(json.dumps(inline).encode()) <= INLINE_LIMIT:
            return inline
    return payload


@dataclass(frozen=True)
class DispatchRange:
    """One dispatcher's share of a job: plan positions ``first <= i < last``."""

    bucket: str
    key: str  #: the job's sealed dispatch plan
    job_id: str
    first: int
    last: int
    #: the most tasks one dispatcher queues itself; a larger range goes to children
    span: int
    #: 0 for the dispatcher the client invoked, 1 for its children, ...
    depth: int = 0

    @property
    def size(self) -> int:
        return max(0, self.last - self.first)


def dispatch_event(r: DispatchRange) -> dict[str, Any]:
    """The Invoke payload of a dispatcher for the range ``r``.

    >>> r = DispatchRange("b", "p/jobs/j/dispatch", "j", 0, 10, 4)
    >>> parse_dispatch(dispatch_event(r)) == r
    True
    """
    return {
        "dispatch": {
            "bucket": r.bucket,
            "key": r.key,
            "job": r.job_id,
            "first": r.first,
            "last": r.last,
            "span": r.span,
            "depth": r.depth,
        }
    }


def parse_dispatch(event: Any) -> DispatchRange | None:
    """The range a dispatch event names, or None when ``event`` is not one (or is
    malformed: then nothing is dispatched)."""
    body = event.get("dispatch") if isinstance(event, dict) else None
    if not isinstance(body, dict):
        return None
    try:
        names = ("first", "last", "span", "depth")
        numbers = [body[n] for n in names]
        texts = [body["bucket"], body["key"], body["job"]]
    except KeyError:
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        return None
    if not all(isinstance(t, str) and t for t in texts):
        return None
    first, last, span, depth = numbers
    if span < 1 or last < first:
        return None
    return DispatchRange(texts[0], texts[1], texts[2], first, last, span, depth)


def split_range(r: DispatchRange, fanout: int, levels: int) -> list[DispatchRange]:
    """The sub-ranges of a dispatcher's range that holds more than ``r.span`` tasks (it
    keeps the first, and invokes a child for each other): at most ``fanout`` near-equal
    ranges, except on the last of ``levels`` levels, whose ranges must each fit one
    dispatcher: so a tree never has more than ``levels`` levels, whatever the job's size.

    >>> r = DispatchRange("b", "k", "j", 0, 10_000, 1_000)
    >>> [(c.first, c.last, c.depth) for c in split_range(r, 4, 3)][:2]
    [(0, 2500, 1), (2500, 5000, 1)]
    >>> len(split_range(DispatchRange("b", "k", "j", 0, 10_000, 1_000, depth=1), 4, 3))
    10
    """
    needed = -(-r.size // r.span)
    parts = max(1, needed if r.depth + 2 >= levels else min(fanout, needed))
    step = -(-r.size // parts)
    return [
        DispatchRange(
            r.bucket, r.key, r.job_id, start, min(start + step, r.last), r.span, r.depth + 1
        )
        for start in range(r.first, r.last, step)
    ]


def tree_size(r: DispatchRange, fanout: int = FANOUT, levels: int = LEVELS) -> int:
    """How many dispatchers (invocations) queue the range ``r``, the one given ``r``
    included: a dispatcher keeps the first of its sub-ranges (split further, down the
    levels, in the same invocation) and invokes a child for each of the others, so each
    range of at most ``span`` tasks at the bottom is one dispatcher's.

    >>> tree_size(DispatchRange("b", "k", "j", 0, 900, 1_000))
    1
    >>> tree_size(DispatchRange("b", "k", "j", 0, 10_000, 1_000))
    10
    """
    if r.size <= r.span or r.depth >= levels - 1:
        return 1
    first, *rest = split_range(r, fanout, levels)
    return tree_size(first, fanout, levels) + sum(tree_size(c, fanout, levels) for c in rest)
