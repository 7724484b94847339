"""Running the async core from sync code.

With no event loop running in the calling thread, a sync verb runs the
coroutine on a fresh loop in that very thread (so the body of ``.do`` runs
where the user called it). Inside a running loop (Jupyter, async code calling
a sync verb) it cannot block that loop, so the coroutine runs on a helper
thread's loop (a blocking portal, as anyio's ``from_thread`` does) and the
caller waits for it. Ctrl-C while waiting cancels the coroutine, which lets
jobs stop their workers, then re-raises.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_portal_lock = threading.Lock()
_portal_loop: asyncio.AbstractEventLoop | None = None
_portal_thread: threading.Thread | None = None


def in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def portal_loop() -> asyncio.AbstractEventLoop:
    """The helper thread's event loop, started on first use (daemon thread)."""
    global _portal_loop, _portal_thread
    with _portal_lock:
        if _portal_loop is None or not _portal_thread or not _portal_thread.is_alive():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=serve, name="dolambda-portal", daemon=True)
            thread.start()
            ready.wait()
            _portal_loop, _portal_thread = loop, thread
        return _portal_loop


async def at_loop_shutdown(closer: Callable[[], Coroutine[Any, Any, None]]) -> Any:
    """Run ``closer()`` when the running loop shuts down its async generators, as
    ``asyncio.run``, ``asyncio.Runner`` and pytest-asyncio do before closing a loop, and
    the portal does when the process exits.

    Returns a keeper the caller must hold on to: the loop tracks it only weakly.
    """

    async def keeper() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await closer()

    agen = keeper()
    await agen.asend(None)  # first iteration: the loop now tracks it
    return agen


def _stop_portal() -> None:
    loop = _portal_loop
    if loop is not None and loop.is_running():
        # as asyncio.run does on its way out: what at_loop_shutdown registered runs
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)


atexit.register(_stop_portal)


def submit_to_portal(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    return asyncio.run_coroutine_threadsafe(coro, portal_loop())


def wait_future(future: concurrent.futures.Future[T]) -> T:
    """Block on a portal future; Ctrl-C cancels it (and waits for the cleanup)."""
    try:
        return future.result()
    except KeyboardInterrupt:
        future.cancel()
        with contextlib.suppress(BaseException):
            future.result(timeout=30)
        raise


def run_sync(coro: Coroutine[Any, Any, T], *, portal: bool = False) -> T:
    """Run ``coro`` to completion from sync code, inside a running loop or not.

    ``portal=True`` always uses the helper thread's long-lived loop (for backends
    whose clients are worth keeping warm across calls).
    """
    if not portal and not in_running_loop():
        with asyncio.Runner() as runner:
            return runner.run(coro)
    return wait_future(submit_to_portal(coro))
