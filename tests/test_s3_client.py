"""dolambda's S3 wrapper against a real moto server over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import boto3
import pytest

from dolambda._aws.s3 import RequestCounter, open_s3
from tests.moto_server import MotoServer

BUCKET = "s3-client-tests"
CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with MotoServer() as url:
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", **CREDS).create_bucket(
            Bucket=BUCKET
        )
        yield url


def test_delete_keys_deletes_every_batch_of_a_large_key_list(moto_url: str) -> None:
    # 2,500 keys: three DeleteObjects (1,000 a call), sent side by side; keys that do not
    # exist are fine (a cleanup may list tasks that were never written)
    keys = [f"jobs/big/{i:05d}" for i in range(2_500)]
    real = [keys[0], keys[999], keys[1_000], keys[2_499]]
    sync = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", **CREDS)
    for key in real:
        sync.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    counter = RequestCounter()

    async def delete() -> None:
        async with open_s3(
            bucket=BUCKET,
            region="us-east-1",
            profile=None,
            endpoint_url=moto_url,
            pool=8,
            counter=counter,
            credentials=CREDS,
        ) as s3:
            await s3.delete_keys(iter(keys))

    asyncio.run(delete())
    assert counter.counts == {"delete": 3}
    left = sync.list_objects_v2(Bucket=BUCKET, Prefix="jobs/big/").get("Contents", [])
    assert left == []
