"""S3 access for the client: one pooled aioboto3 client per job run, request counting.

Errors leave every method as dolambda errors through the one table in
:mod:`dolambda._aws.errors`; what a method answers instead of an error (a missing
object is None) is decided by the error's kind from the same table.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import aioboto3
from aiobotocore.config import AioConfig

from dolambda import _sync
from dolambda._aws.endpoint import refused
from dolambda._aws.errors import CREDENTIAL_CHAIN, OBJECT_MISSING, Kind, kind_of, translated
from dolambda._aws.invoke import Invoker
from dolambda._aws.percall import lighten
from dolambda._errors import ConfigError, StorageError


@dataclass
class RequestCounter:
    """Client-side S3 requests by kind (what the cost model and benchmarks read)."""

    counts: dict[str, int] = field(default_factory=dict)
    bytes_sent: int = 0  # request bodies: objects PUT, payloads invoked

    def add(self, kind: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n

    def sent(self, size: int) -> None:
        self.bytes_sent += size


def resolve_region(region: str | None, profile: str | None) -> str:
    if region:
        return region
    with translated("client", action="opening a session", resource=f"profile {profile}"):
        session = aioboto3.Session(profile_name=profile)
    found = session.region_name
    if not found:
        raise ConfigError(
            "no AWS region: set AWS_DEFAULT_REGION, give the profile a region in ~/.aws/config, "
            "or pass region= to LambdaBackend"
        )
    return str(found)


class S3:
    """Thin async wrapper over one pooled aioboto3 S3 client for one bucket.

    ``invoker`` is the run's Lambda :class:`~dolambda._aws.invoke.Invoker`, opened with
    it (one session, one warm pool; its client is None unless opened ``with_lambda``);
    this class itself never calls Lambda.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        region: str,
        counter: RequestCounter,
        lambda_client: Any = None,
        function_name: str = "",
        call_client: Any = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.region = region
        self.counter = counter
        self.function_name = function_name
        self.invoker = Invoker(
            lambda_client,
            function_name,
            bucket=bucket,
            region=region,
            count=counter.add,
            call_client=call_client,
        )

    def _translated(self, key: str, action: str) -> contextlib.AbstractContextManager[None]:
        """Errors of the block as dolambda errors naming this bucket (and ``key``)."""
        return translated(
            "client",
            action=action,
            resource=f"s3://{self.bucket}/{key}" if key else f"bucket {self.bucket!r}",
            bucket=self.bucket,
            region=self.region,
            function=self.function_name,
        )

    async def put(self, key: str, body: bytes) -> None:
        """PUT an object."""
        self.counter.add("put")
        self.counter.sent(len(body))
        with self._translated(key, "writing"):
            await self.client.put_object(Bucket=self.bucket, Key=key, Body=body)

    async def age(self, key: str) -> float | None:
        """Seconds since the object was last written (HEAD, by S3's own clock), or None
        when it does not exist."""
        self.counter.add("other")
        with self._translated(key, "reading"):
            try:
                response = await self.client.head_object(Bucket=self.bucket, Key=key)
            except Exception as exc:
                if kind_of(exc) in OBJECT_MISSING:
                    return None
                raise
        written = response["LastModified"]
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        try:  # the server's "now", so that the client's clock does not matter
            now = email.utils.parsedate_to_datetime(headers["date"])
        except (KeyError, TypeError, ValueError):
            now = datetime.datetime.now(datetime.UTC)
        return max(0.0, float((now - written).total_seconds()))

    async def put_if_absent(self, key: str, body: bytes) -> bool:
        """PUT an object unless one is there (``If-None-Match: *``, one request);
        False when one was."""
        self.counter.add("put")
        self.counter.sent(len(body))
        with self._translated(key, "writing"):
            try:
                await self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*"
                )
            except Exception as exc:
                if kind_of(exc) is Kind.EXISTS:
                    return False
                raise
        return True

    async def get(self, key: str) -> bytes | None:
        """GET an object's bytes, or None when it does not exist."""
        self.counter.add("get")
        with self._translated(key, "reading"):
            try:
                response = await self.client.get_object(Bucket=self.bucket, Key=key)
                async with response["Body"] as stream:
                    data: bytes = await stream.read()
                return data
            except Exception as exc:
                if kind_of(exc) in OBJECT_MISSING:
                    return None
                raise

    async def list_keys(self, prefix: str, start_after: str = "") -> AsyncIterator[str]:
        """Every key under ``prefix`` (after ``start_after``), page by page."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": 1000}
            if token:
                kwargs["ContinuationToken"] = token
            elif start_after:
                kwargs["StartAfter"] = start_after
            self.counter.add("list")
            with self._translated(prefix, "listing"):
                page = await self.client.list_objects_v2(**kwargs)
            for item in page.get("Contents", ()):
                yield str(item["Key"])
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    async def list_written(self, prefix: str) -> AsyncIterator[tuple[str, float]]:
        """Every key under ``prefix`` with when it was last written (epoch seconds)."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": 1000}
            if token:
                kwargs["ContinuationToken"] = token
            self.counter.add("list")
            with self._translated(prefix, "listing"):
                page = await self.client.list_objects_v2(**kwargs)
            for item in page.get("Contents", ()):
                yield str(item["Key"]), float(item["LastModified"].timestamp())
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    async def list_prefixes(self, prefix: str) -> list[str]:
        out: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "Delimiter": "/"}
            if token:
                kwargs["ContinuationToken"] = token
            self.counter.add("list")
            with self._translated(prefix, "listing"):
                page = await self.client.list_objects_v2(**kwargs)
            out.extend(str(p["Prefix"]) for p in page.get("CommonPrefixes", ()))
            if not page.get("IsTruncated"):
                return out
            token = page.get("NextContinuationToken")

    async def delete_keys(self, keys: Iterable[str]) -> None:
        """Delete ``keys``: one DeleteObjects per 1,000, up to 8 of them at a time (a
        10,000-task job has ~20,000 keys; one after another that is ~20 round trips of a
        slow request on the way to returning the job's value)."""
        ordered = list(keys)
        batches = [ordered[i : i + 1000] for i in range(0, len(ordered), 1000)]
        await gather_limited(8, [self._delete_batch(b) for b in batches])

    async def _delete_batch(self, keys: list[str]) -> None:
        self.counter.add("delete")
        with self._translated(keys[0], "deleting"):
            await self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
            )

    async def delete_prefix(self, prefix: str) -> None:
        await self.delete_keys([k async for k in self.list_keys(prefix)])

    async def notification_config(self) -> dict[str, Any] | None:
        """The bucket's notification configuration, or None when we may not read it."""
        self.counter.add("other")
        with self._translated("", "reading the bucket notification"):
            try:
                response = await self.client.get_bucket_notification_configuration(
                    Bucket=self.bucket
                )
            except Exception as exc:
                if kind_of(exc) is Kind.DENIED:
                    return None
                raise
        return dict(response)


def _socket_budget() -> int:
    """Half the process's soft open-file limit (a socket is a file: macOS's default limit
    is 256, many Linux shells' 1,024), 256 where it cannot be read."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 256
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(16, soft // 2)


@contextlib.asynccontextmanager
async def open_s3(
    *,
    bucket: str,
    region: str,
    profile: str | None,
    endpoint_url: str | None,
    pool: int,
    counter: RequestCounter,
    with_lambda: bool = False,
    call_timeout: float | None = None,
    function_name: str = "",
    credentials: dict[str, str] | None = None,
    shared: dict[str, Any] | None = None,
    sessions: dict[Any, Any] | None = None,
) -> AsyncIterator[S3]:
    """One pooled S3 client (and a Lambda client for trigger="invoke") for a job run.

    With ``shared`` (a dict owned by the caller for one event loop), the clients are
    created once, kept in it and reused by later runs on that loop (warm connections);
    they are closed when the loop shuts down its async generators (``asyncio.run``
    does, and the portal at exit). Otherwise the clients live for this run only.
    With ``sessions`` (a dict the caller keeps for one thread) clients come from a
    session kept there: a client from a new session costs ~70-130 ms (botocore loads
    its models per session), from a used one ~5 ms. With ``call_timeout`` (seconds,
    trigger="call") a second Lambda client for synchronous Invokes is opened: its read
    timeout is ``call_timeout`` (the function's timeout and a margin) and botocore does
    not retry it (the caller paces and retries a throttled call itself); it may hold up
    to half the process's open-file limit in connections (a call holds one for the whole
    task: with ``pool`` only, calls beyond it would wait for a connection, not for
    Lambda). The caller paces the calls to the function's concurrency; the cap is only a
    bound (connections open as calls need them), so a client shared by later jobs of a
    larger concurrency is not the first job's size.
    """
    if shared is not None and "s3" in shared:
        yield S3(
            shared["s3"],
            bucket,
            region,
            counter,
            shared.get("lambda"),
            function_name,
            call_client=shared.get("call"),
        )
        return
    down = refused(endpoint_url)
    if down is not None:  # fail now, not after botocore's retries (~26 s)
        raise StorageError(f"cannot reach bucket {bucket!r}: {down}")
    session_key = (profile, region, tuple(sorted((credentials or {}).items())))
    session = None if sessions is None else sessions.get(session_key)
    if session is None:
        with translated(
            "client",
            action="opening a session",
            resource=f"bucket {bucket!r}",
            bucket=bucket,
            region=region,
        ):
            session = aioboto3.Session(
                profile_name=profile, region_name=region, **(credentials or {})
            )
    creds = await session.get_credentials()
    if creds is None:
        raise ConfigError(f"no AWS credentials found; they are looked up in {CREDENTIAL_CHAIN}")
    if sessions is not None:
        sessions[session_key] = session  # only a session that found credentials is kept
    config = AioConfig(
        max_pool_connections=pool,
        retries={"max_attempts": 8, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        tcp_keepalive=True,
    )
    # plain http (a local server): no TLS, so no CA bundle to load (~30 ms a client)
    verify = False if endpoint_url and endpoint_url.startswith("http://") else None
    stack = contextlib.AsyncExitStack()
    try:
        s3 = await stack.enter_async_context(
            session.client("s3", endpoint_url=endpoint_url, config=config, verify=verify)
        )
        lighten(s3)  # (every task is a new key: the endpoint rules once, the User-Agent once)
        lam = call = None
        if with_lambda:
            lam = await stack.enter_async_context(
                session.client("lambda", endpoint_url=endpoint_url, config=config, verify=verify)
            )
        if call_timeout is not None:
            call_config = AioConfig(
                max_pool_connections=max(pool, _socket_budget()),
                retries={"total_max_attempts": 1, "mode": "standard"},  # (no retries)
                connect_timeout=10,
                read_timeout=call_timeout,
                tcp_keepalive=True,
            )
            call = await stack.enter_async_context(
                session.client(
                    "lambda", endpoint_url=endpoint_url, config=call_config, verify=verify
                )
            )
    except BaseException:
        await stack.aclose()
        raise
    if shared is not None and "s3" not in shared:  # (another run may have just set it)
        kept = shared

        async def close() -> None:
            kept.clear()  # a later run on this loop (if any) opens new clients
            await stack.aclose()

        keeper = await _sync.at_loop_shutdown(close)  # held here: the loop holds it weakly
        shared.update({"s3": s3, "lambda": lam, "call": call, "keeper": keeper})
        yield S3(s3, bucket, region, counter, lam, function_name, call_client=call)
        return
    async with stack:
        yield S3(s3, bucket, region, counter, lam, function_name, call_client=call)


async def gather_limited(limit: int, coros: Iterable[Any]) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))
