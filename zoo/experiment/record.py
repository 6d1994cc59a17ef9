"""What the store keeps of an experiment, so a report reads its runs instead of planning them.

    enlist(spec, store)              # at compare time: the spec, its planned runs in order
    record = recorded(spec, store)   # for a report: the stored record, else the plan of now
    pending_cells(record, store)     # for a report: the planned evaluation cells finished runs lack

A record is plain JSON: the experiment's name, `spec_id` (a hash of the validated spec), the
spec itself, its runs in plan order (id, label, kind, config, parameter count; the Hugging
Face models of `[hf]` after the trained ones) and the ids its evaluations tag their rows with.
`zoo report` hands the report a copy with `pending` added (`pending_cells`), so the report
names what is missing without reading the evaluators itself.
"""

from __future__ import annotations

from zoo.errors import ZooError
from zoo.eval.base import get_evaluator
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


def pending_cells(record: dict, store: Store) -> list[dict]:
    """For each finished run of the record, each evaluation of its spec whose cells the store does
    not all hold (a call cut short, a run not yet resumed): {label, run_id, kind, planned,
    missing}, the missing cells each as "column=value, ...". An evaluator not installed here, or
    one whose settings no longer validate, cannot count its cells: planned 0 and one line saying why."""
    from zoo.experiment.sweep import stored_rows  # sweep imports this module

    out = []
    for run in record["runs"]:
        stored_run = store.get_run(run["id"])
        if stored_run is None or stored_run["status"] != "done":
            continue  # the report's runs table already says it is not trained
        for kind, raw in (record["spec"].get("eval") or {}).items():
            if raw is None or kind == "bench":
                continue
            entry = {"label": run["label"], "run_id": run["id"], "kind": kind}
            try:
                ev = get_evaluator(kind)
                config = ev.make_config(raw)
                stored = stored_rows(store, run["id"], kind, record["eval_ids"][kind])
                planned, todo = len(ev.cells(config)), ev.todo(config, stored)
            except (ZooError, ValueError) as e:  # not installed here; settings its schema no longer takes
                out.append({**entry, "planned": 0, "missing": [f"cannot tell which cells: {' '.join(str(e).split())}"]})
                continue
            if todo:
                missing = [", ".join(f"{c}={v}" for c, v in zip(ev.cell_columns, cell) if v is not None)
                           for cell in todo]
                out.append({**entry, "planned": planned, "missing": missing})
    return out
