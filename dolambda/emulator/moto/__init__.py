"""The emulator's moto server: :func:`launch_moto` starts it in a child process.

The server itself (moto with its Lambda patched to hand events to a mailbox instead
of Docker, and the ``/_dolambda/`` endpoints) is :mod:`dolambda.emulator.moto.server`,
run as ``python -m dolambda.emulator.moto``. Importing this package imports no moto.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import subprocess
import sys
import threading

from dolambda._errors import BackendError
from dolambda.emulator.config import SOURCE_ROOT

__all__ = ["launch_moto"]

log = logging.getLogger("dolambda.emulator")

READY = "DOLAMBDA-MOTO-READY"  # the line the server prints once it listens


def launch_moto(port: int = 0, timeout: float = 60.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start the emulator's moto server (``python -m dolambda.emulator.moto``).

    Returns the process and its URL. The server exits when the process's stdin
    closes, so it never outlives its parent; stop it with ``terminate()``.
    Several emulators (different function names) can share one server.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dolambda.emulator.moto", "--watch-stdin", "--port", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    ready: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        with contextlib.suppress(OSError, ValueError):
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").strip()
                if line.startswith(READY):
                    ready.put(line)
                elif line:
                    log.debug("moto: %s", line)
        ready.put(None)

    threading.Thread(target=read, name="dolambda-emulator-moto-out", daemon=True).start()
    try:
        line = ready.get(timeout=timeout)
    except queue.Empty:
        line = None
    if line is None:
        proc.kill()
        proc.wait()
        raise BackendError(f"Emulator: the moto server did not start within {timeout:g} s")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"
