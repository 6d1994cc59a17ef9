"""`zoo bench`: how each mixer's time and memory grow with sequence length, beside the peer kernels.

For every selected mixer (one layer at `d_model`, its default config, built through the
registry) and every sequence length L, with batch B = max(1, tokens_per_batch // L):

    fwd      forward only, no autograd (prefill)
    fwdbwd   forward + backward of the layer, input gradient included (one layer of a training step)
    decode   latency of one single-token step with a cache already filled to L tokens; the cache
             is filled through the mixer's own chunked forward, `fill_chunk` tokens at a time, so
             attention decodes over a grown KV cache while recurrent mixers hold a fixed state

Timing follows the method of benchmarks/NOTES.md: warm-up calls first (compilation and
Triton autotuning land there), then every call between two CUDA events, median of up to
`reps` calls (fewer when a point would take longer than `point_budget_s`, at least 3, or 1
for a call slower than the point budget); on CPU `time.perf_counter`, smoke numbers only.

FLOPs. Forward FLOPs per token come from `Mixer.flops_per_token(L)`, a count each mixer
derives and states itself (matmuls at 2 FLOPs per multiply-add, averaged over the causal
context). fwdbwd counts 3x the forward: the backward runs two matmuls per forward matmul,
one for the input and one for the weight gradient (Kaplan et al. 2020, Scaling Laws for
Neural Language Models, arXiv:2001.08361, section 2.1). A decode step at context L costs
the marginal FLOPs of one more token, (L+1) f(L+1) - L f(L) with f = flops_per_token.
Peers are counted with the formula of the mixer they stand beside (same shapes, same work).

Memory. `torch.cuda.max_memory_allocated` over the timed calls, minus what other resident
targets hold, so a row's `peak_mem_bytes` is its own weights, inputs, activations, gradients
and cache. CPU has no comparable allocator counter: n/a.

Peers run in the same process at the same shapes (`PEERS`): torch SDPA under each kernel,
compiled FlexAttention (plain causal, ALiBi, T5 buckets, sliding window), flash-attn,
mamba_ssm's Mamba and Mamba2, flash-linear-attention's retention and RWKV-7 layers. Each
names the mixer it is the peer of, so tables and reports show ratios; a peer whose package
or device is missing is recorded as skipped with the reason.

Lengths of 1M tokens and more run for linear mixers only (cost O(L) or O(L log L)), forward
and decode; quadratic mixers run every shorter length until they run out of memory. No
failure stops the bench: out of memory is a row with status "oom", a length past the
mixer's `max_length` is "n/a: max_length", a shape a peer's kernel would crash the process on
(`Target.unsupported`) is "n/a: <why>", any other exception is "error: ...", and points
predicted to exceed `max_call_s` or the bench's `budget_s` are "skipped: ..." with the reason.
With a budget, each mixer (with its peers) gets a share of the time left, so a run cut short
still covers every mixer; what it loses are the longest lengths.

Rows (store kind "bench", one per target x mode x length; None where not measured):
    run_id, target ("mixer" | "peer" | "model"), name, mixer (the registry mixer the row is
    about), peer_of (peers only), mode, seq_len, batch, tokens (per call), d_model, dtype,
    device, cost, backend (what actually ran), status ("ok" | "oom" | "n/a: ..." |
    "skipped: ..." | "error: ..."), time_ms (median per call), time_ms_min, reps,
    tokens_per_s, flops_per_token (forward; decode: the marginal token), flop_factor (3 for
    fwdbwd), tflops, peak_mem_bytes, params, decode only: fill_ms, fill_peak_mem_bytes,
    cache_bytes (measured at L), state_bytes (the mixer's declared state_bytes(L)), decode_gbps
    ((cache + weights) bytes per step / step time: a floor on the bandwidth a step needs).
Ceilings (store kind "ceiling"): name ("matmul" | "copy"), what, value, unit, time_ms, device.
"""

from __future__ import annotations

import gc
import json
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from zoo import env, registry
from zoo.env import resolve_device
from zoo.errors import LengthError, ZooError
from zoo.positional import alibi_slopes, t5_bucket

Mode = Literal["fwd", "fwdbwd", "decode"]
MODES: tuple[str, ...] = ("fwd", "fwdbwd", "decode")
LONG_MODES = ("fwd", "decode")
LONG_MIN = 2**20  # lengths from here on run for linear mixers only
LINEAR_COSTS = ("O(L)", "O(L log L)")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FLOP_FACTOR = {"fwd": 1, "fwdbwd": 3, "decode": 1}
DEFAULT_LENS = "1k,2k,4k,8k,16k,32k,64k,128k"


# -- sizes ----------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*$")


def parse_size(text: str | int) -> int:
    """'1k' -> 1024, '1m' -> 2**20, '4096' -> 4096 (binary suffixes: lengths are powers of two)."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if m is None:
        raise ZooError(f"bad size '{text}'", "write a number with an optional k/m/g suffix, e.g. 4096, 8k, 1m")
    value = float(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2).lower()]
    if value < 1 or value != int(value):
        raise ZooError(f"bad size '{text}': not a positive whole number", "e.g. 4096, 8k, 1m")
    return int(value)


def parse_sizes(text: str) -> list[int]:
    """'1k,2k,4k' or '1k..128k' (powers of two between the ends) -> sorted unique lengths."""
    out: set[int] = set()
    for part in str(text).split(","):
        if not part.strip():
            continue
        if ".." in part:
            lo, hi = (parse_size(p) for p in part.split("..", 1))
            if hi < lo:
                raise ZooError(f"bad range '{part}': the end is below the start", "e.g. 1k..128k")
            n = lo
            while n <= hi:
                out.add(n)
                n *= 2
        else:
            out.add(parse_size(part))
    if not out:
        raise ZooError(f"no lengths in '{text}'", "e.g. --seq-lens 1k,2k,4k")
    return sorted(out)


def human_size(n: int) -> str:
    for div, unit in ((2**20, "M"), (2**10, "K")):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


# -- settings -------------------------------------------------------------------------------

# what `zoo bench` measures when not told: a layer of the GPU experiments' width over the long
# lengths on a GPU; a narrow layer at short lengths on a CPU, where each call must stay short
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cuda": {"d_model": 1024, "tokens_per_batch": 2**17, "seq_lens": DEFAULT_LENS},
    "cpu": {"d_model": 256, "tokens_per_batch": 2**13, "seq_lens": "256,1k,4k"},
}

class BenchConfig(BaseModel):
    """What one bench run measures. Defaults are the GPU run; the CLI narrows them."""

    model_config = ConfigDict(extra="forbid")

    mixers: list[str] = Field(default_factory=list, description="registry names; empty = every registered mixer")
    seq_lens: list[int] | None = Field(None, min_length=1, description="sequence lengths; those >= 1M run for "
                                       "linear mixers only (None: the device's defaults, DEVICE_DEFAULTS)")
    long: bool | None = Field(None, description="add `long_lens` (linear mixers, fwd and decode); "
                                                "None = when seq_lens already reach 1M")
    long_lens: list[int] = Field(default_factory=lambda: [LONG_MIN], description="the long lengths")
    tokens_per_batch: int | None = Field(None, ge=1, le=2**32, description="batch = max(1, tokens_per_batch // L) "
                                         "(None: the device's default)")
    d_model: int | None = Field(None, ge=8, le=16384, description="layer width (None: the device's default)")
    modes: list[Mode] = Field(default_factory=lambda: list(MODES), min_length=1)
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    device: str = Field("auto", description="auto = cuda when available, else cpu")
    peers: list[str] | None = Field(None, description="peer names to run; None = all that apply, [] = none")
    model: bool = Field(False, description="also time a whole ZooLM per mixer")
    n_layers: int = Field(2, ge=1, le=64, description="layers of the whole-model targets")
    warmup: int | None = Field(None, ge=0, le=100, description="warm-up calls (None: 2 on GPU, 1 on CPU)")
    reps: int | None = Field(None, ge=1, le=1000, description="timed calls at most (None: 20 on GPU, 3 on CPU)")
    point_budget_s: float = Field(0.5, gt=0, le=86400, description="stop timing a point after this long (>= 3 "
                                  "calls)")
    max_call_s: float = Field(10.0, gt=0, le=86400, description="skip a longer length predicted slower than this "
                              "per call")
    budget_s: float | None = Field(None, gt=0, le=10**7, description="wall-clock budget of the whole bench")
    fill_chunk: int = Field(8192, ge=1, le=1 << 24, description="tokens per chunk when filling a decode cache")

    @field_validator("seq_lens", "long_lens")
    @classmethod
    def _sorted(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if any(not 1 <= n <= 1 << 26 for n in v):
            raise ValueError(f"lengths must be from 1 to {1 << 26:,}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _device_defaults(self) -> BenchConfig:
        """Width, tokens per call and lengths left unset take the device's defaults: a GPU's would
        keep a CPU busy for hours."""
        defaults = DEVICE_DEFAULTS["cuda" if self.resolved_device().type == "cuda" else "cpu"]
        for k, v in defaults.items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, parse_sizes(v) if k == "seq_lens" else v)
        return self

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device)

    def lengths(self) -> list[int]:
        use_long = self.long if self.long is not None else any(n >= LONG_MIN for n in self.seq_lens)
        return sorted(set(self.seq_lens) | (set(self.long_lens) if use_long else set()))


# -- timing ---------------------------------------------------------------------------------

class Clock:
    """CUDA events around each call on GPU; perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any]) -> float:
        """Seconds one call of `fn` takes."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def wall(self, fn: Callable[[], Any]) -> float:
        """Seconds of one call including host work, synchronized (for untimed phases)."""
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0


def time_calls(clock: Clock, fn: Callable[[], Any], warmup: int, reps: int, budget_s: float,
               before: Callable[[], Any] | None = None) -> list[float]:
    """Per-call seconds of `fn` after up to `warmup` calls. The first call compiles and autotunes,
    and a compiled step may compile once more on its second call (a shape marked dynamic), so
    only from the second warm-up on does a call's time say how slow `fn` is. Calls slower than
    `budget_s` then get one timed call; otherwise calls go on until `reps`, or until `budget_s`
    is spent with at least 3 timed."""
    last = None
    for i in range(warmup):
        if i >= 2 and last > budget_s:
            break
        if before is not None:
            before()
        last = clock.wall(fn)
    times: list[float] = []
    min_reps = 1 if last is not None and last > budget_s else min(3, reps)
    start = time.perf_counter()
    while len(times) < reps:
        if before is not None:
            before()
        times.append(clock.time(fn))
        if len(times) >= min_reps and time.perf_counter() - start > budget_s:
            break
    return times


# -- targets: what gets timed -----------------------------------------------------------------

def decode_flops(flops_per_token: Callable[[int], float], L: int) -> float:
    """FLOPs of the step that adds token L+1 to a context of L: (L+1) f(L+1) - L f(L)."""
    return (L + 1) * flops_per_token(L + 1) - L * flops_per_token(L)


class Target:
    """One thing the bench times: a mixer layer, a peer layer, or a whole ZooLM.

    Subclasses build `self.module` and implement `call` (the forward), `prefill` (a decode
    state holding L tokens) and `step` (one token through that state)."""

    kind = "mixer"
    d_model: int

    def __init__(self, name: str, mixer: str, cost: str, description: str, peer_of: str | None = None):
        self.name, self.mixer, self.cost, self.description, self.peer_of = name, mixer, cost, description, peer_of
        self.module: nn.Module | None = None
        self.build_error: str | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def build(self, device: torch.device, dtype: torch.dtype) -> None:
        raise NotImplementedError

    def ensure_built(self, device: torch.device, dtype: torch.dtype) -> None:
        if self.module is None and self.build_error is None:
            self.build(device, dtype)

    def param_bytes(self) -> int:
        assert self.module is not None
        return sum(p.numel() * p.element_size() for p in self.module.parameters())

    def num_params(self) -> int:
        assert self.module is not None
        return sum(p.numel() for p in self.module.parameters())

    def zero_grad(self) -> None:
        if self.module is not None:
            for p in self.module.parameters():
                p.grad = None

    # -- shapes and work ---------------------------------------------------------------------
    @property
    def quadratic(self) -> bool:
        return self.cost not in LINEAR_COSTS

    def max_length(self) -> int | None:
        return None

    def unsupported(self, B: int, L: int) -> str | None:
        """Why this target cannot take B x L tokens, when the attempt would take the process down
        (an illegal memory access, unlike out of memory, cannot be caught and recorded)."""
        return None

    def flops_per_token(self, L: int) -> float | None:
        return None

    def backend(self) -> str:
        return self.description

    def inputs(self, B: int, L: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """x `[B, L, D]` for a layer (token ids `[B, L]` for a whole model)."""
        return torch.randn(B, L, self.d_model, device=device, dtype=dtype)

    def grad_output(self, x: torch.Tensor) -> torch.Tensor:
        """What the backward starts from, made before timing: dL/dy for a layer (y has x's shape)."""
        return torch.randn_like(x)

    def backward(self, y: torch.Tensor, gy: torch.Tensor) -> None:
        y.backward(gy)

    # -- calls -------------------------------------------------------------------------------
    def call(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prefill(self, x: torch.Tensor, chunk: int, extra: int) -> Any:
        """A decode state holding x's L tokens, with room for `extra` more."""
        raise NotImplementedError

    def step(self, state: Any, x1: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_nbytes(self, state: Any) -> int | None:
        return None

    def declared_state_bytes(self, L: int, B: int, dtype: torch.dtype) -> int | None:
        return None


class MixerTarget(Target):
    """One of our mixers, a single layer built through the registry with its default config."""

    kind = "mixer"

    def __init__(self, spec: registry.MixerSpec, d_model: int):
        super().__init__(spec.name, spec.name, spec.capabilities.cost, spec.description)
        self.spec, self.d_model = spec, d_model

    def build(self, device, dtype):
        self.module = registry.build_mixer(self.spec.name, self.d_model).to(device=device, dtype=dtype)

    def max_length(self):
        return self.module.max_length

    def flops_per_token(self, L):
        return float(self.module.flops_per_token(L))

    def backend(self):
        return self.module.last_backend or self.module.backend_choice(next(self.module.parameters()).device).chosen

    def call(self, x):
        return self.module(x)

    def prefill(self, x, chunk, extra):
        cache = self.module.new_cache(x.shape[0], x.device, x.dtype)
        for i in range(0, x.shape[1], chunk):
            self.module(x[:, i:i + chunk], cache)
        return cache

    def step(self, state, x1):
        return self.module(x1, state)

    def state_nbytes(self, state):
        return state.nbytes()

    def declared_state_bytes(self, L, B, dtype):
        return int(self.module.state_bytes(L, B, dtype))


class ModelTarget(Target):
    """A whole ZooLM with `n_layers` layers of one mixer: embedding, blocks, norm, tied head."""

    kind = "model"

    def __init__(self, spec: registry.MixerSpec, d_model: int, n_layers: int):
        super().__init__(f"model:{spec.name}", spec.name, spec.capabilities.cost,
                         f"ZooLM, {n_layers} x {spec.name}")
        self.spec, self.d_model, self.n_layers = spec, d_model, n_layers

    def build(self, device, dtype):
        from zoo.model import ModelConfig, ZooLM

        cfg = ModelConfig(d_model=self.d_model, n_layers=self.n_layers, layers=[self.spec.name])
        self.module = ZooLM(cfg).to(device=device, dtype=dtype)

    def max_length(self):
        return self.module.max_length

    def flops_per_token(self, L):
        return float(self.module.flops_per_token(L, training=False))

    def backend(self):
        used = self.module.used_backends()
        return ",".join(f"{k}={v}" for k, v in used.items())

    def inputs(self, B, L, device, dtype):
        return torch.randint(0, self.module.config.vocab_size, (B, L), device=device)

    def grad_output(self, tokens):
        return torch.randint_like(tokens, self.module.config.vocab_size)  # next-token targets for the loss

    def backward(self, logits, targets):
        F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()

    def call(self, tokens):
        return self.module(tokens)

    def prefill(self, tokens, chunk, extra):
        cache = self.module.new_cache(tokens.shape[0], tokens.device, self.module.embed.weight.dtype)
        for i in range(0, tokens.shape[1], chunk):
            self.module(tokens[:, i:i + chunk], cache)
        return cache

    def step(self, state, tok1):
        return self.module(tok1, state)

    def state_nbytes(self, state):
        return sum(c.nbytes() for c in state)


# -- peers ------------------------------------------------------------------------------------

class PeerTarget(Target):
    """A kernel or layer a user would otherwise call, at the shapes of the mixer it stands beside.

    `make(target_module, device, dtype)` returns an nn.Module with `forward(x)`,
    `prefill(x, chunk, extra) -> state`, `step(state, x1)` and `state_nbytes(state)`."""

    kind = "peer"

    def __init__(self, peer: PeerDef, mixer_target: MixerTarget, unavailable: str | None = None):
        super().__init__(peer.name, peer.peer_of, mixer_target.cost, peer.description, peer_of=peer.peer_of)
        self.peer, self.of, self.d_model = peer, mixer_target, mixer_target.d_model
        self.unavailable = unavailable  # why this peer cannot run here (package or device missing)

    def build(self, device, dtype):
        self.of.ensure_built(device, dtype)
        if self.of.module is None:
            raise RuntimeError(f"its mixer '{self.of.name}' did not build: {self.of.build_error}")
        self.module = self.peer.make(self.of.module, device, dtype).to(device=device, dtype=dtype)

    def max_length(self):
        return self.of.max_length()

    def unsupported(self, B, L):
        check = getattr(self.module, "unsupported", None)
        return check(B, L) if check is not None else None

    def flops_per_token(self, L):
        return self.of.flops_per_token(L)

    def backend(self):
        return self.peer.description

    def call(self, x):
        return self.module(x)

    def prefill(self, x, chunk, extra):
        return self.module.prefill(x, chunk, extra)

    def step(self, state, x1):
        return self.module.step(state, x1)

    def state_nbytes(self, state):
        return self.module.state_nbytes(state)


@dataclass(frozen=True)
class PeerDef:
    name: str
    peer_of: str
    description: str
    make: Callable[[nn.Module, torch.device, torch.dtype], nn.Module]
    check: Callable[[torch.device], str | None]


def _needs_cuda(*modules: str) -> Callable[[torch.device], str | None]:
    def check(device: torch.device) -> str | None:
        for mod in modules:
            if not env.has_module(mod):
                return f"{mod} is not installed"
        if device.type != "cuda":
            return f"{' and '.join(modules) or 'this kernel'} runs on CUDA only"
        return None

    return check


def _sdpa_check(kernel_name: str) -> Callable[[torch.device], str | None]:
    def check(device: torch.device) -> str | None:
        if kernel_name in ("efficient", "cudnn") and device.type != "cuda":
            return f"the {kernel_name} SDPA kernel runs on CUDA only"
        return None

    return check


def _flex_check(device: torch.device) -> str | None:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError as e:
        return f"FlexAttention unavailable in torch {torch.__version__}: {e}"
    if device.type != "cuda":
        return "compiled FlexAttention is timed on CUDA only"
    return None


class AttentionPeer(nn.Module):
    """q, k, v, o projections as in `zoo.mixers.attention.Attention`, around a raw causal kernel.

    x `[B, L, D]`; q, k, v `[B, H, L, Dh]`. Decoding writes into a preallocated KV cache
    `[B, H, capacity, Dh]` and attends the filled prefix, as a serving loop would."""

    def __init__(self, d_model: int, n_heads: int, head_dim: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        inner = n_heads * head_dim
        self.wq = nn.Linear(d_model, inner, bias=False)
        self.wk = nn.Linear(d_model, inner, bias=False)
        self.wv = nn.Linear(d_model, inner, bias=False)
        self.wo = nn.Linear(inner, d_model, bias=False)

    @classmethod
    def like(cls, mixer: nn.Module, **kw: Any) -> AttentionPeer:
        d = mixer.d_model
        h = getattr(mixer, "n_heads", None) or getattr(mixer.config, "n_heads", 8)
        dh = getattr(mixer, "head_dim", None) or getattr(mixer.config, "head_dim", None) or d // h
        return cls(d, h, dh, **kw)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, L, _ = t.shape
        return t.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)

    def core(self, q, k, v):
        """Causal attention, q/k/v `[B, H, L, Dh]`."""
        raise NotImplementedError

    def core_decode(self, q, k, v, pos: int):
        """One query `[B, H, 1, Dh]` at position `pos` over cache slots `[0, pos]`."""
        raise NotImplementedError

    def forward(self, x):
        B, L, _ = x.shape
        o = self.core(self._heads(self.wq(x)), self._heads(self.wk(x)), self._heads(self.wv(x)))
        return self.wo(o.transpose(1, 2).reshape(B, L, -1))

    def prefill(self, x, chunk, extra):
        B, L, _ = x.shape
        cap = -(-(L + extra) // 128) * 128
        k = x.new_zeros(B, self.n_heads, cap, self.head_dim)
        v = torch.zeros_like(k)
        for i in range(0, L, chunk):
            xc = x[:, i:i + chunk]
            k[:, :, i:i + xc.shape[1]] = self._heads(self.wk(xc))
            v[:, :, i:i + xc.shape[1]] = self._heads(self.wv(xc))
        return {"k": k, "v": v, "pos": L}

    def step(self, state, x1):
        B = x1.shape[0]
        p = state["pos"]
        state["k"][:, :, p] = self.wk(x1).view(B, self.n_heads, self.head_dim)
        state["v"][:, :, p] = self.wv(x1).view(B, self.n_heads, self.head_dim)
        o = self.core_decode(self._heads(self.wq(x1)), state["k"], state["v"], p)
        state["pos"] = p + 1
        return self.wo(o.transpose(1, 2).reshape(B, 1, -1))

    def state_nbytes(self, state):
        p = state["pos"]
        return 2 * state["k"][:, :, :p].numel() * state["k"].element_size()


class SdpaPeer(AttentionPeer):
    """torch `scaled_dot_product_attention` pinned to one kernel with `sdpa_kernel`."""

    def __init__(self, d_model, n_heads, head_dim, kernel: str = "flash"):
        super().__init__(d_model, n_heads, head_dim)
        self.kernel = kernel

    def _backend(self):
        from torch.nn.attention import SDPBackend

        return {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[self.kernel]

    def core(self, q, k, v):
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(self._backend()):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def core_decode(self, q, k, v, pos):
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(self._backend()):
            return F.scaled_dot_product_attention(q, k[:, :, :pos + 1], v[:, :, :pos + 1])


FLEX_BLOCK = 128  # FlexAttention's default sparse block size


def band_block_mask(L: int, window: int | None, device: torch.device):
    """Causal (optionally sliding-window) `BlockMask` for L queries over the same L keys, built
    from the block structure: `create_block_mask` would first materialise an L x L mask (16 GB
    at 128K). A block pair spans distances q - k in [128 (i - j) - 127, 128 (i - j) + 127];
    pairs wholly inside 0 <= q - k < window are full (no mask_mod), those touching it partial."""
    from torch.nn.attention.flex_attention import BlockMask

    n = -(-L // FLEX_BLOCK)
    blocks = torch.arange(n, device=device)
    d = (blocks[:, None] - blocks[None, :]) * FLEX_BLOCK
    dmin, dmax = d - (FLEX_BLOCK - 1), d + (FLEX_BLOCK - 1)
    hi = window if window is not None else 2 * L + FLEX_BLOCK  # beyond any distance
    full = (dmin >= 0) & (dmax < hi)
    partial = (dmax >= 0) & (dmin < hi) & ~full

    def pack(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # per query block: how many key blocks, and their indices first (a stable sort puts True first)
        order = torch.sort((~sel).int(), dim=1, stable=True).indices
        return sel.sum(1).int()[None, None], order.int()[None, None]

    def mask_mod(b, h, q_idx, kv_idx):
        keep = q_idx >= kv_idx
        return keep & (q_idx - kv_idx < window) if window is not None else keep

    (num, idx), (full_num, full_idx) = pack(partial), pack(full)
    return BlockMask.from_kv_blocks(num, idx, full_num, full_idx, BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod,
                                    seq_lengths=(L, L))


_COMPILED_FLEX: dict[str, Callable] = {}


def _flex_fn(compiled: bool) -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    if not compiled:
        return flex_attention
    if "fn" not in _COMPILED_FLEX:
        # several variants x shapes x fwd/bwd/decode: allow more recompiles than the default
        cfg = torch._dynamo.config
        if hasattr(cfg, "recompile_limit"):
            cfg.recompile_limit = max(cfg.recompile_limit, 64)
        else:  # older torch
            cfg.cache_size_limit = max(cfg.cache_size_limit, 64)
        _COMPILED_FLEX["fn"] = torch.compile(flex_attention)
    return _COMPILED_FLEX["fn"]


class FlexPeer(AttentionPeer):
    """FlexAttention (Dong et al. 2024, arXiv:2412.05496) with a block mask and a score_mod.

    variant: `causal` (no score change), `alibi` (score - m_h (i - j)), `t5` (score + a
    learned bias per head and T5 bucket of i - j), `swa` (causal window of `window` keys)."""

    def __init__(self, d_model, n_heads, head_dim, variant: str = "causal", window: int | None = None,
                 num_buckets: int = 32, max_distance: int = 128, compiled: bool = True):
        super().__init__(d_model, n_heads, head_dim)
        self.variant, self.window, self.compiled = variant, window, compiled
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)
        self.t5_bias = nn.Parameter(torch.randn(n_heads, num_buckets) * 0.02)
        self._masks: dict[tuple, Any] = {}
        # score_mods are made once: a new closure per call could make the compiled kernel recompile
        self._score_mod = self._make_score_mod() if variant in ("alibi", "t5") else None
        self._decode_mod = None
        self.pos: torch.Tensor | None = None  # decode position, 0-dim, updated in place (no recompiles)

    def _make_score_mod(self):
        def score_mod(score, b, h, q_idx, kv_idx):
            return self._bias(score, h, q_idx, kv_idx)

        return score_mod

    def _make_decode_mod(self, device: torch.device):
        self.pos = torch.zeros((), dtype=torch.int64, device=device)
        p, window = self.pos, self.window

        def decode_mod(score, b, h, q_idx, kv_idx):
            keep = kv_idx <= p
            if window is not None:
                keep = keep & (p - kv_idx < window)
            return torch.where(keep, self._bias(score, h, p, kv_idx), -float("inf"))

        return decode_mod

    def _bias(self, score, h, q_idx, kv_idx):
        if self.variant == "alibi":
            return score - self.slopes[h] * (q_idx - kv_idx)
        if self.variant == "t5":
            return score + self.t5_bias[h, t5_bucket(q_idx - kv_idx, self.num_buckets, self.max_distance)]
        return score

    def _block_mask(self, L: int, device: torch.device):
        key = (L, str(device))
        if key not in self._masks:
            self._masks[key] = band_block_mask(L, self.window if self.variant == "swa" else None, device)
        return self._masks[key]

    def core(self, q, k, v):
        bm = self._block_mask(q.shape[2], q.device)
        return _flex_fn(self.compiled)(q, k, v, score_mod=self._score_mod, block_mask=bm)

    def core_decode(self, q, k, v, pos):
        """All cache slots are passed (fixed shapes, no recompiles); the score_mod masks those past `pos`."""
        if self._decode_mod is None or self.pos.device != q.device:
            self._decode_mod = self._make_decode_mod(q.device)
        self.pos.fill_(pos)
        return _flex_fn(self.compiled)(q, k, v, score_mod=self._decode_mod)


class FlashAttnPeer(AttentionPeer):
    """flash-attn's `flash_attn_func` (Dao 2023, FlashAttention-2, arXiv:2307.08691); decode with
    `flash_attn_with_kvcache`. Layout `[B, L, H, Dh]`, which is flash-attn's own."""

    def forward(self, x):
        from flash_attn import flash_attn_func

        B, L, _ = x.shape
        split = lambda t: t.view(B, L, self.n_heads, self.head_dim)
        o = flash_attn_func(split(self.wq(x)), split(self.wk(x)), split(self.wv(x)), causal=True)
        return self.wo(o.reshape(B, L, -1))

    def prefill(self, x, chunk, extra):
        B, L, _ = x.shape
        cap = -(-(L + extra) // 256) * 256
        k = x.new_zeros(B, cap, self.n_heads, self.head_dim)
        v = torch.zeros_like(k)
        for i in range(0, L, chunk):
            xc = x[:, i:i + chunk]
            n = xc.shape[1]
            k[:, i:i + n] = self.wk(xc).view(B, n, self.n_heads, self.head_dim)
            v[:, i:i + n] = self.wv(xc).view(B, n, self.n_heads, self.head_dim)
        return {"k": k, "v": v, "pos": L, "seqlens": torch.full((B,), L, dtype=torch.int32, device=x.device)}

    def step(self, state, x1):
        from flash_attn import flash_attn_with_kvcache

        B = x1.shape[0]
        split = lambda t: t.view(B, 1, self.n_heads, self.head_dim)
        o = flash_attn_with_kvcache(split(self.wq(x1)), state["k"], state["v"], k=split(self.wk(x1)),
                                    v=split(self.wv(x1)), cache_seqlens=state["seqlens"], causal=True)
        state["seqlens"] += 1
        state["pos"] += 1
        return self.wo(o.reshape(B, 1, -1))

    def state_nbytes(self, state):
        return 2 * state["k"][:, :state["pos"]].numel() * state["k"].element_size()


def _cfg(mixer: nn.Module, *names: str, default: Any) -> Any:
    """The first of `names` that the mixer's config (or the mixer) carries, else `default`."""
    for n in names:
        for src in (mixer.config, mixer):
            v = getattr(src, n, None)
            if v is not None:
                return v
    return default


class MambaSsmPeer(nn.Module):
    """mamba_ssm's `Mamba` (Gu and Dao 2023) or `Mamba2` (Dao and Gu 2024) layer, at the config
    of our mixer; decode through mamba_ssm's own InferenceParams and `step`."""

    def __init__(self, layer: nn.Module, version: int):
        super().__init__()
        self.layer, self.version = layer, version

    @classmethod
    def like(cls, mixer: nn.Module, version: int) -> MambaSsmPeer:
        d = mixer.d_model
        common = dict(d_state=_cfg(mixer, "d_state", default=16 if version == 1 else 128),
                      d_conv=_cfg(mixer, "d_conv", "conv_width", "conv_size", default=4),
                      expand=_cfg(mixer, "expand", default=2), layer_idx=0)
        if version == 1:
            from mamba_ssm import Mamba

            return cls(Mamba(d, **common), 1)
        from mamba_ssm import Mamba2

        from zoo.mixers.mamba import causal_conv1d_fn

        # the fused (memory-efficient) path needs causal-conv1d; without it that path fails at call time
        return cls(Mamba2(d, headdim=_cfg(mixer, "headdim", "head_dim", default=64),
                          ngroups=_cfg(mixer, "ngroups", "n_groups", default=1),
                          chunk_size=_cfg(mixer, "chunk_size", default=256),
                          use_mem_eff_path=causal_conv1d_fn() is not None, **common), 2)

    def unsupported(self, B, L):
        from zoo.mixers.mamba2 import INT32_ELEMENTS

        # Mamba2's Triton kernels offset pointers in int32 (state-spaces/mamba#1015); past 2^31
        # elements in its projection they fail with an illegal memory access (ours splits the call)
        width = self.layer.in_proj.out_features
        if self.version == 2 and B * L * width > INT32_ELEMENTS:
            return f"int32 offsets: {B} x {L} tokens x {width} channels is over 2^31 elements"
        return None

    def forward(self, x):
        return self.layer(x)

    def prefill(self, x, chunk, extra):
        from mamba_ssm.utils.generation import InferenceParams

        # mamba_ssm fills its state with one full forward; steps after that are single tokens
        params = InferenceParams(max_seqlen=x.shape[1] + extra, max_batch_size=x.shape[0])
        self.layer(x, inference_params=params)
        params.seqlen_offset = x.shape[1]
        return params

    def step(self, state, x1):
        out = self.layer(x1, inference_params=state)
        state.seqlen_offset += 1
        return out

    def state_nbytes(self, state):
        return sum(t.numel() * t.element_size() for ts in state.key_value_memory_dict.values() for t in ts)


class FlaPeer(nn.Module):
    """A flash-linear-attention layer (Yang et al., fla-org/flash-linear-attention):
    `MultiScaleRetention` (RetNet) or `RWKV7Attention`; decode through fla's layer Cache."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    @classmethod
    def like(cls, mixer: nn.Module, which: str) -> FlaPeer:
        d = mixer.d_model
        if which == "retention":
            from fla.layers import MultiScaleRetention

            return cls(MultiScaleRetention(hidden_size=d, num_heads=_cfg(mixer, "n_heads", default=8),
                                           expand_k=_cfg(mixer, "expand_k", default=1.0),
                                           expand_v=_cfg(mixer, "expand_v", default=2.0), layer_idx=0))
        from fla.layers import RWKV7Attention

        def rank(attr: str) -> int | None:  # LoRA ranks as our mixer built them: both hold the same weights
            w = getattr(mixer, attr, None)
            return w.shape[1] if isinstance(w, torch.Tensor) else None

        return cls(RWKV7Attention(hidden_size=d, head_dim=_cfg(mixer, "head_dim", "head_size", default=64),
                                  decay_low_rank_dim=rank("w1"), a_low_rank_dim=rank("a1"),
                                  v_low_rank_dim=rank("v1"), gate_low_rank_dim=rank("g1"), layer_idx=0,
                                  num_hidden_layers=max(2, _cfg(mixer, "n_layers", default=12))))

    def forward(self, x):
        return self.layer(x)[0]

    def prefill(self, x, chunk, extra):
        from fla.models.utils import Cache

        cache = Cache()
        for i in range(0, x.shape[1], chunk):
            self.layer(x[:, i:i + chunk], past_key_values=cache, use_cache=True)
        return cache

    def step(self, state, x1):
        return self.layer(x1, past_key_values=state, use_cache=True)[0]

    def state_nbytes(self, state):
        total = 0

        def walk(v: Any) -> None:
            nonlocal total
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
            elif isinstance(v, (list, tuple)):
                for u in v:
                    walk(u)
            elif isinstance(v, dict):
                for u in v.values():
                    walk(u)

        for i in range(len(state)):
            walk(state[i])
        return total


def _flex_make(variant: str) -> Callable[[nn.Module, torch.device, torch.dtype], nn.Module]:
    def make(mixer: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
        window = _cfg(mixer, "window", default=None) if variant == "swa" else None
        if variant == "swa" and window is None:
            raise RuntimeError("its mixer declares no `window`")
        return FlexPeer.like(mixer, variant=variant, window=window, compiled=device.type == "cuda",
                             num_buckets=_cfg(mixer, "num_buckets", default=32),
                             max_distance=_cfg(mixer, "max_distance", default=128))

    return make


def _sdpa_make(kernel: str) -> Callable[[nn.Module, torch.device, torch.dtype], nn.Module]:
    return lambda mixer, device, dtype: SdpaPeer.like(mixer, kernel=kernel)


PEERS: list[PeerDef] = [
    PeerDef("sdpa-cudnn", "nope", "torch SDPA, cuDNN kernel", _sdpa_make("cudnn"), _sdpa_check("cudnn")),
    PeerDef("sdpa-flash", "nope", "torch SDPA, flash kernel", _sdpa_make("flash"), _sdpa_check("flash")),
    PeerDef("sdpa-efficient", "nope", "torch SDPA, memory-efficient kernel", _sdpa_make("efficient"),
            _sdpa_check("efficient")),
    PeerDef("sdpa-math", "nope", "torch SDPA, math kernel", _sdpa_make("math"), _sdpa_check("math")),
    PeerDef("flex", "nope", "compiled FlexAttention, causal block mask", _flex_make("causal"), _flex_check),
    PeerDef("flex-alibi", "alibi", "compiled FlexAttention, ALiBi score_mod", _flex_make("alibi"), _flex_check),
    PeerDef("flex-t5", "t5-bias", "compiled FlexAttention, T5 bucket score_mod", _flex_make("t5"), _flex_check),
    PeerDef("flex-swa", "swa", "compiled FlexAttention, sliding-window block mask", _flex_make("swa"), _flex_check),
    PeerDef("flash-attn", "nope", "flash-attn flash_attn_func", lambda m, d, t: FlashAttnPeer.like(m),
            _needs_cuda("flash_attn")),
    PeerDef("mamba_ssm-mamba", "mamba", "mamba_ssm Mamba layer", lambda m, d, t: MambaSsmPeer.like(m, 1),
            _needs_cuda("mamba_ssm")),
    PeerDef("mamba_ssm-mamba2", "mamba2", "mamba_ssm Mamba2 layer", lambda m, d, t: MambaSsmPeer.like(m, 2),
            _needs_cuda("mamba_ssm")),
    PeerDef("fla-retention", "retnet", "fla MultiScaleRetention layer", lambda m, d, t: FlaPeer.like(m, "retention"),
            _needs_cuda("fla")),
    PeerDef("fla-rwkv7", "rwkv7", "fla RWKV7Attention layer", lambda m, d, t: FlaPeer.like(m, "rwkv7"),
            _needs_cuda("fla")),
]


def peer_names() -> list[str]:
    return [p.name for p in PEERS]


# -- one point --------------------------------------------------------------------------------

def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def is_unsupported(e: BaseException) -> bool:
    msg = str(e)
    return isinstance(e, RuntimeError) and ("No available kernel" in msg or "No viable backend" in msg)


def _short(e: BaseException, limit: int = 300) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:limit]}" if msg else type(e).__name__


@dataclass
class Tracker:
    """Per (target, mode): what happened at shorter lengths, to skip hopeless longer ones."""

    oom_at: int | None = None
    last: tuple[int, int, float] | None = None  # (L, B, seconds per call or fill)


def predicted_seconds(target: Target, prev: tuple[int, int, float], L: int, B: int) -> float:
    """Scale a measured call to (L, B): work ~ B L, times L again for quadratic mixers."""
    L0, B0, t0 = prev
    scale = (B * L) / (B0 * L0)
    if target.quadratic:
        scale *= L / L0
    return t0 * scale


def _matmul_times(clock: Clock, n: int, device, dtype, warmup: int, reps: int) -> list[float]:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return time_calls(clock, lambda: a @ b, warmup, reps, 2.0)


def _copy_times(clock: Clock, nbytes: int, device, warmup: int, reps: int) -> list[float]:
    x = torch.empty(nbytes // 2, device=device, dtype=torch.bfloat16).uniform_()
    y = torch.empty_like(x)
    return time_calls(clock, lambda: y.copy_(x), warmup, reps, 2.0)


class Bench:
    """Runs a `BenchConfig`: targets x lengths x modes, the ceilings, the store and the JSON."""

    def __init__(self, cfg: BenchConfig, console=None, progress: bool = True):
        self.cfg = cfg
        self.device = cfg.resolved_device()
        self.dtype = DTYPES[cfg.dtype]
        self.clock = Clock(self.device)
        self.cuda = self.device.type == "cuda"
        self.warmup = cfg.warmup if cfg.warmup is not None else (2 if self.cuda else 1)
        self.reps = cfg.reps if cfg.reps is not None else (20 if self.cuda else 3)
        self.console = console
        self.progress = progress
        self.device_name = env.device_name(self.device)
        self.mixer_names = self._mixers()
        self.groups, self.skipped_peers = self._groups()
        self.targets = [t for g in self.groups for t in g]
        self.trackers: dict[tuple[str, str], Tracker] = {}
        self.deadline: float | None = None  # of the whole bench
        self.group_deadline: float | None = None  # of the mixer group being measured

    # -- plan -------------------------------------------------------------------------------
    def _mixers(self) -> list[str]:
        names = self.cfg.mixers or registry.names()
        for n in names:
            registry.get_spec(n)  # unknown names: one line with suggestions
        return list(dict.fromkeys(names))

    def _groups(self) -> tuple[list[list[Target]], dict[str, str]]:
        """Per mixer, one group: the mixer, its peers, its whole-model target."""
        wanted = self.cfg.peers
        if wanted:
            unknown = [p for p in wanted if p not in peer_names()]
            if unknown:
                raise ZooError(f"unknown peer(s): {', '.join(unknown)}", f"known: {', '.join(peer_names())}")
        groups: list[list[Target]] = []
        skipped: dict[str, str] = {}
        for name in self.mixer_names:
            mt = MixerTarget(registry.get_spec(name), self.cfg.d_model)
            group: list[Target] = [mt]
            for p in PEERS:
                if p.peer_of != name or (wanted is not None and p.name not in wanted):
                    continue
                why = p.check(self.device)
                if why is not None:
                    skipped[p.name] = why
                group.append(PeerTarget(p, mt, unavailable=why))
            if self.cfg.model:
                group.append(ModelTarget(registry.get_spec(name), self.cfg.d_model, self.cfg.n_layers))
            groups.append(group)
        return groups, skipped

    def config_dict(self) -> dict:
        c = self.cfg.model_dump()
        c.update(mixers=self.mixer_names, lengths=self.cfg.lengths(), warmup=self.warmup, reps=self.reps)
        return c

    def run_id(self) -> str:
        from zoo.store import config_id, git_commit

        return "bench-" + config_id({"kind": "bench", "config": self.config_dict(), "device": self.device_name,
                                     "versions": env.versions(), "commit": git_commit()})

    # -- ceilings ---------------------------------------------------------------------------
    def ceilings(self) -> list[dict]:
        """Device limits measured here: a large matmul (TFLOP/s) and a device-to-device copy (GB/s,
        bytes read + written). Tiny versions on CPU."""
        n = 8192 if self.cuda else 256
        copy_bytes = 2**30 if self.cuda else 2**24
        warmup = max(self.warmup, 1)
        rows = []
        try:
            t = statistics.median(_matmul_times(self.clock, n, self.device, self.dtype, warmup, self.reps))
            rows.append({"name": "matmul", "what": f"{self.cfg.dtype} {n}x{n} @ {n}x{n}, random data",
                         "value": 2 * n**3 / t / 1e12, "unit": "TFLOP/s", "time_ms": t * 1e3})
            t = statistics.median(_copy_times(self.clock, copy_bytes, self.device, warmup, self.reps))
            where = "device-to-device" if self.cuda else "host memory"
            rows.append({"name": "copy", "what": f"{where} copy of {copy_bytes // 2**20} MiB (bytes read + written)",
                         "value": 2 * copy_bytes / t / 1e9, "unit": "GB/s", "time_ms": t * 1e3})
        except Exception as e:  # a ceiling that cannot be measured is recorded, never fatal
            rows.append({"name": "error", "what": _short(e), "value": None, "unit": None})
        for r in rows:
            r["device"] = self.device_name
        self._free()
        return rows

    # -- points -----------------------------------------------------------------------------
    def base_row(self, t: Target, mode: str, L: int, B: int) -> dict:
        return {
            "target": t.kind, "name": t.name, "mixer": t.mixer, "peer_of": t.peer_of, "mode": mode,
            "seq_len": L, "batch": B, "tokens": B * L if mode != "decode" else B, "d_model": self.cfg.d_model,
            "dtype": self.cfg.dtype, "device": self.device_name, "cost": t.cost, "backend": None,
            "status": None, "time_ms": None, "time_ms_min": None, "reps": 0, "tokens_per_s": None,
            "flops_per_token": None, "flop_factor": FLOP_FACTOR[mode], "tflops": None,
            "peak_mem_bytes": None, "params": None, "cache_bytes": None, "state_bytes": None,
            "fill_ms": None, "fill_peak_mem_bytes": None, "decode_gbps": None,
        }

    def _free(self, collect: bool = False) -> None:
        """Give cached blocks back so each point starts alike; `collect` after a failure, whose
        traceback cycles can keep tensors alive (a full gc costs about half a second)."""
        if collect:
            gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def _skip_reason(self, t: Target, mode: str, L: int, B: int) -> str | None:
        if getattr(t, "unavailable", None):
            return f"skipped: {t.unavailable}"
        if L >= LONG_MIN:
            if t.quadratic:
                return f"skipped: {t.cost} mixer; lengths >= {human_size(LONG_MIN)} run for linear mixers only"
            if mode not in LONG_MODES:
                return f"skipped: lengths >= {human_size(LONG_MIN)} run {' and '.join(LONG_MODES)} only"
        if self.group_deadline is not None and time.perf_counter() > self.group_deadline:
            return (f"skipped: this mixer's share of the {self.cfg.budget_s:.0f} s bench budget "
                    f"({self.group_share:.0f} s) is spent")
        tr = self.trackers.get((t.name, mode))
        if tr is not None and tr.oom_at is not None:
            return f"skipped: out of memory already at L={tr.oom_at}"
        if tr is not None and tr.last is not None:
            pred = predicted_seconds(t, tr.last, L, B)
            if pred > self.cfg.max_call_s:
                return f"skipped: predicted {pred:.0f} s per call from L={tr.last[0]}, over max_call_s"
        return None

    def point(self, t: Target, mode: str, L: int) -> dict:
        B = max(1, self.cfg.tokens_per_batch // L)
        row = self.base_row(t, mode, L, B)
        skip = self._skip_reason(t, mode, L, B)
        if skip is not None:
            row["status"] = skip
            return row
        try:
            t.ensure_built(self.device, self.dtype)
        except Exception as e:
            t.build_error = _short(e)
        if t.build_error is not None:
            row["status"] = f"error: build: {t.build_error}"
            return row
        row["params"] = t.num_params()
        limit = t.max_length()
        if limit is not None and L + (1 if mode == "decode" else 0) > limit:
            row["status"] = "n/a: max_length"
            row["note"] = f"runs at most {limit} tokens"
            return row
        why = t.unsupported(B, L)
        if why is not None:
            row["status"] = f"n/a: {why}"
            return row
        tr = self.trackers.setdefault((t.name, mode), Tracker())
        try:
            self._measure(t, mode, L, B, row)
            row["status"] = "ok"
            # the first fill of a target compiles its kernels: predicting from it skipped rerope's decode
            fill = (row["fill_ms"] or 0) / 1e3 if tr.last is not None else 0.0
            tr.last = (L, B, max(row["time_ms"] / 1e3, fill))
        except LengthError:
            row["status"] = "n/a: max_length"
        except Exception as e:
            if is_oom(e):
                row["status"] = "oom"
                tr.oom_at = L
            elif is_unsupported(e):  # e.g. an SDPA kernel that does not take this shape
                row["status"] = f"n/a: {_short(e)}"
            else:
                row["status"] = f"error: {_short(e)}"
        finally:
            t.zero_grad()
        if row["status"] != "ok":
            for k in ("time_ms", "time_ms_min", "tokens_per_s", "tflops", "fill_ms", "decode_gbps", "peak_mem_bytes",
                      "fill_peak_mem_bytes"):
                row[k] = None
            row["reps"] = 0
        self._free(collect=row["status"] != "ok")
        return row

    def _measure(self, t: Target, mode: str, L: int, B: int, row: dict) -> None:
        self._free()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            resident = torch.cuda.memory_allocated(self.device) - t.param_bytes()
        x = t.inputs(B, L, self.device, self.dtype)
        if mode == "fwd":
            def fn():
                with torch.no_grad():
                    t.call(x)
            times = time_calls(self.clock, fn, self.warmup, self.reps, self.cfg.point_budget_s)
            work_tokens = B * L
        elif mode == "fwdbwd":
            gy = t.grad_output(x)
            if x.is_floating_point():
                x.requires_grad_(True)  # a layer inside a model also returns its input gradient

            def fn():
                t.backward(t.call(x), gy)

            def before():
                t.zero_grad()
                x.grad = None

            times = time_calls(self.clock, fn, self.warmup, self.reps, self.cfg.point_budget_s, before)
            work_tokens = B * L
        else:
            x1 = t.inputs(B, 1, self.device, self.dtype)
            extra = self.warmup + self.reps + 1
            state: list[Any] = []

            def fill():
                with torch.no_grad():
                    state.append(t.prefill(x, self.cfg.fill_chunk, extra))

            row["fill_ms"] = self.clock.wall(fill) * 1e3
            st = state[0]
            if self.cuda:
                row["fill_peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(self.device) - resident)
            row["cache_bytes"] = t.state_nbytes(st)  # at exactly L tokens, beside the declared state_bytes(L)
            row["state_bytes"] = t.declared_state_bytes(L, B, self.dtype)
            del x
            if self.cuda:
                torch.cuda.reset_peak_memory_stats(self.device)

            def fn():
                with torch.no_grad():
                    t.step(st, x1)

            times = time_calls(self.clock, fn, self.warmup, self.reps, self.cfg.point_budget_s)
            work_tokens = B
        med = statistics.median(times)
        row["backend"] = t.backend()
        row.update(time_ms=med * 1e3, time_ms_min=min(times) * 1e3, reps=len(times), tokens_per_s=work_tokens / med)
        fpt = t.flops_per_token(L)
        if fpt is not None:
            per = decode_flops(t.flops_per_token, L) if mode == "decode" else fpt
            row["flops_per_token"] = per
            row["tflops"] = per * FLOP_FACTOR[mode] * work_tokens / med / 1e12
        if mode == "decode" and row["cache_bytes"] is not None:
            row["decode_gbps"] = (row["cache_bytes"] + t.param_bytes()) / med / 1e9
        if self.cuda:
            torch.cuda.synchronize()
            row["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(self.device) - resident)

    # -- the whole run ----------------------------------------------------------------------
    def plan(self, group: list[Target]) -> list[tuple[int, Target, str]]:
        return [(L, t, mode) for L in self.cfg.lengths() for t in group for mode in self.cfg.modes]

    def _start_group(self, i: int) -> None:
        """With a budget, each mixer group gets the time left times its share of the targets still
        to run (peers that cannot run here weigh nothing); what a group leaves goes to the next."""
        if self.deadline is None:
            return
        weight = lambda g: sum(not getattr(t, "unavailable", None) for t in g)
        left = sum(weight(g) for g in self.groups[i:])
        now = time.perf_counter()
        self.group_share = max(0.0, self.deadline - now) * weight(self.groups[i]) / max(left, 1)
        self.group_deadline = now + self.group_share

    def run(self, store=None, json_path: str | Path | None = None) -> BenchResult:
        from zoo.store import provenance

        start = time.perf_counter()
        if self.cfg.budget_s is not None:
            self.deadline = start + self.cfg.budget_s
            self.group_share = 0.0
        run_id = self.run_id()
        prov = provenance(device=self.device)
        config = self.config_dict()
        result = BenchResult(run_id, config, prov, skipped_peers=dict(self.skipped_peers))
        if store is not None:
            store.upsert_run(run_id, config, kind="bench", status="running", provenance=prov)
            store.add_results(run_id, "bench", [], replace=True)  # a re-run replaces the earlier rows
        result.ceilings = self.ceilings()
        if store is not None:
            store.add_results(run_id, "ceiling", result.ceilings, replace=True)

        total = sum(len(self.plan(g)) for g in self.groups)
        with _progress(self.console, self.progress, total) as bar:
            for i, group in enumerate(self.groups):
                self._start_group(i)
                t0, rows = time.perf_counter(), []
                for L, t, mode in self.plan(group):
                    bar.describe(f"{t.name} {mode} L={human_size(L)}")
                    row = self.point(t, mode, L)
                    row["run_id"] = run_id
                    rows.append(row)
                    result.rows.append(row)
                    if store is not None:  # a bench that is killed keeps every finished point in the store
                        store.add_results(run_id, "bench", [row])
                    bar.advance()
                if json_path is not None:  # and in the JSON, every finished mixer
                    result.write_json(json_path)
                for t in group:  # weights and compiled kernels of finished groups leave the device
                    t.module = None
                self._free(collect=True)
                bar.log(f"[{i + 1}/{len(self.groups)}] {group[0].name}: {status_counts(rows)} "
                        f"in {time.perf_counter() - t0:.0f} s")
        result.seconds = time.perf_counter() - start
        if store is not None:
            n_bad = sum(r["status"].startswith("error") for r in result.rows)
            store.upsert_run(run_id, config, kind="bench", status="done", provenance=prov,
                             summary={"rows": len(result.rows), "errors": n_bad, "seconds": result.seconds,
                                      "skipped_peers": self.skipped_peers})
        if json_path is not None:
            result.write_json(json_path)
        return result


@dataclass
class BenchResult:
    run_id: str
    config: dict
    provenance: dict
    rows: list[dict] = field(default_factory=list)
    ceilings: list[dict] = field(default_factory=list)
    skipped_peers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def write_json(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps({"run_id": self.run_id, "config": self.config, "provenance": self.provenance,
                                   "ceilings": self.ceilings, "skipped_peers": self.skipped_peers,
                                   "seconds": self.seconds, "rows": self.rows}, indent=1, default=str))
        tmp.replace(path)


def status_counts(rows: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        key = r["status"].split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))


class _progress:
    """The bench's progress (the shared `zoo.progress.Progress`): `describe` and `advance`."""

    def __init__(self, console, enabled: bool, total: int):
        from zoo.progress import Progress

        self.p = Progress(console, "bench", total, unit="point", enabled=enabled and console is not None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.p.close()

    def describe(self, text: str) -> None:
        self.p.update(description=f"bench {text}")

    def advance(self) -> None:
        self.p.update(advance=1)

    def log(self, text: str) -> None:
        """A line above the bar (in a log file, between the periodic progress lines)."""
        self.p.log(text)


# -- tables -----------------------------------------------------------------------------------

def peer_ratios(rows: list[dict]) -> dict[tuple[str, str, int], tuple[float, str]]:
    """(mixer, mode, L) -> (our time / fastest peer's time, that peer) where both ran."""
    best: dict[tuple[str, str, int], tuple[float, str]] = {}
    for r in rows:
        if r["target"] == "peer" and r["status"] == "ok":
            key = (r["peer_of"], r["mode"], r["seq_len"])
            if key not in best or r["time_ms"] < best[key][0]:
                best[key] = (r["time_ms"], r["name"])
    out = {}
    for r in rows:
        key = (r["name"], r["mode"], r["seq_len"])
        if r["target"] == "mixer" and r["status"] == "ok" and key in best:
            out[key] = (r["time_ms"] / best[key][0], best[key][1])
    return out


def _cell(r: dict | None, ratio: tuple[float, str] | None) -> str:
    if r is None:
        return ""
    s = r["status"]
    if s == "ok":
        t = r["time_ms"]
        text = f"{t:.3g} ms" if t < 1000 else f"{t / 1e3:.3g} s"
        if ratio is not None:
            colour = "green" if ratio[0] <= 1.1 else ("yellow" if ratio[0] <= 1.5 else "red")
            text += f"\n[{colour}]x{ratio[0]:.2f}[/]"
        return text
    if s == "oom":
        return "[red]OOM[/]"
    if s.startswith("n/a"):
        return "[dim]n/a[/]"
    if s.startswith("skipped"):
        return "[dim]skip[/]"
    return "[red]error[/]"


def tables(result: BenchResult) -> list:
    """Rich tables: per mode, rows = mixers (each followed by its peers), columns = lengths;
    a cell is the median time per call, and under our mixer's time its ratio to the fastest
    peer (x1.00 = as fast; > 1 slower)."""
    from rich.table import Table

    rows = result.rows
    ratios = peer_ratios(rows)
    lengths = sorted({r["seq_len"] for r in rows})
    index = {(r["name"], r["mode"], r["seq_len"]): r for r in rows}
    order: list[tuple[str, str]] = []  # (name, kind) in first-seen order, peers after their mixer
    for r in rows:
        if (r["name"], r["target"]) not in order:
            order.append((r["name"], r["target"]))
    out = []
    tok = result.config.get("tokens_per_batch")
    for mode in [m for m in MODES if any(r["mode"] == m for r in rows)]:
        what = {"fwd": f"forward, {tok} tokens per call", "fwdbwd": f"forward + backward, {tok} tokens per call",
                "decode": f"one decode step, batch {tok} // L, cache filled to L"}[mode]
        t = Table(title=f"{mode}: median time per call ({what}); xN = ours / fastest peer",
                  title_justify="left")
        t.add_column("name", no_wrap=True)
        t.add_column("backend", overflow="fold", max_width=24)
        for L in lengths:
            t.add_column(human_size(L), justify="right")
        for name, kind in order:
            cells = [index.get((name, mode, L)) for L in lengths]
            if not any(cells):
                continue
            backend = next((c["backend"] for c in cells if c and c["backend"]), "")
            label = f"  [dim]{name}[/]" if kind == "peer" else name
            t.add_row(label, f"[dim]{backend}[/]",
                      *[_cell(c, ratios.get((name, mode, L))) for c, L in zip(cells, lengths)])
        out.append(t)
    ct = Table(title="device ceilings", title_justify="left")
    for col in ("what", "value", "unit"):
        ct.add_column(col)
    for c in result.ceilings:
        ct.add_row(str(c.get("what")), f"{c['value']:.4g}" if c.get("value") is not None else "n/a",
                   str(c.get("unit") or ""))
    out.append(ct)
    if result.skipped_peers:
        st = Table(title="peers not run", title_justify="left")
        st.add_column("peer")
        st.add_column("why")
        from rich.markup import escape

        for k, v in result.skipped_peers.items():
            st.add_row(escape(k), escape(v))  # reasons such as "pip install 'mixer-zoo[gpu]'" print as written
        out.append(st)
    return out


def run_bench(cfg: BenchConfig, store=None, json_path: str | Path | None = None, console=None,
              progress: bool = True) -> BenchResult:
    """Measure, write the store and the JSON, return the result (rows and ceilings)."""
    return Bench(cfg, console=console, progress=progress).run(store=store, json_path=json_path)
