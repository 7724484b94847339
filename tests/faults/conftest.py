"""Fault-injection fixtures: one emulator moto server per session, an emulator per test
(its own bucket and function), execution markers, and the session's summary table.

Every scenario records a row with :func:`record`; at the end of the session the
table is printed and written to ``fault-summary.json`` in the repository root.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from dolambda import LambdaBackend
from dolambda.emulator import Emulator

#: the fault scenarios' rows, in the order they ran
SUMMARY: list[dict[str, Any]] = []


@dataclass
class Row:
    scenario: str
    iterations: int
    lost: int
    duplicated: int
    executions: int
    retries: int
    outcome: str
    seconds: float


def record(row: Row) -> None:
    SUMMARY.append(asdict(row))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    if not SUMMARY:
        return
    header = ("scenario", "iterations", "lost", "duplicated", "executions", "retries", "outcome")
    rows = [[str(r[h]) for h in header] + [f"{r['seconds']:.1f}s"] for r in SUMMARY]
    header_row = [*header, "time"]
    widths = [max(len(x) for x in col) for col in zip(header_row, *rows, strict=True)]
    terminalreporter.section("dolambda fault-injection summary")
    for line in [header_row, ["-" * w for w in widths], *rows]:
        terminalreporter.write_line(
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
        )
    path = Path(str(config.rootpath)) / "fault-summary.json"
    path.write_text(json.dumps(SUMMARY, indent=2) + "\n")
    terminalreporter.write_line(f"written to {path}")


# --------------------------------------------------------------------------- servers


@pytest.fixture
def make_emulator(moto_url: str) -> Iterator[Callable[..., Emulator]]:
    """``make_emulator(**Emulator kwargs)``: a started emulator with its own bucket/function."""
    started: list[Emulator] = []

    def make(**kwargs: Any) -> Emulator:
        name = f"flt-{uuid.uuid4().hex[:10]}"
        settings: dict[str, Any] = {
            "endpoint_url": moto_url,
            "bucket": name,
            "function_name": name,
            "workers": 2,
            "timeout": 3.0,
        }
        settings.update(kwargs)
        emu = Emulator(**settings)
        emu.start()
        started.append(emu)
        return emu

    yield make
    for emu in reversed(started):
        emu.stop()


def backend_for(emu: Emulator, **kwargs: Any) -> LambdaBackend:
    """A backend on ``emu`` with fast lost-work detection (task_timeout = the function's)."""
    settings = emu.backend_settings()
    settings.update(kwargs)
    return LambdaBackend(**settings)


def s3_client(endpoint_url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def bucket_keys(emu: Emulator, endpoint_url: str | None = None) -> list[str]:
    s3 = s3_client(endpoint_url or emu.endpoint_url)
    out: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=emu.bucket):
        out.extend(o["Key"] for o in page.get("Contents", ()))
    return out


def job_keys(emu: Emulator, job_id: str, endpoint_url: str | None = None) -> list[str]:
    return [k for k in bucket_keys(emu, endpoint_url) if f"/{job_id}/" in k]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# --------------------------------------------------------------------------- execution markers


class Marks:
    """One file per execution attempt of an iteration: ``<index>-<uuid>`` in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> str:
        return str(self.root)

    def counts(self) -> Counter[int]:
        return Counter(int(p.name.split("-", 1)[0]) for p in self.root.iterdir())

    def total(self) -> int:
        return sum(self.counts().values())


@pytest.fixture
def marks(tmp_path: Path) -> Marks:
    return Marks(tmp_path / "marks")


def marking_body(marks_dir: str, sleep: float = 0.0) -> Callable[[int], tuple[int, int]]:
    """A body that records each execution and returns ``(x, x * x)``."""

    def body(x: int) -> tuple[int, int]:
        import os as _os
        import time as _time
        import uuid as _uuid

        with open(_os.path.join(marks_dir, f"{x}-{_uuid.uuid4().hex}"), "w"):
            pass
        if sleep:
            _time.sleep(sleep)
        return (x, x * x)

    return body


def tally(result: list[Any], n: int) -> tuple[int, int]:
    """``(lost, duplicated)`` iteration indexes in a list of ``(index, value)`` results."""
    seen = Counter(r[0] for r in result if isinstance(r, tuple))
    lost = sum(1 for i in range(n) if seen[i] == 0)
    duplicated = sum(c - 1 for c in seen.values() if c > 1)
    return lost, duplicated


def summarise(
    scenario: str,
    n: int,
    result: list[Any] | None,
    marks: Marks | None,
    retries: int,
    outcome: str,
    started: float,
) -> Row:
    lost, dup = tally(result, n) if result is not None else (n, 0)
    row = Row(
        scenario=scenario,
        iterations=n,
        lost=lost,
        duplicated=dup,
        executions=marks.total() if marks is not None else -1,
        retries=retries,
        outcome=outcome,
        seconds=time.monotonic() - started,
    )
    record(row)
    return row


def run_job(
    scenario: str,
    backend: LambdaBackend,
    marks: Marks,
    n: int = 16,
    chunk: int = 2,
    sleep: float = 0.0,
    timeout: float = 90.0,
) -> tuple[list[Any], Any, Row]:
    """Run ``foreach(x=range(n)).chunk_size(chunk)`` on ``backend``; check it against ``.do``.

    Returns the result, the job and its summary row (already recorded).
    """
    from dolambda import foreach

    started = time.monotonic()
    loop = foreach(x=range(n)).chunk_size(chunk)
    expected = loop.do(marking_body(Marks(marks.root.parent / "do-marks").path))
    job = loop.submit(marking_body(marks.path, sleep), backend=backend, progress=False)
    try:
        result = job.result(timeout=timeout)
    except BaseException as exc:
        summarise(scenario, n, None, marks, job.stats.retries, type(exc).__name__, started)
        raise
    same = result == expected
    row = summarise(
        scenario, n, result, marks, job.stats.retries, "ok" if same else "WRONG RESULT", started
    )
    assert same, (result, expected)
    return result, job, row
