"""Perplexity vs length: how the loss holds up at and past the training length.

For each evaluation length L, windows of L + 1 tokens are cut from the held-out text at
offsets 0, stride, 2*stride, ... (stride defaults to L: disjoint windows). Each window is
scored from its first token, so position p of a window sees exactly p tokens of context,
and the loss is averaged per position bucket (equal-width buckets over [0, L)), over the
whole window, and over the positions past the training length, each with a 95% interval over
the windows (independent measurements when they are disjoint, the default). Inputs run through the
mixers' caches in chunks (`ZooLM.iter_logits`), so memory is bounded by the cache.

    rows = evaluate_ppl(model, data, lengths=[512, 1024, 4096], train_len=512)

An evaluation-time RoPE scaling (PI, NTK, YaRN, ReRoPE, ...) is applied first with
`apply_rope_scaling(model, "yarn", 4.0, train_len)`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from zoo.errors import LengthError, ZooError
from zoo.stats import mean_interval


class RopeScaling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["pi", "ntk", "dynamic-ntk", "yarn", "rerope", "leaky-rerope"]
    factor: float = Field(..., ge=1, le=1e6, description="scale factor (evaluation length / training length, "
                          "typically)")


class PplEval(BaseModel):
    """Perplexity-vs-length settings (an experiment's `[eval.ppl]`)."""

    model_config = ConfigDict(extra="forbid")

    lengths: list[Annotated[int, Field(ge=2, le=1 << 26)]] | None = Field(
        None, description="evaluation lengths (default: multipliers x training length)")
    multipliers: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [1, 2, 4, 8, 16, 32, 64], description="lengths as multiples of the training length")
    max_length: int | None = Field(None, ge=2, le=1 << 26, description="leave out lengths above this")
    stride: int | None = Field(None, ge=1, le=1 << 26, description="tokens between window starts (default: the "
                               "length)")
    windows: int = Field(4, ge=1, le=100000, description="windows per length (fewer when the text runs out)")
    buckets: int = Field(8, ge=1, le=1024, description="equal-width position buckets per length")
    split: Literal["eval", "test"] = Field("eval", description="held-out split of the lm task")
    batch_tokens: int = Field(65536, ge=1, le=1 << 30, description="windows are batched up to this many tokens")
    chunk_size: int | None = Field(None, ge=1, le=1 << 24, description="tokens per chunk through the caches")
    rope_scaling: list[RopeScaling] = Field(default_factory=list,
                                            description="also evaluate with these RoPE scalings (RoPE models only)")

    def resolve_lengths(self, train_len: int) -> list[int]:
        lengths = self.lengths or [m * train_len for m in self.multipliers]
        if self.max_length is not None:
            lengths = [L for L in lengths if L <= self.max_length]
        return sorted(set(lengths))


def apply_rope_scaling(model, method: str, factor: float, original_length: int | None = None) -> None:
    """Switch every RoPE-family layer of `model` to an evaluation-time scaling."""
    from zoo.mixers.attention import override_rope_scaling

    override_rope_scaling(model, method, factor, original_length)


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def window_losses(model, windows: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Per-position cross-entropy `[B, L]` of windows `[B, L + 1]` (inputs and next tokens)."""
    device = _device_of(model)
    windows = windows.to(device)
    tokens, targets = windows[:, :-1], windows[:, 1:]
    dtype = torch.bfloat16 if device.type == "cuda" else None
    out = []
    with _autocast(device):
        for start, logits in model.iter_logits(tokens, chunk_size=chunk_size, dtype=dtype):
            tgt = targets[:, start:start + logits.shape[1]]
            out.append(F.cross_entropy(logits.float().transpose(1, 2), tgt, reduction="none"))
    return torch.cat(out, dim=1)


def evaluate_ppl(model, data: np.ndarray, lengths: list[int], train_len: int, stride: int | None = None,
                 windows: int = 4, buckets: int = 8, batch_tokens: int = 65536, chunk_size: int | None = None,
                 rope: RopeScaling | None = None) -> list[dict[str, Any]]:
    """Rows: per length, one per position bucket (scope "bucket"), one over the window ("all")
    and one past the training length ("beyond_train", when the length exceeds it)."""
    model.eval()
    rows: list[dict[str, Any]] = []
    for L in lengths:
        s = stride or L
        common = {"length": L, "train_len": train_len, "stride": s,
                  "rope_scaling": rope.method if rope else None, "rope_factor": rope.factor if rope else None}
        n = min(windows, (data.size - L - 1) // s + 1) if data.size > L + 1 else 0
        if n < 1:
            rows.append({**common, "scope": "all", "status": "n/a",
                         "reason": f"held-out text has {data.size} tokens, fewer than {L + 1}"})
            continue
        starts = [i * s for i in range(n)]
        per = max(1, batch_tokens // (L + 1))
        try:
            losses = torch.cat([window_losses(model, torch.from_numpy(np.stack(
                [data[o:o + L + 1] for o in starts[i:i + per]]).astype(np.int64)), chunk_size).double().cpu()
                for i in range(0, n, per)])  # [n, L]
        except LengthError as e:
            rows.append({**common, "scope": "all", "status": "n/a", "reason": e.message})
            continue
        edges = [round(b * L / buckets) for b in range(buckets + 1)]
        for b in range(buckets):
            lo, hi = edges[b], edges[b + 1]
            if hi > lo:
                rows.append({**common, **_stats(losses[:, lo:hi]), "scope": "bucket", "bucket": b, "start": lo,
                             "end": hi, "status": "ok"})
        rows.append({**common, **_stats(losses), "scope": "all", "start": 0, "end": L, "status": "ok"})
        if L > train_len:
            rows.append({**common, **_stats(losses[:, train_len:]), "scope": "beyond_train", "start": train_len,
                         "end": L, "status": "ok"})
    return rows


def _stats(losses: torch.Tensor) -> dict[str, Any]:
    """Loss and perplexity of positions `losses` `[windows, positions]`, with the 95% interval of
    the loss over windows (disjoint stretches of text are the independent measurements; the
    positions of one window share its text) and the perplexity's, exp of the loss's."""
    n_windows = losses.shape[0]
    loss, low, high = mean_interval(losses.mean(1).tolist())
    out = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bits_per_byte": loss / math.log(2),
           "tokens": int(losses.numel()), "windows": n_windows, "loss_low": low, "loss_high": high,
           "ppl_low": None, "ppl_high": None}
    if low is not None:
        out["ppl_low"], out["ppl_high"] = math.exp(min(low, 50.0)), math.exp(min(high, 50.0))
    return out


def trained_length(run_config: dict) -> int:
    """The longest training length of a run (its seq_len, or the top of its seq_len schedule)."""
    train = run_config["train"]
    sched = (train.get("schedules") or {}).get("seq_len")
    if sched:
        return int(max(v for _, v in sched["points"]))
    return int(train["seq_len"])


def evaluate_run(model, run_config: dict, spec: PplEval, rope: RopeScaling | None = None) -> list[dict[str, Any]]:
    """Perplexity vs length of a trained model on the held-out text of its `lm` task."""
    from zoo.tasks.base import get_task

    task_ref = run_config["task"]
    if task_ref["name"] != "lm":
        raise ZooError(f"perplexity needs a model trained on the lm task, this one was trained on "
                       f"'{task_ref['name']}'", "evaluate lm runs only")
    task = get_task("lm", task_ref.get("config"))
    train_len = trained_length(run_config)
    if rope is not None:
        apply_rope_scaling(model, rope.method, rope.factor, train_len)
    return evaluate_ppl(model, task.stream(spec.split), spec.resolve_lengths(train_len), train_len,
                        stride=spec.stride, windows=spec.windows, buckets=spec.buckets,
                        batch_tokens=spec.batch_tokens, chunk_size=spec.chunk_size, rope=rope)
