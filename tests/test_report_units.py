"""The report's small parts: intervals, fits, styles, formatting, run filters, the CLI's edges."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from zoo.errors import ZooError
from zoo.report import fmt
from zoo.report.fits import effective_context, fit_power_law, wilson
from zoo.report.fmt import Table, Val, na
from zoo.report.load import parse_where
from zoo.report.style import Palette
from zoo.store import Store


def test_wilson_known_values():
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson(10, 10)[1] == pytest.approx(1.0) and wilson(0, 0) == (0.0, 1.0)


def test_power_law_fit():
    x = np.array([1e6, 3e6, 1e7, 3e7])
    fit = fit_power_law(list(x), list(3.0 * x ** -0.07))
    assert fit.exponent == pytest.approx(-0.07, abs=1e-9) and fit.coef == pytest.approx(3.0, rel=1e-6)
    assert fit.r2 == pytest.approx(1.0) and fit.exponent_se == pytest.approx(0.0, abs=1e-9)
    noisy = fit_power_law(list(x), list(3.0 * x ** -0.07 * np.array([1.01, 0.99, 1.02, 0.98])))
    assert noisy.exponent_se > 0 and 0 < noisy.r2 < 1
    assert fit_power_law([1e6, 2e6], [2.0, 1.9]) is None  # two sizes pin nothing down
    assert fit_power_law([1e6, 2e6, 4e6], [2.0, 0.0, 1.0]) is None  # a power law never reaches zero


def test_effective_context_is_the_largest_passing_length():
    pts = [(1024, 1.0, 0.9, 1.0), (4096, 0.95, 0.9, 0.98), (16384, 0.5, 0.4, 0.6), (65536, 0.91, 0.8, 0.95)]
    assert effective_context(pts)[0] == 65536
    assert effective_context(pts[:3])[0] == 4096
    assert effective_context([(1024, 0.2, 0.1, 0.3)]) is None


def test_palette_one_look_per_mixer_readable_in_greyscale():
    names = [f"m{i}" for i in range(24)]
    pal = Palette(names)
    looks = [pal[n] for n in names]
    assert len({(lk.color, lk.marker, str(lk.linestyle)) for lk in looks}) == 24
    # without colour, the first 12 still differ by marker, and neighbours by line style as well
    assert len({lk.marker for lk in looks[:12]}) == 12
    assert all(str(a.linestyle) != str(b.linestyle) for a, b in zip(looks[:8], looks[1:8]))
    assert pal["m3"] is pal["m3"] and Palette(names)["m3"] == pal["m3"]
    assert pal.peer("sdpa-flash").hollow and pal.peer("sdpa-flash") is pal.peer("sdpa-flash")
    for lk in looks[:12] + [pal.peer("x")]:
        ET.fromstring(lk.swatch_svg())  # well-formed inline SVG


def test_formatting():
    assert [fmt.length(n) for n in (512, 1024, 32768, 2**20, 1536, 123456)] == ["512", "1K", "32K", "1M", "1536",
                                                                               "123K"]
    assert fmt.count(24800) == "24.8K" and fmt.count(1.234e9) == "1.23B" and fmt.count(7) == "7"
    assert fmt.nbytes(2**20) == "1 MiB" and fmt.nbytes(512) == "512 B"
    assert fmt.acc(0.12345) == "0.123" and fmt.interval(0.1, 0.25) == "[0.10, 0.25]"
    assert fmt.sig(257.7123, 4) == "257.7" and fmt.pct(0.412) == "41.2%"


def test_missing_values_always_say_why():
    assert na("not evaluated").display == "n/a (not evaluated)"
    assert Val(0.0, "0.000").display == "0.000"  # a real zero stays a number
    t = Table("t", "t", ["a", "b"], [[Val("x", "x"), na("needs 4096 tokens, the model runs at most 1024")],
                                     [Val("y", "y"), na("short")]]).add_footnotes()
    assert t.rows[0][1].display == "n/a (note a)" and t.rows[1][1].display == "n/a (short)"
    assert t.footnotes == [("note a", "needs 4096 tokens, the model runs at most 1024")]
    assert t.csv_rows()[0] == {"a": "x", "b": None, "b (n/a reason)": "needs 4096 tokens, the model runs at most 1024"}


RUN = {"id": "abc", "status": "done", "config": {"label": "rope-500k", "experiment": "pe", "model": {
    "layers": ["swa", "hsa"], "d_model": 256}, "train": {"lr": 0.001, "seq_len": 4096}},
    "summary": {"params": 2_500_000}, "provenance": {"device": "NVIDIA H100 80GB HBM3"}}


@pytest.mark.parametrize("expr,hit", [
    ("label=rope-500k", True), ("label=rope*", True), ("label=nope", False), ("label!=nope", True),
    ("experiment=pe", True), ("mixer=hsa", True), ("mixer=mamba", False), ("mixer!=mamba", True),
    ("params>1e6", True), ("params<=1e6", False), ("lr=0.001", True), ("seq_len>=4096", True),
    ("config.model.d_model=256", True), ("device=*H100*", True), ("status=done", True), ("summary.missing=1", False),
])
def test_where_filters(expr, hit):
    assert parse_where(expr)(RUN) is hit


def test_where_rejects_garbage():
    with pytest.raises(ZooError, match="bad --where"):
        parse_where("just words")


def test_report_without_a_store_is_one_line_error(tmp_path, capsys):
    from zoo.cli import main

    assert main(["report", "--root", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no results store at" in err and "Traceback" not in err and not (tmp_path / "nothing").exists()


def test_open_only_with_a_graphical_browser(monkeypatch):
    import webbrowser

    from zoo.cli import report as cli_report

    class Fake:
        def __init__(self, name):
            self.name = name

    monkeypatch.setattr(cli_report.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(webbrowser, "get", lambda *a: Fake("firefox"))
    assert not cli_report.browser_available()  # a server without a desktop: print the path instead
    monkeypatch.setenv("DISPLAY", ":0")
    assert cli_report.browser_available()
    monkeypatch.setattr(webbrowser, "get", lambda *a: Fake("lynx"))
    assert not cli_report.browser_available()

    def none(*a):
        raise webbrowser.Error("no browser")

    monkeypatch.setattr(webbrowser, "get", none)
    assert not cli_report.browser_available()


def test_empty_results_render_as_reasons(tmp_path):
    pytest.importorskip("jinja2")
    pytest.importorskip("matplotlib")
    from zoo.report.data import ReportData, Run
    from zoo.report.render import build

    data = ReportData("only a failed run", [Run("r1", "nope", ["nope"], "failed", "step 3: loss (nan) is not finite")],
                      source="test")
    built = build(data, tmp_path, pdf=False)
    html = built.html.read_text()
    assert "n/a (run failed: step 3: loss (nan) is not finite)" in html or "note a: run failed" in html
    assert "n/a (no HashHop results in the store for these runs)" in html
    assert "1 of 1 runs failed: nope (r1): step 3: loss (nan) is not finite." in html


def test_bench_runs_are_ordered_by_when_they_started(tmp_path):
    from zoo.report.load import bench_runs
    from zoo.store import Store

    store = Store(tmp_path)
    for rid in ("bench-old", "bench-new"):
        store.upsert_run(rid, kind="bench", config={"mixers": ["mamba2"]}, status="running")
    store.set_status("bench-old", "failed", "marked after the newer run")  # moves its "updated"
    assert [r["id"] for r in bench_runs(store, {"mamba2"})] == ["bench-new", "bench-old"]


def test_bench_points_come_from_the_newest_run_that_measured_them():
    from zoo.report.load import newest_points

    def row(run, L, status, ms=None):
        return {"run_id": run, "device": "H100", "name": "retnet", "target": "mixer", "mode": "fwdbwd",
                "seq_len": L, "dtype": "bf16", "d_model": 1024, "tokens": 131072, "status": status, "time_ms": ms}

    newer = [row("new", 1024, "ok", 29.3), row("new", 2048, "skipped: budget"), row("new", 4096, "skipped: budget")]
    older = [row("old", 1024, "ok", 40.8), row("old", 2048, "ok", 41.0), row("old", 4096, "skipped: budget"),
             row("old", 8192, "oom")]
    got = {r["seq_len"]: (r["run_id"], r["status"]) for r in newest_points([newer, older])}
    assert got == {1024: ("new", "ok"),                 # re-measured: the newer number
                   2048: ("old", "ok"),                 # the newer run skipped it: the older measurement stands
                   4096: ("new", "skipped: budget"),    # never measured: the newest reason
                   8192: ("old", "oom")}


def test_a_store_with_only_bench_runs_gets_a_speed_report(tmp_path, capsys):
    """`zoo bench` then `zoo report`: the speed and memory figures, their numbers and the bench runs
    they come from; the training sections are left out, not shown empty."""
    pytest.importorskip("jinja2")
    pytest.importorskip("matplotlib")
    from zoo.cli import main

    root, out = tmp_path / "store", tmp_path / "out"
    assert main(["bench", "--mixers", "nope,mamba2", "--seq-lens", "64,128", "--modes", "fwd,decode",
                 "--d-model", "32", "--tokens-per-batch", "256", "--reps", "2", "--peers", "none",
                 "--no-progress", "--root", str(root)]) == 0
    run_id = Store(root).runs(kind="bench")[0]["id"]
    assert main(["report", "--root", str(root), "--out", str(out), "--no-pdf"]) == 0
    html = (out / "index.html").read_text()
    assert 'id="fig-speed-fwd"' in html and 'id="fig-speed-decode"' in html and 'id="fig-speed-fwdbwd"' not in html
    assert 'id="leaderboard"' not in html and 'id="mixers"' not in html and 'id="fig-hashhop"' not in html
    assert "speed and memory" in html and run_id in html
    csvs = sorted(p.name for p in (out / "data").glob("*.csv"))  # no empty training tables
    assert csvs == ["bench.csv", "bench_side_decode.csv", "bench_side_fwd.csv", "ceilings.csv"]
    bench_csv = (out / "data" / "bench.csv").read_text()
    assert bench_csv.count(run_id) == 2 * 2 * 2  # nope and mamba2, two lengths, two modes
    # asked for training runs that are not there: still an error, not a bench-only report
    assert main(["report", "--root", str(root), "--out", str(out), "--no-pdf", "--where", "label=rope"]) == 2
    assert "no training runs match" in capsys.readouterr().err


def test_labels_reach_figures_and_csv_as_written(tmp_path):
    """A `$` in a label is a dollar sign in the figures (not mathtext, which failed on it), and a
    label that starts like a formula is neutralised in the data files."""
    pytest.importorskip("jinja2")
    pytest.importorskip("matplotlib")
    import csv

    from zoo.report.data import ReportData, Run
    from zoo.report.render import build

    label = "=cost $x^$ [/]"  # two dollars: mathtext would parse (and fail on) what lies between
    run = Run("r1", label, ["nope"], "done", final_loss=1.5, steps=3,
              curve=[(1, 10.0, 2.0), (2, 20.0, 1.75), (3, 30.0, 1.5)])
    built = build(ReportData("labels", [run], source="test"), tmp_path, pdf=False)
    html = built.html.read_text()
    assert "=cost $x^$ [/]" in html
    rows = list(csv.DictReader((tmp_path / "data" / "runs.csv").open()))
    assert rows[0]["label"] == "'" + label and float(rows[0]["final_loss"]) == 1.5


@pytest.mark.parametrize("n, width", [(3, 5.2), (6, 5.2), (6, 8.0)])
def test_figure_legend_stays_inside_the_figure(n, width):
    """A legend of long names (runs with evaluation-time variants) wraps into more rows instead
    of running off both edges of the figure."""
    pytest.importorskip("matplotlib")
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    from zoo.report.figures import RC, _legend

    with rc_context(RC):
        fig = MplFigure(figsize=(width, 3.4), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        labels = ["hsa-retrieval-loss", "rope"] + [f"hsa-stickbreak (hsa.fusion_length_scale={i})" for i in range(n)]
        handles = [ax.plot([0, 1], [i, i])[0] for i in range(len(labels))]
        _legend(fig, handles, labels)
        renderer = fig.canvas.get_renderer()
        fig.draw(renderer)
        box, legend = fig.bbox, fig.legends[0].get_window_extent(renderer)
    assert box.x0 <= legend.x0 and legend.x1 <= box.x1, (legend, box)
