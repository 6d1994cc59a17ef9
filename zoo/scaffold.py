"""`zoo new-mixer NAME`: write an installable plugin package from the template."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from zoo import registry
from zoo.errors import ZooError

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def scaffold(name: str, out: Path | None = None) -> Path:
    if not NAME_RE.match(name):
        raise ZooError(f"'{name}' is not a valid mixer name",
                       "use lowercase letters, digits and single hyphens, starting with a letter (e.g. my-conv)")
    if name in registry.names():
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
    template = resources.files("zoo") / "templates" / "plugin"

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

    copy(template, Path("."))
    return out
