"""A Lambda execution environment on this machine: what the emulator's workers run in.

Two things, each built only from the standard library and what is installed here
(offline; installed distributions are copied with
:func:`dolambda.deploy.installed.copy_distributions`, re-exported here):

- :func:`runtime_dir` is the cached stand-in for Lambda's ``/var/runtime``:
  AWS's runtime interface client and the SDK the Python runtime ships;
- :class:`Sandbox` is one execution environment: an isolated interpreter running
  ``awslambdaric`` against its own :class:`~dolambda.emulator.runtime_api.RuntimeAPI`,
  with Lambda's ``sys.path``, working directory and environment, and nothing of
  the client's::

    Sandbox.invoke(event) ──► RuntimeAPI (127.0.0.1:<port>) ◄── python -I -S -B -c BOOTSTRAP
        │                     ▲  GET /next, POST /response|/error    sys.path: task root, layers,
        │ deadline passed:    │                                      runtime dir, stdlib only;
        │ kill the group      └── init error: POST /init/error       cwd: the task root
        ▼
    Response | FunctionError | InitError | Timeout | Died

Why ``-I -S``: ``-I`` drops the current directory, the user site and ``PYTHON*``
variables, but still runs ``site``, which puts the client's site-packages on the
path and executes its ``.pth`` files; an editable install's ``.pth`` installs an
import hook into ``sys.meta_path`` that no ``sys.path`` surgery removes (this
venv's ``__editable__.dolambda-0.1.0.pth`` does). ``-S`` skips ``site``
altogether; the standard library needs nothing from it, and the bootstrap
installs the builtins ``site`` would have (``exit``, ``quit``, ``help``...).
``-B``: Lambda's ``/var/task`` is read-only, so nothing is written next to the
package (the runtime directory is compiled when it is built, as ``/var/runtime``).
"""

from __future__ import annotations

import compileall
import contextlib
import hashlib
import json
import logging
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from dolambda._errors import BackendError, ConfigError
from dolambda.deploy.installed import closure, copy_distributions, normalize
from dolambda.emulator.runtime_api import FunctionError, InitError, Invocation, Response, RuntimeAPI

__all__ = [
    "RUNTIME_DISTRIBUTIONS",
    "Credentials",
    "Died",
    "Outcome",
    "Sandbox",
    "Timeout",
    "copy_distributions",
    "group_pids",
    "sessions_pids",
    "runtime_dir",
]

log = logging.getLogger(__name__)

# ── the runtime directory ────────────────────────────────────────────────────────────

#: What the Lambda Python runtime ships in /var/runtime (and, on python3.11, in
#: /var/lang/lib/python3.11/site-packages): the runtime interface client and the SDK.
RUNTIME_DISTRIBUTIONS = ("awslambdaric", "boto3")


def runtime_dir(cache_dir: Path) -> Path:
    """The runtime directory (``LAMBDA_RUNTIME_DIR``), built once per set of versions.

    It holds ``awslambdaric`` (with simplejson and snapshot-restore-py) and
    ``boto3``/``botocore`` (with s3transfer, jmespath, python-dateutil, urllib3,
    six) copied from this machine, compiled, with ``runtime.json`` recording the
    versions. It is keyed by those names and versions and the interpreter, so an
    upgrade here builds a new one.

    Which boto3: AWS no longer publishes a fixed SDK version per runtime. Its
    page says the version "depends on the runtime version and your AWS Region" and
    is updated in place (print ``boto3.__version__`` in a function to see it):
    https://docs.aws.amazon.com/lambda/latest/dg/lambda-python.html#python-sdk-included
    (the older "Lambda runtimes" page listed one, e.g. boto3-1.20.32 for
    python3.9 in 2022). So no version can be "the" python3.11 one; we pin the
    boto3 installed here, a current 1.x as recent as or newer than what the runtime
    ships, with the same API. It matters little: deploy bundles its own pinned
    boto3 in the package, and the task root precedes the runtime directory on
    ``sys.path`` (https://docs.aws.amazon.com/lambda/latest/dg/python-package.html
    #python-package-searchpath), so the runtime's copy is used only by a package
    that lacks one.
    """
    dists = closure(RUNTIME_DISTRIBUTIONS)
    versions = {normalize(d.metadata["Name"]): d.version for d in dists}
    record = {
        "python": "{}.{}".format(*sys.version_info[:2]),
        "implementation": sys.implementation.cache_tag,
        "machine": platform.machine(),
        "distributions": versions,
    }
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    final = cache_dir / f"lambda-runtime-{record['implementation']}-{digest}"
    if (final / "runtime.json").is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("building the Lambda runtime directory %s", final)
    build = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir))
    try:
        copy_distributions(RUNTIME_DISTRIBUTIONS, build)
        compileall.compile_dir(build, quiet=1, workers=1)
        (build / "runtime.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(build, final)
        except OSError:  # another process built it first
            if not (final / "runtime.json").is_file():
                raise
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return final


# ── the execution environment ────────────────────────────────────────────────────────

# The runtime's bootstrap, run as ``python -I -S -B -c BOOTSTRAP <layer dirs...>``:
# sys.path as Lambda's Python runtime orders it (task root, layers, runtime, stdlib;
# https://docs.aws.amazon.com/lambda/latest/dg/python-package.html#python-package-searchpath),
# the builtins ``site`` would add, then AWS's runtime interface client.
BOOTSTRAP = """\
import os, sys
sys.path[0:0] = [os.environ["LAMBDA_TASK_ROOT"], *sys.argv[1:], os.environ["LAMBDA_RUNTIME_DIR"]]
import site
site.setquit(); site.setcopyright(); site.sethelper()
del site
from awslambdaric.__main__ import main
main(["awslambdaric", os.environ["_HANDLER"]])
"""

# Keys Lambda sets and refuses in a function's configuration ("reserved"), per
# https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html#configuration-envvars-runtime
RESERVED = frozenset(
    [
        "_HANDLER",
        "_X_AMZN_TRACE_ID",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_INITIALIZATION_TYPE",
        "AWS_LAMBDA_LOG_GROUP_NAME",
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_LAMBDA_RUNTIME_API",
        "LAMBDA_TASK_ROOT",
        "LAMBDA_RUNTIME_DIR",
    ]
)


@dataclass(frozen=True, slots=True)
class Credentials:
    """The role's credentials the environment runs with (Lambda sets them as variables)."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None


@dataclass(frozen=True, slots=True)
class Timeout:
    """The invocation (or init) ran past its time; the environment was killed."""

    request_id: str
    seconds: float
    phase: str = "invoke"  # or "init"

    @property
    def error_type(self) -> str:
        return "Sandbox.Timedout"

    @property
    def error_message(self) -> str:
        return (
            f"RequestId: {self.request_id} Error: Task timed out after {self.seconds:.2f} seconds"
        )


@dataclass(frozen=True, slots=True)
class Died:
    """The runtime process exited without answering (crash, ``os._exit``, a signal)."""

    request_id: str
    returncode: int | None

    @property
    def error_type(self) -> str:
        return "Runtime.ExitError"

    @property
    def error_message(self) -> str:
        code = self.returncode
        how = (
            f"signal: {signal.Signals(-code).name}" if code and code < 0 else f"exit status {code}"
        )
        return f"RequestId: {self.request_id} Error: Runtime exited with error: {how}"


def group_pids(session: int) -> set[int]:
    """The live processes of the session ``session`` leads (an environment's runtime and
    every child it started), from Linux ``/proc``."""
    return sessions_pids([session])[session]


def sessions_pids(sessions: Iterable[int]) -> dict[int, set[int]]:
    """:func:`group_pids` for several sessions in one walk of ``/proc`` (milliseconds)."""
    found: dict[int, set[int]] = {sid: set() for sid in sessions}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            sid = int(stat.rpartition(")")[2].split()[3])
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
        if sid in found:
            found[sid].add(int(entry))
    return found


#: What became of an invocation.
Outcome = Response | FunctionError | InitError | Timeout | Died


class Sandbox:
    """One Lambda execution environment: cold on the first :meth:`invoke`, warm after.

    ``task_root`` is the unpacked deployment package (``/var/task``: the working
    directory and first on ``sys.path``), ``runtime`` the runtime directory
    (:func:`runtime_dir`), ``handler`` the function's handler string. The
    environment holds what Lambda sets and nothing of this process's: the
    function's own ``environment`` may set unreserved keys (``PATH``, ``TZ``...) but
    no reserved one. Output (stdout and stderr, merged as in CloudWatch) goes line
    by line to ``on_output``, or to this module's logger. An environment that timed
    out, died or failed to initialise is dead: make a new one.
    """

    def __init__(
        self,
        *,
        task_root: Path,
        runtime: Path,
        handler: str = "lambda_function.lambda_handler",
        function_name: str = "dolambda",
        memory_mb: int = 1024,
        version: str = "$LATEST",
        region: str = "us-east-1",
        account_id: str = "123456789012",
        credentials: Credentials | None = None,
        environment: Mapping[str, str] | None = None,
        layers: Sequence[Path] = (),
        init_timeout: float = 10.0,
        on_output: Callable[[str], None] | None = None,
    ) -> None:
        bad = sorted(set(environment or {}) & RESERVED)
        if bad:
            raise ConfigError(
                "Lambda refuses reserved keys in a function's environment variables: "
                + ", ".join(bad)
            )
        self.task_root = Path(task_root).resolve()
        self.runtime = Path(runtime).resolve()
        self.handler = handler
        self.function_arn = f"arn:aws:lambda:{region}:{account_id}:function:{function_name}"
        self.layers = tuple(Path(p).resolve() for p in layers)
        self.init_timeout = init_timeout
        self.init_duration: float | None = None  # seconds from start to the first GET /next
        self._on_output = on_output or (lambda line: log.info("[%s] %s", function_name, line))
        self._tmp = Path(tempfile.mkdtemp(prefix=f"dolambda-{function_name}-"))
        (self._tmp / "tmp").mkdir()
        (self._tmp / "home").mkdir()
        self._api = RuntimeAPI()
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = 0.0
        self._lock = threading.Lock()
        self._closed = False
        self._threads: list[threading.Thread] = []
        base_bin = Path(sys.base_prefix) / "bin"
        task, rt = str(self.task_root), str(self.runtime)
        lib_path = [f"{sys.base_prefix}/lib", "/lib64", "/usr/lib64", rt, f"{rt}/lib"]
        lib_path += [task, f"{task}/lib", *(f"{p}/lib" for p in self.layers)]
        day = time.strftime("%Y/%m/%d", time.gmtime())
        # https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html#configuration-envvars-runtime
        self.environ: dict[str, str] = {
            "LANG": "en_US.UTF-8",
            "PATH": f"{base_bin}:/usr/local/bin:/usr/bin/:/bin:/opt/bin",
            "LD_LIBRARY_PATH": ":".join(lib_path),
            "PYTHONPATH": rt,  # Lambda sets it; -I ignores it, the bootstrap sets sys.path
            "TZ": ":UTC",
            **(environment or {}),
            "_HANDLER": handler,
            "AWS_EXECUTION_ENV": "AWS_Lambda_python{}.{}".format(*sys.version_info[:2]),
            "AWS_LAMBDA_FUNCTION_NAME": function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": version,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"{day}/[{version}]{secrets.token_hex(16)}",
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            "AWS_LAMBDA_RUNTIME_API": self._api.address,
            "LAMBDA_TASK_ROOT": task,
            "LAMBDA_RUNTIME_DIR": rt,
            # Not Lambda's, but the closest to it here: Lambda has no writable home and
            # its /tmp is the environment's own.
            "TMPDIR": str(self._tmp / "tmp"),
            "HOME": str(self._tmp / "home"),
        }
        if credentials is not None:
            self.environ["AWS_ACCESS_KEY_ID"] = credentials.access_key_id
            self.environ["AWS_SECRET_ACCESS_KEY"] = credentials.secret_access_key
            if credentials.session_token:
                self.environ["AWS_SESSION_TOKEN"] = credentials.session_token

    # ── lifecycle ──

    def start(self) -> None:
        """Start the runtime process (the init phase runs while the caller goes on)."""
        with self._lock:
            if self._closed:
                raise BackendError("this execution environment is closed: make a new Sandbox")
            if self._proc is not None:
                return
            self._started = time.monotonic()
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", "-c", BOOTSTRAP, *map(str, self.layers)],
                cwd=self.task_root,
                env=self.environ,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a process group: kill() takes the children too
            )
            proc = self._proc
            for target in (self._read_output, self._reap):
                thread = threading.Thread(target=target, args=(proc,), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _read_output(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                try:
                    self._on_output(line)
                except Exception:  # a failing sink must not stop the reader
                    log.exception("sandbox output callback failed")

    def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        self._api.process_exited()

    def wait_ready(self, timeout: float | None = None) -> Outcome | None:
        """Wait for the init phase: None once the runtime asks for work, else why not
        (``InitError``, ``Died``, or ``Timeout`` after which the process is killed)."""
        self.start()
        wait = self.init_timeout if timeout is None else timeout
        if self._api.wait_ready(wait):
            if self.init_duration is None:
                self.init_duration = time.monotonic() - self._started
            return None
        init_error = self._api.init_error
        if init_error is not None:
            self._settle(grace=2.0)  # awslambdaric exits(1) right after posting it
            return init_error
        if self.alive:
            self.kill()
            return Timeout("", wait, phase="init")
        return Died("", self.returncode)

    def invoke(self, event: bytes, timeout: float, *, request_id: str | None = None) -> Outcome:
        """Run one invocation (``event`` is its JSON payload) with ``timeout`` seconds
        to answer; a cold environment first runs its init phase (``init_timeout``)."""
        request_id = request_id or str(uuid.uuid4())
        not_ready = self.wait_ready()
        if not_ready is not None:
            if isinstance(not_ready, Timeout):
                return Timeout(request_id, not_ready.seconds, phase="init")
            if isinstance(not_ready, Died):
                return Died(request_id, not_ready.returncode)
            return not_ready
        deadline_ms = int(time.time() * 1000 + timeout * 1000)
        trace = (
            f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};"
            f"Parent={secrets.token_hex(8)};Sampled=0"
        )
        self._api.hand(Invocation(request_id, event, deadline_ms, self.function_arn, trace))
        posted = self._api.wait(request_id, timeout)
        if posted is not None:
            return posted
        if self.alive:
            self.kill()  # Lambda stops the environment at the deadline
            return Timeout(request_id, timeout)
        return Died(request_id, self.returncode)

    # ── the process ──

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def rss_mb(self) -> float | None:
        """Resident memory of the environment's processes (the runtime and its children),
        in MB (Linux ``/proc``); None when it is not running."""
        if not self.alive or self._proc is None:
            return None
        page, total = os.sysconf("SC_PAGE_SIZE"), 0
        for pid in group_pids(self._proc.pid):
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
        return total / (1024 * 1024)

    def _settle(self, grace: float) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """Kill the environment's processes (SIGKILL to its process group)."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        """Kill the processes, stop the Runtime API, remove the environment's temp dir."""
        with self._lock:
            self._closed = True
        self.kill()
        self._api.close()
        for thread in self._threads:
            thread.join(timeout=5)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
