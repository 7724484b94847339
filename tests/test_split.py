"""A timed-out chunk is split into halves, down to single iterations, before any
iteration is reported as timed out (issue 16 item 3); on the emulator, whose workers
are killed at the function timeout."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import boto3
import pytest

from dolambda import Job, LambdaBackend, TaskError, foreach
from dolambda._backends.lambda_.split import SPLIT_BASE, _node_id, _place
from dolambda._wire import keys as _keys
from dolambda.emulator import Emulator
from tests.backup_bodies import hangs_on


def test_split_ids_are_a_tree_out_of_the_planners_range() -> None:
    assert _place(7) == (7, 1)
    assert _place(_node_id(7, 2)) == (7, 2) and _place(_node_id(7, 3)) == (7, 3)
    assert _node_id(0, 2) > SPLIT_BASE > 10**9


@pytest.mark.parametrize("bad", [(5,), (1, 6)])
def test_only_the_iterations_that_time_out_fail(moto_url: str, bad: tuple[int, ...]) -> None:
    name = f"sp-{uuid.uuid4().hex[:10]}"
    with Emulator(
        workers=2, timeout=2.0, endpoint_url=moto_url, bucket=name, function_name=name
    ) as emu:
        # the client gives a task 6 s + grace before it counts as lost: the workers'
        # timeout records (the function's timeout is 2 s) come well before that
        settings = {**emu.backend_settings(), "retries": 0, "task_timeout": 6.0}
        backend = LambdaBackend(**settings, backups=False)  # (every invocation is a task)
        body = functools.partial(hangs_on, bad=bad)
        loop = foreach(x=range(8)).seed(3).chunk_size(8).errorhandling("pass")
        job = loop.submit(body, backend=backend, progress=False)
        got = job.result(timeout=120)
        want = foreach(x=range(8)).seed(3).do(functools.partial(hangs_on, bad=()))
        for k in range(8):
            if k in bad:
                assert isinstance(got[k], TaskError), got[k]
                assert got[k].index == k and "timeout" in str(got[k]).lower()
            else:
                assert got[k] == want[k]  # seeds and positions as in the unsplit run
        assert job.stats.failed == len(bad)
        # the worker's watchdog stops each timed-out task itself, before Lambda's deadline
        # (so the emulator sees none), and reports it: the client splits what timed out
        assert emu.stats.timeouts == 0 and emu.stats.invocations > 1 + len(bad)
        # every invocation is in the job's stats, the timed-out ones that were split too:
        # they are billed, so the GB-seconds and the cost count them
        assert job.stats.task_count == emu.stats.invocations


def test_attach_in_the_middle_of_a_split(moto_url: str, tmp_path: Path) -> None:
    name = f"sp-{uuid.uuid4().hex[:10]}"
    with Emulator(
        workers=2, timeout=2.0, endpoint_url=moto_url, bucket=name, function_name=name
    ) as emu:
        settings = {**emu.backend_settings(), "retries": 0, "task_timeout": 6.0}
        script = tmp_path / "client.py"
        script.write_text(
            textwrap.dedent(
                f"""
                import time
                from dolambda import LambdaBackend, foreach

                def body(x):
                    if x == 5:
                        time.sleep(60)
                    return x * 3

                backend = LambdaBackend(**{settings!r})
                job = foreach(x=range(8)).chunk_size(8).errorhandling("remove").combine(
                    sum).submit(body, backend=backend, progress=False)
                print(job.id, flush=True)
                time.sleep(120)
                """
            )
        )
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        s3 = boto3.client("s3", endpoint_url=emu.endpoint_url, region_name="us-east-1")
        try:
            assert proc.stdout is not None
            job_id = proc.stdout.readline().strip()
            queue = _keys.queue_dir(emu.config.prefix, job_id)

            def halves() -> list[int]:
                listed = s3.list_objects_v2(Bucket=emu.config.bucket, Prefix=queue)
                ids = [
                    _keys.parse_task_key(emu.config.prefix, o["Key"])
                    for o in listed.get("Contents", ())
                ]
                return [p[1] for p in ids if p is not None and p[1] >= SPLIT_BASE]

            deadline = time.monotonic() + 60
            while not halves():  # the client split the chunk: now it dies
                assert time.monotonic() < deadline, "the chunk was never split"
                time.sleep(0.05)
        finally:
            proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        job = Job.attach(job_id, LambdaBackend(**settings))
        assert job.result(timeout=120) == 3 * (sum(range(8)) - 5)  # only iteration 5 failed
        assert job.stats.failed == 1
