"""What `dolambda deploy` configures is what runs, and the emulator is set up by deploy's code.

- deploy first, then an emulator over the deployed setup: the emulator reads the
  notification deploy wrote, ``LambdaBackend()`` the config deploy wrote;
- an emulator first (its function set up by deploy's own steps), then deploy onto it:
  nothing changes (the emulator's function is adopted), doctor passes with its round
  trip, a job runs, destroy removes it; from the Python API and from the CLI (issue 15.9);
- what deploy cannot adopt from an emulator is refused, saying what to do.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from dolambda import LambdaBackend, foreach
from dolambda._config import load_config
from dolambda._errors import DeployError
from dolambda.deploy.emulated import EMULATOR_TAG
from dolambda.deploy.role import role_policy
from tests.bodies import iam as iam_bodies

emulator = pytest.importorskip("dolambda.emulator")
deploy_mod = pytest.importorskip("dolambda.deploy")

ROOT = Path(__file__).resolve().parents[1]


def lambda_client(url: str) -> Any:
    return boto3.client("lambda", endpoint_url=url, region_name="us-east-1")


def failed(results: list[Any]) -> list[str]:
    return [str(r) for r in results if not r.ok]


def test_job_runs_on_the_deployed_setup(moto_url: str) -> None:
    settings = deploy_mod.DeploySettings(
        bucket="deployed-queue", region="us-east-1", endpoint_url=moto_url, timeout=30
    )
    changes = deploy_mod.deploy(settings, dependencies=False, echo=lambda _: None)
    # no emulator runs it yet: deploy says so (its tasks would wait for nothing)
    [note] = [c for c in changes if c.action == "note"]
    assert "no emulator runs this function yet" in str(note)
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
            .do_lambda(iam_bodies.square, backend=backend, progress=False)
        )
        assert got == sum(x * x for x in range(20))

        def round_trip() -> None:
            assert (
                foreach(x=range(3))
                .combine(sum)
                .do_lambda(iam_bodies.square, backend=LambdaBackend(), progress=False)
                == 5
            )

        assert failed(deploy_mod.doctor(settings, round_trip=round_trip)) == []


@pytest.fixture
def running() -> Iterator[Any]:
    with emulator.Emulator(workers=2, timeout=30.0) as emu:
        yield emu


def test_the_emulators_function_is_what_deploy_makes(running: Any) -> None:
    """The role's policy is deploy's exactly; the function has deploy's handler, runtime and
    environment, the emulator's timeout and memory, and its async-invoke config."""
    emu = running
    settings = deploy_mod.DeploySettings(
        bucket=emu.bucket, endpoint_url=emu.endpoint_url, region=emu.region, memory_tiers=()
    )  # (no memory tiers: the emulator was started without; its emulator.json says so)
    clients = deploy_mod.Clients(settings)
    iam = boto3.client("iam", endpoint_url=emu.endpoint_url, region_name=emu.region)
    doc = iam.get_role_policy(RoleName=settings.role_name, PolicyName=settings.role_policy_name)
    assert doc["PolicyDocument"] == role_policy(settings, clients)
    fn = lambda_client(emu.endpoint_url).get_function(FunctionName=emu.function_name)
    conf = fn["Configuration"]
    assert conf["Handler"] == "handler.lambda_function.lambda_handler"
    assert (conf["Timeout"], conf["MemorySize"]) == (30, 1024)
    assert conf["Environment"]["Variables"] == {
        "DOLAMBDA_SIGNING_KEY": emu.signing_key,
        "DOLAMBDA_PREFIX": "dolambda",
        "DOLAMBDA_BUCKET": emu.bucket,
    }
    assert fn["Tags"][EMULATOR_TAG] == "s3"
    invoke = lambda_client(emu.endpoint_url).get_function_event_invoke_config(
        FunctionName=emu.function_name
    )
    assert invoke["MaximumRetryAttempts"] == deploy_mod.function.MAX_RETRY_ATTEMPTS
    # doctor's checks (all but the signing key, which needs a client config, and the round
    # trip) pass on the emulator as it starts
    results = deploy_mod.doctor(settings, config_signing_key=emu.signing_key)
    assert failed(results) == []


def test_deploy_onto_a_running_emulator_changes_nothing_then_doctor_job_destroy(
    running: Any,
) -> None:
    emu = running
    lam = lambda_client(emu.endpoint_url)
    before = lam.get_function(FunctionName=emu.function_name)["Configuration"]
    # deploy's defaults (900 s) differ from the emulator's 30 s: the emulator's are kept
    settings = deploy_mod.DeploySettings(
        bucket=emu.bucket, endpoint_url=emu.endpoint_url, region=emu.region
    )
    lines: list[str] = []
    changes = deploy_mod.deploy(settings, echo=lines.append)
    changed = [str(c) for c in changes if c.action != "unchanged" and "client config" not in str(c)]
    assert changed == [c for c in changed if c.startswith("skipped")], lines
    assert any("keeps the emulator's 30 s, 1024 MB" in line for line in lines), lines
    after = lam.get_function(FunctionName=emu.function_name)["Configuration"]
    for field in ("CodeSha256", "Timeout", "MemorySize", "Environment", "Role", "Handler"):
        assert after[field] == before[field], field
    config = load_config()
    assert config is not None and config.signing_key == emu.signing_key
    assert (config.bucket, config.endpoint_url, config.timeout) == (
        emu.bucket,
        emu.endpoint_url,
        30,
    )
    # a second deploy is a no-op too
    again = deploy_mod.deploy(settings, echo=lambda _: None)
    assert [c.action for c in again if c.action not in ("unchanged", "skipped")] == []

    def round_trip() -> None:
        got = foreach(x=range(3)).do_lambda(
            iam_bodies.square, backend=LambdaBackend(), progress=False
        )
        assert got == [0, 1, 4]

    assert failed(deploy_mod.doctor(settings, round_trip=round_trip)) == []
    got = (
        foreach(x=range(10))
        .combine(sum)
        .do_lambda(iam_bodies.square, backend=LambdaBackend(), progress=False)
    )
    assert got == 285
    deploy_mod.destroy(settings, echo=lambda _: None)
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName=emu.function_name)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"bucket": "another-bucket"}, "pass --bucket dolambda-emulator"),
        ({"prefix": "other"}, "prefix 'dolambda'"),
        ({"rotate_key": True}, "instead of --rotate-key"),
    ],
)
def test_deploy_refuses_what_it_cannot_adopt_from_an_emulator(
    running: Any, change: dict[str, Any], words: str
) -> None:
    emu = running
    settings = deploy_mod.DeploySettings(
        bucket=emu.bucket, endpoint_url=emu.endpoint_url, region=emu.region
    )
    settings = deploy_mod.DeploySettings(**{**settings.__dict__, **change})
    key = lambda_client(emu.endpoint_url).get_function(FunctionName=emu.function_name)
    with pytest.raises(DeployError, match="the emulator at") as info:
        deploy_mod.deploy(settings, echo=lambda _: None)
    assert words in str(info.value)
    now = lambda_client(emu.endpoint_url).get_function(FunctionName=emu.function_name)
    assert now["Configuration"]["Environment"] == key["Configuration"]["Environment"]


# --- the whole rehearsal from the CLI (issue 15.9) -------------------------------------------


def _cli(*args: str, cwd: Path, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_rehearse_the_aws_path_from_the_cli(tmp_path: Path) -> None:
    """`dolambda emulator` running -> `deploy` -> `doctor` (with its round trip) -> a job ->
    `destroy`, each a command as a user types it, from a directory outside the checkout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dolambda", "emulator", "--workers", "2", "--timeout", "30"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        url = ""
        seen: list[str] = []
        while not url:
            try:
                line = lines.get(timeout=120)
            except queue.Empty:
                raise AssertionError(f"the emulator did not start: {seen}") from None
            seen.append(line)
            if "dolambda emulator: endpoint " in line:
                url = line.split("endpoint ", 1)[1].split()[0]
        deployed = _cli(
            "-m", "dolambda", "deploy", "--bucket", "dolambda-emulator", "--endpoint-url", url,
            cwd=tmp_path,
        )  # fmt: skip
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert "keeps the emulator's 30 s" in deployed.stdout
        doctor = _cli("-m", "dolambda", "doctor", "--endpoint-url", url, cwd=tmp_path)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert "OK  round trip" in doctor.stdout and "FAIL" not in doctor.stdout
        job = _cli(
            "-c",
            "from dolambda import LambdaBackend, foreach\n"
            "print(foreach(x=range(6)).combine(sum)"
            ".do_lambda(lambda x: x * x, backend=LambdaBackend(), progress=False))",
            cwd=tmp_path,
        )
        assert job.returncode == 0 and job.stdout.strip().splitlines()[-1] == "55", (
            job.stdout + job.stderr
        )
        gone = _cli("-m", "dolambda", "destroy", "--endpoint-url", url, "--yes", cwd=tmp_path)
        assert gone.returncode == 0, gone.stdout + gone.stderr
        lam = lambda_client(url)
        with pytest.raises(lam.exceptions.ResourceNotFoundException):
            lam.get_function(FunctionName="dolambda")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_deploy_onto_an_emulator_says_requirements_are_not_used(
    running: Any, tmp_path: Path
) -> None:
    emu = running
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("numpy\n")
    settings = deploy_mod.DeploySettings(
        bucket=emu.bucket, endpoint_url=emu.endpoint_url, region=emu.region, requirements=reqs
    )
    lines: list[str] = []
    deploy_mod.deploy(settings, echo=lines.append)
    assert any(f"does not use --requirements {reqs}" in line for line in lines), lines
