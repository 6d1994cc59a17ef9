"""The report built from a real store: runs trained here on CPU by the real trainer, HashHop
evaluated by the real evaluator, then `zoo report` writes HTML, PDF and data files.

Every check reads the store directly and compares it with what the report shows, so a
number on the page that does not come from the store fails a test.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("jinja2")

import torch  # noqa: E402

from zoo.store import Store  # noqa: E402

WEIRD = "learned <i>&</i>"  # a user-chosen label that must come out escaped

SPEC = f"""
name = "report-test"
description = "tiny CPU comparison for the report tests"

[mixers.nope]
[mixers.s4d]
[mixers."{WEIRD}"]
mixer = "learned"
config = {{ max_length = 256 }}

[model]
d_model = 16
n_layers = 1

[task]
name = "hashhop"
config = {{ hops = [1, 2], hash_len = 4 }}

[train]
steps = 3
seq_len = 128
batch_size = 2
log_every = 1

[sweep]
d_model = [16, 24, 32]

[eval.hashhop]
n_chars = [50, 350]       # 128-150 and 475-507 tokens fed: near 1x and 4x the training length
hops = [1, 2]
cot = [false, true]
samples = 1
queries = 2
hash_len = 4
greedy_samples = 1
variants = [{{ "mixer.nope.window" = 64 }}]   # evaluation-time: nope's runs only, n/a for the others
"""
LABELS = ["nope", "s4d", WEIRD]
IN_CI = bool(os.environ.get("CI"))


def need_tool(name: str) -> str:
    """A system tool the report tests use (poppler, chromium): CI installs them and must have
    them; elsewhere a missing one skips with the install line."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is missing in CI (apt-get install -y chromium poppler-utils)")
        pytest.skip(f"{name} not installed (apt-get install -y chromium poppler-utils)")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from zoo.cli import main
    from zoo.experiment.spec import load_spec
    from zoo.experiment.sweep import run_experiment

    tmp = tmp_path_factory.mktemp("report")
    spec_path = tmp / "spec.toml"
    spec_path.write_text(SPEC)
    root, out = tmp / "store", tmp / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared CPU
    try:
        outcomes = run_experiment(load_spec(spec_path), Store(root))
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = main(["report", str(spec_path), "--root", str(root), "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert [o.status for o in outcomes] == ["done"] * 9, [(o.status, o.reason) for o in outcomes]
    assert all(o.evals.get("hashhop") == "ok" for o in outcomes), [o.evals for o in outcomes]
    assert code == 0, buf.getvalue()
    return {"store": Store(root), "out": out, "stdout": buf.getvalue(), "spec": spec_path, "root": root,
            "html": (out / "index.html").read_text(encoding="utf-8")}


# -- a small HTML reader: well-formedness, ids, tables -------------------------------------------
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
SVG_SELF = {"path", "use", "rect", "circle", "line", "polygon", "polyline", "stop", "ellipse", "image"}


class Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.tags: set[str] = set()
        self.tables: dict[str, list[list[dict]]] = {}
        self._table: str | None = None
        self._row: list[dict] | None = None
        self._cell: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if "id" in a:
            self.ids.append(a["id"])
        if "href" in a and tag == "a":
            self.hrefs.append(a["href"])
        for k in ("src", "xlink:href") if tag != "use" else ():
            if k in a:
                self.srcs.append(a[k])
        if tag == "table":
            self._table = a.get("id")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = {"tag": tag, "text": "", **a}
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if "id" in a:
            self.ids.append(a["id"])

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            if tag in self.stack:
                while self.stack and self.stack.pop() != tag:
                    pass
            return
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data


def parse(html: str) -> Page:
    p = Page()
    p.feed(html)
    p.close()
    return p


def test_html_parses_and_is_self_contained(built):
    html = built["html"]
    page = parse(html)
    assert page.errors == [] and page.stack == [], (page.errors[:5], page.stack)
    assert html.startswith("<!DOCTYPE html>")
    assert len(page.ids) == len(set(page.ids)), "duplicate ids (figures' SVG ids must be prefixed per figure)"
    # a table of contents whose every entry lands somewhere
    assert "contents" in page.ids
    internal = [h[1:] for h in page.hrefs if h.startswith("#")]
    assert len(internal) > 20 and set(internal) <= set(page.ids), set(internal) - set(page.ids)
    # no scripts, no stylesheets or images from anywhere: opens from disk without a network
    assert "script" not in page.tags and "link" not in page.tags and "img" not in page.tags
    assert not [s for s in page.srcs if not s.startswith(("#", "data:"))], page.srcs
    assert not re.search(r"url\((?!#)", html), "CSS or SVG fetches a resource"
    assert html.count("<svg") >= 6 and "<style>" in html
    for h in page.hrefs:
        if h.startswith("data/"):
            assert (built["out"] / h).is_file(), h
    # every label of every figure lies inside its figure (an inline SVG clips what is outside)
    for svg in re.findall(r'<svg [^>]*class="fig".*?</svg>', html, re.S):
        _, _, w, h = (float(v) for v in re.search(r'viewBox="([^"]+)"', svg).group(1).split())
        for x, y in re.findall(r'<text[^>]* x="(-?[\d.]+)" y="(-?[\d.]+)"', svg):
            assert 0 <= float(x) <= w and 0 <= float(y) <= h, (svg[:120], x, y)


def test_every_mixer_and_escaping(built):
    html = built["html"]
    page = parse(html)
    board = page.tables["table-leaderboard"]
    labels = [row[0].get("data-value") for row in board if row[0]["tag"] == "td"]
    assert labels == LABELS
    for label in LABELS:
        assert html.count(escape(label)) >= 5, label  # leaderboard, cards, runs, figures, findings
    assert WEIRD not in html, "a run label went into the page unescaped"
    assert "&lt;i&gt;&amp;&lt;/i&gt;" in html


def escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- every leaderboard number is the store's number ----------------------------------------------
def headline(store: Store, label: str) -> dict:
    runs = [r for r in store.runs(kind="train") if r["config"]["label"] == label and r["status"] == "done"]
    return max(runs, key=lambda r: r["summary"]["params"])


def pooled(rows: list[dict], n_chars: int) -> tuple[float | None, list[dict]]:
    at = [r for r in rows if r["n_chars"] == n_chars]
    ok = [r for r in at if r["status"] == "ok"]
    if not ok:
        return None, at
    return sum(r["correct"] for r in ok) / sum(r["n"] for r in ok), at


def state_bytes(model_cfg: dict, L: int) -> int:
    from zoo.model import ModelConfig, ZooLM

    with torch.device("meta"):
        m = ZooLM(ModelConfig(**model_cfg))
    return sum(x.state_bytes(L, 1, torch.bfloat16) for x in m.mixers)


def test_leaderboard_equals_store(built):
    store = built["store"]
    page = parse(built["html"])
    rows = page.tables["table-leaderboard"]
    head = [c["text"].strip() for c in rows[1]]
    body = [r for r in rows if r[0]["tag"] == "td"]
    col = {name: i for i, name in enumerate(head)}
    csv_rows = list(csv.DictReader((built["out"] / "data" / "leaderboard.csv").open()))
    for row, crow in zip(body, csv_rows):
        label = row[0]["data-value"]
        run = headline(store, label)
        s, cfg = run["summary"], run["config"]
        hh = store.results(run["id"], "hashhop")
        cells = {name: row[i] for name, i in col.items()}

        def value(name, cells=cells, label=label):
            c = cells[name]
            assert "data-value" in c, (label, name, c)
            return float(c["data-value"])

        assert value("params") == s["params"]
        assert float(crow["params"]) == s["params"]
        assert value("tokens/s") == pytest.approx(s["tokens_per_s"], rel=1e-12)
        # n/a for every run, for one reason: left out of the table and named once in its note
        assert s["mfu"] is None and "MFU" not in cells and f"MFU: {s['peak_source']}" in built["html"]
        if label == WEIRD:  # learned positions end at 256 tokens: no state at 8K or 1M, and the page says why
            assert cells["state 8K"]["data-na"] == cells["state 1M"]["data-na"] == "max length 256"
        else:
            assert value("state 8K") == state_bytes(cfg["model"], 8192)
            assert value("state 1M") == state_bytes(cfg["model"], 2**20)
        acc1, _ = pooled(hh, 50)
        assert value("1x (128)") == pytest.approx(acc1, abs=1e-12)
        assert cells["1x (128)"]["text"].startswith(f"{acc1:.3f}")
        acc4, at4 = pooled(hh, 350)
        if label == WEIRD:  # max_length 256: the store says n/a, and so must the page, with the reason
            assert acc4 is None and {r["status"] for r in at4} == {"n/a"}
            assert cells["4x (512)"]["data-na"].startswith(at4[0]["reason"])
            assert "data-value" not in cells["4x (512)"]
            assert value("largest") == pytest.approx(acc1, abs=1e-12)
        else:
            assert value("4x (512)") == pytest.approx(acc4, abs=1e-12)
            assert value("largest") == pytest.approx(acc4, abs=1e-12)
        for name, target in (("16x (2K)", "2K"), ("64x (8K)", "8K")):
            assert name not in cells and f"{name}: not evaluated near {target}" in built["html"]
        assert cells["backend"]["data-value"] == ", ".join(sorted(set(run["provenance"]["backends"].values())))
        for c in row[1:]:  # never a blank, never a bare zero standing in for a missing value
            assert c["text"].strip(), (label, c)
            assert ("data-value" in c) != ("data-na" in c)


def test_variants_stand_beside_their_runs(built):
    page = parse(built["html"])
    side = [row[0]["text"].strip() for row in page.tables["table-hashhop-side"]]
    assert "nope (nope.window=64)" in side
    assert not any(x.startswith(("s4d (", "learned")) and "window" in x for x in side)  # n/a there: not listed
    assert "nope (nope.window=64)" in built["html"].split('id="fig-hashhop"')[1]  # the figure's legend


def test_a_table_no_longer_written_leaves_no_stale_file(tmp_path):
    from zoo.report.render import write_data

    for name in ("pending_cells.csv", "pending_cells.parquet", "leaderboard.csv"):
        (tmp_path / name).write_text("from an earlier report\n")
    (tmp_path / "README.txt").write_text("the user's own\n")
    files, _ = write_data({"leaderboard": [{"label": "a", "acc": 0.5}], "pending_cells": []}, tmp_path)
    assert "leaderboard.csv" in files
    assert not (tmp_path / "pending_cells.csv").exists() and not (tmp_path / "pending_cells.parquet").exists()
    assert (tmp_path / "leaderboard.csv").read_text().startswith("label")
    assert (tmp_path / "README.txt").read_text() == "the user's own\n"


def test_data_files(built):
    data = built["out"] / "data"
    for name in ("leaderboard", "hashhop_cells", "hashhop_depth", "hashhop_curves", "loss_curves", "runs",
                 "scaling_fits", "scaling_points"):
        assert (data / f"{name}.csv").is_file(), name
    store = built["store"]
    cells = list(csv.DictReader((data / "hashhop_cells.csv").open()))
    rows = [r for run in store.runs(kind="train") for r in store.results(run["id"], "hashhop")]
    assert len(cells) == sum(r.get("variant") is None for r in rows) == 9 * 8
    variants = list(csv.DictReader((data / "hashhop_variants.csv").open()))
    assert len(variants) == sum(r.get("variant") is not None for r in rows) == 9 * 8
    assert {(v["label"], v["status"]) for v in variants} == {("nope", "ok"), ("s4d", "n/a"), (WEIRD, "n/a")}
    assert all(v["variant"] == "nope.window=64" for v in variants)
    losses = list(csv.DictReader((data / "loss_curves.csv").open()))
    some = losses[0]
    stored = {m["step"]: m["value"] for m in store.metrics(some["run_id"], "loss")}
    assert float(some["loss"]) == stored[int(some["step"])]
    # HashHop scores each answer's first letter apart: one row per held-out evaluation of every run
    answers = list(csv.DictReader((data / "answer_curves.csv").open()))
    evaluated = [(run["id"], m["step"]) for run in store.runs(kind="train")
                 for m in store.metrics(run["id"], "eval_first_acc")]
    assert evaluated and sorted((a["run_id"], int(a["step"])) for a in answers) == sorted(evaluated)
    for a in answers:
        first = {m["step"]: m["value"] for m in store.metrics(a["run_id"], "eval_first_acc")}
        assert float(a["eval_first_acc"]) == first[int(a["step"])]
    page = parse(built["html"])
    side = page.tables["table-answer-side"]
    assert "fig-answer-acc" in page.ids and len(side) == 1 + len(LABELS)
    assert all(re.search(r"\[\d\.\d\d, \d\.\d\d\] of \d+", row[3]["text"]) for row in side[1:]), side
    try:
        import pyarrow.parquet as pq
    except ImportError:
        assert not list(data.glob("*.parquet"))
        return
    t = pq.read_table(data / "hashhop_cells.parquet")
    assert t.num_rows == len(cells)
    assert t.column("accuracy").to_pylist() == [float(c["accuracy"]) if c["accuracy"] else None for c in cells]


def test_findings_and_scaling_come_from_the_numbers(built):
    page = parse(built["html"])
    html = built["html"]
    fits = list(csv.DictReader((built["out"] / "data" / "scaling_fits.csv").open()))
    loss_n = {f["label"]: float(f["exponent"]) for f in fits if f["y"] == "loss" and f["x"] == "params"}
    assert set(loss_n) == set(LABELS)  # three model sizes per mixer: every mixer gets a fit
    for label, b in loss_n.items():
        assert f"{escape(label)} b = {b:.3f}" in html  # quoted in the findings paragraph
    side = page.tables["table-scaling-side"]
    assert [float(r[1]["data-value"]) for r in side if r[0]["tag"] == "td"] == [loss_n[x] for x in LABELS]
    # the methods section quotes the settings the runs were trained and evaluated with
    assert "Training length (tokens per sequence): 128" in html
    assert "hops 1, 2" in html and "2 queries per sample" in html


def test_cells_not_yet_evaluated_are_named(built, tmp_path):
    """A call cut short leaves a run trained but some of its planned cells unevaluated: the
    report names each one (summary and data/pending_cells.csv) instead of drawing less silently."""
    from zoo.cli import main

    assert "not yet evaluated" not in built["html"]  # every planned cell of the fixture is stored
    assert not (built["out"] / "data" / "pending_cells.csv").exists()  # an empty table writes no file
    store = built["store"]
    nope, weird = (next(r["id"] for r in store.runs(kind="train") if r["config"].get("label") == x)
                   for x in ("nope", WEIRD))
    root = tmp_path / "store"
    shutil.copytree(built["root"], root)
    import sqlite3

    with contextlib.closing(sqlite3.connect(root / "zoo.db")) as db, db:
        gone_nope = db.execute("DELETE FROM results WHERE run_id = ? AND kind = 'hashhop' AND "
                               "json_extract(row, '$.variant') IS NOT NULL AND json_extract(row, '$.n_chars') = 350",
                               (nope,)).rowcount
        gone_weird = db.execute("DELETE FROM results WHERE run_id = ? AND kind = 'hashhop' AND "
                                "json_extract(row, '$.variant') IS NULL AND json_extract(row, '$.n_chars') = 50 AND "
                                "json_extract(row, '$.hops') = 2", (weird,)).rowcount
    assert gone_nope == 4 and gone_weird == 2  # 2 hop counts x 2 modes; 2 modes
    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["report", str(built["spec"]), "--root", str(root), "--out", str(out), "--no-pdf"]) == 0
    rows = list(csv.DictReader((out / "data" / "pending_cells.csv").open()))
    assert sorted((r["run_id"], r["cell"]) for r in rows) == sorted(
        [(nope, f"n_chars=350, hops={h}, cot={c}, variant=nope.window=64") for h in (1, 2) for c in (False, True)]
        + [(weird, f"n_chars=50, hops=2, cot={c}") for c in (False, True)])
    html = (out / "index.html").read_text(encoding="utf-8")
    assert f"nope ({nope}): hashhop 4 of 16 planned cells" in html
    assert f"{escape(WEIRD)} ({weird}): hashhop 2 of 16 planned cells" in html and WEIRD not in html


def test_an_evaluator_not_installed_is_named_not_guessed(built):
    """A spec's evaluation whose evaluator is not registered here (a plugin not installed): its
    cells cannot be counted, and each finished run says so."""
    from zoo.experiment.record import pending_cells

    store = built["store"]
    record = store.experiment("report-test")
    assert pending_cells(record, store) == []
    record["spec"]["eval"]["no-such-eval"] = {"n": 1}
    pending = pending_cells(record, store)
    assert len(pending) == 9 and {p["kind"] for p in pending} == {"no-such-eval"}
    assert all(p["planned"] == 0 and p["missing"][0].startswith("cannot tell which cells: ") for p in pending)
    # settings the evaluator's schema no longer takes (a store from an older version): named too,
    # and the report still builds
    record = store.experiment("report-test")
    record["spec"]["eval"]["hashhop"] = {**record["spec"]["eval"]["hashhop"], "no_such_setting": 1}
    pending = pending_cells(record, store)
    assert len(pending) == 9 and all(p["kind"] == "hashhop" and p["planned"] == 0 for p in pending)


def test_cli_prints_the_path(built):
    last = built["stdout"].strip().splitlines()[-1]
    assert Path(last) == built["out"] / "index.html"


def pdf_pages_text(pdf: Path) -> list[str]:
    need_tool("pdftotext")
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    return text.split("\f")[:-1]


def test_pdf_pages_and_numbers(built):
    pdf = built["out"] / "report.pdf"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    pages = pdf_pages_text(pdf)
    # perplexity and speed have nothing to draw here: one line under the heading, no pages
    figures = ["3.1 HashHop accuracy", "3.2 Accuracy by context length", "3.3 Training loss",
               "3.4 Held-out answer accuracy", "3.5 Scaling"]

    def page_of(text: str) -> int:
        """First page after the contents (page 1) where a line starts with `text`."""
        hits = [i for i, p in enumerate(pages, 1) if i > 1 and text in p]
        assert hits, text
        return hits[0]

    # page 1: title, contents and what was compared; 2: figure and findings; 3: leaderboard;
    # one page per figure; the mixer cards; methods on two pages; runs and data
    assert re.search(r"^\s*1 Summary", pages[0].split("What was compared")[0].split("6 Runs and data")[-1], re.M)
    assert page_of("Findings") == 2
    board = page_of("2 Leaderboard")  # after the findings, which may run onto a second page
    assert board in (3, 4)
    assert [page_of(f) for f in figures] == list(range(board + 1, board + 1 + len(figures)))
    absent = re.sub(r"\s+", " ", pages[page_of(figures[-1]) - 1])
    assert "Not drawn: perplexity vs evaluation length (n/a:" in absent and "throughput and peak memory" in absent
    shift = board - 3
    assert page_of("4 Mixers") == 9 + shift and page_of("5 Methods") == 10 + shift
    assert page_of("6 Runs and data") == 12 + shift and len(pages) == 12 + shift
    # the leaderboard's numbers, as printed
    text = re.sub(r"\s+", " ", pages[board - 1])
    board_rows = [r for r in parse(built["html"]).tables["table-leaderboard"] if r[0]["tag"] == "td"]
    for row in board_rows:
        for c in row[1:]:
            if "data-value" in c:
                main_text = c["text"].split("[")[0].split("at ")[0].strip()
                assert main_text in text, main_text


def test_screenshot_in_headless_chromium(built, tmp_path):
    chromium = need_tool("chromium")
    shot = tmp_path / "report.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,2400", f"--screenshot={shot}",
           (built["out"] / "index.html").resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), res.stderr[-2000:]
    keep = os.environ.get("ZOO_REPORT_SHOTS")
    if keep:  # where a person (or CI artifact upload) can look at it
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (2400, 1400)
    # the figures rendered: the first two mixers' colours (Okabe-Ito blue and vermillion) are on screen
    for rgb in ((0x00, 0x72, 0xB2), (0xD5, 0x5E, 0x00)):
        close = np.abs(img - np.array(rgb) / 255).max(-1) < 0.04
        assert close.sum() > 200, rgb
    assert img.std() > 0.1  # not a blank page


# -- perplexity and speed: an lm comparison and a bench run in one store --------------------------
LM_SPEC = """
name = "lm-report-test"
mixers = ["nope", "s4d", "alibi", "sinusoidal", "rope"]   # the last three: the known results on perplexity
[model]
d_model = 16
n_layers = 1
[task]
name = "lm"
[train]
steps = 2
seq_len = 32
batch_size = 2
[eval.ppl]
multipliers = [1, 2, 4, 8]
windows = 2
rope_scaling = [{ method = "yarn", factor = 8.0 }]
"""


@pytest.fixture(scope="module")
def built_lm(tmp_path_factory):
    from zoo import bench
    from zoo.experiment.record import recorded
    from zoo.experiment.spec import load_spec
    from zoo.experiment.sweep import run_experiment
    from zoo.report import build_report

    tmp = tmp_path_factory.mktemp("report_lm")
    spec_path = tmp / "lm.toml"
    spec_path.write_text(LM_SPEC)
    store = Store(tmp / "store")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outcomes = run_experiment(load_spec(spec_path), store)
        cfg = bench.BenchConfig(mixers=["nope", "s4d"], seq_lens=[32, 64, 128], tokens_per_batch=128, d_model=16,
                                modes=["fwd"], reps=1, warmup=0, dtype="fp32", device="cpu")
        measured = bench.Bench(cfg, progress=False).run(store)
        # a bench the experiment did not start enters its report only when asked for (--bench)
        built = build_report(recorded(load_spec(spec_path), store), spec_path=spec_path, root=store.root,
                             out=tmp / "out", pdf=False, bench_ids=[measured.run_id])
    finally:
        torch.set_num_threads(threads)
    assert [(o.status, o.evals) for o in outcomes] == [("done", {"ppl": "ok"})] * 5
    return {"store": store, "built": built, "html": built.html.read_text(encoding="utf-8")}


def test_perplexity_columns_equal_store(built_lm):
    store, page = built_lm["store"], parse(built_lm["html"])
    rows = page.tables["table-leaderboard"]
    col = {c["text"].strip(): i for i, c in enumerate(rows[1])}
    assert built_lm["built"].pdf is None and not (built_lm["built"].out / "report.pdf").exists()
    for row in (r for r in rows if r[0]["tag"] == "td"):
        run = headline(store, row[0]["data-value"])
        ppl = {r["length"]: r["ppl"] for r in store.results(run["id"], "ppl")
               if r["scope"] == "all" and r["status"] == "ok" and r["rope_scaling"] is None}
        assert float(row[col["ppl 1x (32)"]]["data-value"]) == ppl[32]
        assert float(row[col["ppl 8x (256)"]]["data-value"]) == ppl[256]
        assert "1x (32)" not in col  # an lm run has no HashHop cells: the column is left out, and named
    assert "1x (32): not evaluated" in built_lm["html"]
    assert "fig-ppl" in page.ids and "Lowest perplexity at 8x the training length" in built_lm["html"]


def test_speed_figure_equals_bench_rows(built_lm):
    store, page = built_lm["store"], parse(built_lm["html"])
    (bench_run,) = store.runs(kind="bench")
    rows = {(r["name"], r["seq_len"]): r for r in store.results(bench_run["id"], "bench") if r["mode"] == "fwd"}
    side = [r for r in page.tables["table-bench-side-fwd"] if r[0]["tag"] == "td"]
    assert {r[0]["data-value"] for r in side} == {name for name, _ in rows}
    for r in side:
        stored = rows[(r[0]["data-value"], 128)]
        if stored["status"] == "ok":
            assert float(r[1]["data-value"]) == stored["tokens_per_s"]
            assert r[2]["data-na"] == "not measured on CPU"
            if stored["target"] == "peer":  # ours / theirs, at the same shapes
                ours = rows[(stored["peer_of"], 128)]["tokens_per_s"]
                assert float(r[3]["data-value"]) == pytest.approx(ours / stored["tokens_per_s"], rel=1e-12)
        else:  # a peer that could not run here: n/a with the bench's own reason
            assert r[1]["data-na"] == r[2]["data-na"] == stored["status"].partition(":")[2].strip()
    nope, s4d = rows[("nope", 128)]["tokens_per_s"], rows[("s4d", 128)]["tokens_per_s"]
    fast, slow = ("nope", "s4d") if nope >= s4d else ("s4d", "nope")
    assert f"Fastest at 128 tokens (fwd): {fast}" in built_lm["html"] and f"the slowest ({slow}" in built_lm["html"]
    assert "fig-speed-fwd" in page.ids and "O(L²)" in built_lm["html"]


def test_known_results_decided_from_the_stored_perplexities(built_lm):
    store, page = built_lm["store"], parse(built_lm["html"])
    rows = [r for r in page.tables["table-known-results"] if r[0]["tag"] == "td"]
    verdicts = {r[0]["text"].strip(): r[2]["text"].strip() for r in rows}
    assert len(rows) == 4 and verdicts["Arora et al. 2023 (Zoology)"] == "not measured"
    assert verdicts["Hu et al. 2025 (HSA-UltraLong)"] == "not measured"
    ratio = {}
    for mixer in ("alibi", "sinusoidal", "rope"):
        pp = {r["length"]: r["ppl"] for r in store.results(headline(store, mixer)["id"], "ppl")
              if r["scope"] == "all" and r["rope_scaling"] is None}
        ratio[mixer] = pp[256] / pp[32]
    want = ("reproduced" if ratio["alibi"] <= 1.1 and min(ratio["sinusoidal"], ratio["rope"]) >= 1.5
            else "not reproduced")
    assert verdicts["Press et al. 2022 (ALiBi)"] == want
    assert f"({ratio['alibi']:.3f}x)" in rows[0][3]["text"]  # the evidence quotes the stored ratio
    rows_of = [r for r in store.results(headline(store, "rope")["id"], "ppl") if r["scope"] == "all"]
    plain = {r["length"]: r for r in rows_of if r["rope_scaling"] is None}
    yarn = {r["length"]: r for r in rows_of if r["rope_scaling"] == "yarn"}
    past = [L for L in (64, 128, 256) if L in plain and L in yarn]
    s, p = yarn[256], plain[256]
    if None in (s["ppl_low"], s["ppl_high"], p["ppl_low"], p["ppl_high"]):
        want = "not measured"
    else:
        lower = all(yarn[L]["ppl"] < plain[L]["ppl"] for L in past)
        want = "reproduced" if lower and s["ppl_high"] < p["ppl_low"] else "not reproduced"
    assert past == [64, 128, 256] and verdicts["Peng et al. 2023 (YaRN)"] == want
    with open(built_lm["built"].out / "data" / "known_results.csv", newline="") as f:
        assert [r["verdict"] for r in csv.DictReader(f)] == [r[2]["text"].strip() for r in rows]
    assert "methods-known" in page.ids


def table_overflows(html: str, base: Path) -> list[str]:
    """Tables whose laid-out box ends past the right edge of its PDF page's content area."""
    import weasyprint

    from zoo.report.render import no_network_fetcher

    doc = weasyprint.HTML(string=html, base_url=str(base), url_fetcher=no_network_fetcher()).render()
    out = []
    for n, page in enumerate(doc.pages, 1):
        box = page._page_box  # WeasyPrint's layout tree: the only place widths after layout live
        right = box.content_box_x() + box.width
        for b in box.descendants():
            if getattr(b, "element_tag", None) == "table" and b.position_x + b.margin_width() > right + 0.5:
                out.append(f"page {n}: {b.element.get('id')} by {b.position_x + b.margin_width() - right:.0f}px")
    return out


def test_pdf_tables_fit_the_page(built, tmp_path):
    import gzip

    from zoo.experiment.record import recorded
    from zoo.experiment.spec import load_spec
    from zoo.report import build_report

    assert table_overflows(built["html"], built["out"]) == []
    # a committed store whose leaderboard has n/a reasons and intervals in most cells, and a
    # retrieval-recall side table of ten columns (it ran 80-160px past the page before)
    repo = Path(__file__).resolve().parents[1]
    committed = repo / "reports/hsa-extrapolation-4k-h100/zoo.db.gz"
    (tmp_path / "zoo.db").write_bytes(gzip.decompress(committed.read_bytes()))
    spec_path = repo / "experiments/hsa_extrapolation_4k.toml"
    store = Store(tmp_path)
    report = build_report(recorded(load_spec(spec_path), store), spec_path=spec_path, root=tmp_path,
                          out=tmp_path / "out", pdf=False)
    assert table_overflows(report.html.read_text(encoding="utf-8"), report.html.parent) == []
