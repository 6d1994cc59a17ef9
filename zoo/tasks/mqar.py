"""Multi-query associative recall (MQAR), as defined by Zoology.

Arora, Eyuboglu et al. 2023, Zoology: Measuring and Improving Recall in Efficient Language
Models, arXiv:2312.04927. A sequence holds `num_kv_pairs` key-value pairs, then a query
region where each key appears once more at an even offset; the model must predict the
key's value at that position. Keys come from `[1, V/2)`, values from `[V/2, V)`, each key
and each value at most once per sequence. The query gaps follow the power law
`p(i) ~ a * i^(a-1)` over the even slots (small `a` puts most queries near the pairs);
other query-region positions hold random tokens (or 0 with `random_non_queries` off).

    inputs  k1 v1 k2 v2 | x  x  k2 x  x  x  k1 x ...
    targets -  -  -  -  | -  -  v2 -  -  -  v1 - ...

The layout and distributions follow the reference generator so that accuracies can sit
beside the paper's; the random streams are ours (NumPy's PCG64 per sample).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from pydantic import Field

from zoo.errors import ZooError
from zoo.tasks.base import IGNORE, Batch, Task, TaskConfig, register_task
from zoo.tasks.hashhop import sample_key


class MQARConfig(TaskConfig):
    vocab_size: int = Field(8192, ge=8, le=1_000_000, description="token ids 0 .. V-1 (the model's vocabulary "
                            "must be at least this); Zoology uses 8192")
    num_kv_pairs: int = Field(8, ge=1, description="key-value pairs per sequence (Zoology: 4 to 64)")
    power_a: float = Field(0.01, gt=0.0, le=1.0, description="power-law exponent of the query gaps; 1 = uniform")
    random_non_queries: bool = Field(True, description="fill non-query positions with random tokens, not 0")


def check(config: MQARConfig, seq_len: int) -> None:
    k, v = config.num_kv_pairs, config.vocab_size
    if 4 * k > seq_len:
        raise ZooError(f"MQAR with {k} pairs needs at least {4 * k} tokens, got seq_len={seq_len}",
                       "each pair takes two tokens and its query slot two more")
    if k > v // 2 - 1:
        raise ZooError(f"a vocabulary of {v} holds {v // 2 - 1} distinct keys, fewer than {k} pairs",
                       "raise vocab_size or lower num_kv_pairs")


@functools.lru_cache(maxsize=64)
def gap_probs(space: int, a: float) -> np.ndarray:
    """Query slot distribution over `space` even slots: p(i) ~ a * i^(a-1), i = 1 .. space.
    Made once per (space, a): every row of a run shares it (read-only)."""
    p = a * np.arange(1, space + 1, dtype=np.float64) ** (a - 1)
    p = p / p.sum()
    p.flags.writeable = False
    return p


def make_row(config: MQARConfig, seq_len: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One sequence: inputs `[seq_len]` and targets `[seq_len]` (IGNORE except at queries)."""
    K, V = config.num_kv_pairs, config.vocab_size
    # choice(n) draws the same indices as choice(np.arange(n)) without building the array
    keys = 1 + rng.choice(V // 2 - 1, K, replace=False)
    values = V // 2 + rng.choice(V - V // 2, K, replace=False)
    ctx = 2 * K
    space = (seq_len - ctx) // 2
    gaps = rng.choice(space, K, replace=False, p=gap_probs(space, config.power_a))

    inputs = np.zeros(seq_len, dtype=np.int64)
    inputs[0:ctx:2], inputs[1:ctx:2] = keys, values
    inputs[ctx + 2 * gaps] = keys
    targets = np.full(seq_len, IGNORE, dtype=np.int64)
    targets[ctx + 2 * gaps] = values  # the target at a query is the next token to predict: its value
    if config.random_non_queries:
        fill = inputs == 0
        inputs[fill] = rng.integers(0, V, int(fill.sum()))
    return inputs, targets


@register_task
class MQARTask(Task):
    """Zoology's MQAR; one independent sequence per row."""

    name = "mqar"
    Config = MQARConfig

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def chance(self, metric: str, **setting: Any) -> float | None:
        """A guess among the V/2 value tokens without reading the pairs."""
        half = {**self.config.model_dump(), **setting}["vocab_size"] // 2
        return {"accuracy": 1 / half, "loss": float(np.log(half))}.get(metric)

    def batch(self, step: int, batch_size: int, seq_len: int, split: str = "train", seed: int = 0,
              knobs: dict[str, Any] | None = None) -> Batch:
        cfg = self.config
        if knobs:
            cfg = cfg.model_copy(update={k: v for k, v in knobs.items() if k in MQARConfig.model_fields})
        check(cfg, seq_len)
        rows = [make_row(cfg, seq_len, np.random.default_rng(sample_key(seed, split, "mqar", step, r)))
                for r in range(batch_size)]
        return Batch(torch.from_numpy(np.stack([r[0] for r in rows])), torch.from_numpy(np.stack([r[1] for r in rows])))
