"""Training tokens/s of the zoo's trainer beside a minimal hand-written GPT, at the same shapes.

    python benchmarks/train_throughput.py --out benchmarks/results           # one GPU, < 8 minutes
    python benchmarks/train_throughput.py --out /tmp/tt --quick              # tiny sizes on the CPU

Cases, in this order (a case is skipped, and says so, when it would start after `--budget-s`
or when a case of its shape already took longer than what is left of `--limit-s`):
  d256 x 4 at 32 x 2048 on `lm`, `hashhop`, `mqar`; d768 x 12 at 32 x 2048 on `lm`;
  packed: 1, 2, 4 and 8 small runs (`hashhop`, d256 x 4 at 8 x 2048) at once on one GPU,
  each its own process, threads and data workers shared out as `zoo compare --runs-per-gpu`
  plans them; then d768 x 12 on `hashhop` and `mqar`.

The anchor (`AnchorGPT`, below): token embedding, pre-LayerNorm blocks of SDPA causal
attention and a GELU MLP (4d), tied head, fp32 cross-entropy, fused AdamW, torch.compile of
forward + loss, bf16 autocast on CUDA (fp32 on CPU, as the zoo trainer). Its batches are
random tokens already on the device: it pays nothing for data. The zoo side is a real run
through `zoo.train.trainer.train` (what `zoo train` calls) with the mixer of `--mixer`
(default `rope`: attention with RoPE, SwiGLU MLP of about the same width and FLOPs, RMSNorm),
the same vocabulary (260 bytes, 8192 for `mqar`), batch, length, precision and compile mode.

Timing, both sides: tokens = batch x length per step, the first `warm` steps (compilation,
autotuning, the data pipeline filling up) are excluded. The anchor times its remaining steps
between two `torch.cuda.synchronize()` with CUDA events; the zoo side is the trainer's own
log intervals (each closed by a synchronize), those after `warm`. Torch Dynamo's caches are
reset between cases, so no case inherits another's compiled code or recompile budget.

Writes `<out>/train_throughput_<gpu>.json`: a list of rows
  {"workload", "shape", "zoo_tokens_per_s", "anchor_tokens_per_s", "ratio", "device", ...}
with ratio = zoo / anchor. Packed rows ("hashhop packed xN") give the aggregate tokens/s of
the N runs as zoo_tokens_per_s, the one-run figure as baseline_tokens_per_s, ratio =
aggregate / baseline, and `overlap`: the share of the runs' mean wall time during which all
N were running (near 1: the aggregate is a real concurrent rate).
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
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(steps):
            step(i)
        end.record()
        sync(device)
        seconds = start.elapsed_time(end) / 1e3
    else:
        t = time.perf_counter()
        for i in range(steps):
            step(i)
        seconds = time.perf_counter() - t
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
    from zoo.train.launch import plan_slots

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="directory for the JSON")
    ap.add_argument("--quick", action="store_true", help="tiny sizes on the CPU: checks the script end to end")
    ap.add_argument("--mixer", default="rope", help="the zoo model's mixer")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode for both sides")
    ap.add_argument("--no-compile", action="store_true", help="eager on both sides (the default with --quick)")
    ap.add_argument("--budget-s", type=float, default=390.0, help="start no case after this many seconds")
    ap.add_argument("--limit-s", type=float, default=450.0, help="start no case expected to end after this")
    ap.add_argument("--packed", default=None, help="runs at once for the packed rows (default 1,2,4,8; 1,2 quick)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        child_main(a.child)
        return

    device = torch.device("cpu" if a.quick or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu":
        torch.set_num_threads(1)  # as the packed children's share: threads fighting over a few cores time nothing
    compile_on = not (a.no_compile or a.quick)
    if a.quick:  # (d, layers, heads), batch, seq, warm, steps, log_every
        small, big, packed_shape = (32, 2, 2), (48, 2, 2), ((32, 2, 2), 2, 256)
        batch, seq, warm, steps, log = 2, 256, 2, 4, 2
        big_warm, big_steps, p_warm, p_steps, p_log = 2, 4, 2, 6, 2
    else:
        small, big, packed_shape = (256, 4, 4), (768, 12, 12), ((256, 4, 4), 8, 2048)
        batch, seq, warm, steps, log = 32, 2048, 30, 120, 10
        big_warm, big_steps, p_warm, p_steps, p_log = 20, 40, 100, 600, 50
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"train_throughput_{gpu_slug(device)}.json"
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    rows: list[dict] = []
    anchors: dict[tuple, tuple[float, int]] = {}
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="zoo-tt-"))

    def shape_name(s, b, L):
        return f"d{s[0]}x{s[1]} b{b}x{L}"

    def write():
        path.write_text(json.dumps(rows, indent=1) + "\n")

    took: dict[str, float] = {}  # seconds of the last case of each shape

    def case(workload, shape, fn):
        used = time.time() - t0
        if used > a.budget_s or used + took.get(shape, 0.0) > a.limit_s:
            why = (f"past the {a.budget_s:.0f} s budget" if used > a.budget_s else
                   f"a {shape} case took {took[shape]:.0f} s, more than the {a.limit_s - used:.0f} s left")
            rows.append({"workload": workload, "shape": shape, "zoo_tokens_per_s": None, "anchor_tokens_per_s": None,
                         "ratio": None, "device": dev_name, "skipped": why})
            print(f"skip {workload} {shape}: {why}", flush=True)
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
        took[shape] = time.time() - t
        row = {"workload": workload, "shape": shape, **row, "device": dev_name, "mixer": a.mixer,
               "compile": a.compile_mode if compile_on else "off", "case_s": round(took[shape], 1)}
        rows.append(row)
        write()
        print(json.dumps(row), flush=True)

    def versus(task, shape, w, n):
        def fn():
            d, layers, heads = shape
            vocab = TASKS[task][1]
            key = (vocab, shape)
            if key not in anchors:
                anchors[key] = anchor_tokens_per_s(vocab, d, layers, heads, batch, seq, w, n, device, a.compile_mode,
                                                   compile_on)
                torch._dynamo.reset()
            anchor, anchor_params = anchors[key]
            run = zoo_run_config(task, d, layers, heads, batch, seq, w + n, log, a.mixer, a.compile_mode, compile_on,
                                 device)
            z = zoo_tokens_per_s(run, tmp / f"{task}-{d}", w)
            return {"zoo_tokens_per_s": z["tokens_per_s"], "anchor_tokens_per_s": anchor,
                    "ratio": z["tokens_per_s"] / anchor if z["tokens_per_s"] else None,
                    "zoo_params": z["params"], "anchor_params": anchor_params, "steps_timed": n}
        case(task, shape_name(shape, batch, seq), fn)

    def packed_case(n, baseline):
        def fn():
            (d, layers, heads), pb, pseq = packed_shape
            kw = dict(task="hashhop", d=d, layers=layers, heads=heads, batch=pb, seq=pseq, steps=p_steps,
                      log_every=p_log, mixer=a.mixer, compile_mode=a.compile_mode, compile_on=compile_on,
                      device=device)
            r = packed(n, kw, p_warm, tmp, cpus)
            if n == 1:
                baseline.append(r["tokens_per_s"])
            base = baseline[0] if baseline else None
            return {"zoo_tokens_per_s": r["tokens_per_s"], "anchor_tokens_per_s": None,
                    "baseline_tokens_per_s": base, "ratio": r["tokens_per_s"] / base if base else None,
                    "overlap": r["overlap"], "per_run": r["per_run"]}
        (d, layers, _), pb, pseq = packed_shape
        case(f"hashhop packed x{n}", f"d{d}x{layers} b{pb}x{pseq}", fn)

    print(f"{dev_name}: torch {torch.__version__}, {cpus} cores, writing {path}", flush=True)
    for task in ("lm", "hashhop", "mqar"):
        versus(task, small, warm, steps)
    versus("lm", big, big_warm, big_steps)
    baseline: list[float] = []
    for n in [int(x) for x in (a.packed or ("1,2" if a.quick else "1,2,4,8")).split(",") if x.strip()]:
        packed_case(n, baseline)
    for task in ("hashhop", "mqar"):
        versus(task, big, big_warm, big_steps)
    print(f"done in {time.time() - t0:.0f} s: {path}", flush=True)


if __name__ == "__main__":
    main()
