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
     modification vs our `alibi` and `t5-bias`: target >= 90%;
   - raw flash-attn with ALiBi slopes vs our `alibi` forced to flash, when flash-attn is installed;
   - for the record: `xpos`, `rope-yarn`, `swa` (W 1024, vs raw FlexAttention sliding window),
     `rerope` (w 2048, two banded calls vs one raw causal FlexAttention call).
   A bf16 matmul gives the device ceiling; achieved TFLOP/s count 7 B H L^2 Dh per step.
2. correctness, bf16, B 2 x L 1024, d_model 512 (8 heads x 64): for each scheme and each
   backend `auto` could choose on this GPU, the mixer's output and the gradients of its input
   and of every parameter against the torch reference computed in fp32 from the same bf16
   weights and inputs, then chunked inference through the cache (chunks 341, 1, 682) against
   the same reference. The torch backend run in bf16 gives the error floor of bf16 itself.
   Pass: relative norm error <= max(2e-2, 2 x floor).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
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

from zoo.positional import alibi_slopes  # noqa: E402
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
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        step()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    return statistics.median(ts)


def race(steps: dict, rounds: int = 5, warmup: int = 3) -> dict:
    """Median ms per step of each entry, warmed up (compiles included), rounds interleaved."""
    out, ok = {}, {}
    for name, step in steps.items():
        try:
            for _ in range(warmup):
                step()
            torch.cuda.synchronize()
            ok[name] = step
        except Exception as e:  # an unsupported kernel is a result, not a crash
            out[name] = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"}
            log(f"  {name}: {out[name]['error']}")
    times = {name: [] for name in ok}
    for _ in range(rounds):
        for name, step in ok.items():
            times[name].append(time_ms(step))
    for name, ts in times.items():
        ms = statistics.median(ts)
        out[name] = {"ms": ms, "tflops": 7 * B * H * L * L * DH / (ms * 1e-3) / 1e12}
        log(f"  {name}: {ms:.3f} ms ({out[name]['tflops']:.0f} TFLOP/s)")
    return out


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

    def ours(name, backend=None, **cfg):
        m = build_mixer(name, d_model, {"n_heads": H, **cfg}).to(CUDA, BF16)
        extra = [p for n, p in m.named_parameters() if n.startswith("pe.")]  # T5's table gets its gradient
        return fwd_bwd(lambda: m.attend(q, k, v, pos, pos, backend=backend), leaves + extra, dout), m

    result: dict = {"config": {"B": B, "L": L, "heads": H, "head_dim": DH, "dtype": "bf16", "pass": "fwd+bwd",
                               "scope": "attention core (projections excluded on both sides)"}}
    result["ceiling"] = ceiling()

    # SDPA: each kernel raw, our q/k-only schemes ---------------------------------------------------
    log("SDPA kernels vs nope / rope")

    def raw_sdpa(kernel):
        def fn():
            if kernel is None:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            with sdpa_kernel(kernel):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return fwd_bwd(fn, leaves, dout)

    kernels = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "default": None}
    steps = {f"raw sdpa {n}": raw_sdpa(kr) for n, kr in kernels.items()}
    mixers = {}
    for name, cfg in [("nope", {}), ("rope", {}), ("xpos", {}), ("rope-yarn", {"original_length": 2048})]:
        steps[f"ours {name}"], mixers[name] = ours(name, **cfg)
    result["sdpa"] = race(steps)
    result["sdpa"]["chosen"] = {n: m.last_backend for n, m in mixers.items()}
    raw = [v["ms"] for n, v in result["sdpa"].items() if n.startswith("raw sdpa") and "ms" in v]
    best = min(raw) if raw else math.nan
    for name in ("nope", "rope", "xpos", "rope-yarn"):
        r = result["sdpa"].get(f"ours {name}", {})
        if "ms" in r:
            r["vs_fastest_raw"] = best / r["ms"]

    # FlexAttention: ALiBi and T5 score modifications ------------------------------------------------
    log("FlexAttention score mods vs alibi / t5-bias")
    compiled = torch.compile(flex_attention)
    causal = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, L, L, device=CUDA)
    slopes = alibi_slopes(H).to(CUDA)
    t5 = torch.nn.Parameter(0.02 * torch.randn(H, 129, device=CUDA))  # by distance 0..128, float32 as ours

    def raw_alibi(score, b, h, qi, ki):
        return score - slopes[h] * (qi - ki)

    def raw_t5(score, b, h, qi, ki):
        return score + t5[h, torch.clamp(qi - ki, 0, 128)]

    steps = {
        "raw flex alibi": fwd_bwd(lambda: compiled(q, k, v, score_mod=raw_alibi, block_mask=causal), leaves, dout),
        "raw flex t5": fwd_bwd(lambda: compiled(q, k, v, score_mod=raw_t5, block_mask=causal), leaves + [t5], dout),
    }
    steps["ours alibi"], mixers["alibi"] = ours("alibi")
    steps["ours t5-bias"], mixers["t5-bias"] = ours("t5-bias")
    if importlib.util.find_spec("flash_attn") is not None:
        from flash_attn import flash_attn_func

        steps["raw flash-attn alibi"] = fwd_bwd(
            lambda: flash_attn_func(leaves[0], leaves[1], leaves[2], causal=True, alibi_slopes=slopes), leaves,
            dout.transpose(1, 2))
        steps["ours alibi (flash)"], _ = ours("alibi", backend="flash")
    result["flex"] = race(steps)
    result["flex"]["chosen"] = {n: mixers[n].last_backend for n in ("alibi", "t5-bias")}
    for ours_name, raw_name in [("ours alibi", "raw flex alibi"), ("ours t5-bias", "raw flex t5"),
                                ("ours alibi (flash)", "raw flash-attn alibi")]:
        a, r = result["flex"].get(ours_name, {}), result["flex"].get(raw_name, {})
        if "ms" in a and "ms" in r:
            a["vs_raw"] = r["ms"] / a["ms"]

    # for the record: sliding window and ReRoPE -----------------------------------------------------
    log("sliding window and ReRoPE (for the record)")
    W, w = 1024, 2048
    band = create_block_mask(lambda b, h, qi, ki: (qi >= ki) & (qi - ki < W), None, None, L, L, device=CUDA)
    steps = {"raw flex window 1024": fwd_bwd(lambda: compiled(q, k, v, block_mask=band), leaves, dout),
             "raw flex causal": fwd_bwd(lambda: compiled(q, k, v, block_mask=causal), leaves, dout)}
    steps["ours swa (rope, W 1024)"], _ = ours("swa", window=W)
    steps["ours rerope (w 2048)"], _ = ours("rerope", rerope_window=w)
    result["window"] = race(steps)
    for ours_name, raw_name in [("ours swa (rope, W 1024)", "raw flex window 1024"),
                                ("ours rerope (w 2048)", "raw flex causal")]:
        a, r = result["window"].get(ours_name, {}), result["window"].get(raw_name, {})
        if "ms" in a and "ms" in r:
            a["vs_raw"] = r["ms"] / a["ms"]

    targets = {
        "nope >= 90% of fastest raw SDPA": result["sdpa"].get("ours nope", {}).get("vs_fastest_raw"),
        "rope >= 90% of fastest raw SDPA": result["sdpa"].get("ours rope", {}).get("vs_fastest_raw"),
        "alibi >= 90% of raw flex alibi": result["flex"].get("ours alibi", {}).get("vs_raw"),
        "t5-bias >= 90% of raw flex t5": result["flex"].get("ours t5-bias", {}).get("vs_raw"),
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


def run_chunks(m, x, sizes):
    cache = m.new_cache(x.shape[0], x.device, x.dtype)
    outs, i = [], 0
    for s in sizes:
        outs.append(m(x[:, i:i + s], cache))
        i += s
    return torch.cat(outs, 1)


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


def correctness() -> list[dict]:
    log("bf16 backends vs the fp32 torch reference")
    rows = []
    for name, cfg in CASES:
        rows += check_case(name, cfg)
    return rows


# -- main -----------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["all", "timing", "correctness"], default="all")
    args = ap.parse_args()
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version()}
    if args.part in ("all", "timing"):
        out["timing"] = timing()
    if args.part in ("all", "correctness"):
        out["correctness"] = correctness()
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / f"attention_bench{'' if args.part == 'all' else '_' + args.part}.json"
        path.write_text(json.dumps(out, indent=1, default=str))

    print(f"\n{out['device']}, torch {out['torch']}, cuDNN {out['cudnn']}")
    failed = False
    if "timing" in out:
        t = out["timing"]
        print(f"bf16 matmul ceiling: {t['ceiling']['matmul_bf16_tflops']:.0f} TFLOP/s; "
              f"attention core fwd+bwd, B {B} x L {L}, {H} heads x {DH}")
        print(f"{'entry':<32}{'ms':>9}{'TFLOP/s':>9}{'ratio':>8}")
        for group in ("sdpa", "flex", "window"):
            for n, r in t[group].items():
                if n == "chosen":
                    continue
                ratio = r.get("vs_fastest_raw", r.get("vs_raw"))
                if "ms" in r:
                    print(f"{n:<32}{r['ms']:>9.3f}{r['tflops']:>9.0f}{'' if ratio is None else f'{ratio:.3f}':>8}")
                else:
                    print(f"{n:<32}  {r['error'][:70]}")
        print("backends chosen:", {**t["sdpa"]["chosen"], **t["flex"]["chosen"]})
        for k, v in t["targets"].items():
            ratio = "n/a" if v["ratio"] is None else f"{v['ratio']:.3f}"
            print(f"target {k}: {ratio} {'met' if v['met'] else 'NOT MET'}")
            failed |= not v["met"]
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
