"""The function's execution environments: slots, warm reuse, limits.

One :class:`Slot` per unit of concurrency holds at most one execution environment, a
:class:`SandboxProcess`: a :class:`~dolambda.emulator.sandbox.Sandbox` running the
function's package under AWS's ``awslambdaric`` (``python -I``, nothing of the client's
environment), as Lambda does. It initialises once (a cold start) and then serves one
invocation at a time (warm reuse). :meth:`Runtime.invoke` runs one handler call on a
slot and says how it ended, as Lambda would: the handler's payload, its error, Lambda's
init error (``Runtime.ImportModuleError``...), or ``Sandbox.Timedout`` /
``Runtime.OutOfMemory`` / ``Runtime.ExitError`` when the environment was killed at the
timeout, killed for passing ``memory_mb`` (:meth:`Runtime.memory_loop`: the resident
memory of the runtime and every process it started) or died on its own (the memory
watch kills the largest process, as Linux's OOM killer does in Lambda's cgroup, so a
worker's child doing the work dies and the runtime lives to report it). A dead
environment is replaced on the slot's next invocation. Each call logs Lambda's
``START`` and ``REPORT`` lines.

There is no address-space rlimit: Lambda limits memory with its cgroup, not
``RLIMIT_AS``, so a function may map more than it touches; the RSS watch is the only
limit, as on Lambda.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dolambda.emulator.config import EmulatorConfig, EmulatorStats

if TYPE_CHECKING:
    from dolambda.emulator.sandbox import Credentials, Outcome, Sandbox

# The runtime's heavier modules (deploy's builder, the sandbox, the Runtime API) are
# imported where they are used: the moto server (python -m dolambda.emulator.moto)
# imports this package, and each cold start would pay for them.

log = logging.getLogger("dolambda.emulator")

#: Lambda's limit on the init phase of an on-demand function (10 s; past it the init is
#: retried within the invocation's own timeout):
#: https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html
INIT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Answer:
    """How one invocation ended: ``error_type`` None and the payload's JSON text, or an error."""

    error_type: str | None
    text: str

    @property
    def ok(self) -> bool:
        return self.error_type is None


class SandboxProcess:
    """One isolated execution environment on a slot: a :class:`Sandbox` (``python -I -S``
    under ``awslambdaric``, the function's package as its task root) and what the
    emulator tracks about it."""

    def __init__(
        self, sandbox: Sandbox, tag: str, version: str = "$LATEST", memory_mb: int = 1024
    ) -> None:
        self.sandbox = sandbox
        self.tag = tag
        #: the function version it serves and that version's memory limit (MB)
        self.version = version
        self.memory_mb = memory_mb
        self.logs: deque[str] = deque(maxlen=50)
        self.kill_reason: str | None = None
        self.kill_detail = ""
        self.served = 0
        self.init_ms = 0.0
        self.peak_mb = 0.0
        self.pids: set[int] = set()  # the group's other processes, refreshed by memory_loop

    @property
    def pid(self) -> int:
        return self.sandbox.pid or 0

    @property
    def alive(self) -> bool:
        return self.sandbox.alive

    def on_output(self, line: str) -> None:
        self.logs.append(line)
        log.info("%s %s", self.tag, line)

    def rss_mb(self) -> float:
        """Resident memory of the environment's processes (the runtime and its children).

        Finding the group's processes walks ``/proc`` (milliseconds), so
        :meth:`Runtime.memory_loop` refreshes ``pids`` for every slot at once, once a
        second; reading their ``statm`` is cheap."""
        pid = self.sandbox.pid
        if pid is None or not self.sandbox.alive:
            return 0.0
        total = 0
        for member in self.pids | {pid}:
            try:
                with open(f"/proc/{member}/statm", "rb") as f:
                    total += int(f.read().split()[1])
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
        rss = total * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
        self.peak_mb = max(self.peak_mb, rss)
        return rss

    def members(self) -> set[int]:
        """The runtime and its processes: the last ``/proc`` scan's, and its direct
        children now (a child forked since the scan counts at once)."""
        pid = self.sandbox.pid
        if pid is None:
            return set()
        found = self.pids | {pid}
        with (
            contextlib.suppress(OSError, ValueError),
            open(f"/proc/{pid}/task/{pid}/children", "rb") as f,
        ):
            found.update(int(child) for child in f.read().split())
        return found

    def over_limit(self, limit_mb: int) -> tuple[float, int | None]:
        """Whether the environment uses more than ``limit_mb`` as its cgroup would count
        it, and the process the OOM killer would pick: ``(MB used, victim pid)``.

        Resident sizes count a forked child's copy-on-write pages twice, a cgroup once:
        past the limit by RSS, the proportional set sizes (``smaps_rollup``) decide.
        The victim is the largest process (Linux's OOM killer picks by RSS), which is
        the worker's child doing the work, not the runtime."""
        sizes: dict[int, int] = {}
        for member in self.members():
            try:
                with open(f"/proc/{member}/statm", "rb") as f:
                    sizes[member] = int(f.read().split()[1])
            except (OSError, ValueError, IndexError):
                continue
        page_mb = os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
        rss = sum(sizes.values()) * page_mb
        self.peak_mb = max(self.peak_mb, rss)
        if rss <= limit_mb:
            return rss, None
        pss_kb = 0
        for member in sizes:
            with (
                contextlib.suppress(OSError, ValueError, IndexError),
                open(f"/proc/{member}/smaps_rollup", "rb") as f,
            ):
                for line in f:
                    if line.startswith(b"Pss:"):
                        pss_kb += int(line.split()[1])
                        break
        used = pss_kb / 1024
        if used <= limit_mb:
            return used, None
        return used, max(sizes, key=lambda m: sizes[m])

    def kill(self, reason: str, detail: str = "") -> None:
        if self.kill_reason is None:
            self.kill_reason, self.kill_detail = reason, detail
        pid = self.sandbox.pid
        if pid is not None:  # SIGKILL to the group; the sandbox's reaper notices
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    def close(self) -> None:
        self.sandbox.close()


class Slot:
    """One unit of concurrency; holds a warm process between invocations."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: SandboxProcess | None = None


class Runtime:
    """The function's slots and the handler calls on them.

    ``stats`` is updated under ``lock`` (the emulator's one condition); ``stopping``
    is the emulator's stop flag: no new call starts once it is set. With
    :meth:`prepare` builds (or finds in the cache) the function's
    package and the runtime directory before the first environment starts.
    """

    def __init__(
        self,
        config: EmulatorConfig,
        *,
        endpoint_url: str,
        function_arn: str,
        stats: EmulatorStats,
        lock: threading.Condition,
        stopping: threading.Event,
    ) -> None:
        self.config = config
        self.endpoint_url = endpoint_url
        self.function_arn = function_arn
        self.slots = [Slot(i) for i in range(config.workers)]
        self._stats = stats
        self._lock = lock
        self._stopping = stopping
        self.package: Path | None = None  # the function's package (the task root)
        self.runtime_dir: Path | None = None  # LAMBDA_RUNTIME_DIR
        #: the role's credentials from STS (the emulator's setup); None: the client's own
        self.credentials: Credentials | None = None

    def prepare(self) -> None:
        """Build or find the function's package and the runtime directory."""
        if self.package is not None:
            return
        from dolambda.deploy import package
        from dolambda.emulator.sandbox import runtime_dir

        cache = package.cache_dir()
        self.package = package.build_task_root(cache, self.config.requirements)
        self.runtime_dir = runtime_dir(cache)

    def worker_pids(self) -> list[int]:
        """The process ids of the live workers."""
        return [s.process.pid for s in self.slots if s.process is not None]

    def kill_all(self) -> None:
        """Kill every worker at once (the emulator is stopping)."""
        for slot in self.slots:
            process = slot.process
            if process is not None:
                process.kill("stopped")

    def close_all(self) -> None:
        """Reap every worker process."""
        for slot in self.slots:
            if slot.process is not None:
                slot.process.close()
                slot.process = None

    def invoke(
        self,
        slot: Slot,
        event: Any,
        version: str = "$LATEST",
        memory_mb: int | None = None,
    ) -> Answer | None:
        """One handler call of the function's ``version`` (with its ``memory_mb``; None:
        the emulator's own) on the slot's process; None when the emulator is stopping."""
        if self._stopping.is_set():
            return None
        return self._invoke(slot, event, version, memory_mb or self.config.memory_mb)

    def sandbox_environment(self) -> dict[str, str]:
        """The function's own environment variables (what deploy sets), pointed at this
        emulator's S3; Lambda's reserved variables are the sandbox's to set."""
        c = self.config
        return {
            "DOLAMBDA_SIGNING_KEY": c.signing_key,
            "DOLAMBDA_PREFIX": c.prefix,
            "DOLAMBDA_BUCKET": c.bucket,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            # (a remote dispatcher invokes the function: the emulator's Lambda API)
            "AWS_ENDPOINT_URL_LAMBDA": self.endpoint_url,
            "AWS_ENDPOINT_URL": self.endpoint_url,  # no AWS service is reachable from here
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def _new_sandbox(self, slot: Slot, version: str, memory_mb: int) -> SandboxProcess:
        from dolambda.emulator.sandbox import Credentials, Sandbox

        c = self.config
        self.prepare()
        assert self.package is not None and self.runtime_dir is not None
        own_root = Path(c.task_root) if c.task_root else None
        holder: list[SandboxProcess] = []
        sandbox = Sandbox(
            # a handler of the user's own: its directory is the task root and the
            # function's package a layer after it (as /opt/python is on Lambda)
            task_root=own_root or self.package,
            layers=[self.package] if own_root else [],
            runtime=self.runtime_dir,
            handler=c.handler,
            function_name=c.function_name,
            memory_mb=memory_mb,
            version=version,
            region=c.region,
            credentials=self.credentials
            or Credentials(
                os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            ),
            environment=self.sandbox_environment(),
            init_timeout=max(INIT_TIMEOUT, c.timeout),
            on_output=lambda line: holder[0].on_output(line) if holder else log.info(line),
        )
        tag = f"{c.function_name}#{slot.index}" + ("" if version == "$LATEST" else f":{version}")
        process = SandboxProcess(sandbox, tag, version, memory_mb)
        holder.append(process)
        return process

    def _invoke(self, slot: Slot, event: Any, version: str, memory_mb: int) -> Answer | None:
        from dolambda.emulator.runtime_api import FunctionError, InitError, Response
        from dolambda.emulator.sandbox import Timeout

        c = self.config
        process = slot.process
        if (
            process is None
            or process.kill_reason is not None
            or not process.alive
            or (process.version, process.memory_mb) != (version, memory_mb)
        ):
            # (an environment serves one version: another version's is replaced)
            if process is not None:
                process.close()
            process = slot.process = self._new_sandbox(slot, version, memory_mb)
            if self._stopping.is_set():
                return None
        if process.served == 0:
            not_ready = process.sandbox.wait_ready()
            if not_ready is not None:  # Lambda's init failed: report it, replace the env
                process.close()
                slot.process = None
                with self._lock:
                    self._stats.errors += 1
                return self._init_failed(process, not_ready)
            process.init_ms = (process.sandbox.init_duration or 0.0) * 1000
        request_id = str(uuid.uuid4())
        cold = process.served == 0
        process.served += 1
        with self._lock:
            self._stats.invocations += 1
            if cold:
                self._stats.cold_starts += 1
        log.info("%s START RequestId: %s Version: %s", process.tag, request_id, version)
        started = time.perf_counter()
        outcome = process.sandbox.invoke(
            json.dumps(event).encode(), c.timeout, request_id=request_id
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        rss = max(process.peak_mb, process.rss_mb())
        if isinstance(outcome, Response):
            with self._lock:
                self._stats.completed += 1
            self._report(process, request_id, elapsed_ms, rss, cold)
            return Answer(None, outcome.payload.decode("utf-8", "replace") or "null")
        if isinstance(outcome, FunctionError):  # the handler raised: the env stays warm
            with self._lock:
                self._stats.errors += 1
            self._report(process, request_id, elapsed_ms, rss, cold)
            return Answer(outcome.error_type, outcome.error_message)
        if isinstance(outcome, InitError):  # cannot happen after a successful init
            process.close()
            slot.process = None
            with self._lock:
                self._stats.errors += 1
            return self._init_failed(process, outcome)
        # the environment is gone: the deadline (Sandbox killed it), our memory watch, a crash
        reason = process.kill_reason
        if isinstance(outcome, Timeout) and reason is None:
            reason = process.kill_reason = "timeout"
        exit_text = outcome.error_message.partition(" Error: ")[2] or outcome.error_message
        error_type, message = self._died(process, request_id, reason, c.timeout, exit_text)
        self._report(process, request_id, elapsed_ms, rss, cold)
        process.close()
        slot.process = None
        return Answer(error_type, message)

    def _init_failed(self, process: SandboxProcess, outcome: Outcome) -> Answer:
        """Lambda's init failure (``Runtime.ImportModuleError``, ``Runtime.HandlerNotFound``,
        an init timeout or exit), logged and answered as the invocation's error."""
        from dolambda.emulator.runtime_api import InitError
        from dolambda.emulator.sandbox import Timeout

        if isinstance(outcome, InitError):
            error_type, message = outcome.error_type, outcome.error_message
        elif isinstance(outcome, Timeout):
            error_type = "Sandbox.Timedout"
            message = f"INIT_REPORT Init Duration: {outcome.seconds * 1000:.2f} ms Phase: init"
        else:
            error_type, message = "Runtime.ExitError", getattr(outcome, "error_message", "")
        log.error("%s init failed: %s: %s", process.tag, error_type, message)
        return Answer(error_type, f"{error_type}: {message}")

    def _died(
        self,
        process: SandboxProcess,
        request_id: str,
        reason: str | None,
        timeout: float,
        exit_text: str,
    ) -> tuple[str, str]:
        """Count and log an environment that is gone mid-invocation (killed at the timeout,
        killed by the memory watch, or crashed): Lambda's error type and message for it."""
        with self._lock:
            if reason == "timeout":
                self._stats.timeouts += 1
            elif reason == "memory":
                self._stats.killed += 1
            elif reason != "stopped":
                self._stats.crashed += 1
        if reason == "timeout":
            message = f"Task timed out after {timeout:.2f} seconds"
            log.warning("%s %s %s", process.tag, request_id, message)
            return "Sandbox.Timedout", message
        if reason == "memory":
            message = (
                f"Runtime exited with error: signal: killed (out of memory: {process.kill_detail})"
            )
            log.warning("%s %s killed for memory: %s", process.tag, request_id, process.kill_detail)
            return "Runtime.OutOfMemory", message
        log.warning("%s %s %s", process.tag, request_id, exit_text)
        return "Runtime.ExitError", exit_text

    def _report(
        self,
        process: SandboxProcess,
        request_id: str,
        duration_ms: float,
        rss_mb: float,
        cold: bool,
    ) -> None:
        init = f"\tInit Duration: {process.init_ms:.2f} ms" if cold else ""
        log.info(
            "%s REPORT RequestId: %s\tDuration: %.2f ms\tBilled Duration: %d ms\t"
            "Memory Size: %d MB\tMax Memory Used: %d MB%s",
            process.tag,
            request_id,
            duration_ms,
            math.ceil(duration_ms),
            process.memory_mb,
            math.ceil(rss_mb),
            init,
        )

    def memory_loop(self) -> None:
        """Kill a worker whose resident memory passes its version's ``memory_mb`` (Lambda's
        OOM kill)."""
        scanned = 0.0
        while not self._stopping.wait(0.02):
            now = time.monotonic()
            if now - scanned >= 1.0:  # the runtimes' children count too
                from dolambda.emulator.sandbox import sessions_pids

                scanned = now
                boxes = [s.process for s in self.slots if isinstance(s.process, SandboxProcess)]
                groups = sessions_pids(box.pid for box in boxes if box.pid)
                for box in boxes:
                    box.pids = groups.get(box.pid, set())
            for slot in self.slots:
                process = slot.process
                if process is None or process.kill_reason is not None:
                    continue
                limit = getattr(process, "memory_mb", self.config.memory_mb)
                if isinstance(process, SandboxProcess):
                    used, victim = process.over_limit(limit)
                    if victim is None:
                        continue
                    if victim != process.pid:  # the OOM killer takes the largest process
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.kill(victim, signal.SIGKILL)
                        with self._lock:
                            self._stats.killed += 1
                        log.warning(
                            "%s out of memory: killed process %d (%.0f MB > limit %d MB)",
                            process.tag,
                            victim,
                            used,
                            limit,
                        )
                        continue
                    process.kill("memory", f"{used:.0f} MB > limit {limit} MB")
                    continue
                rss = process.rss_mb()
                if rss > limit:
                    process.kill("memory", f"RSS {rss:.0f} MB > limit {limit} MB")
