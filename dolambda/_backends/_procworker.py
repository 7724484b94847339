"""Entry point of a local worker process: ``python -m dolambda._backends._procworker R W``.

Reads framed messages from fd R and answers on fd W (stdout and stderr stay the
user's, so a body that prints cannot corrupt the protocol). Runs every task
through :func:`dolambda._core.execute.run_task_blob`, the same path as Lambda.
"""

from __future__ import annotations

import pickle
import signal
import sys
from multiprocessing.connection import Connection

from dolambda._core.execute import WorkerState, run_task_blob
from dolambda._wire import codec


def main(read_fd: int, write_fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    rx, tx = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    state = WorkerState()
    job: tuple[str, bytes, bytes, bytes] | None = None
    while True:
        try:
            message = rx.recv_bytes()
        except (EOFError, OSError):
            return
        # The pipe is private to our parent, which pickled this tuple itself.
        kind, payload = pickle.loads(message)
        if kind == "job":
            job = payload
            continue
        if kind == "stop":
            return
        job_id, task_id, blob = payload
        assert job is not None and job[0] == job_id
        _, key, manifest_blob, body_blob = job

        def fetch_job(m: bytes = manifest_blob, b: bytes = body_blob) -> tuple[bytes, bytes]:
            return m, b

        outcome = run_task_blob(
            state,
            blob,
            key=key,
            job_id=job_id,
            task_id=task_id,
            fetch_job=fetch_job,
        )
        sys.stdout.flush()
        tx.send_bytes(
            codec.seal_model(outcome, key=key, context=codec.outcome_context(job_id, task_id))
        )


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
