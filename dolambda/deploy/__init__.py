"""``dolambda deploy`` / ``doctor`` / ``destroy``: the AWS setup behind ``LambdaBackend``.

:func:`deploy` is idempotent: it builds the Lambda package, then creates or updates
the bucket (public access blocked, SSE-S3, a lifecycle rule for ``<prefix>/``), the
IAM role with a least-privilege inline policy, the function, its async-invoke and
recursion settings, the S3 invoke permission and the bucket notification (merged
with the bucket's other notifications), and writes the client config. Each step
reports one :class:`Change`. :func:`doctor` checks the same pieces, :func:`destroy`
removes what deploy made. The click commands ``deploy_command``, ``doctor_command``
and ``destroy_command`` wrap them for ``dolambda``'s CLI.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dolambda._config import ClientConfig, config_path, load_config, save_config
from dolambda._errors import DeployError, DolambdaError
from dolambda.deploy.aws import (
    LAMBDA_PYTHONS,
    Clients,
    DeploySettings,
    python_version,
    runtime_for,
)
from dolambda.deploy.bucket import (
    Change,
    ensure_bucket,
    ensure_encryption,
    ensure_lifecycle,
    ensure_notification,
    ensure_public_access_block,
)
from dolambda.deploy.destroy import destroy
from dolambda.deploy.doctor import CheckResult, doctor
from dolambda.deploy.package import DIRECT_UPLOAD_LIMIT, Package, build_package
from dolambda.deploy.steps import (
    ensure_event_invoke_config,
    ensure_function,
    ensure_permission,
    ensure_recursion_config,
    ensure_role,
    ensure_role_policy,
    get_function,
    signing_key,
)

__all__ = [
    "LAMBDA_PYTHONS",
    "Change",
    "CheckResult",
    "DeployError",
    "DeploySettings",
    "Package",
    "build_package",
    "deploy",
    "deploy_command",
    "destroy",
    "destroy_command",
    "doctor",
    "doctor_command",
    "settings_from_config",
]

Echo = Callable[[str], None]


def deploy(
    settings: DeploySettings,
    *,
    package: Package | None = None,
    dependencies: bool = True,
    python: str | None = None,
    cache: Path | None = None,
    upload_limit: int = DIRECT_UPLOAD_LIMIT,
    echo: Echo | None = None,
) -> list[Change]:
    """Create or update everything ``settings`` describes; returns (and echoes) one line each.

    ``package`` skips the build (a prebuilt zip); ``dependencies=False`` builds a zip
    with dolambda's own files only; ``python`` overrides the client's minor version
    (the runtime is ``python<python>``); zips over ``upload_limit`` bytes go via S3.
    """
    settings.validate()
    version = python or python_version()
    runtime = runtime_for(version)
    s = settings
    c = Clients(s)
    c.identity()
    changes: list[Change] = []

    def step(change: Change) -> None:
        changes.append(change)
        if echo is not None:
            echo(str(change))

    built = package is None
    if package is None:
        package = build_package(
            architecture=s.architecture,
            python=version,
            requirements=s.requirements,
            dependencies=dependencies,
            cache=cache,
        )
    size = f"{package.size / 1e6:.1f} MB zipped, {package.unzipped_size / 1e6:.1f} MB unzipped"
    fresh = built and not package.cached
    note = "" if fresh else (" (cached)" if built else " (prebuilt)")
    step(Change("created" if fresh else "unchanged", f"package {package.path.name}", size + note))
    step(ensure_bucket(s, c))
    step(ensure_public_access_block(s, c))
    step(ensure_encryption(s, c))
    step(ensure_lifecycle(s, c))
    role_change, role_arn = ensure_role(s, c)
    step(role_change)
    step(ensure_role_policy(s, c))
    existing = get_function(s, c)
    key = signing_key(s, existing)
    fn_change, function_arn = ensure_function(
        s,
        c,
        package=package,
        runtime=runtime,
        role_arn=role_arn,
        key=key,
        existing=existing,
        upload_limit=upload_limit,
    )
    step(fn_change)
    step(ensure_event_invoke_config(s, c))
    step(ensure_recursion_config(s, c))
    step(ensure_permission(s, c))
    step(ensure_notification(s, c, function_arn))
    step(_write_config(s, c, key))
    return changes


def _write_config(s: DeploySettings, c: Clients, key: str) -> Change:
    new = ClientConfig(
        bucket=s.bucket,
        function_name=s.function_name,
        region=c.region,
        prefix=s.clean_prefix,
        signing_key=key,
        endpoint_url=s.endpoint_url,
        profile=s.profile,
        memory_mb=s.memory_mb,
        timeout=s.timeout,
        architecture=s.architecture,
    )
    try:
        old = load_config()
    except DolambdaError:
        old = None
    if old is not None and old.model_dump() == new.model_dump():
        return Change("unchanged", f"client config {config_path()}")
    path = save_config(new)
    return Change("created" if old is None else "updated", f"client config {path}")


def settings_from_config(**options: Any) -> DeploySettings:
    """Settings from the given options, the missing ones from the client config file."""
    given = {k: v for k, v in options.items() if v is not None}
    config = load_config()
    if "bucket" not in given:
        if config is None:
            raise DeployError("no bucket: pass --bucket, or run `dolambda deploy --bucket NAME`")
        given["bucket"] = config.bucket
    if config is not None and config.bucket == given["bucket"]:
        for field, name in (
            ("function_name", "function_name"),
            ("region", "region"),
            ("profile", "profile"),
            ("prefix", "prefix"),
            ("endpoint_url", "endpoint_url"),
            ("memory_mb", "memory_mb"),
            ("timeout", "timeout"),
            ("architecture", "architecture"),
        ):
            value = getattr(config, name)
            if field not in given and value is not None:
                given[field] = value
    return DeploySettings(**given)


# --- click commands -------------------------------------------------------------------


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--endpoint-url", default=None, help="S3/IAM/Lambda/STS endpoint (moto...)."),
        click.option("--prefix", default=None, help="Key prefix in the bucket [dolambda]."),
        click.option("--profile", default=None, help="AWS profile."),
        click.option("--region", default=None, help="AWS region [the profile's]."),
        click.option(
            "--function", "function_name", default=None, help="Lambda function name [dolambda]."
        ),
    ]
    for option in options:
        fn = option(fn)
    return fn


def _fail(exc: DolambdaError) -> click.ClickException:
    return click.ClickException(str(exc))


@click.command("deploy")
@click.option("--bucket", required=True, help="S3 bucket used as the job queue.")
@_common
@click.option(
    "--memory",
    "memory_mb",
    type=int,
    default=1024,
    show_default=True,
    help="Function memory, MB (128-10240).",
)
@click.option(
    "--timeout", type=int, default=900, show_default=True, help="Function timeout, seconds (1-900)."
)
@click.option(
    "--arch",
    "architecture",
    type=click.Choice(["x86_64", "arm64"]),
    default="x86_64",
    show_default=True,
    help="Function architecture.",
)
@click.option(
    "--requirements",
    type=click.Path(path_type=Path),
    default=None,
    help="Extra requirements file to package for the worker.",
)
@click.option(
    "--expire-days",
    type=int,
    default=7,
    show_default=True,
    help="Delete objects under the prefix after this many days.",
)
@click.option(
    "--rotate-key",
    is_flag=True,
    default=False,
    help="Replace the signing key in the function and the client config together.",
)
def deploy_command(**options: Any) -> None:
    """Create or update the Lambda function, role, bucket and trigger (idempotent).

    \b
    Example:
      dolambda deploy --bucket my-dolambda-queue --region eu-west-1 --memory 2048
      dolambda deploy --bucket my-dolambda-queue --rotate-key   # new signing key
    """
    options = {k: v for k, v in options.items() if v is not None}
    try:
        deploy(DeploySettings(**options), echo=click.echo)
    except DolambdaError as exc:
        raise _fail(exc) from exc


ROUND_TRIP_TIMEOUT = 45.0


def _default_round_trip(settings: DeploySettings) -> Callable[[], None]:
    def run() -> None:
        dolambda: Any = importlib.import_module("dolambda")
        backend_cls = getattr(dolambda, "LambdaBackend", None)
        if backend_cls is None:
            backend_cls = importlib.import_module("dolambda._backends.lambda_").LambdaBackend
        backend = backend_cls(
            bucket=settings.bucket,
            function_name=settings.function_name,
            region=settings.region,
            profile=settings.profile,
            endpoint_url=settings.endpoint_url,
            prefix=settings.clean_prefix,
            # a tiny job: if nothing answers within a minute the trigger is broken
            task_timeout=ROUND_TRIP_TIMEOUT,
            retries=0,
        )
        loop = dolambda.foreach(x=range(3)).errorhandling("pass")
        got = loop.do_lambda(lambda x: x * x, backend=backend, progress=False)
        errors = [g for g in got if isinstance(g, BaseException)]
        if errors:
            raise DeployError(
                f"the tiny job failed: {errors[0]}. If no result came back within "
                f"{ROUND_TRIP_TIMEOUT:.0f} s, the function is not being triggered or fails "
                "before writing results: check its CloudWatch logs"
            )
        if sum(got) != 5:
            raise DeployError(f"the job returned {got!r} instead of [0, 1, 4]")

    return run


def make_doctor_command(
    round_trip_factory: Callable[[DeploySettings], Callable[[], None]] | None = _default_round_trip,
) -> click.Command:
    """A ``doctor`` command whose round trip (when enabled) comes from ``round_trip_factory``."""

    @click.command("doctor")
    @click.option("--bucket", default=None, help="S3 bucket [from the client config].")
    @_common
    @click.option(
        "--round-trip/--no-round-trip",
        default=True,
        show_default=True,
        help="Run one tiny job on the function.",
    )
    def doctor_cmd(round_trip: bool, **options: Any) -> None:
        """Check every piece of the deployed setup; exits non-zero if anything is wrong.

        \b
        Example:
          dolambda doctor                       # the setup in the client config
          dolambda doctor --bucket my-dolambda-queue --no-round-trip
        """
        try:
            settings = settings_from_config(**options)
            hook = round_trip_factory(settings) if round_trip and round_trip_factory else None
            results = doctor(settings, round_trip=hook)
        except DolambdaError as exc:
            raise _fail(exc) from exc
        for result in results:
            click.echo(str(result))
        if not all(r.ok for r in results):
            raise SystemExit(1)

    return doctor_cmd


doctor_command = make_doctor_command()


@click.command("destroy")
@click.option("--bucket", default=None, help="S3 bucket [from the client config].")
@_common
@click.option("--delete-bucket", is_flag=True, help="Also delete the bucket and ALL its objects.")
def destroy_command(delete_bucket: bool, **options: Any) -> None:
    """Remove what `dolambda deploy` created; the bucket and others' objects stay.

    \b
    Example:
      dolambda destroy --bucket my-dolambda-queue
      dolambda destroy --bucket my-dolambda-queue --delete-bucket
    """
    try:
        destroy(settings_from_config(**options), delete_bucket=delete_bucket, echo=click.echo)
    except DolambdaError as exc:
        raise _fail(exc) from exc
