"""The mixer registry: built-ins register with a decorator, plugins through the
`zoo.mixers` entry-point group. Configs name mixers by registry name only.

    @register_mixer(name="rope", family="attention", description=..., citation=...,
                    capabilities=Capabilities(cost="O(L^2)", state="growing"),
                    backends=[SDPA_BACKEND, TORCH_BACKEND], tiny={"n_heads": 2})

    class Rope(Mixer): ...

    build_mixer("rope", d_model=256, overrides={"base": 500000})

Backends are listed in order of preference; `auto` takes the first one usable on the
device. The `torch` reference must be among them.

A plugin package declares, in its pyproject,
`[project.entry-points."zoo.mixers"] my-mixer = "my_pkg.module"`; loading the entry
point imports the module, whose decorators register its mixers under the plugin's
distribution name. A plugin that fails to load is reported, never raised. `MIXERS` is a
`zoo.plugins.PluginRegistry`, the shape every pluggable kind shares.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from zoo.errors import RegistryError, UnknownMixerError, invalid
from zoo.mixer import Backend, BackendChoice, Capabilities, Mixer, MixerConfig, check_forced_backend
from zoo.plugins import BUILTIN_SOURCE, PluginRegistry

ENTRY_POINT_GROUP = "zoo.mixers"


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


class MixerRegistry(PluginRegistry[MixerSpec]):
    unknown_error = UnknownMixerError
    clash_error = RegistryError

    def add(self, name: str, spec: MixerSpec) -> None:
        spec.source = self._source
        super().add(name, spec)

    def same(self, old: MixerSpec, new: MixerSpec) -> bool:
        return old.cls is new.cls

    def check_loaded(self, ep: importlib.metadata.EntryPoint, obj: Any) -> None:
        if isinstance(obj, type) and issubclass(obj, Mixer) and not hasattr(obj, "spec"):
            raise RegistryError(f"{ep.value} is a Mixer without @register_mixer")


MIXERS = MixerRegistry(ENTRY_POINT_GROUP, kind="mixer", builtins="zoo.mixers", listing="zoo mixers")


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
        MIXERS.add(name, spec)
        return cls

    return deco


def names() -> list[str]:
    return MIXERS.names()


def specs() -> list[MixerSpec]:
    return list(MIXERS.all().values())


def broken_plugins() -> list[dict[str, str]]:
    return MIXERS.broken_plugins()


def get_spec(name: str) -> MixerSpec:
    return MIXERS.get(name)


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
