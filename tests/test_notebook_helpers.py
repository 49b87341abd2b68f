import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from locolib.io import atomic_write_bytes, read_json, write_json
from locolib.notebook import choose_profile, colab_cell_source, is_colab_cell

ROOT = Path(__file__).resolve().parents[1]


def test_choose_profile_returns_a_copy_and_names_the_choices():
    profiles = {"smoke": {"n": 1}, "default": {"n": 100}}
    cfg = choose_profile(profiles, "smoke")
    cfg["n"] = 5
    assert profiles["smoke"]["n"] == 1
    with pytest.raises(ValueError, match=r"unknown profile 'gpu'.*\['default', 'smoke'\]"):
        choose_profile(profiles, "gpu")


def test_colab_cell_clones_the_configured_repository_only_outside_it(tmp_path, monkeypatch):
    source = colab_cell_source(ROOT / "_config.yml")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    assert is_colab_cell(source)
    assert f'"{config["url"]}"' in source and f'"--branch", "{config["branch"]}"' in source
    assert '"google.colab" in sys.modules' in source and "LOCOLIB_REPOSITORY" in source
    runnable = compile(source.replace("%pip", "raise SystemExit  #"), "<colab>", "exec")
    # Inside the repository the cell is plain Python that does nothing.
    monkeypatch.chdir(ROOT / "notebooks")
    exec(runnable, {})
    assert Path.cwd() == ROOT / "notebooks"
    # Alone, it clones ($LOCOLIB_REPOSITORY) and moves into the clone's notebooks/.
    origin = tmp_path / "origin"
    subprocess.run(["git", "init", "--quiet", "-b", config["branch"], str(origin)], check=True)
    for path in ("_config.yml", "locolib/__init__.py", "notebooks/.keep"):
        (origin / path).parent.mkdir(parents=True, exist_ok=True)
        (origin / path).write_text("")
    subprocess.run(["git", "-C", str(origin), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(origin), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet",
                    "-m", "x"], check=True)
    alone = tmp_path / "alone"
    alone.mkdir()
    monkeypatch.chdir(alone)
    monkeypatch.setenv("LOCOLIB_REPOSITORY", origin.as_uri())
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(runnable, {})
    clone = alone / config["url"].rsplit("/", 1)[-1]
    assert Path.cwd() == clone / "notebooks" and sys.path[0] == str(clone)
    assert sorted(p.name for p in alone.iterdir()) == [clone.name]


def test_atomic_writes_leave_no_partial_file(tmp_path: Path):
    target = tmp_path / "sub" / "x.json"
    write_json(target, {"b": 1, "a": [1, 2]})
    assert read_json(target) == {"a": [1, 2], "b": 1}
    # A write that fails half-way keeps the old file and leaves no temporary file behind.
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def write_notebook(path: Path, parameters: str) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# T"),
                nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]})]
    nbformat.write(nb, path)
    return path


def test_read_parameters_accepts_only_plain_literals(tmp_path: Path):
    from locolib.notebook import read_parameters

    good = write_notebook(tmp_path / "good.ipynb", 'profile = "default"\nprofiles = {"smoke": {"n": 1}}')
    assert read_parameters(good) == {"profile": "default", "profiles": {"smoke": {"n": 1}}}
    computed = write_notebook(tmp_path / "bad.ipynb", "n = len([1, 2])")
    with pytest.raises(ValueError, match="parameter n is not a plain literal"):
        read_parameters(computed)
    statement = write_notebook(tmp_path / "stmt.ipynb", "import os")
    with pytest.raises(ValueError, match="may only assign plain literals"):
        read_parameters(statement)


def test_toc_pages_must_exist(tmp_path: Path):
    from locolib.book import toc_notebooks

    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "intro.md").write_text("# Intro\n")
    (tmp_path / "book" / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/a\n  - file: notebooks/gone\n"
    )
    (tmp_path / "notebooks").mkdir()
    write_notebook(tmp_path / "notebooks" / "a.ipynb", 'profile = "default"')
    with pytest.raises(FileNotFoundError, match="notebooks/gone"):
        toc_notebooks(tmp_path)
    (tmp_path / "book" / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/a\n")
    assert toc_notebooks(tmp_path) == [tmp_path / "notebooks" / "a.ipynb"]


@pytest.mark.slow
def test_a_smoke_run_keeps_its_records_out_of_the_repository_and_shows_progress(tmp_path,
                                                                                monkeypatch):
    """The notebook runner gives the smoke profile a scratch results folder, and training shows
    a bar over the sweep and one per run in papermill's output (text bars: no widgets there)."""
    import nbformat

    from locolib.notebook import run_notebook

    monkeypatch.delenv("LOCOLIB_RESULTS", raising=False)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell('profile = "default"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import torch\n"
            "from locolib.results import default_results_dir\n"
            "from locolib.sweep import plan, run_sweep\n"
            "torch.set_num_threads(1)\n"
            "print('results in', default_results_dir())\n"
            "configs = plan(['digits'], ['vgg13'], ['l2'], [0], width=0.125, train_subset=64,\n"
            "               batch_size=32, epochs=2)\n"
            "records = run_sweep(configs, progress=True, log=None)\n"
            "print('key', configs[0].key)"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source = tmp_path / "source" / "n.ipynb"
    source.parent.mkdir()
    nbformat.write(nb, source)
    executed = nbformat.read(run_notebook(source, tmp_path / "out" / "n.ipynb", profile="smoke"),
                             as_version=4)
    streams = {"stdout": "", "stderr": ""}
    (cell,) = [c for c in executed.cells if "run_sweep" in c.source]  # papermill adds a cell
    for out in cell.outputs:
        if out.output_type == "stream":
            streams[out.name] += out.text
    scratch = tmp_path / "out" / "smoke-results"
    assert f"results in {scratch}" in streams["stdout"]
    key = streams["stdout"].split("key ")[1].strip()
    assert (scratch / f"{key}.json").is_file()
    assert "sweep: 100%" in streams["stderr"] and f"{key}: 100%" in streams["stderr"]
    # As a terminal shows them: each bar's final state, not a line per update, and no advice
    # to install widgets.
    assert f"{key}:   0%" not in streams["stderr"] and "IProgress" not in streams["stderr"]


def test_settled_streams_show_what_a_terminal_shows(tmp_path):
    import nbformat

    from locolib.notebook import settle_streams

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("train()")
    stream = lambda name, text: nbformat.v4.new_output("stream", name=name, text=text)  # noqa: E731
    cell.outputs = [stream("stderr", "\rsweep:   0%|  | 0/2"),
                    stream("stderr", "\rrun: 50%\rrun: 100%\n"), stream("stderr", "\r      \r"),
                    stream("stdout", "trained\n"), stream("stderr", "\rsweep: 100%|##| 2/2\n")]
    nb.cells = [cell]
    nbformat.write(nb, tmp_path / "n.ipynb")
    settle_streams(tmp_path / "n.ipynb")
    outputs = nbformat.read(tmp_path / "n.ipynb", as_version=4).cells[0].outputs
    assert [(o.name, o.text) for o in outputs] == [
        ("stderr", "run: 100%\n"), ("stdout", "trained\n"), ("stderr", "sweep: 100%|##| 2/2\n")]


def test_the_build_removes_papermills_injected_parameters_from_the_page(tmp_path: Path):
    import nbformat

    from locolib.book import hide_injected_parameters

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("profile = 'default'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("profile = 'smoke'", metadata={"tags": ["injected-parameters"]})]
    nbformat.write(nb, tmp_path / "n.ipynb")
    hide_injected_parameters(tmp_path / "n.ipynb")
    tags = [c.metadata.get("tags") for c in nbformat.read(tmp_path / "n.ipynb", as_version=4).cells]
    assert tags == [["parameters"], ["injected-parameters", "remove-cell"]]


def test_book_style_draws_figures_at_the_column_width_with_legible_fonts():
    import matplotlib.pyplot as plt

    from locolib.notebook import book_style

    with plt.rc_context():
        book_style()
        assert plt.rcParams["figure.figsize"][0] * plt.rcParams["figure.dpi"] <= 750
        assert min(plt.rcParams[k] for k in ("font.size", "xtick.labelsize", "ytick.labelsize",
                                             "legend.fontsize")) >= 9
