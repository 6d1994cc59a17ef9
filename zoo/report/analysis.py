"""From store records to the numbers a report shows: HashHop curves, the leaderboard,
the tables beside each figure, power-law fits and the findings paragraph.

Nothing here draws or renders; every value is a `Val` that remembers its run.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field, replace

from zoo.errors import ZooError
from zoo.report import fmt
from zoo.report.data import HashHopCell, ReportData, Run
from zoo.report.fits import PowerLaw, clustered, crossing, effective_context, fit_power_law, wilson
from zoo.report.fmt import Table, Val, na

MULTIPLES = (1, 4, 16, 64)
PPL_MULTIPLES = (1, 8)
STATE_LENGTHS = (8192, 2**20)
THRESHOLD = 0.9
FAST_AT = 32768  # "which is fastest at 32K"
LOSS_AT_CHANCE = 0.02  # a final loss within 2% of the task's chance loss counts as "at chance"
LENGTH_TOLERANCE = 0.25  # a point counts as "k x the training length" within a factor 2^0.25 (19%)


# -- HashHop curves -------------------------------------------------------------------------
@dataclass
class Point:
    """HashHop accuracy at one length in one setting (hop count, mode). Over several seeds:
    the mean, with `low` and `high` the smallest and largest seed's accuracy."""

    length: int
    n: int = 0
    correct: float = 0.0
    accuracy: float | None = None
    low: float | None = None
    high: float | None = None
    reason: str | None = None       # why it is missing, when it is
    cells: list[HashHopCell] = field(default_factory=list)
    seeds: int = 1                  # runs averaged


def pool(cells: list[HashHopCell]) -> Point:
    """One accuracy from the cells of one grid point in one setting: cells of different hop
    counts or modes are never pooled. A single cell keeps its stored accuracy and interval.
    Several (re-evaluations of the point) combine their samples, resampled as clusters when the
    cells stored per-sample counts, else Wilson on the totals (rows from before per-sample
    counts). Its length is the longest context among the cells."""
    assert len({(c.hops, c.cot) for c in cells}) <= 1, "cells of different hop counts or modes are not pooled"
    length = max(c.length for c in cells)
    ok = [c for c in cells if c.status == "ok" and c.accuracy is not None]
    if not ok:
        reasons = list(dict.fromkeys(c.reason or c.status for c in cells))
        if not reasons:
            return Point(length, reason="not evaluated", cells=cells)
        more = f" (and {len(cells) - 1} more cells n/a)" if len(reasons) > 1 else ""
        return Point(length, reason=reasons[0] + more, cells=cells)
    if len(ok) == 1:
        c = ok[0]
        lo, hi = (c.low, c.high) if c.low is not None and c.high is not None else wilson(c.correct, c.n)
        return Point(length, c.n, c.correct, c.accuracy, lo, hi, cells=ok)
    n = sum(c.n for c in ok)
    correct = sum(c.correct for c in ok)
    if all(c.meta.get("per_sample") for c in ok):
        w = clustered([(s[0], s[1]) for c in ok for s in c.meta["per_sample"]])
        lo, hi = w["lo"], w["hi"]
    else:
        lo, hi = wilson(correct, n)
    return Point(length, n, correct, correct / n if n else None, lo, hi, cells=ok)


def hashhop_curve(data: ReportData, run_id: str, setting: tuple[int, bool]) -> list[Point]:
    """One run's accuracy per length in one setting (hop count, chain of thought)."""
    by_point: dict[int, list[HashHopCell]] = defaultdict(list)
    for c in data.hashhop:
        if c.run_id == run_id and (c.hops, c.cot) == setting:
            by_point[c.point].append(c)
    return sorted((pool(cells) for cells in by_point.values()), key=lambda p: p.length)


def seed_curve(data: ReportData, runs: list[Run], setting: tuple[int, bool]) -> list[Point]:
    """The runs' curves (seeds of one cell) averaged per length: mean accuracy, min and max
    over the seeds as its band. One run keeps its own curve and intervals."""
    curves = [hashhop_curve(data, r.run_id, setting) for r in runs]
    if len(curves) == 1:
        return curves[0]
    by_len: dict[int, list[Point]] = defaultdict(list)
    for curve in curves:
        for p in curve:
            by_len[p.length].append(p)
    out = []
    for length, ps in sorted(by_len.items()):
        ok = [p for p in ps if p.accuracy is not None]
        if not ok:
            out.append(Point(length, reason=ps[0].reason, cells=[c for p in ps for c in p.cells]))
            continue
        accs = [p.accuracy for p in ok]
        out.append(Point(length, sum(p.n for p in ok), sum(p.correct for p in ok), sum(accs) / len(accs),
                         min(accs), max(accs), cells=[c for p in ok for c in p.cells], seeds=len(ok)))
    return out


# -- chance levels and intervals -----------------------------------------------------------------
def cell_chance(c: HashHopCell) -> float | None:
    """Exact-match chance of a cell, from the task's own declaration for its hash length."""
    from zoo.tasks.hashhop import chance

    hash_len = c.meta.get("hash_len")
    return chance("accuracy", int(hash_len), c.hops, c.cot) if hash_len else None


def hashhop_chance(data: ReportData, hops: int | None = None, cot: bool | None = None) -> float | None:
    """The chance level of the cells asked for (the highest, when their hash lengths differ)."""
    vals = [cell_chance(c) for c in data.hashhop if (hops is None or c.hops == hops) and (cot is None or c.cot == cot)]
    vals = [v for v in vals if v is not None]
    return max(vals) if vals else None


def run_chance(run: Run, metric: str = "loss") -> float | None:
    """The chance level of a run's task metric (e.g. its training loss), as the task declares it."""
    from zoo.tasks.base import get_task

    task = run.config.get("task") or {}
    try:
        return get_task(task.get("name", "hashhop"), task.get("config")).chance(metric)
    except ZooError:  # a task or setting this installation does not know
        return None


def versus_chance(p: Point, chance: float | None) -> str | None:
    """'above chance' when the interval clears the chance level, 'at chance' when it holds it."""
    if chance is None or p.low is None or p.high is None:
        return None
    if p.low > chance:
        return "above chance"
    return "below chance" if p.high < chance else "at chance"


def separated(a: Point, b: Point) -> bool:
    """Two accuracies whose intervals do not overlap."""
    return None not in (a.low, a.high, b.low, b.high) and (a.low > b.high or b.low > a.high)


def compare_sentence(where: str, at: list[tuple[str, Point]], chance: float | None) -> str:
    """One finding: each mixer's accuracy with its interval and its standing against chance, then
    which differences the intervals support."""
    at = sorted(at, key=lambda t: -(t[1].accuracy or 0))
    groups: dict[str, list[str]] = {}
    for label, p in at:
        groups.setdefault(versus_chance(p, chance) or "", []).append(
            f"{label} {fmt.acc(p.accuracy)} {fmt.interval(p.low, p.high)}")
    parts = [f"{_names(v)} {'are' if len(v) > 1 else 'is'} {k}" if k else _names(v) for k, v in groups.items()]
    out = f"{where}: " + "; ".join(parts)
    if chance is not None:
        out += f" (chance {fmt.sig(chance, 2)})"
    out += "."
    if len(at) >= 2:
        top_label, top = at[0]
        below = [label for label, p in at[1:] if separated(top, p)]
        if below:
            ties = [label for label, p in at[1:] if not separated(top, p)]
            out += (f" {top_label} is above {_names(below)} with intervals that do not overlap"
                    + (f"; {_names([top_label] + ties)} differ within their intervals." if ties else "."))
        else:
            out += " The differences are within their intervals."
    return out


def near(curve: list[Point], target: int, tolerance: float = LENGTH_TOLERANCE) -> Point | None:
    """The evaluated point closest to `target` tokens on a log scale, if within `tolerance`
    (in log2 units): grids are set in characters, so 4x the training length is rarely hit exactly."""
    if not curve:
        return None

    def off(p: Point) -> float:
        # a grid point set in characters (e.g. 2000 for a 2K-token model) feeds more tokens than
        # characters (the queries): it counts as near by either measure
        sizes = [p.length] + [c.n_chars for c in p.cells if c.n_chars]
        return min(abs(math.log2(x / target)) for x in sizes)

    best = min(curve, key=off)
    return best if off(best) <= tolerance else None


def hashhop_settings(data: ReportData) -> list[tuple[int, bool]]:
    """(hops, chain of thought) pairs evaluated anywhere in the report, sorted."""
    return sorted({(c.hops, c.cot) for c in data.hashhop})


def headline_setting(data: ReportData) -> tuple[int, bool] | None:
    """The setting the leaderboard and the summary figure speak for: the fewest hops, without
    chain of thought where evaluated. Other settings have their own panels, never pooled."""
    settings = hashhop_settings(data)
    return settings[0] if settings else None


def setting_text(setting: tuple[int, bool] | None) -> str:
    if setting is None:
        return "no HashHop cells"
    hops, cot = setting
    return f"{hops} hop{'s' if hops != 1 else ''}, {'CoT' if cot else 'no CoT'}"


# -- the compared entries: each mixer's selected cell, over its seeds ---------------------------
NOT_CELL = {"seed", "lr", "log_every", "tensorboard", "wandb", "ckpt_every", "keep_checkpoints", "compile",
            "device", "peak_tflops", "threads"}  # training keys that do not make another sweep cell


def headline_run(runs: list[Run]) -> Run | None:
    """The largest finished model (parameters, then training tokens): the leaderboard speaks for
    its sweep cell; other runs of the entry appear in the scaling and loss figures."""
    done = [r for r in runs if r.status == "done"]
    if not done:
        return None
    return max(done, key=lambda r: (r.params or 0, r.tokens or 0, -(r.seed or 0)))


def missing_run_reason(runs: list[Run]) -> str:
    if not runs:
        return "no training run"
    failed = [r for r in runs if r.status == "failed"]
    if failed:
        return f"run failed: {failed[0].reason or 'no reason recorded'}"
    return f"run {runs[0].status}"


def cell_key(r: Run) -> str:
    """What a run is apart from its learning rate and seed: runs with equal keys are one sweep cell."""
    cfg = {k: v for k, v in r.config.items() if k not in ("label", "experiment")}
    cfg["train"] = {k: v for k, v in (cfg.get("train") or {}).items() if k not in NOT_CELL}
    return json.dumps(cfg, sort_keys=True, default=str)


def run_lr(r: Run) -> float | None:
    return (r.config.get("train") or {}).get("lr")


def select_metric(data: ReportData) -> str:
    return ((data.spec or {}).get("sweep") or {}).get("metric") or "eval_loss"


def metric_of(data: ReportData, r: Run, metric: str) -> float | None:
    """A run's selection metric at its training length."""
    if metric == "hashhop_accuracy":
        setting = headline_setting(data)
        p = near(hashhop_curve(data, r.run_id, setting), r.train_len) if setting and r.train_len else None
        return None if p is None else p.accuracy
    return r.evals.get(metric)


@dataclass
class SweepPoint:
    lr: float | None
    runs: list[Run]                 # its seeds
    mean: float | None = None       # the metric over the seeds that have it
    low: float | None = None
    high: float | None = None
    seeds: int = 0


@dataclass
class Sweep:
    """The learning rates one mixer ran at (its largest model), the metric per rate over seeds,
    and the rate reports use: the best mean."""

    label: str
    metric: str
    points: list[SweepPoint]
    selected: SweepPoint


def cell_sweep(data: ReportData, label: str, cell: list[Run]) -> Sweep:
    """The learning rates of one sweep cell (finished runs equal but for lr and seed), each
    averaged over its seeds, and the selected one: the best mean of the report's metric."""
    metric = select_metric(data)
    by_lr: dict[float | None, list[Run]] = defaultdict(list)
    for r in cell:
        by_lr[run_lr(r)].append(r)
    points = []
    for lr, runs in sorted(by_lr.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        runs.sort(key=lambda r: (r.seed or 0, r.run_id))
        vals = [v for r in runs if (v := metric_of(data, r, metric)) is not None]
        pt = SweepPoint(lr, runs, seeds=len(vals))
        if vals:
            pt.mean, pt.low, pt.high = sum(vals) / len(vals), min(vals), max(vals)
        points.append(pt)
    scored = [p for p in points if p.mean is not None]
    if scored:
        from zoo.stats import SELECT_METRICS

        sign = 1 if SELECT_METRICS.get(metric, "min") == "min" else -1
        selected = min(scored, key=lambda p: sign * p.mean)
    else:  # nothing to rank by: the rate of the largest run
        head = headline_run(cell)
        selected = next(p for p in points if head in p.runs)
    return Sweep(label, metric, points, selected)


def sweep_of(data: ReportData, label: str) -> Sweep | None:
    """The sweep of a mixer's largest model, None when it has no finished run."""
    head = headline_run(data.runs_of(label))
    if head is None:
        return None
    key = cell_key(head)
    return cell_sweep(data, label, [r for r in data.runs_of(label) if r.status == "done" and cell_key(r) == key])


@dataclass
class Entry:
    label: str
    run: Run | None                # the first seed of the selected cell (its model and settings)
    params: Val
    state: dict[int, Val]
    tokens_per_s: Val
    mfu: Val
    acc: dict[int, Val]           # multiple of the training length -> accuracy
    acc_max: Val
    ecl: Val                       # effective context length
    ppl: dict[int, Val]
    backend: Val
    curve: list[Point]
    runs: list[Run] = field(default_factory=list)  # the seeds averaged
    sweep: Sweep | None = None
    lr: Val = field(default_factory=lambda: na("not recorded"))


def _point_val(p: Point | None, run_id: str, what: str, target: int | None = None) -> Val:
    if p is None:
        return na(f"not evaluated near {fmt.length(target)}" if target else "not evaluated", run_id=run_id)
    if p.accuracy is None:
        return na(p.reason or "not evaluated", run_id=run_id)
    spread = f"{p.seeds} seeds, min-max " if p.seeds > 1 else ""
    return Val(p.accuracy, fmt.acc(p.accuracy), sub=f"at {fmt.length(p.length)} {spread}{fmt.interval(p.low, p.high)}",
               run_id=run_id, source=f"hashhop {what}: {p.length} tokens, {p.n} queries"
               + (f", mean of {p.seeds} seeds" if p.seeds > 1 else ""))


def seed_mean(vals: list[tuple[float, str]], text, source: str) -> Val | None:
    """(value, run id) per seed -> their mean, with the min-max over seeds below it."""
    if not vals:
        return None
    xs = [v for v, _ in vals]
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return Val(mean, text(mean), run_id=vals[0][1], source=source)
    return Val(mean, text(mean), sub=f"{len(xs)} seeds, {text(min(xs))}-{text(max(xs))}", run_id=vals[0][1],
               source=f"{source}, mean of {len(xs)} seeds")


def entry(data: ReportData, label: str) -> Entry:
    runs = data.runs_of(label)
    sweep = sweep_of(data, label)
    if sweep is None:
        why = missing_run_reason(runs)
        m = na(why)
        bench = _bench_backend(data, label)
        return Entry(label, None, m, {L: m for L in STATE_LENGTHS}, m, m, {k: m for k in MULTIPLES}, m, m,
                     {k: m for k in PPL_MULTIPLES}, bench or m, [])
    seeds = sweep.selected.runs
    run = seeds[0]
    rid = run.run_id
    params = Val(run.params, fmt.count(run.params), run_id=rid, source="run summary: parameters") \
        if run.params is not None else na("not recorded", run_id=rid)
    state = {}
    for L in STATE_LENGTHS:
        b = run.state_bytes.get(L)
        if b is not None:
            state[L] = Val(b, fmt.nbytes(b), run_id=rid, source=f"sum of state_bytes({L}) over layers, bf16, batch 1")
        elif run.max_length is not None and L > run.max_length:
            state[L] = na(f"max length {fmt.length(run.max_length)}", run_id=rid)
        else:
            state[L] = na(run.state_reason or "not computed", run_id=rid)
    tps_seeds = [(r.tokens_per_s, r.run_id) for r in seeds if r.tokens_per_s is not None]
    spread = run.tokens_per_s_range
    if len(tps_seeds) > 1:
        tps = seed_mean(tps_seeds, fmt.count, "run summary: training tokens/s")
    elif run.tokens_per_s is not None:
        tps = Val(run.tokens_per_s, fmt.count(run.tokens_per_s), run_id=rid, source="run summary: training "
                  "tokens/s, mean over the second half of the log intervals",
                  sub=f"{fmt.count(spread[0])}–{fmt.count(spread[1])}" if spread else None)
    else:
        tps = na("not recorded", run_id=rid)
    mfus = [(r.mfu, r.run_id) for r in seeds if r.mfu is not None]
    if mfus:
        mfu = seed_mean(mfus, fmt.pct, "run summary: MFU"
                        + (f" of {run.peak_source or fmt.sig(run.peak_flops / 1e12, 3) + ' TFLOP/s'}"
                           if run.peak_flops else ""))
    else:
        why = run.peak_source if run.peak_source and run.peak_flops is None else None
        mfu = na(why or (f"no peak FLOP/s known for {run.device}" if run.device else "not recorded"), run_id=rid)

    setting = headline_setting(data)
    curve = seed_curve(data, seeds, setting) if setting else []
    acc = {}
    for k in MULTIPLES:
        if run.train_len is None:
            acc[k] = na("training length unknown", run_id=rid)
        else:
            acc[k] = _point_val(near(curve, k * run.train_len), rid, f"{k}x", k * run.train_len if curve else None)
    ok = [p for p in curve if p.accuracy is not None]
    if ok:
        acc_max = _point_val(ok[-1], rid, "largest")
    else:
        acc_max = na(curve[-1].reason if curve else "not evaluated", run_id=rid)
    e = effective_context([(p.length, p.accuracy, p.low, p.high) for p in ok], THRESHOLD)
    if e is not None:
        ecl = Val(e[0], fmt.length(e[0]), sub=f"acc {fmt.acc(e[1])} {fmt.interval(e[2], e[3])}", run_id=rid,
                  source=f"largest length with HashHop accuracy >= {THRESHOLD}"
                  + (" (mean over seeds)" if len(seeds) > 1 else ""))
    else:
        ecl = na(f"accuracy < {THRESHOLD} at every length" if ok else "not evaluated", run_id=rid)
    ppl = {}
    for k in PPL_MULTIPLES:
        pts = [p for r in seeds for p in data.ppl if p.run_id == r.run_id and run.train_len
               and p.length == k * run.train_len]
        got = [(p.ppl, p.run_id) for p in pts if p.ppl is not None]
        if len(got) == 1:
            p = next(p for p in pts if p.ppl is not None)
            ppl[k] = Val(p.ppl, fmt.sig(p.ppl, 4), sub=ppl_interval(p), run_id=p.run_id,
                         source=f"ppl length={k * run.train_len}")
        elif got:
            ppl[k] = seed_mean(got, lambda v: fmt.sig(v, 4), f"ppl length={k * run.train_len}")
        elif pts:
            ppl[k] = na(pts[0].reason or pts[0].status, run_id=rid)
        else:
            ppl[k] = na("not evaluated", run_id=rid)
    if run.backends:
        names = sorted(set(run.backends.values()))
        backend = Val(", ".join(names), ", ".join(names), run_id=rid, source="provenance: backends used")
    else:
        backend = _bench_backend(data, label) or na("not recorded", run_id=rid)
    sel = sweep.selected
    if sel.lr is None:
        lr = na("not recorded", run_id=rid)
    else:
        why = (f"best of {len(sweep.points)} by {sweep.metric}" if len(sweep.points) > 1 else "")
        lr = Val(sel.lr, f"{sel.lr:g}", sub=", ".join(x for x in (why, f"{len(seeds)} seeds" if len(seeds) > 1
                                                                 else "") if x) or None,
                 run_id=rid, source="config: train.lr")
    return Entry(label, run, params, state, tps, mfu, acc, acc_max, ecl, ppl, backend, curve, seeds, sweep, lr)


def ppl_interval(p) -> str | None:
    """'[4.02, 4.18]': a perplexity's 95% interval over its windows, None where it has none."""
    return f"[{fmt.sig(p.low, 3)}, {fmt.sig(p.high, 3)}]" if p.low is not None and p.high is not None else None


def _bench_backend(data: ReportData, label: str) -> Val | None:
    names = sorted({b.backend for b in data.bench if b.name == label and not b.peer and b.backend})
    return Val(", ".join(names), ", ".join(names), source="bench rows") if names else None


def entries(data: ReportData) -> list[Entry]:
    return [entry(data, label) for label in data.labels() if data.runs_of(label)]


def common_train_len(es: list[Entry]) -> int | None:
    lens = {e.run.train_len for e in es if e.run is not None and e.run.train_len}
    return lens.pop() if len(lens) == 1 else None


def leaderboard(data: ReportData, es: list[Entry]) -> Table:
    L = common_train_len(es)
    mult = [f"{k}x ({fmt.length(k * L)})" if L else f"{k}x train" for k in MULTIPLES]
    cols = ["mixer", "params", "state 8K", "state 1M", "lr", "tokens/s", "MFU", *mult,
            "largest", "effective context", *[f"ppl {k}x" + (f" ({fmt.length(k * L)})" if L else "")
                                              for k in PPL_MULTIPLES], "backend"]
    rows = []
    for e in es:
        label = Val(e.label, e.label, run_id=e.run.run_id if e.run else None)
        rows.append([label, e.params, e.state[STATE_LENGTHS[0]], e.state[STATE_LENGTHS[1]], e.lr, e.tokens_per_s,
                     e.mfu,
                     *[e.acc[k] for k in MULTIPLES], e.acc_max, e.ecl, *[e.ppl[k] for k in PPL_MULTIPLES], e.backend])
    groups = [("", 1), ("model", 3), ("training", 3),
              (f"HashHop exact match ({setting_text(headline_setting(data))})", len(MULTIPLES) + 2),
              ("perplexity", len(PPL_MULTIPLES)), ("", 1)]
    note = ("Each row is the largest finished model of that mixer at its selected learning rate (where it ran at "
            f"several: the best mean {select_metric(data)} over seeds, at the training length; every rate is in the "
            "learning-rate figure). With several seeds a number is their mean, with the smallest and largest seed "
            "below it; with one, accuracy carries its 95% interval resampling samples (queries of one sample share "
            f"a haystack). Effective context: the largest length with accuracy >= {THRESHOLD}. State: cache or "
            "recurrent state of the whole model after that many tokens (batch 1, bf16). Training tokens/s of one "
            "run: the mean over the second half of its log intervals, with the 10th to 90th percentile of those "
            "intervals below it (a shared machine moves it between identical runs).")
    t = Table("leaderboard", "Leaderboard", cols, rows, note, groups=groups)
    gone = t.drop_empty_columns()
    if gone:  # a column n/a for every run for one reason says so once, here, instead of in every row
        t.note += " Left out, n/a for every run: " + "; ".join(gone) + "."
    return t.add_footnotes(14)


# -- side tables beside the figures -------------------------------------------------------------
def hashhop_side(data: ReportData, es: list[Entry]) -> Table:
    """Per mixer, then per evaluation-time variant of its run (in the headline setting)."""
    rows = []
    for e in es:
        rows.append([Val(e.label, e.label), e.ecl, e.acc_max])
    setting = headline_setting(data)
    for e in es:
        for name in dict.fromkeys(v for v, _ in data.hashhop_variants):
            cells = sorted((c for v, c in data.hashhop_variants if v == name and e.run and c.run_id == e.run.run_id
                            and (c.hops, c.cot) == setting), key=lambda c: c.length)
            if any(c.accuracy is not None for c in cells):  # n/a everywhere: the variant is not for this model
                label = f"{e.label} ({name})"
                rows.append([Val(label, label), *_variant_vals(cells, name, e.run.run_id)])
    return Table("hashhop-side", "Effective context", ["mixer", f"acc >= {THRESHOLD} up to", "at largest length"],
                 rows).add_footnotes(16)


def _variant_vals(cells: list[HashHopCell], name: str, run_id: str) -> tuple[Val, Val]:
    """(effective context, accuracy at the largest length) of one run's cells under a variant."""
    ok = [c for c in cells if c.accuracy is not None]

    def val(c: HashHopCell) -> Val:
        return Val(c.accuracy, fmt.acc(c.accuracy), sub=f"at {fmt.length(c.length)} {fmt.interval(c.low, c.high)}",
                   run_id=run_id, source=f"hashhop under {name}: {c.length} tokens, {c.n} queries")

    e = effective_context([(c.length, c.accuracy, c.low, c.high) for c in ok], THRESHOLD)
    ecl = na(f"accuracy < {THRESHOLD} at every length", run_id=run_id) if e is None else Val(
        e[0], fmt.length(e[0]), sub=f"acc {fmt.acc(e[1])} {fmt.interval(e[2], e[3])}", run_id=run_id,
        source=f"largest length with HashHop accuracy >= {THRESHOLD} under {name}")
    return ecl, val(ok[-1])


def sweep_side(data: ReportData, es: list[Entry]) -> Table:
    """Per mixer: the selected learning rate, its metric over seeds, and every rate tried."""
    metric = select_metric(data)
    rows = []
    for e in es:
        if e.sweep is None:
            continue
        sel = e.sweep.selected
        if sel.mean is None:
            val = na(f"no {metric} recorded")
        else:
            spread = f"{sel.seeds} seeds, {fmt.sig(sel.low, 4)}-{fmt.sig(sel.high, 4)}" if sel.seeds > 1 else None
            val = Val(sel.mean, fmt.sig(sel.mean, 4), sub=spread, run_id=sel.runs[0].run_id,
                      source=f"run summary: {metric}" if metric != "hashhop_accuracy" else "hashhop at training length")
        tried = ", ".join(f"{p.lr:g}" + (f" ({fmt.sig(p.mean, 3)})" if p.mean is not None else "")
                          for p in e.sweep.points if p.lr is not None)
        rows.append([Val(e.label, e.label), e.lr, val, Val(tried, tried)])
    return Table("lr-side", "Selected learning rates", ["mixer", "lr", metric, "rates tried (mean)"],
                 rows).add_footnotes(16)


def ppl_side(data: ReportData, es: list[Entry]) -> Table:
    rows = []
    for e in es:
        pts = sorted((p for p in data.ppl if e.run and p.run_id == e.run.run_id), key=lambda p: p.length)
        ok = [p for p in pts if p.ppl is not None]
        top = Val(ok[-1].ppl, f"{fmt.sig(ok[-1].ppl, 4)} at {fmt.length(ok[-1].length)}", run_id=e.run.run_id,
                  sub=ppl_interval(ok[-1]), source=f"ppl length={ok[-1].length}") if ok else na("not evaluated")
        rows.append([Val(e.label, e.label), e.ppl[1], top])
    return Table("ppl-side", "Perplexity", ["mixer", "at training length", "at largest length"], rows,
                 note="Brackets: 95% interval over the evaluation windows.").add_footnotes(16)


def loss_side(data: ReportData, es: list[Entry]) -> Table:
    """Final loss of each leaderboard run (mean over its seeds); every run is in data/runs.csv."""
    rows = []
    for e in es:
        r = e.run or (data.runs_of(e.label) or [None])[0]
        if r is None:
            continue
        loss = seed_mean([(x.final_loss, x.run_id) for x in e.runs if x.final_loss is not None],
                         lambda v: fmt.sig(v, 4), "run summary: final loss") if e.runs else None
        loss = loss or (Val(r.final_loss, fmt.sig(r.final_loss, 4), run_id=r.run_id, source="run summary: final loss")
                        if r.final_loss is not None else na(r.reason or r.status if r.status != "done"
                                                            else "not recorded"))
        toks = Val(r.tokens, fmt.count(r.tokens), run_id=r.run_id) if r.tokens is not None else na("not recorded")
        rows.append([Val(e.label, e.label), Val(r.run_id, r.run_id), loss, toks])
    return Table("loss-side", "Final training loss", ["mixer", "run", "final loss", "tokens"], rows).add_footnotes(16)


def answer_side(data: ReportData, es: list[Entry]) -> Table:
    """Each leaderboard run's last held-out answer accuracy, every letter and first letters (mean over
    its seeds); every evaluation is in data/answer_curves.csv."""
    rows = []
    for e in es:
        runs = [r for r in e.runs if r.answer_curve]
        if not runs:
            continue
        cells = [seed_mean([(r.answer_curve[-1][i], r.run_id) for r in runs], lambda v: f"{v:.3f}",
                           f"metrics: {name} at the last evaluation")
                 for i, name in ((2, "eval_acc"), (3, "eval_first_acc"))]
        n = runs[0].evals.get("eval_first_n")
        if len(runs) == 1 and n and runs[0].evals.get("eval_first_acc") == runs[0].answer_curve[-1][3]:
            lo, hi = wilson(runs[0].answer_curve[-1][3] * n, n)
            cells[1].sub = f"[{lo:.2f}, {hi:.2f}] of {int(n)}"
        step = runs[0].answer_curve[-1][0]
        rows.append([Val(e.label, e.label), Val(runs[0].run_id, runs[0].run_id), *cells, Val(step, str(step))])
    return Table("answer-side", "Held-out answer accuracy at the last evaluation",
                 ["mixer", "run", "every letter", "first letter", "step"], rows).add_footnotes(16)


def bench_modes(data: ReportData) -> list[str]:
    order = {"fwd": 0, "fwdbwd": 1, "decode": 2}
    return sorted({b.mode for b in data.bench}, key=lambda m: (order.get(m, 9), m))


def fastest_length(data: ReportData, mode: str) -> int | None:
    """The length speed is compared at: 32K when measured for our mixers, else the largest
    length every measured mixer of ours ran."""
    ours = [b for b in data.bench if not b.peer and b.mode == mode]
    if not ours:
        return None
    names = {b.name for b in ours}
    ran = {L: {b.name for b in ours if b.seq_len == L and b.tokens_per_s is not None}
           for L in {b.seq_len for b in ours}}
    if FAST_AT in ran and len(ran[FAST_AT]) >= 1:
        return FAST_AT
    common = [L for L, s in ran.items() if s == names]
    return max(common) if common else max(ran, key=lambda L: (len(ran[L]), L))


def bench_side(data: ReportData, mode: str) -> Table:
    """Tokens/s and peak memory at the comparison length, and each of our mixers against its
    peer kernels as a ratio (ours / theirs: above 1 means ours is faster)."""
    L = fastest_length(data, mode)
    at = {(b.name, b.peer): b for b in data.bench if b.mode == mode and b.seq_len == L}
    rows = []
    names = sorted({b.name for b in data.bench if b.mode == mode}, key=lambda n: (_bench_order(data, n), n))
    for name in names:
        peer = any(b.peer for b in data.bench if b.name == name and b.mode == mode)
        b = at.get((name, peer))
        label = Val(name, name + (" (peer)" if peer else ""))
        if b is None:
            rows.append([label, na("not measured"), na("not measured"), na("not measured")])
            continue
        if b.tokens_per_s is None:
            why = b.reason or b.status
            rows.append([label, na(why), na(why), na(why)])
            continue
        src = f"bench {mode} seq_len={L}"
        tps = Val(b.tokens_per_s, fmt.count(b.tokens_per_s), run_id=b.run_id, source=src)
        no_mem = "not measured on CPU" if (b.device or "").startswith("cpu") else "not measured"
        mem = Val(b.peak_mem, fmt.nbytes(b.peak_mem), run_id=b.run_id, source=src) if b.peak_mem is not None \
            else na(no_mem)
        if peer:
            ours = at.get((b.peer_of, False))
            ratio = (Val(ours.tokens_per_s / b.tokens_per_s, f"{ours.tokens_per_s / b.tokens_per_s:.2f}x",
                         sub=f"{b.peer_of} / {name}", source=src)
                     if ours is not None and ours.tokens_per_s else na(f"{b.peer_of} did not run here"))
        else:
            peers = [p for (n, is_peer), p in at.items() if is_peer and p.peer_of == name and p.tokens_per_s]
            if peers:
                best = max(peers, key=lambda p: p.tokens_per_s)
                ratio = Val(b.tokens_per_s / best.tokens_per_s, f"{b.tokens_per_s / best.tokens_per_s:.2f}x",
                            sub=f"vs fastest peer {best.name}", source=src)
            else:
                ratio = na("no peer ran")
        rows.append([label, tps, mem, ratio])
    return Table(f"bench-side-{mode}", f"At {fmt.length(L)} tokens ({mode})" if L else mode,
                 ["kernel", "tokens/s", "peak memory", "ours / peer"], rows, label_col=None).add_footnotes(16)


def _bench_order(data: ReportData, name: str) -> int:
    labels = data.labels()
    if name in labels:
        return labels.index(name)
    b = next((b for b in data.bench if b.name == name), None)
    if b is not None and b.peer_of in labels:
        return labels.index(b.peer_of) + len(labels)
    return 2 * len(labels)


# -- scaling ----------------------------------------------------------------------------------
@dataclass
class ScalingFit:
    label: str
    y: str          # "loss" (held-out, else training) or "accuracy" (HashHop at the training length; fitted as error)
    x: str          # "params" (non-embedding) or "flops" (training)
    points: list[tuple[float, float, str]]  # (x, y, run id)
    fit: PowerLaw | None

    @property
    def sizes(self) -> int:
        return len({p[0] for p in self.points})


def scaling_loss(data: ReportData) -> str:
    """The loss the scaling fits use: held-out `eval_loss` when every finished run has it (it is
    what learning rates are selected by), else the final training loss."""
    done = [r for r in data.runs if r.status == "done"]
    return "eval_loss" if done and all("eval_loss" in r.evals for r in done) else "final_loss"


def _loss(r: Run, which: str) -> float | None:
    return r.evals.get("eval_loss") if which == "eval_loss" else r.final_loss


def scaling_points(data: ReportData, label: str, y: str, x: str) -> list[tuple[float, float, str]]:
    pts = []
    cells: dict[str, list[Run]] = defaultdict(list)
    for r in data.runs_of(label):
        if r.status == "done":
            cells[cell_key(r)].append(r)
    which = scaling_loss(data)
    # each size at its selected learning rate, every seed a point
    for r in [r for cell in cells.values() for r in cell_sweep(data, label, cell).selected.runs]:
        xv = (r.non_embedding_params or r.params) if x == "params" else r.flops
        yv = _loss(r, which) if y == "loss" else metric_of(data, r, "hashhop_accuracy")
        if xv is not None and yv is not None:
            pts.append((float(xv), float(yv), r.run_id))
    return sorted(pts)


def scaling_fits(data: ReportData) -> list[ScalingFit]:
    out = []
    for label in data.labels():
        for y in ("loss", "accuracy"):
            for x in ("params", "flops"):
                pts = scaling_points(data, label, y, x)
                if y == "loss":
                    fit = fit_power_law([p[0] for p in pts], [p[1] for p in pts])
                else:  # fit the error rate, which a power law can describe down to zero
                    fit = fit_power_law([p[0] for p in pts], [1 - p[1] for p in pts])
                out.append(ScalingFit(label, y, x, pts, fit))
    return out


def exponent_text(f: PowerLaw) -> str:
    """'-0.316 (95% CI -0.40 to -0.24)'."""
    ci = f.exponent_ci
    return f"{f.exponent:.3f}" + (f" (95% CI {ci[0]:.2f} to {ci[1]:.2f})" if ci else "")


def scaling_side(fits: list[ScalingFit]) -> Table:
    """One row per mixer: the fitted exponent of each of the four panels, with its interval."""
    order = [("loss", "params"), ("loss", "flops"), ("accuracy", "params"), ("accuracy", "flops")]
    heads = ["loss ~ N", "loss ~ C", "error ~ N", "error ~ C"]
    if not any(f.points for f in fits if f.y == "accuracy"):  # no HashHop task: loss columns only
        order, heads = order[:2], heads[:2]
    by_label: dict[str, dict[tuple[str, str], ScalingFit]] = defaultdict(dict)
    for f in fits:
        by_label[f.label][(f.y, f.x)] = f
    rows = []
    for label, fs in by_label.items():
        row = [Val(label, label)]
        for key in order:
            f = fs.get(key)
            if f is None or f.fit is None:
                sizes = f.sizes if f else 0
                row.append(na(f"{sizes} size{'s' if sizes != 1 else ''}"))
            else:
                ci = f.fit.exponent_ci
                sub = (f"[{ci[0]:.2f}, {ci[1]:.2f}], " if ci else "") + f"R² {f.fit.r2:.2f}"
                row.append(Val(f.fit.exponent, f"{f.fit.exponent:.3f}", sub=sub,
                               source=f"least squares in log-log space over {f.fit.n} runs, {f.sizes} sizes; "
                                      "95% interval from Student's t with n - 2 degrees of freedom"))
        rows.append(row)
    return Table("scaling-side", "Fitted exponents", ["mixer", *heads], rows,
                 note="N: non-embedding parameters; C: training FLOPs. Brackets: 95% interval of the exponent. "
                      "A fit needs 3 or more model sizes; n/a gives how many there are.")


@dataclass
class Crossing:
    x: str               # "params" or "flops"
    at: float            # where the two fitted curves meet
    below: str           # the mixer with the lower fitted loss below that point
    above: str           # ... and above it


def scaling_crossings(fits: list[ScalingFit]) -> list[Crossing]:
    """Where two mixers' fitted loss curves cross inside both fits' measured ranges."""
    out = []
    for x in ("params", "flops"):
        fs = [f for f in fits if f.y == "loss" and f.x == x and f.fit is not None]
        for i, a in enumerate(fs):
            for b in fs[i + 1:]:
                at = crossing(a.fit, b.fit)
                if at is None:
                    continue
                lo = at / 2  # which is lower just below the crossing
                below, above = (a.label, b.label) if a.fit(lo) < b.fit(lo) else (b.label, a.label)
                out.append(Crossing(x, at, below, above))
    return sorted(out, key=lambda c: (c.x, c.at))


def scaling_findings(data: ReportData) -> list[str]:
    """What the loss fits say, with their intervals and the caution their range calls for."""
    fits = [f for f in scaling_fits(data) if f.y == "loss" and f.x == "params" and f.fit is not None]
    if not fits:
        return []
    which = "Held-out loss" if scaling_loss(data) == "eval_loss" else "Final training loss"
    fits.sort(key=lambda f: f.fit.exponent)
    sizes = max(f.sizes for f in fits)
    out = [f"{which} falls with non-embedding parameters N as N^b, steepest first: "
           + ", ".join(f"{f.label} b = {exponent_text(f.fit)}" for f in fits)
           + f" ({sizes} sizes each, the selected learning rate at each size)."]
    cis = {f.label: f.fit.exponent_ci for f in fits}
    if all(ci is not None for ci in cis.values()) and len(fits) >= 2:
        apart = [(a.label, b.label) for i, a in enumerate(fits) for b in fits[i + 1:]
                 if cis[a.label][1] < cis[b.label][0] or cis[b.label][1] < cis[a.label][0]]
        if apart:
            pairs = len(fits) * (len(fits) - 1) // 2
            out.append("Exponent intervals that do not overlap: " + "; ".join(f"{a} and {b}" for a, b in apart)
                       + ("; every other pair overlaps." if len(apart) < pairs else "."))
        else:
            out.append("Every pair of exponent intervals overlaps: at these sizes the exponents do not separate "
                       "the mixers.")
    small, large = min(f.points[0][0] for f in fits), max(f.points[-1][0] for f in fits)
    first = min((f.points[0][1], f.label) for f in fits)   # lowest loss at each mixer's smallest size
    last = min((f.points[-1][1], f.label) for f in fits)   # ... and at its largest
    if first[1] == last[1]:
        out.append(f"{first[1]} has the lowest loss at both the smallest and the largest size "
                   f"({fmt.sig(first[0], 3)} and {fmt.sig(last[0], 3)}).")
    else:
        out.append(f"The ranking changes with size: {first[1]} has the lowest loss at the smallest size "
                   f"({fmt.sig(first[0], 3)}), {last[1]} at the largest ({fmt.sig(last[0], 3)}).")
    crossings = scaling_crossings(scaling_fits(data))
    for x, unit in (("params", "non-embedding parameters"), ("flops", "training FLOPs")):
        cs = [c for c in crossings if c.x == x]
        if cs:
            out.append(f"Fitted loss curves that cross inside the measured range of {unit}: "
                       + "; ".join(f"{c.below} and {c.above} at {fmt.count(c.at)} ({c.below} lower below it)"
                                   for c in cs) + ".")
    edge = lr_at_edge(data, [f.label for f in fits])
    if edge:
        out.append("Learning rate selected at the edge of the grid swept: "
                   + "; ".join(f"{label} at {n} of {m} sizes ({lr:g})" for label, (n, m, lr) in edge.items())
                   + "; a wider grid may lower those points.")
    out.append(f"Caution: the fits span {fmt.count(small)} to {fmt.count(large)} non-embedding parameters "
               f"({large / small:.0f}x) with one seed per point; an exponent from so short a range is indicative, "
               "and its interval is wide for that reason.")
    return out


def lr_at_edge(data: ReportData, labels: list[str]) -> dict[str, tuple[int, int, float]]:
    """label -> (sizes whose selected rate is the largest or smallest swept, sizes, that rate)."""
    out = {}
    for label in labels:
        cells: dict[str, list[Run]] = defaultdict(list)
        for r in data.runs_of(label):
            if r.status == "done":
                cells[cell_key(r)].append(r)
        sweeps = [cell_sweep(data, label, cell) for cell in cells.values()]
        sweeps = [s for s in sweeps if len(s.points) >= 2 and s.selected.lr is not None]
        at = [s.selected.lr for s in sweeps if s.selected.lr in (s.points[0].lr, s.points[-1].lr)]
        if at:
            out[label] = (len(at), len(sweeps), max(set(at), key=at.count))
    return out


def recall_findings(data: ReportData) -> list[str]:
    """Per companion: each mixer's recall at its largest size, and the best point of all."""
    out = []
    for name, pts in companion_recall(data).items():
        if not pts:
            out.append(f"Companion experiment {name} has no finished runs in this store.")
            continue
        largest = []
        for label in dict.fromkeys(p.label for p in pts):
            p = max((p for p in pts if p.label == label), key=lambda p: p.x)
            largest.append(f"{label} {fmt.acc(p.accuracy)} {fmt.interval(p.low, p.high)}")
        best = max(pts, key=lambda p: p.accuracy)
        chance = best.chance
        out.append(f"MQAR recall, {recall_setting(data.companions[name])} ({name}), at the largest size: "
                   + ", ".join(largest) + f". Best of all sizes: {best.label} at {fmt.count(best.x)} parameters, "
                   f"{fmt.acc(best.accuracy)}" + (f"; chance {fmt.sig(chance, 2)}" if chance else "")
                   + ". One seed per point.")
    return out


@dataclass
class RecallPoint:
    label: str
    x: float                 # non-embedding parameters
    accuracy: float
    low: float
    high: float
    n: int                   # rows scored (queries within a row are not independent; rows are the trials)
    chance: float | None
    run_id: str


def companion_recall(data: ReportData) -> dict[str, list[RecallPoint]]:
    """Each companion experiment's held-out accuracy (`eval_acc`) per run, at its selected
    learning rate, with a Wilson interval over the rows scored."""
    out: dict[str, list[RecallPoint]] = {}
    for name, runs in data.companions.items():
        pts = []
        for r in runs:
            acc = r.evals.get("eval_acc")
            x = r.non_embedding_params or r.params
            if r.status != "done" or acc is None or x is None:
                continue
            train = r.config.get("train") or {}
            n = int(train.get("eval_batches") or 0) * int(train.get("batch_size") or 0)
            low, high = wilson(acc * n, n) if n else (None, None)
            pts.append(RecallPoint(r.label, float(x), acc, low, high, n, run_chance(r, "accuracy"), r.run_id))
        order = data.labels() + sorted({p.label for p in pts} - set(data.labels()))
        out[name] = sorted(pts, key=lambda p: (order.index(p.label), p.x))
    return out


@dataclass(frozen=True)
class PairsPoint:
    label: str
    pairs: int
    accuracy: float
    low: float
    high: float
    rows: int
    run_id: str


def mqar_runs(data: ReportData) -> list[Run]:
    """Finished MQAR runs of this experiment and its companions, a companion's under
    'label (experiment)' where its label is also used elsewhere."""
    runs = [r for r in list(data.runs) + [r for rs in data.companions.values() for r in rs]
            if r.status == "done" and (r.config.get("task") or {}).get("name") == "mqar"]
    where: dict[str, set[str]] = defaultdict(set)
    for r in runs:
        where[r.label].add(r.config.get("experiment", ""))
    return [replace(r, label=f"{r.label} ({r.config['experiment']})") if len(where[r.label]) > 1
            and r.config.get("experiment") else r for r in runs]


def trained_pairs(r: Run) -> int:
    """The key-value pairs a run ended its training on: the last point of a `task.num_kv_pairs`
    schedule, else its task config, else the task's default."""
    from zoo.tasks.mqar import MQARConfig

    sched = ((r.config.get("train") or {}).get("schedules") or {}).get("task.num_kv_pairs")
    if sched and sched.get("points"):
        return int(sched["points"][-1][1])
    cfg = (r.config.get("task") or {}).get("config") or {}
    return int(cfg.get("num_kv_pairs") or MQARConfig.model_fields["num_kv_pairs"].default)


def mqar_by_pairs(data: ReportData) -> dict[str, list[PairsPoint]]:
    """MQAR held-out accuracy per mixer and number of key-value pairs, over this experiment's runs
    and its companions'; of several runs at one point (a learning-rate sweep, seeds), the best.
    The interval is Wilson's over the rows scored: the queries of one row share its pairs, so
    rows, not queries, are the trials (conservative)."""
    best: dict[tuple[str, int], PairsPoint] = {}
    for r in mqar_runs(data):
        acc = r.evals.get("eval_acc")
        if acc is None:
            continue
        pairs = trained_pairs(r)
        train = r.config.get("train") or {}
        n = int(train.get("eval_batches") or 0) * int(train.get("batch_size") or 0)
        low, high = wilson(acc * n, n)
        if (r.label, pairs) not in best or acc > best[(r.label, pairs)].accuracy:
            best[(r.label, pairs)] = PairsPoint(r.label, pairs, acc, low, high, n, r.run_id)
    out: dict[str, list[PairsPoint]] = {}
    for p in sorted(best.values(), key=lambda p: p.pairs):
        out.setdefault(p.label, []).append(p)
    return out


def state_kind(r: Run) -> str | None:
    """From the registry's capabilities of the run's layers: 'fixed' when every layer's state
    stays the same size however long the context (a recurrence, a sliding window), 'attention'
    when every layer is attention (its cache grows with the context), else 'other' (e.g. a long
    convolution); None when a layer's mixer is not registered here."""
    from zoo.registry import get_spec

    try:
        specs = [get_spec(m) for m in r.mixers]
    except ZooError:
        return None
    if not specs:
        return None
    if all(s.capabilities.state == "fixed" for s in specs):
        return "fixed"
    if all("attention" in s.family for s in specs):
        return "attention"
    return "other"


def state_at_8k(r: Run) -> float | None:
    """The run's state bytes at 8K tokens (computed here for companion runs, loaded without)."""
    if 8192 in r.state_bytes:
        return r.state_bytes[8192]
    from zoo.report.load import state_sizes

    model = r.config.get("model")
    return state_sizes(model)[1].get(8192) if model else None


def mqar_pairs_side(data: ReportData) -> Table:
    """Per mixer: its kind of state, its bytes at 8K and MQAR accuracy at each pair count."""
    by = mqar_by_pairs(data)
    runs = {r.run_id: r for r in mqar_runs(data)}
    counts = sorted({p.pairs for pts in by.values() for p in pts})
    rows = []
    for label, pts in by.items():
        r = runs[pts[0].run_id]
        kind, b = state_kind(r), state_at_8k(r)
        row = [Val(label, label), Val(kind, kind) if kind else na("mixer not registered here"),
               Val(b, fmt.nbytes(b), run_id=r.run_id, source="sum of state_bytes(8192) over layers, bf16, batch 1")
               if b is not None else na(r.state_reason or "not computed")]
        at = {p.pairs: p for p in pts}
        for k in counts:
            p = at.get(k)
            row.append(na("not run") if p is None else
                       Val(p.accuracy, fmt.acc(p.accuracy), sub=fmt.interval(p.low, p.high), run_id=p.run_id,
                           source=f"eval_acc of the best run at this pair count, {p.rows} rows"))
        rows.append(row)
    return Table("mqar-pairs-side", "MQAR accuracy by key-value pairs", ["mixer", "state", "state 8K",
                 *[f"{k} pairs" for k in counts]], rows,
                 note="Brackets: Wilson 95% interval over the rows scored (a row's queries share its pairs). State: "
                 "fixed (a recurrence or sliding window), attention (a cache that grows with the context) or other.")


def recall_setting(runs: list[Run]) -> str:
    """'16 pairs, 128 tokens, 2000 steps' from the companion's run configs."""
    if not runs:
        return ""
    cfg = runs[0].config
    task = (cfg.get("task") or {}).get("config") or {}
    train = cfg.get("train") or {}
    parts = [f"{task['num_kv_pairs']} pairs" if "num_kv_pairs" in task else None,
             f"{train['seq_len']} tokens" if train.get("seq_len") else None,
             f"{train['steps']} steps" if train.get("steps") else None]
    return ", ".join(p for p in parts if p)


def recall_side(data: ReportData) -> Table | None:
    """Recall per mixer and size, one column per companion experiment."""
    recall = companion_recall(data)
    if not any(recall.values()):
        return None
    names = list(recall)
    keys = sorted({(p.label, p.x) for pts in recall.values() for p in pts},
                  key=lambda k: (data.labels().index(k[0]) if k[0] in data.labels() else 99, k[1]))
    rows = []
    for label, x in keys:
        row = [Val(label, label), Val(x, fmt.count(x))]
        for name in names:
            p = next((p for p in recall[name] if p.label == label and p.x == x), None)
            row.append(na("not run") if p is None else
                       Val(p.accuracy, fmt.acc(p.accuracy), sub=fmt.interval(p.low, p.high),
                           source=f"run {p.run_id}, eval_acc over {p.n} rows"))
        rows.append(row)
    chance = {p.chance for pts in recall.values() for p in pts if p.chance is not None}
    note = "Brackets: Wilson 95% interval over the rows scored."
    if chance:
        note += " Chance: " + ", ".join(fmt.sig(c, 2) for c in sorted(chance)) + "."
    cols = ["mixer", "N"] + [f"{n} ({recall_setting(data.companions[n])})" for n in names]
    return Table("recall-side", "MQAR recall by size", cols, rows, note=note)


# -- summary ---------------------------------------------------------------------------------
def totals(data: ReportData) -> dict:
    done = [r for r in data.runs if r.status == "done"]
    return {
        "runs": len(data.runs),
        "done": len(done),
        "failed": [r for r in data.runs if r.status == "failed"],
        "tokens": sum(r.tokens or 0 for r in data.runs),
        "flops": sum(r.flops or 0 for r in data.runs),
        "wall_s": sum(r.wall_s or 0 for r in data.runs),
        "devices": sorted({r.device for r in data.runs if r.device} | {b.device for b in data.bench if b.device}),
        "commits": sorted({r.commit for r in data.runs if r.commit}),
        "hosts": sorted({r.host for r in data.runs if r.host}),
    }


def busy_seconds(runs: list[Run]) -> float:
    """Seconds during which at least one of `runs` was training (the union of their start-finish
    spans): the device time a packed sweep took, where summed wall times would count it per run."""
    spans = sorted((float(r.started), float(r.finished)) for r in runs
                   if r.status == "done" and r.started is not None and r.finished is not None)
    total, end = 0.0, float("-inf")
    for a, b in spans:
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def findings(data: ReportData, es: list[Entry]) -> list[str]:
    """Sentences generated from the numbers above; each names the values it rests on."""
    out: list[str] = []
    scored = [e for e in es if e.run is not None and any(p.accuracy is not None for p in e.curve)]
    lead = within_training_length(scored)
    if lead:
        out.append(lead)
    if scored:
        with_ecl = [e for e in scored if e.ecl.value is not None]
        if with_ecl:
            best = max(with_ecl, key=lambda e: (e.ecl.value, _acc_at(e, e.ecl.value) or 0))
            ties = [e for e in with_ecl if e.ecl.value == best.ecl.value]
            x = best.ecl.value / best.run.train_len if best.run.train_len else None
            names = _names([e.label for e in ties])
            out.append(f"{names} {'hold' if len(ties) > 1 else 'holds'} HashHop accuracy >= {THRESHOLD} furthest: "
                       f"to {fmt.length(best.ecl.value)} tokens"
                       + (f" ({x:.2g}x the training length)" if x else "") + f" ({best.ecl.sub}).")
            rest = [e for e in scored if e not in ties]
            if rest:
                out.append("Effective context of the others: "
                           + "; ".join(f"{e.label} {e.ecl.display}" for e in rest) + ".")
        else:
            best = max(scored, key=lambda e: max(p.accuracy for p in e.curve if p.accuracy is not None))
            top = max((p for p in best.curve if p.accuracy is not None), key=lambda p: p.accuracy)
            out.append(f"No mixer reaches HashHop accuracy {THRESHOLD} at any evaluated length; the best is "
                       f"{best.label} with {fmt.acc(top.accuracy)} {fmt.interval(top.low, top.high)} "
                       f"at {fmt.length(top.length)} tokens.")
        chance = hashhop_chance(data)
        train_len = common_train_len(scored)
        if train_len:
            at_train = [(e.label, near(e.curve, train_len)) for e in scored]
            at_train = [(label, p) for label, p in at_train if p is not None and p.accuracy is not None]
            if at_train:
                L = max(p.length for _, p in at_train)
                out.append(compare_sentence(f"HashHop exact match near the training length ({fmt.length(L)} tokens)",
                                            at_train, chance))
        largest = max(p.length for e in scored for p in e.curve if p.accuracy is not None)
        at = [(e.label, next((p for p in e.curve if p.length == largest and p.accuracy is not None), None))
              for e in scored]
        at = [(label, p) for label, p in at if p is not None]
        if at and (not train_len or near([Point(largest)], train_len) is None):
            out.append(compare_sentence(f"At the largest length evaluated ({fmt.length(largest)} tokens)", at, chance))
    for mode in bench_modes(data):
        L = fastest_length(data, mode)
        ours = [b for b in data.bench if not b.peer and b.mode == mode and b.seq_len == L
                and b.tokens_per_s is not None]
        if len(ours) >= 2:
            ours.sort(key=lambda b: -b.tokens_per_s)
            f, s = ours[0], ours[-1]
            out.append(f"Fastest at {fmt.length(L)} tokens ({mode}): {f.name} at {fmt.count(f.tokens_per_s)} tokens/s, "
                       f"{f.tokens_per_s / s.tokens_per_s:.3g}x the slowest ({s.name}, "
                       f"{fmt.count(s.tokens_per_s)} tokens/s).")
        elif len(ours) == 1:
            out.append(f"Only {ours[0].name} was measured at {fmt.length(L)} tokens ({mode}): "
                       f"{fmt.count(ours[0].tokens_per_s)} tokens/s.")
        oom = sorted({(b.name, b.seq_len) for b in data.bench if b.mode == mode and b.status == "oom" and not b.peer})
        if oom:
            first: dict[str, int] = {}
            for n, L2 in oom:
                first.setdefault(n, L2)
            out.append(f"Out of memory ({mode}): " + ", ".join(f"{n} from {fmt.length(L2)}" for n, L2 in first.items())
                       + ".")
    ppl8 = [e for e in es if e.ppl[8].value is not None]
    if len(ppl8) >= 2:
        ppl8.sort(key=lambda e: e.ppl[8].value)
        out.append(f"Lowest perplexity at 8x the training length: {ppl8[0].label} ({ppl8[0].ppl[8].text}); "
                   f"highest: {ppl8[-1].label} ({ppl8[-1].ppl[8].text}).")
    state = [e for e in es if e.state[STATE_LENGTHS[1]].value is not None]
    if len(state) >= 2:
        state.sort(key=lambda e: e.state[STATE_LENGTHS[1]].value)
        lo, hi = state[0], state[-1]
        if hi.state[STATE_LENGTHS[1]].value > lo.state[STATE_LENGTHS[1]].value:
            out.append(f"After 1M tokens {lo.label} holds {lo.state[STATE_LENGTHS[1]].text} of state, "
                       f"{hi.label} {hi.state[STATE_LENGTHS[1]].text}.")
    out += scaling_findings(data)
    out += recall_findings(data)
    losses = [(e, run_chance(e.run)) for e in es if e.run is not None and e.run.final_loss is not None]
    losses = [(e, c) for e, c in losses if c is not None]
    flat = [e.label for e, c in losses if abs(e.run.final_loss - c) <= c * LOSS_AT_CHANCE]
    worse = [e.label for e, c in losses if e.run.final_loss > c * (1 + LOSS_AT_CHANCE)]
    if flat or worse:
        c = losses[0][1]
        what = f"the chance loss of the task ({fmt.sig(c, 3)} nats per loss token, the answer format known)"
        if flat:
            they = "they" if len(flat) > 1 else "it"
            out.append(f"{_names(flat)} {'end' if len(flat) > 1 else 'ends'} training at {what}, within "
                       f"{LOSS_AT_CHANCE:.0%}: {they} learned the format, not the answers.")
        if worse:
            out.append(f"{_names(worse)} {'end' if len(worse) > 1 else 'ends'} training above {what}: not even "
                       "the format was learned.")
    t = totals(data)
    if t["failed"]:
        out.append(f"{len(t['failed'])} of {t['runs']} runs failed: "
                   + "; ".join(f"{r.label} ({r.run_id}): {r.reason or 'no reason recorded'}" for r in t["failed"])
                   + ".")
    if not out:
        out.append("No finished run has HashHop, perplexity or speed results yet, so there is nothing to compare.")
    return out


def _lines(p: Point) -> str | None:
    """'3 lines' for a HashHop grid point: the key = value lines of its prompts."""
    from zoo.tasks.hashhop import n_chains

    c = next((c for c in p.cells if c.n_chars and c.meta.get("hash_len")), None)
    if c is None:
        return None
    return str(n_chains(c.n_chars, c.hops, int(c.meta["hash_len"]) ) * c.hops)


def within_training_length(scored: list[Entry]) -> str | None:
    """The headline comparison in words: every length evaluated up to the training length, the
    leading mixer against each other one, and whether their intervals separate there."""
    train_len = common_train_len(scored)
    if not train_len or len(scored) < 2:
        return None
    limit = train_len * 2 ** LENGTH_TOLERANCE
    lengths = sorted({p.length for e in scored for p in e.curve if p.accuracy is not None and p.length <= limit})
    at = {e.label: {p.length: p for p in e.curve if p.accuracy is not None and p.length in lengths} for e in scored}
    lengths = [L for L in lengths if all(L in pts for pts in at.values())]
    if not lengths:
        return None
    mean = {label: sum(p.accuracy for p in pts.values() if p.length in lengths) / len(lengths)
            for label, pts in at.items()}
    order = sorted(at, key=lambda label: -mean[label])
    top = order[0]
    lines = [_lines(at[top][L]) for L in lengths]
    where = f"{fmt.length(lengths[0])}" + (f" to {fmt.length(lengths[-1])}" if len(lengths) > 1 else "") + " tokens"
    if all(lines):
        where += f", {_names(lines)} key-value lines"
    values = "; ".join(f"{label} " + ", ".join(f"{fmt.acc(at[label][L].accuracy)} "
                                              f"{fmt.interval(at[label][L].low, at[label][L].high)}" for L in lengths)
                       for label in order)
    parts = []
    for other in order[1:]:
        sep = [L for L in lengths if separated(at[top][L], at[other][L])]
        if len(sep) == len(lengths):
            parts.append(f"{top} is above {other} at every one of these lengths, with intervals that do not overlap")
        elif sep:
            parts.append(f"{top} is above {other} at {_names([fmt.length(L) for L in sep])} tokens with intervals "
                         f"that do not overlap, and within the intervals elsewhere")
        else:
            parts.append(f"{top} and {other} differ within their intervals at every one of these lengths")
    return (f"Up to the training length ({where}), HashHop exact match is: {values}. " + "; ".join(parts) + ".")


def _acc_at(e: Entry, length: int) -> float | None:
    return next((p.accuracy for p in e.curve if p.length == length), None)


def _names(xs: list[str]) -> str:
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]
