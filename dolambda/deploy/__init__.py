"""``dolambda deploy`` / ``doctor`` / ``destroy``: the AWS setup behind ``LambdaBackend``.

:func:`deploy` is idempotent: it builds the Lambda package, then creates or updates
the bucket (public access blocked, SSE-S3, a lifecycle rule for ``<prefix>/``), the
IAM role with a least-privilege inline policy, the function, its async-invoke and
recursion settings, the S3 invoke permission and the bucket notification (merged
with the bucket's other notifications), and writes the client config. Each step
reports one :class:`Change`. :func:`doctor` checks the same pieces, :func:`destroy`
removes what deploy made. The ``dolambda`` commands that wrap them are in
:mod:`dolambda.cli`.

The rooms: :mod:`~dolambda.deploy.settings` (what is asked, the client config),
:mod:`~dolambda.deploy.package` (the zip and the Lambda platform),
:mod:`~dolambda.deploy.bucket`, :mod:`~dolambda.deploy.role` (IAM),
:mod:`~dolambda.deploy.function` (the function, its async-invoke config and invoke
permission), :mod:`~dolambda.deploy.emulated` (deploying onto a running emulator),
:mod:`~dolambda.deploy.doctor`, :mod:`~dolambda.deploy.destroy`, and
:mod:`~dolambda.deploy.aws` (clients, botocore errors). Key names, the trigger
filter and the policy's S3 resources come from :mod:`dolambda._wire.keys`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dolambda._errors import DeployError
from dolambda.deploy.aws import Clients
from dolambda.deploy.bucket import (
    ensure_bucket,
    ensure_encryption,
    ensure_lifecycle,
    ensure_notification,
    ensure_public_access_block,
)
from dolambda.deploy.destroy import destroy
from dolambda.deploy.doctor import CheckResult, doctor
from dolambda.deploy.emulated import adopt, emulator_function, unserved_note
from dolambda.deploy.function import (
    ensure_event_invoke_config,
    ensure_function,
    ensure_memory_tiers,
    ensure_permission,
    ensure_recursion_config,
    get_function,
    signing_key,
)
from dolambda.deploy.package import (
    DIRECT_UPLOAD_LIMIT,
    LAMBDA_PYTHONS,
    Package,
    build_package,
    ensure_package_record,
    python_version,
    runtime_for,
)
from dolambda.deploy.role import ensure_role, ensure_role_policy
from dolambda.deploy.settings import (
    Change,
    DeploySettings,
    settings_from_config,
    write_client_config,
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
    "destroy",
    "doctor",
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
    rebuild: bool = False,
    echo: Echo | None = None,
) -> list[Change]:
    """Create or update everything ``settings`` describes; returns (and echoes) one line each.

    ``package`` skips the build (a prebuilt zip); ``dependencies=False`` builds a zip
    with dolambda's own files only; ``python`` overrides the client's minor version
    (the runtime is ``python<python>``); zips over ``upload_limit`` bytes go via S3.
    On a running emulator's function (``endpoint_url`` of a ``dolambda emulator``) nothing
    is built and the emulator's settings are kept (:mod:`dolambda.deploy.emulated`).
    ``rebuild`` builds the package even when the cache has it.
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

    emulated = emulator_function(s, c, get_function(s, c) if s.endpoint_url else None)
    if emulated is not None:  # a running emulator's function: leave it as it is
        s, package, kept = adopt(s, emulated)
        for line in kept:
            step(line)
    else:
        unserved = unserved_note(s)
        if unserved is not None:
            step(unserved)
        built = package is None
        if package is None:
            package = build_package(
                architecture=s.architecture,
                python=version,
                requirements=s.requirements,
                dependencies=dependencies,
                cache=cache,
                rebuild=rebuild,
            )
        size = f"{package.size / 1e6:.1f} MB zipped, {package.unzipped_size / 1e6:.1f} MB unzipped"
        fresh = built and not package.cached
        note = "" if fresh else (" (cached)" if built else " (prebuilt)")
        step(
            Change("created" if fresh else "unchanged", f"package {package.path.name}", size + note)
        )
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
    step(ensure_package_record(s, c, package))
    step(ensure_event_invoke_config(s, c))
    step(ensure_memory_tiers(s, c))
    step(ensure_recursion_config(s, c))
    step(ensure_permission(s, c))
    step(ensure_notification(s, c, function_arn))
    step(write_client_config(s, region=c.region, key=key))
    return changes
