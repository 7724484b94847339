"""Every Python block in the README and docs/ runs, as written, against the emulator.

``LambdaBackend()`` with no arguments reads the client config that ``dolambda deploy``
writes; here that config points at a running emulator, so the blocks run unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dolambda._config import ClientConfig, save_config

emulator = pytest.importorskip("dolambda.emulator")

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks() -> list[Any]:
    out = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            out.append(pytest.param(match.group(1), id=f"{path.name}:{line}"))
    return out


@pytest.fixture(scope="module")
def deployed_emulator() -> Iterator[Any]:
    # the README's joblib example needs joblib on the function, as deployed with
    # `dolambda deploy --requirements` (joblib's batches travel as joblib objects)
    instance = emulator.Emulator(workers=2, timeout=30.0, requirements=["joblib"])
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def test_the_docs_have_python_blocks() -> None:
    assert len(blocks()) >= 2


@pytest.mark.timeout(300)
@pytest.mark.parametrize("source", blocks())
def test_block_runs(source: str, deployed_emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = deployed_emulator.backend_settings()
    save_config(
        ClientConfig(
            bucket=settings["bucket"],
            function_name=settings["function_name"],
            region=settings["region"],
            prefix=settings["prefix"],
            signing_key=settings["signing_key"],
            endpoint_url=settings["endpoint_url"],
            timeout=int(settings["task_timeout"]),
        )
    )
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, "<docs>", "exec"), namespace)
