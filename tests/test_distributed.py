"""One run over several processes (gloo on CPU): DDP and FSDP2 follow one process's loss curve at
the same global batch, only rank 0 writes, and checkpoints resume on another number of processes."""

import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoo.model import ModelConfig
from zoo.store import Store
from zoo.train.config import RunConfig, TaskRef, TrainConfig
from zoo.train.distributed import Dist, FollowerStore, teardown
from zoo.train.trainer import _loss, train

TOL = 1e-5


def _run() -> RunConfig:
    # grad_accum 2 exercises no_sync; hashhop's answer-only loss gives ranks unequal loss-token counts
    return RunConfig(model=ModelConfig(d_model=32, n_layers=2, layers=["nope"], mixer_config={"nope": {"n_heads": 2}}),
                     task=TaskRef(name="hashhop", config={"hash_len": 4, "hops": [1]}),
                     train=TrainConfig(steps=4, batch_size=4, grad_accum=2, seq_len=64, lr=3e-3, eval_batches=1,
                                       ckpt_every=2, keep_checkpoints=3, log_every=1, device="cpu", threads=1))


def _curve(root: Path) -> tuple[dict, list[float]]:
    store = Store(root)
    (run,) = store.runs()
    assert run["status"] == "done", run
    return run, [m["value"] for m in store.metrics(run["id"], "loss")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run in this one process: the curve every process count must follow."""
    root = tmp_path_factory.mktemp("one")
    train(_run(), Store(root))
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, root: str, parallel: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        train(_run(), Store(root), parallel=parallel)
    finally:
        teardown()


def _spawn(root: Path, parallel: str, world: int = 2) -> None:
    """`world` ranks as torchrun would start them (its environment variables), forked from this
    process so they need no fresh imports."""
    ctx = mp.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, str(root), parallel)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert codes == [0] * world, codes


def _drop_last_checkpoint(root: Path) -> None:
    """As if the run had been killed after its step-2 checkpoint."""
    store = Store(root)
    (run,) = store.runs()
    ckpts = sorted((root / "runs" / run["id"] / "checkpoints").glob("step_*"))
    assert [c.name for c in ckpts] == ["step_00000002", "step_00000004"]
    shutil.rmtree(ckpts[-1])
    store.set_status(run["id"], "running")


def test_ddp_over_two_processes_matches_one_process(reference, tmp_path):
    """`zoo train --nproc 2` (torchrun, gloo) against the same run in one process."""
    r = _run()
    t = r.train
    cmd = [sys.executable, "-m", "zoo", "train", "--mixer", "nope", "--d-model", "32", "--n-layers", "2",
           "--task", "hashhop", "--steps", str(t.steps), "--batch-size", str(t.batch_size), "--grad-accum", "2",
           "--seq-len", str(t.seq_len), "--lr", str(t.lr), "--device", "cpu", "--ckpt-every", "2", "--no-progress",
           "--set", "model.mixer_config.nope.n_heads=2", "--set", "task.config.hash_len=4",
           "--set", "task.config.hops=[1]", "--set", "train.eval_batches=1", "--set", "train.keep_checkpoints=3",
           "--set", "train.log_every=1", "--set", "train.threads=1", "--root", str(tmp_path),
           "--nproc", "2", "--parallel", "ddp"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert out.stdout.count("done: 4 steps") == 1  # rank 0 reports, rank 1 stays quiet
    ref_run, ref = _curve(reference)
    run, got = _curve(tmp_path)
    assert run["id"] == ref_run["id"]  # the process count is not part of what the run is
    assert len(got) == 4 and max(abs(a - b) for a, b in zip(got, ref)) < TOL, (got, ref)
    assert abs(run["summary"]["eval_loss"] - ref_run["summary"]["eval_loss"]) < TOL
    assert run["summary"]["tokens"] == ref_run["summary"]["tokens"]  # global tokens, not one rank's
    # the checkpoint has the one-process layout: it loads into a plain model
    from zoo.train.checkpoint import load_model

    model, cfg = load_model(tmp_path / "runs" / run["id"])
    assert cfg["model"]["layers"] == ["nope"] and model.num_params() > 0


def test_fsdp_checkpoint_resumes_in_one_process(reference, tmp_path):
    """FSDP2 over two ranks follows the curve; its sharded state, gathered into a full
    checkpoint, resumes in one process to the same end."""
    _spawn(tmp_path, "fsdp")
    _, ref = _curve(reference)
    _, got = _curve(tmp_path)
    assert max(abs(a - b) for a, b in zip(got, ref)) < TOL, (got, ref)
    _drop_last_checkpoint(tmp_path)
    train(_run(), Store(tmp_path))
    run, resumed = _curve(tmp_path)
    assert run["provenance"]["resumed_from"] == 2
    assert max(abs(a - b) for a, b in zip(resumed, ref)) < TOL, (resumed, ref)


def test_one_process_checkpoint_resumes_sharded_over_two(reference, tmp_path):
    """A checkpoint written by one process is sharded on load (weights and AdamW state) by FSDP2."""
    root = tmp_path / "store"
    shutil.copytree(reference, root)
    _drop_last_checkpoint(root)
    _spawn(root, "fsdp")
    run, got = _curve(root)
    _, ref = _curve(reference)
    assert run["provenance"]["resumed_from"] == 2
    assert max(abs(a - b) for a, b in zip(got, ref)) < TOL, (got, ref)


def test_rank_shares_add_up_to_the_global_mean():
    """Each rank's loss (its rows' sum over the global count, times world) averages to the
    one-process loss, even with unequal loss-token counts per rank."""
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 11)
    targets = torch.randint(0, 11, (4, 6))
    targets[0, :5] = -100  # rank 0 has far fewer loss tokens
    n = int((targets != -100).sum())
    shares = []
    for rank in range(2):
        d = Dist(rank=rank, world=2)
        shares.append(_loss(d.rows(logits), d.rows(targets), n) * d.loss_scale())
    assert torch.allclose(sum(shares) / 2, _loss(logits, targets), atol=1e-6)
    with pytest.raises(Exception, match="does not split"):
        Dist(rank=0, world=3).check_batch(4)


def test_follower_ranks_never_open_the_store(tmp_path):
    store = Store(tmp_path / "shared")
    store.upsert_run("r1", {"a": 1}, status="running")
    f = FollowerStore(tmp_path / "shared")
    f.upsert_run("r1", {"a": 2}, status="done")
    f.set_status("r1", "failed", "x")
    f.log_metrics_many("r1", [(1, {"loss": 1.0})])
    f.update_summary("r1", steps=3)
    f.add_results("r1", "bench", [{"x": 1}])
    assert store.get_run("r1")["status"] == "running" and store.get_run("r1")["config"] == {"a": 1}
    assert store.metrics("r1") == [] and store.results("r1") == [] and store.get_run("r1")["summary"] == {}
    assert f.run_dir("r1") == store.run_dir("r1")  # checkpoints are shared
    fresh = FollowerStore(tmp_path / "elsewhere")
    fresh.run_dir("r2")
    assert not (tmp_path / "elsewhere" / "zoo.db").exists()  # no SQLite file opened by a follower
