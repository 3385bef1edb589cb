"""The provider boundary: no ktrdr module imports ``ibfarm`` (or an IB client library) but the
IB adapter and the embedded simulator; read from the modules' syntax trees, so an import in a
function body, a ``from ibfarm import ...`` or an ``importlib`` call by name is found too."""

from __future__ import annotations

import ast
from pathlib import Path

import ktrdr

ROOT = Path(ktrdr.__file__).parent
#: The modules allowed to import ibfarm.
ALLOWED = {"ktrdr/data/ib_data_adapter.py", "ktrdr/sim.py"}
FORBIDDEN = ("ibfarm", "ib_insync", "ib_async", "ibapi")


def imported_modules(tree: ast.AST) -> set[str]:
    """Every module ``tree`` imports: import statements anywhere, and importlib or
    ``__import__`` calls with a literal name."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def offenders() -> dict[str, set[str]]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        name = path.relative_to(ROOT.parent).as_posix()
        if name in ALLOWED:
            continue
        bad = {m for m in imported_modules(ast.parse(path.read_text(), name))
               if m.split(".")[0] in FORBIDDEN}
        if bad:
            found[name] = bad
    return found


def test_only_the_adapter_and_the_simulator_import_ibfarm():
    assert offenders() == {}


def test_the_check_finds_every_form_of_import():
    tree = ast.parse("import ibfarm.errors\n"
                     "def f():\n    from ibfarm.errors import IbError\n"
                     "import importlib\nimportlib.import_module('ib_async')\n"
                     "x = __import__('ibfarm')\nfrom ktrdr.data import gaps\n")
    found = imported_modules(tree)
    assert {"ibfarm.errors", "ib_async", "ibfarm"} <= found
    assert {m for m in found if m.split(".")[0] in FORBIDDEN} == {"ibfarm.errors", "ib_async",
                                                                   "ibfarm"}


def test_the_allowed_modules_do_use_ibfarm():
    # the exemption is not stale: both modules still are the boundary
    for name in ALLOWED:
        tree = ast.parse((ROOT.parent / name).read_text())
        assert any(m.split(".")[0] == "ibfarm" for m in imported_modules(tree)), name
