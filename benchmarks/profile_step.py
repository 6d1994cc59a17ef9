"""Where a training step's GPU time goes: the zoo's compiled step beside the minimal GPT's, kernel by kernel.

    python benchmarks/profile_step.py --out $OUT                       # d256 x 4, 32 x 2048, nope and rope, on CUDA
    python benchmarks/profile_step.py --mixers rope --variants contiguous --quick   # tiny, on the CPU

One step = forward, loss, backward, gradient clipping and fused AdamW, as the trainer runs it
(`torch.compile` of forward + loss, bf16 autocast on CUDA) but on random tokens already on the
device, so only the model is measured. For each case: the step time (CUDA events over `--steps`
steps after `--warm`), then a torch profile of 5 steps, its kernels summed by name (top
`--top`). A variant patches one suspect in the zoo's attention path for that case only:

    base         the code as it is
    contiguous   q, k, v made contiguous `[B, H, L, Dh]` before SDPA (does the rotation's output layout,
                 unlike v's, change SDPA's kernel?)
    blhd         q, k, v each copied to a `[B, L, H, Dh]`-contiguous layout (the same layout for all three)
    stacked      q, k, v written into one `[B, L, 3, H, Dh]` buffer, the layout of the fused projection
    inline       RoPE's cos/sin tables not materialised (Inductor may inline them into the rotation)
    separate     the q, k, v projections as three GEMMs instead of one over concatenated weights
    rotcat       RoPE's halves swapped by a concatenation instead of a flip
    rothalves    RoPE written per half, x1 cos - x2 sin and x2 cos + x1 sin, on half-width tables
    rotbf16      RoPE computed in the activations' dtype (as Hugging Face does), not in float32
    rotfn        RoPE as an autograd Function whose backward is the inverse rotation

Writes `<out>/profile_step.json` (per case: ms per step, tokens/s, top kernels) and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


@contextlib.contextmanager
def variant(name: str):
    import zoo.mixers.attention as att

    saved = (att._sdpa, att._materialize, att.Attention._qkv, att.apply_rotary)
    if name == "contiguous":
        att._sdpa = lambda q, k, v, **kw: F.scaled_dot_product_attention(
            q.contiguous(), k.contiguous(), v.contiguous(), **kw)
    elif name == "blhd":
        def blhd(t):
            return t.transpose(1, 2).contiguous().transpose(1, 2)
        att._sdpa = lambda q, k, v, **kw: F.scaled_dot_product_attention(blhd(q), blhd(k), blhd(v), **kw)
    elif name == "stacked":
        def stacked(q, k, v, **kw):
            q, k, v = (t.transpose(1, 2) for t in torch.stack([t.transpose(1, 2) for t in (q, k, v)], 2).unbind(2))
            return F.scaled_dot_product_attention(q, k, v, **kw)
        att._sdpa = stacked
    elif name == "inline":
        att._materialize = lambda t: t
    elif name == "separate":
        def qkv(self, x):
            return self._heads(self.wq(x)), self._heads(self.wk(x)), self._heads(self.wv(x))
        att.Attention._qkv = qkv
    elif name in ROTATIONS:
        att.apply_rotary = ROTATIONS[name]
    elif name != "base":
        raise SystemExit(f"unknown variant '{name}' (allowed: base, contiguous, blhd, stacked, inline, separate, "
                         f"{', '.join(ROTATIONS)})")
    try:
        yield
    finally:
        att._sdpa, att._materialize, att.Attention._qkv, att.apply_rotary = saved


def _rotcat(x, cos, sin):
    half = x.shape[-1] // 2
    xf = x.float()
    swapped = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + swapped * sin).to(x.dtype)


def _rothalves(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x.float().unflatten(-1, (2, half)).unbind(-2)
    c, s = cos[..., :half], sin[..., :half]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def _rotbf16(x, cos, sin):
    half = x.shape[-1] // 2
    swapped = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + swapped * sin.to(x.dtype)


from zoo.positional import apply_rotary  # noqa: E402


class _RotateFn(torch.autograd.Function):
    """The zoo's rotation with a backward written as the inverse rotation (R^T = R(-angle)),
    instead of the one autograd derives through the flip and the table's concatenation."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return apply_rotary(x, cos, sin)

    @staticmethod
    def backward(ctx, g):
        cos, sin = ctx.saved_tensors
        return apply_rotary(g, cos, -sin), None, None


def _rotfn(x, cos, sin):
    return _RotateFn.apply(x, cos, sin)


# the same rotation written four other ways (each checked against the zoo's in main)
ROTATIONS = {"rotcat": _rotcat, "rothalves": _rothalves, "rotbf16": _rotbf16, "rotfn": _rotfn}


def zoo_step(mixer: str, d: int, layers: int, heads: int, vocab: int, device):
    from zoo.model import ModelConfig
    from zoo.train.trainer import _loss_sum, build_model, param_groups

    model = build_model(ModelConfig(vocab_size=vocab, d_model=d, n_layers=layers, layers=[mixer],
                                    mixer_config={mixer: {"n_heads": heads}}), 0).to(device)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, fused=device.type == "cuda")
    bf16 = device.type == "cuda"

    def forward_loss(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        return _loss_sum(logits, y)

    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        model(torch.zeros(1, 16, dtype=torch.long, device=device))  # the mixers' lazy choices, as the trainer
    fn = torch.compile(forward_loss)

    def step(x, y):
        s, n = fn(x, y)
        (s / n.clamp(min=1)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def anchor_step(d: int, layers: int, heads: int, vocab: int, device):
    from train_throughput import AnchorGPT

    torch.manual_seed(0)
    model = AnchorGPT(vocab, d, layers, heads).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=device.type == "cuda")
    bf16 = device.type == "cuda"

    def forward_loss(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        return F.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1))

    fn = torch.compile(forward_loss)

    def step(x, y):
        fn(x, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure(step, batch, seq, vocab, warm, steps, top, device) -> dict:
    from zoo.bench.timing import Timer

    data = torch.randint(0, vocab, (4, batch, seq + 1), device=device)
    for i in range(warm):
        step(data[i % 4, :, :-1], data[i % 4, :, 1:])

    def run():
        for i in range(steps):
            step(data[i % 4, :, :-1], data[i % 4, :, 1:])

    seconds = Timer(device).time(run)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda"
                                                    else [])
    with torch.profiler.profile(activities=acts) as prof:
        for i in range(5):
            step(data[i % 4, :, :-1], data[i % 4, :, 1:])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    kernels: dict[str, list[float]] = {}
    for e in prof.events():
        on_device = e.device_type == torch.autograd.DeviceType.CUDA
        if on_device or (device.type != "cuda" and e.cpu_parent is None):
            k = kernels.setdefault(e.name, [0.0, 0])
            k[0] += (e.device_time if on_device else e.cpu_time) / 5 / 1e3
            k[1] += 1
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][0])
    return {"ms_per_step": 1e3 * seconds / steps, "tokens_per_s": batch * seq * steps / seconds,
            "kernel_ms_per_step": round(sum(v[0] for v in kernels.values()), 3),
            "top": [{"kernel": n[:160], "ms_per_step": round(v[0], 3), "calls_per_step": v[1] / 5}
                    for n, v in ranked[:top]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--mixers", default="nope,rope")
    ap.add_argument("--variants", default="base,contiguous,blhd,stacked,inline,separate",
                    help="applied to rope-family mixers")
    ap.add_argument("--shape", default="256x4", help="d_model x layers")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--warm", type=int, default=10)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CPU)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d, layers = (int(v) for v in args.shape.split("x"))
    heads, vocab = max(1, d // 64), 260
    if args.quick:
        d, layers, heads, args.batch, args.seq, args.warm, args.steps = 64, 2, 2, 2, 128, 2, 3

    from zoo.positional import rope_cos_sin, rope_inv_freq

    x = torch.randn(2, 3, 16, 64, device=device)
    cos, sin = rope_cos_sin(torch.arange(16, device=device), rope_inv_freq(64, 10000.0, device))
    for name, rot in ROTATIONS.items():
        torch.testing.assert_close(rot(x, cos, sin), apply_rotary(x, cos, sin), atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(rot(x.bfloat16(), cos, sin).float(), apply_rotary(x.bfloat16(), cos, sin).float(),
                                   atol=0.05, rtol=0.02, msg=name)
        xg, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        g = torch.randn_like(x)
        rot(xg, cos, sin).backward(g)
        apply_rotary(xr, cos, sin).backward(g)
        torch.testing.assert_close(xg.grad, xr.grad, atol=1e-5, rtol=1e-5, msg=f"{name} backward")

    cases = [("anchor", "base")]
    for m in args.mixers.split(","):
        for v in (args.variants.split(",") if m != "nope" else ["base"]):
            cases.append((m, v))
    rows = []
    for mixer, var in cases:
        torch._dynamo.reset()
        with variant(var):
            step = anchor_step(d, layers, heads, vocab, device) if mixer == "anchor" else \
                zoo_step(mixer, d, layers, heads, vocab, device)
            r = measure(step, args.batch, args.seq, vocab, args.warm, args.steps, args.top, device)
        row = {"mixer": mixer, "variant": var, "shape": f"d{d} x {layers}, {args.batch} x {args.seq}",
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", **r}
        rows.append(row)
        print(f"\n== {mixer} ({var}): {r['ms_per_step']:.2f} ms/step, {r['tokens_per_s'] / 1e6:.2f}M tokens/s, "
              f"kernels {r['kernel_ms_per_step']:.2f} ms/step", flush=True)
        for k in r["top"]:
            print(f"  {k['ms_per_step']:8.3f} ms  x{k['calls_per_step']:<5g} {k['kernel']}", flush=True)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "profile_step.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
