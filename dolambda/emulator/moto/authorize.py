"""IAM for the emulator's S3: what an S3 request asks for, and whether a policy allows it.

The emulator's workers act as the function's role: they hold credentials that the
emulator took from STS (``AssumeRole`` on the role deploy made), and the server
(:mod:`dolambda.emulator.moto.server`) authorizes each S3 request signed with them
against the role's policies, here. Requests signed with any other key (the client,
an admin) stay allowed, as moto allows everything.

Why not moto's own IAM access control (``INITIAL_NO_AUTH_ACTION_COUNT``,
``set_initial_no_auth_action_count``): it is one switch for every request to every
service, so the client's own ``testing`` key would have to be an IAM user's; its
statement evaluation turns an Allow whose condition does not hold into an explicit
Deny (``IAMPolicyStatement.is_action_permitted`` in moto 5.2), which a prefix-scoped
``s3:ListBucket`` trips over; and it answers 404 for a missing key to anyone. So this
module is a small evaluator of identity policies, as AWS evaluates them for one
principal in one account
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html):
an explicit Deny wins, else an Allow is needed, else the request is denied. It knows
``Action``/``NotAction``, ``Resource``/``NotResource`` globs (``*`` and ``?``) and the
string condition operators (``StringEquals``, ``StringLike`` and their ``Not``
and ``IfExists`` forms); a statement with any other operator never allows (and an
explicit Deny with one always applies): unknown means denied. The request's
signature is not checked (the key and its session token are).

S3's own rule that matters here: a GET or HEAD of a missing key is ``404 NoSuchKey``
only to a principal allowed ``s3:ListBucket`` on the bucket (evaluated with the key as
``s3:prefix``), ``403 AccessDenied`` to any other
(https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html, "Permissions").
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

__all__ = ["S3Request", "allowed", "s3_request"]


@dataclass(frozen=True)
class S3Request:
    """One S3 request as IAM sees it: the actions it needs on which resources.

    ``checks`` holds ``(action, resource ARN, condition context)`` triples; every one
    must be allowed (a multi-object delete needs ``s3:DeleteObject`` on each key).
    ``bucket``/``key`` are set for object requests; ``reads_object`` marks a GET or HEAD
    of one object (the 404-or-403 rule applies to it).
    """

    checks: tuple[tuple[str, str, Mapping[str, str]], ...]
    bucket: str = ""
    key: str = ""
    reads_object: bool = False
    partition: str = "aws"


# Object subresources (query parameters) and the action each needs, by method.
_OBJECT_SUB: dict[str, dict[str, str]] = {
    "GET": {
        "acl": "s3:GetObjectAcl",
        "tagging": "s3:GetObjectTagging",
        "attributes": "s3:GetObjectAttributes",
        "retention": "s3:GetObjectRetention",
        "legal-hold": "s3:GetObjectLegalHold",
        "uploadId": "s3:ListMultipartUploadParts",
        "torrent": "s3:GetObjectTorrent",
    },
    "PUT": {
        "acl": "s3:PutObjectAcl",
        "tagging": "s3:PutObjectTagging",
        "retention": "s3:PutObjectRetention",
        "legal-hold": "s3:PutObjectLegalHold",
        "uploadId": "s3:PutObject",
    },
    "POST": {"uploads": "s3:PutObject", "uploadId": "s3:PutObject", "restore": "s3:RestoreObject"},
    "DELETE": {"tagging": "s3:DeleteObjectTagging", "uploadId": "s3:AbortMultipartUpload"},
}
_OBJECT_DEFAULT = {
    "GET": "s3:GetObject",
    "HEAD": "s3:GetObject",
    "PUT": "s3:PutObject",
    "DELETE": "s3:DeleteObject",
    "POST": "s3:PutObject",
}
# Bucket requests: the subresource names the action (GET ?versioning -> s3:GetBucketVersioning).
_BUCKET_GET = {
    "": "s3:ListBucket",
    "list-type": "s3:ListBucket",
    "versions": "s3:ListBucketVersions",
    "uploads": "s3:ListBucketMultipartUploads",
    "location": "s3:GetBucketLocation",
    "notification": "s3:GetBucketNotification",
    "lifecycle": "s3:GetLifecycleConfiguration",
    "encryption": "s3:GetEncryptionConfiguration",
    "publicAccessBlock": "s3:GetBucketPublicAccessBlock",
    "policy": "s3:GetBucketPolicy",
}

#: the parameters of a ListObjects (v1) request: a GET of the bucket with only these lists it
_LIST_PARAMS = frozenset(
    ["prefix", "delimiter", "marker", "max-keys", "encoding-type", "x-id", "fetch-owner"]
)


def s3_request(
    method: str, path: str, query: str, *, partition: str = "aws", body: bytes = b""
) -> S3Request:
    """The actions a path-style S3 request (``/bucket/key?query``) needs."""
    method = method.upper()
    params = parse_qs(query, keep_blank_values=True)
    bucket, _, key = path.lstrip("/").partition("/")
    bucket, key = unquote(bucket), unquote(key)
    arn = f"arn:{partition}:s3:::"
    if not bucket:
        return S3Request((("s3:ListAllMyBuckets", "*", {}),), partition=partition)
    if key:
        action = _OBJECT_DEFAULT.get(method, f"s3:{method.title()}Object")
        for sub, named in _OBJECT_SUB.get(method, {}).items():
            if sub in params:
                action = named
                break
        if action == "s3:GetObject" and "versionId" in params:
            action = "s3:GetObjectVersion"
        checks: list[tuple[str, str, Mapping[str, str]]] = [(action, f"{arn}{bucket}/{key}", {})]
        reads = method in ("GET", "HEAD") and action in ("s3:GetObject", "s3:GetObjectVersion")
        return S3Request(tuple(checks), bucket, key, reads_object=reads, partition=partition)
    if method == "POST" and "delete" in params:  # DeleteObjects: each key is a DeleteObject
        keys = [unescape(k) for k in re.findall(rb"<Key>(.*?)</Key>", body, re.S)]
        return S3Request(
            tuple(("s3:DeleteObject", f"{arn}{bucket}/{k}", {}) for k in keys) or (),
            bucket,
            partition=partition,
        )
    if method in ("GET", "HEAD"):
        sub = next((p for p in params if p in _BUCKET_GET), "")
        if not sub and method == "GET" and set(params) - _LIST_PARAMS:
            other = next(iter(params))  # an unknown subresource: its own action, never granted
            action = f"s3:GetBucket{other[:1].upper()}{other[1:]}"
        else:
            action = _BUCKET_GET[sub]
        context: dict[str, str] = {}
        if action == "s3:ListBucket" and "prefix" in params:
            context["s3:prefix"] = params["prefix"][0]
        return S3Request(((action, f"{arn}{bucket}", context),), bucket, partition=partition)
    sub = next(iter(params), "")
    verb = {"PUT": "Put", "DELETE": "Delete", "POST": "Post"}.get(method, method.title())
    action = f"s3:{verb}Bucket{sub[:1].upper()}{sub[1:]}" if sub else f"s3:{verb}Bucket"
    if action == "s3:PutBucket":
        action = "s3:CreateBucket"
    return S3Request(((action, f"{arn}{bucket}", {}),), bucket, partition=partition)


def unescape(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    for entity, char in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&apos;", "'")):
        text = text.replace(entity, char)
    return text.replace("&amp;", "&")


# ── evaluation ──


def allowed(
    policies: Iterable[Any], action: str, resource: str, context: Mapping[str, str]
) -> bool:
    """Whether identity policies (JSON text or dicts) allow ``action`` on ``resource``."""
    allow = False
    for policy in policies:
        doc = json.loads(unquote(policy)) if isinstance(policy, str) else policy
        statements = doc.get("Statement", [])
        for st in statements if isinstance(statements, list) else [statements]:
            effect = _applies(st, action, resource, context)
            if effect == "Deny":
                return False
            allow = allow or effect == "Allow"
    return allow


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _glob(pattern: str, value: str, *, fold: bool = False) -> bool:
    if fold:
        pattern, value = pattern.lower(), value.lower()
    # IAM's wildcards are * and ? only; fnmatch's [...] must not mean a set
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def _applies(st: Mapping[str, Any], action: str, resource: str, ctx: Mapping[str, str]) -> str:
    """``"Allow"``/``"Deny"`` when the statement applies to the request, else ``""``."""
    effect = str(st.get("Effect", ""))
    if "NotAction" in st:
        if any(_glob(str(a), action, fold=True) for a in _as_list(st["NotAction"])):
            return ""
    elif not any(_glob(str(a), action, fold=True) for a in _as_list(st.get("Action"))):
        return ""
    if "NotResource" in st:
        if any(_glob(str(r), resource) for r in _as_list(st["NotResource"])):
            return ""
    elif not any(_glob(str(r), resource) for r in _as_list(st.get("Resource"))):
        return ""
    holds = _conditions_hold(st.get("Condition") or {}, ctx)
    if holds is None:  # an operator this evaluator does not know: never allow, always deny
        return "Deny" if effect == "Deny" else ""
    return effect if holds else ""


def _conditions_hold(conditions: Mapping[str, Any], ctx: Mapping[str, str]) -> bool | None:
    """All condition blocks hold (True), one fails (False), or one is unknown (None)."""
    for operator, block in conditions.items():
        op = str(operator)
        if_exists = op.endswith("IfExists")
        base = op[: -len("IfExists")] if if_exists else op
        negate = base.startswith("StringNot")
        kind = base.replace("StringNot", "String")
        if kind not in ("StringEquals", "StringLike", "StringEqualsIgnoreCase"):
            return None
        for key, wanted in (block or {}).items():
            value = next((v for k, v in ctx.items() if k.lower() == str(key).lower()), None)
            if value is None:
                # a missing key: only IfExists (and the negated operators) hold
                if not (if_exists or negate):
                    return False
                continue
            if kind == "StringLike":
                match = any(_glob(str(w), value) for w in _as_list(wanted))
            elif kind == "StringEqualsIgnoreCase":
                match = any(str(w).lower() == value.lower() for w in _as_list(wanted))
            else:
                match = any(str(w) == value for w in _as_list(wanted))
            if match == negate:
                return False
    return True
