"""Every chapter notebook is publishable and runs top to bottom with its smoke parameters."""

import ast
from pathlib import Path

import nbformat
import pytest

from locolib.book import toc_notebooks
from locolib.notebook import REQUIRED_PROFILES, colab_cell_source, is_colab_cell, read_parameters
from locolib.plans import STUDIES

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [nb.stem for nb in NOTEBOOKS]


def test_every_notebook_is_in_the_book():
    assert NOTEBOOKS, "no notebooks found"
    assert sorted(toc_notebooks(ROOT)) == NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_publishable(path: Path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), (
        f"{path.name} has outputs: run `python scripts/sync_notebooks.py`"
    )
    assert code[0].source == colab_cell_source(ROOT / "_config.yml"), (
        f"{path.name}: the first code cell must be the Colab cell: run `python scripts/sync_notebooks.py`"
    )
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    values = read_parameters(path)
    assert values.get("profile") == "default", "the committed profile must be the book's: 'default'"
    # A chapter's profiles are written out in its parameters or, for the training chapters, are
    # the studies of locolib.plans.
    profiles = values.get("profiles", STUDIES)
    assert set(REQUIRED_PROFILES) <= set(profiles), f"profiles needs {REQUIRED_PROFILES}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_with_smoke_parameters(path: Path, smoke_chapters):
    # Executed once per session: the browser test renders these same executions.
    smoke_chapters.executed(path)


TRAINERS = {"run_sweep", "run_study", "train", "trained_model"}


def _called(call: ast.Call) -> str | None:
    """The name of the function a call calls (``f(...)`` or ``module.f(...)``)."""
    return getattr(call.func, "attr", getattr(call.func, "id", None))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_training_chapters_show_progress(path: Path):
    """Every call that may train shows progress bars: a silent cell that trains for minutes (a
    GPU profile in Colab) looks hung, and a reader would stop it."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code" or is_colab_cell(cell.source):
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Call) and _called(node) in TRAINERS:
                progress = {k.arg: k.value for k in node.keywords}.get("progress")
                assert isinstance(progress, ast.Constant) and progress.value is True, (
                    f"{path.name}: {ast.unparse(node)[:80]} trains without progress=True")
