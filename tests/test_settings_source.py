"""Settings with one source: flags and spec sections take their defaults from the pydantic models."""

from __future__ import annotations

import pytest
import typer

from zoo.cli import app
from zoo.errors import ZooError
from zoo.experiment.spec import ModelSpec, parse_spec
from zoo.model import ModelConfig
from zoo.train.config import TrainConfig

# `zoo train` flag -> (model, field) it sets
TRAIN_FLAGS = {"d_model": (ModelConfig, "d_model"), "n_layers": (ModelConfig, "n_layers"),
               "batch_size": (TrainConfig, "batch_size"), "grad_accum": (TrainConfig, "grad_accum"),
               "seq_len": (TrainConfig, "seq_len"), "lr": (TrainConfig, "lr"),
               "warmup": (TrainConfig, "warmup_steps"), "lr_schedule": (TrainConfig, "lr_schedule"),
               "seed": (TrainConfig, "seed"), "device": (TrainConfig, "device"), "compile_": (TrainConfig, "compile"),
               "eval_every": (TrainConfig, "eval_every"), "ckpt_every": (TrainConfig, "ckpt_every"),
               "ckpt_minutes": (TrainConfig, "ckpt_minutes"), "tensorboard": (TrainConfig, "tensorboard"),
               "wandb": (TrainConfig, "wandb")}


def test_train_flags_default_to_the_models():
    cmd = typer.main.get_command(app)
    params = {p.name: p for p in cmd.commands["train"].params}
    for flag, (model, field) in TRAIN_FLAGS.items():
        assert params[flag].default == model.model_fields[field].default, f"--{flag} restates {field}"


def test_spec_model_section_defaults_are_the_model_configs():
    for name in ("d_model", "n_layers", "mlp_hidden", "norm_eps", "chunk_size"):
        assert ModelSpec.model_fields[name].default == ModelConfig.model_fields[name].default, name


@pytest.mark.parametrize("section, message", [
    ({"train": {"lrr": 1e-3}}, "unknown key 'train.lrr' (did you mean 'lr'?"),
    ({"train": {"steps": 0}}, "key 'train.steps' = 0 is invalid"),
    ({"eval": {"hashhop": {"n_char": [100]}}}, "unknown key 'eval.hashhop.n_char' (did you mean 'n_chars'?"),
    ({"eval": {"hashhop": {"hops": [0]}}}, "key 'eval.hashhop.hops' = [0] is invalid"),
])
def test_typed_sections_name_the_bad_key(section, message):
    with pytest.raises(ZooError) as e:
        parse_spec({"name": "x", "mixers": ["nope"], "train": {"steps": 1}, **section})
    assert message in str(e.value)


def test_typed_sections_dump_as_written():
    spec = parse_spec({"name": "x", "mixers": ["nope"], "train": {"steps": 3, "lr": 1},
                       "eval": {"hashhop": {"n_chars": [400], "hops": [1]}}})
    doc = spec.model_dump(mode="json")
    assert doc["train"] == {"steps": 3, "lr": 1.0}
    assert doc["eval"]["hashhop"] == {"n_chars": [400], "hops": [1]}
    assert parse_spec(doc).model_dump(mode="json") == doc  # what a worker process reads back


def test_bench_flags_default_to_the_bench_config():
    from zoo.bench import BenchConfig, parse_size, parse_sizes

    cmd = typer.main.get_command(app)
    params = {p.name: p.default for p in cmd.commands["bench"].params}
    fields = {k: f.get_default(call_default_factory=True) for k, f in BenchConfig.model_fields.items()}
    for flag, field in [("dtype", "dtype"), ("device", "device"), ("model", "model"), ("n_layers", "n_layers"),
                        ("point_budget", "point_budget_s"), ("max_call_s", "max_call_s")]:
        assert params[flag] == fields[field], f"--{flag} restates {field}"
    assert parse_sizes(params["long_lens"]) == fields["long_lens"]
    assert parse_size(params["fill_chunk"]) == fields["fill_chunk"]
    assert params["mode"].split(",") == fields["modes"]
