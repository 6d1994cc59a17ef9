"""Reports compare each mixer at its selected learning rate, average seeds with their spread,
and never pool HashHop cells across hop counts or modes."""

import pytest

from zoo.report import analysis as A
from zoo.report import figures as F
from zoo.report.data import HashHopCell, ReportData, Run
from zoo.report.style import Palette
from zoo.stats import clustered, wilson

TRAIN = 128


def run(rid, label, lr, seed, eval_loss, d_model=64, params=1000):
    cfg = {"label": label, "model": {"layers": [label], "d_model": d_model},
           "train": {"lr": lr, "seed": seed, "seq_len": TRAIN, "threads": 1}}
    return Run(rid, label, [label], "done", config=cfg, params=params, train_len=TRAIN, seed=seed,
               final_loss=eval_loss, evals={"eval_loss": eval_loss}, tokens_per_s=100.0 * (seed + 1))


def cell(rid, acc, hops=1, cot=False, length=TRAIN, n_chars=100, per_sample=None):
    n = 20
    return HashHopCell(rid, length, hops, cot, n=n, correct=acc * n, accuracy=acc, low=acc - 0.1, high=acc + 0.1,
                       n_chars=n_chars, meta={"per_sample": per_sample} if per_sample else {})


def sweep_data(spec=None):
    runs, cells = [], []
    for lr, base in ((1e-3, 2.0), (3e-3, 1.5), (1e-2, 3.0)):   # 3e-3 is best for "a"
        for seed in (0, 1, 2):
            rid = f"a-{lr:g}-{seed}"
            runs.append(run(rid, "a", lr, seed, base + 0.1 * seed))
            cells += [cell(rid, 0.5 + 0.1 * seed), cell(rid, 0.2 * seed, length=4 * TRAIN, n_chars=400),
                      cell(rid, 0.9, hops=2, length=TRAIN + 10)]
    runs.append(run("b-1", "b", 1e-3, 0, 2.5))
    cells.append(cell("b-1", 0.3))
    return ReportData("t", runs, hashhop=cells, spec=spec)


def test_best_learning_rate_is_selected_by_mean_over_seeds():
    data = sweep_data()
    e = A.entry(data, "a")
    assert e.sweep.selected.lr == 3e-3 and [p.lr for p in e.sweep.points] == [1e-3, 3e-3, 1e-2]
    assert [r.run_id for r in e.runs] == ["a-0.003-0", "a-0.003-1", "a-0.003-2"]
    assert e.sweep.selected.mean == pytest.approx(1.6) and e.sweep.selected.low == pytest.approx(1.5)
    assert e.lr.value == 3e-3 and "best of 3 by eval_loss" in e.lr.sub and "3 seeds" in e.lr.sub


def test_a_higher_is_better_metric_selects_the_largest():
    data = sweep_data(spec={"sweep": {"metric": "hashhop_accuracy"}})
    bump = [c for c in data.hashhop if c.run_id.startswith("a-0.01") and c.length == TRAIN and c.hops == 1]
    for c in bump:
        c.accuracy = 0.99
    assert A.entry(data, "a").sweep.selected.lr == 1e-2


def test_seeds_are_averaged_with_their_min_and_max():
    e = A.entry(sweep_data(), "a")
    at1 = e.acc[1]
    assert at1.value == pytest.approx(0.6) and "3 seeds, min-max [0.50, 0.70]" in at1.sub
    p = next(p for p in e.curve if p.length == 4 * TRAIN)
    assert (p.accuracy, p.low, p.high, p.seeds) == (pytest.approx(0.2), 0.0, pytest.approx(0.4), 3)
    assert e.tokens_per_s.value == pytest.approx(200.0) and "3 seeds" in e.tokens_per_s.sub
    one = A.entry(sweep_data(), "b")  # one seed: the cell's own interval
    assert one.acc[1].value == pytest.approx(0.3) and "[0.20, 0.40]" in one.acc[1].sub


def test_leaderboard_speaks_for_one_setting_never_pooled():
    data = sweep_data()
    e = A.entry(data, "a")
    # the 2-hop cells (accuracy 0.9) do not leak into the 1-hop headline
    assert all(c.hops == 1 for p in e.curve for c in p.cells)
    lb = A.leaderboard(data, A.entries(data))
    assert any("1 hop, no CoT" in g for g, _ in lb.groups)
    assert "lr" in lb.columns
    with pytest.raises(AssertionError, match="not pooled"):
        A.pool([cell("x", 0.5), cell("x", 0.5, hops=2)])


def test_repeated_cells_of_one_setting_combine_their_samples():
    a = cell("x", 0.5, per_sample=[[5, 5, 0, 0], [0, 5, 0, 0]])
    b = cell("x", 0.5, per_sample=[[5, 5, 0, 0], [0, 5, 0, 0]])
    p = A.pool([a, b])
    want = clustered([(5, 5), (0, 5), (5, 5), (0, 5)])
    assert (p.low, p.high) == (pytest.approx(want["lo"]), pytest.approx(want["hi"]))
    assert p.high - p.low > wilson(10, 20)[1] - wilson(10, 20)[0]  # four samples, not twenty queries


def test_scaling_points_use_each_sizes_selected_rate():
    data = sweep_data()
    pts = A.scaling_points(data, "a", "loss", "params")
    assert sorted(rid for _, _, rid in pts) == ["a-0.003-0", "a-0.003-1", "a-0.003-2"]


def test_learning_rate_figure_and_its_table():
    data = sweep_data()
    es = A.entries(data)
    figs = F.all_figures(data, Palette([e.label for e in es]), es)
    fig = next(f for f in figs if f.id == "fig-lr")
    assert fig.svg and "eval_loss" in fig.caption
    rows = fig.side.csv_rows()
    assert rows[0]["mixer"] == "a" and rows[0]["lr"] == 3e-3 and rows[0]["eval_loss"] == pytest.approx(1.6)
    one_rate = ReportData("t", [run("b-1", "b", 1e-3, 0, 2.5)])
    es1 = A.entries(one_rate)
    assert not any(f.id == "fig-lr" for f in F.all_figures(one_rate, Palette(["b"]), es1))


def test_clustered_interval_is_deterministic_and_sensible_at_the_edges():
    counts = [(3, 5), (1, 5), (5, 5), (0, 5), (2, 5)]
    assert clustered(counts) == clustered(counts)
    assert clustered(counts, seed=1)["acc"] == clustered(counts)["acc"]
    allright = clustered([(5, 5)] * 4)
    assert allright["hi"] == 1.0 and allright["lo"] == pytest.approx(wilson(4, 4)[0]) and allright["n_eff"] == 4
    assert clustered([])["acc"] is None
