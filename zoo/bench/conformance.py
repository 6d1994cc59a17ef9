"""What every bench peer, built-in or plugin, must satisfy: `zoo check-peer NAME`.

Each check takes a `PeerCase` (the peer, the mixer it stands beside at its tiny config with
perturbed weights, the peer's module built beside it) and raises `AssertionError` with a reason
when the peer breaks the contract of `zoo.bench.peers`; a check that does not apply returns why.
Sizes are tiny (d_model 32, tens of tokens) so the suite runs on a CPU in seconds; a peer whose
package or device is missing here cannot be checked here, and says so in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from zoo import conformance, registry
from zoo.bench.config import BenchConfig
from zoo.bench.peers import Peer, get_peer
from zoo.env import resolve_device
from zoo.errors import ZooError

LENGTHS = (1, 24, 200)  # one token, a few, and past one 128-token block (partial and full block pairs)
B = 2
DECODE_STEPS = 4
REL_TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}  # of the output's scale


@dataclass
class PeerCase:
    peer: Peer
    mixer: nn.Module
    module: nn.Module
    device: torch.device
    dtype: torch.dtype

    def inputs(self, length: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(B, length, self.mixer.d_model, generator=g).to(self.device, self.dtype)

    def lengths(self) -> list[int]:
        limit = self.mixer.max_length
        return [n for n in LENGTHS if limit is None or n <= limit]


def _close(got: torch.Tensor, want: torch.Tensor, what: str, dtype: torch.dtype) -> None:
    scale = max(want.float().abs().max().item(), 1e-6)
    err = (got.float() - want.float()).abs().max().item()
    assert err <= REL_TOL[dtype] * scale, f"{what}: max difference {err:.3g} at output scale {scale:.3g}"


def check_forward(case: PeerCase) -> None:
    """forward(x `[B, L, D]`) -> `[B, L, D]` of x's dtype, finite, at one token and more."""
    with torch.no_grad():
        for n in case.lengths():
            y = case.module(case.inputs(n))
            assert y.shape == (B, n, case.mixer.d_model), f"L={n}: output shape {tuple(y.shape)}"
            assert y.dtype == case.dtype, f"L={n}: output dtype {y.dtype}, input {case.dtype}"
            assert torch.isfinite(y).all(), f"L={n}: output not finite"


def check_causal(case: PeerCase) -> None:
    """Changing token t leaves every output before t as it was."""
    n = case.lengths()[-1]
    t = n // 2
    x = case.inputs(n)
    x2 = x.clone()
    x2[:, t:] = case.inputs(n - t, seed=7)
    with torch.no_grad():
        y, y2 = case.module(x), case.module(x2)
    _close(y2[:, :t], y[:, :t], f"outputs before token {t} moved with it", case.dtype)
    assert not torch.equal(y[:, t:], y2[:, t:]), "outputs do not depend on the input"


def check_decode(case: PeerCase) -> None:
    """prefill + single-token steps give the forward's outputs; state_nbytes is a byte count."""
    n = case.lengths()[-1]
    if n <= DECODE_STEPS:
        return "the mixer runs too few tokens to decode"
    x = case.inputs(n)
    with torch.no_grad():
        want = case.module(x)[:, n - DECODE_STEPS:]
        state = case.module.prefill(x[:, :n - DECODE_STEPS], 16, DECODE_STEPS)
        nbytes = case.module.state_nbytes(state)
        steps = torch.cat([case.module.step(state, x[:, i:i + 1]) for i in range(n - DECODE_STEPS, n)], dim=1)
    assert isinstance(nbytes, int) and nbytes >= 0, f"state_nbytes gave {nbytes!r}, not a byte count"
    _close(steps, want, "decode steps differ from the forward", case.dtype)


def check_matches_mixer(case: PeerCase) -> str | None:
    """With the mixer's weights, the peer computes the mixer's output (when `matches_mixer`)."""
    if not case.peer.matches_mixer:
        return "not claimed (matches_mixer=False): weights parametrised its own way"
    loaded = case.module.load_state_dict(case.mixer.state_dict(), strict=False)
    assert not loaded.unexpected_keys, f"the mixer's weights {loaded.unexpected_keys} have no place in the peer"
    with torch.no_grad():
        for n in case.lengths():
            x = case.inputs(n)
            _close(case.module(x), case.mixer(x), f"L={n}: output differs from mixer '{case.peer.peer_of}'",
                   case.dtype)
    return None


def check_unsupported(case: PeerCase) -> str | None:
    """Shapes the peer declares it cannot run: none of the small ones, a one-line reason for its example."""
    declare = getattr(case.module, "unsupported", None)
    example = case.peer.unsupported_example
    if declare is None:
        assert example is None, f"unsupported_example {example} given, but the module has no unsupported(B, L)"
        return "declares no unsupported shapes"
    for n in case.lengths():
        why = declare(B, n)
        assert why is None, f"declares the small shape {B} x {n} unsupported: {why}"
    if example is None:
        return None
    why = declare(*example)
    assert isinstance(why, str) and why.strip() and "\n" not in why, \
        f"unsupported{example} gave {why!r}, not a one-line reason"
    return None


def check_in_the_bench(case: PeerCase) -> None:
    """The bench itself times the peer beside its mixer (default config), every mode ok."""
    from zoo.bench.run import Bench

    cfg = BenchConfig(mixers=[case.peer.peer_of], peers=[case.peer.name], seq_lens=[64], tokens_per_batch=128,
                      d_model=32, reps=1, warmup=0, dtype="fp32" if case.dtype == torch.float32 else "bf16",
                      device=str(case.device))
    bench = Bench(cfg, progress=False)
    (peer,) = [t for t in bench.targets if t.kind == "peer"]
    for mode in cfg.modes:
        row = bench.point(peer, mode, 64)
        assert row["status"] == "ok", f"{mode}: {row['status']}"


CHECKS: dict[str, Callable[[PeerCase], str | None]] = {
    "forward": check_forward,
    "causal": check_causal,
    "decode": check_decode,
    "matches_mixer": check_matches_mixer,
    "unsupported": check_unsupported,
    "in_the_bench": check_in_the_bench,
}


def case_for(name: str, device: str = "auto", seed: int = 0) -> PeerCase:
    """The peer `name` built beside its mixer (tiny config, perturbed weights) on `device`; a peer
    that cannot run there is a one-line ZooError."""
    peer = get_peer(name)
    dev = resolve_device(device)
    why = peer.check(dev)
    if why is not None:
        raise ZooError(f"bench peer '{name}' cannot run on {dev.type}: {why}",
                       "check it where its package and device are")
    spec = registry.get_spec(peer.peer_of)
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    mixer = conformance.make(spec, seed=seed).to(device=dev, dtype=dtype)
    torch.manual_seed(seed)
    module = peer.make(mixer, dev, dtype).to(device=dev, dtype=dtype)
    return PeerCase(peer, mixer, module, dev, dtype)


def run_all(name: str, device: str = "auto") -> dict[str, tuple[str, str | None]]:
    """Run every check: check name -> ("pass", None) | ("n/a", why) | ("fail", message)."""
    case = case_for(name, device)
    out: dict[str, tuple[str, str | None]] = {}
    for check, fn in CHECKS.items():
        try:
            note = fn(case)
            out[check] = ("n/a", note) if note else ("pass", None)
        except Exception as e:  # report every failure, not only the first
            out[check] = ("fail", f"{type(e).__name__}: {e}")
    return out
