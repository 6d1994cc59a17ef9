"""`zoo runs list | show RUN | export --format csv|parquet|json | import OTHER.db | repair`."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from zoo.errors import ZooError

ROOT_HELP = "results root (default $ZOO_ROOT or ./zoo-runs)"
FORMATS = ("csv", "parquet", "json")


def flat_rows(store, what: str, kind: str | None) -> list[dict[str, Any]]:
    """Rows to export: results (as stored), runs (config and summary flattened) or metrics."""
    if what == "results":
        return store.results(kind=kind)
    if what == "runs":
        out = []
        for r in store.runs(kind=kind):
            c = r["config"]
            row = {"run_id": r["id"], "kind": r["kind"], "status": r["status"], "reason": r["reason"],
                   "label": c.get("label"), "experiment": c.get("experiment"), "created": r["created"],
                   "updated": r["updated"]}
            for part in ("model", "task", "train"):
                for k, v in (c.get(part) or {}).items():
                    row[f"{part}.{k}"] = v
            for k, v in r["summary"].items():
                row[f"summary.{k}"] = v
            for k, v in r["provenance"].items():
                row[f"provenance.{k}"] = v
            out.append(row)
        return out
    if what == "metrics":
        return [{"run_id": r["id"], **m} for r in store.runs(kind=kind) for m in store.metrics(r["id"])]
    raise ZooError(f"cannot export '{what}'", "allowed: results, runs, metrics")


def _cell(v: Any) -> Any:
    from zoo.store import finite

    return json.dumps(finite(v), sort_keys=True) if isinstance(v, (dict, list, tuple)) else v


def write_rows(rows: list[dict[str, Any]], fmt: str, out) -> None:
    from zoo.report.fmt import csv_cell
    from zoo.store import finite

    cols = list(dict.fromkeys(k for r in rows for k in r))
    if fmt == "json":  # NaN is not JSON: null
        json.dump(finite(rows), out, indent=1, default=str, allow_nan=False)
        out.write("\n")
    elif fmt == "csv":  # cells a spreadsheet would run as formulas are neutralised
        w = csv.DictWriter(out, fieldnames=cols, extrasaction="ignore")
        w.writerow({k: csv_cell(k) for k in cols})
        for r in rows:
            w.writerow({k: csv_cell(_cell(v)) for k, v in r.items()})
    else:
        raise ZooError(f"unknown format '{fmt}'", f"allowed: {', '.join(FORMATS)}")


def write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ZooError("parquet export needs pyarrow", "pip install pyarrow, or use --format csv|json") from None
    cols = list(dict.fromkeys(k for r in rows for k in r))
    data = {}
    for c in cols:
        vals = [_cell(r.get(c)) for r in rows]
        kinds = {type(v) for v in vals if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float}:
            vals = [None if v is None else str(v) for v in vals]  # mixed column: text
        data[c] = vals
    pq.write_table(pa.table(data), path)


def register(app: typer.Typer) -> None:
    from zoo.cli import console

    runs_app = typer.Typer(help="Runs and results in the store.", no_args_is_help=True)
    app.add_typer(runs_app, name="runs")

    @runs_app.command("list")
    def list_cmd(
        root: Path = typer.Option(None, "--root", help=ROOT_HELP),
        status: str = typer.Option(None, "--status", help="pending, running, interrupted, done or failed"),
        kind: str = typer.Option(None, "--kind"),
        experiment: str = typer.Option(None, "--experiment", help="only runs of this experiment name"),
    ) -> None:
        """Every run: id, label, status, size, final loss and when it changed."""
        import time

        from zoo.store import Store

        try:
            store = Store.existing(root)
        except ZooError as e:  # nothing trained here yet: an empty list, and no directory made
            console.print(f"no runs: {e.message}", markup=False, highlight=False)
            return
        runs = store.runs(kind=kind, status=None if status == "interrupted" else status)
        labels: dict[str, str | None] = {}
        if experiment is not None:  # the experiment's own runs and names, whichever spec trained a config first
            labels = {m["run_id"]: m["label"] for m in store.members(experiment)}
            runs = [r for r in runs if r["id"] in labels
                    or (not labels and r["config"].get("experiment") == experiment)]  # a store from before members
        for r in runs:
            r["status"] = shown_status(store, r)
        if status == "interrupted":
            runs = [r for r in runs if r["status"] == "interrupted"]
        t = Table(title=Text(f"runs in {store.path}" + (f" of experiment {experiment}" if experiment else "")
                             + f" ({len(runs)})"))
        for c in ("run", "experiment", "mixer", "status", "layers", "d_model", "params", "steps", "loss",
                  "eval acc", "updated"):
            t.add_column(c, no_wrap=c == "run", min_width=12 if c == "run" else None)
        for r in runs:
            c, s = r["config"], r["summary"]
            m = c.get("model") or {}
            st = Text(str(r["status"]), style={"done": "green", "failed": "red", "running": "yellow",
                                                "interrupted": "magenta"}.get(r["status"], ""))
            layers = m.get("layers") if isinstance(m.get("layers"), list) else []
            t.add_row(Text(r["id"]), Text(str(experiment or c.get("experiment") or "-")),
                      Text(str(labels.get(r["id"]) or c.get("label") or "-")), st,
                      Text("+".join(map(str, layers))), Text(str(m.get("d_model", "-"))),
                      _num(s.get("params"), ",d"), Text(str(s.get("steps", "-"))), _num(s.get("final_loss"), ".4f"),
                      _num(s.get("eval_acc"), ".3f"), time.strftime("%Y-%m-%d %H:%M", time.localtime(r["updated"])))
        console.print(t)
        known = {r["id"] for r in store.runs()}
        runs_dir = store.root / "runs"
        stray = [d.name for d in (runs_dir.iterdir() if runs_dir.is_dir() else [])
                 if (d / "config.json").is_file() and d.name not in known]
        if stray:  # e.g. a store emptied or rolled back by a crash: the run directories still hold the runs
            console.print(f"{len(stray)} run director{'y' if len(stray) == 1 else 'ies'} under {runs_dir} "
                          f"{'is' if len(stray) == 1 else 'are'} not in the store: `zoo runs repair --root "
                          f"{store.root}` brings {'it' if len(stray) == 1 else 'them'} back",
                          markup=False, highlight=False)

    @runs_app.command("show")
    def show_cmd(
        run: str = typer.Argument(..., help="run id or a unique prefix"),
        root: Path = typer.Option(None, "--root", help=ROOT_HELP),
    ) -> None:
        """Config, provenance, summary, latest metrics and stored results of one run."""
        from rich.pretty import Pretty

        from zoo.store import Store

        store = Store.existing(root)
        r = store.find_run(run)
        r["status"] = shown_status(store, r)
        console.print(f"[bold]{escape(r['id'])}[/] {escape(str(r['config'].get('label') or ''))}  status "
                      f"{r['status']}" + (f"  [red]{escape(r['reason'])}[/]" if r["reason"] else ""))
        console.print(f"[dim]directory:[/] {store.root / 'runs' / r['id']}")
        for name in ("config", "summary", "provenance"):
            console.rule(name)
            console.print(Pretty(r[name], expand_all=False))
        latest: dict[str, tuple[int, float]] = {}
        for m in store.metrics(r["id"]):
            latest[m["name"]] = (m["step"], m["value"])
        if latest:
            t = Table(title="latest metrics")
            for c in ("metric", "step", "value"):
                t.add_column(c)
            for k, (step, v) in sorted(latest.items()):
                t.add_row(Text(k), str(step), "-" if v is None else f"{v:.6g}")
            console.print(t)
        res = store.results(run_id=r["id"])
        counts: dict[str, int] = {}
        for x in res:
            counts[x["kind"]] = counts.get(x["kind"], 0) + 1
        console.print("results: " + (", ".join(f"{k}: {n} rows" for k, n in counts.items()) or "none"),
                      markup=False, highlight=False)

    @runs_app.command("export")
    def export_cmd(
        fmt: str = typer.Option("csv", "--format", help="csv, parquet or json"),
        what: str = typer.Option("results", "--what", help="results, runs or metrics"),
        kind: str = typer.Option(None, "--kind", help="only this result kind (hashhop, ppl, bench, ...)"),
        out: Path = typer.Option(None, "--out", "-o", help="file to write (default: stdout; required for parquet)"),
        root: Path = typer.Option(None, "--root", help=ROOT_HELP),
    ) -> None:
        """Export results, runs or metrics as CSV, Parquet or JSON."""
        from zoo.store import Store

        if fmt not in FORMATS:
            raise ZooError(f"unknown format '{fmt}'", f"allowed: {', '.join(FORMATS)}")
        rows = flat_rows(Store.existing(root), what, kind)
        if fmt == "parquet":
            if out is None:
                raise ZooError("parquet export needs --out FILE")
            write_parquet(rows, out)
        elif out is None:
            write_rows(rows, fmt, sys.stdout)
            return
        else:
            with open(out, "w", newline="") as f:
                write_rows(rows, fmt, f)
        console.print(f"wrote {len(rows)} {what} rows to {out}", highlight=False)

    @runs_app.command("import")
    def import_cmd(
        other: Path = typer.Argument(..., help="another zoo.db (or its root directory), e.g. from a GPU machine"),
        root: Path = typer.Option(None, "--root", help=ROOT_HELP),
        files: bool = typer.Option(True, "--files/--no-files", help="also copy run directories missing here"),
    ) -> None:
        """Merge another store into this one; runs, metrics and results are never duplicated."""
        from zoo.store import Store

        store = Store(root)
        n = store.import_db(other, copy_files=files)
        console.print(f"imported from {other}: {n['runs']} runs new or newer, {n['metrics']} metric rows, "
                      f"{n['results']} result rows, {n['run_dirs']} run directories", highlight=False, markup=False)
        bad = {k: v for k, v in n["rejected"].items() if v}
        if bad:
            console.print("refused as invalid (not in this store's schema): "
                          + ", ".join(f"{v} {k} rows" for k, v in bad.items()), highlight=False, markup=False)
        if n["conflicts"]:
            console.print(f"kept the finished local version of {len(n['conflicts'])} run(s) that differ in {other} "
                          f"(their metrics and results were not imported): {', '.join(n['conflicts'])}",
                          highlight=False, markup=False)

    @runs_app.command("repair")
    def repair_cmd(
        root: Path = typer.Option(None, "--root", help=ROOT_HELP),
    ) -> None:
        """Rebuild the store from the run directories: lost run rows and metric rows come back from
        each run's config.json and metrics.jsonl. A damaged zoo.db is first moved aside (kept as
        zoo.db.damaged-TIME) and what can still be read from it is copied into a fresh one."""
        from zoo.store import Store, default_root, salvage

        path = Path(root if root is not None else default_root()) / "zoo.db"
        saved = salvage(path)
        if saved is not None:
            console.print(f"{path} was damaged: moved to {saved['moved_to']}; read back {saved['runs']} runs, "
                          f"{saved['metrics']} metric rows, {saved['results']} result rows", highlight=False,
                          markup=False)
        store = Store(root)
        repaired = store.repair()
        for rid, notes in repaired.items():
            console.print(f"repaired run {rid}: {'; '.join(notes)}", highlight=False, markup=False)
        console.print(f"{store.path}: {len(repaired)} run(s) repaired" if repaired or saved
                      else f"{store.path}: nothing to repair", highlight=False, markup=False)


def shown_status(store, run: dict) -> str:
    """The status to show: a run marked running that no live process holds was interrupted
    (killed, or stopped with Ctrl-C); `zoo train` or `zoo compare` resumes it."""
    import socket

    from zoo.store import SAFE_NAME, run_held

    if run["status"] != "running" or run["kind"] != "train" or not SAFE_NAME.fullmatch(run["id"]):
        return run["status"]
    host = (run.get("provenance") or {}).get("host")
    if host is not None and host != socket.gethostname():
        return run["status"]  # trained on another machine: its lock is not ours to see
    return "running" if run_held(store.root / "runs" / run["id"]) else "interrupted"


def _num(v: Any, spec: str) -> str:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
    return format(v, spec) if ok and (spec != ",d" or isinstance(v, int)) else "-"
