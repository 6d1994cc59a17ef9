"""Equivalences of the SSM-family references beyond the conformance suite: every fast or
chunked form against the plain recurrence, the papers' initialisations, and the pieces
the GPU paths rely on that can be checked on CPU."""

import math

import pytest
import torch

from zoo.errors import ZooError
from zoo.mixers.hyena import Hyena
from zoo.mixers.mamba import (
    Mamba,
    causal_conv,
    check_mamba_ssm,
    initial_state_output,
    mamba_ssm_import_error,
    selective_scan_chunked,
    selective_scan_naive,
)
from zoo.mixers.mamba2 import Mamba2, ssd_chunked, ssd_naive
from zoo.mixers.s4d import S4DMixer, block_powers, fft_causal_conv
from zoo.model import ModelConfig, ZooLM
from zoo.registry import build_mixer

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _mamba_inputs(b=2, length=37, e=6, n=5, seed=0):
    g = _gen(seed)
    u = torch.randn(b, length, e, generator=g, dtype=F64)
    delta = torch.rand(b, length, e, generator=g, dtype=F64)
    A = -4 * torch.rand(e, n, generator=g, dtype=F64)
    B = torch.randn(b, length, n, generator=g, dtype=F64)
    C = torch.randn(b, length, n, generator=g, dtype=F64)
    h0 = torch.randn(b, e, n, generator=g, dtype=F64)
    return u, delta, A, B, C, h0


# -- Mamba-1 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 3, 8, 16, 64])
def test_mamba_chunked_scan_equals_sequential_loop(chunk):
    u, delta, A, B, C, h0 = _mamba_inputs()
    y0, s0 = selective_scan_naive(u, delta, A, B, C, h0)
    y1, s1 = selective_scan_chunked(u, delta, A, B, C, h0, chunk=chunk)
    assert torch.allclose(y1, y0, atol=1e-12, rtol=1e-10)
    assert torch.allclose(s1, s0, atol=1e-12, rtol=1e-10)


def test_mamba_recompute_gives_the_same_gradients():
    base = _mamba_inputs(length=20)
    grads = []
    for recompute in (False, True):
        args = [t.clone().requires_grad_(True) for t in base]
        y, h = selective_scan_chunked(*args, chunk=8, recompute=recompute)
        ((y * y.detach().sin()).sum() + h.sum()).backward()
        grads.append([a.grad for a in args])
    for g0, g1 in zip(*grads):
        assert torch.allclose(g0, g1, atol=1e-12)


def test_mamba_initial_state_output_is_the_state_part_of_the_scan():
    # the mamba_ssm path starts its kernel from zero and adds this term for a carried state
    u, delta, A, B, C, h0 = _mamba_inputs(length=700)  # longer than one 512-token block
    y_with, h_with = selective_scan_naive(u, delta, A, B, C, h0)
    y_zero, h_zero = selective_scan_naive(u, delta, A, B, C)
    extra, decayed = initial_state_output(h0, delta.transpose(1, 2), A, C.transpose(1, 2))
    assert torch.allclose(extra.transpose(1, 2), y_with - y_zero, atol=1e-10)
    assert torch.allclose(decayed, h_with - h_zero, atol=1e-10)


def test_causal_conv_with_state_equals_one_pass():
    g = _gen(1)
    x, w, b = torch.randn(2, 5, 17, generator=g), torch.randn(5, 1, 4, generator=g), torch.randn(5, generator=g)
    full, _ = causal_conv(x, w, b)
    ref = torch.nn.functional.conv1d(x, w, b, padding=3, groups=5)[..., :17]
    assert torch.allclose(full, ref, atol=1e-6)
    state, parts = None, []
    for s, e in [(0, 2), (2, 3), (3, 11), (11, 17)]:
        y, state = causal_conv(x[..., s:e], w, b, state)
        parts.append(y)
    assert torch.allclose(torch.cat(parts, -1), full, atol=1e-6)
    for length in (1, 2, 7):  # shorter and longer than the state; gradients reach the state too
        args = [torch.randn(2, 3, length, dtype=F64), torch.randn(3, 1, 4, dtype=F64), torch.randn(3, dtype=F64),
                torch.randn(2, 3, 3, dtype=F64)]
        args = [a.requires_grad_(True) for a in args]
        assert torch.autograd.gradcheck(lambda *a: causal_conv(*a), args)


def test_mamba_initialisation_follows_the_paper():
    torch.manual_seed(0)
    m = build_mixer("mamba", 64, {"d_state": 16, "dt_min": 0.001, "dt_max": 0.1})
    E = 128
    assert torch.allclose(m.A_log, torch.log(torch.arange(1, 17.0)).repeat(E, 1))  # S4D-real
    assert torch.equal(m.D.data, torch.ones(E))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)  # softplus inverse recovered
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
    assert m.dt_rank == 4 and m.dt_proj.weight.abs().max() <= m.dt_rank**-0.5
    # log-uniform: about half the deltas below the geometric mean of the range
    assert 0.3 < (dt < math.sqrt(0.001 * 0.1)).float().mean() < 0.7


def test_mamba_block_equals_a_hand_written_recurrence():
    torch.manual_seed(0)
    m = Mamba(16, Mamba.Config(d_state=4, scan_chunk=5)).double()
    x = torch.randn(2, 13, 16, dtype=F64)
    with torch.no_grad():
        u, z = m.in_proj(x).chunk(2, dim=-1)
        w = m.conv1d.weight[:, 0]  # [E, W]
        pad = torch.cat([torch.zeros(2, 3, u.shape[-1], dtype=F64), u], 1)
        h = torch.zeros(2, m.d_inner, 4, dtype=F64)
        A = -torch.exp(m.A_log)
        ys = []
        for t in range(13):
            ut = torch.nn.functional.silu((pad[:, t:t + 4] * w.t()).sum(1) + m.conv1d.bias)
            dt_low, Bt, Ct = m.x_proj(ut).split([m.dt_rank, 4, 4], dim=-1)
            delta = torch.nn.functional.softplus(m.dt_proj(dt_low))
            h = torch.exp(delta[..., None] * A) * h + (delta * ut)[..., None] * Bt[:, None]
            y = (h * Ct[:, None]).sum(-1) + m.D * ut
            ys.append(m.out_proj(y * torch.nn.functional.silu(z[:, t])))
        assert torch.allclose(m(x), torch.stack(ys, 1), atol=1e-6)  # the mixer scans in fp32


# -- Mamba-2 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 4, 7, 16, 64])
@pytest.mark.parametrize("groups", [1, 3])
def test_ssd_chunked_equals_recurrence(chunk, groups):
    g = _gen(2)
    b, length, h, p, n = 2, 37, 6, 4, 5
    x = torch.randn(b, length, h, p, generator=g, dtype=F64)
    dt = torch.rand(b, length, h, generator=g, dtype=F64)
    A = -3 * torch.rand(h, generator=g, dtype=F64)
    B = torch.randn(b, length, groups, n, generator=g, dtype=F64)
    C = torch.randn(b, length, groups, n, generator=g, dtype=F64)
    h0 = torch.randn(b, h, p, n, generator=g, dtype=F64)
    y0, s0 = ssd_naive(x, dt, A, B, C, h0)
    y1, s1 = ssd_chunked(x, dt, A, B, C, chunk, h0)
    assert torch.allclose(y1, y0, atol=1e-11)
    assert torch.allclose(s1, s0, atol=1e-11)


def test_mamba2_initialisation_and_shapes():
    torch.manual_seed(0)
    m = build_mixer("mamba2", 64, {"d_state": 16, "headdim": 16, "ngroups": 2})
    assert m.nheads == 8 and m.A_log.shape == (8,)
    a = torch.exp(m.A_log)
    assert a.min() >= 1 and a.max() <= 16  # A = -a, a ~ U[1, 16]
    assert torch.equal(m.D.data, torch.ones(8))
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
    assert m.in_proj.out_features == 2 * 128 + 2 * 2 * 16 + 8  # [z, x, B, C, dt]


def test_mamba2_rejects_shapes_it_cannot_split():
    with pytest.raises(ZooError, match="headdim"):
        build_mixer("mamba2", 40, {"headdim": 64})
    with pytest.raises(ZooError, match="groups"):
        build_mixer("mamba2", 64, {"headdim": 32, "ngroups": 3})


def test_mamba2_torch_chunk_size_does_not_change_outputs():
    torch.manual_seed(0)
    a = Mamba2(32, Mamba2.Config(d_state=8, headdim=16, torch_chunk_size=5))
    b = Mamba2(32, Mamba2.Config(d_state=8, headdim=16, torch_chunk_size=64))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 29, 32)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), atol=1e-5)


def test_mamba2_splits_calls_past_the_kernels_int32_offsets(monkeypatch):
    """Inputs past `kernel_tokens()` reach the (here: torch) per-call forward in pieces that each
    fit, and the pieces give the whole-sequence output and gradients."""
    import zoo.mixers.mamba2 as mod

    torch.manual_seed(0)
    m = Mamba2(32, Mamba2.Config(d_state=8, headdim=16, chunk_size=8, torch_chunk_size=8)).double()
    per_token = mod.INT32_ELEMENTS // m.kernel_tokens()
    monkeypatch.setattr(mod, "INT32_ELEMENTS", per_token * 40)
    assert m.kernel_tokens() == 40
    calls = []

    def one_call(self, x, cache):
        calls.append((x.shape[0], x.shape[1], cache is not None))
        assert x.shape[0] * x.shape[1] <= 40
        return Mamba2._forward_torch(self, x, cache)

    monkeypatch.setattr(Mamba2, "_forward_mamba_ssm", one_call)
    for shape, want_calls in [((2, 64), [(2, 16, True)] * 4),      # along the sequence, state carried
                              ((6, 10), [(4, 10, False), (2, 10, False)]),  # whole rows: the batch splits
                              ((4, 10), [(4, 10, False)])]:          # fits: one call
        calls.clear()
        x = torch.randn(*shape, 32, dtype=F64, requires_grad=True)
        y = m._forward_kernel_segments(x, None)
        assert calls == want_calls
        g = torch.randn_like(y)
        (gx,) = torch.autograd.grad((y * g).sum(), x)
        x2 = x.detach().clone().requires_grad_(True)
        y2 = m._forward_torch(x2, None)
        (gx2,) = torch.autograd.grad((y2 * g).sum(), x2)
        assert torch.allclose(y, y2, atol=1e-5) and torch.allclose(gx, gx2, atol=1e-5)  # the scan runs in fp32

    # a cache given by the caller is continued across the segments
    x = torch.randn(2, 50, 32, dtype=F64)
    with torch.no_grad():
        c1, c2 = m.new_cache(2, x.device, F64), m.new_cache(2, x.device, F64)
        m._forward_torch(x[:, :7], c1), m._forward_torch(x[:, :7], c2)
        calls.clear()
        y = m._forward_kernel_segments(x[:, 7:], c1)
        assert [c[1] for c in calls] == [16, 16, 11]
        assert torch.allclose(y, m._forward_torch(x[:, 7:], c2), atol=1e-5)
        assert torch.allclose(c1.ssm, c2.ssm, atol=1e-5) and c1.pos == c2.pos == 50
    with pytest.raises(ZooError, match="batch 8 is too large"):
        m._forward_kernel_segments(torch.randn(8, 64, 32, dtype=F64), None)


# -- S4D --------------------------------------------------------------------------------------

@pytest.mark.parametrize("init", ["lin", "inv"])
def test_s4d_fft_convolution_equals_recurrence(init):
    torch.manual_seed(0)
    m = build_mixer("s4d", 8, {"d_state": 16, "init": init, "dt_min": 0.01, "dt_max": 0.5})
    x = torch.randn(2, 150, 8)
    with torch.no_grad():
        dtA, dB, C = m.ssm()
        s, ys = torch.zeros(2, 8, 8, dtype=torch.complex64), []
        for t in range(150):
            s = torch.exp(dtA) * s + dB * x[:, t, :, None]
            ys.append(2 * (s * C).sum(-1).real)
        rec = torch.stack(ys, 1)
        fft = fft_causal_conv(x, m.kernel(150))
        assert torch.allclose(fft, rec, atol=2e-5 * rec.abs().max())
        # the closing state of a chunk, in closed form, is the recurrence's
        assert torch.allclose(m._state_after(torch.zeros_like(s), x), s, atol=1e-4)


def test_s4d_kernel_equals_explicit_powers():
    torch.manual_seed(0)
    m = build_mixer("s4d", 4, {"d_state": 6})
    with torch.no_grad():
        dtA, dB, C = m.ssm()
        for length in (1, 2, 10, 33):
            lags = torch.arange(length, dtype=torch.float32)
            explicit = 2 * ((C * dB)[..., None] * torch.exp(dtA[..., None] * lags)).sum(1).real
            assert torch.allclose(m.kernel(length), explicit, atol=1e-5)
            outer, inner = block_powers(dtA, length)
            assert outer.shape[-1] * inner.shape[-1] >= length


def test_s4d_initialisations():
    lin = build_mixer("s4d", 4, {"d_state": 8, "init": "lin"})
    inv = build_mixer("s4d", 4, {"d_state": 8, "init": "inv"})
    n = torch.arange(4.0)
    assert torch.allclose(lin.A_imag[0], math.pi * n)  # S4D-Lin: A_n = -1/2 + i pi n
    assert torch.allclose(inv.A_imag[0], 8 / math.pi * (8 / (2 * n + 1) - 1))  # S4D-Inv
    assert torch.allclose(torch.exp(lin.log_A_real), torch.full((4, 4), 0.5))
    dt = torch.exp(lin.log_dt)
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001


# -- Hyena ------------------------------------------------------------------------------------

def _hyena(**kw):
    torch.manual_seed(0)
    return build_mixer("hyena", 8, {"filter_order": 8, "emb_dim": 5, "l_ref": 16, **kw})


def test_hyena_fft_convolution_equals_direct_convolution():
    g = _gen(3)
    u, k = torch.randn(2, 41, 3, generator=g), torch.randn(3, 41, generator=g)
    direct = torch.stack([sum(k[:, t - s] * u[:, s] for s in range(t + 1)) for t in range(41)], 1)
    assert torch.allclose(fft_causal_conv(u, k), direct, atol=1e-4)


def test_hyena_filter_depends_on_the_lag_only():
    m = _hyena()
    with torch.no_grad():
        short, long = m.filter_fn(10, "cpu"), m.filter_fn(300, "cpu")
    assert torch.allclose(short, long[:, :10])
    assert long.shape == (8, 300)  # past l_ref: no maximum length
    decay = long.abs().mean(0)
    assert decay[200:].max() < decay[:5].max()  # the exponential window shrinks far lags


def test_hyena_block_equals_its_definition():
    m = _hyena(order=3).double()
    x = torch.randn(1, 20, 8, dtype=F64)
    with torch.no_grad():
        u = m.short_filter(m.in_proj(x).transpose(1, 2))[..., :20].transpose(1, 2)
        x0, x1, x2, v = u.split(8, dim=-1)
        k = m.filter_fn(20, "cpu").double().view(2, 8, 20)
        bias = m.bias.view(2, 8)
        for o, gate in enumerate([x2, x1]):
            v = v * gate
            v = torch.stack([sum(k[o, :, t - s] * v[:, s] for s in range(t + 1)) for t in range(20)], 1) + bias[o] * v
        assert torch.allclose(m(x), m.out_proj(v * x0), atol=1e-8)


def test_hyena_cache_grows_with_the_tokens_seen():
    m = _hyena()
    cache = m.new_cache(1, "cpu", torch.float32)
    with torch.no_grad():
        m(torch.randn(1, 7, 8), cache)
        m(torch.randn(1, 1, 8), cache)
    assert [h.shape for h in cache.hist] == [(1, 8, 8)]
    assert cache.nbytes() == m.state_bytes(8, batch=1, dtype=torch.float32)
    assert m.state_bytes(2000) > m.state_bytes(1000) and m.spec.capabilities.state == "growing"


# -- all four -----------------------------------------------------------------------------------

def test_mamba_ssm_backend_says_why_it_is_unavailable():
    why = check_mamba_ssm(torch.device("cpu"))
    assert why is not None and "needs CUDA" in why
    if mamba_ssm_import_error() is not None:
        assert "mamba_ssm" in why


@pytest.mark.parametrize("name", ["mamba", "mamba2", "s4d", "hyena"])
def test_flops_per_token(name):
    m = build_mixer(name, 64)
    f2k, f32k = m.flops_per_token(2048), m.flops_per_token(32768)
    assert f2k > 2 * 64 * 64  # at least one projection
    if name.startswith("mamba"):
        assert f2k == f32k  # linear time: constant per token
    else:
        assert f2k < f32k < 2 * f2k  # FFT: grows with log L


def test_zoolm_runs_chunked_like_full_with_every_ssm():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, n_layers=4, layers=["mamba", "mamba2", "s4d", "hyena"],
                      mixer_config={"mamba": {"d_state": 4}, "mamba2": {"d_state": 8, "headdim": 16},
                                    "s4d": {"d_state": 8}, "hyena": {"filter_order": 8, "emb_dim": 5}})
    model = ZooLM(cfg).eval()
    tokens = torch.randint(0, 260, (2, 30))
    with torch.no_grad():
        full = model(tokens)
        chunked = torch.cat([lg for _, lg in model.iter_logits(tokens, chunk_size=7)], dim=1)
    assert torch.allclose(chunked, full, atol=2e-4)
    assert isinstance(model.mixers[0], Mamba) and isinstance(model.mixers[2], S4DMixer)
    assert isinstance(model.mixers[3], Hyena)


@pytest.mark.parametrize("chunk,length", [(2, 140), (3, 200)])
def test_ssd_state_passing_across_several_blocks(chunk, length):
    """Enough chunks for several blocks of the two-level state scan (and a ragged last one)."""
    from zoo.mixers.mamba2 import BLOCK

    assert length // chunk > 2 * BLOCK
    g = torch.Generator().manual_seed(5)
    b, h, p, n, groups = 2, 4, 3, 5, 2
    x = torch.randn(b, length, h, p, generator=g)
    dt = torch.rand(b, length, h, generator=g) * 0.3
    A = -torch.rand(h, generator=g) - 0.1
    B, C = torch.randn(b, length, groups, n, generator=g), torch.randn(b, length, groups, n, generator=g)
    h0 = torch.randn(b, h, p, n, generator=g)
    y_ref, s_ref = ssd_naive(x, dt, A, B, C, h0)
    y, s = ssd_chunked(x, dt, A, B, C, chunk, h0)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s, s_ref, rtol=1e-4, atol=1e-4)
