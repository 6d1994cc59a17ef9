"""Every built-in mixer's FLOP estimate (what training FLOPs and MFU are computed from) held to
torch's FlopCounterMode on its torch reference, within the difference the two conventions explain.

The estimate counts the matmul FLOPs (2 per multiply-add) of the work a mixer needs: causal
attention its lower triangle, FFT convolutions and scans their own arithmetic. FlopCounterMode
counts matmuls and convolutions as the reference executes them: it sees the full L x L score matrix
that a masked reference computes, misses FFTs and elementwise scans, and sees the intra-chunk
matrices of chunked references. The report's methods section says the same.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from zoo import registry

D, L = 128, 256


def dense_attention(score_matrices: int) -> float:
    """Counted / estimated for attention whose reference computes every score then masks: the
    estimate has 8 d^2 (q, k, v, o) + 2 d (L + 1) (QK^T and PV over the causal half on average);
    the counter sees 8 d^2 + 2 d L per score matrix and 2 d L for PV."""
    return (8 * D * D + 2 * D * L * score_matrices + 2 * D * L) / (8 * D * D + 2 * D * (L + 1))


# mixer -> (counted / estimated at d_model 128, L 256, why they differ)
EXPECTED = {
    **{n: (dense_attention(1), "masked dense scores vs the causal half")
       for n in ["alibi", "learned", "nope", "rope", "rope-dynamic-ntk", "rope-ntk", "rope-pi", "rope-yarn",
                 "sinusoidal", "swa", "t5-bias", "xpos"]},
    "rerope": (dense_attention(2), "two score matrices (inside and outside the window), masked dense"),
    "leaky-rerope": (dense_attention(2), "two score matrices (inside and outside the window), masked dense"),
    "hashhop-attn": (1.442, "a score matrix per hop, masked dense"),
    "hsa": (1.151, "the sliding-window branch computed dense and masked; chunk selection is not a matmul"),
    "hyena": (0.800, "FFT convolutions are not counted"),
    "s4d": (0.592, "the FFT convolution is not counted"),
    "mamba": (0.913, "the selective scan is elementwise, not counted"),
    "mamba2": (0.758, "the chunked SSD reference's decay products are elementwise, not counted"),
    "retnet": (0.998, "the two agree: the parallel form's masked score matrix is counted as the estimate counts it"),
    "rwkv7": (1.333, "the chunked reference's intra-chunk matrices on top of the recurrence"),
}


def test_every_builtin_mixer_has_an_expectation():
    builtin = {n for n in registry.names() if registry.get_spec(n).source == registry.BUILTIN_SOURCE}
    assert builtin == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_estimate_against_flop_counter(name):
    spec = registry.get_spec(name)
    over = {"backend": "torch"} if "backend" in spec.config_cls.model_fields else {}
    torch.manual_seed(0)
    mixer = registry.build_mixer(name, D, over)
    with FlopCounterMode(display=False) as counter:
        mixer(torch.randn(2, L, D))
    counted = counter.get_total_flops() / (2 * L)
    ratio, why = EXPECTED[name]
    assert counted / mixer.flops_per_token(L) == pytest.approx(ratio, rel=0.01), why
