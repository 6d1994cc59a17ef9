"""Retrieval attention of hierarchical sparse attention (HSA), plain PyTorch reference.

Hu et al. 2025, "Every Token Counts: Generalizing 16M Ultra-Long Context in Large Language
Models" (HSA-UltraLong, arXiv:2511.23319), and Hu et al. 2025, "Hardware-aligned
Hierarchical Sparse Attention" (arXiv:2504.16795).

Each token t, for each KV head g, has selected up to K complete chunks (indices, -1 = empty
slot) with fusion weights w. Its query heads of group g attend inside every selected chunk
separately (one softmax per chunk, no mask inside a complete chunk) and the per-chunk outputs
are summed with the weights:

    o[t, h] = sum_j w[t, g, j] * softmax(scale * q[t, h] . K_{c_j}^T) V_{c_j},   g = h // G

This gather-based version is the oracle the Triton kernel (`hsa_triton.py`) is tested against.
"""

from __future__ import annotations

import torch


def chunk_spans(x: torch.Tensor, chunk_size: int, overlap: int,
                lookahead: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per chunk, the rows its attention reads: the last `overlap` rows of the chunk before it,
    its own S, then the first `lookahead` rows of the chunk after it. x `[B, C * S, Hkv, D]` ->
    spans `[B, Hkv, C, overlap + S + lookahead, D]` (float32) and `[C, overlap + S + lookahead]`
    bool, False where a span has no row (chunk 0's overlap, the last chunk's lookahead)."""
    B, N, Hkv, D = x.shape
    S = chunk_size
    C = N // S
    xc = x.float().view(B, C, S, Hkv, D)
    ok = torch.ones(C, overlap + S + lookahead, dtype=torch.bool, device=x.device)
    parts = [xc]
    if overlap:
        parts.insert(0, torch.cat([xc.new_zeros(B, 1, overlap, Hkv, D), xc[:, :-1, S - overlap:]], 1))
        ok[0, :overlap] = False
    if lookahead:
        parts.append(torch.cat([xc[:, 1:, :lookahead], xc.new_zeros(B, 1, lookahead, Hkv, D)], 1))
        ok[C - 1, overlap + S:] = False
    return torch.cat(parts, 2).permute(0, 3, 1, 2, 4), ok


def _selected(q, k, v, indices, chunk_size: int, scale: float, overlap: int, lookahead: int = 0,
              first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's scaled logits against the rows of its selected chunks' spans, -inf where a
    span has no row (chunk 0's overlap) or where the next chunk is not yet complete before the
    token (token t is at position first + t), `[B, Hkv, L, G, K, O + S + A]`, and those rows' values
    `[B, Hkv, L, K, O + S + A, D]` (float32; empty slots read chunk 0)."""
    B, L, Hq, D = q.shape
    Hkv = k.shape[2]
    kc, ok = chunk_spans(k, chunk_size, overlap, lookahead)  # [B, Hkv, C, O + S + A, D]
    vc, _ = chunk_spans(v, chunk_size, overlap, lookahead)
    idx = indices.long().clamp_min(0).permute(0, 2, 1, 3)  # [B, Hkv, L, K]
    bi = torch.arange(B, device=q.device)[:, None, None, None]
    gi = torch.arange(Hkv, device=q.device)[None, :, None, None]
    kg, vg = kc[bi, gi, idx], vc[bi, gi, idx]  # [B, Hkv, L, K, O + S + A, D]
    qg = q.float().view(B, L, Hkv, Hq // Hkv, D).permute(0, 2, 1, 3, 4)  # [B, Hkv, L, G, D]
    logits = torch.einsum("bhlgd,bhlksd->bhlgks", qg, kg) * scale
    ok = ok[idx]  # [B, Hkv, L, K, O + S + A]
    if lookahead:  # the next chunk only once the token could select it (its keys saw the whole chunk)
        pos = first + torch.arange(L, device=q.device)[None, None, :, None]
        ok = torch.cat([ok[..., :-lookahead], ok[..., -lookahead:] & ((idx + 2) * chunk_size <= pos)[..., None]], -1)
    return logits.masked_fill(~ok[:, :, :, None], float("-inf")), vg


def hsa_attention_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    chunk_size: int,
    scale: float | None = None,
    overlap: int = 0,
    lookahead: int = 0,
    first: int = 0,
) -> torch.Tensor:
    """Per-chunk softmax attention fused by weights.

    q `[B, L, Hq, D]`; k, v `[B, C * S, Hkv, D]` (chunk c is rows c*S .. c*S+S-1);
    weights `[B, L, Hkv, K]` (float); indices `[B, L, Hkv, K]` (int, -1 = empty slot,
    weighted 0). `overlap`: a selected chunk's attention also reads the last `overlap` rows of
    the chunk before it, `lookahead` the first rows of the chunk after it once that chunk is
    complete before the token, token t being at position first + t (`chunk_spans`; 0 and 0 are
    the paper's). Returns `[B, L, Hq, D]` in q's
    dtype; computes in float32.
    """
    B, L, Hq, D = q.shape
    S, K = chunk_size, indices.shape[-1]
    C = k.shape[1] // S
    scale = scale if scale is not None else D**-0.5
    valid = indices >= 0
    if C == 0 or K == 0 or not bool(valid.any()):
        # no complete chunk is visible anywhere; keep the graph connected to the weights
        return (q * 0 + (weights.sum() * 0).to(q.dtype)).to(q.dtype)
    logits, vg = _selected(q, k, v, indices, S, scale, overlap, lookahead, first)
    per_chunk = torch.einsum("bhlgks,bhlksd->bhlgkd", logits.softmax(-1), vg)  # one output per selected chunk
    w = (weights.float() * valid).permute(0, 2, 1, 3)  # [B, Hkv, L, K]
    o = torch.einsum("bhlk,bhlgkd->bhlgd", w, per_chunk)
    return o.permute(0, 2, 1, 3, 4).reshape(B, L, Hq, D).to(q.dtype)


def hsa_attention_joint(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scores: torch.Tensor,
    indices: torch.Tensor,
    chunk_size: int,
    scale: float | None = None,
    overlap: int = 0,
    lookahead: int = 0,
    first: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint fusion: one softmax over the tokens of all selected chunks, each chunk's logits
    shifted by its retrieval score (a deviation from the paper's per-chunk softmax, tested in
    `experiments/hsa_extrapolation.toml`):

        o[t, h] = sum_j sum_{i in c_j} softmax_{(j, i)}(s[t, g, j] + scale * q[t, h] . k_i) v_i

    Per chunk this is the paper's output weighted by softmax_j(s_j + lse_j), lse_j the chunk's
    attention log-mass: a chunk that matches the landmark query but holds no key the token
    attends to loses weight to one that does. Shapes, `overlap`, `lookahead` and `first` as
    `hsa_attention_naive`, with `scores` `[B, L, Hkv, K]` (float, natural-log units; empty slots
    ignored) instead of weights.
    Returns the output `[B, L, Hq, D]` (q's dtype) and each slot's share of the softmax, averaged
    over the query heads of its group, `[B, L, Hkv, K]` float32 (0 on empty slots).
    """
    B, L, Hq, D = q.shape
    S, K = chunk_size, indices.shape[-1]
    C = k.shape[1] // S
    scale = scale if scale is not None else D**-0.5
    valid = indices >= 0
    if C == 0 or K == 0 or not bool(valid.any()):
        zero = (q * 0 + (scores.sum() * 0).to(q.dtype)).to(q.dtype)
        return zero, torch.zeros(indices.shape, device=q.device, dtype=torch.float32)
    logits, vg = _selected(q, k, v, indices, S, scale, overlap, lookahead, first)
    bias = scores.float().masked_fill(~valid, float("-inf")).permute(0, 2, 1, 3)  # [B, Hkv, L, K]
    logits = logits + bias[:, :, :, None, :, None]
    any_valid = valid.permute(0, 2, 1, 3).any(-1)[:, :, :, None, None, None]  # a token with no chunk: all 0
    logits = torch.where(any_valid, logits, torch.zeros_like(logits))
    p = logits.flatten(-2).softmax(-1).view_as(logits) * any_valid  # [B, Hkv, L, G, K, O + S]
    o = torch.einsum("bhlgks,bhlksd->bhlgd", p, vg)
    share = p.sum(-1).mean(3).permute(0, 2, 1, 3)  # [B, L, Hkv, K]
    return o.permute(0, 2, 1, 3, 4).reshape(B, L, Hq, D).to(q.dtype), share
