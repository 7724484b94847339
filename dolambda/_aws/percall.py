"""What botocore redoes for every request and need not, undone on dolambda's own clients
(the job's aiobotocore S3 client, the worker's and dispatcher's boto3 one): :func:`lighten`.

**S3 endpoint resolution once per bucket, not once per key.** botocore resolves every
request's endpoint by evaluating S3's endpoint rules with the request's parameters,
behind a cache keyed by those parameters. S3's rule set declares
``Key``, ``Prefix`` and ``CopySource`` as parameters although no rule refers to them, so
every new key misses the cache and the whole rule tree is evaluated again: in a job's
client ~1/5 of its CPU per request here (section cpu of the benchmarks; every task is a
new key), and in a worker on Lambda, CPU billed with each task. botocore fixed this
upstream by dropping those three before the rules see them (boto/botocore#3692, after
boto/botocore#3528); the botocore that aiobotocore pins here (1.40) does not have it.
:func:`resolve_endpoints_per_bucket` does the same on one client, and only for those of
the three that the client's own rule set does not refer to (a later rule set that uses
one keeps it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: S3 endpoint-rule parameters that no rule refers to (botocore#3692 drops the same)
UNREFERENCED = ("Key", "Prefix", "CopySource")


def _refs(node: Any) -> Iterator[str]:
    """Every ``{"ref": name}`` in a rule set (its raw JSON)."""
    if isinstance(node, dict):
        ref = node.get("ref")
        if isinstance(ref, str):
            yield ref
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def unreferenced(ruleset: Any, names: tuple[str, ...] = UNREFERENCED) -> tuple[str, ...]:
    """Which of ``names`` the rule set declares as parameters and no rule refers to."""
    declared = ruleset.get("parameters", {}) if isinstance(ruleset, dict) else {}
    used = set(_refs(ruleset.get("rules", []) if isinstance(ruleset, dict) else []))
    return tuple(n for n in names if n in declared and n not in used)


def resolve_endpoints_per_bucket(client: Any) -> tuple[str, ...]:
    """Make an S3 client (botocore or aiobotocore) resolve its endpoint once per bucket
    and operation kind, not per key; returns the parameters it now leaves out (none when
    the client is not one this knows how to change: it then works as before)."""
    resolver = getattr(client, "_ruleset_resolver", None)
    provider = getattr(resolver, "_provider", None)
    loader = getattr(client, "_loader", None)
    if provider is None or loader is None or getattr(provider, "_dolambda_drops", None):
        return tuple(getattr(provider, "_dolambda_drops", None) or ())
    try:
        meta = client.meta.service_model
        ruleset = loader.load_service_model(
            meta.service_name, "endpoint-rule-set-1", api_version=meta.api_version
        )
    except Exception:  # (no rule set to read: leave the client as it is)
        return ()
    drops = unreferenced(ruleset)
    if not drops:
        return ()
    cached = provider.resolve_endpoint  # (botocore's per-parameters cache)

    def resolve_endpoint(**params: Any) -> Any:
        for name in drops:
            params.pop(name, None)
        return cached(**params)

    provider.resolve_endpoint = resolve_endpoint
    provider._dolambda_drops = drops
    return drops


def build_user_agent_once(client: Any) -> bool:
    """Make a client build its User-Agent header once per set of feature ids, not twice
    per request; False when it is not one this knows how to change.

    **The User-Agent header.** botocore assembles it from a dozen components (SDK, OS,
    language, config, the feature ids the request used: ``m/...``), each sanitized,
    before every request and again just before sending (once the request's features are
    known): ~5% of a request's CPU here. Everything in it but the feature ids is fixed
    for the client, so the string is kept per set of features (the client's and the
    request's): the same header, built once.
    """
    try:  # (a botocore older than its feature ids, 1.36: nothing to change)
        from botocore.context import get_context
    except ImportError:
        return False
    creator = getattr(client, "_user_agent_creator", None)
    build = getattr(creator, "to_string", None)
    if creator is None or build is None or not hasattr(creator, "_client_features"):
        return False
    if getattr(creator, "_dolambda_once", False):
        return True
    built: dict[tuple[frozenset[str], frozenset[str]], str] = {}

    def to_string() -> str:
        context = get_context()
        key = (
            frozenset(() if context is None else context.features),
            frozenset(creator._client_features or ()),
        )
        text = built.get(key)
        if text is None:
            text = built[key] = build()
        return text

    creator.to_string = to_string
    creator._dolambda_once = True
    return True


def lighten(client: Any) -> None:
    """Both of the above on one S3 client (each a no-op where it does not apply)."""
    resolve_endpoints_per_bucket(client)
    build_user_agent_once(client)
