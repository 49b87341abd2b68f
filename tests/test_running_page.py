"""The running page's figures are the budget's (its commands run as written: tests/test_cli.py)."""

from __future__ import annotations

from pathlib import Path

from locolib import budget

PAGE = Path(__file__).resolve().parents[1] / "book" / "running.md"


def test_the_pages_estimates_are_the_budgets():
    text = PAGE.read_text()
    colab = budget.profile_summary("colab")
    assert f"about {5 * round(colab['hours'] * 12)} minutes on a T4" in text
    assert f"| `colab` | 0.6 pp | {colab['detectable_effect_pp']['loco_table6/vgg13']:.2f} pp |" in text
    gpu = budget.profile_summary("gpu")
    assert f"about {gpu['hours']:.1f} hours on an H100" in text
    for name in ("paper_cifar10", "paper_cifar100", "paper_fashion_mnist"):
        hours = budget.profile_summary(name)["hours_per_device"]
        runs = budget.profile_summary(name)["runs"]
        assert (f"| `{name}` | {runs} | {hours['t4']:.0f} h | {hours['a100']:.0f} h | "
                f"{hours['h100']:.0f} h |") in text, name
