"""Weight decay follows what each parameter declares: the `_no_weight_decay` tag (SSM
dynamics, as the official Mamba, Mamba-2, S4 and RWKV-7 code exempt them) and, by shape,
norms, biases and gains. Every built-in mixer's exempt parameters are named here, so a
change to a mixer's parameters or tags shows up as a failing line."""

import pytest
import torch
from torch import nn

from zoo import conformance, registry
from zoo.mixer import decays, no_decay_names
from zoo.model import ModelConfig
from zoo.train.trainer import build_model, param_groups

RWKV7_LAYER0 = ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "w1", "w2", "a0", "a1", "a2", "g1", "g2", "k_k",
                "k_a", "r_k", "ln_x.weight", "ln_x.bias"]
NO_DECAY = {  # at the conformance suite's tiny sizes (layer 0)
    "alibi": [], "leaky-rerope": [], "learned": [], "nope": [], "rerope": [], "retnet": [], "rope": [],
    "rope-dynamic-ntk": [], "rope-ntk": [], "rope-pi": [], "rope-yarn": [], "sinusoidal": [], "swa": [],
    "t5-bias": [], "xpos": [],
    "hashhop-attn": ["gate.weight", "gate.bias"],
    "hsa": ["cls", "q_norm_swa.weight", "k_norm_swa.weight", "q_norm_hsa.weight", "k_norm_chunk.weight",
            "ret_norm.weight", "lmk_norm.weight", "encoder.0.norm1.weight", "encoder.0.norm2.weight",
            "enc_norm.weight"],
    "hyena": ["bias", "in_proj.bias", "short_filter.bias", "filter_fn.implicit_filter.0.bias",
              "filter_fn.implicit_filter.1.freq", "filter_fn.implicit_filter.2.bias",
              "filter_fn.implicit_filter.4.bias", "out_proj.bias"],
    "mamba": ["A_log", "D", "conv1d.bias", "dt_proj.bias"],
    "mamba2": ["dt_bias", "A_log", "D", "conv1d.bias", "norm.weight"],
    "rwkv7": RWKV7_LAYER0,
    "s4d": ["log_dt", "log_A_real", "A_imag", "D", "out_proj.bias"],
}


def test_every_builtin_mixer_is_listed():
    builtin = sorted(s.name for s in registry.specs() if s.source == registry.BUILTIN_SOURCE)
    assert sorted(NO_DECAY) == builtin


@pytest.mark.parametrize("name", sorted(NO_DECAY))
def test_no_decay_parameters_of_each_mixer(name):
    assert no_decay_names(conformance.make(registry.get_spec(name))) == NO_DECAY[name]


def test_rwkv7_value_residual_factors_are_exempt_past_layer_0():
    spec = registry.get_spec("rwkv7")
    m = spec.cls(32, spec.make_config(spec.tiny), layer_idx=1)
    assert {"v0", "v1", "v2"} <= set(no_decay_names(m))


def test_shape_rule_and_tag():
    assert decays(nn.Parameter(torch.zeros(4, 3)))
    assert not decays(nn.Parameter(torch.zeros(4)))           # bias, norm weight
    assert not decays(nn.Parameter(torch.zeros(1, 1, 4)))     # per-channel gain in a broadcast shape
    p = nn.Parameter(torch.zeros(4, 3))
    p._no_weight_decay = True
    assert not decays(p)


def test_trainer_groups_follow_the_tags_in_a_whole_model():
    model = build_model(ModelConfig(d_model=32, n_layers=2, layers=["mamba"],
                                    mixer_config={"mamba": {"d_state": 4}}), seed=0)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert {n for n in exempt if n.endswith(("A_log", ".D"))} == {f"blocks.{i}.mixer.{k}" for i in (0, 1)
                                                                   for k in ("A_log", "D")}
    assert not any(n.endswith(("A_log", ".D", "norm.weight", "bias")) for n in decayed)
    assert any(n.endswith("in_proj.weight") for n in decayed) and any("emb" in n for n in decayed)
    assert len(exempt) + len(decayed) == len(list(model.parameters()))


def test_exempt_names_survive_replaced_parameter_objects():
    """FSDP2 swaps parameter objects (dropping tags); names read before wrapping still apply."""
    model = build_model(ModelConfig(d_model=32, n_layers=1, layers=["mamba"],
                                    mixer_config={"mamba": {"d_state": 4}}), seed=0)
    exempt = set(no_decay_names(model))
    for mod in model.modules():
        for k, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[k] = nn.Parameter(p.detach().clone())  # no `_no_weight_decay` attribute
    _, no_decay = param_groups(model, 0.1, exempt)
    names = {id(p): n for n, p in model.named_parameters()}
    assert "blocks.0.mixer.A_log" in {names[id(p)] for p in no_decay["params"]}


def test_mixers_show_lists_the_exempt_parameters_and_the_version(capsys):
    from zoo.cli import main

    assert main(["mixers", "show", "mamba2"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # however the console wraps
    assert "no weight decay on" in out and "dt_bias, A_log, D" in out
    assert f"implementation version {registry.get_spec('mamba2').version}" in out
