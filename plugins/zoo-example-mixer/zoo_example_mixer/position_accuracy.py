"""`position-accuracy`: next-token accuracy by position bucket, on held-out batches of the run's task.

Where in a sequence does a model start to predict well? One cell per length: `batches` batches
of the task's held-out split at that length, the positions cut into `buckets` equal spans, and
for each span the share of loss-bearing tokens whose argmax prediction is the target.
Shapes: tokens, targets `[B, L]`, logits `[B, L, V]`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from zoo.eval.base import EvalTarget, Evaluator, register_evaluator
from zoo.tasks.base import IGNORE, get_task


class PositionAccuracyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lengths: list[int] = Field(default_factory=lambda: [256], min_length=1, description="sequence lengths")
    buckets: int = Field(4, ge=1, le=1024, description="equal position spans per length")
    batches: int = Field(2, ge=1, le=10_000, description="held-out batches per length")
    batch_size: int = Field(4, ge=1, le=4096, description="sequences per batch")
    split: Literal["eval", "test"] = Field("eval", description="held-out split of the task")
    seed: int = Field(0, ge=0, description="seed of the held-out stream")


@register_evaluator
class PositionAccuracy(Evaluator):
    name = "position-accuracy"
    description = "next-token accuracy by position bucket on the run's task"
    config_cls = PositionAccuracyConfig
    cell_columns = ("length",)
    columns = {"length": int, "bucket": int, "start": int, "end": int, "accuracy": float, "tokens": int}
    example = {"lengths": [64, 96], "buckets": 2, "batches": 1, "batch_size": 2}
    example_task = {"hops": [1], "hash_len": 4}

    def cells(self, config: PositionAccuracyConfig) -> list[tuple[int]]:
        return [(L,) for L in sorted(set(config.lengths))]

    @torch.no_grad()
    def evaluate(self, target: EvalTarget, config: PositionAccuracyConfig, cell: tuple[int]) -> list[dict[str, Any]]:
        (L,) = cell
        task_ref = target.run_config["task"]
        task = get_task(task_ref["name"], task_ref.get("config"))
        hits = torch.zeros(L, dtype=torch.long)
        counts = torch.zeros(L, dtype=torch.long)
        target.model.eval()
        for step in range(config.batches):
            batch = task.batch(step, config.batch_size, L, split=config.split, seed=config.seed)
            logits = target.model(batch.tokens.to(target.device))                  # [B, L, V]
            scored = batch.targets != IGNORE                                       # [B, L]
            right = (logits.argmax(-1).cpu() == batch.targets) & scored
            hits += right.sum(0)
            counts += scored.sum(0)
        edges = [round(b * L / config.buckets) for b in range(config.buckets + 1)]
        rows = []
        for b in range(config.buckets):
            lo, hi = edges[b], edges[b + 1]
            n = int(counts[lo:hi].sum())
            rows.append({"length": L, "bucket": b, "start": lo, "end": hi, "tokens": n,
                         "accuracy": int(hits[lo:hi].sum()) / n if n else None})
        return rows
