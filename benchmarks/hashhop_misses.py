"""Where a trained run's single-hop HashHop misses sit: each query scored (teacher forcing, the
evaluator's own samples and scoring) and split by how far its value lies behind the answer and
by whether the value straddles a retrieval chunk boundary.

    python benchmarks/hashhop_misses.py RUN_DIR --n-chars 720,1440,2880 [--samples 16] [--chunk 64]

Distances are in tokens (byte tokens: one per character), binned by multiples of the run's
training length, so a miss can be told apart as "past any distance training held" or not.
A value straddles when its 16 characters (or the run's hash length) cross a multiple of
--chunk tokens (HSA's chunk size; for other mixers the split is only descriptive).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from zoo.eval.hashhop import HashHopGrid, score_samples  # noqa: E402
from zoo.tasks.hashhop import answers  # noqa: E402
from zoo.train.checkpoint import load_model  # noqa: E402


def value_start(sample, key: str) -> int:
    """Text index of the first character of `key`'s quoted value in the prompt (single hop)."""
    at = sample.prompt.find(f"\n{key} = '")
    at = at + 1 if at >= 0 else sample.prompt.find(f"{key} = '")
    if at < 0:
        raise ValueError(f"key {key!r} not in the prompt as a quoted line")
    return at + len(key) + 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--n-chars", default="720,1440,2880")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=64, help="tokens per retrieval chunk")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    device = torch.device(a.device)
    model, rc = load_model(a.run_dir, device)
    hash_len = ((rc.get("task") or {}).get("config") or {}).get("hash_len") or 16
    train_len = (rc.get("train") or {}).get("seq_len") or 1024
    print(f"{a.run_dir}: trained at {train_len} tokens, hash length {hash_len}, chunks of {a.chunk}")
    for n_chars in (int(x) for x in a.n_chars.split(",")):
        grid = HashHopGrid(n_chars=[n_chars], hops=[1], hash_len=hash_len, samples=a.samples, queries=a.queries,
                           greedy_samples=0)
        groups: dict[tuple[str, bool], list[int]] = {}
        for s in grid.cell_samples(n_chars, 1, False, []):
            for q, ans in zip(score_samples(model, [s], device=device)[0], answers(s), strict=True):
                v = value_start(s, ans.key) + 1  # token index: <bos> first
                far = (ans.start - v) // train_len
                band = f"{far}x-{far + 1}x" if far < 2 else ">= 2x"
                straddles = v // a.chunk != (v + hash_len - 1) // a.chunk
                groups.setdefault((band, straddles), []).append(int(q.exact))
        total = sum(len(g) for g in groups.values())
        print(f"\n{n_chars} characters ({total} queries): exact / queries by distance from value to answer")
        for (band, straddles), hits in sorted(groups.items()):
            print(f"  {band:8s} {'straddling' if straddles else 'inside a chunk':15s} {sum(hits):3d} / {len(hits)}")


if __name__ == "__main__":
    main()
