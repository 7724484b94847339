"""Per-task statistics of a job, and the cost model (one price table, one place)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from dolambda._wire import TaskStats

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
    memory_mb: int = 0
    architecture: str = "x86_64"

    @property
    def task_count(self) -> int:
        return len(self.tasks)

    @property
    def cold_starts(self) -> int:
        return sum(1 for t in self.tasks if t.cold_start)

    @property
    def worker_s3_requests(self) -> int:
        return sum(t.s3_requests for t in self.tasks)

    @property
    def billed_gb_seconds(self) -> float:
        mem_gb = (self.memory_mb or 0) / 1024
        return sum(math.ceil(t.duration * 1000) / 1000 * mem_gb for t in self.tasks)

    @property
    def cost_usd(self) -> float:
        """Estimated AWS cost: Lambda compute + requests + S3 requests."""
        gbs = PRICES[f"lambda_gb_second_{self.architecture}"] * self.billed_gb_seconds
        invocations = PRICES["lambda_request"] * len(self.tasks) if self.memory_mb else 0.0
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
        return text

    def __str__(self) -> str:
        return self.summary()

    def to_dataframe(self) -> Any:
        """Per-task stats as a pandas DataFrame (needs pandas: pip install 'dolambda[plot]')."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError(
                "JobStats.to_dataframe() needs pandas: pip install 'dolambda[plot]'"
            ) from exc
        return pd.DataFrame([t.model_dump() for t in self.tasks])
