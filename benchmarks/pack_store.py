"""Copy a results root's store and run logs into a few files (for bringing a GPU job's results back).

    python benchmarks/pack_store.py ROOT OUTDIR                      # OUTDIR/zoo.db, OUTDIR/runs.tar.gz
    python benchmarks/pack_store.py ROOT OUTDIR --weights RUN_ID...  # also OUTDIR/weights_<RUN_ID>.tar

zoo.db is a consistent copy (what is still in the WAL included); runs.tar.gz holds each run's
JSON, logs and text. `--weights` adds, per finished run, its config and latest checkpoint's model
weights cast to bf16 (no optimizer state): about 2 bytes a parameter, for diagnostics on the CPU
(`zoo.train.checkpoint.load_model` reads the unpacked run directory).
"""

import argparse
import io
import sqlite3
import tarfile
from pathlib import Path

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("root", type=Path)
ap.add_argument("out", type=Path)
ap.add_argument("--weights", nargs="*", default=[], metavar="RUN_ID", help="runs whose final weights to pack")
args = ap.parse_args()
root, out = args.root, args.out
out.mkdir(parents=True, exist_ok=True)
src = sqlite3.connect(root / "zoo.db", timeout=60)
dst = sqlite3.connect(out / "zoo.db")
src.backup(dst)  # includes what is still in the WAL
dst.close()
src.close()
with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
    for p in sorted((root / "runs").glob("*/*")):
        if p.is_file() and p.suffix in (".json", ".jsonl", ".log", ".txt"):
            tar.add(p, arcname=str(p.relative_to(root)))


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


for run_id in args.weights:
    import torch
    from safetensors.torch import load_file, save

    run = root / "runs" / run_id
    ckpts = run / "checkpoints"
    step = (ckpts / "latest").read_text().strip()
    state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
             for k, v in load_file(ckpts / step / "model.safetensors").items()}
    with tarfile.open(out / f"weights_{run_id}.tar", "w") as tar:
        add_bytes(tar, f"{run_id}/config.json", (run / "config.json").read_bytes())
        add_bytes(tar, f"{run_id}/checkpoints/latest", step.encode())
        add_bytes(tar, f"{run_id}/checkpoints/{step}/meta.json", (ckpts / step / "meta.json").read_bytes())
        add_bytes(tar, f"{run_id}/checkpoints/{step}/model.safetensors", save(state))
print("packed", out)
