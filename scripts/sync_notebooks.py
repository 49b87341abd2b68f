"""Keep every notebook in notebooks/ publishable: the canonical Colab cell first, no outputs.

Run after editing a notebook or changing the repository settings in _config.yml:
    python scripts/sync_notebooks.py          # rewrite in place
    python scripts/sync_notebooks.py --check  # exit 1 if anything would change
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

from locolib.notebook import colab_cell_source, is_colab_cell

ROOT = Path(__file__).resolve().parents[1]


def synced(nb: nbformat.NotebookNode, source: str) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if not (c.cell_type == "code" and (is_colab_cell(c.source)
                                                                   or "colab" in c.metadata.get("tags", [])))]
    first_code = next((i for i, c in enumerate(cells) if c.cell_type == "code"), len(cells))
    colab = nbformat.v4.new_code_cell(source, metadata={"tags": ["colab", "hide-input"]})
    cells.insert(first_code, colab)
    for cell in cells:
        cell.pop("id", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
            cell.metadata.pop("papermill", None)
    nb.cells = cells
    nb.metadata.pop("papermill", None)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    nb.nbformat, nb.nbformat_minor = 4, 4
    return nb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    source = colab_cell_source(ROOT / "_config.yml")
    stale = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        before = path.read_text()
        after = nbformat.writes(synced(nbformat.reads(before, as_version=4), source)) + "\n"
        if after != before:
            stale.append(path.name)
            if not args.check:
                path.write_text(after)
    if stale:
        print(("stale: " if args.check else "synced: ") + ", ".join(stale))
    return 1 if (stale and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
