"""The one place where botocore (and aiohttp) errors become dolambda errors.

:data:`RULES` is the table (the shape of httpx's ``HTTPCORE_EXC_MAP`` with
``map_httpcore_exceptions()``): each row names one way an AWS call fails, what it
looks like (the service's error code, the HTTP status, words of the service's
message, or an exception class), its :class:`Kind`, and the sentence each side
says about it: the job client (``"client"``: the S3 wrapper and Lambda Invoke)
and ``dolambda deploy``/``doctor``/``destroy`` (``"deploy"``, always a
:class:`~dolambda._errors.DeployError`). Every boundary uses it:

- :func:`translate` / :func:`translated` turn an exception into the error a person
  can act on (the S3 client, Invoke, deploy);
- :func:`kind_of` says what happened, for code that decides what to do next (a
  missing key is a cancelled task to the worker and None to the client; a failed
  precondition is a duplicate result; the emulator's setup creates what is missing).

The most specific row wins: a code together with words of the message, then a
code, then words of the message alone, then the HTTP status, then the exception's
classes from the most derived to ``BaseException``. A row without a sentence for a
side lets the next match speak. Classes are matched by name, so this module
imports neither botocore nor aiohttp: the Lambda worker imports it and the
deployment package ships no aioboto3.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from dolambda._errors import (
    BackendError,
    ConfigError,
    DeployError,
    DolambdaError,
    StorageError,
)

Side = Literal["client", "deploy"]

CREDENTIAL_CHAIN = (
    "the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), the profile given as "
    "profile= or AWS_PROFILE, ~/.aws/credentials and ~/.aws/config, and the instance or "
    "container role"
)


class Kind(enum.Enum):
    """What went wrong, as the code that handles it needs to know."""

    NOT_FOUND = "not found"  # a HEAD (or GET) answered 404 without saying what is missing
    NO_SUCH_KEY = "no such key"
    NO_SUCH_BUCKET = "no such bucket"
    NO_SUCH_FUNCTION = "no such function"  # Lambda's ResourceNotFoundException
    NO_SUCH_ENTITY = "no such entity"  # IAM
    NO_SUCH_CONFIG = "no such configuration"  # a bucket's lifecycle, public access block...
    EXISTS = "exists"  # a conditional write (If-None-Match: *) found an object there
    BUCKET_OWNED = "bucket owned"  # the bucket exists and is ours
    BUCKET_TAKEN = "bucket taken"  # the bucket name belongs to another account
    CONFLICT = "conflict"  # Lambda: the permission (or resource) already exists
    WRITE_CONFLICT = "write conflict"  # S3: a conditional write raced another; retry it
    DENIED = "denied"
    CREDENTIALS_REJECTED = "credentials rejected"
    NO_CREDENTIALS = "no credentials"
    NO_PROFILE = "no profile"
    NO_REGION = "no region"
    WRONG_REGION = "wrong region"
    BAD_ENDPOINT = "bad endpoint"
    UNREACHABLE = "unreachable"
    THROTTLED = "throttled"
    BAD_BUCKET_NAME = "bad bucket name"
    RUNTIME_REFUSED = "runtime refused"
    ROLE_NOT_READY = "role not ready"  # a new IAM role Lambda cannot assume yet
    DESTINATION_NOT_READY = "destination not ready"  # ... or whose policy it cannot see yet
    NOTIFICATIONS_OVERLAP = "notifications overlap"
    UNSUPPORTED = "unsupported"  # the endpoint does not know the operation
    FAILED = "failed"  # anything else


MISSING = frozenset(
    {
        Kind.NOT_FOUND,
        Kind.NO_SUCH_KEY,
        Kind.NO_SUCH_BUCKET,
        Kind.NO_SUCH_FUNCTION,
        Kind.NO_SUCH_ENTITY,
        Kind.NO_SUCH_CONFIG,
    }
)
"""Every kind that means "it does not exist" (deploy reads an absent resource as None)."""

OBJECT_MISSING = frozenset({Kind.NOT_FOUND, Kind.NO_SUCH_KEY})
"""The kinds that mean an object is not in an existing bucket."""


@dataclass(frozen=True)
class Rule:
    """One row of the table: how a failure looks, its kind, what each side says."""

    kind: Kind
    codes: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    statuses: tuple[int, ...] = ()
    says: str = ""  # lower case; the service's message must contain it
    client: tuple[type[BackendError], str] | None = None
    deploy: str | None = None


_CLIENT_DENIED = (
    StorageError,
    "access to {resource} was denied ({code}) while {action}; check the credentials and "
    "that their policy allows it",
)
_CLIENT_REGION = (
    StorageError,
    "bucket {bucket!r} is in another region than the client's ({region}); pass region= "
    "with the bucket's region",
)

RULES: tuple[Rule, ...] = (
    # --- missing, existing
    Rule(Kind.NOT_FOUND, codes=("404", "NotFound")),
    Rule(Kind.NO_SUCH_KEY, codes=("NoSuchKey",)),
    Rule(
        Kind.NO_SUCH_BUCKET,
        codes=("NoSuchBucket",),
        client=(
            StorageError,
            "bucket {bucket!r} does not exist (region {region}); create it or run "
            "`dolambda deploy --bucket {bucket}`",
        ),
    ),
    Rule(
        Kind.NO_SUCH_FUNCTION,
        codes=("ResourceNotFoundException",),
        client=(
            ConfigError,
            "Lambda function {function!r} was not found in region {region}; run "
            "`dolambda deploy --bucket {bucket}`",
        ),
    ),
    Rule(Kind.NO_SUCH_ENTITY, codes=("NoSuchEntity",)),
    Rule(
        Kind.NO_SUCH_CONFIG,
        codes=(
            "NoSuchLifecycleConfiguration",
            "NoSuchPublicAccessBlockConfiguration",
            "ServerSideEncryptionConfigurationNotFoundError",
        ),
    ),
    Rule(Kind.EXISTS, codes=("PreconditionFailed", "412")),
    # a conditional write that raced another operation on the key: S3 says retry it
    # (https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html);
    # only 412 means "it already exists"
    Rule(Kind.WRITE_CONFLICT, codes=("ConditionalRequestConflict", "409")),
    Rule(Kind.BUCKET_OWNED, codes=("BucketAlreadyOwnedByYou",)),
    Rule(
        Kind.BUCKET_TAKEN,
        codes=("BucketAlreadyExists",),
        deploy="{resource} already exists and belongs to another AWS account: bucket names "
        "are global, choose another --bucket",
    ),
    Rule(Kind.CONFLICT, codes=("ResourceConflictException",)),
    # --- who may do what
    Rule(
        Kind.DENIED,
        codes=(
            "AccessDenied",
            "AccessDeniedException",
            "AllAccessDisabled",
            "AuthorizationError",
            "Forbidden",
            "UnauthorizedOperation",
            "403",
        ),
        statuses=(403,),
        client=_CLIENT_DENIED,
        deploy="access denied: your credentials may not perform {action} on {resource}{said}. "
        "Grant {action} to the identity running dolambda, or use another --profile",
    ),
    Rule(
        Kind.CREDENTIALS_REJECTED,
        codes=(
            "ExpiredToken",
            "ExpiredTokenException",
            "InvalidAccessKeyId",
            "InvalidClientTokenId",
            "SignatureDoesNotMatch",
            "UnrecognizedClientException",
        ),
        client=_CLIENT_DENIED,
        deploy="your AWS credentials were rejected ({code}){said}: refresh them",
    ),
    Rule(
        Kind.NO_CREDENTIALS,
        classes=("NoCredentialsError", "PartialCredentialsError"),
        client=(ConfigError, "no AWS credentials found; they are looked up in " + CREDENTIAL_CHAIN),
        deploy="no AWS credentials found: run `aws configure`, set AWS_PROFILE, or pass --profile",
    ),
    Rule(
        Kind.NO_PROFILE,
        classes=("ProfileNotFound",),
        client=(ConfigError, "{exc}; check profile= or AWS_PROFILE and ~/.aws/config"),
        deploy="{resource} does not exist in your AWS config files",
    ),
    # --- where
    Rule(
        Kind.NO_REGION,
        classes=("NoRegionError",),
        deploy="no AWS region: pass --region (or set AWS_DEFAULT_REGION or a profile region)",
    ),
    Rule(
        Kind.WRONG_REGION,
        codes=("301", "PermanentRedirect", "AuthorizationHeaderMalformed"),
        statuses=(301,),
        client=_CLIENT_REGION,
        deploy="{resource} is in {bucket_region}, not the region you asked for: "
        "pass --region {bucket_region}",
    ),
    # CreateBucket in another region than the endpoint's: deploy lets AWS's words speak
    Rule(Kind.WRONG_REGION, codes=("IllegalLocationConstraintException",), client=_CLIENT_REGION),
    Rule(
        Kind.BAD_ENDPOINT,
        classes=("ValueError",),
        says="endpoint",
        client=(ConfigError, "{exc}; endpoint_url must be an http(s) URL"),
    ),
    Rule(
        Kind.UNREACHABLE,
        classes=("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"),
        client=(StorageError, "cannot reach the AWS endpoint while {action}: {exc}"),
        deploy="cannot reach the AWS endpoint for {action} ({exc})",
    ),
    # --- what the service refused
    Rule(
        Kind.THROTTLED,
        codes=("TooManyRequestsException", "Throttling", "ThrottlingException", "SlowDown"),
        deploy="AWS throttled {action} on {resource}; wait a minute and retry",
    ),
    Rule(
        Kind.BAD_BUCKET_NAME,
        codes=("InvalidBucketName",),
        deploy="{resource} is not a valid S3 bucket name{said}",
    ),
    Rule(Kind.ROLE_NOT_READY, codes=("InvalidParameterValueException",), says="assume"),
    Rule(
        Kind.DESTINATION_NOT_READY,
        codes=("InvalidParameterValueException",),
        says="destination",
    ),
    Rule(
        Kind.RUNTIME_REFUSED,
        says="runtime",
        deploy="Lambda refused the runtime for {resource}{said}",
    ),
    Rule(
        Kind.NOTIFICATIONS_OVERLAP,
        says="overlap",
        deploy="{resource}: another notification already covers the keys dolambda needs{said}; "
        "remove or narrow it, then deploy again",
    ),
    Rule(Kind.UNSUPPORTED, codes=("UnknownOperationException", "InvalidAction")),
    # --- anything else, by class
    Rule(
        Kind.FAILED,
        classes=("ClientError",),
        deploy="{action} on {resource} failed: {code_or_name}{said}",
    ),
    Rule(
        Kind.FAILED,
        classes=("BaseException",),
        client=(
            StorageError,
            "S3/Lambda request failed for {resource} while {action}: {name}: {exc}",
        ),
        deploy="{action} on {resource} failed: {exc}",
    ),
)


def error_code(exc: BaseException) -> str:
    """The service's error code of a botocore ``ClientError`` ("" for any other error)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "") or "")
    return ""


def _response(exc: BaseException) -> dict[str, Any]:
    response = getattr(exc, "response", None)
    return response if isinstance(response, dict) else {}


def _service_message(exc: BaseException) -> str:
    return str(_response(exc).get("Error", {}).get("Message", "") or "").strip()


def _status(exc: BaseException) -> int:
    return int(_response(exc).get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _matches(exc: BaseException) -> Iterator[Rule]:
    """The rows that fit ``exc``, the most specific first."""
    code = error_code(exc)
    if code:
        text = _service_message(exc).lower()
        yield from (r for r in RULES if code in r.codes and r.says and r.says in text)
        yield from (r for r in RULES if code in r.codes and not r.says)
        yield from (r for r in RULES if r.says and not r.codes and not r.classes and r.says in text)
    status = _status(exc)
    if status:
        yield from (r for r in RULES if status in r.statuses)
    text = str(exc).lower()
    for cls in type(exc).__mro__:
        yield from (
            r for r in RULES if cls.__name__ in r.classes and (not r.says or r.says in text)
        )


def kind_of(exc: BaseException) -> Kind:
    """What ``exc`` (raised by an AWS call) means: the kind of its most specific row."""
    return next(_matches(exc)).kind


def translate(
    exc: BaseException,
    side: Side,
    *,
    action: str,
    resource: str,
    bucket: str = "",
    region: str | None = None,
    function: str = "",
) -> DolambdaError:
    """``exc`` as the dolambda error ``side`` raises, with a sentence naming ``action``
    (what was being done) and ``resource`` (what it was done to)."""
    if isinstance(exc, DolambdaError):
        return exc
    code = error_code(exc)
    message = _service_message(exc)
    headers = _response(exc).get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}
    fields = {
        "action": action or "talking to S3",
        "resource": resource,
        "bucket": bucket,
        "region": region or "unknown",
        "function": function,
        "code": code,
        "name": type(exc).__name__,
        "exc": str(exc),
        "code_or_name": code or type(exc).__name__,
        "said": f" (AWS said: {message})" if message and not message.startswith("<") else "",
        "bucket_region": headers.get("x-amz-bucket-region") or "another region",
    }
    for rule in _matches(exc):
        if side == "client" and rule.client is not None:
            cls, template = rule.client
            return cls(template.format(**fields))
        if side == "deploy" and rule.deploy is not None:
            return DeployError(rule.deploy.format(**fields))
    raise AssertionError("unreachable: the BaseException row speaks for every side")


@contextmanager
def translated(
    side: Side,
    *,
    action: str,
    resource: str,
    bucket: str = "",
    region: str | None = None,
    function: str = "",
    catch: tuple[type[BaseException], ...] = (Exception,),
) -> Iterator[None]:
    """Run the block; an exception of ``catch`` leaving it is raised as :func:`translate`
    makes it (a dolambda error passes unchanged)."""
    try:
        yield
    except DolambdaError:
        raise
    except catch as exc:
        raise translate(
            exc,
            side,
            action=action,
            resource=resource,
            bucket=bucket,
            region=region,
            function=function,
        ) from exc
