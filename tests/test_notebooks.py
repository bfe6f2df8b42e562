"""The tutorial notebooks in examples/ run top to bottom and show their figures.

Each notebook is committed executed, with its figures, at the settings CI uses
(``POSTERIOR_NOTEBOOK_QUICK=1``: tiny settings; ``MPLBACKEND=Agg``). The tests check

- the committed notebook: every code cell executed, one ``image/png`` at least in every cell that
  plots, no error, no progress-bar widget warning, the file small;
- a fresh execution of it: no error, no widget warning, an ``image/png`` in every cell that plots,
  and in every code cell outputs of the same kinds, in the same order, as the committed ones
  (``image/png`` vs text vs printed), so that a figure that turned into ``<Figure size ...>`` text,
  or a stored output that the code no longer makes, fails the test. Warnings (stderr) are left out
  of the comparison: the samplers' convergence warnings at these tiny settings sit on thresholds
  that rounding on another machine may cross.

A cell *plots* when its committed outputs hold an ``image/png`` or its source calls a function of
:mod:`posterior.plots` that returns a figure, builds a ``Figure`` or calls ``pyplot``.

After editing a notebook, store it executed with the same settings::

    .venv/bin/python tests/test_notebooks.py examples/01_quickstart_digits.ipynb
"""

from __future__ import annotations

import ast
import copy
import inspect
import os
import sys
import tempfile
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

EXAMPLES = Path(__file__).parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
SETTINGS = {"POSTERIOR_NOTEBOOK_QUICK": "1", "MPLBACKEND": "Agg"}
MAX_BYTES = 400_000  # a committed notebook's size: its PNGs are stored in it, base64-encoded
WIDGET_WARNINGS = ("TqdmWarning", "IProgress")  # tqdm.auto without ipywidgets in a notebook


def _figure_functions() -> set[str]:
    """Names that make a figure: the functions of ``posterior.plots`` returning one, and ``Figure``."""
    from posterior import plots

    names = {"Figure"}
    for name, function in inspect.getmembers(plots, inspect.isfunction):
        returns = inspect.signature(function).return_annotation
        if not name.startswith("_") and returns in ("Figure", plots.Figure):
            names.add(name)
    return names


def plots_in_source(source: str, figure_functions: set[str]) -> bool:
    """Whether ``source`` calls a figure function (``plots.summary_maps(...)``, ``summary_maps(...)``,
    ``Figure(...)``) or ``pyplot`` (``plt.<anything>(...)``)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics: fall back to the text
        return any(f"{name}(" in source for name in figure_functions) or "plt." in source
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in figure_functions:
            return True
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            if f.value.id in ("plots", "plt", "pyplot") and (
                f.value.id != "plots" or f.attr in figure_functions
            ):
                return True
    return False


def output_kind(output) -> str:
    """``stream:stdout``, ``stream:stderr``, ``error``, ``image/png``, or the MIME types of a text output
    (``text/plain``)."""
    if output["output_type"] == "stream":
        return f"stream:{output['name']}"
    if output["output_type"] == "error":
        return "error"
    data = output.get("data", {})
    return "image/png" if "image/png" in data else "+".join(sorted(data))


def cell_kinds(cell, leave_out: tuple[str, ...] = ()) -> list[str]:
    """The kinds of a cell's outputs in order, those in ``leave_out`` left out, consecutive pieces of
    one stream counted once."""
    kinds: list[str] = []
    for output in cell.get("outputs", []):
        kind = output_kind(output)
        if kind in leave_out:
            continue
        if not (kind.startswith("stream") and kinds and kinds[-1] == kind):
            kinds.append(kind)
    return kinds


def _texts(cell):
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            yield output.get("text", "")
        elif output["output_type"] == "error":
            yield "\n".join([output.get("ename", ""), output.get("evalue", ""), *output.get("traceback", [])])
        else:
            yield str(output.get("data", {}).get("text/plain", ""))


def _cell_problems(i: int, cell, plotting: bool) -> list[str]:
    """What is wrong with one executed code cell, whatever notebook it comes from."""
    problems = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "error":
            problems.append(f"cell {i} raised {output.get('ename')}: {output.get('evalue')}")
    if plotting and "image/png" not in cell_kinds(cell):
        problems.append(f"cell {i} plots but has no image/png output: {cell_kinds(cell)}")
    for text in _texts(cell):
        for warning in WIDGET_WARNINGS:
            if warning in text:
                problems.append(f"cell {i} shows a progress-bar widget warning ({warning})")
                break
    return problems


def plotting_cells(notebook, figure_functions: set[str]) -> set[int]:
    """Indices of the code cells that plot, judged from the committed notebook."""
    return {
        i
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
        and ("image/png" in cell_kinds(cell) or plots_in_source(cell.source, figure_functions))
    }


def committed_problems(notebook, figure_functions: set[str]) -> list[str]:
    """What is wrong with a committed notebook: unexecuted cells, plotting cells without a figure,
    errors, widget warnings."""
    plotting = plotting_cells(notebook, figure_functions)
    problems = []
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        if cell.get("execution_count") is None:
            problems.append(f"cell {i} is stored without being executed")
        problems += _cell_problems(i, cell, i in plotting)
    return problems


def rerun_problems(committed, executed, figure_functions: set[str]) -> list[str]:
    """What differs between a committed notebook and a fresh execution of it: errors, plotting cells
    without a figure, outputs of other kinds than the stored ones, widget warnings."""
    if [c.source for c in committed.cells] != [c.source for c in executed.cells]:
        return ["the executed notebook's cells differ from the committed notebook's"]
    plotting = plotting_cells(committed, figure_functions)
    problems = []
    for i, (stored, fresh) in enumerate(zip(committed.cells, executed.cells, strict=True)):
        if stored.cell_type != "code":
            continue
        problems += _cell_problems(i, fresh, i in plotting)
        stored_kinds, fresh_kinds = (cell_kinds(c, leave_out=("stream:stderr",)) for c in (stored, fresh))
        if stored_kinds != fresh_kinds:
            problems.append(f"cell {i} outputs {fresh_kinds}, the committed notebook {stored_kinds}")
    return problems


def execute(notebook, path: Path):
    """Executes ``notebook`` in place in the working directory ``path`` (a fresh ``python3`` kernel,
    which inherits this process's environment: set :data:`SETTINGS` first)."""
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        coalesce_streams=True,
        record_timing=False,
        resources={"metadata": {"path": str(path)}},
    )
    client.execute()
    return notebook


@pytest.fixture(scope="module")
def figure_functions() -> set[str]:
    return _figure_functions()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_executed_with_figures(path, figure_functions):
    notebook = nbformat.read(path, as_version=4)
    assert any(cell.get("outputs") for cell in notebook.cells), f"{path.name} is stored without outputs"
    assert not committed_problems(notebook, figure_functions)
    assert path.stat().st_size < MAX_BYTES, f"{path.name}: {path.stat().st_size} bytes"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_reruns_as_stored(path, tmp_path, monkeypatch, figure_functions):
    for name, value in SETTINGS.items():
        monkeypatch.setenv(name, value)
    committed = nbformat.read(path, as_version=4)
    executed = execute(copy.deepcopy(committed), tmp_path)
    assert not rerun_problems(committed, executed, figure_functions)


def test_checks_flag_figures_shown_as_text(figure_functions):
    """The checks fail a notebook whose figures print as ``<Figure size ...>`` text, that shows widget
    warnings or whose outputs changed kind (in memory, on a copy of a committed notebook)."""
    path = next(p for p in NOTEBOOKS if "image/png" in p.read_text())
    committed = nbformat.read(path, as_version=4)
    assert rerun_problems(committed, copy.deepcopy(committed), figure_functions) == []

    as_text = copy.deepcopy(committed)
    for cell in as_text.cells:
        for output in cell.get("outputs", []):
            if "image/png" in output.get("data", {}):
                output["data"] = {"text/plain": "<Figure size 1040x170 with 8 Axes>"}
    stripped = [i for i, c in enumerate(committed.cells) if "image/png" in cell_kinds(c)]
    flagged = rerun_problems(committed, as_text, figure_functions)
    for i in stripped:
        assert f"cell {i} plots but has no image/png output" in "\n".join(flagged)
        assert any(p.startswith(f"cell {i} outputs") for p in flagged)
    # Stored so, the notebook is flagged too: its sources show which cells plot.
    for cell in as_text.cells:
        cell.outputs = [o for o in cell.get("outputs", []) if o["output_type"] != "display_data"]
    assert {
        p.split(" plots")[0] for p in committed_problems(as_text, figure_functions) if " plots " in p
    } == {f"cell {i}" for i in stripped}

    warned = copy.deepcopy(committed)
    cell = next(c for c in warned.cells if c.cell_type == "code")
    cell.outputs.append(
        nbformat.v4.new_output("stream", name="stderr", text="TqdmWarning: IProgress not found.")
    )
    assert any("widget warning" in p for p in committed_problems(warned, figure_functions))
    assert any("widget warning" in p for p in rerun_problems(committed, warned, figure_functions))

    unexecuted = copy.deepcopy(committed)
    for cell in unexecuted.cells:
        if cell.cell_type == "code":
            cell.execution_count, cell.outputs = None, []
    assert any("without being executed" in p for p in committed_problems(unexecuted, figure_functions))


def test_plotting_cells_are_found_from_source(figure_functions):
    assert {"sample_grid", "summary_maps", "coverage_curve", "Figure"} <= figure_functions
    assert "write_report" not in figure_functions
    assert plots_in_source("display(plots.summary_maps(result))", figure_functions)
    assert plots_in_source("fig = Figure()\nfig.savefig('a.png')", figure_functions)
    assert plots_in_source("plt.plot(x)", figure_functions)
    assert not plots_in_source("plots.write_report(result, 'out')", figure_functions)
    assert not plots_in_source("print(result)", figure_functions)


if __name__ == "__main__":  # store notebooks executed, with the settings the tests use
    os.environ.update(SETTINGS)
    here = Path(__file__).resolve().parent  # tests/operators would shadow the operators package
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    functions = _figure_functions()
    for arg in sys.argv[1:] or map(str, NOTEBOOKS):
        notebook = nbformat.read(arg, as_version=4)
        with tempfile.TemporaryDirectory() as directory:
            execute(notebook, Path(directory))
        problems = committed_problems(notebook, functions)
        nbformat.write(notebook, arg)
        print(arg, Path(arg).stat().st_size, "bytes", *problems, sep="\n  " if problems else " ")
