"""Each public name has one import path (a module's ``__all__`` lists only what it defines) and
names the chapter it serves."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType

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


#: Modules whose public names need not name the chapter they serve yet. Empty it once their
#: docstrings carry the stamp too.
UNSTAMPED_MODULES: frozenset[str] = frozenset()
STAMP = re.compile(r"\bChapters? \d\d\b", re.IGNORECASE)


def _public_callables(module: ModuleType) -> list[str]:
    """The functions and classes the module defines whose names do not start with an underscore
    (every name of its ``__all__`` among them)."""
    return [n for n, value in vars(module).items() if not n.startswith("_") and callable(value)
            and getattr(value, "__module__", None) == module.__name__]


@pytest.mark.parametrize("name", sorted(set(MODULES) - UNSTAMPED_MODULES))
def test_every_public_callable_names_the_chapter_it_serves(name: str):
    """Each public function and class says where the book uses it, d2l-style: "(Chapter 03;
    Theorem 2)", "chapters 04-07"."""
    module = importlib.import_module(f"locolib.{name}")
    unstamped = [n for n in _public_callables(module) if not STAMP.search(inspect.getdoc(getattr(module, n)) or "")]
    assert not unstamped, f"locolib.{name}: docstrings without a 'Chapter NN' stamp: {unstamped}"
