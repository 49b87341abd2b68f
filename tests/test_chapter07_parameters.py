"""The locality-testing chapter's own runs: the 5x5 VGG13 of Section 7.1, a study of
locolib.plans like every other run the book shows."""

from __future__ import annotations

from pathlib import Path

from locolib import plans
from locolib.notebook import read_parameters

TESTING = Path(__file__).resolve().parents[1] / "notebooks" / "07_testing_locality.ipynb"


def test_chapter07_5x5_sweep_is_the_papers_variant():
    profiles = read_parameters(TESTING)["profiles"]
    for name, cfg in profiles.items():
        runs = plans.study(cfg["kernel5_study"]).configs()
        assert runs and all(c.network == "vgg13" and c.kernel_size == 5 for c in runs), name
        assert {c.regularizer for c in runs} == {"l2"}, name
