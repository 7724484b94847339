"""Bodies of tests/test_lambda.py that dill pickles by reference."""

from __future__ import annotations

import time


def noisy(x: int) -> int:
    return x * x


def cheap(x: int) -> int:
    return x + 1


def takes_20ms(x: int) -> int:
    time.sleep(0.02)
    return x
