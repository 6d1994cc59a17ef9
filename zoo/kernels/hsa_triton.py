"""Retrieval attention of hierarchical sparse attention (HSA): Triton forward and backward.

Hu et al. 2025, "Every Token Counts" (HSA-UltraLong, arXiv:2511.23319); the kernel layout
follows FlashAttention-2 (Dao 2023, arXiv:2307.08691). The plain-PyTorch oracle is
`hsa_naive.hsa_attention_naive`; shapes and the formula are documented there.

Layout of the work:

- forward: one program per (token, KV head, batch). Its block of queries is the G query heads
  of the token that share the token's chunk selection; it loops over the K selected chunks,
  each one contiguous S-row tile of keys and values, runs one softmax per chunk and adds the
  chunk's output times its fusion weight. The per-chunk log-sum-exp is kept for the backward.
- backward dQ (same grid): recomputes each chunk's probabilities from the saved log-sum-exp,
  its output o_j and delta_j = <dO, o_j>, which gives the weight gradient dW_j = sum_h delta_j
  and the softmax gradient dS = w_j P (dO V^T - delta_j).
- backward dK/dV: one program per (chunk, KV head, batch), walking the list of (token, slot)
  pairs that selected the chunk. That chunk -> queries index is built once per backward by a
  sort of the selected indices, so no program scans all query blocks (which would be
  quadratic).

Run on CPU under `TRITON_INTERPRET=1` (set before triton is imported) for tests.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634


def _tuned(configs: list, key: list[str]):
    """Autotune on the GPU; the interpreter runs one fixed configuration."""

    def deco(fn):
        return fn if INTERPRET else triton.autotune(configs=configs, key=key)(fn)

    return deco


_FWD_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (2, 4) for s in (1, 2)]
_DKDV_CONFIGS = [triton.Config({"BLOCK_E": e}, num_warps=4, num_stages=s) for e in (2, 4) for s in (1, 2)]
_DKDV_DEFAULT = {"BLOCK_E": 2}


@_tuned(_FWD_CONFIGS, key=["S", "D", "G", "TOPK"])
@triton.jit
def _hsa_fwd_kernel(
    Q, K, V, W, IDX, OUT, LSE,  # q/out [B,L,Hq,D]; k/v [B,NKV,Hkv,D]; w/idx [B,L,Hkv,TOPK]; lse [B,L,Hq,TOPK]
    scale_log2, L, NKV,
    Hq: tl.constexpr, Hkv: tl.constexpr, TOPK: tl.constexpr,
    S: tl.constexpr, D: tl.constexpr, G: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    rg, rs, rd = tl.arange(0, BLOCK_G), tl.arange(0, BLOCK_S), tl.arange(0, BLOCK_D)
    mg, ms, md = rg < G, rs < S, rd < D
    row = (b * L + t) * Hq + g * G + rg  # query rows of this token's group
    q = tl.load(Q + row[:, None] * D + rd[None, :], mask=mg[:, None] & md[None, :], other=0.0)
    slot = ((b * L + t) * Hkv + g) * TOPK
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for j in range(TOPK):
        c = tl.load(IDX + slot + j)
        if c >= 0:
            w = tl.load(W + slot + j)
            krow = b * NKV + c * S + rs
            kt = tl.load(K + (krow[None, :] * Hkv + g) * D + rd[:, None], mask=ms[None, :] & md[:, None], other=0.0)
            s = tl.dot(q, kt) * scale_log2  # [BLOCK_G, BLOCK_S], log2 domain
            s = tl.where(ms[None, :], s, float("-inf"))
            m = tl.max(s, 1)
            p = tl.exp2(s - m[:, None])
            den = tl.sum(p, 1)
            v = tl.load(V + (krow[:, None] * Hkv + g) * D + rd[None, :], mask=ms[:, None] & md[None, :], other=0.0)
            o = tl.dot(p.to(v.dtype), v)
            acc += o * (w / den)[:, None]
            tl.store(LSE + row * TOPK + j, m + tl.log2(den), mask=mg)
    tl.store(OUT + row[:, None] * D + rd[None, :], acc.to(OUT.dtype.element_ty), mask=mg[:, None] & md[None, :])


@_tuned(_FWD_CONFIGS, key=["S", "D", "G", "TOPK"])
@triton.jit
def _hsa_bwd_dq_kernel(
    Q, K, V, W, IDX, DO, LSE, DQ, DW, DELTA,
    scale_log2, scale, L, NKV,
    Hq: tl.constexpr, Hkv: tl.constexpr, TOPK: tl.constexpr,
    S: tl.constexpr, D: tl.constexpr, G: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    rg, rs, rd = tl.arange(0, BLOCK_G), tl.arange(0, BLOCK_S), tl.arange(0, BLOCK_D)
    mg, ms, md = rg < G, rs < S, rd < D
    row = (b * L + t) * Hq + g * G + rg
    mq = mg[:, None] & md[None, :]
    q = tl.load(Q + row[:, None] * D + rd[None, :], mask=mq, other=0.0)
    do = tl.load(DO + row[:, None] * D + rd[None, :], mask=mq, other=0.0)
    slot = ((b * L + t) * Hkv + g) * TOPK
    dq = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for j in range(TOPK):
        c = tl.load(IDX + slot + j)
        if c >= 0:
            w = tl.load(W + slot + j)
            krow = b * NKV + c * S + rs
            kt = tl.load(K + (krow[None, :] * Hkv + g) * D + rd[:, None], mask=ms[None, :] & md[:, None], other=0.0)
            v = tl.load(V + (krow[:, None] * Hkv + g) * D + rd[None, :], mask=ms[:, None] & md[None, :], other=0.0)
            lse = tl.load(LSE + row * TOPK + j, mask=mg, other=0.0)
            s = tl.dot(q, kt) * scale_log2
            p = tl.exp2(s - lse[:, None])
            p = tl.where(mg[:, None] & ms[None, :], p, 0.0)
            o = tl.dot(p.to(v.dtype), v)  # this chunk's output, recomputed
            delta = tl.sum(o * do.to(tl.float32), 1)  # <dO, o_j> per query head
            tl.store(DELTA + row * TOPK + j, delta, mask=mg)
            tl.store(DW + slot + j, tl.sum(delta, 0))
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None]) * w
            dq += tl.dot(ds.to(kt.dtype), tl.trans(kt))
    tl.store(DQ + row[:, None] * D + rd[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=mq)


@_tuned(_DKDV_CONFIGS, key=["S", "D", "G", "TOPK"])
@triton.jit
def _hsa_bwd_dkdv_kernel(
    Q, K, V, W, DO, LSE, DELTA, OFFS, ENT, DK, DV,
    scale_log2, scale, L, NKV, NCHUNK,
    Hq: tl.constexpr, Hkv: tl.constexpr, TOPK: tl.constexpr,
    S: tl.constexpr, D: tl.constexpr, G: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_E: tl.constexpr,
):
    c = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    rs, rd = tl.arange(0, BLOCK_S), tl.arange(0, BLOCK_D)
    ms, md = rs < S, rd < D
    krow = b * NKV + c * S + rs
    mk = ms[:, None] & md[None, :]
    k = tl.load(K + (krow[:, None] * Hkv + g) * D + rd[None, :], mask=mk, other=0.0)
    v = tl.load(V + (krow[:, None] * Hkv + g) * D + rd[None, :], mask=mk, other=0.0)
    dk = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    key = (b * Hkv + g) * NCHUNK + c
    e_start = tl.load(OFFS + key)
    e_end = tl.load(OFFS + key + 1)
    # rows = BLOCK_E (token, slot) entries x BLOCK_G query heads of the group
    rr = tl.arange(0, BLOCK_E * BLOCK_G)
    re, rh = rr // BLOCK_G, rr % BLOCK_G
    for e0 in range(e_start, e_end, BLOCK_E):
        e = e0 + re
        me = (e < e_end) & (rh < G)
        ent = tl.load(ENT + e, mask=me, other=0).to(tl.int64)  # t * TOPK + j
        t = ent // TOPK
        j = ent % TOPK
        row = (b * L + t) * Hq + g * G + rh
        mq = me[:, None] & md[None, :]
        q = tl.load(Q + row[:, None] * D + rd[None, :], mask=mq, other=0.0)
        do = tl.load(DO + row[:, None] * D + rd[None, :], mask=mq, other=0.0)
        lse = tl.load(LSE + row * TOPK + j, mask=me, other=0.0)
        delta = tl.load(DELTA + row * TOPK + j, mask=me, other=0.0)
        w = tl.load(W + ((b * L + t) * Hkv + g) * TOPK + j, mask=me, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale_log2  # [R, BLOCK_S]
        p = tl.exp2(s - lse[:, None])
        pw = tl.where(me[:, None] & ms[None, :], p, 0.0) * w[:, None]
        dv += tl.dot(tl.trans(pw.to(do.dtype)), do)
        dp = tl.dot(do, tl.trans(v))
        ds = pw * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    tl.store(DK + (krow[:, None] * Hkv + g) * D + rd[None, :], (dk * scale).to(DK.dtype.element_ty), mask=mk)
    tl.store(DV + (krow[:, None] * Hkv + g) * D + rd[None, :], dv.to(DV.dtype.element_ty), mask=mk)


def _block(n: int) -> int:
    """Power of two >= n and >= 16 (tl.dot needs 16 rows/columns at least)."""
    return max(16, 1 << max(0, n - 1).bit_length())


def chunk_query_index(indices: torch.Tensor, n_chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk -> queries index of the dK/dV pass, by one stable sort.

    indices `[B, L, Hkv, K]` (-1 = empty slot) -> (offsets `[B*Hkv*n_chunks + 1]`, entries `[N]`),
    both int32: the (token t, slot j) pairs that selected chunk c of KV head g in batch b are
    `entries[offsets[key]:offsets[key + 1]]`, key = (b * Hkv + g) * n_chunks + c, each stored
    as t * K + j, in increasing t.
    """
    B, L, H, K = indices.shape
    dev = indices.device
    idx = indices.long()
    valid = idx >= 0
    bg = torch.arange(B, device=dev)[:, None, None, None] * H + torch.arange(H, device=dev)[None, None, :, None]
    key = (bg * n_chunks + idx)[valid]
    ent = (torch.arange(L, device=dev)[:, None, None] * K + torch.arange(K, device=dev)[None, None, :])
    ent = ent.unsqueeze(0).expand(B, L, H, K)[valid]
    key_sorted, order = torch.sort(key, stable=True)
    counts = torch.bincount(key_sorted, minlength=B * H * n_chunks)
    offsets = F.pad(counts.cumsum(0), (1, 0)).to(torch.int32)
    return offsets, ent[order].to(torch.int32)


def _launch_args(q: torch.Tensor, k: torch.Tensor, indices: torch.Tensor, chunk_size: int) -> dict:
    B, L, Hq, D = q.shape
    Hkv, TOPK = k.shape[2], indices.shape[-1]
    G = Hq // Hkv
    return dict(Hq=Hq, Hkv=Hkv, TOPK=TOPK, S=chunk_size, D=D, G=G,
                BLOCK_S=_block(chunk_size), BLOCK_D=_block(D), BLOCK_G=_block(G))


class _HSAAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, weights, indices, chunk_size, scale):
        B, L, Hq, D = q.shape
        NKV = k.shape[1]
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        w = weights.float().contiguous()
        idx = indices.to(torch.int32).contiguous()
        meta = _launch_args(q, k, idx, chunk_size)
        o = torch.empty_like(q)
        lse = torch.zeros(B, L, Hq, meta["TOPK"], device=q.device, dtype=torch.float32)
        if L and meta["TOPK"]:
            _hsa_fwd_kernel[(L, meta["Hkv"], B)](q, k, v, w, idx, o, lse, scale * LOG2E, L, NKV, **meta)
        else:
            o.zero_()
        ctx.save_for_backward(q, k, v, w, idx, lse)
        ctx.chunk_size, ctx.scale, ctx.weights_dtype = chunk_size, scale, weights.dtype
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, w, idx, lse = ctx.saved_tensors
        S, scale = ctx.chunk_size, ctx.scale
        B, L, Hq, D = q.shape
        NKV = k.shape[1]
        n_chunks = NKV // S
        meta = _launch_args(q, k, idx, S)
        do = do.contiguous()
        dq = torch.zeros_like(q)
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
        dw = torch.zeros_like(w)
        delta = torch.zeros_like(lse)
        if L and meta["TOPK"]:
            _hsa_bwd_dq_kernel[(L, meta["Hkv"], B)](q, k, v, w, idx, do, lse, dq, dw, delta,
                                                    scale * LOG2E, scale, L, NKV, **meta)
        if n_chunks and L and meta["TOPK"]:
            offsets, entries = chunk_query_index(idx, n_chunks)
            extra = _DKDV_DEFAULT if INTERPRET else {}
            _hsa_bwd_dkdv_kernel[(n_chunks, meta["Hkv"], B)](q, k, v, w, do, lse, delta, offsets, entries, dk, dv,
                                                             scale * LOG2E, scale, L, NKV, n_chunks, **meta, **extra)
        return dq, dk, dv, dw.to(ctx.weights_dtype), None, None, None


def hsa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    chunk_size: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Triton HSA retrieval attention, differentiable in q, k, v and weights.

    q `[B, L, Hq, D]`; k, v `[B, C * S, Hkv, D]`; weights, indices `[B, L, Hkv, K]`
    (indices int, -1 = empty slot). Same contract as `hsa_naive.hsa_attention_naive`.
    """
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads {q.shape[2]} are not a multiple of KV heads {k.shape[2]}")
    if k.shape[1] % chunk_size:
        raise ValueError(f"{k.shape[1]} key rows are not whole chunks of {chunk_size}")
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    dt = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)  # tl.dot wants one dtype
    return _HSAAttention.apply(q.to(dt), k.to(dt), v.to(dt), weights, indices, chunk_size, float(scale))
