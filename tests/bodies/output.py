"""Bodies of tests/test_output.py: they travel to the emulator's workers (no pytest)."""

from __future__ import annotations

import logging
import warnings


def chatty(x: int) -> int:
    print(f"print from {x}")
    warnings.warn(f"warning from {x}", UserWarning, stacklevel=1)
    logging.getLogger("user.module").warning("log from %d", x)
    return x


def fails_on_two(x: int) -> int:
    for line in range(30):
        print(f"x={x} line {line}")
    if x == 2:
        raise ValueError("two is bad")
    return x


def loud(x: int) -> int:
    for line in range(4000):
        print(f"{x}:{line:05d} " + "." * 40)
    return x
