"""What Inductor generates for one training step's forward + loss + backward: the zoo model
beside the minimal GPT of benchmarks/train_throughput.py, on the CPU (no GPU needed).

    python benchmarks/compile_census.py                       # rope, nope and the anchor, 1 layer
    python benchmarks/compile_census.py --mixers rope --code  # also print the generated code

Counts, per graph (forward, backward): fused kernels Inductor wrote, and calls it left to
extern kernels (matmuls, attention). Kernel names list the ops fused into each, so a
rotation that recomputes its cos/sin tables per element shows `cos`/`sin` in the kernel
that reads q and k. The CPU backend never fuses a concatenation into its consumer (CUDA
may); GEMM counts and what is computed where carry over to the GPU.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def census(name: str, d: int, layers: int, heads: int, batch: int, seq: int) -> list[tuple[str, list[str], dict]]:
    from torch._inductor.utils import run_and_get_code
    from train_throughput import AnchorGPT

    from zoo.model import ModelConfig, ZooLM
    from zoo.train.trainer import _loss_sum

    torch.manual_seed(0)
    vocab = 260
    if name == "anchor":
        model = AnchorGPT(vocab, d, layers, heads)

        def forward_loss(x, y):
            return F.cross_entropy(model(x).float().reshape(-1, vocab), y.reshape(-1), reduction="sum")
    else:
        model = ZooLM(ModelConfig(vocab_size=vocab, d_model=d, n_layers=layers, layers=[name],
                                  mixer_config={name: {"n_heads": heads}}))

        def forward_loss(x, y):  # as the trainer's, without autocast (the CPU trains in fp32)
            return _loss_sum(model(x), y)[0]

        with torch.no_grad():  # the trainer's eager priming forward
            model(torch.zeros(1, seq, dtype=torch.long))
    x, y = torch.randint(0, vocab, (batch, seq)), torch.randint(0, vocab, (batch, seq))
    compiled = torch.compile(forward_loss)
    _, codes = run_and_get_code(lambda: compiled(x, y).backward())
    out = []
    for graph, code in zip(("forward", "backward"), codes, strict=False):
        kernels = re.findall(r"^(cpp_fused_\w+) = ", code, re.M)
        calls = r"(extern_kernels\.\w+|(?:torch\.ops\.)?aten\.\w+\.\w+|torch\.ops\.\w+\.\w+\.\w+)\("
        externs = collections.Counter(re.findall(calls, code))
        out.append((graph, kernels, dict(externs), code))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixers", default="rope,nope", help="zoo mixers to compile beside the anchor")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--code", action="store_true", help="print the generated code too")
    a = ap.parse_args()
    torch.set_num_threads(1)
    for name in ["anchor", *[m.strip() for m in a.mixers.split(",") if m.strip()]]:
        torch._dynamo.reset()
        for graph, kernels, externs, code in census(name, a.d, a.layers, a.heads, 2, 256):
            print(f"{name:8s} {graph:8s} {len(kernels):3d} fused kernels, extern calls {externs}")
            for k in kernels:
                print(f"    {k}")
            if a.code:
                print(code)


if __name__ == "__main__":
    main()
