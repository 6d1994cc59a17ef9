"""The conformance suite: what every mixer, built-in or plugin, must satisfy.

Each check takes a `MixerSpec` and raises `AssertionError` with a reason when the mixer
breaks the contract. `tests/test_conformance.py` runs them for every registered mixer;
`zoo check NAME` runs them from the command line (useful for plugin authors).

Sizes are tiny (d_model 32, 24 tokens) so the whole suite runs on CPU in seconds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from zoo.errors import LengthError
from zoo.mixer import Mixer
from zoo.registry import MixerSpec

D = 32
L = 24
B = 2
ATOL = 2e-4  # fp32: parallel vs recurrent forms differ by summation order only


def make(spec: MixerSpec, seed: int = 0, backend: str = "torch", dtype=torch.float32, **overrides) -> Mixer:
    torch.manual_seed(seed)
    cfg = spec.make_config({**spec.tiny, "backend": backend, **overrides})
    return spec.cls(D, cfg).to(dtype)


def inputs(length: int = L, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, length, D, generator=g).to(dtype)


def _close(a: torch.Tensor, b: torch.Tensor, what: str, atol: float = ATOL) -> None:
    err = (a.float() - b.float()).abs().max().item()
    scale = b.float().abs().max().item()
    assert err <= atol * max(1.0, scale), f"{what}: max abs difference {err:.3g} (scale {scale:.3g}, atol {atol})"


def base_length(spec: MixerSpec) -> int:
    m = spec.capabilities.max_length
    return L if m is None else min(L, m)


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


def check_causal(spec: MixerSpec) -> None:
    m, length = make(spec), base_length(spec)
    x = inputs(length)
    with torch.no_grad():
        y = m(x)
        for t in sorted({1, length // 2, length - 2, length - 1}):
            x2 = x.clone()
            x2[:, t:] += 3.0 * torch.randn_like(x2[:, t:])  # change token t and everything after
            y2 = m(x2)
            leak = (y2[:, :t] - y[:, :t]).abs().max().item()
            assert leak <= 1e-5, f"changing tokens from {t} on changed outputs before {t} (max {leak:.3g}): not causal"


def check_chunked_equals_full(spec: MixerSpec) -> None:
    m, length = make(spec), base_length(spec)
    x = inputs(length)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        full = m(x)
        _close(run_chunks(m, x, [1] * length), full, "token-by-token vs full")
        for _ in range(3):
            sizes, left = [], length
            while left:
                s = int(torch.randint(1, max(2, length // 2), (1,), generator=g))
                sizes.append(min(s, left))
                left -= sizes[-1]
            _close(run_chunks(m, x, sizes), full, f"chunks {sizes} vs full")


def check_gradients(spec: MixerSpec) -> None:
    m = make(spec)
    with torch.no_grad():  # zero-initialised projections would hide broken wiring upstream
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
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
    m32 = make(spec)
    x = inputs(base_length(spec))
    m16 = make(spec, dtype=torch.bfloat16)
    with torch.no_grad():
        y32, y16 = m32(x), m16(x.bfloat16())
    assert y16.dtype == torch.bfloat16, f"bf16 input gave {y16.dtype} output"
    assert torch.isfinite(y16).all(), "non-finite bf16 output"
    rel = ((y16.float() - y32).norm() / y32.norm().clamp_min(1e-12)).item()
    assert rel < 0.05, f"bf16 output differs from fp32 by {rel:.3g} (relative)"


def check_backends(spec: MixerSpec) -> None:
    """Every backend usable on this machine matches the torch reference, full and chunked."""
    length = base_length(spec)
    x = inputs(length)
    ref = make(spec)
    with torch.no_grad():
        want = ref(x)
        for b in spec.backends:
            if b.name == "torch" or b.check(torch.device("cpu")) is not None:
                continue
            m = make(spec, backend=b.name)
            m.load_state_dict(ref.state_dict())
            _close(m(x), want, f"backend {b.name} vs torch")
            _close(run_chunks(m, x, [length // 3, 1, length - length // 3 - 1]), want, f"backend {b.name} chunked")


CHECKS: dict[str, Callable[[MixerSpec], None]] = {
    "shape_dtype": check_shape_dtype,
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
