"""ZooLM: the one language model every mixer is compared in.

    tokens [B, L] -> embedding -> N x Block -> RMSNorm -> tied head -> logits [B, L, V]
    Block:  x = x + mixer(RMSNorm(x));  x = x + SwiGLU(RMSNorm(x))

A mixer may replace its block's SwiGLU with its own channel mixer (`Mixer.make_mlp`, e.g.
RWKV-7's squared-ReLU channel-mix); a stateful one gets a cache entry of its own. Mixers with
`uses_shared` see a dict that lives for one forward (RWKV-7's first-layer values). A mixer
with an auxiliary training signal on the batch's answer sources (`wants_sources`, HSA's
`retrieval_loss`) reads them there when the trainer calls `forward(tokens, sources=...)`,
which then returns `(logits, aux)`.

`layers` is a pattern of registry names repeated to `n_layers`, so hybrids such as
["swa", "swa", "hsa"] are plain configs. Long inputs run chunk by chunk through the
mixers' caches (`iter_logits`), so memory stays bounded for recurrent mixers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from zoo.errors import ZooError
from zoo.mixer import Mixer
from zoo.norm import RMSNorm
from zoo.registry import build_mixer, get_spec
from zoo.tasks.tokenizer import VOCAB_SIZE

T = TypeVar("T")


def build_on_meta(make: Callable[[], T]) -> T:
    """`make()` on the meta device, where weights cost nothing (counting parameters, FLOPs, state
    sizes); on the default device when the build needs real tensors (some mixers' inits do)."""
    try:
        with torch.device("meta"):
            return make()
    except Exception:
        return make()


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(VOCAB_SIZE, ge=2, le=1 << 21, description="tokens (byte tokenizer: 256 bytes + 4 "
                            "specials; a task with its own vocabulary, such as mqar, sets it)")
    d_model: int = Field(64, ge=8, le=16384)
    n_layers: int = Field(2, ge=1, le=512)
    layers: list[str] = Field(default_factory=lambda: ["nope"], min_length=1,
                              description="layer pattern of mixer names, repeated to n_layers")
    mixer_config: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                    description="per-mixer config overrides, by name")
    mlp_hidden: int | None = Field(None, ge=1, le=1 << 18, description="SwiGLU hidden width (default 8/3 d_model, "
                                   "x64)")
    norm_eps: float = Field(1e-5, gt=0, le=1)
    chunk_size: int = Field(8192, ge=1, le=1 << 24, description="tokens per chunk when inputs are run through caches")

    @model_validator(mode="after")
    def _pattern_fits(self) -> ModelConfig:
        if any(not name.strip() for name in self.layers):
            raise ValueError(f"the layer pattern {self.layers} has an empty mixer name")
        if self.n_layers % len(self.layers):
            raise ValueError(f"n_layers={self.n_layers} is not a multiple of the pattern length {len(self.layers)}")
        unused = [name for name in self.mixer_config if name not in self.layers]
        if unused:  # a typo or a leftover would otherwise be dropped without a word
            raise ValueError(f"mixer_config names {', '.join(map(repr, unused))}, which the layer pattern "
                             f"{self.layers} does not use")
        return self

    def layer_names(self) -> list[str]:
        return [self.layers[i % len(self.layers)] for i in range(self.n_layers)]

    def hidden(self) -> int:
        return self.mlp_hidden or 64 * -(-(8 * self.d_model // 3) // 64)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_gate = nn.Linear(dim, hidden, bias=False)
        self.w_up = nn.Linear(dim, hidden, bias=False)
        self.w_down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # one GEMM for gate and up (see Attention._qkv for why only here)
            gate, up = F.linear(x, torch.cat([self.w_gate.weight, self.w_up.weight])).chunk(2, dim=-1)
        else:
            gate, up = self.w_gate(x), self.w_up(x)
        return self.w_down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, mixer: Mixer, d_model: int, hidden: int, eps: float):
        super().__init__()
        self.norm1 = RMSNorm(d_model, eps)
        self.mixer = mixer
        self.norm2 = RMSNorm(d_model, eps)
        self.mlp = mixer.make_mlp(d_model, hidden) or SwiGLU(d_model, hidden)
        self.mlp_stateful = hasattr(self.mlp, "new_cache")

    def forward(self, x: torch.Tensor, cache=None, mlp_cache=None, shared: dict | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + (self.mixer(h, cache, shared=shared) if self.mixer.uses_shared else self.mixer(h, cache))
        if not self.mlp_stateful:
            return x + self.mlp(self.norm2(x))
        if cache is not None and mlp_cache is None:
            raise ZooError("this block's MLP keeps state, but no cache was given for it",
                           "make caches with ZooLM.new_cache")
        return x + self.mlp(self.norm2(x), mlp_cache)


class ModelCache(list):
    """The caches of one ZooLM: `cache[i]` is block i's mixer cache (as before); `mlp[i]` the
    cache of its MLP when that keeps state (else None)."""

    def __init__(self, mixers: list, mlps: list):
        super().__init__(mixers)
        self.mlp = mlps

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in [*self, *self.mlp] if c is not None)


class ZooLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.embed = nn.Embedding(config.vocab_size, d)
        blocks = []
        for i, name in enumerate(config.layer_names()):
            overrides = dict(config.mixer_config.get(name) or {})
            if "n_layers" in get_spec(name).config_cls.model_fields:  # depth-dependent inits (RWKV-7)
                overrides.setdefault("n_layers", config.n_layers)
            mixer = build_mixer(name, d, overrides, layer_idx=i)
            blocks.append(Block(mixer, d, config.hidden(), config.norm_eps))
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(d, config.norm_eps)
        for name in config.mixer_config:
            if name not in config.layers:
                get_spec(name)  # unknown names get suggestions
                raise ZooError(f"mixer_config names '{name}', which is not in layers {config.layers}",
                               "configure only mixers the model uses")
        self._init_weights()

    def _init_weights(self) -> None:
        # mixers initialise themselves (each follows its paper); the shared parts here
        nn.init.normal_(self.embed.weight, std=0.02)
        for b in self.blocks:
            if not isinstance(b.mlp, SwiGLU):
                continue  # a mixer's own channel mixer initialises itself
            for lin in (b.mlp.w_gate, b.mlp.w_up):
                nn.init.normal_(lin.weight, std=0.02)
            nn.init.normal_(b.mlp.w_down.weight, std=0.02 / (2 * len(self.blocks)) ** 0.5)

    @property
    def mixers(self) -> list[Mixer]:
        return [b.mixer for b in self.blocks]

    @property
    def max_length(self) -> int | None:
        lengths = [m.max_length for m in self.mixers if m.max_length is not None]
        return min(lengths) if lengths else None

    def num_params(self, embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if embedding else n - self.embed.weight.numel()

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        """FLOPs per token at context `seq_len`; training counts forward + backward (3x)."""
        d, h = self.config.d_model, self.config.hidden()
        fwd = sum(m.flops_per_token(seq_len) for m in self.mixers)
        fwd += sum(b.mlp.flops_per_token() if hasattr(b.mlp, "flops_per_token") else 2 * 3 * d * h
                   for b in self.blocks)
        fwd += 2 * d * self.config.vocab_size
        return 3 * fwd if training else fwd

    def new_cache(self, batch: int, device, dtype) -> ModelCache:
        return ModelCache([m.new_cache(batch, device, dtype) for m in self.mixers],
                          [b.mlp.new_cache(batch, device, dtype) if b.mlp_stateful else None for b in self.blocks])

    @property
    def wants_sources(self) -> bool:
        """Whether a mixer trains on the batch's answer sources (HSA's `retrieval_loss`)."""
        return any(m.wants_sources for m in self.mixers)

    def forward(self, tokens: torch.Tensor, cache: list | None = None, sources: torch.Tensor | None = None):
        """tokens `[B, L]` (int64) -> logits `[B, L, V]` (float32).

        With `sources` (`[B, L]` int64, the batch's, see `zoo.tasks.base.Batch`) -> (logits, aux):
        the mixers that want them add auxiliary losses; `aux["loss"]` is their weighted sum
        (each term averaged over the layers that add it, times its weight), to add to the LM
        loss, and `aux[name]` each term's unweighted layer average, to report."""
        x = self.embed(tokens)
        shared: dict = {} if sources is None else {"sources": sources}  # lives for this forward only
        mlp_caches = getattr(cache, "mlp", None)
        for i, block in enumerate(self.blocks):
            x = block(x, cache[i] if cache is not None else None,
                      mlp_caches[i] if mlp_caches is not None else None, shared)
        x = self.norm(x)
        logits = F.linear(x, self.embed.weight).float()
        if sources is None:
            return logits
        aux = {"loss": logits.new_zeros(())}
        for name, terms in shared.get("aux", {}).items():
            aux[name] = torch.stack([v for v, _ in terms]).mean()
            aux["loss"] = aux["loss"] + sum(w * v for v, w in terms) / len(terms)
        return logits, aux

    @torch.no_grad()
    def iter_logits(self, tokens: torch.Tensor, chunk_size: int | None = None,
                    dtype: torch.dtype | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Run `[B, L]` chunk by chunk through the caches; yields (start, logits chunk)."""
        chunk = chunk_size or self.config.chunk_size
        cache = self.new_cache(tokens.shape[0], tokens.device, dtype or self.embed.weight.dtype)
        for start in range(0, tokens.shape[1], chunk):
            yield start, self(tokens[:, start:start + chunk], cache)

    def used_backends(self) -> dict[str, str]:
        """Registry name -> the backend its last forward ran on."""
        return {b.mixer.spec.name: b.mixer.last_backend or "-" for b in self.blocks}
