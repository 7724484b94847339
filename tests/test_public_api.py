"""The public surface, each time in a fresh interpreter (anyio's test_all_attributes):
``dolambda.__all__`` is exactly the documented names and every one resolves, and every
public module's ``__all__`` resolves. In this process other tests have imported names
already, so a lazy name that fails to resolve, or a set of names compared against what
happens to be loaded, would pass here by accident."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: DESIGN §1, the contract: ``from dolambda import (...)``
DESIGN_NAMES = frozenset(
    {
        "DolambdaError",
        "Executor",
        "Job",
        "JobCancelled",
        "LambdaBackend",
        "LocalBackend",
        "TaskError",
        "foreach",
        "register",
        "registered",
        "rng",
        "times",
    }
)
#: public today beyond DESIGN §1's list: the backend interface and the loop spec's type
ALSO_PUBLIC = frozenset({"Backend", "Loop"})
#: every module a user may import; each has an ``__all__``
PUBLIC_MODULES = ("dolambda", "dolambda.emulator", "dolambda.deploy", "dolambda.joblib")

#: run in a fresh interpreter: what MODULE's ``__all__`` says, and how each name resolves
_PROBE = """
import importlib, json, sys
module = importlib.import_module(sys.argv[1])
names = list(module.__all__)
unresolved = {}
for name in names:
    try:
        if getattr(module, name) is None:
            unresolved[name] = "is None"
    except Exception as exc:
        unresolved[name] = f"{type(exc).__name__}: {exc}"
star = {}
exec(f"from {module.__name__} import *", star)
star.pop("__builtins__", None)
errors = importlib.import_module("dolambda._errors")
tree = sorted(
    name
    for name, value in vars(errors).items()
    if isinstance(value, type) and issubclass(value, errors.DolambdaError)
)
print(json.dumps({
    "file": module.__file__,
    "all": names,
    "unresolved": unresolved,
    "star": sorted(star),
    "error_tree": tree,
    "exported_as_defined": {n: getattr(module, n, None) is getattr(errors, n) for n in tree},
}))
"""


def _probe(module: str) -> dict[str, Any]:
    """Import ``module`` in a fresh interpreter and report on its ``__all__``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, module],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    assert Path(report["file"]).resolve().is_relative_to(ROOT)  # this checkout, not another
    return report


@pytest.fixture(scope="module")
def dolambda_probe() -> dict[str, Any]:
    return _probe("dolambda")


def test_all_is_the_documented_api_apart_from_the_error_tree(
    dolambda_probe: dict[str, Any],
) -> None:
    tree = set(dolambda_probe["error_tree"])
    assert {"DolambdaError", "TaskError", "JobCancelled"} <= tree
    assert set(dolambda_probe["all"]) - tree == (DESIGN_NAMES | ALSO_PUBLIC) - tree


def test_the_whole_error_tree_is_exported(dolambda_probe: dict[str, Any]) -> None:
    """With the test above: ``__all__`` == DESIGN §1 + Backend, Loop + every error class."""
    assert set(dolambda_probe["error_tree"]) <= set(dolambda_probe["all"])
    assert all(dolambda_probe["exported_as_defined"].values()), dolambda_probe[
        "exported_as_defined"
    ]


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_name_in_all_resolves_in_a_fresh_interpreter(module: str) -> None:
    report = _probe(module)
    assert report["all"], f"{module}.__all__ is empty"
    assert len(set(report["all"])) == len(report["all"]), f"{module}.__all__ has duplicates"
    assert report["unresolved"] == {}
    assert report["star"] == sorted(report["all"])  # `import *` gives exactly __all__
