"""The `fla` backends of rwkv7 and retnet against our torch references on identical weights
(CUDA and flash-linear-attention only; benchmarks/rwkv_retnet_bench.py repeats this at
d_model 1024 and reports the errors). fla's Triton dots run in TF32 for fp32 inputs, hence
the 5e-3 tolerance in fp32."""

import pytest
import torch

from zoo.mixers.rwkv7 import V_FIRST
from zoo.registry import build_mixer, get_spec

CUDA = torch.device("cuda")
why = get_spec("rwkv7").choose_backend(CUDA).reasons.get("fla") if torch.cuda.is_available() else "needs CUDA"
pytestmark = pytest.mark.skipif(why is not None, reason=str(why))

CONFIGS = {"rwkv7": {"head_dim": 64, "n_layers": 4}, "retnet": {"n_heads": 2}}
D, B, L = 128, 2, 300  # L is not a multiple of the kernels' chunk size (64)
TOL = {torch.float32: 5e-3, torch.bfloat16: 3e-2}


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def pair(name, dtype):
    torch.manual_seed(0)
    layer = 1 if name == "rwkv7" else 0
    ref = build_mixer(name, D, {**CONFIGS[name], "backend": "torch"}, layer_idx=layer).to(CUDA)
    with torch.no_grad():  # zero-initialised projections would hide errors
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fast = build_mixer(name, D, {**CONFIGS[name], "backend": "fla"}, layer_idx=layer).to(CUDA)
    fast.load_state_dict(ref.state_dict())
    return ref, fast.to(dtype)


def call(name, m, x, vf, cache=None):
    return m(x, cache, shared={V_FIRST: vf}) if name == "rwkv7" else m(x, cache)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fla_backend_matches_reference(name, dtype):
    ref, fast = pair(name, dtype)
    x, vf, dy = (torch.randn(B, L, D, device=CUDA) for _ in range(3))
    xr, xf = x.clone().requires_grad_(True), x.clone().to(dtype).requires_grad_(True)
    y_ref, y_fast = call(name, ref, xr, vf), call(name, fast, xf, vf.to(dtype))
    assert fast.last_backend == "fla"
    y_ref.backward(dy)
    y_fast.backward(dy.to(dtype))
    assert rel(y_fast, y_ref) < TOL[dtype]
    assert rel(xf.grad, xr.grad) < TOL[dtype]
    for (n, p), q in zip(ref.named_parameters(), fast.parameters()):
        assert rel(q.grad, p.grad) < 2 * TOL[dtype], n
    with torch.no_grad():  # chunked inference through the cache, with a 1-token step
        cache, outs, i = fast.new_cache(B, CUDA, dtype), [], 0
        for s in (100, 1, 199):
            outs.append(call(name, fast, xf[:, i:i + s].detach(), vf[:, i:i + s].to(dtype), cache))
            i += s
    assert rel(torch.cat(outs, 1), y_ref) < TOL[dtype]
    assert cache.nbytes() == fast.state_bytes(L, batch=B, dtype=dtype)
