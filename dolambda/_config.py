"""The client config file that ``dolambda deploy`` writes and ``LambdaBackend()`` reads.

Location: ``$DOLAMBDA_CONFIG_DIR/config.json``, else ``$XDG_CONFIG_HOME/dolambda/config.json``,
else ``~/.config/dolambda/config.json``. Mode 0600: it holds the signing key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from dolambda._errors import ConfigError


class ClientConfig(BaseModel):
    """What a deployed setup needs on the client side."""

    model_config = ConfigDict(extra="ignore")

    bucket: str
    function_name: str = "dolambda"
    region: str | None = None
    prefix: str = "dolambda"
    signing_key: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    memory_mb: int = 1024
    timeout: int = 900
    architecture: str = "x86_64"


def config_dir() -> Path:
    explicit = os.environ.get("DOLAMBDA_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "dolambda"


def config_path() -> Path:
    return config_dir() / "config.json"


def load_config() -> ClientConfig | None:
    path = config_path()
    if not path.exists():
        return None
    try:
        return ClientConfig.model_validate_json(path.read_text())
    except Exception as exc:
        raise ConfigError(f"the dolambda config file {path} is not valid: {exc}") from exc


def save_config(config: ClientConfig) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(config.model_dump(), indent=2).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    return path
