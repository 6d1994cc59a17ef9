"""Training throughput of the shared trainer: a ~125M-parameter attention LM at 2K context.

    python benchmarks/train_mfu.py                    # H100: bf16 autocast, torch.compile, fused AdamW
    OUT=results python benchmarks/train_mfu.py --steps 80 --batch-size 32

Model: 12 layers, d_model 768, 12 heads of 64 (NoPE attention, its SDPA backend: flash or
cuDNN attention under bf16), SwiGLU hidden 3584, byte vocabulary padded from 260 to 384
(a multiple of 128 for the tied head's matmul): 127.7M parameters. Data: the `lm` task on
the Python standard library. The run goes through the real trainer (`zoo.train.trainer`),
with its per-step loss check, gradient clipping and logging.

Reported:
- tokens/s: the trainer's own measure, mean over the second half of the log intervals
  (the first interval holds compilation);
- MFU = model FLOPs/s / 989 TFLOP/s, the H100 SXM dense bf16 datasheet peak, with FLOPs
  from `ZooLM.flops_per_token` (6 x matmul parameters per token plus causal attention over
  the average context (L+1)/2, forward + backward = 3x forward);
- the same FLOPs/s divided by the measured ceiling: the median bf16 8192^3 matmul here;
- for comparison, MFU under the PaLM convention (Chowdhery et al. 2022, appendix B: 6N plus
  12 * layers * heads * head_dim * L per token, i.e. attention without the causal halving).

The last lines are a short table; JSON goes to $OUT/train_mfu.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

DATASHEET_TFLOPS = 989.0  # H100 SXM5 dense bf16


def matmul_ceiling(n: int = 8192, reps: int = 30) -> float:
    """Median bf16 n x n x n matmul throughput, FLOP/s, timed with CUDA events after warm-up."""
    from zoo.bench.timing import Timer

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    seconds = Timer("cuda").median(lambda: a @ b, warmup=5, reps=reps)
    a = b = None  # the operands leave the device before the training run
    torch.cuda.empty_cache()
    return 2 * n**3 / seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--n-layers", type=int, default=12)
    ap.add_argument("--n-heads", type=int, default=12)
    ap.add_argument("--mlp-hidden", type=int, default=3584)
    ap.add_argument("--vocab", type=int, default=384, help="padded vocabulary (the byte tokenizer uses 260)")
    ap.add_argument("--mixer", default="nope")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    from zoo.model import ModelConfig
    from zoo.store import Store
    from zoo.train.config import RunConfig, TaskRef, TrainConfig
    from zoo.train.trainer import train

    device_name = torch.cuda.get_device_name(0)
    ceiling = matmul_ceiling()
    print(f"device {device_name}; bf16 8192^3 matmul ceiling {ceiling / 1e12:.0f} TFLOP/s", flush=True)

    model = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.n_layers, layers=[args.mixer],
                        mixer_config={args.mixer: {"n_heads": args.n_heads}}, mlp_hidden=args.mlp_hidden)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                      seq_len=args.seq_len, lr=6e-4, warmup_steps=min(10, args.steps // 4), weight_decay=0.1,
                      precision="bf16", compile=not args.no_compile, device="cuda", log_every=args.log_every,
                      eval_batches=1, peak_tflops=DATASHEET_TFLOPS, keep_checkpoints=1)
    run = RunConfig(model=model, task=TaskRef(name="lm"), train=cfg, label=f"{args.mixer}-125m")
    with tempfile.TemporaryDirectory() as root:
        t0 = time.time()
        res = train(run, Store(root), progress=False)
        wall = time.time() - t0
        store = Store(root)
        tps_log = [r["value"] for r in store.metrics(res.run_id, "tokens_per_s") if r["value"] is not None]
        losses = [r["value"] for r in store.metrics(res.run_id, "loss")]

    s = res.summary
    m = res.model
    tokens_per_s = s["tokens_per_s"]
    fpt = m.flops_per_token(args.seq_len, training=True)
    achieved = tokens_per_s * fpt
    mfu = achieved / (DATASHEET_TFLOPS * 1e12)
    n_matmul = m.num_params() - sum(p.numel() for n, p in m.named_parameters() if p.dim() < 2)
    palm_fpt = 6 * n_matmul + 12 * args.n_layers * args.d_model * args.seq_len
    out = {
        "device": device_name, "torch": torch.__version__, "params": m.num_params(), "seq_len": args.seq_len,
        "batch_size": args.batch_size, "grad_accum": args.grad_accum, "steps": s["steps"],
        "compile": not args.no_compile, "backends": m.used_backends(), "tokens_per_s": tokens_per_s,
        "tokens_per_s_by_interval": tps_log, "flops_per_token": fpt, "achieved_tflops": achieved / 1e12,
        "peak_tflops": DATASHEET_TFLOPS, "mfu": mfu, "trainer_mfu": s["mfu"],
        "matmul_ceiling_tflops": ceiling / 1e12, "mfu_vs_ceiling": achieved / ceiling,
        "palm_flops_per_token": palm_fpt, "palm_mfu": tokens_per_s * palm_fpt / (DATASHEET_TFLOPS * 1e12),
        "peak_mem_gb": s["peak_mem_gb"], "first_loss": losses[0] if losses else None,
        "final_loss": s["final_loss"], "wall_s": wall,
    }
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["OUT"]) / "train_mfu.json").write_text(json.dumps(out, indent=2))
    print()
    print(f"{'model':<34}{m.num_params() / 1e6:.1f}M params, {args.n_layers} x d{args.d_model}, "
          f"{args.mixer} via {m.used_backends()}")
    print(f"{'batch':<34}{args.batch_size} x {args.seq_len} tokens x {args.grad_accum} accum, bf16, "
          f"compile={not args.no_compile}, fused AdamW")
    print(f"{'loss':<34}{out['first_loss']:.3f} -> {out['final_loss']:.3f} over {s['steps']} steps")
    print(f"{'tokens/s':<34}{tokens_per_s:,.0f}")
    print(f"{'achieved':<34}{achieved / 1e12:.1f} TFLOP/s ({fpt / 1e6:.0f} MFLOP/token)")
    print(f"{'MFU vs 989 TFLOP/s (datasheet)':<34}{100 * mfu:.1f}%")
    print(f"{'MFU vs measured matmul ceiling':<34}{100 * out['mfu_vs_ceiling']:.1f}% "
          f"(ceiling {ceiling / 1e12:.0f} TFLOP/s)")
    print(f"{'PaLM-convention MFU (989)':<34}{100 * out['palm_mfu']:.1f}%")
    print(f"{'peak memory':<34}{s['peak_mem_gb']:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
