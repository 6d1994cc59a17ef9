"""Several runs per GPU: the slot plan (GPU, CPU threads, data workers) and that the packed
workers really train at the same time."""

import subprocess
import sys

import pytest

from zoo.errors import ZooError
from zoo.experiment.launch import Slot, plan_slots, run_local
from zoo.experiment.spec import parse_spec
from zoo.experiment.sweep import run_experiment
from zoo.store import Store


def test_slots_share_out_gpus_and_cores():
    slots = plan_slots(["0", "1"], runs_per_gpu=2, cpus=16)
    assert [s.gpu for s in slots] == ["0", "1", "0", "1"]  # in turn: two runs spread over both GPUs
    assert all(s == Slot(s.gpu, threads=3, data_workers=1) for s in slots)  # 4 cores each, one for data
    assert [(s.gpu, s.threads, s.data_workers) for s in plan_slots(["0"], 8, cpus=16)] == [("0", 1, 1)] * 8
    # fewer cores than runs: one thread each, batches built in a thread of the run
    assert {(s.threads, s.data_workers) for s in plan_slots(["0"], 4, cpus=2)} == {(1, 0)}
    assert [s.gpu for s in plan_slots(["0", "0"], 2, cpus=8)] == ["0"] * 4  # a GPU listed twice counts twice
    cpu = plan_slots([None] * 3, cpus=7)
    assert cpu == [Slot(None, 2)] * 3  # CPU workers: their cores train, data in a thread
    with pytest.raises(ZooError, match="at least 1"):
        plan_slots(["0"], 0)


def test_runs_per_gpu_needs_gpus():
    out = subprocess.run([sys.executable, "-m", "zoo", "compare", "experiments/smoke.toml", "--runs-per-gpu", "2"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "--runs-per-gpu packs runs onto the GPUs of --gpus" in out.stdout + out.stderr


def test_overrides_cannot_change_what_a_run_learns(tmp_path):
    with pytest.raises(ZooError, match=r"\['lr'\] change what a run learns"):
        run_experiment(_spec(["a"]), Store(tmp_path), train_overrides={"lr": 1.0})


def _spec(labels, steps=120):
    return parse_spec({
        "name": "packed",
        "mixers": {label: {"mixer": "nope", "train": {"seed": i}} for i, label in enumerate(labels)},
        "model": {"d_model": 32, "n_layers": 1, "mixer_config": {"nope": {"n_heads": 2}}},
        "task": {"name": "hashhop", "config": {"hash_len": 4, "hops": [1]}},
        "train": {"steps": steps, "batch_size": 2, "seq_len": 64, "eval_batches": 1, "device": "cpu", "seed": 0},
    })


def test_two_runs_packed_on_one_gpu_slot_train_at_once(tmp_path):
    """GPU '0' taken twice: two worker processes (here they see no GPU and train on the CPU) run
    their runs over overlapping times, each with its share of the cores."""
    spec = _spec(["a", "b"], steps=1000)  # long beside the workers' start-up, which differs by a second or so
    store = Store(tmp_path)
    slots = plan_slots(["0"], runs_per_gpu=2, cpus=2)
    outcomes = run_local(spec, store, slots)
    assert [o.status for o in outcomes] == ["done", "done"], [o.reason for o in outcomes]
    spans, pids = [], set()
    for o in outcomes:
        run = store.get_run(o.planned.run_id)
        log = (store.run_dir(o.planned.run_id) / "worker.log").read_text()
        pids.add(log.split("== worker pid ")[1].split()[0])
        assert "CUDA_VISIBLE_DEVICES=0" in log
        spans.append((run["provenance"]["started"], run["provenance"]["finished"]))
    assert len(pids) == 2
    assert max(s for s, _ in spans) < min(f for _, f in spans)  # both were training at one moment
