"""The notebooks a user opens first run from top to bottom at their default size, within a
CPU budget, and show what they promise: every plot cell displays a picture."""

from __future__ import annotations

import re
import resource
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
#: CPU seconds a notebook may take at its default size (kernel included, one torch thread): a
#: couple of minutes on a laptop.
BUDGET_CPU_SECONDS = 240
#: A cell that draws: its last line calls a plot function (``plot_...(``, ``d.plot_types()``).
PLOT_CALL = re.compile(r"(^|\.|\s)plot_\w+\(")


def plot_cells(notebook) -> list[int]:
    """Indices of the code cells whose last statement draws a figure."""
    return [
        index
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
        and cell.source.strip()
        and PLOT_CALL.search(cell.source.strip().splitlines()[-1])
    ]


def missing_pictures(notebook) -> list[int]:
    """Plot cells of an executed notebook without an ``image/png`` output."""
    return [
        index
        for index in plot_cells(notebook)
        if not any("image/png" in out.get("data", {}) for out in notebook.cells[index].outputs)
    ]


def _kernel_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_and_shows_its_plots(path, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the notebook's own backend, as for users
    notebook = nbformat.read(path, as_version=4)
    assert plot_cells(notebook), "no plot cell found: the test would check nothing"
    before = _kernel_cpu_seconds()
    client = NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    spent = _kernel_cpu_seconds() - before
    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
    missing = missing_pictures(notebook)
    assert not missing, f"plot cells that show no picture: {missing}"
    assert spent < BUDGET_CPU_SECONDS, f"{path.name} took {spent:.0f} CPU-s at its default size"
    warnings = [
        output["text"]
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("name") == "stderr" and "IProgress not found" in output["text"]
    ]
    assert not warnings, "tqdm found no ipywidgets: install the notebook extra"
    written = {entry.name for entry in tmp_path.iterdir()}
    assert written == {"out"}, f"the notebook wrote outside out/: {written}"


def test_a_plot_cell_without_a_picture_is_caught():
    cell = nbformat.v4.new_code_cell("plot_type_distribution(types);")
    cell.outputs = []
    notebook = nbformat.v4.new_notebook(cells=[cell])
    assert missing_pictures(notebook) == [0]
    cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": "iVBOR"})]
    assert missing_pictures(notebook) == []


def test_there_are_notebooks():
    assert {path.stem for path in NOTEBOOKS} >= {"quickstart", "your_model", "compare"}
