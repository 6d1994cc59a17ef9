"""The evaluator conformance suite: what every evaluator, built-in or plugin, must satisfy.

Each check takes an `Evaluator` and raises `AssertionError` with a reason when it breaks the
contract of `zoo.eval.base`. `tests/test_evaluators.py` runs them for every registered
evaluator; `zoo check-evaluator NAME` runs them from the command line.

The checks run the evaluator's `example` config (small cells) on a tiny untrained model of its
`task` (or hashhop), on CPU, seeded: the model is the same in every call, so any difference
between two runs comes from the evaluator.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any

import torch

from zoo.errors import ZooError
from zoo.eval.base import EvalTarget, Evaluator, schema_errors

D = 32
SEQ_LEN = 64
LAYERS = ["rope"]  # a RoPE model: evaluation-time scalings apply to it


def target(ev: Evaluator, seed: int = 0) -> EvalTarget:
    """A tiny untrained model of the evaluator's task (and `example_model` settings), the same
    for the same seed."""
    from zoo.model import ZooLM
    from zoo.train.config import RunConfig

    run = RunConfig(**{"model": {"d_model": D, "n_layers": 1, "layers": LAYERS, **ev.example_model},
                       "task": {"name": ev.task or "hashhop", "config": dict(ev.example_task)},
                       "train": {"steps": 1, "seq_len": SEQ_LEN, "batch_size": 1}})

    def build() -> torch.nn.Module:
        torch.manual_seed(seed)
        return ZooLM(run.model).eval()

    return EvalTarget(build(), run.model_dump(), torch.device("cpu"), reload=build)


@cache
def _all_rows(ev: Evaluator) -> tuple[tuple[Any, ...], ...]:
    """(cell, rows) of every cell of the example, computed once per suite."""
    config = ev.make_config(ev.example)
    t = target(ev)
    return tuple((cell, ev.evaluate(t, config, cell)) for cell in ev.cells(config))


def _json(rows: list[dict]) -> str:
    return json.dumps(rows, sort_keys=True, default=str)


def config_errors_are_one_line(ev: Evaluator) -> None:
    ev.make_config(ev.example)
    typed = [n for n, f in ev.config_cls.model_fields.items() if f.annotation is not Any]
    for bad in [{"no_such_setting_": 1}] + [{n: object()} for n in typed[:1]]:
        try:
            ev.make_config(bad)
        except ZooError as e:
            assert "\n" not in str(e), f"the error for {bad} spans several lines: {e}"
        else:
            raise AssertionError(f"config {bad} was accepted; a config must forbid unknown keys and check types")


def eval_id_is_stable(ev: Evaluator) -> None:
    a, b = ev.eval_id(dict(ev.example)), ev.eval_id(json.loads(json.dumps(ev.example)))
    assert a == b, f"eval id changes between equal configs: {a} vs {b}"
    assert len(a) == 12 and all(c in "0123456789abcdef" for c in a), f"eval id {a!r} is not 12 hex digits"


def has_cells(ev: Evaluator) -> None:
    cells = ev.cells(ev.make_config(ev.example))
    assert len(cells) >= 2, f"the example config has {len(cells)} cells; give it two or more, so resuming is tested"
    assert len(set(cells)) == len(cells), f"cells repeat: {cells}"
    assert all(isinstance(c, tuple) and len(c) == len(ev.cell_columns) for c in cells), \
        f"cells must be tuples of the cell columns {ev.cell_columns}: {cells}"


def rows_match_schema(ev: Evaluator) -> None:
    for cell, rows in _all_rows(ev):
        assert rows, f"cell {cell} gave no rows"
        errors = schema_errors(ev, rows)
        assert not errors, f"cell {cell}: {'; '.join(errors[:3])}"
        wrong = [ev.cell_of(r) for r in rows if ev.cell_of(r) != cell]
        assert not wrong, f"cell {cell} gave rows of cells {wrong[:3]}"
        json.dumps(rows)  # the store keeps rows as JSON


def deterministic(ev: Evaluator) -> None:
    config = ev.make_config(ev.example)
    cell, first = _all_rows(ev)[0]
    again = ev.evaluate(target(ev), config, cell)
    assert _json(again) == _json(first), f"cell {cell} gave different rows on the same model"


def resumable(ev: Evaluator) -> None:
    done = [r for _, rows in _all_rows(ev) for r in rows]
    kept: list[list[dict]] = []
    ev.run(target(ev), dict(ev.example), done, lambda rows, note: kept.append(rows))
    assert not kept, f"a second run over stored cells evaluated {len(kept)} cells again"
    assert ev.complete(dict(ev.example), done), "complete() is false with every cell stored"
    assert not ev.complete(dict(ev.example), []), "complete() is true with nothing stored"
    cells = _all_rows(ev)
    ev.run(target(ev), dict(ev.example), list(cells[0][1]), lambda rows, note: kept.append(rows))
    want = [rows for _, rows in cells[1:]]
    assert _json(kept) == _json(want), "a run resumed after the first cell did not give the remaining cells' rows"


CHECKS: dict[str, Callable[[Evaluator], None]] = {
    "config_errors_are_one_line": config_errors_are_one_line,
    "eval_id_is_stable": eval_id_is_stable,
    "has_cells": has_cells,
    "rows_match_schema": rows_match_schema,
    "deterministic": deterministic,
    "resumable": resumable,
}


def run_all(ev: Evaluator) -> dict[str, str | None]:
    """Check name -> None (passed) or why it failed."""
    out: dict[str, str | None] = {}
    _all_rows.cache_clear()
    for name, check in CHECKS.items():
        try:
            check(ev)
            out[name] = None
        except Exception as e:  # a check that crashes fails with its error, the others still run
            out[name] = str(e) if isinstance(e, AssertionError) else f"{type(e).__name__}: {e}"
    _all_rows.cache_clear()
    return out
