"""The `dolambda` command: demo, jobs and cleanup against the emulator, the emulator
command's client config, and the command line's error messages."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dolambda import LambdaBackend, foreach
from dolambda._config import (
    EMULATOR_PROFILE,
    ClientConfig,
    config_path,
    load_config,
    read_config,
    save_config,
)
from dolambda._errors import ConfigError
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


# --- issue 15 item 10: `dolambda jobs` without the signing key -------------------------


def test_jobs_without_the_key_says_it_cannot_verify_them(emu: Any) -> None:
    backend = LambdaBackend(**{**emu.backend_settings(), "keep": True})
    job = foreach(x=range(4)).chunk_size(2).submit(lambda x: x, backend=backend, progress=False)
    job.result()
    runner = CliRunner()
    listed = runner.invoke(main, ["jobs", *cli_args(emu)])  # no DOLAMBDA_SIGNING_KEY
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].split() == ["JOB", "CREATED", "STATE", "RESULTS/TASKS"]
    line = next(row for row in lines if job.id in row)
    assert "unverified" in line and "dispatching" not in line, line
    assert "no signing key" in listed.output and "--signing-key" in listed.output
    keyed = runner.invoke(main, ["jobs", *cli_args(emu), "--signing-key", emu.signing_key])
    assert keyed.exit_code == 0, keyed.output
    line = next(row for row in keyed.output.splitlines() if job.id in row)
    assert "done" in line and "2/2 tasks" in line, line
    assert "unverified" not in keyed.output
    wrong = runner.invoke(main, ["jobs", *cli_args(emu), "--signing-key", "ab" * 32])
    assert "signed with another key" in wrong.output
    # a job whose age cannot be verified is never deleted by cleanup
    blind = runner.invoke(main, ["cleanup", *cli_args(emu), "--older-than", "0s"])
    assert blind.exit_code == 0, blind.output
    assert "deleted 0 job(s)" in blind.output and "left alone" in blind.output
    cleaned = runner.invoke(
        main, ["cleanup", *cli_args(emu), "--older-than", "0s", "--signing-key", emu.signing_key]
    )
    assert job.id in cleaned.output


# --- issue 15 item 12: the command line's words, and a fast network failure -------------


def test_cli_errors_name_options_not_python_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    result = CliRunner().invoke(
        main, ["jobs", "--bucket", "b", "--endpoint-url", "http://127.0.0.1:9"]
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: no AWS region"), result.output
    assert "pass --region" in result.output
    assert "region=" not in result.output and "LambdaBackend" not in result.output


def test_no_bucket_on_the_cli_says_bucket_option() -> None:
    result = CliRunner().invoke(main, ["jobs"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: no bucket given"), result.output
    assert "pass --bucket" in result.output and "bucket=" not in result.output


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends


def test_a_refused_local_endpoint_fails_in_about_a_second() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    runner = CliRunner()
    started = time.monotonic()
    result = runner.invoke(main, ["jobs", "--bucket", "b", "--endpoint-url", url])
    took = time.monotonic() - started
    assert result.exit_code == 1
    assert result.output.startswith("Error: "), result.output
    assert "is the emulator running?" in result.output
    # about a second; botocore's retries took ~26 s (10 leaves room for a loaded machine)
    assert took < 10, f"{took:.1f} s"
    started = time.monotonic()
    doctor = runner.invoke(main, ["doctor", "--bucket", "b", "--endpoint-url", url])
    assert time.monotonic() - started < 10
    assert doctor.exit_code == 1
    # a network failure is not a credentials problem: no "aws configure"
    assert "is the emulator running?" in doctor.output and "aws configure" not in doctor.output


# --- issue 15 item 8: a stable, discoverable emulator -------------------------------------


def start_emulator_command(*args: str) -> tuple[subprocess.Popen[str], Path]:
    """``dolambda emulator ARGS`` in a child process; waits for its client config."""
    path = config_path(EMULATOR_PROFILE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dolambda", "emulator", "--workers", "1", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    deadline = time.monotonic() + 90
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out = proc.communicate()[0]
            raise AssertionError(f"the emulator did not start:\n{out}")
        time.sleep(0.1)
    return proc, path


def stop_emulator_command(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out = proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
        raise AssertionError(f"the emulator did not stop on SIGTERM:\n{out}") from None
    return out


def test_the_emulator_command_is_found_by_lambda_backend_and_the_cli(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # no AWS setup at all: the emulator's config says everything
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)
    port = closed_port()
    proc, path = start_emulator_command("--port", str(port))
    try:
        config = read_config(EMULATOR_PROFILE)
        assert config is not None and config.endpoint_url == f"http://127.0.0.1:{port}"
        backend = LambdaBackend(keep=True)  # no argument at all
        assert backend.endpoint_url == config.endpoint_url
        job = foreach(x=range(3)).submit(lambda x: x + 1, backend=backend, progress=False)
        assert job.result() == [1, 2, 3]
        listed = CliRunner().invoke(main, ["jobs"])  # no option either
        assert listed.exit_code == 0, listed.output
        assert job.id in listed.output and "done" in listed.output, listed.output
    finally:
        out = stop_emulator_command(proc)
    assert f"export DOLAMBDA_PROFILE={EMULATOR_PROFILE}" in out, out
    assert f"AWS_ENDPOINT_URL=http://127.0.0.1:{port}" in out
    assert not path.exists(), "the client config outlived the emulator"
    # the next start signs with the same key (a pasted backend keeps working), and says
    # when the shell exports another key (which would win over the config)
    monkeypatch.setenv("DOLAMBDA_SIGNING_KEY", "ab" * 32)
    proc, _ = start_emulator_command("--port", str(port))
    try:
        again = read_config(EMULATOR_PROFILE)
        assert again is not None and again.signing_key == config.signing_key
    finally:
        out = stop_emulator_command(proc)
    assert "note: DOLAMBDA_SIGNING_KEY is set here to another key" in out, out


def test_a_stale_emulator_config_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    save_config(
        ClientConfig(bucket="gone", endpoint_url="http://127.0.0.1:9", pid=dead.pid),
        EMULATOR_PROFILE,
    )
    assert load_config() is None  # killed emulators leave no trap behind
    monkeypatch.setenv("DOLAMBDA_PROFILE", EMULATOR_PROFILE)
    with pytest.raises(ConfigError, match="no dolambda emulator is running"):
        load_config()
    monkeypatch.setenv("DOLAMBDA_PROFILE", "emulater")
    with pytest.raises(ConfigError, match="not a dolambda profile"):
        load_config()


def test_a_deployed_setup_wins_unless_the_emulator_profile_is_chosen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    save_config(ClientConfig(bucket="deployed"))
    save_config(ClientConfig(bucket="emulated", pid=os.getpid()), EMULATOR_PROFILE)
    assert load_config() == read_config()
    monkeypatch.setenv("DOLAMBDA_PROFILE", EMULATOR_PROFILE)
    assert LambdaBackend(signing_key="00" * 32).bucket == "emulated"


def test_emulator_refuses_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["emulator", "--port", str(port)])
    assert result.exit_code == 1
    assert f"Error: port {port} on 127.0.0.1 is in use" in result.output
