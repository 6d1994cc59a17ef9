"""`zoo new-plugin KIND NAME`, and what every kind's commands share: the broken-plugins table and
the conformance table with its truthful exit."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from zoo.plugins import PluginRegistry

# the command that checks a scaffolded plugin of each kind against its contract
CHECK_COMMANDS = {"mixer": "zoo check", "task": "zoo check-task", "evaluator": "zoo check-evaluator"}
OUTCOMES = {"pass": "[green]pass[/]", "n/a": "[dim]n/a[/]", "fail": "[red]FAIL[/]"}


def broken_table(*registries: PluginRegistry) -> None:
    """Print the plugins of these registries that failed to load, if any."""
    from zoo.cli import console

    rows = [(reg.kind, b) for reg in registries for b in reg.broken_plugins()]
    if not rows:
        return
    t = Table(title="broken plugins (not loaded)", title_style="bold red")
    for col in ("kind", "entry point", "package", "error"):
        t.add_column(col)
    for kind, b in rows:
        t.add_row(kind, escape(b["name"]), escape(b["package"]), escape(b["error"]))
    console.print(t)


def conformance_table(what: str, results: dict[str, object]) -> None:
    """Print one plugin's conformance checks; a ZooError (exit 2) naming the failed ones. A result
    is None (pass), an error message (fail), or an (outcome, detail) pair (pass, n/a or fail)."""
    from zoo.cli import console
    from zoo.errors import ZooError

    t = Table(title=f"conformance of {what}")
    t.add_column("check")
    t.add_column("result")
    failed = []
    for check, result in results.items():
        outcome, detail = result if isinstance(result, tuple) else ("pass" if result is None else "fail", result)
        t.add_row(check, OUTCOMES[outcome] + (f" {escape(str(detail))}" if detail else ""))
        if outcome == "fail":
            failed.append(check)
    console.print(t)
    if failed:
        raise ZooError(f"{what} fails {len(failed)} conformance checks: {', '.join(failed)}", "see the table above")


def register(app: typer.Typer) -> None:
    from zoo.cli import console
    from zoo.scaffold import kinds

    @app.command("new-plugin")
    def new_plugin(
        kind: str = typer.Argument(..., help=f"what the plugin adds: {', '.join(kinds())}"),
        name: str = typer.Argument(..., help="registry name of the new entry, e.g. my-conv"),
        out: Path = typer.Option(None, "--out", help="where to write the package (default ./zoo-NAME)"),
    ) -> None:
        """Scaffold an installable plugin package whose entry passes its conformance checks as generated."""
        from zoo.plugins import registry
        from zoo.scaffold import scaffold

        path = scaffold(kind, name, out)
        check = CHECK_COMMANDS.get(kind, registry(kind).listing)
        console.print(f"wrote {kind} plugin package [bold]{escape(str(path))}[/]")
        console.print(f"next: pip install -e {escape(str(path))} && {check} {name}")
