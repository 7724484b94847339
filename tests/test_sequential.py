"""`.do` runs bodies like R's %do%: in this thread, interruptible, free to use asyncio."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

from dolambda import foreach


async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def test_body_may_call_asyncio_run() -> None:
    assert foreach(x=range(3)).do(lambda x: asyncio.run(double(x))) == [0, 2, 4]


def test_nested_do_inside_a_body() -> None:
    got = foreach(i=range(2)).do(lambda i: foreach(j=range(3)).combine("+").do(lambda j: i * j))
    assert got == [0, 3]


def test_body_runs_in_the_calling_thread() -> None:
    assert set(foreach(x=range(3)).do(lambda x: threading.get_ident())) == {threading.get_ident()}


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals")
def test_ctrl_c_interrupts_a_running_body() -> None:
    def body(x: int) -> int:
        if x == 1:
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
            time.sleep(20)
        return x

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        foreach(x=range(3)).do(body)
    assert time.monotonic() - started < 10
