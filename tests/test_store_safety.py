"""Untrusted input to the store: a crafted database to import, ids that would leave the root,
LIKE wildcards in typed ids, NaN in JSON, a damaged zoo.db."""

import json
import math
import sqlite3
import time
from pathlib import Path

import pytest

from zoo.cli import main
from zoo.errors import ZooError
from zoo.store import Store, config_id

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "smoke.toml"
FINISHED = config_id({"run": "finished here"})
NEW = config_id({"run": "new from the other machine"})


def _crafted(tmp_path, local: Store):
    """Another store as an attacker would write it, with a run directory beside it."""
    other = tmp_path / "other"
    evil = Store(other)
    evil.close()
    outside = tmp_path / "outside"
    (other / "runs").mkdir(exist_ok=True)
    future = time.time() + 10**8
    c = sqlite3.connect(other / "zoo.db")
    rows = [
        # a path-traversing id, with files under it that would land outside the root
        ("../../outside", "train", "{}", "done", None, "{}", "{}", 1.0, 2.0),
        # not JSON, an unknown status, a non-object config
        (config_id({"x": 1}), "train", "not json", "done", None, "{}", "{}", 1.0, 2.0),
        (config_id({"x": 2}), "train", "{}", "hacked", None, "{}", "{}", 1.0, 2.0),
        (config_id({"x": 3}), "train", "[1, 2]", "done", None, "{}", "{}", 1.0, 2.0),
        # a forged newer version of a run finished here: another loss, and results to match
        (FINISHED, "train", json.dumps({"label": "mine"}), "done", None, "{}",
         json.dumps({"final_loss": 0.0001}), 1.0, future),
        # an honest new run
        (NEW, "train", json.dumps({"label": "theirs"}), "done", None, "{}", json.dumps({"final_loss": 2.5}), 1.0, 5.0),
    ]
    c.executemany("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    c.executemany("INSERT INTO results (run_id, kind, row, hash, created) VALUES (?, ?, ?, ?, ?)", [
        (FINISHED, "hashhop", json.dumps({"length": 100, "accuracy": 1.0, "status": "ok"}), "h1", 1.0),
        (NEW, "hashhop", json.dumps({"length": 100, "accuracy": 0.25, "status": "ok"}), "h2", 1.0),
        ("../../outside", "hashhop", "{}", "h3", 1.0),
        (NEW, "hashhop", "not json", "h4", 1.0),
    ])
    c.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?)", [
        (FINISHED, 1, "loss", 0.0001), (NEW, 1, "loss", 2.5), (NEW, -1, "loss", 1.0), ("zz", 1, "loss", 1.0)])
    c.commit()
    c.close()
    # run directories: the traversing one, and a link out of the tree inside an honest one
    (other / "runs" / "../../outside").mkdir(parents=True, exist_ok=True)
    (other / "runs" / "../../outside" / "pwned.txt").write_text("x")
    new_dir = other / "runs" / NEW
    new_dir.mkdir()
    (new_dir / "config.json").write_text("{}")
    (new_dir / ".lock").symlink_to(tmp_path / "victim.txt")
    (tmp_path / "victim.txt").write_text("keep me")
    return other, outside


def test_crafted_store_import_writes_nothing_outside_and_replaces_nothing_finished(tmp_path, capsys):
    local = Store(tmp_path / "a" / "root")  # runs/../../x from here would be a/x, beside the root
    local.upsert_run(FINISHED, {"label": "mine"}, status="done", summary={"final_loss": 1.5})
    local.add_results(FINISHED, "hashhop", [{"length": 100, "accuracy": 0.4, "status": "ok"}])
    before = {p for p in tmp_path.rglob("*")}
    other, outside = _crafted(tmp_path, local)
    made = {p for p in tmp_path.rglob("*")} - before
    n = local.import_db(other / "zoo.db")

    assert n["conflicts"] == [FINISHED]
    assert n["rejected"]["runs"] == 4 and n["runs"] == 1  # only the honest run
    assert local.get_run(FINISHED)["summary"] == {"final_loss": 1.5}
    assert [r["accuracy"] for r in local.results(FINISHED)] == [0.4]
    assert [m["value"] for m in local.metrics(FINISHED)] == []
    assert [r["accuracy"] for r in local.results(NEW)] == [0.25]
    assert [(m["step"], m["value"]) for m in local.metrics(NEW)] == [(1, 2.5)]
    assert {r["status"] for r in local.runs()} == {"done"}
    # nothing new outside the root but what the test itself made; no link was copied
    after = {p for p in tmp_path.rglob("*")} - before - made
    assert all(local.root in p.parents or p.name.startswith("zoo.db-") for p in after), sorted(after)
    assert not (tmp_path / "a" / "outside").exists() and sorted(outside.iterdir()) == [outside / "pwned.txt"]
    assert not (local.root / "runs" / NEW / ".lock").exists()
    assert (tmp_path / "victim.txt").read_text() == "keep me"

    # the CLI says what it refused and which finished runs it kept
    assert main(["runs", "import", str(other), "--root", str(tmp_path / "a" / "root2")]) == 0
    out = capsys.readouterr().out
    assert "refused as invalid" in out and "4 runs rows" in out
    assert main(["runs", "list", "--root", str(local.root)]) == 0


def test_run_dir_refuses_ids_that_leave_the_root(tmp_path):
    s = Store(tmp_path)
    for bad in ("../x", "..", "a/b", "/etc", ".hidden", "", "a\\b", "x" * 200):
        with pytest.raises(ZooError, match="refusing run id"):
            s.run_dir(bad)
    (tmp_path / "runs").mkdir(exist_ok=True)
    (tmp_path / "runs" / "link").symlink_to(tmp_path.parent)
    with pytest.raises(ZooError, match="points outside"):
        s.run_dir("link")
    assert s.run_dir("3f2a9c01d4e5").is_dir()


def test_typed_ids_are_prefixes_not_patterns(tmp_path):
    s = Store(tmp_path)
    s.upsert_run("abc123def456", {}, status="done")
    for pattern in ("%", "_", "a%", "abc_"):
        assert main(["runs", "show", pattern, "--root", str(tmp_path)]) == 2
    assert s.find_run("abc1")["id"] == "abc123def456"


def test_no_nan_in_stored_or_exported_json(tmp_path, capsys):
    s = Store(tmp_path)
    rid = config_id({"nan": 1})
    s.upsert_run(rid, {"lr": float("nan")}, status="done", summary={"final_loss": float("nan"), "x": [math.inf]})
    s.add_results(rid, "hashhop", [{"accuracy": float("nan")}])
    c = sqlite3.connect(tmp_path / "zoo.db")
    assert c.execute("SELECT json_extract(summary, '$.final_loss') FROM runs").fetchone() == (None,)
    assert c.execute("SELECT json_extract(row, '$.accuracy') FROM results").fetchone() == (None,)
    c.close()
    for what in ("runs", "results"):
        assert main(["runs", "export", "--format", "json", "--what", what, "--root", str(tmp_path)]) == 0
        rows = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
        assert rows


def test_csv_export_neutralises_formulas_and_keeps_numbers(tmp_path, capsys):
    import csv
    import io

    s = Store(tmp_path)
    rid = config_id({"csv": 1})
    s.upsert_run(rid, {"label": "=HYPERLINK(\"http://x\")"}, status="done", summary={"final_loss": -1.25})
    assert main(["runs", "export", "--format", "csv", "--what", "runs", "--root", str(tmp_path)]) == 0
    (row,) = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["label"] == "'=HYPERLINK(\"http://x\")"
    assert row["summary.final_loss"] == "-1.25"


def test_damaged_db_is_one_line_and_repair_recovers(tmp_path, capsys):
    s = Store(tmp_path)
    rid = config_id({"r": 1})
    s.upsert_run(rid, {"label": "x"}, status="done")
    d = s.run_dir(rid)
    (d / "config.json").write_text(json.dumps({"run_id": rid, "label": "x"}))
    (d / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    s.close()
    for f in tmp_path.glob("zoo.db-*"):
        f.unlink()
    (tmp_path / "zoo.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 5000)
    for cmd in (["runs", "list"], ["runs", "show", rid], ["compare", str(SMOKE)]):
        assert main([*cmd, "--root", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is damaged" in err and "zoo runs repair" in err, err
    assert main(["runs", "repair", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "was damaged: moved to" in out and f"repaired run {rid}" in out
    run = Store(tmp_path).get_run(rid)
    assert run["status"] == "pending" and Store(tmp_path).metrics(rid) == [{"step": 1, "name": "loss", "value": 2.0}]
    assert list(tmp_path.glob("zoo.db.damaged-*"))


def test_root_that_is_a_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["runs", "list", "--root", str(f)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_runs_list_points_at_run_directories_missing_from_the_store(tmp_path, capsys):
    s = Store(tmp_path)
    rid = config_id({"lost": 1})
    (s.run_dir(rid) / "config.json").write_text(json.dumps({"run_id": rid}))
    assert main(["runs", "list", "--root", str(tmp_path)]) == 0
    assert "1 run directory" in capsys.readouterr().out
