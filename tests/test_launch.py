"""Parallel sweeps: local worker processes (one killed mid-run loses nothing and resumes alone)
and Ray tasks whose runs come back into the driver's store."""

import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from zoo.errors import ZooError
from zoo.experiment.launch import _export_run, _pack, merge_returned, parse_gpus, run_local, split_todo
from zoo.experiment.spec import parse_spec
from zoo.experiment.sweep import run_experiment, select_runs
from zoo.store import Store

TOL = 1e-5


def _spec(steps: dict[str, int], ckpt_every: int = 3, keep: int = 1):
    """Tiny nope models, one per label, each with its own step budget, evaluated on HashHop."""
    return parse_spec({
        "name": "parallel",
        "mixers": {label: {"mixer": "nope", "train": {"steps": n}} for label, n in steps.items()},
        "model": {"d_model": 32, "n_layers": 1, "mixer_config": {"nope": {"n_heads": 2}}},
        "task": {"name": "hashhop", "config": {"hash_len": 4, "hops": [1]}},
        "train": {"batch_size": 2, "seq_len": 64, "lr": 3e-3, "eval_batches": 1, "ckpt_every": ckpt_every,
                  "keep_checkpoints": keep, "threads": 1, "device": "cpu", "seed": 0},
        "eval": {"hashhop": {"n_chars": [64], "hops": [1], "samples": 1, "queries": 1, "hash_len": 4,
                             "greedy_samples": 0}},
    })


def _by_label(spec):
    return {p.label: p for p in select_runs(spec)}


def _worker_pid(log: Path) -> int | None:
    try:
        m = re.search(r"== worker pid (\d+)", log.read_text())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def test_killed_worker_loses_nothing_and_only_its_run_resumes(tmp_path):
    spec = _spec({"long": 200, "b": 4, "c": 5})
    runs = _by_label(spec)
    store = Store(tmp_path / "store")
    long_dir = store.run_dir(runs["long"].run_id)
    result: dict = {}
    t = threading.Thread(target=lambda: result.setdefault("out", run_local(spec, store, [None, None])))
    t.start()
    killed = False
    deadline = time.time() + 240
    while t.is_alive() and time.time() < deadline:
        pid = _worker_pid(long_dir / "worker.log")
        if pid and list((long_dir / "checkpoints").glob("step_*")):
            os.kill(pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.02)
    t.join(240)
    assert killed, "the long run finished before it could be killed"
    out = {o.planned.label: o for o in result["out"]}
    assert out["long"].status == "failed" and "SIGKILL" in out["long"].reason
    assert out["b"].status == out["c"].status == "done"  # the other workers' runs are whole
    for label in ("b", "c"):
        rid = runs[label].run_id
        assert store.get_run(rid)["status"] == "done"
        assert store.results(rid, "hashhop") and len(store.metrics(rid, "loss")) == runs[label].steps
    assert store.get_run(runs["long"].run_id)["status"] == "running"  # resumable, not failed
    recorded = store.experiment(spec.name)  # the driver recorded the whole plan, in order
    assert [r["id"] for r in recorded["runs"]] == [p.run_id for p in runs.values()]

    again = {o.planned.label: o for o in run_local(spec, store, [None, None])}
    assert again["b"].status == again["c"].status == "skipped"  # no worker was started for them
    assert again["long"].status == "done", again["long"].reason
    assert (store.run_dir(runs["b"].run_id) / "worker.log").read_text().count("== worker pid") == 1
    run = store.get_run(runs["long"].run_id)
    assert run["provenance"]["resumed_from"] >= 3
    assert store.results(runs["long"].run_id, "hashhop")

    ref_store = Store(tmp_path / "ref")  # the same run never interrupted
    (ref,) = run_experiment(spec, ref_store, run_ids=[runs["long"].run_id])
    ref_curve = [m["value"] for m in ref_store.metrics(runs["long"].run_id, "loss")]
    curve = [m["value"] for m in store.metrics(runs["long"].run_id, "loss")]
    assert len(curve) == 200 and max(abs(a - b) for a, b in zip(curve, ref_curve)) < TOL
    assert abs(run["summary"]["final_loss"] - ref.summary["final_loss"]) < TOL


def test_ray_runs_a_sweep_into_the_driver_store(tmp_path):
    ray = pytest.importorskip("ray")
    from zoo.experiment.launch import run_ray

    spec = _spec({"a": 6, "b": 4}, keep=2)
    runs = _by_label(spec)
    store = Store(tmp_path / "driver")
    # run a: trained here, then cut back to its step-3 checkpoint, as if it had been interrupted
    (first,) = run_experiment(spec, store, run_ids=[runs["a"].run_id])
    rid_a = runs["a"].run_id
    ckpts = store.run_dir(rid_a) / "checkpoints"
    shutil.rmtree(ckpts / "step_00000006")
    (ckpts / "latest").write_text("step_00000003")
    store.set_status(rid_a, "running")
    todo, _ = split_todo(spec, store, list(runs.values()))
    assert [p.label for p in todo] == ["a", "b"]

    out = {o.planned.label: o for o in run_ray(spec, store, ray_init={"num_cpus": 2})}
    assert not ray.is_initialized()  # the driver started Ray, so it shut it down
    assert out["a"].status == out["b"].status == "done", (out["a"].reason, out["b"].reason)
    for label, n in (("a", 6), ("b", 4)):
        rid = runs[label].run_id
        run = store.get_run(rid)
        assert run["status"] == "done"
        assert [m["step"] for m in store.metrics(rid, "loss")] == list(range(1, n + 1))
        assert store.results(rid, "hashhop")  # evaluated on the worker, rows merged here
        assert (store.run_dir(rid) / "checkpoints" / f"step_{n:08d}").is_dir()  # artefacts came back
    a = store.get_run(rid_a)
    assert a["provenance"]["resumed_from"] == 3  # the worker resumed from the checkpoint it was sent
    assert abs(a["summary"]["final_loss"] - first.summary["final_loss"]) < TOL
    assert split_todo(spec, store, list(runs.values()))[0] == []  # a rerun submits nothing


def test_export_pack_merge_round_trip(tmp_path):
    """What a Ray worker receives and sends back: one run's rows and latest checkpoint."""
    spec = _spec({"a": 2}, ckpt_every=1)
    store = Store(tmp_path / "src")
    (o,) = run_experiment(spec, store)
    rid = o.planned.run_id
    store.upsert_run("other", {"x": 1}, status="done")
    _export_run(store, rid, tmp_path / "exp")
    exported = Store(tmp_path / "exp")
    assert [r["id"] for r in exported.runs()] == [rid]  # only this run
    assert exported.metrics(rid) == store.metrics(rid) and exported.results(rid) == store.results(rid)
    assert [p.name for p in (tmp_path / "exp" / "runs" / rid / "checkpoints").glob("step_*")] == ["step_00000002"]
    dest = Store(tmp_path / "dest")
    merge_returned(dest, rid, _pack(tmp_path / "exp"))
    assert dest.get_run(rid)["summary"] == store.get_run(rid)["summary"]
    assert dest.results(rid) == store.results(rid)
    from zoo.train.checkpoint import load_model

    model, _ = load_model(dest.run_dir(rid))
    assert model.num_params() == o.planned.params


def test_gpu_lists(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert parse_gpus("0,1, 3") == ["0", "1", "3"]
    assert parse_gpus("0,0,1") == ["0", "0", "1"]  # two workers on GPU 0
    with pytest.raises(ZooError, match="bad --gpus"):
        parse_gpus("a,b")
    with pytest.raises(ZooError, match="GPU 7 not visible"):
        parse_gpus("0,7")
