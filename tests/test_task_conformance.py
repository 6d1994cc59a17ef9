"""Every registered task against the task contract, and the checks failing tasks that break it."""

import random

import pytest
import torch

from zoo.cli import main
from zoo.tasks import conformance
from zoo.tasks.base import IGNORE, TASKS, Batch, Task, register_task, stream_seed


@pytest.mark.parametrize("check", list(conformance.CHECKS))
@pytest.mark.parametrize("name", TASKS.names())
def test_builtin_task_conforms(name, check):
    conformance.CHECKS[check](TASKS.get(name))


class Copy(Task):
    """A well-behaved task: a random string, a separator, the string again."""

    name = "test-copy"
    vocab_size = 9

    def chance(self, metric, **setting):
        return {"accuracy": 1 / 8}.get(metric)

    def draw(self, step, batch_size, seq_len, split, seed):
        g = torch.Generator().manual_seed(stream_seed(seed, split, step))
        n = (seq_len - 1) // 2
        s = torch.randint(1, 9, (batch_size, n), generator=g)
        tokens = torch.zeros(batch_size, seq_len, dtype=torch.int64)
        tokens[:, :n], tokens[:, n + 1:2 * n + 1] = s, s
        targets = torch.full_like(tokens, IGNORE)
        targets[:, n:2 * n] = s
        return tokens, targets

    def batch(self, step, batch_size, seq_len, split="train", seed=0, knobs=None):
        return Batch(*self.draw(step, batch_size, seq_len, split, seed))


class Unseeded(Copy):
    def batch(self, step, batch_size, seq_len, split="train", seed=0, knobs=None):
        return Batch(*self.draw(random.randrange(1 << 30), batch_size, seq_len, split, seed))


class SameStream(Copy):
    def batch(self, step, batch_size, seq_len, split="train", seed=0, knobs=None):
        return Batch(*self.draw(step, batch_size, seq_len, "train", seed))


class Frozen(Copy):
    def batch(self, step, batch_size, seq_len, split="train", seed=0, knobs=None):
        return Batch(*self.draw(0, batch_size, seq_len, split, seed))


class Unshifted(Copy):
    def batch(self, step, batch_size, seq_len, split="train", seed=0, knobs=None):
        tokens, _ = self.draw(step, batch_size, seq_len, split, seed)
        return Batch(tokens, tokens.clone())


class Int32(Copy):
    def batch(self, step, batch_size, seq_len, split="train", seed=0, knobs=None):
        tokens, targets = self.draw(step, batch_size, seq_len, split, seed)
        return Batch(tokens.int(), targets)


class ShortRows(Copy):
    def batch(self, step, batch_size, seq_len, split="train", seed=0, knobs=None):
        tokens, targets = self.draw(step, batch_size, seq_len, split, seed)
        return Batch(tokens[:, :-1], targets[:, :-1])


class PastVocab(Copy):
    vocab_size = 4


class NoLoss(Copy):
    def batch(self, step, batch_size, seq_len, split="train", seed=0, knobs=None):
        tokens, targets = self.draw(step, batch_size, seq_len, split, seed)
        return Batch(tokens, torch.full_like(targets, IGNORE))


class NoChance(Copy):
    def chance(self, metric, **setting):
        return None


class ChanceAsPercent(Copy):
    def chance(self, metric, **setting):
        return {"accuracy": 12.5}.get(metric)


class KnobSensitive(Copy):
    def batch(self, step, batch_size, seq_len, split="train", seed=0, knobs=None):
        return Batch(*self.draw(step + len(knobs or {}), batch_size, seq_len, split, seed))


def test_a_well_behaved_task_passes():
    assert conformance.run_all(Copy) == dict.fromkeys(conformance.CHECKS)


@pytest.mark.parametrize("cls, check, why", [
    (Unseeded, "deterministic", "two instances differ"),
    (Frozen, "deterministic", "the stream does not move"),
    (KnobSensitive, "deterministic", "unknown knob"),
    (SameStream, "splits_disjoint", "eval rows also appear in training"),
    (Unshifted, "aligned", "shift targets by one"),
    (Int32, "shape_dtype", "not torch.int64"),
    (ShortRows, "shape_dtype", "asked for"),
    (PastVocab, "shape_dtype", "outside the vocabulary"),
    (NoLoss, "shape_dtype", "no loss token"),
    (NoChance, "chance", "declare what a guess scores"),
    (ChanceAsPercent, "chance", "not in (0, 1]"),
])
def test_checks_catch_broken_tasks(cls, check, why):
    results = conformance.run_all(cls)
    assert results[check] is not None and why in results[check], results


def test_check_task_cli_exits_non_zero_on_failure(capsys):
    register_task(Unshifted)
    try:
        assert main(["check-task", "test-copy"]) == 2
        out = capsys.readouterr()
        assert "FAIL" in out.out and "fails 1 conformance checks: aligned" in out.err
    finally:
        TASKS.items.pop("test-copy", None)
    assert main(["check-task", "hashhop"]) == 0


def test_register_task_refuses_what_is_not_a_task():
    from zoo.errors import ZooError

    with pytest.raises(ZooError, match="needs a zoo.tasks.base.Task subclass"):
        register_task(object)

    class Nameless(Copy):
        name = ""

    with pytest.raises(ZooError, match="has no name"):
        register_task(Nameless)
