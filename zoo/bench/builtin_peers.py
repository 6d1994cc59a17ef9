"""The built-in bench peers: torch SDPA under each kernel, compiled FlexAttention (plain causal,
ALiBi, T5 buckets, sliding window), flash-attn, mamba_ssm's Mamba and Mamba2, and
flash-linear-attention's retention and RWKV-7 layers, each at the shapes of the mixer it stands
beside. The module contract is in `zoo.bench.peers`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo import env
from zoo.bench.peers import Peer, register_peer
from zoo.kernels import flex
from zoo.mixer import nested_tensors
from zoo.positional import alibi_slopes, t5_bucket

# -- availability ----------------------------------------------------------------------------

def _needs_cuda(*modules: str) -> Callable[[torch.device], str | None]:
    def check(device: torch.device) -> str | None:
        for mod in modules:
            if not env.has_module(mod):
                return f"{mod} is not installed"
        if device.type != "cuda":
            return f"{' and '.join(modules) or 'this kernel'} runs on CUDA only"
        return None

    return check


def _sdpa_check(kernel_name: str) -> Callable[[torch.device], str | None]:
    def check(device: torch.device) -> str | None:
        if kernel_name in ("efficient", "cudnn") and device.type != "cuda":
            return f"the {kernel_name} SDPA kernel runs on CUDA only"
        return None

    return check


def _flex_check(device: torch.device) -> str | None:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError as e:
        return f"FlexAttention unavailable in torch {torch.__version__}: {e}"
    if device.type != "cuda":
        return "compiled FlexAttention is timed on CUDA only"
    return None



# -- attention -------------------------------------------------------------------------------

class AttentionPeer(nn.Module):
    """q, k, v, o projections as in `zoo.mixers.attention.Attention`, around a raw causal kernel.

    x `[B, L, D]`; q, k, v `[B, H, L, Dh]`. Decoding writes into a preallocated KV cache
    `[B, H, capacity, Dh]` and attends the filled prefix, as a serving loop would."""

    def __init__(self, d_model: int, n_heads: int, head_dim: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        inner = n_heads * head_dim
        self.wq = nn.Linear(d_model, inner, bias=False)
        self.wk = nn.Linear(d_model, inner, bias=False)
        self.wv = nn.Linear(d_model, inner, bias=False)
        self.wo = nn.Linear(inner, d_model, bias=False)

    @classmethod
    def like(cls, mixer: nn.Module, **kw: Any) -> AttentionPeer:
        d = mixer.d_model
        h = getattr(mixer, "n_heads", None) or getattr(mixer.config, "n_heads", 8)
        dh = getattr(mixer, "head_dim", None) or getattr(mixer.config, "head_dim", None) or d // h
        return cls(d, h, dh, **kw)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, L, _ = t.shape
        return t.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)

    def core(self, q, k, v):
        """Causal attention, q/k/v `[B, H, L, Dh]`."""
        raise NotImplementedError

    def core_decode(self, q, k, v, pos: int):
        """One query `[B, H, 1, Dh]` at position `pos` over cache slots `[0, pos]`."""
        raise NotImplementedError

    def forward(self, x):
        B, L, _ = x.shape
        o = self.core(self._heads(self.wq(x)), self._heads(self.wk(x)), self._heads(self.wv(x)))
        return self.wo(o.transpose(1, 2).reshape(B, L, -1))

    def prefill(self, x, chunk, extra):
        B, L, _ = x.shape
        cap = -(-(L + extra) // 128) * 128
        k = x.new_zeros(B, self.n_heads, cap, self.head_dim)
        v = torch.zeros_like(k)
        for i in range(0, L, chunk):
            xc = x[:, i:i + chunk]
            k[:, :, i:i + xc.shape[1]] = self._heads(self.wk(xc))
            v[:, :, i:i + xc.shape[1]] = self._heads(self.wv(xc))
        return {"k": k, "v": v, "pos": L}

    def step(self, state, x1):
        B = x1.shape[0]
        p = state["pos"]
        state["k"][:, :, p] = self.wk(x1).view(B, self.n_heads, self.head_dim)
        state["v"][:, :, p] = self.wv(x1).view(B, self.n_heads, self.head_dim)
        o = self.core_decode(self._heads(self.wq(x1)), state["k"], state["v"], p)
        state["pos"] = p + 1
        return self.wo(o.transpose(1, 2).reshape(B, 1, -1))

    def state_nbytes(self, state):
        p = state["pos"]
        return 2 * state["k"][:, :, :p].numel() * state["k"].element_size()


class SdpaPeer(AttentionPeer):
    """torch `scaled_dot_product_attention` pinned to one kernel with `sdpa_kernel`."""

    def __init__(self, d_model, n_heads, head_dim, kernel: str = "flash"):
        super().__init__(d_model, n_heads, head_dim)
        self.kernel = kernel

    def _backend(self):
        from torch.nn.attention import SDPBackend

        return {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[self.kernel]

    def core(self, q, k, v):
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(self._backend()):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def core_decode(self, q, k, v, pos):
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(self._backend()):
            return F.scaled_dot_product_attention(q, k[:, :, :pos + 1], v[:, :, :pos + 1])


class FlexPeer(AttentionPeer):
    """FlexAttention (Dong et al. 2024, arXiv:2412.05496) with a block mask and a score_mod.

    variant: `causal` (no score change), `alibi` (score - m_h (i - j)), `t5` (score + a
    learned bias per head and T5 bucket of i - j), `swa` (causal window of `window` keys)."""

    def __init__(self, d_model, n_heads, head_dim, variant: str = "causal", window: int | None = None,
                 num_buckets: int = 32, max_distance: int = 128, compiled: bool = True):
        super().__init__(d_model, n_heads, head_dim)
        self.variant, self.window, self.compiled = variant, window, compiled
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)
        self.t5_bias = nn.Parameter(torch.randn(n_heads, num_buckets) * 0.02)
        # score_mods are made once: a new closure per call could make the compiled kernel recompile
        self._score_mod = self._make_score_mod() if variant in ("alibi", "t5") else None
        self._decode_mod = None
        self.pos: torch.Tensor | None = None  # decode position, 0-dim, updated in place (no recompiles)

    def _make_score_mod(self):
        def score_mod(score, b, h, q_idx, kv_idx):
            return self._bias(score, h, q_idx, kv_idx)

        return score_mod

    def _make_decode_mod(self, device: torch.device):
        self.pos = torch.zeros((), dtype=torch.int64, device=device)
        p, window = self.pos, self.window

        def decode_mod(score, b, h, q_idx, kv_idx):
            keep = kv_idx <= p
            if window is not None:
                keep = keep & (p - kv_idx < window)
            return torch.where(keep, self._bias(score, h, p, kv_idx), -float("inf"))

        return decode_mod

    def _bias(self, score, h, q_idx, kv_idx):
        if self.variant == "alibi":
            return score - self.slopes[h] * (q_idx - kv_idx)
        if self.variant == "t5":
            return score + self.t5_bias[h, t5_bucket(q_idx - kv_idx, self.num_buckets, self.max_distance)]
        return score

    def _attend(self):
        return flex.compiled_flex_attention() if self.compiled else flex.flex_attention

    def core(self, q, k, v):
        L = q.shape[2]
        bm = flex.band_block_mask(L, L, 0, self.window if self.variant == "swa" else None, q.device)
        return self._attend()(q, k, v, score_mod=self._score_mod, block_mask=bm)

    def core_decode(self, q, k, v, pos):
        """All cache slots are passed (fixed shapes, no recompiles); the score_mod masks those past `pos`."""
        if self._decode_mod is None or self.pos.device != q.device:
            self._decode_mod = self._make_decode_mod(q.device)
        self.pos.fill_(pos)
        return self._attend()(q, k, v, score_mod=self._decode_mod)


class FlashAttnPeer(AttentionPeer):
    """flash-attn's `flash_attn_func` (Dao 2023, FlashAttention-2, arXiv:2307.08691); decode with
    `flash_attn_with_kvcache`. Layout `[B, L, H, Dh]`, which is flash-attn's own."""

    def forward(self, x):
        from flash_attn import flash_attn_func

        B, L, _ = x.shape
        split = lambda t: t.view(B, L, self.n_heads, self.head_dim)
        o = flash_attn_func(split(self.wq(x)), split(self.wk(x)), split(self.wv(x)), causal=True)
        return self.wo(o.reshape(B, L, -1))

    def prefill(self, x, chunk, extra):
        B, L, _ = x.shape
        cap = -(-(L + extra) // 256) * 256
        k = x.new_zeros(B, cap, self.n_heads, self.head_dim)
        v = torch.zeros_like(k)
        for i in range(0, L, chunk):
            xc = x[:, i:i + chunk]
            n = xc.shape[1]
            k[:, i:i + n] = self.wk(xc).view(B, n, self.n_heads, self.head_dim)
            v[:, i:i + n] = self.wv(xc).view(B, n, self.n_heads, self.head_dim)
        return {"k": k, "v": v, "pos": L, "seqlens": torch.full((B,), L, dtype=torch.int32, device=x.device)}

    def step(self, state, x1):
        from flash_attn import flash_attn_with_kvcache

        B = x1.shape[0]
        split = lambda t: t.view(B, 1, self.n_heads, self.head_dim)
        o = flash_attn_with_kvcache(split(self.wq(x1)), state["k"], state["v"], k=split(self.wk(x1)),
                                    v=split(self.wv(x1)), cache_seqlens=state["seqlens"], causal=True)
        state["seqlens"] += 1
        state["pos"] += 1
        return self.wo(o.reshape(B, 1, -1))

    def state_nbytes(self, state):
        return 2 * state["k"][:, :state["pos"]].numel() * state["k"].element_size()


def _cfg(mixer: nn.Module, *names: str, default: Any) -> Any:
    """The first of `names` that the mixer's config (or the mixer) carries, else `default`."""
    for n in names:
        for src in (mixer.config, mixer):
            v = getattr(src, n, None)
            if v is not None:
                return v
    return default


class MambaSsmPeer(nn.Module):
    """mamba_ssm's `Mamba` (Gu and Dao 2023) or `Mamba2` (Dao and Gu 2024) layer, at the config
    of our mixer; decode through mamba_ssm's own InferenceParams and `step`."""

    def __init__(self, layer: nn.Module, version: int):
        super().__init__()
        self.layer, self.version = layer, version

    @classmethod
    def like(cls, mixer: nn.Module, version: int) -> MambaSsmPeer:
        d = mixer.d_model
        common = dict(d_state=_cfg(mixer, "d_state", default=16 if version == 1 else 128),
                      d_conv=_cfg(mixer, "d_conv", "conv_width", "conv_size", default=4),
                      expand=_cfg(mixer, "expand", default=2), layer_idx=0)
        if version == 1:
            from mamba_ssm import Mamba

            return cls(Mamba(d, **common), 1)
        from mamba_ssm import Mamba2

        from zoo.mixers.mamba import causal_conv1d_fn

        # the fused (memory-efficient) path needs causal-conv1d; without it that path fails at call time
        return cls(Mamba2(d, headdim=_cfg(mixer, "headdim", "head_dim", default=64),
                          ngroups=_cfg(mixer, "ngroups", "n_groups", default=1),
                          chunk_size=_cfg(mixer, "chunk_size", default=256),
                          use_mem_eff_path=causal_conv1d_fn() is not None, **common), 2)

    def unsupported(self, B, L):
        from zoo.mixers.mamba2 import INT32_ELEMENTS

        # Mamba2's Triton kernels offset pointers in int32 (state-spaces/mamba#1015); past 2^31
        # elements in its projection they fail with an illegal memory access (ours splits the call)
        width = self.layer.in_proj.out_features
        if self.version == 2 and B * L * width > INT32_ELEMENTS:
            return f"int32 offsets: {B} x {L} tokens x {width} channels is over 2^31 elements"
        return None

    def forward(self, x):
        return self.layer(x)

    def prefill(self, x, chunk, extra):
        from mamba_ssm.utils.generation import InferenceParams

        # mamba_ssm fills its state with one full forward; steps after that are single tokens
        params = InferenceParams(max_seqlen=x.shape[1] + extra, max_batch_size=x.shape[0])
        self.layer(x, inference_params=params)
        params.seqlen_offset = x.shape[1]
        return params

    def step(self, state, x1):
        out = self.layer(x1, inference_params=state)
        state.seqlen_offset += 1
        return out

    def state_nbytes(self, state):
        return sum(t.numel() * t.element_size() for ts in state.key_value_memory_dict.values() for t in ts)


class FlaPeer(nn.Module):
    """A flash-linear-attention layer (Yang et al., fla-org/flash-linear-attention):
    `MultiScaleRetention` (RetNet) or `RWKV7Attention`; decode through fla's layer Cache."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    @classmethod
    def like(cls, mixer: nn.Module, which: str) -> FlaPeer:
        d = mixer.d_model
        if which == "retention":
            from fla.layers import MultiScaleRetention

            return cls(MultiScaleRetention(hidden_size=d, num_heads=_cfg(mixer, "n_heads", default=8),
                                           expand_k=_cfg(mixer, "expand_k", default=1.0),
                                           expand_v=_cfg(mixer, "expand_v", default=2.0), layer_idx=0))
        from fla.layers import RWKV7Attention

        def rank(attr: str) -> int | None:  # LoRA ranks as our mixer built them: both hold the same weights
            w = getattr(mixer, attr, None)
            return w.shape[1] if isinstance(w, torch.Tensor) else None

        return cls(RWKV7Attention(hidden_size=d, head_dim=_cfg(mixer, "head_dim", "head_size", default=64),
                                  decay_low_rank_dim=rank("w1"), a_low_rank_dim=rank("a1"),
                                  v_low_rank_dim=rank("v1"), gate_low_rank_dim=rank("g1"), layer_idx=0,
                                  num_hidden_layers=max(2, _cfg(mixer, "n_layers", default=12))))

    def forward(self, x):
        return self.layer(x)[0]

    def prefill(self, x, chunk, extra):
        from fla.models.utils import Cache

        cache = Cache()
        for i in range(0, x.shape[1], chunk):
            self.layer(x[:, i:i + chunk], past_key_values=cache, use_cache=True)
        return cache

    def step(self, state, x1):
        return self.layer(x1, past_key_values=state, use_cache=True)[0]

    def state_nbytes(self, state):
        return sum(t.numel() * t.element_size() for i in range(len(state)) for t in nested_tensors(state[i]))


def _flex_make(variant: str) -> Callable[[nn.Module, torch.device, torch.dtype], nn.Module]:
    def make(mixer: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
        window = _cfg(mixer, "window", default=None) if variant == "swa" else None
        if variant == "swa" and window is None:
            raise RuntimeError("its mixer declares no `window`")
        return FlexPeer.like(mixer, variant=variant, window=window, compiled=device.type == "cuda",
                             num_buckets=_cfg(mixer, "num_buckets", default=32),
                             max_distance=_cfg(mixer, "max_distance", default=128))

    return make


def _sdpa_make(kernel: str) -> Callable[[nn.Module, torch.device, torch.dtype], nn.Module]:
    return lambda mixer, device, dtype: SdpaPeer.like(mixer, kernel=kernel)


# -- the built-ins, in the order the bench runs them -------------------------------------------
# `matches_mixer`: the same weights give the mixer's output (flex-t5 keeps its bias table apart
# from the mixer's, flex-swa runs without the swa mixer's RoPE, mamba_ssm's and fla's layers
# parametrise their weights their own way)

for _peer in [
    Peer("sdpa-cudnn", "nope", "torch SDPA, cuDNN kernel", _sdpa_make("cudnn"), _sdpa_check("cudnn"), True),
    Peer("sdpa-flash", "nope", "torch SDPA, flash kernel", _sdpa_make("flash"), _sdpa_check("flash"), True),
    Peer("sdpa-efficient", "nope", "torch SDPA, memory-efficient kernel", _sdpa_make("efficient"),
         _sdpa_check("efficient"), True),
    Peer("sdpa-math", "nope", "torch SDPA, math kernel", _sdpa_make("math"), _sdpa_check("math"), True),
    Peer("flex", "nope", "compiled FlexAttention, causal block mask", _flex_make("causal"), _flex_check, True),
    Peer("flex-alibi", "alibi", "compiled FlexAttention, ALiBi score_mod", _flex_make("alibi"), _flex_check, True),
    Peer("flex-t5", "t5-bias", "compiled FlexAttention, T5 bucket score_mod", _flex_make("t5"), _flex_check),
    Peer("flex-swa", "swa", "compiled FlexAttention, sliding-window block mask", _flex_make("swa"), _flex_check),
    Peer("flash-attn", "nope", "flash-attn flash_attn_func", lambda m, d, t: FlashAttnPeer.like(m),
         _needs_cuda("flash_attn"), True),
    Peer("mamba_ssm-mamba", "mamba", "mamba_ssm Mamba layer", lambda m, d, t: MambaSsmPeer.like(m, 1),
         _needs_cuda("mamba_ssm")),
    Peer("mamba_ssm-mamba2", "mamba2", "mamba_ssm Mamba2 layer", lambda m, d, t: MambaSsmPeer.like(m, 2),
         _needs_cuda("mamba_ssm"), unsupported_example=(64, 2**20)),
    Peer("fla-retention", "retnet", "fla MultiScaleRetention layer", lambda m, d, t: FlaPeer.like(m, "retention"),
         _needs_cuda("fla")),
    Peer("fla-rwkv7", "rwkv7", "fla RWKV7Attention layer", lambda m, d, t: FlaPeer.like(m, "rwkv7"),
         _needs_cuda("fla")),
]:
    register_peer(_peer)
