"""Hugging Face causal LMs on the GPU: bf16 weights and the chunk probe, `logits_to_keep` and the
caches on CUDA, chunked scoring equal to one forward. Skipped without a GPU."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
sys.path.insert(0, os.path.dirname(__file__))

from test_hf_eval import GRID, bpe, tiny  # noqa: E402

from zoo.eval.hashhop import HashHopGrid  # noqa: E402
from zoo.eval.hf import HFModelRef, evaluate_hf, evaluate_ppl_hf, load_hf, score_sample  # noqa: E402
from zoo.tasks.hashhop import generate  # noqa: E402

CUDA = torch.device("cuda")


@pytest.mark.parametrize("kind", ["llama", "mamba2"])
def test_gpu_scoring_chunked_equals_one_forward_and_bf16_runs(kind, tmp_path, no_tf32):
    tok = bpe()
    tiny(kind, len(tok)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    hf = load_hf(HFModelRef(name=str(tmp_path), dtype="float32"), CUDA)
    assert hf.chunked and hf.keeps_logits
    sample = generate(2000, 3, 2, 6, False, seed=5)
    a = score_sample(hf, sample, chunk_size=64, greedy=True)
    b = score_sample(hf, sample, chunk_size=1 << 20, greedy=True)
    assert [(s.exact, s.chars_ok, s.greedy_text) for s in a] == [(s.exact, s.chars_ok, s.greedy_text) for s in b]
    assert [s.nll for s in a] == pytest.approx([s.nll for s in b], rel=1e-3)

    half = load_hf(HFModelRef(name=str(tmp_path), dtype="bfloat16"), CUDA)
    assert half.chunked and next(half.model.parameters()).dtype == torch.bfloat16 and half.ref.dtype == "bfloat16"
    res = evaluate_hf(half, HashHopGrid(**{**GRID, "chunk_size": 32}))
    assert all(c["status"] == "ok" and 0 <= c["accuracy"] <= 0.1 for c in res["cells"])
    texts = [generate(3000, 2, 1, 6, False, seed=i).text for i in range(4)]
    rows = [r for r in evaluate_ppl_hf(half, texts, [128, 400], windows=2, chunk_size=48) if r["scope"] == "all"]
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(math.isfinite(r["ppl"]) for r in rows)
