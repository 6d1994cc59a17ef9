"""T5's table by distance, differentiated outside FlexAttention (`flex.distance_bias_attend`):
every gradient (q, k, v, table) against autograd through explicit scores. FlexAttention has
no backward on CPU, so the attention core is a plain-PyTorch one here."""

import pytest
import torch

from zoo.kernels import flex
from zoo.mixers.attention import attention_reference
from zoo.registry import build_mixer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def scores(q, k, bias, hi):
    """Scaled scores plus bias[h, min(d, n - 1)], masked outside 0 <= d < hi: `[B, H, Lq, Lk]`."""
    Lq, Lk = q.shape[2], k.shape[2]
    d = torch.arange(Lq)[:, None] + (Lk - Lq) - torch.arange(Lk)[None, :]
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + bias[:, d.clamp(0, bias.shape[1] - 1)]
    keep = (d >= 0) if hi is None else (d >= 0) & (d < hi)
    return s.masked_fill(~keep, float("-inf"))


def reference(q, k, v, bias, hi=None):
    return scores(q, k, bias, hi).softmax(-1) @ v


def core(q, k, v, bias, hi, kernel_options=None):
    """(o, lse), differentiable in q, k, v: what FlexAttention returns on CUDA."""
    s = scores(q, k, bias, hi)
    return s.softmax(-1) @ v, s.logsumexp(-1)


def inputs(B, H, Lq, Lk, n, Dh=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Lq, Dh, generator=g, dtype=dtype)
    k, v = (torch.randn(B, H, Lk, Dh, generator=g, dtype=dtype) for _ in range(2))
    bias = torch.randn(H, n + 1, generator=g, dtype=dtype)
    do = torch.randn(B, H, Lq, Dh, generator=g, dtype=dtype)
    return q, k, v, bias, do


def grads(f, q, k, v, bias, do):
    leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    o = f(*leaves)
    o.backward(do)
    return [o.detach()] + [t.grad for t in leaves]


CASES = [  # (L, max_distance, window)
    (1, 128, None), (37, 128, None), (130, 128, None), (300, 128, None),
    (1, 8, None), (37, 8, None), (130, 8, None), (300, 8, None),
    (300, 128, 50), (300, 128, 200), (130, 8, 5), (130, 8, 40), (300, 8, 8), (300, 8, 9),
]


@pytest.mark.parametrize("L,n,hi", CASES)
def test_every_gradient_matches_autograd(L, n, hi):
    q, k, v, bias, do = inputs(2, 3, L, L, n)
    want = grads(lambda q, k, v, b: reference(q, k, v, b, hi), q, k, v, bias, do)
    got = grads(lambda q, k, v, b: flex.distance_bias_attend(q, k, v, b, hi=hi, core=core), q, k, v, bias, do)
    for name, a, b in zip(("o", "dq", "dk", "dv", "dtable"), got, want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9, msg=lambda m, name=name: f"{name}: {m}")
    seen = L > n and (hi is None or hi > n)  # some score reads the entry shared by longer distances
    assert (want[4][:, n].abs().max() > 1e-3) == seen and (seen or not got[4][:, n].any())


@pytest.mark.parametrize("Lq,Lk,n,hi", [(1, 300, 8, None), (7, 140, 128, None), (37, 300, 128, 200),
                                        (130, 300, 8, 40), (100, 101, 8, None)])
def test_band_alone_matches_autograd_with_queries_at_the_end_of_the_keys(Lq, Lk, n, hi):
    q, k, v, bias, do = inputs(2, 3, Lq, Lk, n, seed=1)
    want = grads(lambda q, k, v, b: reference(q, k, v, b, hi), q, k, v, bias, do)[4]
    o, lse = core(q, k, v, bias, hi)
    for block, budget in ((flex.BLOCK, 1 << 23), (16, 1), (16, 3 * 16 * 40)):  # one step; every block alone; a few
        got = flex.distance_bias_grad(q, k, v, o, lse, do, bias, hi, block=block, budget=budget)
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)
    assert want.abs().max() > 1e-2  # a test that can fail


def test_float32_band_against_attention_reference():
    q, k, v, bias, do = (t.float() for t in inputs(2, 3, 200, 200, 128, seed=2))
    pos = torch.arange(200)
    d = (pos[:, None] - pos[None, :]).clamp(0, 128)
    table = bias.clone().requires_grad_()
    attention_reference(q, k, v, pos, pos, bias=table[:, d]).backward(do)
    o, lse = core(q, k, v, bias, None)
    got = flex.distance_bias_grad(q.bfloat16(), k.bfloat16(), v.bfloat16(), o.bfloat16(), lse, do.bfloat16(), bias)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, table.grad, atol=0.05 * table.grad.abs().max().item(), rtol=0)  # bf16 inputs
    got = flex.distance_bias_grad(q, k, v, o, lse, do, bias)
    torch.testing.assert_close(got, table.grad, atol=1e-4, rtol=1e-4)


def test_without_a_table_gradient_one_plain_call(monkeypatch):
    monkeypatch.setattr(flex, "flex_distance_bias", lambda *a, **kw: pytest.fail("the core needs no gradient path"))
    q, k, v, bias, _ = (t.float() for t in inputs(1, 2, 20, 20, 8))
    with torch.no_grad():
        o = flex.distance_bias_attend(q, k, v, bias.requires_grad_(), hi=12)
    torch.testing.assert_close(o, reference(q, k, v, bias.detach(), 12), atol=2e-5, rtol=2e-5)
    calls = []
    monkeypatch.setattr(flex, "flex_attend", lambda *a, **kw: calls.append(kw) or a[0] * 2)
    o = flex.distance_bias_attend(q.requires_grad_(), k, v, bias.detach(), hi=12)  # q needs one, the table not
    assert len(calls) == 1 and not calls[0].get("return_lse") and type(o.grad_fn).__name__ == "MulBackward0"


@pytest.mark.parametrize("name,cfg", [("t5-bias", {"max_distance": 20}), ("swa", {"position": "t5-bias", "window": 30}),
                                      ("swa", {"position": "t5-bias", "window": 9})])
def test_t5_mixer_flex_gradients_match_torch_backend(monkeypatch, name, cfg):
    monkeypatch.setattr(flex, "flex_distance_bias", core)  # FlexAttention itself has no CPU backward
    torch.manual_seed(0)
    m = build_mixer(name, 32, {"n_heads": 2, "num_buckets": 8, "max_distance": 12, **cfg})
    with torch.no_grad():
        m.pe.table.weight.normal_(0, 0.5)
    g = torch.Generator().manual_seed(3)
    B, H, L, Dh = 2, 2, 70, 16
    q, k, v, do = (torch.randn(B, H, L, Dh, generator=g) for _ in range(4))
    pos = torch.arange(500, 500 + L)
    out = {}
    for backend in ("torch", "flex"):
        m.zero_grad()
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        m.attend(*leaves, pos, pos, backend=backend).backward(do)
        out[backend] = [t.grad for t in leaves] + [m.pe.table.weight.grad.clone()]
    for a, b in zip(out["flex"], out["torch"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert out["torch"][3].abs().max() > 1e-3
