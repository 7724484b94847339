"""Signed objects: tampered, swapped or foreign objects are refused before unpickling.

These tests drive the worker's S3 entry point (the code the Lambda handler runs)
against a real moto server over HTTP.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from pydantic import ValidationError

from dolambda._aws.worker import process_s3_task, task_records
from dolambda._backends.base import JobContext
from dolambda._backends.sealing import SealedJob, decode_outcome
from dolambda._core.execute import WorkerState
from dolambda._core.tasks import PlannedTask
from dolambda._errors import SignatureError, VersionMismatch
from dolambda._wire import codec
from dolambda._wire import keys as _keys
from dolambda._wire.codec import manifest_context, outcome_context, task_context
from dolambda._wire.models import TaskOutcome
from tests.moto_server import MotoServer

PREFIX = "dolambda"
BUCKET = "security-tests"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with MotoServer() as url:
        yield url


@pytest.fixture
def s3(moto_url: str) -> Iterator[Any]:
    client = boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=BUCKET)
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", ()):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


def make_job(marker: Path, key: bytes, job_id: str = "20260101T000000-aaaaaaaa") -> SealedJob:
    def body(x: int) -> int:
        marker.touch()
        return x + 1

    return SealedJob(
        JobContext(
            job_id=job_id,
            body=body,
            seed=None,
            variables=("x",),
            chunk_size=1,
            errorhandling="stop",
        ),
        key=key,
    )


def upload(s3: Any, job: SealedJob, tasks: int = 1) -> list[str]:
    s3.put_object(
        Bucket=BUCKET, Key=_keys.manifest_key(PREFIX, job.job_id), Body=job.sealed_manifest
    )
    s3.put_object(Bucket=BUCKET, Key=job.body_key(PREFIX), Body=job.sealed_body)
    keys = []
    for t in range(tasks):
        planned = PlannedTask(t, t, [(t,)], ("x",))
        key = _keys.task_key(PREFIX, job.job_id, t)
        s3.put_object(Bucket=BUCKET, Key=key, Body=job.sealed_task(planned))
        keys.append(key)
    return keys


def run(s3: Any, key: str, signing_key: bytes) -> str:
    return process_s3_task(
        s3,
        BUCKET,
        key,
        prefix=PREFIX,
        signing_key=signing_key,
        state=WorkerState(),
        log=lambda _: None,
    )


def outcome(s3: Any, job: SealedJob, task: int, key: bytes | None = None) -> TaskOutcome:
    blob = s3.get_object(Bucket=BUCKET, Key=_keys.result_key(PREFIX, job.job_id, task))[
        "Body"
    ].read()
    return codec.unseal_model(
        TaskOutcome, blob, key=key or job.key, context=outcome_context(job.job_id, task)
    )


def flip(data: bytes, at: int = -5) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


def test_untampered_task_runs(s3: Any, tmp_path: Path) -> None:
    key = os.urandom(32)
    job = make_job(tmp_path / "ran", key)
    [task] = upload(s3, job)
    assert run(s3, task, key) == "done"
    result = decode_outcome(outcome(s3, job, 0))
    assert result.values[0] == 1
    assert (tmp_path / "ran").exists()


@pytest.mark.parametrize("target", ["task", "manifest", "body"])
def test_flipped_byte_is_refused_and_nothing_runs(s3: Any, tmp_path: Path, target: str) -> None:
    key = os.urandom(32)
    job = make_job(tmp_path / "ran", key)
    [task] = upload(s3, job)
    object_key = {
        "task": task,
        "manifest": _keys.manifest_key(PREFIX, job.job_id),
        "body": job.body_key(PREFIX),
    }[target]
    data = s3.get_object(Bucket=BUCKET, Key=object_key)["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=object_key, Body=flip(data))
    assert run(s3, task, key) == "done"
    result = outcome(s3, job, 0)
    assert result.failure is not None and result.failure.kind == "signature"
    assert not (tmp_path / "ran").exists()


def test_task_carrying_its_job_runs_without_job_objects(s3: Any, tmp_path: Path) -> None:
    key = os.urandom(32)
    job = make_job(tmp_path / "ran", key)
    task = _keys.task_key(PREFIX, job.job_id, 0)
    blob = job.sealed_task(PlannedTask(0, 0, [(41,)], ("x",)), with_job=True)
    s3.put_object(Bucket=BUCKET, Key=task, Body=blob)  # no manifest.json, no body.pkl
    assert run(s3, task, key) == "done"
    result = outcome(s3, job, 0)
    assert decode_outcome(result).values == [42]
    assert result.stats.s3_requests == 2  # GET task, PUT result


def test_task_carrying_another_jobs_body_is_refused(s3: Any, tmp_path: Path) -> None:
    # signed with the right key, for the right task, but the job inside is another job's
    key = os.urandom(32)
    job_a = make_job(tmp_path / "a", key, "20260101T000000-aaaaaaaa")
    job_b = make_job(tmp_path / "b", key, "20260101T000000-bbbbbbbb")
    spec = job_b.encode_task(PlannedTask(0, 0, [(1,)], ("x",))).model_copy(
        update={"job_manifest": job_b.sealed_manifest, "job_body": job_a.sealed_body}
    )
    task = _keys.task_key(PREFIX, job_b.job_id, 0)
    s3.put_object(
        Bucket=BUCKET,
        Key=task,
        Body=codec.seal_model(spec, key=key, context=task_context(job_b.job_id, 0)),
    )
    run(s3, task, key)
    result = outcome(s3, job_b, 0)
    assert result.failure is not None and result.failure.kind == "signature"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_task_from_another_job_is_refused(s3: Any, tmp_path: Path) -> None:
    key = os.urandom(32)
    job_a = make_job(tmp_path / "a", key, "20260101T000000-aaaaaaaa")
    job_b = make_job(tmp_path / "b", key, "20260101T000000-bbbbbbbb")
    [task_a] = upload(s3, job_a)
    [task_b] = upload(s3, job_b)
    stolen = s3.get_object(Bucket=BUCKET, Key=task_a)["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=task_b, Body=stolen)
    run(s3, task_b, key)
    result = outcome(s3, job_b, 0)
    assert result.failure is not None and result.failure.kind == "signature"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_object_signed_with_another_key_is_refused(s3: Any, tmp_path: Path) -> None:
    job = make_job(tmp_path / "ran", os.urandom(32))
    [task] = upload(s3, job)
    real_key = os.urandom(32)
    run(s3, task, real_key)
    result = outcome(s3, job, 0, key=real_key)
    assert result.failure is not None and result.failure.kind == "signature"
    assert not (tmp_path / "ran").exists()


def test_strangers_unsigned_object_runs_nothing(s3: Any, tmp_path: Path) -> None:
    import dill

    key = os.urandom(32)
    evil = tmp_path / "evil"
    payload = dill.dumps(lambda: evil.touch())
    stranger_key = _keys.task_key(PREFIX, "20260101T000000-cccccccc", 0)
    s3.put_object(Bucket=BUCKET, Key=stranger_key, Body=payload)
    run(s3, stranger_key, key)
    assert not evil.exists()


def test_keys_outside_the_queue_are_ignored(s3: Any) -> None:
    key = os.urandom(32)
    for outside in (
        "dolambda/results/x/0000000.out",
        "other/queue/x/0000000.task",
        "dolambda/queue/x",
    ):
        assert run(s3, outside, key) == "ignored"


def test_client_refuses_a_tampered_result(tmp_path: Path) -> None:
    key = os.urandom(32)
    job = make_job(tmp_path / "ran", key)
    fake = TaskOutcome(job_id=job.job_id, task_id=0)
    blob = codec.seal_model(fake, key=os.urandom(32), context=outcome_context(job.job_id, 0))
    with pytest.raises(SignatureError):
        codec.unseal_model(TaskOutcome, blob, key=key, context=outcome_context(job.job_id, 0))
    good = codec.seal_model(fake, key=key, context=outcome_context(job.job_id, 0))
    with pytest.raises(SignatureError):
        codec.unseal_model(TaskOutcome, flip(good), key=key, context=outcome_context(job.job_id, 0))
    with pytest.raises(SignatureError):  # a valid result of task 0 moved to task 1
        codec.unseal_model(TaskOutcome, good, key=key, context=outcome_context(job.job_id, 1))


def test_task_from_another_wire_version_says_so(s3: Any, tmp_path: Path) -> None:
    # a client newer than the deployed function: its task has a field this worker does
    # not know; the worker reports the version, not a validation error about the field
    key = os.urandom(32)
    job = make_job(tmp_path / "ran", key)
    spec = json.loads(job.encode_task(PlannedTask(0, 0, [(1,)], ("x",))).model_dump_json())
    spec.update(wire_version=99, some_future_field=1)
    task = _keys.task_key(PREFIX, job.job_id, 0)
    s3.put_object(
        Bucket=BUCKET,
        Key=task,
        Body=codec.seal(json.dumps(spec).encode(), key=key, context=task_context(job.job_id, 0)),
    )
    run(s3, task, key)
    result = outcome(s3, job, 0)
    assert result.failure is not None and result.failure.kind == "version"
    assert "wire version 99" in result.failure.message
    assert "dolambda deploy" in result.failure.message
    assert not (tmp_path / "ran").exists()


def test_client_names_the_wire_version_of_a_result_it_cannot_read(tmp_path: Path) -> None:
    key = os.urandom(32)
    job = make_job(tmp_path / "ran", key)
    data = json.loads(TaskOutcome(job_id=job.job_id, task_id=0).model_dump_json())
    future = TaskOutcome.model_fields["wire_version"].default + 1
    data.update(wire_version=future, renamed_field=[])
    blob = codec.seal(json.dumps(data).encode(), key=key, context=outcome_context(job.job_id, 0))
    with pytest.raises(VersionMismatch, match=f"wire version {future}"):
        codec.unseal_model(TaskOutcome, blob, key=key, context=outcome_context(job.job_id, 0))
    # the same version with a bad field is still a plain validation error
    data.update(wire_version=TaskOutcome.model_fields["wire_version"].default)
    blob = codec.seal(json.dumps(data).encode(), key=key, context=outcome_context(job.job_id, 0))
    with pytest.raises(ValidationError):
        codec.unseal_model(TaskOutcome, blob, key=key, context=outcome_context(job.job_id, 0))


def test_no_secret_in_any_object(s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "SECRETaccessKEY1234567890"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    key = os.urandom(32)
    job = make_job(tmp_path / "ran", key)
    [task] = upload(s3, job)
    run(s3, task, key)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", ()):
            data = s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
            assert key not in data and key.hex().encode() not in data
            assert secret.encode() not in data
    manifest = json.loads(
        codec.unseal(job.sealed_manifest, key=key, context=manifest_context(job.job_id))
    )
    assert not any(secret in str(v) or key.hex() in str(v) for v in manifest.values())


@pytest.mark.parametrize(
    "event",
    [None, "", "not json", [], {}, {"Records": "x"}, {"Records": [{}]}, {"bucket": 3, "key": []}],
)
def test_malformed_events_yield_no_tasks(event: Any) -> None:
    assert task_records(event) == []


def test_event_keys_are_url_decoded() -> None:
    event = {
        "Records": [
            {
                "s3": {
                    "bucket": {"name": "b"},
                    "object": {"key": "dolambda/queue/j%C3%A9b+x/0000001.task"},
                }
            }
        ]
    }
    assert task_records(event) == [("b", "dolambda/queue/jéb x/0000001.task", None)]
