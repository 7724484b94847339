"""The `dolambda` command: demo, jobs and cleanup against the emulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from dolambda import LambdaBackend, foreach
from dolambda.cli import main

emulator = pytest.importorskip("dolambda.emulator")


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    with emulator.Emulator(workers=2, timeout=10.0) as instance:
        yield instance


def cli_args(emu: Any) -> list[str]:
    return [
        "--bucket",
        emu.bucket,
        "--region",
        "us-east-1",
        "--endpoint-url",
        emu.endpoint_url,
    ]


def test_help_lists_every_command_with_examples() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "emulator", "deploy", "doctor", "destroy", "jobs", "cleanup"):
        assert command in result.output
        sub = runner.invoke(main, [command, "--help"])
        assert sub.exit_code == 0, sub.output
        assert "Example" in sub.output


def test_demo_runs_on_the_emulator() -> None:
    result = CliRunner().invoke(main, ["demo", "--iterations", "8", "--samples", "2000"])
    assert result.exit_code == 0, result.output
    assert "pi ~=" in result.output
    assert "8 iterations" in result.output


def test_jobs_and_cleanup(emu: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOLAMBDA_SIGNING_KEY", emu.signing_key)
    backend = LambdaBackend(**{**emu.backend_settings(), "keep": True})
    job = foreach(x=range(6)).chunk_size(2).submit(lambda x: x, backend=backend, progress=False)
    job.result()
    runner = CliRunner()
    listed = runner.invoke(main, ["jobs", *cli_args(emu)])
    assert listed.exit_code == 0, listed.output
    line = next(row for row in listed.output.splitlines() if job.id in row)
    assert "done" in line and "3/3 tasks" in line
    dry = runner.invoke(main, ["cleanup", *cli_args(emu), "--older-than", "0s", "--dry-run"])
    assert dry.exit_code == 0 and job.id in dry.output
    cleaned = runner.invoke(main, ["cleanup", *cli_args(emu), "--older-than", "0s"])
    assert cleaned.exit_code == 0 and job.id in cleaned.output
    after = runner.invoke(main, ["jobs", *cli_args(emu)])
    assert job.id not in after.output


def test_cleanup_rejects_a_bad_duration(emu: Any) -> None:
    result = CliRunner().invoke(main, ["cleanup", *cli_args(emu), "--older-than", "soon"])
    assert result.exit_code != 0
    assert "duration" in result.output
