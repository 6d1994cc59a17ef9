"""Where a trained HSA model's HashHop accuracy goes with length: for every answer character's
query, is the chunk holding the answer among the top-K chunks each `hsa` layer selected?

    python benchmarks/hsa_retrieval_recall.py RUN_DIR [--lengths 2048,8192,32768] [--samples 3] [--top-k 8]

RUN_DIR is a trained run of `benchmarks/hsa_hashhop.toml` (its final weights). Runs on CPU
through the torch reference, the evaluator's chunked cache path and its samples (split "eval",
seed 0); prints, per length, exact matches and per hsa layer the fraction of answer queries whose
selected chunks include the answer's chunk (a value spans at most two 64-token chunks).
"""

from __future__ import annotations

import argparse
import time

import torch

import zoo.mixers.hsa as hsa_mod
from zoo.eval.hashhop import HashHopGrid, score_samples
from zoo.tasks.hashhop import answers
from zoo.train.checkpoint import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--lengths", default="2048,4096,8192,16384,32768", help="n_chars per cell")
    ap.add_argument("--samples", type=int, default=3, help="samples per length (5 queries each)")
    ap.add_argument("--top-k", type=int, default=None, help="override the trained top_k")
    args = ap.parse_args()

    model, _ = load_model(args.run_dir)
    layers = [m for m in model.mixers if m.spec.name == "hsa"]
    if args.top_k is not None:
        for m in layers:
            m.top_k = args.top_k
    S = layers[0].chunk_size
    picked: list[tuple[int, int, torch.Tensor]] = []  # (layer, first position, ids [L, K]) of every call
    select = hsa_mod.HSA.select

    def recording(self, qr, lmk, start, backend="torch"):
        out = select(self, qr, lmk, start, backend)
        picked.append((self.layer_idx, start, out[0][0, :, 0]))  # batch 0, KV head 0
        return out

    hsa_mod.HSA.select = recording
    for n_chars in (int(v) for v in args.lengths.split(",")):
        grid = HashHopGrid(n_chars=[n_chars], hops=[1], hash_len=16, samples=args.samples, queries=5,
                           greedy_samples=0)
        hit: dict[int, int] = {}
        seen: dict[int, int] = {}
        exact = asked = 0
        t0 = time.time()
        for sample in grid.cell_samples(n_chars, 1, False):
            picked.clear()
            scores = score_samples(model, [sample], chunk_size=2048)[0]
            exact += sum(s.exact for s in scores)
            asked += len(scores)
            for a in answers(sample):
                first = sample.text.index(a.key + " = ") + len(a.key) + 5  # the value's first token (after <bos>)
                want = {first // S, (first + len(a.target)) // S}
                for pos in range(a.start, a.end):  # the positions whose next token is an answer token
                    for layer, start, ids in picked:
                        if start <= pos < start + len(ids):
                            hit[layer] = hit.get(layer, 0) + bool(set(ids[pos - start].tolist()) & want)
                            seen[layer] = seen.get(layer, 0) + 1
        per_layer = ", ".join(f"layer {k} {hit[k] / seen[k]:.3f}" for k in sorted(seen))
        print(f"n_chars {n_chars}: exact {exact}/{asked}; answer chunk in the top-{layers[0].top_k}: {per_layer} "
              f"({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
