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
from pydantic import Field, field_validator, model_serializer

from zoo.errors import ZooError
from zoo.tasks.base import Batch, Task, TaskConfig, register_task, stream_seed
from zoo.tasks.tokenizer import EOS, VOCAB_SIZE

SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idlelib", "turtledemo"}


class LMConfig(TaskConfig):
    paths: list[str] = Field(default_factory=list,
                             description="files or directories; empty = the Python standard library sources")
    extensions: list[str] = Field(default_factory=lambda: [".py"],
                                  description="plain-text extensions to read (.jsonl and .parquet always read)")
    text_field: str = Field("text", description="JSON Lines key / Parquet column holding the text")
    eval_fraction: float = Field(0.05, gt=0, lt=1, description="share of files held out for evaluation")
    max_bytes: int = Field(64 << 20, ge=1024, description="stop reading files past this many bytes per split")
    tokenizer: str = Field("byte", description="byte, hf:NAME_OR_PATH (a Hugging Face tokenizer) or bpe:N "
                           "(a byte-level BPE of N tokens trained on the training split)")

    @field_validator("tokenizer")
    @classmethod
    def _known_tokenizer(cls, v: str) -> str:
        from zoo.tasks.text_tokenizers import check_spec

        try:
            return check_spec(v)
        except ZooError as e:
            raise ValueError(str(e)) from None

    @model_serializer(mode="wrap")
    def _byte_is_implicit(self, handler):
        # the byte level is left out of the dump, so the run ids of byte-level runs stay what they were
        out = handler(self)
        if out.get("tokenizer") == "byte":
            out.pop("tokenizer")
        return out


def default_corpus() -> list[str]:
    return [sysconfig.get_paths()["stdlib"]]


def _held_out(rel: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "little") / 2**64
    return h < fraction


DATASET = "hf-dataset:"


def _dataset_texts(ref: str, text_field: str) -> list[str]:
    """`hf-dataset:NAME[:CONFIG]`: the train split of a Hugging Face dataset (the hf extra)."""
    try:
        import datasets
    except ImportError:
        raise ZooError(f"corpus path {ref!r} needs the datasets package", "pip install 'mixer-zoo[hf]'") from None
    name, _, config = ref[len(DATASET):].partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split="train")
    except Exception as e:  # the library raises many kinds for a missing or unreachable dataset
        raise ZooError(f"cannot load the dataset {name!r}: {str(e).strip().splitlines()[0] if str(e) else e!r}",
                       "a hub dataset id (network or the local cache) or a local dataset directory") from None
    if text_field not in ds.column_names:
        raise ZooError(f"dataset {name!r} has no column '{text_field}'", f"columns: {', '.join(ds.column_names)}")
    return [t for t in ds[text_field] if isinstance(t, str)]


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
        if root.startswith(DATASET):
            files.append((Path(root), root))
        elif r.is_file():
            files.append((r, r.name))
        elif r.is_dir():
            for p in sorted(r.rglob("*")):
                rel = p.relative_to(r)
                if p.is_file() and p.suffix in exts and not (SKIP_DIRS & set(rel.parts[:-1])):
                    files.append((p, rel.as_posix()))
        else:
            raise ZooError(f"corpus path {r} does not exist", "task.config.paths lists files or directories")
    return files


def split_texts(cfg: LMConfig, split: str) -> list[str]:
    """The documents of a split in corpus order, files read until `max_bytes` (UTF-8) is passed."""
    return list(_split_texts(cfg.model_dump_json(), "train" if split == "train" else "eval"))


@lru_cache(maxsize=4)
def _split_texts(cfg_json: str, split: str) -> tuple[str, ...]:
    cfg = LMConfig.model_validate_json(cfg_json)
    held = split != "train"
    texts: list[str] = []
    n = 0
    for path, rel in list_files(cfg):
        if rel.startswith(DATASET):  # one corpus of many documents: each is held out by its index
            for i, text in enumerate(_dataset_texts(rel, cfg.text_field)):
                if _held_out(f"{rel}#{i}", cfg.eval_fraction) == held and n < cfg.max_bytes:
                    texts.append(text)
                    n += len(text.encode("utf-8")) + 1
            continue
        if _held_out(rel, cfg.eval_fraction) != held:
            continue
        for text in _texts_of(path, cfg.text_field):
            texts.append(text)
            n += len(text.encode("utf-8")) + 1
        if n >= cfg.max_bytes:
            break
    if not texts:
        raise ZooError(f"the '{split}' split of the corpus is empty",
                       "add more files or raise eval_fraction" if held else "add files to task.config.paths")
    return tuple(texts)


def load_split(cfg: LMConfig, split: str) -> np.ndarray:
    """All documents of a split as one token array, each followed by the end-of-text token
    (byte level: bytes and `<eos>`, uint16)."""
    return _load_split(cfg.model_dump_json(), "train" if split == "train" else "eval")


def text_tokenizer(cfg: LMConfig):
    """The task's tokenizer (`zoo.tasks.text_tokenizers`); a BPE is trained on the training split."""
    from zoo.tasks.text_tokenizers import get_tokenizer

    return get_tokenizer(cfg.tokenizer, lambda: split_texts(cfg, "train"))


@lru_cache(maxsize=4)
def _load_split(cfg_json: str, split: str) -> np.ndarray:
    cfg = LMConfig.model_validate_json(cfg_json)
    parts: list[np.ndarray] = []
    if cfg.tokenizer == "byte":
        for text in _split_texts(cfg_json, split):
            parts.append(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16))
            parts.append(np.array([EOS], dtype=np.uint16))
        return np.concatenate(parts)
    tok = text_tokenizer(cfg)
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    for text in _split_texts(cfg_json, split):
        parts.append(np.asarray(tok.encode(text) + [tok.eos_id], dtype=dtype))
    return np.concatenate(parts)


@register_task
class LMTask(Task):
    """Next-byte prediction on text; the loss is taken at every position."""

    name = "lm"
    Config = LMConfig
    tiny = {"max_bytes": 1 << 16}  # a slice of the default corpus is enough to check the contract

    @property
    def vocab_size(self) -> int:
        """Tokens the model must cover."""
        return VOCAB_SIZE if self.config.tokenizer == "byte" else text_tokenizer(self.config).vocab_size

    def save_with_run(self, run_dir: Path) -> None:
        """A real tokenizer goes with the run as tokenizer.json (its full definition)."""
        if self.config.tokenizer != "byte":
            (Path(run_dir) / "tokenizer.json").write_text(text_tokenizer(self.config).definition or "")

    def chance(self, metric: str, **setting: Any) -> float | None:
        """A uniform guess over the text's tokens: the 256 byte values, or a real tokenizer's vocabulary."""
        n = 256 if self.config.tokenizer == "byte" else self.vocab_size
        return {"accuracy": 1 / n, "loss": math.log(n)}.get(metric)

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
