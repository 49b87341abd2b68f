"""Progress bars that read well in every front end: Colab, JupyterLab, a terminal, papermill.

tqdm.auto draws widgets where the kernel has ipywidgets (Colab) and text elsewhere. Text bars
stack on separate lines in a terminal; where stderr is not a terminal (JupyterLab without
widgets, papermill's log, a rendered book) cursor movements are not understood, so there every
bar takes the current line: a finished run leaves one line, not one line per update.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from tqdm import TqdmWarning

with warnings.catch_warnings():  # without ipywidgets it falls back to text bars, as meant here
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

__all__ = ["progress_bar", "tqdm"]


def progress_bar(total: int, desc: str, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm.auto bar of ``total`` steps named ``desc`` (a no-op bar unless ``enabled``). (Chapters 04-07)"""
    if not sys.stderr.isatty():
        kwargs.setdefault("position", 0)
    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, **kwargs)
