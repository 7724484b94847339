"""A body whose results the client cannot unpickle (tests/test_undecodable_results.py)."""

from __future__ import annotations

import sys
import types
from typing import Any


def only_in_the_worker(x: int) -> Any:
    if x % 2 == 0:
        return x
    module = sys.modules.get("dl_only_in_the_worker")
    if module is None:
        module = types.ModuleType("dl_only_in_the_worker")
        exec("class Thing:\n    def __init__(self, x):\n        self.x = x\n", module.__dict__)
        sys.modules["dl_only_in_the_worker"] = module
    thing: Any = module.Thing(x)
    return thing
