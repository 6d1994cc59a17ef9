"""`zoo evaluators`, `zoo check-evaluator NAME` (`zoo new-plugin evaluator NAME` scaffolds one)."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from zoo.cli.plugins import conformance_table


def register(app: typer.Typer) -> None:
    from zoo.cli import console

    @app.command("evaluators")
    def evaluators_list() -> None:
        """Every registered evaluator, built-in and plugin: its `[eval.NAME]` table, cells and source."""
        from zoo.eval.base import EVALUATORS

        t = Table(title=escape("evaluators (an experiment runs one with an [eval.NAME] table)"))
        for col in ("name", "what", "cell", "task", "settings", "source"):
            t.add_column(col, no_wrap=col == "name")
        for name, ev in EVALUATORS.all().items():
            t.add_row(escape(name), escape(ev.description or (type(ev).__doc__ or "").strip().split("\n")[0]),
                      escape(", ".join(ev.cell_columns)), escape(ev.task or "any"),
                      escape(", ".join(ev.config_cls.model_fields)), escape(EVALUATORS.source(name)))
        console.print(t)
        broken = EVALUATORS.broken_plugins()
        if broken:
            bt = Table(title="broken plugins (not loaded)", title_style="bold red")
            for col in ("entry point", "package", "error"):
                bt.add_column(col)
            for b in broken:
                bt.add_row(escape(b["name"]), escape(b["package"]), escape(b["error"]))
            console.print(bt)

    @app.command("check-evaluator")
    def check_evaluator(name: str = typer.Argument(..., help="registry name of the evaluator to test")) -> None:
        """Run the evaluator conformance suite on one evaluator (its example config, a tiny model, CPU)."""
        from zoo.eval import conformance
        from zoo.eval.base import get_evaluator

        conformance_table(f"evaluator '{name}'", conformance.run_all(get_evaluator(name)))
