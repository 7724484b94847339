"""The client config files: what ``dolambda deploy`` and ``dolambda emulator`` write and
``LambdaBackend()`` (and every ``dolambda`` command) reads.

They live in ``$DOLAMBDA_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/dolambda``, else
``~/.config/dolambda``, one file per *profile* (mode 0600: they hold the signing key):

- ``config.json`` (profile ``default``): the deployed setup, written by ``dolambda deploy``;
- ``emulator.json`` (profile ``emulator``): a running ``dolambda emulator``, written when it
  starts and removed when it stops (it names the emulator's pid, so one left behind by a
  killed emulator is recognised as stale);
- ``emulator.key``: the emulator's signing key, created once and kept across restarts.

Which one is read (:func:`load_config`): the profile named by ``DOLAMBDA_PROFILE``
(``default`` or ``emulator``); without it, the deployed setup, and when nothing is
deployed, a running emulator's.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from dolambda._errors import ConfigError

DEFAULT_PROFILE = "default"
EMULATOR_PROFILE = "emulator"
PROFILES = (DEFAULT_PROFILE, EMULATOR_PROFILE)


class ClientConfig(BaseModel):
    """What a deployed setup (or a running emulator) needs on the client side."""

    model_config = ConfigDict(extra="ignore")

    bucket: str
    function_name: str = "dolambda"
    region: str | None = None
    prefix: str = "dolambda"
    signing_key: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    memory_mb: int = 1024
    #: the larger memory tiers (MB) deploy published as aliases ``mem-<MB>``
    memory_tiers: list[int] = []
    timeout: int = 900
    architecture: str = "x86_64"
    #: the emulator only: its concurrency, the pid that serves it, and the (fake)
    #: credentials its S3 accepts, so that no AWS setup is needed to talk to it
    max_concurrency: int | None = None
    pid: int | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None


def config_dir() -> Path:
    explicit = os.environ.get("DOLAMBDA_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "dolambda"


def config_path(profile: str = DEFAULT_PROFILE) -> Path:
    """The file of ``profile`` (``default``: ``config.json``; ``emulator``: ``emulator.json``)."""
    _check_profile(profile)
    return config_dir() / ("config.json" if profile == DEFAULT_PROFILE else f"{profile}.json")


def _check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ConfigError(
            f"DOLAMBDA_PROFILE={profile!r} is not a dolambda profile: use 'default' (the "
            "setup `dolambda deploy` wrote) or 'emulator' (a running `dolambda emulator`)"
        )


def selected_profile() -> str | None:
    """The profile ``DOLAMBDA_PROFILE`` names (None: not set)."""
    name = os.environ.get("DOLAMBDA_PROFILE", "").strip()
    if not name:
        return None
    _check_profile(name)
    return name


def read_config(profile: str = DEFAULT_PROFILE) -> ClientConfig | None:
    """The config of ``profile`` as stored (None: no such file)."""
    path = config_path(profile)
    if not path.exists():
        return None
    try:
        return ClientConfig.model_validate_json(path.read_text())
    except Exception as exc:
        raise ConfigError(f"the dolambda config file {path} is not valid: {exc}") from exc


def load_config() -> ClientConfig | None:
    """The config that applies here: ``DOLAMBDA_PROFILE``'s, else the deployed setup's,
    else a running emulator's (None when there is none)."""
    profile = selected_profile()
    if profile == EMULATOR_PROFILE:
        config = read_config(EMULATOR_PROFILE)
        if config is None or not emulator_alive(config):
            raise ConfigError(
                "DOLAMBDA_PROFILE=emulator, but no dolambda emulator is running"
                + ("" if config is None else f" (pid {config.pid}, which wrote it, is gone)")
                + ": start one with `dolambda emulator`"
            )
        return config
    deployed = read_config(DEFAULT_PROFILE)
    if deployed is not None or profile == DEFAULT_PROFILE:
        return deployed
    emulator = read_config(EMULATOR_PROFILE)
    return emulator if emulator is not None and emulator_alive(emulator) else None


def emulator_alive(config: ClientConfig) -> bool:
    """Whether the process that wrote an emulator config still runs (no pid: trusted)."""
    if config.pid is None:
        return True
    try:
        os.kill(config.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        return True
    return True


def save_config(config: ClientConfig, profile: str = DEFAULT_PROFILE) -> Path:
    path = config_path(profile)
    _write_private(path, json.dumps(config.model_dump(exclude_none=False), indent=2).encode())
    return path


def remove_config(profile: str, *, pid: int | None = None) -> None:
    """Delete ``profile``'s file; with ``pid``, only when that process wrote it."""
    path = config_path(profile)
    try:
        if pid is not None:
            stored = read_config(profile)
            if stored is None or stored.pid != pid:
                return
        path.unlink()
    except (FileNotFoundError, ConfigError):
        pass


def emulator_signing_key() -> str:
    """The emulator's signing key (hex), created on first use and kept in ``emulator.key``."""
    path = config_dir() / "emulator.key"
    try:
        key = path.read_text().strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    key = secrets.token_hex(32)
    _write_private(path, key.encode())
    return key


def _write_private(path: Path, data: bytes) -> None:
    """Write ``path`` readable by its owner only, atomically: a reader in another
    process (a backend reading the emulator's config as ``dolambda emulator`` writes it)
    sees the old file or the whole new one, never an empty or partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(partial, 0o600)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
