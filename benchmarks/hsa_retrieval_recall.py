"""The `retrieval-recall` evaluator on one trained run, printed: per length, exact matches and, per
retrieval layer, the share of answer positions whose selected chunks hold the answer's chunk.

    python benchmarks/hsa_retrieval_recall.py RUN_DIR [--lengths 2048,8192,32768] [--samples 3] [--top-k 8]

RUN_DIR is a trained run with retrieval layers (e.g. of `benchmarks/hsa_hashhop.toml`); its final
weights run on --device (default cpu). What is measured is `zoo/eval/recall.py`; nothing is
stored. To store the rows and draw them in the report, give the experiment an
`[eval.retrieval-recall]` table and run `zoo compare` on it again (trained runs are only
evaluated).
"""

from __future__ import annotations

import argparse
import sys
import time

from zoo.errors import ZooError
from zoo.eval.base import EvalTarget, get_evaluator
from zoo.retrieval import require_retrieval_layers
from zoo.train.checkpoint import load_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--lengths", default="2048,4096,8192,16384,32768", help="n_chars per cell")
    ap.add_argument("--samples", type=int, default=3, help="samples per length")
    ap.add_argument("--queries", type=int, default=5, help="queries per sample")
    ap.add_argument("--hash-len", type=int, default=None, help="characters per hash (default: the run's task)")
    ap.add_argument("--top-k", type=int, default=None, help="override the trained top_k")
    ap.add_argument("--chunk-size", type=int, default=None, help="tokens per cached forward call")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    try:
        model, run_config = load_model(args.run_dir, args.device)
        require_retrieval_layers(model)
        hash_len = args.hash_len or ((run_config.get("task") or {}).get("config") or {}).get("hash_len") or 16
        ev = get_evaluator("retrieval-recall")
        config = ev.make_config({"n_chars": [int(v) for v in args.lengths.split(",")], "samples": args.samples,
                                 "queries": args.queries, "hash_len": hash_len, "top_k": args.top_k,
                                 "chunk_size": args.chunk_size})
        target = EvalTarget(model, run_config, args.device)
        for cell in ev.cells(config):
            t0 = time.time()
            rows = ev.evaluate(target, config, cell)
            print(f"{ev.note(cell, rows)} ({time.time() - t0:.0f} s)", flush=True)
            for r in rows:
                if r["status"] == "ok":
                    print(f"  layer {r['layer']}: {r['hits']}/{r['n']} = {r['recall']:.3f} "
                          f"[{r['low']:.3f}, {r['high']:.3f}], chance {r['chance']:.3f}, top-{r['top_k']}")
    except ZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
