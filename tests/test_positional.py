"""Positional formulas pinned: ALiBi slopes, T5 buckets, RoPE scalings (against Hugging Face
transformers' RoPE utilities where both implement the method), xPos, ReRoPE distances."""

import math

import pytest
import torch

from zoo.positional import (
    alibi_slopes,
    apply_rotary,
    dynamic_ntk_base,
    ntk_base,
    pi_inv_freq,
    rerope_distance,
    rope_cos_sin,
    rope_inv_freq,
    t5_bucket,
    xpos_scale,
    yarn_attention_factor,
    yarn_inv_freq,
)

# -- ALiBi (Press et al. 2022) -----------------------------------------------------------------


def test_alibi_slopes_8_heads():
    want = [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]
    assert alibi_slopes(8).tolist() == pytest.approx(want, rel=1e-7)


def test_alibi_slopes_12_heads_follow_the_papers_rule():
    # not a power of two: the 8-head slopes, then every other slope of 16 heads (2^(-0.5), 2^(-1.5), ...)
    want = [2.0 ** -(i + 1) for i in range(8)] + [2.0 ** -(0.5 + i) for i in range(4)]
    assert alibi_slopes(12).tolist() == pytest.approx(want, rel=1e-7)


def test_alibi_slopes_power_of_two_geometric():
    s = alibi_slopes(16)
    assert s[0].item() == pytest.approx(2 ** -0.5)
    assert torch.allclose(s[1:] / s[:-1], torch.full((15,), 2 ** -0.5))


# -- T5 buckets (Raffel et al. 2020) ---------------------------------------------------------------

# first distance of each log-spaced bucket 16..31 for 32 buckets, max distance 128
T5_BOUNDARIES = [16, 19, 21, 24, 27, 31, 35, 40, 46, 52, 59, 67, 77, 87, 99, 113]


def test_t5_buckets_exact_below_16_then_log_spaced():
    d = torch.arange(0, 1000)
    b = t5_bucket(d, 32, 128)
    assert b[:16].tolist() == list(range(16))
    firsts = [int(d[b == k][0]) for k in range(16, 32)]
    assert firsts == T5_BOUNDARIES
    assert (b[113:] == 31).all() and b.max() == 31
    assert (b[1:] >= b[:-1]).all(), "buckets must not decrease with distance"
    assert t5_bucket(torch.tensor([-5]), 32, 128).item() == 0  # future keys: masked, any valid bucket


def test_t5_buckets_match_transformers():
    pytest.importorskip("transformers", minversion="5.0")
    from transformers.models.t5.modeling_t5 import T5Attention

    d = torch.arange(0, 600)
    theirs = T5Attention._relative_position_bucket(-d, bidirectional=False, num_buckets=32, max_distance=128)
    assert torch.equal(t5_bucket(d, 32, 128), theirs)


# -- RoPE and its scalings ---------------------------------------------------------------------------

def test_rope_inv_freq_and_rotation_relative():
    inv = rope_inv_freq(8, 10000.0)
    assert inv.tolist() == pytest.approx([1.0, 0.1, 0.01, 0.001], rel=1e-6)
    # a rotated q.k depends on the positions only through their difference
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 64, generator=g), torch.randn(1, 64, generator=g)
    inv = rope_inv_freq(64)

    def score(m, n):
        cq, sq = rope_cos_sin(torch.tensor([m]), inv)
        ck, sk = rope_cos_sin(torch.tensor([n]), inv)
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    assert score(7, 3).item() == pytest.approx(score(1007, 1003).item(), rel=1e-4, abs=1e-4)


def test_ntk_lowest_frequency_interpolated_highest_kept():
    D, b, s = 64, 10000.0, 8.0
    inv, ntk = rope_inv_freq(D, b), rope_inv_freq(D, ntk_base(b, D, s))
    assert ntk[0].item() == inv[0].item() == 1.0
    assert ntk[-1].item() == pytest.approx(inv[-1].item() / s, rel=1e-5)


def test_pi_divides_frequencies():
    assert torch.allclose(pi_inv_freq(64, 10000.0, 4.0) * 4, rope_inv_freq(64, 10000.0))


def test_dynamic_ntk_unchanged_up_to_original_length_then_growing():
    b = 10000.0
    assert dynamic_ntk_base(b, 64, 4.0, 100, 1024) == b
    assert dynamic_ntk_base(b, 64, 4.0, 1024, 1024) == b
    bases = [dynamic_ntk_base(b, 64, 4.0, L, 1024) for L in (2048, 4096, 8192)]
    assert bases == sorted(bases) and bases[0] > b


def test_yarn_keeps_high_frequencies_and_interpolates_low_ones():
    D, b, s, L0 = 128, 10000.0, 16.0, 4096
    inv, yarn = rope_inv_freq(D, b), yarn_inv_freq(D, b, s, L0)
    wavelength = 2 * math.pi / inv
    fast = L0 / wavelength > 32  # turns more than beta times over L0
    slow = L0 / wavelength < 1  # less than alpha times
    assert torch.equal(yarn[fast], inv[fast])
    assert torch.allclose(yarn[slow], inv[slow] / s)
    assert ((yarn <= inv) & (yarn >= inv / s * (1 - 1e-6))).all()
    assert yarn_attention_factor(s) == pytest.approx(0.1 * math.log(16) + 1)
    assert yarn_attention_factor(1.0) == 1.0


def _hf_rope(rope_type: str, base: float, head_dim: int, factor: float, original: int, seq_len=None):
    pytest.importorskip("transformers", minversion="5.0")
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {"rope_type": rope_type, "rope_theta": base, "factor": factor}
    if rope_type == "yarn":
        params["original_max_position_embeddings"] = original
    # dynamic NTK reads its threshold from max_position_embeddings
    cfg = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                      max_position_embeddings=original if rope_type == "dynamic" else int(original * factor),
                      rope_parameters=params)
    return ROPE_INIT_FUNCTIONS[rope_type](cfg, "cpu", seq_len=seq_len)


SETTINGS = [(10000.0, 64, 2.0, 256), (10000.0, 64, 16.0, 2048), (500000.0, 128, 4.0, 8192), (10000.0, 32, 32.0, 512)]


@pytest.mark.parametrize("base,head_dim,factor,original", SETTINGS)
def test_pi_matches_transformers_linear(base, head_dim, factor, original):
    inv, att = _hf_rope("linear", base, head_dim, factor, original)
    assert torch.allclose(pi_inv_freq(head_dim, base, factor), inv, rtol=1e-6, atol=0)
    assert att == 1.0


@pytest.mark.parametrize("base,head_dim,factor,original", SETTINGS)
def test_yarn_matches_transformers(base, head_dim, factor, original):
    inv, att = _hf_rope("yarn", base, head_dim, factor, original)
    assert torch.allclose(yarn_inv_freq(head_dim, base, factor, original), inv, rtol=1e-6, atol=0)
    assert yarn_attention_factor(factor) == pytest.approx(att, rel=1e-12)


@pytest.mark.parametrize("base,head_dim,factor,original", SETTINGS)
def test_dynamic_ntk_matches_transformers(base, head_dim, factor, original):
    for seq_len in (original // 2, original, original + 1, 3 * original, 10 * original):
        inv, _ = _hf_rope("dynamic", base, head_dim, factor, original, seq_len=seq_len)
        ours = rope_inv_freq(head_dim, dynamic_ntk_base(base, head_dim, factor, seq_len, original))
        assert torch.allclose(ours, inv, rtol=1e-5, atol=0), seq_len


@pytest.mark.parametrize("base,head_dim,factor,original", SETTINGS)
def test_static_ntk_is_dynamic_ntk_at_its_fixed_point(base, head_dim, factor, original):
    # transformers has no static NTK-aware scaling; its dynamic formula reaches b * s^(d/(d-2)) at
    # L = L0 (2s - 1) / s, which pins the static base against it
    seq_len = original * (2 * factor - 1) / factor
    inv, _ = _hf_rope("dynamic", base, head_dim, factor, original, seq_len=seq_len)
    assert torch.allclose(rope_inv_freq(head_dim, ntk_base(base, head_dim, factor)), inv, rtol=1e-5, atol=0)


def test_rotation_layout_matches_transformers():
    pytest.importorskip("transformers", minversion="5.0")
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 10, 16, generator=g), torch.randn(2, 3, 10, 16, generator=g)
    cos, sin = rope_cos_sin(torch.arange(10), rope_inv_freq(16))
    hq, hk = apply_rotary_pos_emb(q, k, cos[None], sin[None])
    assert torch.allclose(apply_rotary(q, cos, sin), hq, atol=1e-6)
    assert torch.allclose(apply_rotary(k, cos, sin), hk, atol=1e-6)


def test_rotation_per_half_is_the_whole_row_formula_exactly():
    """The per-half writing gives the same bits as x cos + [-x2, x1] sin over the whole row, in
    float32 and bfloat16, also for tables whose two halves differ."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 12, 16, generator=g)
    cos, sin = torch.randn(12, 16, generator=g), torch.randn(12, 16, generator=g)  # halves unequal
    for dtype in (torch.float32, torch.bfloat16):
        xf = x.to(dtype).float()
        whole = (xf * cos + torch.cat([-xf[..., 8:], xf[..., :8]], -1) * sin).to(dtype)
        assert torch.equal(apply_rotary(x.to(dtype), cos, sin), whole)


# -- xPos (Sun et al. 2022) and ReRoPE (Su 2023) ------------------------------------------------------

def test_xpos_scale_follows_the_paper():
    D, sb = 8, 512.0
    zeta = torch.tensor([(2 * i / D + 0.4) / 1.4 for i in range(D // 2)])
    s = xpos_scale(torch.tensor([0, 512, 1024]), D, sb)
    assert torch.allclose(s[0], torch.ones(D))
    assert torch.allclose(s[1, : D // 2], zeta) and torch.allclose(s[1, D // 2:], zeta)
    assert torch.allclose(s[2, : D // 2], zeta**2)
    # query scale at n times key scale 1/zeta^m = zeta^((n - m) / sb), whatever common shift
    n, m, c = torch.tensor([900]), torch.tensor([100]), 450
    a = xpos_scale(n, D, sb) / xpos_scale(m, D, sb)
    b = xpos_scale(n - c, D, sb) * xpos_scale(c - m, D, sb)
    assert torch.allclose(a, b, rtol=1e-5)


def test_rerope_distances():
    d = torch.arange(0, 40)
    assert torch.equal(rerope_distance(d, 16), torch.where(d < 16, d, 16).float())
    leaky = rerope_distance(d, 16, leak=1 / 4)
    assert torch.equal(leaky[:16], d[:16].float())
    assert torch.allclose(leaky[16:], 16 + (d[16:] - 16) / 4)
