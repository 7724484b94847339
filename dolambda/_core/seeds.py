"""Per-iteration random streams: what ``.seed(s)`` seeds, and :func:`rng`, which reads it.

Iteration k of a loop seeded with ``s`` has the path ``(k,)`` (or the outer and
inner positions in a nest, e.g. ``(i, j)``). Before its body runs, three
generators are seeded, each from its own ``numpy.random.SeedSequence``, so that
no two of them share seed words and their draws are not correlated:

* :func:`rng` returns ``numpy.random.default_rng(SeedSequence(s, spawn_key=path))``;
* Python's ``random`` is seeded with ``SeedSequence(s, spawn_key=path + (0,))``'s
  first four 32-bit words (as one 128-bit integer);
* numpy's global generator (``np.random.random()`` ...) with
  ``SeedSequence(s, spawn_key=path + (1,))``'s first four words.

The two children are what ``SeedSequence(s, spawn_key=path).spawn(2)`` would give.
Every leaf of a nest has a path of the same length, so a child's key never equals
another iteration's own key. The same on every backend, for any chunk size or
worker count.
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
    (``random`` and ``np.random`` are seeded too, each from its own child stream:
    see :mod:`dolambda._core.seeds`.)

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
    python_words = np.random.SeedSequence(seed, spawn_key=(*path, 0)).generate_state(4)
    numpy_words = np.random.SeedSequence(seed, spawn_key=(*path, 1)).generate_state(4)
    random.seed(int.from_bytes(python_words.tobytes(), "little"))
    np.random.seed(numpy_words)
    token = _current_rng.set(np.random.default_rng(ss))
    try:
        yield
    finally:
        _current_rng.reset(token)
