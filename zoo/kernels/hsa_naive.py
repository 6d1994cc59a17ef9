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


def chunk_spans(x: torch.Tensor, chunk_size: int, overlap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per chunk, the rows its attention reads: the last `overlap` rows of the chunk before it,
    then its own S. x `[B, C * S, Hkv, D]` -> spans `[B, Hkv, C, overlap + S, D]` (float32) and
    `[C, overlap + S]` bool, False where chunk 0 has no rows before it."""
    B, N, Hkv, D = x.shape
    S = chunk_size
    C = N // S
    xc = x.float().view(B, C, S, Hkv, D)
    ok = torch.ones(C, overlap + S, dtype=torch.bool, device=x.device)
    if overlap:
        prev = torch.cat([xc.new_zeros(B, 1, overlap, Hkv, D), xc[:, :-1, S - overlap:]], 1)
        xc = torch.cat([prev, xc], 2)
        ok[0, :overlap] = False
    return xc.permute(0, 3, 1, 2, 4), ok


def _selected(q, k, v, indices, chunk_size: int, scale: float, overlap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's scaled logits against the rows of its selected chunks' spans, -inf where a
    span has no row (chunk 0's overlap), `[B, Hkv, L, G, K, O + S]`, and those rows' values
    `[B, Hkv, L, K, O + S, D]` (float32; empty slots read chunk 0)."""
    B, L, Hq, D = q.shape
    Hkv = k.shape[2]
    kc, ok = chunk_spans(k, chunk_size, overlap)  # [B, Hkv, C, O + S, D]
    vc, _ = chunk_spans(v, chunk_size, overlap)
    idx = indices.long().clamp_min(0).permute(0, 2, 1, 3)  # [B, Hkv, L, K]
    bi = torch.arange(B, device=q.device)[:, None, None, None]
    gi = torch.arange(Hkv, device=q.device)[None, :, None, None]
    kg, vg = kc[bi, gi, idx], vc[bi, gi, idx]  # [B, Hkv, L, K, O + S, D]
    qg = q.float().view(B, L, Hkv, Hq // Hkv, D).permute(0, 2, 1, 3, 4)  # [B, Hkv, L, G, D]
    logits = torch.einsum("bhlgd,bhlksd->bhlgks", qg, kg) * scale
    return logits.masked_fill(~ok[idx][:, :, :, None], float("-inf")), vg


def hsa_attention_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    chunk_size: int,
    scale: float | None = None,
    overlap: int = 0,
) -> torch.Tensor:
    """Per-chunk softmax attention fused by weights.

    q `[B, L, Hq, D]`; k, v `[B, C * S, Hkv, D]` (chunk c is rows c*S .. c*S+S-1);
    weights `[B, L, Hkv, K]` (float); indices `[B, L, Hkv, K]` (int, -1 = empty slot,
    weighted 0). `overlap`: a selected chunk's attention also reads the last `overlap` rows of
    the chunk before it (`chunk_spans`; 0 is the paper's). Returns `[B, L, Hq, D]` in q's
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
    logits, vg = _selected(q, k, v, indices, S, scale, overlap)
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint fusion: one softmax over the tokens of all selected chunks, each chunk's logits
    shifted by its retrieval score (a deviation from the paper's per-chunk softmax, tested in
    `experiments/hsa_extrapolation.toml`):

        o[t, h] = sum_j sum_{i in c_j} softmax_{(j, i)}(s[t, g, j] + scale * q[t, h] . k_i) v_i

    Per chunk this is the paper's output weighted by softmax_j(s_j + lse_j), lse_j the chunk's
    attention log-mass: a chunk that matches the landmark query but holds no key the token
    attends to loses weight to one that does. Shapes and `overlap` as `hsa_attention_naive`, with `scores`
    `[B, L, Hkv, K]` (float, natural-log units; empty slots ignored) instead of weights.
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
    logits, vg = _selected(q, k, v, indices, S, scale, overlap)
    bias = scores.float().masked_fill(~valid, float("-inf")).permute(0, 2, 1, 3)  # [B, Hkv, L, K]
    logits = logits + bias[:, :, :, None, :, None]
    any_valid = valid.permute(0, 2, 1, 3).any(-1)[:, :, :, None, None, None]  # a token with no chunk: all 0
    logits = torch.where(any_valid, logits, torch.zeros_like(logits))
    p = logits.flatten(-2).softmax(-1).view_as(logits) * any_valid  # [B, Hkv, L, G, K, O + S]
    o = torch.einsum("bhlgks,bhlksd->bhlgd", p, vg)
    share = p.sum(-1).mean(3).permute(0, 2, 1, 3)  # [B, L, Hkv, K]
    return o.permute(0, 2, 1, 3, 4).reshape(B, L, Hq, D).to(q.dtype), share
