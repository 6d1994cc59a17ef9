"""The evaluator contract: what runs on a trained model after training, and how its rows are kept.

An evaluator has a name (its `[eval.NAME]` table in an experiment file and its `kind` in the
results store), a pydantic config (the table's fields), a declared row schema, and a grid of
cells. `evaluate(target, config, cell)` returns the rows of one cell; the zoo stores them as
soon as the cell is done, so an evaluation that is killed resumes at the next cell, and cells
already stored are never run again.

    @register_evaluator
    class PositionAccuracy(Evaluator):
        name = "position-accuracy"
        config_cls = PositionAccuracyConfig
        columns = {"bucket": int, "accuracy": float, "tokens": int}
        cell_columns = ("bucket",)

        def cells(self, config): return [(b,) for b in range(config.buckets)]
        def evaluate(self, target, config, cell): return [{"bucket": cell[0], ...}]

Built-ins (HashHop, perplexity) register in `zoo.eval.builtin`; installed packages through the
`zoo.evaluators` entry-point group, whose value is the module holding their decorators.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from zoo.errors import ZooError
from zoo.plugins import PluginRegistry

Cell = tuple[Any, ...]
# rows of a finished cell, and a short note on it for the console
Keep = Callable[[list[dict], str], None]


@dataclass
class EvalTarget:
    """What an evaluator runs on: a trained model and the config it was trained with."""

    model: Any                                    # a ZooLM (or anything with its interface)
    run_config: dict[str, Any]                    # the run's stored config: model, task, train
    device: Any = None
    reload: Callable[[], Any] | None = None       # a fresh copy of the trained model (for variants that modify it)
    on_sample: Callable[[int], None] | None = None  # progress, in the evaluator's own units


class Evaluator(ABC):
    """Subclass, set the class attributes, implement `cells` and `evaluate`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    config_cls: ClassVar[type[BaseModel]]
    # every column a row may carry -> its type (a tuple for several), any value may be None;
    # `cell_columns` are in every row and name the cell it belongs to
    columns: ClassVar[dict[str, type | tuple[type, ...]]]
    cell_columns: ClassVar[tuple[str, ...]]
    # bumped when what the evaluator stores changes, so old rows are not read as new ones
    version: ClassVar[int] = 1
    # the task a model must have been trained on (None: any)
    task: ClassVar[str | None] = None
    # a small config of at least two cells, and task settings, for the conformance checks (CPU)
    example: ClassVar[dict[str, Any]] = {}
    example_task: ClassVar[dict[str, Any]] = {}
    # model settings of the conformance checks' tiny model (default: one RoPE layer), for an
    # evaluator that needs a kind of layer, e.g. {"layers": ["hsa"]}
    example_model: ClassVar[dict[str, Any]] = {}

    @abstractmethod
    def cells(self, config: Any) -> list[Cell]:
        """Every cell of an evaluation, in the order they run."""

    @abstractmethod
    def evaluate(self, target: EvalTarget, config: Any, cell: Cell) -> list[dict[str, Any]]:
        """The rows of one cell; deterministic given (model, config, cell). A cell the model
        cannot run (too long, a layer it lacks) is rows with status "n/a" and the reason."""

    def check(self, config: Any) -> None:  # noqa: B027 (optional: most configs say it all)
        """What the config's fields cannot say alone (raise a ZooError)."""

    def note(self, cell: Cell, rows: list[dict[str, Any]]) -> str:
        return f"{', '.join(map(str, cell))}: {len(rows)} rows"

    # -- shared by every evaluator ----------------------------------------------------------------

    def make_config(self, raw: Any = None) -> Any:
        """The validated config of a `[eval.NAME]` table; one-line ZooError when it is wrong."""
        if isinstance(raw, self.config_cls):
            return raw
        try:
            config = self.config_cls(**(raw or {}))
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or "(table)"
            if err["type"] == "extra_forbidden":
                raise ZooError(f"eval.{self.name}: unknown key '{key}'",
                               f"allowed: {', '.join(self.config_cls.model_fields)}") from None
            raise ZooError(f"eval.{self.name}: key '{key}' = {err.get('input')!r} is invalid: {err['msg']}",
                           f"fields: {', '.join(self.config_cls.model_fields)}") from None
        except TypeError as e:
            raise ZooError(f"eval.{self.name}: the settings must be a table, got {raw!r}", str(e)) from None
        self.check(config)
        return config

    def identity(self, raw: Any) -> Any:
        """What the eval id hashes: the validated config with its defaults."""
        return self.make_config(raw).model_dump()

    def eval_id(self, raw: Any) -> str:
        """A stable id of (evaluator, config): stored rows carry it, so an evaluation never repeats
        and a report reads exactly the rows of the evaluation its spec names."""
        from zoo.store import config_id

        ident: dict[str, Any] = {"kind": self.name, "settings": self.identity(raw)}
        if self.version != 1:  # version 1 stays out of the id
            ident["version"] = self.version
        return config_id(ident)

    def cell_of(self, row: dict[str, Any]) -> Cell:
        return tuple(row.get(c) for c in self.cell_columns)

    def todo(self, config: Any, stored: list[dict[str, Any]]) -> list[Cell]:
        """The cells not yet stored."""
        done = {self.cell_of(r) for r in stored}
        return [c for c in self.cells(config) if c not in done]

    def complete(self, raw: Any, stored: list[dict[str, Any]]) -> bool:
        return bool(stored) and not self.todo(self.make_config(raw), stored)

    def run(self, target: EvalTarget, raw: Any, stored: list[dict[str, Any]], keep: Keep) -> None:
        """Each cell not yet in `stored`, its rows kept as soon as it is done."""
        config = self.make_config(raw)
        for cell in self.todo(config, stored):
            rows = self.evaluate(target, config, cell)
            keep(rows, self.note(cell, rows))


def schema_errors(ev: Evaluator, rows: list[dict[str, Any]]) -> list[str]:
    """How `rows` differ from what `ev` declares (empty when they match)."""
    out = []
    for i, row in enumerate(rows):
        if extra := sorted(set(row) - set(ev.columns)):
            out.append(f"row {i}: undeclared columns {', '.join(extra)}")
        for c in ev.cell_columns:
            if c not in row:
                out.append(f"row {i}: no cell column '{c}'")
        for c, v in row.items():
            want = ev.columns.get(c)
            if want is None or v is None:
                continue
            types = want if isinstance(want, tuple) else (want,)
            if float in types:  # an integer is a fine float
                types = (*types, int)
            if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
                out.append(f"row {i}: column '{c}' = {v!r} is not {' or '.join(t.__name__ for t in types)}")
    return out


class EvaluatorRegistry(PluginRegistry[Evaluator]):
    def ensure_loaded(self) -> None:
        # a plugin's evaluator module imports its package, which may register mixers: discover the
        # mixer plugins first, so those mixers are recorded under their package, not as built-ins
        from zoo.registry import MIXERS

        MIXERS.ensure_loaded()
        super().ensure_loaded()


EVALUATORS = EvaluatorRegistry("zoo.evaluators", kind="evaluator", builtins="zoo.eval.builtin",
                               listing="zoo evaluators")


def register_evaluator(cls: type[Evaluator]) -> type[Evaluator]:
    """Class decorator: registers one instance of `cls` under `cls.name`."""
    for attr in ("name", "config_cls", "columns", "cell_columns"):
        if not hasattr(cls, attr):
            raise ZooError(f"evaluator {cls.__qualname__} does not set '{attr}'",
                           "set name, config_cls, columns and cell_columns on the class")
    if missing := [c for c in cls.cell_columns if c not in cls.columns]:
        raise ZooError(f"evaluator '{cls.name}': cell columns {', '.join(missing)} are not in its columns",
                       "declare every column with its type")
    EVALUATORS.add(cls.name, cls())
    return cls


def get_evaluator(name: str) -> Evaluator:
    return EVALUATORS.get(name)
