"""`zoo new-mixer NAME`, `zoo new-evaluator NAME`: write an installable plugin package from a template
(`templates/plugin` for a mixer, `templates/plugin/evaluator` for an evaluator)."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from zoo import registry
from zoo.errors import ZooError

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


KIND_TEMPLATES = {"mixer": "plugin", "evaluator": "plugin/evaluator"}


def scaffold(name: str, out: Path | None = None, kind: str = "mixer") -> Path:
    if not NAME_RE.match(name):
        raise ZooError(f"'{name}' is not a valid {kind} name",
                       "use lowercase letters, digits and single hyphens, starting with a letter (e.g. my-conv)")
    if kind == "evaluator":
        from zoo.eval.base import EVALUATORS

        if name in EVALUATORS.names():
            raise ZooError(f"an evaluator named '{name}' already exists (from {EVALUATORS.source(name)})",
                           "pick another name")
    elif name in registry.names():
        raise ZooError(f"a mixer named '{name}' already exists (from {registry.get_spec(name).source})",
                       "pick another name")
    module = "zoo_" + name.replace("-", "_")
    subst = {
        "__NAME__": name,
        "__DIST__": "zoo-" + name,
        "__MODULE__": module,
        "__CLASS__": "".join(p.capitalize() for p in name.split("-")),
    }
    out = Path(out) if out is not None else Path.cwd() / f"zoo-{name}"
    if out.exists() and any(out.iterdir()):
        raise ZooError(f"{out} exists and is not empty", "choose another --out directory")
    template = resources.files("zoo").joinpath("templates", *KIND_TEMPLATES[kind].split("/"))
    nested = {Path(t).name for t in KIND_TEMPLATES.values() if t.startswith(KIND_TEMPLATES[kind] + "/")}

    def fill(text: str) -> str:
        for k, v in subst.items():
            text = text.replace(k, v)
        return text

    def copy(src, rel: Path) -> None:
        for entry in src.iterdir():
            if entry.name == "__pycache__" or (rel == Path(".") and entry.name in nested):
                continue
            target = out / rel / fill(entry.name)
            if entry.is_dir():
                copy(entry, rel / fill(entry.name))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(fill(entry.read_text()))

    copy(template, Path("."))
    return out
