"""Deploy's AWS session and clients, and its botocore error translation.

:class:`Clients` holds the boto3 clients for one (region, profile, endpoint). Every
botocore error raised while deploying is translated here, in :func:`translate`,
into a :class:`DeployError` (or :class:`~dolambda._errors.InvalidArgument`) whose
message names the bucket, function, role or action concerned and says what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dolambda._errors import DeployError
from dolambda.deploy.settings import DeploySettings

_NOT_FOUND = {
    "404",
    "NoSuchBucket",
    "NoSuchEntity",
    "NoSuchKey",
    "NotFound",
    "ResourceNotFoundException",
    "NoSuchLifecycleConfiguration",
    "NoSuchPublicAccessBlockConfiguration",
    "ServerSideEncryptionConfigurationNotFoundError",
}
_DENIED = {
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "AuthorizationError",
    "Forbidden",
    "403",
}
_BAD_CREDENTIALS = {
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
}


# --- AWS clients -------------------------------------------------------------------------


class Clients:
    """boto3 clients for s3, iam, lambda and sts built from (region, profile, endpoint_url)."""

    def __init__(self, settings: DeploySettings) -> None:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

        try:
            session = boto3.Session(profile_name=settings.profile, region_name=settings.region)
        except BotoCoreError as exc:
            raise translate(exc, "session", f"profile {settings.profile}") from exc
        region = settings.region or session.region_name
        if not region:
            raise DeployError(
                "no AWS region: pass --region (or set AWS_REGION / a region in your AWS profile)"
            )
        self.region: str = region
        config = Config(retries={"max_attempts": 5, "mode": "standard"})
        kw: dict[str, Any] = {"region_name": region, "config": config}
        if settings.endpoint_url:
            kw["endpoint_url"] = settings.endpoint_url
        self.s3: Any = session.client("s3", **kw)
        self.iam: Any = session.client("iam", **kw)
        self.lam: Any = session.client("lambda", **kw)
        self.sts: Any = session.client("sts", **kw)
        self._identity: dict[str, Any] | None = None

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            self._identity = call(
                "sts:GetCallerIdentity", "your AWS credentials", self.sts.get_caller_identity
            )
        return self._identity

    @property
    def account(self) -> str:
        return str(self.identity()["Account"])

    @property
    def partition(self) -> str:
        arn = str(self.identity().get("Arn", "arn:aws:"))
        return arn.split(":")[1] if arn.count(":") >= 2 else "aws"


def code_of(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _status_of(exc: BaseException) -> int:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def is_not_found(exc: BaseException) -> bool:
    return code_of(exc) in _NOT_FOUND


def call(
    action: str,
    resource: str,
    fn: Callable[..., Any],
    /,
    *,
    missing: bool = False,
    **kwargs: Any,
) -> Any:
    """``fn(**kwargs)``, with errors translated; with ``missing``, None when it does not exist."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except ClientError as exc:
        if missing and is_not_found(exc):
            return None
        raise translate(exc, action, resource) from exc
    except BotoCoreError as exc:
        raise translate(exc, action, resource) from exc


def translate(exc: BaseException, action: str, resource: str) -> DeployError:
    """The one place where botocore errors become messages a person can act on."""
    from botocore import exceptions as bce

    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return DeployError(
            "no AWS credentials found: run `aws configure`, set AWS_PROFILE, or pass --profile"
        )
    if isinstance(exc, bce.ProfileNotFound):
        return DeployError(f"{resource} does not exist in your AWS config files")
    if isinstance(exc, bce.NoRegionError):
        return DeployError("no AWS region: pass --region (or set AWS_REGION)")
    if isinstance(exc, bce.EndpointConnectionError):
        return DeployError(f"cannot reach the AWS endpoint for {action} ({exc})")
    if not isinstance(exc, bce.ClientError):
        return DeployError(f"{action} on {resource} failed: {exc}")
    code = code_of(exc)
    message = str(exc.response.get("Error", {}).get("Message", "") or "").strip()
    said = f" (AWS said: {message})" if message and not message.startswith("<") else ""
    status = _status_of(exc)
    if code in ("301", "PermanentRedirect", "AuthorizationHeaderMalformed") or status == 301:
        headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        where = headers.get("x-amz-bucket-region") or "another region"
        return DeployError(
            f"{resource} is in {where}, not the region you asked for: pass --region {where}"
        )
    if code in _BAD_CREDENTIALS:
        return DeployError(f"your AWS credentials were rejected ({code}){said}: refresh them")
    if code in _DENIED or (status == 403 and action.startswith("s3:")):
        return DeployError(
            f"access denied: your credentials may not perform {action} on {resource}{said}. "
            f"Grant {action} to the identity running dolambda, or use another --profile"
        )
    if code == "BucketAlreadyExists":
        return DeployError(
            f"{resource} already exists and belongs to another AWS account: bucket names are "
            "global, choose another --bucket"
        )
    if code == "InvalidBucketName":
        return DeployError(f"{resource} is not a valid S3 bucket name{said}")
    if "Runtime" in message or "runtime" in message:
        return DeployError(f"Lambda refused the runtime for {resource}{said}")
    if code in ("TooManyRequestsException", "Throttling", "ThrottlingException", "SlowDown"):
        return DeployError(f"AWS throttled {action} on {resource}; wait a minute and retry")
    if "overlap" in message.lower():
        return DeployError(
            f"{resource}: another notification already covers the keys dolambda needs{said}; "
            "remove or narrow it, then deploy again"
        )
    return DeployError(f"{action} on {resource} failed: {code or type(exc).__name__}{said}")


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]
