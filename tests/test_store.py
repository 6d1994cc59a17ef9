"""The results store: concurrent writers lose nothing, imports never duplicate, exports read back."""

import csv
import io
import json
import multiprocessing as mp

import pytest

from zoo.cli.runs import flat_rows, write_rows
from zoo.errors import ZooError
from zoo.store import Store, config_id

WRITERS, RUNS_EACH, RESULTS_EACH = 4, 10, 5


def _writer(root: str, w: int) -> None:
    store = Store(root)
    for i in range(RUNS_EACH):
        rid = f"w{w}-r{i}"
        store.upsert_run(rid, {"writer": w, "i": i}, status="running")
        store.log_metrics_many(rid, [(s, {"loss": w + i + s / 10, "lr": 1e-3}) for s in range(3)])
        store.add_results(rid, "hashhop", [{"length": 100 * j, "accuracy": j / RESULTS_EACH, "w": w}
                                           for j in range(RESULTS_EACH)])
        store.set_status(rid, "done")


def test_concurrent_writers_lose_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = Store(tmp_path)
    runs = store.runs()
    assert len(runs) == WRITERS * RUNS_EACH
    assert all(r["status"] == "done" for r in runs)
    assert len(store.results(kind="hashhop")) == WRITERS * RUNS_EACH * RESULTS_EACH
    assert sum(len(store.metrics(r["id"])) for r in runs) == WRITERS * RUNS_EACH * 3 * 2


def test_runs_results_and_import_without_duplicates(tmp_path):
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    cfg = {"model": {"d_model": 32}, "train": {"lr": 1e-3}}
    rid = config_id(cfg)
    assert rid == config_id({"train": {"lr": 1e-3}, "model": {"d_model": 32}})  # key order is normalized
    a.upsert_run(rid, cfg, status="running", provenance={"host": "a"})
    a.upsert_run(rid, cfg, status="done", summary={"final_loss": 1.5})
    assert a.get_run(rid)["status"] == "done" and a.get_run(rid)["provenance"] == {"host": "a"}
    assert a.add_results(rid, "ppl", [{"length": 64, "ppl": 3.0}, {"length": 64, "ppl": 3.0}]) == 1
    assert a.add_results(rid, "ppl", [{"length": 128, "ppl": 4.0}], replace=True) == 1
    assert [r["length"] for r in a.results(rid, "ppl")] == [128]
    (a.run_dir(rid) / "config.json").write_text(json.dumps(cfg))
    b.upsert_run("other", {"x": 1}, status="failed", reason="boom")
    n = b.import_db(a.path)
    assert n["runs"] == 1 and n["results"] == 1 and n["run_dirs"] == 1
    again = b.import_db(tmp_path / "a")
    assert again["runs"] == 0 and again["results"] == 0 and again["metrics"] == 0
    assert len(b.results()) == 1 and {r["id"] for r in b.runs()} == {rid, "other"}
    assert (b.root / "runs" / rid / "config.json").is_file()
    assert b.get_run("other")["reason"] == "boom"
    with pytest.raises(ZooError, match="cannot import a database into itself"):
        b.import_db(b.path)
    with pytest.raises(ZooError, match="unknown run status"):
        b.set_status(rid, "finished")
    with pytest.raises(ZooError, match="ambiguous|no run"):
        b.find_run("zzz")


def test_export_csv_and_json(tmp_path):
    s = Store(tmp_path)
    s.upsert_run("r1", {"model": {"d_model": 8, "layers": ["nope"]}, "label": "nope"}, status="done",
                 summary={"final_loss": 2.0})
    s.add_results("r1", "hashhop", [{"length": 10, "accuracy": 0.5, "depth": [[1, 2]]}])
    buf = io.StringIO()
    write_rows(flat_rows(s, "results", None), "csv", buf)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert rows[0]["run_id"] == "r1" and rows[0]["accuracy"] == "0.5" and json.loads(rows[0]["depth"]) == [[1, 2]]
    buf = io.StringIO()
    write_rows(flat_rows(s, "runs", None), "json", buf)
    runs = json.loads(buf.getvalue())
    assert runs[0]["model.d_model"] == 8 and runs[0]["summary.final_loss"] == 2.0


def test_export_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")  # parquet is optional; csv and json are always there
    from zoo.cli.runs import write_parquet

    s = Store(tmp_path)
    s.add_results("r1", "ppl", [{"length": 64, "ppl": 3.5, "status": "ok"}, {"length": 128, "status": "n/a"}])
    write_parquet(flat_rows(s, "results", "ppl"), tmp_path / "x.parquet")
    t = pq.read_table(tmp_path / "x.parquet").to_pylist()
    assert [r["length"] for r in t] == [64, 128] and t[0]["ppl"] == 3.5


def test_runs_cli(tmp_path, capsys):
    from zoo.cli import main

    a, b = tmp_path / "a", tmp_path / "b"
    s = Store(a)
    s.upsert_run("abc123def456", {"model": {"d_model": 8, "layers": ["nope"]}, "label": "nope", "experiment": "e"},
                 status="done", summary={"final_loss": 2.0, "params": 10, "steps": 3})
    s.log_metrics("abc123def456", 3, {"loss": 2.0})
    s.add_results("abc123def456", "hashhop", [{"length": 10, "accuracy": 0.5}])
    assert main(["runs", "list", "--root", str(a)]) == 0
    assert "abc123def456" in capsys.readouterr().out
    assert main(["runs", "show", "abc", "--root", str(a)]) == 0
    out = capsys.readouterr().out
    assert "final_loss" in out and "hashhop: 1 rows" in out
    assert main(["runs", "export", "--format", "json", "--out", str(tmp_path / "r.json"), "--root", str(a)]) == 0
    assert json.loads((tmp_path / "r.json").read_text())[0]["accuracy"] == 0.5
    assert main(["runs", "import", str(a / "zoo.db"), "--root", str(b)]) == 0
    assert main(["runs", "import", str(a / "zoo.db"), "--root", str(b)]) == 0
    assert "0 result rows" in capsys.readouterr().out.splitlines()[-1]
    assert len(Store(b).results()) == 1
    assert main(["runs", "show", "zzz", "--root", str(b)]) == 2
    assert main(["runs", "export", "--format", "xml", "--root", str(b)]) == 2


def test_source_tree_is_gits_tree_id(tmp_path):
    """Provenance's source tree is the id git gives the same folder, byte caches and empty
    folders left out as git leaves them, the executable bit kept."""
    import os
    import shutil
    import subprocess

    from zoo.store import source_tree

    if shutil.which("git") is None:
        pytest.skip("needs git")
    pkg = tmp_path / "pkg"
    (pkg / "sub" / "deeper").mkdir(parents=True)
    (pkg / "empty").mkdir()
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0cache")
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "a-b.py").write_text("y = 2\n")  # sorts before "a.py" and after the folder "a" would
    (pkg / "sub" / "t.html").write_text("<p>{{ v }}</p>\n")
    (pkg / "sub" / "deeper" / "z.py").write_bytes(b"")
    run = pkg / "run.sh"
    run.write_text("#!/bin/sh\n")
    os.chmod(run, 0o755)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(pkg)]
    subprocess.run([*git, "init", "-q"], check=True)
    (pkg / ".gitignore").write_text("__pycache__/\n")
    subprocess.run([*git, "add", "-A"], check=True)
    want = subprocess.run([*git, "write-tree"], check=True, capture_output=True, text=True).stdout.strip()
    shutil.rmtree(pkg / ".git")
    assert source_tree(pkg) == want
    (pkg / "a.py").write_text("x = 2\n")
    assert source_tree(pkg) != want
