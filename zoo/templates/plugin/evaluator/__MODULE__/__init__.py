"""`__NAME__`: mean next-token loss on held-out batches of the run's task, one cell per length.

The contract (`zoo.eval.base.Evaluator`): a pydantic config (the `[eval.__NAME__]` table), the
columns of a row with their types, the columns naming a cell, `cells(config)`, and
`evaluate(target, config, cell)` returning the rows of one cell, deterministic given the model.
Shapes: tokens, targets `[B, L]`, logits `[B, L, V]`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from zoo.eval.base import EvalTarget, Evaluator, register_evaluator
from zoo.tasks.base import IGNORE, get_task


class __CLASS__Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lengths: list[int] = Field(default_factory=lambda: [256], min_length=1, description="sequence lengths")
    batches: int = Field(2, ge=1, le=10_000, description="held-out batches per length")
    batch_size: int = Field(4, ge=1, le=4096, description="sequences per batch")
    split: Literal["eval", "test"] = Field("eval", description="held-out split of the task")


@register_evaluator
class __CLASS__(Evaluator):
    name = "__NAME__"
    description = "mean next-token loss on held-out batches, per length"
    config_cls = __CLASS__Config
    cell_columns = ("length",)
    columns = {"length": int, "loss": float, "tokens": int}
    example = {"lengths": [64, 96], "batches": 1, "batch_size": 2}  # the conformance checks run this
    example_task = {"hops": [1], "hash_len": 4}

    def cells(self, config: __CLASS__Config) -> list[tuple[int]]:
        return [(L,) for L in sorted(set(config.lengths))]

    @torch.no_grad()
    def evaluate(self, target: EvalTarget, config: __CLASS__Config, cell: tuple[int]) -> list[dict[str, Any]]:
        (L,) = cell
        task_ref = target.run_config["task"]
        task = get_task(task_ref["name"], task_ref.get("config"))
        total, tokens = 0.0, 0
        target.model.eval()
        for step in range(config.batches):
            batch = task.batch(step, config.batch_size, L, split=config.split)
            logits = target.model(batch.tokens.to(target.device)).float().cpu()  # [B, L, V]
            total += F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE,
                                     reduction="sum").item()
            tokens += int((batch.targets != IGNORE).sum())
        return [{"length": L, "loss": total / tokens if tokens else None, "tokens": tokens}]
