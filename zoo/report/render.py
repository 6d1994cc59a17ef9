"""Build a report directory from `ReportData`:

    out/index.html   self-contained: inline CSS and SVG, no scripts, no network
    out/report.pdf   the same HTML paginated by WeasyPrint
    out/data/        every number shown, as CSV (and Parquet when pyarrow is installed)
"""

from __future__ import annotations

import csv
import datetime as dt
import html as htmllib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.errors import ZooError
from zoo.report import analysis as A
from zoo.report import figures as F
from zoo.report import fmt, known, methods
from zoo.report.data import ReportData
from zoo.report.fmt import Table, Val, na
from zoo.report.style import Palette

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "report"


@dataclass
class Built:
    out: Path
    html: Path
    pdf: Path | None
    pages: int | None
    data_files: list[str] = field(default_factory=list)
    sections: list[dict] = field(default_factory=list)


def _slug(s: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", s).strip("-").lower() or "x"


# -- pieces of the page --------------------------------------------------------------------------
def mixer_cards(data: ReportData, pal: Palette, es: list[A.Entry]) -> list[dict]:
    from zoo import registry

    cards = []
    for e in es:
        runs = data.runs_of(e.label)
        run = e.run or runs[0]
        mixers, rows = [], []
        for name in run.mixers:
            try:
                spec = registry.get_spec(name)
            except ZooError as err:
                mixers.append({"name": name, "description": f"n/a ({err.message} on the machine that built this "
                                                              "report)", "citation": ""})
                continue
            caps = spec.capabilities
            mixers.append({"name": name, "description": spec.description, "citation": spec.citation})
            pre = f"{name}: " if len(run.mixers) > 1 else ""
            rows.append((f"{pre}family", f"{spec.family} (from {spec.source})"))
            rows.append((f"{pre}capabilities", f"cost {caps.cost}, {caps.state} state, max length "
                                               f"{fmt.length(caps.max_length) if caps.max_length else 'unbounded'}"))
            cfg = (run.config.get("model", {}).get("mixer_config", {}) or {}).get(name)
            shown = ", ".join(f"{k}={'not set' if v is None else v}" for k, v in sorted((cfg or {}).items()))
            rows.append((f"{pre}config", shown or "n/a (not recorded in the run config)"))
            rows.append((f"{pre}backends offered", ", ".join(b.name for b in spec.backends)))
        m = run.config.get("model", {})
        hf = run.config.get("hf")
        if hf:  # a pretrained Hugging Face model evaluated beside the mixers
            rows.append(("pretrained", f"{hf.get('name')} (revision {hf.get('revision') or 'default'}, "
                                       f"{hf.get('dtype')}), in its own tokens"))
        else:
            rows.append(("model", f"d_model {m.get('d_model', 'n/a')}, {m.get('n_layers', 'n/a')} blocks, pattern "
                                  f"[{', '.join(m.get('layers', []))}]"))
        rows.append(("parameters", e.params.display))
        rows.append(("backends used", ", ".join(f"{k}: {v}" for k, v in sorted(run.backends.items()))
                     if run.backends else "n/a (not recorded)"))
        cards.append({"id": f"mixer-{_slug(e.label)}", "label": e.label, "color": pal[e.label].color,
                      "mixers": mixers, "rows": rows, "runs": runs})
    return cards


def _span(vals: list[float]) -> str:
    lo, hi = fmt.sig(min(vals), 3), fmt.sig(max(vals), 3)
    return lo if lo == hi else f"{lo}-{hi}"


def ceiling_facts(data: ReportData) -> str:
    """Per device: the range of the ceilings its bench runs measured."""
    out = []
    for dev in sorted({c.device for c in data.ceilings}):
        cs = [c for c in data.ceilings if c.device == dev]
        mm = [c.matmul_tflops for c in cs if c.matmul_tflops is not None]
        cp = [c.copy_gbps for c in cs if c.copy_gbps is not None]
        out.append(f"{dev}: " + ", ".join(
            [f"{_span(mm)} TFLOP/s matmul"] * bool(mm) + [f"{_span(cp)} GB/s copy"] * bool(cp))
            + (f" ({len(cs)} bench runs)" if len(cs) > 1 else ""))
    return "; ".join(out)


def bench_runs_table(data: ReportData) -> tuple[list[str], list[dict]]:
    """A report without training runs: the bench runs its points come from."""
    cols = ["bench run", "points drawn", "mixers", "modes", "device"]
    rows = []
    for rid in sorted({b.run_id for b in data.bench if b.run_id}):
        ps = [b for b in data.bench if b.run_id == rid]
        mixers = ", ".join(sorted({b.peer_of or b.name for b in ps}))
        modes = ", ".join(sorted({b.mode for b in ps}))
        rows.append({"run_id": rid, "cells": [Val(rid, rid, run_id=rid), Val(len(ps), str(len(ps))),
                                              Val(mixers, mixers), Val(modes, modes),
                                              Val(ps[0].device, ps[0].device or "n/a")]})
    return cols, rows


def summary_facts(data: ReportData, es: list[A.Entry]) -> list[tuple[str, str]]:
    if data.bench_only:
        mixers = sorted({b.peer_of or b.name for b in data.bench})
        return [("mixers timed", f"{len(mixers)}: {', '.join(mixers)}"),
                ("bench runs", str(len({b.run_id for b in data.bench if b.run_id}))),
                ("hardware", ", ".join(sorted({b.device for b in data.bench if b.device})) or "n/a (not recorded)"),
                ("device ceilings", ceiling_facts(data) or "n/a (not measured)"),
                ("source", data.source)]
    t = A.totals(data)
    labels = [e.label for e in es]
    facts = [("compared", f"{len(labels)} mixers: {', '.join(labels)}" if labels else "n/a (no runs)"),
             ("runs", f"{t['runs']} ({t['done']} finished, {len(t['failed'])} failed)")]
    tasks = sorted({str(r.config.get("task", {}).get("name")) for r in data.runs if r.config.get("task")})
    lens = sorted({r.train_len for r in data.runs if r.train_len})
    facts.append(("task, training length", f"{', '.join(tasks) or 'n/a'}; "
                                           f"{', '.join(fmt.length(L) for L in lens) or 'n/a'} tokens"))
    facts.append(("hardware", ", ".join(t["devices"]) or "n/a (not recorded)"))
    if t["hosts"]:
        facts.append(("hosts", ", ".join(t["hosts"])))
    vers: dict[str, set] = {}
    for r in data.runs:
        for k, v in (r.versions or {}).items():
            if v:
                vers.setdefault(k, set()).add(str(v))
    facts.append(("versions", "; ".join(f"{k} {', '.join(sorted(v))}" for k, v in sorted(vers.items()))
                  or "n/a (not recorded)"))
    facts.append(("commit", ", ".join(t["commits"]) or "n/a (not recorded)"))
    facts.append(("total training compute", f"{fmt.count(t['tokens'])} tokens, {fmt.flops(t['flops'])}, "
                                            f"{fmt.seconds(t['wall_s'])} of training wall time"))
    if any(r.started is not None for r in data.runs):
        parts = [f"{fmt.seconds(A.busy_seconds(data.runs))} while this experiment's runs trained"]
        parts += [f"{name} {fmt.seconds(A.busy_seconds(runs))}" for name, runs in data.companions.items() if runs]
        everything = data.runs + [r for runs in data.companions.values() for r in runs]
        gpu = any(r.device and "cpu" not in r.device.lower() for r in data.runs)
        if len(parts) > 1:
            parts.append(f"{fmt.seconds(A.busy_seconds(everything))} in all")
        facts.append(("GPU time" if gpu else "device time",
                      "; ".join(parts) + " (elapsed: runs packed side by side count once)"))
    if data.ceilings:
        facts.append(("device ceilings", ceiling_facts(data)))
    if data.other_evals:
        facts.append(("other evaluations", "; ".join(f"{kind}: {len(rows)} rows in data/{other_eval_table(kind)}.csv"
                                                     for kind, rows in data.other_evals.items())))
    if data.pending:
        facts.append(("not yet evaluated", "; ".join(
            f"{p.label} ({p.run_id}): {p.kind} " + (f"{len(p.missing)} of {p.planned} planned cells" if p.planned
                                                    else p.missing[0]) for p in data.pending)
            + " (each in data/pending_cells.csv; `zoo compare` evaluates them on resume)"))
    facts.append(("source", data.source))
    return facts


def runs_table(data: ReportData) -> tuple[list[str], list[dict]]:
    cols = ["mixer", "run", "status", "params", "train length", "steps", "tokens", "final loss", "wall time",
            "device", "backends", "commit"]
    rows = []
    for label in data.labels():
        for r in data.runs_of(label):
            status = Val(r.status, r.status + (f": {r.reason}" if r.reason else ""))

            def v(x, text, why="not recorded", rid=r.run_id):
                return Val(x, text, run_id=rid) if x is not None else na(why)

            rows.append({"run_id": r.run_id, "cells": [
                Val(label, label), Val(r.run_id, r.run_id), status, v(r.params, fmt.count(r.params)),
                v(r.train_len, fmt.length(r.train_len)), v(r.steps, str(r.steps)), v(r.tokens, fmt.count(r.tokens)),
                v(r.final_loss, fmt.sig(r.final_loss, 4)), v(r.wall_s, fmt.seconds(r.wall_s)),
                v(r.device, r.device or ""),
                v(", ".join(f"{k}: {b}" for k, b in sorted(r.backends.items())) or None,
                  ", ".join(f"{k}: {b}" for k, b in sorted(r.backends.items()))),
                v(r.commit, (r.commit or "")[:12] + ("+dirty" if r.commit and r.commit.endswith("+dirty") else ""))]})
    return cols, rows


# -- data files ----------------------------------------------------------------------------------
def _tidy(rows: list[dict]) -> list[dict]:
    """Flatten nested values to JSON text so every cell is a scalar."""
    out = []
    for r in rows:
        out.append({k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list, tuple)) else v)
                    for k, v in r.items()})
    return out


def _columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _write_csv(path: Path, rows: list[dict]) -> None:
    cols = _columns(rows)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writerow({k: fmt.csv_cell(k) for k in cols})
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else fmt.csv_cell(r.get(k))) for k in cols})


def _write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = _columns(rows)
    arrays = {}
    for c in cols:
        vals = [r.get(c) for r in rows]
        kinds = {type(v) for v in vals if v is not None}
        if kinds and kinds <= {int, float, bool} and kinds != {bool}:
            vals = [None if v is None else float(v) for v in vals] if float in kinds else vals
        elif kinds and not kinds <= {str} and kinds != {bool}:
            vals = [None if v is None else str(v) for v in vals]
        arrays[c] = vals
    pq.write_table(pa.table(arrays), path)


def data_tables(data: ReportData, es: list[A.Entry], lb: Table, figs: list[F.Figure]) -> dict[str, list[dict]]:
    labels = {r.run_id: r.label for r in data.runs}
    heads = {e.run.run_id for e in es if e.run is not None}
    t: dict[str, list[dict]] = {}
    lb_rows = lb.csv_rows()
    for row, e in zip(lb_rows, es):
        row["run_id"] = e.run.run_id if e.run else None
    t["leaderboard"] = lb_rows
    t["hashhop_cells"] = [{"label": labels.get(c.run_id), "run_id": c.run_id, "n_chars": c.n_chars,
                           "tokens": c.length, "hops": c.hops,
                           "cot": c.cot, "status": c.status, "reason": c.reason, "n": c.n, "correct": c.correct,
                           "accuracy": c.accuracy, "low": c.low, "high": c.high,
                           "greedy_accuracy": c.greedy_accuracy, "greedy_n": c.greedy_n,
                           "char_accuracy": c.char_accuracy, "nll": c.nll,
                           "hop_accuracy": c.hop_accuracy or None, **{f"row.{k}": v for k, v in c.meta.items()}}
                          for c in data.hashhop]
    t["hashhop_variants"] = [{"label": labels.get(c.run_id), "run_id": c.run_id, "variant": v, "n_chars": c.n_chars,
                              "tokens": c.length, "hops": c.hops, "cot": c.cot, "status": c.status,
                              "reason": c.reason, "n": c.n, "correct": c.correct, "accuracy": c.accuracy,
                              "low": c.low, "high": c.high, "char_accuracy": c.char_accuracy}
                             for v, c in data.hashhop_variants]
    t["hashhop_depth"] = [{"label": labels.get(c.run_id), "run_id": c.run_id, "n_chars": c.n_chars,
                           "tokens": c.length, "hops": c.hops,
                           "cot": c.cot, "bin": i, "accuracy": a, "n": n}
                          for c in data.hashhop for i, (a, n) in enumerate(c.depth)]
    t["hashhop_curves"] = [{"label": e.label, "run_id": e.run.run_id, "tokens": p.length, "n": p.n,
                            "correct": p.correct, "accuracy": p.accuracy, "low": p.low, "high": p.high,
                            "seeds": p.seeds, "run_ids": [r.run_id for r in e.runs], "reason": p.reason}
                           for e in es if e.run for p in e.curve]
    t["ppl"] = [{"label": labels.get(p.run_id), "run_id": p.run_id, "length": p.length, "ppl": p.ppl, "low": p.low,
                 "high": p.high, "loss": p.loss, "tokens": p.tokens, "stride": p.stride, "status": p.status,
                 "reason": p.reason,
                 **{f"row.{k}": v for k, v in p.meta.items()}} for p in data.ppl]
    t["loss_curves"] = [{"label": r.label, "run_id": r.run_id, "headline": r.run_id in heads, "step": s,
                         "tokens": tok, "loss": loss} for r in data.runs for s, tok, loss in r.curve]
    t["answer_curves"] = [{"label": r.label, "run_id": r.run_id, "headline": r.run_id in heads, "step": s,
                           "tokens": tok, "eval_acc": acc, "eval_first_acc": first}
                          for r in data.runs for s, tok, acc, first in r.answer_curve]
    t["bench"] = [{"name": b.name, "peer": b.peer, "peer_of": b.peer_of, "mode": b.mode, "seq_len": b.seq_len,
                   "tokens_per_s": b.tokens_per_s, "ms": b.ms, "tflops": b.tflops, "peak_mem_bytes": b.peak_mem,
                   "backend": b.backend, "device": b.device, "dtype": b.dtype, "status": b.status,
                   "reason": b.reason, "run_id": b.run_id, **{f"row.{k}": v for k, v in b.meta.items()}}
                  for b in data.bench]
    t["ceilings"] = [{"device": c.device, "matmul_tflops": c.matmul_tflops, "copy_gbps": c.copy_gbps,
                      "run_id": c.run_id} for c in data.ceilings]
    fits = A.scaling_fits(data)
    t["scaling_fits"] = [{"label": f.label, "y": f.y, "x": f.x, "points": len(f.points), "sizes": f.sizes,
                          "coef": f.fit.coef if f.fit else None, "exponent": f.fit.exponent if f.fit else None,
                          "exponent_se": f.fit.exponent_se if f.fit else None,
                          "exponent_low": f.fit.exponent_ci[0] if f.fit and f.fit.exponent_ci else None,
                          "exponent_high": f.fit.exponent_ci[1] if f.fit and f.fit.exponent_ci else None,
                          "r2": f.fit.r2 if f.fit else None,
                          "source": "least squares in log-log space; 95% interval from Student's t, n - 2 df"}
                         for f in fits]
    t["scaling_points"] = [{"label": f.label, "y": f.y, "x": f.x, "x_value": x, "y_value": y, "run_id": rid}
                           for f in fits for x, y, rid in f.points]
    t["scaling_crossings"] = [{"x": c.x, "at": c.at, "lower_below": c.below, "lower_above": c.above}
                              for c in A.scaling_crossings(fits)]
    t["recall"] = [{"experiment": name, "label": p.label, "non_embedding_params": p.x, "accuracy": p.accuracy,
                    "low": p.low, "high": p.high, "rows": p.n, "chance": p.chance, "run_id": p.run_id}
                   for name, pts in A.companion_recall(data).items() for p in pts]
    t["runs"] = [{"label": r.label, "run_id": r.run_id, "status": r.status, "reason": r.reason, "params": r.params,
                  "non_embedding_params": r.non_embedding_params,
                  "train_len": r.train_len, "steps": r.steps, "tokens": r.tokens, "flops": r.flops,
                  "tokens_per_s": r.tokens_per_s, "mfu": r.mfu, "peak_flops": r.peak_flops, "peak_mem": r.peak_mem,
                  "final_loss": r.final_loss, "wall_s": r.wall_s, "seed": r.seed, "device": r.device,
                  "host": r.host, "commit": r.commit, "backends": r.backends, "versions": r.versions,
                  "max_length": r.max_length, **{f"state_bytes_{L}": b for L, b in r.state_bytes.items()},
                  "config": r.config} for r in data.runs]
    for f in figs:
        if f.side is not None:
            t[f.side.id.replace("-", "_")] = f.side.csv_rows()
    t["pending_cells"] = [{"label": p.label, "run_id": p.run_id, "evaluation": p.kind, "cell": cell}
                          for p in data.pending for cell in p.missing]
    for kind, rows in data.other_evals.items():  # plugin evaluators: their rows as stored, with the run's label
        t[other_eval_table(kind)] = [{"label": labels.get(r.get("run_id")), **r} for r in rows]
    return {k: _tidy(v) for k, v in t.items()}


def other_eval_table(kind: str) -> str:
    """The data file of an evaluator the report has no figure for: eval_KIND, in file-safe letters."""
    return "eval_" + re.sub(r"[^a-z0-9_-]", "_", kind.lower())[:48]


def write_data(tables: dict[str, list[dict]], out: Path) -> tuple[list[str], bool]:
    """Each non-empty table as out/NAME.csv (and .parquet where pyarrow is installed); a table
    file left by an earlier report into the same directory and not written now is removed, so
    data/ holds only what this report shows."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        import pyarrow  # noqa: F401
        parquet = True
    except ImportError:
        parquet = False
    files = []
    for name, rows in tables.items():
        if not rows:  # a table with nothing in it is no data file (the report says why it is absent)
            continue
        _write_csv(out / f"{name}.csv", rows)
        files.append(f"{name}.csv")
        if parquet:
            _write_parquet(out / f"{name}.parquet", rows)
            files.append(f"{name}.parquet")
    for stale in [*out.glob("*.csv"), *out.glob("*.parquet")]:
        if stale.name not in files and stale.is_file():
            stale.unlink()
    return files, parquet


# -- the whole report ------------------------------------------------------------------------------
def _env():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=False, lstrip_blocks=False)
    return env


def render_html(data: ReportData) -> tuple[str, dict]:
    """The page as one HTML string, and the pieces it was made of (for data files and tests)."""
    from markupsafe import Markup

    import zoo

    pal = Palette(data.labels())
    es = A.entries(data)
    lb = A.leaderboard(data, es)
    figs = F.all_figures(data, pal, es)
    head = F.headline(data, pal, es)
    cards = mixer_cards(data, pal, es)
    meth = methods.methods(data)
    runs_cols, runs_rows = runs_table(data)
    sections = ["summary", "leaderboard", "figures", "mixers", "methods", "runs"]
    if data.bench_only:  # the speed and memory figures and how they were measured
        sections = ["summary", "figures", "methods", "runs"]
        figs = [f for f in figs if f.id.startswith("fig-speed")]
        meth = [m for m in meth if m.id == "methods-bench"]
        head = None
        runs_cols, runs_rows = bench_runs_table(data)
    # a figure with nothing to draw is one line under the Figures heading, not a page of its own
    absent = [f for f in figs if f.svg is None]
    figs = [f for f in figs if f.svg is not None]
    names = {"summary": "Summary", "leaderboard": "Leaderboard", "figures": "Figures", "mixers": "Mixers",
             "methods": "Methods", "runs": "Runs and data"}
    number = {sid: i for i, sid in enumerate(sections, 1)}
    meth = [methods.Method(m.id, f"{number['methods']}.{i} {m.title}", m.paragraphs) for i, m in enumerate(meth, 1)]
    children = {"figures": [{"id": f.id, "title": f"{number['figures']}.{i} {f.title}"} for i, f in enumerate(figs, 1)],
                "mixers": [{"id": c["id"], "title": c["label"]} for c in cards],
                "methods": [{"id": m.id, "title": m.title} for m in meth]}
    toc = [{"id": sid, "title": f"{number[sid]} {names[sid]}", "children": children.get(sid, [])} for sid in sections]
    knowns = known.known_results(data, es)
    pieces = {"entries": es, "leaderboard": lb, "figures": figs, "headline": head, "cards": cards, "methods": meth,
              "palette": pal, "toc": toc, "known": knowns}
    return pieces, {
        "title": data.title, "version": zoo.__version__,
        "generated": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "source": data.source, "store_root": data.store_root, "toc": toc, "headline": head,
        "heads": {s["id"]: s["title"] for s in toc},
        "findings": A.findings(data, es),
        "known": known.known_table(knowns) if known.measured(knowns) and not data.bench_only else None,
        "facts": summary_facts(data, es), "leaderboard": lb, "figures": figs,
        "absent_figures": absent,
        "cards": cards, "card_ids": {c["label"]: c["id"] for c in cards}, "methods": meth,
        "runs_columns": runs_cols, "runs_rows": runs_rows,
        "swatch": lambda label: Markup(pal[label].swatch_svg()) if label in pal.names() else "",
        "css": Markup((TEMPLATES / "report.css").read_text(encoding="utf-8")),
    }


LOCAL_SCHEMES = ("file", "data")


def no_network_fetcher():
    """A WeasyPrint URL fetcher that refuses the network: a report is self-contained."""
    try:
        from weasyprint.urls import URLFetcher  # newer WeasyPrint: a fetcher object
    except ImportError:
        from weasyprint import default_url_fetcher

        def fetch(url: str, *args: Any, **kw: Any):
            if url.split(":", 1)[0].lower() not in LOCAL_SCHEMES:
                raise ValueError(f"report tried to fetch {url}; reports never touch the network")
            return default_url_fetcher(url, *args, **kw)

        return fetch
    return URLFetcher(allowed_protocols=set(LOCAL_SCHEMES))


def write_pdf(html: str, path: Path, base: Path) -> int:
    """Paginate the HTML with WeasyPrint; returns the page count."""
    try:
        import weasyprint
    except (ImportError, OSError) as e:  # OSError: the Pango/HarfBuzz system libraries are missing
        raise ZooError(f"cannot write the PDF: WeasyPrint is not usable ({type(e).__name__}: {e})",
                       "pip install 'mixer-zoo[report]' (Debian: apt-get install libpango-1.0-0 libpangoft2-1.0-0), "
                       "or pass --no-pdf") from None
    errors: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                msg += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            errors.append(msg)

    # WeasyPrint warns about every SVG presentation attribute it reads through its CSS parser
    # (matplotlib writes many); those are harmless. Errors (a figure it could not draw) are not.
    log = logging.getLogger("weasyprint")
    handler, level, propagate = Collect(logging.ERROR), log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.ERROR)
    log.propagate = False
    try:
        doc = weasyprint.HTML(string=html, base_url=str(base), url_fetcher=no_network_fetcher()).render()
        title = re.search(r"<title>(.*?)</title>", html, re.S)
        doc.metadata.title = htmllib.unescape(title.group(1)) if title else None
        doc.write_pdf(str(path))
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate
    if errors:
        raise ZooError(f"WeasyPrint could not render part of {path.name}: {errors[0]}",
                       "the HTML report is complete; please report this with the store")
    return len(doc.pages)


def build(data: ReportData, out: str | Path, pdf: bool = True) -> Built:
    """Write index.html, report.pdf and data/ under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pieces, ctx = render_html(data)
    tables = data_tables(data, pieces["entries"], pieces["leaderboard"], pieces["figures"])
    if known.measured(pieces["known"]):
        tables["known_results"] = _tidy([{"key": k.key, "source": k.source, "claim": k.claim, "rule": k.rule,
                                    "verdict": k.verdict, "evidence": k.evidence, "run_ids": list(k.run_ids)}
                                         for k in pieces["known"]])
    if data.bench_only:  # the tables of what it shows: no empty training ones
        shown = {"bench", "ceilings"} | {f.side.id.replace("-", "_") for f in pieces["figures"] if f.side}
        tables = {k: v for k, v in tables.items() if k in shown and v}
    files, parquet = write_data(tables, out / "data")
    ctx.update(data_files=[f for f in files if f.endswith(".csv")], parquet=parquet)
    html = _env().get_template("report.html.j2").render(**ctx)
    index = out / "index.html"
    index.write_text(html, encoding="utf-8")
    pdf_path, pages = None, None
    if pdf:
        pdf_path = out / "report.pdf"
        pages = write_pdf(html, pdf_path, out)
    return Built(out, index, pdf_path, pages, files, pieces["toc"])
