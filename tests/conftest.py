"""Shared fixtures: isolated AWS environment, a clean registry per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import dolambda


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """One emulator moto server (S3, IAM, Lambda + the emulator's mailbox) for the session;
    tests that use it create their own bucket and function names."""
    from dolambda.emulator import launch_moto

    proc, url = launch_moto()
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    dolambda.register(None)
    yield
    dolambda.register(None)


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test ever reaches real AWS: fake credentials, no config files."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "DOLAMBDA_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    empty = tmp_path_factory.mktemp("awsconf")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
    monkeypatch.setenv("DOLAMBDA_CONFIG_DIR", str(empty / "dolambda"))
