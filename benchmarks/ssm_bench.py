"""The SSM family on one GPU: the mamba_ssm kernels against our torch references on identical
weights, then fwd+bwd timings against the peers in the same process.

    source .device/on_device.sh --mamba        # builds mamba-ssm (about 3 min); --conv1d adds causal-conv1d
    python benchmarks/ssm_bench.py             # everything; JSON to $OUT/ssm_bench.json when OUT is set
    python benchmarks/ssm_bench.py --skip accuracy --mixers mamba2 --lengths 2048,8192

1. accuracy (mamba, mamba2; d_model 1024, default configs, B 2, L 2048): our `mamba_ssm`
   backend and the `mamba_ssm.Mamba` / `Mamba2` modules themselves against our fp32 torch
   reference, in fp32 and bf16: max abs errors of the output and of the input gradient
   (and relative to the reference's max); our kernel path run chunk by chunk through the
   cache (fresh start, single steps, carried state); the bf16 torch reference as the floor.
2. timing (d_model 1024, B 4, bf16, fwd+bwd, L 2K/8K/32K; CUDA events, median):
   mamba / mamba2: ours with its best backend, the mamba_ssm module (the peer), ours on torch;
   s4d / hyena (FFT, torch only): ours, our FFT conv alone, and a raw torch.fft causal conv
   of the same [B, D, L] as the peer.
3. ratios ours / peer (target <= 1.15) and t(32K) / t(8K) (target <= 4.6: linear growth).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import traceback

import torch

from zoo import env
from zoo.bench.timing import Timer
from zoo.conformance import run_chunks
from zoo.mixers.mamba import causal_conv1d_fn, check_mamba_ssm
from zoo.mixers.s4d import fft_causal_conv
from zoo.registry import build_mixer

CUDA = torch.device("cuda")
D_MODEL, BATCH = 1024, 4
KERNEL_MIXERS = ("mamba", "mamba2")
FFT_MIXERS = ("s4d", "hyena")
RATIO_TARGET, SCALING_TARGET = 1.15, 4.6


# -- helpers ------------------------------------------------------------------------------------

def peer_module(name: str, src: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The mamba_ssm module with the shape and weights of our mixer `src`, in `dtype`."""
    import mamba_ssm

    c = src.config
    if name == "mamba":
        m = mamba_ssm.Mamba(D_MODEL, d_state=c.d_state, d_conv=c.d_conv, expand=c.expand, layer_idx=0)
    else:  # without causal-conv1d, Mamba2's fused path cannot run
        m = mamba_ssm.Mamba2(D_MODEL, d_state=c.d_state, d_conv=c.d_conv, expand=c.expand, headdim=c.headdim,
                             ngroups=c.ngroups, chunk_size=c.chunk_size,
                             use_mem_eff_path=causal_conv1d_fn() is not None, layer_idx=0)
    m = m.to(CUDA)
    m.load_state_dict(src.state_dict())  # same parameter names and shapes
    return m.to(dtype)


def ours(name: str, backend: str = "auto", dtype=torch.bfloat16, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_mixer(name, D_MODEL, {"backend": backend}).to(CUDA, dtype)


def fwd_bwd(m, x, g):
    x = x.detach().requires_grad_(True)
    y = m(x)
    (dx,) = torch.autograd.grad(y, x, g)
    return y.detach().float(), dx.float()


def errors(y, dx, y_ref, dx_ref) -> dict:
    ey, ed = (y - y_ref).abs().max().item(), (dx - dx_ref).abs().max().item()
    return {"out_max_abs": ey, "out_rel": ey / y_ref.abs().max().item(),
            "dx_max_abs": ed, "dx_rel": ed / dx_ref.abs().max().item()}


# -- 1. accuracy --------------------------------------------------------------------------------

def accuracy(name: str, L: int = 2048, B: int = 2) -> list[dict]:
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    ref = ours(name, "torch", torch.float32)
    torch.manual_seed(1)
    x = torch.randn(B, L, D_MODEL, device=CUDA)
    g = torch.randn(B, L, D_MODEL, device=CUDA)
    y_ref, dx_ref = fwd_bwd(ref, x, g)
    for dtype in (torch.float32, torch.bfloat16):
        dname = str(dtype).removeprefix("torch.")
        impls = {"ours (mamba_ssm backend)": ours(name, "mamba_ssm", dtype),
                 f"mamba_ssm.{'Mamba' if name == 'mamba' else 'Mamba2'} module": peer_module(name, ref, dtype)}
        if dtype != torch.float32:
            impls["ours (torch backend)"] = ours(name, "torch", dtype)
        for impl, m in impls.items():
            m.load_state_dict(ref.state_dict())
            y, dx = fwd_bwd(m, x.to(dtype), g.to(dtype))
            rows.append({"mixer": name, "impl": impl, "dtype": dname, **errors(y, dx, y_ref, dx_ref)})
        m = impls["ours (mamba_ssm backend)"]
        with torch.no_grad():
            sizes = [L // 2 - 1, 1, 1, L // 4]
            got = run_chunks(m, x.to(dtype), sizes + [L - sum(sizes)]).float()
        e = (got - y_ref).abs().max().item()
        rows.append({"mixer": name, "impl": "ours (mamba_ssm) chunked through the cache", "dtype": dname,
                     "out_max_abs": e, "out_rel": e / y_ref.abs().max().item()})
    torch.backends.cudnn.allow_tf32 = True
    return rows


# -- 2. timing ----------------------------------------------------------------------------------

class Case:
    """One thing to time: make(L) gives (step, module or None); step() runs forward + backward once."""

    def __init__(self, mixer: str, impl: str, make, slow: bool = False):
        self.mixer, self.impl, self.make, self.slow = mixer, impl, make, slow


def module_step(m, L):
    x = torch.randn(BATCH, L, D_MODEL, device=CUDA, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn_like(x)

    def step():
        x.grad = None
        m.zero_grad(set_to_none=True)
        m(x).backward(g)

    return step, m


def fft_step(L, layout: str):
    """A causal conv by FFT alone, fwd + bwd (grads to input and filter): 'ours' is our
    fft_causal_conv along L of [B, L, D]; 'raw' is the plain torch.fft recipe on [B, D, L]."""
    shape = (BATCH, L, D_MODEL) if layout == "ours" else (BATCH, D_MODEL, L)
    u = torch.randn(*shape, device=CUDA, requires_grad=True)
    k = torch.randn(D_MODEL, L, device=CUDA, requires_grad=True)
    g = torch.randn_like(u)

    def raw(u, k):
        n = 1 << (2 * L - 1).bit_length()
        return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L]

    def step():
        u.grad = k.grad = None
        (fft_causal_conv(u, k) if layout == "ours" else raw(u, k)).backward(g)

    return step, None


def cases(names: list[str]) -> list[Case]:
    out = []
    for name in names:
        if name in KERNEL_MIXERS:
            out.append(Case(name, "ours (best backend)", lambda L, n=name: module_step(ours(n), L)))
            out.append(Case(name, "mamba_ssm module (peer)",
                            lambda L, n=name: module_step(peer_module(n, ours(n), torch.bfloat16), L)))
            out.append(Case(name, "ours (torch backend)", lambda L, n=name: module_step(ours(n, "torch"), L), True))
        else:
            out.append(Case(name, "ours (best backend)", lambda L, n=name: module_step(ours(n), L)))
            out.append(Case(name, "our FFT conv alone", lambda L: fft_step(L, "ours")))
            out.append(Case(name, "raw torch.fft conv (peer)", lambda L: fft_step(L, "raw")))
    return out


def time_steps(step, iters: int) -> list[float]:
    """ms of each of `iters` calls."""
    return [t * 1e3 for t in Timer("cuda").times(step, warmup=0, reps=iters)]


def timing(names: list[str], lengths: list[int], rounds: int = 3) -> list[dict]:
    rows = []
    for L in lengths:
        iters = max(2, 16384 // L)  # per round
        by_mixer: dict[str, list[Case]] = {}
        for c in cases(names):
            by_mixer.setdefault(c.mixer, []).append(c)
        for name, group in by_mixer.items():
            live = {}
            for c in group:  # build and warm up (Triton autotunes on the first calls)
                row = {"mixer": name, "impl": c.impl, "L": L}
                try:
                    torch.cuda.reset_peak_memory_stats()
                    t0 = time.time()
                    step, module = c.make(L)
                    step()
                    torch.cuda.synchronize()
                    row["first_call_s"] = round(time.time() - t0, 2)
                    warm = time_steps(step, 1 if c.slow else 2)
                    row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                    if module is not None and hasattr(module, "last_backend"):
                        row["backend"] = module.last_backend
                    live[c.impl] = (step, 1 if c.slow and min(warm) > 500 else iters, [])
                except torch.cuda.OutOfMemoryError:
                    row["error"] = "OOM"
                except Exception as e:
                    row["error"] = f"{type(e).__name__}: {e}"
                    traceback.print_exc()
                rows.append(row)
                torch.cuda.empty_cache()
            for _ in range(rounds):  # interleave the implementations so drift hits them alike
                for step, n, ts in live.values():
                    ts.extend(time_steps(step, n))
            for row in rows:
                if row["mixer"] == name and row["L"] == L and row["impl"] in live:
                    ts = live[row["impl"]][2]
                    row.update(ms=statistics.median(ts), runs=len(ts))
            del live
            torch.cuda.empty_cache()
            print(f"timed L={L} {name}", flush=True)
    return rows


# -- 3. summary ----------------------------------------------------------------------------------

def summary(rows: list[dict]) -> dict:
    ms = {(r["mixer"], r["impl"], r["L"]): r.get("ms") for r in rows}
    ratios, scaling = [], []
    for mixer, impl, L in ms:
        if impl.endswith("(peer)") and ms[(mixer, impl, L)]:
            mine = ms.get((mixer, "ours (best backend)", L))
            if mine:
                r = mine / ms[(mixer, impl, L)]
                ratios.append({"mixer": mixer, "L": L, "peer": impl, "ratio": round(r, 3),
                               "target": RATIO_TARGET if mixer in KERNEL_MIXERS else None,
                               "ok": r <= RATIO_TARGET if mixer in KERNEL_MIXERS else None})
        if L == 32768 and ms[(mixer, impl, L)] and ms.get((mixer, impl, 8192)):
            s = ms[(mixer, impl, L)] / ms[(mixer, impl, 8192)]
            scaling.append({"mixer": mixer, "impl": impl, "t32k_over_t8k": round(s, 3), "ok": s <= SCALING_TARGET})
    return {"ratios": ratios, "scaling": scaling}


def print_tables(out: dict) -> None:
    if out.get("accuracy"):
        print(f"\naccuracy vs our fp32 torch reference (d_model {D_MODEL}, B 2, L 2048)")
        print(f"{'mixer':8} {'dtype':9} {'impl':46} {'out max abs':>12} {'out rel':>9} "
              f"{'dx max abs':>11} {'dx rel':>9}")
        for r in out["accuracy"]:
            dx = f"{r['dx_max_abs']:11.3g} {r['dx_rel']:9.3g}" if "dx_rel" in r else ""
            print(f"{r['mixer']:8} {r['dtype']:9} {r['impl']:46} {r['out_max_abs']:12.3g} {r['out_rel']:9.3g} {dx}")
    rows = out.get("timing") or []
    if rows:
        lengths = sorted({r["L"] for r in rows})
        print(f"\nfwd+bwd bf16 ms (d_model {D_MODEL}, B {BATCH}; median, CUDA events)")
        print(f"{'mixer':8} {'impl':28} " + " ".join(f"{f'L={L}':>10}" for L in lengths) + f" {'t32K/t8K':>9}")
        seen = []
        for r in rows:
            key = (r["mixer"], r["impl"])
            if key in seen:
                continue
            seen.append(key)
            cells = []
            for L in lengths:
                m = next((x for x in rows if (x["mixer"], x["impl"], x["L"]) == (*key, L)), {})
                cells.append(f"{m['ms']:10.2f}" if m.get("ms") else f"{m.get('error', '-')[:10]:>10}")
            s = next((x["t32k_over_t8k"] for x in out["summary"]["scaling"] if (x["mixer"], x["impl"]) == key), None)
            print(f"{key[0]:8} {key[1]:28} " + " ".join(cells) + (f" {s:9.2f}" if s else ""))
        print("\nours / peer (target <= 1.15 for the mamba_ssm peers)")
        for r in out["summary"]["ratios"]:
            flag = "" if r["ok"] is None else ("ok" if r["ok"] else "OVER")
            print(f"  {r['mixer']:8} L={r['L']:<6} {r['ratio']:6.3f}  vs {r['peer']} {flag}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mixers", default="mamba,mamba2,s4d,hyena")
    ap.add_argument("--lengths", default="2048,8192,32768")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: accuracy, timing")
    args = ap.parse_args()
    names, lengths = args.mixers.split(","), [int(v) for v in args.lengths.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    out: dict = {"device": env.device_name(CUDA), "versions": env.versions(),
                 "causal_conv1d": causal_conv1d_fn() is not None, "mamba_ssm": check_mamba_ssm(CUDA) or "ok",
                 "d_model": D_MODEL, "batch": BATCH, "accuracy": [], "timing": [], "summary": {}}
    path = os.path.join(os.environ["OUT"], "ssm_bench.json") if os.environ.get("OUT") else None

    def save():
        out["summary"] = summary(out["timing"])
        if path:
            with open(path, "w") as f:
                json.dump(out, f, indent=1)

    print(json.dumps({k: out[k] for k in ("device", "versions", "causal_conv1d", "mamba_ssm")}), flush=True)
    kernels_ok = check_mamba_ssm(CUDA) is None
    if "accuracy" not in skip and kernels_ok:
        for name in [n for n in names if n in KERNEL_MIXERS]:
            out["accuracy"] += accuracy(name)
            save()
            print(f"accuracy {name} done", flush=True)
    if "timing" not in skip:
        timed = [n for n in names if n in FFT_MIXERS or kernels_ok]
        for L in lengths:
            out["timing"] += timing(timed, [L])
            save()
    save()
    print_tables(out)


if __name__ == "__main__":
    main()
