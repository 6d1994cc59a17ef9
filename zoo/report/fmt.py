"""Number formatting and the table cell type shared by tables, figures' side tables and CSV."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass
class Val:
    """One table cell: the raw value (what the CSV holds and tests compare with the store),
    its text on the page, and why it is missing when it is.

    A missing value always carries a reason and prints as "n/a (reason)": never a blank,
    never a zero.
    """

    value: Any = None
    text: str = ""
    reason: str | None = None
    sub: str | None = None          # a second, smaller line (an interval, a length)
    run_id: str | None = None       # where the number comes from
    source: str | None = None       # which store row (kind and keys), for the tooltip
    note: str | None = None         # footnote mark, when the reason is printed under the table

    @property
    def missing(self) -> bool:
        return self.value is None

    @property
    def display(self) -> str:
        if self.value is None:
            if self.note:
                return f"n/a ({self.note})"
            return f"n/a ({self.reason})" if self.reason else "n/a"
        return self.text

    @property
    def tooltip(self) -> str:
        parts = []
        if self.run_id:
            parts.append(f"run {self.run_id}")
        if self.source:
            parts.append(self.source)
        return "; ".join(parts)


def na(reason: str, **kw: Any) -> Val:
    return Val(None, "", reason, **kw)


@dataclass
class Table:
    id: str
    title: str
    columns: list[str]
    rows: list[list[Val]] = field(default_factory=list)
    note: str | None = None
    label_col: int | None = 0        # the column holding the compared entry (gets its legend swatch)
    groups: list[tuple[str, int]] | None = None  # optional header groups: (title, span)

    footnotes: list[tuple[str, str]] = field(default_factory=list)

    def add_footnotes(self, inline_up_to: int = 22) -> Table:
        """Long n/a reasons move under the table as lettered notes, so cells stay narrow;
        short ones stay inline. Every missing cell still reads "n/a (...)"."""
        marks: dict[str, str] = {}
        rows = []
        for row in self.rows:
            out = []
            for v in row:
                if v.value is None and v.reason and len(v.reason) > inline_up_to:
                    if v.reason not in marks:
                        marks[v.reason] = "note " + "abcdefghijklmnopqrstuvwxyz"[len(marks) % 26] + \
                            (str(len(marks) // 26) if len(marks) >= 26 else "")
                    v = replace(v, note=marks[v.reason])  # a copy: one cell may sit in several tables
                out.append(v)
            rows.append(out)
        self.rows = rows
        self.footnotes = [(m, r) for r, m in marks.items()]
        return self

    def drop_empty_columns(self, keep: int = 1) -> list[str]:
        """Leave out columns (after the first `keep`) that are n/a in every row, for one reason
        per column; returns "column: reason" for the table's note."""
        if not self.rows:
            return []
        gone, keep_idx = [], []
        for j, col in enumerate(self.columns):
            cells = [row[j] for row in self.rows]
            reasons = {v.reason for v in cells}
            if j >= keep and all(v.value is None for v in cells) and len(reasons) == 1:
                gone.append(f"{col}: {reasons.pop() or 'n/a'}")
            else:
                keep_idx.append(j)
        if gone:
            if self.groups:  # shrink the header groups with their columns
                spans, j = [], 0
                for title, span in self.groups:
                    kept = sum(1 for k in range(j, j + span) if k in keep_idx)
                    if kept:
                        spans.append((title, kept))
                    j += span
                self.groups = spans
            self.columns = [self.columns[j] for j in keep_idx]
            self.rows = [[row[j] for j in keep_idx] for row in self.rows]
        return gone

    def csv_rows(self) -> list[dict[str, Any]]:
        """One dict per row: each column's raw value, plus `<column> reason` where missing."""
        out = []
        for row in self.rows:
            d: dict[str, Any] = {}
            for col, v in zip(self.columns, row):
                d[col] = v.value
                if v.value is None:
                    d[f"{col} (n/a reason)"] = v.reason
            out.append(d)
        return out


def count(n: float | None) -> str:
    """1234567 -> 1.23M (three significant digits)."""
    if n is None:
        return "n/a"
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}" if isinstance(n, float) and not float(n).is_integer() else str(int(n))


def nbytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return str(n)


def length(n: int | float | None) -> str:
    """Context lengths in powers of two: 512, 4K, 32K, 1M; others as they are."""
    if n is None:
        return "n/a"
    n = int(n)
    if n >= 2**20 and n % 2**20 == 0:
        return f"{n // 2**20}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}K"
    if n >= 10_000:
        return count(n)
    return str(n)


def acc(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3f}"


def interval(lo: float | None, hi: float | None) -> str:
    return "" if lo is None or hi is None else f"[{lo:.2f}, {hi:.2f}]"


def sig(x: float | None, digits: int = 4) -> str:
    """A float to `digits` significant digits, without scientific notation where it fits."""
    if x is None:
        return "n/a"
    if x == 0 or not math.isfinite(x):
        return str(x)
    mag = math.floor(math.log10(abs(x)))
    if -3 <= mag < 6:
        return f"{x:.{max(0, digits - 1 - mag)}f}"
    return f"{x:.{digits - 1}e}"


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def flops(x: float | None) -> str:
    if x is None:
        return "n/a"
    for unit, div in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if x >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.3g} FLOP"


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(v: Any) -> Any:
    """A value for a CSV cell: text that a spreadsheet would run as a formula (starting with
    = + - @, a tab or a carriage return) gets a leading apostrophe, as OWASP advises;
    numbers, booleans and None are left as they are."""
    if isinstance(v, str) and v.startswith(FORMULA_START):
        return "'" + v
    return v
