"""`zoo new-plugin KIND NAME`: write an installable plugin package from the kind's template.

Templates live in `zoo/templates/plugin/KIND/`; file names and contents have `__NAME__`,
`__DIST__`, `__MODULE__` and `__CLASS__` filled in. A kind with a template directory and an
entry in `zoo.plugins.REGISTRIES` can be scaffolded.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from zoo.errors import ZooError
from zoo.plugins import REGISTRIES, registry

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
TEMPLATES = resources.files("zoo") / "templates" / "plugin"


def kinds() -> list[str]:
    """The plugin kinds that have a template."""
    return [k for k in REGISTRIES if (TEMPLATES / k).is_dir()]


def scaffold(kind: str, name: str, out: Path | None = None) -> Path:
    if kind not in kinds():
        raise ZooError(f"no plugin template for kind '{kind}'", f"allowed: {', '.join(kinds())}")
    if not NAME_RE.match(name):
        raise ZooError(f"'{name}' is not a valid {kind} name",
                       "use lowercase letters, digits and single hyphens, starting with a letter (e.g. my-conv)")
    reg = registry(kind)
    if name in reg.names():
        raise ZooError(f"a {kind} named '{name}' already exists (from {reg.source(name)})", "pick another name")
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

    def fill(text: str) -> str:
        for k, v in subst.items():
            text = text.replace(k, v)
        return text

    def copy(src, rel: Path) -> None:
        for entry in src.iterdir():
            if entry.name == "__pycache__":
                continue
            target = out / rel / fill(entry.name)
            if entry.is_dir():
                copy(entry, rel / fill(entry.name))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(fill(entry.read_text()))

    copy(TEMPLATES / kind, Path("."))
    return out
