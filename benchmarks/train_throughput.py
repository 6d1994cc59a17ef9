"""Training tokens/s of the zoo's trainer beside a minimal hand-written GPT, at the same shapes.

    python benchmarks/train_throughput.py --out benchmarks/results           # one H100: about 5.5 minutes
    python benchmarks/train_throughput.py --out /tmp/tt --quick              # tiny sizes on the CPU

Cases, in this order (a case is skipped, and its row says why, when it would start after
`--budget-s` or is expected to end after `--limit-s`: expected = the last case of its kind,
else a prior; rows are written as they come, so a cut-off call keeps what it finished):
  1. d256 x 4 at 32 x 2048 on `lm`, `hashhop`, `mqar`, for each of `--mixers` (default
     `rope`, and `nope`: attention with no positions, the anchor's architectural equal), with
     torch.compile's default mode, then (on CUDA) with `train.compile_mode = reduce-overhead`
     (CUDA graphs);
  2. d768 x 12 at 32 x 2048 on `lm`, each mixer, both modes;
  3. packed (`--packed`, "" for none): 1, 2, 4, 8 tiny runs (`hashhop`, d128 x 2 at 8 x 1024:
     one run alone is launch-bound) and 1, 2, 4 small ones (d256 x 4 at 8 x 2048) at once on
     one GPU, each its own process, threads and data workers shared out as `zoo compare
     --runs-per-gpu` plans; on CUDA the tiny x1 and x4 again with CUDA graphs;
  4. d768 x 12 on `hashhop` and `mqar` (first mixer), if time is left.
The zoo side runs `train.compile_mode = default` unless the row says otherwise; the anchor
is always compiled with torch.compile's default mode.

The anchor (`AnchorGPT`, below): token embedding, pre-LayerNorm blocks of SDPA causal
attention and a GELU MLP (4d), tied head, fp32 cross-entropy, fused AdamW, torch.compile of
forward + loss, bf16 autocast on CUDA (fp32 on CPU, as the zoo trainer). Its batches are
random tokens already on the device: it pays nothing for data. The zoo side is a real run
through `zoo.train.trainer.train` (what `zoo train` calls) with each mixer of `--mixers`
(attention, SwiGLU MLP of about the same width and FLOPs, RMSNorm), the same vocabulary
(260 bytes, 8192 for `mqar`), batch, length and precision.

Timing, both sides: tokens = batch x length per step, the first `warm` steps (compilation,
autotuning, the data pipeline filling up) are excluded. The anchor times its remaining steps
between two `torch.cuda.synchronize()` with CUDA events; the zoo side is the trainer's own
log intervals (each closed by a synchronize), those after `warm`. Torch Dynamo's caches are
reset between cases, so no case inherits another's compiled code or recompile budget
(Inductor's on-disk cache does serve a graph compiled before: compilation is not timed).

Writes `<out>/train_throughput_<gpu>.json`: a list of rows
  {"workload", "shape", "mixer", "compile", "zoo_tokens_per_s", "anchor_tokens_per_s", "ratio", "device", ...}
with ratio = zoo / anchor. Packed rows ("hashhop packed xN") give the aggregate tokens/s of
the N runs as zoo_tokens_per_s, the one-run figure as baseline_tokens_per_s, ratio =
aggregate / baseline, and `overlap`: the share of the runs' mean wall time during which all
N were running (near 1: the aggregate is a real concurrent rate). At the end the rows are
printed as a markdown table for NOTES.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# -- the anchor: a minimal GPT ------------------------------------------------------------------------

class AnchorBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.fc, self.down = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, Dh]
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.down(F.gelu(self.fc(self.ln2(x))))


class AnchorGPT(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(AnchorBlock(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for b in self.blocks:
            x = b(x)
        return F.linear(self.ln(x), self.embed.weight)  # tied head


def anchor_tokens_per_s(vocab, d, layers, heads, batch, seq, warm, steps, device, compile_mode, compile_on):
    from zoo.bench.timing import Timer

    torch.manual_seed(0)
    model = AnchorGPT(vocab, d, layers, heads).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
    bf16 = device.type == "cuda"

    def forward_loss(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        return F.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1))

    fn = torch.compile(forward_loss, mode=None if compile_mode == "default" else compile_mode) if compile_on \
        else forward_loss
    data = torch.randint(0, vocab, (4, batch, seq + 1), device=device)

    def step(i):
        if compile_on and compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        w = data[i % 4]
        fn(w[:, :-1], w[:, 1:]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(warm):
        step(i)
    sync(device)
    def run() -> None:
        for i in range(steps):
            step(i)

    seconds = Timer(device).time(run)
    return batch * seq * steps / seconds, sum(p.numel() for p in model.parameters())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the zoo side: a real run through the trainer -----------------------------------------------------

TASKS = {"lm": ({}, 260), "hashhop": ({}, 260), "mqar": ({"vocab_size": 8192}, 8192)}


def zoo_run_config(task, d, layers, heads, batch, seq, steps, log_every, mixer, compile_mode, compile_on, device,
                   data_workers=None, seed=0):
    from zoo.model import ModelConfig
    from zoo.train.config import RunConfig, TaskRef, TrainConfig

    config, vocab = TASKS[task]
    return RunConfig(
        model=ModelConfig(vocab_size=vocab, d_model=d, n_layers=layers, layers=[mixer],
                          mixer_config={mixer: {"n_heads": heads}}),
        task=TaskRef(name=task, config=config),
        train=TrainConfig(steps=steps, batch_size=batch, seq_len=seq, lr=1e-3, seed=seed, log_every=log_every,
                          eval_batches=1, compile=compile_on, compile_mode=compile_mode, device=str(device),
                          data_workers=data_workers))


def zoo_tokens_per_s(run, root: Path, warm: int) -> dict:
    """Train `run` as `zoo train` does; tokens/s over the log intervals after `warm` steps."""
    from zoo.store import Store
    from zoo.train.trainer import train

    store = Store(root)
    res = train(run, store)
    rows = [r for r in store.metrics(res.run_id, "tokens_per_s") if r["step"] > warm and r["value"]]
    tokens = run.train.batch_size * run.train.seq_len * run.train.log_every
    seconds = sum(tokens / r["value"] for r in rows)
    prov = store.get_run(res.run_id)["provenance"]
    return {"tokens_per_s": len(rows) * tokens / seconds if rows else None, "params": res.summary["params"],
            "intervals": len(rows), "started": prov.get("started"), "finished": prov.get("finished")}


def child_main(arg: str) -> None:
    """One packed run in its own process: prints its result as one JSON line."""
    job = json.loads(arg)
    from zoo.train.config import RunConfig

    out = zoo_tokens_per_s(RunConfig.model_validate(job["run"]), Path(job["root"]), job["warm"])
    print("RESULT " + json.dumps(out), flush=True)


def packed(n, run_kw, warm, root: Path, cpus: int) -> dict:
    """`n` runs (seeds 0..n-1) started together as separate processes on one GPU."""
    from zoo.experiment.launch import plan_slots

    procs = []
    for i, slot in enumerate(plan_slots(["0"], n, cpus=cpus)):
        run = zoo_run_config(**run_kw, data_workers=slot.data_workers, seed=i)
        job = {"run": run.model_dump(), "root": str(root / f"packed{n}-{i}"), "warm": warm}
        env = {**os.environ, "OMP_NUM_THREADS": str(slot.threads)}
        procs.append(subprocess.Popen([sys.executable, __file__, "--child", json.dumps(job)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = []
    for p in procs:
        out, _ = p.communicate()
        line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        if p.returncode != 0 or not line:
            raise RuntimeError(f"packed run exited {p.returncode}: {out.strip().splitlines()[-1:]}")
        results.append(json.loads(line[-1][7:]))
    together = min(r["finished"] for r in results) - max(r["started"] for r in results)
    mean_wall = sum(r["finished"] - r["started"] for r in results) / n
    return {"tokens_per_s": sum(r["tokens_per_s"] for r in results), "overlap": max(0.0, together) / mean_wall,
            "per_run": [r["tokens_per_s"] for r in results]}


# -- the plan ---------------------------------------------------------------------------------------

def gpu_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    m = re.search(r"(gh200|h200|h100|b200|a100|l40s|l4|a10g)", name)
    return m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def summary_table(rows: list[dict]) -> str:
    """The rows as a markdown table, for NOTES.md."""
    def m(x):
        return "-" if x is None else f"{x / 1e6:.3f}M"

    out = ["| workload | shape | mixer | compile | zoo tok/s | anchor (or one run) tok/s | ratio | note |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = r.get("anchor_tokens_per_s") or r.get("baseline_tokens_per_s")
        note = r.get("skipped") or r.get("error") or (f"overlap {r['overlap']:.2f}" if "overlap" in r else "")
        ratio = "-" if r.get("ratio") is None else f"{r['ratio']:.2f}"
        out.append(f"| {r['workload']} | {r['shape']} | {r.get('mixer', '-')} | {r.get('compile', '-')} | "
                   f"{m(r.get('zoo_tokens_per_s'))} | {m(base)} | {ratio} | {note} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="directory for the JSON")
    ap.add_argument("--quick", action="store_true", help="tiny sizes on the CPU: checks the script end to end")
    ap.add_argument("--mixers", default="rope,nope", help="the zoo model's mixers, each beside the anchor")
    ap.add_argument("--no-compile", action="store_true", help="eager on both sides (the default with --quick)")
    ap.add_argument("--budget-s", type=float, default=285.0, help="start no case after this many seconds")
    ap.add_argument("--limit-s", type=float, default=330.0,
                    help="start no case expected (from its kind's last time, or a prior) to end after this")
    ap.add_argument("--packed", default=None, help="runs at once for the tiny packed rows (default 1,2,4,8; 1,2 "
                    "quick); the small packed rows take those up to 4")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        child_main(a.child)
        return

    device = torch.device("cpu" if a.quick or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu":
        torch.set_num_threads(1)  # as the packed children's share: threads fighting over a few cores time nothing
    compile_on = not (a.no_compile or a.quick)
    mixers = [m.strip() for m in a.mixers.split(",") if m.strip()]
    # (d, layers, heads), batch, seq, warm, steps, log_every
    if a.quick:
        small, big = (32, 2, 2), (48, 2, 2)
        batch, seq, warm, steps, log = 2, 256, 2, 4, 2
        big_warm, big_steps = 2, 4
        tiny_p = ((16, 2, 2), 2, 256, 2, 6, 2)  # shape, batch, seq, warm, steps, log_every
        small_p = ((32, 2, 2), 2, 256, 2, 6, 2)
    else:
        small, big = (256, 4, 4), (768, 12, 12)
        batch, seq, warm, steps, log = 32, 2048, 20, 100, 10
        big_warm, big_steps = 10, 30
        # tiny: one run is launch-bound (its GPU mostly idle); small: the first round's packed shape
        tiny_p = ((128, 2, 2), 8, 1024, 200, 3000, 100)
        small_p = ((256, 4, 4), 8, 2048, 100, 700, 50)
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"train_throughput_{gpu_slug(device)}.json"
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    rows: list[dict] = []
    anchors: dict[tuple, tuple[float, int]] = {}
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="zoo-tt-"))
    mode_off = "off"

    def shape_name(s, b, L):
        return f"d{s[0]}x{s[1]} b{b}x{L}"

    def write():
        path.write_text(json.dumps(rows, indent=1) + "\n")

    took: dict[str, float] = {}  # seconds of the last case of each kind

    def case(workload, shape, mixer, mode, kind, prior, fn):
        """Run `fn` unless past the budget or expected (the last `kind` case's time, else `prior`
        seconds) to end past the limit; the row is written either way."""
        used, expect = time.time() - t0, took.get(kind, prior)
        base = {"workload": workload, "shape": shape, "mixer": mixer, "compile": mode, "device": dev_name}
        if used > a.budget_s or used + expect > a.limit_s:
            why = (f"past the {a.budget_s:.0f} s budget" if used > a.budget_s else
                   f"expected to take {expect:.0f} s, {a.limit_s - used:.0f} s left of the limit")
            rows.append({**base, "zoo_tokens_per_s": None, "anchor_tokens_per_s": None, "ratio": None,
                         "skipped": why})
            print(f"skip {workload} {shape} {mixer} {mode}: {why}", flush=True)
            write()
            return
        torch._dynamo.reset()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        t = time.time()
        try:
            row = fn()
        except Exception as e:  # one failed case must not cost the others
            row = {"zoo_tokens_per_s": None, "anchor_tokens_per_s": None, "ratio": None,
                   "error": f"{type(e).__name__}: {str(e)[:300]}"}
        took[kind] = time.time() - t
        row = {**base, **row, "case_s": round(took[kind], 1)}
        rows.append(row)
        write()
        print(json.dumps(row), flush=True)

    def versus(task, shape, w, n, mixer, mode, prior):
        d, layers, heads = shape
        vocab = TASKS[task][1]
        on = compile_on and mode != mode_off

        def fn():
            key = (vocab, shape)
            if key not in anchors:  # the anchor as the issue defines it: default torch.compile
                anchors[key] = anchor_tokens_per_s(vocab, d, layers, heads, batch, seq, w, n, device, "default",
                                                   compile_on)
                torch._dynamo.reset()
            anchor, anchor_params = anchors[key]
            run = zoo_run_config(task, d, layers, heads, batch, seq, w + n, log, mixer, mode if on else "default",
                                 on, device)
            z = zoo_tokens_per_s(run, tmp / f"{task}-{d}-{mixer}-{mode}", w)
            return {"zoo_tokens_per_s": z["tokens_per_s"], "anchor_tokens_per_s": anchor,
                    "ratio": z["tokens_per_s"] / anchor if z["tokens_per_s"] else None,
                    "zoo_params": z["params"], "anchor_params": anchor_params, "steps_timed": n}
        case(task, shape_name(shape, batch, seq), mixer, mode if on else mode_off, f"{d}-{mixer}-{mode}", prior, fn)

    baselines: dict[tuple, float] = {}

    def packed_case(n, spec, mixer, mode, prior):
        (d, layers, heads), pb, pseq, p_warm, p_steps, p_log = spec
        on = compile_on and mode != mode_off
        shape = f"d{d}x{layers} b{pb}x{pseq}"

        def fn():
            kw = dict(task="hashhop", d=d, layers=layers, heads=heads, batch=pb, seq=pseq, steps=p_steps,
                      log_every=p_log, mixer=mixer, compile_mode=mode if on else "default", compile_on=on,
                      device=device)
            r = packed(n, kw, p_warm, tmp / f"{shape}-{mode}".replace(" ", "-"), cpus)
            if n == 1:
                baselines[(shape, mode)] = r["tokens_per_s"]
            base = baselines.get((shape, mode))
            return {"zoo_tokens_per_s": r["tokens_per_s"], "anchor_tokens_per_s": None,
                    "baseline_tokens_per_s": base, "ratio": r["tokens_per_s"] / base if base else None,
                    "overlap": r["overlap"], "per_run": r["per_run"]}
        case(f"hashhop packed x{n}", shape, mixer, mode if on else mode_off, f"packed-{d}-{n}-{mode}", prior, fn)

    print(f"{dev_name}: torch {torch.__version__}, {cpus} cores, writing {path}", flush=True)
    # priors: seconds a case of each kind is expected to take on an H100, compilation included
    graphs = device.type == "cuda" and compile_on  # CUDA graphs (reduce-overhead) need both
    if not graphs:
        print("no reduce-overhead rows: CUDA graphs need CUDA and compilation", flush=True)
    modes = ["default", "reduce-overhead"] if graphs else ["default"]
    for mode in modes:
        for task in ("lm", "hashhop", "mqar"):
            for mixer in mixers:
                versus(task, small, warm, steps, mixer, mode, 30 if mode == "default" else 40)
    for mode in modes:
        for mixer in mixers:
            versus("lm", big, big_warm, big_steps, mixer, mode, 45 if mode == "default" else 55)
    counts = [int(x) for x in (a.packed if a.packed is not None else ("1,2" if a.quick else "1,2,4,8")).split(",")
              if x.strip()]
    for n in counts:
        packed_case(n, tiny_p, mixers[0], "default", 30)
    for n in [c for c in counts if c <= 4]:
        packed_case(n, small_p, mixers[0], "default", 30)
    if graphs:
        for n in [c for c in counts if c in (1, 4)]:
            packed_case(n, tiny_p, mixers[0], "reduce-overhead", 40)
    for task in ("hashhop", "mqar"):
        versus(task, big, big_warm, big_steps, mixers[0], "default", 45)
    print(summary_table(rows), flush=True)
    print(f"done in {time.time() - t0:.0f} s: {path}", flush=True)


if __name__ == "__main__":
    main()
