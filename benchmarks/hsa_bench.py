"""HSA on one GPU: the Triton retrieval kernel against the torch reference at full size, then
speed and memory of hierarchical sparse attention against causal cuDNN attention.

    source .device/on_device.sh
    python benchmarks/hsa_bench.py                    # JSON to $OUT/hsa_bench.json when OUT is set
    python benchmarks/hsa_bench.py --skip accuracy --lengths 32768,131072
    python benchmarks/hsa_bench.py --skip timing      # the accuracy part alone

1. accuracy, bf16 (16 query heads x 64, 1 KV head, S 64, top-K 8, W 512):
   a. the kernel alone, B 2, L 4096, chunks chosen by the Triton selection from random
      retrieval queries and landmarks: output and dQ, dK, dV, dW of both forward layouts
      (chunk-major, token-major) against the reference computed in fp32 on the same bf16
      values;
   b. the Triton selection and the torch one (`HSA.select`), both in bf16, against the torch
      one in fp32 on the same values, B 2, L 8192: chosen chunks, fusion weights, gradients
      to the retrieval queries and the landmarks;
   c. the window on CUDA (FlexAttention, and torch's flash kernel with a window when this
      torch has it) against the explicit reference, with queries after cached keys too;
   d. the whole `hsa` layer (d_model 1024) on backends triton and torch in bf16 against backend
      torch in fp32, identical weights, B 1, L 4096: output and every parameter gradient
      (w_lmk and lmk_norm show the kernel's weight gradient reaching the landmarks through the
      retrieval scores).
   b. and d. pass within the tolerance or within 2x the bf16 torch path's own error (that path
   is itself rounded: its landmark gradient is a scatter-add in bf16).
2. timing, bf16, fwd+bwd, B x L = 128K tokens, at each L (after warm-up, the median over rounds
   of calls run back to back between two CUDA events):
   - core: HSA attention = landmark scoring + top-K + fusion weights (Triton selection), the
     Triton retrieval kernel and the window, against causal SDPA forced to cuDNN on q, k, v
     of [B, 16, L, 64]; the core's three parts also alone, the kernel's forward alone, and
     for comparison the chunk-major forward and torch's flash kernel with a window;
   - layer: the whole `hsa` mixer (projections, chunk encoder) against the `nope` attention
     layer (same d_model and heads, SDPA forced to cuDNN);
   - peak memory of one step beyond its inputs.
3. targets: core speedup >= 5x at L 32K and >= 20x at L 128K, t(128K) / t(32K) <= 4.8,
   peak memory linear in L (at fixed B x L: flat).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from zoo.bench.timing import Timer  # noqa: E402
from zoo.kernels.hsa_naive import hsa_attention_naive  # noqa: E402
from zoo.kernels.hsa_triton import hsa_attention  # noqa: E402
from zoo.mixers.hsa import window_attention_fast, window_attention_reference, window_kernel  # noqa: E402
from zoo.registry import build_mixer  # noqa: E402

CUDA = torch.device("cuda")
BF16 = torch.bfloat16
H, DH, S, TOPK, W, D_MODEL = 16, 64, 64, 8, 512, 1024
TOKENS = 128 * 1024
TARGETS = {"speedup_32k": 5.0, "speedup_128k": 20.0, "scaling_128k_over_32k": 4.8}
TOL = {"rel_norm": 2e-2, "rel_max": 6e-2}  # bf16 against an fp32 reference
BUDGET_S = 330.0  # stop timing new lengths past this (the whole script should stay under ~6 min)
T0 = time.time()


def rel_errors(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.float(), b.float()
    d = a - b
    return {"rel_norm": (d.norm() / b.norm().clamp_min(1e-30)).item(),
            "rel_max": (d.abs().max() / b.abs().max().clamp_min(1e-30)).item()}


def kernel_errors(res: dict, path: str = "") -> list[tuple[float, str]]:
    """(rel_norm, name) of every error of our kernels in an accuracy result (not the bf16 torch
    path's, which are the floor they are held to)."""
    out = []
    for k, v in res.items():
        if not isinstance(v, dict) or k in ("torch", "torch bf16"):
            continue
        out += [(v["rel_norm"], path + k)] if "rel_norm" in v else kernel_errors(v, f"{path}{k} ")
    return out


def passes(e: dict) -> bool:
    return e["rel_norm"] <= TOL["rel_norm"] and e["rel_max"] <= TOL["rel_max"]


def hsa_layer(kv_heads: int, backend: str) -> torch.nn.Module:
    cfg = {"n_heads": H, "n_kv_heads": kv_heads, "head_dim": DH, "chunk_size": S, "top_k": TOPK, "window": W,
           "backend": backend}
    return build_mixer("hsa", D_MODEL, cfg)


# -- 1. accuracy ------------------------------------------------------------------------------------

def accuracy_kernel(kv_heads: int, B: int = 2, L: int = 4096) -> dict:
    sel = hsa_layer(kv_heads, "torch").to(CUDA)
    g = torch.Generator(device=CUDA).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=CUDA, generator=g)  # noqa: E731
    qr, lmk = r(B, L, kv_heads, DH), r(B, L // S, kv_heads, DH)
    ids, w, index = sel.select(qr, lmk, 0, "triton")
    q, k, v = r(B, L, H, DH).to(BF16), r(B, L, kv_heads, DH).to(BF16), r(B, L, kv_heads, DH).to(BF16)
    w = w.detach()
    dout = r(B, L, H, DH).to(BF16)
    ref_ins = [t.float().clone().requires_grad_() for t in (q, k, v, w)]
    ref = hsa_attention_naive(ref_ins[0], ref_ins[1], ref_ins[2], ref_ins[3], ids, S)
    ref_grads = torch.autograd.grad(ref, ref_ins, dout.float())
    res = {}
    for layout in ("chunk", "token"):
        ins = [t.clone().requires_grad_() for t in (q, k, v, w)]
        out = hsa_attention(ins[0], ins[1], ins[2], ins[3], ids, S, index=index, layout=layout)
        grads = torch.autograd.grad(out, ins, dout)
        res[f"output {layout}"] = rel_errors(out, ref)
        for name, a, b in zip(("dq", "dk", "dv", "dweights"), grads, ref_grads):
            res[f"{name} {layout}"] = rel_errors(a, b)
    res["bf16_floor_output"] = rel_errors(ref.to(BF16), ref)  # rounding the exact output to bf16
    res["empty_slots"] = int((ids < 0).sum())
    res["ok"] = all(passes(e) for k_, e in res.items() if isinstance(e, dict) and k_ != "bf16_floor_output")
    return res


def accuracy_select(kv_heads: int, B: int = 2, L: int = 8192) -> dict:
    """The Triton selection and the torch one, both on bf16 inputs, against the torch one in fp32 on
    the same values. The bf16 torch path is itself rounded (its landmark gradient is a scatter-add
    in bf16), so the kernel passes within TOL or within 2x that path's own error."""
    sel = hsa_layer(kv_heads, "torch").to(CUDA)
    g = torch.Generator(device=CUDA).manual_seed(1)
    qr = torch.randn(B, L, kv_heads, DH, device=CUDA, generator=g).to(BF16)
    lmk = torch.randn(B, L // S, kv_heads, DH, device=CUDA, generator=g).to(BF16)
    gw = None
    outs = {}
    for name, backend, dt in (("fp32", "torch", torch.float32), ("torch", "torch", BF16), ("triton", "triton", BF16)):
        a, b = qr.to(dt).requires_grad_(), lmk.to(dt).requires_grad_()
        ids, w, _ = sel.select(a, b, 0, backend)
        if gw is None:
            gw = torch.randn(w.shape, device=CUDA, generator=torch.Generator(device=CUDA).manual_seed(2))
        outs[name] = (ids, w, torch.autograd.grad((w * gw).sum(), (a, b)))
    ids_r, w_r, g_r = outs["fp32"]
    res = {"tokens": int(ids_r[..., 0].numel())}
    for name in ("torch", "triton"):
        ids, w, gr = outs[name]
        same = (ids == ids_r).all(-1)  # near-ties may rank differently (summation order of the scores)
        res[name] = {"tokens_with_other_chunks": int((~same).sum()), "weights": rel_errors(w[same], w_r[same]),
                     "dqr": rel_errors(gr[0], g_r[0]), "dlmk": rel_errors(gr[1], g_r[1])}
    res["ok"] = res["triton"]["tokens_with_other_chunks"] <= 1e-3 * res["tokens"] and all(
        within(res["triton"][k_], res["torch"][k_]) for k_ in ("weights", "dqr", "dlmk"))
    return res


def within(e: dict, floor: dict) -> bool:
    """Within TOL, or within twice the bf16 torch path's own error against the same fp32 reference."""
    return passes(e) or (e["rel_norm"] <= 2 * floor["rel_norm"] and e["rel_max"] <= 2 * floor["rel_max"])


def accuracy_window(kv_heads: int) -> dict:
    kernel, why = window_kernel(CUDA, BF16, DH, 4096)
    res = {"kernel": kernel, "why": why}
    g = torch.Generator(device=CUDA).manual_seed(3)
    for lq, lk in ((4096, 4096), (1000, 1511)):  # the second: queries after W - 1 cached keys
        q = torch.randn(2, H, lq, DH, device=CUDA, generator=g).to(BF16)
        k, v = (torch.randn(2, kv_heads, lk, DH, device=CUDA, generator=g).to(BF16) for _ in range(2))
        do = torch.randn(2, H, lq, DH, device=CUDA, generator=g).to(BF16)
        ref_ins = [t.float().requires_grad_() for t in (q, k, v)]
        ref = window_attention_reference(*ref_ins, W)
        ref_grads = torch.autograd.grad(ref, ref_ins, do.float())
        for kern in ("flex", "flash"):
            ins = [t.clone().requires_grad_() for t in (q, k, v)]
            try:
                out = window_attention_fast(*ins, W, kernel=kern)
                grads = torch.autograd.grad(out, ins, do)
            except Exception as e:  # flash: a torch without the windowed kernel
                res[f"{kern} error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
                continue
            for name, a, b in zip(("output", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads)):
                res[f"{kern} {name} {lq}x{lk}"] = rel_errors(a, b)
    res["ok"] = all(passes(e) for e in res.values() if isinstance(e, dict))
    return res


def accuracy_layer(kv_heads: int, B: int = 1, L: int = 4096) -> dict:
    """The whole layer on backends triton and torch in bf16 against backend torch in fp32, with
    identical weights: output and every parameter gradient, the kernel within TOL or within 2x
    the bf16 torch path's own error."""
    torch.manual_seed(0)
    layers = {"fp32": hsa_layer(kv_heads, "torch").to(CUDA), "torch": hsa_layer(kv_heads, "torch").to(CUDA, BF16),
              "triton": hsa_layer(kv_heads, "triton").to(CUDA, BF16)}
    for m in layers.values():
        m.load_state_dict(layers["fp32"].state_dict())
    x = torch.randn(B, L, D_MODEL, device=CUDA, dtype=BF16)
    gy = torch.randn(B, L, D_MODEL, device=CUDA, dtype=BF16)
    outs = {}
    for name, m in layers.items():
        dt = next(m.parameters()).dtype
        y = m(x.to(dt))
        assert m.last_backend == ("torch" if name == "fp32" else name), (name, m.last_backend)
        params = dict(m.named_parameters())
        grads = torch.autograd.grad(y, list(params.values()), gy.to(dt))
        outs[name] = {"output": y, **{f"grad {n}": gr for n, gr in zip(params, grads)}}
    res, worst, ok = {}, ("", 0.0), True
    for key, want in outs["fp32"].items():
        e, floor = rel_errors(outs["triton"][key], want), rel_errors(outs["torch"][key], want)
        res[key] = {"triton": e, "torch bf16": floor}
        ok &= within(e, floor)
        if e["rel_norm"] > worst[1]:
            worst = (key, e["rel_norm"])
    res["worst"], res["ok"] = worst[0], ok
    return res


# -- 2. timing --------------------------------------------------------------------------------------

def cuda_ms(fn, warmup: int, reps: int, rounds: int = 3) -> float:
    """ms per call: the median over `rounds` of `reps` calls run back to back between two CUDA
    events (steady state, as in training: host work overlaps the GPU's)."""
    return Timer("cuda").median(fn, warmup, rounds, calls=reps) * 1e3


def peak_mib(fn) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def rand(g, *shape):
    return torch.randn(*shape, device=CUDA, dtype=BF16, generator=g).requires_grad_()


def core_case(B: int, L: int, kv_heads: int) -> dict:
    g = torch.Generator(device=CUDA).manual_seed(0)
    t = {"q_swa": rand(g, B, H, L, DH), "k_swa": rand(g, B, kv_heads, L, DH), "v_swa": rand(g, B, kv_heads, L, DH),
         "q": rand(g, B, L, H, DH), "k": rand(g, B, L, kv_heads, DH), "v": rand(g, B, L, kv_heads, DH),
         "qr": rand(g, B, L, kv_heads, DH), "lmk": rand(g, B, L // S, kv_heads, DH)}
    go1 = torch.randn(B, H, L, DH, device=CUDA, dtype=BF16, generator=g)
    go2 = torch.randn(B, L, H, DH, device=CUDA, dtype=BF16, generator=g)
    sel = hsa_layer(kv_heads, "triton")  # only its select(); no parameters involved
    ins = list(t.values())

    def core():
        o1 = window_attention_fast(t["q_swa"], t["k_swa"], t["v_swa"], W)
        ids, w, index = sel.select(t["qr"], t["lmk"], 0, "triton")
        o2 = hsa_attention(t["q"], t["k"], t["v"], w, ids, S, index=index)
        torch.autograd.grad([o1, o2], ins, [go1, go2])

    with torch.no_grad():
        ids0, w0, index0 = sel.select(t["qr"], t["lmk"], 0, "triton")
    gw = torch.randn_like(w0)
    w_leaf = w0.clone().requires_grad_()

    def part_select():
        _, w, _ = sel.select(t["qr"], t["lmk"], 0, "triton")
        torch.autograd.grad(w, [t["qr"], t["lmk"]], gw)

    def part_kernel(layout="token"):
        o = hsa_attention(t["q"], t["k"], t["v"], w_leaf, ids0, S, index=index0, layout=layout)
        torch.autograd.grad(o, [t["q"], t["k"], t["v"], w_leaf], go2)

    def part_kernel_fwd(layout="token"):
        with torch.no_grad():
            hsa_attention(t["q"], t["k"], t["v"], w_leaf, ids0, S, index=index0, layout=layout)

    def part_window(kernel=None):
        o = window_attention_fast(t["q_swa"], t["k_swa"], t["v_swa"], W, kernel=kernel)
        torch.autograd.grad(o, [t["q_swa"], t["k_swa"], t["v_swa"]], go1)

    reps = 10 if L <= 32768 else 6
    row = {"hsa_core_ms": cuda_ms(core, 3, reps), "hsa_core_peak_mib": peak_mib(core)}
    row["part_select_ms"] = cuda_ms(part_select, 2, reps)
    row["part_kernel_ms"] = cuda_ms(part_kernel, 2, reps)
    row["part_window_ms"] = cuda_ms(part_window, 2, reps)
    row["window_kernel"] = window_kernel(CUDA, BF16, DH, L)[0]
    # for comparison: the forward alone, the chunk-major forward, torch's flash window
    row["part_kernel_fwd_ms"] = cuda_ms(part_kernel_fwd, 2, reps)
    row["part_kernel_chunk_ms"] = cuda_ms(lambda: part_kernel("chunk"), 2, reps)
    row["part_kernel_chunk_fwd_ms"] = cuda_ms(lambda: part_kernel_fwd("chunk"), 2, reps)
    try:
        row["part_window_flash_ms"] = cuda_ms(lambda: part_window("flash"), 2, reps)
    except Exception as e:  # a torch without the windowed flash kernel
        row["part_window_flash_ms"] = None
        row["part_window_flash_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return row


def sdpa_case(B: int, L: int) -> dict:
    g = torch.Generator(device=CUDA).manual_seed(1)
    q, k, v = rand(g, B, H, L, DH), rand(g, B, H, L, DH), rand(g, B, H, L, DH)
    go = torch.randn(B, H, L, DH, device=CUDA, dtype=BF16, generator=g)
    used = {"backend": "cudnn"}

    def step():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION] if used["backend"] == "cudnn"
                         else [SDPBackend.FLASH_ATTENTION]):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.autograd.grad(o, (q, k, v), go)

    try:
        step()
    except RuntimeError as e:  # no cuDNN attention on this build: the flash kernel instead, said so
        used["backend"] = f"flash (cudnn failed: {str(e).splitlines()[0][:80]})"
        step()
    reps = 10 if L <= 32768 else 5
    ms = cuda_ms(step, 2, reps)
    flops = 3.5 * 2 * B * H * L * L * DH  # causal fwd 2BHL^2D (two matmuls, half the square); bwd 2.5x fwd
    return {"sdpa_ms": ms, "sdpa_backend": used["backend"], "sdpa_tflops": flops / ms / 1e9,
            "sdpa_peak_mib": peak_mib(step)}


def layer_case(B: int, L: int, kv_heads: int) -> dict:
    torch.manual_seed(0)
    hsa = hsa_layer(kv_heads, "triton").to(CUDA, BF16)
    attn = build_mixer("nope", D_MODEL, {"n_heads": H, "backend": "sdpa"}).to(CUDA, BF16)
    g = torch.Generator(device=CUDA).manual_seed(2)
    x = rand(g, B, L, D_MODEL)
    gy = torch.randn(B, L, D_MODEL, device=CUDA, dtype=BF16, generator=g)
    out = {}
    for name, m in (("hsa_layer", hsa), ("attn_layer", attn)):
        params = [x, *m.parameters()]

        def step(m=m, params=params):
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]):
                y = m(x)
            torch.autograd.grad(y, params, gy)

        out[f"{name}_ms"] = cuda_ms(step, 2, 5 if L > 32768 else 8)
        out[f"{name}_peak_mib"] = peak_mib(step)
        out[f"{name}_backend"] = m.last_backend
    return out


# -- main -------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="8192,32768,131072", help="sequence lengths; B = 128K / L")
    ap.add_argument("--kv-heads", type=int, default=1, help="KV heads (16 query heads share them)")
    ap.add_argument("--skip", default="", help="comma list of: accuracy, layer, timing")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    import triton

    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                    "shape": {"tokens": TOKENS, "query_heads": H, "kv_heads": args.kv_heads, "head_dim": DH,
                              "chunk": S, "top_k": TOPK, "window": W, "d_model": D_MODEL},
                    "tolerance": TOL, "targets": TARGETS, "errors": []}
    if "accuracy" not in skip:
        for name, fn in (("accuracy_kernel", accuracy_kernel), ("accuracy_select", accuracy_select),
                         ("accuracy_window", accuracy_window), ("accuracy_layer", accuracy_layer)):
            try:
                report[name] = fn(args.kv_heads)
            except Exception:
                report["errors"].append(f"{name}: {traceback.format_exc()}")
            print(f"[{time.time() - T0:6.1f}s] {name}: {json.dumps(report.get(name, 'failed'))[:400]}", flush=True)
            torch.cuda.empty_cache()
    rows = []
    for L in [int(v) for v in args.lengths.split(",")] if "timing" not in skip else []:
        if time.time() - T0 > BUDGET_S:
            report["errors"].append(f"L={L} skipped: time budget of {BUDGET_S:.0f} s spent")
            continue
        B = max(1, TOKENS // L)
        row = {"L": L, "B": B}
        for name, fn, fargs in (("core", core_case, (B, L, args.kv_heads)), ("sdpa", sdpa_case, (B, L)),
                                ("layer", layer_case, (B, L, args.kv_heads))):
            if name == "layer" and "layer" in skip:
                continue
            try:
                row.update(fn(*fargs))
            except Exception:
                report["errors"].append(f"L={L} {name}: {traceback.format_exc()}")
            torch.cuda.empty_cache()
        if "hsa_core_ms" in row and "sdpa_ms" in row:
            row["speedup_core"] = row["sdpa_ms"] / row["hsa_core_ms"]
        if "hsa_layer_ms" in row:
            row["speedup_layer"] = row["attn_layer_ms"] / row["hsa_layer_ms"]
        rows.append(row)
        print(f"[{time.time() - T0:6.1f}s] {json.dumps(row)}", flush=True)
    report["timing"] = rows
    by_len = {r["L"]: r for r in rows}
    verdict = {}
    if "speedup_core" in by_len.get(32768, {}):
        verdict["speedup_32k"] = by_len[32768]["speedup_core"]
    if "speedup_core" in by_len.get(131072, {}):
        verdict["speedup_128k"] = by_len[131072]["speedup_core"]
    if "hsa_core_ms" in by_len.get(32768, {}) and "hsa_core_ms" in by_len.get(131072, {}):
        verdict["scaling_128k_over_32k"] = by_len[131072]["hsa_core_ms"] / by_len[32768]["hsa_core_ms"]
        verdict["peak_128k_over_32k"] = by_len[131072]["hsa_core_peak_mib"] / by_len[32768]["hsa_core_peak_mib"]
    verdict["met"] = {k: (v <= TARGETS[k] if k.startswith("scaling") else v >= TARGETS[k])
                      for k, v in verdict.items() if k in TARGETS}
    report["verdict"] = verdict
    report["wall_s"] = time.time() - T0

    out_dir = os.environ.get("OUT")
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "hsa_bench.json").write_text(json.dumps(report, indent=1))

    # -- the short table, last ---------------------------------------------------------------------
    for err in report["errors"]:
        print("ERROR", err.strip().splitlines()[-1])
    for name in ("accuracy_kernel", "accuracy_select", "accuracy_window", "accuracy_layer"):
        if name in report:
            a = report[name]
            worst = max(kernel_errors(a))
            print(f"{name}: ok={a['ok']}  worst rel_norm {worst[0]:.2e} ({worst[1]})")
    print(f"{'L':>7} {'B':>3} {'core ms':>8} {'select':>7} {'kernel':>7} {'window':>7} {'sdpa ms':>8} "
          f"{'speedup':>7} {'layer ms':>8} {'attn ms':>8} {'layer x':>7} {'peak MiB':>8} {'sdpa MiB':>8}")
    for r in rows:
        f = lambda k, w=8, p=1, r=r: f"{r[k]:{w}.{p}f}" if k in r else f"{'-':>{w}}"  # noqa: E731
        print(f"{r['L']:>7} {r['B']:>3} {f('hsa_core_ms')} {f('part_select_ms', 7)} {f('part_kernel_ms', 7)} "
              f"{f('part_window_ms', 7)} {f('sdpa_ms')} {f('speedup_core', 7, 2)} {f('hsa_layer_ms')} "
              f"{f('attn_layer_ms')} {f('speedup_layer', 7, 2)} {f('hsa_core_peak_mib', 8, 0)} "
              f"{f('sdpa_peak_mib', 8, 0)}")
    print(f"{'L':>7} {'window kernel':>13} {'kern fwd':>8} {'chunk-major kern':>16} {'its fwd':>7} "
          f"{'flash window':>12}")
    for r in rows:
        f = lambda k, w=8, p=1, r=r: f"{r[k]:{w}.{p}f}" if r.get(k) is not None else f"{'-':>{w}}"  # noqa: E731
        print(f"{r['L']:>7} {r.get('window_kernel', '-'):>13} {f('part_kernel_fwd_ms')} "
              f"{f('part_kernel_chunk_ms', 16)} {f('part_kernel_chunk_fwd_ms', 7)} {f('part_window_flash_ms', 12)}")
    print("targets:", json.dumps(verdict), f"wall {report['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
