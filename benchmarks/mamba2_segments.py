"""mamba2's forward at 1M tokens (batch 1, d_model 1024, bf16) by the segment length of its
split kernel calls, beside one 128K call whole and through a cache, and where the 1M forward
spends its GPU time (torch profiler, top kernels).

    python benchmarks/mamba2_segments.py [--tokens 1048576] [--segments 65536,131072,262144]

mamba_ssm's kernels offset pointers in int32, so `Mamba2` splits any call past
`kernel_tokens()` (490K tokens at d_model 1024); the default split takes the largest segments
that fit. CUDA with mamba_ssm only.
"""

from __future__ import annotations

import argparse

import torch

import zoo.mixers.mamba2 as mod
from zoo.bench.timing import Timer
from zoo.registry import build_mixer


def median_ms(fn, n: int = 5) -> float:
    return Timer("cuda").median(fn, warmup=1, reps=n) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=2**20)
    ap.add_argument("--segments", default="65536,131072,262144", help="forced segment lengths, besides the default")
    args = ap.parse_args()
    m = build_mixer("mamba2", 1024, {"backend": "mamba_ssm"}).cuda().bfloat16()
    x = torch.randn(1, args.tokens, 1024, device="cuda", dtype=torch.bfloat16)
    per_token, limit = mod.INT32_ELEMENTS // m.kernel_tokens(), mod.INT32_ELEMENTS
    with torch.no_grad():
        for seg in [int(s) for s in args.segments.split(",") if s] + [None]:
            mod.INT32_ELEMENTS = limit if seg is None else per_token * seg  # kernel_tokens() = seg
            label = f"{seg} (forced)" if seg else f"{m.kernel_tokens()} (default)"
            print(f"segments of {label}: {args.tokens} tokens fwd {median_ms(lambda: m(x)):.1f} ms", flush=True)
        mod.INT32_ELEMENTS = limit
        part = x[:, :2**17].contiguous()
        cache = m.new_cache(1, x.device, x.dtype)

        def cached():
            cache.pos = 0
            cache.ssm.zero_()
            cache.conv.zero_()
            m(part, cache)

        print(f"131072 tokens in one call: {median_ms(lambda: m(part)):.2f} ms; through a cache: "
              f"{median_ms(cached):.2f} ms")
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as p:
            m(x)
            torch.cuda.synchronize()
    print(f"{args.tokens} tokens fwd, default segments, GPU time by kernel:")
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=10, max_name_column_width=60))


if __name__ == "__main__":
    main()
