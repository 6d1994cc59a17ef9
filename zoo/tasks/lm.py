"""Byte-level language modeling on local files (`lm`).

Sources: plain text files (any extension listed in `extensions`, default `.py`), JSON Lines
(`.jsonl`: one object per line, text under `text_field`) and Parquet (`.parquet`: the
`text_field` column; needs pyarrow). `paths` are files or directories (searched
recursively). With no paths the corpus is the Python standard library's own sources
(`sysconfig.get_paths()["stdlib"]`): files every machine with Python has. It changes with the
Python version, so compare runs trained on one version.

Held-out split: each file goes to evaluation when a hash of its path relative to its root
falls under `eval_fraction`, so the split is the same on every machine and never depends on
file order; documents are joined with `<eos>`. A batch at (seed, split, step) takes
`batch_size` windows of `seq_len + 1` bytes at offsets drawn from `stream_seed`, so it is a
pure function of the step and a resumed run reads exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import math
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from zoo.errors import ZooError
from zoo.tasks.base import Batch, Task, TaskConfig, register_task, stream_seed
from zoo.tasks.tokenizer import EOS

SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idlelib", "turtledemo"}


class LMConfig(TaskConfig):
    paths: list[str] = Field(default_factory=list,
                             description="files or directories; empty = the Python standard library sources")
    extensions: list[str] = Field(default_factory=lambda: [".py"],
                                  description="plain-text extensions to read (.jsonl and .parquet always read)")
    text_field: str = Field("text", description="JSON Lines key / Parquet column holding the text")
    eval_fraction: float = Field(0.05, gt=0, lt=1, description="share of files held out for evaluation")
    max_bytes: int = Field(64 << 20, ge=1024, description="stop reading files past this many bytes per split")


def default_corpus() -> list[str]:
    return [sysconfig.get_paths()["stdlib"]]


def _held_out(rel: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "little") / 2**64
    return h < fraction


def _texts_of(path: Path, text_field: str) -> list[str]:
    if path.suffix == ".jsonl":
        out = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ZooError(f"{path}:{i + 1}: not JSON ({e.msg})", "one JSON object per line") from None
                if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
                    raise ZooError(f"{path}:{i + 1}: no string field '{text_field}'", "set text_field in the task")
                out.append(obj[text_field])
        return out
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ZooError(f"reading {path} needs pyarrow", "pip install pyarrow") from None
        table = pq.read_table(path, columns=[text_field])
        return [t for t in table.column(text_field).to_pylist() if isinstance(t, str)]
    return [path.read_text(encoding="utf-8", errors="replace")]


def list_files(cfg: LMConfig) -> list[tuple[Path, str]]:
    """(file, path relative to its root) for every corpus file, sorted."""
    exts = set(cfg.extensions) | {".jsonl", ".parquet"}
    files: list[tuple[Path, str]] = []
    for root in cfg.paths or default_corpus():
        r = Path(root).expanduser()
        if r.is_file():
            files.append((r, r.name))
        elif r.is_dir():
            for p in sorted(r.rglob("*")):
                rel = p.relative_to(r)
                if p.is_file() and p.suffix in exts and not (SKIP_DIRS & set(rel.parts[:-1])):
                    files.append((p, rel.as_posix()))
        else:
            raise ZooError(f"corpus path {r} does not exist", "task.config.paths lists files or directories")
    return files


def load_split(cfg: LMConfig, split: str) -> np.ndarray:
    """All documents of a split as one uint16 token array (bytes, `<eos>` between documents)."""
    return _load_split(cfg.model_dump_json(), "train" if split == "train" else "eval")


@lru_cache(maxsize=4)
def _load_split(cfg_json: str, split: str) -> np.ndarray:
    cfg = LMConfig.model_validate_json(cfg_json)
    held = split != "train"
    parts: list[np.ndarray] = []
    n = 0
    for path, rel in list_files(cfg):
        if _held_out(rel, cfg.eval_fraction) != held:
            continue
        for text in _texts_of(path, cfg.text_field):
            data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)
            parts.append(data)
            parts.append(np.array([EOS], dtype=np.uint16))
            n += data.size + 1
        if n >= cfg.max_bytes:
            break
    if not parts:
        raise ZooError(f"the '{split}' split of the corpus is empty",
                       "add more files or raise eval_fraction" if held else "add files to task.config.paths")
    return np.concatenate(parts)


@register_task
class LMTask(Task):
    """Next-byte prediction on text; the loss is taken at every position."""

    name = "lm"
    Config = LMConfig

    def chance(self, metric: str, **setting: Any) -> float | None:
        """A uniform guess over the 256 byte values."""
        return {"accuracy": 1 / 256, "loss": math.log(256)}.get(metric)

    def stream(self, split: str = "train") -> np.ndarray:
        return load_split(self.config, "train" if split == "train" else "eval")

    def batch(self, step: int, batch_size: int, seq_len: int, split: str = "train", seed: int = 0,
              knobs: dict[str, Any] | None = None) -> Batch:
        data = self.stream(split)
        if data.size < seq_len + 2:
            raise ZooError(f"the '{split}' corpus has {data.size} tokens, fewer than seq_len + 1 = {seq_len + 1}",
                           "add text or train at a shorter length")
        g = np.random.default_rng(stream_seed(seed, split, step))
        starts = g.integers(0, data.size - seq_len - 1, size=batch_size)
        win = np.stack([data[s:s + seq_len + 1] for s in starts]).astype(np.int64)
        w = torch.from_numpy(win)
        return Batch(tokens=w[:, :-1].contiguous(), targets=w[:, 1:].contiguous())
