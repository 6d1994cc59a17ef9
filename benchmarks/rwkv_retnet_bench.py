"""RWKV-7 and RetNet on the GPU: fla kernels against our torch reference, then speed against
flash-linear-attention's own layers in the same run.

    OUT=/tmp/out python benchmarks/rwkv_retnet_bench.py                    # both mixers
    OUT=/tmp/out python benchmarks/rwkv_retnet_bench.py --mixers rwkv7     # one at a time

Needs CUDA and flash-linear-attention 0.6 (pip install 'mixer-zoo[gpu]').

1. Accuracy on identical weights (d_model 1024): the `fla` backend in bf16 and the `torch`
   backend in bf16 against the `torch` backend in fp32: outputs, input and parameter gradients,
   chunked inference through the cache; and the bare kernels (chunk_rwkv7, chunk_retention)
   against our chunked forms on the same bf16 inputs, with an initial state.
2. Speed, forward + backward, bf16, d_model 1024, B = 4, L = 2K, 8K, 32K: our mixer on its best
   backend, fla's layer (RWKV7Attention / MultiScaleRetention at the same sizes), fla's bare
   kernel, and our torch fallback. Targets: ours / fla layer <= 1.15, time(32K) / time(8K) <= 4.6.
   Timings are CUDA-event medians, targets interleaved round by round so drift hits all alike.

NOTE: fla's Triton kernels autotune on the first call for each shape; the first run spends
minutes there. The shapes below are fixed so each is tuned once; warm-up calls absorb it.
Results go to $OUT/rwkv_retnet_bench[_<mixers>].json, rewritten after every measurement, so a
run cut short still leaves what it measured; the table is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

from zoo.bench.timing import Timer
from zoo.conformance import run_chunks
from zoo.mixers.retnet import retention_chunkwise, retention_fla, retention_log_gamma
from zoo.mixers.rwkv7 import LOG_DECAY_FLOOR, V_FIRST, wkv7_chunked, wkv7_fla
from zoo.registry import build_mixer, get_spec

D_MODEL, BATCH, LENGTHS = 1024, 4, (2048, 8192, 32768)
RWKV_LAYER, N_LAYERS = 1, 12      # a layer after the first: value residual included, as fla's layer_idx=1
RETNET_HEADS = 4                  # the mixer's default: d_k = 256 per head, as in the paper


# -- helpers -----------------------------------------------------------------------------------------

def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|."""
    return ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-12)).item()


def build(name: str, backend: str, device, dtype, d_model: int | None = None):
    over = {"backend": backend}
    if name == "rwkv7":
        over["n_layers"] = N_LAYERS
    else:
        over["n_heads"] = RETNET_HEADS
    torch.manual_seed(0)
    m = build_mixer(name, d_model or D_MODEL, over, layer_idx=RWKV_LAYER if name == "rwkv7" else 0)
    return m.to(device=device, dtype=dtype)


def mixer_call(name: str, m, x, v_first=None, cache=None):
    if name == "rwkv7":
        return m(x, cache, shared={V_FIRST: v_first})
    return m(x, cache)


# -- 1. accuracy ---------------------------------------------------------------------------------------

def accuracy(name: str, device, d_model: int, B: int, L: int) -> dict:
    ref = build(name, "torch", device, torch.float32, d_model)
    with torch.no_grad():  # zero-initialised projections (output, LoRA down) would hide errors
        g = torch.Generator(device="cpu").manual_seed(1)
        for p in ref.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g).to(device))
    m_fla = build(name, "fla", device, torch.bfloat16, d_model)
    m_fla.load_state_dict({k: v.to(torch.bfloat16) for k, v in ref.state_dict().items()})
    t16 = build(name, "torch", device, torch.bfloat16, d_model)
    t16.load_state_dict(m_fla.state_dict())

    gen = torch.Generator(device="cpu").manual_seed(2)
    x = torch.randn(B, L, d_model, generator=gen).to(device)
    vf = torch.randn(B, L, d_model, generator=gen).to(device) if name == "rwkv7" else None
    dy = torch.randn(B, L, d_model, generator=gen).to(device)

    def run(m, dtype):
        xi = x.to(dtype).clone().requires_grad_(True)
        vi = vf.to(dtype).clone().requires_grad_(True) if vf is not None else None
        y = mixer_call(name, m, xi, vi)
        y.backward(dy.to(dtype))
        grads = {"x": xi.grad, **({"v_first": vi.grad} if vi is not None else {})}
        grads.update({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
        return y.detach(), grads

    y_ref, g_ref = run(ref, torch.float32)
    out: dict = {"mixer": name, "B": B, "L": L, "d_model": d_model}
    for label, m in (("fla_bf16", m_fla), ("torch_bf16", t16)):
        y, grads = run(m, torch.bfloat16)
        worst = max(grads, key=lambda n: rel_err(grads[n], g_ref[n]))
        out[label] = {"out_rel_err": rel_err(y, y_ref), "out_max_abs_err": (y.float() - y_ref).abs().max().item(),
                      "grad_x_rel_err": rel_err(grads["x"], g_ref["x"]),
                      "grad_worst_rel_err": rel_err(grads[worst], g_ref[worst]), "grad_worst": worst}
        assert m.last_backend == label.split("_")[0], f"{name} ran on {m.last_backend}, not {label}"
    with torch.no_grad():  # chunked inference through the cache on the fla backend (incl. a 1-token step)
        sizes = [L // 3, 1, L - L // 3 - 1]
        xb = x.bfloat16()
        if name == "rwkv7":
            cache, outs, i = m_fla.new_cache(B, device, torch.bfloat16), [], 0
            for s in sizes:
                outs.append(m_fla(xb[:, i:i + s], cache, shared={V_FIRST: vf[:, i:i + s].bfloat16()}))
                i += s
            y_ch = torch.cat(outs, 1)
        else:
            y_ch = run_chunks(m_fla, xb, sizes)
    out["fla_bf16"]["chunked_rel_err"] = rel_err(y_ch, y_ref)
    out["kernel"] = kernel_accuracy(name, device, B, L)
    return out


def kernel_accuracy(name: str, device, B: int, L: int) -> dict:
    """The bare fla kernel vs our chunked form (fp32) on the same bf16 inputs, with a start state."""
    gen = torch.Generator(device="cpu").manual_seed(3)
    rnd = lambda *s: torch.randn(*s, generator=gen).to(device)  # noqa: E731
    if name == "rwkv7":
        H, N = D_MODEL // 64, 64
        r, k, v = (rnd(B, L, H, N).bfloat16() for _ in range(3))
        log_w = (LOG_DECAY_FLOOR * torch.rand(B, L, H, N, generator=gen).to(device)).bfloat16()
        kk = torch.nn.functional.normalize(rnd(B, L, H, N), dim=-1)
        a = torch.rand(B, L, H, N, generator=gen).to(device)
        neg_kk, kka = (-kk).bfloat16(), (kk * a).bfloat16()
        S0 = rnd(B, H, N, N)
        o, S = wkv7_fla(r, log_w, k, v, neg_kk, kka, S0)
        o_ref, S_ref = wkv7_chunked(r, log_w, k, v, neg_kk, kka, S0, 16)
    else:
        H, Dk, Dv = RETNET_HEADS, D_MODEL // RETNET_HEADS, 2 * D_MODEL // RETNET_HEADS
        q, k = rnd(B, L, H, Dk).bfloat16(), (rnd(B, L, H, Dk) * Dk ** -0.5).bfloat16()
        v, S0 = rnd(B, L, H, Dv).bfloat16(), rnd(B, H, Dk, Dv)
        o, S = retention_fla(q, k, v, S0)
        o_ref, S_ref = retention_chunkwise(q, k, v, retention_log_gamma(H, device), S0, 64)
    return {"out_rel_err": rel_err(o, o_ref), "state_rel_err": rel_err(S, S_ref)}


# -- 2. speed ------------------------------------------------------------------------------------------

class Target:
    """One thing to time: `step()` runs forward + backward once on fresh inputs it made in `prepare()`."""

    def __init__(self, name: str, prepare: Callable[[], tuple], step: Callable[..., None], iters: int):
        self.name, self.prepare, self.step, self.iters = name, prepare, step, iters
        self.times: list[float] = []
        self.error: str | None = None

    def once(self) -> None:
        args = self.prepare()                        # fresh inputs, outside the timed region
        self.times.append(Timer("cuda").time(lambda: self.step(*args)))


def targets_for(name: str, L: int, device, iters: int, torch_iters: int, with_torch: bool) -> list[Target]:
    B, D, dt = BATCH, D_MODEL, torch.bfloat16
    x0 = torch.randn(B, L, D, device=device, dtype=dt)
    dy = torch.randn(B, L, D, device=device, dtype=dt)
    vf0 = torch.randn(B, L, D, device=device, dtype=dt)

    def fresh():  # fla's fused token-shift backward overwrites its input, so every call gets a copy
        return x0.clone().requires_grad_(True), vf0.clone().requires_grad_(True)

    def ours(backend):
        m = build(name, backend, device, dt)

        def step(x, vf):
            y = mixer_call(name, m, x, vf)
            y.backward(dy)
            assert m.last_backend == backend

        return lambda: (m.zero_grad(set_to_none=True), *fresh())[1:], step

    out = []
    prep, step = ours("fla")
    out.append(Target("ours (fla)", prep, step, iters))

    if name == "rwkv7":
        from fla.layers import RWKV7Attention

        peer = RWKV7Attention(mode="chunk", hidden_size=D, head_dim=64, layer_idx=RWKV_LAYER,
                              num_hidden_layers=N_LAYERS).to(device=device, dtype=dt)

        def peer_step(x, vf):
            peer(x, v_first=vf)[0].backward(dy)
    else:
        from fla.layers import MultiScaleRetention

        peer = MultiScaleRetention(mode="chunk", hidden_size=D, num_heads=RETNET_HEADS, expand_k=1.0,
                                   expand_v=2.0).to(device=device, dtype=dt)

        def peer_step(x, vf):
            peer(x)[0].backward(dy)
    out.append(Target("fla layer", lambda: (peer.zero_grad(set_to_none=True), *fresh())[1:], peer_step, iters))

    # the bare kernel at the mixer's shapes, forward + backward, for scale
    gen = torch.Generator(device="cpu").manual_seed(4)
    if name == "rwkv7":
        H, N = D // 64, 64
        base = [torch.randn(B, L, H, N, generator=gen).to(device, dt) for _ in range(3)]
        log_w = (LOG_DECAY_FLOOR * torch.rand(B, L, H, N, generator=gen)).to(device, dt)
        kk = torch.nn.functional.normalize(torch.randn(B, L, H, N, generator=gen), dim=-1).to(device)
        ab = [(-kk).to(dt), (kk * 0.5).to(dt)]

        def kprep():
            return [t.clone().requires_grad_(True) for t in (base[0], log_w, base[1], base[2], *ab)]

        def kstep(*t):
            from fla.ops.rwkv7 import chunk_rwkv7

            o, _ = chunk_rwkv7(*t, scale=1.0, safe_gate=True, lower_bound=LOG_DECAY_FLOOR, chunk_size=64)
            o.backward(torch.ones_like(o))
    else:
        H, Dk, Dv = RETNET_HEADS, D // RETNET_HEADS, 2 * D // RETNET_HEADS
        base = [torch.randn(B, L, H, d, generator=gen).to(device, dt) for d in (Dk, Dk, Dv)]

        def kprep():
            return [t.clone().requires_grad_(True) for t in base]

        def kstep(*t):
            from fla.ops.retention import chunk_retention

            o, _ = chunk_retention(*t)
            o.backward(torch.ones_like(o))
    out.append(Target("fla kernel", kprep, kstep, iters))

    if with_torch:
        prep, step = ours("torch")
        out.append(Target("ours (torch)", prep, step, torch_iters))
    return out


def time_length(name: str, L: int, device, iters: int, torch_iters: int, with_torch: bool, warmup: int) -> list[dict]:
    targets = targets_for(name, L, device, iters, torch_iters, with_torch)
    for t in targets:  # warm-up: autotuning and allocator growth happen here
        try:
            for _ in range(warmup):
                t.once()
            t.times.clear()
        except torch.cuda.OutOfMemoryError as e:
            t.error = f"out of memory: {str(e).splitlines()[0]}"
        torch.cuda.empty_cache()
    for i in range(max(t.iters for t in targets)):  # round robin: drift hits every target alike
        for t in targets:
            if t.error is None and i < t.iters:
                try:
                    t.once()
                except torch.cuda.OutOfMemoryError as e:
                    t.error = f"out of memory: {str(e).splitlines()[0]}"
    rows = []
    for t in targets:
        med = statistics.median(t.times) if t.times else None
        rows.append({"mixer": name, "target": t.name, "L": L, "B": BATCH, "d_model": D_MODEL, "dtype": "bf16",
                     "fwd_bwd_s": med, "tokens_per_s": BATCH * L / med if med else None,
                     "runs": len(t.times), "error": t.error})
    del targets
    torch.cuda.empty_cache()
    return rows


# -- main --------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mixers", nargs="+", default=["rwkv7", "retnet"], choices=["rwkv7", "retnet"])
    ap.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    ap.add_argument("--iters", type=int, default=10, help="timed runs per target and length")
    ap.add_argument("--torch-iters", type=int, default=3, help="timed runs of the (slow) torch fallback")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-torch", action="store_true", help="skip the torch fallback timings")
    ap.add_argument("--skip", choices=["accuracy", "timing"], help="run only the other part")
    args = ap.parse_args()
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference is fp32
    import fla

    suffix = "" if set(args.mixers) == {"rwkv7", "retnet"} else "_" + "_".join(args.mixers)
    suffix += f"_no_{args.skip}" if args.skip else ""
    path = os.path.join(os.environ.get("OUT", "."), f"rwkv_retnet_bench{suffix}.json")
    result: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "fla": getattr(fla, "__version__", "?"),
                    "command": " ".join(["python", "benchmarks/rwkv_retnet_bench.py", *sys.argv[1:]]),
                    "accuracy": [], "timing": []}

    def save() -> None:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)

    t0 = time.time()
    for name in args.mixers:
        why = get_spec(name).choose_backend(device).reasons.get("fla")
        if why:
            raise SystemExit(f"{name}: fla backend unavailable: {why}")
        if args.skip != "accuracy":
            result["accuracy"].append(accuracy(name, device, D_MODEL, 2, 1000))
            save()
            print(f"[{time.time() - t0:6.0f}s] accuracy {name}: {json.dumps(result['accuracy'][-1])}", flush=True)
        for L in args.lengths if args.skip != "timing" else []:
            rows = time_length(name, L, device, args.iters, args.torch_iters, not args.no_torch, args.warmup)
            result["timing"] += rows
            save()
            for r in rows:
                print(f"[{time.time() - t0:6.0f}s] {name} L={L} {r['target']}: {r['fwd_bwd_s']} s {r['error'] or ''}",
                      flush=True)

    # ratios and scaling
    def t(name, target, L):
        for r in result["timing"]:
            if r["mixer"] == name and r["target"] == target and r["L"] == L and r["fwd_bwd_s"]:
                return r["fwd_bwd_s"]
        return None

    summary = []
    lab = lambda L: f"{L // 1024}K" if L % 1024 == 0 else str(L)  # noqa: E731
    for name in args.mixers:
        for target in ("ours (fla)", "fla layer", "fla kernel", "ours (torch)"):
            row = {"mixer": name, "target": target}
            for L in args.lengths:
                row[f"t{lab(L)}_ms"] = None if t(name, target, L) is None else 1e3 * t(name, target, L)
                if target == "ours (fla)" and t(name, "fla layer", L) and t(name, target, L):
                    row[f"vs_fla_layer_{lab(L)}"] = t(name, target, L) / t(name, "fla layer", L)
            if t(name, target, 32768) and t(name, target, 8192):
                row["t32K_over_t8K"] = t(name, target, 32768) / t(name, target, 8192)
            summary.append(row)
    result["summary"] = summary
    result["targets"] = {"ours_over_fla_layer_max": 1.15, "t32K_over_t8K_max": 4.6}
    save()

    print("\naccuracy (relative to the fp32 torch reference; max |err| / max |ref|)")
    for a in result["accuracy"]:
        for label in ("fla_bf16", "torch_bf16"):
            r = a[label]
            print(f"  {a['mixer']:7s} {label:10s} out {r['out_rel_err']:.2e}  grad x {r['grad_x_rel_err']:.2e}  "
                  f"worst grad {r['grad_worst_rel_err']:.2e} ({r['grad_worst']})"
                  + (f"  chunked {r['chunked_rel_err']:.2e}" if "chunked_rel_err" in r else ""))
        kern = a["kernel"]
        print(f"  {a['mixer']:7s} kernel     out {kern['out_rel_err']:.2e}  state {kern['state_rel_err']:.2e}")
    print(f"\nfwd+bwd, bf16, d_model {D_MODEL}, B {BATCH}  (ms; ratio = ours (fla) / fla layer; "
          "targets <= 1.15 and t32K/t8K <= 4.6)")
    for r in summary:
        times = "  ".join(f"{lab(L):>3s} " + (f"{r[f't{lab(L)}_ms']:9.1f}" if r[f"t{lab(L)}_ms"] else f"{'-':>9s}")
                          for L in args.lengths)
        ratios = " ".join(f"{r[k]:.2f}" for k in r if k.startswith("vs_fla_layer"))
        scale = f"  32K/8K {r['t32K_over_t8K']:.2f}" if "t32K_over_t8K" in r else ""
        print(f"  {r['mixer']:7s} {r['target']:13s} {times}{scale}" + (f"  ratio {ratios}" if ratios else ""))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
