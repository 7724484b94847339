"""Shared fixtures: the session's moto server and emulator, the backend every semantics
test runs on, an isolated AWS environment and a clean registry per test."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

import dolambda
from dolambda import Backend, LambdaBackend
from dolambda._backends.sequential import SequentialBackend
from dolambda.emulator import Emulator, launch_moto
from tests.helpers import LOCAL2


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """One emulator moto server (S3, IAM, Lambda + the emulator's mailbox) for the session,
    on a port it bound itself (port 0); tests that use it create their own bucket and
    function names."""
    proc, url = launch_moto()
    try:
        yield url
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()  # the server exits when its stdin closes
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.fixture(scope="session")
def lambda_emulator(moto_url: str) -> Iterator[Emulator]:
    """One emulator (2 warm workers) over the session's moto server, shared by every
    test that runs on the ``"lambda"`` backend; its own bucket and function name."""
    name = f"sem-{uuid.uuid4().hex[:10]}"
    with Emulator(
        workers=2, timeout=30, endpoint_url=moto_url, bucket=name, function_name=name
    ) as emu:
        yield emu


@pytest.fixture(scope="session")
def lambda_backend(lambda_emulator: Emulator) -> LambdaBackend:
    """One LambdaBackend on the session's emulator, as a user registers one and keeps it:
    its warm clients on the portal's loop live until the portal closes them at exit
    (a backend dropped mid-session leaves them to the garbage collector)."""
    return LambdaBackend(**lambda_emulator.backend_settings())


#: the backends every semantics case runs on (the ids of the ``backend`` fixture)
BACKEND_NAMES = ("sequential", "local", "lambda")


@pytest.fixture(params=BACKEND_NAMES)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each backend in turn (anyio's ``anyio_backend`` shape): ``"sequential"`` (in this
    process), ``"local"`` (2 warm worker processes), ``"lambda"`` (the session's emulator:
    the real handler in isolated worker interpreters, S3 over HTTP). Started on first use,
    so a run that selects only the first two never starts the emulator."""
    if request.param == "sequential":
        return SequentialBackend()
    if request.param == "local":
        return LOCAL2
    lambda_backend: LambdaBackend = request.getfixturevalue("lambda_backend")
    return lambda_backend


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    dolambda.register(None)
    yield
    dolambda.register(None)


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test ever reaches real AWS: fake credentials, no config files."""
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "DOLAMBDA_SIGNING_KEY",
        "DOLAMBDA_PROFILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    empty = tmp_path_factory.mktemp("awsconf")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
    monkeypatch.setenv("DOLAMBDA_CONFIG_DIR", str(empty / "dolambda"))
