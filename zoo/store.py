"""The results store: one SQLite database (WAL) plus one directory per run.

    <root>/zoo.db               runs, metrics, results
    <root>/runs/<run_id>/       config.json, metrics.jsonl, checkpoints/

`<root>` is `--root`, else `$ZOO_ROOT`, else `./zoo-runs`. A run id is a short hash of
its normalized config (`config_id`), so the same run is never trained twice.

    store = Store()
    store.upsert_run(rid, config, kind="train", status="running", provenance=provenance())
    store.log_metrics(rid, step, {"loss": 2.1, "lr": 3e-4})
    store.add_results(rid, "hashhop", [{"length": 1024, "hops": 2, "accuracy": 0.97}])
    store.results(kind="hashhop")        # rows as added, plus run_id and kind
    store.add_members("smoke", [(rid, "rope", "train")])   # experiment membership, its own labels
    store.enlist(record)                 # an experiment as planned: its spec and runs, in order

A run id leaves the label and the experiment out (the same config is one run, whichever
spec asks for it), so membership lives in its own table: each experiment keeps its runs
under its own labels. The experiment itself is recorded too (`enlist`: its spec, the id of
the spec, its planned runs in order with labels and configs, its evaluations' ids), so a
report finds an experiment's runs from the store rather than by planning its spec again.
Stores made before that table get it with their first recorded experiment.

Several processes may write at once (parallel runs on several GPUs): every write is one
`BEGIN IMMEDIATE` transaction, taken with a busy timeout and retried, so writers queue
instead of failing, and WAL lets readers go on meanwhile. Results are deduplicated by a
content hash, which is what makes `import_db` (merging a database produced on another
machine) idempotent.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import random
import re
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from zoo.errors import ZooError

STATUSES = ("pending", "running", "done", "failed")
# run ids the project makes: config_id of a run, a baseline or an evaluation, bench runs prefixed
RUN_ID = re.compile(r"(bench-)?[0-9a-f]{12}")
# what a run directory may be called at all: one plain path component
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")
LOCK = ".lock"  # a run directory's lock file: held (fcntl) by the process training the run
RUN_FIELDS = ("reason", "provenance", "summary")  # columns settable through upsert_run(**fields)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    provenance TEXT NOT NULL DEFAULT '{}',
    summary TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, step, name)
);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    row TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_run_kind ON results (run_id, kind);
CREATE TABLE IF NOT EXISTS members (
    experiment TEXT NOT NULL,
    run_id TEXT NOT NULL,
    label TEXT,
    kind TEXT NOT NULL,
    added REAL NOT NULL,
    PRIMARY KEY (experiment, run_id)
);
"""
# made by the first `enlist`, so opening an older store to read it leaves its file as it was
EXPERIMENTS = """
CREATE TABLE IF NOT EXISTS experiments (
    name TEXT NOT NULL,
    spec_id TEXT NOT NULL,
    record TEXT NOT NULL,
    added REAL NOT NULL,
    PRIMARY KEY (name, spec_id)
)
"""


def finite(obj: Any) -> Any:
    """`obj` with every NaN and infinity replaced by None: JSON has no such numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def canonical_json(obj: Any) -> str:
    """Sorted, compact JSON (NaN written as null): the normal form that ids and hashes are taken over."""
    return json.dumps(finite(obj), sort_keys=True, separators=(",", ":"), default=str, allow_nan=False)


def read_metrics_file(path: Path) -> list[tuple[int, dict[str, float | None]]]:
    """Rows of a run's `metrics.jsonl` as (step, values), the last line of a step winning;
    a line cut short by a kill (or otherwise unreadable) is skipped."""
    by_step: dict[int, dict[str, float | None]] = {}
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        try:
            row = json.loads(line)
            step = row.pop("step")
        except (json.JSONDecodeError, AttributeError, KeyError):
            continue
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            continue
        vals = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    else None) for k, v in row.items() if isinstance(k, str)}
        by_step.setdefault(step, {}).update(vals)
    return sorted(by_step.items())


def run_held(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock (is training it). The kernel drops a lock
    when its holder dies, so a run marked running whose lock is free was interrupted."""
    path = Path(run_dir) / LOCK
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def config_id(config: dict, length: int = 12) -> str:
    """Run id: a short SHA-256 of the normalized config."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:length]


def _row_hash(run_id: str, kind: str, row: dict) -> str:
    return hashlib.sha256(canonical_json([run_id, kind, row]).encode()).hexdigest()


def default_root() -> Path:
    return Path(os.environ.get("ZOO_ROOT") or "zoo-runs")


def git_commit() -> str | None:
    """Commit of the project checkout this package runs from ('+dirty' when modified)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def source_tree(path: Path | None = None) -> str | None:
    """Git's tree id of the `zoo` package as it is on disk (what `git rev-parse COMMIT:zoo`
    prints for a commit with exactly this source), computed without git: a run stays traceable
    to its source where the checkout's history is missing or stale. Byte caches are left out,
    as git ignores them; None when the package cannot be read."""
    here = path or Path(__file__).resolve().parent
    try:
        return _tree_id(here).hex()
    except OSError:
        return None


def _tree_id(d: Path) -> bytes:
    entries = []
    for p in d.iterdir():
        if p.is_symlink() or p.name == "__pycache__" or p.suffix in (".pyc", ".pyo"):
            continue
        if p.is_dir():
            if any(True for _ in p.iterdir()):  # git records no empty folder
                entries.append((p.name + "/", b"40000 " + p.name.encode() + b"\0" + _tree_id(p)))
        elif p.is_file():
            data = p.read_bytes()
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).digest()
            mode = b"100755" if os.access(p, os.X_OK) else b"100644"
            entries.append((p.name, mode + b" " + p.name.encode() + b"\0" + blob))
    body = b"".join(e for _, e in sorted(entries, key=lambda e: e[0].encode()))
    return hashlib.sha1(b"tree %d\0" % len(body) + body).digest()


def changed_since(commit: str, paths: list[Path]) -> list[str] | None:
    """Which of `paths` differ between `commit` and the checkout this package runs from
    (uncommitted edits included), as paths in the repository; None when git cannot tell
    (no checkout, or a commit it does not have)."""
    here = Path(__file__).resolve().parent
    try:
        r = subprocess.run(["git", "diff", "--name-only", commit.removesuffix("+dirty"), "--", *map(str, paths)],
                           cwd=here, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.split() if r.returncode == 0 else None


def provenance(model=None, device=None, **extra: Any) -> dict:
    """Where and with what a run was produced: commit, source tree, versions, device, host,
    backends, time."""
    from zoo import env

    out = {
        "git_commit": git_commit(),
        "source_tree": source_tree(),
        "versions": env.versions(),
        "device": env.device_name(device),
        "host": env.host(),
        "time": time.time(),
    }
    if model is not None:
        out["backends"] = model.used_backends()
    out.update(extra)
    return out


class NoStore(ZooError):
    """No results store at the root a read-only command was given."""


class Store:
    """SQLite store at `<root>/zoo.db` with run directories under `<root>/runs/`."""

    RETRIES = 50

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()
        if self.root.exists() and not self.root.is_dir():
            raise ZooError(f"results root {self.root} is not a directory", "pass --root DIR (or set ZOO_ROOT)")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ZooError(f"cannot create results root {self.root}: {e.strerror}",
                           "pass --root DIR (or set ZOO_ROOT)") from None
        self.path = self.root / "zoo.db"
        self._local = threading.local()
        self._write(lambda c: [c.execute(stmt) for stmt in SCHEMA.split(";") if stmt.strip()])

    def damaged(self, e: sqlite3.DatabaseError) -> ZooError:
        """The one-line error for a database SQLite cannot read."""
        return ZooError(f"results store {self.path} is damaged ({e})",
                        f"run `zoo runs repair --root {self.root}`: it keeps a copy of the file and rebuilds "
                        "the store from what it can read and from the run directories")

    @classmethod
    def existing(cls, root: str | os.PathLike | None = None) -> Store:
        """The store at `root` for a command that only reads: an error when there is none, rather
        than creating an empty one wherever the command runs."""
        path = Path(root) if root is not None else default_root()
        if path.is_dir() and not (path / "zoo.db").exists():
            raise NoStore(f"no results store at {path} (no zoo.db)",
                          "train something first (`zoo compare SPEC.toml`), or pass --root / set ZOO_ROOT")
        if not path.exists():
            raise NoStore(f"no results store at {path}", "pass --root / set ZOO_ROOT to a results root")
        return cls(path)  # a root that is a file, a damaged zoo.db: the store's own one-line errors

    # -- connections and transactions ---------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        # one connection per thread and process (a forked child must not reuse its parent's)
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            try:
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA busy_timeout = 30000")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.OperationalError as e:
                if "unable to open" in str(e):
                    raise ZooError(f"cannot open results store {self.path}: {e}",
                                   "pass --root DIR (or set ZOO_ROOT) to a writable directory") from None
                raise self.damaged(e) from None
            except sqlite3.DatabaseError as e:
                raise self.damaged(e) from None
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _write(self, fn):
        """Run `fn(conn)` inside one BEGIN IMMEDIATE transaction, retrying while the db is busy."""
        for attempt in range(self.RETRIES):
            conn = self._conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise self.damaged(e) from None
                time.sleep(min(1.0, 0.01 * 2 ** min(attempt, 7)) * (0.5 + random.random()))
                continue
            except sqlite3.DatabaseError as e:
                raise self.damaged(e) from None
            try:
                out = fn(conn)
                conn.execute("COMMIT")
                return out
            except BaseException as e:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.DatabaseError) and _is_damage(e):
                    raise self.damaged(e) from None
                raise
        raise ZooError(f"results store {self.path} stayed locked through {self.RETRIES} retries",
                       "another process holds a long write transaction; try again")

    def _read(self, sql: str, args: Iterable = ()) -> list[tuple]:
        try:
            return self._conn().execute(sql, tuple(args)).fetchall()
        except sqlite3.DatabaseError as e:
            if _is_damage(e):
                raise self.damaged(e) from None
            raise

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- runs ------------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        d = safe_run_dir(self.root, run_id)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def upsert_run(self, run_id: str, config: dict, kind: str = "train", status: str = "pending",
                   **fields: Any) -> None:
        """Create or update a run. `fields`: reason, provenance (dict), summary (dict); any other
        keyword is merged into the summary."""
        _check_status(status)
        extra = {k: v for k, v in fields.items() if k not in RUN_FIELDS}
        summary = {**(fields.get("summary") or {}), **extra} if (extra or "summary" in fields) else None
        now = time.time()

        def tx(c: sqlite3.Connection) -> None:
            old = c.execute("SELECT summary FROM runs WHERE id = ?", (run_id,)).fetchone()
            if old is None:
                c.execute("INSERT INTO runs (id, kind, config, status, reason, provenance, summary, created, updated)"
                          " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          (run_id, kind, canonical_json(config), status, fields.get("reason"),
                           canonical_json(fields.get("provenance") or {}), canonical_json(summary or {}), now, now))
                return
            sets = {"kind": kind, "config": canonical_json(config), "status": status, "updated": now}
            if "reason" in fields or status != "failed":
                sets["reason"] = fields.get("reason")
            if "provenance" in fields:
                sets["provenance"] = canonical_json(fields["provenance"] or {})
            if summary is not None:
                sets["summary"] = canonical_json({**json.loads(old[0]), **summary})
            c.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?", (*sets.values(), run_id))

        self._write(tx)

    def set_status(self, run_id: str, status: str, reason: str | None = None) -> None:
        _check_status(status)

        def tx(c: sqlite3.Connection) -> None:
            cur = c.execute("UPDATE runs SET status = ?, reason = ?, updated = ? WHERE id = ?",
                            (status, reason, time.time(), run_id))
            if cur.rowcount == 0:
                raise ZooError(f"no run '{run_id}' in {self.path}", "see `zoo runs list`")

        self._write(tx)

    def update_summary(self, run_id: str, **values: Any) -> None:
        def tx(c: sqlite3.Connection) -> None:
            old = c.execute("SELECT summary FROM runs WHERE id = ?", (run_id,)).fetchone()
            if old is None:
                raise ZooError(f"no run '{run_id}' in {self.path}", "see `zoo runs list`")
            c.execute("UPDATE runs SET summary = ?, updated = ? WHERE id = ?",
                      (canonical_json({**json.loads(old[0]), **values}), time.time(), run_id))

        self._write(tx)

    def get_run(self, run_id: str) -> dict | None:
        rows = self._read(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", (run_id,))
        return _run_dict(rows[0]) if rows else None

    def find_run(self, prefix: str) -> dict:
        """The run whose id starts with `prefix` (a user-typed id), or a clear error."""
        # a prefix, compared as text: `%` and `_` in what the user typed are characters, not wildcards
        rows = self._read(f"SELECT {_RUN_COLS} FROM runs WHERE substr(id, 1, ?) = ? ORDER BY id",
                          (len(prefix), prefix)) if prefix else []
        if len(rows) == 1:
            return _run_dict(rows[0])
        if not rows:
            raise ZooError(f"no run '{prefix}' in {self.path}", "see `zoo runs list`")
        raise ZooError(f"run id '{prefix}' is ambiguous ({len(rows)} runs)", "type more characters of the id")

    def runs(self, kind: str | None = None, status: str | None = None) -> list[dict]:
        where, args = _where(kind=kind, status=status)
        return [_run_dict(r) for r in self._read(f"SELECT {_RUN_COLS} FROM runs{where} ORDER BY created", args)]

    # -- metrics ---------------------------------------------------------------------------
    def log_metrics(self, run_id: str, step: int, values: dict[str, float | None]) -> None:
        self.log_metrics_many(run_id, [(step, values)])

    def log_metrics_many(self, run_id: str, rows: list[tuple[int, dict[str, float | None]]]) -> None:
        """Write many steps in one transaction; a step logged twice (after a resume) is replaced."""
        flat = [(run_id, int(step), k, None if v is None else float(v)) for step, vals in rows for k, v in vals.items()]
        if flat:
            self._write(lambda c: c.executemany(
                "INSERT OR REPLACE INTO metrics (run_id, step, name, value) VALUES (?, ?, ?, ?)", flat))

    def metrics(self, run_id: str, name: str | None = None) -> list[dict]:
        """Rows {step, name, value}, ordered by step."""
        where, args = _where(run_id=run_id, name=name)
        rows = self._read(f"SELECT step, name, value FROM metrics{where} ORDER BY step, name", args)
        return [{"step": s, "name": n, "value": v} for s, n, v in rows]

    # -- results ---------------------------------------------------------------------------
    def add_results(self, run_id: str, kind: str, rows: list[dict], replace: bool = False) -> int:
        """Add flat JSON-able rows; identical rows are stored once. `replace` first drops the
        run's earlier rows of this kind (re-evaluation). Returns how many rows were new."""
        now = time.time()
        items = []
        for row in rows:
            if not isinstance(row, dict):
                raise TypeError(f"result rows must be dicts, got {type(row).__name__}")
            normal = json.loads(canonical_json(row))
            items.append((run_id, kind, canonical_json(normal), _row_hash(run_id, kind, normal), now))

        def tx(c: sqlite3.Connection) -> int:
            if replace:
                c.execute("DELETE FROM results WHERE run_id = ? AND kind = ?", (run_id, kind))
            before = c.total_changes
            c.executemany("INSERT OR IGNORE INTO results (run_id, kind, row, hash, created) VALUES (?, ?, ?, ?, ?)",
                          items)
            return c.total_changes - before

        return self._write(tx)

    def results(self, run_id: str | None = None, kind: str | None = None) -> list[dict]:
        """Rows as added, in insertion order, with `run_id` and `kind` added unless the row has them."""
        where, args = _where(run_id=run_id, kind=kind)
        out = []
        for rid, k, row in self._read(f"SELECT run_id, kind, row FROM results{where} ORDER BY id", args):
            d = json.loads(row)
            d.setdefault("run_id", rid)
            d.setdefault("kind", k)
            out.append(d)
        return out

    # -- experiments ------------------------------------------------------------------------
    def add_members(self, experiment: str, members: list[tuple[str, str | None, str]]) -> None:
        """Record (run id, label, kind) as part of `experiment`; a label given again is updated."""
        now = time.time()
        rows = [(experiment, rid, label, kind, now) for rid, label, kind in members]
        if rows:
            self._write(lambda c: c.executemany(
                "INSERT INTO members (experiment, run_id, label, kind, added) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (experiment, run_id) DO UPDATE SET label = excluded.label, kind = excluded.kind", rows))

    def members(self, experiment: str | None = None, run_id: str | None = None) -> list[dict]:
        """Rows {experiment, run_id, label, kind}, in the order they were added."""
        where, args = _where(experiment=experiment, run_id=run_id)
        rows = self._read(f"SELECT experiment, run_id, label, kind FROM members{where} ORDER BY added, rowid", args)
        return [{"experiment": e, "run_id": r, "label": lab, "kind": k} for e, r, lab, k in rows]

    def enlist(self, record: dict) -> None:
        """Record an experiment as planned: {"name", "spec_id", "spec", "runs", ...} (see
        `zoo.experiment.record`). The first record of a (name, spec_id) stays: the same spec
        planned again is the same record."""
        for key in ("name", "spec_id", "runs"):
            if key not in record:
                raise ZooError(f"an experiment record needs '{key}'", "build it with zoo.experiment.record")
        row = (record["name"], record["spec_id"], json.dumps(finite(record), sort_keys=True), time.time())

        def write(c: sqlite3.Connection) -> None:
            c.execute(EXPERIMENTS)
            c.execute("INSERT OR IGNORE INTO experiments (name, spec_id, record, added) VALUES (?, ?, ?, ?)", row)

        self._write(write)

    def experiment(self, name: str, spec_id: str | None = None) -> dict | None:
        """The recorded experiment `name` with that spec id (default: the latest recorded), or None."""
        if not self._read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'experiments'", ()):
            return None  # a store from before experiments were recorded
        where, args = _where(name=name, spec_id=spec_id)
        rows = self._read(f"SELECT record FROM experiments{where} ORDER BY added DESC, rowid DESC LIMIT 1", args)
        return json.loads(rows[0][0]) if rows else None

    # -- merging ---------------------------------------------------------------------------
    def import_db(self, other: str | os.PathLike, copy_files: bool = True) -> dict[str, Any]:
        """Merge another zoo.db (e.g. from a GPU machine) into this one without duplicates.

        The other database is untrusted: every row is checked against the schema (run ids in
        the project's format, known statuses, JSON objects, finite numbers) and rows that fail
        are skipped and counted. Runs: a run new here is added; an unfinished one here is
        replaced by a finished or newer version; a finished one here is never replaced: a
        different incoming version is a conflict, reported, and its metrics and results are
        left out. Metrics: by (run, step, name). Results: by content hash (recomputed here).
        With `copy_files`, run directories next to the other database that are missing here
        are copied (regular files and folders only, never links). Returns counts, and the
        ids in conflict under "conflicts"."""
        other = Path(other)
        if other.is_dir():
            other = other / "zoo.db"
        if not other.is_file():
            raise ZooError(f"no database at {other}", "pass the path of another zoo.db or its root directory")
        if other.resolve() == self.path.resolve():
            raise ZooError("cannot import a database into itself")
        try:
            src = sqlite3.connect(f"file:{other}?mode=ro", uri=True)
        except sqlite3.Error as e:
            raise ZooError(f"{other} is not a zoo results database: {e}") from None
        try:
            runs = src.execute(f"SELECT {_RUN_COLS} FROM runs").fetchall()
            metrics = src.execute("SELECT run_id, step, name, value FROM metrics").fetchall()
            results = src.execute("SELECT run_id, kind, row FROM results ORDER BY id").fetchall()
            has_members = src.execute("SELECT 1 FROM sqlite_master WHERE name = 'members'").fetchone()
            members = src.execute("SELECT experiment, run_id, label, kind, added FROM members").fetchall() \
                if has_members else []
            has_experiments = src.execute("SELECT 1 FROM sqlite_master WHERE name = 'experiments'").fetchone()
            experiments = src.execute("SELECT name, spec_id, record, added FROM experiments").fetchall() \
                if has_experiments else []
        except sqlite3.DatabaseError as e:
            raise ZooError(f"{other} is not a zoo results database: {e}") from None
        finally:
            src.close()
        rejected = {"runs": 0, "metrics": 0, "results": 0, "members": 0, "experiments": 0}
        good_runs = []
        for r in runs:
            if _valid_run_row(r):
                good_runs.append(r)
            else:
                rejected["runs"] += 1
        incoming = {r[0] for r in good_runs}

        def tx(c: sqlite3.Connection) -> dict[str, Any]:
            n: dict[str, Any] = {"runs": 0, "metrics": 0, "results": 0}
            conflicts: list[str] = []
            for r in good_runs:
                old = c.execute(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", (r[0],)).fetchone()
                if old is not None and old[3] == "done":
                    if _run_content(old) != _run_content(r):
                        conflicts.append(r[0])
                    continue
                if old is None or r[3] == "done" or old[8] < r[8]:
                    c.execute("INSERT OR REPLACE INTO runs (id, kind, config, status, reason, provenance, summary, "
                              "created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", r)
                    n["runs"] += 1
            known = {row[0] for row in c.execute("SELECT id FROM runs")}
            keep = (incoming | known) - set(conflicts)
            ms = []
            for m in metrics:
                v = _valid_metric(m, keep)
                if v is None:
                    rejected["metrics"] += m[0] not in conflicts
                else:
                    ms.append(v)
            before = c.total_changes
            c.executemany("INSERT OR IGNORE INTO metrics (run_id, step, name, value) VALUES (?, ?, ?, ?)", ms)
            n["metrics"] = c.total_changes - before
            now, rs = time.time(), []
            for rid, kind, row in results:
                parsed = _valid_result(rid, kind, row, keep)
                if parsed is None:
                    rejected["results"] += rid not in conflicts
                else:
                    rs.append((rid, kind, canonical_json(parsed), _row_hash(rid, kind, parsed), now))
            before = c.total_changes
            c.executemany("INSERT OR IGNORE INTO results (run_id, kind, row, hash, created) VALUES (?, ?, ?, ?, ?)",
                          rs)
            n["results"] = c.total_changes - before
            n["conflicts"] = conflicts
            ms_rows = [v for v in (_valid_member(m, keep) for m in members) if v is not None]
            rejected["members"] = len(members) - len(ms_rows)
            c.executemany("INSERT OR IGNORE INTO members (experiment, run_id, label, kind, added) "
                          "VALUES (?, ?, ?, ?, ?)", ms_rows)
            ex_rows = [v for v in map(_valid_experiment, experiments) if v is not None]
            rejected["experiments"] = len(experiments) - len(ex_rows)
            if ex_rows:  # the plans travel with their runs, so a merged store reports as the source did
                c.execute(EXPERIMENTS)
                c.executemany("INSERT OR IGNORE INTO experiments (name, spec_id, record, added) VALUES (?, ?, ?, ?)",
                              ex_rows)
            return n

        counts = self._write(tx)
        counts["rejected"] = rejected
        counts["run_dirs"] = 0
        if copy_files:
            src_runs = other.parent / "runs"
            for rid in sorted(incoming - set(counts["conflicts"])):
                s, d = src_runs / rid, self.root / "runs" / rid
                if s.is_dir() and not s.is_symlink() and not d.exists():
                    safe_run_dir(self.root, rid)
                    shutil.copytree(s, d, ignore=_links_and_specials)
                    counts["run_dirs"] += 1
        return counts

    # -- repair ----------------------------------------------------------------------------
    def repair(self) -> dict[str, Any]:
        """Make the store agree with the run directories, the copy that is fsynced with every
        checkpoint: a run directory whose run row is missing gets one back from its config.json
        (status pending: the next `zoo compare` or `zoo train --config` finishes it from its
        checkpoint without training again), and metric rows missing from the store are
        restored from the run's metrics.jsonl. Returns what was repaired, per run."""
        repaired: dict[str, list[str]] = {}
        runs_dir = self.root / "runs"
        for d in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
            if not d.is_dir() or d.is_symlink() or not SAFE_NAME.fullmatch(d.name):
                continue
            notes = self.repair_run(d.name, d)
            if notes:
                repaired[d.name] = notes
        return repaired

    def repair_run(self, run_id: str, run_dir: Path, upto: int | None = None) -> list[str]:
        """Repair one run's row and metrics from its directory (see `repair`); `upto`: only
        metrics of steps up to this one (a resumed run retrains the steps after its checkpoint)."""
        notes = []
        if self.get_run(run_id) is None:
            try:
                config = json.loads((run_dir / "config.json").read_text())
            except (OSError, json.JSONDecodeError):
                config = None
            if isinstance(config, dict):
                config.pop("run_id", None)
                self.upsert_run(run_id, config, kind="train", status="pending",
                                reason="restored from its run directory by repair")
                notes.append("run row restored from config.json (status pending)")
        if self.get_run(run_id) is None:
            return notes
        stored = {(r["step"], r["name"]) for r in self.metrics(run_id)}
        missing = []
        for step, vals in read_metrics_file(run_dir / "metrics.jsonl"):
            if upto is not None and step > upto:
                continue
            lost = {k: v for k, v in vals.items() if (step, k) not in stored}
            if lost:
                missing.append((step, lost))
        if missing:
            self.log_metrics_many(run_id, missing)
            notes.append(f"{sum(len(v) for _, v in missing)} metric rows of {len(missing)} steps restored "
                         "from metrics.jsonl")
        return notes


def salvage(path: Path) -> dict[str, Any] | None:
    """If the database at `path` cannot be read, move it (and its -wal and -shm files) aside
    to `<path>.damaged-<time>` and copy into a fresh database every row that still reads
    back; None when the database is fine (or absent)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as c:
            if c.execute("PRAGMA quick_check").fetchone()[0] == "ok":
                for table in ("runs", "metrics", "results"):
                    c.execute(f"SELECT count(*) FROM {table}").fetchone()
                return None
    except sqlite3.DatabaseError:
        pass
    moved = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            os.replace(src, Path(str(moved) + suffix))
    fresh = Store(path.parent)
    counts = {"moved_to": str(moved), "runs": 0, "metrics": 0, "results": 0}
    try:
        old = sqlite3.connect(f"file:{moved}?mode=ro", uri=True)
    except sqlite3.Error:
        return counts
    with contextlib.closing(old):
        for table, cols in (("runs", _RUN_COLS), ("metrics", "run_id, step, name, value"),
                            ("results", "run_id, kind, row, hash, created")):
            rows = []
            try:  # row by row: a damaged page ends the scan, what came before it is kept
                for row in old.execute(f"SELECT {cols} FROM {table}"):
                    rows.append(row)
            except sqlite3.DatabaseError:
                pass
            marks = ", ".join("?" * len(cols.split(",")))

            def tx(c: sqlite3.Connection, table=table, cols=cols, rows=rows, marks=marks) -> int:
                before = c.total_changes
                c.executemany(f"INSERT OR IGNORE INTO {table} ({cols}) VALUES ({marks})", rows)
                return c.total_changes - before

            counts[table] = fresh._write(tx)
    fresh.close()
    return counts


_RUN_COLS = "id, kind, config, status, reason, provenance, summary, created, updated"


def _run_dict(r: tuple) -> dict:
    # a column that is not a JSON object (a row written by something else) reads as {}
    return {"id": r[0], "kind": r[1], "config": _json_object(r[2]) or {}, "status": r[3], "reason": r[4],
            "provenance": _json_object(r[5]) or {}, "summary": _json_object(r[6]) or {}, "created": r[7],
            "updated": r[8]}


def _where(**conds: Any) -> tuple[str, list]:
    keep = {k: v for k, v in conds.items() if v is not None}
    if not keep:
        return "", []
    return " WHERE " + " AND ".join(f"{k} = ?" for k in keep), list(keep.values())


def _json_object(text: Any) -> dict | None:
    if not isinstance(text, str):
        return None
    try:
        obj = json.loads(text, parse_constant=lambda c: None)  # NaN and Infinity from older stores: null
    except (json.JSONDecodeError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _valid_run_row(r: tuple) -> bool:
    """A runs row as this schema writes it (id, kind, config, status, reason, provenance, summary,
    created, updated); anything else from another database is refused."""
    rid, kind, config, status, reason, prov, summary, created, updated = r
    return (isinstance(rid, str) and RUN_ID.fullmatch(rid) is not None and isinstance(kind, str)
            and KIND.fullmatch(kind) is not None and status in STATUSES
            and (reason is None or isinstance(reason, str)) and all(_json_object(x) is not None
                                                                     for x in (config, prov, summary))
            and _number(created) and _number(updated) and 0 < created <= updated)


def _run_content(r: tuple) -> tuple:
    """What makes two versions of a run the same result: config, status and summary."""
    return _json_object(r[2]), r[3], _json_object(r[6])


def _valid_metric(m: tuple, runs: set[str]) -> tuple | None:
    rid, step, name, value = m
    if rid not in runs or not isinstance(step, int) or step < 0 or not isinstance(name, str) or not name:
        return None
    if value is not None and not _number(value):
        value = None if isinstance(value, float) else value  # NaN from an older store: null
        if value is not None:
            return None
    return rid, step, name, value


def _valid_result(rid: Any, kind: Any, row: Any, runs: set[str]) -> dict | None:
    if rid not in runs or not isinstance(kind, str) or KIND.fullmatch(kind) is None:
        return None
    obj = _json_object(row)
    return None if obj is None else json.loads(canonical_json(obj))


def _valid_member(m: tuple, runs: set[str]) -> tuple | None:
    experiment, rid, label, kind, added = m
    if rid not in runs or not isinstance(kind, str) or KIND.fullmatch(kind) is None:
        return None
    if not isinstance(experiment, str) or not 0 < len(experiment) <= 256:
        return None
    if label is not None and not (isinstance(label, str) and len(label) <= 256):
        return None
    if not isinstance(added, (int, float)) or not math.isfinite(added):
        return None
    return experiment, rid, label, kind, float(added)


def _valid_experiment(e: tuple) -> tuple | None:
    """An imported experiment record: its name and spec id as the row says, a JSON object whose
    planned runs carry ids of the project's format (the report looks them up by id)."""
    name, spec_id, record, added = e
    if not (isinstance(name, str) and 0 < len(name) <= 256 and isinstance(spec_id, str) and len(spec_id) <= 64):
        return None
    if not isinstance(added, (int, float)) or not math.isfinite(added) or not isinstance(record, str):
        return None
    try:
        rec = json.loads(record)
    except ValueError:
        return None
    if not isinstance(rec, dict) or rec.get("name") != name or rec.get("spec_id") != spec_id:
        return None
    runs = rec.get("runs")
    if not isinstance(runs, list) or not all(isinstance(r, dict) and isinstance(r.get("id"), str)
                                             and RUN_ID.fullmatch(r["id"]) for r in runs):
        return None
    return name, spec_id, json.dumps(finite(rec), sort_keys=True), float(added)


def _links_and_specials(folder: str, names: list[str]) -> list[str]:
    """copytree's ignore: everything but regular files and folders (links could point anywhere)."""
    return [n for n in names if os.path.islink(os.path.join(folder, n))
            or not (os.path.isfile(os.path.join(folder, n)) or os.path.isdir(os.path.join(folder, n)))]


def _is_damage(e: sqlite3.DatabaseError) -> bool:
    """A file SQLite cannot read as a database (as opposed to a constraint or a busy lock)."""
    if type(e) is sqlite3.DatabaseError:
        return True
    msg = str(e).lower()
    return any(w in msg for w in ("malformed", "not a database", "disk i/o", "no such table", "corrupt"))


def safe_run_dir(root: Path, run_id: str) -> Path:
    """`<root>/runs/<run_id>`, refusing any id that is not one plain path component (an id
    from an imported database such as `../../x` must never name a path outside the root)."""
    if not isinstance(run_id, str) or not SAFE_NAME.fullmatch(run_id) or ".." in run_id:
        raise ZooError(f"refusing run id {run_id!r}: not a run id",
                       "run ids are letters, digits, '-', '_' and '.', e.g. 3f2a9c01d4e5")
    runs = (Path(root) / "runs").resolve()
    d = runs / run_id
    if d.resolve().parent != runs:  # e.g. runs/<id> a symbolic link out of the root
        raise ZooError(f"refusing run directory {d}: it points outside {runs}", "remove the link")
    return Path(root) / "runs" / run_id


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ZooError(f"unknown run status '{status}'", f"allowed: {', '.join(STATUSES)}")
