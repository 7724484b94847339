"""A local AWS Lambda emulator that runs the real handler, the way Lambda does.

::

  client (LambdaBackend, endpoint_url=E)     moto server at E (python -m dolambda.emulator.moto)
  ──────────────────────────────────────     ─────────────────────────────────────────────────────
  PUT <prefix>/queue/<job>/<task>.task ────► S3: the bucket notification matches a
                                             LambdaFunctionConfiguration (prefix, suffix,
                                             ObjectCreated:*) -> an AWS-shaped record
  lambda.Invoke(InvocationType="Event", ───► Lambda Invoke API       │ (key quote_plus'ed)
    {"bucket", "key", "task"})                       │               │
                                                     ▼               ▼
                                             per-function mailbox (patched moto, no Docker)
                                                     │ GET /_dolambda/poll (long poll)
  this package ──────────────────────────────────────┼───────────────────────────────────────
                                                     ▼
                                             intake thread: drop_fraction, duplicate_events,
                                                     │      event_delay, shuffle (seeded)
                                                     ▼
                                             pending heap (by due time)
                                                     │ dispatcher: at most `workers` at once,
                                                     ▼ the warmest idle worker first
  results/<job>/<task>.out ◄─ PUT If-None-Match ─ an execution environment per slot, warm
                                                  between invocations, killed at the timeout
                                                  or when its RSS (with its children's)
                                                  passes memory_mb (a fresh one takes its
                                                  place on the next event)

Each execution environment (runtime.SandboxProcess) is a sandbox.Sandbox: ``python -I -S``
under AWS's awslambdaric, speaking the Runtime API (runtime_api) to the emulator, in a
working directory and ``/tmp`` of its own. Its task root is the function's package as
``dolambda deploy`` builds it (deploy.package.build_task_root: handler/, dolambda, dill,
pydantic, numpy... copied from this interpreter, cached by their inputs), boto3 comes
from the runtime directory, the environment is Lambda's and nothing of the client's (no
venv, no current directory, no PYTHONPATH). So the user's own modules reach a worker only
as they reach Lambda: in the job's code archive. Init errors (Runtime.ImportModuleError...)
are the invocation's error.

With an ``endpoint_url`` that is a plain S3 server (no notifications, e.g.
SeaweedFS), ``discovery="poll"`` LISTs ``<prefix>/queue/`` every
``poll_interval`` seconds instead and makes the same S3 event records for new
``.task`` objects (only ``trigger="s3"`` works then).

The rooms: :mod:`~dolambda.emulator.config` (settings, stats),
:mod:`~dolambda.emulator.moto` (the patched moto server and :func:`launch_moto`),
:mod:`~dolambda.emulator.setup` (deploy's own setup of the bucket, role,
function and trigger in it, and the role's STS credentials the workers run with),
:mod:`~dolambda.emulator.intake` (mailbox or poll discovery, fault knobs),
:mod:`~dolambda.emulator.dispatch` (pending heap, warmest worker, retries and
on-failure destination records), :mod:`~dolambda.emulator.runtime` (worker
environments, timeouts, memory watch), :mod:`~dolambda.emulator.sandbox` (one
execution environment), :mod:`~dolambda.emulator.runtime_api` (the Lambda Runtime API
it talks to) and :mod:`~dolambda.emulator.events` (S3 records). This facade owns the
lifecycle: :class:`Emulator` starts and stops them together.

>>> import dolambda.emulator
>>> with dolambda.emulator.start(workers=2) as backend:    # doctest: +SKIP
...     dolambda.foreach(x=range(10)).combine(sum).run(lambda x: x * x, backend=backend)
285
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

from dolambda._errors import BackendError, InvalidArgument
from dolambda._wire import keys as _keys
from dolambda._wire.codec import signing_key_bytes
from dolambda.emulator import setup
from dolambda.emulator.config import EmulatorConfig, EmulatorStats, make_config
from dolambda.emulator.dispatch import Dispatcher
from dolambda.emulator.intake import Intake, MailboxClient
from dolambda.emulator.moto import launch_moto
from dolambda.emulator.runtime import Runtime

__all__ = ["DEFAULT_PORT", "Emulator", "EmulatorStats", "launch_moto", "serve", "start"]

log = logging.getLogger("dolambda.emulator")


class Emulator:
    """Run ``handler/lambda_function.py`` like AWS Lambda, fed by a local S3 (moto).

    ``workers`` is the function's concurrency limit; ``timeout`` (seconds) and
    ``memory_mb`` its configuration. With no ``endpoint_url`` a moto server is
    started on 127.0.0.1 (a free port unless ``port``) and set up by deploy's own code
    (:mod:`~dolambda.emulator.setup`): bucket, role and its policy, function, S3 invoke
    permission and, for ``trigger="s3"``, the bucket notification; the workers act as
    the role (its STS credentials; the S3 server enforces its policy). Test knobs:
    ``duplicate_events`` (every async event twice), ``drop_fraction`` (seeded),
    ``event_delay`` (seconds before delivery) and ``shuffle`` (a random delay in
    ``[0, max(event_delay, 0.05)]`` instead), and
    ``slow_fraction`` (seeded, per invocation: a backup of a slowed task is normally not
    slowed): that fraction of invocations takes ``slow_factor`` times as long as a
    typical one (it holds its slot for ``slow_factor - 1`` times the median duration of
    the invocations so far before the handler runs, as a stalled environment would).
    The function's event-invoke config, applied as Lambda does (see
    :mod:`~dolambda.emulator.dispatch`): ``retries`` (0-2, Lambda's
    ``MaximumRetryAttempts``; 0 as deployed: the client owns retries), retried 1 and
    then 2 minutes after each failure; ``max_event_age`` (seconds an event may wait);
    ``on_failure``, an S3 bucket (name or ARN) that receives the invocation record of an
    event that failed for good, under ``aws/lambda/async/<function>/`` (None as deployed);
    ``time_scale`` multiplies those delays and ages (tests shrink it).
    ``handler``/``task_root`` name another handler
    (``task_root`` holds ``lambda_function.py`` unless ``handler`` says otherwise; the
    function's package is a layer after it, so it can wrap the real handler). The
    workers are isolated Lambda environments running the function's package (see the
    module docstring); ``requirements`` names installed distributions the package holds
    besides dolambda's own, as ``dolambda deploy --requirements`` adds them on AWS (e.g.
    ``["pandas"]`` for bodies that use pandas).
    ``account_concurrency``: the account's concurrency quota that Lambda's
    ``GetAccountSettings`` reports (AWS's default 1,000; new accounts get far less), which
    the client sizes its jobs from; set on the emulator's moto server (shared by the
    emulators on it), it does not change how many invocations run here (``workers``).
    """

    def __init__(
        self,
        workers: int = 2,
        endpoint_url: str | None = None,
        bucket: str = "dolambda-emulator",
        function_name: str = "dolambda",
        region: str = "us-east-1",
        prefix: str = "dolambda",
        timeout: float = 60.0,
        memory_mb: int = 1024,
        signing_key: str | bytes | None = None,
        trigger: str = "s3",
        duplicate_events: bool = False,
        drop_fraction: float = 0.0,
        event_delay: float = 0.0,
        seed: int = 0,
        discovery: str = "auto",
        *,
        shuffle: bool = False,
        retries: int = 0,
        max_event_age: float = 6 * 3600,
        on_failure: str | None = None,
        time_scale: float = 1.0,
        poll_interval: float = 0.1,
        port: int = 0,
        handler: str | None = None,
        task_root: str | os.PathLike[str] | None = None,
        requirements: Iterable[str] = (),
        account_concurrency: int = 1000,
        slow_fraction: float = 0.0,
        slow_factor: float = 20.0,
        memory_tiers: Iterable[int] = (),
    ) -> None:
        self.config: EmulatorConfig = make_config(
            workers=workers,
            bucket=bucket,
            function_name=function_name,
            region=region,
            prefix=prefix,
            timeout=timeout,
            memory_mb=memory_mb,
            signing_key=signing_key,
            trigger=trigger,
            duplicate_events=duplicate_events,
            drop_fraction=drop_fraction,
            event_delay=event_delay,
            seed=seed,
            discovery=discovery,
            shuffle=shuffle,
            retries=retries,
            max_event_age=max_event_age,
            on_failure=on_failure,
            time_scale=time_scale,
            poll_interval=poll_interval,
            port=port,
            handler=handler,
            task_root=task_root,
            requirements=requirements,
            account_concurrency=account_concurrency,
            slow_fraction=slow_fraction,
            slow_factor=slow_factor,
            memory_tiers=memory_tiers,
        )
        self._given_endpoint = endpoint_url
        self.endpoint_url: str = endpoint_url or ""
        self.function_arn = ""
        #: how events are found: "events" or "poll" once started ("auto" resolved)
        self.discovery = discovery
        #: the most recent events handed to the dispatcher, as ``(source, event)``
        self.recent_events: deque[tuple[str, Any]] = deque(maxlen=1000)

        self._cond = threading.Condition()  # guards the stats and the dispatcher's state
        self._stats = EmulatorStats()
        self._stopping = threading.Event()
        self._runtime: Runtime | None = None
        self._dispatcher: Dispatcher | None = None
        self._mailbox: MailboxClient | None = None
        self._marker_s3: Any = None  # the client that wrote emulator.json (discovery="poll")
        self._threads: list[threading.Thread] = []
        self._moto: subprocess.Popen[bytes] | None = None
        self._backend: Any = None
        self._started = False

    # ------------------------------------------------------------------ settings

    @property
    def workers(self) -> int:
        return self.config.workers

    @property
    def bucket(self) -> str:
        return self.config.bucket

    @property
    def function_name(self) -> str:
        return self.config.function_name

    @property
    def region(self) -> str:
        return self.config.region

    @property
    def prefix(self) -> str:
        return self.config.prefix

    @property
    def timeout(self) -> float:
        return self.config.timeout

    @property
    def memory_mb(self) -> int:
        return self.config.memory_mb

    @property
    def signing_key(self) -> str:
        """The key the workers check signatures with (hex)."""
        return self.config.signing_key

    @property
    def trigger(self) -> str:
        return self.config.trigger

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Emulator:
        if self._started:
            return self
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        c = self.config
        if self._given_endpoint is None:
            self._moto, self.endpoint_url = launch_moto(c.port)
        mailbox = self._mailbox = MailboxClient(self.endpoint_url)
        mode = self.discovery
        if mode == "auto":
            mode = "events" if self._given_endpoint is None or mailbox.has_mailbox() else "poll"
        if mode == "events" and self._given_endpoint is not None and not mailbox.has_mailbox():
            raise BackendError(
                f"Emulator: {self.endpoint_url} is not a dolambda emulator moto server "
                "(no /_dolambda/ping); use discovery='poll' for a plain S3 server"
            )
        if mode == "poll" and c.trigger == "invoke":
            raise InvalidArgument(
                "Emulator: trigger='invoke' needs the emulator's own moto server; polling S3 "
                "(discovery='poll') only sees task objects, so use trigger='s3'"
            )
        self.discovery = mode
        if mode == "events":  # the emulator's own moto server answers GetAccountSettings
            mailbox.set_account_concurrency(c.account_concurrency)
        session = setup.session(c.region)
        if mode == "events":
            # deploy's own setup; the workers get the role's credentials from STS
            self.function_arn, role_credentials = setup.ensure_all(session, self.endpoint_url, c)
        else:
            role_credentials = None  # a plain S3 server has no IAM: the client's credentials
            s3 = session.client("s3", endpoint_url=self.endpoint_url)
            setup.ensure_bucket(s3, c.bucket, c.region)
            self.function_arn = f"arn:aws:lambda:{c.region}:123456789012:function:{c.function_name}"
            # no notification on a plain S3 server: tell clients who runs the tasks instead
            s3.put_object(
                Bucket=c.bucket,
                Key=_keys.emulator_key(c.prefix),
                Body=json.dumps({"function_name": c.function_name, "pid": os.getpid()}),
            )
            self._marker_s3 = s3
        stats, cond, stopping = self._stats, self._cond, self._stopping
        runtime = self._runtime = Runtime(
            c,
            endpoint_url=self.endpoint_url,
            function_arn=self.function_arn,
            stats=stats,
            lock=cond,
            stopping=stopping,
        )
        runtime.credentials = role_credentials
        runtime.prepare()  # the function's package and runtime directory (built or cached)
        # what the workers can import, where deploy puts it for clients: the package's record
        assert runtime.package is not None
        record = (runtime.package / "package.json").read_bytes()
        session.client("s3", endpoint_url=self.endpoint_url).put_object(
            Bucket=c.bucket, Key=_keys.package_record_key(c.prefix, c.function_name), Body=record
        )
        dispatcher = self._dispatcher = Dispatcher(
            c, runtime, stats=stats, cond=cond, stopping=stopping, reply=mailbox.reply
        )
        loops: list[tuple[Callable[[], None], str]] = []
        if mode == "events":  # the rules come from the function's event-invoke config
            read_rules = setup.async_rules_reader(session, self.endpoint_url, c)
            dispatcher.rules = read_rules()
            loops.append((lambda: dispatcher.follow(read_rules), "async-rules"))
        intake = Intake(
            c,
            endpoint_url=self.endpoint_url,
            mailbox=mailbox,
            dispatcher=dispatcher,
            stats=stats,
            cond=cond,
            stopping=stopping,
            recent_events=self.recent_events,
        )
        for target, name in (
            (intake.events_loop if mode == "events" else intake.poll_loop, "intake"),
            (dispatcher.loop, "dispatch"),
            (runtime.memory_loop, "memory"),
            *loops,
        ):
            thread = threading.Thread(target=target, name=f"dolambda-emulator-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info(
            "emulator: function %s (%d workers, timeout %gs, %d MB) on %s, discovery=%s",
            c.function_name,
            c.workers,
            c.timeout,
            c.memory_mb,
            self.endpoint_url,
            mode,
        )

    def stop(self) -> None:
        """Stop everything this emulator started; safe to call twice."""
        self._stopping.set()
        s3, self._marker_s3 = self._marker_s3, None
        if s3 is not None:
            with contextlib.suppress(Exception):
                s3.delete_object(Bucket=self.config.bucket, Key=_keys.emulator_key(self.prefix))
        with self._cond:
            self._cond.notify_all()
        if self._runtime is not None:
            self._runtime.kill_all()
        if self._moto is not None:
            self._moto.terminate()  # long polls and in-flight S3 calls fail at once
        deadline = time.monotonic() + 10
        for thread in self._threads:
            while thread.is_alive() and time.monotonic() < deadline:
                if self._mailbox is not None:
                    self._mailbox.interrupt()
                thread.join(timeout=0.05)
        if self._dispatcher is not None:
            self._dispatcher.join_running(deadline)
        if self._runtime is not None:
            self._runtime.close_all()
        if self._moto is not None:
            moto, self._moto = self._moto, None
            try:
                moto.wait(timeout=5)
            except subprocess.TimeoutExpired:
                moto.kill()
                moto.wait()
            for stream in (moto.stdin, moto.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ public views

    @property
    def stats(self) -> EmulatorStats:
        with self._cond:
            return replace(self._stats)

    @property
    def backend(self) -> Any:
        """A ``LambdaBackend`` wired to this emulator (created on first use)."""
        if self._backend is None:
            # imported here, not at the top: the moto server (python -m
            # dolambda.emulator.moto) imports this package and need not load the client
            from dolambda._backends.lambda_ import LambdaBackend

            self._backend = LambdaBackend(**self.backend_settings())
        return self._backend

    def backend_settings(self) -> dict[str, Any]:
        """The ``LambdaBackend(...)`` keyword arguments that talk to this emulator."""
        c = self.config
        return {
            "bucket": c.bucket,
            "function_name": c.function_name,
            "region": c.region,
            "endpoint_url": self.endpoint_url,
            "prefix": c.prefix,
            "trigger": c.trigger,
            "task_timeout": c.timeout,
            "max_concurrency": c.workers,
            "signing_key": c.signing_key,
            "memory_mb": c.memory_mb,
            "memory_tiers": list(c.memory_tiers),
            # the emulator's S3 accepts any key: never depend on the user's AWS setup
            "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        }

    def worker_pids(self) -> list[int]:
        """The process ids of the live workers."""
        return [] if self._runtime is None else self._runtime.worker_pids()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until nothing is pending or running (events still in flight in S3 excepted)."""
        return True if self._dispatcher is None else self._dispatcher.wait_idle(timeout)


@contextlib.contextmanager
def start(**kwargs: Any) -> Iterator[Any]:
    """``with start(workers=2) as backend:`` a started :class:`Emulator`'s ``LambdaBackend``."""
    with Emulator(**kwargs) as emulator:
        yield emulator.backend


def _say(line: str) -> None:
    print(line, flush=True)


#: the port ``dolambda emulator`` listens on unless told otherwise (or it is taken)
DEFAULT_PORT = 4599


def serve(
    *,
    port: int | None = None,
    signing_key: str | None = None,
    echo: Callable[[str], None] = _say,
    **kwargs: Any,
) -> None:
    """Run an emulator until Ctrl-C or SIGTERM (the ``dolambda emulator`` command).

    It listens on ``port`` (default :data:`DEFAULT_PORT`, or a free one when that is
    taken), signs with ``signing_key`` (default: the key kept in the config directory,
    the same at every start), and writes the ``emulator`` client config while it runs
    (:mod:`dolambda._config`), so that ``LambdaBackend()`` and the ``dolambda`` commands
    find it; the config is removed when it stops.
    """
    from dolambda import _config  # (the emulator's workers import this package: on use)

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        running = _config.read_config(_config.EMULATOR_PROFILE)
    except Exception:  # an unreadable leftover: overwritten below
        running = None
    # (a stale one, left by a killed emulator, is replaced)
    if (
        running is not None
        and running.pid not in (None, os.getpid())
        and _config.emulator_alive(running)
    ):
        raise BackendError(
            f"a dolambda emulator is already running at {running.endpoint_url} "
            f"(pid {running.pid}); use it, or stop it first"
        )
    note = ""
    if kwargs.get("endpoint_url") is None:
        if port is None:
            port = DEFAULT_PORT if _port_free(DEFAULT_PORT) else 0
            if port == 0:
                note = f" (port {DEFAULT_PORT} is taken: pass --port to choose one)"
        elif not _port_free(port):
            raise InvalidArgument(
                f"port {port} on 127.0.0.1 is in use; choose another --port (or none: "
                f"{DEFAULT_PORT}, else a free one)"
            )
    key = signing_key or _config.emulator_signing_key()
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    path = _config.config_path(_config.EMULATOR_PROFILE)
    try:
        with Emulator(port=port or 0, signing_key=key, **kwargs) as emulator:
            settings = emulator.backend_settings()
            _config.save_config(
                _config.ClientConfig(
                    bucket=emulator.bucket,
                    function_name=emulator.function_name,
                    region=emulator.region,
                    prefix=emulator.prefix,
                    signing_key=emulator.signing_key,
                    endpoint_url=emulator.endpoint_url,
                    memory_mb=emulator.memory_mb,
                    memory_tiers=list(emulator.config.memory_tiers),
                    timeout=max(1, round(emulator.timeout)),
                    max_concurrency=emulator.workers,
                    pid=os.getpid(),
                    aws_access_key_id=settings["aws_access_key_id"],
                    aws_secret_access_key=settings["aws_secret_access_key"],
                ),
                _config.EMULATOR_PROFILE,
            )
            echo(
                f"dolambda emulator: endpoint {emulator.endpoint_url}{note} "
                f"({emulator.workers} workers, bucket {emulator.bucket}, "
                f"discovery={emulator.discovery})"
            )
            echo(
                f"  client config: {path} (removed when the emulator stops)\n"
                "  LambdaBackend() and the dolambda commands use it when no setup is "
                "deployed; to choose it over a deployed one:\n"
                f"    export DOLAMBDA_PROFILE={_config.EMULATOR_PROFILE}\n"
                "  for other AWS tools (the aws CLI, boto3):\n"
                f"    export AWS_ENDPOINT_URL={emulator.endpoint_url} "
                f"AWS_ACCESS_KEY_ID={settings['aws_access_key_id']} "
                f"AWS_SECRET_ACCESS_KEY={settings['aws_secret_access_key']} "
                f"AWS_DEFAULT_REGION={emulator.region}\n"
                f"  signing key: {emulator.signing_key} (the same at every start: "
                f"{_config.config_dir() / 'emulator.key'})"
            )
            exported = os.environ.get("DOLAMBDA_SIGNING_KEY")
            if exported and signing_key_bytes(exported) != bytes.fromhex(emulator.signing_key):
                echo(
                    "  note: DOLAMBDA_SIGNING_KEY is set here to another key, and a client "
                    "with it set signs with that key (it wins over the config): unset it, or "
                    'start the emulator with --signing-key "$DOLAMBDA_SIGNING_KEY"'
                )
            echo("Ctrl-C to stop.")
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
            echo(f"dolambda emulator: stopping ({emulator.stats})")
    finally:
        _config.remove_config(_config.EMULATOR_PROFILE, pid=os.getpid())
        signal.signal(signal.SIGTERM, previous)


def _port_free(port: int) -> bool:
    """Whether ``port`` on 127.0.0.1 can be listened on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # as the server binds: a port whose last connections linger in TIME_WAIT is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
