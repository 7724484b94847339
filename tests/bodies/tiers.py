"""Bodies for the memory-tier tests (a module of the user's own: it travels with the job)."""

from __future__ import annotations


def needs_memory(x: int, mb: int) -> int:
    """Hold ``mb`` MB resident (touched pages), then return ``x``."""
    hog = bytearray(mb << 20)
    for i in range(0, len(hog), 4096):
        hog[i] = 1
    return x + len(hog) * 0
