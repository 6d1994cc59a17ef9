"""kill -9 in the middle of training, then the same command again: the final loss is identical."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from zoo.store import Store


def _corpus(tmp: Path) -> Path:
    d = tmp / "corpus"
    d.mkdir()
    for i in range(12):
        (d / f"doc{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * (20 + i))
    return d


def _cmd(root: Path, corpus: Path) -> list[str]:
    return [sys.executable, "-m", "zoo", "train", "--mixer", "nope", "--d-model", "32", "--n-layers", "2",
            "--task", "lm", "--steps", "120", "--batch-size", "2", "--seq-len", "32", "--lr", "3e-3",
            "--warmup", "5", "--ckpt-every", "4", "--eval-every", "40", "--no-progress", "--root", str(root),
            "--set", "model.mixer_config.nope.n_heads=2", "--set", f"task.config.paths=['{corpus}']",
            "--set", "task.config.extensions=['.txt']", "--set", "task.config.eval_fraction=0.2",
            "--set", "train.keep_checkpoints=1"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in every process: same float sums


def _final(root: Path) -> tuple[dict, list]:
    store = Store(root)
    (run,) = store.runs()
    assert run["status"] == "done", run
    return run["summary"], [(m["step"], m["value"]) for m in store.metrics(run["id"], "loss")]


def test_kill9_then_resume_gives_identical_final_loss(tmp_path):
    corpus = _corpus(tmp_path)
    ref = subprocess.run(_cmd(tmp_path / "ref", corpus), env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr

    root = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(root, corpus), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        ckpts = sorted((root / "runs").glob("*/checkpoints/step_*"))
        if ckpts and int(ckpts[-1].name.split("_")[1]) >= 12:
            os.kill(proc.pid, signal.SIGKILL)
            killed_at = ckpts[-1].name
            break
        time.sleep(0.005)
    proc.wait(30)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    (run,) = Store(root).runs()
    assert run["status"] == "running"  # killed: nobody marked it done

    resumed = subprocess.run(_cmd(root, corpus), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    s_ref, curve_ref = _final(tmp_path / "ref")
    s_res, curve_res = _final(root)
    assert s_res["final_loss"] == s_ref["final_loss"]  # bit for bit
    assert s_res["eval_loss"] == s_ref["eval_loss"]
    assert curve_res == curve_ref
    assert Store(root).runs()[0]["provenance"]["resumed_from"] > 0


def test_run_killed_after_its_final_checkpoint_finishes_from_the_weights_alone(tmp_path):
    """The store still says "running" (the kill came before it said done) and only the final
    weights made it to this machine: the run is marked done without its optimizer state."""
    corpus = _corpus(tmp_path)
    cmd = [*_cmd(tmp_path, corpus)]
    cmd[cmd.index("--steps") + 1] = "8"
    first = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    store = Store(tmp_path)
    (run,) = store.runs()
    store.set_status(run["id"], "running")
    (final,) = (tmp_path / "runs").glob("*/checkpoints/step_00000008")
    (final / "state.pt").unlink()
    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    summary, losses = _final(tmp_path)
    assert summary["steps"] == 8 and losses[-1][0] == 8


def test_rng_state_restores_from_a_state_loaded_onto_another_device(tmp_path, monkeypatch):
    """The trainer loads a checkpoint's state with map_location its device, which puts the RNG
    byte tensors there; the generators take CPU tensors only. Seen on CUDA, where resuming
    failed with 'RNG state must be a torch.ByteTensor'; here a tensor type that only
    `.cpu()` turns into the real state stands in for the GPU copy."""
    import torch

    from zoo.train import checkpoint as ckpt

    class Elsewhere(torch.Tensor):  # a byte tensor "on another device": unusable until .cpu()
        def cpu(self, *a, **k):
            return torch.Tensor(self).clone()

    torch.manual_seed(3)
    state = ckpt.rng_state()
    want = torch.rand(4)
    state["torch"] = state["torch"].as_subclass(Elsewhere)
    real_set = torch.set_rng_state

    def strict_set(t):
        if type(t) is not torch.Tensor:
            raise TypeError("RNG state must be a torch.ByteTensor")
        real_set(t)

    monkeypatch.setattr(torch, "set_rng_state", strict_set)
    torch.rand(7)
    ckpt.set_rng_state(state)
    assert torch.equal(torch.rand(4), want)


def test_rng_state_restores_from_a_state_loaded_onto_the_gpu(tmp_path):
    import pytest
    import torch

    from zoo.train import checkpoint as ckpt

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(5)
    torch.save({"rng": ckpt.rng_state()}, tmp_path / ckpt.STATE)
    want = torch.rand(4)
    state = ckpt.load_state(tmp_path, map_location="cuda")
    torch.rand(9)
    ckpt.set_rng_state(state["rng"])  # before the fix: TypeError, RNG state must be a torch.ByteTensor
    assert torch.equal(torch.rand(4), want)
