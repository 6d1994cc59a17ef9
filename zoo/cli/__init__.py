"""The `zoo` command line (typer + rich).

Each module in this package adds its commands through `register(app)`, so a new
command group is one new file. User errors (`ZooError`, bad flags) print one line
with a hint and exit non-zero; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import typer
from rich.console import Console

import zoo
from zoo.errors import ZooError

console = Console()
if not console.is_terminal and "COLUMNS" not in os.environ:
    console.width = 160  # logs and pipes: wide enough that result tables are not cut to "…"
err_console = Console(stderr=True, soft_wrap=True)

app = typer.Typer(
    name="zoo",
    help="mixer-zoo: which sequence mixer holds up on long context.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"mixer-zoo {zoo.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    """mixer-zoo: compare sequence mixers inside one LM, trainer and HashHop evaluator."""


for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}").register(app)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        app(args=argv, prog_name="zoo", standalone_mode=False)
    except ZooError as e:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {e.message}" + (f" [dim]({e.hint})[/]" if e.hint else ""),
                          highlight=False)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as e:
        # typer vendors its own click in newer releases: recognise click's exceptions by shape
        kind = type(e).__name__
        if kind == "NoArgsIsHelpError":  # `zoo` alone printed the help
            return 0
        if kind == "Exit":
            return getattr(e, "exit_code", 0)
        if kind == "Abort":
            err_console.print("aborted")
            return 130
        if debug or not hasattr(e, "format_message"):
            raise
        msg = e.format_message()
        ctx = getattr(e, "ctx", None)
        hint = f"see `{ctx.command_path} --help`" if ctx is not None else "see `zoo --help`"
        err_console.print(f"[bold red]error:[/] {msg} [dim]({hint})[/]", highlight=False)
        return getattr(e, "exit_code", 2)
    return 0


def run() -> None:
    sys.exit(main())
