"""FlexAttention (`torch.nn.attention.flex_attention`) for the attention mixers.

Every mask the zoo needs is a band of the query-key distance d = query position - key
position, with the queries at the end of the keys (training: Lq == Lk; chunked inference:
Lq <= Lk, the keys include the cache):

    causal               lo = 0, hi = None
    sliding window W     lo = 0, hi = W
    ReRoPE near / far    [0, w) and [w, None) (each intersected with a window if any)

`band_block_mask` builds the `BlockMask` straight from that block structure (O(blocks),
never a dense L x L mask: an 8K chunk over a 1M-token cache takes megabytes, not gigabytes)
and is cached by shape: all layers of a model, and every training step at the same length,
reuse one mask.

The score and mask functions run on every score of the fused kernel, where head_dim 64 leaves
the elementwise work a large share of the time, so they are written as a user would write them:
int32 index arithmetic (the kernel's own index type; an int64 offset would make every score pay
64-bit arithmetic and conversion) and no offset at all for training shapes (queries and keys
aligned, the common case: exactly the plain causal mask and the plain ALiBi / T5 functions).
Nonzero offsets (chunked inference) are captured as int32 tensors, so chunks of new lengths do
not force recompiles (torch.compile's automatic dynamic shapes take the lengths).

A score function that reads a table per score (T5's bias by distance) adds a [BLOCK_M, BLOCK_N]
float32 gather to every tile, which the compiler pipelines through shared memory like the K and
V tiles: with the default tiles on the H100 (128 x 128, 3 stages at head_dim 64) the kernel
asked for 240 KB, past the 227 KB the hardware has, and did not compile. `TABLE_KERNEL_OPTIONS`
are smaller tiles for such functions (half the gather per stage, forward and backward).

FlexAttention differentiates a captured table by atomic adds from every score of the L x L
matrix into its few entries (T5: 129 per head), which made t5-bias fwd + bwd 36 to 70 times
slower than ALiBi on the H100. `distance_bias_attend` runs the kernel with the table detached
(the kernel's own backward still gives dq, dk, dv) and computes the table's gradient outside it,
exactly, from a band of n - 1 diagonals (`distance_bias_grad`: O(L n) work, matmuls by blocks).

FlexAttention is compiled on CUDA (a fused FlashAttention-2 style Triton kernel). On CPU,
torch runs it eagerly through an unfused path with O(L^2) memory and has no backward, so
the mixers never choose it there; tests call `flex_attend` on CPU without gradients to pin
the score functions and masks against the reference, and give `distance_bias_attend` a
differentiable reference core to pin the table's gradient.

Shapes: q `[B, H, Lq, Dh]`, k/v `[B, H, Lk, Dh]`, lse `[B, H, Lq]` (natural log).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

try:
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
except ImportError:  # torch < 2.5
    BlockMask = flex_attention = None
try:
    from torch.nn.attention.flex_attention import AuxRequest
except ImportError:  # torch < 2.9 returns the lse through return_lse
    AuxRequest = None

BLOCK = 128  # FlexAttention's default sparse block size
DECODE_BELOW = 128  # fewer queries than this run FlexAttention's decoding kernel (Inductor's rule)

ScoreMod = Callable[..., torch.Tensor]


def inference_mode() -> bool:
    """Whether tensors made now would be inference tensors (never under torch.compile, which
    traces no such check: caches keyed by it keep one entry there)."""
    return not torch.compiler.is_compiling() and torch.is_inference_mode_enabled()


def unavailable(device: torch.device) -> str | None:
    """Why FlexAttention cannot back a mixer on `device` (None: it can)."""
    if flex_attention is None:
        return "this torch has no torch.nn.attention.flex_attention (needs torch >= 2.5)"
    if torch.device(device).type != "cuda":
        return "needs CUDA (on CPU torch runs FlexAttention unfused and forward-only)"
    return None


# -- block masks ------------------------------------------------------------------------

def _pack(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[nq, nk]` bool -> counts `[1, 1, nq]` and indices `[1, 1, nq, nk]`, selected blocks first."""
    nk = sel.shape[1]
    order = torch.argsort((~sel).int() * nk + torch.arange(nk, device=sel.device), dim=1)
    return sel.sum(1).int()[None, None], order.int()[None, None]


def causal(b, h, q_idx, kv_idx):
    """Plain causal mask (queries and keys aligned)."""
    return q_idx >= kv_idx


def band_mask_mod(off: int, lo: int, hi: int | None, device) -> Callable:
    """Mask function keeping lo <= q_idx + off - kv_idx < hi (hi None: no bound), int32 throughout."""
    if off == 0 and lo == 0 and hi is None:
        return causal
    off_t, lo_t = _int32(off, device), _int32(lo, device)
    if hi is None:
        def above(b, h, q_idx, kv_idx):
            return q_idx + off_t - kv_idx >= lo_t

        return above
    hi_t = _int32(hi, device)

    def in_band(b, h, q_idx, kv_idx):
        d = q_idx + off_t - kv_idx
        return (d >= lo_t) & (d < hi_t)

    return in_band


def band_block_mask(q_len: int, kv_len: int, lo: int = 0, hi: int | None = None,
                    device: torch.device | str = "cpu") -> BlockMask:
    """The `BlockMask` keeping lo <= (q_idx + kv_len - q_len) - kv_idx < hi (hi None: no bound).

    Made once per shape and device; masks made in inference mode are kept apart (FlexAttention
    saves the mask's tensors for the backward, which inference tensors cannot be)."""
    return _band_block_mask(q_len, kv_len, lo, hi, torch.device(device), inference_mode())


@functools.lru_cache(maxsize=64)
def _band_block_mask(q_len: int, kv_len: int, lo: int, hi: int | None, device: torch.device,
                     inference: bool) -> BlockMask:
    off = kv_len - q_len
    top = hi if hi is not None else q_len + kv_len + 1  # beyond any distance

    qs = torch.arange(0, q_len, BLOCK, device=device)
    ks = torch.arange(0, kv_len, BLOCK, device=device)
    qe = (qs + BLOCK).clamp(max=q_len) - 1
    ke = (ks + BLOCK).clamp(max=kv_len) - 1
    dmin = qs[:, None] + off - ke[None, :]  # a block pair holds every distance in [dmin, dmax]
    dmax = qe[:, None] + off - ks[None, :]
    touches = (dmax >= lo) & (dmin < top)
    # ragged tail blocks are never "full": the kernel must apply the mask there
    ragged = (qe - qs + 1 < BLOCK)[:, None] | (ke - ks + 1 < BLOCK)[None, :]
    full = (dmin >= lo) & (dmax < top) & ~ragged
    num, idx = _pack(touches & ~full)
    full_num, full_idx = _pack(full)

    return BlockMask.from_kv_blocks(num, idx, full_num, full_idx, BLOCK_SIZE=BLOCK,
                                    mask_mod=band_mask_mod(off, lo, hi, device), seq_lengths=(q_len, kv_len))


# -- score modifications --------------------------------------------------------------------

def _int32(value: int, device) -> torch.Tensor:
    return _int32_cached(value, torch.device(device), inference_mode())


@functools.lru_cache(maxsize=256)
def _int32_cached(value: int, device: torch.device, inference: bool) -> torch.Tensor:
    # made once: a host-to-device copy per call would stall the host behind the queued GPU work
    return torch.tensor(value, dtype=torch.int32, device=device)


def alibi_score_mod(slopes: torch.Tensor, offset: int) -> ScoreMod:
    """ALiBi: score - m_h * d (Press et al. 2022). `slopes` `[H]` float32; d = q_idx + offset - kv_idx."""
    if offset == 0:
        def aligned(score, b, h, q_idx, kv_idx):
            return score - slopes[h] * (q_idx - kv_idx)

        return aligned
    off = _int32(offset, slopes.device)

    def shifted(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (q_idx + off - kv_idx)

    return shifted


def distance_bias_score_mod(bias: torch.Tensor, offset: int) -> ScoreMod:
    """score + bias[h, min(d, n - 1)] for a per-head bias by distance `[H, n]` (T5's buckets,
    unrolled over distances 0 .. n - 1; the last column holds every longer distance), with
    d = q_idx + offset - kv_idx. Run it with `TABLE_KERNEL_OPTIONS`, and through
    `distance_bias_attend` when `bias` needs a gradient (FlexAttention would differentiate it
    with atomic adds from every score)."""
    last = bias.shape[1] - 1
    if offset == 0:
        def aligned(score, b, h, q_idx, kv_idx):
            return score + bias[h, torch.clamp(q_idx - kv_idx, 0, last)]

        return aligned
    off = _int32(offset, bias.device)

    def shifted(score, b, h, q_idx, kv_idx):
        return score + bias[h, torch.clamp(q_idx + off - kv_idx, 0, last)]

    return shifted


# Tiles for score functions that read a table per score: forward 128 x 64 (BLOCK_M x BLOCK_N),
# backward 64 x 64 in both of its loops (BLOCK_M1/N1: dK and dV, BLOCK_M2/N2: dQ), 3 stages, 4 warps.
# At head_dim 64 that is, by our count of the tiles, about half the H100's shared memory. Keys without
# a fwd_/bwd_ prefix apply to both passes in every torch that has FlexAttention. A detached table
# (`distance_bias_attend`) has no gradient buffer, but both passes still gather it per tile, which
# is what the default tiles did not fit; these stay until the defaults are shown to fit.
TABLE_KERNEL_OPTIONS = {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_M1": 64, "BLOCK_N1": 64, "BLOCK_M2": 64,
                        "BLOCK_N2": 64, "num_stages": 3, "num_warps": 4}


# -- the kernel -------------------------------------------------------------------------------

@functools.cache
def compiled_flex_attention():
    """`flex_attention` under `torch.compile`, made once for the process (the mixers and the bench peers)."""
    # one compiled entry per (score function, mask, dtype, grad mode, return_lse) and later one
    # dynamic-shape entry each: a hybrid model evaluated at several lengths passes torch's default
    # of 8, after which it would silently run the unfused eager path
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), 64))
    return torch.compile(flex_attention)


def flex_attend(q, k, v, *, lo: int = 0, hi: int | None = None, score_mod: ScoreMod | None = None,
                return_lse: bool = False, kernel_options: dict | None = None):
    """FlexAttention over the distance band [lo, hi) with an optional score modification and
    kernel options (e.g. `TABLE_KERNEL_OPTIONS`).

    Returns o `[B, H, Lq, Dh]`, and lse `[B, H, Lq]` (float32, -inf for rows with no keys)
    when `return_lse`."""
    mask = band_block_mask(q.shape[2], k.shape[2], lo, hi, q.device)
    kwargs = {"score_mod": score_mod, "block_mask": mask}
    if kernel_options is not None:
        kwargs["kernel_options"] = dict(kernel_options)
        if q.shape[2] < DECODE_BELOW and "BLOCK_M" in kernel_options:
            # few queries run the decoding kernel, whose query tile covers them all: the size it
            # would choose itself (also valid for the main kernel, should Inductor pick that)
            kwargs["kernel_options"]["BLOCK_M"] = max(16, 1 << (q.shape[2] - 1).bit_length())
    if return_lse:
        kwargs.update({"return_aux": AuxRequest(lse=True)} if AuxRequest is not None else {"return_lse": True})
    if q.is_cuda:
        out = compiled_flex_attention()(q, k, v, **kwargs)
    else:
        with warnings.catch_warnings():  # eager CPU use is deliberate (tests, no gradients)
            warnings.simplefilter("ignore")
            out = flex_attention(q, k, v, **kwargs)
    if not return_lse:
        return out
    o, aux = out
    return o, (aux.lse if AuxRequest is not None else aux)


def merge_partials(o1, lse1, o2, lse2):
    """Combine two softmax attentions over disjoint key sets into one (log-sum-exp weights).
    Each side must be [B, H, L, Dh] with its lse; at least one side has keys in every row."""
    m = torch.maximum(lse1, lse2)
    w1, w2 = torch.exp(lse1 - m)[..., None], torch.exp(lse2 - m)[..., None]
    return ((o1.float() * w1 + o2.float() * w2) / (w1 + w2)).to(o1.dtype)


# -- a table by distance, differentiated outside the kernel ----------------------------------------

def _rows(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """x[:, :, start:stop] with zero rows where the range leaves x (start <= x.shape[2])."""
    n = x.shape[2]
    return F.pad(x[:, :, max(start, 0):min(stop, n)], (0, 0, max(-start, 0), max(stop - n, 0)))


def distance_bias_grad(q, k, v, o, lse, do, bias, hi: int | None = None, scale: float | None = None,
                       block: int = BLOCK, budget: int = 1 << 24) -> torch.Tensor:
    """The gradient of `bias` `[H, n]` as `distance_bias_score_mod` reads it, given the attention's
    inputs, its output o, lse `[B, H, Lq]` and the output's gradient do (queries at the end of the
    keys, band [0, hi)).

    With P the probabilities, the scaled scores' gradient is dS = P * (do v^T - rowsum(do * o)), and
    d bias[h, d] = sum over (b, i) of dS[b, h, i, i + off - d]: a band of n - 1 diagonals for
    d < n - 1, computed by blocks of `block` queries against the keys up to n - 2 before them (P
    recomputed from q, k, bias and lse). Each row of dS sums to zero over the keys it sees, so the
    last entry, shared by every longer distance, gets minus the sum of the others. O(L n) work;
    transients of about `budget` elements each. Returns `[H, n]` in bias's dtype.

    The products run in float32; for bf16/fp16 inputs through TF32 tensor cores, which hold
    those values exactly (10 mantissa bits), accumulating in float32 as before."""
    exact_in_tf32 = q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = prev or exact_in_tf32
    try:
        return _distance_bias_grad(q, k, v, o, lse, do, bias, hi, scale, block, budget)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def _distance_bias_grad(q, k, v, o, lse, do, bias, hi, scale, block, budget) -> torch.Tensor:
    B, H, Lq, Dh = q.shape
    Lk, off = k.shape[2], k.shape[2] - q.shape[2]
    scale = scale if scale is not None else Dh ** -0.5
    acc = torch.promote_types(q.dtype, torch.float32)
    last = bias.shape[1] - 1  # distances 0 .. last - 1 have their own entry
    near = last if hi is None else min(last, hi)  # distances past a window are never seen
    T = min(block, Lq)
    W = T + near - 1  # keys within `near` of a block of T queries
    nb = -(-Lq // T)
    grad = torch.zeros(H, last + 1, dtype=acc, device=q.device)
    # row r of a block's key window: column r + near - 1 - d holds distance d
    r, d = torch.arange(T, device=q.device)[:, None], torch.arange(near, device=q.device)
    cols = r + near - 1 - d  # [T, near]
    table = bias.detach()[:, :near].to(acc)[:, None, None, :]  # [H, 1, 1, near]

    per_block = H * T * W
    step = max(1, min(nb, budget // per_block))  # query blocks per step ...
    bstep = max(1, budget // (per_block * nb)) if step == nb else 1  # ... and batch rows
    for b0 in range(0, B, bstep):
        bs = slice(b0, b0 + bstep)
        for n0 in range(0, nb, step):
            m = min(nb - n0, step)
            i0, i1 = n0 * T, (n0 + m) * T
            # query rows i0 .. i1 - 1 as blocks [b, H, m, T, ...]; keys i0 + off - near + 1 .. i1 + off - 1
            # as overlapping windows of W per block [b, H, m, Dh, W]
            rows = [_rows(x[bs], i0, i1) for x in (q, o, do, lse[..., None])]
            keys = [_rows(x[bs], i0 + off - near + 1, i1 + off) for x in (k, v)]
            i = torch.arange(i0, i1, device=q.device).view(m, T, 1)
            seen = (i < Lq) & (i + off - d >= 0)  # [m, T, near]: a real query and a real key
            grad[:, :near] += _band_step(q.is_cuda)(*rows, *keys, table, cols, seen, scale, m, T, W, acc)
    if (hi is None or hi > last) and Lk > last:  # some row sees a distance >= last
        grad[:, last] = -grad[:, :last].sum(1)
    return grad.to(bias.dtype)


def _band(q, o, do, lse, k, v, table, cols, seen, scale: float, m: int, T: int, W: int, acc) -> torch.Tensor:
    """One step of `distance_bias_grad`: m blocks of T query rows against their key windows of W;
    the table's gradient summed over them `[H, near]`."""
    qb, ob, dob, lse_b = (x.to(acc).unflatten(2, (m, T)) for x in (q, o, do, lse))
    kw, vw = (x.to(acc).unfold(2, W, T) for x in (k, v))
    idx = cols.expand(*qb.shape[:3], *cols.shape)
    s = (qb @ kw).gather(-1, idx) * scale + table  # [b, H, m, T, near]
    dp = (dob @ vw).gather(-1, idx)
    ds = torch.exp(s - lse_b) * (dp - (dob * ob).sum(-1, keepdim=True))
    return torch.where(seen, ds, 0).sum((0, 2, 3))


@functools.cache
def _band_step(cuda: bool) -> Callable:
    """`_band`, compiled on CUDA: fused, the gathers, exponentials and sums after the two products
    pass over memory once instead of once per eager operation (the step is memory bound)."""
    return torch.compile(_band, dynamic=False) if cuda else _band


class _DistanceBiasGrad(torch.autograd.Function):
    """Identity on the attention output o; its backward adds the table's gradient
    (`distance_bias_grad`) and passes the output's gradient on to the kernel's own backward."""

    @staticmethod
    def forward(ctx, o, bias, q, k, v, lse, hi):
        ctx.save_for_backward(q, k, v, o, lse, bias)
        ctx.hi = hi
        return o.view_as(o)

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, bias = ctx.saved_tensors
        dbias = distance_bias_grad(q, k, v, o, lse, do, bias, ctx.hi) if ctx.needs_input_grad[1] else None
        return do, dbias, None, None, None, None, None


def flex_distance_bias(q, k, v, bias, hi: int | None = None, kernel_options: dict | None = None):
    """FlexAttention over [0, hi) with `distance_bias_score_mod(bias)`: o and lse."""
    score_mod = distance_bias_score_mod(bias, k.shape[2] - q.shape[2])
    return flex_attend(q, k, v, hi=hi, score_mod=score_mod, return_lse=True, kernel_options=kernel_options)


def distance_bias_attend(q, k, v, bias, *, hi: int | None = None, kernel_options: dict | None = None,
                         core: Callable | None = None) -> torch.Tensor:
    """Attention over the band [0, hi) with score + bias[h, min(d, n - 1)] (`distance_bias_score_mod`),
    bias `[H, n]` float32. Returns o `[B, H, Lq, Dh]`.

    Without a gradient for `bias`, one plain FlexAttention call. With one, `core(q, k, v, bias, hi)`
    -> (o, lse) runs with the table detached (default `flex_distance_bias`; on CPU, where
    FlexAttention has no backward, tests pass a differentiable reference) and the table's gradient
    comes from `distance_bias_grad` instead of the kernel's atomic adds."""
    if not (torch.is_grad_enabled() and bias.requires_grad):
        return flex_attend(q, k, v, hi=hi, score_mod=distance_bias_score_mod(bias, k.shape[2] - q.shape[2]),
                           kernel_options=kernel_options)
    if core is None:
        core = functools.partial(flex_distance_bias, kernel_options=kernel_options)
    o, lse = core(q, k, v, bias.detach(), hi)
    return _DistanceBiasGrad.apply(o, bias, q.detach(), k.detach(), v.detach(), lse.detach(), hi)
