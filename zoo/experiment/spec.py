"""Experiment specs: one TOML file says what to compare; `plan` expands it into runs.

    name = "smoke"
    mixers = ["nope", "sinusoidal"]          # or one table per mixer, with overrides:
    [mixers.hsa]                             #   mixer (registry name, default the key), config,
    config = { window = 64 }                 #   layers (pattern), model, train, task overrides
    [model]
    d_model = 64
    n_layers = 2
    [task]
    name = "hashhop"
    [train]
    steps = 200
    seq_len = 256
    [sweep]                                  # axes: every combination is a run
    lr = [1e-3, 3e-3]                        # reports take each mixer's best lr by `metric`
    seed = [0, 1]                            # reports show the mean over seeds with min-max
    metric = "eval_loss"                     # or eval_acc, hashhop_accuracy (at the training length)
    match_params = true                      # hold parameters equal across mixers
    [eval.hashhop]                           # evaluations run after training: any registered
    n_chars = [200, 800]                     #   evaluator's table (`zoo evaluators`), and bench
    [hf]                                     # pretrained Hugging Face causal LMs, evaluated
    qwen = "Qwen/Qwen2.5-0.5B"               #   beside the mixers (or tables: name, revision,
                                             #   dtype, trust_remote_code, rope_scaling)

Errors name the file, the key, the bad value and what is allowed. Parameter matching
adjusts `d_model` (or `mlp_hidden`) of each mixer to the parameter count of the reference
mixer (the first listed) at the same sweep point, and the plan reports what it chose.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator

from zoo.errors import ZooError, invalid
from zoo.eval.hf import HFModelRef
from zoo.model import ModelConfig
from zoo.stats import SELECT_METRICS
from zoo.train.config import RunConfig, TaskRef, TrainConfig
from zoo.train.cost import count_params, run_budget

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

# sweep shorthands -> dotted paths into a run config
AXIS_ALIASES = {"d_model": "model.d_model", "width": "model.d_model", "n_layers": "model.n_layers",
                "depth": "model.n_layers", "mlp_hidden": "model.mlp_hidden", "lr": "train.lr", "seed": "train.seed",
                "batch_size": "train.batch_size", "seq_len": "train.seq_len", "steps": "train.steps"}


class MixerEntry(BaseModel):
    """One contestant: a mixer (or a hybrid pattern) with its own overrides."""

    model_config = ConfigDict(extra="forbid")

    mixer: str | None = Field(None, description="registry name (default: the table key)")
    config: dict[str, Any] = Field(default_factory=dict, description="the mixer's config overrides")
    layers: list[str] | None = Field(None, min_length=1, description="layer pattern (default: [mixer])")
    model: dict[str, Any] = Field(default_factory=dict, description="model overrides for this mixer")
    train: dict[str, Any] = Field(default_factory=dict, description="training overrides for this mixer")
    task: dict[str, Any] = Field(default_factory=dict, description="task config overrides for this mixer")


class TrainSpec(TrainConfig):
    """The training settings every run shares (TrainConfig's keys, bounds and defaults). The
    budget may come from a sweep axis, `tokens_per_param` or a mixer's own overrides, so it is
    checked on each planned run rather than here."""

    @model_validator(mode="after")
    def _has_budget(self) -> TrainSpec:  # replaces TrainConfig's check of the same name
        return self


class ModelSpec(BaseModel):
    """The shared model; layers come from the mixers."""

    model_config = ConfigDict(extra="forbid")

    # ModelConfig's own fields (defaults, bounds), so a spec and a run agree on every default
    d_model: int = ModelConfig.model_fields["d_model"]
    n_layers: int = ModelConfig.model_fields["n_layers"]
    mlp_hidden: int | None = ModelConfig.model_fields["mlp_hidden"]
    vocab_size: int | None = Field(None, ge=2, le=1 << 21, description="default: the task's (the byte "
                                   "tokenizer's 260, or mqar's vocab_size)")
    norm_eps: float = ModelConfig.model_fields["norm_eps"]
    chunk_size: int = ModelConfig.model_fields["chunk_size"]
    mixer_config: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                    description="config overrides by mixer name (hybrid partners)")


def _check_axis_path(k: str) -> None:
    if k.split(".")[0] not in ("model", "train", "task") or "." not in k:
        raise ValueError(f"axis '{k}' must be a dotted path under model., train. or task. "
                         f"(or one of {', '.join(AXIS_ALIASES)})")


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    d_model: list[int] | None = Field(None, min_length=1)
    n_layers: list[int] | None = Field(None, min_length=1)
    lr: list[float] | None = Field(None, min_length=1)
    seed: list[int] | None = Field(None, min_length=1)
    axes: dict[str, list[Any]] = Field(default_factory=dict, description="more axes: dotted path -> values, "
                                       "e.g. 'train.batch_size' = [8, 16]")
    sizes: list[dict[str, Any]] | None = Field(None, min_length=1, description="model sizes, one axis whose "
                                               "values set several paths together, e.g. {d_model = 128, "
                                               "'model.mixer_config.rope.n_heads' = 8}")
    tokens_per_param: float | None = Field(None, gt=0, le=1e6, description="train each run on this many tokens "
                                           "per non-embedding parameter (its max_tokens; compute-optimal "
                                           "budgets across sizes, e.g. 20 as in Hoffmann et al. 2022)")
    match_params: bool = Field(False, description="hold the parameter count equal across mixers")
    match_by: Literal["d_model", "mlp_hidden"] = Field("d_model", description="what matching adjusts")
    match_reference: str | None = Field(None, description="mixer whose count is the target (default: the first)")
    multiple: int = Field(8, ge=1, le=4096, description="matched widths are multiples of this")
    select: Literal["best"] = Field("best", description="where a mixer ran at several learning rates, reports use "
                                    "its best by `metric` (mean over seeds) and draw the whole sweep beside it")
    metric: str = Field("eval_loss", description="what `select` ranks by, at the training length: "
                        + ", ".join(f"{k} ({'lower' if v == 'min' else 'higher'} is better)"
                                    for k, v in SELECT_METRICS.items()))

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if v not in SELECT_METRICS:
            raise ValueError(f"unknown metric '{v}'; allowed: {', '.join(SELECT_METRICS)}")
        return v

    @field_validator("axes")
    @classmethod
    def _paths(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for k, vals in v.items():
            _check_axis_path(k)
            if not vals:
                raise ValueError(f"axis '{k}' has no values")
        return v

    @field_validator("sizes")
    @classmethod
    def _size_paths(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for size in v or []:
            if not size:
                raise ValueError("a size sets nothing; give it at least one path, e.g. d_model = 128")
            for k in size:
                if k not in AXIS_ALIASES:
                    _check_axis_path(k)
        return v

    def all_axes(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        if self.sizes is not None:  # first, so a plan runs the small models first
            out["size"] = [{AXIS_ALIASES.get(k, k): v for k, v in size.items()} for size in self.sizes]
        out.update({AXIS_ALIASES[k]: getattr(self, k) for k in ("d_model", "n_layers", "lr", "seed")
                    if getattr(self, k) is not None})
        for k, vals in self.axes.items():
            out[AXIS_ALIASES.get(k, k)] = vals
        return out


class BenchEval(BaseModel):
    """Speed and memory of the experiment's mixers at its width (one `zoo bench` run per experiment;
    speed does not depend on the trained weights)."""

    model_config = ConfigDict(extra="forbid")

    lengths: list[Annotated[int, Field(ge=1, le=1 << 26)]] = Field(default_factory=lambda: [1024, 4096], min_length=1,
                               description="sequence lengths to time")
    modes: list[Literal["fwd", "fwdbwd", "decode"]] = Field(default_factory=lambda: ["fwd", "fwdbwd", "decode"],
                                                           min_length=1)
    tokens_per_batch: int = Field(2**17, ge=1, le=2**32, description="batch = max(1, tokens_per_batch // length)")
    model: bool = Field(False, description="also time whole models (n_layers of each mixer)")
    peers: bool = Field(True, description="time the peer kernels beside each mixer")
    budget_s: float | None = Field(None, gt=0, le=10**7, description="wall-clock budget of the bench")


class EvalSpec(BaseModel):
    """`[eval.NAME]` tables: `bench`, and any registered evaluator (`zoo evaluators`), e.g.
    `[eval.hashhop]` (zoo.eval.hashhop.HashHopGrid) or `[eval.ppl]` (zoo.eval.ppl.PplEval). An
    evaluator's table is kept as written and checked against its config in `_check_semantics`."""

    model_config = ConfigDict(extra="allow")

    bench: BenchEval | None = Field(None, description="speed and memory of each trained model")

    @model_validator(mode="after")
    def _tables(self) -> EvalSpec:
        for name, table in (self.model_extra or {}).items():
            if not isinstance(table, dict):
                raise ValueError(f"eval.{name} must be a table of the evaluator's settings, got {table!r}")
        return self

    def evaluators(self) -> dict[str, dict[str, Any]]:
        """Evaluator name -> its table, in the order written."""
        return dict(self.model_extra or {})


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1)
    description: str = ""
    mixers: dict[str, MixerEntry] = Field(..., min_length=1, description="contestants: a list of names or tables")
    model: ModelSpec = Field(default_factory=ModelSpec)
    task: TaskRef = Field(default_factory=TaskRef)
    train: TrainSpec = Field(default_factory=TrainSpec, description="training settings (see TrainConfig)")
    sweep: SweepSpec = Field(default_factory=SweepSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    hf: dict[str, HFModelRef] = Field(default_factory=dict, description="pretrained Hugging Face causal LMs "
                                      "evaluated beside the mixers: label -> hub id / directory, or a table")
    companions: list[str] = Field(default_factory=list, description="names of other experiments whose runs this "
                                  "one's report shows beside its own (e.g. recall at the same model sizes)")

    @model_validator(mode="after")
    def _companions(self) -> ExperimentSpec:
        twice = sorted({c for c in self.companions if self.companions.count(c) > 1})
        if twice or self.name in self.companions or any(not c.strip() for c in self.companions):
            raise ValueError("companions name other experiments, each once, not this one "
                             f"(got {self.companions})")
        return self

    @field_serializer("train")
    def _train_as_written(self, train: TrainSpec) -> dict[str, Any]:
        return train.model_dump(mode="json", exclude_unset=True)

    @field_validator("hf", mode="before")
    @classmethod
    def _hf_short_form(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: {"name": x} if isinstance(x, str) else x for k, x in v.items()}
        return v

    @field_validator("mixers", mode="before")
    @classmethod
    def _list_form(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not all(isinstance(x, str) for x in v):
                raise ValueError("a list of mixers holds registry names; use tables for overrides")
            twice = sorted({x for x in v if v.count(x) > 1})
            if twice:
                raise ValueError(f"mixers listed twice: {', '.join(twice)}")
            return {x: {} for x in v}
        return v


# -- loading and validation ----------------------------------------------------------------------

def load_spec(path: str | Path) -> ExperimentSpec:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ZooError(f"no experiment file {path}", "see experiments/ for examples") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise ZooError(f"cannot read experiment file {path}: {e}", "give a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise ZooError(f"{path}: not valid TOML: {e}", "see https://toml.io") from None
    except RecursionError:
        raise ZooError(f"{path}: tables or arrays nested too deeply to read", "flatten the file") from None
    return parse_spec(raw, path)


def parse_spec(raw: dict[str, Any], path: str | Path = "<spec>") -> ExperimentSpec:
    path = Path(path)
    try:
        spec = ExperimentSpec(**raw)
    except ValidationError as e:
        raise invalid(e, str(path), model=ExperimentSpec) from None
    _check_semantics(spec, path)
    return spec


def _check_semantics(spec: ExperimentSpec, path: Path) -> None:
    """What pydantic cannot see: registry names, task settings, merged training settings."""
    from zoo import registry
    from zoo.tasks.base import get_task

    names = registry.names()
    for label, entry in spec.mixers.items():
        for key, name in [(f"mixers.{label}" + (".mixer" if entry.mixer else ""), entry.mixer or label)] + \
                [(f"mixers.{label}.layers", n) for n in entry.layers or []]:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
                raise ZooError(f"{path}: key '{key}' = '{name}' is not a registered mixer",
                               (f"did you mean {', '.join(close)}? " if close else "") + f"allowed: {', '.join(names)}")
        try:
            registry.get_spec(entry.mixer or label).make_config(entry.config)
        except ZooError as e:
            raise ZooError(f"{path}: mixers.{label}.config: {e.message}", e.hint) from None
        for k in entry.model:
            if k not in ModelSpec.model_fields:
                raise ZooError(f"{path}: unknown key 'mixers.{label}.model.{k}'",
                               f"allowed: {', '.join(ModelSpec.model_fields)}")
        try:
            train = _deep_merge(spec.train.model_dump(exclude_unset=True), entry.train)
            if spec.sweep.tokens_per_param is not None:  # the plan sets max_tokens per run
                train.setdefault("max_tokens", 1)
            TrainConfig(**train)
        except ValidationError as e:
            where = ("mixers", label, "train") if entry.train else ("train",)
            raise invalid(e, str(path), model=TrainConfig, prefix=where) from None
        try:
            get_task(spec.task.name, {**spec.task.config, **entry.task})
        except ZooError as e:
            raise ZooError(f"{path}: task: {e.message}", e.hint) from None
    used = {n for label, entry in spec.mixers.items() for n in (entry.layers or [entry.mixer or label])}
    for name in spec.model.mixer_config:
        if name not in used:
            raise ZooError(f"{path}: key 'model.mixer_config.{name}' names a mixer no contestant uses",
                           f"used: {', '.join(sorted(used))}")
        try:
            registry.get_spec(name).make_config(spec.model.mixer_config[name])
        except ZooError as e:
            raise ZooError(f"{path}: model.mixer_config.{name}: {e.message}", e.hint) from None
    from zoo.eval.base import EVALUATORS

    for name, table in spec.eval.evaluators().items():
        if name not in EVALUATORS.names():
            e = EVALUATORS.why_missing(name)
            raise ZooError(f"{path}: key 'eval.{name}': {e.message}", f"{e.hint}; or bench")
        ev = EVALUATORS.get(name)
        try:
            ev.check(ev.config_cls(**table))
        except ValidationError as e:
            raise invalid(e, str(path), model=ev.config_cls, prefix=("eval", name)) from None
        except ZooError as e:
            raise ZooError(f"{path}: eval.{name}: {e.message}", e.hint) from None
        if ev.task is not None and spec.task.name != ev.task:
            raise ZooError(f"{path}: key 'eval.{name}' needs task.name = '{ev.task}', got '{spec.task.name}'",
                           ev.description)
    if spec.sweep.metric == "hashhop_accuracy" and "hashhop" not in spec.eval.evaluators():
        raise ZooError(f"{path}: key 'sweep.metric' = 'hashhop_accuracy' needs an [eval.hashhop] grid",
                       "add one whose lengths include the training length, or select by eval_loss")
    if spec.sweep.match_reference is not None and spec.sweep.match_reference not in spec.mixers:
        raise ZooError(f"{path}: key 'sweep.match_reference' = '{spec.sweep.match_reference}' is not a mixer "
                       "of this experiment", f"allowed: {', '.join(spec.mixers)}")


def _deep_merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _set_path(d: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    for i, p in enumerate(parts[:-1]):
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ZooError(f"'{path}': '{'.'.join(parts[:i + 1])}' is a value, not a table",
                           f"set '{'.'.join(parts[:i + 1])}' itself")
    d[parts[-1]] = value


def eval_settings(spec: ExperimentSpec) -> dict[str, Any]:
    """The evaluations run after training: evaluator name -> its table (bench runs once per
    experiment, apart)."""
    return spec.eval.evaluators()


def eval_id(kind: str, settings: Any) -> str:
    """The evaluator's id of these settings: stored rows carry it, so an evaluation never repeats
    and a report of the experiment reads exactly the rows its plan produced."""
    from zoo.eval.base import get_evaluator

    return get_evaluator(kind).eval_id(settings)


# -- planning -------------------------------------------------------------------------------------

@dataclass
class PlannedRun:
    label: str
    mixer: str
    run: RunConfig
    run_id: str
    params: int
    steps: int
    tokens: float
    flops: float
    point: dict[str, Any] = field(default_factory=dict)  # sweep values of this run
    matched: str | None = None                            # what parameter matching chose


def _model_config(spec: ExperimentSpec, entry: MixerEntry, mixer: str, model_over: dict) -> dict:
    base = spec.model.model_dump(exclude_none=True)
    layers = entry.layers or [mixer]
    shared_cfg = base.pop("mixer_config")
    model_over = dict(model_over)
    for name, over in model_over.pop("mixer_config", {}).items():  # a sweep point's mixer settings
        shared_cfg[name] = {**shared_cfg.get(name, {}), **over}
    mcfg = {n: dict(shared_cfg.get(n, {})) for n in dict.fromkeys(layers) if n in shared_cfg}
    mcfg[mixer] = {**mcfg.get(mixer, {}), **entry.config}
    m = {**base, **model_over, "layers": layers, "mixer_config": {k: v for k, v in mcfg.items() if k in layers}}
    return m


def _match(mc: dict, target: int, by: str, multiple: int) -> tuple[dict, int]:
    """Adjust d_model or mlp_hidden so the parameter count is closest to `target`."""
    if by == "mlp_hidden":
        cfg = ModelConfig(**mc)
        h0 = cfg.hidden()
        p0 = count_params(cfg)
        slope = 3 * cfg.d_model * cfg.n_layers  # SwiGLU: three d x h matrices per block
        h = max(multiple, multiple * round((h0 + (target - p0) / slope) / multiple))
        out = {**mc, "mlp_hidden": h}
        return out, count_params(ModelConfig(**out))
    d0 = mc["d_model"]
    lo = max(multiple, (d0 // 4) // multiple * multiple)
    stride = multiple * max(1, -(-(4 * d0 + 1 - lo) // (256 * multiple)))  # a grid of at most 256 widths
    grid = range(lo, 4 * d0 + 1, stride)
    counts: dict[int, int | None] = {}

    def count(i: int) -> int | None:  # None: no valid model at this width (e.g. heads do not divide it)
        if i not in counts:
            try:
                counts[i] = count_params(ModelConfig(**{**mc, "d_model": grid[i]}))
            except Exception:
                counts[i] = None
        return counts[i]

    def valid(i: int, step: int, stop: int) -> int | None:  # the first width from i on with a model
        while i != stop and count(i) is None:
            i += step
        return None if i == stop else i

    # parameters grow with the width, so bisect for the first width at or above the target
    # (about 8 models counted where a scan of the grid counted up to 256) ...
    a, b, above = 0, len(grid), None
    while a < b:
        mid = (a + b) // 2
        j = valid(mid, 1, b)
        if j is not None and count(j) >= target:
            above, b = j, mid
        elif j is None:
            b = mid
        else:
            a = j + 1
    # ... then take it or the valid width below it, whichever is closer (the smaller on a tie)
    below = valid((above if above is not None else len(grid)) - 1, -1, -1)
    options = [i for i in (below, above) if i is not None]
    if not options:
        raise ZooError(f"parameter matching found no valid d_model near {d0} for layers {mc['layers']}")
    i = min(options, key=lambda i: (abs(count(i) - target), grid[i]))
    return {**mc, "d_model": grid[i]}, count(i)


def _point_paths(point: dict[str, Any]) -> dict[str, Any]:
    """A sweep point as dotted path -> value, a size's paths spread out."""
    out = {k: v for k, v in point.items() if k != "size"}
    out.update(point.get("size") or {})
    return out


def plan(spec: ExperimentSpec) -> list[PlannedRun]:
    """Expand mixers x sweep axes into runs (deduplicated by run id)."""
    from zoo.tasks.base import get_task

    axes = spec.sweep.all_axes()
    points = [dict(zip(axes, vals, strict=True)) for vals in itertools.product(*axes.values())] or [{}]
    ref_label = spec.sweep.match_reference or next(iter(spec.mixers))
    out: list[PlannedRun] = []
    seen: set[str] = set()
    for point in points:
        target = None
        for label, entry in sorted(spec.mixers.items(), key=lambda kv: kv[0] != ref_label):
            try:
                mixer = entry.mixer or label
                doc: dict[str, Any] = {"model": {}, "train": spec.train.model_dump(exclude_unset=True),
                                       "task": {"config": copy.deepcopy(spec.task.config)}}
                for path, value in _point_paths(point).items():
                    _set_path(doc, path if not path.startswith("task.") else "task.config." + path[5:], value)
                doc["train"] = _deep_merge(doc["train"], entry.train)
                mc = _model_config(spec, entry, mixer, {**doc["model"], **entry.model})
                if "vocab_size" not in mc:  # the task's vocabulary (mqar has its own)
                    mc["vocab_size"] = get_task(spec.task.name, {**doc["task"]["config"], **entry.task}).vocab_size
                params = count_params(ModelConfig(**mc))
                matched = None
                if spec.sweep.match_params:
                    if label == ref_label:
                        target = params
                    else:
                        d0, h0 = mc["d_model"], ModelConfig(**mc).hidden()
                        mc, params = _match(mc, target, spec.sweep.match_by, spec.sweep.multiple)
                        what = (f"d_model {d0} -> {mc['d_model']}" if spec.sweep.match_by == "d_model"
                                else f"mlp_hidden {h0} -> {mc['mlp_hidden']}")
                        dev = (params - target) / target
                        matched = f"{what} ({params:,} vs {target:,} params, {100 * dev:+.1f}%)"
                        if abs(dev) > 0.05:
                            matched += " [not matched within 5%]"
                if spec.sweep.tokens_per_param is not None:
                    per_param = spec.sweep.tokens_per_param * count_params(ModelConfig(**mc), embedding=False)
                    doc["train"]["max_tokens"] = max(1, round(per_param))
                run = RunConfig(model=ModelConfig(**mc),
                                task=TaskRef(name=spec.task.name, config={**doc["task"]["config"], **entry.task}),
                                train=TrainConfig(**doc["train"]), label=label, experiment=spec.name)
                rid = run.run_id()
                here = {p.run_id: p.label for p in out if p.point == point}
                if here.get(rid, label) != label:  # two contestants that are one run: a duplicate mixer
                    other = here[rid]
                    raise ZooError(f"{spec.name}: mixers '{other}' and '{label}' are the same run ({rid})"
                                   + (f" at sweep point {point}" if point else ""),
                                   "remove one of them or make their settings differ")
                if rid in seen:  # the same run reached from two sweep points: trained once
                    continue
                seen.add(rid)
                steps, tokens, flops = run_budget(run)
                out.append(PlannedRun(label, mixer, run, rid, params, steps, tokens, flops, point, matched))
            except ValidationError as e:  # a sweep value or a per-mixer override out of bounds
                where = f"mixers.{label}" + (f" at sweep point {point}" if point else "")
                raise invalid(e, f"{spec.name}: {where}", model=RunConfig) from None
    return out
