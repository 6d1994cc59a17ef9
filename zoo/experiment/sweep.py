"""Running an experiment: train every planned run, evaluate it, summarize.

    outcomes = run_experiment(spec, store)

Runs already done are skipped; interrupted ones (status running or pending, with or
without checkpoints) resume from their last checkpoint; failed ones are skipped unless
`retry_failed`. A run that fails (non-finite loss, out of memory, any error) is marked
failed with its reason and the sweep goes on with the next. Evaluations named in the spec
run after training and are stored as results tagged with an `eval_id` (a hash of the
evaluation settings), so an evaluation is never repeated and a changed one runs again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.markup import escape

from zoo.errors import ZooError
from zoo.eval.base import EvalTarget, get_evaluator
from zoo.experiment.record import enlist
from zoo.experiment.spec import ExperimentSpec, PlannedRun, eval_id, eval_settings, plan
from zoo.store import Store, changed_since
from zoo.train.checkpoint import load_model
from zoo.train.trainer import RunBusy, RunFailed, cpu_threads, default_threads, resolve_device, train


@dataclass
class Outcome:
    planned: PlannedRun
    status: str                      # done (trained now), skipped (done before), failed, busy
    reason: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    evals: dict[str, str] = field(default_factory=dict)  # kind -> "ok" | "cached" | error message
    seconds: float = 0.0


# -- evaluations: looked up in the evaluator registry (`zoo.eval.base`) -----------------------------

def bench_experiment(spec: ExperimentSpec, runs: list[PlannedRun], store: Store, device: str | None = None,
                     console=None) -> str:
    """One `zoo bench` run over the experiment's mixers at its width; returns its bench run id."""
    from zoo.bench import BenchConfig, run_bench

    b = spec.eval.bench
    mixers = sorted({name for r in runs for name in r.run.model.layers})
    cfg = BenchConfig(mixers=mixers, seq_lens=b.lengths, modes=b.modes, tokens_per_batch=b.tokens_per_batch,
                      d_model=spec.model.d_model, model=b.model, n_layers=spec.model.n_layers,
                      peers=None if b.peers else [], budget_s=b.budget_s, device=device or "auto")
    rid = run_bench(cfg, store=store, console=console, progress=console is not None).run_id
    store.add_members(spec.name, [(rid, None, "bench")])
    return rid


def stored_rows(store: Store, run_id: str, kind: str, eid: str) -> list[dict]:
    return [r for r in store.results(run_id, kind) if r.get("eval_id") == eid]


def complete(kind: str, settings: Any, stored: list[dict]) -> bool:
    return get_evaluator(kind).complete(settings, stored)


def eval_done(store: Store, run_id: str, kind: str, settings: Any) -> bool:
    """Whether this evaluation is stored for the run, all of it."""
    return complete(kind, settings, stored_rows(store, run_id, kind, eval_id(kind, settings)))


def evals_done(spec: ExperimentSpec, store: Store, run_id: str) -> bool:
    """Whether every evaluation the spec names is stored for this run."""
    return all(eval_done(store, run_id, kind, settings) for kind, settings in eval_settings(spec).items())


def run_evals(spec: ExperimentSpec, p: PlannedRun, store: Store, device, console=None) -> dict[str, str]:
    status: dict[str, str] = {}
    todo = eval_settings(spec)
    model = run_config = None
    for kind, settings in todo.items():
        eid = eval_id(kind, settings)
        stored = stored_rows(store, p.run_id, kind, eid)
        if complete(kind, settings, stored):
            status[kind] = "cached"
            continue
        try:
            if model is None:
                model, run_config = load_model(store.run_dir(p.run_id), device)
            if console is not None:
                console.print(f"  [dim]evaluating {kind} on {escape(p.label)} ({p.run_id})[/]")
            if not stored:  # other settings' rows go; this evaluation's own are kept to resume from
                store.add_results(p.run_id, kind, [], replace=True)

            def keep(rows: list[dict], note: str, kind: str = kind, eid: str = eid) -> None:
                store.add_results(p.run_id, kind, [{**r, "eval_id": eid, "label": p.label} for r in rows])
                if console is not None:
                    console.print(f"  [dim]{kind} {escape(p.label)}: {escape(note)}[/]")

            run_dir = store.run_dir(p.run_id)  # scaled variants modify the model: each gets a fresh copy
            target = EvalTarget(model, run_config, device, reload=lambda d=run_dir: load_model(d, device)[0])
            get_evaluator(kind).run(target, settings, stored, keep)
            status[kind] = "ok"
        except ZooError as e:
            status[kind] = str(e)
        except Exception as e:  # an evaluator bug must not stop the sweep
            status[kind] = f"{type(e).__name__}: {e}"
    return status


# -- the sweep ------------------------------------------------------------------------------------

def select_shard(runs: list[PlannedRun], shard: str | None) -> list[PlannedRun]:
    """`shard` "i/n" keeps every n-th run starting at i (parallel processes, one per GPU)."""
    if not shard:
        return runs
    try:
        i, n = (int(x) for x in shard.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        raise ZooError(f"bad shard '{shard}'", "use i/n with 0 <= i < n, e.g. 0/4") from None
    return runs[i::n]


def select_runs(spec: ExperimentSpec, shard: str | None = None, only: list[str] | None = None,
                run_ids: list[str] | None = None, planned: list[PlannedRun] | None = None) -> list[PlannedRun]:
    """The planned runs a process takes: its shard, the mixers in `only`, the ids in `run_ids`
    (out of `planned`, the spec's plan unless given)."""
    runs = select_shard(plan(spec) if planned is None else planned, shard)
    if only:
        unknown = set(only) - {r.label for r in runs}
        if unknown:
            raise ZooError(f"--only names unknown mixers: {', '.join(sorted(unknown))}",
                           f"allowed: {', '.join(dict.fromkeys(r.label for r in runs))}")
        runs = [r for r in runs if r.label in only]
    if run_ids is not None:
        missing = set(run_ids) - {r.run_id for r in runs}
        if missing:
            raise ZooError(f"runs {', '.join(sorted(missing))} are not in the plan of {spec.name}",
                           "was the experiment file changed while it ran?")
        runs = [r for r in runs if r.run_id in run_ids]
    return runs


def admit(spec: ExperimentSpec, store: Store, shard: str | None = None, only: list[str] | None = None,
          run_ids: list[str] | None = None) -> list[PlannedRun]:
    """Plan the spec, record the experiment and the runs this process takes in the store (every
    driver does this first, so a report finds them), and return those runs."""
    planned = plan(spec)
    enlist(spec, store, planned)
    runs = select_runs(spec, shard, only, run_ids, planned)
    store.add_members(spec.name, [(p.run_id, p.label, "train") for p in runs])
    return runs


def run_experiment(spec: ExperimentSpec, store: Store, console=None, progress: bool = False,
                   retry_failed: bool = False, shard: str | None = None, device: str | None = None,
                   only: list[str] | None = None, run_ids: list[str] | None = None,
                   train_overrides: dict[str, Any] | None = None) -> list[Outcome]:
    """`train_overrides`: execution settings outside the run identity (e.g. data_workers) set on every run."""
    from zoo.train.config import NON_ID_FIELDS

    if bad := set(train_overrides or {}) - NON_ID_FIELDS:
        raise ZooError(f"train settings {sorted(bad)} change what a run learns; they cannot be overridden here",
                       f"allowed: {', '.join(sorted(NON_ID_FIELDS))}")
    runs = admit(spec, store, shard, only, run_ids)
    outcomes: list[Outcome] = []
    for i, p in enumerate(runs, 1):
        if device:
            p.run.train.device = device
        for k, v in (train_overrides or {}).items():
            setattr(p.run.train, k, v)
        t0 = time.time()
        prior = store.get_run(p.run_id)
        if console is not None:
            console.rule(f"[bold]{i}/{len(runs)}[/] {escape(p.label)} [dim]{p.run_id} {escape(_point(p))}[/]")
        out = Outcome(p, "done")
        if prior is not None and prior["status"] == "done":
            out.status, out.summary = "skipped", prior["summary"]
        elif prior is not None and prior["status"] == "failed" and not retry_failed:
            out.status, out.reason, out.summary = "failed", prior["reason"], prior["summary"]
        else:
            try:
                res = train(p.run, store, progress=progress, console=console)
                out.summary = res.summary
            except RunBusy as e:
                out.status, out.reason = "busy", str(e)
            except (RunFailed, ZooError) as e:
                out.status, out.reason = "failed", str(e)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # any other failure: recorded by the trainer, the sweep goes on
                out.status, out.reason = "failed", f"{type(e).__name__}: {e}"
            if out.status == "failed" and store.get_run(p.run_id) is not None:
                if store.get_run(p.run_id)["status"] != "failed":
                    store.set_status(p.run_id, "failed", out.reason)
        if out.status in ("done", "skipped"):
            dev = resolve_device(p.run.train.device)
            with cpu_threads(default_threads(p.run.train, p.run.model, dev)):
                out.evals = run_evals(spec, p, store, dev, console)
        if console is not None and out.status == "failed":
            console.print(f"[red]failed:[/] {escape(str(out.reason))}")
        out.seconds = time.time() - t0
        outcomes.append(out)
    if spec.eval.bench is not None and runs:
        try:
            rid = bench_experiment(spec, runs, store, device, console)
            if console is not None:
                console.print(f"bench stored as run [bold]{rid}[/] (`zoo runs show {rid}`)")
        except ZooError as e:  # the experiment's evaluation failed: every run's outcome says so
            if console is not None:
                console.print(f"[red]bench failed:[/] {escape(str(e))}")
            for o in outcomes:
                o.evals["bench"] = f"failed: {e}"
    return outcomes


# the evaluators that also run on Hugging Face models (in the models' own tokens)
HF_EVALUATORS = ("hashhop", "ppl")


def hf_evals(spec: ExperimentSpec, store: Store, device: str | None = None, console=None) -> dict[str, str]:
    """The spec's Hugging Face models through its HashHop and perplexity evaluations, each a run
    of kind "hf"; lengths are in each model's own tokens. Returns label -> "ok", "cached" or why it failed."""
    from zoo.eval.hf import evaluate_hf, evaluate_ppl_hf, load_hf, record_run
    from zoo.tasks.lm import LMConfig, split_texts

    status: dict[str, str] = {}
    todo = {k: v for k, v in eval_settings(spec).items() if k in HF_EVALUATORS}
    for label, ref in spec.hf.items():
        rid = ref.run_id()
        if store.get_run(rid) is not None and all(_hf_done(store, rid, k, v) for k, v in todo.items()):
            status[label] = "cached"
            continue
        if console is not None:
            console.rule(f"[bold]hf[/] {label} [dim]{rid} {ref.name}[/]")
        try:
            hf = load_hf(ref, resolve_device(device or spec.train.device))
            record_run(store, hf, label, spec.name)
            for kind, settings in todo.items():
                eid = eval_id(kind, settings)
                if _hf_done(store, rid, kind, settings):
                    continue
                settings = get_evaluator(kind).make_config(settings)
                if kind == "hashhop":
                    rows = evaluate_hf(hf, settings)["cells"]
                else:
                    texts = split_texts(LMConfig(**spec.task.config), settings.split)
                    lengths = settings.resolve_lengths(spec.train.seq_len)
                    rows = evaluate_ppl_hf(hf, texts, lengths, stride=settings.stride, windows=settings.windows,
                                           buckets=settings.buckets, chunk_size=settings.chunk_size)
                store.add_results(rid, kind, [{**r, "eval_id": eid, "label": label} for r in rows])
                if console is not None:
                    console.print(f"  [dim]{kind} {label}: {len(rows)} rows[/]")
            store.set_status(rid, "done")
            status[label] = "ok"
        except ZooError as e:
            store.upsert_run(rid, ref.run_config(label), kind="hf", status="failed", reason=str(e))
            status[label] = str(e)
            if console is not None:
                console.print(f"[red]failed:[/] {e}")
    return status


def _hf_done(store: Store, run_id: str, kind: str, settings: Any) -> bool:
    """A Hugging Face model's perplexity is one unit (RoPE scalings apply to our models only)."""
    if kind == "ppl":
        return bool(stored_rows(store, run_id, kind, eval_id(kind, settings)))
    return eval_done(store, run_id, kind, settings)


def _point(p: PlannedRun) -> str:
    return " ".join(f"{k.split('.')[-1]}={v}" for k, v in p.point.items())


def hashhop_by_length(store: Store, run_id: str) -> dict[int, float]:
    """Mean exact-match accuracy per evaluated length (over hops), from the stored cells of the
    model as trained: cells under an evaluation-time variant or RoPE scaling are other models."""
    acc: dict[int, list[float]] = {}
    for r in store.results(run_id, "hashhop"):
        if r.get("variant") is not None or r.get("rope_scaling") is not None:
            continue
        if r.get("status") == "ok" and r.get("accuracy") is not None:
            acc.setdefault(int(r["length"]), []).append(float(r["accuracy"]))
    return {k: sum(v) / len(v) for k, v in sorted(acc.items())}


def ppl_by_length(store: Store, run_id: str) -> dict[int, float]:
    return {int(r["length"]): float(r["ppl"]) for r in store.results(run_id, "ppl")
            if r.get("scope") == "all" and r.get("status") == "ok" and r.get("rope_scaling") is None}


def stale_mixer_files(record: dict) -> list[str]:
    """Files defining the mixers of a stored run that differ between the run's commit and this
    checkout: its results may come from older code. Empty when they agree or git cannot tell."""
    from zoo import registry

    commit = (record.get("provenance") or {}).get("git_commit")
    layers = ((record.get("config") or {}).get("model") or {}).get("layers") or []
    files = [f for name in dict.fromkeys(layers) if name in registry.names()
             and (f := registry.source_file(name)) is not None]
    if not commit or not files:
        return []
    return changed_since(commit, files) or []


def stale_warnings(outcomes: list[Outcome], store: Store) -> list[str]:
    """One line per reused run (done before this call) whose mixer files changed since its commit."""
    out = []
    for o in outcomes:
        if o.status != "skipped":
            continue
        record = store.get_run(o.planned.run_id)
        files = stale_mixer_files(record) if record else []
        if files:
            commit = record["provenance"]["git_commit"]
            out.append(f"run {o.planned.run_id} ({o.planned.label}) was trained at commit {commit[:12]}; "
                       f"{', '.join(files)} changed since; if the change alters outputs, bump that mixer's "
                       "version (register_mixer(version=...)) so it trains under a new run id")
    return out


def summary_table(outcomes: list[Outcome], store: Store, title: str):
    """The comparison: one row per run, HashHop accuracy and perplexity per length."""
    from rich.table import Table

    hh = {o.planned.run_id: hashhop_by_length(store, o.planned.run_id) for o in outcomes}
    pp = {o.planned.run_id: ppl_by_length(store, o.planned.run_id) for o in outcomes}
    hh_lengths = sorted({L for d in hh.values() for L in d})
    pp_lengths = sorted({L for d in pp.values() for L in d})
    multi = len({_point(o.planned) for o in outcomes}) > 1
    first = any("eval_first_acc" in (o.summary or {}) for o in outcomes)  # tasks with answer spans
    t = Table(title=title)
    cols = ["mixer", "run"] + (["sweep"] if multi else []) + ["params", "steps", "loss", "eval loss", "eval acc"]
    cols += ["first acc"] if first else []
    cols += [f"hashhop@{L}" for L in hh_lengths] + [f"ppl@{L}" for L in pp_lengths] + ["status"]
    for c in cols:
        t.add_column(c, justify="right" if c not in ("mixer", "run", "sweep", "status") else "left",
                     no_wrap=c == "run", min_width=12 if c == "run" else None)
    for o in outcomes:
        s = o.summary or {}
        status = {"done": "[green]trained[/]", "skipped": "[green]done[/]", "failed": "[red]failed[/]",
                  "busy": "[yellow]busy[/]"}[o.status]
        if o.reason:
            status += f" [dim]{escape(o.reason[:80])}[/]"
        bad = failed_evals(o)
        if bad:
            status += f" [yellow](eval {', '.join(bad)} failed: {escape(o.evals[bad[0]][:60])})[/]"
        row = [escape(o.planned.label), o.planned.run_id] + ([escape(_point(o.planned))] if multi else [])
        row += [f"{o.planned.params:,}", str(s.get("steps", "-")), _f(s.get("final_loss")), _f(s.get("eval_loss")),
                _f(s.get("eval_acc"), 3)] + ([_f(s.get("eval_first_acc"), 3)] if first else [])
        row += [_f(hh[o.planned.run_id].get(L), 3) for L in hh_lengths]
        row += [_f(pp[o.planned.run_id].get(L), 2) for L in pp_lengths]
        t.add_row(*row, status)
    return t


def failed_evals(o: Outcome) -> list[str]:
    """The evaluations of an outcome that did not succeed (their value is the error)."""
    return [k for k, v in o.evals.items() if v not in ("ok", "cached")]


def _f(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
