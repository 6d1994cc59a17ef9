"""The store records each experiment as planned, and a report finds its runs there."""

from __future__ import annotations

import json
import sqlite3

import pytest

import zoo.experiment.record as rec
from zoo.experiment.record import enlist, experiment_record, recorded
from zoo.experiment.spec import parse_spec, plan
from zoo.report.load import select
from zoo.store import Store

SPEC = {"name": "rec", "mixers": {"nope": {}, "attn": {"mixer": "sinusoidal"}},
        "model": {"d_model": 16, "n_layers": 1, "mixer_config": {"nope": {"n_heads": 2}}},
        "train": {"steps": 2, "batch_size": 2, "seq_len": 32},
        "eval": {"hashhop": {"n_chars": [14], "hops": [1], "hash_len": 2, "samples": 2, "queries": 2}}}


def test_the_record_holds_the_plan_in_order():
    spec = parse_spec(SPEC)
    record = experiment_record(spec)
    assert [(r["label"], r["id"], r["params"]) for r in record["runs"]] == \
        [(p.label, p.run_id, p.params) for p in plan(spec)]
    assert set(record["eval_ids"]) == {"hashhop"} and record["spec"]["name"] == "rec"


def test_enlisting_is_idempotent_and_read_back_without_planning(tmp_path, monkeypatch):
    spec = parse_spec(SPEC)
    store = Store(tmp_path)
    first = enlist(spec, store)
    enlist(spec, store)
    assert store._read("SELECT COUNT(*) FROM experiments", ())[0][0] == 1

    def no_plan(*a, **k):
        raise AssertionError("the report planned the spec again")

    monkeypatch.setattr(rec, "plan", no_plan)
    got = recorded(spec, store)
    assert got == first
    runs, spec_doc, source = select(store, got)
    assert [r["config"]["label"] for r in runs] == ["nope", "attn"]
    assert all(r["status"] == "pending" for r in runs) and spec_doc["name"] == "rec"
    # a changed spec is another record; the store answers for the spec asked about
    other = parse_spec({**SPEC, "train": {**SPEC["train"], "steps": 3}})
    with pytest.raises(AssertionError, match="planned"):
        recorded(other, store)


def test_a_store_older_than_the_record_is_read_as_it_is_and_planned(tmp_path):
    Store(tmp_path).add_members("rec", [])  # a store as made before experiments were recorded
    db = tmp_path / "zoo.db"
    before = db.read_bytes()
    store = Store(tmp_path)
    assert store.experiment("rec") is None and db.read_bytes() == before  # reading leaves the file be
    spec = parse_spec(SPEC)
    assert recorded(spec, store)["runs"] == experiment_record(spec)["runs"]
    enlist(spec, store)  # the first record brings the table
    tables = {n for (n,) in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "experiments" in tables and store.experiment("rec")["name"] == "rec"


def test_importing_a_store_brings_its_experiment_records_and_refuses_forged_ones(tmp_path):
    spec = parse_spec(SPEC)
    src = Store(tmp_path / "gpu")
    first = enlist(spec, src)
    forged = {**first, "spec_id": "f" * 12, "runs": [{"id": "../../etc", "label": "x", "kind": "train"}]}
    renamed = {**first, "spec_id": "e" * 12, "name": "other"}  # the row's name differs from the record's
    with sqlite3.connect(tmp_path / "gpu" / "zoo.db") as c:
        c.execute("INSERT INTO experiments VALUES (?, ?, ?, ?)", ("rec", "f" * 12, json.dumps(forged), 1.0))
        c.execute("INSERT INTO experiments VALUES (?, ?, ?, ?)", ("rec", "e" * 12, json.dumps(renamed), 1.0))
        c.execute("INSERT INTO experiments VALUES (?, ?, ?, ?)", ("rec", "d" * 12, "{not json", 1.0))
    dst = Store(tmp_path / "here")
    counts = dst.import_db(tmp_path / "gpu")
    assert counts["rejected"]["experiments"] == 3
    assert dst.experiment("rec", first["spec_id"]) == first and recorded(spec, dst) == first
    assert dst.experiment("rec", "f" * 12) is None and dst.experiment("other") is None
