"""The task contract the trainer consumes, and the task registry.

A task turns (split, seed, step) into a batch, deterministically, so a resumed run sees
exactly the data an uninterrupted one would: the data position is just the step.

    task = get_task("hashhop", {"hops": 2})
    batch = task.batch(step=10, batch_size=8, seq_len=2048, split="train", seed=0, knobs={"hops": 1})

`knobs` carries the values of scheduled settings at this step (e.g. hop mixture,
fraction of sequences at the current maximum length); a task ignores knobs it lacks.

The contract (`zoo.tasks.conformance` checks it, `zoo check-task NAME` runs the checks):
- deterministic: the same (seed, split, step) gives the same batch, from a fresh instance too;
- disjoint splits: training and evaluation never draw the same rows;
- aligned targets: `targets[:, t]` is what to predict after reading `tokens[:, :t+1]`, both
  `[B, L]` int64 inside the task's `vocab_size`, IGNORE where no loss is taken;
- a declared chance level: `chance("accuracy")` in (0, 1], what a guess scores.

Built-ins register with `@register_task` from `zoo.tasks.builtin`; plugins through the
`zoo.tasks` entry-point group, like mixers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from zoo.errors import ZooError, invalid
from zoo.plugins import PluginRegistry
from zoo.tasks.tokenizer import VOCAB_SIZE


@dataclass
class Batch:
    tokens: torch.Tensor   # [B, L] int64 inputs
    targets: torch.Tensor  # [B, L] int64 next tokens, IGNORE where no loss is taken
    # [B, L] int64 or None: the row position of the token that targets[:, t] copies (so
    # tokens[b, sources[b, t]] == targets[b, t]), -1 where none or unknown. Only tasks that know
    # it fill it (hashhop); a mixer's auxiliary loss may read it (HSA's `retrieval_loss`).
    sources: torch.Tensor | None = None

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
    # settings and sequence length the conformance checks use: small enough for CPU in seconds
    tiny: ClassVar[dict[str, Any]] = {}
    check_seq_len: ClassVar[int] = 256
    # answers that span several tokens, of which only the first needs the context searched (the
    # rest can be copied from where it was found): the trainer then also scores first tokens alone
    answer_spans: ClassVar[bool] = False

    def __init__(self, config: TaskConfig | None = None):
        self.config = config if config is not None else self.Config()

    def chance(self, metric: str, **setting: Any) -> float | None:
        """What a model scores on `metric` without reading its context: the level a result must
        clear to show anything was learned. `setting` overrides config fields (an evaluation
        grid may differ from training). Metrics: "loss" (nats per loss token), "accuracy"
        (exact match per query or next-token accuracy), "char_accuracy" and "first_accuracy" (an
        answer's first token, for tasks with `answer_spans`); None when the
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


TASKS: PluginRegistry[type[Task]] = PluginRegistry("zoo.tasks", kind="task", builtins="zoo.tasks.builtin",
                                                   listing="zoo tasks")


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register a `Task` subclass under its `name`."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ZooError(f"@register_task needs a zoo.tasks.base.Task subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not (isinstance(name, str) and name):
        raise ZooError(f"task class {cls.__qualname__} has no name", "set the class attribute name = \"my-task\"")
    TASKS.add(name, cls)
    return cls


def get_task(name: str, overrides: dict[str, Any] | None = None) -> Task:
    cls = TASKS.get(name)
    try:
        return cls(cls.Config(**(overrides or {})))
    except ValidationError as e:
        raise invalid(e, f"task '{name}'", f"fields: {', '.join(cls.Config.model_fields)}", model=cls.Config) from None
