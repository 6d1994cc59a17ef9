"""mamba_ssm's kernels against our torch references on identical weights (CUDA only).

Runs where CUDA and mamba_ssm are present (the GPU machine: see benchmarks/ssm_bench.py,
which repeats these comparisons at d_model 1024 and reports the errors); skipped elsewhere.
"""

import pytest
import torch

from zoo.mixers.mamba import causal_conv1d_fn, check_mamba_ssm
from zoo.registry import build_mixer

CUDA = torch.device("cuda")
why = check_mamba_ssm(CUDA) if torch.cuda.is_available() else "needs CUDA"
pytestmark = [pytest.mark.skipif(why is not None, reason=str(why)), pytest.mark.usefixtures("no_tf32")]

# the default configs at the bench's width: Triton tunes per (chunk size, heads, dtype), so these
# tests reuse the tuning of benchmarks/ssm_bench.py instead of tuning again for a narrow layer
CONFIGS = {
    "mamba": {"d_state": 16},
    "mamba2": {"d_state": 128, "headdim": 64, "ngroups": 2, "chunk_size": 256},
}
D, B, L = 1024, 2, 300  # L is not a multiple of the kernels' chunk sizes


def pair(name, dtype=torch.float32):
    torch.manual_seed(0)
    ref = build_mixer(name, D, {**CONFIGS[name], "backend": "torch"}).to(CUDA, dtype)
    fast = build_mixer(name, D, {**CONFIGS[name], "backend": "mamba_ssm"}).to(CUDA, dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def chunked(m, x, sizes):
    cache = m.new_cache(x.shape[0], x.device, x.dtype)
    out, i = [], 0
    for s in sizes:
        out.append(m(x[:, i:i + s], cache))
        i += s
    return torch.cat(out, 1), cache


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kernel_forward_and_backward_match_the_reference(name, record_property):
    ref, fast = pair(name)
    x = torch.randn(B, L, D, device=CUDA)
    g = torch.randn(B, L, D, device=CUDA)
    xr, xf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ref, y_fast = ref(xr), fast(xf)
    assert fast.last_backend == "mamba_ssm"
    y_ref.backward(g)
    y_fast.backward(g)
    errs = {"out": rel(y_fast, y_ref), "grad x": rel(xf.grad, xr.grad)}
    errs.update({f"grad {n}": rel(q.grad, p.grad) for (n, p), q in zip(ref.named_parameters(), fast.parameters())})
    for what, e in errs.items():  # into the JUnit XML (--junitxml), for the notes
        record_property(f"fp32 {what}", f"{e:.3e}")
    assert errs["out"] < 3e-3 and errs["grad x"] < 3e-3
    bad = {w: e for w, e in errs.items() if w.startswith("grad ") and e >= 1e-2}
    assert not bad, bad


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kernel_chunked_with_cache_matches_full(name):
    ref, fast = pair(name)
    x = torch.randn(B, L, D, device=CUDA)
    with torch.no_grad():
        want = ref(x)
        got, cache = chunked(fast, x, [97, 1, 1, 64, 137])  # fresh start, steps, carried state
        _, ref_cache = chunked(ref, x, [L])
    assert rel(got, want) < 3e-3
    assert rel(cache.ssm, ref_cache.ssm) < 3e-3
    assert rel(cache.conv, ref_cache.conv) < 1e-4  # the same inputs, up to matmul tiling


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kernel_bf16_close_to_fp32_reference(name, record_property):
    ref, _ = pair(name)
    _, fast16 = pair(name, torch.bfloat16)
    x = torch.randn(B, L, D, device=CUDA)
    with torch.no_grad():
        rel_l2 = ((fast16(x.bfloat16()).float() - ref(x)).norm() / ref(x).norm()).item()
    record_property("bf16 out, relative L2", f"{rel_l2:.3e}")
    assert rel_l2 < 2e-2


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_as_the_mamba_ssm_module_on_identical_weights(name):
    import mamba_ssm

    ref, _ = pair(name)
    c = CONFIGS[name]
    if name == "mamba":
        peer = mamba_ssm.Mamba(D, d_state=c["d_state"], layer_idx=0)
    else:
        peer = mamba_ssm.Mamba2(D, d_state=c["d_state"], headdim=c["headdim"], ngroups=c["ngroups"],
                                chunk_size=c["chunk_size"], use_mem_eff_path=causal_conv1d_fn() is not None,
                                layer_idx=0)
    peer = peer.to(CUDA)
    peer.load_state_dict(ref.state_dict())  # parameter names and shapes are the same
    x = torch.randn(B, L, D, device=CUDA)
    with torch.no_grad():
        assert rel(peer(x), ref(x)) < 3e-3


@pytest.mark.parametrize("tokens", [512, 300])  # sequence segments of 256, state carried; whole rows
def test_mamba2_kernel_calls_split_past_int32_offsets_match_the_reference(tokens, monkeypatch, record_property):
    """The splitting that keeps mamba_ssm's int32 offsets in range, forced at a small size."""
    import zoo.mixers.mamba2 as mod

    ref, fast = pair("mamba2")
    monkeypatch.setattr(mod, "INT32_ELEMENTS", mod.INT32_ELEMENTS // fast.kernel_tokens() * tokens)
    assert fast.kernel_tokens() == tokens < B * L
    x = torch.randn(B, L, D, device=CUDA)
    g = torch.randn(B, L, D, device=CUDA)
    xr, xf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ref, y_fast = ref(xr), fast(xf)
    y_ref.backward(g)
    y_fast.backward(g)
    errs = {"out": rel(y_fast, y_ref), "grad x": rel(xf.grad, xr.grad)}
    errs.update({f"grad {n}": rel(q.grad, p.grad) for (n, p), q in zip(ref.named_parameters(), fast.parameters())})
    record_property(f"split at {tokens} tokens: fp32 worst", f"{max(errs.values()):.3e}")
    assert errs["out"] < 3e-3 and errs["grad x"] < 3e-3
    bad = {w: e for w, e in errs.items() if w.startswith("grad ") and e >= 1e-2}
    assert not bad, bad
