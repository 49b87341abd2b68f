"""Build the book: execute every notebook of the table of contents with papermill, then render.

The executed copies go to a staging folder that mirrors the repository (``_config.yml``, ``book/``,
``notebooks/``), so that page paths, and with them the Colab links, are those of the repository.
Run as ``python -m locolib.book --profile default`` from anywhere inside the repository.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from locolib.notebook import PROFILES, read_parameters, run_notebook


def toc_notebooks(root: Path) -> list[Path]:
    """The notebooks named in ``book/_toc.yml``, in reading order, as paths under ``root``.
    (Chapters 01-07: the book build)
    """
    toc = yaml.safe_load((root / "book" / "_toc.yml").read_text())
    files: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    notebooks = [root / f"{f}.ipynb" for f in files if (root / f"{f}.ipynb").exists()]
    missing = [f for f in files if not (root / f"{f}.ipynb").exists() and not (root / f"{f}.md").exists()]
    if missing:
        raise FileNotFoundError(f"book/_toc.yml names pages that do not exist: {missing}")
    return notebooks


def copy_sources(root: Path, staging: Path) -> Path:
    """Copy the book's sources (``book/``, ``_config.yml``) to an empty ``staging``; return it.
    (Chapters 01-07: the book build)
    """
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(root / "book", staging / "book")
    shutil.copy2(root / "_config.yml", staging / "_config.yml")
    return staging


def execute_chapter(root: Path, notebook: Path, staging: Path, profile: str) -> Path:
    """Execute ``notebook`` (under ``root``) into its place in ``staging``; return that path.
    (Chapters 01-07: the book build)
    """
    # A chapter without a setting for this profile (no GPU work in it, say) shows its default.
    chosen = profile if profile in read_parameters(notebook).get("profiles", {}) else "default"
    start = time.perf_counter()
    print(f"executing {notebook.relative_to(root)} (profile {chosen}) ...", flush=True)
    executed = run_notebook(notebook, staging / notebook.relative_to(root), profile=chosen)
    hide_injected_parameters(executed)
    print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    return executed


def hide_injected_parameters(path: Path) -> None:
    """Tag the cell papermill injected (``injected-parameters``) ``remove-cell``: the page shows
    the chapter's own ``parameters`` cell once, not a second copy with the build's values.
    (Chapters 01-07: the book build)
    """
    import nbformat  # noqa: PLC0415 -- optional dependency (locolib[book])

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    nbformat.write(nb, path)


def stage(root: Path, staging: Path, profile: str) -> Path:
    """Copy the book's sources to ``staging`` and execute each notebook there; return ``staging``.
    (Chapters 01-07: the book build)
    """
    copy_sources(root, staging)
    for notebook in toc_notebooks(root):
        execute_chapter(root, notebook, staging, profile)
    return staging


def render(staging: Path, path_output: Path) -> Path:
    """Render the executed book in ``staging`` with jupyter-book; return ``path_output/_build/html``.

    Fails on any Sphinx warning (``-W``). (Chapters 01-07: the book build)"""
    command = [
        sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(staging),
        "--path-output", str(path_output),
        "--config", str(staging / "_config.yml"),
        "--toc", str(staging / "book" / "_toc.yml"),
        "-W", "--keep-going",
    ]
    subprocess.run(command, check=True)
    return path_output / "_build" / "html"


def build(root: Path, path_output: Path, profile: str = "default") -> Path:
    """Execute and render the whole book; return ``path_output/_build/html``.

    Fails on any cell error (papermill raises) and on any Sphinx warning (``-W``). (Chapters 01-07: the book build)
    """
    return render(stage(root, path_output / "_build" / "stage", profile), path_output)


def find_root(start: Path) -> Path:
    """The repository root at or above ``start`` (a folder with ``_config.yml`` and ``book/_toc.yml``).
    (Chapters 01-07: the book build)"""
    for folder in (start, *start.parents):
        if (folder / "_config.yml").exists() and (folder / "book" / "_toc.yml").exists():
            return folder
    raise FileNotFoundError(f"no book (a folder with _config.yml and book/_toc.yml) at or above {start}")


def main(argv: list[str] | None = None) -> None:
    """``python -m locolib.book``: build the book with one profile. (Chapters 01-07: the book build)"""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default", choices=PROFILES)
    parser.add_argument("--path-output", type=Path, default=None,
                        help="folder that receives _build/ (default: the repository root)")
    args = parser.parse_args(argv)
    root = find_root(Path.cwd())
    start = time.perf_counter()
    html = build(root, (args.path_output or root).resolve(), args.profile)
    print(f"book built in {time.perf_counter() - start:.0f} s: {html / 'index.html'}")


if __name__ == "__main__":
    main()
