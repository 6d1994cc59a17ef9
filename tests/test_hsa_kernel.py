"""The Triton HSA kernels against the torch references, on CPU under the Triton interpreter.

`TRITON_INTERPRET=1` must be set before triton is imported, so the pytest test runs this
same file as a script in a fresh interpreter with the variable set. The full-size bf16
comparison on a GPU is `benchmarks/hsa_bench.py`.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_chunk_query_index_cuts_every_chunk_list_into_items():
    from zoo.kernels.hsa_triton import chunk_query_index

    g = torch.Generator().manual_seed(0)
    B, L, H, K, C = 2, 30, 3, 4, 5
    idx = torch.randint(-1, C, (B, L, H, K), generator=g)
    idx[0, :, 0, :] = torch.where(idx[0, :, 0, :] >= 0, 2, -1)  # one hot chunk: many items
    for item_pairs in (1, 4, 1000):
        ix = chunk_query_index(idx, C, item_pairs)
        n_key = B * H * C
        assert ix.offsets.shape == (n_key + 1,) and int(ix.offsets[-1]) == int((idx >= 0).sum())
        assert ix.item_start.numel() == n_key + B * L * H * K // item_pairs  # the upper bound, no host sync
        flat = idx.reshape(-1)
        for b in range(B):
            for h in range(H):
                for c in range(C):
                    key = (b * H + h) * C + c
                    want = [((b * L + t) * H + h) * K + j for t in range(L) for j in range(K) if idx[b, t, h, j] == c]
                    assert ix.entries[ix.offsets[key]:ix.offsets[key + 1]].tolist() == want, (b, h, c)
                    items = range(int(ix.key_items[key]), int(ix.key_items[key + 1]))
                    got = [p for i in items for p in ix.entries[ix.item_start[i]:ix.item_end[i]].tolist()]
                    assert got == want and all(ix.item_key[i] == key for i in items), (item_pairs, key)
                    assert all(0 < ix.item_end[i] - ix.item_start[i] <= item_pairs for i in items)
                    assert all(flat[p] == c for p in got)
        unused = torch.arange(ix.item_start.numel()) >= ix.key_items[-1]
        assert (ix.item_start[unused] == ix.item_end[unused]).all()


def test_flash_window_plumbing_against_a_model_of_the_kernel(monkeypatch):
    """`_FlashWindow` hands torch's flash kernel the [B, L, H, D] layout, window W as
    (left W - 1, right 0) and its saved outputs back to the backward. Here the two private
    ops are replaced by a plain model of FlashAttention-2's local mask (key j seen by query i
    iff i + Lk - Lq - left <= j <= i + Lk - Lq + right); the real kernel is checked against
    the reference on the GPU (`_flash_window_probe`, benchmarks/hsa_bench.py)."""
    import zoo.mixers.hsa as hsa_mod

    def model(q, k, v, left, right, scale):
        Lq, Lk, G = q.shape[1], k.shape[1], q.shape[2] // k.shape[2]
        i = torch.arange(Lq)[:, None] + Lk - Lq
        j = torch.arange(Lk)[None, :]
        keep = (j >= i - left) & (j <= i + right)
        k, v = k.repeat_interleave(G, 2), v.repeat_interleave(G, 2)
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
        s = s.masked_fill(~keep, float("-inf"))
        return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v), torch.logsumexp(s, -1)

    calls = []

    def fake_fwd(q, k, v, window, scale):
        calls.append(("fwd", q.shape, k.shape, window))
        assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
        with torch.no_grad():
            o, lse = model(q, k, v, window - 1, 0, scale)
        return o, lse, torch.zeros(2, dtype=torch.int64), torch.zeros((), dtype=torch.int64)

    def fake_bwd(do, q, k, v, o, lse, rng_state, unused, window, scale):
        calls.append(("bwd", do.shape))
        assert do.stride(-1) == 1 and rng_state.shape == (2,)
        ins = [t.detach().requires_grad_() for t in (q, k, v)]
        with torch.enable_grad():
            out, _ = model(*ins, window - 1, 0, scale)
            return torch.autograd.grad(out, ins, do)

    monkeypatch.setattr(hsa_mod, "_flash_fwd", fake_fwd)
    monkeypatch.setattr(hsa_mod, "_flash_bwd", fake_bwd)
    g = torch.Generator().manual_seed(0)
    for lq, lk, window in ((40, 40, 7), (24, 50, 9), (30, 30, 100)):
        q = torch.randn(2, 4, lq, 16, generator=g, requires_grad=True)
        k = torch.randn(2, 2, lk, 16, generator=g, requires_grad=True)
        v = torch.randn(2, 2, lk, 16, generator=g, requires_grad=True)
        do = torch.randn(2, 4, lq, 16, generator=g)
        got = hsa_mod._FlashWindow.apply(q, k, v, window)
        want = hsa_mod.window_attention_reference(q, k, v, window)
        assert torch.allclose(got, want, atol=1e-5)
        for a, b in zip(torch.autograd.grad(got, (q, k, v), do), torch.autograd.grad(want, (q, k, v), do)):
            assert torch.allclose(a, b, atol=1e-5)
    assert [c[0] for c in calls] == ["fwd", "bwd"] * 3
    # the GPU probe's own comparison passes this model, and fails one that reads the window one key wider
    assert hsa_mod._flash_window_check(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(0)) is None
    monkeypatch.setattr(hsa_mod, "_flash_fwd", lambda q, k, v, window, scale: fake_fwd(q, k, v, window + 1, scale))
    why = hsa_mod._flash_window_check(torch.device("cpu"), torch.float32, torch.Generator().manual_seed(0))
    assert why is not None and "disagrees" in why


def test_window_kernel_choice_on_cpu():
    from zoo.mixers.hsa import window_kernel

    assert window_kernel(torch.device("cpu"), torch.bfloat16, 64, 64) == ("sdpa", "short query chunk")
    kernel, why = window_kernel(torch.device("cpu"), torch.bfloat16, 64, 4096)
    assert kernel == "sdpa" and "CUDA" in why


def test_triton_kernel_matches_reference_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"interpreted kernel check failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "all kernel checks passed" in r.stdout


# -- the checks, run in the child process ----------------------------------------------------

def _close(a, b, what, atol=1e-4):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    if a.numel() == 0:
        return
    err = (a.float() - b.float()).abs().max().item()
    scale = max(1.0, b.float().abs().max().item())
    assert err <= atol * scale, f"{what}: max abs difference {err:.3g} (scale {scale:.3g})"
    print(f"  {what:28s} max err {err:.2e}")


def _check_op():
    import zoo.kernels.hsa_triton as ht
    from zoo.kernels.hsa_naive import hsa_attention_naive

    # (B, L, Hq, Hkv, Dh, S, C, K, pairs per item): GQA; S and Dh not powers of two; more slots
    # than chunks; no chunk; items of 3 pairs split every chunk's list (hot chunks)
    for B, L, Hq, Hkv, Dh, S, C, K, item in [(2, 40, 4, 2, 16, 16, 3, 2, 3), (1, 20, 3, 1, 24, 48, 2, 3, 256),
                                             (1, 17, 2, 2, 8, 32, 2, 1, 2), (2, 5, 2, 1, 16, 16, 0, 2, 256)]:
        ht.ITEM_PAIRS = item
        g = torch.Generator().manual_seed(0)
        q = torch.randn(B, L, Hq, Dh, generator=g, requires_grad=True)
        k = torch.randn(B, C * S, Hkv, Dh, generator=g, requires_grad=True)
        v = torch.randn(B, C * S, Hkv, Dh, generator=g, requires_grad=True)
        idx = torch.randint(-1, C, (B, L, Hkv, K), generator=g) if C else torch.full((B, L, Hkv, K), -1)
        if C:
            idx[0, : L // 2, 0, 0] = C - 1  # a chunk many tokens pick
        w = torch.rand(B, L, Hkv, K, generator=g, requires_grad=True)
        dout = torch.randn(B, L, Hq, Dh, generator=g)
        want = hsa_attention_naive(q, k, v, w, idx, S)
        gw = torch.autograd.grad(want, (q, k, v, w), dout, allow_unused=True)
        for layout in ("chunk", "token"):
            print(f"op {layout} B={B} L={L} Hq={Hq} Hkv={Hkv} Dh={Dh} S={S} C={C} K={K} item={item}")
            got = ht.hsa_attention(q, k, v, w, idx, S, layout=layout)
            _close(got, want, "forward")
            gg = torch.autograd.grad(got, (q, k, v, w), dout)
            for name, a, b in zip(("dq", "dk", "dv", "dweights"), gg, gw):
                _close(a, b if b is not None else torch.zeros_like(a), name)
    ht.ITEM_PAIRS = 256


def _check_op_half():
    """The 16-bit path (the casts before each tl.dot, 16-bit partial sums) in fp16: the
    interpreter's tl.dot does not support bf16, which the GPU benchmark checks at full size."""
    from zoo.kernels.hsa_naive import hsa_attention_naive
    from zoo.kernels.hsa_triton import hsa_attention

    B, L, Hq, Hkv, Dh, S, C, K = 2, 24, 4, 1, 16, 16, 3, 2
    print(f"op fp16 B={B} L={L} Hq={Hq} Hkv={Hkv} Dh={Dh} S={S} C={C} K={K}")
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(B, L, Hq, Dh, generator=g), torch.randn(B, C * S, Hkv, Dh, generator=g), \
        torch.randn(B, C * S, Hkv, Dh, generator=g)
    idx = torch.randint(-1, C, (B, L, Hkv, K), generator=g)
    w = torch.rand(B, L, Hkv, K, generator=g)
    dout = torch.randn(B, L, Hq, Dh, generator=g)
    half = [t.half().requires_grad_() for t in (q, k, v)] + [w.clone().requires_grad_()]
    full = [t.half().float().requires_grad_() for t in (q, k, v)] + [w.clone().requires_grad_()]
    got = hsa_attention(*half, idx, S)
    want = hsa_attention_naive(*full, idx, S)
    _close(got, want, "forward", atol=1e-2)
    for name, a, b in zip(("dq", "dk", "dv", "dweights"), torch.autograd.grad(got, half, dout.half()),
                          torch.autograd.grad(want, full, dout)):
        _close(a, b, name, atol=2e-2)


def _check_select():
    """`hsa_select` against `HSA.select` on the torch backend: the same chunks in the same
    slots, the same fusion weights, the same gradients to the retrieval queries and the
    landmarks; queries after a cache (start > 0), more slots than visible chunks, landmark
    tiles smaller than the chunk count (several tiles merged into the running top-K)."""
    import zoo.kernels.hsa_triton as ht
    from zoo.registry import get_spec

    spec = get_spec("hsa")
    ht.SELECT_BLOCK_C = 16
    # (B, L, Hkv, Dr, S, C, top_k, start, fusion)
    for B, L, Hkv, Dr, S, C, top_k, start, fusion in [(2, 70, 2, 16, 16, 4, 2, 0, "softmax"),
                                                      (1, 40, 1, 24, 16, 37, 5, 560, "stick-breaking"),
                                                      (1, 9, 1, 16, 16, 3, 4, 41, "softmax"),
                                                      (2, 20, 2, 16, 16, 0, 2, 0, "softmax")]:
        print(f"select B={B} L={L} Hkv={Hkv} Dr={Dr} S={S} C={C} top_k={top_k} start={start} {fusion}")
        m = spec.cls(32, spec.make_config({"n_heads": 2 * Hkv, "n_kv_heads": Hkv, "head_dim": 16, "chunk_size": S,
                                            "top_k": top_k, "retrieval_dim": Dr, "fusion": fusion}))
        g = torch.Generator().manual_seed(1)
        qr = torch.randn(B, L, Hkv, Dr, generator=g, requires_grad=True)
        lmk = torch.randn(B, C, Hkv, Dr, generator=g, requires_grad=True)
        dw = torch.randn(B, L, Hkv, min(top_k, C), generator=g)
        outs = {}
        for backend in ("torch", "triton"):
            ids, w, index = m.select(qr, lmk, start, backend)
            assert (index is None) == (backend == "torch" or C == 0)
            grads = torch.autograd.grad((w * dw).sum(), (qr, lmk), allow_unused=True) if C else (None, None)
            outs[backend] = (ids, w, grads)
        (ids_t, w_t, g_t), (ids_k, w_k, g_k) = outs["torch"], outs["triton"]
        assert ids_k.dtype == torch.long and torch.equal(ids_k, ids_t), "different chunks chosen"
        _close(w_k, w_t, "fusion weights", atol=1e-5)
        for name, a, b in zip(("dqr", "dlmk"), g_k, g_t):
            if a is not None or b is not None:
                _close(a, b if b is not None else torch.zeros_like(a), name, atol=1e-5)
    ht.SELECT_BLOCK_C = 64


def _on_both_backends(cfg: dict, x: torch.Tensor, grad_seed: int):
    """The same perturbed layer on the torch and triton backends (training mode), run forward
    and backward: ((torch layer, output), (triton layer, output))."""
    from zoo.registry import get_spec

    spec = get_spec("hsa")
    out = []
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        m = spec.cls(32, spec.make_config({**cfg, "backend": backend})).train()
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
        y = m(x)
        assert m.last_backend == backend
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed)))
        out.append((m, y))
    return out


def _close_grads(tri, ref) -> None:
    ref_p = dict(ref.named_parameters())
    for name, p in tri.named_parameters():
        _close(p.grad, ref_p[name].grad, f"grad {name}")


def _check_mixer():
    """The whole layer on both backends: output, chunked inference and every parameter
    gradient, so the kernel's weight gradient is shown to reach the retrieval scores and,
    through them, the landmarks (w_lmk, lmk_norm) and the retrieval queries (wq_ret)."""
    from zoo import conformance
    from zoo.registry import get_spec

    cfg = {"n_heads": 4, "n_kv_heads": 2, "head_dim": 16, "chunk_size": 16, "top_k": 2, "window": 8,
           "encoder_layers": 1, "fusion": "softmax"}
    x = torch.randn(2, 56, 32, generator=torch.Generator().manual_seed(1))
    (ref, y_ref), (tri, y_tri) = _on_both_backends(cfg, x, grad_seed=2)
    print("mixer")
    _close(y_tri, y_ref, "forward")
    with torch.no_grad():
        _close(conformance.run_chunks(tri, x, [20, 1, 35]), y_ref, "triton chunked vs torch full")
    _close_grads(tri, ref)
    assert dict(ref.named_parameters())["w_lmk.weight"].grad.abs().sum() > 0
    conformance.check_backends(get_spec("hsa"))
    print("  conformance check_backends passed")


def _check_cross_rows():
    """`cross_row_chunks` in training: the kernels see the batch as one row of B * L tokens;
    output and every parameter gradient as on the torch backend."""
    cfg = {"n_heads": 4, "n_kv_heads": 2, "head_dim": 16, "chunk_size": 16, "top_k": 3, "window": 8,
           "encoder_layers": 1, "cross_row_chunks": True}
    x = torch.randn(3, 48, 32, generator=torch.Generator().manual_seed(3))
    (ref, y_ref), (tri, y_tri) = _on_both_backends(cfg, x, grad_seed=4)
    print("cross rows")
    _close(y_tri, y_ref, "forward")
    _close_grads(tri, ref)


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1", "run under TRITON_INTERPRET=1"
    torch.set_num_threads(1)
    _check_op()
    _check_op_half()
    _check_select()
    _check_mixer()
    _check_cross_rows()
    print("all kernel checks passed")
