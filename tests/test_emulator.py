"""The local Lambda emulator: real HTTP to moto, the real handler in worker processes.

Tasks are written the way the Lambda backend writes them (sealed manifest, body
and task objects from a SealedJob) and results are read back and decoded, so
these tests do not depend on the client backend.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import boto3
import pytest

from dolambda._backends.base import JobContext, TaskResult
from dolambda._backends.sealing import SealedJob, decode_outcome
from dolambda._core.tasks import PlannedTask
from dolambda._wire import codec
from dolambda._wire import keys as _keys
from dolambda._wire.codec import outcome_context
from dolambda._wire.models import TaskOutcome
from dolambda.emulator import Emulator
from tests.bodies.common import plus_one
from tests.moto_server import MotoServer

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------- helpers


def make_job(
    emu: Emulator, body: Callable[..., Any], n_tasks: int, job_id: str = "job-1"
) -> tuple[SealedJob, list[PlannedTask]]:
    job = SealedJob(
        JobContext(
            job_id=job_id,
            body=body,
            seed=None,
            variables=("x",),
            chunk_size=1,
            errorhandling="stop",
        ),
        key=bytes.fromhex(emu.signing_key),
        trigger=emu.trigger,
        task_timeout=emu.timeout,
    )
    tasks = [PlannedTask(task_id=i, first=i, rows=[(i,)], names=("x",)) for i in range(n_tasks)]
    return job, tasks


def s3_client(emu: Emulator) -> Any:
    return boto3.client("s3", endpoint_url=emu.endpoint_url, region_name=emu.region)


def put_job(s3: Any, emu: Emulator, job: SealedJob) -> None:
    s3.put_object(
        Bucket=emu.bucket,
        Key=_keys.manifest_key(emu.prefix, job.job_id),
        Body=job.sealed_manifest,
    )
    s3.put_object(Bucket=emu.bucket, Key=job.body_key(emu.prefix), Body=job.sealed_body)


def put_tasks(s3: Any, emu: Emulator, job: SealedJob, tasks: list[PlannedTask]) -> None:
    for task in tasks:
        s3.put_object(
            Bucket=emu.bucket,
            Key=_keys.task_key(emu.prefix, job.job_id, task.task_id),
            Body=job.sealed_task(task),
        )


def result_ids(s3: Any, emu: Emulator, job: SealedJob) -> set[int]:
    found: set[int] = set()
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=emu.bucket, Prefix=_keys.results_dir(emu.prefix, job.job_id)
    )
    for page in pages:
        for obj in page.get("Contents", []):
            task = _keys.parse_result_key(emu.prefix, job.job_id, obj["Key"])
            if task is not None:
                found.add(task)
    return found


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def wait_results(
    s3: Any, emu: Emulator, job: SealedJob, task_ids: list[int], timeout: float = 30
) -> dict[int, TaskResult]:
    wait_for(lambda: set(task_ids) <= result_ids(s3, emu, job), timeout, f"results {task_ids}")
    out: dict[int, TaskResult] = {}
    for task_id in task_ids:
        blob = s3.get_object(
            Bucket=emu.bucket, Key=_keys.result_key(emu.prefix, job.job_id, task_id)
        )["Body"].read()
        outcome = codec.unseal_model(
            TaskOutcome,
            blob,
            key=bytes.fromhex(emu.signing_key),
            context=outcome_context(job.job_id, task_id),
        )
        out[task_id] = decode_outcome(outcome)
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def emulator(request: pytest.FixtureRequest, moto_url: str) -> Iterator[Emulator]:
    name = f"emu-{uuid.uuid4().hex[:10]}"
    kwargs = {"endpoint_url": moto_url, "bucket": name, "function_name": name}
    emu = Emulator(**{**kwargs, **getattr(request, "param", {})})
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def emulator_args(**kwargs: Any) -> pytest.MarkDecorator:
    """Emulator(...) keyword arguments for the ``emulator`` fixture of one test."""
    return pytest.mark.parametrize("emulator", [kwargs], indirect=True, ids=[""])


# --------------------------------------------------------------------------- tests


@emulator_args(workers=2, timeout=30)
def test_s3_trigger_runs_the_real_handler(emulator: Emulator) -> None:
    def square(x: int) -> int:
        return x * x

    s3 = s3_client(emulator)
    job, tasks = make_job(emulator, square, 3)
    put_job(s3, emulator, job)
    put_tasks(s3, emulator, job, tasks)
    results = wait_results(s3, emulator, job, [0, 1, 2])
    for task_id, result in results.items():
        assert result.failure is None
        assert result.values == [task_id * task_id]
        assert result.stats is not None
        assert result.stats.request_id  # the context's aws_request_id reached the worker
        assert result.stats.memory_limit_mb == emulator.memory_mb
    assert emulator.wait_idle(10)
    stats = emulator.stats
    assert stats.invocations == 3 and stats.completed == 3 and stats.errors == 0
    assert 1 <= stats.cold_starts <= 2


@emulator_args(workers=1, timeout=30, trigger="invoke")
def test_invoke_trigger(emulator: Emulator) -> None:
    def double(x: int) -> int:
        return 2 * x

    s3 = s3_client(emulator)
    lam = boto3.client("lambda", endpoint_url=emulator.endpoint_url, region_name=emulator.region)
    job, tasks = make_job(emulator, double, 3)
    put_job(s3, emulator, job)
    # no bucket notification with trigger="invoke": a task object alone runs nothing
    config = s3.get_bucket_notification_configuration(Bucket=emulator.bucket)
    assert not config.get("LambdaFunctionConfigurations")
    # task 0: inline in the payload (no task object at all)
    key0 = _keys.task_key(emulator.prefix, job.job_id, 0)
    import base64

    payload = {"bucket": emulator.bucket, "key": key0}
    payload["task"] = base64.b64encode(job.sealed_task(tasks[0])).decode()
    response = lam.invoke(
        FunctionName=emulator.function_name, InvocationType="Event", Payload=json.dumps(payload)
    )
    assert response["StatusCode"] == 202
    # task 1: the task object in S3, only its key in the payload
    put_tasks(s3, emulator, job, [tasks[1]])
    key1 = _keys.task_key(emulator.prefix, job.job_id, 1)
    lam.invoke(
        FunctionName=emulator.function_name,
        InvocationType="Event",
        Payload=json.dumps({"bucket": emulator.bucket, "key": key1}),
    )
    results = wait_results(s3, emulator, job, [0, 1])
    assert results[0].values == [0]
    assert results[1].values == [2]
    # a synchronous invoke gets the handler's return value
    put_tasks(s3, emulator, job, [tasks[2]])
    key2 = _keys.task_key(emulator.prefix, job.job_id, 2)
    response = lam.invoke(
        FunctionName=emulator.function_name,
        Payload=json.dumps({"bucket": emulator.bucket, "key": key2}),
    )
    assert response["StatusCode"] == 200 and "FunctionError" not in response
    assert json.loads(response["Payload"].read()) == {"outcomes": {"done": 1}}
    assert wait_results(s3, emulator, job, [2])[2].values == [4]
    assert emulator.stats.invocations == 3


@emulator_args(workers=1, timeout=30, prefix="my jobs/ünï cødé+plus")
def test_event_records_have_the_aws_shape(emulator: Emulator) -> None:
    def ident(x: int) -> int:
        return x

    s3 = s3_client(emulator)
    job, tasks = make_job(emulator, ident, 1)
    put_job(s3, emulator, job)
    put_tasks(s3, emulator, job, tasks)
    results = wait_results(s3, emulator, job, [0])
    assert results[0].failure is None and results[0].values[0] == 0
    assert emulator.wait_idle(10)
    [(source, event)] = list(emulator.recent_events)
    assert source == "s3"
    [record] = event["Records"]
    assert set(record) == {
        "eventVersion",
        "eventSource",
        "awsRegion",
        "eventTime",
        "eventName",
        "userIdentity",
        "requestParameters",
        "responseElements",
        "s3",
    }
    assert record["eventVersion"] == "2.1"
    assert record["eventSource"] == "aws:s3"
    assert record["eventName"] == "ObjectCreated:Put"
    assert record["awsRegion"] == emulator.region
    assert time.strptime(record["eventTime"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert set(record["responseElements"]) == {"x-amz-request-id", "x-amz-id-2"}
    s3part = record["s3"]
    assert s3part["s3SchemaVersion"] == "1.0"
    assert s3part["configurationId"]
    assert s3part["bucket"]["name"] == emulator.bucket
    assert s3part["bucket"]["arn"] == f"arn:aws:s3:::{emulator.bucket}"
    assert "principalId" in s3part["bucket"]["ownerIdentity"]
    obj = s3part["object"]
    task_key = _keys.task_key(emulator.prefix, job.job_id, 0)
    assert obj["key"] == quote_plus(task_key)
    assert " " not in obj["key"] and "ü" not in obj["key"]
    assert unquote_plus(obj["key"]) == task_key
    head = s3.head_object(Bucket=emulator.bucket, Key=task_key)
    assert obj["size"] == head["ContentLength"]
    assert obj["eTag"] == head["ETag"].strip('"')
    assert len(obj["sequencer"]) >= 16 and int(obj["sequencer"], 16) > 0


@emulator_args(workers=1, timeout=30)
def test_only_matching_objects_trigger(emulator: Emulator) -> None:
    def ident(x: int) -> int:
        return x

    s3 = s3_client(emulator)
    job, tasks = make_job(emulator, ident, 1)
    put_job(s3, emulator, job)  # jobs/... objects: outside the queue prefix
    p = emulator.prefix
    for key in (
        f"{p}/queue/{job.job_id}/0000009.txt",  # wrong suffix
        f"{p}/results/{job.job_id}/0000009.task",  # wrong prefix
        f"other/queue/{job.job_id}/0000009.task",
        f"{p}/queuex/{job.job_id}/0000009.task",
    ):
        s3.put_object(Bucket=emulator.bucket, Key=key, Body=b"not a task")
    # S3 notifies synchronously in order, so once this task ran every earlier event was seen
    put_tasks(s3, emulator, job, tasks)
    wait_results(s3, emulator, job, [0])
    assert emulator.wait_idle(10)
    assert emulator.stats.events == 1
    assert emulator.stats.invocations == 1


@emulator_args(workers=2, timeout=30, duplicate_events=True)
def test_duplicate_events_give_one_result(emulator: Emulator) -> None:
    def ident(x: int) -> int:
        return x

    s3 = s3_client(emulator)
    job, tasks = make_job(emulator, ident, 2)
    put_job(s3, emulator, job)
    put_tasks(s3, emulator, job, tasks)
    results = wait_results(s3, emulator, job, [0, 1])
    wait_for(lambda: emulator.stats.invocations == 4, 20, "every duplicate to run")
    assert emulator.wait_idle(20)
    stats = emulator.stats
    assert stats.duplicated == 2 and stats.events == 2 and stats.completed == 4
    assert result_ids(s3, emulator, job) == {0, 1}  # the conditional put kept one each
    assert all(r.values[0] == i for i, r in results.items())


@emulator_args(workers=2, timeout=30, drop_fraction=0.5, seed=3)
def test_drop_fraction_drops_events(emulator: Emulator) -> None:
    def ident(x: int) -> int:
        return x

    s3 = s3_client(emulator)
    job, tasks = make_job(emulator, ident, 10)
    put_job(s3, emulator, job)
    put_tasks(s3, emulator, job, tasks)
    wait_for(lambda: emulator.stats.events == 10, 20, "ten events")
    assert emulator.wait_idle(20)
    stats = emulator.stats
    assert 0 < stats.dropped < 10
    assert stats.invocations == 10 - stats.dropped
    assert len(result_ids(s3, emulator, job)) == 10 - stats.dropped


@emulator_args(workers=1, timeout=3.0)
def test_a_task_past_the_timeout_is_reported_by_the_worker_which_stays_warm(
    emulator: Emulator,
) -> None:
    def slow_unless_one(x: int) -> int:
        import time as t

        if x == 0:
            t.sleep(60)
        return x

    s3 = s3_client(emulator)
    job, tasks = make_job(emulator, slow_unless_one, 2)
    put_job(s3, emulator, job)
    put_tasks(s3, emulator, job, tasks[:1])
    wait_for(lambda: emulator.stats.invocations == 1, 20, "the slow task to start")
    [first_pid] = emulator.worker_pids()
    put_tasks(s3, emulator, job, tasks[1:])
    results = wait_results(s3, emulator, job, [0, 1])
    assert results[1].values[0] == 1
    # the worker's watchdog stopped its child before Lambda's deadline and wrote the
    # timeout itself: the environment lived on, warm, for the next task
    failure = results[0].failure
    assert failure is not None and failure.kind == "timeout"
    assert "ran past the function's timeout: iteration 0" in failure.message
    assert results[1].stats is not None and not results[1].stats.cold_start
    assert emulator.wait_idle(10)
    stats = emulator.stats
    assert stats.timeouts == 0 and stats.cold_starts == 1
    assert emulator.worker_pids() == [first_pid] and alive(first_pid)


@emulator_args(workers=2, timeout=30)
def test_concurrency_never_exceeds_workers(emulator: Emulator) -> None:
    def nap(x: int) -> int:
        import time as t

        t.sleep(0.25)
        return x

    s3 = s3_client(emulator)
    job, tasks = make_job(emulator, nap, 5)
    put_job(s3, emulator, job)
    put_tasks(s3, emulator, job, tasks)
    results = wait_results(s3, emulator, job, list(range(5)))
    spans = []
    for r in results.values():
        assert r.stats is not None
        spans.append((r.stats.started_at, r.stats.finished_at))
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak <= 2
    assert emulator.stats.max_concurrency == 2
    assert len({r.stats.worker for r in results.values() if r.stats}) <= 2


@emulator_args(workers=1, timeout=30)
def test_warm_reuse(emulator: Emulator) -> None:
    def ident(x: int) -> int:
        return x

    s3 = s3_client(emulator)
    job, tasks = make_job(emulator, ident, 3)
    put_job(s3, emulator, job)
    put_tasks(s3, emulator, job, tasks)
    results = wait_results(s3, emulator, job, [0, 1, 2])
    colds = {i: r.stats.cold_start for i, r in results.items() if r.stats}
    assert sorted(colds.values()) == [False, False, True]
    assert len({r.stats.worker for r in results.values() if r.stats}) == 1
    assert emulator.wait_idle(10)
    assert emulator.stats.cold_starts == 1 and emulator.stats.invocations == 3


@emulator_args(workers=1, timeout=30, memory_mb=200)
def test_memory_limit_kills_the_worker(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    def hog(x: int) -> int:
        import time as t

        if x == 0:
            blocks = []
            for _ in range(200):  # up to 2 GB, touched, 10 MB at a time
                blocks.append(bytearray(b"\x01" * (10 * 2**20)))
                t.sleep(0.005)
            t.sleep(30)
        return x

    caplog.set_level(logging.WARNING, logger="dolambda.emulator")
    s3 = s3_client(emulator)
    job, tasks = make_job(emulator, hog, 2)
    put_job(s3, emulator, job)
    put_tasks(s3, emulator, job, tasks)
    results = wait_results(s3, emulator, job, [0, 1])
    assert results[1].values[0] == 1
    # the memory watch killed the largest process, the worker's child (as Linux's OOM
    # killer does in Lambda's cgroup), and the worker wrote the error naming the limit
    failure = results[0].failure
    assert failure is not None and failure.kind == "memory"
    assert "200 MB" in failure.message
    assert emulator.wait_idle(10)
    assert emulator.stats.killed == 1 and emulator.stats.crashed == 0
    assert any("out of memory: killed process" in r.getMessage() for r in caplog.records)


def test_stop_leaves_no_processes_behind() -> None:
    def ident(x: int) -> int:
        return x

    emu = Emulator(workers=2, timeout=30)
    emu.start()
    try:
        assert emu._moto is not None
        moto_pid = emu._moto.pid
        s3 = s3_client(emu)
        job, tasks = make_job(emu, ident, 2)
        put_job(s3, emu, job)
        put_tasks(s3, emu, job, tasks)
        wait_results(s3, emu, job, [0, 1])
        pids = [moto_pid, *emu.worker_pids()]
        assert len(pids) >= 2 and all(alive(p) for p in pids)
    finally:
        emu.stop()
    assert not any(alive(p) for p in pids)
    assert emu.worker_pids() == []
    emu.stop()  # idempotent


def test_poll_discovery_on_a_plain_s3_server() -> None:
    def ident(x: int) -> int:
        return x + 100

    with (
        MotoServer() as url,  # plain moto: no notifications reach a function
        Emulator(workers=1, timeout=30, endpoint_url=url, poll_interval=0.05) as emu,
    ):
        assert emu.discovery == "poll"
        s3 = s3_client(emu)
        job, tasks = make_job(emu, ident, 2)
        put_job(s3, emu, job)
        put_tasks(s3, emu, job, tasks)
        results = wait_results(s3, emu, job, [0, 1])
        assert [results[i].values[0] for i in (0, 1)] == [100, 101]
        assert emu.wait_idle(10)
        assert emu.stats.invocations == 2  # each task seen once
        [record] = emu.recent_events[0][1]["Records"]
        assert record["s3"]["object"]["key"] == quote_plus(
            _keys.task_key(emu.prefix, job.job_id, 0)
        )


def test_lambda_backend_runs_through_a_polling_emulator_on_plain_s3() -> None:
    """A plain S3 server has no notifications: the polling emulator says in the bucket
    that it runs the function, and the backend's setup check accepts that (for its
    function only); the marker goes when the emulator stops."""
    from dolambda import LambdaBackend, foreach
    from dolambda._errors import ConfigError

    with MotoServer() as url:
        with Emulator(workers=2, timeout=30, endpoint_url=url, poll_interval=0.05) as emu:
            assert emu.discovery == "poll"
            backend = LambdaBackend(**emu.backend_settings())
            loop = foreach(x=range(20)).chunk_size(5)
            assert loop.do_lambda(plus_one, backend=backend, progress=False) == list(range(1, 21))
            other = LambdaBackend(**{**emu.backend_settings(), "function_name": "someone-else"})
            with pytest.raises(ConfigError, match="does not notify Lambda function"):
                loop.do_lambda(plus_one, backend=other, progress=False)
            s3 = s3_client(emu)
            marker = _keys.emulator_key(emu.prefix)
            assert s3.get_object(Bucket=emu.bucket, Key=marker)["ContentLength"] > 0
        with pytest.raises(s3.exceptions.NoSuchKey):
            s3.get_object(Bucket=emu.bucket, Key=marker)


def test_lambda_backend_end_to_end() -> None:
    pytest.importorskip("dolambda._backends.lambda_")
    import dolambda

    with Emulator(workers=2, timeout=30) as emu:
        total = dolambda.foreach(x=range(20)).combine(sum).run(lambda x: x * x, backend=emu.backend)
        assert total == sum(x * x for x in range(20))
        assert emu.stats.invocations >= 1


def test_invalid_arguments() -> None:
    from dolambda._errors import InvalidArgument

    for kwargs in (
        {"workers": 0},
        {"trigger": "sqs"},
        {"discovery": "magic"},
        {"drop_fraction": 1.5},
        {"signing_key": b"short"},
        {"requirements": [3]},
        {"requirements": [""]},
    ):
        with pytest.raises(InvalidArgument):
            Emulator(**kwargs)
    # one name or several, as deploy's requirements: sorted, each once
    assert Emulator(requirements="pandas").config.requirements == ("pandas",)
    assert Emulator(requirements=["b", "a", "b"]).config.requirements == ("a", "b")
    assert os.environ.get("DOLAMBDA_SIGNING_KEY") is None


CONTEXT_HANDLER = """
import os
import time

STARTED = time.time()
calls = 0


def lambda_handler(event, context):
    global calls
    calls += 1
    if event.get("sleep"):
        time.sleep(event["sleep"])
    return {
        "event": event,
        "calls": calls,
        "pid": os.getpid(),
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "invoked_function_arn": context.invoked_function_arn,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "env": {k: os.environ.get(k) for k in (
            "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION", "DOLAMBDA_SIGNING_KEY", "DOLAMBDA_PREFIX", "DOLAMBDA_BUCKET",
            "AWS_LAMBDA_FUNCTION_NAME", "LAMBDA_TASK_ROOT",
        )},
    }
"""


def test_context_environment_and_warm_globals(moto_url: str, tmp_path: Any) -> None:
    (tmp_path / "lambda_function.py").write_text(CONTEXT_HANDLER)
    name = f"emu-{uuid.uuid4().hex[:10]}"
    with Emulator(
        workers=1,
        timeout=20,
        memory_mb=512,
        endpoint_url=moto_url,
        bucket=name,
        function_name=name,
        trigger="invoke",
        task_root=tmp_path,
    ) as emu:
        lam = boto3.client("lambda", endpoint_url=emu.endpoint_url, region_name=emu.region)

        def call(event: dict[str, Any]) -> dict[str, Any]:
            response = lam.invoke(FunctionName=name, Payload=json.dumps(event))
            assert "FunctionError" not in response
            out: dict[str, Any] = json.loads(response["Payload"].read())
            return out

        first, second = call({"n": 1}), call({"n": 2})
        assert first["event"] == {"n": 1} and second["event"] == {"n": 2}
        assert (first["calls"], second["calls"]) == (1, 2)  # module globals persist
        assert first["pid"] == second["pid"]
        assert first["request_id"] != second["request_id"]
        assert first["function_name"] == name and first["function_version"] == "$LATEST"
        assert first["memory_limit_in_mb"] == "512"
        assert first["invoked_function_arn"] == emu.function_arn
        assert first["invoked_function_arn"].endswith(f":function:{name}")
        assert first["log_group_name"] == f"/aws/lambda/{name}"
        assert "[$LATEST]" in first["log_stream_name"]
        assert 15_000 < first["remaining_ms"] <= 20_000
        env = first["env"]
        assert env["AWS_ENDPOINT_URL_S3"] == moto_url
        assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
        assert env["AWS_DEFAULT_REGION"] == emu.region
        assert env["DOLAMBDA_SIGNING_KEY"] == emu.signing_key
        assert env["DOLAMBDA_PREFIX"] == emu.prefix and env["DOLAMBDA_BUCKET"] == name
        assert env["LAMBDA_TASK_ROOT"] == str(tmp_path)
        stats = emu.stats
        assert stats.cold_starts == 1 and stats.invocations == 2


def test_an_existing_notification_configuration_is_used(moto_url: str) -> None:
    """A bucket set up by ``dolambda deploy`` is read, not rewritten: the emulator's setup
    is deploy's own, so it finds deploy's notification right and leaves it (and the
    bucket's other notifications) alone."""
    from dolambda._config import load_config
    from dolambda.deploy import DeploySettings, deploy

    def ident(x: int) -> int:
        return x

    name = f"emu-{uuid.uuid4().hex[:10]}"
    settings = DeploySettings(
        bucket=name, function_name=name, region="us-east-1", endpoint_url=moto_url, timeout=30
    )
    deploy(settings, dependencies=False, echo=lambda _: None)
    s3 = boto3.session.Session(region_name="us-east-1").client("s3", endpoint_url=moto_url)
    before = s3.get_bucket_notification_configuration(Bucket=name)
    [deployed] = before["LambdaFunctionConfigurations"]
    assert deployed["Id"] == settings.notification_id
    config = load_config()
    assert config is not None
    with Emulator(
        workers=1,
        timeout=30,
        endpoint_url=moto_url,
        bucket=name,
        function_name=name,
        signing_key=config.signing_key,
    ) as emu:
        after = s3.get_bucket_notification_configuration(Bucket=name)
        assert after["LambdaFunctionConfigurations"] == [deployed]
        job, tasks = make_job(emu, ident, 1)
        put_job(s3, emu, job)
        put_tasks(s3, emu, job, tasks)
        assert wait_results(s3, emu, job, [0])[0].values[0] == 0
        [record] = emu.recent_events[0][1]["Records"]
        assert record["s3"]["configurationId"] == settings.notification_id


@emulator_args(workers=1, timeout=30, event_delay=0.6)
def test_event_delay(emulator: Emulator) -> None:
    def ident(x: int) -> int:
        return x

    s3 = s3_client(emulator)
    job, tasks = make_job(emulator, ident, 1)
    put_job(s3, emulator, job)
    put_started = time.time()
    put_tasks(s3, emulator, job, tasks)
    result = wait_results(s3, emulator, job, [0])[0]
    assert result.stats is not None
    assert result.stats.started_at - put_started >= 0.6


@emulator_args(workers=1, timeout=30, trigger="invoke")
def test_invoke_api_errors(emulator: Emulator) -> None:
    from botocore.exceptions import ClientError

    lam = boto3.client("lambda", endpoint_url=emulator.endpoint_url, region_name=emulator.region)
    with pytest.raises(ClientError) as info:
        lam.invoke(FunctionName=emulator.function_name, InvocationType="Event", Payload=b"{nope")
    assert info.value.response["Error"]["Code"] == "InvalidRequestContentException"
    with pytest.raises(ClientError) as info:
        lam.invoke(FunctionName="no-such-function", InvocationType="Event", Payload=b"{}")
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"
    # a handler that gets an event it does not understand returns normally
    response = lam.invoke(FunctionName=emulator.function_name, Payload=b'{"hello": 1}')
    assert json.loads(response["Payload"].read()) == {"outcomes": {}}
    assert emulator.stats.events == 1


# --------------------------------------------------------------------------- the isolated runtime

PROBE_HANDLER = """
import importlib, os, sys

def lambda_handler(event, context):
    found = {}
    for name in event["modules"]:
        try:
            importlib.import_module(name)
            found[name] = "ok"
        except ImportError as exc:
            found[name] = type(exc).__name__
    import boto3, dill, handler.lambda_function
    return {
        "found": found,
        "cwd": os.getcwd(),
        "path": sys.path,
        "boto3": boto3.__file__,
        "dill": dill.__file__,
        "handler": handler.lambda_function.__file__,
        "env": dict(os.environ),
    }
"""


def module_level_square(x: int) -> int:
    """A body dill pickles by reference (``tests.test_emulator.module_level_square``)."""
    return x * x


def isolated_emulator(moto_url: str, **kwargs: Any) -> Emulator:
    name = f"iso-{uuid.uuid4().hex[:10]}"
    settings: dict[str, Any] = {
        "endpoint_url": moto_url,
        "bucket": name,
        "function_name": name,
        "workers": 1,
        "timeout": 20,
    }
    return Emulator(**{**settings, **kwargs})


def test_isolated_workers_run_the_package_not_the_clients_environment(
    moto_url: str, tmp_path: Any
) -> None:
    """Through the emulator (Invoke): the client's modules (pytest, the tests, moto) are not
    importable; boto3 is the runtime directory's; dill and the handler are the package's;
    the working directory is the task root; the function's settings are in the environment."""
    (tmp_path / "lambda_function.py").write_text(PROBE_HANDLER)
    with isolated_emulator(moto_url, trigger="invoke", task_root=tmp_path) as emu:
        assert emu._runtime is not None and emu._runtime.package is not None
        package, runtime = emu._runtime.package, emu._runtime.runtime_dir
        lam = boto3.client("lambda", endpoint_url=emu.endpoint_url, region_name=emu.region)
        modules = ["pytest", "tests.test_emulator", "moto", "aioboto3", "numpy", "pydantic"]
        response = lam.invoke(
            FunctionName=emu.function_name, Payload=json.dumps({"modules": modules})
        )
        assert "FunctionError" not in response
        facts = json.loads(response["Payload"].read())
    assert facts["found"] == {
        "pytest": "ModuleNotFoundError",
        "tests.test_emulator": "ModuleNotFoundError",
        "moto": "ModuleNotFoundError",
        "aioboto3": "ModuleNotFoundError",  # the client's, never the worker's
        "numpy": "ok",
        "pydantic": "ok",
    }
    assert facts["cwd"] == str(tmp_path)
    # the package bundles boto3 (as deploy does) and, a layer here, precedes the runtime's
    assert facts["boto3"].startswith(str(package)) and runtime is not None
    assert facts["dill"].startswith(str(package))
    assert facts["handler"].startswith(str(package))
    assert not any("site-packages" in entry for entry in facts["path"])
    env = facts["env"]
    assert env["LAMBDA_TASK_ROOT"] == str(tmp_path)
    assert env["DOLAMBDA_SIGNING_KEY"] == emu.signing_key and env["DOLAMBDA_BUCKET"] == emu.bucket
    assert env["AWS_ENDPOINT_URL_S3"] == moto_url
    assert "PYTEST_CURRENT_TEST" not in env  # nothing of the client's environment


def test_a_body_whose_module_imports_what_the_package_lacks_is_one_job_error(
    moto_url: str,
) -> None:
    """A body pickled by reference to a module of the client's (here this test module): the
    module travels with the job, but it imports pytest, which the function's package lacks
    (the client's environment is not the workers'): one error before dispatch naming it and
    the deploy command, whatever the errorhandling. The same body from a module that needs
    nothing more (tests.bodies) runs."""
    from dolambda import ConfigError, foreach
    from dolambda._backends.lambda_ import LambdaBackend
    from tests.bodies.common import square

    with isolated_emulator(moto_url, workers=2) as emu:
        backend = LambdaBackend(**{**emu.backend_settings(), "retries": 0})
        loop = foreach(x=range(3)).errorhandling("pass")
        with pytest.raises(ConfigError, match=r"import pytest .*dolambda deploy --requirements"):
            loop.do_lambda(module_level_square, backend=backend, progress=False)
        assert emu.stats.invocations == 0  # nothing was dispatched
        assert loop.do_lambda(square, backend=backend, progress=False) == [0, 1, 4]


def test_a_body_from_a_runtime_sys_path_module_travels_to_the_workers(
    moto_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's own module, imported from a directory added to ``sys.path`` at run time:
    the workers cannot import it by themselves (as on AWS), so it travels with the
    job and the body runs."""
    import importlib
    import sys

    from dolambda import SerializationError, foreach

    (tmp_path / "usersrc").mkdir()
    (tmp_path / "usersrc" / "mysim_iso.py").write_text("def simulate(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "usersrc"))
    importlib.invalidate_caches()
    mysim = importlib.import_module("mysim_iso")
    try:
        with isolated_emulator(moto_url) as emu:
            loop = foreach(x=range(3))
            # first, kept out: the workers cannot import it (a warm worker keeps the archives
            # of earlier jobs on sys.path, so this part must run before any job ships it)
            with pytest.raises(SerializationError, match="No module named 'mysim_iso'"):
                loop.noexport("mysim_iso").do_lambda(
                    mysim.simulate, backend=emu.backend, progress=False
                )
            assert loop.do_lambda(mysim.simulate, backend=emu.backend, progress=False) == [1, 2, 3]
    finally:
        sys.modules.pop("mysim_iso", None)


def test_a_handler_whose_import_fails_gives_lambdas_init_error(
    moto_url: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Runtime.ImportModuleError reaches the caller, naming the module, in seconds; the
    environment is replaced on the next call (which fails the same way)."""
    (tmp_path / "lambda_function.py").write_text(
        "import a_module_missing_from_the_package\n\ndef lambda_handler(event, context):\n"
        "    return 1\n"
    )
    caplog.set_level(logging.ERROR, logger="dolambda.emulator")
    with isolated_emulator(moto_url, trigger="invoke", task_root=tmp_path, timeout=60) as emu:
        lam = boto3.client("lambda", endpoint_url=emu.endpoint_url, region_name=emu.region)
        for _ in range(2):
            started = time.monotonic()
            response = lam.invoke(FunctionName=emu.function_name, Payload=b"{}")
            assert time.monotonic() - started < 30  # not the 60 s timeout: no hang
            assert response.get("FunctionError") == "Unhandled"
            error = json.loads(response["Payload"].read())
            assert error["errorType"] == "Runtime.ImportModuleError"
            assert "a_module_missing_from_the_package" in error["errorMessage"]
        assert emu.stats.errors == 2 and emu.stats.invocations == 0
        assert emu.worker_pids() == []
    assert any("Runtime.ImportModuleError" in r.getMessage() for r in caplog.records)
