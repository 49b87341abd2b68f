"""Every chapter notebook is publishable and runs top to bottom with its smoke parameters."""

from pathlib import Path

import nbformat
import pytest

from locolib.book import toc_notebooks
from locolib.plans import STUDIES
from locolib.notebook import colab_cell_source, read_parameters, run_notebook

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
    assert {"smoke", "default"} <= set(profiles), "profiles needs 'smoke' and 'default'"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_with_smoke_parameters(path: Path, tmp_path: Path, monkeypatch):
    # Runs write their results into a scratch folder, never into the repository's results/.
    monkeypatch.setenv("LOCOLIB_RESULTS", str(tmp_path / "results"))
    run_notebook(path, tmp_path / path.name, profile="smoke", timeout=600)
