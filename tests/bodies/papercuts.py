"""Bodies of tests/test_papercuts.py that dill pickles by reference."""

from __future__ import annotations

import random

import numpy as np

from dolambda import rng


def three_streams(i: int) -> tuple[list[float], list[float], list[float]]:
    return (
        [float(x) for x in rng().random(3)],
        [random.random() for _ in range(3)],
        [float(x) for x in np.random.random(3)],
    )
