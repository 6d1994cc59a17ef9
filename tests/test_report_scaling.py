"""The report's scaling section: power-law fits with honest intervals, crossings inside the
measured range, findings from the fits, recall from companion experiments, device time."""

from __future__ import annotations

import math

import pytest

from zoo.report import analysis as A
from zoo.report import figures as F
from zoo.report.data import ReportData, Run
from zoo.report.fits import crossing, fit_power_law
from zoo.report.load import companion_runs
from zoo.report.style import Palette
from zoo.stats import t95
from zoo.store import Store

SIZES = (1e5, 3e5, 1e6, 3e6)
# planted laws: loss = a N^b; "flat" starts lower but falls slower, so it crosses "steep"
LAWS = {"steep": (40.0, -0.30), "flat": (6.0, -0.15)}
WIGGLE = (1.01, 0.99, 1.02, 0.985)


def run(rid, label, n, lr, loss, t0=0.0, wall=10.0):
    cfg = {"label": label, "model": {"layers": [label], "d_model": int(n) // 1000, "vocab_size": 10},
           "train": {"lr": lr, "seed": 0, "seq_len": 128, "eval_batches": 4, "batch_size": 8},
           "task": {"name": "mqar", "config": {"num_kv_pairs": 4}}}
    return Run(rid, label, [label], "done", config=cfg, params=int(n) + 10 * (int(n) // 1000),
               non_embedding_params=int(n),
               flops=6 * n * 20 * n, final_loss=loss + 0.1, evals={"eval_loss": loss, "eval_acc": min(1.0, n / 3e6)},
               started=t0, finished=t0 + wall)


def study() -> ReportData:
    runs = []
    for label, (a, b) in LAWS.items():
        for i, n in enumerate(SIZES):
            best = a * n ** b * WIGGLE[i]
            runs.append(run(f"{label}-{i}-lo", label, n, 1e-3, best * 1.2))
            edge = label == "flat"  # "flat" is best at the largest rate swept: the findings must say so
            runs.append(run(f"{label}-{i}-hi", label, n, 1e-2, best if edge else best * 1.1))
            runs.append(run(f"{label}-{i}-mid", label, n, 3e-3, best * 1.05 if edge else best))
    return ReportData("scaling", runs)


def test_t_quantiles_and_intervals_widen_with_few_points():
    assert t95(2) == pytest.approx(4.303) and t95(30) == pytest.approx(2.042)
    assert t95(1000) == pytest.approx(1.9623, abs=1e-3) and t95(31) < t95(30)
    with pytest.raises(ValueError):
        t95(0)
    x = [1e5, 3e5, 1e6, 3e6]
    fit = fit_power_law(x, [2.0 * v ** -0.25 * w for v, w in zip(x, WIGGLE)])
    lo, hi = fit.exponent_ci
    assert lo < -0.25 < hi and hi - lo == pytest.approx(2 * 4.303 * fit.exponent_se)
    assert fit.x_range == (1e5, 3e6)
    exact = fit_power_law(x, [2.0 * v ** -0.25 for v in x])
    assert exact.exponent_ci == pytest.approx((-0.25, -0.25))


def test_crossing_is_found_inside_the_range_and_never_extrapolated():
    x = [1e5, 1e6, 1e7]
    a = fit_power_law(x, [40.0 * v ** -0.30 for v in x])
    b = fit_power_law(x, [6.0 * v ** -0.15 for v in x])
    at = crossing(a, b)
    assert at == pytest.approx((40.0 / 6.0) ** (1 / 0.15), rel=1e-6) and a(at) == pytest.approx(b(at))
    far = [1e6, 3e6, 1e7]  # the same law measured only above the crossing (~3.1e5)
    assert crossing(a, fit_power_law(far, [6.0 * v ** -0.15 for v in far])) is None
    assert crossing(a, a) is None


def test_fits_use_non_embedding_params_the_selected_rate_and_held_out_loss():
    data = study()
    fits = {(f.label, f.y, f.x): f for f in A.scaling_fits(data)}
    steep = fits[("steep", "loss", "params")]
    assert [p[0] for p in steep.points] == list(SIZES)  # non-embedding N, not params
    assert [p[2] for p in steep.points] == [f"steep-{i}-mid" for i in range(4)]  # the best rate per size
    assert steep.points[0][1] == pytest.approx(40.0 * 1e5 ** -0.30 * WIGGLE[0])  # eval_loss, not final_loss
    assert steep.fit.exponent_ci[0] < -0.30 < steep.fit.exponent_ci[1]
    flat = fits[("flat", "loss", "params")]
    assert flat.fit.exponent_ci[0] < -0.15 < flat.fit.exponent_ci[1]
    assert A.scaling_loss(data) == "eval_loss"


def test_findings_state_exponents_overlap_ranking_crossing_edge_and_caution():
    text = " ".join(A.scaling_findings(study()))
    assert "Held-out loss falls with non-embedding parameters" in text
    assert "steep b = -0.3" in text and "95% CI" in text
    assert "do not overlap: steep and flat" in text
    assert "The ranking changes with size: flat has the lowest loss at the smallest size" in text
    assert "cross inside the measured range of non-embedding parameters: flat and steep" in text
    assert "flat at 4 of 4 sizes (0.01)" in text and "steep" not in text.split("edge of the grid")[1].split(";")[0]
    assert "(30x) with one seed per point" in text


def test_scaling_figure_and_table_show_loss_panels_only_without_hashhop():
    data = study()
    fig = F.scaling(data, Palette(data.labels()))
    assert fig.svg and "non-embedding parameters N" in fig.svg
    assert fig.side.columns == ["mixer", "loss ~ N", "loss ~ C"]
    assert F.headline(data, Palette(data.labels()), A.entries(data)).svg is not None  # the scaling figure leads


def test_recall_from_companions_with_wilson_intervals_and_chance():
    data = study()
    data.companions = {"recall": [run("r1", "steep", 1e6, 3e-3, 1.0), run("r2", "flat", 1e6, 3e-3, 1.0)],
                       "never-run": []}
    pts = A.companion_recall(data)
    p = pts["recall"][0]
    assert (p.label, p.n, p.accuracy) == ("steep", 32, pytest.approx(1 / 3))
    assert p.low < p.accuracy < p.high and p.chance == pytest.approx(1 / 4096)
    fig = F.recall(data, Palette(data.labels()))
    assert fig.svg and fig.side is not None and "never-run: no finished runs in this store" in fig.missing
    text = " ".join(A.recall_findings(data))
    assert "4 pairs, 128 tokens" in text and "never-run has no finished runs" in text
    data.companions = {"never-run": []}
    assert F.recall(data, Palette(data.labels())).reason.startswith("no finished runs of the companion")


def test_busy_seconds_counts_packed_runs_once():
    runs = [run("a", "x", 1, 1, 1, t0=0, wall=10), run("b", "x", 1, 1, 1, t0=5, wall=10),
            run("c", "x", 1, 1, 1, t0=30, wall=5)]
    assert A.busy_seconds(runs) == pytest.approx(20.0)


def test_companion_runs_come_from_the_store_under_their_labels(tmp_path):
    store = Store(tmp_path)
    cfg = {"label": "orig", "model": {"layers": ["rope"], "d_model": 8, "vocab_size": 4}, "train": {}}
    store.upsert_run("r1", cfg, status="done")
    store.update_summary("r1", params=100, eval_acc=0.5)
    store.add_members("recall", [("r1", "rope-small", "train")])
    got = companion_runs(store, "recall")
    assert [(r.run_id, r.label, r.non_embedding_params) for r in got] == [("r1", "rope-small", 68)]
    assert companion_runs(store, "absent") == []
    assert not math.isnan(got[0].evals["eval_acc"])
