"""A large body (issue 15 item 17): said once, uploaded once per content and reused by
later jobs, compressed only when that pays, and the bytes sent are in the job's stats."""

from __future__ import annotations

import os
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from dolambda import LambdaBackend, foreach
from dolambda._aws.worker import process_s3_task
from dolambda._backends.base import JobContext
from dolambda._backends.sealing import LARGE_BODY, LargeBodyWarning, SealedJob
from dolambda._core.execute import WorkerState
from dolambda._core.tasks import PlannedTask
from dolambda._wire import codec
from dolambda._wire import keys as _keys
from dolambda._wire.models import TaskOutcome

emulator = pytest.importorskip("dolambda.emulator")

MB = 1_000_000
PREFIX = "by-hand"


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    with emulator.Emulator(workers=2, timeout=30.0) as instance:
        yield instance


def s3_client(emu: Any) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=emu.endpoint_url,
        region_name=emu.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def keys_under(emu: Any, prefix: str) -> list[str]:
    pages = (
        s3_client(emu).get_paginator("list_objects_v2").paginate(Bucket=emu.bucket, Prefix=prefix)
    )
    return [o["Key"] for page in pages for o in page.get("Contents", ())]


def stored_body(emu: Any, body: Any) -> str:
    """The key the emulator's jobs store ``body`` under."""
    digest = codec.digest(codec.dumps_body(body))
    return _keys.body_key(emu.prefix, digest, codec.key_tag(bytes.fromhex(emu.signing_key), digest))


# --- compression ------------------------------------------------------------------------


def test_incompressible_payloads_are_not_compressed() -> None:
    key = os.urandom(32)
    noise = os.urandom(2 * MB)  # as pickled floats or a compressed file look to zlib
    sealed = codec.seal(noise, key=key, context="c")
    assert len(sealed) == len(noise) + len(codec.MAGIC) + 1 + 32  # sent as it is
    assert codec.unseal(sealed, key=key, context="c") == noise
    text = b"iteration results " * 100_000
    packed = codec.seal(text, key=key, context="c")
    assert len(packed) < len(text) // 10
    assert codec.unseal(packed, key=key, context="c") == text
    # a payload whose head is noise and whose rest compresses: the sample sees both
    mixed = os.urandom(64 * 1024) + bytes(3 * MB)
    assert codec.compression_pays(mixed)
    assert not codec.compression_pays(os.urandom(100 * 1024))
    assert not codec.compression_pays(bytes(1000))  # small: not worth the CPU


# --- a large body on the emulator -------------------------------------------------------


def make_body(size: int) -> Any:
    data = os.urandom(size)

    def body(x: int) -> int:
        return x + len(data)

    return body


def test_a_large_body_is_said_once_and_uploaded_once(emu: Any) -> None:
    body = make_body(LARGE_BODY + MB)
    size = LARGE_BODY + MB
    backend = LambdaBackend(**emu.backend_settings())
    loop = foreach(x=range(4)).chunk_size(2)
    with pytest.warns(LargeBodyWarning) as said:
        first = loop.submit(body, backend=backend, progress=False)
        assert first.result() == [x + size for x in range(4)]
    [warning] = said
    text = str(warning.message)
    assert f"pickles to {(size + 200) / MB:.1f} MB"[:-3] in text  # ~ the body's size
    assert f"'data' ({size / MB:.1f} MB)" in text  # names what it captures, and its size
    assert "load it inside the body" in text  # and the alternative
    assert first.stats is not None and first.stats.bytes_sent > size
    assert "MB sent" in first.stats.summary()
    # the job's own objects are gone; the body stays for the next job with the same body
    assert keys_under(emu, _keys.job_dir(emu.prefix, first.id)) == []
    assert keys_under(emu, _keys.bodies_root(emu.prefix)).count(stored_body(emu, body)) == 1
    # the same body again, even from another backend (a new process): not sent, not said
    other = LambdaBackend(**emu.backend_settings())
    with warnings.catch_warnings():
        warnings.simplefilter("error", LargeBodyWarning)
        second = loop.submit(body, backend=other, progress=False)
        assert second.result() == [x + size for x in range(4)]
    assert second.stats is not None and second.stats.bytes_sent < 100_000, second.stats.bytes_sent


def test_a_small_body_is_sent_with_every_job_and_not_said(emu: Any) -> None:
    backend = LambdaBackend(**emu.backend_settings())
    with warnings.catch_warnings():
        warnings.simplefilter("error", LargeBodyWarning)
        job = foreach(x=range(3)).submit(make_body(1000), backend=backend, progress=False)
        assert job.result() == [1000, 1001, 1002]
    assert job.stats is not None and 0 < job.stats.bytes_sent < 100_000


def test_a_body_missing_from_the_bucket_is_a_job_failure(emu: Any, tmp_path: Path) -> None:
    key = os.urandom(32)
    job = SealedJob(
        JobContext(
            job_id="20260101T000000-nobody00",
            body=make_body(10),
            seed=None,
            variables=("x",),
            chunk_size=1,
            errorhandling="remove",
        ),
        key=key,
    )
    s3 = s3_client(emu)  # (under a prefix the emulator's trigger does not watch)
    s3.put_object(
        Bucket=emu.bucket, Key=_keys.manifest_key(PREFIX, job.job_id), Body=job.sealed_manifest
    )  # and no body
    task = _keys.task_key(PREFIX, job.job_id, 0)
    s3.put_object(
        Bucket=emu.bucket, Key=task, Body=job.sealed_task(PlannedTask(0, 0, [(1,)], ("x",)))
    )
    state = WorkerState()
    assert (
        process_s3_task(
            s3,
            emu.bucket,
            task,
            prefix=PREFIX,
            signing_key=key,
            state=state,
            log=lambda _: None,
        )
        == "done"
    )
    blob = s3.get_object(Bucket=emu.bucket, Key=_keys.result_key(PREFIX, job.job_id, 0))
    outcome = codec.unseal_model(
        TaskOutcome,
        blob["Body"].read(),
        key=key,
        context=codec.outcome_context(job.job_id, 0),
    )
    assert outcome.failure is not None and outcome.failure.kind == "load"
    assert job.body_key(PREFIX) in outcome.failure.message
    assert "does not exist" in outcome.failure.message


def test_zlib_level_one_of_noise_is_what_the_sample_avoids() -> None:
    # the premise: zlib cannot shrink noise (it grows it), so compressing it is pure cost
    noise = os.urandom(256 * 1024)
    assert len(zlib.compress(noise, 1)) >= len(noise)


def test_cleanup_deletes_old_bodies_no_remaining_job_uses(emu: Any) -> None:
    from click.testing import CliRunner

    from dolambda.cli import main

    backend = LambdaBackend(**{**emu.backend_settings(), "keep": True})
    shared, alone = make_body(300_000), make_body(300_000)
    loop = foreach(x=range(2))
    old_jobs = [loop.submit(fn, backend=backend, progress=False) for fn in (shared, alone)]
    for job in old_jobs:
        job.result()
    time.sleep(1.5)  # deliberate: the jobs and bodies above must be older than 1 s
    young = loop.submit(shared, backend=backend, progress=False)  # reuses the stored body
    young.result()
    assert young.stats is not None and young.stats.bytes_sent < 100_000
    args = ["--bucket", emu.bucket, "--endpoint-url", emu.endpoint_url]
    result = CliRunner().invoke(
        main, ["cleanup", *args, "--older-than", "1s", "--signing-key", emu.signing_key]
    )
    assert result.exit_code == 0, result.output
    assert all(job.id in result.output for job in old_jobs) and young.id not in result.output
    stored = keys_under(emu, _keys.bodies_root(emu.prefix))
    key = {fn: stored_body(emu, fn) for fn in (shared, alone)}
    assert key[shared] in stored  # old, but the young job names it
    assert key[alone] not in stored
    assert "loop body(ies) no remaining job uses" in result.output


def test_a_body_signed_with_another_key_is_another_object() -> None:
    # after `deploy --rotate-key`, a job must not reuse the body signed with the old key
    def context() -> JobContext:
        return JobContext(
            job_id="20260101T000000-rotated0",
            body=make_body(10),
            seed=None,
            variables=("x",),
            chunk_size=1,
            errorhandling="stop",
        )

    job = context()
    old, new = SealedJob(job, key=b"a" * 32), SealedJob(job, key=b"b" * 32)
    assert old.body_key(PREFIX) != new.body_key(PREFIX)
    assert SealedJob(job, key=b"a" * 32).body_key(PREFIX) == old.body_key(PREFIX)
    assert job.body_digest in old.body_key(PREFIX)
