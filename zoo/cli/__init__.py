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
from rich.markup import escape

import zoo
from zoo.errors import Interrupted, ZooError

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
    rich_markup_mode=None,  # help texts print literally: `mixer-zoo[report]` keeps its brackets
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
    """Run the CLI and return its exit status: 0 success, 1 runs or evaluations failed,
    2 usage and user errors, 130 interrupted (SIGINT; SIGTERM gives 143)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        rv = app(args=argv, prog_name="zoo", standalone_mode=False)
    except ZooError as e:
        if debug:
            raise
        print_error(e.message, e.hint)
        return 2
    except Interrupted as e:  # the trainer saved a checkpoint first and says where
        err_console.print(escape(e.message), highlight=False)
        return e.exit_code
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
            err_console.print("interrupted")
            return 130
        if isinstance(e, RecursionError):  # e.g. a TOML or JSON file nested thousands deep
            if debug:
                raise
            print_error("input nested too deeply to read", "flatten the file's tables and arrays")
            return 2
        if debug or not hasattr(e, "format_message"):
            raise
        ctx = getattr(e, "ctx", None)
        print_error(e.format_message(), f"see `{ctx.command_path} --help`" if ctx is not None else "see `zoo --help`")
        return getattr(e, "exit_code", 2)
    # in non-standalone mode click returns the code of `typer.Exit(code)` instead of exiting;
    # typer turns Ctrl-C outside the trainer into a silent 130
    code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
    if code == 130:
        err_console.print("interrupted")
    return code


def print_error(message: str, hint: str | None = None) -> None:
    """`error: message (hint)` on one line; the text is printed as is, never read as markup."""
    one = " ".join(str(message).split())
    err_console.print("[bold red]error:[/] " + escape(one) + (f" [dim]({escape(' '.join(hint.split()))})[/]"
                                                               if hint else ""), highlight=False)


def run() -> None:
    sys.exit(main())
