"""Straggler backups on the emulator: a second copy of a slow task, the first result wins.

Each test runs its own emulator (its own bucket and function) over the session's moto
server, with the real handler. A straggler is made with a flag file: the first copy of
the task to start creates it and is slow; any later copy (the backup) finds it. The
bodies live in a module of their own that imports little (it travels to the workers,
and a heavy import would make every cold start a straggler).
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dolambda
from dolambda import LambdaBackend, foreach
from dolambda._backends.lambda_.backups import BACKUP_ATTEMPT, BackupPolicy
from dolambda._errors import InvalidArgument, InvalidArgumentType
from dolambda.emulator import Emulator
from tests.backup_bodies import STRAGGLER, backup_crashes, quick, straggler

TASKS = 24


@contextlib.contextmanager
def emulator(moto_url: str, **knobs: Any) -> Iterator[Emulator]:
    name = f"bk-{uuid.uuid4().hex[:10]}"
    settings: dict[str, Any] = {"workers": 4, "timeout": 30.0}
    settings.update(knobs)
    with Emulator(endpoint_url=moto_url, bucket=name, function_name=name, **settings) as emu:
        yield emu


def backend_of(emu: Emulator, **kwargs: Any) -> LambdaBackend:
    return LambdaBackend(**{**emu.backend_settings(), **kwargs})


def expected(body: Any = straggler) -> list[Any]:
    """The job run in this process, no straggler: what every run must give."""
    return foreach(x=range(TASKS)).seed(11).do(functools.partial(body, flag=None))


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- the policy


def test_the_rule_is_cubeds() -> None:
    policy = BackupPolicy()
    assert policy.threshold([1.0] * 9, total=9, done=9) is None  # fewer than min_tasks
    assert policy.threshold([1.0] * 4, total=10, done=4) is None  # not yet half done
    assert policy.threshold([1.0, 1.0, 2.0, 2.0, 9.0], total=10, done=5) == 9.0 * 3  # 5th
    assert policy.threshold([0.5] * 6, total=10, done=6) == 1.5
    # 8 done, 4 of them timed: the 5th shortest of 8 is about the 3rd of the 4 timed
    assert policy.threshold([1.0, 2.0, 3.0, 4.0], total=10, done=8) == 3.0 * 3
    assert policy.threshold([], total=10, done=8) is None  # nothing timed: no reference
    custom = BackupPolicy(min_tasks=2, min_done=0.0, slow_factor=2.0)
    assert custom.threshold([4.0], total=2, done=1) == 8.0


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"backups": "yes"}, InvalidArgumentType, "backups must be True or False"),
        ({"backup_slow_factor": 0.5}, InvalidArgument, "backup_slow_factor"),
        ({"backup_min_done": 1.0}, InvalidArgument, "backup_min_done"),
        ({"backup_min_tasks": 0}, InvalidArgument, "backup_min_tasks"),
        ({"backup_min_tasks": "10"}, InvalidArgumentType, "backup_min_tasks"),
    ],
)
def test_bad_settings_are_named(kwargs: dict[str, Any], error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        LambdaBackend(bucket="b", signing_key="00" * 32, **kwargs)


def test_backups_are_on_by_default_and_can_be_turned_off() -> None:
    assert LambdaBackend(bucket="b", signing_key="00" * 32).backup_policy == BackupPolicy()
    assert LambdaBackend(bucket="b", signing_key="00" * 32, backups=False).backup_policy is None


def test_the_emulator_slow_knob_is_checked() -> None:
    with pytest.raises(InvalidArgument, match="slow_fraction"):
        Emulator(slow_fraction=1.5)
    with pytest.raises(InvalidArgument, match="slow_factor"):
        Emulator(slow_fraction=0.1, slow_factor=0.5)


# --------------------------------------------------------------------------- on the emulator


@pytest.mark.parametrize("trigger", ["s3", "invoke"])
def test_a_backup_wins_and_its_original_finishing_later_changes_nothing(
    moto_url: str, tmp_path: Path, trigger: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with emulator(moto_url, trigger=trigger) as emu:
        backend = backend_of(emu, keep=True)
        body = functools.partial(straggler, flag=str(tmp_path / "flag"), slow=15.0)
        loop = foreach(x=range(TASKS)).seed(11).chunk_size(1)
        job = loop.submit(body, backend=backend, progress=True)
        assert job.result(timeout=60) == expected()
        stats = emu.stats  # the backup answered: the straggler's first copy still sleeps
        assert stats.completed < stats.invocations, stats
        # (another task may get a backup too, if the client saw it start late)
        assert job.stats.backups >= 1 and job.stats.backups_won >= 1
        assert f"{job.stats.backups} backups ({job.stats.backups_won} won" in job.stats.summary()
        assert job.stats.retries == 0
        bar = capsys.readouterr().err  # the progress line counts them
        assert f"backups={job.stats.backups} ({job.stats.backups_won} won)" in bar
        # the original goes on and finishes; its result PUT is refused (one result)
        invocations = emu.stats.invocations
        wait_for(lambda: emu.stats.completed == invocations, 30, "the original to finish")
        blob = read_result(emu, job.id, STRAGGLER)
        assert blob.attempt == BACKUP_ATTEMPT  # the backup's result is the one kept


def read_result(emu: Emulator, job_id: str, task_id: int) -> Any:
    import boto3

    from dolambda._wire import codec
    from dolambda._wire import keys as _keys
    from dolambda._wire.models import TaskOutcome

    s3 = boto3.client("s3", endpoint_url=emu.endpoint_url, region_name="us-east-1")
    key = _keys.result_key(emu.config.prefix, job_id, task_id)
    body = s3.get_object(Bucket=emu.config.bucket, Key=key)["Body"].read()
    return codec.unseal_model(
        TaskOutcome,
        body,
        key=bytes.fromhex(emu.config.signing_key),
        context=codec.outcome_context(job_id, task_id),
    )


def test_a_backup_that_crashes_while_its_original_runs_is_not_an_error(
    moto_url: str, tmp_path: Path
) -> None:
    with emulator(moto_url) as emu:
        body = functools.partial(backup_crashes, flag=str(tmp_path / "flag"))
        job = foreach(x=range(TASKS)).seed(11).chunk_size(1).submit(body, backend=backend_of(emu))
        assert job.result(timeout=60) == expected(backup_crashes)  # errorhandling "stop"
        assert job.stats.backups >= 1 and job.stats.failed == 0
        # the backup's os._exit killed the worker's child (the watchdog reported it as a
        # crash, the environment lived): the emulator saw no crashed environment
        assert (tmp_path / "flag.backup").exists() and emu.stats.crashed == 0


def test_backups_false_waits_for_the_straggler(moto_url: str, tmp_path: Path) -> None:
    with emulator(moto_url) as emu:
        body = functools.partial(straggler, flag=str(tmp_path / "flag"), slow=3.0)
        started = time.monotonic()
        loop = foreach(x=range(TASKS)).seed(11).chunk_size(1)
        job = loop.submit(body, backend=backend_of(emu, backups=False))
        assert job.result(timeout=60) == expected()
        assert time.monotonic() - started >= 3.0 + 0.3
        assert job.stats.backups == 0
        assert emu.stats.invocations == TASKS  # no second copy of anything


def test_duplicates_drops_and_slow_invocations_on_top_of_backups(moto_url: str) -> None:
    # a dropped event's task never runs: its backup (three times the median, not the
    # deadline) runs it; duplicated events run tasks twice, one result each
    knobs = {"duplicate_events": True, "drop_fraction": 0.1, "slow_fraction": 0.1}
    with emulator(moto_url, timeout=3.0, seed=5, slow_factor=10, **knobs) as emu:
        loop = foreach(x=range(40)).seed(11).chunk_size(1)
        job = loop.submit(quick, backend=backend_of(emu))
        assert job.result(timeout=120) == foreach(x=range(40)).seed(11).do(quick)
        stats = emu.stats
        assert stats.dropped >= 1 and stats.duplicated >= 1 and stats.slowed >= 1
        assert job.stats.backups >= 1


def test_slow_invocations_take_about_slow_factor_times_as_long(moto_url: str) -> None:
    with emulator(moto_url, workers=2, slow_fraction=1.0, slow_factor=4) as emu:
        started = time.monotonic()
        # the first round is held 3 x 0.1 s (assumed before any invocation returned), the
        # second 3 x the first round's median (at least 0.3 s)
        assert foreach(x=range(4)).chunk_size(1).do_lambda(
            lambda x: time.sleep(0.3) or x, backend=backend_of(emu, backups=False)
        ) == list(range(4))
        assert emu.stats.slowed == 4
        assert time.monotonic() - started >= (0.3 + 3 * 0.1) + (0.3 + 3 * 0.3)


def test_attach_in_the_middle_of_a_backup(moto_url: str, tmp_path: Path) -> None:
    with emulator(moto_url) as emu:
        settings = emu.backend_settings()
        flag = str(tmp_path / "flag")
        script = tmp_path / "client.py"
        script.write_text(
            textwrap.dedent(
                f"""
                import os, time
                from dolambda import LambdaBackend, foreach

                def body(x):
                    if x == {STRAGGLER}:
                        try:
                            os.close(os.open({flag!r}, os.O_CREAT | os.O_EXCL))
                            time.sleep(8)
                        except FileExistsError:
                            pass
                    time.sleep(0.05)
                    return x * 3

                backend = LambdaBackend(**{settings!r})
                job = foreach(x=range({TASKS})).chunk_size(1).combine(sum).submit(
                    body, backend=backend, progress=False)
                print(job.id, flush=True)
                while job.stats.backups < 1:
                    time.sleep(0.01)
                print("backup sent", flush=True)
                time.sleep(60)
                """
            )
        )
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            job_id = proc.stdout.readline().strip()
            assert proc.stdout.readline().strip() == "backup sent"
        finally:
            proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        job = dolambda.Job.attach(job_id, backend_of(emu))
        assert job.result(timeout=60) == 3 * sum(range(TASKS))
