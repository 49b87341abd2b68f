"""A chapter opened alone, as Colab's launch button opens it, reads the book's committed records.

Each notebook is copied alone into an empty folder and executed headless with its default
profile. Its first cell clones the repository (here: a local copy of the committed HEAD, given by
``$LOCOLIB_REPOSITORY``) and works inside the clone; the chapter must finish, train no run the
book did not train and leave nothing outside the clone. (The ``%pip install`` of that cell runs
in Colab only; here the kernel already has the dependencies.)
"""

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from locolib.notebook import REPOSITORY_ENV
from locolib.results import RESULTS_ENV
from locolib.zoo import MODELS_ENV

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REPOSITORY = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
CLONE_NAME = REPOSITORY["url"].rstrip("/").rsplit("/", 1)[-1]


def git(*args: str | Path) -> str:
    return subprocess.run(["git", *map(str, args)], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Path:
    """A bare copy of the repository whose configured branch is the committed HEAD."""
    path = tmp_path_factory.mktemp("origin") / "repo.git"
    git("clone", "--quiet", "--bare", ROOT, path)
    git("-C", path, "update-ref", f"refs/heads/{REPOSITORY['branch']}", git("-C", ROOT, "rev-parse", "HEAD").strip())
    return path


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_notebook_alone_reads_the_books_records(path: Path, origin: Path, tmp_path: Path, monkeypatch):
    import papermill

    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / path.name).write_bytes(path.read_bytes())
    monkeypatch.setenv(REPOSITORY_ENV, origin.as_uri())
    for name in (RESULTS_ENV, MODELS_ENV):  # the clone's folders, as in Colab
        monkeypatch.delenv(name, raising=False)
    start = time.perf_counter()
    papermill.execute_notebook(str(alone / path.name), str(tmp_path / "executed.ipynb"), cwd=str(alone),
                               kernel_name="python3", progress_bar=False, execution_timeout=1800)
    print(f"\n{path.stem}: executed alone in {time.perf_counter() - start:.0f} s")
    assert sorted(p.name for p in alone.iterdir()) == sorted([path.name, CLONE_NAME]), "files outside the clone"
    clone = alone / CLONE_NAME
    # No record added or changed: every run the chapter shows is one the book trained. Weights
    # recovered by retraining (git-ignored results/models/) and downloads (data/) may be added.
    assert git("-C", clone, "status", "--porcelain") == "", "the chapter changed the clone's committed files"
    assert set(os.listdir(clone / "results")) - set(os.listdir(ROOT / "results")) <= {"models"}, "new records"
