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

A run id leaves the label and the experiment out (the same config is one run, whichever
spec asks for it), so membership lives in its own table: each experiment keeps its runs
under its own labels.

Several processes may write at once (parallel runs on several GPUs): every write is one
`BEGIN IMMEDIATE` transaction, taken with a busy timeout and retried, so writers queue
instead of failing, and WAL lets readers go on meanwhile. Results are deduplicated by a
content hash, which is what makes `import_db` (merging a database produced on another
machine) idempotent.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
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


def canonical_json(obj: Any) -> str:
    """Sorted, compact JSON: the normal form that ids and hashes are taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


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


def provenance(model=None, device=None, **extra: Any) -> dict:
    """Where and with what a run was produced: commit, versions, device, host, backends, time."""
    from zoo import env

    out = {
        "git_commit": git_commit(),
        "versions": env.versions(),
        "device": env.device_name(device),
        "host": env.host(),
        "time": time.time(),
    }
    if model is not None:
        out["backends"] = model.used_backends()
    out.update(extra)
    return out


class Store:
    """SQLite store at `<root>/zoo.db` with run directories under `<root>/runs/`."""

    RETRIES = 50

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "zoo.db"
        self._local = threading.local()
        self._write(lambda c: [c.execute(stmt) for stmt in SCHEMA.split(";") if stmt.strip()])

    @classmethod
    def existing(cls, root: str | os.PathLike | None = None) -> Store:
        """The store at `root` for a command that only reads: an error when there is none, rather
        than creating an empty one wherever the command runs."""
        path = Path(root) if root is not None else default_root()
        if not (path / "zoo.db").is_file():
            raise ZooError(f"no results store at {path} (no zoo.db)",
                           "train something first (`zoo compare SPEC.toml`), or pass --root / set ZOO_ROOT")
        return cls(path)

    # -- connections and transactions ---------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        # one connection per thread and process (a forked child must not reuse its parent's)
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
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
                    raise
                time.sleep(min(1.0, 0.01 * 2 ** min(attempt, 7)) * (0.5 + random.random()))
                continue
            try:
                out = fn(conn)
                conn.execute("COMMIT")
                return out
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        raise ZooError(f"results store {self.path} stayed locked through {self.RETRIES} retries",
                       "another process holds a long write transaction; try again")

    def _read(self, sql: str, args: Iterable = ()) -> list[tuple]:
        return self._conn().execute(sql, tuple(args)).fetchall()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- runs ------------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        d = self.root / "runs" / run_id
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
        rows = self._read(f"SELECT {_RUN_COLS} FROM runs WHERE id LIKE ? ORDER BY id", (prefix + "%",))
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

    # -- merging ---------------------------------------------------------------------------
    def import_db(self, other: str | os.PathLike, copy_files: bool = True) -> dict[str, int]:
        """Merge another zoo.db (e.g. from a GPU machine) into this one without duplicates.

        Runs: the version updated last wins. Metrics: by (run, step, name). Results: by
        content hash. With `copy_files`, run directories next to the other database that
        are missing here are copied too. Returns counts of what was new."""
        other = Path(other)
        if other.is_dir():
            other = other / "zoo.db"
        if not other.is_file():
            raise ZooError(f"no database at {other}", "pass the path of another zoo.db or its root directory")
        if other.resolve() == self.path.resolve():
            raise ZooError("cannot import a database into itself")
        src = sqlite3.connect(f"file:{other}?mode=ro", uri=True)
        try:
            runs = src.execute(f"SELECT {_RUN_COLS} FROM runs").fetchall()
            metrics = src.execute("SELECT run_id, step, name, value FROM metrics").fetchall()
            results = src.execute("SELECT run_id, kind, row, hash, created FROM results ORDER BY id").fetchall()
            has_members = src.execute("SELECT 1 FROM sqlite_master WHERE name = 'members'").fetchone()
            members = src.execute("SELECT experiment, run_id, label, kind, added FROM members").fetchall() \
                if has_members else []
        except sqlite3.DatabaseError as e:
            raise ZooError(f"{other} is not a zoo results database: {e}") from None
        finally:
            src.close()

        def tx(c: sqlite3.Connection) -> dict[str, int]:
            n = {"runs": 0, "metrics": 0, "results": 0}
            for r in runs:
                old = c.execute("SELECT updated FROM runs WHERE id = ?", (r[0],)).fetchone()
                if old is None or old[0] < r[8]:
                    c.execute("INSERT OR REPLACE INTO runs (id, kind, config, status, reason, provenance, summary, "
                              "created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", r)
                    n["runs"] += 1
            before = c.total_changes
            c.executemany("INSERT OR IGNORE INTO metrics (run_id, step, name, value) VALUES (?, ?, ?, ?)", metrics)
            n["metrics"] = c.total_changes - before
            before = c.total_changes
            c.executemany("INSERT OR IGNORE INTO results (run_id, kind, row, hash, created) VALUES (?, ?, ?, ?, ?)",
                          results)
            n["results"] = c.total_changes - before
            c.executemany("INSERT OR IGNORE INTO members (experiment, run_id, label, kind, added) "
                          "VALUES (?, ?, ?, ?, ?)", members)
            return n

        counts = self._write(tx)
        counts["run_dirs"] = 0
        if copy_files:
            src_runs = other.parent / "runs"
            for r in runs:
                s, d = src_runs / r[0], self.root / "runs" / r[0]
                if s.is_dir() and not d.exists():
                    shutil.copytree(s, d)
                    counts["run_dirs"] += 1
        return counts


_RUN_COLS = "id, kind, config, status, reason, provenance, summary, created, updated"


def _run_dict(r: tuple) -> dict:
    return {"id": r[0], "kind": r[1], "config": json.loads(r[2]), "status": r[3], "reason": r[4],
            "provenance": json.loads(r[5]), "summary": json.loads(r[6]), "created": r[7], "updated": r[8]}


def _where(**conds: Any) -> tuple[str, list]:
    keep = {k: v for k, v in conds.items() if v is not None}
    if not keep:
        return "", []
    return " WHERE " + " AND ".join(f"{k} = ?" for k in keep), list(keep.values())


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ZooError(f"unknown run status '{status}'", f"allowed: {', '.join(STATUSES)}")
