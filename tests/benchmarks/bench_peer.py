"""Section 7 (peer): the same maps with Lithops (localhost backend v1, storage on the same S3).

Run as a child: ``python -m tests.benchmarks.bench_peer ENDPOINT BUCKET N`` prints
``{"seconds": ...}`` (map + get_result, after a warm-up map of 4).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from tests.benchmarks._common import CREDS, ROOT, Row, Server, ensure_bucket, log


def inc(x: int) -> int:
    return x + 1


def child(endpoint: str, bucket: str, n: int) -> None:
    import lithops

    config = {
        "lithops": {"backend": "localhost", "storage": "minio", "data_cleaner": False},
        "localhost": {"runtime": sys.executable, "worker_processes": 2, "version": 1},
        "minio": {
            "endpoint": endpoint,
            "access_key_id": CREDS["aws_access_key_id"],
            "secret_access_key": CREDS["aws_secret_access_key"],
            "storage_bucket": bucket,
        },
    }
    fexec = lithops.FunctionExecutor(config=config, log_level="WARNING")
    fexec.map(inc, range(4))
    fexec.get_result()
    t0 = time.perf_counter()
    fexec.map(inc, range(n))
    result = fexec.get_result()
    seconds = time.perf_counter() - t0
    assert len(result) == n
    print(json.dumps({"seconds": seconds}), flush=True)
    os._exit(0)  # do not wait for Lithops' background threads


def available() -> bool:
    try:
        import lithops  # noqa: F401
    except Exception:
        return False
    return True


def measure(server: Server, n: int, timeout: float) -> float | None:
    """Seconds for the map, or None when it did not finish within ``timeout``."""
    bucket = "bench-lithops"
    ensure_bucket(server.url, bucket)
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.benchmarks.bench_peer", server.url, bucket, str(n)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: it and its workers
            proc.communicate()
            return None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"lithops child failed: {err.read()[-2000:]}")
    return float(json.loads(out.strip().splitlines()[-1])["seconds"])


def run(server: Server, dolambda_times: dict[str, float], quick: bool) -> list[Row]:
    if not available():
        return [
            Row(
                "7 peer",
                "Lithops",
                None,
                "s",
                note="skipped: `import lithops` failed (pip install lithops)",
            )
        ]
    n1 = int(dolambda_times.get("chunk1_n", 1000))
    n2 = int(dolambda_times.get("defaults_n", 10_000))
    timeout = 30.0 if quick else 300.0
    rows: list[Row] = []
    for label, n, ours, bound in (
        (f"{n1} tasks (chunk 1)", n1, dolambda_times.get("chunk1"), 2),
        (f"{n2:,} iterations (defaults)", n2, dolambda_times.get("defaults"), 20),
    ):
        theirs = measure(server, n, timeout)
        log(f"peer: lithops {label}: {theirs}")
        note = "Lithops localhost v1, 2 worker processes, data_cleaner off"
        if theirs is None:
            theirs_v = timeout
            note += f"; did not finish within {timeout:.0f}s (lower bound)"
        else:
            theirs_v = theirs
        speedup = theirs_v / ours if ours else None
        rows.append(
            Row(
                "7 peer",
                f"{label}: dolambda emulator",
                ours,
                "s",
                "Lithops map + get_result",
                theirs_v,
                ratio=speedup,
                target=f"ratio >= {bound}",
                note=note + "; ratio = Lithops time / dolambda time",
            )
        )
    return rows


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
