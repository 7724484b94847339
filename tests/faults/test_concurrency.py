"""Several jobs at once in one bucket: from one client (asyncio.gather of arun) and from
several client processes. No result crosses jobs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dolambda import foreach
from dolambda.emulator import Emulator
from tests.faults.conftest import Row, backend_for, bucket_keys, record


def tagged(tag: int) -> Callable[[int], tuple[int, int]]:
    def body(x: int) -> tuple[int, int]:
        return (x, tag)

    return body


@pytest.mark.parametrize("jobs", [2, 10])
async def test_jobs_at_once_from_one_client(
    jobs: int, make_emulator: Callable[..., Emulator]
) -> None:
    emu = make_emulator(timeout=3.0)
    backend = backend_for(emu)
    n = 6
    started = time.monotonic()
    loops = [foreach(x=range(n)).chunk_size(2 + j % 2) for j in range(jobs)]
    results = await asyncio.gather(
        *(loop.arun(tagged(j), backend=backend, progress=False) for j, loop in enumerate(loops))
    )
    crossed = sum(1 for j, r in enumerate(results) for _, tag in r if tag != j)
    wrong = sum(1 for j, r in enumerate(results) if r != loops[j].do(tagged(j)))
    record(
        Row(
            f"{jobs} jobs at once, one client",
            jobs * n,
            sum(n - len(r) for r in results),
            0,
            -1,
            0,
            "ok" if not crossed and not wrong else f"{crossed} crossed, {wrong} wrong",
            time.monotonic() - started,
        )
    )
    assert crossed == 0 and wrong == 0
    assert [k for k in bucket_keys(emu) if "/queue/" in k or "/results/" in k] == []


CLIENT = """
import json
from dolambda import LambdaBackend, foreach

def body(x):
    return (x, {tag})

backend = LambdaBackend(**{settings!r})
print(json.dumps(foreach(x=range({n})).chunk_size(2).do_lambda(body, backend=backend,
    progress=False)))
"""


def test_jobs_from_several_client_processes(
    make_emulator: Callable[..., Emulator], tmp_path: Path
) -> None:
    emu = make_emulator(timeout=3.0)
    clients, n = 4, 8
    started = time.monotonic()
    procs: list[Any] = []
    for tag in range(clients):
        script = tmp_path / f"client{tag}.py"
        script.write_text(
            textwrap.dedent(CLIENT).format(tag=tag, settings=emu.backend_settings(), n=n)
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err.decode()
        outs.append([tuple(v) for v in json.loads(out)])
    crossed = sum(1 for tag, r in enumerate(outs) for _, t in r if t != tag)
    record(
        Row(
            f"{clients} client processes at once",
            clients * n,
            sum(n - len(r) for r in outs),
            0,
            -1,
            0,
            "ok" if not crossed else f"{crossed} crossed",
            time.monotonic() - started,
        )
    )
    for tag, r in enumerate(outs):
        assert r == [(x, tag) for x in range(n)]
    assert [k for k in bucket_keys(emu) if "/queue/" in k or "/results/" in k] == []
