"""What the store keeps of an experiment, so a report reads its runs instead of planning them.

    enlist(spec, store)              # at compare time: the spec, its planned runs in order
    record = recorded(spec, store)   # for a report: the stored record, else the plan of now

A record is plain JSON: the experiment's name, `spec_id` (a hash of the validated spec), the
spec itself, its runs in plan order (id, label, kind, config, parameter count; the Hugging
Face models of `[hf]` after the trained ones) and the ids its evaluations tag their rows with.
"""

from __future__ import annotations

from zoo.experiment.spec import ExperimentSpec, PlannedRun, eval_id, eval_settings, plan
from zoo.store import Store, config_id


def experiment_record(spec: ExperimentSpec, runs: list[PlannedRun] | None = None) -> dict:
    """The record of `spec` (planned now unless its `runs` are given)."""
    runs = plan(spec) if runs is None else runs
    doc = spec.model_dump(mode="json")
    trained = [{"id": p.run_id, "label": p.label, "kind": "train", "config": p.run.model_dump(mode="json"),
                "params": p.params} for p in runs]
    hf = [{"id": ref.run_id(), "label": label, "kind": "hf", "config": ref.run_config(label)}
          for label, ref in spec.hf.items()]
    return {"name": spec.name, "spec_id": config_id(doc), "spec": doc, "runs": trained + hf,
            "eval_ids": {kind: eval_id(kind, settings) for kind, settings in eval_settings(spec).items()}}


def enlist(spec: ExperimentSpec, store: Store, runs: list[PlannedRun] | None = None) -> dict:
    """Record the experiment in the store (once per spec: enlisting again changes nothing)."""
    record = experiment_record(spec, runs)
    store.enlist(record)
    return record


def recorded(spec: ExperimentSpec, store: Store) -> dict:
    """The store's record of this very spec; for a store that never ran it (or predates the
    record), the spec's plan as it stands now."""
    doc = spec.model_dump(mode="json")
    return store.experiment(spec.name, config_id(doc)) or experiment_record(spec)
