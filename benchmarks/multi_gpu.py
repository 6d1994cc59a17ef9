"""Two GPUs against one: one run with DDP (and FSDP2), and a parallel sweep.

    python benchmarks/multi_gpu.py          # a machine with >= 2 GPUs; results under $OUT (or ./multi_gpu_out)
    python benchmarks/multi_gpu.py --smoke  # the same steps at toy size on CPU processes (checks the script)
    python benchmarks/multi_gpu.py --part sweep   # one part only (--part train: part 1)

Part 1, one run across GPUs (`zoo train --nproc 2`): the same run (a compute-bound ~400M
parameter attention LM, global batch 16 x 2048 bytes, bf16 autocast) trained on one GPU, with
DDP on two and with FSDP2 on two. Throughput is the trainer's steady-state tokens/s (the
second half of its log intervals, all GPUs together); the curves are compared step by step
(loss and gradient norm; bf16 GEMMs of different shapes round differently, hence the
tolerance; the exact check is tests/test_distributed.py in fp32 on CPU).

Part 2, a parallel sweep (`zoo compare --gpus`): eight equal runs (seeds) of a ~100M model,
400 steps each (about half a minute: start-up and compilation are paid once per worker, as in
a sweep of real runs, which last far longer), through the same launcher with one GPU and with
two; throughput ratio = wall time of the whole command on one GPU / on two, start-up included.

Targets: >= 1.7x for DDP, >= 1.8x for the sweep. NCCL_NVLS_ENABLE=0 and
TORCH_SYMM_MEM_DISABLE_MULTICAST=1 are set for every process (NVLink multicast stays off).
Writes multi_gpu.json, the stores (one per configuration, since equal runs share an id) and
the logs under $OUT; prints a table last.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = Path(os.environ.get("OUT") or "multi_gpu_out")
os.environ["NCCL_NVLS_ENABLE"] = "0"
os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "PYTHONUNBUFFERED": "1"}
SMOKE = "--smoke" in sys.argv
PART = sys.argv[sys.argv.index("--part") + 1] if "--part" in sys.argv else "all"
N_SWEEP = 8
CORPUS = ["--set", "task.config.max_bytes=8388608"]  # 8 MB of the standard library's sources: quick to load

# part 1: d_model 2048, 8 layers of attention (no positional encoding, SDPA), ~400M parameters
RUN = ["--mixer", "nope", "--d-model", "2048", "--n-layers", "8", "--task", "lm", "--steps", "40",
       "--batch-size", "16", "--seq-len", "2048", "--lr", "3e-4", "--warmup", "5", "--no-progress",
       "--set", "model.mixer_config.nope.n_heads=16", "--set", "train.log_every=5",
       "--set", "train.eval_batches=2", *CORPUS]
if SMOKE:
    RUN = ["--mixer", "nope", "--d-model", "32", "--n-layers", "2", "--task", "lm", "--steps", "6", "--batch-size",
           "4", "--seq-len", "64", "--lr", "3e-4", "--warmup", "2", "--no-progress", "--device", "cpu",
           "--set", "model.mixer_config.nope.n_heads=2", "--set", "train.log_every=2", "--set", "train.eval_batches=1",
           "--set", "task.config.max_bytes=1048576", "--set", "train.threads=1"]

SWEEP = """
name = "multi-gpu-sweep"
description = "eight equal runs (seeds) to time the parallel launcher"
mixers = ["nope"]

[model]
d_model = 1024
n_layers = 8

[model.mixer_config]
nope = { n_heads = 8 }

[task]
name = "lm"
config = { max_bytes = 8388608 }

[train]
steps = 400
batch_size = 16
seq_len = 2048
lr = 3e-4
warmup_steps = 10
log_every = 25
eval_batches = 2

[sweep]
seed = [0, 1, 2, 3, 4, 5, 6, 7]
"""
if SMOKE:
    SWEEP = (SWEEP.replace("d_model = 1024", "d_model = 32").replace("n_heads = 8", "n_heads = 2")
             .replace("steps = 400", "steps = 4").replace("seq_len = 2048", "seq_len = 64")
             .replace("batch_size = 16", "batch_size = 2").replace("max_bytes = 8388608", "max_bytes = 1048576")
             .replace("eval_batches = 2", "eval_batches = 1\nthreads = 1"))


def sh(name: str, cmd: list[str], timeout: float) -> tuple[int, float]:
    """Run a command, its output to $OUT/logs/<name>.log; (exit code, wall seconds)."""
    log = OUT / "logs" / f"{name}.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, cwd=REPO, env=ENV, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    wall = time.perf_counter() - t0
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    print(f"[{name}] exit {rc} in {wall:.1f}s: {' | '.join(tail)[-300:]}", flush=True)
    return rc, wall


def one_run(root: Path) -> dict:
    from zoo.store import Store

    store = Store(root)
    runs = store.runs()
    if len(runs) != 1 or runs[0]["status"] != "done":
        return {"ok": False, "runs": [(r["id"], r["status"], r["reason"]) for r in runs]}
    r = runs[0]
    curve = {}
    for m in store.metrics(r["id"]):
        curve.setdefault(m["name"], {})[m["step"]] = m["value"]
    s = r["summary"]
    return {"ok": True, "run_id": r["id"], "tokens_per_s": s.get("tokens_per_s"), "mfu": s.get("mfu"),
            "final_loss": s.get("final_loss"), "eval_loss": s.get("eval_loss"), "peak_mem_gb": s.get("peak_mem_gb"),
            "params": s.get("params"), "wall_s": s.get("wall_s"), "loss": curve.get("loss", {}),
            "grad_norm": curve.get("grad_norm", {})}


def compare_curves(a: dict, b: dict) -> dict:
    steps = sorted(set(a["loss"]) & set(b["loss"]))
    dl = max(abs(a["loss"][s] - b["loss"][s]) for s in steps) if steps else None
    dg = max(abs(a["grad_norm"][s] - b["grad_norm"][s]) / max(1e-12, abs(a["grad_norm"][s])) for s in steps) \
        if steps else None
    return {"steps": len(steps), "max_abs_loss_diff": dl, "max_rel_grad_norm_diff": dg,
            "match": dl is not None and dl < 0.05 and dg < 0.1}


def sweep_stats(root: Path) -> dict:
    from zoo.store import Store

    runs = Store(root).runs()
    done = [r for r in runs if r["status"] == "done"]
    tps = [r["summary"].get("tokens_per_s") or 0 for r in done]
    return {"runs": len(runs), "done": len(done), "mean_tokens_per_s_per_run": sum(tps) / len(tps) if tps else None,
            "final_loss": {r["id"]: r["summary"].get("final_loss") for r in done},
            "hosts_devices": sorted({r["provenance"].get("device") or "?" for r in done})}


def main() -> int:
    import torch

    t_start = time.perf_counter()
    if OUT.exists():
        for sub in ("stores", "logs"):
            shutil.rmtree(OUT / sub, ignore_errors=True)
    (OUT / "logs").mkdir(parents=True, exist_ok=True)
    n = torch.cuda.device_count()
    info = {"gpus": n, "device": torch.cuda.get_device_name(0) if n else None, "torch": torch.__version__,
            "env": {k: os.environ[k] for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST")}}
    print(json.dumps(info), flush=True)
    if n < 2 and not SMOKE:
        print("needs at least two GPUs (or --smoke for a toy run on CPU)")
        return 1
    stores = OUT / "stores"
    res: dict = {"info": info}
    zoo = [sys.executable, "-m", "zoo"]

    r1 = r2 = r3 = {}
    rc1 = rc2 = rc3 = rc4 = rc5 = 0
    w4 = w5 = None
    if PART in ("all", "train"):
        # part 1: one run, one GPU vs DDP vs FSDP2 on two
        ENV["CUDA_VISIBLE_DEVICES"] = "0"
        rc1, w1 = sh("train_1gpu", zoo + ["train", *RUN, "--root", str(stores / "train_1gpu")], 240)
        ENV["CUDA_VISIBLE_DEVICES"] = "0,1"
        rc2, w2 = sh("train_ddp_2gpu", zoo + ["train", *RUN, "--nproc", "2", "--parallel", "ddp",
                                               "--root", str(stores / "train_ddp_2gpu")], 240)
        rc3, w3 = sh("train_fsdp_2gpu", zoo + ["train", *RUN, "--nproc", "2", "--parallel", "fsdp",
                                                "--root", str(stores / "train_fsdp_2gpu")], 240)
        r1, r2, r3 = (one_run(stores / k) for k in ("train_1gpu", "train_ddp_2gpu", "train_fsdp_2gpu"))
        res["train"] = {"one_gpu": r1, "ddp_2gpu": r2, "fsdp_2gpu": r3, "walls": [w1, w2, w3], "exit": [rc1, rc2, rc3]}
        for k, r in (("ddp", r2), ("fsdp", r3)):
            if r1["ok"] and r["ok"]:
                res["train"][f"{k}_speedup"] = r["tokens_per_s"] / r1["tokens_per_s"]
                res["train"][f"{k}_vs_one_gpu"] = compare_curves(r1, r)
                res["train"][f"{k}_same_run_id"] = r["run_id"] == r1["run_id"]

    if PART in ("all", "sweep"):
        # part 2: the same sweep through the launcher on one GPU, then on two
        spec = OUT / "sweep.toml"
        spec.write_text(SWEEP)
        slots = (["--workers", "1"], ["--workers", "2"]) if SMOKE else (["--gpus", "0"], ["--gpus", "0,1"])
        rc4, w4 = sh("sweep_1gpu", zoo + ["compare", str(spec), *slots[0], "--no-progress",
                                           "--root", str(stores / "sweep_1gpu")], 600)
        rc5, w5 = sh("sweep_2gpu", zoo + ["compare", str(spec), *slots[1], "--no-progress",
                                           "--root", str(stores / "sweep_2gpu")], 600)
        s1, s2 = sweep_stats(stores / "sweep_1gpu"), sweep_stats(stores / "sweep_2gpu")
        common = set(s1["final_loss"]) & set(s2["final_loss"])
        res["sweep"] = {"one_gpu": {**s1, "wall_s": w4, "exit": rc4}, "two_gpu": {**s2, "wall_s": w5, "exit": rc5},
                        "speedup": w4 / w5 if s1["done"] == s2["done"] == s1["runs"] == N_SWEEP else None,
                        "max_final_loss_diff": max((abs(s1["final_loss"][k] - s2["final_loss"][k]) for k in common),
                                                   default=None)}
    res["total_s"] = time.perf_counter() - t_start
    for r in (r1, r2, r3):  # keep the JSON short: curves are in the stores
        r.pop("loss", None)
        r.pop("grad_norm", None)
    (OUT / "multi_gpu.json").write_text(json.dumps(res, indent=2, default=str))

    def f(v, d=2):
        return "-" if v is None else f"{v:.{d}f}"

    t = res.get("train", {})
    print(f"\n{info['device']} x {n}, torch {info['torch']}, total {res['total_s']:.0f}s; "
          f"JSON: {OUT / 'multi_gpu.json'}")
    print(f"{'what':34} {'tokens/s':>12} {'MFU':>6} {'ratio':>7} {'target':>7} {'curve vs 1 GPU':>28}")
    print(f"{'one run, 1 GPU (batch 16)':34} {f(r1.get('tokens_per_s'), 0):>12} {f(r1.get('mfu'), 3):>6}")
    for k, r in (("ddp", r2), ("fsdp", r3)):
        c = t.get(f"{k}_vs_one_gpu") or {}
        curve = (f"dloss {f(c.get('max_abs_loss_diff'), 4)} dgn {f(c.get('max_rel_grad_norm_diff'), 3)} "
                 f"{'ok' if c.get('match') else 'MISMATCH'}") if c else "-"
        print(f"{'one run, 2 GPUs ' + k.upper() + ' (2 x 8)':34} {f(r.get('tokens_per_s'), 0):>12} "
              f"{f(r.get('mfu'), 3):>6} {f(t.get(k + '_speedup')):>7} {'1.70' if k == 'ddp' else '-':>7} {curve:>28}")
    sw = res.get("sweep", {"speedup": None, "max_final_loss_diff": None})
    print(f"{f'sweep of {N_SWEEP} runs, 1 GPU (wall s)':34} {f(w4, 1):>12}")
    print(f"{f'sweep of {N_SWEEP} runs, 2 GPUs (wall s)':34} {f(w5, 1):>12} {'':>6} {f(sw['speedup']):>7} {'1.80':>7} "
          f"{'final-loss diff ' + f(sw['max_final_loss_diff'], 4):>28}")
    ok = all(x == 0 for x in (rc1, rc2, rc3, rc4, rc5))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
