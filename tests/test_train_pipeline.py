"""The training step's plumbing: batches built ahead equal batches built on the spot (threads,
worker processes), host reads deferred to log steps still name the first bad step, and a
compiled model is traced once."""

import functools
import itertools

import pytest
import torch

from zoo.model import ModelConfig
from zoo.store import Store
from zoo.tasks.base import get_task
from zoo.train import trainer as tr
from zoo.train.config import RunConfig, TaskRef, TrainConfig
from zoo.train.data import BatchKey, Prefetcher, build


def keys(n, seq_len=96):
    return [BatchKey(i, 3, seq_len, "train", 5, {"hops": 1} if i % 2 else {}) for i in range(n)]


@pytest.mark.parametrize("workers", [0, 1])
def test_prefetched_batches_equal_batches_built_on_the_spot(workers):
    task = get_task("hashhop", {"hops": [1, 2], "hash_len": 4})
    ks = keys(8)
    loader = Prefetcher(task, iter(ks), workers=workers, depth=3)
    try:
        for k in ks[:4]:
            got, want = loader.get(k), build(task, k)
            assert torch.equal(got.tokens, want.tokens) and torch.equal(got.targets, want.targets)
            assert got.sources is not None and torch.equal(got.sources, want.sources)  # the answers' sources travel too
        # a key that was not foreseen (the loop went elsewhere): built here, the queue starts over
        odd = BatchKey(99, 3, 80, "train", 5)
        assert torch.equal(loader.get(odd).tokens, build(task, odd).tokens)
        for k in ks[4:]:
            assert torch.equal(loader.get(k).tokens, build(task, k).tokens)
    finally:
        loader.close()


def _run(**train):
    return RunConfig(
        model=ModelConfig(d_model=32, n_layers=2, layers=["rope"], mixer_config={"rope": {"n_heads": 2}}),
        task=TaskRef(name="hashhop", config={"hops": [1], "hash_len": 4}),
        train=TrainConfig(**{"steps": 5, "batch_size": 2, "seq_len": 64, "threads": 1, "lr": 3e-3, **train}))


def _losses(store, run_id):
    return [r["value"] for r in store.metrics(run_id) if r["name"] == "loss"]


def test_data_workers_and_prefetch_do_not_change_what_a_run_sees(tmp_path):
    results = []
    for i, extra in enumerate([{"prefetch": 0}, {"data_workers": 1, "prefetch": 2}, {"prefetch": 3}]):
        store = Store(tmp_path / str(i))
        results.append(_losses(store, tr.train(_run(**extra), store).run_id))
    assert len(results[0]) == 5 and results[0] == results[1] == results[2]


def test_deferred_host_reads_name_the_first_bad_step(tmp_path, monkeypatch, nan_mixer):
    """As on CUDA: the loss is read every 4 steps, the fused AdamW skips the bad steps on the
    device, and the diagnosis still finds the layer that went NaN at its step."""
    monkeypatch.setattr(tr, "_defer_host_reads", lambda device, strategy: True)
    run = _run(steps=8, log_every=4).model_copy(update={"model": ModelConfig(
        d_model=32, n_layers=2, layers=[nan_mixer], mixer_config={nan_mixer: {"n_heads": 2}})})
    store = Store(tmp_path)
    with pytest.raises(tr.NonFiniteError, match=r"step 2: loss \(nan\) is not finite") as e:
        tr.train(run, store)
    assert "blocks.0.mixer (NaNFrom)" in str(e.value)
    assert len(_losses(store, run.run_id())) == 2  # the good steps before it were logged


def test_compiled_training_traces_once(tmp_path, monkeypatch):
    """No recompilation after the first step (Dynamo's eager backend: the guards are the same as
    Inductor's, without its compile time)."""
    import torch._dynamo

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    torch._dynamo.reset()
    store = Store(tmp_path)
    losses = _losses(store, tr.train(_run(steps=4, compile=True, log_every=2), store).run_id)
    assert len(losses) == 4 and torch.isfinite(torch.tensor(losses)).all()


def test_compile_mode_is_validated():
    with pytest.raises(ValueError, match="reduce-overhead"):
        TrainConfig(steps=1, compile_mode="fast")
    assert "compile_mode" not in _run(compile_mode="reduce-overhead").identity()["train"]


def test_upcoming_keys_follow_the_loop(tmp_path):
    # lengths the task can fill (the trainer draws one row at the first step's length up front)
    t = tr.Trainer(_run(grad_accum=2, schedules={"seq_len": {"points": [[0, 64], [2, 128]]}}), Store(tmp_path))
    ks = list(itertools.islice(t._upcoming_keys(1, 4), 6))
    assert [k.index for k in ks] == [2, 3, 4, 5, 6, 7] and [k.seq_len for k in ks] == [64, 64, 128, 128, 128, 128]
