"""Hierarchical sparse attention: causality of retrieval, selection, fusion, cache, window.

The conformance suite covers the contract at its tiny size; these tests exercise real top-K
selection (more complete chunks than K), both fusions, both encoder variants and GQA.
"""

import pytest
import torch

import zoo.mixers.hsa as hsa_mod
from zoo import conformance
from zoo.errors import ZooError
from zoo.kernels.hsa_naive import hsa_attention_joint, hsa_attention_naive
from zoo.mixers.hsa import HSA, HSAConfig, visible_chunks
from zoo.registry import get_spec

D = 32
BASE = {"n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "chunk_size": 16, "top_k": 2, "window": 8,
        "encoder_layers": 1, "fusion": "softmax"}


def build(seed=0, **over) -> HSA:
    torch.manual_seed(seed)
    spec = get_spec("hsa")
    m = spec.cls(D, spec.make_config({**BASE, **over}))
    with torch.no_grad():  # move norms off their all-ones init so every path carries signal
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def x_of(length, seed=1, batch=2):
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed))


# -- causality: information planted where retrieval must not look --------------------------

def _planted(m: HSA, t: int, lo: int, hi: int) -> float:
    """Change tokens lo..hi-1 and return how much the output at token t moved."""
    x = x_of(64)
    x2 = x.clone()
    x2[:, lo:hi] += 5.0 * torch.randn_like(x2[:, lo:hi])
    with torch.no_grad():
        return (m(x2)[:, t] - m(x)[:, t]).abs().max().item()


@pytest.mark.parametrize("over", [{"encoder_layers": 0}, {"encoder_layers": 1},
                                  {"fusion": "joint", "backend": "torch"},
                                  {"chunk_overlap": 8, "backend": "torch"},
                                  {"chunk_lookahead": 12, "chunk_overlap": 4, "backend": "torch"}])
def test_retrieval_cannot_see_open_or_future_chunks(over):
    # window 1: the window branch sees the token itself only, so anything else at t comes
    # through retrieval. t = 40 sits in chunk 2 (tokens 32..47), which is still open at t.
    m = build(**over, window=1, top_k=4)
    t = 40
    assert _planted(m, t, 32, 40) < 1e-6, "retrieval saw the token's own open chunk"
    assert _planted(m, t, 41, 48) < 1e-6, "retrieval saw later tokens of the open chunk"
    assert _planted(m, t, 48, 64) < 1e-6, "retrieval saw a future chunk"
    assert _planted(m, t, 16, 32) > 1e-3, "a complete earlier chunk must be retrievable (control)"


def test_planted_check_catches_a_leaky_mask(monkeypatch):
    """The planted test has teeth: a mask that also admits the token's own chunk fails it."""
    monkeypatch.setattr(hsa_mod, "visible_chunks",
                        lambda pos, n, s: torch.arange(n)[None, :] * s <= pos[:, None])
    m = build(window=1, top_k=4)
    assert _planted(m, 40, 32, 40) > 1e-3


def test_selected_chunks_are_complete_before_the_token():
    m = build(top_k=3)
    B, L, Hkv, Dr = 2, 100, 2, 8
    g = torch.Generator().manual_seed(0)
    qr, lmk = torch.randn(B, L, Hkv, Dr, generator=g), torch.randn(B, L // 16, Hkv, Dr, generator=g)
    pos = torch.arange(L)
    ids, w, index = m.select(qr, lmk, 0)
    assert index is None  # the torch backend has no chunk -> pairs index
    n_vis = (pos // 16).clamp(max=lmk.shape[1])
    valid = ids >= 0
    assert ((ids + 1) * 16 <= pos[None, :, None, None]).masked_select(valid).all()
    assert torch.equal(valid.sum(-1), n_vis.clamp(max=3)[None, :, None].expand(B, L, Hkv))
    assert (w[~valid] == 0).all()
    has = valid.any(-1)
    assert torch.allclose(w.sum(-1)[has], torch.ones(()), atol=1e-6) and (w.sum(-1)[~has] == 0).all()
    # the chosen chunks are the best-scoring visible ones
    s = torch.einsum("blhd,bchd->blhc", qr, lmk).masked_fill(~visible_chunks(pos, lmk.shape[1], 16)[None, :, None],
                                                              float("-inf"))
    top = s.topk(3, -1)
    best = top.indices.masked_fill(top.values == float("-inf"), -1).sort(-1, descending=True).values
    assert torch.equal(ids, best)
    # most recent chunk first, empty slots last
    assert (ids[..., :-1] >= ids[..., 1:]).all()


def test_stick_breaking_weights():
    m = build(fusion="stick-breaking")
    s = torch.tensor([[0.3, -1.0, 2.0, 0.0]])
    valid = torch.tensor([[True, True, True, False]])
    sig = torch.sigmoid(s)
    want = torch.stack([sig[0, 0], sig[0, 1] * (1 - sig[0, 0]), sig[0, 2] * (1 - sig[0, 0]) * (1 - sig[0, 1]),
                        torch.tensor(0.0)])[None]
    assert torch.allclose(m.fuse(s, valid), want, atol=1e-6)


def test_fusion_temperature_divides_the_scores():
    s = torch.tensor([[0.3, -1.0, 2.0, 0.0]])
    valid = torch.tensor([[True, True, True, False]])
    want = torch.cat([(s[:, :3] / 0.5).softmax(-1), torch.zeros(1, 1)], -1)
    sharp = build(fusion_temperature=0.5).fuse(s, valid)
    assert torch.allclose(sharp, want, atol=1e-6)
    assert sharp[0, 2] > build().fuse(s, valid)[0, 2]  # the best-scoring chunk gains weight


def test_fusion_length_scale_sharpens_only_past_the_training_chunks():
    """Scores times log C / log n where a token sees C > n complete chunks: unchanged up to n,
    doubled at n^2 (the same as fusion_temperature 0.5 there), in both fusions."""
    g = torch.Generator().manual_seed(0)
    pos = torch.tensor([5, 63, 64, 79, 256, 300])  # chunk_size 16: 0, 3, 4, 4, 16, 18 chunks seen
    s = torch.randn(2, len(pos), 2, 4, generator=g)
    valid = torch.rand(2, len(pos), 2, 4, generator=g) > 0.2
    for fusion in ("softmax", "stick-breaking"):
        plain, scaled = build(fusion=fusion).fuse(s, valid, pos), build(fusion=fusion, fusion_length_scale=4)
        got = scaled.fuse(s, valid, pos)
        assert torch.equal(got[:, :4], plain[:, :4])  # at most 4 chunks seen: as trained
        sharp = build(fusion=fusion, fusion_temperature=0.5).fuse(s, valid, pos)
        torch.testing.assert_close(got[:, 4], sharp[:, 4])  # 16 = 4^2 chunks: scores doubled
        assert not torch.allclose(got[:, 5], sharp[:, 5])  # 18 chunks: a little more than doubled
        assert torch.equal(scaled.fuse(s, valid), plain)  # no positions given: off


# -- chunked inference ----------------------------------------------------------------------

@pytest.mark.parametrize("over", [
    {},
    {"fusion": "stick-breaking", "encoder_layers": 0},
    {"n_kv_heads": 1, "encoder_layers": 2, "window": 20},
    {"fusion": "joint", "backend": "torch"},
    {"chunk_overlap": 5, "backend": "torch"},
    {"fusion": "joint", "chunk_overlap": 12, "backend": "torch"},
    {"chunk_lookahead": 7, "backend": "torch"},
    {"fusion": "joint", "chunk_overlap": 3, "chunk_lookahead": 15, "backend": "torch"},
])
def test_chunked_equals_full_with_real_selection(over):
    m = build(**over)
    x = x_of(80)  # 5 chunks, top-2: selection is a real choice
    with torch.no_grad():
        full = m(x)
        for sizes in ([80], [7, 1, 30, 17, 25], [16, 16, 1, 15, 32], [1] * 20 + [60]):
            got = conformance.run_chunks(m, x, sizes)
            assert (got - full).abs().max() < 1e-4, f"chunks {sizes}"


def test_cache_contents_and_state_bytes():
    m = build()
    cache = m.new_cache(2, "cpu", torch.float32)
    with torch.no_grad():
        m(x_of(37), cache)
    assert cache.ck.shape == (2, 32, 2, 8) and cache.lmk.shape == (2, 2, 2, 8)
    assert cache.buf.shape == (2, 5, D) and cache.swa_k.shape == (2, 2, 7, 8)
    assert cache.nbytes() == m.state_bytes(37, batch=2, dtype=torch.float32)


def test_window_changes_at_run_time():
    m = build(window=32)
    x = x_of(48)
    with torch.no_grad():
        wide = m(x)
        m.window = 4  # what a warm-up schedule does between steps
        narrow = m(x)
        assert (wide - narrow).abs().max() > 1e-3
        assert (wide[:, :4] - narrow[:, :4]).abs().max() < 1e-6  # both windows cover the first 4 tokens
        assert (conformance.run_chunks(m, x, [5, 20, 23]) - narrow).abs().max() < 1e-4
    assert m.state_bytes(48, batch=1, dtype=torch.float32) < build(window=32).state_bytes(48, 1, torch.float32)


@pytest.mark.parametrize("lq, lk, window", [(40, 40, 3), (40, 46, 5), (37, 37, 12), (25, 60, 30), (9, 9, 4)])
def test_blocked_window_equals_the_reference(monkeypatch, lq, lk, window):
    """The CPU window (blocks of queries against the keys their window reaches) is the dense
    reference, forward and backward: blocks smaller and larger than the window, a cache before
    the queries (lk > lq), a window longer than the cache."""
    monkeypatch.setattr(hsa_mod, "WINDOW_BLOCK", 8)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, lq, 8, generator=g, requires_grad=True)
    k = torch.randn(2, 2, lk, 8, generator=g, requires_grad=True)
    v = torch.randn(2, 2, lk, 8, generator=g, requires_grad=True)
    do = torch.randn(2, 4, lq, 8, generator=g)
    got = hsa_mod.window_attention_blocked(q, k, v, window)
    want = hsa_mod.window_attention_reference(q, k, v, window)
    assert (got - want).abs().max() < 1e-6
    for a, b in zip(torch.autograd.grad(got, (q, k, v), do), torch.autograd.grad(want, (q, k, v), do)):
        assert (a - b).abs().max() < 1e-5


def test_softmax_fusion_trains_the_retrieval():
    """With two or more candidate chunks the softmax over top-K scores passes gradient to the
    retrieval queries, the landmarks and the chunk encoder (the tiny conformance size has a
    single chunk, where softmax fusion is constant; it runs stick-breaking instead)."""
    m = build(fusion="softmax", top_k=2).train()
    y = m(x_of(48))
    (y * torch.randn_like(y)).sum().backward()
    for name in ("wq_ret.weight", "w_lmk.weight", "ret_norm.weight", "lmk_norm.weight", "cls",
                 "encoder.0.wqkv.weight", "wk_chunk.weight", "wv_chunk.weight"):
        p = dict(m.named_parameters())[name]
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# -- the retrieval attention reference ------------------------------------------------------

def test_naive_retrieval_attention_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    B, L, Hq, Hkv, Dh, S, C, K = 2, 9, 4, 2, 8, 16, 3, 2
    q, k, v = (torch.randn(B, L, Hq, Dh, generator=g), torch.randn(B, C * S, Hkv, Dh, generator=g),
               torch.randn(B, C * S, Hkv, Dh, generator=g))
    idx = torch.randint(-1, C, (B, L, Hkv, K), generator=g)
    w = torch.rand(B, L, Hkv, K, generator=g)
    out = hsa_attention_naive(q, k, v, w, idx, S)
    want = torch.zeros_like(out)
    for b in range(B):
        for t in range(L):
            for h in range(Hq):
                gk = h // (Hq // Hkv)
                for j in range(K):
                    c = int(idx[b, t, gk, j])
                    if c < 0:
                        continue
                    kc, vc = k[b, c * S:(c + 1) * S, gk], v[b, c * S:(c + 1) * S, gk]
                    p = (kc @ q[b, t, h] / Dh**0.5).softmax(0)
                    want[b, t, h] += w[b, t, gk, j] * (p @ vc)
    assert torch.allclose(out, want, atol=1e-5)


@pytest.mark.parametrize("joint", [False, True])
def test_overlapping_spans_match_a_loop(joint):
    """With overlap ov a selected chunk c attends over rows c*S - ov .. (c+1)*S - 1 (chunk 0 over
    its own rows only), in either fusion."""
    g = torch.Generator().manual_seed(1)
    B, L, Hq, Hkv, Dh, S, C, K, ov = 1, 7, 2, 1, 8, 16, 3, 2, 5
    q, k, v = (torch.randn(B, L, Hq, Dh, generator=g), torch.randn(B, C * S, Hkv, Dh, generator=g),
               torch.randn(B, C * S, Hkv, Dh, generator=g))
    idx = torch.randint(0, C, (B, L, Hkv, K), generator=g)
    idx[0, :, 0, 0] = 0  # chunk 0, which has nothing before it, in every row
    s = torch.randn(B, L, Hkv, K, generator=g)
    w = s.softmax(-1)
    out = hsa_attention_joint(q, k, v, s, idx, S, overlap=ov)[0] if joint else \
        hsa_attention_naive(q, k, v, w, idx, S, overlap=ov)
    want = torch.zeros_like(out)
    for t in range(L):
        for h in range(Hq):
            rows = [range(max(0, int(c) * S - ov), (int(c) + 1) * S) for c in idx[0, t, 0]]
            if joint:
                logits = torch.cat([k[0, list(r), 0] @ q[0, t, h] / Dh**0.5 + s[0, t, 0, j]
                                    for j, r in enumerate(rows)])
                want[0, t, h] = logits.softmax(0) @ torch.cat([v[0, list(r), 0] for r in rows])
            else:
                for j, r in enumerate(rows):
                    p = (k[0, list(r), 0] @ q[0, t, h] / Dh**0.5).softmax(0)
                    want[0, t, h] += w[0, t, 0, j] * (p @ v[0, list(r), 0])
    assert torch.allclose(out, want, atol=1e-5)
    assert not torch.allclose(out, hsa_attention_naive(q, k, v, w, idx, S), atol=1e-3)  # the overlap matters


@pytest.mark.parametrize("joint", [False, True])
def test_lookahead_spans_match_a_loop(joint):
    """With overlap ov and lookahead la, a selected chunk c attends over rows c*S - ov ..
    (c+1)*S + la - 1, the lookahead only once chunk c+1 is complete before the token (at
    position first + t)."""
    g = torch.Generator().manual_seed(2)
    B, L, Hq, Hkv, Dh, S, C, K, ov, la, first = 1, 9, 2, 1, 8, 16, 3, 2, 3, 6, 28
    q, k, v = (torch.randn(B, L, Hq, Dh, generator=g), torch.randn(B, C * S, Hkv, Dh, generator=g),
               torch.randn(B, C * S, Hkv, Dh, generator=g))
    idx = torch.randint(0, C, (B, L, Hkv, K), generator=g)
    idx[0, :, 0, 0] = 0  # chunk 0: chunk 1 completes at 32, inside the tokens 28..36
    idx[0, 8, 0, 1] = C - 1  # the last chunk has no rows after it (token 36 may not select it; the kernel
    # takes what it is given)
    s = torch.randn(B, L, Hkv, K, generator=g)
    w = s.softmax(-1)
    kw = dict(overlap=ov, lookahead=la, first=first)
    out = hsa_attention_joint(q, k, v, s, idx, S, **kw)[0] if joint else \
        hsa_attention_naive(q, k, v, w, idx, S, **kw)
    want = torch.zeros_like(out)
    for t in range(L):
        for h in range(Hq):
            rows = [range(max(0, int(c) * S - ov), (int(c) + 1) * S + (la if (int(c) + 2) * S <= first + t else 0))
                    for c in idx[0, t, 0]]
            if joint:
                logits = torch.cat([k[0, list(r), 0] @ q[0, t, h] / Dh**0.5 + s[0, t, 0, j]
                                    for j, r in enumerate(rows)])
                want[0, t, h] = logits.softmax(0) @ torch.cat([v[0, list(r), 0] for r in rows])
            else:
                for j, r in enumerate(rows):
                    p = (k[0, list(r), 0] @ q[0, t, h] / Dh**0.5).softmax(0)
                    want[0, t, h] += w[0, t, 0, j] * (p @ v[0, list(r), 0])
    assert torch.allclose(out, want, atol=1e-5)
    assert not torch.allclose(out, hsa_attention_naive(q, k, v, w, idx, S, overlap=ov), atol=1e-3)


def test_joint_retrieval_attention_matches_a_loop():
    """One softmax over the selected chunks' tokens, each chunk's logits shifted by its score;
    the shares are each chunk's part of that softmax, averaged over the group's query heads."""
    g = torch.Generator().manual_seed(0)
    B, L, Hq, Hkv, Dh, S, C, K = 2, 9, 4, 2, 8, 16, 3, 2
    G = Hq // Hkv
    q, k, v = (torch.randn(B, L, Hq, Dh, generator=g), torch.randn(B, C * S, Hkv, Dh, generator=g),
               torch.randn(B, C * S, Hkv, Dh, generator=g))
    idx = torch.randint(-1, C, (B, L, Hkv, K), generator=g)
    idx[0, 0] = -1  # a token with no chunk at all
    s = torch.randn(B, L, Hkv, K, generator=g)
    out, share = hsa_attention_joint(q, k, v, s, idx, S)
    want, want_share = torch.zeros_like(out), torch.zeros_like(share)
    for b in range(B):
        for t in range(L):
            for h in range(Hq):
                gk = h // G
                slots = [j for j in range(K) if idx[b, t, gk, j] >= 0]
                if not slots:
                    continue
                logits = torch.cat([k[b, int(idx[b, t, gk, j]) * S:(int(idx[b, t, gk, j]) + 1) * S, gk] @ q[b, t, h]
                                    / Dh**0.5 + s[b, t, gk, j] for j in slots])
                vals = torch.cat([v[b, int(idx[b, t, gk, j]) * S:(int(idx[b, t, gk, j]) + 1) * S, gk] for j in slots])
                p = logits.softmax(0)
                want[b, t, h] = p @ vals
                for n, j in enumerate(slots):
                    want_share[b, t, gk, j] += p[n * S:(n + 1) * S].sum() / G
    assert torch.allclose(out, want, atol=1e-5) and torch.allclose(share, want_share, atol=1e-6)
    assert (out[0, 0] == 0).all() and (share[0, 0] == 0).all()


def test_joint_fusion_trains_the_retrieval_and_records_its_shares():
    m = build(fusion="joint", backend="torch", top_k=2).train()
    x = x_of(48)
    y = m(x)
    (y * torch.randn_like(y)).sum().backward()
    for name in ("wq_ret.weight", "w_lmk.weight", "cls", "wk_chunk.weight", "wv_chunk.weight", "wq_hsa.weight"):
        p = dict(m.named_parameters())[name]
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    from zoo.retrieval import record_selections

    with torch.no_grad(), record_selections([(0, m.eval())]) as picked:
        m(x)
    [(_, ids, w, *_)] = picked[0]
    has = (ids >= 0).any(-1)
    assert torch.allclose(w.sum(-1)[has], torch.ones(()), atol=1e-5) and (w[ids < 0] == 0).all()


def test_config_is_validated():
    spec = get_spec("hsa")
    with pytest.raises(ZooError, match="fusion 'joint' has no Triton kernel: set backend = 'torch' or 'auto'"):
        spec.make_config({"fusion": "joint", "backend": "triton"})
    with pytest.raises(ZooError, match="chunk_overlap has no Triton kernel"):
        spec.make_config({"chunk_overlap": 8, "backend": "triton"})
    with pytest.raises(ZooError, match="chunk_overlap=64 must be below chunk_size=64"):
        spec.make_config({"chunk_overlap": 64, "backend": "torch"})
    with pytest.raises(ZooError, match="chunk_lookahead has no Triton kernel"):
        spec.make_config({"chunk_lookahead": 8, "backend": "triton"})
    with pytest.raises(ZooError, match="chunk_lookahead=64 must be below chunk_size=64"):
        spec.make_config({"chunk_lookahead": 64, "backend": "torch"})
    with pytest.raises(ZooError, match="multiple of 16"):
        spec.make_config({"chunk_size": 24})
    with pytest.raises(ZooError, match="n_kv_heads"):
        spec.make_config({"n_heads": 6, "n_kv_heads": 4})
    assert spec.make_config({}).chunk_size == 64 and spec.make_config({}).top_k == 8


def test_auto_backend_takes_torch_for_settings_without_a_kernel():
    m = HSA(32, HSAConfig(n_heads=2, n_kv_heads=1, chunk_size=16, top_k=2, window=8, chunk_overlap=4))
    assert m.backend_choice(torch.device("cpu")).chosen == "torch"
    assert HSA(32, HSAConfig(n_heads=2, n_kv_heads=1, chunk_size=16, fusion="joint")).torch_only
    assert HSA(32, HSAConfig(n_heads=2, n_kv_heads=1, chunk_size=16, chunk_lookahead=4)).torch_only


def test_runtime_settings_equal_a_layer_built_with_them():
    """`set_knob` on a trained layer (evaluation-time variants, schedules) gives the layer that
    was built with the setting: same parameters, same output."""
    torch.manual_seed(0)
    base = dict(n_heads=2, n_kv_heads=1, chunk_size=16, top_k=2, window=8, backend="torch")
    x = torch.randn(2, 80, 32)
    changed = HSA(32, HSAConfig(**base))
    settings = {"chunk_overlap": 6, "chunk_lookahead": 9, "top_k": 3, "window": 5, "fusion_temperature": 0.25,
                "fusion_length_scale": 2}
    built = HSA(32, HSAConfig(**{**base, **settings}))
    built.load_state_dict(changed.state_dict())
    for name, value in settings.items():
        changed.set_knob(name, value)
    assert changed.config == built.config and (changed.top_k, changed.window) == (3, 5)
    with torch.no_grad():
        torch.testing.assert_close(changed(x), built(x))
    with pytest.raises(ZooError, match="no runtime setting 'chunk_size'"):
        changed.set_knob("chunk_size", 32)
    with pytest.raises(ZooError, match="chunk_overlap=16 must be below chunk_size=16"):
        changed.set_knob("chunk_overlap", 16)


# -- cross_row_chunks: the batch read as one row by the retrieval branch, in training -------

def test_cross_row_chunks_reads_the_batch_as_one_longer_row():
    """In training each row's retrieval sees the earlier rows' chunks as a longer row would put
    them in front of it (row b at position b * L + t of one row), never a later row's; the
    first row, and evaluation, are unchanged."""
    on, off = build(cross_row_chunks=True, top_k=4), build(top_k=4)
    x = x_of(64, batch=3)
    on.train(), off.train()
    with torch.no_grad():
        y = on(x)
        torch.testing.assert_close(on._hsa(x, 0, None, "torch"),
                                   off._hsa(x.reshape(1, 3 * 64, D), 0, None, "torch").reshape(3, 64, -1))
        torch.testing.assert_close(y[0], off(x)[0])
        assert (y[1:] - off(x)[1:]).abs().max() > 1e-3, "later rows must retrieve from earlier rows"
        x2 = x.clone()
        x2[0, :16] += 5.0 * torch.randn_like(x2[0, :16])
        assert (on(x2)[1, 5] - y[1, 5]).abs().max() > 1e-3, "row 1's first chunk is open: row 0 is all it can retrieve"
        x3 = x.clone()
        x3[2] += 5.0 * torch.randn_like(x3[2])
        torch.testing.assert_close(on(x3)[:2], y[:2], rtol=0, atol=0)  # nothing from a later row
        on.eval(), off.eval()
        torch.testing.assert_close(on(x), off(x), rtol=0, atol=0)


def test_cross_row_chunks_needs_rows_of_whole_chunks():
    m = build(cross_row_chunks=True).train()
    with pytest.raises(ZooError, match="cross_row_chunks needs rows of whole chunks, got 72 tokens"):
        m(x_of(72))
    m.eval()
    m(x_of(72))  # evaluation reads rows one by one: any length
