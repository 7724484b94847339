"""``dolambda deploy --endpoint-url <emulator>``: deploy onto a running local emulator.

The emulator sets its function up with deploy's own steps (:mod:`dolambda.emulator.setup`)
and tags it :data:`EMULATOR_TAG`. Its workers run the function's package the emulator
built for this machine, with the emulator's timeout, memory and signing key, whatever
moto records; a deploy that changed those in moto would make the record lie (and a new
signing key in the client config would fail every task's signature check). So a deploy
that finds an emulator's function adopts it (:func:`adopt`): the emulator's timeout,
memory, architecture and key; no package is built or uploaded; every other step runs
and finds nothing to change. What cannot be adopted is refused with what to do: another
bucket or prefix than the emulator serves, ``--rotate-key``, an emulator whose trigger
is ``invoke`` (deploy installs the S3 trigger: tasks would run twice).

A function that is no emulator's (plain moto, or a server no emulator serves that name
on) is deployed as on AWS; on an emulator's server deploy says that nothing will run it
until an emulator for it starts (:func:`unserved_note`).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

from dolambda._errors import DeployError
from dolambda.deploy.aws import Clients, call
from dolambda.deploy.package import Package
from dolambda.deploy.settings import Change, DeploySettings

#: the tag the emulator puts on its function; its value is the emulator's trigger
EMULATOR_TAG = "dolambda:emulator"
#: what an emulator's moto server answers (``dolambda.emulator.events.API`` + ``/ping``;
#: spelled here because deploy sits below the emulator and may not import it)
PING_PATH = "/_dolambda/ping"


def is_emulator_server(endpoint_url: str, timeout: float = 2.0) -> bool:
    """Whether ``endpoint_url`` is a dolambda emulator's moto server."""
    try:
        with urllib.request.urlopen(endpoint_url.rstrip("/") + PING_PATH, timeout=timeout) as r:
            return bool(json.loads(r.read() or b"{}").get("dolambda"))
    except (OSError, ValueError, urllib.error.URLError):
        return False


def unserved_note(s: DeploySettings) -> Change | None:
    """A report line when deploy makes a function on an emulator's server that no emulator
    runs (its tasks would wait for nothing), else None."""
    if not s.endpoint_url or not is_emulator_server(s.endpoint_url):
        return None
    return Change(
        "note",
        f"function {s.function_name}",
        f"{s.endpoint_url} is a dolambda emulator's server and no emulator runs this function "
        "yet: its tasks run once an emulator for it starts there "
        f"(Emulator(endpoint_url=..., bucket={s.bucket!r}, function_name={s.function_name!r}))",
    )


def emulator_function(
    s: DeploySettings, c: Clients, existing: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The function's configuration when an emulator made it (its tags under ``Tags``,
    its memory tiers, read from its aliases, under ``Tiers``)."""
    if not s.endpoint_url or existing is None:
        return None
    tags = call(
        "lambda:ListTags",
        f"function {s.function_name}",
        c.lam.list_tags,
        missing=True,
        Resource=str(existing["FunctionArn"]),
    )
    found = dict((tags or {}).get("Tags") or {})
    if EMULATOR_TAG not in found:
        return None
    from dolambda.deploy.function import tier_aliases

    return {**existing, "Tags": found, "Tiers": tuple(tier_aliases(s, c))}


def adopt(s: DeploySettings, fn: dict[str, Any]) -> tuple[DeploySettings, Package, list[Change]]:
    """The settings and package that leave the emulator's function as it is, and the
    report lines that say so; :class:`DeployError` for what cannot be adopted."""
    env = (fn.get("Environment") or {}).get("Variables") or {}
    where = f"the emulator at {s.endpoint_url} runs function {s.function_name}"
    if env.get("DOLAMBDA_BUCKET") != s.bucket or env.get("DOLAMBDA_PREFIX") != s.clean_prefix:
        raise DeployError(
            f"{where} for bucket {env.get('DOLAMBDA_BUCKET')!r}, prefix "
            f"{env.get('DOLAMBDA_PREFIX')!r}; deploy asks for bucket {s.bucket!r}, prefix "
            f"{s.clean_prefix!r}: pass --bucket {env.get('DOLAMBDA_BUCKET')} --prefix "
            f"{env.get('DOLAMBDA_PREFIX')}, or start an emulator for that bucket"
        )
    if fn["Tags"].get(EMULATOR_TAG) == "invoke":
        raise DeployError(
            f"{where} with trigger='invoke'; deploy installs the S3 trigger, so every task "
            "would run twice: start the emulator with trigger='s3' to rehearse a deploy"
        )
    if s.rotate_key:
        raise DeployError(
            f"{where}, whose workers hold the signing key it was started with: restart the "
            "emulator with another key instead of --rotate-key"
        )
    timeout, memory = int(fn.get("Timeout") or s.timeout), int(fn.get("MemorySize") or s.memory_mb)
    arch = (fn.get("Architectures") or [s.architecture])[0]
    tiers = tuple(fn.get("Tiers") or ())
    notes = []
    if s.memory_tiers is not None and tuple(s.memory_tiers) != tiers:
        named = ", ".join(f"{mb} MB" for mb in tiers) or "none"
        notes.append(
            f"keeps the emulator's memory tiers ({named}; the emulator's memory_tiers "
            "option sets them)"
        )
    if (timeout, memory, arch) != (s.timeout, s.memory_mb, s.architecture):
        notes.append(
            f"keeps the emulator's {timeout} s, {memory} MB, {arch} (deploy asked for "
            f"{s.timeout} s, {s.memory_mb} MB, {s.architecture}; the emulator's own options "
            "set them)"
        )
    if s.requirements is not None:
        notes.append(
            f"does not use --requirements {s.requirements}: the emulator's package is built "
            "from the distributions installed here (pip install -r it, restart the emulator)"
        )
    adopted = replace(s, timeout=timeout, memory_mb=memory, architecture=arch, memory_tiers=tiers)
    # what moto holds stands for the package: no code update (the emulator runs its own
    # build of the package for this machine, from the distributions installed here)
    package = Package(
        path=Path("/nonexistent/emulator-package.zip"),
        code_sha256=str(fn.get("CodeSha256", "")),
        size=int(fn.get("CodeSize") or 0),
        unzipped_size=0,
        cached=True,
    )
    lines = [
        Change(
            "unchanged",
            f"package for {s.function_name}",
            "the emulator runs its own build for this machine (nothing uploaded)",
        )
    ]
    lines += [Change("unchanged", f"function settings of {s.function_name}", n) for n in notes]
    return adopted, package, lines
