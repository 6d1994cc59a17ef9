"""RWKV-7: both state-update forms, the official `rwkv` package as oracle, fla's naive DPLR
reference, the value residual and channel-mix inside ZooLM, chunked inference of the model."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from fla_refs import fla_naive

from zoo.mixers.rwkv7 import (
    LOG_DECAY_FLOOR,
    RWKV7,
    V_FIRST,
    RWKV7ChannelMix,
    RWKV7Config,
    wkv7_chunked,
    wkv7_recurrent,
)
from zoo.model import ModelCache, ModelConfig, SwiGLU, ZooLM
from zoo.registry import get_spec

TINY = {"head_dim": 16, "decay_lora": 8, "a_lora": 8, "v_lora": 8, "gate_lora": 8, "chunk_size": 8}


def _wkv_inputs(B=2, L=37, H=3, N=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, L, H, N, generator=g) for _ in range(3))
    log_w = LOG_DECAY_FLOOR * torch.rand(B, L, H, N, generator=g)
    kk = F.normalize(torch.randn(B, L, H, N, generator=g), dim=-1)
    a = torch.rand(B, L, H, N, generator=g)
    S0 = torch.randn(B, H, N, N, generator=g)
    return r, log_w, k, v, -kk, kk * a, S0


def _perturbed(mixer, seed=0, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return mixer


@pytest.mark.parametrize("chunk", [1, 4, 16, 64])
def test_chunked_form_equals_step_form(chunk):
    r, lw, k, v, a, b, S0 = _wkv_inputs()
    o1, s1 = wkv7_recurrent(r, lw, k, v, a, b, S0)
    o2, s2 = wkv7_chunked(r, lw, k, v, a, b, S0, chunk)
    assert (o1 - o2).abs().max() < 1e-4 * o1.abs().max()
    assert (s1 - s2).abs().max() < 1e-4 * s1.abs().max()


def test_chunked_form_gradients_match_step_form():
    inputs = [t.double().requires_grad_(True) for t in _wkv_inputs(B=1, L=11, H=2, N=4)]
    o1, s1 = wkv7_recurrent(*inputs)
    g1 = torch.autograd.grad((o1 ** 2).sum() + s1.sum(), inputs)
    o2, s2 = wkv7_chunked(*inputs, chunk_size=4)
    g2 = torch.autograd.grad((o2 ** 2).sum() + s2.sum(), inputs)
    for a, b in zip(g1, g2):
        assert torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-4)


def test_decay_is_soft_clamped_like_the_official_code():
    # official training code: w = -softplus(-z) - 0.5, decay = exp(-exp(w)); ours: -e^{-1/2} sigmoid(z)
    z = torch.linspace(-20, 20, 101, dtype=torch.float64)
    official = -torch.exp(-F.softplus(-z) - 0.5)
    assert torch.allclose(LOG_DECAY_FLOOR * torch.sigmoid(z), official)


def test_official_init():
    n_layers = 4
    m = RWKV7(64, RWKV7Config(head_dim=16, n_layers=n_layers), layer_idx=2)
    assert torch.all(m.output.weight == 0)
    assert torch.allclose(m.ln_x.weight, torch.full((64,), (3 / n_layers) ** 0.7))
    assert torch.allclose(m.k_a, torch.full((64,), 1.02)) and torch.allclose(m.r_k, torch.full((4, 16), -0.04))
    assert torch.all(m.w1 == 0) and torch.all(m.a1 == 0) and torch.all(m.g1 == 0)
    assert m.w1.shape[1] == 32  # max(32, round(2.5 sqrt(C) / 32) * 32)
    eye = torch.eye(64)
    assert torch.allclose(m.receptance.weight @ m.receptance.weight.T, eye, atol=1e-5)  # orthogonal
    assert torch.allclose(m.key.weight @ m.key.weight.T, 0.01 * eye, atol=1e-6)        # gain 0.1
    assert not hasattr(RWKV7(64, RWKV7Config(head_dim=16), layer_idx=0), "v0")          # layer 0 has no v gate
    cm = RWKV7ChannelMix(64, 256, layer_idx=0, n_layers=4)
    assert torch.all(cm.value.weight == 0)


# -- the official package as oracle (pip install 'mixer-zoo[oracles]') -------------------------------

def _official():
    os.environ["RWKV_V7_ON"] = "1"  # the package defines its RWKV-7 functions only under this flag
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    model = pytest.importorskip("rwkv.model")
    if not hasattr(model, "RWKV_x070_TMix_one"):
        pytest.fail("rwkv.model was imported before RWKV_V7_ON=1 was set")
    return model


def _official_weights(m: RWKV7):
    p = {n: t.detach().float() for n, t in m.named_parameters()}
    C = m.d_model
    empty = torch.empty(0)
    return [p["x_r"], p["x_w"], p["x_k"], p["x_v"], p["x_a"], p["x_g"], p["w0"], p["w1"], p["w2"],
            p["a0"], p["a1"], p["a2"], p.get("v0", empty), p.get("v1", empty), p.get("v2", empty),
            p["g1"], p["g2"], p["k_k"], p["k_a"], p["r_k"].reshape(C),
            p["receptance.weight"].T.contiguous(), p["key.weight"].T.contiguous(),
            p["value.weight"].T.contiguous(), p["output.weight"].T.contiguous(), p["ln_x.weight"], p["ln_x.bias"]]


@pytest.mark.parametrize("layer_idx", [0, 1])
def test_time_mix_matches_official_package(layer_idx):
    official = _official()
    C, N, T = 64, 16, 13
    m = _perturbed(RWKV7(C, RWKV7Config(head_dim=N, chunk_size=4, decay_lora=8, a_lora=8, v_lora=8, gate_lora=8),
                         layer_idx=layer_idx))
    weights = _official_weights(m)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, T, C, generator=g)
    v_first_in = torch.randn(1, T, C, generator=g)
    H = C // N

    # official step function, token by token
    x_prev, state, ys, v_firsts = torch.zeros(C), torch.zeros(H, N, N), [], []
    for t in range(T):
        vf = v_first_in[0, t] if layer_idx else torch.empty(C)
        y, x_prev, state, vf = official.RWKV_x070_TMix_one(layer_idx, H, N, x[0, t], x_prev, vf, state, *weights)
        ys.append(y)
        v_firsts.append(vf)
    want, want_state = torch.stack(ys)[None], state
    # official sequence function on the whole input
    vf = v_first_in[0] if layer_idx else torch.empty(T, C)
    want_seq, _, want_seq_state, _ = official.RWKV_x070_TMix_seq(layer_idx, H, N, x[0], torch.zeros(C), vf,
                                                                 torch.zeros(H, N, N), *weights)
    with torch.no_grad():
        shared = {V_FIRST: v_first_in} if layer_idx else {}
        full = m(x, shared=shared)
        cache = m.new_cache(1, "cpu", torch.float32)
        steps = torch.cat([m(x[:, t:t + 1], cache, shared={V_FIRST: v_first_in[:, t:t + 1]} if layer_idx else {})
                           for t in range(T)], dim=1)
    scale = want.abs().max()
    assert scale > 1e-2  # a real signal, not zeros
    assert (steps - want).abs().max() < 1e-4 * scale, "step form vs official TMix_one"
    assert (full - want).abs().max() < 1e-4 * scale, "chunked form vs official TMix_one"
    assert (want_seq[None] - want).abs().max() < 1e-4 * scale
    assert (cache.state - want_state).abs().max() < 1e-4 * want_state.abs().max()
    assert (cache.state - want_seq_state).abs().max() < 1e-4 * want_state.abs().max()
    if layer_idx == 0:  # layer 0 publishes its values as v_first, as the official code returns them
        assert torch.allclose(shared[V_FIRST][0], torch.stack(v_firsts), atol=1e-5)


def test_channel_mix_matches_official_package():
    official = _official()
    C, T = 32, 7
    cm = _perturbed(RWKV7ChannelMix(C, 4 * C, layer_idx=1, n_layers=3))
    x = torch.randn(1, T, C, generator=torch.Generator().manual_seed(2))
    K_, V_ = cm.key.weight.detach().T.contiguous(), cm.value.weight.detach().T.contiguous()
    prev, ys = torch.zeros(C), []
    for t in range(T):
        y, prev = official.RWKV_x070_CMix_one(x[0, t], prev, cm.x_k.detach(), K_, V_)
        ys.append(y)
    with torch.no_grad():
        cache = cm.new_cache(1, "cpu", torch.float32)
        got = torch.cat([cm(x[:, :3], cache), cm(x[:, 3:], cache)], dim=1)
    assert torch.allclose(got[0], torch.stack(ys), atol=1e-5)


# -- flash-linear-attention's naive DPLR reference (plain torch) ------------------------------------

def test_matches_fla_naive_dplr():
    naive = fla_naive("ops/generalized_delta_rule/dplr/naive.py")
    r, lw, k, v, a, b, S0 = _wkv_inputs(B=2, L=24, H=2, N=8)
    ours, S = wkv7_chunked(r, lw, k, v, a, b, S0, 8)
    hf = lambda t: t.transpose(1, 2).contiguous()  # noqa: E731  fla naive is head-first
    N = r.shape[-1]
    # fla scales q by N^-1/2 and keeps the state as [key, value]
    want, want_S = naive.dplr_recurrence(hf(r) * math.sqrt(N), hf(k), hf(v), hf(a), hf(b), hf(lw),
                                         initial_state=S0.transpose(-1, -2).contiguous())
    assert (ours - hf(want)).abs().max() < 1e-4 * ours.abs().max()
    assert (S - want_S.transpose(-1, -2)).abs().max() < 1e-4 * S.abs().max()
    want_c, want_cS = naive.dplr_chunkwise(hf(r) * math.sqrt(N), hf(k), hf(v), hf(a), hf(b), hf(lw),
                                           initial_state=S0.transpose(-1, -2).contiguous(), chunk_size=8)
    assert (ours - hf(want_c)).abs().max() < 1e-4 * ours.abs().max()
    assert (S - want_cS.transpose(-1, -2)).abs().max() < 1e-4 * S.abs().max()


# -- inside ZooLM --------------------------------------------------------------------------------

def _lm(layers=("rwkv7",), n_layers=3, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_layers=n_layers, layers=list(layers), vocab_size=64,
                      mixer_config={"rwkv7": TINY})
    model = ZooLM(cfg)
    with torch.no_grad():  # zero-initialised outputs would hide broken wiring
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_zoolm_chunked_equals_full():
    model = _lm()
    tokens = torch.randint(0, 64, (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(tokens)
        for chunk in (1, 5, 19):
            parts = torch.cat([lg for _, lg in model.iter_logits(tokens, chunk_size=chunk)], dim=1)
            assert (parts - full).abs().max() < 1e-4 * full.abs().max(), f"chunk {chunk}"


def test_zoolm_uses_channel_mix_value_residual_and_depth():
    model = _lm()
    assert all(isinstance(b.mlp, RWKV7ChannelMix) for b in model.blocks)
    assert [b.mixer.config.n_layers for b in model.blocks] == [3, 3, 3]  # the model's depth reaches the init
    assert model.blocks[0].mlp.key.out_features == 3 * model.config.hidden() // 2
    cache = model.new_cache(2, "cpu", torch.float32)
    assert isinstance(cache, ModelCache) and all(c is not None for c in cache.mlp)
    with torch.no_grad():
        model(torch.zeros(2, 3, dtype=torch.long), cache)
    per_layer = sum(b.mixer.state_bytes(3, batch=2, dtype=torch.float32) for b in model.blocks)
    assert cache.nbytes() == per_layer + 3 * 2 * 32 * 4  # plus each channel-mix's shifted token
    # the value residual is wired: later layers' v gates get gradients, layer 0 has none
    loss = model(torch.randint(0, 64, (2, 9))).logsumexp(-1).sum()
    loss.backward()
    assert model.blocks[1].mixer.v2.grad.abs().sum() > 0 and model.blocks[2].mixer.v0.grad.abs().sum() > 0
    # flops count the channel-mix in place of the SwiGLU
    swiglu = ModelConfig(d_model=32, n_layers=3, layers=["rwkv7"], vocab_size=64,
                         mixer_config={"rwkv7": {**TINY, "channel_mix": False}})
    assert isinstance(ZooLM(swiglu).blocks[0].mlp, SwiGLU)
    assert model.flops_per_token(16) == pytest.approx(ZooLM(swiglu).flops_per_token(16))  # same params, same flops


def test_zoolm_hybrid_and_plain_list_cache():
    model = _lm(layers=("nope", "rwkv7"), n_layers=2)
    tokens = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        full = model(tokens)
        parts = torch.cat([lg for _, lg in model.iter_logits(tokens, chunk_size=5)], dim=1)
    assert (parts - full).abs().max() < 1e-4 * full.abs().max()
    with pytest.raises(Exception, match="MLP keeps state"):
        model(tokens, [m.new_cache(1, "cpu", torch.float32) for m in model.mixers])


def test_mixer_chunks_with_shared_values():
    """A later layer run chunk by chunk with the matching slices of v_first equals its full run."""
    m = _perturbed(RWKV7(32, RWKV7Config(**TINY), layer_idx=1), scale=0.05)
    x = torch.randn(2, 21, 32)
    vf = torch.randn(2, 21, 32)
    with torch.no_grad():
        full = m(x, shared={V_FIRST: vf})
        cache = m.new_cache(2, "cpu", torch.float32)
        parts = [m(x[:, i:j], cache, shared={V_FIRST: vf[:, i:j]}) for i, j in ((0, 3), (3, 12), (12, 13), (13, 21))]
    assert (torch.cat(parts, 1) - full).abs().max() < 1e-4 * full.abs().max()
    other = m(x, shared={V_FIRST: torch.zeros_like(vf)})
    assert (other - full).abs().max() > 1e-3  # v_first really enters


def test_fla_backend_reports_why_not_on_cpu():
    choice = get_spec("rwkv7").choose_backend("cpu")
    assert choice.chosen == "torch" and "CUDA" in choice.reasons["fla"]


def test_state_bytes_bf16_cache():
    m = RWKV7(32, RWKV7Config(**TINY)).bfloat16()
    x = torch.randn(1, 10, 32).bfloat16()
    cache = m.new_cache(1, "cpu", torch.bfloat16)
    with torch.no_grad():
        m(x[:, :4], cache)
        m(x[:, 4:], cache)
    assert cache.nbytes() == m.state_bytes(10, batch=1, dtype=torch.bfloat16) == 32 * 2 + 2 * 16 * 16 * 4
