"""The conformance suite: what every mixer, built-in or plugin, must satisfy.

Each check takes a `MixerSpec` and raises `AssertionError` with a reason when the mixer
breaks the contract. `tests/test_conformance.py` runs them for every registered mixer;
`zoo check NAME` runs them from the command line (useful for plugin authors).

Sizes are tiny (d_model 32, 24 tokens or the spec's `check_length`) so the whole suite
runs on CPU in seconds. Every parameter is perturbed first and `responds` asserts that the
output moves with the input, so no check passes by comparing zeros (or constants). Tolerances
are not fixed numbers: fp32 comparisons must land within a small fraction of the bf16 floor
of the same computation, causality leaks are measured against the output's scale.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from zoo.errors import LengthError
from zoo.mixer import Mixer
from zoo.registry import MixerSpec

D = 32
L = 24  # default length; a spec's `check_length` raises it (HSA: several complete chunks)
B = 2
PERTURB = 0.05   # every parameter moves by this much noise (plus 10% of its mean size) before a check
FP32_OF_FLOOR = 1e-3  # fp32 vs fp32 (chunked, backends): within 0.1% of the bf16 floor
BF16_OF_ROUNDING = 4.0  # bf16 compute may lose 4x what rounding weights and inputs to bf16 costs
CAUSAL_REL = 1e-5  # leak into earlier outputs, relative to their scale (FFT mixers leak rounding noise)
RESPONDS_REL = 1e-3  # outputs of different inputs differ by at least this, relative to their scale


def perturb(mixer: Mixer, seed: int) -> Mixer:
    """Move every parameter off its initial value, deterministically: zero-initialised layers
    (RWKV-7's output) would otherwise make every comparison one of zeros with zeros."""
    g = torch.Generator().manual_seed(1_000_003 + seed)
    with torch.no_grad():
        for p in mixer.parameters():
            scale = PERTURB + 0.1 * p.detach().float().abs().mean().item()
            p.add_((scale * torch.randn(p.shape, generator=g)).to(p.dtype))
    return mixer


def make(spec: MixerSpec, seed: int = 0, backend: str = "torch", dtype=torch.float32, **overrides) -> Mixer:
    """The mixer at its tiny config, every parameter perturbed (seeded), in `dtype`."""
    torch.manual_seed(seed)
    cfg = spec.make_config({**spec.tiny, "backend": backend, **overrides})
    return perturb(spec.cls(D, cfg), seed).to(dtype)


def inputs(length: int = L, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, length, D, generator=g).to(dtype)


def scale_of(y: torch.Tensor) -> float:
    return y.float().abs().max().item()


def per_token(diff: torch.Tensor) -> torch.Tensor:
    """`[B, L, D]` differences -> the largest per token, `[B * L]`."""
    return diff.float().abs().amax(-1).flatten()


def bf16_floor(spec: MixerSpec, x: torch.Tensor) -> float:
    """What bf16 costs this very computation: the 90th percentile over tokens of
    max |y_fp32 - y_bf16| of the torch reference (a percentile, so that a discrete choice
    flipping on a near-tie, such as HSA's top-K, does not set it). fp32 comparisons are held
    to a small fraction of it, so tolerances follow the output's scale and the mixer's own
    conditioning instead of a fixed number."""
    with torch.no_grad():
        y32 = make(spec)(x)
        y16 = make(spec, dtype=torch.bfloat16)(x.bfloat16())
    return per_token(y16.float() - y32).quantile(0.9).item()


def _close(a: torch.Tensor, b: torch.Tensor, what: str, floor: float) -> None:
    err = (a.float() - b.float()).abs().max().item()
    tol = FP32_OF_FLOOR * floor
    assert err <= tol, (f"{what}: max abs difference {err:.3g} > {tol:.3g} ({FP32_OF_FLOOR:g} x the bf16 floor "
                        f"{floor:.3g}; output scale {scale_of(b):.3g})")


def base_length(spec: MixerSpec) -> int:
    n = spec.check_length or L
    m = spec.capabilities.max_length
    return n if m is None else min(n, m)


def run_chunks(mixer: Mixer, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    cache = mixer.new_cache(x.shape[0], x.device, x.dtype)
    outs, i = [], 0
    for s in sizes:
        outs.append(mixer(x[:, i:i + s], cache))
        i += s
    assert i == x.shape[1]
    return torch.cat(outs, dim=1)


# -- checks -----------------------------------------------------------------------------

def check_shape_dtype(spec: MixerSpec) -> None:
    m, x = make(spec), inputs(base_length(spec))
    y = m(x)
    assert y.shape == x.shape, f"output shape {tuple(y.shape)} != input shape {tuple(x.shape)}"
    assert y.dtype == x.dtype, f"output dtype {y.dtype} != input dtype {x.dtype}"
    assert torch.isfinite(y).all(), "non-finite output"


def check_responds(spec: MixerSpec) -> None:
    """The output depends on the input, and on earlier tokens, not on the current one alone:
    a mixer that outputs zeros or a constant passes every comparison vacuously."""
    m, length = make(spec), base_length(spec)
    x = inputs(length)
    with torch.no_grad():
        y = m(x)
        scale = scale_of(y)
        assert scale > 0, "the output is all zeros"
        moved = (m(inputs(length, seed=2)) - y).abs().max().item()
        assert moved > RESPONDS_REL * scale, (f"the output does not depend on the input (a different input moves it "
                                              f"by {moved:.3g}, scale {scale:.3g})")
        x2 = x.clone()
        x2[:, :-1] += 3.0 * torch.randn_like(x2[:, :-1])
        last = (m(x2)[:, -1] - y[:, -1]).abs().max().item()
        assert last > RESPONDS_REL * scale, (f"changing every earlier token moves the last output by {last:.3g} "
                                             f"(scale {scale:.3g}): it mixes nothing along the sequence")


def check_causal(spec: MixerSpec) -> None:
    m, length = make(spec), base_length(spec)
    x = inputs(length)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        y = m(x)
        for t in sorted({1, length // 2, length - 2, length - 1}):
            x2 = x.clone()
            x2[:, t:] += 3.0 * torch.randn(x2[:, t:].shape, generator=g)  # change token t and everything after
            y2 = m(x2)
            leak = (y2[:, :t] - y[:, :t]).abs().max().item()
            tol = CAUSAL_REL * max(scale_of(y[:, :t]), scale_of(y2[:, t:]))
            assert leak <= tol, (f"changing tokens from {t} on changed outputs before {t} by {leak:.3g} "
                                 f"(> {tol:.3g}, {CAUSAL_REL:g} x the output scale): not causal")


def check_chunked_equals_full(spec: MixerSpec) -> None:
    m, length = make(spec), base_length(spec)
    x = inputs(length)
    g = torch.Generator().manual_seed(7)
    floor = bf16_floor(spec, x)
    with torch.no_grad():
        full = m(x)
        _close(run_chunks(m, x, [1] * length), full, "token-by-token vs full", floor)
        for _ in range(3):
            sizes, left = [], length
            while left:
                s = int(torch.randint(1, max(2, length // 2), (1,), generator=g))
                sizes.append(min(s, left))
                left -= sizes[-1]
            _close(run_chunks(m, x, sizes), full, f"chunks {sizes} vs full", floor)


def check_gradients(spec: MixerSpec) -> None:
    m = make(spec)  # perturbed: zero-initialised projections would hide broken wiring upstream
    x = inputs(base_length(spec)).requires_grad_(True)
    y = m(x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0, "no gradient reaches the input"
    dead = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not dead, f"no gradient reaches {dead}"


def check_determinism(spec: MixerSpec) -> None:
    a, b = make(spec, seed=3), make(spec, seed=3)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), f"parameter {n} differs between two builds with the same seed"
    x = inputs(base_length(spec))
    with torch.no_grad():
        assert torch.equal(a(x), b(x)), "two builds with the same seed give different outputs"
        assert torch.equal(a(x), a(x)), "two forwards of the same input differ"


def check_state_bytes(spec: MixerSpec) -> None:
    m, length = make(spec), base_length(spec)
    x = inputs(length)
    cache = m.new_cache(B, x.device, torch.float32)
    with torch.no_grad():
        half = length // 2
        m(x[:, :half], cache)
        m(x[:, half:], cache)
    held, said = cache.nbytes(), m.state_bytes(length, batch=B, dtype=torch.float32)
    assert held == said, f"cache holds {held} bytes after {length} tokens, state_bytes says {said}"


def check_lengths(spec: MixerSpec) -> None:
    """Runs well past the test length (4x), up to its declared max_length, and refuses
    beyond it with a LengthError instead of crashing."""
    m = make(spec)
    limit = m.max_length
    long = 4 * L if limit is None else min(4 * L, limit)
    with torch.no_grad():
        y = m(inputs(long))
        assert torch.isfinite(y).all(), f"non-finite output at length {long}"
        if limit is not None and limit <= 4 * L:
            try:
                m(inputs(limit + 1))
            except LengthError:
                pass
            else:
                raise AssertionError(f"ran at {limit + 1} tokens past its declared max_length {limit}")


def check_bf16(spec: MixerSpec) -> None:
    """bf16 compute loses at most a few times what bf16 storage alone costs: the floor is the
    fp32 computation on weights and inputs rounded to bf16, plus rounding the output. One token
    in 20 may go beyond it (a top-K choice can flip on a near-tie); a systematic loss cannot."""
    x = inputs(base_length(spec))
    m32 = make(spec)
    m16 = make(spec, dtype=torch.bfloat16, backend="auto")
    rounded = make(spec, dtype=torch.bfloat16).float()
    with torch.no_grad():
        y32, y16 = m32(x), m16(x.bfloat16())
        yr = rounded(x.bfloat16().float())
    assert y16.dtype == torch.bfloat16, f"bf16 input gave {y16.dtype} output"
    assert torch.isfinite(y16).all(), "non-finite bf16 output"
    err = per_token(y16.float() - y32)
    floor = per_token(yr - y32).max().item() + 2.0**-8 * scale_of(y32)
    bad = (err > BF16_OF_ROUNDING * floor).float().mean().item()
    assert bad <= 0.05, (f"bf16 output differs from fp32 by up to {err.max().item():.3g}, beyond "
                         f"{BF16_OF_ROUNDING:g} x the rounding floor {floor:.3g} at {bad:.0%} of the tokens "
                         f"(output scale {scale_of(y32):.3g})")


def check_backends(spec: MixerSpec) -> None:
    """Every backend usable on this machine matches the torch reference, full and chunked."""
    length = base_length(spec)
    x = inputs(length)
    ref = make(spec)
    floor = bf16_floor(spec, x)
    with torch.no_grad():
        want = ref(x)
        for b in spec.backends:
            if b.name == "torch" or b.check(torch.device("cpu")) is not None:
                continue
            m = make(spec, backend=b.name)
            m.load_state_dict(ref.state_dict())
            _close(m(x), want, f"backend {b.name} vs torch", floor)
            _close(run_chunks(m, x, [length // 3, 1, length - length // 3 - 1]), want, f"backend {b.name} chunked",
                   floor)


CHECKS: dict[str, Callable[[MixerSpec], None]] = {
    "shape_dtype": check_shape_dtype,
    "responds": check_responds,
    "causal": check_causal,
    "chunked_equals_full": check_chunked_equals_full,
    "gradients": check_gradients,
    "determinism": check_determinism,
    "state_bytes": check_state_bytes,
    "lengths": check_lengths,
    "bf16": check_bf16,
    "backends": check_backends,
}


def run_all(spec: MixerSpec) -> dict[str, str | None]:
    """Run every check; check name -> None (passed) or the failure message."""
    out: dict[str, str | None] = {}
    for name, fn in CHECKS.items():
        try:
            fn(spec)
            out[name] = None
        except Exception as e:  # report every failure, not only the first
            out[name] = f"{type(e).__name__}: {e}"
    return out
