"""benchmarks/NOTES.md and benchmarks/results/ agree: every result the notes cite is there, and
every file there is cited (older outputs are read from git, not kept beside the latest)."""

import re
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def cited() -> set[str]:
    """Paths under results/ the notes cite as `results/...` (a folder ends in /)."""
    return set(re.findall(r"`(results/[^`\s]+)`", (BENCH / "NOTES.md").read_text()))


def test_every_cited_result_exists():
    missing = sorted(p for p in cited() if not (BENCH / p).exists())
    assert not missing, f"NOTES.md cites results that are not in benchmarks/results/: {missing}"


def test_every_result_is_cited():
    paths = cited()
    folders = tuple(p for p in paths if p.endswith("/"))
    files = [f.relative_to(BENCH).as_posix() for f in (BENCH / "results").rglob("*") if f.is_file()]
    uncited = sorted(f for f in files if f not in paths and not f.startswith(folders))
    assert not uncited, f"files in benchmarks/results/ that NOTES.md does not cite: {uncited}"
