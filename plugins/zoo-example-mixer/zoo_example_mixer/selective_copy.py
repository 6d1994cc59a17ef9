"""`selective-copy`: recall a few symbols scattered among blanks, in order (Mamba's task).

Gu and Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces,
arXiv:2312.00752, section 3.1. A row holds `n_copy` symbols at random positions of a blank
region, then a separator; after it the model must write the symbols in their order. A
time-invariant convolution cannot do this (where the symbols sit changes per row); a mixer
must select by content.

    tokens   . a . . b . c . SEP a b c
    targets  - - - - - - - - a   b c -      loss only on the recall

Shapes: tokens and targets `[B, L]` int64; each batch is a pure function of
(seed, split, step) through `stream_seed`, which also keeps the splits disjoint.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from zoo.errors import ZooError
from zoo.tasks.base import IGNORE, Batch, Task, TaskConfig, register_task, stream_seed

BLANK = 0


class SelectiveCopyConfig(TaskConfig):
    n_copy: int = Field(16, ge=1, le=4096, description="symbols to recall per row")
    n_symbols: int = Field(16, ge=2, le=1 << 16, description="alphabet size (ids 1 .. n_symbols)")


@register_task
class SelectiveCopy(Task):
    """Recall symbols scattered among blanks, in order, after a separator."""

    name = "selective-copy"
    Config = SelectiveCopyConfig

    @property
    def sep(self) -> int:
        return self.config.n_symbols + 1

    @property
    def vocab_size(self) -> int:
        return self.config.n_symbols + 2

    def chance(self, metric: str, **setting: Any) -> float | None:
        """A uniform guess over the alphabet, without reading the row."""
        n = {**self.config.model_dump(), **setting}["n_symbols"]
        return {"accuracy": 1 / n, "loss": math.log(n)}.get(metric)

    def batch(self, step: int, batch_size: int, seq_len: int, split: str = "train", seed: int = 0,
              knobs: dict[str, Any] | None = None) -> Batch:
        n = self.config.n_copy
        region = seq_len - 1 - n  # blanks and scattered symbols before the separator
        if region < n:
            raise ZooError(f"task 'selective-copy' with n_copy {n} needs seq_len >= {3 * n + 1}, got {seq_len}",
                           "lower task.config.n_copy or raise seq_len")
        g = torch.Generator().manual_seed(stream_seed(seed, split, step))
        symbols = torch.randint(1, self.config.n_symbols + 1, (batch_size, n), generator=g)  # [B, n]
        where = torch.rand(batch_size, region, generator=g).argsort(1)[:, :n].sort(1).values  # [B, n]
        tokens = torch.full((batch_size, seq_len), BLANK, dtype=torch.int64)
        tokens.scatter_(1, where, symbols)
        tokens[:, region] = self.sep
        tokens[:, region + 1:] = symbols
        targets = torch.full_like(tokens, IGNORE)
        targets[:, region:region + n] = symbols  # after the separator and each recalled symbol: the next one
        return Batch(tokens, targets)
