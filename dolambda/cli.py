"""The ``dolambda`` command: demo, emulator, deploy, doctor, destroy, jobs, cleanup."""

from __future__ import annotations

import re
import sys
from typing import Any

import click

from dolambda import _sync
from dolambda._errors import DolambdaError


def _backend(bucket: str | None, **kwargs: Any) -> Any:
    from dolambda._backends.lambda_ import LambdaBackend

    given = {k: v for k, v in kwargs.items() if v is not None}
    return LambdaBackend(bucket=bucket, **given)


_common = [
    click.option("--bucket", help="the queue bucket (default: from `dolambda deploy`'s config)"),
    click.option("--region", help="AWS region (default: AWS_DEFAULT_REGION / profile / config)"),
    click.option("--profile", help="AWS profile"),
    click.option("--prefix", help="key prefix in the bucket (default: dolambda)"),
    click.option("--endpoint-url", help="S3/Lambda endpoint (e.g. the local emulator)"),
]


def common(fn: Any) -> Any:
    for option in reversed(_common):
        fn = option(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dolambda")
def main() -> None:
    """dolambda: R's foreach for Python, with AWS Lambda (S3 as the job queue) as a backend.

    \b
    Example:
      dolambda demo                      # a real job on the local Lambda emulator
      dolambda deploy --bucket my-queue  # set up AWS in one command
    """


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
    from dolambda._demo import run_demo

    if aws:
        run_demo(_backend(None), iterations, samples)
        return
    from dolambda import emulator

    with emulator.start(workers=workers) as backend:
        run_demo(backend, iterations, samples)


@main.command("emulator")
@click.option("--workers", default=2, show_default=True, help="function concurrency")
@click.option("--bucket", default="dolambda-emulator", show_default=True)
@click.option("--timeout", default=60.0, show_default=True, help="function timeout, seconds")
@click.option("--memory", default=1024, show_default=True, help="memory limit, MB")
@click.option("--endpoint-url", help="use this S3 server instead of starting moto")
def emulator_command(
    workers: int, bucket: str, timeout: float, memory: int, endpoint_url: str | None
) -> None:
    """Run the local Lambda emulator (moto S3 + the real handler) until Ctrl-C.

    \b
    Example:
      dolambda emulator --workers 4
      # then, in Python: LambdaBackend(**settings printed above)
    """
    from dolambda import emulator

    emulator.serve(
        workers=workers, bucket=bucket, timeout=timeout, memory_mb=memory, endpoint_url=endpoint_url
    )


@main.command()
@common
def jobs(**kwargs: Any) -> None:
    """List the jobs in the bucket with their progress.

    \b
    Example:
      dolambda jobs --bucket my-queue
    """
    import datetime

    from dolambda._admin import list_jobs

    backend = _backend(**kwargs)
    infos = _sync.run_sync(list_jobs(backend))
    if not infos:
        click.echo(f"no jobs in s3://{backend.bucket}/{backend.prefix}/jobs/")
    for info in infos:
        when = (
            datetime.datetime.fromtimestamp(info.created_at).isoformat(timespec="seconds")
            if info.created_at
            else "?"
        )
        total = "?" if info.tasks is None else str(info.tasks)
        click.echo(f"{info.job_id}  {when}  {info.state:<11} {info.results}/{total} tasks")


def _duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 30m, 12h or 7d")
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * scale


@main.command()
@common
@click.option("--older-than", default="1d", show_default=True, help="age, e.g. 30m, 12h, 7d")
@click.option("--dry-run", is_flag=True, help="only list what would be deleted")
def cleanup(older_than: str, dry_run: bool, **kwargs: Any) -> None:
    """Delete the objects of jobs older than --older-than.

    \b
    Example:
      dolambda cleanup --bucket my-queue --older-than 12h
    """
    from dolambda._admin import cleanup_jobs

    backend = _backend(**kwargs)
    removed = _sync.run_sync(cleanup_jobs(backend, _duration(older_than), dry_run=dry_run))
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {len(removed)} job(s)" + (": " + ", ".join(removed) if removed else ""))


def _add_deploy_commands() -> None:
    try:
        from dolambda import deploy
    except ImportError:  # deploy is optional at import time (e.g. a trimmed install)
        return
    for name in ("deploy_command", "doctor_command", "destroy_command"):
        command = getattr(deploy, name, None)
        if isinstance(command, click.Command):
            main.add_command(command)


_add_deploy_commands()


def run() -> None:
    """Entry point that turns dolambda errors into one-line messages."""
    try:
        main(standalone_mode=True)
    except DolambdaError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    run()
