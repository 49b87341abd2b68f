"""What installs the book: pyproject.toml, the lock file and everything that installs from it
(scripts, conda, CI), and the GitHub workflow."""

import re
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements-lock.txt"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def locked() -> dict[str, str]:
    """Package name -> exact version, from the lock file (which must pin every line)."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[\w.+!-]+", version), f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    return pins


def wanted() -> list[Requirement]:
    project = PROJECT["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_the_lock_pins_every_dependency_of_every_extra_within_its_bounds():
    pins = locked()
    for req in wanted():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in {LOCK.name}: refresh it (README: Versions)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]}: {req}"
    # What this machine's pip takes from local disk; other versions download gigabytes.
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def test_the_lock_is_refreshed_by_the_one_command_in_the_readme():
    command = LOCK.read_text().splitlines()[1].lstrip("# ").strip()
    assert command.startswith("uv pip compile pyproject.toml --all-extras --python-version 3.11")
    assert f"\n{command}\n" in (ROOT / "README.md").read_text()


def test_scripts_conda_and_ci_install_the_lock():
    venv = (ROOT / "scripts" / "venv.sh").read_text()
    assert "-r requirements-lock.txt" in venv and "--no-deps -e ." in venv
    for script in ("test.sh", "build-book.sh"):
        assert "source scripts/venv.sh" in (ROOT / "scripts" / script).read_text()
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pip == ["-r requirements-lock.txt", "-e ."]
    assert "python=3.11" in env["dependencies"]


def test_packaging_that_installs_next_year():
    assert PROJECT["project"]["license"] == "MIT", "an SPDX expression, not a table"
    (setuptools,) = [Requirement(r) for r in PROJECT["build-system"]["requires"]]
    assert setuptools.name == "setuptools"
    assert setuptools.specifier.contains("77.0") and not setuptools.specifier.contains("76.0")
    assert any(s.operator == "<" for s in setuptools.specifier), "bound the build requirement"


def test_jupyterlab_is_installed_and_the_readme_says_how_to_open_the_notebooks():
    book = [Requirement(r).name for r in PROJECT["project"]["optional-dependencies"]["book"]]
    assert "jupyterlab" in book
    assert re.search(r"```bash\n[^`]*jupyter lab notebooks/", (ROOT / "README.md").read_text())


def test_workflow_gives_each_job_only_what_it_needs():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    assert workflow["permissions"] == {}, "no permissions by default"
    jobs = workflow["jobs"]
    for name, job in jobs.items():
        perms = job.get("permissions", {})
        writes = {k for k, v in perms.items() if v == "write"}
        assert writes == ({"pages", "id-token"} if name == "deploy" else set()), (name, perms)
    # A deployment in progress is never cancelled by a newer push.
    assert jobs["deploy"]["concurrency"]["cancel-in-progress"] is False
    # The browser comes from a maintained action, with its driver; CI=true: a missing one fails.
    test = jobs["test"]["steps"]
    (chrome,) = [s for s in test if s.get("uses", "").startswith("browser-actions/setup-chrome@")]
    assert chrome["with"]["install-chromedriver"] is True
    (run,) = [s for s in test if s.get("run") == "bash scripts/test.sh"]
    assert run["env"]["CI"] == "true" and "chrome-path" in run["env"]["CHROME_BIN"]
    assert "apt-get install" not in str(workflow)
