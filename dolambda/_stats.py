"""Per-task statistics of a job, and the cost model (one price table, one place)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from dolambda._wire.models import TaskStats

# USD, us-east-1, on-demand (aws.amazon.com/lambda/pricing and /s3/pricing, 2025).
PRICES: dict[str, float] = {
    "lambda_gb_second_x86_64": 0.0000166667,
    "lambda_gb_second_arm64": 0.0000133334,
    "lambda_request": 0.20 / 1_000_000,
    "s3_put": 0.005 / 1000,  # PUT, COPY, POST, LIST
    "s3_get": 0.0004 / 1000,  # GET and all other requests
}


@dataclass
class JobStats:
    """What a job measured: per-task stats, requests, wall time and the estimated cost."""

    job_id: str = ""
    backend: str = ""
    iterations: int = 0
    failed: int = 0
    tasks: list[TaskStats] = field(default_factory=list)
    retries: int = 0
    wall_time: float = 0.0
    client_s3_requests: dict[str, int] = field(default_factory=dict)
    #: bytes the client sent: the objects it PUT (tasks, the job's manifest and body,
    #: code archives) and the payloads it invoked the function with
    bytes_sent: int = 0
    memory_mb: int = 0
    architecture: str = "x86_64"
    #: straggler backups sent (Lambda backend), how many of them won, and the estimated
    #: seconds the losing copies ran (a typical task's each: their results are refused)
    backups: int = 0
    backups_won: int = 0
    backup_seconds: float = 0.0
    #: the function's memory sizes (MB): the base memory, then its tiers (Lambda backend)
    memory_tiers: list[int] = field(default_factory=list)
    #: synchronous invokes (trigger="call") Lambda throttled (429), each sent again after
    #: a backoff
    throttles: int = 0
    #: who queued the tasks (Lambda backend): "client", or "remote" (dispatchers in the
    #: function, from one plan the client wrote), and how many dispatchers that took
    dispatch: str = "client"
    dispatchers: int = 0
    #: tasks the remote dispatchers reported they could not queue, which the client then
    #: sent itself (not retries)
    undispatched: int = 0

    @property
    def task_count(self) -> int:
        return len(self.tasks)

    @property
    def cold_starts(self) -> int:
        return sum(1 for t in self.tasks if t.cold_start)

    @property
    def worker_s3_requests(self) -> int:
        return sum(t.s3_requests for t in self.tasks)

    def _task_mb(self, t: TaskStats) -> int:
        """The memory a task ran with: its worker's limit (its tier), else the function's."""
        return t.memory_limit_mb or self.memory_mb or 0

    @property
    def gb_seconds_by_tier(self) -> dict[int, float]:
        """Billed GB-seconds of the tasks, by the memory (MB) they ran with."""
        out: dict[int, float] = {}
        for t in self.tasks:
            mb = self._task_mb(t)
            out[mb] = out.get(mb, 0.0) + math.ceil(t.duration * 1000) / 1000 * mb / 1024
        return dict(sorted(out.items()))

    @property
    def tasks_by_tier(self) -> dict[int, int]:
        """How many tasks ran with each memory size (MB)."""
        out: dict[int, int] = {}
        for t in self.tasks:
            out[self._task_mb(t)] = out.get(self._task_mb(t), 0) + 1
        return dict(sorted(out.items()))

    @property
    def billed_gb_seconds(self) -> float:
        return sum(self.gb_seconds_by_tier.values()) + self.backup_gb_seconds

    @property
    def backup_gb_seconds(self) -> float:
        """Estimated GB-seconds of the copies that lost (backups or their originals)."""
        return self.backup_seconds * (self.memory_mb or 0) / 1024

    @property
    def cost_usd(self) -> float:
        """Estimated AWS cost: Lambda compute + requests + S3 requests."""
        gbs = PRICES[f"lambda_gb_second_{self.architecture}"] * self.billed_gb_seconds
        invocations = (
            PRICES["lambda_request"] * (len(self.tasks) + self.backups) if self.memory_mb else 0.0
        )
        puts = self.client_s3_requests.get("put", 0) + self.client_s3_requests.get("list", 0)
        gets = self.client_s3_requests.get("get", 0) + self.client_s3_requests.get("other", 0)
        # each task's worker does about one PUT (its result) and the rest GETs
        w_puts = len(self.tasks) if self.memory_mb else 0
        w_gets = max(0, self.worker_s3_requests - w_puts)
        s3 = PRICES["s3_put"] * (puts + w_puts) + PRICES["s3_get"] * (gets + w_gets)
        return gbs + invocations + s3

    def summary(self) -> str:
        """One readable line."""
        text = (
            f"{self.iterations} iterations in {self.task_count} tasks, {self.wall_time:.2f}s wall"
        )
        if self.failed:
            text += f", {self.failed} failed"
        if self.memory_mb:
            text += (
                f", {self.billed_gb_seconds:.3f} GB-s billed, ~${self.cost_usd:.6f}, "
                f"{self.cold_starts} cold starts, {self.retries} retries"
            )
            if self.backups:
                text += (
                    f", {self.backups} backups ({self.backups_won} won, "
                    f"~{self.backup_gb_seconds:.3f} GB-s)"
                )
            by_tier = self.gb_seconds_by_tier
            if len(by_tier) > 1 or (by_tier and self.memory_mb not in by_tier):
                counts = self.tasks_by_tier
                text += ", memory tiers: " + ", ".join(
                    f"{mb} MB x{counts[mb]} ({gbs:.3f} GB-s)" for mb, gbs in by_tier.items()
                )
        if self.throttles:
            text += f", {self.throttles} calls throttled (429, sent again)"
        if self.dispatch == "remote":
            text += f", dispatched remotely ({self.dispatchers} dispatchers"
            if self.undispatched:
                text += f"; {self.undispatched} tasks they could not queue sent by the client"
            text += ")"
        if self.bytes_sent:
            text += f", {format_bytes(self.bytes_sent)} sent"
        return text

    def __str__(self) -> str:
        return self.summary()

    def plot(self, kind: str = "timeline", ax: Any = None) -> Any:
        """``"timeline"`` (a row per worker, a bar per task) or ``"durations"`` (histogram)."""
        if kind == "timeline":
            return plot_timeline(self, ax)
        if kind == "durations":
            return plot_durations(self, ax)
        raise ValueError(f"plot: kind must be 'timeline' or 'durations', got {kind!r}")

    def to_dataframe(self) -> Any:
        """Per-task stats as a pandas DataFrame (needs pandas: pip install 'dolambda[plot]')."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError(
                "JobStats.to_dataframe() needs pandas: pip install 'dolambda[plot]'"
            ) from exc
        return pd.DataFrame([t.model_dump() for t in self.tasks])


def format_bytes(size: int) -> str:
    """``1234567`` -> ``'1.2 MB'`` (decimal units, as S3's console and bills count)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _pyplot() -> Any:
    try:
        import matplotlib

        if not _interactive():
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "plots need matplotlib: pip install 'dolambda[plot]' (or pip install matplotlib)"
        ) from exc
    return plt


def _interactive() -> bool:
    import sys

    return "ipykernel" in sys.modules


def plot_timeline(stats: JobStats, ax: Any = None) -> Any:
    """One row per worker, a bar per task (start to finish), cold starts marked."""
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3 + 0.15 * len({t.worker for t in stats.tasks})))
    if not stats.tasks:
        ax.set_title(f"job {stats.job_id}: no tasks")
        return ax.figure
    t0 = min(t.started_at for t in stats.tasks)
    workers = sorted({t.worker for t in stats.tasks})
    row = {w: i for i, w in enumerate(workers)}
    for t in stats.tasks:
        color = "tab:orange" if t.cold_start else "tab:blue"
        ax.barh(
            row[t.worker],
            max(t.finished_at - t.started_at, 1e-3),
            left=t.started_at - t0,
            color=color,
            edgecolor="white",
            height=0.8,
        )
    ax.set_yticks(range(len(workers)), [w[-24:] for w in workers])
    ax.set_xlabel("seconds since the first task started")
    ax.set_title(f"job {stats.job_id}: {len(stats.tasks)} tasks, orange = cold start")
    return ax.figure


def plot_durations(stats: JobStats, ax: Any = None) -> Any:
    """A histogram of task durations."""
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    ax.hist([t.duration for t in stats.tasks], bins=min(30, max(5, len(stats.tasks) // 3)))
    ax.set_xlabel("task duration (s)")
    ax.set_ylabel("tasks")
    ax.set_title("task durations")
    return ax.figure
