"""`zoo report`: the HTML and PDF report of runs in the results store."""

from __future__ import annotations

import os
import sys
import webbrowser
from pathlib import Path

import typer

from zoo.errors import ZooError

TEXT_BROWSERS = {"lynx", "links", "elinks", "w3m", "www-browser"}


def browser_available() -> bool:
    """A graphical browser can be opened: a desktop session (or macOS/Windows) and a browser
    that `webbrowser` knows. Text-mode browsers do not count: the report is figures."""
    if sys.platform not in ("darwin", "win32") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        b = webbrowser.get()
    except webbrowser.Error:
        return False
    return getattr(b, "name", "") not in TEXT_BROWSERS


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def register(app: typer.Typer) -> None:
    from zoo.cli import console

    @app.command("report")
    def report(
        spec: Path = typer.Argument(None, help="experiment spec (TOML): report its planned runs, in its order"),
        runs: list[str] = typer.Option(None, "--runs", help="run ids or unique prefixes, comma-separated or repeated"),
        where: list[str] = typer.Option(None, "--where", help="filter runs: KEY=VALUE, KEY>VALUE ... e.g. "
                                        "label=rope, mixer=hsa, params>1e6, config.train.lr=0.001 (repeat to AND)"),
        out: Path = typer.Option(None, "--out", help="output directory (default reports/NAME/)"),
        root: Path = typer.Option(None, "--root", help="results store root (default $ZOO_ROOT or ./zoo-runs)"),
        title: str = typer.Option(None, "--title", help="report title (default from the spec)"),
        bench: list[str] = typer.Option(None, "--bench", help="bench run ids to draw (default: every run covering "
                                        "these mixers, each point from the newest that measured it)"),
        pdf: bool = typer.Option(True, "--pdf/--no-pdf", help="also write report.pdf (WeasyPrint)"),
        open_: bool = typer.Option(False, "--open", help="open index.html in the browser, when there is one"),
    ) -> None:
        """Write index.html (self-contained), report.pdf and data/ (CSV, Parquet) from the results store."""
        from zoo.report import build_report

        if spec is not None and not spec.is_file():
            raise ZooError(f"no experiment file {spec}", "pass a TOML spec, or use --runs / --where over the store")
        name = spec.stem if spec is not None else "report"
        out_dir = out if out is not None else Path("reports") / name
        if out_dir.exists() and not out_dir.is_dir():
            raise ZooError(f"--out {out_dir} is a file", "give a directory for index.html, report.pdf and data/")
        with console.status("building the report"):
            record = None
            if spec is not None:  # the experiment as the store recorded it (older stores: as planned now)
                from zoo.experiment.record import pending_cells, recorded
                from zoo.experiment.spec import load_spec
                from zoo.report.load import open_store

                store = open_store(root)
                record = recorded(load_spec(spec), store)
                record = {**record, "pending": pending_cells(record, store)}
            built = build_report(experiment=record, spec_path=spec, run_ids=_split(runs) or None,
                                 where=where or None, out=out_dir, root=root, title=title,
                                 bench_ids=_split(bench) or None, pdf=pdf)
        n_csv = sum(f.endswith(".csv") for f in built.data_files)
        pages = f", report.pdf ({built.pages} pages)" if built.pdf else ""
        console.print(f"[dim]index.html{pages}, data/ ({n_csv} CSV"
                      f"{', Parquet' if any(f.endswith('.parquet') for f in built.data_files) else ''})[/]")
        if open_:
            if browser_available() and webbrowser.open(built.html.resolve().as_uri()):
                console.print(f"opened {built.html} in the browser")
            else:
                console.print("no graphical browser here; open the file yourself:")
        # the last line is the path, alone, so scripts can take it
        print(built.html)
