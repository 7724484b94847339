"""S3 and Lambda access for the client: one pooled aioboto3 client per job run,
request counting, and the one place where botocore errors become dolambda errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import aioboto3
from aiobotocore.config import AioConfig

from dolambda._errors import BackendError, ConfigError, StorageError

CREDENTIAL_CHAIN = (
    "the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), the profile given as "
    "profile= or AWS_PROFILE, ~/.aws/credentials and ~/.aws/config, and the instance or "
    "container role"
)


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def translate(
    exc: BaseException,
    *,
    bucket: str,
    key: str = "",
    region: str | None = None,
    action: str = "",
    function: str = "",
) -> BackendError:
    """A botocore/aiohttp error as a dolambda error with a sentence the user can act on."""
    name = type(exc).__name__
    code = error_code(exc)
    where = f"s3://{bucket}/{key}" if key else f"bucket {bucket!r}"
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return ConfigError(f"no AWS credentials found; they are looked up in {CREDENTIAL_CHAIN}")
    if name == "ProfileNotFound":
        return ConfigError(f"{exc}; check profile= or AWS_PROFILE and ~/.aws/config")
    if isinstance(exc, ValueError) and "endpoint" in str(exc).lower():
        return ConfigError(f"{exc}; endpoint_url must be an http(s) URL")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"):
        return StorageError(
            f"cannot reach the AWS endpoint while {action or 'talking to S3'}: {exc}"
        )
    if code == "NoSuchBucket":
        return StorageError(
            f"bucket {bucket!r} does not exist (region {region or 'unknown'}); create it or run "
            f"`dolambda deploy --bucket {bucket}`"
        )
    if code in (
        "AccessDenied",
        "403",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
    ):
        return StorageError(
            f"access to {where} was denied ({code}) while {action or 'talking to S3'}; check the "
            "credentials and that their policy allows it"
        )
    if code in (
        "PermanentRedirect",
        "301",
        "AuthorizationHeaderMalformed",
        "IllegalLocationConstraintException",
    ):
        return StorageError(
            f"bucket {bucket!r} is in another region than the client's ({region}); pass "
            "region= with the bucket's region"
        )
    if code == "ResourceNotFoundException":
        return ConfigError(
            f"Lambda function {function!r} was not found in region {region}; run "
            f"`dolambda deploy --bucket {bucket}`"
        )
    return StorageError(f"S3/Lambda request failed for {where} while {action}: {name}: {exc}")


@dataclass
class RequestCounter:
    """Client-side S3 requests by kind (what the cost model and benchmarks read)."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n


def resolve_region(region: str | None, profile: str | None) -> str:
    if region:
        return region
    try:
        session = aioboto3.Session(profile_name=profile)
    except Exception as exc:
        raise ConfigError(f"{exc}; check profile= or AWS_PROFILE and ~/.aws/config") from exc
    found = session.region_name
    if not found:
        raise ConfigError(
            "no AWS region: set AWS_DEFAULT_REGION, give the profile a region in ~/.aws/config, "
            "or pass region= to LambdaBackend"
        )
    return str(found)


class S3:
    """Thin async wrapper over one pooled aioboto3 S3 client for one bucket."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        region: str,
        counter: RequestCounter,
        lambda_client: Any = None,
        function_name: str = "",
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.region = region
        self.counter = counter
        self.lambda_client = lambda_client
        self.function_name = function_name

    def _err(self, exc: BaseException, key: str, action: str) -> BackendError:
        return translate(
            exc,
            bucket=self.bucket,
            key=key,
            region=self.region,
            action=action,
            function=self.function_name,
        )

    async def put(self, key: str, body: bytes, *, if_none_match: bool = False) -> bool:
        """PUT an object; with ``if_none_match`` return False when it already exists."""
        self.counter.add("put")
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": body}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        try:
            await self.client.put_object(**kwargs)
        except Exception as exc:
            if if_none_match and error_code(exc) in ("PreconditionFailed", "412"):
                return False
            raise self._err(exc, key, "writing") from exc
        return True

    async def get(self, key: str) -> bytes | None:
        """GET an object's bytes, or None when it does not exist."""
        self.counter.add("get")
        try:
            response = await self.client.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as stream:
                data: bytes = await stream.read()
            return data
        except Exception as exc:
            if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._err(exc, key, "reading") from exc

    async def exists(self, key: str) -> bool:
        self.counter.add("other")
        try:
            await self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise self._err(exc, key, "checking") from exc
        return True

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
            try:
                page = await self.client.list_objects_v2(**kwargs)
            except Exception as exc:
                raise self._err(exc, prefix, "listing") from exc
            for item in page.get("Contents", ()):
                yield str(item["Key"])
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
            try:
                page = await self.client.list_objects_v2(**kwargs)
            except Exception as exc:
                raise self._err(exc, prefix, "listing") from exc
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
        try:
            await self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
            )
        except Exception as exc:
            raise self._err(exc, keys[0], "deleting") from exc

    async def delete_prefix(self, prefix: str) -> None:
        await self.delete_keys([k async for k in self.list_keys(prefix)])

    async def notification_config(self) -> dict[str, Any] | None:
        """The bucket's notification configuration, or None when we may not read it."""
        self.counter.add("other")
        try:
            response = await self.client.get_bucket_notification_configuration(Bucket=self.bucket)
        except Exception as exc:
            if error_code(exc) in ("AccessDenied", "403"):
                return None
            raise self._err(exc, "", "reading the bucket notification") from exc
        return dict(response)

    async def invoke(self, payload: dict[str, Any]) -> None:
        """Asynchronous Invoke of the function (trigger="invoke")."""
        self.counter.add("invoke")
        try:
            await self.lambda_client.invoke(
                FunctionName=self.function_name,
                InvocationType="Event",
                Payload=json.dumps(payload).encode(),
            )
        except Exception as exc:
            raise self._err(exc, "", f"invoking {self.function_name}") from exc


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
    its models per session), from a used one ~5 ms.
    """
    if shared is not None and "s3" in shared:
        yield S3(shared["s3"], bucket, region, counter, shared.get("lambda"), function_name)
        return
    session_key = (profile, region, tuple(sorted((credentials or {}).items())))
    session = None if sessions is None else sessions.get(session_key)
    if session is None:
        try:
            session = aioboto3.Session(
                profile_name=profile, region_name=region, **(credentials or {})
            )
        except Exception as exc:
            raise translate(exc, bucket=bucket, region=region, action="opening a session") from exc
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
        lam = None
        if with_lambda:
            lam = await stack.enter_async_context(
                session.client("lambda", endpoint_url=endpoint_url, config=config, verify=verify)
            )
    except BaseException:
        await stack.aclose()
        raise
    if shared is not None and "s3" not in shared:  # (another run may have just set it)
        from dolambda import _sync

        kept = shared

        async def close() -> None:
            kept.clear()  # a later run on this loop (if any) opens new clients
            await stack.aclose()

        keeper = await _sync.at_loop_shutdown(close)  # held here: the loop holds it weakly
        shared.update({"s3": s3, "lambda": lam, "keeper": keeper})
        yield S3(s3, bucket, region, counter, lam, function_name)
        return
    async with stack:
        yield S3(s3, bucket, region, counter, lam, function_name)


async def gather_limited(limit: int, coros: Iterable[Any]) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))
