"""Rotary position embedding (Su et al. 2021, RoFormer, arXiv:2104.09864) for q and k in one fused pass.

The reference is `zoo.positional.apply_rotary` (rotate-half layout, fp32 math, output in the
input's dtype). Run eagerly it reads and writes every element several times (cast, halves,
concatenation, two products, sum, cast back), and autograd repeats that backward. Here one
Triton launch rotates q and k together with the same fp32 math, reading each element once and
writing it once; the backward is the transposed rotation through the same kernel, so only
the cos/sin tables are kept for it:

    forward                      backward
    y1 = x1 c1 - x2 s1           dx1 = dy1 c1 + dy2 s2
    y2 = x2 c2 + x1 s2           dx2 = dy2 c2 - dy1 s1

with x1, x2 the two halves of the head dimension and c, s the halves of the tables (equal for
RoPE, where the backward is the rotation by -theta; xPos and YaRN scale both halves alike).

Rows are visited in memory order (q and k usually arrive as `[B, L, H, Dh]` storage viewed as
`[B, H, L, Dh]`) and the outputs keep the input's strides, so the attention kernel that follows
sees the same layout as without the rotation.

`rotate_pair` takes this path on CUDA; the attention mixers fall back to the reference on CPU,
without Triton and under torch.compile (where Inductor fuses the reference by itself). Tests
run the kernel on CPU under `TRITON_INTERPRET=1` (set before triton is imported).

Shapes: q `[B, H, Lq, Dh]`, k `[B, H, Lk, Dh]`, tables `[Lq, Dh]` and `[Lk, Dh]` (float32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from zoo.positional import apply_rotary

TILE = 2048  # elements of one half-row tile per program: rows x half-width, about 16 fp32 values per thread
NUM_WARPS = 4


@triton.jit
def _rotate_rows(X, Y, COS, SIN, pid, n_rows, N1, N2, sx0, sx1, sx2, sy0, sy1, sy2,
                 POS: tl.constexpr, HALF: tl.constexpr, BACKWARD: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    """BLOCK_R rows of one tensor; row r = (i0, i1, i2) over the three leading dims in memory order,
    the position is index POS of the three."""
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    live = rows < n_rows
    i2 = rows % N2
    i1 = (rows // N2) % N1
    i0 = rows // N2 // N1
    if POS == 0:
        p = i0
    elif POS == 1:
        p = i1
    else:
        p = i2
    i0, i1, i2 = i0.to(tl.int64), i1.to(tl.int64), i2.to(tl.int64)  # offsets of long caches pass 2^31
    cols = tl.arange(0, BLOCK_H)
    if HALF == BLOCK_H:  # no column mask: whole half-rows load as vectors
        mask = live[:, None]
    else:
        mask = live[:, None] & (cols < HALF)[None, :]
    xo = (i0 * sx0 + i1 * sx1 + i2 * sx2)[:, None] + cols[None, :]
    yo = (i0 * sy0 + i1 * sy1 + i2 * sy2)[:, None] + cols[None, :]
    to = (p.to(tl.int64) * (2 * HALF))[:, None] + cols[None, :]
    x1 = tl.load(X + xo, mask=mask).to(tl.float32)
    x2 = tl.load(X + xo + HALF, mask=mask).to(tl.float32)
    c1 = tl.load(COS + to, mask=mask)
    c2 = tl.load(COS + to + HALF, mask=mask)
    s1 = tl.load(SIN + to, mask=mask)
    s2 = tl.load(SIN + to + HALF, mask=mask)
    if BACKWARD:
        y1 = x1 * c1 + x2 * s2
        y2 = x2 * c2 - x1 * s1
    else:
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
    tl.store(Y + yo, y1.to(Y.dtype.element_ty), mask=mask)
    tl.store(Y + yo + HALF, y2.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(Q, QO, CQ, SQ, K, KO, CK, SK,
                   q_rows, qN1, qN2, qs0, qs1, qs2, qos0, qos1, qos2,
                   k_rows, kN1, kN2, ks0, ks1, ks2, kos0, kos1, kos2,
                   q_programs,
                   Q_POS: tl.constexpr, K_POS: tl.constexpr, HALF: tl.constexpr, BACKWARD: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    """The first `q_programs` programs take q's rows, the rest k's: one launch for both."""
    pid = tl.program_id(0)
    if pid < q_programs:
        _rotate_rows(Q, QO, CQ, SQ, pid, q_rows, qN1, qN2, qs0, qs1, qs2, qos0, qos1, qos2,
                     Q_POS, HALF, BACKWARD, BLOCK_R, BLOCK_H)
    else:
        _rotate_rows(K, KO, CK, SK, pid - q_programs, k_rows, kN1, kN2, ks0, ks1, ks2, kos0, kos1, kos2,
                     K_POS, HALF, BACKWARD, BLOCK_R, BLOCK_H)


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _rows(x: torch.Tensor, y: torch.Tensor) -> tuple[int, list[int], list[int], list[int], int]:
    """x `[B, H, L, Dh]` as rows over its three leading dims in memory order (largest stride first):
    row count, the sizes of the two inner dims, x's and y's strides in that order, and where L sits."""
    order = sorted(range(3), key=lambda d: -x.stride(d))
    sizes = [x.shape[d] for d in order]
    return (sizes[0] * sizes[1] * sizes[2], sizes[1:], [x.stride(d) for d in order], [y.stride(d) for d in order],
            order.index(2))


def _launch(q, k, cos_q, sin_q, cos_k, sin_k, backward: bool) -> tuple[torch.Tensor, torch.Tensor]:
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    qo, ko = torch.empty_like(q), torch.empty_like(k)  # dense inputs keep their strides
    half = q.shape[-1] // 2
    block_h = max(2, _pow2(half))
    block_r = max(1, TILE // block_h)
    q_rows, (qn1, qn2), qs, qos, q_pos = _rows(q, qo)
    k_rows, (kn1, kn2), ks, kos, k_pos = _rows(k, ko)
    q_programs, k_programs = triton.cdiv(q_rows, block_r), triton.cdiv(k_rows, block_r)
    if q_programs + k_programs == 0:
        return qo, ko
    _rotary_kernel[(q_programs + k_programs,)](
        q, qo, cos_q, sin_q, k, ko, cos_k, sin_k,
        q_rows, qn1, qn2, *qs, *qos,
        k_rows, kn1, kn2, *ks, *kos,
        q_programs,
        Q_POS=q_pos, K_POS=k_pos, HALF=half, BACKWARD=backward, BLOCK_R=block_r, BLOCK_H=block_h,
        num_warps=NUM_WARPS,
    )
    return qo, ko


class _RotaryPair(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos_q, sin_q, cos_k, sin_k):
        ctx.save_for_backward(cos_q, sin_q, cos_k, sin_k)
        return _launch(q, k, cos_q, sin_q, cos_k, sin_k, backward=False)

    @staticmethod
    def backward(ctx, dq, dk):
        dq, dk = _launch(dq, dk, *ctx.saved_tensors, backward=True)
        return dq, dk, None, None, None, None


def fits(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether the kernel covers this call: x `[B, H, L, Dh]` (Dh even, a float type the kernel
    stores) with tables of exactly `[L, Dh]` that need no gradient. Anything else (broadcast
    tables, other ranks, learned angles) is the reference's."""
    return (x.dim() == 4 and x.shape[-1] % 2 == 0 and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and all(t.shape == x.shape[2:] and not t.requires_grad for t in (cos, sin)))


def rotate_pair(q, k, cos_q, sin_q, cos_k, sin_k) -> tuple[torch.Tensor, torch.Tensor]:
    """`(apply_rotary(q, cos_q, sin_q), apply_rotary(k, cos_k, sin_k))` in one fused launch each way
    (forward and backward); the reference where `fits` says the kernel does not cover the call."""
    if not (fits(q, cos_q, sin_q) and fits(k, cos_k, sin_k) and q.shape[-1] == k.shape[-1]
            and q.device == k.device == cos_q.device == cos_k.device):
        return apply_rotary(q, cos_q, sin_q), apply_rotary(k, cos_k, sin_k)
    tables = [t.to(torch.float32).contiguous() for t in (cos_q, sin_q, cos_k, sin_k)]
    return _RotaryPair.apply(q, k, *tables)
