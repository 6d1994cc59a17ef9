"""From the results store to `ReportData`: choose the runs, read their rows.

Runs are chosen by an experiment (the record the store keeps of it: its planned run ids, in
the spec's order), by run ids, or by `--where` filters over the stored runs. Rows are read as the evaluators wrote
them (`zoo.eval.hashhop`, `zoo.eval.ppl`, `zoo.bench`) and the trainer's summary,
provenance and metrics; nothing is recomputed except the state sizes, which come from the
mixers' own `state_bytes` declarations for the run's model config.
"""

from __future__ import annotations

import fnmatch
import json
import operator
import re
from pathlib import Path
from typing import Any

from zoo.errors import ZooError
from zoo.report.data import BenchPoint, Ceiling, HashHopCell, PendingEval, PplPoint, ReportData, Run
from zoo.store import Store

STATE_LENGTHS = (8192, 2**20)
DRAWN_KINDS = ("train", "hf")  # trained mixers, and pretrained models evaluated beside them
DRAWN_RESULTS = ("hashhop", "ppl", "bench", "ceiling")  # result kinds the report draws; others go to data/


def open_store(root: str | Path | None) -> Store:
    """The store at `root` (default: $ZOO_ROOT or ./zoo-runs); an error when it has no database."""
    return Store.existing(root)


# -- choosing runs -----------------------------------------------------------------------------
SHORTHANDS = {"label": "config.label", "experiment": "config.experiment", "task": "config.task.name",
              "seq_len": "config.train.seq_len", "d_model": "config.model.d_model", "lr": "config.train.lr",
              "seed": "config.train.seed", "params": "summary.params", "device": "provenance.device"}
OPS = [("!=", operator.ne), (">=", operator.ge), ("<=", operator.le), ("=", operator.eq), (">", operator.gt),
       ("<", operator.lt)]


def _lookup(d: Any, path: str) -> Any:
    for k in path.split("."):
        if isinstance(d, dict) and k in d:
            d = d[k]
        else:
            return None
    return d


def _coerce(text: str, like: Any) -> Any:
    if isinstance(like, bool):
        return text.lower() in ("1", "true", "yes")
    if isinstance(like, (int, float)):
        try:
            return type(like)(float(text)) if isinstance(like, float) else int(float(text))
        except ValueError:
            return text
    return text


def parse_where(expr: str):
    """`key OP value` with OP in = != > < >= <=; `=` and `!=` take shell globs. Keys are dotted
    paths into a stored run (config.train.lr, summary.params, provenance.device, status) or the
    shorthands label, experiment, task, seq_len, d_model, lr, seed, params, device, and `mixer`
    (any layer of the pattern)."""
    m = re.match(r"^\s*([A-Za-z_][\w./-]*)\s*(!=|>=|<=|=|>|<)\s*(.*?)\s*$", expr)
    if not m:
        raise ZooError(f"bad --where '{expr}'", "write KEY=VALUE, KEY>VALUE, ... e.g. label=rope, params>1e6, "
                                                "config.train.lr=0.001, mixer=hsa")
    key, op_s, value = m.groups()
    op = dict(OPS)[op_s]
    path = SHORTHANDS.get(key, key)
    if op_s in (">", "<", ">=", "<="):
        try:
            float(value)
        except ValueError:
            raise ZooError(f"bad --where '{expr}': '{value}' is not a number", f"{op_s} compares numbers") from None

    def test(run: dict) -> bool:
        if key == "mixer":
            got = list((run.get("config", {}).get("model") or {}).get("layers") or [])
            hit = any(fnmatch.fnmatchcase(x, value) for x in got)
            return hit if op_s == "=" else (not hit if op_s == "!=" else False)
        got = _lookup(run, path)
        if got is None:
            return op_s == "!="
        if op_s in ("=", "!=") and isinstance(got, str):
            hit = fnmatch.fnmatchcase(got, value)
            return hit if op_s == "=" else not hit
        want = _coerce(value, got)
        try:
            return bool(op(got, want))
        except TypeError:
            return False

    return test


def select(store: Store, experiment: dict | None = None, run_ids: list[str] | None = None,
           where: list[str] | None = None, spec_path: str | Path | None = None) -> tuple[list[dict], dict | None, str]:
    """(stored runs or placeholders for planned ones not yet in the store, the spec as a dict, a
    description of the selection). `experiment` is the store's record of an experiment
    (`zoo.experiment.record`): its runs, in its order, under its labels."""
    spec = None
    if experiment is not None:
        spec = experiment["spec"]
        runs = []
        for planned in experiment["runs"]:
            got = store.get_run(planned["id"])
            if got is not None and planned["kind"] == "train":  # the spec's own name for the run, whichever
                got = {**got, "config": {**got["config"], "label": planned["label"],  # spec trained it first
                                         "experiment": experiment["name"]}}
            runs.append(got if got is not None else placeholder(planned))
        source = f"experiment {experiment['name']}" + (f" ({spec_path})" if spec_path else "")
    elif run_ids:
        runs = [store.find_run(r) for r in run_ids]
        source = "runs " + ", ".join(r["id"] for r in runs)
    else:
        runs = store.runs(kind="train") + store.runs(kind="hf")
        source = "every training run in the store"
    if where:
        tests = [parse_where(w) for w in where]
        runs = [r for r in runs if all(t(r) for t in tests)]
        source += " where " + " and ".join(where)
    runs = [r for r in runs if r.get("kind", "train") in DRAWN_KINDS]
    if not runs and spec is None and not run_ids and not where and store.runs(kind="bench"):
        return [], None, "bench runs only (no training runs in the store)"  # a speed-and-memory report
    if not runs:
        raise ZooError(f"no training runs match ({source})", "see `zoo runs list`")
    return runs, spec, source


def companion_runs(store: Store, experiment: str) -> list[Run]:
    """The training runs the store recorded as members of `experiment`, under its labels (none
    when it was never compared into this store: the report says so where it would draw them)."""
    runs = []
    for m in store.members(experiment):
        got = store.get_run(m["run_id"]) if m["kind"] == "train" else None
        if got is not None:
            got = {**got, "config": {**got["config"], "label": m["label"] or got["config"].get("label"),
                                     "experiment": experiment}}
            runs.append(to_run(store, got, state=False))
    return runs


def placeholder(planned: dict) -> dict:
    """A planned run the store does not hold yet, as the report shows it."""
    trained = planned["kind"] == "train"
    return {"id": planned["id"], "kind": planned["kind"], "config": planned["config"], "status": "pending",
            "reason": "not trained yet" if trained else "not evaluated yet", "provenance": {},
            "summary": {"params": planned["params"]} if trained else {}, "planned": True}


# -- reading rows -------------------------------------------------------------------------------
def trained_length(config: dict) -> int | None:
    train = config.get("train") or {}
    sched = (train.get("schedules") or {}).get("seq_len")
    if sched and sched.get("points"):
        return int(max(v for _, v in sched["points"]))
    return train.get("seq_len")


_MODEL_CACHE: dict[str, tuple[int | None, dict[int, float], str | None]] = {}


def state_sizes(model_cfg: dict) -> tuple[int | None, dict[int, float], str | None]:
    """(max_length, {context: state bytes at batch 1 in bf16}, why not) from the mixers' own
    `state_bytes`, with the model built on the meta device (no weights allocated)."""
    key = json.dumps(model_cfg, sort_keys=True, default=str)
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    import torch

    from zoo.model import ModelConfig, ZooLM, build_on_meta

    try:
        cfg = ModelConfig(**model_cfg)
        model = build_on_meta(lambda: ZooLM(cfg))
        max_len = model.max_length
        sizes = {}
        for L in STATE_LENGTHS:
            if max_len is None or L <= max_len:
                sizes[L] = float(sum(m.state_bytes(L, 1, torch.bfloat16) for m in model.mixers))
        out = (max_len, sizes, None)
    except ZooError as e:
        out = (None, {}, e.message)
    except Exception as e:  # a plugin mixer missing here, a config from another version
        out = (None, {}, f"model not buildable here: {type(e).__name__}")
    _MODEL_CACHE[key] = out
    return out


def to_run(store: Store, d: dict, state: bool = True) -> Run:
    cfg = d.get("config") or {}
    model = cfg.get("model") or {}
    layers = list(model.get("layers") or [])
    s = d.get("summary") or {}
    p = d.get("provenance") or {}
    label = cfg.get("label") or "+".join(layers) or d["id"]
    mem = s.get("peak_mem_gb")
    run = Run(
        run_id=d["id"], label=label, mixers=list(dict.fromkeys(layers)), status=d.get("status", "?"),
        reason=d.get("reason"), config=cfg, params=s.get("params"), train_len=trained_length(cfg),
        steps=s.get("steps"), tokens=s.get("tokens"), flops=s.get("train_flops"), tokens_per_s=s.get("tokens_per_s"),
        mfu=s.get("mfu"), peak_flops=s.get("peak_flops"), peak_source=s.get("peak_source"),
        peak_mem=mem * 2**30 if mem is not None else None,
        final_loss=_finite(s.get("final_loss")),
        evals={k: _finite(v) for k, v in s.items() if k.startswith("eval_") and _finite(v) is not None},
        wall_s=s.get("wall_s"), seed=(cfg.get("train") or {}).get("seed"),
        backends=dict(p.get("backends") or {}), device=p.get("device") or s.get("device"), host=p.get("host"),
        commit=p.get("git_commit"), versions={k: v for k, v in (p.get("versions") or {}).items() if v},
        started=p.get("started"), finished=p.get("finished"),
        run_dir=str(store.root / "runs" / d["id"]) if not d.get("planned") else None,
    )
    if run.params is not None and model.get("d_model") and model.get("vocab_size"):
        run.non_embedding_params = run.params - int(model["d_model"]) * int(model["vocab_size"])
    if state and model:
        run.max_length, run.state_bytes, run.state_reason = state_sizes(model)
    if not d.get("planned"):
        by_step: dict[int, dict[str, float]] = {}
        for name in ("loss", "tokens", "eval_acc", "eval_first_acc"):
            for r in store.metrics(d["id"], name):
                by_step.setdefault(r["step"], {})[name] = r["value"]
        run.curve = [(st, v.get("tokens") or 0.0, v["loss"]) for st, v in sorted(by_step.items())
                     if v.get("loss") is not None and _finite(v["loss"]) is not None]
        run.answer_curve = [(st, v.get("tokens") or 0.0, v["eval_acc"], v["eval_first_acc"])
                            for st, v in sorted(by_step.items())
                            if _finite(v.get("eval_acc")) is not None and _finite(v.get("eval_first_acc")) is not None]
        tps = [r["value"] for r in store.metrics(d["id"], "tokens_per_s") if _finite(r["value"]) is not None]
        tail = tps[len(tps) // 2:]  # the steady state the summary's mean is taken over
        if len(tail) >= 3:
            import numpy as np

            run.tokens_per_s_range = (float(np.percentile(tail, 10)), float(np.percentile(tail, 90)), len(tail))
    return run


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if x == x and abs(x) != float("inf") else None


def to_cell(r: dict) -> HashHopCell:
    """One evaluator cell (`zoo.eval.hashhop.summarize`: flat accuracy/low/high over n queries,
    greedy_*, char_*, nll, hop_*, depth as [accuracy, n] per bin). Its length is the tokens fed
    (`length`: prompt and completion), the context the model really saw; `n_chars` is the grid
    point it belongs to."""
    status = "ok" if r.get("status", "ok") == "ok" else "n/a"
    reason = r.get("reason") or (None if status == "ok" else str(r.get("status")))
    acc = r.get("accuracy")
    n = r.get("n")
    k = r.get("correct")
    if k is None and acc is not None and n:
        k = acc * n
    depth = [(b[0], int(b[1] or 0)) for b in (r.get("depth") or []) if isinstance(b, (list, tuple)) and len(b) == 2]
    used = {"n_chars", "length", "hops", "cot", "status", "reason", "accuracy", "n", "correct", "low", "high",
            "greedy_accuracy", "greedy_n", "char_accuracy", "nll", "depth", "hop_accuracy", "run_id", "kind"}
    meta = {k2: v for k2, v in r.items() if k2 not in used}
    return HashHopCell(
        run_id=r["run_id"], length=int(r.get("length") or r["n_chars"]), n_chars=r.get("n_chars"),
        hops=int(r.get("hops", 1)),
        cot=bool(r.get("cot", False)), n=int(n or 0), correct=float(k or 0),
        accuracy=acc if status == "ok" else None, low=r.get("low"), high=r.get("high"),
        greedy_accuracy=r.get("greedy_accuracy"), greedy_n=r.get("greedy_n"), char_accuracy=r.get("char_accuracy"),
        nll=r.get("nll"), depth=depth, hop_accuracy=list(r.get("hop_accuracy") or []), status=status, reason=reason,
        meta=meta)


def _dedupe(rows: list[dict], key) -> list[dict]:
    """The latest row per key (a re-evaluation with other settings supersedes the earlier one)."""
    out: dict[Any, dict] = {}
    for r in rows:
        out[key(r)] = r
    return list(out.values())


def to_ppl(r: dict) -> PplPoint:
    status = "ok" if r.get("status", "ok") == "ok" else "n/a"
    ok = status == "ok"
    length = None if r.get("length") is None else int(r["length"])
    p = PplPoint(run_id=r["run_id"], length=length, ppl=r.get("ppl") if ok else None, loss=r.get("loss"),
                 low=_finite(r.get("ppl_low")) if ok else None, high=_finite(r.get("ppl_high")) if ok else None,
                 tokens=r.get("tokens"), stride=r.get("stride"),
                 status=status, reason=r.get("reason") or (None if ok else str(r.get("status"))),
                 meta={k: v for k, v in r.items() if k not in ("run_id", "kind", "length", "ppl", "loss", "tokens",
                                                               "stride", "status", "reason", "ppl_low", "ppl_high")})
    return p


def ppl_variant(r: dict) -> str | None:
    """None for the model as trained; e.g. 'yarn x4' for an evaluation-time RoPE scaling."""
    if r.get("rope_scaling"):
        return f"{r['rope_scaling']} x{r.get('rope_factor'):g}" if r.get("rope_factor") else str(r["rope_scaling"])
    return None


def hashhop_variant(r: dict) -> str | None:
    """None for the model as trained; else the evaluation-time variant the cell ran under: the
    evaluator's `variant` (e.g. 'hsa.chunk_overlap=8') or a RoPE scaling (e.g. 'yarn x16')."""
    return r.get("variant") or ppl_variant(r)


def to_bench(r: dict) -> BenchPoint:
    raw = str(r.get("status") or "ok")
    kind, _, detail = raw.partition(":")
    status = {"ok": "ok", "oom": "oom", "n/a": "n/a", "skipped": "skipped", "error": "error"}.get(kind, kind)
    reason = None
    if status == "oom":
        reason = "out of memory"
    elif status != "ok":
        reason = (r.get("note") or detail.strip() or raw).strip()
        if status == "n/a" and detail.strip() == "max_length" and r.get("note"):
            reason = f"max_length: {r['note']}"
    target = r.get("target", "mixer")
    mode = r.get("mode", "fwd")
    if target == "model":
        mode = f"{mode}, whole model"
    mem = r.get("peak_mem_bytes")
    return BenchPoint(
        name=r.get("mixer") if target == "model" else r.get("name", r.get("mixer", "?")), seq_len=int(r["seq_len"]),
        mode=mode, peer=target == "peer", peer_of=r.get("peer_of"),
        tokens_per_s=r.get("tokens_per_s") if status == "ok" else None, ms=r.get("time_ms"), tflops=r.get("tflops"),
        peak_mem=float(mem) if mem is not None and status == "ok" else None, backend=r.get("backend"),
        device=r.get("device"), dtype=r.get("dtype"), status=status, reason=reason, run_id=r.get("run_id"),
        meta={k: v for k, v in r.items() if k in ("batch", "tokens", "d_model", "cost", "reps", "time_ms_min",
                                                  "flops_per_token", "cache_bytes", "state_bytes", "bench_id")})


def bench_runs(store: Store, names: set[str], bench_ids: list[str] | None = None) -> list[dict]:
    """The bench runs to draw, newest first: the ones asked for, else every bench run that measured
    any of `names`, finished or not (a run stopped by a time limit keeps the points it measured)."""
    if bench_ids:
        return [store.find_run(b) for b in bench_ids]
    runs = []
    for r in store.runs(kind="bench"):
        mixers = set((r.get("config") or {}).get("mixers") or [])
        if names and mixers and not (mixers & names):
            continue
        runs.append(r)
    # by when a run started: "updated" also moves when a run's status is set afterwards
    return sorted(runs, key=lambda r: r["created"], reverse=True)


def bench_point_key(r: dict) -> tuple:
    return (r.get("device"), r.get("name"), r.get("target", "mixer"), r.get("mode"), r.get("seq_len"),
            r.get("dtype"), r.get("d_model"), r.get("tokens"))


def newest_points(rows_by_run: list[list[dict]]) -> list[dict]:
    """One row per point from runs given newest first: the newest measured row ("ok", "oom", "n/a",
    "error"), else the newest row that only says why the point was skipped."""
    best: dict[tuple, dict] = {}
    for rows in rows_by_run:
        for r in rows:
            k = bench_point_key(r)
            have = best.get(k)
            if have is None or (str(have.get("status", "")).startswith("skipped")
                                and not str(r.get("status", "")).startswith("skipped")):
                best[k] = r
    return list(best.values())


def load(store: Store, experiment: dict | None = None, run_ids: list[str] | None = None,
         where: list[str] | None = None, title: str | None = None, bench_ids: list[str] | None = None,
         with_bench: bool = True, spec_path: str | Path | None = None) -> ReportData:
    """The report's data: an experiment's runs (its stored record, see `select`), runs by id, or
    runs matching `where` filters."""
    raw_runs, spec, source = select(store, experiment, run_ids, where, spec_path)
    runs = [to_run(store, d) for d in raw_runs]
    ids = {r.run_id for r in runs}
    # a report of a spec reads the rows its plan produced (tagged with its evaluations' ids) and
    # nothing else; an ad-hoc report reads every row of its runs
    own = experiment["eval_ids"] if experiment is not None else None

    def rows_of(kind: str) -> list[dict]:
        rows = [r for rid in ids for r in store.results(rid, kind)]
        return rows if own is None else [r for r in rows if r.get("eval_id") is not None
                                         and r.get("eval_id") == own.get(kind)]

    hh_rows = _dedupe(rows_of("hashhop"), lambda r: (r["run_id"], r.get("n_chars", r.get("length")), r.get("hops"),
                                                     r.get("cot"), r.get("hash_len"), hashhop_variant(r)))
    cells = [(hashhop_variant(r), to_cell(r)) for r in hh_rows if (r.get("length") or r.get("n_chars")) is not None]
    hashhop = sorted((c for v, c in cells if v is None), key=lambda c: (c.run_id, c.point, c.hops, c.cot))
    hh_variants = sorted(((v, c) for v, c in cells if v is not None),
                         key=lambda vc: (vc[0], vc[1].run_id, vc[1].point, vc[1].hops, vc[1].cot))
    other: dict[str, list[dict]] = {}  # rows of evaluators the report has no figure for (plugins)
    for rid in sorted(ids):
        for r in store.results(rid):
            if r["kind"] not in DRAWN_RESULTS and (own is None or r.get("eval_id") == own.get(r["kind"])):
                other.setdefault(r["kind"], []).append(r)
    ppl_rows = [r for r in rows_of("ppl") if r.get("scope", "all") == "all"]
    ppl_rows = _dedupe(ppl_rows, lambda r: (r["run_id"], r.get("length"), ppl_variant(r)))
    ppl = sorted((to_ppl(r) for r in ppl_rows if ppl_variant(r) is None), key=lambda p: (p.run_id, p.length))
    variants = [(ppl_variant(r), to_ppl(r)) for r in ppl_rows if ppl_variant(r) is not None]
    bench: list[BenchPoint] = []
    ceilings: list[Ceiling] = []
    if with_bench and not (spec is not None and spec.get("eval", {}).get("bench") is None and not bench_ids):
        names = {m for r in runs for m in r.mixers}
        if spec is None:
            for rid in ids:  # bench rows attached to the trained runs themselves
                bench += [to_bench(r) for r in store.results(rid, "bench")]
        if spec is not None and not bench_ids:  # the bench runs this experiment started, none other
            bench_ids = [m["run_id"] for m in store.members(spec["name"]) if m["kind"] == "bench"]
            drawn = [b for b in (store.get_run(i) for i in bench_ids) if b is not None]
            drawn.sort(key=lambda r: r["created"], reverse=True)
        else:
            drawn = bench_runs(store, names, bench_ids)
        by_run = [[r for r in store.results(b["id"], "bench")
                   if not names or r.get("mixer") in names or r.get("peer_of") in names or r.get("name") in names]
                  for b in drawn]
        points = newest_points(by_run)
        bench += [to_bench(r) for r in points]
        used = {r.get("run_id") for r in points}
        for b in drawn:
            if b["id"] not in used:
                continue
            cs = {c.get("name"): c for c in store.results(b["id"], "ceiling")}
            if "matmul" in cs or "copy" in cs:
                dev = (cs.get("matmul") or cs.get("copy")).get("device") or "?"
                ceilings.append(Ceiling(dev, (cs.get("matmul") or {}).get("value"), (cs.get("copy") or {}).get("value"),
                                        b["id"]))
    if title is None:
        if spec is not None:
            title = f"{spec['name']}: " + (spec.get("description") or "mixer comparison")
        elif not runs:
            title = "mixer-zoo: speed and memory vs sequence length"
        else:
            title = "mixer-zoo comparison"
    companions = {name: companion_runs(store, name) for name in (spec or {}).get("companions") or []}
    pending = [PendingEval(**p) for p in (experiment or {}).get("pending") or []]  # see zoo.experiment.record
    return ReportData(title=title, runs=runs, hashhop=hashhop, ppl=ppl, bench=bench, ceilings=ceilings,
                      ppl_variants=variants, hashhop_variants=hh_variants, spec=spec, companions=companions,
                      other_evals=other, pending=pending,
                      spec_path=str(spec_path) if spec_path else None,
                      source=source, store_root=str(store.root))
