"""The `fla` backends of rwkv7 and retnet against our torch references on identical weights
(CUDA and flash-linear-attention only; benchmarks/rwkv_retnet_bench.py repeats this at
L 1000 and reports the errors).

bf16 at the bench's width: Triton tunes fla's kernels per (head size, dtype), and a tuning of
the RWKV-7 kernels costs minutes, so these tests reuse the bench's. The bound is relative to
what bf16 itself costs: fla in bf16 may differ from the fp32 reference by at most twice as much
as our own torch path in bf16 does (or `TOL`, whichever is larger), in relative L2 norm, for
the output and every gradient. Measured errors go to the JUnit XML (`--junitxml`) as properties.
"""

import pytest
import torch

from zoo.mixers.rwkv7 import V_FIRST
from zoo.registry import build_mixer, get_spec

CUDA = torch.device("cuda")
why = get_spec("rwkv7").choose_backend(CUDA).reasons.get("fla") if torch.cuda.is_available() else "needs CUDA"
pytestmark = pytest.mark.skipif(why is not None, reason=str(why))

CONFIGS = {"rwkv7": {"head_dim": 64, "n_layers": 12}, "retnet": {"n_heads": 4}}
D, B, L = 1024, 2, 300  # L is not a multiple of the kernels' chunk size (64)
TOL = 1e-2


def rel(a, b):
    """Relative L2 error of a against b."""
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def build(name, backend, dtype, state=None):
    torch.manual_seed(0)
    layer = 1 if name == "rwkv7" else 0  # rwkv7: a layer after the first, so the value residual is used
    m = build_mixer(name, D, {**CONFIGS[name], "backend": backend}, layer_idx=layer).to(CUDA)
    if state is None:
        with torch.no_grad():  # zero-initialised projections would hide errors
            for p in m.parameters():
                p.add_(0.02 * torch.randn_like(p))
    else:
        m.load_state_dict(state)
    return m.to(dtype)


def call(name, m, x, vf, cache=None):
    return m(x, cache, shared={V_FIRST: vf}) if name == "rwkv7" else m(x, cache)


def fwd_bwd(name, m, x, vf, dy):
    x = x.to(next(m.parameters()).dtype).clone().requires_grad_(True)
    dtype = x.dtype
    y = call(name, m, x, vf.to(dtype))
    y.backward(dy.to(dtype))
    grads = {"x": x.grad, **{n: p.grad for n, p in m.named_parameters() if p.grad is not None}}
    return y.detach(), grads


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fla_backend_matches_reference(name, record_property):
    ref = build(name, "torch", torch.float32)
    state = ref.state_dict()
    fast, t16 = build(name, "fla", torch.bfloat16, state), build(name, "torch", torch.bfloat16, state)
    x, vf, dy = (torch.randn(B, L, D, device=CUDA) for _ in range(3))
    y_ref, g_ref = fwd_bwd(name, ref, x, vf, dy)
    y_fast, g_fast = fwd_bwd(name, fast, x, vf, dy)
    y_16, g_16 = fwd_bwd(name, t16, x, vf, dy)
    assert fast.last_backend == "fla" and t16.last_backend == "torch"

    errs = {"out": (rel(y_fast, y_ref), rel(y_16, y_ref))}
    errs.update({f"grad {n}": (rel(g_fast[n], g_ref[n]), rel(g_16[n], g_ref[n])) for n in g_ref})
    for what, (e_fla, e_16) in errs.items():
        record_property(f"{what}: fla bf16 / torch bf16", f"{e_fla:.3e} / {e_16:.3e}")
    bad = {w: e for w, e in errs.items() if e[0] > max(TOL, 2 * e[1])}
    assert not bad, f"fla beyond 2x the bf16 floor: {bad}"

    with torch.no_grad():  # chunked inference through the cache, with a 1-token step
        cache, outs, i = fast.new_cache(B, CUDA, torch.bfloat16), [], 0
        for s in (100, 1, 199):
            outs.append(call(name, fast, x[:, i:i + s].bfloat16(), vf[:, i:i + s].bfloat16(), cache))
            i += s
    e_chunk = rel(torch.cat(outs, 1), y_ref)
    record_property("chunked through the cache: fla bf16", f"{e_chunk:.3e}")
    assert e_chunk <= max(TOL, 2 * errs["out"][1])
    assert cache.nbytes() == fast.state_bytes(L, batch=B, dtype=torch.bfloat16)


def test_retnet_fla_norm_gate_matches_torch(record_property):
    from zoo.mixers.retnet import norm_gate, norm_gate_fla

    B, Lq, H, Dv = 2, 300, 4, 512
    o = torch.randn(B, Lq, H, Dv, device=CUDA, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(B, Lq, H * Dv, device=CUDA, dtype=torch.bfloat16, requires_grad=True)
    outs = []
    for fn in (norm_gate, norm_gate_fla):
        y = fn(o, g, 1e-5)
        outs.append((y, *torch.autograd.grad(y.float().square().sum(), (o, g))))
    for name, a, e in zip(("out", "do", "dg"), outs[0], outs[1], strict=True):
        record_property(f"fla norm_gate vs torch: {name}", f"{rel(e, a):.3e}")
        assert rel(e, a) < 1e-2
