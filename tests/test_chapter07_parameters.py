"""The locality-testing chapter's own runs: the 5x5 VGG13 of Section 7.1. (Its other networks are
the study of locolib.plans, shared with chapters 05 and 06 by construction.)"""

from __future__ import annotations

from pathlib import Path

from locolib.experiments import book_plan
from locolib.notebook import read_parameters

TESTING = Path(__file__).resolve().parents[1] / "notebooks" / "07_testing_locality.ipynb"


def test_chapter07_5x5_sweep_is_the_papers_variant():
    for name, p in read_parameters(TESTING)["profiles"].items():
        plan = book_plan(p["sweep_5x5"])
        assert plan and all(c.network == "vgg13" and c.kernel_size == 5 for c in plan), name
        assert {c.regularizer for c in plan} == {"l2"}, name
