"""Milliseconds to build one training batch, per task, on one CPU core.

    python benchmarks/data_throughput.py                     # 32 x 2048, every task
    python benchmarks/data_throughput.py --batch 8 --seq-len 512 --repeats 3

Rows: `hashhop`, `mqar` and `lm` as the trainer draws them (`Task.batch`), and
`hashhop (make_one)`, the same rows built through the string generator (`HashHopTask.sample`
and `tokens_and_mask`, the stream before the array-built one). The process is pinned to one
core where the OS allows it, and torch to one thread. The first batch of each task is not
timed (the `lm` corpus is read then); the median of `--repeats` steps is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from zoo.tasks.base import IGNORE, get_task
from zoo.tasks.hashhop import sample_key, tokens_and_mask
from zoo.tasks.tokenizer import PAD


def make_one_batch(task, step: int, batch_size: int, seq_len: int) -> None:
    """A batch the way the stream built it from `make_one` strings."""
    tokens = torch.full((batch_size, seq_len), PAD, dtype=torch.long)
    targets = torch.full((batch_size, seq_len), IGNORE, dtype=torch.long)
    for row in range(batch_size):
        ids, mask = tokens_and_mask(task.sample(sample_key(0, "train", step, row), seq_len))
        ids_t = torch.tensor(ids)
        n = len(ids) - 1
        tokens[row, :n] = ids_t[:-1]
        targets[row, :n] = torch.where(torch.tensor(mask[1:]), ids_t[1:], IGNORE)


def time_ms(fn, repeats: int) -> float:
    fn(0)  # warm: corpus read, caches
    times = []
    for step in range(1, repeats + 1):
        t = time.perf_counter()
        fn(step)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", default=None, help="also write the rows here")
    a = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    B, L = a.batch, a.seq_len
    hashhop = get_task("hashhop")
    cases = {
        "hashhop": lambda s: hashhop.batch(s, B, L),
        "hashhop (make_one)": lambda s: make_one_batch(hashhop, s, B, L),
        "mqar": lambda s, t=get_task("mqar"): t.batch(s, B, L),
        "lm": lambda s, t=get_task("lm"): t.batch(s, B, L),
    }
    rows = []
    print(f"batch {B} x {L}, one core, median of {a.repeats}")
    print(f"{'task':<20} {'ms/batch':>9} {'Mtokens/s':>10}")
    for name, fn in cases.items():
        reps = max(1, a.repeats // 4) if "make_one" in name else a.repeats
        ms = time_ms(fn, reps)
        rows.append({"task": name, "batch": B, "seq_len": L, "ms_per_batch": ms, "tokens_per_s": B * L / ms * 1e3})
        print(f"{name:<20} {ms:9.2f} {B * L / ms / 1e3:10.2f}")
    s = hashhop.stats
    print(f"hashhop problems drawn {s.problems}, redrawn for a repeated hash {s.redrawn}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
