"""RetNet: the parallel, recurrent and chunkwise forms agree; fla's naive references agree;
the decays, rotation and init are the paper's."""

import math

import pytest
import torch
from fla_refs import fla_naive

from zoo.mixers.retnet import (
    RetNet,
    RetNetConfig,
    norm_gate,
    retention_chunkwise,
    retention_log_gamma,
    retention_parallel,
    retention_recurrent,
)
from zoo.model import ModelConfig, ZooLM
from zoo.registry import get_spec


def _qkv(B=2, L=37, H=3, Dk=8, Dv=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, L, H, Dk, generator=g), torch.randn(B, L, H, Dk, generator=g) * Dk ** -0.5
    v = torch.randn(B, L, H, Dv, generator=g)
    return q, k, v, retention_log_gamma(H), torch.randn(B, H, Dk, Dv, generator=g)


def _close(a, b, what):
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert err < 1e-5 * max(scale, 1.0), f"{what}: {err:.3g} (scale {scale:.3g})"


def test_gamma_per_head():
    g = retention_log_gamma(4).exp()
    assert torch.allclose(g.double(), torch.tensor([1 - 2 ** -5, 1 - 2 ** -6, 1 - 2 ** -7, 1 - 2 ** -8]).double())


@pytest.mark.parametrize("with_state", [False, True])
def test_three_forms_agree(with_state):
    q, k, v, lg, S0 = _qkv()
    S0 = S0 if with_state else torch.zeros_like(S0)
    o_rec, s_rec = retention_recurrent(q, k, v, lg, S0)
    o_par, s_par = retention_parallel(q, k, v, lg, S0)
    _close(o_par, o_rec, "parallel vs recurrent")
    _close(s_par, s_rec, "parallel vs recurrent state")
    for C in (1, 5, 16, 64):  # 37 tokens: padded last chunk, one chunk, one token per chunk
        o_ch, s_ch = retention_chunkwise(q, k, v, lg, S0, C)
        _close(o_ch, o_rec, f"chunkwise({C}) vs recurrent")
        _close(s_ch, s_rec, f"chunkwise({C}) state")


def test_forms_chain_through_the_state():
    """Parallel on a prefix, chunkwise on the middle, recurrent on the end == one recurrent pass."""
    q, k, v, lg, S0 = _qkv(L=30)
    want, want_S = retention_recurrent(q, k, v, lg, S0)
    o1, S = retention_parallel(q[:, :9], k[:, :9], v[:, :9], lg, S0)
    o2, S = retention_chunkwise(q[:, 9:25], k[:, 9:25], v[:, 9:25], lg, S, 4)
    o3, S = retention_recurrent(q[:, 25:], k[:, 25:], v[:, 25:], lg, S)
    _close(torch.cat([o1, o2, o3], 1), want, "chained forms")
    _close(S, want_S, "chained state")


def test_chunkwise_gradients_match_parallel():
    q, k, v, lg, S0 = (t.double() for t in _qkv(B=1, L=13, H=2, Dk=4, Dv=6))
    q, k, v, S0 = (t.requires_grad_(True) for t in (q, k, v, S0))
    lg = lg.double()
    o1, s1 = retention_parallel(q, k, v, lg, S0)
    g1 = torch.autograd.grad((o1 ** 2).sum() + s1.sum(), (q, k, v, S0))
    o2, s2 = retention_chunkwise(q, k, v, lg, S0, 4)
    g2 = torch.autograd.grad((o2 ** 2).sum() + s2.sum(), (q, k, v, S0))
    for a, b in zip(g1, g2):
        assert torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-4)




def test_matches_fla_naive_retention():
    naive = fla_naive("ops/retention/naive.py")
    q, k, v, lg, S0 = _qkv(L=29, H=4, Dk=16, Dv=8)
    hf = lambda t: t.transpose(1, 2)  # noqa: E731  fla's naive is head-first and scales q by Dk^-1/2
    want = naive.naive_retention(hf(q), hf(k) * math.sqrt(16), hf(v)).transpose(1, 2)
    zero = torch.zeros_like(S0)
    for o, _ in (retention_parallel(q, k, v, lg, zero), retention_chunkwise(q, k, v, lg, zero, 8),
                 retention_recurrent(q, k, v, lg, zero)):
        _close(o, want, "ours vs fla naive_retention")


def test_matches_fla_naive_simple_gla_with_state():
    naive = fla_naive("ops/simple_gla/naive.py")
    q, k, v, lg, S0 = _qkv(L=21, H=2, Dk=8, Dv=8)
    g = lg[None, None, :].expand(q.shape[0], q.shape[1], -1).contiguous()  # a scalar log decay per head and step
    want, want_S = naive.naive_recurrent_simple_gla(q, k, v, g, scale=1.0, initial_state=S0, output_final_state=True)
    o, S = retention_chunkwise(q, k, v, lg, S0, 8)
    _close(o, want.float(), "ours vs fla naive_recurrent_simple_gla")
    _close(S, want_S.float(), "state vs fla naive_recurrent_simple_gla")


def test_mixer_forms_agree_through_the_cache():
    torch.manual_seed(0)
    m = RetNet(32, RetNetConfig(n_heads=2, chunk_size=8))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 27, 32)
    with torch.no_grad():
        full = m(x)                                               # chunkwise
        cache = m.new_cache(2, "cpu", torch.float32)
        steps = torch.cat([m(x[:, t:t + 1], cache) for t in range(27)], 1)   # recurrent
        m_par = RetNet(32, RetNetConfig(n_heads=2, chunk_size=4096))
        m_par.load_state_dict(m.state_dict())
        one_chunk = m_par(x)                                      # a single chunk: the parallel form
    _close(steps, full, "recurrent mixer vs chunkwise mixer")
    _close(one_chunk, full, "one chunk vs chunkwise mixer")
    assert cache.pos == 27 and cache.nbytes() == m.state_bytes(27, batch=2, dtype=torch.float32)


def test_rotation_is_relative():
    """Retention scores depend on positions only through n - m (the xPos-style rotation)."""
    m = RetNet(32, RetNetConfig(n_heads=2))
    x = torch.randn(1, 6, 32)
    with torch.no_grad():
        a = m(x)
        cache = m.new_cache(1, "cpu", torch.float32)
        cache.pos = 1000  # same tokens at a later absolute position, empty state
        b = m(x, cache)
    _close(b, a, "shifted positions")


def test_init_follows_torchscale():
    m = RetNet(256, RetNetConfig(n_heads=4))
    bound = 2 ** -2.5 * math.sqrt(6 / (256 + 256))
    assert m.wq.weight.abs().max() <= bound and m.wq.weight.abs().max() > 0.9 * bound
    assert m.wv.weight.shape == (512, 256) and m.key_dim == 64 and m.value_dim == 128


def test_in_zoolm_chunked_equals_full():
    torch.manual_seed(0)
    model = ZooLM(ModelConfig(d_model=32, n_layers=2, layers=["retnet"], vocab_size=64,
                              mixer_config={"retnet": {"n_heads": 2, "chunk_size": 8}}))
    tokens = torch.randint(0, 64, (2, 21))
    with torch.no_grad():
        full = model(tokens)
        for chunk in (1, 6, 21):
            parts = torch.cat([lg for _, lg in model.iter_logits(tokens, chunk_size=chunk)], 1)
            _close(parts, full, f"chunk {chunk}")


def test_fla_backend_reports_why_not_on_cpu():
    choice = get_spec("retnet").choose_backend("cpu")
    assert choice.chosen == "torch" and "CUDA" in choice.reasons["fla"]


def test_norm_gate_is_swish_gate_times_group_norm():
    # one LayerNorm per head, no affine: nn.GroupNorm(H, H * Dv, affine=False) over [B * L, H * Dv]
    torch.manual_seed(0)
    B, L, H, Dv = 2, 5, 3, 8
    o, g = torch.randn(B, L, H, Dv, dtype=torch.float64), torch.randn(B, L, H * Dv, dtype=torch.float64)
    gn = torch.nn.GroupNorm(H, H * Dv, eps=1e-5, affine=False)
    want = torch.nn.functional.silu(g) * gn(o.reshape(B * L, H * Dv)).view(B, L, H * Dv)
    got = norm_gate(o, g, 1e-5)
    assert got.dtype == g.dtype
    torch.testing.assert_close(got, want.float().to(g.dtype), rtol=1e-5, atol=1e-5)
