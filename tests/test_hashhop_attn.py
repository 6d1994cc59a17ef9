"""hashhop-attn: the hop recursion, causality with several hops, cache, fast path."""

import pytest
import torch
import torch.nn.functional as F

from zoo import conformance
from zoo.registry import get_spec

D = 32


def build(seed=0, **over):
    torch.manual_seed(seed)
    spec = get_spec("hashhop-attn")
    m = spec.cls(D, spec.make_config({"n_heads": 2, **over}))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def x_of(length, seed=1):
    return torch.randn(2, length, D, generator=torch.Generator().manual_seed(seed))


def written_out(m, x):
    """The recursion spelled out token by token: hop t+1's query is a projection of hop t's
    output, residual between hops, every position attends to itself and the past only."""
    B, L, _ = x.shape
    H, Dh = m.n_heads, m.head_dim
    q, k, v = (w(x).view(B, L, H, Dh) for w in (m.wq, m.wk, m.wv))
    h = torch.zeros(B, L, H, Dh)
    for hop in range(m.hops):
        if hop:
            q = m.hop_proj[hop - 1](h.reshape(B, L, H * Dh)).view(B, L, H, Dh)
        out = torch.zeros(B, L, H, Dh)
        for t in range(L):
            p = torch.einsum("bhd,bshd->bhs", q[:, t], k[:, :t + 1]) / Dh**0.5
            out[:, t] = torch.einsum("bhs,bshd->bhd", p.softmax(-1), v[:, :t + 1])
        h = h + out
    return m.wo(torch.sigmoid(m.gate(x)) * h.reshape(B, L, H * Dh))


@pytest.mark.parametrize("hops", [1, 3])
def test_matches_the_written_out_recursion(hops):
    m = build(hops=hops)
    x = x_of(12)
    with torch.no_grad():
        assert torch.allclose(m(x), written_out(m, x), atol=1e-5)


@pytest.mark.parametrize("over", [{"hops": 3}, {"hops": 2, "positional": "rope"}])
def test_causal_and_chunked_with_more_hops(over):
    spec = get_spec("hashhop-attn")
    m = build(**over)
    x = x_of(20)
    with torch.no_grad():
        y = m(x)
        x2 = x.clone()
        x2[:, 9:] += 3.0
        assert (m(x2)[:, :9] - y[:, :9]).abs().max() < 1e-6
        for sizes in ([1] * 20, [7, 1, 12]):
            assert (conformance.run_chunks(m, x, sizes) - y).abs().max() < 1e-5
    assert m.state_bytes(20, 2, torch.float32) == 2 * 2 * 2 * 20 * 16 * 4
    assert spec.capabilities.cost == "O(T*L^2)"


def test_every_hop_uses_the_fast_path(monkeypatch):
    """The sdpa backend runs each hop through SDPA (no explicit L x L map) and matches the reference."""
    m_ref = build(hops=3)
    m_fast = build(hops=3, backend="sdpa")
    calls = []
    real = F.scaled_dot_product_attention

    def counting(*a, **kw):
        calls.append(a[0].shape)
        return real(*a, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    x = x_of(16)
    with torch.no_grad():
        y_fast = m_fast(x)
        assert len(calls) == 3 and m_fast.last_backend == "sdpa"
        assert torch.allclose(y_fast, m_ref(x), atol=1e-5)


def test_gradients_reach_every_hop_projection():
    m = build(hops=3).train()
    y = m(x_of(10))
    y.sum().backward()
    for i in range(2):
        assert m.hop_proj[i].weight.grad.abs().sum() > 0
    assert m.gate.weight.grad.abs().sum() > 0
