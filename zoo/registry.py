"""The mixer registry: built-ins register with a decorator, plugins through the
`zoo.mixers` entry-point group. Configs name mixers by registry name only.

    @register_mixer(name="rope", family="attention", description=..., citation=...,
                    capabilities=Capabilities(cost="O(L^2)", state="growing"),
                    backends=[SDPA_BACKEND, TORCH_BACKEND], tiny={"n_heads": 2})

Backends are listed in order of preference; `auto` takes the first one usable on the
device. The `torch` reference must be among them.
    class Rope(Mixer): ...

    build_mixer("rope", d_model=256, overrides={"base": 500000})

A plugin package declares, in its pyproject,
`[project.entry-points."zoo.mixers"] my-mixer = "my_pkg.module"`; loading the entry
point imports the module, whose decorators register its mixers under the plugin's
distribution name. A plugin that fails to load is reported, never raised.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.metadata
import inspect
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from zoo.errors import RegistryError, UnknownMixerError, invalid
from zoo.mixer import Backend, BackendChoice, Capabilities, Mixer, MixerConfig, check_forced_backend

ENTRY_POINT_GROUP = "zoo.mixers"
BUILTIN_SOURCE = "mixer-zoo"


@dataclass
class MixerSpec:
    name: str
    family: str
    description: str
    citation: str
    cls: type[Mixer]
    capabilities: Capabilities
    backends: list[Backend]
    tiny: dict[str, Any] = field(default_factory=dict)  # overrides for tiny test sizes
    source: str = BUILTIN_SOURCE
    # implementation version: bumped by a change that alters outputs or training (e.g. which
    # parameters decay); part of every run id, so results of older code are never reused
    version: int = 1
    # length the conformance suite runs at (default `zoo.conformance.L`): long enough for the
    # mixer's structure to matter, e.g. several complete chunks of a chunked retrieval
    check_length: int | None = None

    @property
    def config_cls(self) -> type[MixerConfig]:
        return self.cls.Config

    def make_config(self, overrides: dict[str, Any] | None = None) -> MixerConfig:
        try:
            return self.config_cls(**(overrides or {}))
        except ValidationError as e:
            allowed = ", ".join(self.config_cls.model_fields)
            raise invalid(
                e, f"mixer '{self.name}' config",
                f"fields: {allowed}; see `zoo mixers show {self.name}`",
            ) from None

    def choose_backend(self, device: torch.device | str, forced: str = "auto") -> BackendChoice:
        device = torch.device(device)
        if forced != "auto":
            return check_forced_backend(self, device, forced)
        reasons: dict[str, str] = {}
        chosen = None
        for b in self.backends:
            why = b.check(device)
            if why is None:
                chosen = chosen or b.name
            else:
                reasons[b.name] = why
        assert chosen is not None, f"{self.name}: no usable backend (torch must always be)"
        return BackendChoice(chosen, reasons)


class _Registry:
    def __init__(self) -> None:
        self.specs: dict[str, MixerSpec] = {}
        self.broken: list[dict[str, str]] = []  # {name, package, error}
        self._discovered = False
        self._source = BUILTIN_SOURCE
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def loading_from(self, source: str) -> Iterator[None]:
        prev, self._source = self._source, source
        try:
            yield
        finally:
            self._source = prev

    def add(self, spec: MixerSpec) -> None:
        spec.source = self._source
        old = self.specs.get(spec.name)
        if old is not None and old.cls is not spec.cls:
            raise RegistryError(
                f"mixer name '{spec.name}' registered twice: by {old.source} "
                f"({old.cls.__module__}) and by {spec.source} ({spec.cls.__module__})",
                "rename one of them",
            )
        self.specs[spec.name] = spec

    def ensure_loaded(self) -> None:
        with self._lock:
            if self._discovered:
                return
            self._discovered = True
            importlib.import_module("zoo.mixers")
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                self._load_entry_point(ep)

    def _load_entry_point(self, ep: importlib.metadata.EntryPoint) -> None:
        package = ep.dist.name if ep.dist is not None else "?"
        before = dict(self.specs)
        try:
            with self.loading_from(package):
                obj = ep.load()
                if isinstance(obj, type) and issubclass(obj, Mixer) and not hasattr(obj, "spec"):
                    raise RegistryError(f"{ep.value} is a Mixer without @register_mixer")
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # a broken plugin must never break the zoo, sys.exit() at import included
            self.specs = before
            self.broken.append({"name": ep.name, "package": package, "error": f"{type(e).__name__}: {e}"})

    def reset(self) -> None:
        """Forget discovered plugins (tests install plugins at run time)."""
        with self._lock:
            self.specs = {k: v for k, v in self.specs.items() if v.source == BUILTIN_SOURCE}
            self.broken = []
            self._discovered = False


REGISTRY = _Registry()


def register_mixer(
    *,
    name: str,
    family: str,
    description: str,
    citation: str,
    capabilities: Capabilities,
    backends: list[Backend],
    tiny: dict[str, Any] | None = None,
    version: int = 1,
    check_length: int | None = None,
):
    """Class decorator: attach a `MixerSpec` to a `Mixer` subclass and register it. `version`
    counts changes to what the mixer computes or how it trains; bump it with any such change."""

    def deco(cls: type[Mixer]) -> type[Mixer]:
        if not (isinstance(cls, type) and issubclass(cls, Mixer)):
            raise RegistryError(f"@register_mixer('{name}') needs a zoo.mixer.Mixer subclass")
        if "torch" not in [b.name for b in backends]:
            raise RegistryError(f"mixer '{name}': the torch reference backend must be listed")
        if not (isinstance(version, int) and version >= 1):
            raise RegistryError(f"mixer '{name}': version must be an integer >= 1, got {version!r}")
        spec = MixerSpec(name, family, description, citation, cls, capabilities, list(backends), dict(tiny or {}),
                         version=version, check_length=check_length)
        cls.spec = spec
        REGISTRY.add(spec)
        return cls

    return deco


def names() -> list[str]:
    REGISTRY.ensure_loaded()
    return sorted(REGISTRY.specs)


def specs() -> list[MixerSpec]:
    REGISTRY.ensure_loaded()
    return [REGISTRY.specs[n] for n in sorted(REGISTRY.specs)]


def broken_plugins() -> list[dict[str, str]]:
    REGISTRY.ensure_loaded()
    return list(REGISTRY.broken)


def get_spec(name: str) -> MixerSpec:
    REGISTRY.ensure_loaded()
    spec = REGISTRY.specs.get(name)
    if spec is None:
        broken = next((b for b in REGISTRY.broken if b["name"] == name), None)
        if broken is not None:  # say why the plugin is missing, not that the name is unknown
            raise UnknownMixerError(f"mixer '{name}' from {broken['package']} failed to import: {broken['error']}",
                                    "fix or reinstall that package; `zoo mixers` lists the broken plugins")
        close = difflib.get_close_matches(name, list(REGISTRY.specs), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "see `zoo mixers`"
        raise UnknownMixerError(f"unknown mixer '{name}'", hint)
    return spec


def source_file(name: str) -> Path | None:
    """The file that defines mixer `name` (its class's module), None when unknown."""
    try:
        f = inspect.getsourcefile(get_spec(name).cls)
    except TypeError:
        return None
    return Path(f).resolve() if f else None


def build_mixer(name: str, d_model: int, overrides: dict[str, Any] | None = None, layer_idx: int = 0) -> Mixer:
    spec = get_spec(name)
    return spec.cls(d_model, spec.make_config(overrides), layer_idx=layer_idx)
