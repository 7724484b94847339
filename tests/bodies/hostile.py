"""Hostile bodies of tests/test_bad_input.py: what a worker must survive and report."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any


def sq(x: int) -> int:
    return x * x


class Unpicklable(Exception):
    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.lock = threading.Lock()


def returns_lock(x: int) -> Any:
    return (i for i in range(3)) if x == 1 else x


def raises_unpicklable(x: int) -> int:
    if x == 1:
        raise Unpicklable("cannot travel")
    return x


def prints_megabytes(x: int) -> int:
    sys.stdout.write("y" * 3_000_000 + "\n")
    sys.stdout.flush()
    return x


def calls_sys_exit(x: int) -> int:
    if x == 1:
        sys.exit(3)
    return x


def calls_os_exit(x: int) -> int:
    if x == 1:
        os._exit(7)
    return x
