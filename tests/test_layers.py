"""Imports point one way: down the layers of the house, never up.

    cli -> experiment -> train, eval -> model, mixers, tasks, conformance -> kernels, positional
        -> base helpers (errors, env, stats, progress, plugins, registry, mixer, store)

Parts of one layer may import each other. The report stands beside the layers: it reads the
store, the base helpers and the declarations of what it describes (a task's chance levels, a
mixer's state sizes), never the experiment, the trainer or the evaluators. Every `import` in
every module of the package is read with `ast` (lazy imports inside functions included), so a
shortcut taken inside a function breaks the test as surely as one at the top of a file.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ZOO = Path(__file__).resolve().parents[1] / "zoo"

# rank of each part of the package: a module may import any part of its rank or lower
LAYERS: dict[str, int] = {
    "cli": 6, "__main__": 6, "scaffold": 6,
    "experiment": 5,
    "train": 4, "eval": 4, "bench": 4,
    "model": 3, "mixers": 3, "tasks": 3, "conformance": 3,
    "kernels": 2, "positional": 2, "norm": 2,
    "errors": 1, "env": 1, "stats": 1, "progress": 1, "plugins": 1, "registry": 1, "mixer": 1, "retrieval": 1,
    "store": 1,
    "__init__": 1,
}
REPORT_MAY_IMPORT = {"report", "model", "tasks"} | {p for p, rank in LAYERS.items() if rank == 1}


def part(module: str) -> str:
    """'zoo.train.trainer' -> 'train'; 'zoo' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(ZOO.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def zoo_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported zoo module or name) for every import statement in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "zoo"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] == "zoo":  # `from zoo import registry`: the name may be a module
                out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return out


MODULES = sorted(p for p in ZOO.rglob("*.py") if "templates" not in p.parts)


def test_every_part_of_the_package_has_a_layer():
    parts = {part(module_name(p)) for p in MODULES} - {"report"}
    assert parts <= set(LAYERS), f"give these a layer: {sorted(parts - set(LAYERS))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ZOO.parent)))
def test_imports_point_down(path):
    me = part(module_name(path))
    bad = []
    for line, target in zoo_imports(path):
        to = part(target)
        if me == "report":
            ok = to in REPORT_MAY_IMPORT
        else:
            ok = LAYERS.get(to, 99) <= LAYERS[me] if to != "report" else LAYERS[me] == LAYERS["cli"]
        if not ok:
            bad.append(f"line {line}: {target}")
    assert not bad, f"{path.relative_to(ZOO.parent)} imports upward: " + ", ".join(bad)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "zoo" / "report"
    pkg.mkdir(parents=True)
    f = pkg / "x.py"
    f.write_text("def f():\n    from zoo.experiment import spec\n    from . import fits\n"
                 "    from zoo import registry\n")
    monkeypatch.setattr(sys.modules[__name__], "ZOO", tmp_path / "zoo")
    assert sorted(t for _, t in zoo_imports(f)) == ["zoo.experiment.spec", "zoo.registry", "zoo.report.fits"]
