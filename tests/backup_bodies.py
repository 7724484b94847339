"""Bodies for tests/test_backups.py: shipped to the emulator's workers, so they import
little (a cold start that imports pytest and boto3 takes seconds on a busy machine)."""

from __future__ import annotations

import os
import time

# not `from dolambda import rng`: the function's package holds a dolambda without the
# public names (its __init__ "imports nothing"), so a shipped module importing them fails
# on isolated workers (noticed here, not fixed: the package is not this change's)
from dolambda._core.seeds import rng

STRAGGLER = 7


def first_copy(flag: str | None) -> bool:
    """True for the first copy of a task to get here (it creates ``flag``)."""
    if flag is None:
        return False
    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def straggler(x: int, flag: str | None, slow: float = 10.0) -> tuple[int, float]:
    """Iteration STRAGGLER's first copy is ``slow`` seconds late; the others take 0.3 s
    (long enough that the client sees most tasks start and finish: it times them)."""
    if x == STRAGGLER and first_copy(flag):
        time.sleep(slow)
    time.sleep(0.3)
    return x, float(rng().random())


def backup_crashes(x: int, flag: str | None) -> tuple[int, float]:
    """Iteration STRAGGLER's first copy is slow but succeeds; its backup crashes.

    The first copy stays out until its backup has started (``flag + ".backup"``), not
    for a fixed time a slow machine's median could outlast (no backup would be sent),
    then a second more, so the client reads the backup's crash while it is still out."""
    if flag is not None and x == STRAGGLER:
        if first_copy(flag):
            deadline = time.monotonic() + 30.0
            while not os.path.exists(flag + ".backup") and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(1.0)
        else:
            os.close(os.open(flag + ".backup", os.O_CREAT | os.O_WRONLY))
            os._exit(3)
    time.sleep(0.3)
    return x, float(rng().random())


def quick(x: int) -> tuple[int, float]:
    time.sleep(0.05)
    return x, float(rng().random())


def hangs_on(x: int, bad: tuple[int, ...]) -> tuple[int, float]:
    """Iterations in ``bad`` run far past any test timeout; the others are quick."""
    if x in bad:
        time.sleep(60)
    time.sleep(0.02)
    return x, float(rng().random())
