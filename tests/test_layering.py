"""The one-way package layering of STYLE.md / DESIGN.md, checked on the source with `ast`.

    engines.hw   <- engines.api <- each engine (engines.native, .paravirt, .shadow, ...)
    guestkit sees engines.api only; milestones sees nothing of ours; race sits on top.

Rules (STYLE.md "Layers"):
- engines.hw imports only the standard library (and itself);
- engines.api imports only the standard library, yaml, engines.hw (and itself);
- an engine engines.<x> imports only the standard library, yaml, engines.hw, engines.api and
  itself: never another engine, guestkit, milestones or race;
- the engines/__init__.py package file imports only the standard library, because importing
  engines.hw runs it;
- guestkit imports only the standard library, yaml, engines.api and itself;
- milestones imports only the standard library, yaml and itself;
- nothing outside race imports race, and ray is imported only under race/.

Every import counts, wherever it is written (function bodies, `if TYPE_CHECKING:` blocks),
and so do importlib.import_module("...") / __import__("...") calls with a literal name.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engines", "guestkit", "milestones", "race")
STDLIB = frozenset(sys.stdlib_module_names)
OURS = frozenset(PACKAGES)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    """engines.hw, engines.api, engines.<x>, engines, guestkit, milestones or race."""
    parts = module.split(".")
    if parts[0] == "engines" and len(parts) > 1:
        return f"engines.{parts[1]}"
    return parts[0]


def allowed(src_layer: str, target: str) -> bool:
    """May code in `src_layer` import module `target` (absolute, dotted)?"""
    top = target.split(".")[0]
    if top in STDLIB:
        return True
    if src_layer == "race":
        return True
    if top not in OURS:  # third party
        return top == "yaml" and src_layer not in ("engines.hw", "engines")
    dst = layer(target)
    if src_layer == "engines.hw" or src_layer == "engines":
        may = {"engines.hw"} if src_layer == "engines.hw" else set()
    elif src_layer == "engines.api":
        may = {"engines.hw", "engines.api"}
    elif src_layer.startswith("engines."):
        may = {"engines.hw", "engines.api", src_layer}
    elif src_layer == "guestkit":
        may = {"engines.api", "guestkit"}
    elif src_layer == "milestones":
        may = {"milestones"}
    else:
        raise AssertionError(f"unknown layer {src_layer}")
    if dst == "engines":  # the bare package: harmless only to layers that may use engines.*
        return any(m.startswith("engines.") for m in may)
    return dst in may


def resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module named by a (possibly relative) `from X import ...`."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(module: str, is_package: bool, source: str,
                     exists=lambda dotted: False) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in `source`. `from a import b` names a.b
    when `exists("a.b")` says b is a module of ours, else a."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve_from(module, is_package, node)
            subs = [f"{base}.{a.name}" for a in node.names if exists(f"{base}.{a.name}")]
            found += [(node.lineno, name) for name in subs or [base]]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module"
                   or getattr(node.func, "id", None) in ("__import__", "import_module"))):
            found.append((node.lineno, node.args[0].value))
    return found


def violations(files: dict[str, str], exists=lambda dotted: False) -> list[str]:
    """Layering violations in {relative path: source}."""
    problems = []
    for rel, source in sorted(files.items()):
        path = Path(rel)
        module = module_name(ROOT / path, ROOT)
        src_layer = layer(module)
        for line, target in imported_modules(module, path.name == "__init__.py", source,
                                             exists):
            if not allowed(src_layer, target):
                problems.append(f"{rel}:{line}: {module} ({src_layer}) imports {target}")
    return problems


def project_exists(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def project_files() -> dict[str, str]:
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else []:
            files[str(path.relative_to(ROOT))] = path.read_text(encoding="utf-8")
    return files


def test_the_hardware_model_package_exists_so_the_check_is_not_vacuous():
    assert (ROOT / "engines" / "hw" / "__init__.py").is_file()
    assert any(name.startswith("engines/hw/") for name in project_files())


def test_every_package_imports_only_the_layers_below_it():
    """STYLE.md 'Layers': engines.hw <- engines.api <- engines; guestkit sees engines.api;
    milestones sees only itself; race is on top and only race imports ray."""
    problems = violations(project_files(), project_exists)
    assert not problems, "layering violations:\n" + "\n".join(problems)


@pytest.mark.parametrize("rel, source", [
    ("engines/hw/cpu.py", "import yaml\n"),
    ("engines/hw/cpu.py", "from engines.api import contract\n"),
    ("engines/hw/cpu.py", "def f():\n    from ..api import costs\n"),
    ("engines/api/contract.py", "import tabulate\n"),
    ("engines/api/contract.py", "from engines.native import NativeEngine\n"),
    ("engines/native/engine.py", "from engines.shadow import walk\n"),
    ("engines/native/engine.py", "from engines import paravirt\n"),
    ("engines/shadow/__init__.py", "from ..paravirt.types import x\n"),
    ("engines/paravirt/mm.py", "import guestkit.kernel\n"),
    ("engines/paravirt/mm.py", "import race\n"),
    ("guestkit/kernel.py", "from engines.hw import CPU\n"),
    ("guestkit/kernel.py", "from engines.native import NativeEngine\n"),
    ("guestkit/kernel.py", "from milestones import ladder\n"),
    ("milestones/tracker.py", "from guestkit import kernel\n"),
    ("milestones/tracker.py", "import engines.api\n"),
    ("milestones/tracker.py", "import ray\n"),
    ("guestkit/boot.py", "import importlib\nimportlib.import_module('race.runner')\n"),
    ("engines/__init__.py", "from .api import Engine\n"),
])
def test_the_checker_flags_a_violating_import(rel, source):
    """Self-test: the checker can fail (each snippet breaks one rule)."""
    assert violations({rel: source}, project_exists), f"{rel}: {source!r} was not flagged"


@pytest.mark.parametrize("rel, source", [
    ("engines/hw/cpu.py", "from __future__ import annotations\nimport dataclasses\n"
                          "from .arch import PageFlag\nfrom engines.hw.memory import X\n"),
    ("engines/api/contract.py", "import yaml\nfrom engines.hw import CPU\nfrom . import costs\n"),
    ("engines/native/engine.py", "from engines.api import Engine\nfrom ..hw import CPU\n"
                                 "from .walk import w\nimport engines.native.walk\n"),
    ("guestkit/kernel.py", "from engines.api import Engine\nfrom .mm import M\nimport yaml\n"),
    ("milestones/tracker.py", "import yaml\nfrom milestones.ladder import Ladder\n"),
    ("race/runner.py", "import ray\nfrom engines.native import N\nfrom guestkit import boot\n"),
])
def test_the_checker_accepts_imports_that_follow_the_layers(rel, source):
    assert violations({rel: source}, project_exists) == []
