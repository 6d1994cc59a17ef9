"""The lm task through a real tokenizer: a byte-level BPE trained here with `tokenizers` and
stored with the run, a Hugging Face tokenizer from a local directory, a `datasets` corpus;
byte level stays the default with the run ids it had."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("tokenizers")
os.environ["HF_HUB_OFFLINE"] = "1"

from tokenizers import Tokenizer  # noqa: E402

from zoo.errors import ZooError  # noqa: E402
from zoo.model import ModelConfig  # noqa: E402
from zoo.store import Store  # noqa: E402
from zoo.tasks.base import get_task  # noqa: E402
from zoo.tasks.lm import LMConfig, split_texts  # noqa: E402
from zoo.train.config import RunConfig, TaskRef, TrainConfig  # noqa: E402
from zoo.train.trainer import train  # noqa: E402

WORDS = "the quick brown fox jumps over the lazy dog while seven wizards quietly hex a jovial bank clerk".split()


def corpus(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):
        (d / f"doc{i}.txt").write_text(" ".join(rng.choice(WORDS, 300)) + "\n")
    return d


def test_byte_level_stays_the_default_and_keeps_run_ids():
    assert "tokenizer" not in LMConfig().model_dump()
    assert LMConfig(tokenizer="bpe:600").model_dump()["tokenizer"] == "bpe:600"
    a = RunConfig(task=TaskRef(name="lm"), train=TrainConfig(steps=1))
    b = RunConfig(task=TaskRef(name="lm", config={"tokenizer": "byte"}), train=TrainConfig(steps=1))
    assert a.run_id() == b.run_id() != RunConfig(task=TaskRef(name="lm", config={"tokenizer": "bpe:600"}),
                                                 train=TrainConfig(steps=1)).run_id()


@pytest.mark.parametrize("bad", ["bpe:10", "sentencepiece", "hf:"])
def test_bad_tokenizer_is_one_error(bad):
    with pytest.raises(ZooError, match="tokenizer"):
        get_task("lm", {"tokenizer": bad})


def test_bpe_trained_on_the_corpus_is_stored_with_the_run(tmp_path, one_thread):
    cfg = {"paths": [str(corpus(tmp_path))], "extensions": [".txt"], "eval_fraction": 0.2, "tokenizer": "bpe:600"}
    task = get_task("lm", cfg)
    data = task.stream("train")
    assert task.vocab_size <= 600 and data.max() < task.vocab_size
    assert data.size < 0.5 * sum(len(t) for t in split_texts(task.config, "train"))  # words became tokens

    parts = {"task": TaskRef(name="lm", config=cfg), "train": TrainConfig(steps=2, batch_size=2, seq_len=32, threads=1)}
    with pytest.raises(ValueError, match="smaller than"):  # a vocabulary that cannot embed the tokens
        RunConfig(model=ModelConfig(d_model=16, n_layers=1, vocab_size=100), **parts)
    run = RunConfig(model=ModelConfig(d_model=16, n_layers=1), **parts)
    assert run.model.vocab_size == task.vocab_size  # unset: sized from the task's tokenizer
    res = train(run, Store(tmp_path / "store"))
    tok = Tokenizer.from_str((res.run_dir / "tokenizer.json").read_text())
    first = split_texts(task.config, "train")[0]
    assert tok.decode(list(map(int, data[:50])))[:40] == first[:40]  # the stored tokenizer reads the stream


def test_hf_tokenizer_by_path(tmp_path):
    pytest.importorskip("transformers")
    sys.path.insert(0, os.path.dirname(__file__))
    from test_hf_eval import bpe

    tok = bpe()
    tok.save_pretrained(tmp_path / "tok")
    task = get_task("lm", {"paths": [str(corpus(tmp_path))], "extensions": [".txt"],
                           "eval_fraction": 0.2, "tokenizer": f"hf:{tmp_path / 'tok'}"})
    data = task.stream("eval")
    assert task.vocab_size == len(tok) and (data == tok.eos_token_id).sum() == len(split_texts(task.config, "eval"))
    with pytest.raises(ZooError, match="cannot load the tokenizer"):
        get_task("lm", {"tokenizer": f"hf:{tmp_path / 'nothing'}"}).stream("eval")


def test_datasets_corpus_is_split_by_document(monkeypatch):
    docs = [f"document {i} " + "text " * 40 for i in range(200)]
    fake = SimpleNamespace(load_dataset=lambda name, config, split: _Table(docs))
    monkeypatch.setitem(sys.modules, "datasets", fake)
    cfg = LMConfig(paths=["hf-dataset:some/corpus"], eval_fraction=0.1)
    train_docs, eval_docs = split_texts(cfg, "train"), split_texts(cfg, "eval")
    assert sorted(train_docs + eval_docs) == sorted(docs) and 5 <= len(eval_docs) <= 40
    with pytest.raises(ZooError, match="no column 'body'"):
        split_texts(LMConfig(paths=["hf-dataset:some/corpus"], text_field="body"), "train")


class _Table:
    def __init__(self, docs):
        self.docs, self.column_names = docs, ["text"]

    def __getitem__(self, key):
        return list(self.docs)
