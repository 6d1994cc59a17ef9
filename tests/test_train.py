"""Trainer pieces: schedules and knobs, learning rate, budgets, the lm task, checkpoints and
load_model, perplexity vs length, one tiny end-to-end run with a length curriculum."""

import json
import math

import numpy as np
import pytest
import torch

from zoo.errors import ZooError
from zoo.eval.ppl import PplEval, evaluate_ppl, evaluate_run
from zoo.model import ModelConfig, ZooLM
from zoo.store import Store
from zoo.tasks.base import IGNORE, get_task
from zoo.train.checkpoint import latest_checkpoint, list_checkpoints, load_model, save_checkpoint
from zoo.train.config import RunConfig, TaskRef, TrainConfig
from zoo.train.lengths import micro_seq_len
from zoo.train.schedule import Schedule, apply_mixer_knobs, set_knob
from zoo.train.trainer import Trainer, answer_starts, budget, lr_at, train

TINY = {"d_model": 32, "n_layers": 2}


def test_schedules_step_and_linear():
    s = Schedule(points=[(0, 256), (10, 512), (20, 1024)])
    assert [s(0), s(9), s(10), s(25)] == [256, 256, 512, 1024]
    lin = Schedule(points=[(0, 64), (100, 512)], interp="linear")
    assert (lin(0), lin(50), lin(100), lin(1000)) == (64, 288, 512, 512) and isinstance(lin(33), int)
    frac = Schedule(points=[(0, 0.0), (100, 1.0)], interp="linear")
    assert frac(25) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="increase strictly"):
        Schedule(points=[(5, 1), (5, 2)])
    hops = Schedule(points=[(0, [1]), (10, [1, 2])])  # a mixture: HashHop draws hop counts from the list
    assert hops(3) == [1] and hops(10) == [1, 2]
    with pytest.raises(ValueError, match="cannot be linear"):
        Schedule(points=[(0, [1]), (10, [1, 2])], interp="linear")


def test_mixer_knobs_reach_the_layers():
    torch.manual_seed(0)
    m = ZooLM(ModelConfig(**TINY, layers=["nope", "rope"], mixer_config={"nope": {"n_heads": 2},
                                                                          "rope": {"n_heads": 2}}))
    apply_mixer_knobs(m, {"mixer.rope.base": 500000.0, "mixer.*.window": 8})
    assert m.mixers[1].config.base == 500000.0 and all(x.window == 8 for x in m.mixers)
    with pytest.raises(ZooError, match="does not use"):
        apply_mixer_knobs(m, {"mixer.hsa.window": 8})
    with pytest.raises(ZooError, match="no runtime setting"):
        set_knob(m.mixers[0], "n_heads", 4)

    class Plain(torch.nn.Module):  # a mixer without set_knob: the attribute is set if it exists
        spec = m.mixers[0].spec
        window = 4

    p = Plain()
    set_knob(p, "window", 16)
    assert p.window == 16
    with pytest.raises(ZooError, match="no runtime setting 'base'"):
        set_knob(p, "base", 2.0)


def test_learning_rate_schedules():
    cos = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cos, 100) == pytest.approx(0.1) and lr_at(9, cos, 100) == pytest.approx(1.0)
    assert lr_at(99, cos, 100) == pytest.approx(0.1)
    assert lr_at(10, cos, 100) > lr_at(50, cos, 100) > lr_at(90, cos, 100)
    wsd = TrainConfig(steps=100, lr=1.0, lr_schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_at(79, wsd, 100) == 1.0 and lr_at(99, wsd, 100) == pytest.approx(0.0) and lr_at(89, wsd, 100) == 0.5


def test_budgets_and_length_mixture():
    cfg = TrainConfig(max_tokens=10_000, batch_size=4, seq_len=100)
    steps, tokens, _ = budget(cfg)
    assert steps == 25 and tokens == 10_000
    flops_cfg = TrainConfig(max_flops=1e6, steps=1000, batch_size=1, seq_len=10)
    assert budget(flops_cfg, lambda L: 1000.0)[0] == 100
    with pytest.raises(ValueError, match="budget"):
        TrainConfig()
    lens = [micro_seq_len(0, s, 0, 512, 0.4, 128) for s in range(2000)]
    assert set(lens) == {512, 128} and abs(lens.count(512) / 2000 - 0.4) < 0.05
    assert lens == [micro_seq_len(0, s, 0, 512, 0.4, 128) for s in range(2000)]  # deterministic


def test_lm_task_reads_text_jsonl_and_parquet(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 50)
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": f"json line {i} " * 10}) for i in range(20)))
    files = ["a.txt", "b.jsonl"]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": ["parquet row " * 30] * 5}), tmp_path / "c.parquet")
        files.append("c.parquet")
    except ImportError:
        pass  # parquet is optional; text and JSON Lines are checked either way
    task = get_task("lm", {"paths": [str(tmp_path / f) for f in files], "extensions": [".txt"],
                           "eval_fraction": 0.01})
    data = task.stream("train")
    text = bytes(int(x) for x in data if x < 256).decode()
    assert "hello world" in text and "json line 19" in text
    if "c.parquet" in files:
        assert "parquet row" in text
    b = task.batch(3, 4, 32, seed=1)
    assert b.tokens.shape == (4, 32) and torch.equal(b.tokens[:, 1:], b.targets[:, :-1])
    assert torch.equal(b.tokens, task.batch(3, 4, 32, seed=1).tokens)
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ZooError, match="bad.jsonl:1: no string field 'text'"):
        get_task("lm", {"paths": [str(tmp_path / "bad.jsonl")]}).stream("train")


def test_default_corpus_split_is_deterministic_and_disjoint():
    from zoo.tasks.lm import LMConfig, _held_out, list_files

    files = list_files(LMConfig())
    assert len(files) > 100  # Python's standard library
    held = [rel for _, rel in files if _held_out(rel, 0.05)]
    assert 0 < len(held) < len(files) / 5


def _corpus(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(10):
        (d / f"{i}.txt").write_text(f"file {i} says: " + "abcdefghij" * (30 + i))
    return d


def test_train_with_curriculum_accum_and_target_then_load_and_ppl(tmp_path):
    corpus = _corpus(tmp_path)
    run = RunConfig(model=ModelConfig(**TINY, layers=["swa"], mixer_config={"swa": {"n_heads": 2, "window": 8}}),
                    task=TaskRef(name="lm", config={"paths": [str(corpus)], "extensions": [".txt"],
                                                    "eval_fraction": 0.3}),
                    train=TrainConfig(steps=40, batch_size=2, grad_accum=2, seq_len=32, lr=3e-3, eval_every=10,
                                      log_every=5, threads=1,
                                      target={"metric": "eval_acc", "value": 0.0, "mode": "max"},
                                      schedules={"seq_len": {"points": [[0, 16], [5, 32]]},
                                                 "long_fraction": {"points": [[0, 0.5]]},
                                                 "mixer.swa.window": {"points": [[0, 4], [8, 16]]}}))
    store = Store(tmp_path / "store")
    res = train(run, store)
    assert res.summary["steps"] == 10  # the target (any accuracy) is met at the first evaluation
    rows = store.metrics(res.run_id, "seq_len")
    assert [r["value"] for r in rows][:6] == [16, 16, 16, 16, 16, 32]
    assert {r["value"] for r in store.metrics(res.run_id, "knob/mixer.swa.window")} == {4, 16}
    assert store.get_run(res.run_id)["status"] == "done"
    assert (res.run_dir / "metrics.jsonl").read_text().count("\n") == 10

    model, cfg = load_model(res.run_dir)
    assert model.mixers[0].window == 16  # the scheduled value at the checkpoint's step
    for a, b in zip(model.state_dict().values(), res.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    rows = evaluate_run(model, cfg, PplEval(multipliers=[1, 4], buckets=4, windows=2))
    whole = {r["length"]: r for r in rows if r["scope"] == "all"}
    assert set(whole) == {32, 128} and all(r["status"] == "ok" for r in whole.values())
    assert len([r for r in rows if r["scope"] == "bucket" and r["length"] == 128]) == 4
    beyond = [r for r in rows if r["scope"] == "beyond_train"]
    assert len(beyond) == 1 and beyond[0]["start"] == 32 and beyond[0]["end"] == 128
    assert math.isclose(whole[32]["ppl"], math.exp(whole[32]["loss"]))


def test_ppl_per_position_matches_a_plain_forward():
    torch.manual_seed(0)
    m = ZooLM(ModelConfig(**TINY, mixer_config={"nope": {"n_heads": 2}}, chunk_size=8)).eval()
    data = np.random.default_rng(0).integers(0, 256, size=200).astype(np.uint16)
    (bucket0, bucket1, whole) = evaluate_ppl(m, data, [20], train_len=20, windows=3, buckets=2)
    w = torch.from_numpy(np.stack([data[o:o + 21] for o in (0, 20, 40)]).astype(np.int64))
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(m(w[:, :-1]).transpose(1, 2), w[:, 1:], reduction="none")
    assert whole["loss"] == pytest.approx(float(ce.mean()), rel=1e-5)
    assert bucket0["loss"] == pytest.approx(float(ce[:, :10].mean()), rel=1e-5)
    # the interval is Student's t over the three windows' mean losses, and the ppl's is exp of it
    per = ce.mean(1).double()
    half = 4.303 * float(per.std()) / math.sqrt(3)
    assert whole["loss_low"] == pytest.approx(float(per.mean()) - half, rel=1e-5)
    assert whole["loss_high"] == pytest.approx(float(per.mean()) + half, rel=1e-5)
    assert whole["ppl_low"] == pytest.approx(math.exp(whole["loss_low"])) and whole["windows"] == 3
    (one,) = [r for r in evaluate_ppl(m, data, [20], train_len=20, windows=1) if r["scope"] == "all"]
    assert one["ppl_low"] is None and one["loss_high"] is None  # one window: no interval
    short = evaluate_ppl(m, data[:10], [20], train_len=20)
    assert short[0]["status"] == "n/a" and "fewer than 21" in short[0]["reason"]


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    m = ZooLM(ModelConfig(**TINY, mixer_config={"nope": {"n_heads": 2}}))
    cfg = {"model": m.config.model_dump()}
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, m, None, cfg, keep=2)
    (tmp_path / "checkpoints" / ".tmp-step_00000004-1").mkdir()  # a write killed half-way
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    assert latest_checkpoint(tmp_path).name == "step_00000003"
    with pytest.raises(ZooError, match="no checkpoint"):
        load_model(tmp_path / "elsewhere")
    state = torch.load(tmp_path / "checkpoints" / "step_00000003" / "state.pt", weights_only=True)
    assert state["step"] == 3


def test_tensorboard_logging(tmp_path):
    pytest.importorskip("tensorboard")  # optional logger (the dev extra installs it, so CI runs this)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    corpus = _corpus(tmp_path)
    run = RunConfig(model=ModelConfig(d_model=32, n_layers=1, mixer_config={"nope": {"n_heads": 2}}),
                    task=TaskRef(name="lm", config={"paths": [str(corpus)], "extensions": [".txt"],
                                                    "eval_fraction": 0.3}),
                    train=TrainConfig(steps=4, batch_size=2, seq_len=16, log_every=2, threads=1, tensorboard=True))
    res = train(run, Store(tmp_path / "store"))
    ev = EventAccumulator(str(res.run_dir / "tensorboard"))
    ev.Reload()
    assert [s.step for s in ev.Scalars("loss")] == [1, 2, 3, 4]
    assert "tokens_per_s" in ev.Tags()["scalars"] and "eval_loss" in ev.Tags()["scalars"]


def test_answer_starts_marks_the_first_position_of_each_answer():
    mask = torch.tensor([[0, 1, 1, 1, 0, 0, 1, 1], [1, 1, 0, 1, 0, 1, 0, 0]], dtype=torch.bool)
    want = torch.tensor([[0, 1, 0, 0, 0, 0, 1, 0], [1, 0, 0, 1, 0, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(answer_starts(mask), want)


class _Copier(torch.nn.Module):
    """Logits that name each answer's every token but its first (a model that copies a value once it
    is found, and never finds it): the targets of one fixed batch, the first ones shifted by one."""

    def __init__(self, targets: torch.Tensor, vocab: int):
        super().__init__()
        self.targets, self.vocab = targets, vocab

    def forward(self, tokens):
        mask = self.targets != IGNORE
        want = torch.where(mask, self.targets, 0)
        want = torch.where(answer_starts(mask), (want + 1) % self.vocab, want)
        return torch.nn.functional.one_hot(want, self.vocab).float()


def test_hashhop_evaluation_scores_first_answer_tokens_apart(tmp_path):
    run = RunConfig(model=ModelConfig(**TINY), task=TaskRef(name="hashhop", config={"hops": [1], "hash_len": 4}),
                    train=TrainConfig(steps=1, batch_size=2, seq_len=128, eval_batches=1, device="cpu"))
    trainer = Trainer(run, Store(tmp_path / "store"))
    task = get_task("hashhop", run.task.config)
    b = task.batch(0, 2, 128, split="eval", seed=run.train.seed)
    answers = int(answer_starts(b.targets != IGNORE).sum())
    spans = int((b.targets != IGNORE).sum())
    assert 0 < answers < spans
    got = trainer.evaluate(_Copier(b.targets, task.vocab_size), task, 128, {})
    assert got["eval_first_acc"] == 0.0
    assert math.isclose(got["eval_acc"], 1 - answers / spans)
    mqar = get_task("mqar")
    assert not mqar.answer_spans and "eval_first_acc" not in trainer.evaluate(
        _Copier(mqar.batch(0, 2, 128, split="eval").targets, mqar.vocab_size), mqar, 128, {})
