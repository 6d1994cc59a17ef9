"""What the bench times: one of our mixer layers, a peer layer beside it, or a whole ZooLM.

Each target builds its module on the bench's device and answers the same calls: `call` (the
forward, x `[B, L, D]`), `prefill` (a decode state holding L tokens) and `step` (one token
`[B, 1, D]` through that state), with the FLOPs and bytes the rows report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo import registry
from zoo.bench.config import LINEAR_COSTS

if TYPE_CHECKING:
    from zoo.bench.peers import Peer

def decode_flops(flops_per_token: Callable[[int], float], L: int) -> float:
    """FLOPs of the step that adds token L+1 to a context of L: (L+1) f(L+1) - L f(L)."""
    return (L + 1) * flops_per_token(L + 1) - L * flops_per_token(L)


class Target:
    """One thing the bench times: a mixer layer, a peer layer, or a whole ZooLM.

    Subclasses build `self.module` and implement `call` (the forward), `prefill` (a decode
    state holding L tokens) and `step` (one token through that state)."""

    kind = "mixer"
    d_model: int

    def __init__(self, name: str, mixer: str, cost: str, description: str, peer_of: str | None = None):
        self.name, self.mixer, self.cost, self.description, self.peer_of = name, mixer, cost, description, peer_of
        self.module: nn.Module | None = None
        self.build_error: str | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def build(self, device: torch.device, dtype: torch.dtype) -> None:
        raise NotImplementedError

    def ensure_built(self, device: torch.device, dtype: torch.dtype) -> None:
        if self.module is None and self.build_error is None:
            self.build(device, dtype)

    def param_bytes(self) -> int:
        assert self.module is not None
        return sum(p.numel() * p.element_size() for p in self.module.parameters())

    def num_params(self) -> int:
        assert self.module is not None
        return sum(p.numel() for p in self.module.parameters())

    def zero_grad(self) -> None:
        if self.module is not None:
            for p in self.module.parameters():
                p.grad = None

    # -- shapes and work ---------------------------------------------------------------------
    @property
    def quadratic(self) -> bool:
        return self.cost not in LINEAR_COSTS

    def max_length(self) -> int | None:
        return None

    def unsupported(self, B: int, L: int) -> str | None:
        """Why this target cannot take B x L tokens, when the attempt would take the process down
        (an illegal memory access, unlike out of memory, cannot be caught and recorded)."""
        return None

    def flops_per_token(self, L: int) -> float | None:
        return None

    def backend(self) -> str:
        return self.description

    def inputs(self, B: int, L: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """x `[B, L, D]` for a layer (token ids `[B, L]` for a whole model)."""
        return torch.randn(B, L, self.d_model, device=device, dtype=dtype)

    def grad_output(self, x: torch.Tensor) -> torch.Tensor:
        """What the backward starts from, made before timing: dL/dy for a layer (y has x's shape)."""
        return torch.randn_like(x)

    def backward(self, y: torch.Tensor, gy: torch.Tensor) -> None:
        y.backward(gy)

    # -- calls -------------------------------------------------------------------------------
    def call(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prefill(self, x: torch.Tensor, chunk: int, extra: int) -> Any:
        """A decode state holding x's L tokens, with room for `extra` more."""
        raise NotImplementedError

    def step(self, state: Any, x1: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_nbytes(self, state: Any) -> int | None:
        return None

    def declared_state_bytes(self, L: int, B: int, dtype: torch.dtype) -> int | None:
        return None


class MixerTarget(Target):
    """One of our mixers, a single layer built through the registry with its default config."""

    kind = "mixer"

    def __init__(self, spec: registry.MixerSpec, d_model: int):
        super().__init__(spec.name, spec.name, spec.capabilities.cost, spec.description)
        self.spec, self.d_model = spec, d_model

    def build(self, device, dtype):
        self.module = registry.build_mixer(self.spec.name, self.d_model).to(device=device, dtype=dtype)

    def max_length(self):
        return self.module.max_length

    def flops_per_token(self, L):
        return float(self.module.flops_per_token(L))

    def backend(self):
        return self.module.last_backend or self.module.backend_choice(next(self.module.parameters()).device).chosen

    def call(self, x):
        return self.module(x)

    def prefill(self, x, chunk, extra):
        cache = self.module.new_cache(x.shape[0], x.device, x.dtype)
        for i in range(0, x.shape[1], chunk):
            self.module(x[:, i:i + chunk], cache)
        return cache

    def step(self, state, x1):
        return self.module(x1, state)

    def state_nbytes(self, state):
        return state.nbytes()

    def declared_state_bytes(self, L, B, dtype):
        return int(self.module.state_bytes(L, B, dtype))


class ModelTarget(Target):
    """A whole ZooLM with `n_layers` layers of one mixer: embedding, blocks, norm, tied head."""

    kind = "model"

    def __init__(self, spec: registry.MixerSpec, d_model: int, n_layers: int):
        super().__init__(f"model:{spec.name}", spec.name, spec.capabilities.cost,
                         f"ZooLM, {n_layers} x {spec.name}")
        self.spec, self.d_model, self.n_layers = spec, d_model, n_layers

    def build(self, device, dtype):
        from zoo.model import ModelConfig, ZooLM

        cfg = ModelConfig(d_model=self.d_model, n_layers=self.n_layers, layers=[self.spec.name])
        self.module = ZooLM(cfg).to(device=device, dtype=dtype)

    def max_length(self):
        return self.module.max_length

    def flops_per_token(self, L):
        return float(self.module.flops_per_token(L, training=False))

    def backend(self):
        used = self.module.used_backends()
        return ",".join(f"{k}={v}" for k, v in used.items())

    def inputs(self, B, L, device, dtype):
        return torch.randint(0, self.module.config.vocab_size, (B, L), device=device)

    def grad_output(self, tokens):
        return torch.randint_like(tokens, self.module.config.vocab_size)  # next-token targets for the loss

    def backward(self, logits, targets):
        F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()

    def call(self, tokens):
        return self.module(tokens)

    def prefill(self, tokens, chunk, extra):
        cache = self.module.new_cache(tokens.shape[0], tokens.device, self.module.embed.weight.dtype)
        for i in range(0, tokens.shape[1], chunk):
            self.module(tokens[:, i:i + chunk], cache)
        return cache

    def step(self, state, tok1):
        return self.module(tok1, state)

    def state_nbytes(self, state):
        return sum(c.nbytes() for c in state)



class PeerTarget(Target):
    """A kernel or layer a user would otherwise call, at the shapes of the mixer it stands beside.

    The peer's module follows the contract in `zoo.bench.peers`."""

    kind = "peer"

    def __init__(self, peer: Peer, mixer_target: MixerTarget, unavailable: str | None = None):
        super().__init__(peer.name, peer.peer_of, mixer_target.cost, peer.description, peer_of=peer.peer_of)
        self.peer, self.of, self.d_model = peer, mixer_target, mixer_target.d_model
        self.unavailable = unavailable  # why this peer cannot run here (package or device missing)

    def build(self, device, dtype):
        self.of.ensure_built(device, dtype)
        if self.of.module is None:
            raise RuntimeError(f"its mixer '{self.of.name}' did not build: {self.of.build_error}")
        self.module = self.peer.make(self.of.module, device, dtype).to(device=device, dtype=dtype)

    def max_length(self):
        return self.of.max_length()

    def unsupported(self, B, L):
        check = getattr(self.module, "unsupported", None)
        return check(B, L) if check is not None else None

    def flops_per_token(self, L):
        return self.of.flops_per_token(L)

    def backend(self):
        return self.peer.description

    def call(self, x):
        return self.module(x)

    def prefill(self, x, chunk, extra):
        return self.module.prefill(x, chunk, extra)

    def step(self, state, x1):
        return self.module.step(state, x1)

    def state_nbytes(self, state):
        return self.module.state_nbytes(state)

