"""Per-iteration random streams: what ``.seed(s)`` seeds, and :func:`rng`, which reads it.

Iteration k of a loop seeded with ``s`` gets ``numpy.random.SeedSequence(s,
spawn_key=path)`` (its path is ``(k,)``, or the outer and inner positions in a
nest). Python's ``random`` and numpy's global generator are each seeded from
it before the body runs, and a context variable holds the iteration's own
``numpy.random.Generator`` for :func:`rng`. The same on every backend, for any
chunk size or worker count.
"""

from __future__ import annotations

import contextvars
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_current_rng: contextvars.ContextVar[Any] = contextvars.ContextVar("dolambda_rng", default=None)


def rng() -> Any:
    """The current iteration's ``numpy.random.Generator``.

    Inside the body of a seeded loop (``.seed(s)``) this is iteration k's
    stream, ``numpy.random.default_rng(SeedSequence(s, spawn_key=(k,)))``,
    identical on every backend. Elsewhere it is a fresh, unseeded generator.

    >>> from dolambda import foreach, rng
    >>> draws = foreach(i=range(3)).seed(42).do(lambda i: float(rng().random()))
    """
    current = _current_rng.get()
    if current is not None:
        return current
    import numpy as np  # optional: only a body that asks for a generator needs numpy

    return np.random.default_rng()


@contextmanager
def seeded(seed: int | None, path: tuple[int, ...]) -> Iterator[None]:
    """Seed ``random``, numpy's global generator and :func:`rng` for one iteration."""
    if seed is None:
        yield
        return
    try:
        import numpy as np  # optional: only seeded loops need numpy
    except ImportError as exc:  # pragma: no cover - numpy is in every supported setup
        raise ImportError("seed() needs numpy: pip install numpy") from exc
    ss = np.random.SeedSequence(seed, spawn_key=path)
    words = ss.generate_state(4, dtype=np.uint32)
    random.seed(int.from_bytes(words.tobytes(), "little"))
    np.random.seed(words)
    token = _current_rng.set(np.random.default_rng(ss))
    try:
        yield
    finally:
        _current_rng.reset(token)
