"""A trained run's held-out answer accuracy on its own task's training rows at other lengths: how far
past the rows it trained on a skill survives (the trainer's `eval_acc`, at lengths it never saw).

    python benchmarks/row_lengths.py RUN_DIR --lengths 256,320,384,512,1024 [--batches 8]

Rows come from the run's task at split "eval" (the trainer's held-out rows), weights from the run's
latest checkpoint, on --device. Accuracy is over answer positions, teacher-forced, with a Wilson
interval over those positions (they are not independent: a row's characters share a key, so the
interval is narrower than the truth) and the chance level of one answer character. It is given
twice: over every answer character, and over each answer's first character alone. Only the first
needs the key matched; the rest can be copied from the value the first one starts, so a model
that copies without matching keys scores near 1 - 1/17 on all characters and near 1/chains on the
first (the chance printed is a letter guessed). Scored by the trainer's own `held_out`; nothing is
stored. The HashHop evaluator (`zoo hashhop eval`) is the measure of record, but its prompt format
does not fit rows this short.
"""

from __future__ import annotations

import argparse
import sys

from zoo.errors import ZooError
from zoo.stats import wilson
from zoo.tasks.base import get_task
from zoo.train.checkpoint import load_model
from zoo.train.trainer import held_out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--lengths", required=True, help="row lengths in tokens, e.g. 256,512,1024")
    ap.add_argument("--batches", type=int, default=8, help="held-out batches per length")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    try:
        lengths = [int(x) for x in args.lengths.split(",")]
        model, cfg = load_model(args.run_dir, args.device)
        task = get_task(cfg["task"]["name"], cfg["task"].get("config"))
    except (ZooError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    chance = task.chance("first_accuracy")
    print(f"{'tokens':>7} {'answer acc':>10} {'95% interval':>15} {'loss':>7} {'positions':>9} "
          f"{'first-char acc':>14} {'95% interval':>15} {'answers':>7}" + (f"   chance {chance:.3f}" if chance else ""))
    for L in lengths:
        h = held_out(model, task, L, batches=args.batches, batch_size=args.batch_size,
                     seed=cfg["train"].get("seed", 0), device=args.device)
        lo, hi = wilson(h.correct, h.n)
        flo, fhi = wilson(h.first_correct, h.first_n) if h.first_n else (float("nan"), float("nan"))
        print(f"{L:>7} {h.correct / h.n:>10.3f} {f'[{lo:.3f}, {hi:.3f}]':>15} {h.loss_sum / h.n:>7.3f} {h.n:>9} "
              f"{h.first_correct / max(h.first_n, 1):>14.3f} {f'[{flo:.3f}, {fhi:.3f}]':>15} {h.first_n:>7}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
