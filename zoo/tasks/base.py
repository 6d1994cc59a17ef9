"""The task interface the trainer consumes.

A task turns (split, seed, step) into a batch, deterministically, so a resumed run sees
exactly the data an uninterrupted one would: the data position is just the step.

    task = get_task("hashhop", {"hops": 2})
    batch = task.batch(step=10, batch_size=8, seq_len=2048, split="train", seed=0, knobs={"hops": 1})

`knobs` carries the values of scheduled settings at this step (e.g. hop mixture,
fraction of sequences at the current maximum length); a task ignores knobs it lacks.
Training and evaluation draw from disjoint seed streams through `split`.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from zoo.errors import ZooError, invalid
from zoo.tasks.tokenizer import VOCAB_SIZE


@dataclass
class Batch:
    tokens: torch.Tensor   # [B, L] int64 inputs
    targets: torch.Tensor  # [B, L] int64 next tokens, IGNORE where no loss is taken

    @property
    def n_loss_tokens(self) -> int:
        return int((self.targets != IGNORE).sum())


IGNORE = -100


class TaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Task(ABC):
    name: ClassVar[str]
    Config: ClassVar[type[TaskConfig]] = TaskConfig
    vocab_size: int = VOCAB_SIZE  # token ids the task uses (the model's vocabulary is sized from it)

    def __init__(self, config: TaskConfig | None = None):
        self.config = config if config is not None else self.Config()

    def chance(self, metric: str, **setting: Any) -> float | None:
        """What a model scores on `metric` without reading its context: the level a result must
        clear to show anything was learned. `setting` overrides config fields (an evaluation
        grid may differ from training). Metrics: "loss" (nats per loss token), "accuracy"
        (exact match per query or next-token accuracy) and "char_accuracy"; None when the
        task has no such metric."""
        return None

    @abstractmethod
    def batch(self, step: int, batch_size: int, seq_len: int, split: str = "train", seed: int = 0,
              knobs: dict[str, Any] | None = None) -> Batch:
        """`[batch_size, seq_len]` tokens and targets for this step."""


SPLITS = {"train": 0, "eval": 1, "test": 2}


def stream_seed(seed: int, split: str, step: int) -> int:
    """Disjoint, deterministic seeds per (seed, split, step)."""
    if split not in SPLITS:
        raise ZooError(f"unknown split '{split}'", f"allowed: {', '.join(SPLITS)}")
    return (seed * 1_000_003 + SPLITS[split]) * 1_000_000_007 + step & 0x7FFF_FFFF_FFFF


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def get_task(name: str, overrides: dict[str, Any] | None = None) -> Task:
    import zoo.tasks.registry  # noqa: F401  (imports the built-in tasks)

    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=1, cutoff=0.6)
        raise ZooError(f"unknown task '{name}'", (f"did you mean '{close[0]}'? " if close else "")
                       + f"allowed: {', '.join(sorted(TASKS))}")
    cls = TASKS[name]
    try:
        return cls(cls.Config(**(overrides or {})))
    except ValidationError as e:
        raise invalid(e, f"task '{name}'", f"fields: {', '.join(cls.Config.model_fields)}", model=cls.Config) from None
