"""Remote dispatch (issue 17.2): the client writes one signed dispatch plan and makes one
Invoke; dispatchers in the emulator's isolated workers (the real handler, acting as the
role, whose policy the emulator's server enforces) queue the tasks, in a tree for a large
job. HTTP to a moto server throughout; conditions are waited on, never slept for."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

import dolambda
from dolambda import LambdaBackend, foreach, rng
from dolambda._backends.lambda_ import dispatch as _dispatch
from dolambda._wire import codec
from dolambda._wire import keys as _keys
from dolambda._wire.events import DispatchRange, dispatch_event, tree_size
from dolambda._wire.models import DispatchPlan
from dolambda.emulator import Emulator
from tests.bodies.lambda_ import noisy, takes_20ms
from tests.test_iam import policy_without

#: the function's timeout here: a remote dispatcher's share is MAX_SPAN (1,000 tasks;
#: 500 a second for a quarter of it would be 1,250), so every job below has one
#: dispatcher unless a test lowers the span
TIMEOUT = 10.0


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def emu(moto_url: str) -> Iterator[Emulator]:
    name = f"rd-{uuid.uuid4().hex[:10]}"
    with Emulator(
        endpoint_url=moto_url, bucket=name, function_name=name, workers=2, timeout=TIMEOUT
    ) as instance:
        yield instance


def backend_for(emu: Emulator, **kwargs: Any) -> LambdaBackend:
    settings: dict[str, Any] = {
        "bucket": emu.bucket,
        "function_name": emu.function_name,
        "region": emu.region,
        "endpoint_url": emu.endpoint_url,
        "prefix": emu.prefix,
        "signing_key": emu.signing_key,
        "task_timeout": TIMEOUT,
        "max_concurrency": 2,
        "dispatch": "remote",
    }
    settings.update(kwargs)
    return LambdaBackend(**settings)


def s3(emu: Emulator) -> Any:
    return boto3.client("s3", endpoint_url=emu.endpoint_url, region_name=emu.region)


def keys_under(emu: Emulator, prefix: str) -> list[str]:
    out: list[str] = []
    for page in s3(emu).get_paginator("list_objects_v2").paginate(Bucket=emu.bucket, Prefix=prefix):
        out.extend(o["Key"] for o in page.get("Contents", ()))
    return out


def job_keys(emu: Emulator, job_id: str) -> list[str]:
    return [k for k in keys_under(emu, _keys.root(emu.prefix)) if f"/{job_id}/" in k]


def settled(emu: Emulator) -> None:
    """The emulator has nothing pending or running."""
    assert emu.wait_idle(60), "the emulator did not go idle"


CASES: list[tuple[str, Any, Any]] = [
    ("list", foreach(x=range(23)).chunk_size(1), noisy),
    ("chunks", foreach(x=range(40)).chunk_size(3).combine(sum), noisy),
    ("seed", foreach(x=range(9)).seed(7).chunk_size(2), lambda x: float(rng().random())),
    (
        "nest",
        foreach(i=range(5)).nest(foreach(j=lambda i: range(i)).combine("+", init=0)),
        lambda i, j: i * 10 + j,
    ),
    ("pass", foreach(x=range(6)).chunk_size(1).errorhandling("pass"), lambda x: 1 / (x - 2)),
]


@pytest.mark.parametrize("trigger", ["s3", "invoke"])
@pytest.mark.parametrize("name,loop,body", CASES, ids=[c[0] for c in CASES])
def test_a_remote_dispatch_gives_the_client_dispatchs_results(
    emu: Emulator, trigger: str, name: str, loop: Any, body: Any
) -> None:
    client = backend_for(emu, trigger=trigger, dispatch="client")
    by_client = loop.submit(body, backend=client, progress=False)
    remote = loop.submit(body, backend=backend_for(emu, trigger=trigger), progress=False)

    def comparable(values: Any) -> Any:  # (exceptions compare by type and message)
        return [repr(v) for v in values] if name == "pass" else values

    expected = comparable(by_client.result(timeout=120))
    assert comparable(remote.result(timeout=120)) == expected == comparable(loop.do(body))
    assert (by_client.stats.dispatch, remote.stats.dispatch) == ("client", "remote")
    assert remote.stats.dispatchers == 1 and remote.stats.retries == 0
    assert job_keys(emu, remote.id) == []  # (the dispatch plan is cleaned up too)


def test_dispatch_setting_is_checked(emu: Emulator) -> None:
    with pytest.raises(dolambda.DolambdaError, match="dispatch must be 'auto', 'client' or"):
        backend_for(emu, dispatch="lambda")
    with pytest.raises(dolambda.DolambdaError, match="dispatch='remote' needs trigger"):
        backend_for(emu, trigger="call", dispatch="remote")
    assert backend_for(emu, trigger="call", dispatch="auto").dispatch == "auto"


@pytest.mark.parametrize("trigger", ["s3", "invoke"])
def test_the_client_makes_the_same_few_requests_whatever_the_job_size(
    emu: Emulator, trigger: str
) -> None:
    """A remotely dispatched job's client requests, before the gather's LISTs and GETs:
    the manifest, the body, the dispatch plan, plan.json and the code archive of the
    tests' bodies (5 PUTs) and one Invoke; for 40 tasks as for 400 (and on AWS for
    10,000: the benchmark's row)."""
    seen = []
    for n in (40, 400):
        # (no straggler backups: a backup is a PUT or an Invoke of the client's own)
        backend = backend_for(emu, trigger=trigger, backups=False)
        job = foreach(x=range(n)).chunk_size(1).submit(noisy, backend=backend, progress=False)
        assert job.result(timeout=300) == [x * x for x in range(n)]
        requests = job.stats.client_s3_requests
        seen.append((requests.get("put"), requests.get("invoke"), requests.get("call")))
        assert job.stats.retries == 0  # (nothing was sent again by the client)
    assert seen == [(5, 1, None)] * 2


def test_auto_dispatches_remotely_from_the_threshold(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_dispatch, "REMOTE_FROM", 30)
    backend = backend_for(emu, dispatch="auto")
    small = foreach(x=range(29)).chunk_size(1).submit(noisy, backend=backend, progress=False)
    large = foreach(x=range(30)).chunk_size(1).submit(noisy, backend=backend, progress=False)
    assert small.result(timeout=120) == [x * x for x in range(29)]
    assert large.result(timeout=120) == [x * x for x in range(30)]
    assert (small.stats.dispatch, large.stats.dispatch) == ("client", "remote")
    assert small.stats.client_s3_requests.get("invoke") is None
    call = backend_for(emu, dispatch="auto", trigger="call")
    job = foreach(x=range(30)).chunk_size(1).submit(noisy, backend=call, progress=False)
    assert job.result(timeout=120) == [x * x for x in range(30)]
    assert job.stats.dispatch == "client"  # (the client is the caller)


def test_a_function_deployed_without_remote_dispatch_is_dispatched_by_the_client(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A function whose package record does not list "remote-dispatch" (deployed by an
    older dolambda, whose worker ignores a dispatch event): "auto" dispatches the job
    itself instead of leaving every task to the lost-task timer; "remote" is refused,
    naming the function and what to do, before anything is sent."""
    monkeypatch.setattr(_dispatch, "REMOTE_FROM", 30)
    key = _keys.package_record_key(emu.prefix, emu.function_name)
    client = s3(emu)
    record = client.get_object(Bucket=emu.bucket, Key=key)["Body"].read()
    assert "remote-dispatch" in json.loads(record)["features"]  # (what deploy records)
    old = {k: v for k, v in json.loads(record).items() if k != "features"}
    client.put_object(Bucket=emu.bucket, Key=key, Body=json.dumps(old).encode())
    try:
        auto = backend_for(emu, dispatch="auto")  # (a new backend: no cached record)
        job = foreach(x=range(30)).chunk_size(1).submit(noisy, backend=auto, progress=False)
        assert job.result(timeout=120) == [x * x for x in range(30)]
        assert job.stats.dispatch == "client"
        assert job.stats.client_s3_requests.get("invoke") is None
        remote = backend_for(emu, dispatch="remote")
        loop = foreach(x=range(30)).chunk_size(1)
        with pytest.raises(dolambda.ConfigError, match="dolambda deploy") as raised:
            loop.submit(noisy, backend=remote, progress=False).result(timeout=60)
        assert repr(emu.function_name) in str(raised.value)
        assert "dispatch='client'" in str(raised.value)
    finally:
        client.put_object(Bucket=emu.bucket, Key=key, Body=record)


@pytest.mark.parametrize("trigger", ["s3", "invoke"])
def test_a_tree_of_dispatchers_queues_every_task_exactly_once(
    emu: Emulator, trigger: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most 2 tasks a dispatcher: 100 tasks need 50 shares, more than one dispatcher's
    32 children, so the tree has 3 levels: the root splits its range into 25 of 4 tasks
    (32 would take 4 each), invokes 24 children and splits the first itself, as each
    child does, into 2 of 2: it keeps one and invokes a dispatcher for the other. 50
    dispatchers, one a share. Each task's event reaches the function exactly once, and
    (keep=True) the queue holds each task once."""
    monkeypatch.setattr(_dispatch, "MAX_SPAN", 2)
    n = 100
    dispatchers = tree_size(DispatchRange("b", "k", "j", 0, n, 2))
    assert dispatchers == 50
    settled(emu)
    before = emu.stats
    # (no straggler backups: a backup is one more event, the client's own)
    backend = backend_for(emu, trigger=trigger, keep=True, backups=False)
    job = foreach(x=range(n)).chunk_size(1).submit(noisy, backend=backend, progress=False)
    assert job.result(timeout=300) == [x * x for x in range(n)]
    settled(emu)
    after = emu.stats
    assert job.stats.dispatchers == dispatchers and job.stats.retries == 0
    assert after.events - before.events == n + dispatchers  # every task once, nothing resent
    assert after.errors == before.errors
    queued = keys_under(emu, _keys.queue_dir(emu.prefix, job.id))
    if trigger == "s3":
        assert sorted(queued) == [_keys.task_key(emu.prefix, job.id, t) for t in range(n)]
    else:
        assert queued == []  # (small tasks travel inline in their Invoke)
    admin = s3(emu)
    for key in job_keys(emu, job.id):
        admin.delete_object(Bucket=emu.bucket, Key=key)


def test_a_dispatch_plan_signed_with_another_key_is_refused(emu: Emulator) -> None:
    """A dispatch event whose plan is not signed with the function's key queues nothing;
    the same plan signed with its key queues its tasks (the control)."""
    job_id = f"forged-{uuid.uuid4().hex[:8]}"
    lam = boto3.client("lambda", endpoint_url=emu.endpoint_url, region_name=emu.region)
    key = _keys.dispatch_plan_key(emu.prefix, job_id)
    tasks = tuple(f"not a task {t}".encode() for t in range(3))
    plan = DispatchPlan(job_id=job_id, trigger="s3", task_ids=(0, 1, 2), tasks=tasks)
    event = dispatch_event(DispatchRange(emu.bucket, key, job_id, 0, 3, 100))

    def dispatch_with(signing_key: bytes) -> Any:
        sealed = codec.seal_model(plan, key=signing_key, context=codec.dispatch_context(job_id))
        s3(emu).put_object(Bucket=emu.bucket, Key=key, Body=sealed)
        answer = lam.invoke(
            FunctionName=emu.function_name,
            InvocationType="RequestResponse",
            Payload=json.dumps(event),
        )
        assert "FunctionError" not in answer
        return json.loads(answer["Payload"].read())["outcomes"]

    assert dispatch_with(b"another key, not the function's") == {"refused": 1}
    assert keys_under(emu, _keys.queue_dir(emu.prefix, job_id)) == []
    # (the tasks are not real ones: their workers write signature failures)
    assert dispatch_with(codec.signing_key_bytes(emu.signing_key)) == {"queued": 3}
    assert len(keys_under(emu, _keys.queue_dir(emu.prefix, job_id))) == 3
    settled(emu)
    admin = s3(emu)
    for k in job_keys(emu, job_id):
        admin.delete_object(Bucket=emu.bucket, Key=k)


@pytest.mark.parametrize("trigger", ["s3", "invoke"])
def test_attach_to_a_remotely_dispatched_job(emu: Emulator, tmp_path: Path, trigger: str) -> None:
    script = tmp_path / "client.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import time
            from dolambda import LambdaBackend, foreach

            def slow(x):
                time.sleep(0.1)
                return x * 3

            backend = LambdaBackend(bucket={emu.bucket!r}, region={emu.region!r},
                endpoint_url={emu.endpoint_url!r}, signing_key={emu.signing_key!r},
                function_name={emu.function_name!r}, prefix={emu.prefix!r},
                task_timeout={TIMEOUT}, trigger={trigger!r}, dispatch="remote")
            job = foreach(x=range(24)).chunk_size(1).combine(sum).submit(slow, backend=backend,
                progress=False)
            print(job.id, flush=True)
            while job.progress.done < 2:
                time.sleep(0.01)
            print("gathering", job.stats.dispatch, flush=True)
            time.sleep(60)
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        job_id = proc.stdout.readline().strip()
        assert proc.stdout.readline().strip() == "gathering remote"
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    # (no straggler backups: with trigger="invoke" a backup's losing copy, inline in its
    # Invoke, may write its result after the cleanup, whoever dispatched the job)
    job = dolambda.Job.attach(job_id, backend_for(emu, trigger=trigger, backups=False))
    assert job.result(timeout=120) == 3 * sum(range(24))
    settled(emu)
    assert job_keys(emu, job_id) == []


# --- through a wrapper handler: a slow dispatcher, a dispatcher that dies ----------------

WRAPPER = """
import os
import signal
import time

import dolambda._aws.dispatcher as dispatcher
import handler.lambda_function as real

MODE = {mode!r}
_queue_one = dispatcher._queue_one


def slow_queue_one(*args, **kwargs):
    time.sleep(0.2)  # (a dispatcher far from its bucket: 32 in flight, ~160 a second)
    return _queue_one(*args, **kwargs)


if MODE == "slow":
    dispatcher._queue_one = slow_queue_one


def lambda_handler(event, context):
    if MODE == "die" and isinstance(event, dict) and "dispatch" in event:
        os.kill(os.getpid(), signal.SIGKILL)
    return real.lambda_handler(event, context)
"""


def wrapped_emulator(moto_url: str, tmp_path: Path, mode: str, timeout: float) -> Emulator:
    root = tmp_path / "task-root"
    root.mkdir()
    (root / "wrapper.py").write_text(WRAPPER.format(mode=mode))
    name = f"rdw-{uuid.uuid4().hex[:10]}"
    return Emulator(
        endpoint_url=moto_url,
        bucket=name,
        function_name=name,
        workers=2,
        timeout=timeout,
        handler="wrapper.lambda_handler",
        task_root=str(root),
    )


def test_cancel_stops_a_remote_dispatch(moto_url: str, tmp_path: Path) -> None:
    """One slow dispatcher (one of the two slots) queues 1,000 tasks while the other slot
    runs them; the job is cancelled once a few results are in. The dispatcher sees the
    cancel marker and stops (far fewer tasks queued than the job has), and a task it
    queued after the client deleted the queue is skipped by its worker (it carries the
    dispatcher's mark): no result is written after the cancel but the one running then."""
    n = 1000
    with wrapped_emulator(moto_url, tmp_path, "slow", timeout=30.0) as emu:
        backend = backend_for(emu, task_timeout=30.0)
        job = foreach(x=range(n)).chunk_size(1).submit(takes_20ms, backend=backend, progress=False)
        wait_for(lambda: job.progress.done >= 3, 120, "the first results")
        job.cancel()
        with pytest.raises(dolambda.JobCancelled):
            job.result(timeout=60)
        settled(emu)
        stats = emu.stats
        queued = stats.events - 1  # (the dispatcher's own event)
        assert 3 <= queued <= n - 200, queued
        # what was running at the cancel (one slot runs tasks) may still write its result
        assert len(keys_under(emu, _keys.results_dir(emu.prefix, job.id))) <= 1
        assert stats.errors == 0


def test_a_dispatcher_that_dies_leaves_the_client_to_send_the_tasks(
    moto_url: str, tmp_path: Path
) -> None:
    """The dispatcher is killed (SIGKILL) on its event; Lambda's retries are off, so no task
    is queued: the client's lost-task timer sends each task itself and the job completes."""
    n = 12
    with wrapped_emulator(moto_url, tmp_path, "die", timeout=3.0) as emu:
        backend = backend_for(emu, task_timeout=3.0)
        job = foreach(x=range(n)).chunk_size(1).submit(noisy, backend=backend, progress=False)
        assert job.result(timeout=120) == [x * x for x in range(n)]
        assert job.stats.dispatch == "remote"
        assert job.stats.retries == n  # every task was sent again, by the client
        assert emu.stats.crashed >= 1


@pytest.mark.parametrize(
    "trigger,grant", [("s3", "DispatchTasks"), ("invoke", "InvokeItself")], ids=["s3", "invoke"]
)
def test_tasks_a_dispatcher_cannot_queue_are_reported_and_sent_by_the_client(
    emu: Emulator, caplog: pytest.LogCaptureFixture, trigger: str, grant: str
) -> None:
    """A role without the grant remote dispatch needs (edited by hand, or deployed by an
    older dolambda): every PUT under queue/ (trigger="s3") or Invoke (trigger="invoke")
    of the dispatcher is denied. It reports each task as "undispatched" and the client
    sends them itself at once: not retries, and not after the lost-task deadline (the
    timer's resends would count as retries)."""
    n = 10
    backend = backend_for(emu, trigger=trigger)
    with policy_without(emu, grant):
        job = foreach(x=range(n)).chunk_size(1).submit(noisy, backend=backend, progress=False)
        assert job.result(timeout=120) == [x * x for x in range(n)]
    assert job.stats.dispatch == "remote"
    assert job.stats.undispatched == n
    assert job.stats.retries == 0
    assert "could not queue" in job.stats.summary()
    warned = [r.getMessage() for r in caplog.records if "could not queue" in r.getMessage()]
    assert len(warned) == 1 and "AccessDenied" in warned[0], warned
    settled(emu)
    assert job_keys(emu, job.id) == []
