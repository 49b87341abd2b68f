from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture
def one_torch_thread():
    """Train on one torch thread (CPU results are then bitwise reproducible), then restore."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def scratch_results(tmp_path, monkeypatch) -> Path:
    """The default results folder, in tmp: tests never write to the repository's results/."""
    path = tmp_path / "default_results"
    monkeypatch.setenv("LOCOLIB_RESULTS", str(path))
    return path
