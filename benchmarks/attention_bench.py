"""Attention under every positional scheme on one GPU: speed against the raw kernels, and every
backend against the torch reference in bf16.

    python benchmarks/attention_bench.py                      # both parts, JSON to $OUT if set
    python benchmarks/attention_bench.py --part timing        # each part alone stays under ten
    python benchmarks/attention_bench.py --part correctness   # minutes, compiles included

Exit status 1 when a target or a correctness check fails.

1. timing, bf16, forward + backward, B 4 x L 8192 = 32K tokens, 16 heads x 64 (CUDA events
   after warm-up, median over interleaved rounds). The attention core only, on both sides:
   q, k, v are given as the projections leave them ([B, L, H, Dh] viewed as [B, H, L, Dh]),
   projections excluded; ours is `Attention.attend` (positional transform + chosen backend,
   e.g. RoPE's rotation, which the raw kernel does not do), the peer the bare kernel.
   - raw SDPA with each kernel (cuDNN, flash, efficient, and torch's default choice) vs
     our `nope` and `rope`: target >= 90% of the fastest raw kernel;
   - raw FlexAttention (compiled, causal block mask) with the ALiBi and the T5 score
     modification vs our `alibi` and `t5-bias`: target >= 90%. The raw T5 call reads a fixed
     table; ours also differentiates its table (outside the kernel, `flex.distance_bias_grad`),
     so the ratio is what that gradient costs. The raw call with the table's gradient inside
     FlexAttention (atomic adds from every score) is timed once, for the record. T5 calls pass the same
     `kernel_options` (`zoo.kernels.flex.TABLE_KERNEL_OPTIONS`, smaller tiles): with the
     default tiles the T5 kernel needs 240 KB of shared memory on the H100 (227 KB there) and
     does not compile, so a user writing the raw call has to pass them too;
   - raw flash-attn with ALiBi slopes vs our `alibi` forced to flash, when flash-attn is installed;
   - for the record: `xpos`, `rope-yarn`, `swa` (W 1024, vs raw FlexAttention sliding window),
     `rerope` (w 2048, two banded calls vs one raw causal FlexAttention call).
   - for the record: the rotation alone (q and k, fwd + bwd), fused kernel vs the eager reference.
   A bf16 matmul gives the device ceiling; achieved TFLOP/s count 7 B H L^2 Dh per step. A failing
   entry is recorded with its error and the others still run; the CUDA kernels of the main
   entries (one profiled step each, after the timing) are listed in the JSON.
2. correctness, bf16, B 2 x L 1024, d_model 512 (8 heads x 64): for each scheme and each
   backend `auto` could choose on this GPU, the mixer's output and the gradients of its input
   and of every parameter against the torch reference computed in fp32 from the same bf16
   weights and inputs, then chunked inference through the cache (chunks 341, 1, 682) against
   the same reference. The torch backend run in bf16 gives the error floor of bf16 itself.
   Pass: relative norm error <= max(2e-2, 2 x floor). Also the fused rotary kernel alone
   against the fp32 reference rotation (bf16 and fp32, three memory layouts, output and
   gradients).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: E402

from zoo.bench.timing import Timer  # noqa: E402
from zoo.conformance import run_chunks  # noqa: E402
from zoo.kernels import flex  # noqa: E402
from zoo.positional import alibi_slopes, apply_rotary, rope_cos_sin, rope_inv_freq  # noqa: E402
from zoo.registry import build_mixer, get_spec  # noqa: E402

CUDA, BF16 = torch.device("cuda"), torch.bfloat16
B, L, H, DH = 4, 8192, 16, 64
TARGET = 0.9
TOL = 2e-2
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.0f}s] {msg}", flush=True)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# -- timing ------------------------------------------------------------------------------------------

def time_ms(step, reps: int = 10) -> float:
    """ms per step over `reps` steps run back to back between two CUDA events, as a training loop
    runs them: the host queues the next step while the GPU works, so launch latency of the
    Python around a kernel is not counted as GPU time (with a sync per step it would be, and
    more for a mixer's Python than for a bare kernel call)."""
    return Timer(CUDA).time(step, calls=reps) * 1e3


def error_text(e: BaseException) -> str:
    lines = str(e).strip().splitlines() or [""]
    return f"{type(e).__name__}: {lines[0][:300]}"


def settle() -> None:
    """After a failure: let queued work finish (or fail) and release cached blocks."""
    try:
        torch.cuda.synchronize()
    except Exception:  # an error from the failed work itself
        pass
    torch.cuda.empty_cache()


def race(builders: dict, rounds: int = 7, warmup: int = 3, steps: dict | None = None, reps: int = 10) -> dict:
    """Median ms per step of each entry (`name -> () -> step`), warmed up (compiles included),
    rounds interleaved in rotating order, each measurement after a 0.2 s pause. An entry that
    fails to build, compile or run is recorded with its error; the others go on. Built steps
    are added to `steps` when given."""
    out, ok = {}, {}
    for name, build in builders.items():
        try:
            step = build()
            for _ in range(warmup):
                step()
            torch.cuda.synchronize()
            ok[name] = step
        except Exception as e:  # an unsupported kernel is a result, not a crash
            out[name] = {"error": error_text(e)}
            log(f"  {name}: {out[name]['error']}")
            settle()
    times = {name: [] for name in ok}
    for r in range(rounds):
        # each round starts at another entry, and each entry after a short pause: sustained
        # attention lowers the H100's clocks, which would favour whatever follows a slow entry
        names = list(ok)
        for name in names[r % len(names):] + names[:r % len(names)] if names else []:
            if name not in ok:
                continue
            time.sleep(0.2)
            try:
                times[name].append(time_ms(ok[name], reps))
            except Exception as e:
                out[name] = {"error": error_text(e)}
                log(f"  {name}: {out[name]['error']}")
                del ok[name], times[name]
                settle()
    for name, ts in times.items():
        ms = statistics.median(ts)
        out[name] = {"ms": ms, "tflops": 7 * B * H * L * L * DH / (ms * 1e-3) / 1e12}
        log(f"  {name}: {ms:.3f} ms ({out[name]['tflops']:.0f} TFLOP/s)")
    if steps is not None:
        steps.update(ok)
    return out


def cuda_kernels(step, top: int = 8) -> list:
    """The CUDA kernels of one step, longest first: [name, ms, calls]."""
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None)
        us = getattr(e, "self_cuda_time_total", 0) if us is None else us
        if us > 0:
            rows.append([e.key[:100], us / 1e3, e.count])
    return sorted(rows, key=lambda r: -r[1])[:top]


def section(result: dict, group: str, fn) -> None:
    """Run one group of entries; a failure outside the entries is that group's error."""
    try:
        result[group] = fn()
    except Exception as e:
        result[group] = {"error": error_text(e)}
        log(f"{group}: {result[group]['error']}")
        traceback.print_exc()
        settle()


def qkv(requires_grad: bool = True):
    """q, k, v as projections leave them: [B, L, H, Dh] storage viewed as [B, H, L, Dh]."""
    g = torch.Generator(device=CUDA).manual_seed(0)
    ts = [torch.randn(B, L, H, DH, device=CUDA, dtype=BF16, generator=g).requires_grad_(requires_grad)
          for _ in range(3)]
    return [t.transpose(1, 2) for t in ts], ts


def fwd_bwd(fn, leaves, dout):
    def step():
        torch.autograd.grad(fn(), leaves, dout)
    return step


def ceiling() -> dict:
    a = torch.randn(8192, 8192, device=CUDA, dtype=BF16)
    b = torch.randn(8192, 8192, device=CUDA, dtype=BF16)
    for _ in range(3):
        a @ b
    ms = time_ms(lambda: a @ b, 20)
    return {"matmul_bf16_tflops": 2 * 8192**3 / (ms * 1e-3) / 1e12}


def timing() -> dict:
    (q, k, v), leaves = qkv()
    pos = torch.arange(L, device=CUDA)
    dout = torch.randn(B, H, L, DH, device=CUDA, dtype=BF16)
    d_model = H * DH
    mixers: dict = {}
    steps: dict = {}

    def ours(name, backend=None, **cfg):
        def build():
            m = build_mixer(name, d_model, {"n_heads": H, **cfg}).to(CUDA, BF16)
            mixers[name] = m
            extra = [p for n, p in m.named_parameters() if n.startswith("pe.")]  # T5's table gets its gradient
            return fwd_bwd(lambda: m.attend(q, k, v, pos, pos, backend=backend), leaves + extra, dout)
        return build

    def chosen(names):
        return {n: mixers[n].last_backend for n in names if n in mixers}

    def ratio(group: dict, ours_name: str, raw_ms: float | None, key: str) -> None:
        r = group.get(ours_name, {})
        if "ms" in r and raw_ms is not None:
            r[key] = raw_ms / r["ms"]

    def raw_ms(group: dict, name: str) -> float | None:
        return group.get(name, {}).get("ms")

    result: dict = {"config": {"B": B, "L": L, "heads": H, "head_dim": DH, "dtype": "bf16", "pass": "fwd+bwd",
                               "scope": "attention core (projections excluded on both sides)",
                               "t5_kernel_options": flex.TABLE_KERNEL_OPTIONS}}
    section(result, "ceiling", ceiling)

    # SDPA: each kernel raw, our q/k-only schemes ---------------------------------------------------
    def sdpa_group() -> dict:
        log("SDPA kernels vs nope / rope")

        def raw_sdpa(kernel):
            def fn():
                if kernel is None:
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
                with sdpa_kernel(kernel):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return lambda: fwd_bwd(fn, leaves, dout)

        kernels = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                   "efficient": SDPBackend.EFFICIENT_ATTENTION, "default": None}
        builders = {f"raw sdpa {n}": raw_sdpa(kr) for n, kr in kernels.items()}
        names = ("nope", "rope", "xpos", "rope-yarn")
        for name, cfg in zip(names, [{}, {}, {}, {"original_length": 2048}]):
            builders[f"ours {name}"] = ours(name, **cfg)
        group = race(builders, steps=steps)
        group["chosen"] = chosen(names)
        raw = [r["ms"] for n, r in group.items() if n.startswith("raw sdpa") and "ms" in r]
        best = min(raw) if raw else None
        for name in names:
            ratio(group, f"ours {name}", best, "vs_fastest_raw")
        return group

    section(result, "sdpa", sdpa_group)

    # FlexAttention: ALiBi and T5 score modifications ------------------------------------------------
    compiled = torch.compile(flex_attention)

    def flex_group() -> dict:
        log("FlexAttention score mods vs alibi / t5-bias")
        causal = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, L, L, device=CUDA)
        slopes = alibi_slopes(H).to(CUDA)
        t5 = torch.nn.Parameter(0.02 * torch.randn(H, 129, device=CUDA))  # by distance 0..128, float32 as ours

        def raw_alibi(score, b, h, qi, ki):
            return score - slopes[h] * (qi - ki)

        def raw_t5(score, b, h, qi, ki):
            return score + t5[h, torch.clamp(qi - ki, 0, 128)]

        t5_fixed = t5.detach()

        def raw_t5_fixed(score, b, h, qi, ki):
            return score + t5_fixed[h, torch.clamp(qi - ki, 0, 128)]

        # the T5 call as a user must write it on this GPU: the default tiles do not fit (see above)
        t5_options = dict(flex.TABLE_KERNEL_OPTIONS)
        builders = {
            "raw flex alibi": lambda: fwd_bwd(lambda: compiled(q, k, v, score_mod=raw_alibi, block_mask=causal),
                                              leaves, dout),
            "raw flex t5": lambda: fwd_bwd(lambda: compiled(q, k, v, score_mod=raw_t5_fixed, block_mask=causal,
                                                            kernel_options=t5_options), leaves, dout),
            "ours alibi": ours("alibi"),
            "ours t5-bias": ours("t5-bias"),
        }
        if importlib.util.find_spec("flash_attn") is not None:
            from flash_attn import flash_attn_func

            builders["raw flash-attn alibi"] = lambda: fwd_bwd(
                lambda: flash_attn_func(leaves[0], leaves[1], leaves[2], causal=True, alibi_slopes=slopes), leaves,
                dout.transpose(1, 2))
            builders["ours alibi (flash)"] = ours("alibi", backend="flash")
        group = race(builders, steps=steps)
        # for the record, once: the table's gradient inside the kernel (atomic adds from every score)
        group.update({name + " (table gradient in the kernel)": r for name, r in race(
            {"raw flex t5": lambda: fwd_bwd(lambda: compiled(q, k, v, score_mod=raw_t5, block_mask=causal,
                                                             kernel_options=t5_options), leaves + [t5], dout)},
            rounds=1, warmup=1, reps=1).items()})
        group["chosen"] = chosen(("alibi", "t5-bias"))
        for ours_name, raw_name in [("ours alibi", "raw flex alibi"), ("ours t5-bias", "raw flex t5"),
                                    ("ours alibi (flash)", "raw flash-attn alibi")]:
            ratio(group, ours_name, raw_ms(group, raw_name), "vs_raw")
        return group

    section(result, "flex", flex_group)

    # for the record: sliding window and ReRoPE -----------------------------------------------------
    def window_group() -> dict:
        log("sliding window and ReRoPE (for the record)")
        W, w = 1024, 2048
        causal = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, L, L, device=CUDA)
        band = create_block_mask(lambda b, h, qi, ki: (qi >= ki) & (qi - ki < W), None, None, L, L, device=CUDA)
        builders = {
            "raw flex window 1024": lambda: fwd_bwd(lambda: compiled(q, k, v, block_mask=band), leaves, dout),
            "raw flex causal": lambda: fwd_bwd(lambda: compiled(q, k, v, block_mask=causal), leaves, dout),
            "ours swa (rope, W 1024)": ours("swa", window=W),
            "ours rerope (w 2048)": ours("rerope", rerope_window=w),
        }
        group = race(builders, steps=steps)
        for ours_name, raw_name in [("ours swa (rope, W 1024)", "raw flex window 1024"),
                                    ("ours rerope (w 2048)", "raw flex causal")]:
            ratio(group, ours_name, raw_ms(group, raw_name), "vs_raw")
        return group

    section(result, "window", window_group)

    # for the record: the rotation alone --------------------------------------------------------------
    def rotary_group() -> dict:
        log("RoPE rotation of q and k alone (for the record)")
        from zoo.kernels.rotary import rotate_pair

        cos, sin = rope_cos_sin(pos, rope_inv_freq(DH, device=CUDA))

        def both(rotate):
            def step():
                torch.autograd.grad(list(rotate()), leaves[:2], [dout, dout])
            return step

        builders = {
            "fused rotary kernel": lambda: both(lambda: rotate_pair(q, k, cos, sin, cos, sin)),
            "eager reference rotary": lambda: both(lambda: (apply_rotary(q, cos, sin), apply_rotary(k, cos, sin))),
        }
        group = race(builders, steps=steps)
        ratio(group, "fused rotary kernel", raw_ms(group, "eager reference rotary"), "vs_raw")
        return group

    section(result, "rotary", rotary_group)

    def profiles() -> dict:
        names = ["raw sdpa default", "ours nope", "ours rope", "raw flex alibi", "ours alibi", "raw flex t5",
                 "ours t5-bias"]
        out = {}
        for n in names:
            if n in steps:
                try:
                    out[n] = cuda_kernels(steps[n])
                except Exception as e:
                    out[n] = {"error": error_text(e)}
        return out

    section(result, "kernels", profiles)

    def target(group: str, name: str, key: str):
        return result.get(group, {}).get(name, {}).get(key)

    targets = {
        "nope >= 90% of fastest raw SDPA": target("sdpa", "ours nope", "vs_fastest_raw"),
        "rope >= 90% of fastest raw SDPA": target("sdpa", "ours rope", "vs_fastest_raw"),
        "alibi >= 90% of raw flex alibi": target("flex", "ours alibi", "vs_raw"),
        "t5-bias >= 90% of raw flex t5": target("flex", "ours t5-bias", "vs_raw"),
    }
    result["targets"] = {k: {"ratio": v, "met": v is not None and v >= TARGET} for k, v in targets.items()}
    return result


# -- correctness ---------------------------------------------------------------------------------------

CB, CL, CHEADS, CD = 2, 1024, 8, 512
CASES = [
    ("nope", {}), ("sinusoidal", {}), ("learned", {"max_length": 2048}), ("t5-bias", {}), ("alibi", {}),
    ("rope", {}), ("xpos", {}), ("rope-pi", {}), ("rope-ntk", {}),
    ("rope-dynamic-ntk", {"original_length": 256, "dynamic_step": 128}), ("rope-yarn", {"original_length": 256}),
    ("rerope", {"rerope_window": 200}), ("leaky-rerope", {"rerope_window": 200}),
    ("swa", {"window": 256}), ("swa", {"window": 256, "position": "alibi"}),
    ("swa", {"window": 300, "position": "t5-bias"}), ("rerope", {"rerope_window": 200, "window": 500}),
]


def check_case(name: str, cfg: dict) -> list[dict]:
    torch.manual_seed(0)
    base = build_mixer(name, CD, {"n_heads": CHEADS, **cfg}).to(CUDA, BF16)
    with torch.no_grad():  # non-trivial learned tables and biases
        for n, p in base.named_parameters():
            if n.startswith("pe."):
                p.normal_(0, 0.5)
    x = torch.randn(CB, CL, CD, device=CUDA, dtype=BF16, generator=torch.Generator(device=CUDA).manual_seed(1))
    dy = torch.randn_like(x)

    def run(m, xin, backend):
        m = copy.deepcopy(m)
        m.reconfigure(backend=backend)
        xin = xin.detach().requires_grad_(True)
        y = m(xin)
        grads = torch.autograd.grad(y, [xin, *m.parameters()], dy.to(y.dtype))
        with torch.no_grad():
            yc = run_chunks(m, xin.detach(), [CL // 3, 1, CL - CL // 3 - 1])
        return y.detach(), grads, yc, m.last_backend

    want, want_g, _, _ = run(copy.deepcopy(base).float(), x.float(), "torch")
    floor_y, floor_g, _, _ = run(base, x, "torch")
    floor = max([rel(floor_y, want)] + [rel(g, w) for g, w in zip(floor_g, want_g, strict=True)])
    rows = []
    probe = copy.deepcopy(base)
    for b in get_spec(name).backends:
        if b.name == "torch" or b.check(CUDA) is not None or probe.refuses(b.name, BF16) is not None:
            continue
        if probe.passes_over(b.name) is not None and name != "nope":  # auto never takes it (nope: once)
            continue
        row = {"mixer": name, "config": cfg, "backend": b.name, "bf16_floor": floor}
        try:
            y, g, yc, used = run(base, x, b.name)
            names = ["input"] + [n for n, _ in base.named_parameters()]
            errs = {n: rel(a, w) for n, a, w in zip(names, g, want_g, strict=True)}
            row.update({"used": used, "out": rel(y, want), "chunked": rel(yc, want), "grad_max": max(errs.values()),
                        "grad_worst": max(errs, key=errs.get)})
            tol = max(TOL, 2 * floor)
            row["ok"] = row["out"] <= tol and row["chunked"] <= tol and row["grad_max"] <= tol and used == b.name
        except Exception as e:
            row.update({"ok": False, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"})
            traceback.print_exc()
        log(f"  {name} {cfg} {b.name}: " + ", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}"
                                                    for k, v in row.items() if k not in ("mixer", "config")))
        rows.append(row)
    return rows


def check_rotary() -> list[dict]:
    """The fused rotary kernel against the reference rotation in fp32: output and gradients, for
    q as projections leave it ([B, L, H, Dh] viewed), contiguous k, and keys sliced from a longer
    cache (a non-dense view), over tables whose halves differ (the general form)."""
    from zoo.kernels.rotary import rotate_pair

    rows = []
    g = torch.Generator(device=CUDA).manual_seed(2)
    Bq, Hq, Lq, Lk, D = 2, 8, 1000, 1300, 64
    for dtype in (BF16, torch.float32):
        row = {"mixer": "rotary kernel", "config": {"dtype": str(dtype)}, "backend": "triton"}
        try:
            q_store = torch.randn(Bq, Lq, Hq, D, device=CUDA, dtype=dtype, generator=g).requires_grad_()
            k_store = torch.randn(Bq, Hq, Lk + 7, D, device=CUDA, dtype=dtype, generator=g).requires_grad_()
            q, k = q_store.transpose(1, 2), k_store[:, :, 7:]
            pos_k = torch.arange(Lk, device=CUDA) + 123
            cq, sq = rope_cos_sin(pos_k[-Lq:], rope_inv_freq(D, device=CUDA))
            ck, sk = rope_cos_sin(pos_k, rope_inv_freq(D, device=CUDA))
            cq = cq * (0.5 + torch.rand(Lq, D, device=CUDA, generator=g))
            got = rotate_pair(q, k, cq, sq, ck, sk)
            dq, dk = (torch.randn(t.shape, device=CUDA, dtype=dtype, generator=g) for t in got)
            grads = torch.autograd.grad(list(got), [q_store, k_store], [dq, dk])
            q32, k32 = (t.detach().float().requires_grad_() for t in (q_store, k_store))
            want = apply_rotary(q32.transpose(1, 2), cq, sq), apply_rotary(k32[:, :, 7:], ck, sk)
            want_g = torch.autograd.grad(list(want), [q32, k32], [dq.float(), dk.float()])
            errs = [rel(a, w) for a, w in zip(got, want, strict=True)]
            gerrs = [rel(a, w) for a, w in zip(grads, want_g, strict=True)]
            tol = 1e-5 if dtype == torch.float32 else 1e-2
            row.update({"out": max(errs), "grad_max": max(gerrs), "same_layout": got[0].stride() == q.stride()})
            row["ok"] = max(errs + gerrs) <= tol and row["same_layout"]
        except Exception as e:
            row.update({"ok": False, "error": error_text(e)})
            traceback.print_exc()
        log(f"  rotary kernel {dtype}: " + ", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}"
                                                    for k, v in row.items() if k not in ("mixer", "config")))
        rows.append(row)
    return rows


def correctness() -> list[dict]:
    log("bf16 backends vs the fp32 torch reference")
    rows = check_rotary()
    for name, cfg in CASES:
        try:
            rows += check_case(name, cfg)
        except Exception as e:  # the case's reference itself failed: record it, go on
            rows.append({"mixer": name, "config": cfg, "backend": "-", "ok": False, "error": error_text(e)})
            traceback.print_exc()
            settle()
    return rows


# -- main -----------------------------------------------------------------------------------------------

def write_json(out: dict, part: str) -> None:
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / f"attention_bench{'' if part == 'all' else '_' + part}.json"
        path.write_text(json.dumps(out, indent=1, default=str))


def print_timing(t: dict) -> bool:
    """The timing table; True when a target is missed."""
    ceil = t.get("ceiling", {}).get("matmul_bf16_tflops")
    print(f"bf16 matmul ceiling: {'n/a' if ceil is None else f'{ceil:.0f}'} TFLOP/s; "
          f"attention core fwd+bwd, B {B} x L {L}, {H} heads x {DH}")
    print(f"{'entry':<32}{'ms':>9}{'TFLOP/s':>9}{'ratio':>8}")
    chosen = {}
    for group in ("sdpa", "flex", "window", "rotary"):
        rows = t.get(group, {})
        if "error" in rows:
            print(f"{group + ' (whole group)':<32}  {rows['error'][:70]}")
            continue
        for n, r in rows.items():
            if n == "chosen":
                chosen.update(r)
                continue
            ratio = r.get("vs_fastest_raw", r.get("vs_raw"))
            if "ms" in r:
                print(f"{n:<32}{r['ms']:>9.3f}{r['tflops']:>9.0f}{'' if ratio is None else f'{ratio:.3f}':>8}")
            else:
                print(f"{n:<32}  {r['error'][:70]}")
    print("backends chosen:", chosen)
    missed = False
    for k, v in t.get("targets", {}).items():
        ratio = "n/a" if v["ratio"] is None else f"{v['ratio']:.3f}"
        print(f"target {k}: {ratio} {'met' if v['met'] else 'NOT MET'}")
        missed |= not v["met"]
    return missed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["all", "timing", "correctness"], default="all")
    args = ap.parse_args()
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version()}
    try:
        if args.part in ("all", "timing"):
            out["timing"] = timing()
        if args.part in ("all", "correctness"):
            out["correctness"] = correctness()
    finally:  # whatever was measured is kept
        write_json(out, args.part)

    print(f"\n{out['device']}, torch {out['torch']}, cuDNN {out['cudnn']}")
    failed = False
    if "timing" in out:
        failed |= print_timing(out["timing"])
    if "correctness" in out:
        bad = [r for r in out["correctness"] if not r["ok"]]
        print(f"correctness: {len(out['correctness']) - len(bad)}/{len(out['correctness'])} backend runs within "
              f"max({TOL}, 2 x bf16 floor) of the fp32 reference (output, all gradients, chunked)")
        for r in bad:
            print("  FAILED", r["mixer"], r["config"], r["backend"], r.get("error", ""))
        failed |= bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
