"""Copy a results root's store and run logs into a few files (for bringing a GPU job's results back).

    python benchmarks/pack_store.py ROOT OUTDIR    # OUTDIR/zoo.db (a consistent copy), OUTDIR/runs.tar.gz
"""

import sqlite3
import sys
import tarfile
from pathlib import Path

root, out = Path(sys.argv[1]), Path(sys.argv[2])
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
print("packed", out)
