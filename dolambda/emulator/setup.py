"""The emulator's AWS side, set up by deploy's own code: what ``dolambda deploy`` makes.

On the emulator's moto server, :func:`ensure_all` runs deploy's steps
(:mod:`dolambda.deploy`) with the emulator's settings: the bucket (public access
blocked, encrypted, the lifecycle rule), the role and its least-privilege policy
(:func:`dolambda.deploy.role.role_policy`, exactly), the function (deploy's
handler, runtime, environment and signing key; the emulator's timeout and memory),
its async-invoke config, the S3 invoke permission and the bucket notification. So
``dolambda doctor --endpoint-url <emulator>`` checks the very setup deploy makes,
and ``dolambda deploy --endpoint-url <emulator>`` finds nothing to change
(:mod:`dolambda.deploy.emulated`: it adopts the emulator's function).

The function's code in moto is a small placeholder zip: the emulator's workers run the
function's package built for this machine (:func:`dolambda.deploy.package.build_task_root`),
not what moto holds. The function is tagged :data:`~dolambda.deploy.emulated.EMULATOR_TAG`
(its value: the trigger) so that deploy can tell it is an emulator's.

The workers act as the role: :func:`ensure_all` returns credentials that moto's STS
issued for it (``AssumeRole``, as Lambda does for each execution environment), and the
server authorizes the S3 requests signed with them against the role's policy
(:mod:`dolambda.emulator.moto.authorize`).

A plain S3 server (``discovery="poll"``) has no IAM or Lambda: only
:func:`ensure_bucket` runs there, and the workers use the client's credentials.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import os
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from dolambda._aws.errors import Kind, kind_of
from dolambda.deploy import bucket as _bucket
from dolambda.deploy import function as _function
from dolambda.deploy import role as _role
from dolambda.deploy.aws import Clients
from dolambda.deploy.emulated import EMULATOR_TAG
from dolambda.deploy.package import Package, cache_dir, python_version, runtime_for
from dolambda.deploy.settings import MEMORY_RANGE, TIMEOUT_RANGE, DeploySettings
from dolambda.emulator.config import EmulatorConfig
from dolambda.emulator.sandbox import Credentials

PLACEHOLDER = (
    "# placeholder: the dolambda emulator runs the function's package it builds for this\n"
    "# machine (dolambda.deploy.package.build_task_root), not this file\n"
    "def lambda_handler(event, context):\n    return None\n"
)


def session(region: str) -> Any:
    """A boto3 session for the emulator's own calls (any credentials work on its server)."""
    import boto3  # here, not at the top: worker processes import this package and need none

    return boto3.session.Session(
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        region_name=region,
    )


def ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    """The bucket alone, on a plain S3 server (``discovery="poll"``)."""
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except Exception as exc:
        if kind_of(exc) not in (Kind.NOT_FOUND, Kind.NO_SUCH_BUCKET):
            raise
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except Exception as exc:
        if kind_of(exc) not in (Kind.BUCKET_OWNED, Kind.BUCKET_TAKEN):
            raise


def deploy_settings(config: EmulatorConfig, endpoint_url: str) -> DeploySettings:
    """What ``dolambda deploy`` would be asked for to make this emulator's function.

    Lambda's ranges bound the recorded timeout and memory (a test emulator may use a
    0.5 s timeout: the emulator enforces its own exactly; moto records 1 s).
    """
    return DeploySettings(
        bucket=config.bucket,
        function_name=config.function_name,
        region=config.region,
        prefix=config.prefix,
        endpoint_url=endpoint_url,
        memory_mb=min(max(config.memory_mb, MEMORY_RANGE[0]), MEMORY_RANGE[1]),
        memory_tiers=config.memory_tiers,
        timeout=min(max(math.ceil(config.timeout), TIMEOUT_RANGE[0]), TIMEOUT_RANGE[1]),
    )


def placeholder_package() -> Package:
    """The small zip moto holds as the function's code (deterministic: same CodeSha256)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("handler/lambda_function.py", (1980, 1, 1, 0, 0, 0))
        zf.writestr(info, PLACEHOLDER)
    data = buf.getvalue()
    digest = hashlib.sha256(data).digest()
    path = cache_dir() / f"emulator-placeholder-{digest.hex()[:16]}.zip"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        partial.write_bytes(data)
        os.replace(partial, path)
    return Package(
        path=Path(path),
        code_sha256=base64.b64encode(digest).decode(),
        size=len(data),
        unzipped_size=len(PLACEHOLDER),
        cached=True,
    )


def ensure_all(session: Any, endpoint_url: str, config: EmulatorConfig) -> tuple[str, Credentials]:
    """Deploy's setup for this emulator's function; its ARN and the role's credentials."""
    s = deploy_settings(config, endpoint_url)
    c = Clients(s, session=session)
    _bucket.ensure_bucket(s, c)
    _bucket.ensure_public_access_block(s, c)
    _bucket.ensure_encryption(s, c)
    _bucket.ensure_lifecycle(s, c)
    _, role_arn = _role.ensure_role(s, c)
    _role.ensure_role_policy(s, c)
    _, arn = _function.ensure_function(
        s,
        c,
        package=placeholder_package(),
        runtime=runtime_for(python_version()),
        role_arn=role_arn,
        key=config.signing_key,
        existing=_function.get_function(s, c),
    )
    c.lam.tag_resource(Resource=arn, Tags={EMULATOR_TAG: config.trigger})
    _function.ensure_event_invoke_config(s, c)
    # the tiers asked for, else those the function has (deployed before the emulator took
    # it over: they are published again from its code, so an alias runs what $LATEST runs)
    tiers = config.memory_tiers or tuple(_function.tier_aliases(s, c))
    if tiers:
        _function.ensure_memory_tiers(replace(s, memory_tiers=tiers), c)
    put_async_rules(c, config)
    _function.ensure_permission(s, c)
    if config.trigger == "s3":
        _bucket.ensure_notification(s, c, arn)
    return arn, assume_role(c, role_arn, config.function_name)


def put_async_rules(c: Clients, config: EmulatorConfig) -> None:
    """The emulator's ``retries``/``max_event_age``/``on_failure`` as the function's
    event-invoke config (deploy's, unless a test asks for others): the dispatcher reads
    the rules from the function, as Lambda applies them (:func:`async_rules_reader`)."""
    want: dict[str, Any] = {
        "MaximumRetryAttempts": config.retries,
        "MaximumEventAgeInSeconds": int(config.max_event_age),
    }
    if config.on_failure is not None:
        want["DestinationConfig"] = {
            "OnFailure": {"Destination": f"arn:aws:s3:::{config.on_failure}"}
        }
    c.lam.put_function_event_invoke_config(FunctionName=config.function_name, **want)


def async_rules_reader(session: Any, endpoint_url: str, config: EmulatorConfig) -> Any:
    """A callable that reads the function's event-invoke config (``GetFunctionEventInvokeConfig``)
    as the dispatcher's rules; no config: Lambda's defaults."""
    from dolambda.emulator.dispatch import rules_of

    lam = session.client("lambda", endpoint_url=endpoint_url)

    def read() -> Any:
        try:
            got = lam.get_function_event_invoke_config(FunctionName=config.function_name)
        except Exception as exc:
            if kind_of(exc) not in (Kind.NOT_FOUND,):
                raise
            got = None
        return rules_of(got)

    return read


def assume_role(c: Clients, role_arn: str, function_name: str) -> Credentials:
    """The role's temporary credentials from STS, as Lambda takes them for the function's
    environments (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``)."""
    # Lambda names the session after the function (STS wants 2 to 64 characters)
    name = function_name[:64] if len(function_name) >= 2 else f"{function_name}-function"
    got = c.sts.assume_role(RoleArn=role_arn, RoleSessionName=name)
    creds = got["Credentials"]
    return Credentials(
        access_key_id=str(creds["AccessKeyId"]),
        secret_access_key=str(creds["SecretAccessKey"]),
        session_token=str(creds["SessionToken"]),
    )
