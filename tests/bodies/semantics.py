"""Bodies of tests/test_semantics.py that dill pickles by reference."""

from __future__ import annotations

import os
import random
import sys

import numpy as np

from dolambda import rng


def pair(i: int, j: int) -> tuple[int, int]:
    return (i, j)


def fail_j1(i: int, j: int) -> int:
    if j == 1:
        raise ValueError(f"leaf {i},{j}")
    return i * 10 + j


def draws(i: int) -> tuple[float, float, float]:
    """One draw from each of the three generators a seeded iteration sets up."""
    return (float(rng().random()), random.random(), float(np.random.random()))


def where_am_i(x: int) -> dict[str, object]:
    """Where this body runs: its working directory, this module's file, the import path."""
    return {"cwd": os.getcwd(), "file": __file__, "path": list(sys.path), "x": x}
