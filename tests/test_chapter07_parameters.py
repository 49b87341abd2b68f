"""The locality-testing chapter reuses the training chapter's runs: their sweep literals must agree.

notebooks/07_testing_locality.ipynb mirrors the shared Table 5 sweep of
notebooks/05_training.ipynb (the parameters cell holds only literals, so it cannot import them).
If the two drift apart, chapter 07 would silently train a second sweep instead of reusing the
first; this test catches that, profile by profile.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from locolib.experiments import book_plan
from locolib.notebook import read_parameters

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ROOT / "notebooks" / "05_training.ipynb"
TESTING = ROOT / "notebooks" / "07_testing_locality.ipynb"


def profiles(path: Path) -> dict:
    if not path.is_file():
        pytest.skip(f"{path.name} is not in this checkout")
    return read_parameters(path)["profiles"]


def test_chapter07_mirrors_the_training_sweep():
    training, testing = profiles(TRAINING), profiles(TESTING)
    shared = set(training) & set(testing)
    assert {"smoke", "default"} <= shared
    for name in shared:
        assert testing[name]["sweep"] == training[name]["sweep"], f"profile {name!r}: sweeps differ"
        assert testing[name]["download"] == training[name]["download"], f"profile {name!r}"
        # the same literals give the same runs (run keys), i.e. the records are reused
        keys = [c.key for c in book_plan(training[name]["sweep"])]
        assert keys == [c.key for c in book_plan(testing[name]["sweep"])]


def test_chapter07_5x5_sweep_is_the_papers_variant():
    for name, p in profiles(TESTING).items():
        plan = book_plan(p["sweep_5x5"])
        assert plan and all(c.network == "vgg13" and c.kernel_size == 5 for c in plan), name
        assert {c.regularizer for c in plan} == {"l2"}, name
