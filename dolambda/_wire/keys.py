"""The only S3 key layout. Nothing else in dolambda spells a key.

::

    <prefix>/jobs/<job>/manifest.json    JobManifest (signed JSON)
    <prefix>/bodies/<sha256>-<tag>.pkl   a job's body, dill (signed for its content), shared
                                         by every job with the same body: uploaded when it
                                         is missing or old, never deleted by a job
    <prefix>/jobs/<job>/plan.json        task count, nested-loop sizes and what the client
                                         needs to resume (the loop's combine), once dispatched
    <prefix>/jobs/<job>/cancel           cancel marker (empty)
    <prefix>/jobs/<job>/dispatch         remote dispatch: every task of the job, sealed
                                         (DispatchPlan), for the dispatchers to queue
    <prefix>/queue/<job>/<task>.task     one per task; the only objects that trigger the function
    <prefix>/queue/<job>/<task>.itask    trigger="invoke": a task too large to inline
    <prefix>/results/<job>/<task>.out    one per task, written once (If-None-Match: *)
    <prefix>/code/<sha256>.zip           the user's own modules as source (signed), shared
                                         by every job that ships the same files; written
                                         once (If-None-Match: *), never deleted by a job
    <prefix>/emulator.json               a local emulator polls this bucket for tasks
                                         (a plain S3 server has no notifications)
    <prefix>/deploy/<function>-<hash>.zip  a deployment package too large to upload directly

Task numbers are zero-padded so a LIST returns them in order.

What follows from the layout lives here too, so that it cannot drift from it: the
trigger filter (:func:`trigger_filter`: the bucket notification that ``dolambda deploy``
and the emulator install), and the key globs of the worker's IAM policy
(:func:`worker_read_globs`, :func:`worker_write_globs`, :func:`dispatcher_write_globs`).
"""

from __future__ import annotations

import re

TASK_SUFFIX = ".task"
# a task too large to inline in an Invoke payload (trigger="invoke"): stored under a
# suffix the bucket notification does not match, so it cannot run twice
INVOKE_TASK_SUFFIX = ".itask"
RESULT_SUFFIX = ".out"
_JOB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _p(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def root(prefix: str) -> str:
    """Everything dolambda stores (the lifecycle rule and ``destroy`` cover this)."""
    return _p(prefix)


def emulator_key(prefix: str) -> str:
    return f"{_p(prefix)}emulator.json"


def valid_job_id(job_id: str) -> bool:
    return bool(_JOB_RE.match(job_id))


def job_dir(prefix: str, job_id: str) -> str:
    return f"{_p(prefix)}jobs/{job_id}/"


def jobs_root(prefix: str) -> str:
    return f"{_p(prefix)}jobs/"


def manifest_key(prefix: str, job_id: str) -> str:
    return f"{job_dir(prefix, job_id)}manifest.json"


def bodies_root(prefix: str) -> str:
    return f"{_p(prefix)}bodies/"


def body_key(prefix: str, digest: str, tag: str) -> str:
    """The body whose payload has sha256 ``digest`` (the manifest's ``body_digest``),
    signed with the key that ``tag`` stands for (``codec.key_tag``: jobs signed with
    another key, after a key rotation, do not find it)."""
    return f"{bodies_root(prefix)}{digest}-{tag}.pkl"


def plan_key(prefix: str, job_id: str) -> str:
    return f"{job_dir(prefix, job_id)}plan.json"


def cancel_key(prefix: str, job_id: str) -> str:
    return f"{job_dir(prefix, job_id)}cancel"


def dispatch_plan_key(prefix: str, job_id: str) -> str:
    """A remotely dispatched job's tasks, which its dispatchers queue."""
    return f"{job_dir(prefix, job_id)}dispatch"


def queue_root(prefix: str) -> str:
    return f"{_p(prefix)}queue/"


def queue_dir(prefix: str, job_id: str) -> str:
    return f"{queue_root(prefix)}{job_id}/"


def task_key(prefix: str, job_id: str, task_id: int, *, invoke: bool = False) -> str:
    suffix = INVOKE_TASK_SUFFIX if invoke else TASK_SUFFIX
    return f"{queue_dir(prefix, job_id)}{task_id:07d}{suffix}"


def results_root(prefix: str) -> str:
    return f"{_p(prefix)}results/"


def results_dir(prefix: str, job_id: str) -> str:
    return f"{results_root(prefix)}{job_id}/"


def result_key(prefix: str, job_id: str, task_id: int) -> str:
    return f"{results_dir(prefix, job_id)}{task_id:07d}{RESULT_SUFFIX}"


def deploy_package_key(prefix: str, function_name: str, package_name: str) -> str:
    """Where ``dolambda deploy`` uploads a package too large to send with the request."""
    return f"{_p(prefix)}deploy/{function_name}-{package_name}.zip"


def package_record_key(prefix: str, function_name: str) -> str:
    """What the function's package holds (its ``package.json``), for clients to read:
    written by ``dolambda deploy`` and by the emulator."""
    return f"{_p(prefix)}deploy/{function_name}.package.json"


def code_root(prefix: str) -> str:
    return f"{_p(prefix)}code/"


def code_key(prefix: str, digest: str) -> str:
    """The content-addressed source archive with sha256 ``digest``."""
    return f"{code_root(prefix)}{digest}.zip"


def trigger_filter(prefix: str) -> tuple[str, str]:
    """``(prefix, suffix)`` of the bucket notification: exactly the task objects trigger."""
    return queue_root(prefix), TASK_SUFFIX


def worker_read_globs(prefix: str) -> list[str]:
    """Key globs the worker reads (``s3:GetObject``): the queue's tasks, the jobs' objects,
    their bodies and the code archives that travel with them."""
    return [
        f"{queue_root(prefix)}*",
        f"{jobs_root(prefix)}*",
        f"{bodies_root(prefix)}*",
        f"{code_root(prefix)}*",
    ]


def worker_write_globs(prefix: str) -> list[str]:
    """Key globs the worker writes (``s3:PutObject``) for its tasks: results only."""
    return [f"{results_root(prefix)}*"]


def dispatcher_write_globs(prefix: str) -> list[str]:
    """Key globs a remote dispatcher writes (``s3:PutObject``): the task objects it
    queues (``.task``, and for trigger="invoke" the ``.itask`` too large to inline)."""
    root = queue_root(prefix)
    return [f"{root}*{TASK_SUFFIX}", f"{root}*{INVOKE_TASK_SUFFIX}"]


def parse_task_key(prefix: str, key: str) -> tuple[str, int] | None:
    """``(job_id, task_id)`` for a task key under ``prefix``, else None (not ours)."""
    root = queue_root(prefix)
    if not key.startswith(root):
        return None
    if key.endswith(TASK_SUFFIX):
        rest = key[len(root) : -len(TASK_SUFFIX)]
    elif key.endswith(INVOKE_TASK_SUFFIX):
        rest = key[len(root) : -len(INVOKE_TASK_SUFFIX)]
    else:
        return None
    job_id, sep, task = rest.partition("/")
    if not sep or not valid_job_id(job_id) or not task.isdigit():
        return None
    return job_id, int(task)


def parse_result_key(prefix: str, job_id: str, key: str) -> int | None:
    root = results_dir(prefix, job_id)
    if not key.startswith(root) or not key.endswith(RESULT_SUFFIX):
        return None
    task = key[len(root) : -len(RESULT_SUFFIX)]
    return int(task) if task.isdigit() else None
