"""Where a trained run's single-hop HashHop misses sit: each query scored (teacher forcing, the
evaluator's own samples and scoring) and split by how far its value lies behind the answer and
by whether the value straddles a retrieval chunk boundary.

    python benchmarks/hashhop_misses.py RUN_DIR --n-chars 720,1440,2880 [--samples 16] [--chunk 64]

Distances are in tokens (byte tokens: one per character), binned by multiples of the run's
training length, so a miss can be told apart as "past any distance training held" or not.
A value straddles when its characters and closing quote cross a multiple of --chunk tokens
(HSA's chunk size; `zoo.eval.recall.straddles`, as the retrieval-recall evaluator counts them;
for other mixers the split is only descriptive).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from zoo.eval.hashhop import HashHopGrid, score_samples  # noqa: E402
from zoo.eval.recall import straddles, value_sources  # noqa: E402
from zoo.tasks.hashhop import answers  # noqa: E402
from zoo.train.checkpoint import load_model  # noqa: E402


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
                src = value_sources(s, ans.key)  # prompt tokens the answer copies, closing quote included
                far = (ans.start - src[0]) // train_len
                band = f"{far}x-{far + 1}x" if far < 2 else ">= 2x"
                groups.setdefault((band, straddles(src, a.chunk)), []).append(int(q.exact))
        total = sum(len(g) for g in groups.values())
        print(f"\n{n_chars} characters ({total} queries): exact / queries by distance from value to answer")
        for (band, split), hits in sorted(groups.items()):
            print(f"  {band:8s} {'straddling' if split else 'inside a chunk':15s} {sum(hits):3d} / {len(hits)}")


if __name__ == "__main__":
    main()
