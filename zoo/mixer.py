"""The mixer contract.

A mixer is an `nn.Module` mapping `x: [B, L, D] -> y: [B, L, D]`, strictly causal.

    y = mixer(x)                      # one full forward
    cache = mixer.new_cache(B, device, dtype)
    y1 = mixer(x[:, :5], cache)       # the same outputs, chunk by chunk,
    y2 = mixer(x[:, 5:], cache)       # down to one token at a time

Each mixer class carries a `MixerSpec` (see `zoo.registry`): its registry name, family,
citation, a pydantic config with defaults and bounds, its capabilities and its backends.
The plain-PyTorch backend `torch` always exists and is the oracle; fast paths are
optional and are chosen at run time by `select_backend`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from zoo.errors import LengthError, ZooError

if TYPE_CHECKING:
    from zoo.registry import MixerSpec

# the built-in mixers' families, the words the README's mixer table uses; a plugin may name its own
FAMILIES = ("attention", "sparse attention", "state space", "linear recurrence", "long convolution")

Cost = Literal["O(L)", "O(L log L)", "O(L^2)", "O(T*L^2)"]


class MixerConfig(BaseModel):
    """Base of every mixer config: plain validated data, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str = "auto"

    def source_loss(self) -> str | None:
        """The field of an auxiliary loss on the batch's answer sources (`zoo.tasks.base.Batch`)
        when it is on, else None: such a mixer sets `wants_sources`, and the trainer refuses a
        task that gives no sources."""
        return None

    def identity_dump(self) -> dict[str, Any]:
        """`model_dump()` for a run's identity: a field marked `json_schema_extra={"id_when_set":
        True}` (one added after runs were stored) is left out while at its default, so the ids
        of runs from before it stay valid (a left-out field reads back as its default)."""
        out = self.model_dump()
        for name, f in type(self).model_fields.items():
            if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("id_when_set") \
                    and out[name] == f.default:
                del out[name]
        return out


def _always(device: torch.device) -> str | None:
    return None


@dataclass(frozen=True)
class Backend:
    """One way to run a mixer. `check(device)` returns None when usable, else why not."""

    name: str
    description: str
    check: Callable[[torch.device], str | None] = _always


TORCH_BACKEND = Backend("torch", "plain PyTorch reference (any device)")


@dataclass(frozen=True)
class Capabilities:
    """What a mixer can do. `max_length` None means unbounded; an instance may narrow it."""

    cost: Cost
    state: Literal["fixed", "growing"]
    max_length: int | None = None



def nested_tensors(v: Any) -> list[torch.Tensor]:
    """Every tensor inside `v`, through lists, tuples and dicts (a cache's state, however nested)."""
    if isinstance(v, torch.Tensor):
        return [v]
    if isinstance(v, (list, tuple)):
        return [t for u in v for t in nested_tensors(u)]
    if isinstance(v, dict):
        return [t for u in v.values() for t in nested_tensors(u)]
    return []

class Cache:
    """Inference state of one mixer: tensors (or lists of tensors) as attributes.

    `pos` counts the tokens consumed so far; `nbytes()` is what the cache holds, which
    the conformance suite compares with `Mixer.state_bytes`.
    """

    def __init__(self, **fields: Any):
        self.pos = 0
        for k, v in fields.items():
            setattr(self, k, v)

    def tensors(self) -> list[torch.Tensor]:
        return nested_tensors(list(vars(self).values()))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())


@dataclass
class BackendChoice:
    chosen: str
    reasons: dict[str, str] = field(default_factory=dict)  # unavailable backend -> why


class Mixer(nn.Module):
    """Base class. Subclasses set `Config`, implement `forward`, `new_cache`,
    `state_bytes` and `flops_per_token`, and register with `@register_mixer`."""

    Config: ClassVar[type[MixerConfig]] = MixerConfig
    spec: ClassVar[MixerSpec]
    # True: ZooLM calls `forward(x, cache, shared=d)`, `d` a dict that lives for one model
    # forward, so a layer can hand tensors to later layers (RWKV-7's value residual).
    # Called on its own, such a mixer gets `shared=None`.
    uses_shared: ClassVar[bool] = False
    # True (an instance may set it): the mixer has a training signal that reads the batch's
    # `sources` (zoo.tasks.base.Batch), which the trainer then passes as
    # `ZooLM.forward(tokens, sources=...)`; it arrives in `shared["sources"]` (set uses_shared too).
    wants_sources: bool = False

    def __init__(self, d_model: int, config: MixerConfig | None = None, layer_idx: int = 0):
        super().__init__()
        self.d_model = d_model
        self.config = config if config is not None else self.Config()
        self.layer_idx = layer_idx
        self.last_backend: str | None = None

    # -- contract -----------------------------------------------------------------
    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        raise NotImplementedError

    def new_cache(self, batch: int, device: torch.device | str, dtype: torch.dtype) -> Cache:
        raise NotImplementedError

    def state_bytes(self, seq_len: int, batch: int = 1, dtype: torch.dtype = torch.bfloat16) -> int:
        """Bytes the cache holds after `seq_len` tokens."""
        raise NotImplementedError

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token at context `seq_len` (matmuls at 2 FLOPs per MAC)."""
        raise NotImplementedError

    def make_mlp(self, d_model: int, hidden: int) -> nn.Module | None:
        """The channel mixer of this layer's block, or None for the model's SwiGLU of width
        `hidden`. A module with `new_cache(batch, device, dtype)` is stateful: ZooLM gives it a
        cache entry of its own and calls it as `mlp(x, cache)`."""
        return None

    # -- shared helpers -------------------------------------------------------------
    @property
    def max_length(self) -> int | None:
        return self.spec.capabilities.max_length

    def check_length(self, end: int) -> None:
        m = self.max_length
        if m is not None and end > m:
            raise LengthError(
                f"mixer '{self.spec.name}' runs at most {m} tokens, asked for {end}",
                "evaluate it at or below its max_length, or pick an unbounded mixer",
            )

    def backend_choice(self, device: torch.device) -> BackendChoice:
        return self.spec.choose_backend(device, self.config.backend)

    def select_backend(self, x: torch.Tensor) -> str:
        name = self.backend_choice(x.device).chosen
        self.last_backend = name
        return name


def decays(p: torch.Tensor) -> bool:
    """Whether AdamW's weight decay applies to parameter `p`. Not to a parameter tagged
    `p._no_weight_decay = True` (SSM dynamics such as Mamba's `A_log` and `D`, which decay
    would pull towards a different model), nor to norms, biases, gains and per-channel
    mixing vectors: anything with at most one axis longer than 1, e.g. `[1, 1, C]`."""
    return not getattr(p, "_no_weight_decay", False) and sum(s > 1 for s in p.shape) >= 2


def no_decay_names(module: nn.Module) -> list[str]:
    """Names of the parameters of `module` that `decays` exempts, in module order."""
    return [n for n, p in module.named_parameters() if not decays(p)]


def param_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def check_forced_backend(spec: MixerSpec, device: torch.device, forced: str) -> BackendChoice:
    names = [b.name for b in spec.backends]
    if forced not in names:
        raise ZooError(
            f"mixer '{spec.name}' has no backend '{forced}'",
            f"allowed: auto, {', '.join(names)}",
        )
    reasons = {b.name: r for b in spec.backends if (r := b.check(device)) is not None}
    if forced in reasons:
        raise ZooError(
            f"backend '{forced}' of mixer '{spec.name}' cannot run on {device}: {reasons[forced]}",
            "use backend = 'auto'",
        )
    return BackendChoice(forced, reasons)
