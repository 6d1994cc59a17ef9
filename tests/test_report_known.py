"""The known results the report tests: each rule decides from the numbers it is given, both ways,
and says what was missing when it cannot decide."""

from __future__ import annotations

from zoo.report import analysis as A
from zoo.report import figures as F
from zoo.report import known as K
from zoo.report.data import HashHopCell, PplPoint, ReportData, Run
from zoo.report.style import Palette
from zoo.stats import wilson

T = 1024


def run(rid: str, mixer: str, *, task: str = "lm", pairs: int | None = None, acc: float | None = None,
        lr: float = 1e-3) -> Run:
    cfg = {"label": mixer, "model": {"layers": [mixer]}, "train": {"seq_len": T, "lr": lr, "seed": 0,
                                                                   "eval_batches": 4, "batch_size": 25},
           "task": {"name": task, "config": {"num_kv_pairs": pairs} if pairs else {}}}
    return Run(rid, mixer, [mixer], "done", config=cfg, train_len=T, evals={"eval_acc": acc} if acc is not None else {})


def ppl(rid: str, length: int, value: float, half: float | None = 0.05) -> PplPoint:
    lo, hi = (value * (1 - half), value * (1 + half)) if half is not None else (None, None)
    return PplPoint(rid, length, value, low=lo, high=hi)


def verdict(data: ReportData, key: str) -> K.Known:
    return next(k for k in K.known_results(data, A.entries(data)) if k.key == key)


def test_alibi_rule_both_ways_and_by_how_much():
    runs = [run("a", "alibi"), run("s", "sinusoidal"), run("r", "rope")]
    pts = [ppl("a", T, 4.0), ppl("a", 8 * T, 4.2), ppl("s", T, 4.1), ppl("s", 8 * T, 40.0),
           ppl("r", T, 3.9), ppl("r", 8 * T, 9.0)]
    k = verdict(ReportData("t", runs, ppl=pts), "alibi")
    assert k.verdict == K.REPRODUCED and "(1.050x)" in k.evidence and "[3.80, 4.20]" in k.evidence
    assert set(k.run_ids) == {"a", "s", "r"}
    pts[1] = ppl("a", 8 * T, 5.0)  # alibi rose 25%: past the 10% the rule allows
    k = verdict(ReportData("t", runs, ppl=pts), "alibi")
    assert k.verdict == K.NOT_REPRODUCED and "alibi rose 1.250x (rule <= 1.1x)" in k.evidence
    k = verdict(ReportData("t", runs, ppl=pts[:4]), "alibi")
    assert k.verdict == K.NOT_MEASURED and "rope" in k.evidence


def test_scaling_rule_needs_lower_at_every_length_and_apart_intervals():
    runs = [run("r", "rope")]
    plain = [ppl("r", L * T, v) for L, v in ((1, 4.0), (2, 6.0), (4, 9.0), (8, 14.0), (16, 30.0))]
    yarn = [("yarn x8", ppl("r", L * T, v)) for L, v in ((1, 4.1), (2, 4.3), (4, 4.6), (8, 5.0), (16, 40.0))]
    k = verdict(ReportData("t", runs, ppl=plain, ppl_variants=yarn), "yarn")
    # 16x is past the factor: not part of the rule, so its higher value does not count against it
    assert k.verdict == K.REPRODUCED and "lower at 3 of 3 lengths" in k.evidence and "(0.357x)" in k.evidence
    close = [("ntk x8", ppl("r", L * T, v * 0.99)) for L, v in ((2, 6.0), (4, 9.0), (8, 14.0))]
    k = verdict(ReportData("t", runs, ppl=plain, ppl_variants=close), "yarn")
    assert k.verdict == K.NOT_REPRODUCED and "intervals overlap" in k.evidence
    k = verdict(ReportData("t", runs, ppl=plain), "yarn")
    assert k.verdict == K.NOT_MEASURED and "not evaluated under yarn, ntk, dynamic-ntk" in k.evidence
    # dynamic NTK counts; without intervals at the deciding length nothing is decided
    dyn = [("dynamic-ntk x8", ppl("r", L * T, v * 0.5)) for L, v in ((2, 6.0), (4, 9.0), (8, 14.0))]
    assert verdict(ReportData("t", runs, ppl=plain, ppl_variants=dyn), "yarn").verdict == K.REPRODUCED
    bare = [("yarn x8", ppl("r", L * T, v * 0.5, half=None)) for L, v in ((2, 6.0), (4, 9.0), (8, 14.0))]
    k = verdict(ReportData("t", runs, ppl=plain, ppl_variants=bare), "yarn")
    assert k.verdict == K.NOT_MEASURED and "no interval at the longest" in k.evidence
    k = verdict(ReportData("t", runs, ppl=plain, ppl_variants=[("yarn x1.5", ppl("r", T, 4.0))]), "yarn")
    assert k.verdict == K.NOT_MEASURED and "no length in (1K, 1536] evaluated both ways" in k.evidence


def test_zoology_rule_fixed_state_falls_and_attention_holds():
    rows = 100  # eval_batches x batch_size
    # the kind of state comes from the registry (mamba: fixed, rope: attention, hyena: other), not
    # from stored sizes: companion runs are loaded without them
    runs = [run("m1", "mamba", task="mqar", pairs=8, acc=0.99),
            run("m2", "mamba", task="mqar", pairs=64, acc=0.30),
            run("m2b", "mamba", task="mqar", pairs=64, acc=0.45, lr=3e-3),  # the best rate counts
            run("r1", "rope", task="mqar", pairs=8, acc=1.0),
            run("r2", "rope", task="mqar", pairs=64, acc=0.97),
            run("h1", "hyena", task="mqar", pairs=8, acc=0.9),
            run("h2", "hyena", task="mqar", pairs=64, acc=0.2)]
    k = verdict(ReportData("t", runs), "zoology")
    lo, hi = wilson(45, rows)
    assert k.verdict == K.REPRODUCED and f"0.450 [{lo:.2f}, {hi:.2f}] at 64" in k.evidence
    assert "1 of 1 fixed-state mixers fall, 1 of 1 attention mixers hold" in k.evidence
    assert "hyena (other state" in k.evidence  # listed, not part of the rule
    runs[4] = run("r2", "rope", task="mqar", pairs=64, acc=0.5)  # attention falls too
    assert verdict(ReportData("t", runs), "zoology").verdict == K.NOT_REPRODUCED
    k = verdict(ReportData("t", runs[:3]), "zoology")
    assert k.verdict == K.NOT_MEASURED and "mamba (fixed state" in k.evidence
    # companions count: the MQAR runs may live in another experiment
    assert verdict(ReportData("t", [], companions={"mqar": runs}), "zoology").verdict == K.NOT_REPRODUCED


def test_pairs_from_a_schedule_and_labels_kept_apart_across_experiments():
    r = run("s", "mamba", task="mqar", acc=0.5)
    r.config["train"]["schedules"] = {"task.num_kv_pairs": {"points": [[0, 4], [100, 32]]}}
    assert A.trained_pairs(r) == 32  # evaluated at the pairs it ended on
    assert A.trained_pairs(run("d", "mamba", task="mqar")) == 8  # the task's default
    a, b = run("a", "rope", task="mqar", pairs=8, acc=1.0), run("b", "rope", task="mqar", pairs=16, acc=0.2)
    a.config["experiment"], b.config["experiment"] = "one", "two"
    got = A.mqar_by_pairs(ReportData("t", [], companions={"one": [a], "two": [b]}))
    assert set(got) == {"rope (one)", "rope (two)"}  # one label, two experiments: two lines, not one


def cells(rid: str, accs: dict[int, float], n: int = 80) -> list[HashHopCell]:
    out = []
    for m, a in accs.items():
        lo, hi = wilson(a * n, n)
        out.append(HashHopCell(rid, m * T, 1, False, n, a * n, a, lo, hi, n_chars=m * 700))
    return out


def test_hsa_rule_effective_context_longest_and_ties():
    runs = [run("h", "hsa"), run("r", "rope")]
    hh = cells("h", {1: 1.0, 4: 0.97, 16: 0.95, 64: 0.5}) + cells("r", {1: 1.0, 4: 0.1, 16: 0.0, 64: 0.0})
    k = verdict(ReportData("t", runs, hashhop=hh), "hsa")
    assert k.verdict == K.REPRODUCED and "hsa to 16K (16x)" in k.evidence and "the next: rope to 1K (1x)" in k.evidence
    hh = cells("h", {1: 1.0, 4: 0.2}) + cells("r", {1: 1.0, 4: 0.1})
    k = verdict(ReportData("t", runs, hashhop=hh), "hsa")
    assert k.verdict == K.NOT_REPRODUCED and "Tied" in k.evidence
    hh = cells("h", {1: 0.5}) + cells("r", {1: 1.0})
    k = verdict(ReportData("t", runs, hashhop=hh), "hsa")
    assert k.verdict == K.NOT_REPRODUCED and "hsa below 0.9 at every length (best 0.500" in k.evidence
    hh = cells("h", {1: 1.0, 4: 0.97, 16: 0.95}) + cells("r", {1: 1.0, 4: 1.0})  # rope's reach cut by the grid
    k = verdict(ReportData("t", runs, hashhop=hh), "hsa")
    assert k.verdict == K.NOT_MEASURED and "Not evaluated past their reach: rope" in k.evidence
    assert verdict(ReportData("t", runs[1:], hashhop=hh[1:]), "hsa").verdict == K.NOT_MEASURED


def test_nothing_measured_shows_no_section():
    data = ReportData("t", [run("n", "nope")])
    assert not K.measured(K.known_results(data, A.entries(data)))


def test_mqar_pairs_figure_and_side_table_hold_the_best_run_per_point():
    runs = [run("m1", "mamba", task="mqar", pairs=8, acc=0.99),
            run("m2", "mamba", task="mqar", pairs=64, acc=0.30),
            run("m2b", "mamba", task="mqar", pairs=64, acc=0.45, lr=3e-3),
            run("r1", "rope", task="mqar", pairs=8, acc=1.0)]
    for r in runs:  # a buildable model, so the side table computes each mixer's state at 8K
        r.config["model"] = {"layers": r.mixers, "d_model": 32, "n_layers": 2, "vocab_size": 64}
    data = ReportData("t", runs)
    fig = F.mqar_pairs(data, Palette(data.labels()))
    assert fig.svg is not None and fig.id in [f.id for f in F.all_figures(data, Palette(data.labels()), [])]
    rows = {r[0].value: r for r in fig.side.rows}
    assert fig.side.columns == ["mixer", "state", "state 8K", "8 pairs", "64 pairs"]
    assert rows["mamba"][1].value == "fixed" and rows["mamba"][4].value == 0.45 and rows["mamba"][4].run_id == "m2b"
    assert rows["rope"][1].value == "attention" and rows["rope"][4].reason == "not run"
    from zoo.report.load import state_sizes
    assert rows["mamba"][2].value == state_sizes(runs[0].config["model"])[1][8192] > 0
    one = ReportData("t", runs[:1] + runs[3:])  # one pair count each: nothing to draw
    assert "fig-mqar-pairs" not in [f.id for f in F.all_figures(one, Palette(one.labels()), [])]
