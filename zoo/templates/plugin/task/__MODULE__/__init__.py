"""`__NAME__`: copy a random string after a separator (replace with your task).

    tokens   s1 s2 .. sn SEP s1 s2 .. sn SEP SEP ...
    targets  -  -  ..  - s1  s2 s3 .. -   -   ...     loss only where the copy is predicted

Shapes: tokens and targets `[B, L]` int64. Each batch is a pure function of
(seed, split, step) through `stream_seed`, which also keeps the splits disjoint.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from zoo.errors import ZooError
from zoo.tasks.base import IGNORE, Batch, Task, TaskConfig, register_task, stream_seed

SEP = 0


class __CLASS__Config(TaskConfig):
    length: int = Field(16, ge=1, le=1 << 16, description="symbols in the string to copy")
    n_symbols: int = Field(32, ge=2, le=1 << 16, description="alphabet size (ids 1 .. n_symbols)")


@register_task
class __CLASS__(Task):
    """Copy a random string after a separator."""

    name = "__NAME__"
    Config = __CLASS__Config

    @property
    def vocab_size(self) -> int:
        return self.config.n_symbols + 1

    def chance(self, metric: str, **setting: Any) -> float | None:
        """A uniform guess over the alphabet."""
        n = {**self.config.model_dump(), **setting}["n_symbols"]
        return {"accuracy": 1 / n, "loss": math.log(n)}.get(metric)

    def batch(self, step: int, batch_size: int, seq_len: int, split: str = "train", seed: int = 0,
              knobs: dict[str, Any] | None = None) -> Batch:
        n = self.config.length
        if seq_len < 2 * n + 1:
            raise ZooError(f"task '{self.name}' with length {n} needs seq_len >= {2 * n + 1}, got {seq_len}",
                           "lower task.config.length or raise seq_len")
        g = torch.Generator().manual_seed(stream_seed(seed, split, step))
        s = torch.randint(1, self.config.n_symbols + 1, (batch_size, n), generator=g)   # [B, n]
        tokens = torch.full((batch_size, seq_len), SEP, dtype=torch.int64)
        tokens[:, :n], tokens[:, n + 1:2 * n + 1] = s, s
        targets = torch.full_like(tokens, IGNORE)
        targets[:, n:2 * n] = s  # after reading SEP and each copied symbol: the next symbol
        return Batch(tokens, targets)
