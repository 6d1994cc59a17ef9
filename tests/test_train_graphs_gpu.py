"""The trainer on CUDA: a step captured in CUDA graphs (compile_mode reduce-overhead) equals
the compiled step without graphs and the eager step; host reads deferred to log steps still
fail a NaN run at its first bad step with the layer named. Skipped without CUDA."""

import pytest
import torch

from zoo.model import ModelConfig
from zoo.store import Store
from zoo.train import trainer as tr
from zoo.train.config import RunConfig, TaskRef, TrainConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _run(layers=("rope",), **train):
    name = layers[0]
    return RunConfig(
        model=ModelConfig(d_model=64, n_layers=2, layers=list(layers), mixer_config={name: {"n_heads": 2}}),
        task=TaskRef(name="hashhop", config={"hops": [1], "hash_len": 8}),
        train=TrainConfig(**{"steps": 6, "batch_size": 4, "seq_len": 256, "lr": 3e-3, "device": "cuda",
                             "log_every": 3, "eval_batches": 1, **train}))


def _losses(tmp_path, name, run):
    store = Store(tmp_path / name)
    rid = tr.train(run, store).run_id
    return torch.tensor([r["value"] for r in store.metrics(rid, "loss")])


def test_graph_step_equals_compiled_and_eager_steps(tmp_path):
    import torch._dynamo

    torch._dynamo.reset()
    eager = _losses(tmp_path, "eager", _run())
    torch._dynamo.reset()
    compiled = _losses(tmp_path, "compiled", _run(compile=True))
    torch._dynamo.reset()
    graphs = _losses(tmp_path, "graphs", _run(compile=True, compile_mode="reduce-overhead"))
    assert len(eager) == len(compiled) == len(graphs) == 6 and torch.isfinite(graphs).all()
    # the graphs replay the compiled kernels: the same numbers up to reduction order
    torch.testing.assert_close(graphs, compiled, rtol=2e-3, atol=2e-3)
    # against eager: bf16 autocast, different fusion
    torch.testing.assert_close(graphs, eager, rtol=3e-2, atol=3e-2)


def test_nan_run_fails_at_its_first_bad_step_with_deferred_reads(tmp_path, nan_mixer):
    assert tr._defer_host_reads(torch.device("cuda"), "none")
    with pytest.raises(tr.NonFiniteError, match=r"step 2: loss \(nan\) is not finite") as e:
        tr.train(_run(layers=(nan_mixer,), steps=8, log_every=4), Store(tmp_path))
    assert "blocks.0.mixer (NaNFrom)" in str(e.value)
