"""The strict Lambda execution environment: real processes under awslambdaric, no mocks.

Each handler is a file written to ``tmp_path`` (the task root); the runtime
directory is built once per session from what is installed here.
"""

from __future__ import annotations

import http.client
import json
import site
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from dolambda._errors import BackendError, ConfigError
from dolambda.emulator.runtime_api import (
    FunctionError,
    InitError,
    Invocation,
    Response,
    RuntimeAPI,
)
from dolambda.emulator.sandbox import (
    Credentials,
    Died,
    Sandbox,
    Timeout,
    copy_distributions,
    runtime_dir,
)

pytestmark = pytest.mark.timeout(180)

FACTS = """
import json, os, sys

def lambda_handler(event, context):
    import boto3
    return {
        "event": event,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "function_name": context.function_name,
        "request_id": context.aws_request_id,
        "memory": context.memory_limit_in_mb,
        "arn": context.invoked_function_arn,
        "cwd": os.getcwd(),
        "path": sys.path,
        "boto3": boto3.__version__,
        "boto3_file": boto3.__file__,
        "env": dict(os.environ),
        "exit_builtin": callable(exit),
    }
"""


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return runtime_dir(tmp_path_factory.mktemp("runtime-cache"))


def write_handler(root: Path, source: str, module: str = "lambda_function") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root


MakeSandbox = Callable[..., Sandbox]


@pytest.fixture
def make_sandbox(runtime: Path) -> Iterator[MakeSandbox]:
    """Sandboxes on the session's runtime directory, all closed at the end of the test."""
    made: list[Sandbox] = []

    def make(**kwargs: Any) -> Sandbox:
        box = Sandbox(runtime=runtime, **kwargs)
        made.append(box)
        return box

    yield make
    for box in made:
        box.close()


def invoke_json(box: Sandbox, event: object, timeout: float = 30.0) -> object:
    outcome = box.invoke(json.dumps(event).encode(), timeout)
    assert isinstance(outcome, Response), outcome
    return json.loads(outcome.payload)


def test_handler_gets_event_and_context(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    task = write_handler(tmp_path / "task", FACTS)
    box = make_sandbox(
        task_root=task,
        function_name="facts",
        memory_mb=512,
        credentials=Credentials("AKIDROLE", "secret", "token"),
        environment={"MY_SETTING": "on", "TZ": ":UTC"},
    )
    outcome = box.invoke(b'{"x": 1}', 20.0, request_id="req-1")
    assert isinstance(outcome, Response)
    facts = json.loads(outcome.payload)
    assert facts["event"] == {"x": 1}
    assert facts["request_id"] == "req-1"
    assert facts["function_name"] == "facts"
    assert facts["memory"] == "512"
    assert facts["arn"] == "arn:aws:lambda:us-east-1:123456789012:function:facts"
    assert 0 < facts["remaining_ms"] <= 20_000
    env = facts["env"]
    assert env["AWS_ACCESS_KEY_ID"] == "AKIDROLE" and env["AWS_SESSION_TOKEN"] == "token"
    assert env["MY_SETTING"] == "on"
    assert env["AWS_EXECUTION_ENV"] == "AWS_Lambda_python{}.{}".format(*sys.version_info[:2])
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["LAMBDA_TASK_ROOT"] == str(task.resolve())
    assert env["_HANDLER"] == "lambda_function.lambda_handler"
    assert facts["exit_builtin"] is True  # what site would have added, -S notwithstanding


def test_environment_holds_nothing_of_the_parent(
    make_sandbox: MakeSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIENT_ONLY_SECRET", "leak")
    task = write_handler(tmp_path / "task", FACTS)
    box = make_sandbox(task_root=task)
    facts = invoke_json(box, {})
    assert isinstance(facts, dict)
    env = facts["env"]
    assert "CLIENT_ONLY_SECRET" not in env
    # the test session's AWS settings (conftest's fake keys, config files) stay out
    assert not {"AWS_ACCESS_KEY_ID", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"} & set(env)
    # all of it is what the sandbox set, plus the trace id awslambdaric sets per invocation
    # and LC_CTYPE, which Python sets itself when LANG's locale is not installed (PEP 538)
    assert set(env) - set(box.environ) <= {"_X_AMZN_TRACE_ID", "LC_CTYPE"}
    assert env["TMPDIR"] != "/tmp" and Path(env["TMPDIR"]).is_dir()
    tmp = Path(env["TMPDIR"])
    box.close()
    assert not tmp.exists()  # the environment's temp dir goes with it
    with pytest.raises(BackendError, match="closed"):
        box.invoke(b"{}", 1.0)


def test_reserved_keys_are_refused(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AWS_REGION"):
        make_sandbox(task_root=tmp_path, environment={"AWS_REGION": "eu-west-1"})


def test_imports_are_lambdas_not_the_clients(
    make_sandbox: MakeSandbox, runtime: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytest (client-only) is not importable; boto3 is, from the runtime directory at the
    pinned version; no client site-packages on sys.path; cwd is the task root; a module
    next to the test's own cwd is not importable."""
    beside = write_handler(tmp_path / "beside", "X = 1\n", module="beside_module")
    monkeypatch.chdir(beside)
    task = write_handler(
        tmp_path / "task",
        FACTS
        + """
def probe(event, context):
    import importlib
    out = {}
    for name in event["modules"]:
        try:
            importlib.import_module(name)
            out[name] = "ok"
        except ImportError as exc:
            out[name] = type(exc).__name__
    return out
""",
    )
    box = make_sandbox(task_root=task, handler="lambda_function.lambda_handler")
    facts = invoke_json(box, {})
    assert isinstance(facts, dict)
    assert facts["cwd"] == str(task.resolve())
    assert facts["path"][0] == str(task.resolve())
    assert str(runtime.resolve()) in facts["path"]
    client_sites = {str(Path(p).resolve()) for p in [*site.getsitepackages(), site.USER_SITE]}
    for entry in facts["path"]:
        assert not any(entry.startswith(s) for s in client_sites), entry
        assert "site-packages" not in entry, entry
    assert facts["boto3"] == metadata.version("boto3")
    pinned = json.loads((runtime / "runtime.json").read_text())["distributions"]
    assert facts["boto3"] == pinned["boto3"]
    assert facts["boto3_file"].startswith(str(runtime.resolve()))

    probe = make_sandbox(task_root=task, handler="lambda_function.probe")
    modules = ["pytest", "dolambda", "moto", "beside_module", "boto3", "json", "ssl", "sqlite3"]
    found = invoke_json(probe, {"modules": modules})
    assert found == {
        "pytest": "ModuleNotFoundError",
        "dolambda": "ModuleNotFoundError",  # the editable install's import hook stays out
        "moto": "ModuleNotFoundError",
        "beside_module": "ModuleNotFoundError",  # next to the client's cwd
        "boto3": "ok",
        "json": "ok",  # the standard library works without site
        "ssl": "ok",
        "sqlite3": "ok",
    }


def test_handler_exception_has_lambdas_error_shape(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    task = write_handler(
        tmp_path / "task",
        """
        def lambda_handler(event, context):
            raise KeyError("missing thing")
        """,
    )
    box = make_sandbox(task_root=task)
    outcome = box.invoke(b"{}", 20.0, request_id="req-err")
    assert isinstance(outcome, FunctionError)
    assert outcome.request_id == "req-err"
    assert outcome.error_type == "KeyError"
    assert outcome.error_message == "'missing thing'"
    assert any("lambda_function.py" in line for line in outcome.stack_trace)
    body = json.loads(outcome.payload)
    assert set(body) >= {"errorMessage", "errorType", "stackTrace"}
    assert box.alive  # a handled error keeps the environment warm
    assert isinstance(box.invoke(b"{}", 20.0), FunctionError)


def test_import_failure_is_an_init_error_not_a_hang(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    task = write_handler(
        tmp_path / "task",
        """
        import a_module_that_is_nowhere

        def lambda_handler(event, context):
            return 1
        """,
    )
    lines: list[str] = []
    box = make_sandbox(task_root=task, on_output=lines.append)
    started = time.monotonic()
    outcome = box.invoke(b"{}", 60.0)
    assert time.monotonic() - started < 30
    assert isinstance(outcome, InitError)
    assert outcome.error_type == "Runtime.ImportModuleError"
    assert "a_module_that_is_nowhere" in outcome.error_message
    assert not box.alive  # awslambdaric exits after posting the init error
    assert any("Runtime.ImportModuleError" in line for line in lines)

    good = write_handler(tmp_path / "good", "def lambda_handler(event, context):\n    pass\n")
    missing = make_sandbox(task_root=good, handler="lambda_function.no_such_function")
    outcome = missing.invoke(b"{}", 60.0)
    assert isinstance(outcome, InitError)
    assert outcome.error_type == "Runtime.HandlerNotFound"


def test_a_response_over_6_mb_fails_the_invocation(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    task = write_handler(
        tmp_path / "task",
        """
        def lambda_handler(event, context):
            return "x" * (7 * 1024 * 1024)
        """,
    )
    outcome = make_sandbox(task_root=task).invoke(b"{}", 30.0)
    assert isinstance(outcome, FunctionError)
    assert outcome.error_type == "Function.ResponseSizeTooLarge"


def test_a_handler_past_its_timeout_is_killed(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    task = write_handler(
        tmp_path / "task",
        """
        import subprocess, sys, time

        def lambda_handler(event, context):
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            time.sleep(600)
        """,
    )
    box = make_sandbox(task_root=task)
    assert box.wait_ready() is None
    started = time.monotonic()
    outcome = box.invoke(b"{}", 1.5, request_id="slow")
    elapsed = time.monotonic() - started
    assert isinstance(outcome, Timeout)
    assert outcome.request_id == "slow" and outcome.phase == "invoke"
    assert "Task timed out after 1.50 seconds" in outcome.error_message
    assert 1.4 < elapsed < 10
    assert not box.alive
    assert box.rss_mb() is None


def test_a_crash_is_reported_as_died(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    task = write_handler(
        tmp_path / "task",
        """
        import os

        def lambda_handler(event, context):
            os._exit(3)
        """,
    )
    outcome = make_sandbox(task_root=task).invoke(b"{}", 30.0, request_id="crash")
    assert isinstance(outcome, Died)
    assert outcome.returncode == 3
    assert outcome.error_message.endswith("Runtime exited with error: exit status 3")


def test_warm_reuse_keeps_module_state(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    task = write_handler(
        tmp_path / "task",
        """
        import os
        CALLS = []

        def lambda_handler(event, context):
            CALLS.append(event["n"])
            return {"calls": CALLS, "pid": os.getpid()}
        """,
    )
    box = make_sandbox(task_root=task)
    first = invoke_json(box, {"n": 1})
    second = invoke_json(box, {"n": 2})
    assert first == {"calls": [1], "pid": box.pid}
    assert second == {"calls": [1, 2], "pid": box.pid}
    rss = box.rss_mb()
    assert rss is not None and rss > 5


def test_cold_start_with_boto3(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    """Measured, not asserted: the init phase of a handler that imports boto3."""
    task = write_handler(
        tmp_path / "task",
        """
        import boto3

        def lambda_handler(event, context):
            return boto3.__version__
        """,
    )
    times = []
    for _ in range(3):
        box = make_sandbox(task_root=task)
        started = time.monotonic()
        assert box.wait_ready() is None
        assert box.init_duration is not None
        first = time.monotonic()
        outcome = box.invoke(b"{}", 30.0)
        assert isinstance(outcome, Response)
        times.append((box.init_duration, time.monotonic() - first, first - started))
        box.close()
    for init, invoke, _ in times:
        print(
            f"\ncold start (init, boto3 imported): {init * 1000:.0f} ms; "
            f"first invoke: {invoke * 1000:.1f} ms"
        )


def test_runtime_api_refuses_unknown_ids_and_late_init_errors() -> None:
    """Lambda's status codes: 202 accepted, 400 unknown request id, 403 out of turn."""
    with RuntimeAPI() as api:
        host, port = api.address.split(":")

        def call(method: str, path: str, body: bytes = b"") -> tuple[int, bytes, dict[str, str]]:
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            try:
                conn.request(method, "/2018-06-01/runtime/" + path, body)
                resp = conn.getresponse()
                return resp.status, resp.read(), dict(resp.getheaders())
            finally:
                conn.close()

        assert call("POST", "invocation/nope/response", b"{}")[0] == 403  # nothing in flight
        api.hand(Invocation("r1", b'{"a": 1}', 1_700_000_000_000, "arn:fn", "Root=1-x"))
        status, body, headers = call("GET", "invocation/next")
        assert status == 200 and body == b'{"a": 1}'
        assert headers["Lambda-Runtime-Aws-Request-Id"] == "r1"
        assert headers["Lambda-Runtime-Deadline-Ms"] == "1700000000000"
        assert headers["Lambda-Runtime-Invoked-Function-Arn"] == "arn:fn"
        assert headers["Lambda-Runtime-Trace-Id"] == "Root=1-x"
        status, body, _ = call("POST", "invocation/other/response", b"{}")
        assert status == 400 and json.loads(body)["errorType"] == "InvalidRequestID"
        assert call("POST", "invocation/r1/response", b'"done"')[0] == 202
        assert api.wait("r1", 5) == Response("r1", b'"done"', "application/json")
        assert call("POST", "invocation/r1/response", b"{}")[0] == 403  # answered already
        assert call("POST", "init/error", b'{"errorType": "X"}')[0] == 403  # init is over
        assert call("GET", "nowhere")[0] == 404
        assert api.wait("never-handed", 0.1) is None


def test_copy_distributions_is_deterministic(tmp_path: Path) -> None:
    first = copy_distributions(["six", "python-dateutil"], tmp_path / "a")
    second = copy_distributions(["python_dateutil"], tmp_path / "b")
    assert (
        first
        == second
        == {
            "python-dateutil": metadata.version("python-dateutil"),
            "six": metadata.version("six"),
        }
    )

    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    files = tree(tmp_path / "a")
    assert files == tree(tmp_path / "b")
    assert "six.py" in files and "dateutil/parser/_parser.py" in files
    assert any(name.endswith(".dist-info/METADATA") for name in files)
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in files)
    with pytest.raises(ConfigError, match="not installed"):
        copy_distributions(["no-such-distribution-here"], tmp_path / "c")


def test_the_function_package_is_built_offline_once_and_keyed_by_its_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy's builder, local mode: the handler, the worker's modules and their
    dependencies copied from this interpreter (boto3 too, as deploy bundles it), hash-based pycs,
    one line printed when it builds, reused after; a changed worker module is a new tree."""
    import importlib.util

    from dolambda.deploy import package

    cache = tmp_path / "cache"
    root = package.build_task_root(cache)
    assert "building the emulator's function package" in capsys.readouterr().out
    assert package.build_task_root(cache) == root
    assert capsys.readouterr().out == ""  # cached: nothing to say
    assert (root / "handler" / "lambda_function.py").is_file()
    for name in package.WORKER_MODULES:
        assert (root / "dolambda" / name).is_file(), name
    assert "aioboto3" not in (root / "dolambda" / "__init__.py").read_text()
    record = json.loads((root / "package.json").read_text())
    assert record["distributions"]["dill"] == metadata.version("dill")
    assert record["distributions"]["numpy"] == metadata.version("numpy")
    # boto3 bundled at the client's version (as deploy does): it precedes the runtime's
    assert record["distributions"]["boto3"] == metadata.version("boto3")
    assert record["distributions"]["botocore"] == metadata.version("botocore")
    assert (root / "boto3" / "__init__.py").is_file()
    assert not {"aioboto3", "aiobotocore", "pytest"} & set(record["distributions"])
    pyc = Path(importlib.util.cache_from_source(str(root / "dill" / "_dill.py")))
    flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
    assert flags == 0b01  # PEP 552: hash-based, unchecked
    assert not list(cache.glob(".build-*"))  # built aside, renamed into place

    sources = package._sources()
    edited = tmp_path / "keys.py"
    edited.write_text(sources["dolambda/_wire/keys.py"].read_text() + "\n# edited\n")
    monkeypatch.setattr(package, "_sources", lambda: {**sources, "dolambda/_wire/keys.py": edited})
    other = package.build_task_root(cache)
    assert other != root and (other / "dolambda" / "_wire" / "keys.py").read_text().endswith(
        "# edited\n"
    )


def test_the_deployed_dolambda_serves_the_names_a_body_module_imports() -> None:
    """A user's module doing ``from dolambda import rng`` loads on the worker (the package's
    ``dolambda/__init__.py`` imports nothing until then); a client-only name is a clear
    ImportError saying so, not a bare one."""
    from dolambda.deploy import package

    root = package.build_task_root(package.cache_dir())
    probe = textwrap.dedent(
        """
        import sys
        import dolambda
        assert "dolambda._core.seeds" not in sys.modules  # nothing loaded at import
        from dolambda import TaskError, rng
        print(type(rng()).__name__, TaskError.__module__)
        try:
            from dolambda import foreach
        except ImportError as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", f"import sys; sys.path[:0] = [{str(root)!r}]\n{probe}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first == "Generator dolambda._errors"
    assert "'foreach'" in second and "on the Lambda worker" in second


def test_a_warm_invocation_costs_milliseconds_not_delayed_acks(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """The Runtime API answers with TCP_NODELAY: without it each of the two round trips of
    an invocation waits for a delayed ACK (~40 ms each, ~90 ms an invocation measured)."""
    import statistics

    task = write_handler(tmp_path / "task", "def lambda_handler(event, context):\n    return 1\n")
    box = make_sandbox(task_root=task)
    assert isinstance(box.invoke(b"{}", 30.0), Response)  # the cold start
    times = []
    for _ in range(20):
        started = time.perf_counter()
        assert isinstance(box.invoke(b"{}", 30.0), Response)
        times.append(time.perf_counter() - started)
    assert statistics.median(times) < 0.030, times
