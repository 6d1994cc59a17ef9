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
