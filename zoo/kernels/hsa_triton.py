"""Hierarchical sparse attention (HSA) in Triton: chunk selection and retrieval attention, forward and backward.

Hu et al. 2025, "Every Token Counts" (HSA-UltraLong, arXiv:2511.23319); the attention layout
follows FlashAttention-2 (Dao 2023, arXiv:2307.08691). The plain-PyTorch oracles are
`hsa_naive.hsa_attention_naive` (attention; shapes and formula there) and `HSA.select` on the
torch backend (selection).

Names: B batch, L tokens, Hq query heads, Hkv KV heads, G = Hq / Hkv, D head width, S chunk
size, C chunks, K slots (top-K), Dr landmark width. A "pair" is one (token, KV head, slot):
P = B * L * Hkv * K pairs, flat id p = ((b * L + t) * Hkv + g) * K + j.

What the work costs (bf16, 16 query heads x 64 sharing 1 KV head, S 64, K 8): per pair the
chunk's keys and values are 2 x 64 x 64 x 2 B = 16 KB, the pair's queries (or output
gradients) 16 x 64 x 2 B = 2 KB, and the math 4 x 16 x 64 x 64 = 262 KFLOP forward. At 128K
tokens that is 1M pairs: 2.7e11 FLOP forward, ~1e12 forward + backward, a few ms of tensor
cores; the bytes decide.

Selection (`hsa_select`):

- `_topk_kernel`: one program per block of BLOCK_M tokens and KV head; it scores its queries
  against tiles of BLOCK_C landmarks with one matmul per tile, masks chunks that are not
  complete before the token by arithmetic on the chunk id, and merges each tile into a
  running top-K kept in registers (extract the tile's best while it beats the running
  minimum). No [B, L, C] tensor is ever written: at L = 128K that tensor would be 1 GB in
  fp32, written, masked, top-k'd and read again. Output: the K chunk ids (most recent first,
  -1 = empty slot) and their scores.
- backward: dqr per token gathers the K chosen landmarks (`_score_dqr_kernel`); dlmk per
  chunk walks the pairs that chose the chunk (`_score_dlmk_kernel`, same work items as the
  attention backward below), partial sums per item reduced in a fixed order
  (`_sum_items_kernel`), so the result is deterministic without atomics.

Retrieval attention (`hsa_attention`). Both passes are chunk-major: the chunk -> pairs index
(`chunk_query_index`, one stable sort of the pair keys per step, no host sync; `hsa_select`
builds it once and both passes and the selection's backward reuse it) is cut into work
items of at most ITEM_PAIRS pairs of one chunk, so a chunk that every token picks becomes
many items instead of one long serial program. A program loads its chunk's 64-row tile of
keys and values once and walks its pairs in tiles of ROWS query rows (pairs x the G heads of
the KV group, 64 or 128 rows: tensor-core sized tiles, where a token's own 16 heads are not).

- forward, `_hsa_fwd_chunk_kernel`: per tile one softmax per row over the whole chunk, times
  the pair's fusion weight, times V; the pair's output goes to a partial buffer [P, G, D] and
  `_sum_slots_kernel` adds each token's K partials in slot order. Bytes per pair: 2 KB of
  queries read, 2 KB partial written and read once: ~6 GB per forward at 128K tokens, HBM.
  `layout="token"` (the default) is the token-major forward (`_hsa_fwd_kernel`, a program per
  token and KV head looping over its K slots): no partial buffer, and 16 KB of keys and values
  per pair, ~17 GB of traffic per forward at 128K tokens, mostly served by L2 (neighbouring
  tokens pick the same chunks); it measured faster than the chunk-major forward.
- backward, `_hsa_bwd_kernel`: recomputes the chunk's softmax (a chunk is a whole softmax
  row, so nothing but the inputs is saved), and gives dV += (wP)^T dO, dK += dS^T Q,
  delta = rowsum(P * dP) (= <dO, o_chunk>; its sum over heads is the weight gradient) and the
  pair's dQ partial dS K (summed per token by `_sum_slots_kernel`). Bytes per pair: 2 KB of
  queries + 2 KB of output gradients read, 2 KB dQ partial written and read once, against
  16 KB of keys and values per pair (and every chunk recomputed twice, for dQ and for dK/dV)
  in a token-major backward. dK/dV partials per item (fp32) are summed per chunk by
  `_sum_items_kernel`, in item order: deterministic, no atomics.

Memory beyond the inputs, transient: the output (forward) or dQ (backward) partials, P x G x D
in the input dtype (2 GB at 128K tokens of 16 heads x 64, bf16), and per-item fp32 dK/dV
partials (~0.2 GB there). Linear in the number of tokens.

Run on CPU under `TRITON_INTERPRET=1` (set before triton is imported) for tests.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634
ITEM_PAIRS = 256  # pairs per work item of the chunk-major passes
SELECT_BLOCK_C = 64  # landmarks scored per tile of the top-K kernel


def _tuned(configs: list, key: list[str]):
    """Autotune on the GPU; the interpreter runs one fixed configuration."""

    def deco(fn):
        return fn if INTERPRET else triton.autotune(configs=configs, key=key)(fn)

    return deco


def _configs(params: list[dict], warps_stages: list[tuple[int, int]]) -> list:
    return [triton.Config(p, num_warps=w, num_stages=s) for p, (w, s) in zip(params, warps_stages)]


_TOPK_CONFIGS = _configs([{"BLOCK_M": 64}, {"BLOCK_M": 32}, {"BLOCK_M": 64}], [(4, 2), (4, 2), (8, 2)])
_TOPK_DEFAULT = {"BLOCK_M": 16}
_FWD_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w, s in ((1, 1), (2, 1), (2, 2), (4, 2), (4, 3))]
_CFWD_CONFIGS = _configs([{"ROWS": 64}, {"ROWS": 64}, {"ROWS": 128}], [(4, 2), (4, 3), (8, 2)])
_BWD_CONFIGS = _configs([{"ROWS": 64}, {"ROWS": 64}, {"ROWS": 64}, {"ROWS": 128}, {"ROWS": 128}, {"ROWS": 128}],
                        [(4, 2), (4, 3), (8, 2), (4, 2), (8, 2), (8, 3)])
_BWD_DEFAULT = {"ROWS": 16}


def _block(n: int) -> int:
    """Power of two >= n and >= 16 (tl.dot needs 16 rows/columns at least)."""
    return max(16, _pow2(n))


def _pow2(n: int) -> int:
    """Power of two >= n and >= 2."""
    return max(2, 1 << max(0, n - 1).bit_length())


# == selection ======================================================================================

@_tuned(_TOPK_CONFIGS, key=["R", "TOPK", "S"])
@triton.jit
def _topk_kernel(
    QR, LMK, IDS, SC,  # qr [B,L,Hkv,R]; lmk [B,C,Hkv,R]; ids (int64) / sc (fp32) [B,L,Hkv,TOPK]
    L, C, start, scale,
    Hkv: tl.constexpr, R: tl.constexpr, TOPK: tl.constexpr, S: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    scale = tl.cast(scale, tl.float32)
    pid = tl.program_id(0)
    g = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    rm = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mm = rm < L
    rr = tl.arange(0, BLOCK_R)
    mr = rr < R
    rows = (b * L + rm) * Hkv + g
    qr = tl.load(QR + rows[:, None] * R + rr[None, :], mask=mm[:, None] & mr[None, :], other=0.0)
    # token at position p sees chunks c with (c + 1) * S <= p, i.e. c < p // S (never its own open chunk)
    n_vis = tl.where(mm, tl.minimum((start + rm) // S, C), 0)
    n_hi = tl.minimum((start + tl.minimum(pid * BLOCK_M + BLOCK_M, L) - 1) // S, C)
    kcol = tl.arange(0, BLOCK_K)
    # running top-K per row; the padding columns hold +inf so the running minimum never lands there
    top_v = tl.where(kcol[None, :] < TOPK, float("-inf"), float("inf")) + tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
    top_i = tl.full([BLOCK_M, BLOCK_K], -1, tl.int32)
    rc = tl.arange(0, BLOCK_C)
    for c0 in range(0, n_hi, BLOCK_C):
        cc = c0 + rc
        lm = tl.load(LMK + ((b * C + cc) * Hkv + g)[:, None] * R + rr[None, :],
                     mask=(cc < C)[:, None] & mr[None, :], other=0.0)
        sc = tl.dot(qr, tl.trans(lm), input_precision=DOT_PREC)  # [BLOCK_M, BLOCK_C]
        sc = tl.where(cc[None, :] < n_vis[:, None], sc, float("-inf"))
        best, arg = tl.max(sc, 1, return_indices=True)
        low = tl.min(top_v, 1)
        # insert the tile's best while it beats a row's running minimum: at most K + 1 rounds
        while tl.max((best > low).to(tl.int32), 0) > 0:
            put = (best > low)[:, None] & (kcol[None, :] == tl.argmin(top_v, 1)[:, None])
            top_v = tl.where(put, best[:, None], top_v)
            top_i = tl.where(put, (c0 + arg)[:, None], top_i)
            sc = tl.where(rc[None, :] == arg[:, None], float("-inf"), sc)
            best, arg = tl.max(sc, 1, return_indices=True)
            low = tl.min(top_v, 1)
    # write the slots most recent chunk first, empty slots (-1) last
    ti = tl.where(kcol[None, :] < TOPK, top_i, -2)
    for j in range(TOPK):
        mx = tl.max(ti, 1)
        hit = ti == mx[:, None]
        v = tl.max(tl.where(hit, top_v, float("-inf")), 1)
        tl.store(IDS + rows * TOPK + j, tl.maximum(mx, -1).to(tl.int64), mask=mm)
        tl.store(SC + rows * TOPK + j, tl.where(mx >= 0, v * scale, 0.0), mask=mm)
        ti = tl.where(hit, -2, ti)


@triton.jit
def _score_dqr_kernel(
    LMK, IDS, DS, DQR,  # lmk [B,C,Hkv,R]; ids, ds [B,L,Hkv,TOPK]; dqr [B,L,Hkv,R]
    NROW, L, C, scale,
    Hkv: tl.constexpr, R: tl.constexpr, TOPK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
):
    scale = tl.cast(scale, tl.float32)
    rm = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # row (b * L + t) * Hkv + g
    mm = rm < NROW
    rr = tl.arange(0, BLOCK_R)
    mr = rr < R
    g = rm % Hkv
    b = rm // (L * Hkv)
    acc = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    for j in range(TOPK):
        c = tl.load(IDS + rm * TOPK + j, mask=mm, other=-1)
        d = tl.load(DS + rm * TOPK + j, mask=mm, other=0.0)
        ok = mm & (c >= 0)
        lm = tl.load(LMK + ((b * C + c) * Hkv + g)[:, None] * R + rr[None, :], mask=ok[:, None] & mr[None, :],
                     other=0.0)
        acc += d[:, None] * lm.to(tl.float32)
    tl.store(DQR + rm[:, None] * R + rr[None, :], (acc * scale).to(DQR.dtype.element_ty),
             mask=mm[:, None] & mr[None, :])


@triton.jit
def _score_dlmk_kernel(
    QR, DS, ENT, ITEM_START, ITEM_END, PART,  # qr [B,L,Hkv,R]; ds [P]; ent [P]; part [NI, R] fp32
    R: tl.constexpr, TOPK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    e_start = tl.load(ITEM_START + i)
    e_end = tl.load(ITEM_END + i)
    rr = tl.arange(0, BLOCK_R)
    mr = rr < R
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for e0 in range(e_start, e_end, BLOCK_E):
        e = e0 + tl.arange(0, BLOCK_E)
        me = e < e_end
        p = tl.load(ENT + e, mask=me, other=0).to(tl.int64)
        d = tl.load(DS + p, mask=me, other=0.0)
        x = tl.load(QR + (p // TOPK)[:, None] * R + rr[None, :], mask=me[:, None] & mr[None, :], other=0.0)
        acc += tl.sum(d[:, None] * x.to(tl.float32), 0)
    tl.store(PART + i * R + rr, acc, mask=mr)


@triton.jit
def _sum_items_kernel(
    PART, KEY_ITEMS, OUT,  # part [NI, ROWS, COLS] fp32; key_items [NKEY + 1]; out rows of [B, C * ROWS, Hkv, COLS]
    C, scale,
    Hkv: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):
    """out[chunk of key] = scale * sum of the partials of the key's work items, in item order."""
    scale = tl.cast(scale, tl.float32)
    key = tl.program_id(0).to(tl.int64)  # (b * Hkv + g) * C + c
    c = key % C
    g = (key // C) % Hkv
    b = key // (C * Hkv)
    i0 = tl.load(KEY_ITEMS + key).to(tl.int64)
    i1 = tl.load(KEY_ITEMS + key + 1).to(tl.int64)
    ra, rb = tl.arange(0, BLOCK_ROWS), tl.arange(0, BLOCK_COLS)
    mask = (ra < ROWS)[:, None] & (rb < COLS)[None, :]
    acc = tl.zeros([BLOCK_ROWS, BLOCK_COLS], dtype=tl.float32)
    for i in range(i0, i1):
        acc += tl.load(PART + (i * ROWS + ra[:, None]) * COLS + rb[None, :], mask=mask, other=0.0)
    row = b * C * ROWS + c * ROWS + ra
    tl.store(OUT + (row[:, None] * Hkv + g) * COLS + rb[None, :], (acc * scale).to(OUT.dtype.element_ty), mask=mask)


# == the chunk -> pairs index =========================================================================

class ChunkIndex(NamedTuple):
    """Which pairs chose each chunk, cut into work items (all int32, on the device).

    entries `[P]`: flat pair ids p sorted by key = (b * Hkv + g) * C + c, increasing p (so
    increasing token) within a key; the pairs of key k are entries[offsets[k]:offsets[k + 1]].
    Work item i covers entries[item_start[i]:item_end[i]] (at most ITEM_PAIRS of one key,
    item_key[i]); the items of key k are key_items[k] .. key_items[k + 1] - 1. The item count
    is an upper bound known without a host sync; unused items are empty (start == end).
    """

    entries: torch.Tensor
    offsets: torch.Tensor
    key_items: torch.Tensor
    item_key: torch.Tensor
    item_start: torch.Tensor
    item_end: torch.Tensor
    n_chunks: int


def chunk_query_index(indices: torch.Tensor, n_chunks: int, item_pairs: int | None = None) -> ChunkIndex:
    """The chunk -> pairs index of `indices` `[B, L, Hkv, K]` (-1 = empty slot) over n_chunks >= 1
    chunks, by one stable sort on the device; work items of at most `item_pairs` (default
    ITEM_PAIRS) pairs."""
    item_pairs = item_pairs or ITEM_PAIRS
    B, L, H, K = indices.shape
    dev = indices.device
    n_key = B * H * n_chunks
    n_pairs = B * L * H * K
    if n_key + n_pairs >= 2**31:
        raise ValueError(f"{n_pairs} pairs over {n_key} chunk keys do not fit the int32 index")
    bg = (torch.arange(B, device=dev)[:, None, None, None] * H + torch.arange(H, device=dev)[None, None, :, None])
    idx = indices.to(torch.int32)
    key = torch.where(idx >= 0, (bg * n_chunks).to(torch.int32) + idx, n_key).reshape(-1)  # empty slots sort last
    key_sorted, order = torch.sort(key, stable=True)
    offsets = torch.searchsorted(key_sorted, torch.arange(n_key + 1, device=dev, dtype=torch.int32))
    per_key = (offsets[1:] - offsets[:-1] + item_pairs - 1) // item_pairs
    ends = per_key.cumsum(0)  # key_items[1:]
    key_items = F.pad(ends, (1, 0))  # [n_key + 1]
    n_items = n_key + n_pairs // item_pairs  # >= sum of ceil(count / item_pairs) over keys
    it = torch.arange(n_items, device=dev)
    # searched in `ends`, not in the slice key_items[1:]: torch 2.11's Inductor cannot lower a searchsorted
    # over a slice of a computed tensor (NotImplementedError: SliceView; fixed by pytorch PR 184043)
    item_key = torch.searchsorted(ends, it, right=True)  # == n_key past the last used item
    used = item_key < n_key
    kk = item_key.clamp(max=n_key - 1)
    start = offsets[kk] + (it - key_items[kk]) * item_pairs
    end = torch.minimum(start + item_pairs, offsets[kk + 1])
    zero = torch.zeros_like(start)
    i32 = torch.int32
    return ChunkIndex(order.to(i32), offsets.to(i32), key_items.to(i32), torch.where(used, kk, 0).to(i32),
                      torch.where(used, start, zero).to(i32), torch.where(used, end, zero).to(i32), n_chunks)


def _sum_items(part: torch.Tensor, index: ChunkIndex, out: torch.Tensor, rows: int, cols: int, scale: float):
    """out (rows of [B, C * rows, Hkv, cols]) = scale * per-key sums of part [NI, rows, cols]."""
    n_key = index.key_items.numel() - 1
    _sum_items_kernel[(n_key,)](part, index.key_items, out, index.n_chunks, scale, Hkv=out.shape[2], ROWS=rows,
                                COLS=cols, BLOCK_ROWS=_pow2(rows), BLOCK_COLS=_pow2(cols))
    return out


class _RetrievalScores(torch.autograd.Function):
    """s[b,t,g,j] = scale * qr[b,t,g] . lmk[b, ids[b,t,g,j], g], computed by the top-K kernel;
    this node gives its gradients to the retrieval queries and the landmarks."""

    @staticmethod
    def forward(ctx, qr, lmk, s, ids, index, scale):
        ctx.save_for_backward(qr, lmk, ids)
        ctx.index, ctx.scale = index, scale
        return s.clone()

    @staticmethod
    def backward(ctx, ds):
        qr, lmk, ids = ctx.saved_tensors
        B, L, Hkv, R = qr.shape
        C, K = lmk.shape[1], ids.shape[-1]
        ds = ds.float().contiguous()
        dqr = torch.empty_like(qr)
        block = 32
        _score_dqr_kernel[(triton.cdiv(B * L * Hkv, block),)](lmk, ids, ds, dqr, B * L * Hkv, L, C, ctx.scale,
                                                             Hkv=Hkv, R=R, TOPK=K, BLOCK_M=block, BLOCK_R=_pow2(R))
        index = ctx.index
        n_items = index.item_start.numel()
        part = torch.empty(n_items, R, device=qr.device, dtype=torch.float32)
        _score_dlmk_kernel[(n_items,)](qr, ds, index.entries, index.item_start, index.item_end, part,
                                       R=R, TOPK=K, BLOCK_E=32, BLOCK_R=_pow2(R))
        dlmk = _sum_items(part, index, torch.empty_like(lmk), 1, R, ctx.scale)
        return dqr, dlmk, None, None, None, None


def hsa_select(
    qr: torch.Tensor, lmk: torch.Tensor, start: int, chunk_size: int, top_k: int, scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, ChunkIndex | None]:
    """Top-K visible chunks per token and KV head, with their retrieval scores.

    qr `[B, L, Hkv, R]` (token t at position start + t), lmk `[B, C, Hkv, R]`. Returns ids
    `[B, L, Hkv, K]` int64 (K = min(top_k, C); most recent chunk first, -1 = empty slot),
    scores `[B, L, Hkv, K]` fp32 (scale * qr . lmk, 0 on empty slots; differentiable in qr
    and lmk) and the chunk -> pairs index of ids (None without chunks), to hand to
    `hsa_attention`. Same choice as `HSA.select` on the torch backend.
    """
    B, L, Hkv, R = qr.shape
    C = lmk.shape[1]
    K = min(top_k, C)
    scale = scale if scale is not None else R**-0.5
    if K == 0 or L == 0:  # nothing to choose; the attention then has no pair either
        return (qr.new_full((B, L, Hkv, K), -1, dtype=torch.long), qr.new_zeros((B, L, Hkv, K), dtype=torch.float32),
                None)
    dt = torch.promote_types(qr.dtype, lmk.dtype)
    qr_c, lmk_c = qr.detach().to(dt).contiguous(), lmk.detach().to(dt).contiguous()
    ids = torch.empty(B, L, Hkv, K, device=qr.device, dtype=torch.long)
    s = torch.empty(B, L, Hkv, K, device=qr.device, dtype=torch.float32)
    meta = dict(Hkv=Hkv, R=R, TOPK=K, S=chunk_size, DOT_PREC="ieee" if dt == torch.float32 else "tf32",
                BLOCK_C=SELECT_BLOCK_C, BLOCK_R=_block(R), BLOCK_K=_pow2(K))
    extra = _TOPK_DEFAULT if INTERPRET else {}
    grid = lambda a: (triton.cdiv(L, a["BLOCK_M"]), Hkv, B)  # noqa: E731
    _topk_kernel[grid](qr_c, lmk_c, ids, s, L, C, start, float(scale), **meta, **extra)
    index = chunk_query_index(ids, C)
    if torch.is_grad_enabled() and (qr.requires_grad or lmk.requires_grad):
        s = _RetrievalScores.apply(qr.to(dt).contiguous(), lmk.to(dt).contiguous(), s, ids, index, float(scale))
    return ids, s, index


# == retrieval attention ==============================================================================

@_tuned(_FWD_CONFIGS, key=["S", "D", "G", "TOPK"])
@triton.jit
def _hsa_fwd_kernel(
    Q, K, V, W, IDX, OUT,  # q/out [B,L,Hq,D]; k/v [B,NKV,Hkv,D]; w/idx [B,L,Hkv,TOPK]
    scale_log2, L, NKV,
    Hq: tl.constexpr, Hkv: tl.constexpr, TOPK: tl.constexpr,
    S: tl.constexpr, D: tl.constexpr, G: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr,
):
    scale_log2 = tl.cast(scale_log2, tl.float32)  # torch.compile passes Python floats as fp64
    t = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    rg, rs, rd = tl.arange(0, BLOCK_G), tl.arange(0, BLOCK_S), tl.arange(0, BLOCK_D)
    mg, ms, md = rg < G, rs < S, rd < D
    row = (b * L + t) * Hq + g * G + rg  # query rows of this token's group
    q = tl.load(Q + row[:, None] * D + rd[None, :], mask=mg[:, None] & md[None, :], other=0.0)
    slot = ((b * L + t) * Hkv + g) * TOPK
    mk = ms[:, None] & md[None, :]
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for j in range(TOPK):
        c = tl.load(IDX + slot + j).to(tl.int64)
        w = tl.where(c >= 0, tl.load(W + slot + j), 0.0)  # an empty slot reads chunk 0 with weight 0
        krow = b * NKV + tl.maximum(c, 0) * S + rs
        kv = (krow[:, None] * Hkv + g) * D + rd[None, :]
        k = tl.load(K + kv, mask=mk, other=0.0)
        v = tl.load(V + kv, mask=mk, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale_log2  # [BLOCK_G, BLOCK_S], log2 domain
        s = tl.where(ms[None, :], s, float("-inf"))
        m = tl.max(s, 1)
        p = tl.exp2(s - m[:, None])
        den = tl.sum(p, 1)
        o = tl.dot(p.to(v.dtype), v)
        acc += o * (w / den)[:, None]
    tl.store(OUT + row[:, None] * D + rd[None, :], acc.to(OUT.dtype.element_ty), mask=mg[:, None] & md[None, :])


@_tuned(_CFWD_CONFIGS, key=["S", "D", "G", "TOPK"])
@triton.jit
def _hsa_fwd_chunk_kernel(
    Q, K, V, W, ENT, ITEM_KEY, ITEM_START, ITEM_END, OP,
    # q [B,L,Hq,D]; k/v [B,NKV,Hkv,D]; w [P]; op [P,G,D]: each pair's weighted chunk output
    scale_log2, NKV, NCHUNK,
    Hq: tl.constexpr, Hkv: tl.constexpr, TOPK: tl.constexpr,
    S: tl.constexpr, D: tl.constexpr, G: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr, ROWS: tl.constexpr,
):
    scale_log2 = tl.cast(scale_log2, tl.float32)
    i = tl.program_id(0).to(tl.int64)
    key = tl.load(ITEM_KEY + i).to(tl.int64)  # (b * Hkv + g) * NCHUNK + c
    e_start = tl.load(ITEM_START + i)
    e_end = tl.load(ITEM_END + i)
    c = key % NCHUNK
    g = (key // NCHUNK) % Hkv
    b = key // (NCHUNK * Hkv)
    rs, rd = tl.arange(0, BLOCK_S), tl.arange(0, BLOCK_D)
    ms, md = rs < S, rd < D
    kv = ((b * NKV + c * S + rs)[:, None] * Hkv + g) * D + rd[None, :]
    k = tl.load(K + kv, mask=ms[:, None] & md[None, :], other=0.0)
    v = tl.load(V + kv, mask=ms[:, None] & md[None, :], other=0.0)
    rr = tl.arange(0, ((ROWS + BLOCK_G - 1) // BLOCK_G) * BLOCK_G)
    re, rh = rr // BLOCK_G, rr % BLOCK_G
    for e0 in range(e_start, e_end, (ROWS + BLOCK_G - 1) // BLOCK_G):
        e = e0 + re
        me = (e < e_end) & (rh < G)
        p = tl.load(ENT + e, mask=me, other=0).to(tl.int64)
        qrow = (p // (Hkv * TOPK)) * Hq + g * G + rh
        mq = me[:, None] & md[None, :]
        q = tl.load(Q + qrow[:, None] * D + rd[None, :], mask=mq, other=0.0)
        w = tl.load(W + p, mask=me, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale_log2
        s = tl.where(ms[None, :], s, float("-inf"))
        pr = tl.exp2(s - tl.max(s, 1)[:, None])
        pr = pr * (w / tl.sum(pr, 1))[:, None]  # one softmax per chunk, times the pair's fusion weight
        o = tl.dot(pr.to(v.dtype), v)
        tl.store(OP + (p * G + rh)[:, None] * D + rd[None, :], o.to(OP.dtype.element_ty), mask=mq)


@_tuned(_BWD_CONFIGS, key=["S", "D", "G", "TOPK"])
@triton.jit
def _hsa_bwd_kernel(
    Q, K, V, W, DO, ENT, ITEM_KEY, ITEM_START, ITEM_END, DQP, DELTA, DKP, DVP,
    # q/do [B,L,Hq,D]; k/v [B,NKV,Hkv,D]; w [P]; dqp [P,G,D]; delta [P,G]; dkp/dvp [NI,S,D] fp32
    scale_log2, scale, NKV, NCHUNK,
    Hq: tl.constexpr, Hkv: tl.constexpr, TOPK: tl.constexpr,
    S: tl.constexpr, D: tl.constexpr, G: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr, ROWS: tl.constexpr,
):
    scale_log2 = tl.cast(scale_log2, tl.float32)
    scale = tl.cast(scale, tl.float32)
    i = tl.program_id(0).to(tl.int64)
    key = tl.load(ITEM_KEY + i).to(tl.int64)  # (b * Hkv + g) * NCHUNK + c
    e_start = tl.load(ITEM_START + i)
    e_end = tl.load(ITEM_END + i)
    c = key % NCHUNK
    g = (key // NCHUNK) % Hkv
    b = key // (NCHUNK * Hkv)
    rs, rd = tl.arange(0, BLOCK_S), tl.arange(0, BLOCK_D)
    ms, md = rs < S, rd < D
    mk = ms[:, None] & md[None, :]
    kv = ((b * NKV + c * S + rs)[:, None] * Hkv + g) * D + rd[None, :]
    k = tl.load(K + kv, mask=mk, other=0.0)
    v = tl.load(V + kv, mask=mk, other=0.0)
    dk = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    # a tile of rows = (pairs of this item) x (the G query heads of the group)
    rr = tl.arange(0, ((ROWS + BLOCK_G - 1) // BLOCK_G) * BLOCK_G)
    re, rh = rr // BLOCK_G, rr % BLOCK_G
    for e0 in range(e_start, e_end, (ROWS + BLOCK_G - 1) // BLOCK_G):
        e = e0 + re
        me = (e < e_end) & (rh < G)
        p = tl.load(ENT + e, mask=me, other=0).to(tl.int64)
        qrow = (p // (Hkv * TOPK)) * Hq + g * G + rh  # (b * L + t) * Hq + g * G + h
        mq = me[:, None] & md[None, :]
        q = tl.load(Q + qrow[:, None] * D + rd[None, :], mask=mq, other=0.0)
        do = tl.load(DO + qrow[:, None] * D + rd[None, :], mask=mq, other=0.0)
        w = tl.load(W + p, mask=me, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale_log2
        s = tl.where(ms[None, :], s, float("-inf"))
        pr = tl.exp2(s - tl.max(s, 1)[:, None])
        pr = pr / tl.sum(pr, 1)[:, None]  # the chunk is a whole softmax row: recomputed exactly
        dp = tl.dot(do, tl.trans(v))
        delta = tl.sum(pr * dp, 1)  # <dO, o_chunk> per query row
        tl.store(DELTA + p * G + rh, delta, mask=me)
        pw = pr * w[:, None]
        ds = pw * (dp - delta[:, None])
        dv += tl.dot(tl.trans(pw.to(do.dtype)), do)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
        dq = tl.dot(ds.to(k.dtype), k) * scale
        tl.store(DQP + (p * G + rh)[:, None] * D + rd[None, :], dq.to(DQP.dtype.element_ty), mask=mq)
    part = (i * S + rs[:, None]) * D + rd[None, :]
    tl.store(DKP + part, dk * scale, mask=mk)
    tl.store(DVP + part, dv, mask=mk)


@triton.jit
def _sum_slots_kernel(
    DQP, IDX, DQ,  # dqp [B,L,Hkv,TOPK,G,D]; idx [B,L,Hkv,TOPK]; dq [B,L,Hkv,G,D]
    NGRP,
    TOPK: tl.constexpr, G: tl.constexpr, D: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dq of a (token, KV head) = sum of its filled slots' partials, in slot order."""
    rr = tl.arange(0, BLOCK_T * BLOCK_G)
    grp = tl.program_id(0).to(tl.int64) * BLOCK_T + rr // BLOCK_G  # (b * L + t) * Hkv + g
    h = rr % BLOCK_G
    rd = tl.arange(0, BLOCK_D)
    mrow = (grp < NGRP) & (h < G)
    md = rd < D
    acc = tl.zeros([BLOCK_T * BLOCK_G, BLOCK_D], dtype=tl.float32)
    for j in range(TOPK):
        c = tl.load(IDX + grp * TOPK + j, mask=mrow, other=-1)
        ok = mrow & (c >= 0)
        acc += tl.load(DQP + ((grp * TOPK + j) * G + h)[:, None] * D + rd[None, :], mask=ok[:, None] & md[None, :],
                       other=0.0).to(tl.float32)
    tl.store(DQ + (grp * G + h)[:, None] * D + rd[None, :], acc.to(DQ.dtype.element_ty),
             mask=mrow[:, None] & md[None, :])


def _launch_args(q: torch.Tensor, k: torch.Tensor, indices: torch.Tensor, chunk_size: int) -> dict:
    B, L, Hq, D = q.shape
    Hkv, TOPK = k.shape[2], indices.shape[-1]
    G = Hq // Hkv
    return dict(Hq=Hq, Hkv=Hkv, TOPK=TOPK, S=chunk_size, D=D, G=G,
                BLOCK_S=_block(chunk_size), BLOCK_D=_block(D), BLOCK_G=_block(G))


def _check_index(index: ChunkIndex, idx: torch.Tensor, n_chunks: int) -> None:
    if index.n_chunks != n_chunks or index.entries.numel() != idx.numel():
        raise ValueError("the chunk index was built for other selections")


def _sum_slots(part: torch.Tensor, idx: torch.Tensor, out: torch.Tensor, G: int, D: int) -> torch.Tensor:
    """out `[B, L, Hkv * G, D]` = sum over the filled slots of part `[P, G, D]` (idx `[B, L, Hkv, K]`)."""
    B, L, Hkv, K = idx.shape
    bg = _pow2(G)
    bt = max(1, 64 // bg)
    _sum_slots_kernel[(triton.cdiv(B * L * Hkv, bt),)](part, idx, out, B * L * Hkv, TOPK=K, G=G, D=D,
                                                      BLOCK_T=bt, BLOCK_G=bg, BLOCK_D=_pow2(D))
    return out


class _HSAAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, weights, indices, chunk_size, scale, index, layout):
        B, L, Hq, D = q.shape
        NKV = k.shape[1]
        n_chunks = NKV // chunk_size
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        w = weights.float().contiguous()
        idx = indices.to(torch.int32).contiguous()
        meta = _launch_args(q, k, idx, chunk_size)
        Hkv, TOPK, G = meta["Hkv"], meta["TOPK"], meta["G"]
        if not (L and TOPK and n_chunks):  # no chunk anywhere: every slot is empty
            o = torch.zeros_like(q)
        elif layout == "token":
            o = torch.empty_like(q)
            _hsa_fwd_kernel[(L, Hkv, B)](q, k, v, w, idx, o, scale * LOG2E, L, NKV, **meta)
        else:
            index = index if index is not None else chunk_query_index(idx, n_chunks)
            _check_index(index, idx, n_chunks)
            op = torch.empty(B * L * Hkv * TOPK, G, D, device=q.device, dtype=q.dtype)  # unfilled slots never read
            extra = _BWD_DEFAULT if INTERPRET else {}
            _hsa_fwd_chunk_kernel[(index.item_start.numel(),)](
                q, k, v, w, index.entries, index.item_key, index.item_start, index.item_end, op,
                scale * LOG2E, NKV, n_chunks, **{**meta, "BLOCK_G": _pow2(G)}, **extra)
            o = _sum_slots(op, idx, torch.empty_like(q), G, D)
        ctx.save_for_backward(q, k, v, w, idx)
        ctx.chunk_size, ctx.scale, ctx.weights_dtype, ctx.index = chunk_size, scale, weights.dtype, index
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, w, idx = ctx.saved_tensors
        S, scale = ctx.chunk_size, ctx.scale
        B, L, Hq, D = q.shape
        NKV = k.shape[1]
        n_chunks = NKV // S
        meta = _launch_args(q, k, idx, S)
        Hkv, TOPK, G = meta["Hkv"], meta["TOPK"], meta["G"]
        if not (n_chunks and L and TOPK):
            return (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v),
                    torch.zeros_like(w).to(ctx.weights_dtype), None, None, None, None, None)
        do = do.contiguous()
        index = ctx.index if ctx.index is not None else chunk_query_index(idx, n_chunks)
        _check_index(index, idx, n_chunks)
        n_items = index.item_start.numel()
        dqp = torch.empty(B * L * Hkv * TOPK, G, D, device=q.device, dtype=q.dtype)  # unfilled slots never read
        delta = torch.zeros(B * L * Hkv * TOPK, G, device=q.device, dtype=torch.float32)
        dkp = torch.empty(n_items, S, D, device=q.device, dtype=torch.float32)
        dvp = torch.empty_like(dkp)
        bwd_meta = {**meta, "BLOCK_G": _pow2(G)}
        extra = _BWD_DEFAULT if INTERPRET else {}
        _hsa_bwd_kernel[(n_items,)](q, k, v, w, do, index.entries, index.item_key, index.item_start, index.item_end,
                                    dqp, delta, dkp, dvp, scale * LOG2E, scale, NKV, n_chunks, **bwd_meta, **extra)
        dq = _sum_slots(dqp, idx, torch.empty_like(q), G, D)
        dk = _sum_items(dkp, index, torch.empty_like(k), S, D, 1.0)
        dv = _sum_items(dvp, index, torch.empty_like(v), S, D, 1.0)
        dw = delta.view(B, L, Hkv, TOPK, G).sum(-1)
        return dq, dk, dv, dw.to(ctx.weights_dtype), None, None, None, None, None


def hsa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    chunk_size: int,
    scale: float | None = None,
    index: ChunkIndex | None = None,
    layout: str = "token",
) -> torch.Tensor:
    """Triton HSA retrieval attention, differentiable in q, k, v and weights.

    q `[B, L, Hq, D]`; k, v `[B, C * S, Hkv, D]`; weights, indices `[B, L, Hkv, K]`
    (indices int, -1 = empty slot). Same contract as `hsa_naive.hsa_attention_naive`.
    `index`: the chunk -> pairs index of `indices` when the caller has it (`hsa_select`
    returns it); otherwise it is built here. `layout`: the forward's loop, "token" (a program
    per token and KV head, the default: faster than "chunk" in `benchmarks/hsa_bench.py`, and
    no partial buffer) or "chunk" (a program per work item of one chunk); the backward is
    chunk-major either way.
    """
    if layout not in ("chunk", "token"):
        raise ValueError(f"layout {layout!r} is not 'chunk' or 'token'")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads {q.shape[2]} are not a multiple of KV heads {k.shape[2]}")
    if k.shape[1] % chunk_size:
        raise ValueError(f"{k.shape[1]} key rows are not whole chunks of {chunk_size}")
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    dt = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)  # tl.dot wants one dtype
    return _HSAAttention.apply(q.to(dt), k.to(dt), v.to(dt), weights, indices, chunk_size, float(scale), index,
                               layout)
