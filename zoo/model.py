"""ZooLM: the one language model every mixer is compared in.

    tokens [B, L] -> embedding -> N x Block -> RMSNorm -> tied head -> logits [B, L, V]
    Block:  x = x + mixer(RMSNorm(x));  x = x + SwiGLU(RMSNorm(x))

`layers` is a pattern of registry names repeated to `n_layers`, so hybrids such as
["swa", "swa", "hsa"] are plain configs. Long inputs run chunk by chunk through the
mixers' caches (`iter_logits`), so memory stays bounded for recurrent mixers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from zoo.errors import ZooError
from zoo.mixer import Mixer
from zoo.registry import build_mixer, get_spec
from zoo.tasks.tokenizer import VOCAB_SIZE


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(VOCAB_SIZE, ge=2, description="tokens (byte tokenizer: 256 bytes + 4 specials)")
    d_model: int = Field(128, ge=8, le=16384)
    n_layers: int = Field(4, ge=1, le=512)
    layers: list[str] = Field(default_factory=lambda: ["nope"], min_length=1,
                              description="layer pattern of mixer names, repeated to n_layers")
    mixer_config: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                    description="per-mixer config overrides, by name")
    mlp_hidden: int | None = Field(None, ge=1, description="SwiGLU hidden width (default 8/3 d_model, x64)")
    norm_eps: float = Field(1e-5, gt=0)
    chunk_size: int = Field(8192, ge=1, description="tokens per chunk when inputs are run through caches")

    @model_validator(mode="after")
    def _pattern_fits(self) -> ModelConfig:
        if self.n_layers % len(self.layers):
            raise ValueError(f"n_layers={self.n_layers} is not a multiple of the pattern length {len(self.layers)}")
        return self

    def layer_names(self) -> list[str]:
        return [self.layers[i % len(self.layers)] for i in range(self.n_layers)]

    def hidden(self) -> int:
        return self.mlp_hidden or 64 * -(-(8 * self.d_model // 3) // 64)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_gate = nn.Linear(dim, hidden, bias=False)
        self.w_up = nn.Linear(dim, hidden, bias=False)
        self.w_down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, mixer: Mixer, d_model: int, hidden: int, eps: float):
        super().__init__()
        self.norm1 = RMSNorm(d_model, eps)
        self.mixer = mixer
        self.norm2 = RMSNorm(d_model, eps)
        self.mlp = SwiGLU(d_model, hidden)

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x), cache)
        return x + self.mlp(self.norm2(x))


class ZooLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.embed = nn.Embedding(config.vocab_size, d)
        blocks = []
        for i, name in enumerate(config.layer_names()):
            mixer = build_mixer(name, d, config.mixer_config.get(name), layer_idx=i)
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
        fwd += len(self.blocks) * 2 * 3 * d * h + 2 * d * self.config.vocab_size
        return 3 * fwd if training else fwd

    def new_cache(self, batch: int, device, dtype) -> list:
        return [m.new_cache(batch, device, dtype) for m in self.mixers]

    def forward(self, tokens: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        """tokens `[B, L]` (int64) -> logits `[B, L, V]` (float32)."""
        x = self.embed(tokens)
        for i, block in enumerate(self.blocks):
            x = block(x, cache[i] if cache is not None else None)
        x = self.norm(x)
        return F.linear(x, self.embed.weight).float()

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
