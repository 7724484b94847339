"""A plain moto server on 127.0.0.1, in its own process, on a port the OS picks.

The server binds port 0 and prints the port it got (aiobotocore's
``ThreadedMotoServer(port=0)`` then ``get_host_and_port()``, run in a child
process so that moto's state and threads stay out of the test process), so no
other process can take the port between choosing and binding it. It exits when
its stdin closes, so it never outlives the test run.

``python -m tests.moto_server`` is the child's entry point.
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

READY = "MOTO-SERVER-READY"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port nothing listens on right now: only for a dead endpoint that must refuse
    connections, never for a server to bind later (that is a race)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """``with MotoServer() as url:`` runs a plain moto server until the block ends."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = env or {}
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30.0) -> str:
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.moto_server"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            line = self.proc.stdout.readline() if selector.select(timeout) else ""
        if not line.startswith(READY):
            self.stop()
            raise RuntimeError(f"moto server did not start within {timeout:g} s: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        return self.url

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).close()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()  # the server's cue to shut down
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve() -> None:
    """The child: bind port 0, print ``MOTO-SERVER-READY <port>``, serve until stdin closes."""
    from moto.awslambda import models as lambda_models
    from moto.server import ThreadedMotoServer

    # moto appends each PutFunctionEventInvokeConfig and answers with the first; Lambda's
    # put overwrites the whole config ("If you exclude any settings, they are removed"):
    # https://docs.aws.amazon.com/lambda/latest/api/API_PutFunctionEventInvokeConfig.html
    backend = lambda_models.LambdaBackend
    original_put = backend.put_function_event_invoke_config

    def put_overwrites(self: Any, function_name: str, config: dict[str, Any]) -> Any:
        self.get_function(function_name).event_invoke_config.clear()
        return original_put(self, function_name, config)

    backend.put_function_event_invoke_config = put_overwrites  # type: ignore[method-assign]
    # versions and aliases as Lambda has them (a qualifier's own event-invoke config, an
    # Invoke of an alias): what the emulator's own server applies too
    from dolambda.emulator.moto.server import patch_lambda_qualifiers

    patch_lambda_qualifiers()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(READY, server.get_host_and_port()[1], flush=True)
    sys.stdin.read()
    # no server.stop(): it waits out serve_forever's poll; the daemon thread ends with us


if __name__ == "__main__":
    serve()
