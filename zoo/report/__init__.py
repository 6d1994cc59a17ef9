"""Reports: figures, HTML and PDF from the results store.

    built = build_report(experiment=record, out="reports/smoke")   # record: zoo.experiment.record
    built.html, built.pdf, built.data_files

The report only reads the store (`zoo.report.load`), computes what it shows from the stored
numbers (`zoo.report.analysis`), draws (`zoo.report.figures`) and renders
(`zoo.report.render`: jinja2 template in zoo/templates/report, WeasyPrint for the PDF).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from zoo.errors import ZooError

if TYPE_CHECKING:
    from zoo.report.render import Built


def check_dependencies() -> None:
    missing = []
    for mod in ("matplotlib", "jinja2"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ZooError(f"reports need {' and '.join(missing)}", "pip install 'mixer-zoo[report]'")


def build_report(experiment: dict | None = None, run_ids: list[str] | None = None, where: list[str] | None = None,
                 out: str | Path = "reports/report", root: str | Path | None = None, title: str | None = None,
                 bench_ids: list[str] | None = None, pdf: bool = True, spec_path: str | Path | None = None) -> Built:
    """Select runs (an experiment's record, ids or filters) from the store at `root`, write the
    report under `out`."""
    check_dependencies()
    from zoo.report.load import load, open_store
    from zoo.report.render import build

    store = open_store(root)
    data = load(store, experiment, run_ids=run_ids, where=where, title=title, bench_ids=bench_ids,
                spec_path=spec_path)
    return build(data, out, pdf=pdf)


__all__ = ["build_report", "check_dependencies"]
