"""Hierarchical sparse attention (HSA) beside sliding-window attention, in one layer.

Hu et al. 2025, "Every Token Counts: Generalizing 16M Ultra-Long Context in Large Language
Models" (HSA-UltraLong, arXiv:2511.23319); the stick-breaking fusion is the RAMba variant of
Hu et al. 2025, "Hardware-aligned Hierarchical Sparse Attention" (arXiv:2504.16795).

    x ──┬─ sliding-window attention, RoPE, window W (recent context) ───────┐
        │                                                                   ├─ concat ─ wo ─ y
        └─ HSA: chunks of S tokens, each complete chunk encoded once ───────┘
             chunk encoder (bidirectional, + CLS) -> landmark, chunk keys/values (QK-norm, no positions)
             retrieval query . landmarks of chunks complete before the token -> top-K chunks
             one softmax per retrieved chunk; outputs fused by softmax(top-K scores)

Causality lives in one place, `visible_chunks`: token t may retrieve chunk c only when the
chunk is complete before t, i.e. (c + 1) * S <= t, never its own open chunk.

The full forward is the cached forward with an empty cache, so chunked inference equals it:
the cache holds the last W - 1 window keys/values, the raw inputs of the open chunk, and per
complete chunk its keys, values and landmark (a growing cache). Per token the cost is
O(number of chunks) to score landmarks plus O(K * S + W) to attend.

Shapes: x `[B, L, D]`; queries `[B, L, H, Dh]`; chunk keys/values `[B, C * S, Hkv, Dh]`;
landmarks `[B, C, Hkv, Dr]`; selection and fusion weights `[B, L, Hkv, K]`.

Switches for testing why retrieval degrades past the training length (each defaults to the
paper's behaviour and the checkpoints before it; `fusion = "joint"`, `chunk_overlap` and
`chunk_lookahead` have no Triton kernel, so `backend = "auto"` runs them on the torch backend):

- `fusion = "joint"`: one softmax over the selected chunks' tokens, each chunk's logits shifted
  by its retrieval score (`hsa_naive.hsa_attention_joint`), instead of a softmax per chunk.
- `chunk_overlap` (default 0): a selected chunk's attention also reads the last rows of the
  chunk before it (`hsa_naive.chunk_spans`), so a value straddling a boundary is whole there.
- `chunk_lookahead` (default 0): a selected chunk's attention also reads the first rows of the
  chunk after it, once that chunk too is complete before the token (the chunk encoder is
  bidirectional, so an open chunk's keys have seen its later tokens), so a value straddling a
  boundary is whole in the chunk that holds its key.
- `encoder_rope` (default True): RoPE inside the chunk encoder. False is the paper's chunk
  encoder, which has no positional encoding: the landmark is then a function of the chunk's
  tokens as a set (bidirectional attention without positions is permutation-equivariant, so
  the CLS output is permutation-invariant).
- `fusion_temperature` (default 1): the retrieval scores are divided by it before fusion. Below 1
  at evaluation it sharpens softmax fusion toward the best-scoring chunk (stick-breaking: toward
  the most recent chunk with a positive score), against the dilution that
  more competing chunks bring past the training length; a runtime setting, so an evaluation
  variant can set it on a trained model.
- `fusion_length_scale` (default None: off): n, the chunks a training row held. A token that
  sees C > n complete chunks has its retrieval scores multiplied by log C / log n before fusion
  (Scalable-Softmax, Nakanishi et al. 2025, arXiv:2501.19399: a softmax whose logits grow with
  log n keeps its peak as the candidates multiply). Inside the training length nothing changes;
  at 64x of a 64-chunk row the scores double, as `fusion_temperature` 0.5 would. A runtime setting.
- `cross_row_chunks` (default False): in training only, the retrieval branch reads the batch
  as one long row, each row after the rows before it, so a row's queries also select among
  every chunk of the earlier rows (distractors: up to B * C chunks, as many as a row of B * L
  tokens holds; the paper trains against 512 chunks per row at 32K tokens), at the cost of
  rows of L tokens: the retrieval branch has no positions. It is a longer row only where rows
  are plain text; a task whose rows each carry their own framing (HashHop's completion
  section) gives the earlier rows' framing too, which no longer row has. The window branch,
  the retrieval loss and evaluation stay per row. Rows must be a whole number of chunks.
- `retrieval_loss` (default 0): the weight of an auxiliary retrieval loss that trains the
  landmark scores directly (`retrieval_aux_loss`). For each answer position p of row b (where
  the batch's `sources` says which row position the target copies), the positive is the
  chunk holding that source; the candidates are row b's chunks visible from p plus every
  chunk of every other row of the batch (in-batch negatives: B * C competitors instead of
  the C of one row); the loss is the cross-entropy of the retrieval scores (the scores the
  top-K selection and the fusion use) against the positive, averaged over KV heads, answer
  positions and hsa layers. **It uses task supervision (which chunk holds the answer), which
  the paper does not**: it needs a task that provides `sources` (hashhop), and a report must
  say when a run used it. It runs in torch (not the Triton kernels), only in a full forward
  given `sources` (the trainer's), outside torch.compile's graph.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from zoo.errors import ZooError
from zoo.kernels import flex
from zoo.kernels.hsa_naive import hsa_attention_joint, hsa_attention_naive
from zoo.mixer import TORCH_BACKEND, Backend, Cache, Capabilities, Mixer, MixerConfig
from zoo.mixers.attention import attention_reference
from zoo.norm import RMSNorm
from zoo.positional import apply_rotary, rope_cos_sin, rope_inv_freq
from zoo.registry import register_mixer

HSA_CITATION = (
    "Hu et al. 2025, Every Token Counts: Generalizing 16M Ultra-Long Context in Large Language Models "
    "(HSA-UltraLong), arXiv:2511.23319; Hu et al. 2025, Hardware-aligned Hierarchical Sparse Attention, "
    "arXiv:2504.16795"
)
NORM_EPS = 1e-6  # its query, key, landmark and chunk-encoder norms, tighter than the blocks'
SCORE_BUDGET = 1 << 26  # landmark scores materialised at once (elements): keeps memory linear in L


def _triton_check(device: torch.device) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return "needs a CUDA device (or TRITON_INTERPRET=1 on CPU)"


TRITON_BACKEND = Backend(
    "triton", "own Triton selection and retrieval kernels (fwd+bwd); the window through FlexAttention (CUDA)",
    _triton_check
)


class HSAConfig(MixerConfig):
    n_heads: int = Field(8, ge=1, le=256, description="query heads of each branch (window and retrieval)")
    n_kv_heads: int = Field(1, ge=1, le=256, description="KV heads (grouped queries); top-K is per KV head")
    head_dim: int | None = Field(None, ge=2, le=512, description="per-head width (default d_model / n_heads)")
    chunk_size: int = Field(64, ge=16, le=1024, description="tokens per chunk S, a multiple of 16")
    top_k: int = Field(8, ge=1, le=256, description="chunks retrieved per token and KV head")
    window: int = Field(512, ge=1, description="sliding-window span W; a schedule may change `mixer.window`")
    encoder_layers: int = Field(1, ge=0, le=8, description="bidirectional chunk-encoder depth; 0 = mean pooling")
    encoder_heads: int | None = Field(None, ge=1, le=256, description="chunk-encoder heads (default d_model / 64)")
    retrieval_dim: int | None = Field(None, ge=1, le=1024, description="landmark width per KV head (default head_dim)")
    fusion: Literal["softmax", "stick-breaking", "joint"] = Field(
        "softmax", description="weights of the retrieved chunks: softmax of the scores, stick-breaking (RAMba), or "
        "joint (one softmax over the selected chunks' tokens, each chunk's logits shifted by its score; not the "
        "paper's, torch backend only)"
    )
    rope_base: float = Field(10000.0, gt=1.0, description="RoPE base of the window branch and the chunk encoder")
    # added after HSA runs were stored: at their defaults they stay out of run ids (identity_dump)
    encoder_rope: bool = Field(True, description="RoPE inside the chunk encoder; False = the paper's encoder, "
                               "no positional encoding (the landmark sees its chunk as a set)",
                               json_schema_extra={"id_when_set": True})
    chunk_overlap: int = Field(0, ge=0, le=1024, description="rows of the chunk before a selected chunk that its "
                               "attention also reads (0 = the paper's; overlapping spans as NSA's overlapping "
                               "blocks), so a value straddling a boundary is whole in the later chunk; torch backend "
                               "only", json_schema_extra={"id_when_set": True})
    chunk_lookahead: int = Field(0, ge=0, le=1024, description="rows of the chunk after a selected chunk that its "
                                 "attention also reads once that chunk is complete (0 = the paper's), so a value "
                                 "straddling a boundary is whole in the chunk that holds its key; torch backend only",
                                 json_schema_extra={"id_when_set": True})
    fusion_temperature: float = Field(1.0, gt=0.0, le=100.0, description="the retrieval scores are divided by this "
                                      "before fusion (below 1: weight drawn toward the best-scoring chunk)",
                                      json_schema_extra={"id_when_set": True})
    fusion_length_scale: int | None = Field(None, ge=2, le=1 << 24, description="n, the chunks of a training "
                                            "row: a token that sees C > n chunks has its retrieval scores "
                                            "multiplied by log C / log n before fusion (Scalable-Softmax); None "
                                            "= off", json_schema_extra={"id_when_set": True})
    cross_row_chunks: bool = Field(False, description="training only: the retrieval branch reads the batch as "
                                   "one row, so each row's queries also select among the earlier rows' chunks "
                                   "(distractors of a B x L-token row; not the paper's)",
                                   json_schema_extra={"id_when_set": True})
    retrieval_loss: float = Field(0.0, ge=0.0, le=100.0, description="weight of the auxiliary retrieval loss with "
                                  "in-batch negatives (0 = off); uses task supervision the paper does not (which "
                                  "chunk holds the answer): needs a task with answer sources (hashhop)",
                                  json_schema_extra={"id_when_set": True})

    def source_loss(self) -> str | None:
        return "retrieval_loss" if self.retrieval_loss > 0 else None

    @model_validator(mode="after")
    def _shapes(self) -> HSAConfig:
        if self.chunk_size % 16:
            raise ValueError(f"chunk_size={self.chunk_size} is not a multiple of 16")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.fusion == "joint" and self.backend == "triton":
            raise ValueError("fusion 'joint' has no Triton kernel: set backend = 'torch' or 'auto'")
        if self.chunk_overlap and self.backend == "triton":
            raise ValueError("chunk_overlap has no Triton kernel: set backend = 'torch' or 'auto'")
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(f"chunk_overlap={self.chunk_overlap} must be below chunk_size={self.chunk_size}")
        if self.chunk_lookahead and self.backend == "triton":
            raise ValueError("chunk_lookahead has no Triton kernel: set backend = 'torch' or 'auto'")
        if self.chunk_lookahead >= self.chunk_size:
            raise ValueError(f"chunk_lookahead={self.chunk_lookahead} must be below chunk_size={self.chunk_size}")
        return self


class ChunkEncoderLayer(nn.Module):
    """Pre-norm bidirectional transformer layer over one chunk and its CLS token (RoPE inside
    the chunk only, so it never sees absolute positions; no rotation when cos/sin are None,
    the paper's encoder)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads, self.hd = heads, d // heads
        self.norm1, self.norm2 = RMSNorm(d, NORM_EPS), RMSNorm(d, NORM_EPS)
        self.wqkv = nn.Linear(d, 3 * d, bias=False)
        self.wo = nn.Linear(d, d, bias=False)
        self.w_gate = nn.Linear(d, 2 * d, bias=False)
        self.w_up = nn.Linear(d, 2 * d, bias=False)
        self.w_down = nn.Linear(2 * d, d, bias=False)

    def forward(self, h: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
        """h `[N, S + 1, D]` -> same."""
        N, T, d = h.shape
        q, k, v = self.wqkv(self.norm1(h)).view(N, T, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        if cos is not None:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v)  # no mask: bidirectional within the chunk
        h = h + self.wo(a.transpose(1, 2).reshape(N, T, d))
        u = self.norm2(h)
        return h + self.w_down(F.silu(self.w_gate(u)) * self.w_up(u))


def visible_chunks(pos: torch.Tensor, n_chunks: int, chunk_size: int) -> torch.Tensor:
    """Boolean `[L, C]`: token at `pos` may retrieve chunk c iff the chunk is complete before
    it, (c + 1) * S <= pos; its own open chunk and every later chunk stay hidden."""
    c = torch.arange(n_chunks, device=pos.device)
    return (c[None, :] + 1) * chunk_size <= pos[:, None]


@torch.compiler.disable  # the answer positions are data-dependent: eager, not a recompile per count
def retrieval_aux_loss(qr: torch.Tensor, lmk: torch.Tensor, sources: torch.Tensor,
                       chunk_size: int) -> torch.Tensor:
    """The auxiliary retrieval loss with in-batch negatives (fp32 scalar; 0 with a graph to the
    inputs when no answer position qualifies).

    qr `[B, L, Hkv, Dr]` retrieval queries of a full forward (token t at position t), lmk
    `[B, C, Hkv, Dr]` landmarks of the complete chunks, sources `[B, L]` int64 (the row
    position of the token that targets[:, t] copies, -1 where none). Answer positions p are
    those whose source lies in a chunk visible from p (`visible_chunks`); the others are
    skipped. For each of the N such (b, p) and each KV head, scores against all B * C
    landmarks `[N, Hkv, B * C]` (the selection's score, q . lmk / sqrt(Dr)), row b's chunks
    not visible from p masked out, cross-entropy against chunk sources[b, p] // S of row b;
    mean over positions and heads."""
    B, L, Hkv, Dr = qr.shape
    C, S = lmk.shape[1], chunk_size
    pos = torch.arange(L, device=qr.device)
    src_chunk = sources.clamp_min(0) // S
    ok = (sources >= 0) & ((src_chunk + 1) * S <= pos) & (src_chunk < C)
    b, p = ok.nonzero(as_tuple=True)
    if b.numel() == 0:
        return (qr.sum() + lmk.sum()).float() * 0.0
    q = qr[b, p].float()  # [N, Hkv, Dr]
    keys = lmk.float().reshape(B * C, Hkv, Dr)
    with torch.autocast(qr.device.type, enabled=False):  # fp32 scores under the trainer's bf16 autocast
        s = torch.einsum("nhd,mhd->nmh", q, keys) * Dr**-0.5  # [N, B * C, Hkv]
    m = torch.arange(B * C, device=qr.device)
    hidden = (m[None] // C == b[:, None]) & ((m[None] % C + 1) * S > p[:, None])  # row b's chunks not visible from p
    s = s.masked_fill(hidden[:, :, None], float("-inf"))
    target = (b * C + src_chunk[b, p])[:, None].expand(-1, Hkv)  # [N, Hkv]
    return F.cross_entropy(s, target)


def window_attention_reference(q, k, v, window: int) -> torch.Tensor:
    """Causal sliding-window attention with grouped heads, explicit scores. q `[B, H, Lq, Dh]`,
    k/v `[B, Hkv, Lk, Dh]` with the queries at the last Lq key positions -> `[B, H, Lq, Dh]`."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    lq, lk = q.shape[2], k.shape[2]
    pos_k = torch.arange(lk, device=q.device)
    return attention_reference(q, k, v, pos_k[lk - lq:], pos_k, window=window, scale=q.shape[-1] ** -0.5)


WINDOW_BLOCK = 256  # queries per block of `window_attention_blocked`


def window_attention_blocked(q, k, v, window: int) -> torch.Tensor:
    """`window_attention_reference` one block of queries at a time, each against only the keys its
    window reaches: O(Lq (block + W)) scores instead of O(Lq Lk), the same arithmetic per row.
    The path off CUDA, where a long prompt read densely cost most of an evaluation's time."""
    lq, lk = q.shape[2], k.shape[2]
    block = max(WINDOW_BLOCK, window)
    if lq <= block:
        return window_attention_reference(q, k, v, window)
    outs = []
    for i in range(0, lq, block):
        j = min(lq, i + block)
        last = j + lk - lq  # one past the key position of the block's last query
        first = max(0, i + lk - lq - window + 1)
        outs.append(window_attention_reference(q[:, :, i:j], k[:, :, first:last], v[:, :, first:last], window))
    return torch.cat(outs, 2)


def band_mask(lq: int, lk: int, window: int, device) -> torch.Tensor:
    """Boolean `[Lq, Lk]`: query i (at key position i + Lk - Lq) sees the keys of the last `window` positions."""
    dist = torch.arange(lq, device=device)[:, None] + (lk - lq) - torch.arange(lk, device=device)[None, :]
    return (dist >= 0) & (dist < window)


# -- the window on CUDA: torch's FlashAttention-2 kernel has a sliding window ------------------------
# Dao 2023 (FlashAttention-2, arXiv:2307.08691), local attention: key j is seen by query i (at key
# position i + Lk - Lq) iff i + Lk - Lq - left <= j <= i + Lk - Lq + right; left = W - 1, right = 0
# is the band [0, W) of `band_mask`. Grouped heads run inside the kernel (no repeated keys).

def _flash_fwd(q, k, v, window: int, scale: float):
    """q `[B, Lq, H, D]`, k/v `[B, Lk, Hkv, D]` -> out, lse, rng_state, unused (what the backward needs)."""
    return torch.ops.aten._flash_attention_forward(
        q, k, v, None, None, q.shape[1], k.shape[1], 0.0, True, False,
        scale=scale, window_size_left=window - 1, window_size_right=0)[:4]


def _flash_bwd(do, q, k, v, o, lse, rng_state, unused, window: int, scale: float):
    return torch.ops.aten._flash_attention_backward(
        do, q, k, v, o, lse, None, None, q.shape[1], k.shape[1], 0.0, True, rng_state, unused,
        scale=scale, window_size_left=window - 1, window_size_right=0)


def _last_dim_dense(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class _FlashWindow(torch.autograd.Function):
    """Causal sliding-window attention, q `[B, H, Lq, D]`, k/v `[B, Hkv, Lk, D]` -> `[B, H, Lq, D]`."""

    @staticmethod
    def forward(ctx, q, k, v, window: int):
        qt, kt, vt = (_last_dim_dense(t.transpose(1, 2)) for t in (q, k, v))  # the kernel's [B, L, H, D] views
        scale = q.shape[-1] ** -0.5
        o, lse, rng_state, unused = _flash_fwd(qt, kt, vt, window, scale)
        ctx.save_for_backward(qt, kt, vt, o, lse, rng_state, unused)
        ctx.window, ctx.scale = window, scale
        return o.transpose(1, 2)

    @staticmethod
    def backward(ctx, do):
        qt, kt, vt, o, lse, rng_state, unused = ctx.saved_tensors
        dq, dk, dv = _flash_bwd(_last_dim_dense(do.transpose(1, 2)), qt, kt, vt, o, lse, rng_state, unused,
                                ctx.window, ctx.scale)
        return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2), None


@functools.cache
def _flash_window_reason(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why torch's flash kernel cannot run this window (None: it can, pending the probe)."""
    if device.type != "cuda":
        return "needs CUDA"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"flash runs fp16/bf16, not {dtype}"
    if head_dim % 8 or head_dim > 256:
        return f"flash needs a head width that is a multiple of 8 up to 256, not {head_dim}"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "flash needs sm80 or newer"
    op = getattr(torch.ops.aten, "_flash_attention_forward", None)
    if op is None or "window_size_left" not in {a.name for a in op.default._schema.arguments}:
        return "this torch's flash kernel takes no window"
    return _flash_window_probe(device.index if device.index is not None else torch.cuda.current_device(), dtype)


@functools.cache
@torch.compiler.disable
def _flash_window_probe(device_index: int, dtype: torch.dtype) -> str | None:
    """Once per GPU and dtype: the private flash op against `window_attention_reference`, forward
    and gradients, with grouped heads and with queries after cached keys. A torch whose build
    lacks the windowed kernels (or reads the window differently) falls back to FlexAttention."""
    dev = torch.device("cuda", device_index)
    g = torch.Generator(device=dev).manual_seed(0)
    try:  # gradients on, autocast off, whatever mode the first caller runs in (evaluation: no_grad)
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cuda", enabled=False):
            return _flash_window_check(dev, dtype, g)
    except Exception as e:  # a build without the windowed kernels, or an older signature
        return f"torch's flash window kernel failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"


def _flash_window_check(dev: torch.device, dtype: torch.dtype, g: torch.Generator) -> str | None:
    for lq, lk, window in ((192, 192, 37), (130, 300, 64)):
        q, do = (torch.randn(1, 4, lq, 64, device=dev, generator=g).to(dtype) for _ in range(2))
        k, v = (torch.randn(1, 2, lk, 64, device=dev, generator=g).to(dtype) for _ in range(2))
        ins = [t.requires_grad_() for t in (q.clone(), k.clone(), v.clone())]
        got = _FlashWindow.apply(*ins, window)
        got_g = torch.autograd.grad(got, ins, do)
        ref_ins = [t.float().requires_grad_() for t in (q, k, v)]
        want = window_attention_reference(*ref_ins, window)
        want_g = torch.autograd.grad(want, ref_ins, do.float())
        for name, a, b in zip(("out", "dq", "dk", "dv"), (got, *got_g), (want, *want_g)):
            err = ((a.float() - b).norm() / b.norm().clamp_min(1e-12)).item()
            if not err < 2e-2:
                return f"torch's flash window kernel disagrees with the reference ({name} rel err {err:.2g})"
    return None


def window_kernel(device: torch.device, dtype: torch.dtype, head_dim: int, q_len: int) -> tuple[str, str]:
    """(kernel, why) for the CUDA window: 'flex' (FlexAttention over the band, faster than torch's
    flash kernel with a window: `benchmarks/hsa_bench.py`, numbers in benchmarks/NOTES.md, HSA),
    'flash' where FlexAttention is missing, 'sdpa' (band mask) for short query chunks and as the
    last fallback."""
    if q_len < 128:
        return "sdpa", "short query chunk"
    if (why := flex.unavailable(torch.device(device))) is None:
        return "flex", "FlexAttention over the window band"
    if _flash_window_reason(torch.device(device), dtype, head_dim) is None:
        return "flash", f"torch's FlashAttention-2 kernel with a window ({why})"
    return "sdpa", why


def window_attention_fast(q, k, v, window: int, kernel: str | None = None) -> torch.Tensor:
    """The same on CUDA, only the band computed: FlexAttention over the distance band [0, W)
    (`zoo.kernels.flex` builds and caches the block mask), torch's FlashAttention-2 kernel with
    a window where FlexAttention is missing, SDPA with the band mask for short query chunks.
    `kernel` forces one of 'flash', 'flex', 'sdpa' (benchmarks)."""
    Lq, Lk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    kernel = kernel or window_kernel(q.device, q.dtype, q.shape[-1], Lq)[0]
    if kernel == "flash":
        return _FlashWindow.apply(q, k, v, window)
    if kernel == "flex":
        mask = flex.band_block_mask(Lq, Lk, 0, window, q.device)
        return flex.compiled_flex_attention()(q, k, v, block_mask=mask, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=band_mask(Lq, Lk, window, q.device), enable_gqa=gqa)


@register_mixer(
    name="hsa",
    family="sparse attention",
    description="hierarchical sparse attention: top-K chunk retrieval by landmarks, plus sliding-window RoPE attention",
    citation=HSA_CITATION,
    capabilities=Capabilities(cost="O(L^2)", state="growing"),  # O(L^2 / S) landmark scoring, O(L (K S + W)) attention
    backends=[TRITON_BACKEND, TORCH_BACKEND],
    tiny={"n_heads": 2, "n_kv_heads": 1, "head_dim": 16, "chunk_size": 16, "top_k": 2, "window": 8,
          "encoder_layers": 1},
    check_length=72,  # 4 complete chunks of 16 and a partial one: top-2 chooses among them
)
class HSA(Mixer):
    """HSA + SWA layer. `window` is a plain attribute so a schedule can warm it up. A retrieval
    mixer (`zoo.retrieval`): while `selections` is a list, each call appends (start, ids, weights,
    qr, lmk).

    With `retrieval_loss` > 0 the layer wants the batch's answer sources (`wants_sources`): it
    then takes ZooLM's `shared` dict, and a full forward given `shared["sources"]` appends its
    retrieval loss to `shared["aux"]["retrieval_loss"]` as (value, weight)."""

    Config = HSAConfig
    # settings that leave the parameters as they are: schedules and evaluation-time variants set them
    RUNTIME = ("window", "top_k", "chunk_overlap", "chunk_lookahead", "fusion_temperature", "fusion_length_scale")
    selections: list[tuple] | None = None  # recording off; see zoo.retrieval

    def __init__(self, d_model: int, config: HSAConfig | None = None, layer_idx: int = 0):
        super().__init__(d_model, config, layer_idx)
        c = self.config
        self.n_heads, self.n_kv_heads = c.n_heads, c.n_kv_heads
        self.head_dim = c.head_dim or d_model // c.n_heads
        self.retrieval_dim = c.retrieval_dim or self.head_dim
        self.chunk_size, self.top_k, self.window = c.chunk_size, c.top_k, c.window
        self.wants_sources = self.uses_shared = c.source_loss() is not None  # off: called exactly as before
        d, H, Hkv, Dh, Dr = d_model, self.n_heads, self.n_kv_heads, self.head_dim, self.retrieval_dim
        # sliding-window branch: RoPE, QK-norm
        self.wq_swa = nn.Linear(d, H * Dh, bias=False)
        self.wk_swa = nn.Linear(d, Hkv * Dh, bias=False)
        self.wv_swa = nn.Linear(d, Hkv * Dh, bias=False)
        self.q_norm_swa, self.k_norm_swa = RMSNorm(Dh, NORM_EPS), RMSNorm(Dh, NORM_EPS)
        # retrieval branch: no positions anywhere
        self.wq_hsa = nn.Linear(d, H * Dh, bias=False)
        self.q_norm_hsa = RMSNorm(Dh, NORM_EPS)
        self.wk_chunk = nn.Linear(d, Hkv * Dh, bias=False)
        self.wv_chunk = nn.Linear(d, Hkv * Dh, bias=False)
        self.k_norm_chunk = RMSNorm(Dh, NORM_EPS)
        self.wq_ret = nn.Linear(d, Hkv * Dr, bias=False)
        self.w_lmk = nn.Linear(d, Hkv * Dr, bias=False)
        self.ret_norm, self.lmk_norm = RMSNorm(Dr, NORM_EPS), RMSNorm(Dr, NORM_EPS)
        # chunk encoder: depth 0 = mean pooling of the normed chunk
        self.enc_heads = c.encoder_heads or max(1, d // 64)
        if Dh % 2:
            raise ZooError(f"hsa: head_dim {Dh} is odd", "RoPE of the window branch rotates pairs: use an even width")
        if c.encoder_layers:
            if d % self.enc_heads or (d // self.enc_heads) % 2:
                raise ZooError(f"hsa: d_model {d} does not split into {self.enc_heads} even-width encoder heads",
                               "set encoder_heads to a divisor of d_model with an even quotient")
            self.cls = nn.Parameter(0.02 * torch.randn(d))
            self.encoder = nn.ModuleList(ChunkEncoderLayer(d, self.enc_heads) for _ in range(c.encoder_layers))
        else:
            self.encoder = None
        self.enc_norm = RMSNorm(d, NORM_EPS)
        self.wo = nn.Linear(2 * H * Dh, d, bias=False)

    # -- sliding-window branch -------------------------------------------------------------
    def _swa(self, x: torch.Tensor, pos: torch.Tensor, cache: Cache | None, fast: bool) -> torch.Tensor:
        B, L, _ = x.shape
        H, Hkv, Dh = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_norm_swa(self.wq_swa(x).view(B, L, H, Dh)).transpose(1, 2)
        k = self.k_norm_swa(self.wk_swa(x).view(B, L, Hkv, Dh)).transpose(1, 2)
        v = self.wv_swa(x).view(B, L, Hkv, Dh).transpose(1, 2)
        cos, sin = rope_cos_sin(pos, rope_inv_freq(Dh, self.config.rope_base, x.device))
        q, k = apply_rotary(q, cos, sin).to(v.dtype), apply_rotary(k, cos, sin).to(v.dtype)
        if cache is not None:
            k, v = torch.cat([cache.swa_k, k], 2), torch.cat([cache.swa_v, v], 2)
            keep = min(k.shape[2], max(0, self.window - 1))  # what the next token can still see
            cache.swa_k, cache.swa_v = k[:, :, k.shape[2] - keep:], v[:, :, k.shape[2] - keep:]
        attend = window_attention_fast if fast else window_attention_blocked
        o = attend(q, k, v, self.window)
        return o.transpose(1, 2).reshape(B, L, H * Dh)

    # -- chunk encoding ---------------------------------------------------------------------
    def encode_chunks(self, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Complete chunks `[B, n * S, D]` -> keys, values `[B, n * S, Hkv, Dh]`, landmarks `[B, n, Hkv, Dr]`."""
        B, S, d = xc.shape[0], self.chunk_size, self.d_model
        n = xc.shape[1] // S
        h = xc.reshape(B * n, S, d)
        if self.encoder is not None:
            h = torch.cat([h, self.cls.to(h.dtype).expand(B * n, 1, d)], 1)  # CLS after the chunk
            cos = sin = None  # encoder_rope False: no positions in the encoder (the paper's)
            if self.config.encoder_rope:
                cos, sin = rope_cos_sin(torch.arange(S + 1, device=xc.device),
                                        rope_inv_freq(d // self.enc_heads, self.config.rope_base, xc.device))
            for layer in self.encoder:
                h = layer(h, cos, sin)
            h = self.enc_norm(h)
            tokens, summary = h[:, :S], h[:, S]
        else:
            tokens = self.enc_norm(h)
            summary = tokens.mean(1)
        Hkv, Dh, Dr = self.n_kv_heads, self.head_dim, self.retrieval_dim
        lmk = self.lmk_norm(self.w_lmk(summary).view(B, n, Hkv, Dr))
        v = self.wv_chunk(tokens).reshape(B, n * S, Hkv, Dh)
        k = self.k_norm_chunk(self.wk_chunk(tokens).view(B, n * S, Hkv, Dh)).to(v.dtype)
        return k, v, lmk

    # -- retrieval ------------------------------------------------------------------------------
    def select(self, qr: torch.Tensor, lmk: torch.Tensor, start: int, backend: str = "torch"):
        """Top-K chunks per token and KV head, and their fusion weights.

        qr `[B, L, Hkv, Dr]` (token t at position start + t), lmk `[B, C, Hkv, Dr]` -> indices
        `[B, L, Hkv, K]` (int64, most recent chunk first, -1 = empty slot), weights
        `[B, L, Hkv, K]` (float32, 0 on empty slots) and, on the triton backend, the chunk ->
        pairs index the retrieval kernel's backward reuses (None on torch). The top-K search
        runs without gradient; the scores of the chosen chunks carry gradient to qr and lmk,
        so retrieval learns through the fusion weights.

        torch: block by block over the queries, [block, C] scores, masked, top-k'd, then the
        chosen scores recomputed from gathered landmarks. triton: `hsa_triton.hsa_select`, one
        fused pass with a running top-K (same choice, no [L, C] tensor).
        """
        B, L, Hkv, Dr = qr.shape
        pos = torch.arange(start, start + L, device=qr.device)
        if backend == "triton":
            from zoo.kernels.hsa_triton import hsa_select

            ids, s, index = hsa_select(qr, lmk, start, self.chunk_size, self.top_k)
            return ids, self.fuse(s, ids >= 0, pos), index
        C = lmk.shape[1]
        K = min(self.top_k, C)
        if K == 0:
            empty = qr.new_full((B, L, Hkv, 0), -1, dtype=torch.long)
            return empty, qr.new_zeros((B, L, Hkv, 0), dtype=torch.float32), None
        ids = torch.empty(B, L, Hkv, K, dtype=torch.long, device=qr.device)
        block = max(1, SCORE_BUDGET // max(1, B * Hkv * C))
        with torch.no_grad():
            for i in range(0, L, block):
                s = torch.einsum("blhd,bchd->blhc", qr[:, i:i + block].float(), lmk.float())
                vis = visible_chunks(pos[i:i + block], C, self.chunk_size)
                s = s.masked_fill(~vis[None, :, None, :], float("-inf"))
                top = s.topk(K, dim=-1)
                ids[:, i:i + block] = top.indices.masked_fill(top.values == float("-inf"), -1)
            ids = ids.sort(dim=-1, descending=True).values  # most recent first, empty slots last
        valid = ids >= 0
        bi = torch.arange(B, device=qr.device)[:, None, None, None]
        hi = torch.arange(Hkv, device=qr.device)[None, None, :, None]
        chosen = lmk[bi, ids.clamp_min(0), hi]  # [B, L, Hkv, K, Dr]
        s = (qr.unsqueeze(3).float() * chosen.float()).sum(-1) * Dr**-0.5
        return ids, self.fuse(s, valid, pos), None

    def fuse(self, s: torch.Tensor, valid: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """Fusion weights from retrieval scores `[B, L, Hkv, K]` of the tokens at positions `pos`
        `[L]` (needed by `fusion_length_scale`); empty slots get 0."""
        n = self.config.fusion_length_scale
        if n is not None and pos is not None:
            seen = torch.div(pos, self.chunk_size, rounding_mode="floor").clamp_min(n)  # complete chunks before
            s = s * (seen.float().log() / math.log(n))[None, :, None, None]
        if self.config.fusion_temperature != 1.0:
            s = s / self.config.fusion_temperature
        if self.config.fusion == "joint":  # the scores themselves: logit shifts inside the joint softmax
            return s.masked_fill(~valid, 0.0)
        if self.config.fusion == "softmax":
            s = s.masked_fill(~valid, float("-inf"))
            s = torch.where(valid.any(-1, keepdim=True), s, torch.zeros_like(s))  # no chunk yet: all 0
            return s.softmax(-1) * valid
        # stick-breaking over the slots, most recent chunk first: w_j = sig(s_j) prod_{i<j} (1 - sig(s_i))
        s = s.masked_fill(~valid, 0.0)
        return torch.exp(s - (F.softplus(s) * valid).cumsum(-1)) * valid

    def _hsa(self, x: torch.Tensor, start: int, cache: Cache | None, backend: str,
             shared: dict | None = None) -> torch.Tensor:
        B, L, _ = x.shape
        S, H, Hkv, Dh, Dr = self.chunk_size, self.n_heads, self.n_kv_heads, self.head_dim, self.retrieval_dim
        rows = B  # rows of the retrieval loss; 1 row of B * L tokens below when the batch is read as one
        if self.config.cross_row_chunks and self.training and cache is None and B > 1:
            if L % S:
                raise ZooError(f"hsa: cross_row_chunks needs rows of whole chunks, got {L} tokens with "
                               f"chunk_size {S}", f"train at a multiple of {S} tokens")
            x = x.reshape(1, B * L, -1)  # chunk c of row b becomes chunk b * C + c of one row: causal as before
        # chunks completed inside this call are encoded first; the mask keeps earlier tokens of
        # the call from seeing them
        buf = torch.cat([cache.buf, x], 1) if cache is not None else x
        n_new = buf.shape[1] // S
        if n_new:
            k, v, lmk = self.encode_chunks(buf[:, :n_new * S])
        else:
            k = v = x.new_zeros(x.shape[0], 0, Hkv, Dh)
            lmk = x.new_zeros(x.shape[0], 0, Hkv, Dr)
        if cache is not None:
            k, v = torch.cat([cache.ck, k], 1), torch.cat([cache.cv, v], 1)
            lmk = torch.cat([cache.lmk, lmk], 1)
            cache.ck, cache.cv, cache.lmk, cache.buf = k, v, lmk, buf[:, n_new * S:]
        qr = self.ret_norm(self.wq_ret(x).view(x.shape[0], x.shape[1], Hkv, Dr))
        if self.wants_sources and shared is not None and shared.get("sources") is not None and cache is None:
            aux = retrieval_aux_loss(qr.view(rows, L, Hkv, Dr), lmk.view(rows, -1, Hkv, Dr), shared["sources"], S)
            shared.setdefault("aux", {}).setdefault("retrieval_loss", []).append((aux, self.config.retrieval_loss))
        idx, w, index = self.select(qr, lmk, start, backend)
        q = self.q_norm_hsa(self.wq_hsa(x).view(x.shape[0], x.shape[1], H, Dh)).to(v.dtype)
        spans = dict(overlap=self.config.chunk_overlap, lookahead=self.config.chunk_lookahead, first=start)
        if self.config.fusion == "joint":  # w: each chunk's share of the joint softmax
            o, w = hsa_attention_joint(q, k, v, w, idx, S, **spans)
        elif backend == "triton":
            from zoo.kernels.hsa_triton import hsa_attention

            o = hsa_attention(q, k, v, w, idx, S, index=index)
        else:
            o = hsa_attention_naive(q, k, v, w, idx, S, **spans)
        if self.selections is not None:  # recording (evaluation, eager): first position, ids, fusion weights,
            # and the retrieval queries and landmarks the selection scored
            self.selections.append((start, idx.detach(), w.detach(), qr.detach(), lmk.detach()))
        return o.reshape(B, L, H * Dh)

    # -- runtime settings and backend -----------------------------------------------------------
    @property
    def torch_only(self) -> bool:
        """Settings with no Triton kernel (joint fusion, overlapping spans)."""
        return self.config.fusion == "joint" or self.config.chunk_overlap > 0 or self.config.chunk_lookahead > 0

    def backend_choice(self, device: torch.device):
        forced = "torch" if self.torch_only and self.config.backend == "auto" else self.config.backend
        return self.spec.choose_backend(device, forced)

    def set_knob(self, name: str, value) -> None:
        """A scheduled or evaluation-time setting (`RUNTIME`), e.g. `mixer.hsa.window` for the
        window warm-up or `mixer.hsa.chunk_overlap` on a model trained without it."""
        if name not in self.RUNTIME:
            raise ZooError(f"mixer '{self.spec.name}' has no runtime setting '{name}'",
                           f"runtime settings: {', '.join(self.RUNTIME)}")
        self.config = self.spec.make_config({**self.config.model_dump(), name: value})
        self.top_k, self.window = self.config.top_k, self.config.window

    # -- contract ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cache: Cache | None = None, shared: dict | None = None) -> torch.Tensor:
        B, L, _ = x.shape
        start = cache.pos if cache is not None else 0
        self.check_length(start + L)
        pos = torch.arange(start, start + L, device=x.device)
        backend = self.select_backend(x)
        # joint fusion and overlapping spans run their retrieval in torch; the window still takes
        # the CUDA kernels
        fast = backend == "triton" or (self.torch_only and x.is_cuda)
        o_swa = self._swa(x, pos, cache, fast=fast)
        o_hsa = self._hsa(x, start, cache, backend, shared)
        if cache is not None:
            cache.pos = start + L
        return self.wo(torch.cat([o_swa, o_hsa], -1))

    def new_cache(self, batch, device, dtype) -> Cache:
        Hkv, Dh, Dr = self.n_kv_heads, self.head_dim, self.retrieval_dim
        z = lambda *shape: torch.zeros(*shape, device=device, dtype=dtype)
        return Cache(swa_k=z(batch, Hkv, 0, Dh), swa_v=z(batch, Hkv, 0, Dh), buf=z(batch, 0, self.d_model),
                     ck=z(batch, 0, Hkv, Dh), cv=z(batch, 0, Hkv, Dh), lmk=z(batch, 0, Hkv, Dr))

    def state_bytes(self, seq_len, batch=1, dtype=torch.bfloat16) -> int:
        Hkv, Dh, Dr, S = self.n_kv_heads, self.head_dim, self.retrieval_dim, self.chunk_size
        n = seq_len // S
        window = min(seq_len, max(0, self.window - 1))
        elems = 2 * Hkv * window * Dh + (seq_len % S) * self.d_model + n * (2 * S * Hkv * Dh + Hkv * Dr)
        return batch * elems * torch.empty((), dtype=dtype).element_size()

    def flops_per_token(self, seq_len: int) -> float:
        d, H, Hkv, Dh, Dr = self.d_model, self.n_heads, self.n_kv_heads, self.head_dim, self.retrieval_dim
        S = self.chunk_size
        proj = 2 * d * (2 * H * Dh + 4 * Hkv * Dh + Hkv * Dr + Hkv * Dr / S) + 2 * 2 * H * Dh * d
        enc = (len(self.encoder) * (2 * (4 * d * d + 6 * d * d) + 4 * d * (S + 1)) * (S + 1) / S) if self.encoder else 0
        chunks = seq_len / S / 2  # visible chunks, averaged over positions
        swa = 4 * H * Dh * min(self.window, (seq_len + 1) / 2)
        retrieval = 2 * Hkv * Dr * chunks + 4 * H * Dh * min(self.top_k, chunks) * (S + self.config.chunk_overlap
                                                                                + self.config.chunk_lookahead)
        return proj + enc + swa + retrieval
