"""The fused rotary kernel against the reference `apply_rotary`, and the per-call work the
attention mixers now do once (positions, inverse frequencies, cos/sin tables, FlexAttention
score and mask functions, kernel options).

The kernel runs on CPU under the Triton interpreter, which must be switched on before triton
is imported: the pytest test runs this file as a script in a fresh interpreter with
`TRITON_INTERPRET=1`. The full-size bf16 check on a GPU is `benchmarks/attention_bench.py`.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoo.kernels import flex
from zoo.mixers import attention
from zoo.positional import apply_rotary, rope_cos_sin, rope_inv_freq
from zoo.registry import build_mixer

ROOT = Path(__file__).resolve().parents[1]
D = 32


def mixer(name: str, **overrides):
    torch.manual_seed(0)
    m = build_mixer(name, D, {"n_heads": 2, **overrides})
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.startswith("pe."):
                p.normal_(0, 0.5)
    return m


# -- the kernel, interpreted -------------------------------------------------------------------------

def test_rotary_kernel_matches_reference_under_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"interpreted rotary check failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "all rotary checks passed" in r.stdout


def _close(a, b, what, dtype):
    # the interpreter casts float32 to bf16/fp16 by truncation, torch rounds to nearest: one unit
    # in the last place apart at most; float32 is the same arithmetic
    assert a.shape == b.shape, what
    tol = {torch.float32: 1e-6, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[dtype]
    err = ((a.float() - b.float()).abs() / b.float().abs().clamp_min(1.0)).max().item()
    assert err <= tol, f"{what}: relative difference {err:.3g} > {tol:.3g}"


def _check_kernel():
    from zoo.kernels.rotary import fits, rotate_pair

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        # (B, H, Lq, Lk, Dh): half-width not a power of two; Dh 2; one query over a longer key set
        for B, H, Lq, Lk, Dh in [(2, 3, 20, 20, 12), (1, 2, 7, 30, 16), (2, 1, 1, 9, 2), (1, 4, 33, 33, 64)]:
            q_store = torch.randn(B, Lq, H, Dh, generator=g).to(dtype).requires_grad_()  # projection layout
            k_store = torch.randn(B, H, Lk + 3, Dh, generator=g).to(dtype).requires_grad_()
            q, k = q_store.transpose(1, 2), k_store[:, :, 3:]  # a [B, L, H, Dh] view; a non-dense slice
            pos_k = torch.arange(Lk) + 5
            cq, sq = rope_cos_sin(pos_k[-Lq:], rope_inv_freq(Dh))
            ck, sk = rope_cos_sin(pos_k, rope_inv_freq(Dh))
            cq = cq * (0.5 + torch.rand(Lq, Dh, generator=g))  # halves that differ: the general form
            assert fits(q, cq, sq) and fits(k, ck, sk)
            got = rotate_pair(q, k, cq, sq, ck, sk)
            want = apply_rotary(q, cq, sq), apply_rotary(k, ck, sk)
            what = f"{dtype} {(B, H, Lq, Lk, Dh)}"
            for a, b, name in zip(got, want, "qk"):
                _close(a, b, f"{what} {name}", dtype)
            assert got[0].stride() == q.stride(), "a dense input keeps its layout"
            dq, dk = torch.randn(got[0].shape, generator=g).to(dtype), torch.randn(got[1].shape, generator=g).to(dtype)
            grads = torch.autograd.grad([got[0], got[1]], [q_store, k_store], [dq, dk])
            # against float32 gradients: the reference's own bf16 backward rounds twice (two casts)
            q32, k32 = (t.detach().float().requires_grad_() for t in (q_store, k_store))
            ref = torch.autograd.grad([apply_rotary(q32.transpose(1, 2), cq, sq), apply_rotary(k32[:, :, 3:], ck, sk)],
                                      [q32, k32], [dq.float(), dk.float()])
            for a, b, name in zip(grads, ref, "qk"):
                _close(a, b.to(dtype) if dtype == torch.float32 else b, f"{what} d{name}", dtype)
    # shared tables (q and k at the same positions), contiguous [B, H, L, Dh] inputs
    x = torch.randn(2, 2, 10, 8, generator=g)
    c, s = rope_cos_sin(torch.arange(10), rope_inv_freq(8))
    a, b = rotate_pair(x, x * 2, c, s, c, s)
    _close(a, apply_rotary(x, c, s), "shared q", torch.float32)
    _close(b, apply_rotary(x * 2, c, s), "shared k", torch.float32)
    # what the kernel does not cover goes to the reference
    assert not fits(x, c[:1], s[:1]) and not fits(x, c.requires_grad_(), s)
    print("  kernel: layouts, dtypes, head dims, gradients")


def _check_mixers():
    """Whole mixers with the kernel in place of the reference rotation: outputs, gradients of the
    input and every parameter, chunked inference through the cache (keys concatenated there)."""
    from zoo.kernels.rotary import rotate_pair

    reference = attention._rotate_pair
    cases = [("rope", {}), ("xpos", {"scale_base": 16.0}), ("rope-yarn", {"factor": 4.0, "original_length": 16}),
             ("rope-dynamic-ntk", {"original_length": 8, "dynamic_step": 4}), ("rerope", {"rerope_window": 6}),
             ("swa", {"window": 7})]
    x = torch.randn(2, 24, D, generator=torch.Generator().manual_seed(1), requires_grad=True)
    for name, cfg in cases:
        m = mixer(name, backend="torch", **cfg)
        outs = []
        for rotate in (reference, rotate_pair):
            attention._rotate_pair = rotate
            try:
                y = m(x)
                grads = torch.autograd.grad(y.square().sum(), [x, *m.parameters()])
                with torch.no_grad():
                    cache, parts, i = m.new_cache(2, "cpu", torch.float32), [], 0
                    for n in (5, 1, 18):
                        parts.append(m(x[:, i:i + n], cache))
                        i += n
                outs.append((y, grads, torch.cat(parts, 1)))
            finally:
                attention._rotate_pair = reference
        (y0, g0, c0), (y1, g1, c1) = outs
        _close(y1, y0, f"{name} output", torch.float32)
        _close(c1, c0, f"{name} chunked", torch.float32)
        for a, b in zip(g1, g0):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), f"{name} gradient"
    print("  mixers: rope, xpos, rope-yarn, rope-dynamic-ntk, rerope, swa")


# -- per-call work done once ------------------------------------------------------------------------

def test_positions_are_shared_and_kept_apart_in_inference_mode():
    a = attention.positions(0, 16, torch.device("cpu"))
    assert attention.positions(0, 16, "cpu") is a and a.tolist() == list(range(16))
    assert attention.positions(3, 16, "cpu").tolist() == list(range(3, 16))
    with torch.inference_mode():
        b = attention.positions(0, 16, "cpu")
    assert b is not a and b.is_inference() and not a.is_inference()
    assert attention.positions(0, 1 << 17, "cpu") is not attention.positions(0, 1 << 17, "cpu")  # long: not kept


@pytest.mark.parametrize("name", ["learned", "rope", "xpos", "alibi", "t5-bias"])
def test_training_after_inference_mode_at_the_same_length(name):
    # cached positions, slopes, buckets and tables made in inference mode must never reach a backward
    m = mixer(name)
    x = torch.randn(2, 12, D, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = m(x)
    y = m(x.requires_grad_())
    y.sum().backward()
    assert torch.allclose(y.detach(), want, atol=1e-6)
    assert all(p.grad is not None and p.grad.isfinite().all() for p in m.parameters())


def test_rope_tables_are_shared_and_rebuilt_when_anything_changes():
    a, b = mixer("rope"), mixer("rope")
    pos = attention.positions(0, 20, "cpu")
    inv = a.pe.inv_freq("cpu")
    assert b.pe.inv_freq("cpu") is inv  # equal settings share the frequencies ...
    ta = a.pe.tables(pos, pos, inv)
    assert b.pe.tables(pos, pos, inv) is ta  # ... and the tables (every layer of a model, every step)
    cos, sin = rope_cos_sin(pos, inv)
    assert torch.equal(ta[0], cos) and torch.equal(ta[1], sin) and ta[2] is ta[0]
    other = torch.arange(20)
    assert a.pe.tables(other, other, inv) is not ta  # other positions
    pos2 = torch.arange(20)
    t2 = a.pe.tables(pos2, pos2, inv)
    pos2.add_(1)  # modified in place: rebuilt
    t3 = a.pe.tables(pos2, pos2, inv)
    assert t3 is not t2 and torch.equal(t3[0], rope_cos_sin(pos2, inv)[0])
    a.reconfigure(base=500.0)
    assert a.pe.inv_freq("cpu") is not inv and torch.allclose(a.pe.inv_freq("cpu"), rope_inv_freq(a.head_dim, 500.0))
    x = mixer("xpos", scale_base=16.0)
    tx = x.pe.tables(pos, pos, x.pe.inv_freq("cpu"))
    assert tx is not ta and not torch.equal(tx[0], tx[2])  # xPos: queries and keys scaled apart


def test_flex_training_shapes_use_the_plain_functions():
    # what a user writes for aligned queries and keys: no captured offset, int32 where one is needed
    assert flex.band_block_mask(256, 256, 0, None, "cpu").mask_mod is flex.causal
    slopes, bias = torch.rand(4), torch.rand(4, 9)
    assert flex.alibi_score_mod(slopes, 0).__code__.co_freevars == ("slopes",)
    assert set(flex.distance_bias_score_mod(bias, 0).__code__.co_freevars) == {"bias", "last"}
    for mod in (flex.alibi_score_mod(slopes, 7), flex.distance_bias_score_mod(bias, 7),
                flex.band_block_mask(100, 300, 0, 50, "cpu").mask_mod):
        captured = [c.cell_contents for c in mod.__closure__ if isinstance(c.cell_contents, torch.Tensor)]
        ints = [t for t in captured if not t.is_floating_point()]
        assert ints and all(t.dtype == torch.int32 for t in ints)
    # shifted and aligned forms agree on the scores they share
    s, h = torch.randn(()), torch.tensor(2)
    qi, ki = torch.tensor(9, dtype=torch.int32), torch.tensor(3, dtype=torch.int32)
    for make, arg in ((flex.alibi_score_mod, slopes), (flex.distance_bias_score_mod, bias)):
        assert torch.equal(make(arg, 4)(s, 0, h, qi, ki), make(arg, 0)(s, 0, h, qi + 4, ki))


def test_t5_reaches_flex_with_the_table_kernel_options(monkeypatch):
    seen = []
    real = flex.flex_attend

    def spy(*args, **kwargs):
        seen.append(kwargs.get("kernel_options"))
        return real(*args, **kwargs)

    monkeypatch.setattr(flex, "flex_attend", spy)
    q, k, v = (torch.randn(1, 2, 20, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    pos = torch.arange(20)
    with torch.no_grad():
        for name in ("t5-bias", "alibi"):
            m = mixer(name)
            torch.testing.assert_close(m.attend(q, k, v, pos, pos, backend="flex"),
                                       m.attend(q, k, v, pos, pos, backend="torch"), atol=2e-5, rtol=2e-5)
    assert seen == [flex.TABLE_KERNEL_OPTIONS, None]
    # few queries (chunked inference) run FlexAttention's decoding kernel: a query tile that fits them
    passed, real_flex = [], flex.flex_attention

    def record(*args, **kwargs):
        passed.append(kwargs["kernel_options"])
        return real_flex(*args, **kwargs)

    monkeypatch.setattr(flex, "flex_attention", record)
    x = torch.randn(1, 1, 140, 8)
    with torch.no_grad():
        for n in (1, 20, 140):
            flex.flex_attend(x[:, :, -n:], x, x, kernel_options=flex.TABLE_KERNEL_OPTIONS)
    assert [p["BLOCK_M"] for p in passed] == [16, 32, 128] and flex.TABLE_KERNEL_OPTIONS["BLOCK_M"] == 128
    o = flex.TABLE_KERNEL_OPTIONS  # FlexAttention's own constraints on the tiles
    assert all(flex.BLOCK % o[b] == 0 for b in ("BLOCK_M", "BLOCK_N", "BLOCK_M1", "BLOCK_N1", "BLOCK_M2", "BLOCK_N2"))
    assert o["BLOCK_N1"] % o["BLOCK_M1"] == 0 and o["BLOCK_M2"] % o["BLOCK_N2"] == 0


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1", "run under TRITON_INTERPRET=1"
    torch.set_num_threads(1)
    _check_kernel()
    _check_mixers()
    print("all rotary checks passed")


@pytest.mark.parametrize("name,kw", [("rope", {}), ("xpos", {"scale_base": 16.0})])
def test_compiled_tables_take_no_id_of_a_tensor(monkeypatch, name, kw):
    """Under torch.compile the tables are intermediates: id() of one is a graph break in Dynamo
    versions that do not trace it (one graph per layer instead of one). The compiled branch tells
    shared tables by `is`, and still materialises each distinct table once."""
    import builtins

    m = mixer(name, **kw)
    pos = torch.arange(12)
    inv = m.pe.inv_freq("cpu")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(attention, "_materialize", lambda t: t.clone())
    real_id = builtins.id

    def no_tensor_id(obj):
        assert not isinstance(obj, torch.Tensor), "id() of a tensor in the compiled tables path"
        return real_id(obj)

    monkeypatch.setattr(builtins, "id", no_tensor_id)
    cq, sq, ck, sk = m.pe.tables(pos, pos, inv)
    monkeypatch.setattr(builtins, "id", real_id)
    want = m.pe._tables(pos, pos, inv, None)
    assert all(torch.equal(a, b) for a, b in zip((cq, sq, ck, sk), want))
    assert (ck is cq) == (name == "rope")  # rope: q and k share one materialised table; xPos: scaled apart
