"""Training step time of a tiny model on CPU by torch thread count.

    python benchmarks/cpu_threads.py [--d-models 64,256] [--threads 1,2] [--rounds 3]

One ZooLM (rope, 2 layers) per width, HashHop batches of 32 x 96 tokens; the thread counts are
interleaved round by round so that a change in the machine's load hits each alike. Prints the
median wall time per step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from zoo.model import ModelConfig, ZooLM
from zoo.tasks.base import get_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-models", default="64,256")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    task = get_task("hashhop", {"hops": [1], "hash_len": 2})
    batches = [task.batch(i, 32, 96) for i in range(a.steps + 1)]
    for d in (int(x) for x in a.d_models.split(",")):
        model = ZooLM(ModelConfig(d_model=d, n_layers=2, layers=["rope"], mixer_config={"rope": {"n_heads": 4}}))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(b, model=model, opt=opt) -> None:
            loss = F.cross_entropy(model(b.tokens).flatten(0, 1), b.targets.flatten(), ignore_index=-100)
            loss.backward()
            opt.step()
            opt.zero_grad()

        times: dict[int, list[float]] = {}
        for _ in range(a.rounds):
            for n in (int(x) for x in a.threads.split(",")):
                torch.set_num_threads(n)
                step(batches[0])
                t0 = time.perf_counter()
                for b in batches[1:]:
                    step(b)
                times.setdefault(n, []).append((time.perf_counter() - t0) / a.steps)
        for n, ts in times.items():
            print(f"d_model {d}, {n} thread(s): {1e3 * statistics.median(ts):.0f} ms/step "
                  f"(rounds: {', '.join(f'{1e3 * t:.0f}' for t in ts)})", flush=True)


if __name__ == "__main__":
    main()
