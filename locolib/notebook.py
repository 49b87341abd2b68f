"""Running the book's notebooks: profile selection inside a notebook, headless execution outside."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from locolib.results import RESULTS_ENV

#: The profiles every chapter writes out (``smoke``: seconds on a CPU, the tests' run; ``default``:
#: what the book shows), and all the book can be built with (a chapter without ``gpu`` shows its
#: default there).
REQUIRED_PROFILES = ("smoke", "default")
PROFILES = (*REQUIRED_PROFILES, "gpu")

# The width of the book's figures in inches: at 100 dpi, with the inline backend's small margin,
# they fit the text column (676 px of content at a 1280 px window) unscaled, so their fonts are
# shown at the size they were drawn at.
FIGURE_WIDTH = 6.6


def choose_profile(profiles: Mapping[str, Mapping[str, Any]], profile: str) -> dict[str, Any]:
    """Return the settings of ``profile`` from a notebook's ``profiles`` literal.

    A profile may be missing from a notebook (not every chapter has a GPU setting); asking for it
    is an error that names the profiles there are. (Chapters 01-04, 07)
    """
    if profile not in profiles:
        raise ValueError(
            f"unknown profile {profile!r}: this notebook defines {sorted(profiles)}; "
            f"set the parameter `profile` to one of them (papermill: -p profile smoke)"
        )
    return dict(profiles[profile])


def glue(name: str, value: Any) -> Any:
    """Record ``value`` under ``name`` for the book's ``{glue:text}`` roles and return it.

    Chapters glue the numbers their opening answer quotes, so that prose and computation cannot
    drift: a role naming a key nobody glued fails the book build. Where myst-nb is not installed
    (a notebook run in Colab) nothing is recorded and the value is only returned. (Chapters 01-07)
    """
    try:
        from myst_nb import glue as myst_glue  # noqa: PLC0415 -- optional dependency (locolib[book])
    except ImportError:
        return value
    # A numpy scalar's text is "np.float64(...)", which a role's format spec cannot format.
    myst_glue(name, value.item() if isinstance(value, np.generic) else value, display=False)
    return value


def book_style(threads: int | None = None) -> None:
    """Settings every chapter starts with: figures drawn at the width of the book's text column
    (``FIGURE_WIDTH`` inches at 100 dpi) with fonts of at least 9 pt there, pandas tables with 3 decimals, and
    ``threads`` torch CPU threads (None: torch's default). (Chapters 01-06)"""
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- only a chapter needs it
    import pandas as pd  # noqa: PLC0415

    plt.rcParams.update({"figure.figsize": (FIGURE_WIDTH, 3.6), "figure.dpi": 100, "font.size": 10,
                         "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9,
                         "ytick.labelsize": 9, "legend.fontsize": 9})
    pd.set_option("display.precision", 3)
    if threads is not None:
        import torch  # noqa: PLC0415

        torch.set_num_threads(threads)


def read_parameters(path: str | Path) -> dict[str, Any]:
    """The literals assigned in a notebook's cell tagged ``parameters``.

    Raises ValueError if there is not exactly one such cell or it holds anything but plain
    ``name = literal`` assignments (papermill can only override those faithfully). (Chapters 01-07)
    """

    import nbformat  # noqa: PLC0415 -- optional dependency (locolib[book])

    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{path}: expected one cell tagged 'parameters', found {len(tagged)}")
    values = {}
    for statement in ast.parse(tagged[0].source).body:
        if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)):
            raise ValueError(f"{path}: the parameters cell may only assign plain literals to names")
        try:
            values[statement.targets[0].id] = ast.literal_eval(statement.value)
        except ValueError as error:
            raise ValueError(f"{path}: parameter {statement.targets[0].id} is not a plain literal") from error
    return values


def run_notebook(
    source: str | Path,
    output: str | Path,
    profile: str = "default",
    parameters: Mapping[str, Any] | None = None,
    timeout: int | None = 3600,
    progress: bool = False,
    results_dir: str | Path | None = None,
) -> Path:
    """Execute ``source`` headless with papermill into ``output`` and return ``output``.

    The notebook runs in its own folder (so relative paths behave as in Jupyter) with
    ``profile`` and any extra ``parameters`` injected after its ``parameters`` cell. A failing
    cell raises ``papermill.PapermillExecutionError``; the output notebook keeps the traceback.

    ``results_dir``: the training records' folder of the notebook (``$LOCOLIB_RESULTS`` in its
    kernel). By default the ``smoke`` profile, whose runs only exercise code, keeps its records
    in ``smoke-results/`` beside ``output`` (unless ``$LOCOLIB_RESULTS`` is set), so that it never
    adds records to the repository's ``results/``; the other profiles use the repository's.

    The output notebook shows text as a terminal would (:func:`settle_streams`): a progress bar
    its final state, not one line per update. (Chapters 01-07)
    """
    import papermill  # noqa: PLC0415 -- optional dependency (locolib[book])

    source, output = Path(source).resolve(), Path(output).resolve()
    if not source.is_file():
        raise FileNotFoundError(f"no notebook at {source}")
    output.parent.mkdir(parents=True, exist_ok=True)
    if results_dir is None and profile == "smoke" and not os.environ.get(RESULTS_ENV):
        results_dir = output.parent / "smoke-results"
    with _environment(RESULTS_ENV, results_dir):  # the kernel inherits this process's environment
        papermill.execute_notebook(
            str(source),
            str(output),
            parameters={"profile": profile, **(parameters or {})},
            cwd=str(source.parent),
            kernel_name="python3",
            execution_timeout=timeout,
            progress_bar=progress,
            log_output=False,
        )
    settle_streams(output)
    return output


def settle_streams(path: str | Path) -> None:
    """Rewrite the notebook at ``path`` so that each cell's consecutive outputs of one stream
    are one output, of every line only what its last carriage return left is kept, and blank
    stream outputs are dropped. (Chapters 01-07)"""
    import nbformat  # noqa: PLC0415 -- optional dependency (locolib[book])

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        merged: list = []
        for out in cell.outputs:
            last = merged[-1] if merged else None
            if (out.output_type == "stream" and last is not None
                    and last.output_type == "stream" and last.name == out.name):
                last.text += out.text
            else:
                merged.append(out)
        for out in merged:
            if out.output_type == "stream":
                out.text = "\n".join(_after_carriage_return(line) for line in out.text.split("\n"))
        # A bar erased to print a line between its updates leaves blank output behind.
        cell.outputs = [o for o in merged if o.output_type != "stream" or o.text.strip()]
    nbformat.write(nb, path)


def _after_carriage_return(line: str) -> str:
    parts = [p for p in line.split("\r") if p.strip()]
    return parts[-1] if parts else ""


@contextmanager
def _environment(name: str, value: str | Path | None) -> Iterator[None]:
    """Set the environment variable ``name`` inside the block (nothing if ``value`` is None)."""
    if value is None:
        yield
        return
    before = os.environ.get(name)
    os.environ[name] = str(value)
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


COLAB_MARKER = "# Colab, or this notebook alone:"
REPOSITORY_ENV = "LOCOLIB_REPOSITORY"


def colab_cell_source(config: str | Path) -> str:
    """The first code cell of every notebook: outside the repository, work inside a clone of it.

    A notebook opened alone (Colab's launch button, a downloaded file) has no ``results/`` next to
    it and would train the whole study again. The cell clones the repository (shallow, the branch
    of ``_config.yml``) into ``./<name>`` unless it is there, imports ``locolib`` from the clone
    (in Colab it also installs the dependencies) and moves into the clone's ``notebooks/``: the
    chapter then reads the book's own training records. ``$LOCOLIB_REPOSITORY`` replaces the URL
    (a test clones a local copy). Inside the repository (the book build, a checkout) it does
    nothing. The repository URL and branch are written down once, in ``_config.yml``. (Chapters 01-07)
    """
    import yaml  # noqa: PLC0415 -- optional dependency (locolib[book])

    repo = yaml.safe_load(Path(config).read_text())["repository"]
    url, branch = repo["url"].rstrip("/"), repo["branch"]
    name = url.rsplit("/", 1)[-1].removesuffix(".git")
    return (
        f"{COLAB_MARKER} work in a clone of the book's repository (branch {branch}), so that the\n"
        "# chapter reads the book's training records instead of training again. In the repository: nothing.\n"
        "import os\n"
        "import subprocess\n"
        "import sys\n"
        "from pathlib import Path\n"
        "\n"
        "here = Path.cwd()\n"
        'if not any((d / "_config.yml").is_file() and (d / "locolib").is_dir() for d in (here, *here.parents)):\n'
        f'    clone = here / "{name}"\n'
        "    if not clone.is_dir():\n"
        f'        url = os.environ.get("{REPOSITORY_ENV}", "{url}")\n'
        f'        git = ["git", "clone", "--quiet", "--depth", "1", "--branch", "{branch}", url, str(clone)]\n'
        "        subprocess.run(git, check=True)\n"
        '    if "google.colab" in sys.modules:  # locolib\'s dependencies; Colab\'s own torch is kept\n'
        "        %pip install --quiet -e {clone} onnx\n"
        "    sys.path.insert(0, str(clone))  # an editable install is seen only after a restart\n"
        '    os.chdir(clone / "notebooks")\n'
        '    print(f"working in {clone}: this chapter reads the training records in {clone / \'results\'}")'
    )


def is_colab_cell(source: str) -> bool:
    """Whether ``source`` is the Colab cell (:func:`colab_cell_source`). (Chapters 01-07)"""
    return source.startswith(COLAB_MARKER)
