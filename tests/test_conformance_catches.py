"""The conformance suite must fail mixers that break the contract."""

import pytest
import torch
from torch import nn

from zoo import conformance
from zoo.mixer import TORCH_BACKEND, Cache, Capabilities, Mixer
from zoo.registry import MixerSpec


class CumMean(Mixer):
    """Causal running mean with a linear map; its cache keeps the running sum."""

    def __init__(self, d_model, config=None, layer_idx=0):
        super().__init__(d_model, config, layer_idx)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x, cache=None):
        start = cache.pos if cache is not None else 0
        s = x.cumsum(1)
        if cache is not None:
            s = s + cache.sum
            cache.sum, cache.pos = s[:, -1:], start + x.shape[1]
        n = torch.arange(start + 1, start + x.shape[1] + 1, device=x.device, dtype=x.dtype)
        return self.proj(s / n[None, :, None])

    def new_cache(self, batch, device, dtype):
        return Cache(sum=torch.zeros(batch, 1, self.d_model, device=device, dtype=dtype))

    def state_bytes(self, seq_len, batch=1, dtype=torch.bfloat16):
        return batch * self.d_model * torch.empty((), dtype=dtype).element_size()

    def flops_per_token(self, seq_len):
        return 2 * self.d_model**2


class FullMean(CumMean):
    """Looks at the whole sequence: not causal."""

    def forward(self, x, cache=None):
        return self.proj(x.mean(1, keepdim=True).expand_as(x))


class Forgetful(CumMean):
    """Drops its state between chunks."""

    def forward(self, x, cache=None):
        return super().forward(x, None)


class GreedyCache(CumMean):
    """Keeps every input in its cache but claims a fixed-size state."""

    def forward(self, x, cache=None):
        y = super().forward(x, cache)
        if cache is not None:
            cache.seen = x if not hasattr(cache, "seen") else torch.cat([cache.seen, x], 1)
        return y


def spec_of(cls):
    spec = MixerSpec(cls.__name__.lower(), "test", cls.__doc__, "-", cls,
                     Capabilities(cost="O(L)", state="fixed"), [TORCH_BACKEND])
    cls.spec = spec
    return spec


def test_well_behaved_fixture_passes():
    assert conformance.run_all(spec_of(CumMean)) == dict.fromkeys(conformance.CHECKS)


def test_non_causal_mixer_fails_causality():
    with pytest.raises(AssertionError, match="not causal"):
        conformance.check_causal(spec_of(FullMean))


def test_cache_that_drops_state_fails_chunked_equals_full():
    with pytest.raises(AssertionError, match="token-by-token vs full"):
        conformance.check_chunked_equals_full(spec_of(Forgetful))


def test_cache_larger_than_declared_fails_state_bytes():
    with pytest.raises(AssertionError, match="state_bytes says"):
        conformance.check_state_bytes(spec_of(GreedyCache))


class Zero(CumMean):
    """Outputs zeros, as a zero-initialised output layer does."""

    def forward(self, x, cache=None):
        super().forward(x, cache)
        return torch.zeros_like(x)


class Constant(CumMean):
    """Outputs the same vector whatever the input."""

    def forward(self, x, cache=None):
        super().forward(x, cache)
        return self.proj.bias.expand_as(x) + 0 * x


class PerToken(CumMean):
    """A position-wise map: responds to its input but mixes nothing along the sequence."""

    def forward(self, x, cache=None):
        return self.proj(x)


class SmallLeak(CumMean):
    """Small outputs (scale 1e-3) with a leak from the last token near 1e-6: an absolute 1e-5 misses it."""

    def forward(self, x, cache=None):
        y = super().forward(x, cache) * 1e-3
        return y + 1e-7 * x[:, -1:].sum(-1, keepdim=True) if cache is None else y


class SmallDrift(CumMean):
    """Small outputs whose token-by-token path is off by 1e-6, 0.1% of their scale."""

    def forward(self, x, cache=None):
        y = super().forward(x, cache) * 1e-3
        return y + 1e-6 if cache is not None else y


def test_parameters_are_perturbed_off_their_initial_values():
    spec = spec_of(CumMean)
    torch.manual_seed(0)
    fresh = CumMean(conformance.D, CumMean.Config())
    with torch.no_grad():
        fresh.proj.weight.zero_()
    m = conformance.perturb(fresh, 0)
    assert m.proj.weight.abs().min() > 0
    a, b = conformance.make(spec, seed=3), conformance.make(spec, seed=3)
    assert torch.equal(a.proj.weight, b.proj.weight)  # seeded: determinism checks still hold


@pytest.mark.parametrize("cls,msg", [(Zero, "all zeros"), (Constant, "does not depend on the input"),
                                     (PerToken, "mixes nothing")])
def test_vacuous_mixers_fail_responds(cls, msg):
    results = conformance.run_all(spec_of(cls))
    assert msg in results["responds"]


@pytest.mark.parametrize("cls", [Zero, Constant])
def test_zoo_check_fails_zero_and_constant_mixers(cls, capsys):
    from zoo import registry
    from zoo.cli import main

    spec = spec_of(cls)
    registry.MIXERS.ensure_loaded()
    registry.MIXERS.items[spec.name] = spec
    try:
        code = main(["check", spec.name])
    finally:
        del registry.MIXERS.items[spec.name]
    out = capsys.readouterr()
    assert code != 0
    assert "fails" in out.err + out.out and "responds" in out.err + out.out


def test_causality_is_relative_to_the_output_scale():
    with pytest.raises(AssertionError, match="not causal"):
        conformance.check_causal(spec_of(SmallLeak))


def test_chunked_tolerance_is_relative_to_the_bf16_floor():
    with pytest.raises(AssertionError, match="bf16 floor"):
        conformance.check_chunked_equals_full(spec_of(SmallDrift))


def test_hsa_runs_where_top_k_chooses_between_complete_chunks_with_its_default_fusion():
    from zoo import registry

    spec = registry.get_spec("hsa")
    cfg = spec.make_config(spec.tiny)
    complete = conformance.base_length(spec) // cfg.chunk_size
    assert complete >= 4 and cfg.top_k < complete
    assert cfg.fusion == spec.config_cls.model_fields["fusion"].default


def test_rwkv7_output_is_not_zero_under_the_suite():
    from zoo import registry

    spec = registry.get_spec("rwkv7")
    with torch.no_grad():
        y = conformance.make(spec)(conformance.inputs())
    assert conformance.scale_of(y) > 1e-3
