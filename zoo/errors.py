"""User-facing errors: one readable line, a hint, a non-zero exit from the CLI."""

from __future__ import annotations

import difflib
from typing import Any


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


def fields_at(model: Any, loc: tuple) -> list[str] | None:
    """The field names of the pydantic model that `loc` (a ValidationError location) ends in,
    walking nested models (through Optional, lists and dicts); None where the walk leaves models."""
    from pydantic import BaseModel

    cls: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or cls is None:
            continue
        f = getattr(cls, "model_fields", {}).get(part)
        if f is None:
            return None
        ann = f.annotation
        nxt = None
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                nxt = cand
            for sub in getattr(cand, "__args__", ()):
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    nxt = sub
        cls = nxt
    return list(cls.model_fields) if cls is not None and hasattr(cls, "model_fields") else None


def invalid(e: Any, what: str, hint: str | None = None, *, model: Any = None, prefix: tuple = ()) -> ZooError:
    """One line for a pydantic ValidationError, the same shape wherever settings are checked:
    `{what}: unknown key '{key}'` (with the closest field name and the allowed ones when `model`
    is given), `{what}: missing key '{key}'` or `{what}: key '{key}' = {value} is invalid: {reason}`.
    The value's text is cut short so a huge or nested input still reads on one line. `prefix` is
    where the validated table sits in a larger document (a spec file's `("train",)`)."""
    err = e.errors()[0]
    loc = tuple(prefix) + tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden" and model is not None:
        allowed = fields_at(model, tuple(err["loc"]))
        close = difflib.get_close_matches(str(loc[-1]), allowed or [], n=1)
        return ZooError(f"{what}: unknown key '{key}'", (f"did you mean '{close[0]}'? " if close else "")
                        + (f"allowed: {', '.join(allowed)}" if allowed else "remove it"))
    if err["type"] == "missing":
        return ZooError(f"{what}: missing key '{key}'", hint or err["msg"])
    value = repr(err.get("input"))
    value = value if len(value) <= 80 else value[:77] + "..."
    ctx = err.get("ctx") or {}
    return ZooError(f"{what}: key '{key}' = {value} is invalid: {err['msg']}",
                    hint or (f"allowed: {ctx['expected']}" if "expected" in ctx else err["msg"]))
