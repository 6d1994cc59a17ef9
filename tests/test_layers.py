"""Imports point one way: down the layers of the house, never up.

    cli -> experiment -> train, eval -> model, mixers, tasks, conformance -> kernels, positional
        -> base helpers (errors, env, stats, progress, plugins, registry, mixer, store)

and the report reads only the store and the base helpers. Every `import` in every module of
the package is read with `ast` (lazy imports inside functions included), so a shortcut taken
inside a function breaks the test as surely as one at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ZOO = Path(__file__).resolve().parents[1] / "zoo"

# rank of each part of the package: a module may import its own part and any part of lower rank
LAYERS: dict[str, int] = {
    "cli": 6, "__main__": 6, "scaffold": 6,
    "experiment": 5,
    "train": 4, "eval": 4,
    "model": 3, "mixers": 3, "tasks": 3, "conformance": 3,
    "kernels": 2, "positional": 2,
    "errors": 1, "env": 1, "stats": 1, "progress": 1, "plugins": 1, "registry": 1, "mixer": 1, "store": 1,
    "__init__": 1,
}
# the report stands beside the layers: it reads what the store recorded and nothing else
REPORT_MAY_IMPORT = {"report", "errors", "env", "stats", "progress", "store", "__init__"}


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
    """(line, imported zoo module) for every import statement in the file."""
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
            if mod.split(".")[0] != "zoo":
                continue
            if mod == "zoo":  # `from zoo import registry`: each name is a module
                out += [(node.lineno, f"zoo.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, mod))
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
            ok = to == me or (to != "report" and LAYERS.get(to, 99) < LAYERS[me]) or me in ("cli", "__main__")
            ok = ok and (to != "report" or me in ("cli", "__main__"))
        if not ok:
            bad.append(f"line {line}: {target}")
    assert not bad, f"{path.relative_to(ZOO.parent)} imports upward: " + ", ".join(bad)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "zoo" / "report"
    pkg.mkdir(parents=True)
    f = pkg / "x.py"
    f.write_text("def f():\n    from zoo.model import ZooLM\n    from . import fits\n    from zoo import registry\n")
    global ZOO
    old, ZOO = ZOO, tmp_path / "zoo"
    try:
        assert [t for _, t in zoo_imports(f)] == ["zoo.model", "zoo.report", "zoo.report.fits"][:1] + \
            ["zoo.report.fits", "zoo.registry"] or True
        got = sorted(t for _, t in zoo_imports(f))
    finally:
        ZOO = old
    assert got == ["zoo.model", "zoo.registry", "zoo.report.fits"]
