"""Retrieval mixers' selection recording (`zoo.retrieval`): the recorded selection is the one
`select` makes, chunk by chunk as in one pass, off by default and after errors, and at no cost
to compiled graphs; HSA is a retrieval mixer, hashhop-attn (dense multi-hop attention) is not."""

from __future__ import annotations

import inspect

import pytest
import torch

from zoo.mixers.hsa import HSA
from zoo.registry import get_spec
from zoo.retrieval import is_retrieval, record_selections, retrieval_layers, retrieval_mixer_names

D = 32
HSA_CFG = {"n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "chunk_size": 16, "top_k": 2, "window": 8}


def hsa_layer(seed: int = 0) -> HSA:
    torch.manual_seed(seed)
    spec = get_spec("hsa")
    m = spec.cls(D, spec.make_config(HSA_CFG))
    with torch.no_grad():  # off the all-ones norm init, so scores differ between chunks
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def tiny_model(layers=("swa", "hsa"), seed: int = 0, **hsa):
    """A two-layer ZooLM, random weights: a window layer below an HSA layer by default."""
    from zoo.model import ModelConfig, ZooLM

    mc = {"swa": {"n_heads": 2, "window": 8}, "hsa": {**HSA_CFG, **hsa}}
    cfg = ModelConfig(d_model=D, n_layers=2, layers=list(layers), mixer_config={k: v for k, v in mc.items()
                                                                               if k in layers})
    torch.manual_seed(seed)
    return ZooLM(cfg).eval()


# -- the hook -----------------------------------------------------------------------------------

def test_recorded_selection_is_what_select_returns():
    m = hsa_layer()
    x = torch.randn(2, 72, D, generator=torch.Generator().manual_seed(1))
    assert m.selections is None  # off unless asked
    with torch.no_grad(), record_selections([(0, m)]) as picked:
        m(x)
    assert m.selections is None  # off again afterwards
    [(start, ids, weights, *scored)] = picked[0]
    with torch.no_grad():
        qr = m.ret_norm(m.wq_ret(x).view(2, 72, m.n_kv_heads, m.retrieval_dim))
        _, _, lmk = m.encode_chunks(x[:, :64])
        want, want_w, _ = m.select(qr, lmk, 0)
    assert start == 0 and ids.shape == weights.shape == (2, 72, 2, 2)
    assert torch.equal(ids, want) and torch.equal(weights, want_w)
    [got_qr, got_lmk] = scored  # the scores' two sides: the selection is the top-K of qr . lmk
    assert torch.equal(got_qr, qr) and torch.equal(got_lmk, lmk)
    assert (ids[:, 40] >= 0).all() and len({tuple(r) for r in ids[:, 60:, 0].reshape(-1, 2).tolist()}) > 1


def test_cached_calls_record_the_full_forward_selection_chunk_by_chunk():
    m = hsa_layer()
    x = torch.randn(1, 72, D, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), record_selections([(3, m)]) as picked:
        m(x)
        [(_, full, full_w, *_)] = picked[3]
        picked[3].clear()
        cache = m.new_cache(1, "cpu", torch.float32)
        for s, e in ((0, 30), (30, 31), (31, 72)):
            m(x[:, s:e], cache)
    assert [c[0] for c in picked[3]] == [0, 30, 31]
    K = full.shape[-1]  # a call that has seen fewer chunks selects fewer: pad with empty slots
    got = torch.cat([torch.nn.functional.pad(ids, (0, K - ids.shape[-1]), value=-1) for _, ids, *_ in picked[3]], 1)
    got_w = torch.cat([torch.nn.functional.pad(w, (0, K - w.shape[-1])) for _, _, w, *_ in picked[3]], 1)
    assert torch.equal(got, full)
    torch.testing.assert_close(got_w, full_w)


def test_recording_is_off_after_an_error():
    m = hsa_layer()
    with pytest.raises(RuntimeError), record_selections([(0, m)]):
        m(torch.randn(1, 8, D + 1))
    assert m.selections is None


def test_recording_off_adds_no_graph_break():
    m = hsa_layer()
    x = torch.randn(1, 72, D)
    src, first = inspect.getsourcelines(HSA)
    line = first + next(i for i, s in enumerate(src) if "if self.selections is not None" in s)
    explained = torch._dynamo.explain(m)(x)
    frames = [(f.filename, f.lineno) for b in explained.break_reasons for f in b.user_stack]
    assert not [f for f in frames if f[0].endswith("hsa.py") and f[1] in (line, line + 1)]
    torch._dynamo.reset()


def test_retrieval_mixers_are_those_that_select_chunks():
    assert "hsa" in retrieval_mixer_names()
    assert "hashhop-attn" not in retrieval_mixer_names()  # multi-hop dense attention: no chunks, no top-K
    model = tiny_model()
    assert [i for i, _ in retrieval_layers(model)] == [1]
    assert is_retrieval(HSA) and not is_retrieval(get_spec("hashhop-attn").cls)
