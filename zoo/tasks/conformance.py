"""The task conformance checks: what every task, built-in or plugin, must satisfy.

Each check takes a `Task` subclass and raises `AssertionError` with a reason when the task
breaks the contract in `zoo.tasks.base`. `tests/test_task_conformance.py` runs them for
every registered task; `zoo check-task NAME` runs them from the command line.

The task is built from its `tiny` settings and drawn at its `check_seq_len`, a few rows and
steps, so the checks run on CPU in seconds. Disjointness is checked on those sampled rows:
a task that repeats a training row in evaluation there is caught, one that does so rarely
may not be.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from zoo.tasks.base import IGNORE, Batch, Task

B = 3
STEPS = (0, 1, 7)
SEED = 5


def make(cls: type[Task]) -> Task:
    """A fresh instance at the task's tiny settings."""
    return cls(cls.Config(**cls.tiny))


def draw(task: Task, step: int = 0, split: str = "train", seed: int = SEED, knobs=None) -> Batch:
    return task.batch(step, B, task.check_seq_len, split=split, seed=seed, knobs=knobs)


def _same(a: Batch, b: Batch) -> bool:
    return torch.equal(a.tokens, b.tokens) and torch.equal(a.targets, b.targets)


def check_shape_dtype(cls: type[Task]) -> None:
    """tokens and targets are `[B, L]` int64 tensors of the requested size, ids inside the
    task's vocabulary, targets IGNORE or an id, and every row takes a loss somewhere."""
    task = make(cls)
    b = draw(task)
    L, V = task.check_seq_len, task.vocab_size
    for what, t in (("tokens", b.tokens), ("targets", b.targets)):
        assert isinstance(t, torch.Tensor), f"{what} is a {type(t).__name__}, not a torch.Tensor"
        assert tuple(t.shape) == (B, L), f"{what} has shape {tuple(t.shape)}, asked for {(B, L)}"
        assert t.dtype == torch.int64, f"{what} are {t.dtype}, not torch.int64"
    assert 0 <= int(b.tokens.min()) and int(b.tokens.max()) < V, \
        f"token ids span [{int(b.tokens.min())}, {int(b.tokens.max())}], outside the vocabulary [0, {V})"
    loss = b.targets != IGNORE
    bad = b.targets[loss]
    assert bad.numel() == 0 or (0 <= int(bad.min()) and int(bad.max()) < V), \
        f"target ids outside the vocabulary [0, {V}) and not IGNORE ({IGNORE})"
    assert bool(loss.any(1).all()), "a row has no loss token: every target is IGNORE"


def check_aligned(cls: type[Task]) -> None:
    """`targets[:, t]` is the token to predict after position t, not the token at t: targets
    that copy their own position teach the model nothing."""
    b = draw(make(cls))
    loss = b.targets != IGNORE
    if not bool(loss.any()):
        return  # nothing to align: shape_dtype reports rows without a loss token
    assert not torch.equal(b.targets[loss], b.tokens[loss]), \
        "every target equals the token at its own position: shift targets by one (targets[t] = tokens[t+1])"


def check_deterministic(cls: type[Task]) -> None:
    """The same (seed, split, step) gives the same batch from a fresh instance; another step or
    seed gives another batch; knobs the task lacks change nothing."""
    a, b = make(cls), make(cls)
    for step in STEPS:
        assert _same(draw(a, step), draw(b, step)), f"two instances differ at step {step} (same seed and split)"
    assert _same(draw(a, 3), draw(a, 3)), "drawing step 3 twice from one instance differs"
    assert not _same(draw(a, 0), draw(a, 1)), "steps 0 and 1 give the same batch: the stream does not move"
    assert not _same(draw(a, 0, seed=SEED), draw(a, 0, seed=SEED + 1)), \
        f"seeds {SEED} and {SEED + 1} give the same batch"
    assert _same(draw(a, 2), draw(a, 2, knobs={"no-such-knob": 1})), "an unknown knob changed the batch"


def check_splits_disjoint(cls: type[Task]) -> None:
    """No evaluation row equals a training row (sampled over a few steps)."""
    task = make(cls)
    train = torch.cat([draw(task, s, "train").tokens for s in STEPS])
    held = torch.cat([draw(task, s, "eval").tokens for s in STEPS])
    shared = (train[:, None, :] == held[None, :, :]).all(-1)
    assert not bool(shared.any()), f"{int(shared.any(0).sum())} eval rows also appear in training"


def check_chance(cls: type[Task]) -> None:
    """`chance("accuracy")` is declared, in (0, 1]; a declared chance loss is positive."""
    task = make(cls)
    acc = task.chance("accuracy")
    assert acc is not None, "chance('accuracy') is None: declare what a guess scores"
    assert isinstance(acc, float | int) and 0 < acc <= 1, f"chance('accuracy') = {acc!r}, not in (0, 1]"
    loss = task.chance("loss")
    assert loss is None or (math.isfinite(loss) and loss > 0), f"chance('loss') = {loss!r}, not a positive number"


CHECKS: dict[str, Callable[[type[Task]], None]] = {
    "shape_dtype": check_shape_dtype,
    "aligned": check_aligned,
    "deterministic": check_deterministic,
    "splits_disjoint": check_splits_disjoint,
    "chance": check_chance,
}


def run_all(cls: type[Task]) -> dict[str, str | None]:
    """Run every check; check name -> None (passed) or the failure message."""
    out: dict[str, str | None] = {}
    for name, fn in CHECKS.items():
        try:
            fn(cls)
            out[name] = None
        except Exception as e:  # report every failure, not only the first
            out[name] = f"{type(e).__name__}: {e}"
    return out
