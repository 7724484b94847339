"""The ``dolambda`` command: every subcommand, one set of AWS options, one error style.

``demo`` and ``emulator`` run the local Lambda emulator; ``deploy``, ``doctor`` and
``destroy`` wrap :mod:`dolambda.deploy`; ``jobs`` and ``cleanup`` look into a queue
bucket. The commands that talk to AWS take the same options (:func:`aws_options`:
``--bucket``, ``--function``, ``--region``, ``--profile``, ``--prefix``,
``--endpoint-url``), and a :class:`~dolambda._errors.DolambdaError` from any command
ends it with click's one-line ``Error: ...`` and exit status 1.
"""

from __future__ import annotations

import datetime
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dolambda import _sync
from dolambda._errors import DeployError, DolambdaError
from dolambda.deploy import DeploySettings, deploy, destroy, doctor, settings_from_config

F = Callable[..., Any]


def aws_options(*, bucket_required: bool = False) -> Callable[[F], F]:
    """The AWS options every command that talks to AWS takes, in one place."""
    bucket_help = (
        "S3 bucket used as the job queue."
        if bucket_required
        else "S3 bucket used as the job queue [from the client config]."
    )
    options = [
        click.option("--bucket", required=bucket_required, default=None, help=bucket_help),
        click.option(
            "--function", "function_name", default=None, help="Lambda function name [dolambda]."
        ),
        click.option("--region", default=None, help="AWS region [the profile's / the config's]."),
        click.option("--profile", default=None, help="AWS profile."),
        click.option("--prefix", default=None, help="Key prefix in the bucket [dolambda]."),
        click.option(
            "--endpoint-url",
            default=None,
            help="S3/IAM/Lambda/STS endpoint (e.g. the local emulator or moto).",
        ),
    ]

    def decorate(fn: F) -> F:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


# The library's errors speak the Python API's words; on the command line the same
# setting is an option: (pattern, replacement), applied in order
_CLI_WORDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^LambdaBackend: "), ""),
    (re.compile(r" to LambdaBackend\b"), ""),
    (re.compile(r"\bfunction_name=(?:\.\.\.)?"), "--function"),
    (
        re.compile(r"\b(bucket|region|profile|prefix|signing_key|endpoint_url)=(?:\.\.\.)?"),
        "--\\1",
    ),
    (re.compile(r"\bendpoint_url must\b"), "--endpoint-url must"),
    (re.compile(r"--(signing|endpoint)_(key|url)"), "--\\1-\\2"),
)


def cli_words(message: str) -> str:
    """``message`` (an error of the Python API) in the command line's words:
    ``pass region= to LambdaBackend`` becomes ``pass --region``.

    >>> cli_words("no AWS region: set AWS_DEFAULT_REGION, or pass region= to LambdaBackend")
    'no AWS region: set AWS_DEFAULT_REGION, or pass --region'
    >>> cli_words("LambdaBackend: no signing key; pass signing_key=, set DOLAMBDA_SIGNING_KEY")
    'no signing key; pass --signing-key, set DOLAMBDA_SIGNING_KEY'
    """
    for pattern, replacement in _CLI_WORDS:
        message = pattern.sub(replacement, message)
    return message


class Command(click.Command):
    """A ``dolambda`` command: a dolambda error ends it with one line (``Error: ...``),
    in the command line's words (:func:`cli_words`)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DolambdaError as exc:
            raise click.ClickException(cli_words(str(exc))) from exc


class _Group(click.Group):
    command_class = Command


def _backend(**options: Any) -> Any:
    # imported on use, not at the top: `dolambda --help` need not load aioboto3
    from dolambda._backends.lambda_ import LambdaBackend

    return LambdaBackend(**{k: v for k, v in options.items() if v is not None})


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dolambda")
def main() -> None:
    """dolambda: R's foreach for Python, with AWS Lambda (S3 as the job queue) as a backend.

    \b
    Example:
      dolambda demo                      # a real job on the local Lambda emulator
      dolambda deploy --bucket my-queue  # set up AWS in one command
    """


# --- the local emulator -----------------------------------------------------------------


@main.command()
@click.option("--aws", is_flag=True, help="run on the deployed function instead of the emulator")
@click.option("--workers", default=2, show_default=True, help="emulator concurrency")
@click.option("--iterations", default=200, show_default=True)
@click.option("--samples", default=100_000, show_default=True)
def demo(aws: bool, workers: int, iterations: int, samples: int) -> None:
    """Estimate pi with a seeded Monte Carlo job on the local Lambda emulator.

    \b
    Example:
      dolambda demo
      dolambda demo --aws      # after `dolambda deploy`
    """
    from dolambda import emulator  # imported on use (as _backend)
    from dolambda._demo import run_demo

    if aws:
        run_demo(_backend(), iterations, samples)
        return
    with emulator.start(workers=workers) as backend:
        run_demo(backend, iterations, samples)


@main.command("emulator")
@click.option("--workers", default=2, show_default=True, help="function concurrency")
@click.option("--bucket", default="dolambda-emulator", show_default=True)
@click.option("--timeout", default=60.0, show_default=True, help="function timeout, seconds")
@click.option("--memory", default=1024, show_default=True, help="memory limit, MB")
@click.option(
    "--memory-tiers",
    default="none",
    show_default=True,
    metavar="MB,MB,...",
    help="larger memory tiers (aliases mem-<MB>), as deploy --memory-tiers publishes them",
)
@click.option("--endpoint-url", help="use this S3 server instead of starting moto")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="port of its S3 server on 127.0.0.1 [4599, or a free one when taken]",
)
@click.option(
    "--signing-key",
    default=None,
    help="HMAC key (hex) [one kept in the dolambda config dir, the same at every start]",
)
@click.option(
    "--requirement",
    "requirements",
    multiple=True,
    metavar="NAME",
    help="an installed distribution the function's package holds too (repeatable), as "
    "deploy --requirements adds it on AWS",
)
def emulator_command(
    workers: int,
    bucket: str,
    timeout: float,
    memory: int,
    memory_tiers: str,
    endpoint_url: str | None,
    port: int | None,
    signing_key: str | None,
    requirements: tuple[str, ...],
) -> None:
    """Run the local Lambda emulator (moto S3 + the function's package under AWS's Lambda
    runtime client, in isolated processes) until Ctrl-C.

    While it runs, its client config (emulator.json in the dolambda config dir) lets
    LambdaBackend() and every dolambda command find it: by default when no setup is
    deployed, else with DOLAMBDA_PROFILE=emulator.

    \b
    Example:
      dolambda emulator --workers 4 --requirement pandas
      # elsewhere: dolambda jobs; or in Python: LambdaBackend()
    """
    from dolambda import emulator  # imported on use (as _backend)

    emulator.serve(
        workers=workers,
        bucket=bucket,
        timeout=timeout,
        memory_mb=memory,
        memory_tiers=parse_tiers(memory_tiers),
        endpoint_url=endpoint_url,
        requirements=requirements,
        port=port,
        signing_key=signing_key,
        echo=click.echo,
    )


# --- the AWS setup ----------------------------------------------------------------------


@main.command("deploy")
@aws_options(bucket_required=True)
@click.option(
    "--memory",
    "memory_mb",
    type=int,
    default=1024,
    show_default=True,
    help="Function memory, MB (128-10240).",
)
@click.option(
    "--memory-tiers",
    "memory_tiers",
    default=None,
    metavar="MB,MB,...",
    help="Larger memory sizes a task that ran out of memory moves up to, each a published "
    "version behind the alias mem-<MB> (default: 2048,4096,10240 above --memory; 'none': "
    "no tiers).",
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
    "--rebuild",
    is_flag=True,
    default=False,
    help="Build the package even when the build cache has one for the same requirements.",
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
    rebuild = bool(options.pop("rebuild", False))
    if options.get("memory_tiers") is not None:
        options["memory_tiers"] = parse_tiers(str(options["memory_tiers"]))
    options = {k: v for k, v in options.items() if v is not None}
    deploy(DeploySettings(**options), rebuild=rebuild, echo=click.echo)


def parse_tiers(text: str) -> tuple[int, ...]:
    """``--memory-tiers``: comma-separated MB sizes, or ``none``.

    >>> parse_tiers("4096, 2048"), parse_tiers("none")
    ((4096, 2048), ())
    """
    if text.strip().lower() in ("none", ""):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: give MB sizes separated by commas (e.g. 2048,4096,10240) or 'none'",
            param_hint="--memory-tiers",
        ) from None


ROUND_TRIP_TIMEOUT = 45.0


def round_trip_job(settings: DeploySettings) -> Callable[[], None]:
    """``doctor``'s round trip: a tiny job on the deployed function."""

    def run() -> None:
        from dolambda._loop import foreach  # imported on use (as _backend)

        backend = _backend(
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
        loop = foreach(x=range(3)).errorhandling("pass")
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
    round_trip_factory: Callable[[DeploySettings], Callable[[], None]] = round_trip_job,
) -> click.Command:
    """A ``doctor`` command whose round trip (when enabled) comes from ``round_trip_factory``."""

    @click.command("doctor", cls=Command)
    @aws_options()
    @click.option(
        "--round-trip/--no-round-trip",
        default=True,
        show_default=True,
        help="Run one tiny job on the function.",
    )
    def doctor_command(round_trip: bool, **options: Any) -> None:
        """Check every piece of the deployed setup; exits non-zero if anything is wrong.

        \b
        Example:
          dolambda doctor                       # the setup in the client config
          dolambda doctor --bucket my-dolambda-queue --no-round-trip
        """
        settings = settings_from_config(**options)
        results = doctor(settings, round_trip=round_trip_factory(settings) if round_trip else None)
        for result in results:
            click.echo(cli_words(str(result)))
        if not all(r.ok for r in results):
            raise SystemExit(1)

    return doctor_command


main.add_command(make_doctor_command())


def _interactive() -> bool:
    """Whether a person can answer a question on this terminal."""
    return sys.stdin.isatty()


@main.command("destroy")
@aws_options()
@click.option("--delete-bucket", is_flag=True, help="Also delete the bucket and ALL its objects.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (for scripts).")
def destroy_command(delete_bucket: bool, yes: bool, **options: Any) -> None:
    """Remove what `dolambda deploy` created; the bucket and others' objects stay.

    Asks before it deletes anything when run on a terminal; elsewhere (scripts, CI)
    it needs --yes, as terraform, sam and apt do.

    \b
    Example:
      dolambda destroy --bucket my-dolambda-queue
      dolambda destroy --bucket my-dolambda-queue --delete-bucket --yes
    """
    settings = settings_from_config(**options)
    what = (
        f"the bucket {settings.bucket} with EVERY object in it"
        if delete_bucket
        else f"the function {settings.function_name}, its role, its log group and the "
        f"objects under s3://{settings.bucket}/{settings.root}"
    )
    if not yes:
        if not _interactive():
            raise click.UsageError(
                f"destroy would delete {what}; pass --yes to confirm (no terminal to ask on)"
            )
        click.confirm(f"Delete {what}?", abort=True)
    destroy(settings, delete_bucket=delete_bucket, echo=click.echo)


# --- the queue bucket -------------------------------------------------------------------


signing_key_option = click.option(
    "--signing-key",
    default=None,
    help="HMAC key (hex) the jobs are signed with [DOLAMBDA_SIGNING_KEY / the client config].",
)


def _unverified_note(infos: list[Any], verb: str) -> str:
    """What to say about jobs whose signed objects could not be read ("": none)."""
    from dolambda._admin import NO_KEY  # imported on use (as _backend)

    if not infos:
        return ""
    reasons = sorted({info.unverified for info in infos})
    fix = (
        "pass --signing-key or set DOLAMBDA_SIGNING_KEY"
        if reasons == [NO_KEY]
        else "pass the key they were signed with as --signing-key"
    )
    return (
        f"{len(infos)} job(s) {verb}: their manifest and plan cannot be verified "
        f"({', '.join(reasons)}); {fix}"
    )


@main.command()
@aws_options()
@signing_key_option
def jobs(**options: Any) -> None:
    """List the jobs in the bucket with their progress.

    \b
    Example:
      dolambda jobs --bucket my-queue
    """
    from dolambda._admin import list_jobs  # imported on use (as _backend)

    backend = _backend(**options)
    infos = _sync.run_sync(list_jobs(backend))
    if not infos:
        click.echo(f"no jobs in s3://{backend.bucket}/{backend.prefix}/jobs/")
        return
    width = max(len("JOB"), *(len(info.job_id) for info in infos))
    click.echo(f"{'JOB':<{width}}  {'CREATED':<19}  {'STATE':<11} RESULTS/TASKS")
    for info in infos:
        when = (
            datetime.datetime.fromtimestamp(info.created_at).isoformat(timespec="seconds")
            if info.created_at
            else "?"
        )
        total = "?" if info.tasks is None else str(info.tasks)
        click.echo(
            f"{info.job_id:<{width}}  {when:<19}  {info.state:<11} {info.results}/{total} tasks"
        )
    note = _unverified_note([i for i in infos if i.unverified], "shown as unverified")
    if note:
        click.echo(note, err=True)


def _duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 30m, 12h or 7d")
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * scale


@main.command()
@aws_options()
@click.option("--older-than", default="1d", show_default=True, help="age, e.g. 30m, 12h, 7d")
@click.option("--dry-run", is_flag=True, help="only list what would be deleted")
@signing_key_option
def cleanup(older_than: str, dry_run: bool, **options: Any) -> None:
    """Delete the objects of jobs older than --older-than (and the stored loop bodies
    written before then that no remaining job uses).

    \b
    Example:
      dolambda cleanup --bucket my-queue --older-than 12h
    """
    from dolambda._admin import cleanup_jobs  # imported on use (as _backend)

    age = _duration(older_than)
    backend = _backend(**options)
    skipped: list[Any] = []
    bodies: list[str] = []
    removed = _sync.run_sync(
        cleanup_jobs(backend, age, dry_run=dry_run, skipped=skipped, bodies=bodies)
    )
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {len(removed)} job(s)" + (": " + ", ".join(removed) if removed else ""))
    if bodies:
        click.echo(f"{verb} {len(bodies)} loop body(ies) no remaining job uses")
    note = _unverified_note(skipped, "left alone (their age is unknown)")
    if note:
        click.echo(note, err=True)


def run() -> None:
    """The ``dolambda`` console script (``python -m dolambda`` too)."""
    main()


if __name__ == "__main__":
    run()
