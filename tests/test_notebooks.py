"""Every notebook runs top to bottom against the emulator, and its plots are produced."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("matplotlib")
pytest.importorskip("pandas")

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
MIN_PLOTS = {"quickstart.ipynb": 2, "pandas_and_numpy.ipynb": 1}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "notebook outputs must not be committed"
    )
    client = nbclient.NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    images = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert len(images) >= MIN_PLOTS.get(path.name, 0)
    errors = [
        out
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
    for cell in nb.cells:
        if cell.cell_type == "code":
            check_bars_and_summaries(cell)


def check_bars_and_summaries(cell: Any) -> None:
    """A saved progress bar shows its final state (its text form, what a viewer without
    the widget's state shows), and each job's summary line appears once."""
    outputs = cell.get("outputs", [])
    bars = [
        out["data"]["text/plain"]
        for out in outputs
        if "dolambda[" in out.get("data", {}).get("text/plain", "")
    ]
    for bar in bars:
        assert "100%" in bar and " 0%" not in bar, (cell.source, bar)
    text = "".join(out.get("text", "") for out in outputs if out.get("output_type") == "stream")
    summaries = re.findall(r"\d+ iterations in \d+ tasks?, [^\n]*", text)
    assert len(summaries) == len(set(summaries)), (cell.source, summaries)
