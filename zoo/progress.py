"""Progress of long work (training, evaluation, bench), for a terminal and for a log file alike.

On a terminal it is a rich bar; when the console is not a terminal (nohup, Slurm, CI, a
pipe) it is a plain line every `interval` seconds and one at the end, so a log file shows
how far the work is and when it will end:

    with Progress(console, "rope", total=600, unit="step") as p:
        for step in range(600):
            ...
            p.update(step + 1, loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}")

    rope: step 120/600 (20%) loss 2.3145 tok/s 41,201 elapsed 0:31 ETA 2:04
"""

from __future__ import annotations

import os
import time
from typing import Any

from rich.markup import escape

INTERVAL_S = 30.0  # seconds between plain lines; ZOO_PROGRESS_INTERVAL overrides
FIELD_NAMES = {"tok_s": "tok/s"}


def plain_interval() -> float:
    try:
        return max(0.0, float(os.environ.get("ZOO_PROGRESS_INTERVAL", INTERVAL_S)))
    except ValueError:
        return INTERVAL_S


def clock(seconds: float) -> str:
    """1:05, 12:00, 1:02:03."""
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class Progress:
    """One display of `completed` out of `total` with named fields; nothing when not `enabled` or
    without a console. `start` counts work done before (a resumed run): the rate and the ETA
    are taken over this process's share only."""

    def __init__(self, console, label: str, total: int, start: int = 0, unit: str = "", enabled: bool = True,
                 interval: float | None = None, fields: tuple[str, ...] = ()):
        if enabled and console is None:
            from rich.console import Console

            console = Console()
        self.console = console if enabled else None
        self.label, self.total, self.start, self.unit = label, max(int(total), 0), int(start), unit
        self.completed = int(start)
        self.fields: dict[str, Any] = {k: "-" for k in fields}
        self.interval = plain_interval() if interval is None else interval
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        if self.console is not None and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
            cols += [TextColumn(f"{FIELD_NAMES.get(k, k)} {{task.fields[{k}]}}") for k in fields]
            cols += [TimeElapsedColumn(), TimeRemainingColumn()]
            self.bar = RichProgress(*cols, console=self.console, transient=False)
            # the label is user text (a run's label): shown as written, never read as markup
            self.task = self.bar.add_task(escape(label), total=self.total, completed=start, **self.fields)
            self.bar.start()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, completed: int | None = None, advance: int = 0, description: str | None = None,
               **fields: Any) -> None:
        self.completed = (self.completed if completed is None else int(completed)) + advance
        self.fields.update(fields)
        if description is not None:
            self.label = description
        if self.bar is not None:
            kw = {"description": escape(description)} if description is not None else {}
            self.bar.update(self.task, completed=self.completed, **kw, **fields)
        elif self.console is not None and time.perf_counter() - self.last >= self.interval:
            self._line()

    def log(self, text: str) -> None:
        """A line of its own (above the bar on a terminal)."""
        if self.console is not None:
            (self.bar.console if self.bar is not None else self.console).print(text, highlight=False)

    def line(self) -> str:
        now = time.perf_counter()
        pct = f" ({100 * self.completed / self.total:.0f}%)" if self.total else ""
        unit = f"{self.unit} " if self.unit else ""
        parts = [f"{self.label}: {unit}{self.completed}/{self.total}{pct}"]
        parts += [f"{FIELD_NAMES.get(k, k)} {v}" for k, v in self.fields.items()]
        parts.append(f"elapsed {clock(now - self.t0)}")
        done = self.completed - self.start
        if 0 < done and self.completed < self.total:
            parts.append(f"ETA {clock((now - self.t0) / done * (self.total - self.completed))}")
        return " ".join(parts)

    def _line(self) -> None:
        self.last = time.perf_counter()
        self.console.print(self.line(), markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        elif self.console is not None and self.completed > self.start:
            self._line()
        self.console = None
