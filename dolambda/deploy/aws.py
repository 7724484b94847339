"""Deploy's AWS session and clients, and its botocore error translation.

Every botocore error raised while deploying becomes a :class:`DeployError` through
the one table in :mod:`dolambda._aws.errors` (see :func:`call`), whose message
names the bucket, function, role or action concerned and says what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dolambda._aws.endpoint import refused
from dolambda._aws.errors import MISSING, kind_of, translated
from dolambda._errors import DeployError
from dolambda.deploy.settings import DeploySettings

# --- AWS clients -------------------------------------------------------------------------


class Clients:
    """boto3 clients (s3, iam, lambda, sts, logs, kms) built from (region, profile, endpoint_url);
    ``session`` (a boto3 session) replaces the profile's (the emulator passes its own)."""

    def __init__(self, settings: DeploySettings, *, session: Any = None) -> None:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

        with translated(
            "deploy",
            action="session",
            resource=f"profile {settings.profile}",
            catch=(BotoCoreError,),
        ):
            if session is None:
                session = boto3.Session(profile_name=settings.profile, region_name=settings.region)
        region = settings.region or session.region_name
        if not region:
            raise DeployError(
                "no AWS region: pass --region (or set AWS_DEFAULT_REGION, or a region in your "
                "AWS profile)"
            )
        self.region: str = region
        down = refused(settings.endpoint_url)
        if down is not None:  # fail now, not after botocore's retries
            raise DeployError(down) from ConnectionRefusedError(settings.endpoint_url)
        config = Config(retries={"max_attempts": 5, "mode": "standard"})
        kw: dict[str, Any] = {"region_name": region, "config": config}
        if settings.endpoint_url:
            kw["endpoint_url"] = settings.endpoint_url
        self.s3: Any = session.client("s3", **kw)
        self.iam: Any = session.client("iam", **kw)
        self.lam: Any = session.client("lambda", **kw)
        self.sts: Any = session.client("sts", **kw)
        self.logs: Any = session.client("logs", **kw)
        self._session, self._kw = session, kw
        self._kms: Any = None
        self._identity: dict[str, Any] | None = None

    @property
    def kms(self) -> Any:
        """KMS, made on first use (only a bucket encrypted with a KMS key needs it)."""
        if self._kms is None:
            self._kms = self._session.client("kms", **self._kw)
        return self._kms

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

    with translated("deploy", action=action, resource=resource, catch=(ClientError, BotoCoreError)):
        try:
            return fn(**kwargs)
        except ClientError as exc:
            if missing and kind_of(exc) in MISSING:
                return None
            raise


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]
