"""Running the async core from sync code.

With no event loop running in the calling thread, a sync verb runs the
coroutine on a fresh loop in that very thread (so the body of ``.do`` runs
where the user called it). Inside a running loop (Jupyter, async code calling
a sync verb) it cannot block that loop, so the coroutine runs on a helper
thread's loop (a blocking portal, as anyio's ``from_thread`` does) and the
caller waits for it. Ctrl-C while waiting cancels the coroutine and waits (a
bounded time) for its cleanup to finish before it re-raises; a second Ctrl-C leaves
at once.

At interpreter exit the portal runs its exit hooks first (:func:`on_portal_exit`:
jobs still running wind down or are left for ``Job.attach``), then closes the async
generators its loop tracks (warm clients), on the portal's own loop, then stops it.
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
#: called (in the exiting thread) before the portal shuts down: see on_portal_exit
_exit_hooks: list[Callable[[], bool]] = []

#: seconds a Ctrl-C waits for a cancelled coroutine's cleanup before leaving it
CANCEL_WAIT = 30.0


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


def on_portal_exit(hook: Callable[[], bool]) -> None:
    """Run ``hook()`` at interpreter exit, before the portal's loop shuts down (while
    coroutines on it can still finish their cleanup); it returns True when it leaves
    something running there (the portal then stops without closing its generators,
    which would fail under the running code: the process is leaving it)."""
    _exit_hooks.append(hook)


def _stop_portal() -> None:
    loop = _portal_loop
    if loop is None or not loop.is_running():
        return
    busy = False
    for hook in _exit_hooks:
        with contextlib.suppress(Exception):
            busy = hook() or busy
    if not busy:
        # as asyncio.run does on its way out: what at_loop_shutdown registered runs
        with contextlib.suppress(BaseException):
            asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(timeout=5)
    loop.call_soon_threadsafe(loop.stop)


atexit.register(_stop_portal)


class PortalFuture(concurrent.futures.Future[T]):
    """The future of a coroutine running on the portal. Unlike the future of
    ``asyncio.run_coroutine_threadsafe``, it is done only when the coroutine has
    finished (its cleanup included): :meth:`interrupt` cancels the coroutine, and the
    future then ends with whatever the coroutine raised on its way out."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.task: asyncio.Task[T] | None = None
        self._interrupted = False

    def interrupt(self) -> None:
        """Cancel the coroutine (thread-safe); it may still run its cleanup."""
        self._interrupted = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs
            self.loop.call_soon_threadsafe(self._cancel_task)

    def cancel(self) -> bool:
        """Cancel the coroutine (as when an ``await`` of this future is cancelled); the
        future ends once the coroutine did, so this returns False (not cancelled yet)."""
        if not self.done():
            self.interrupt()
        return False

    def _cancel_task(self) -> None:
        if self.task is not None:
            self.task.cancel()


def submit_to_portal(coro: Coroutine[Any, Any, T]) -> PortalFuture[T]:
    """Run ``coro`` on the portal's loop; its future is done once ``coro`` returned."""
    loop = portal_loop()
    future: PortalFuture[T] = PortalFuture(loop)
    future.set_running_or_notify_cancel()  # from now on, cancel() interrupts the coroutine

    def settle(task: asyncio.Task[T]) -> None:
        if task.cancelled():
            future.set_exception(concurrent.futures.CancelledError())
        elif (error := task.exception()) is not None:
            future.set_exception(error)
        else:
            future.set_result(task.result())

    def start() -> None:
        task = future.task = loop.create_task(coro)
        if future._interrupted:
            task.cancel()
        task.add_done_callback(settle)

    loop.call_soon_threadsafe(start)
    return future


def finish_cancelling(
    future: concurrent.futures.Future[Any], *, timeout: float = CANCEL_WAIT
) -> str:
    """Wait for a cancelled portal coroutine's cleanup, at most ``timeout`` seconds:
    ``"done"``, ``"timeout"``, or ``"left"`` when a second Ctrl-C cut the wait short."""
    try:
        done, _ = concurrent.futures.wait([future], timeout=timeout)
    except KeyboardInterrupt:
        return "left"
    return "done" if done else "timeout"


def wait_future(future: PortalFuture[T]) -> T:
    """Block on a portal future; Ctrl-C cancels its coroutine and waits (bounded) for
    the cleanup; a second Ctrl-C leaves at once."""
    try:
        return future.result()
    except KeyboardInterrupt:
        future.interrupt()
        finish_cancelling(future)
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
