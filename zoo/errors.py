"""User-facing errors: one readable line, a hint, a non-zero exit from the CLI."""

from __future__ import annotations


class ZooError(Exception):
    """An error the user can fix. The CLI prints `message (hint)` and exits 2."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class LengthError(ZooError):
    """A mixer was asked to run past the `max_length` it declares."""


class UnknownMixerError(ZooError):
    pass


class RegistryError(ZooError):
    pass


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM stopped the work after saving what it could. `message` says
    what was saved; `exit_code` is the shell's convention: 128 + the signal number. Like
    KeyboardInterrupt it is no `Exception`, so no `except Exception` swallows it; unlike it,
    the command line framework lets it through to `zoo.cli.main`, which prints the message."""

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.message = message
        self.exit_code = 128 + signum


def invalid(e, what: str, hint: str | None = None) -> ZooError:
    """One line for a pydantic ValidationError: `{what} '{key}' = {value}: {reason}`, with the
    value's text cut short so a huge or nested input still reads on one line."""
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    value = repr(err.get("input"))
    value = value if len(value) <= 80 else value[:77] + "..."
    return ZooError(f"{what} '{key}' = {value}: {err['msg']}", hint)
