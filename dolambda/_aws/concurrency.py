"""How many of a function's invocations Lambda runs at once: the account's quota and the
function's reservation.

New accounts get a concurrency quota far below the documented default of 1,000 ("New
AWS accounts have reduced concurrency and memory quotas"), and a function with reserved
concurrency runs at most that many: the client sizes its jobs from what Lambda says.

- ``GetAccountSettings``: ``AccountLimit.ConcurrentExecutions`` (the Region's quota) and
  ``UnreservedConcurrentExecutions`` (what the reservations leave to every other function),
  https://docs.aws.amazon.com/lambda/latest/api/API_GetAccountSettings.html
- ``GetFunctionConcurrency``: the function's ``ReservedConcurrentExecutions`` (absent: none),
  https://docs.aws.amazon.com/lambda/latest/api/API_GetFunctionConcurrency.html
- https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dolambda._aws.errors import Kind, kind_of

#: what the client assumes when Lambda cannot be asked (AWS's documented default quota)
DEFAULT_CONCURRENCY = 1000


@dataclass(frozen=True)
class Concurrency:
    """What Lambda says about one function's concurrency (None: not known)."""

    #: the account's quota in the Region (AccountLimit.ConcurrentExecutions)
    account: int | None
    #: what reservations leave to the functions without one (UnreservedConcurrentExecutions)
    unreserved: int | None
    #: the function's own reservation (ReservedConcurrentExecutions; None: none)
    reserved: int | None

    @property
    def available(self) -> int | None:
        """At most this many of the function's invocations run at once: its reservation,
        else the account's unreserved pool (shared with the other unreserved functions)."""
        if self.reserved is not None:
            return self.reserved
        return self.unreserved if self.unreserved is not None else self.account

    def describe(self) -> str:
        """One line for ``doctor``: what runs at once, and why."""
        parts = []
        if self.reserved is not None:
            parts.append(f"the function reserves {self.reserved}")
        if self.account is not None:
            parts.append(f"the account's quota is {self.account:,}")
        if self.unreserved is not None:
            parts.append(f"{self.unreserved:,} unreserved")
        available = self.available
        head = "unknown" if available is None else f"{available:,} at once"
        return head + (f" ({', '.join(parts)})" if parts else "")


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def concurrency_from(
    account_settings: dict[str, Any], function_concurrency: dict[str, Any] | None
) -> Concurrency:
    """:class:`Concurrency` from the two answers (``function_concurrency`` None: no function).

    >>> c = concurrency_from({"AccountLimit": {"ConcurrentExecutions": 10,
    ...     "UnreservedConcurrentExecutions": 10}}, {})
    >>> c.available, c.describe()
    (10, "10 at once (the account's quota is 10, 10 unreserved)")
    """
    limit = account_settings.get("AccountLimit") or {}
    return Concurrency(
        account=_count(limit.get("ConcurrentExecutions")),
        unreserved=_count(limit.get("UnreservedConcurrentExecutions")),
        reserved=_count((function_concurrency or {}).get("ReservedConcurrentExecutions")),
    )


async def read_function_concurrency(
    *,
    function_name: str,
    region: str,
    profile: str | None,
    endpoint_url: str | None,
    credentials: dict[str, str],
    sessions: dict[Any, Any] | None = None,
) -> Concurrency:
    """:func:`read_concurrency` over a short-lived Lambda client (two requests), from the
    caller's per-thread ``sessions`` (keyed as :func:`dolambda._aws.s3.open_s3` keys them)
    when one is there."""
    import aioboto3
    from aiobotocore.config import AioConfig

    key = (profile, region, tuple(sorted(credentials.items())))
    session = None if sessions is None else sessions.get(key)
    if session is None:
        session = aioboto3.Session(profile_name=profile, region_name=region, **credentials)
    config = AioConfig(
        retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=10
    )
    verify = False if endpoint_url and endpoint_url.startswith("http://") else None
    async with session.client(
        "lambda", endpoint_url=endpoint_url, config=config, verify=verify
    ) as client:
        return await read_concurrency(client, function_name)


async def read_concurrency(client: Any, function_name: str) -> Concurrency:
    """Ask Lambda (an aiobotocore ``lambda`` client) about ``function_name``'s concurrency;
    botocore's errors propagate (the caller decides what an unknown quota means)."""
    settings = await client.get_account_settings()
    try:
        reserved = await client.get_function_concurrency(FunctionName=function_name)
    except Exception as exc:  # a missing function has no reservation; the rest propagate
        if kind_of(exc) is not Kind.NO_SUCH_FUNCTION:
            raise
        reserved = None
    return concurrency_from(settings, reserved)
