"""Each public name has one import path: a module's ``__all__`` lists only what it defines."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import locolib

MODULES = sorted(m.name for m in pkgutil.iter_modules(locolib.__path__))


def _imported_names(path: Path) -> set[str]:
    """Names a module binds by importing them from another locolib module."""
    tree = ast.parse(path.read_text())
    return {alias.asname or alias.name for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("locolib")
            for alias in node.names}


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_only_names_the_module_defines(name: str):
    module = importlib.import_module(f"locolib.{name}")
    public = getattr(module, "__all__", [])
    reexported = sorted(set(public) & _imported_names(Path(module.__file__)))
    assert not reexported, f"locolib.{name} re-exports {reexported}: import them from their own module"
    homes = {n: getattr(getattr(module, n), "__module__", None) or module.__name__ for n in public}
    elsewhere = sorted(n for n, home in homes.items() if home.startswith("locolib.") and home != module.__name__)
    assert not elsewhere, f"locolib.{name}.__all__ names {elsewhere}, defined in other modules"
