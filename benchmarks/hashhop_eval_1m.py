"""HashHop evaluation of one 1M-character sample with small (~5M parameter) models on one GPU.

For each mixer (default: `nope` attention plus every registered linear-time mixer):
1. check: teacher-forced scores of an 8K-character sample, fast backends run chunk by chunk
   through the caches under bf16 autocast, against the torch reference in fp32 in one pass:
   answer-token NLL within 2%, and the same count of correct answer tokens for >= 80% of
   the queries (an untrained model's logits are nearly flat, so bf16 may flip near-ties);
2. time: the whole evaluation of one sample at `--n-chars` (generation, tokenization, the
   chunked forward over ~1.06M tokens, teacher-forced scoring of 5 queries and greedy
   decoding of each), after a warm-up at 20K characters; wall clock, peak GPU memory.

    python benchmarks/hashhop_eval_1m.py                       # nope + linear-time mixers
    python benchmarks/hashhop_eval_1m.py --mixers nope,mamba --n-chars 1000000

Prints a table last; writes hashhop_eval_1m.json into $OUT when set. Target: < 60 s each.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from zoo import registry
from zoo.eval.hashhop import HashHopGrid, evaluate, score_samples
from zoo.model import ModelConfig, ZooLM
from zoo.tasks import hashhop as hh

D_MODEL, N_LAYERS = 256, 6  # ~4.9M parameters with attention


def model_for(name: str, backend: str = "auto") -> ZooLM:
    spec = registry.get_spec(name)
    cfg: dict = {"backend": backend}
    if spec.family == "attention":
        cfg["n_heads"] = 4
    torch.manual_seed(0)
    return ZooLM(ModelConfig(d_model=D_MODEL, n_layers=N_LAYERS, layers=[name], mixer_config={name: cfg}))


def check(name: str, device: torch.device, n_chars: int) -> dict:
    fast = model_for(name).to(device)
    ref = model_for(name, backend="torch").to(device)
    ref.load_state_dict(fast.state_dict())
    s = hh.generate(n_chars, 5, 2, 16, seed=1)
    got = [(q.chars_ok, q.nll) for q in score_samples(fast, [s], chunk_size=1024, device=device)[0]]
    want = reference_scores(ref, s, device)
    same = sum(a[0] == b[0] for a, b in zip(got, want, strict=True)) / len(got)
    rel = abs(sum(a[1] for a in got) - sum(b[1] for b in want)) / sum(b[1] for b in want)
    return {"nll_rel_err": rel, "queries_same_correct_count": same, "backends": fast.used_backends(),
            "ok": rel < 0.02 and same >= 0.8}


def reference_scores(model: ZooLM, s: hh.HashHopSample, device: torch.device) -> list[tuple[int, float]]:
    """(correct answer tokens, summed NLL) per query from one fp32 pass on the torch backend."""
    ids, _ = hh.tokens_and_mask(s)
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]], device=device)).float()[0]
    out = []
    for a in hh.answers(s):
        gold = torch.tensor(ids[a.start + 1:a.end + 1], device=device)
        lg = logits[a.start:a.end]
        out.append((int((lg.argmax(-1) == gold).sum()), float(-lg.log_softmax(-1).gather(1, gold[:, None]).sum())))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_eval(name: str, device: torch.device, n_chars: int, warmup_chars: int, chunk: int) -> dict:
    model = model_for(name).to(device)
    params = sum(p.numel() for p in model.parameters())
    warm = HashHopGrid(n_chars=[warmup_chars], hops=[2], samples=1, queries=5, greedy_samples=1, chunk_size=chunk)
    evaluate(model, warm)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    grid = HashHopGrid(n_chars=[n_chars], hops=[2], samples=1, queries=5, greedy_samples=1, chunk_size=chunk,
                       seed=7)
    gen = time.perf_counter()
    next(grid.cell_samples(n_chars, 2, False))  # generation alone, for the breakdown
    gen = time.perf_counter() - gen
    t0 = time.perf_counter()
    res = evaluate(model, grid)
    sync(device)
    total = time.perf_counter() - t0
    cell = res["cells"][0]
    return {"mixer": name, "params": params, "tokens": cell["length"], "status": cell["status"],
            "reason": cell.get("reason"), "seconds": total, "generate_s": gen,
            "tokens_per_s": cell["length"] / total,
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0,
            "accuracy": cell.get("accuracy"), "greedy_agreement": cell.get("greedy_agreement"),
            "backends": model.used_backends()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixers", default=None, help="comma-separated registry names")
    ap.add_argument("--n-chars", type=int, default=1_000_000)
    ap.add_argument("--chunk-size", type=int, default=8192)
    ap.add_argument("--warmup-chars", type=int, default=20_000)
    ap.add_argument("--check-chars", type=int, default=8_000)
    ap.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (a smoke run at tiny sizes)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.mixers:
        names = args.mixers.split(",")
    else:
        names = ["nope"] + [s.name for s in registry.specs() if s.capabilities.cost in ("O(L)", "O(L log L)")]
    rows = []
    for name in names:
        row: dict = {"mixer": name}
        try:
            row["check"] = check(name, device, args.check_chars)
            row.update(timed_eval(name, device, args.n_chars, args.warmup_chars, args.chunk_size))
        except Exception as e:  # one mixer failing must not hide the others' numbers
            row.update(status="error", reason=f"{type(e).__name__}: {e}"[:300])
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = {"device": dev_name, "torch": torch.__version__, "n_chars": args.n_chars,
           "chunk_size": args.chunk_size, "rows": rows}
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "hashhop_eval_1m.json"), "w") as f:
            json.dump(out, f, indent=1)
    print(f"\nHashHop, one {args.n_chars:,}-character sample (2 hops, 5 queries, greedy on), {out['device']}")
    print(f"{'mixer':<12} {'params':>8} {'tokens':>9} {'seconds':>8} {'gen s':>6} {'tok/s':>9} {'peak GiB':>9} "
          f"{'check':>6}  status")
    for r in rows:
        ok = r.get("check", {}).get("ok")
        if "seconds" in r:
            print(f"{r['mixer']:<12} {r['params'] / 1e6:>7.2f}M {r['tokens']:>9} {r['seconds']:>8.1f} "
                  f"{r['generate_s']:>6.1f} {r['tokens_per_s']:>9.0f} {r['peak_gib']:>9.1f} {str(ok):>6}  "
                  f"{r['status']}{' (' + r['reason'] + ')' if r.get('reason') else ''}"
                  f"{'' if r['seconds'] < 60 else '  OVER 60 s'}")
        else:
            print(f"{r['mixer']:<12} {'-':>8} {'-':>9} {'-':>8} {'-':>6} {'-':>9} {'-':>9} {str(ok):>6}  "
                  f"{r['status']} ({r['reason']})")


if __name__ == "__main__":
    main()
