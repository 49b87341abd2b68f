import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from locolib.book import copy_sources, execute_chapter

ROOT = Path(__file__).resolve().parents[1]
_GIT_STATUS = pytest.StashKey[set]()


def git_status() -> set[str] | None:
    """``git status --porcelain`` lines of the repository (ignored files excluded), or None
    outside a git checkout."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                             capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return set(out.splitlines())


def pytest_sessionstart(session) -> None:
    session.config.stash[_GIT_STATUS] = git_status()


def pytest_collection_modifyitems(items) -> None:
    # Tests marked after_all check what the whole suite did: they run last.
    items.sort(key=lambda item: item.get_closest_marker("after_all") is not None)


@pytest.fixture
def changes_since_session_start(request) -> list[str] | None:
    """Lines of ``git status`` that appeared since the session started (None: no git checkout)."""
    start, now = request.config.stash[_GIT_STATUS], git_status()
    return None if start is None or now is None else sorted(now - start)


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


@dataclass
class SmokeChapters:
    """A staged copy of the book whose chapters are executed with their smoke parameters on
    first use, each once per test session (their runs share one scratch results folder)."""

    output: Path
    staging: Path
    _done: dict[Path, Path | Exception] = field(default_factory=dict)

    def executed(self, notebook: Path) -> Path:
        if notebook not in self._done:
            try:
                self._done[notebook] = execute_chapter(ROOT, notebook, self.staging, "smoke")
            except Exception as err:  # noqa: BLE001 -- reported to every test that needs it
                self._done[notebook] = err
        result = self._done[notebook]
        if isinstance(result, Exception):
            raise result
        return result


@pytest.fixture(scope="session")
def smoke_chapters(tmp_path_factory) -> SmokeChapters:
    """The notebook tests and the browser test share these executions."""
    output = tmp_path_factory.mktemp("smoke-book")
    return SmokeChapters(output, copy_sources(ROOT, output / "_build" / "stage"))
