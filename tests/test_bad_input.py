# ruff: noqa: E501  (the catalogue rows hold long message fragments)
"""The bad-input catalogue: every public argument with a wrong type or value, malformed
events sent straight to the Lambda handler, and hostile loop bodies (unpicklable results
and exceptions, megabytes of output, sys.exit / os._exit) on ``.do_parallel`` and through
the emulator. ``docs/bad-input.md`` is generated from ``CASES``:
``python -m tests.test_bad_input > docs/bad-input.md``; a test checks it is current.
"""

from __future__ import annotations

import base64
import json
import operator
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dolambda import (
    DolambdaError,
    Job,
    LambdaBackend,
    LocalBackend,
    TaskError,
    foreach,
    register,
    times,
)
from dolambda._errors import ConfigError, InvalidArgument, InvalidArgumentType
from tests.bodies.hostile import (
    calls_os_exit,
    calls_sys_exit,
    prints_megabytes,
    raises_unpicklable,
    returns_lock,
    sq,
)

KEY = "00" * 32
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Ctx:
    """What a case may use: a started emulator's backend and the handler's moto bucket."""

    emulator: Any = None
    handler_bucket: str = ""
    marks: Path = field(default_factory=Path)


@dataclass
class Case:
    input: str
    example: str
    error: str  # exception type name, or "none (returns ...)"
    message: str  # a fragment of the message (or of the handler's answer)
    run: Callable[[Ctx], Any]
    kind: str = "api"  # "api" | "handler" | "body"
    xfail: str = ""


def lb(**kwargs: Any) -> LambdaBackend:
    return LambdaBackend(**{"bucket": "b", "signing_key": KEY, **kwargs})


L = foreach(x=range(3))

API: list[Case] = [
    Case(
        "foreach: positional argument",
        "foreach(range(3))",
        "InvalidArgumentType",
        "name each one, e.g. foreach(x=range(0, 3))",
        lambda c: foreach(range(3)),
    ),  # type: ignore[misc]
    Case(
        "foreach: no variable",
        "foreach()",
        "InvalidArgument",
        "at least one iteration variable",
        lambda c: foreach(),
    ),
    Case(
        "foreach: not iterable",
        "foreach(x=5)",
        "InvalidArgumentType",
        "'x' is not iterable",
        lambda c: foreach(x=5),
    ),
    Case(
        "foreach: a function outside .nest",
        "foreach(x=lambda: 1)",
        "InvalidArgumentType",
        "only the inner loop of .nest()",
        lambda c: foreach(x=lambda: 1).do(sq),
    ),
    Case(
        "times: a string",
        'times("3")',
        "InvalidArgumentType",
        "non-negative integer, got '3'",
        lambda c: times("3"),
    ),  # type: ignore[arg-type]
    Case(
        "times: negative",
        "times(-1)",
        "InvalidArgument",
        "non-negative integer, got -1",
        lambda c: times(-1),
    ),
    Case("times: a float", "times(2.5)", "InvalidArgumentType", "got 2.5", lambda c: times(2.5)),  # type: ignore[arg-type]
    Case("times: a bool", "times(True)", "InvalidArgumentType", "got True", lambda c: times(True)),
    Case(
        ".when: not a function",
        ".when(3)",
        "InvalidArgumentType",
        "expected a function of the loop variables",
        lambda c: L.when(3),
    ),  # type: ignore[arg-type]
    Case(
        ".when: wrong parameters",
        ".when(lambda y: True)",
        "InvalidArgument",
        "it does not accept 'x'",
        lambda c: L.when(lambda y: True).do(sq),
    ),
    Case(
        ".when: predicate raises",
        ".when(lambda x: 1 / 0)",
        "ZeroDivisionError",
        "division by zero",
        lambda c: L.when(lambda x: 1 / 0).do(sq),
    ),
    Case(
        ".combine: unknown shorthand",
        '.combine("avg")',
        "InvalidArgument",
        "unknown shorthand 'avg'",
        lambda c: L.combine("avg"),
    ),
    Case(
        ".combine: not a function",
        ".combine(5)",
        "InvalidArgumentType",
        "expected a function or one of",
        lambda c: L.combine(5),
    ),  # type: ignore[arg-type]
    Case(
        ".combine: None",
        ".combine(None)",
        "InvalidArgumentType",
        "got NoneType None",
        lambda c: L.combine(None),
    ),  # type: ignore[arg-type]
    Case(
        ".combine: three parameters",
        ".combine(lambda a, b, c: a)",
        "InvalidArgument",
        "must take two positional arguments",
        lambda c: L.combine(lambda a, b, c: a),
    ),
    Case(
        ".combine: no parameter",
        ".combine(lambda: 0)",
        "InvalidArgument",
        "must take two positional arguments",
        lambda c: L.combine(lambda: 0),
    ),
    Case(
        ".combine(init=): incompatible",
        ".combine(operator.add, init=object())",
        "TypeError",
        "unsupported operand",
        lambda c: L.combine(operator.add, init=object()).do(sq),
    ),
    Case(
        ".combine(final=): not a function",
        ".combine(sum, final=3)",
        "InvalidArgumentType",
        "final must be a function",
        lambda c: L.combine(sum, final=3),
    ),  # type: ignore[arg-type]
    Case(
        ".combine(inorder=): not a bool",
        '.combine(sum, inorder="yes")',
        "InvalidArgumentType",
        "inorder must be True or False",
        lambda c: L.combine(sum, inorder="yes"),
    ),  # type: ignore[arg-type]
    Case(
        ".combine(multicombine=): not a bool",
        '.combine(sum, multicombine="yes")',
        "InvalidArgumentType",
        "multicombine must be True, False or None",
        lambda c: L.combine(sum, multicombine="yes"),
    ),  # type: ignore[arg-type]
    Case(
        ".combine(maxcombine=): below 2",
        ".combine(sum, maxcombine=1)",
        "InvalidArgument",
        "maxcombine must be at least 2",
        lambda c: L.combine(sum, maxcombine=1),
    ),
    Case(
        ".combine(maxcombine=): a string",
        '.combine(sum, maxcombine="3")',
        "InvalidArgumentType",
        "maxcombine must be an integer >= 2",
        lambda c: L.combine(sum, maxcombine="3"),
    ),  # type: ignore[arg-type]
    Case(
        ".combine: unknown keyword",
        ".combine(sum, foo=1)",
        "TypeError",
        "unexpected keyword argument 'foo'",
        lambda c: L.combine(sum, foo=1),
    ),  # type: ignore[call-arg]
    Case(
        ".errorhandling: unknown mode",
        '.errorhandling("ignore")',
        "InvalidArgument",
        "unknown mode 'ignore'",
        lambda c: L.errorhandling("ignore"),
    ),
    Case(
        ".errorhandling: not a string",
        ".errorhandling(1)",
        "InvalidArgument",
        "unknown mode 1",
        lambda c: L.errorhandling(1),
    ),  # type: ignore[arg-type]
    Case(
        ".seed: negative",
        ".seed(-1)",
        "InvalidArgument",
        "non-negative integer, got -1",
        lambda c: L.seed(-1),
    ),
    Case(".seed: a float", ".seed(1.5)", "InvalidArgumentType", "got 1.5", lambda c: L.seed(1.5)),  # type: ignore[arg-type]
    Case(".seed: a string", '.seed("a")', "InvalidArgumentType", "got 'a'", lambda c: L.seed("a")),  # type: ignore[arg-type]
    Case(".seed: a bool", ".seed(True)", "InvalidArgumentType", "got True", lambda c: L.seed(True)),
    Case(
        ".chunk_size: zero",
        ".chunk_size(0)",
        "InvalidArgument",
        "must be at least 1, got 0",
        lambda c: L.chunk_size(0),
    ),
    Case(
        ".chunk_size: a string",
        '.chunk_size("big")',
        "InvalidArgumentType",
        "positive integer or 'auto'",
        lambda c: L.chunk_size("big"),
    ),
    Case(
        ".chunk_size: a float",
        ".chunk_size(2.0)",
        "InvalidArgumentType",
        "got 2.0",
        lambda c: L.chunk_size(2.0),
    ),  # type: ignore[arg-type]
    Case(
        ".nest: not a loop",
        ".nest(5)",
        "InvalidArgumentType",
        "expected a foreach(...) loop",
        lambda c: L.nest(5),
    ),  # type: ignore[arg-type]
    Case(
        ".nest: a name clash",
        ".nest(foreach(x=range(2)))",
        "InvalidArgument",
        "redefines x",
        lambda c: L.nest(foreach(x=range(2))),
    ),
    Case(
        "verb fn: not a function",
        ".do(5)",
        "InvalidArgumentType",
        "the loop body must be a function",
        lambda c: L.do(5),
    ),  # type: ignore[arg-type]
    Case(
        "verb fn: wrong parameters",
        ".do(lambda y: y)",
        "InvalidArgument",
        "it does not accept 'x'",
        lambda c: L.do(lambda y: y),
    ),
    Case(
        "verb fn: positional-only parameters (a builtin)",
        ".do(abs)",
        "InvalidArgument",
        "'x' can only be passed by position (dolambda passes variables by name): wrap it in a "
        "function that takes them by name, e.g. lambda x: abs(x)",
        lambda c: L.do(abs),
    ),
    Case("verb fn: missing", ".do()", "InvalidArgument", "no loop body", lambda c: L.do()),
    Case(
        ".do_parallel(workers=): zero",
        ".do_parallel(f, workers=0)",
        "InvalidArgument",
        "workers must be at least 1",
        lambda c: L.do_parallel(sq, workers=0),
    ),
    Case(
        ".do_parallel(workers=): a string",
        '.do_parallel(f, workers="2")',
        "InvalidArgumentType",
        "workers must be an integer",
        lambda c: L.do_parallel(sq, workers="2"),
    ),  # type: ignore[arg-type]
    Case(
        ".run(backend=): a string",
        '.run(f, backend="gpu")',
        "InvalidArgumentType",
        "expected a backend object, got str",
        lambda c: L.run(sq, backend="gpu"),
    ),  # type: ignore[arg-type]
    Case(
        ".run(backend=): an int",
        ".run(f, backend=3)",
        "InvalidArgumentType",
        "expected a backend object, got int",
        lambda c: L.run(sq, backend=3),
    ),  # type: ignore[arg-type]
    Case(
        ".do_lambda(backend=): a string",
        '.do_lambda(f, backend="lambda")',
        "InvalidArgumentType",
        "expected a LambdaBackend, got str",
        lambda c: L.do_lambda(sq, backend="lambda"),
    ),  # type: ignore[arg-type]
    Case(
        ".do_lambda(backend=): a LocalBackend",
        ".do_lambda(f, backend=LocalBackend(1))",
        "InvalidArgumentType",
        "expected a LambdaBackend",
        lambda c: L.do_lambda(sq, backend=LocalBackend(1)),
    ),
    Case(
        "register: an int",
        "register(3)",
        "InvalidArgumentType",
        "expected a backend",
        lambda c: register(3),
    ),  # type: ignore[arg-type]
    Case(
        "register: unknown name",
        'register("gpu")',
        "InvalidArgumentType",
        "unknown backend name 'gpu'",
        lambda c: register("gpu"),
    ),
    Case(
        "LocalBackend(workers=): zero",
        "LocalBackend(0)",
        "InvalidArgument",
        "workers must be at least 1",
        lambda c: LocalBackend(0),
    ),
    Case(
        "LocalBackend(workers=): a string",
        'LocalBackend("4")',
        "InvalidArgumentType",
        "workers must be an integer",
        lambda c: LocalBackend("4"),
    ),  # type: ignore[arg-type]
    Case(
        "LocalBackend(workers=): a bool",
        "LocalBackend(True)",
        "InvalidArgumentType",
        "got True",
        lambda c: LocalBackend(True),
    ),
    Case(
        "LambdaBackend(bucket=): missing, no config",
        "LambdaBackend()",
        "ConfigError",
        "no bucket given",
        lambda c: LambdaBackend(),
    ),
    Case(
        "LambdaBackend(bucket=): an int",
        "LambdaBackend(bucket=5)",
        "InvalidArgumentType",
        "bucket must be a bucket name",
        lambda c: LambdaBackend(bucket=5),
    ),  # type: ignore[arg-type]
    Case(
        "LambdaBackend(bucket=): empty",
        'LambdaBackend(bucket="")',
        "InvalidArgumentType",
        "bucket must be a bucket name",
        lambda c: LambdaBackend(bucket=""),
    ),
    Case(
        "LambdaBackend(function_name=): an int",
        "LambdaBackend(..., function_name=5)",
        "InvalidArgumentType",
        "function_name",
        lambda c: lb(function_name=5),
    ),
    Case(
        "LambdaBackend(region=): an int",
        "LambdaBackend(..., region=5)",
        "InvalidArgumentType",
        "region",
        lambda c: lb(region=5),
    ),
    Case(
        "LambdaBackend(profile=): unknown profile",
        'LambdaBackend(..., profile="nope")',
        "ConfigError",
        "nope",
        lambda c: L.do_lambda(sq, backend=lb(profile="nope", region="us-east-1"), progress=False),
    ),
    Case(
        "LambdaBackend(endpoint_url=): not a URL",
        'LambdaBackend(..., endpoint_url="not a url")',
        "DolambdaError",
        "not a url",
        lambda c: L.do_lambda(
            sq, backend=lb(endpoint_url="not a url", region="us-east-1"), progress=False
        ),
    ),
    Case(
        "LambdaBackend(prefix=): an int",
        "LambdaBackend(..., prefix=5)",
        "InvalidArgumentType",
        "prefix",
        lambda c: lb(prefix=5),
    ),
    Case(
        "LambdaBackend(trigger=): unknown",
        'LambdaBackend(..., trigger="sqs")',
        "InvalidArgument",
        "trigger must be 's3', 'invoke' or 'call'",
        lambda c: lb(trigger="sqs"),
    ),
    Case(
        "LambdaBackend(dispatch=): unknown",
        'LambdaBackend(..., dispatch="lambda")',
        "InvalidArgument",
        "dispatch must be 'auto', 'client' or 'remote'",
        lambda c: lb(dispatch="lambda"),
    ),
    Case(
        "LambdaBackend(dispatch=): remote with trigger call",
        'LambdaBackend(..., trigger="call", dispatch="remote")',
        "InvalidArgument",
        "dispatch='remote' needs trigger 's3' or 'invoke'",
        lambda c: lb(trigger="call", dispatch="remote"),
    ),
    Case(
        "LambdaBackend(chunk_size=): zero",
        "LambdaBackend(..., chunk_size=0)",
        "InvalidArgument",
        "chunk_size must be a positive integer or 'auto'",
        lambda c: lb(chunk_size=0),
    ),
    Case(
        "LambdaBackend(retries=): negative",
        "LambdaBackend(..., retries=-1)",
        "InvalidArgument",
        "retries must be an integer >= 0",
        lambda c: lb(retries=-1),
    ),
    Case(
        "LambdaBackend(retries=): a float",
        "LambdaBackend(..., retries=1.5)",
        "InvalidArgument",
        "got 1.5",
        lambda c: lb(retries=1.5),
    ),  # type: ignore[arg-type]
    Case(
        "LambdaBackend(task_timeout=): zero",
        "LambdaBackend(..., task_timeout=0)",
        "InvalidArgument",
        "task_timeout must be a positive number",
        lambda c: lb(task_timeout=0),
    ),
    Case(
        "LambdaBackend(task_timeout=): a string",
        'LambdaBackend(..., task_timeout="5")',
        "InvalidArgument",
        "got '5'",
        lambda c: lb(task_timeout="5"),
    ),  # type: ignore[arg-type]
    Case(
        "LambdaBackend(max_concurrency=): zero",
        "LambdaBackend(..., max_concurrency=0)",
        "InvalidArgument",
        "max_concurrency must be a positive integer",
        lambda c: lb(max_concurrency=0),
    ),
    Case(
        "LambdaBackend(keep=): a string",
        'LambdaBackend(..., keep="no")',
        "InvalidArgumentType",
        "keep",
        lambda c: lb(keep="no"),
    ),
    Case(
        "LambdaBackend(signing_key=): an int",
        "LambdaBackend(..., signing_key=5)",
        "InvalidArgumentType",
        "signing_key",
        lambda c: lb(signing_key=5),
    ),
    Case(
        "LambdaBackend(signing_key=): missing",
        "LambdaBackend(bucket=...) and no DOLAMBDA_SIGNING_KEY",
        "ConfigError",
        "no signing key",
        lambda c: L.do_lambda(
            sq, backend=LambdaBackend(bucket="b", region="us-east-1"), progress=False
        ),
    ),
    Case(
        "LambdaBackend(aws_access_key_id=): without the secret",
        'LambdaBackend(..., aws_access_key_id="AK")',
        "InvalidArgument",
        "pass both aws_access_key_id and aws_secret_access_key",
        lambda c: lb(aws_access_key_id="AK"),
    ),
    Case(
        "Job.attach: not a job id",
        'Job.attach("../etc", backend)',
        "InvalidArgument",
        "is not a dolambda job id",
        lambda c: Job.attach("../etc", lb()),
    ),
    Case(
        "Job.attach: an int",
        "Job.attach(5, backend)",
        "InvalidArgumentType",
        "job id",
        lambda c: Job.attach(5, lb()),
    ),  # type: ignore[arg-type]
    Case(
        "Job.attach: a LocalBackend",
        "Job.attach(job_id, LocalBackend(1))",
        "DolambdaError",
        "only LambdaBackend jobs can be resumed",
        lambda c: Job.attach("20260101T000000-deadbeef", LocalBackend(1)),
    ),
    Case(
        "Job.attach: unknown job",
        "Job.attach(unknown_id, emulator_backend)",
        "InvalidArgument",
        "no job",
        lambda c: Job.attach("20260101T000000-deadbeef", c.emulator.backend),
    ),
]


# --------------------------------------------------------------------------- handler events


def _task_key(job: str = "20260101T000000-aaaaaaaa", name: str = "0000000.task") -> str:
    return f"dolambda/queue/{job}/{name}"


def record(bucket: str, key: str) -> dict[str, Any]:
    return {"Records": [{"s3": {"bucket": {"name": bucket}, "object": {"key": key}}}]}


HANDLER: list[Case] = [
    Case("handler event: empty", "{}", "none (returns)", '"outcomes": {}', lambda c: {}),
    Case("handler event: None", "None", "none (returns)", '"outcomes": {}', lambda c: None),
    Case(
        "handler event: not JSON (a string)",
        '"{not json"',
        "none (returns)",
        '"outcomes": {}',
        lambda c: "{not json",
    ),
    Case("handler event: a list", "[1, 2]", "none (returns)", '"outcomes": {}', lambda c: [1, 2]),
    Case(
        "handler event: Records not a list",
        '{"Records": "x"}',
        "none (returns)",
        '"outcomes": {}',
        lambda c: {"Records": "x"},
    ),
    Case(
        "handler event: record without s3",
        '{"Records": [{}]}',
        "none (returns)",
        '"outcomes": {}',
        lambda c: {"Records": [{}, {"s3": None}]},
    ),
    Case(
        "handler event: wrong bucket",
        "a task key in another bucket",
        "none (returns)",
        '"ignored": 1',
        lambda c: record("someone-elses", _task_key()),
    ),
    Case(
        "handler event: key outside the queue",
        "dolambda/results/j/0.out",
        "none (returns)",
        '"ignored": 1',
        lambda c: record(c.handler_bucket, "dolambda/results/j/0000000.out"),
    ),
    Case(
        "handler event: key with spaces (URL-encoded)",
        "dolambda/queue/my+job/0000000.task",
        "none (returns)",
        '"ignored": 1',
        lambda c: record(c.handler_bucket, "dolambda%2Fqueue%2Fmy+job%2F0000000.task"),
    ),
    Case(
        "handler event: key with unicode",
        "dolambda/queue/jöb-ü/0000000.task",
        "none (returns)",
        '"ignored": 1',
        lambda c: record(c.handler_bucket, "dolambda/queue/j%C3%B6b-%C3%BC/0000000.task"),
    ),
    Case(
        "handler event: missing task object",
        "a task key that does not exist",
        "none (returns)",
        '"gone": 1',
        lambda c: record(c.handler_bucket, _task_key()),
    ),
    Case(
        "handler event: huge (1,000 records)",
        "1,000 records for missing tasks",
        "none (returns)",
        '"gone": 1000',
        lambda c: {
            "Records": [
                record(c.handler_bucket, _task_key(name=f"{i:07d}.task"))["Records"][0]
                for i in range(1_000)
            ]
        },
    ),
    Case(
        "handler event: huge key (100 KB)",
        "a 100 KB key",
        "none (returns)",
        '"ignored": 1',
        lambda c: record(c.handler_bucket, "x" * 100_000),
    ),
    Case(
        "handler invoke: task not base64",
        '{"bucket", "key", "task": "%%%"}',
        "none (returns)",
        '"gone": 1',
        lambda c: {"bucket": c.handler_bucket, "key": _task_key(), "task": "%%%"},
    ),
    Case(
        "handler invoke: unsigned inline task",
        '{"bucket", "key", "task": b64("junk")}',
        "none (returns)",
        '"done": 1',
        lambda c: {
            "bucket": c.handler_bucket,
            "key": _task_key(),
            "task": base64.b64encode(b"junk").decode(),
        },
    ),
    Case(
        "handler invoke: bucket not a string",
        '{"bucket": 5, "key": ...}',
        "none (returns)",
        '"outcomes": {}',
        lambda c: {"bucket": 5, "key": _task_key()},
    ),
]
for _case in HANDLER:
    _case.kind = "handler"


# --------------------------------------------------------------------------- hostile bodies
# (in tests.bodies.hostile: they travel to the emulator's workers, which lack pytest)


def _parallel(body: Callable[[int], Any]) -> Callable[[Ctx], Any]:
    return lambda c: foreach(x=range(3)).chunk_size(1).do_parallel(body, workers=2)


def _emulated(body: Callable[[int], Any]) -> Callable[[Ctx], Any]:
    def run(c: Ctx) -> Any:
        backend = LambdaBackend(**{**c.emulator.backend_settings(), "retries": 0})
        return foreach(x=range(3)).chunk_size(1).do_lambda(body, backend=backend, progress=False)

    return run


BODIES: list[Case] = []
for where, wrap in ((".do_parallel", _parallel), ("emulator", _emulated)):
    BODIES += [
        Case(
            f"body result not picklable ({where})",
            "return (i for i in range(3))",
            "TaskError",
            "iteration 1 (x=1) failed: SerializationError: its result (a builtins.generator) cannot be pickled",
            wrap(returns_lock),
        ),
        Case(
            f"body exception not picklable ({where})",
            "raise Unpicklable() holding a lock",
            "TaskError",
            "iteration 1 (x=1) failed: Unpicklable: cannot travel",
            wrap(raises_unpicklable),
        ),
        Case(
            f"body prints 3 MB ({where})",
            "print('y' * 3_000_000)",
            "none (returns)",
            "[0, 1, 2]",
            wrap(prints_megabytes),
        ),
        Case(
            f"body calls sys.exit ({where})",
            "sys.exit(3)",
            "TaskError",
            "iteration 1 (x=1) failed: SystemExit: the body called sys.exit(3)",
            wrap(calls_sys_exit),
        ),
    ]
BODIES += [
    Case(
        "body calls os._exit (.do_parallel)",
        "os._exit(7)",
        "TaskError",
        "iteration 1 (x=1) failed",
        _parallel(calls_os_exit),
    ),
    Case(
        "body calls os._exit (emulator)",
        "os._exit(7)",
        "TaskError",
        "iteration 1 (x=1) failed: the worker running the task crashed: its process exited with status 7",
        _emulated(calls_os_exit),
    ),
]
for _case in BODIES:
    _case.kind = "body"

CASES: list[Case] = API + HANDLER + BODIES


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def emulator() -> Iterator[Any]:
    from dolambda.emulator import Emulator

    # no case here needs the timeout to strike: a roomy one keeps a slow cold start on a
    # loaded machine from turning a crash or an error into "timed out"
    with Emulator(workers=2, timeout=30.0) as emu:
        yield emu


@pytest.fixture(scope="module")
def handler_env() -> Iterator[tuple[str, str]]:
    import boto3

    from tests.moto_server import MotoServer

    with MotoServer() as url:
        bucket = "bad-input-handler"
        boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=bucket)
        yield url, bucket


def _call_handler(event: Any, url: str, bucket: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    import handler.lambda_function as lf

    monkeypatch.setenv("DOLAMBDA_SIGNING_KEY", KEY)
    monkeypatch.setenv("DOLAMBDA_PREFIX", "dolambda")
    monkeypatch.setenv("DOLAMBDA_BUCKET", bucket)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)
    monkeypatch.setattr(lf, "_s3", None)
    monkeypatch.setattr(lf, "_state", lf.WorkerState())
    return lf.lambda_handler(event, None)


def _ids(cases: list[Case]) -> list[str]:
    return [c.input for c in cases]


def _params(cases: list[Case]) -> list[Any]:
    return [
        pytest.param(
            c,
            id=c.input,
            marks=[pytest.mark.xfail(reason=c.xfail, strict=True)] if c.xfail else [],
        )
        for c in cases
    ]


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", _params(API))
def test_api_argument(case: Case, request: pytest.FixtureRequest) -> None:
    ctx = Ctx()
    if "emulator" in case.example:
        ctx.emulator = request.getfixturevalue("emulator")
    with pytest.raises(Exception) as info:
        case.run(ctx)
    assert type(info.value).__name__ == case.error or (
        case.error == "DolambdaError" and isinstance(info.value, DolambdaError)
    ), (type(info.value), info.value)
    assert case.message in str(info.value)
    if case.error in ("InvalidArgument", "InvalidArgumentType", "ConfigError"):
        assert isinstance(info.value, (InvalidArgument, InvalidArgumentType, ConfigError))


@pytest.mark.parametrize("case", _params(HANDLER))
def test_handler_event(
    case: Case,
    handler_env: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import boto3

    url, bucket = handler_env
    ctx = Ctx(handler_bucket=bucket)
    answer = _call_handler(case.run(ctx), url, bucket, monkeypatch)  # never raises
    assert case.message in json.dumps(answer), answer
    # nothing ran: no result was written, except the signature refusal of a forged task
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    if '"done"' in case.message:
        assert len(keys) == 1 and "/results/" in keys[0]
        s3.delete_object(Bucket=bucket, Key=keys[0])
    else:
        assert keys == []


def test_forged_inline_task_is_refused_not_run(
    handler_env: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 'done' of an unsigned inline task is a signature failure outcome, not a run."""
    import boto3

    from dolambda._wire import codec
    from dolambda._wire.codec import outcome_context
    from dolambda._wire.models import TaskOutcome

    url, bucket = handler_env
    event = {"bucket": bucket, "key": _task_key(), "task": base64.b64encode(b"junk").decode()}
    _call_handler(event, url, bucket, monkeypatch)
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    key = "dolambda/results/20260101T000000-aaaaaaaa/0000000.out"
    blob = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.delete_object(Bucket=bucket, Key=key)
    outcome = codec.unseal_model(
        TaskOutcome,
        blob,
        key=bytes.fromhex(KEY),
        context=outcome_context("20260101T000000-aaaaaaaa", 0),
    )
    assert outcome.failure is not None and outcome.failure.kind == "signature"
    assert outcome.ran == 0 and outcome.values == b""


@pytest.mark.parametrize("case", _params(BODIES))
def test_hostile_body(case: Case, request: pytest.FixtureRequest) -> None:
    ctx = Ctx()
    if "emulator" in case.input:
        ctx.emulator = request.getfixturevalue("emulator")
    if case.error.startswith("none"):
        assert str(case.run(ctx)) == case.message
        return
    with pytest.raises(TaskError) as info:
        case.run(ctx)
    assert case.message in str(info.value), str(info.value)
    assert info.value.index == 1


# --------------------------------------------------------------------------- the document


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    lines = [
        "# Bad input catalogue",
        "",
        "Generated from `CASES` in `tests/test_bad_input.py` "
        "(`python -m tests.test_bad_input > docs/bad-input.md`); every row is a test.",
        "Handler rows call `handler.lambda_function.lambda_handler` in-process against a "
        "moto server: it returns (never raises) and runs nothing. Rows marked **BUG** are "
        "strict xfails: the *expected* behaviour is shown, not the current one.",
        "",
        "| input | example | error type | message (what it says) |",
        "|---|---|---|---|",
    ]
    for c in CASES:
        error = c.error + (" — **BUG**: " + c.xfail.removeprefix("BUG: ") if c.xfail else "")
        lines.append(
            f"| {_cell(c.input)} | `{_cell(c.example)}` | {_cell(error)} | {_cell(c.message)} |"
        )
    return "\n".join(lines) + "\n"


def test_docs_table_lists_every_case() -> None:
    doc = (ROOT / "docs" / "bad-input.md").read_text()
    assert doc == render(), "docs/bad-input.md is stale: python -m tests.test_bad_input"


if __name__ == "__main__":
    sys.stdout.write(render())
