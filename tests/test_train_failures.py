"""An injected NaN and a simulated out-of-memory each fail their run with a diagnosis, while the
sweep trains the other runs; non-finite gradients are named too."""

import pytest
import torch

from zoo.errors import ZooError
from zoo.experiment.spec import parse_spec
from zoo.experiment.sweep import run_experiment, summary_table
from zoo.mixers.attention import NoPE
from zoo.registry import MIXERS, register_mixer
from zoo.store import Store
from zoo.train.trainer import diagnose

NAN_AFTER = 3  # forward calls before the test mixer starts returning NaN


@pytest.fixture
def faulty_mixers():
    """Two mixers that break on purpose, registered only for this test."""
    base = NoPE.spec

    class NaNAfter(NoPE):
        def forward(self, x, cache=None):
            self.calls = getattr(self, "calls", 0) + 1
            y = super().forward(x, cache)
            return y * float("nan") if self.calls > NAN_AFTER else y

    class OOM(NoPE):
        def forward(self, x, cache=None):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    names = ["test-nan-after", "test-oom"]
    for name, cls in zip(names, (NaNAfter, OOM), strict=True):
        register_mixer(name=name, family="test", description="breaks on purpose", citation="-",
                       capabilities=base.capabilities, backends=base.backends, tiny={"n_heads": 2})(cls)
    yield names
    for n in names:
        MIXERS.items.pop(n, None)


def _spec(mixers, corpus):
    return parse_spec({
        "name": "failures",
        "mixers": mixers,
        "model": {"d_model": 32, "n_layers": 2, "mixer_config": {m: {"n_heads": 2} for m in mixers}},
        "task": {"name": "lm", "config": {"paths": [str(corpus)], "extensions": [".txt"], "eval_fraction": 0.5}},
        "train": {"steps": 6, "batch_size": 2, "seq_len": 16, "lr": 1e-3, "threads": 1},
    }, "failures.toml")


def test_nan_and_oom_fail_their_runs_and_the_sweep_goes_on(tmp_path, faulty_mixers):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(16):
        (corpus / f"{i}.txt").write_text(f"text number {i} " * 40)
    spec = _spec(["nope", *faulty_mixers], corpus)
    store = Store(tmp_path / "store")
    outcomes = {o.planned.label: o for o in run_experiment(spec, store)}
    assert outcomes["nope"].status == "done" and store.get_run(outcomes["nope"].planned.run_id)["status"] == "done"

    nan = store.get_run(outcomes["test-nan-after"].planned.run_id)
    assert nan["status"] == "failed"
    # each layer counts its own calls: both go NaN at step 3, and the hooks name the first one
    assert "step 3:" in nan["reason"] and "is not finite" in nan["reason"] and "step " in nan["reason"]
    assert "blocks.0.mixer (NaNAfter)" in nan["reason"], nan["reason"]

    oom = store.get_run(outcomes["test-oom"].planned.run_id)
    assert oom["status"] == "failed"
    assert "out of memory at step 0" in oom["reason"] and "batch_size=2 x seq_len=16" in oom["reason"]
    assert "Tried to allocate 20.00 GiB" in oom["reason"]

    # run again: the done run is skipped, the failed ones stay failed without retraining
    again = {o.planned.label: o.status for o in run_experiment(spec, store)}
    assert again == {"nope": "skipped", "test-nan-after": "failed", "test-oom": "failed"}
    table = summary_table(list(outcomes.values()), store, "t")
    assert table.row_count == 3


def test_nonfinite_gradient_is_named():
    from zoo.model import ModelConfig, ZooLM

    torch.manual_seed(0)
    m = ZooLM(ModelConfig(d_model=16, n_layers=1, mixer_config={"nope": {"n_heads": 2}}))
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    m.blocks[0].mlp.w_up.weight.grad[0, 0] = float("inf")
    msg = diagnose(m, "gradient norm (inf)", 7, None, None)
    assert msg.startswith("step 7: gradient norm (inf) is not finite") and "blocks.0.mlp.w_up.weight" in msg
    with torch.no_grad():
        m.embed.weight[1, 1] = float("nan")
    assert "first non-finite parameter: embed.weight" in diagnose(m, "loss (nan)", 3, None, None)


def test_killed_hashhop_evaluation_resumes_at_the_next_cell(tmp_path, monkeypatch):
    """Each finished HashHop cell is stored as it ends: an evaluation stopped after its first cell
    evaluates only the rest when the sweep runs again, and then counts as done."""
    import zoo.eval.hashhop as hh
    from zoo.experiment.sweep import evals_done

    spec = parse_spec({
        "name": "eval-resume",
        "mixers": {"nope": {}},
        "model": {"d_model": 16, "n_layers": 1, "mixer_config": {"nope": {"n_heads": 2}}},
        "task": {"name": "hashhop", "config": {"hops": [1], "hash_len": 4}},
        "train": {"steps": 2, "batch_size": 2, "seq_len": 64, "threads": 1},
        "eval": {"hashhop": {"n_chars": [20, 40, 60], "hops": [1], "samples": 1, "queries": 2, "hash_len": 4,
                             "greedy_samples": 0}},
    }, "eval-resume.toml")
    store = Store(tmp_path)
    real, seen = hh.evaluate, []

    def dies_at_second_cell(model, grid, *a, **kw):
        seen.append(grid.n_chars[0])
        if len(seen) == 2:
            raise RuntimeError("killed")
        return real(model, grid, *a, **kw)

    monkeypatch.setattr(hh, "evaluate", dies_at_second_cell)
    (first,) = run_experiment(spec, store)
    run_id = first.planned.run_id
    assert "killed" in first.evals["hashhop"] and not evals_done(spec, store, run_id)
    assert [r["n_chars"] for r in store.results(run_id, "hashhop")] == [20]

    seen.clear()
    monkeypatch.setattr(hh, "evaluate", lambda model, grid, *a, **kw: seen.append(grid.n_chars[0]) or real(
        model, grid, *a, **kw))
    (again,) = run_experiment(spec, store)
    assert again.evals["hashhop"] == "ok" and seen == [40, 60] and evals_done(spec, store, run_id)
    rows = store.results(run_id, "hashhop")
    assert sorted(r["n_chars"] for r in rows) == [20, 40, 60] and len({r["eval_id"] for r in rows}) == 1


@pytest.mark.parametrize("exc, oom", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), True),
    (torch.cuda.OutOfMemoryError("CUDA out of memory."), True),
    (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"), True),
    (RuntimeError("boom"), False),
    (ZooError("file out of memory.txt not found"), False),
    (ValueError("the model ran out of memory last time"), False),
])
def test_is_oom_is_the_device_not_the_words(exc, oom):
    from zoo.env import is_oom

    assert is_oom(exc) is oom
