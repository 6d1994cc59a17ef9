"""Interrupting costs little and loses nothing: Ctrl-C and SIGTERM save a checkpoint and say so,
a store that lost its last commits (WAL cut short or deleted) is repaired from the run
directory, a damaged newest checkpoint falls back to the one before it."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zoo.model import ModelConfig
from zoo.store import Store
from zoo.train import checkpoint as ckpt
from zoo.train import distributed as zdist
from zoo.train.config import RunConfig, TaskRef, TrainConfig
from zoo.train.trainer import train


def _run(**train_over) -> RunConfig:
    return RunConfig(model=ModelConfig(d_model=16, n_layers=1, layers=["nope"], mixer_config={"nope": {"n_heads": 2}}),
                     task=TaskRef(name="hashhop", config={"hops": [1], "hash_len": 4}),
                     train=TrainConfig(**{"steps": 12, "batch_size": 2, "seq_len": 64, "ckpt_every": 4,
                                          "keep_checkpoints": 3, "log_every": 2, "threads": 1, "device": "cpu",
                                          **train_over}))


def _metrics(store: Store, rid: str) -> list[tuple]:
    return [(m["step"], m["name"], m["value"]) for m in store.metrics(rid)]


# -- signals ------------------------------------------------------------------------------------------

def _train_cmd(root: Path) -> list[str]:
    return [sys.executable, "-m", "zoo", "train", "--mixer", "nope", "--d-model", "16", "--n-layers", "1",
            "--steps", "100000", "--batch-size", "2", "--seq-len", "64", "--no-progress", "--root", str(root),
            "--set", "model.mixer_config.nope.n_heads=2", "--set", "task.config.hops=[1]",
            "--set", "task.config.hash_len=4", "--set", "train.log_every=1", "--set", "train.threads=1"]


def _signal_after_steps(root: Path, sig: int, steps: int) -> subprocess.CompletedProcess:
    """Start training, wait until `steps` more rows reach metrics.jsonl, send `sig`."""
    jsonl = lambda: next(iter((root / "runs").glob("*/metrics.jsonl")), None)  # noqa: E731
    before = len(jsonl().read_text().splitlines()) if (root / "runs").is_dir() and jsonl() else 0
    proc = subprocess.Popen(_train_cmd(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        f = jsonl() if (root / "runs").is_dir() else None
        if f is not None and len(f.read_text().splitlines()) >= before + steps:
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_sigint_and_sigterm_save_a_checkpoint_say_so_and_resume(tmp_path):
    root = tmp_path / "root"
    first = _signal_after_steps(root, signal.SIGINT, 3)
    assert first.returncode == 130, first.stderr
    line = first.stderr.strip().splitlines()[-1]
    assert line.startswith("Ctrl-C: saved run ") and "the same command resumes it" in line, first.stderr
    (run,) = Store(root).runs()
    step = int(line.split(" at step ")[1].split()[0])
    assert (root / "runs" / run["id"] / "checkpoints" / f"step_{step:08d}" / ckpt.WEIGHTS).is_file()
    assert run["status"] == "running"  # the store row is untouched; no process holds the run any more
    listing = subprocess.run([sys.executable, "-m", "zoo", "runs", "list", "--status", "interrupted", "--root",
                              str(root)], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "COLUMNS": "250"})
    assert listing.returncode == 0 and "interrupted" in listing.stdout and run["id"] in listing.stdout, \
        listing.stdout

    second = _signal_after_steps(root, signal.SIGTERM, 3)
    assert second.returncode == 143, second.stderr
    assert f"resuming run {run['id']} from step {step} of 100000" in second.stdout, second.stdout
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith(f"SIGTERM: saved run {run['id']} at step "), second.stderr
    assert int(line.split(" at step ")[1].split()[0]) > step


# -- the store lost its last commits ----------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated WAL", "deleted WAL"])
def test_store_repaired_from_run_directory(tmp_path, damage, capsys):
    run = _run()
    store = Store(tmp_path / "live")
    ref = train(run, store)
    ref_metrics = _metrics(store, ref.run_id)  # timings included: what the repair must bring back
    wal = tmp_path / "live" / "zoo.db-wal"
    assert wal.stat().st_size > 0  # the connection is open: the last commits are only in the WAL
    snap = tmp_path / "snap"
    shutil.copytree(tmp_path / "live", snap)  # what a crash (power loss) leaves behind
    store.close()
    if damage == "truncated WAL":
        w = snap / "zoo.db-wal"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 3])
    else:
        for f in snap.glob("zoo.db-*"):
            f.unlink()
    lost = Store(snap)
    assert len(_metrics(lost, ref.run_id)) < len(ref_metrics)  # rows really were lost
    lost.close()

    if damage == "deleted WAL":  # the run row itself is gone: `zoo runs repair` brings it back
        from zoo.cli import main

        assert main(["runs", "repair", "--root", str(snap)]) == 0
        out = capsys.readouterr().out
        assert f"repaired run {ref.run_id}: run row restored from config.json" in out, out
        assert Store(snap).get_run(ref.run_id)["status"] == "pending"

    again = train(run, Store(snap))  # resumes from the final checkpoint: nothing is trained again
    err = capsys.readouterr().err
    assert f"run {ref.run_id} already reached its last step (12, " in err
    if damage == "truncated WAL":
        assert f"repaired run {ref.run_id}:" in err and "restored from metrics.jsonl" in err, err
    repaired = Store(snap)
    assert repaired.get_run(ref.run_id)["status"] == "done"
    assert again.summary["final_loss"] == ref.summary["final_loss"]
    assert _metrics(repaired, ref.run_id) == ref_metrics


# -- damaged checkpoints, temporaries, missing integrations -----------------------------------------

@pytest.mark.parametrize("damaged", [ckpt.WEIGHTS, ckpt.STATE, ckpt.META])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damaged, monkeypatch, capsys):
    run = _run()
    ref = train(run, Store(tmp_path / "ref"))

    save = zdist.Dist.save_checkpoint

    def save_then_stop(self, run_dir, step, *a, **k):
        save(self, run_dir, step, *a, **k)
        if step == 8:
            raise KeyboardInterrupt  # killed right after the step-8 checkpoint

    monkeypatch.setattr(zdist.Dist, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(run, Store(tmp_path / "root"))
    monkeypatch.setattr(zdist.Dist, "save_checkpoint", save)

    run_dir = Store(tmp_path / "root").run_dir(ref.run_id)
    f = run_dir / "checkpoints" / "step_00000008" / damaged
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # cut short, as a full disk leaves it
    (run_dir / "checkpoints" / ".tmp-step_00000012-99999").mkdir()  # what a killed writer leaves
    (run_dir / "checkpoints" / ".latest.tmp99999").write_text("step_00000012")
    capsys.readouterr()

    again = train(run, Store(tmp_path / "root"))
    err = capsys.readouterr().err
    assert "step_00000008 is damaged" in err and "falling back to step_00000004" in err, err
    assert f"resuming run {ref.run_id} from step 4 of 12" in err
    assert "removed 2 temporary file(s)" in err
    assert not list((run_dir / "checkpoints").glob(".*tmp*"))
    assert again.summary["final_loss"] == ref.summary["final_loss"]
    assert Store(tmp_path / "root").get_run(ref.run_id)["status"] == "done"


def test_missing_optional_integration_leaves_a_finished_run_finished(tmp_path, monkeypatch):
    from zoo.errors import ZooError

    run = _run(steps=2, ckpt_every=0)
    store = Store(tmp_path)
    res = train(run, store)
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ZooError, match="needs the wandb package"):
        train(_run(steps=2, ckpt_every=0, wandb=True), store)
    assert store.get_run(res.run_id)["status"] == "done"


def test_checkpoints_by_time_by_default(tmp_path, monkeypatch):
    """With no step interval, a checkpoint is written once ckpt_minutes of training have passed."""
    import zoo.train.trainer as trainer

    clock = iter(range(0, 10**6, 100))  # every reading of the clock: 100 s later
    monkeypatch.setattr(trainer.time, "monotonic", lambda: next(clock))
    run = _run(steps=6, ckpt_every=0, ckpt_minutes=5, keep_checkpoints=10)
    assert TrainConfig(steps=1).ckpt_minutes == 5  # on by default
    res = train(run, Store(tmp_path))
    steps = [int(p.name.split("_")[1]) for p in ckpt.list_checkpoints(res.run_dir)]
    assert steps == [3, 6], steps  # 300 s after the start, then the final one
