"""What `dolambda deploy` configures is what runs: the emulator reads the bucket
notification that deploy wrote, and `LambdaBackend()` reads the config deploy wrote."""

from __future__ import annotations

from typing import Any

import pytest

from dolambda import LambdaBackend, foreach
from dolambda._config import load_config
from tests.bodies.common import square

emulator = pytest.importorskip("dolambda.emulator")
deploy_mod = pytest.importorskip("dolambda.deploy")


def test_job_runs_on_the_deployed_setup(moto_url: str) -> None:
    settings = deploy_mod.DeploySettings(
        bucket="deployed-queue", region="us-east-1", endpoint_url=moto_url, timeout=30
    )
    changes = deploy_mod.deploy(settings, dependencies=False, echo=lambda _: None)
    assert changes
    config = load_config()
    assert config is not None and config.bucket == "deployed-queue" and config.signing_key
    with emulator.Emulator(
        workers=2,
        endpoint_url=moto_url,
        bucket="deployed-queue",
        function_name=config.function_name,
        signing_key=config.signing_key,
        timeout=30.0,
    ):
        backend = LambdaBackend()  # everything from the config file deploy wrote
        assert backend.bucket == "deployed-queue"
        got = (
            foreach(x=range(20))
            .chunk_size(3)
            .combine(sum)
            .do_lambda(square, backend=backend, progress=False)
        )
        assert got == sum(x * x for x in range(20))

        def round_trip() -> None:
            assert (
                foreach(x=range(3))
                .combine(sum)
                .do_lambda(square, backend=LambdaBackend(), progress=False)
                == 5
            )

        results: list[Any] = deploy_mod.doctor(settings, round_trip=round_trip)
        failed = [str(r) for r in results if not getattr(r, "ok", True)]
        assert not failed, failed
