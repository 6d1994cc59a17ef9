"""`zoo tasks`, `zoo check-task NAME`."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from zoo.cli.plugins import conformance_table


def _chance(cls) -> str:
    """Chance accuracy at the task's default settings, or why it cannot be given."""
    try:
        acc = cls().chance("accuracy")
    except Exception as e:  # a plugin task whose defaults cannot be built
        return f"[dim]? ({escape(type(e).__name__)})[/]"
    return "[red]undeclared[/]" if acc is None else f"{acc:.3g}"


def register(app: typer.Typer) -> None:
    from zoo.cli import console
    from zoo.cli.plugins import broken_table

    @app.command("tasks")
    def tasks() -> None:
        """Every registered task, built-in and plugin, with its settings and chance accuracy."""
        from zoo.tasks.base import TASKS

        t = Table(title="tasks (chance accuracy at default settings)")
        for col in ("name", "description", "settings", "chance accuracy", "source"):
            t.add_column(col, no_wrap=col == "name")
        for name, cls in TASKS.all().items():
            doc = (cls.__doc__ or "").strip().splitlines()
            t.add_row(escape(name), escape(doc[0] if doc else ""), escape(", ".join(cls.Config.model_fields)),
                      _chance(cls), escape(TASKS.source(name)))
        console.print(t)
        broken_table(TASKS)

    @app.command("check-task")
    def check_task(name: str = typer.Argument(..., help="registry name of the task to check")) -> None:
        """Run the task conformance checks on one task (its tiny settings, CPU)."""
        from zoo.tasks import conformance
        from zoo.tasks.base import TASKS

        conformance_table(f"task '{name}'", conformance.run_all(TASKS.get(name)))
