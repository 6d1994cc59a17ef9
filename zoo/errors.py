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
