"""The shape of the Python package: what imports what, and what ships."""

import ast
import glob
import os

import pytest

import cowblock

PKG = os.path.dirname(cowblock.__file__)
ROOT = os.path.dirname(PKG)


def _imports(path: str) -> set[str]:
    """Every module a source file imports, at any depth (function bodies too), absolute."""
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    package = rel[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return found


def test_imports_are_resolved():
    assert "cowblock.cli" in _imports(os.path.join(PKG, "__main__.py"))
    assert "cowblock.units" in _imports(os.path.join(PKG, "benchmark", "command.py"))
    assert "cowblock.benchmark.peers" in _imports(os.path.join(PKG, "benchmark", "copyup.py"))


@pytest.mark.parametrize("path", [os.path.join(PKG, "demo.py"), os.path.join(PKG, "table.py")]
                         + sorted(glob.glob(os.path.join(PKG, "benchmark", "*.py"))),
                         ids=lambda p: os.path.relpath(p, PKG))
def test_only_the_command_line_imports_the_cli(path):
    """cli runs the demo and the benchmark; they must not reach back into cli."""
    assert "cowblock.cli" not in _imports(path)


def _modules():
    return sorted(glob.glob(os.path.join(PKG, "**", "*.py"), recursive=True))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: os.path.relpath(p, PKG))
def test_only_lowlevel_touches_cffi(path):
    """_lowlevel is the middle tier: the public objects above it deal in Python objects."""
    if os.path.relpath(path, PKG) == "_lowlevel.py":
        return
    found = _imports(path)
    assert "cowblock._cowblock" not in found
    assert not {"cowblock._lowlevel.ffi", "cowblock._lowlevel.lib"} & found


def test_every_subpackage_ships():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = set()
    for here, dirs, files in os.walk(PKG):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if "__init__.py" in files:
            found.add(os.path.relpath(here, ROOT).replace(os.sep, "."))
    assert "cowblock.benchmark" in found
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
