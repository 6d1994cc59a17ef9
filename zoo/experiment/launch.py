"""Launchers: where the runs of an experiment execute.

    zoo compare SPEC --gpus 0,1,2,3          one worker process per GPU at a time (a GPU listed twice
                                             takes two runs at once)
    zoo compare SPEC --gpus all --runs-per-gpu 4   four runs at once on each GPU (small models leave
                                             most of a GPU idle); the host's cores are shared out
    zoo compare SPEC --workers 4             the same with CPU processes (no GPU visible to them)
    zoo compare SPEC --launcher ray [--address ADDR]   Ray tasks, one GPU each (or one CPU)
    zoo train --nproc N ...                  one run over N processes (torchrun, DDP or FSDP2)

Each run is trained and evaluated by `run_experiment` in a worker process (one per slot,
fed one run at a time), so a run that fails, runs out of memory or is killed takes no other
run with it; a dead worker is replaced. Local workers write the shared store directly (SQLite
transactions queue, see zoo.store); a killed worker leaves its run `running` with its last
checkpoint, and the next `zoo compare` resumes exactly the runs that are unfinished. Ray tasks
may run on other machines: each trains into a store of its own on its node, seeded with the
run's rows and latest checkpoint, and sends the run back (its database rows and run
directory) to the driver, which merges it into the store.

Ray is optional (`pip install 'mixer-zoo[dist]'`) and imported only when asked for.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from zoo.errors import ZooError
from zoo.experiment.spec import ExperimentSpec, PlannedRun, parse_spec
from zoo.experiment.sweep import Outcome, admit, evals_done, run_experiment
from zoo.progress import clock, plain_interval
from zoo.store import SCHEMA, Store

# -- what is left to do ----------------------------------------------------------------------------


def split_todo(spec: ExperimentSpec, store: Store, runs: list[PlannedRun],
               retry_failed: bool = False) -> tuple[list[PlannedRun], dict[str, Outcome]]:
    """(runs a worker must take, outcomes known without one): done runs whose evaluations are
    all stored are skipped; failed runs stay failed unless `retry_failed`."""
    todo, known = [], {}
    for p in runs:
        prior = store.get_run(p.run_id)
        if prior is not None and prior["status"] == "done" and evals_done(spec, store, p.run_id):
            known[p.run_id] = Outcome(p, "skipped", summary=prior["summary"])
        elif prior is not None and prior["status"] == "failed" and not retry_failed:
            known[p.run_id] = Outcome(p, "failed", prior["reason"], prior["summary"])
        else:
            todo.append(p)
    return todo, known


def parse_gpus(text: str) -> list[str]:
    """'0,1,3' -> ['0', '1', '3']; 'all' -> every visible GPU. A GPU listed twice gets two workers."""
    if text.strip() == "all":
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise ZooError("--gpus all: no GPU is visible", "use --workers N to run CPU processes in parallel")
        return [str(i) for i in range(n)]
    slots = [g.strip() for g in text.split(",") if g.strip()]
    if not slots or not all(g.isdigit() for g in slots):
        raise ZooError(f"bad --gpus '{text}'", "give GPU indices, e.g. --gpus 0,1,2,3, or --gpus all")
    import torch

    n = torch.cuda.device_count()
    missing = [g for g in slots if int(g) >= n]
    if missing:
        raise ZooError(f"--gpus {text}: GPU {', '.join(missing)} not visible (this machine has {n})",
                       "use --gpus all, or --workers N for CPU processes")
    return slots


@dataclass(frozen=True)
class Slot:
    """One worker process: the GPU it sees (None: none), its torch CPU threads, and the data
    worker processes each of its runs starts (None: the run's own setting)."""

    gpu: str | None
    threads: int
    data_workers: int | None = None


def plan_slots(gpus: list[str | None], runs_per_gpu: int = 1, cpus: int | None = None) -> list[Slot]:
    """Worker slots for `gpus` (GPU indices, or None for each CPU worker), every GPU taken
    `runs_per_gpu` times, in turn (so a plan shorter than the slots still spreads over GPUs).
    The host's cores are shared out evenly so that runs do not starve each other: a GPU slot
    with two or more cores gives one to a data worker process, the rest to torch; a CPU slot
    builds its batches in a thread and trains on all of its cores."""
    if runs_per_gpu < 1:
        raise ZooError(f"runs per GPU must be at least 1, got {runs_per_gpu}")
    slots = [g for g in gpus if g is None] + [g for _ in range(runs_per_gpu) for g in gpus if g is not None]
    if not slots:
        raise ZooError("no worker slots", "give --gpus or --workers")
    cores = max(1, (cpus or os.cpu_count() or 1) // len(slots))
    out = []
    for g in slots:
        if g is None:
            out.append(Slot(None, cores))
        else:
            data = 1 if cores >= 2 else 0
            out.append(Slot(g, max(1, cores - data), data))
    return out


def _outcome_json(o: Outcome) -> dict:
    return {"status": o.status, "reason": o.reason, "summary": o.summary, "evals": o.evals, "seconds": o.seconds}


def _die_with_parent() -> None:
    """Linux: this worker gets SIGTERM when its launcher dies, even by SIGKILL (no orphan runs;
    the run stays resumable)."""
    if sys.platform != "linux":
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher was already gone
        os.kill(os.getpid(), signal.SIGTERM)


def _death(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exited with code {rc}"


def _log_tail(path: Path, n: int = 1) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


# -- local workers (one process per GPU slot) --------------------------------------------------------

def run_local(spec: ExperimentSpec, store: Store, slots: list[str | None] | list[Slot], console=None,
              retry_failed: bool = False, device: str | None = None, shard: str | None = None,
              only: list[str] | None = None) -> list[Outcome]:
    """Train and evaluate the plan with one worker process per slot.

    A slot (see `plan_slots`) is a CUDA_VISIBLE_DEVICES value (a GPU index) or None for a CPU
    process that sees no GPU, with its share of the host's cores. A worker (`python -m
    zoo.experiment.launch --serve`) takes runs one at a time from this process, so it pays its
    start-up (imports, CUDA, data) once; each run's output goes to `<run_dir>/worker.log`.
    A worker that dies costs only its current run (left resumable) and is replaced. Returns
    outcomes in plan order."""
    runs = admit(spec, store, shard, only)
    todo, outcomes = split_todo(spec, store, runs, retry_failed)
    say = console.print if console is not None else (lambda *a, **k: None)
    say(f"{len(runs)} runs: {len(todo)} to train or evaluate on {len(slots)} worker(s), "
        f"{len(runs) - len(todo)} already settled")
    tmp = Path(tempfile.mkdtemp(prefix="zoo-launch-"))
    spec_file = tmp / "spec.json"
    spec_file.write_text(spec.model_dump_json())
    # the host's cores shared out: workers that each take all of them slow each other down
    if not all(isinstance(s, Slot) for s in slots):
        slots = plan_slots(slots)
    pending = deque(todo)
    workers = [_Worker(i, slot) for i, slot in enumerate(slots)]
    interval, last_line = plain_interval(), time.time()
    try:
        while pending or any(w.job for w in workers):
            if console is not None and time.time() - last_line >= interval:
                last_line = time.time()
                for w in workers:  # the workers log to their own files: their progress, from the store
                    if w.job is not None:
                        say(_run_progress(store, w.job[0], w.where, time.time() - w.job[1]), markup=False,
                            highlight=False)
            for w in workers:
                if w.job is None and pending:
                    p = pending.popleft()
                    for attempt in range(2):  # a worker that died while idle is replaced
                        if w.proc is None or w.proc.poll() is not None:
                            w.start(spec_file, store.root, tmp, device, retry_failed)
                        try:
                            w.give(p)
                            break
                        except (BrokenPipeError, OSError):
                            w.proc.wait()
                            if attempt:
                                raise
                    say(f"[dim]start[/] {escape(w.job[0].label)} [dim]{w.job[0].run_id}[/] on {w.where} "
                        f"[dim](worker pid {w.proc.pid})[/]")
            time.sleep(0.05)
            for w in workers:
                if w.job is None:
                    continue
                p, t0 = w.job
                out_file = tmp / f"{p.run_id}.json"
                if out_file.is_file():
                    o = _collect(p, 0, out_file, store, time.time() - t0)
                elif w.proc.poll() is not None:  # died during the run: its checkpoints stay
                    o = _collect(p, w.proc.returncode, out_file, store, time.time() - t0, w.log)
                    w.proc = None
                else:
                    continue
                w.job = None
                outcomes[p.run_id] = o
                if o.status == "failed":
                    say(f"[red]failed[/] {escape(p.label)} [dim]{p.run_id}[/] on {w.where}: {escape(str(o.reason))}")
                else:
                    loss = o.summary.get("final_loss")
                    say(f"[green]{'done' if o.status == 'done' else o.status}[/] {escape(p.label)} "
                        f"[dim]{p.run_id}[/] on {w.where} in {o.seconds:.1f}s"
                        + (f", loss {loss:.4f}" if loss is not None else ""))
        for w in workers:
            w.finish()
    except BaseException:  # Ctrl-C or an error here: stop the workers; their runs stay resumable
        for w in workers:
            w.stop()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [outcomes[p.run_id] for p in runs]


def _run_progress(store: Store, p: PlannedRun, where: str, elapsed: float) -> str:
    """One progress line of a run a worker trains, from what its trainer stored: step, loss,
    tokens/s and the ETA at the rate since the worker took it."""
    rows = store.metrics(p.run_id)
    last = {r["name"]: (r["step"], r["value"]) for r in rows}  # ordered by step: the newest wins
    step = last.get("loss", (0, None))[0]
    total = (store.get_run(p.run_id) or {}).get("summary", {}).get("total_steps") or p.steps
    parts = [f"{p.label} on {where}: step {step}/{total}"]
    if last.get("loss", (0, None))[1] is not None:
        parts.append(f"loss {last['loss'][1]:.4f}")
    if last.get("tokens_per_s", (0, None))[1] is not None:
        parts.append(f"tok/s {last['tokens_per_s'][1]:,.0f}")
    parts.append(f"elapsed {clock(elapsed)}")
    if 0 < step < total:
        parts.append(f"ETA {clock(elapsed / step * (total - step))}")
    return " ".join(parts)


class _Worker:
    """One worker process on one slot, fed run ids through its stdin."""

    def __init__(self, index: int, slot: Slot):
        self.index, self.slot = index, slot
        self.where = f"GPU {slot.gpu}" if slot.gpu is not None else f"CPU worker {index}"
        self.proc: subprocess.Popen | None = None
        self.job: tuple[PlannedRun, float] | None = None
        self.log: Path | None = None

    def start(self, spec_file: Path, root: Path, tmp: Path, device, retry_failed: bool) -> None:
        cmd = [sys.executable, "-m", "zoo.experiment.launch", "--serve", "--spec", str(spec_file), "--root", str(root),
               "--outcomes", str(tmp)]
        cmd += (["--device", device] if device else []) + (["--retry-failed"] if retry_failed else [])
        if self.slot.data_workers is not None:
            cmd += ["--data-workers", str(self.slot.data_workers)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.setdefault("OMP_NUM_THREADS", str(self.slot.threads))
        env["CUDA_VISIBLE_DEVICES"] = "" if self.slot.gpu is None else self.slot.gpu
        self.log = tmp / f"worker-{self.index}-{time.time_ns()}.log"  # output outside any run
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                         text=True)

    def give(self, p: PlannedRun) -> None:
        self.job = (p, time.time())
        self.proc.stdin.write(p.run_id + "\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()  # end of input: the worker exits
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _collect(p: PlannedRun, rc: int, out_file: Path, store: Store, seconds: float,
             worker_log: Path | None = None) -> Outcome:
    if out_file.is_file():
        d = json.loads(out_file.read_text())
        return Outcome(p, d["status"], d["reason"], d["summary"] or {}, d["evals"] or {}, seconds)
    # the worker died without a word (killed, crashed): the store keeps the run resumable
    tail = _log_tail(store.run_dir(p.run_id) / "worker.log") or (_log_tail(worker_log) if worker_log else "")
    prior = store.get_run(p.run_id)
    state = f"run left {prior['status']}" if prior else "run not started"
    return Outcome(p, "failed", f"worker {_death(rc)} ({state}; `zoo compare` again resumes it)"
                   + (f": {tail[:200]}" if tail and rc > 0 else ""), (prior or {}).get("summary") or {}, {}, seconds)


def worker_main(argv: list[str] | None = None) -> int:
    """A sweep worker: reads run ids (one per line) on stdin, trains and evaluates each in this
    process, writes `<outcomes>/<run_id>.json` after each; exits at the end of input."""
    ap = argparse.ArgumentParser(prog="python -m zoo.experiment.launch", description=worker_main.__doc__)
    ap.add_argument("--serve", action="store_true", help="take run ids from stdin")
    ap.add_argument("--spec", required=True, help="experiment as JSON (ExperimentSpec)")
    ap.add_argument("--root", required=True, help="results root")
    ap.add_argument("--outcomes", required=True, help="directory for the outcome files")
    ap.add_argument("--device", default=None)
    ap.add_argument("--retry-failed", action="store_true")
    ap.add_argument("--data-workers", type=int, default=None, help="data worker processes per run")
    a = ap.parse_args(argv)
    _die_with_parent()
    import gc

    import torch
    from rich.console import Console

    spec = parse_spec(json.loads(Path(a.spec).read_text()), a.spec)
    store = Store(a.root)
    for line in sys.stdin:
        rid = line.strip()
        if not rid:
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        with open(store.run_dir(rid) / "worker.log", "a") as log:  # this run's output goes to its directory
            saved = os.dup(1), os.dup(2)
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                print(f"== worker pid {os.getpid()} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')})"
                      f" at {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
                (o,) = run_experiment(spec, store, console=Console(), progress=False, retry_failed=a.retry_failed,
                                      device=a.device, run_ids=[rid],
                                      train_overrides=None if a.data_workers is None else
                                      {"data_workers": a.data_workers})
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
        gc.collect()  # the next run starts with the memory of an empty process
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        out = Path(a.outcomes) / f"{rid}.json"
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(_outcome_json(o), default=str))
        tmp.replace(out)
    return 0


# -- Ray ----------------------------------------------------------------------------------------------

def _export_run(store: Store, run_id: str, dest: Path) -> None:
    """A fresh store at `dest` holding one run's rows and its latest checkpoint (what a remote
    worker needs to resume or evaluate it)."""
    dest.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(dest / "zoo.db")
    try:
        conn.executescript(SCHEMA)
        src = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
        try:
            for table, key in (("runs", "id"), ("metrics", "run_id"), ("results", "run_id")):
                cur = src.execute(f"SELECT * FROM {table} WHERE {key} = ?", (run_id,))
                rows = cur.fetchall()
                if rows:
                    cols = ", ".join(d[0] for d in cur.description)
                    conn.executemany(f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(rows[0]))})", rows)
        finally:
            src.close()
        conn.commit()
    finally:
        conn.close()
    src_dir = store.root / "runs" / run_id
    if src_dir.is_dir():
        from zoo.train.checkpoint import CKPT_DIR, latest_checkpoint

        dst_dir = dest / "runs" / run_id
        dst_dir.mkdir(parents=True, exist_ok=True)
        for f in src_dir.iterdir():
            if f.is_file() and not f.name.startswith("."):
                shutil.copy2(f, dst_dir / f.name)
        last = latest_checkpoint(src_dir)
        if last is not None:
            shutil.copytree(last, dst_dir / CKPT_DIR / last.name)
            (dst_dir / CKPT_DIR / "latest").write_text(last.name)


def _pack(root: Path) -> bytes:
    """A store directory as tar.gz bytes; the database is copied through SQLite's backup API, so
    rows still in its write-ahead log come along."""
    staged = root.parent / (root.name + ".pack")
    staged.mkdir()
    try:
        src = sqlite3.connect(root / "zoo.db")
        dst = sqlite3.connect(staged / "zoo.db")
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(staged / "zoo.db", arcname="zoo.db")
            if (root / "runs").is_dir():
                tar.add(root / "runs", arcname="runs")
        return buf.getvalue()
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _unpack(data: bytes, dest: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        if sys.version_info >= (3, 12) or hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover  (old Pythons: refuse paths that leave dest)
            for m in tar.getmembers():
                if m.name.startswith("/") or ".." in Path(m.name).parts:
                    raise ZooError(f"unsafe path in a returned run: {m.name}")
            tar.extractall(dest)


def ray_task(spec_doc: dict, run_id: str, bundle: bytes, device: str | None, retry_failed: bool) -> dict:
    """Runs on a Ray worker: unpack the run into a private store, train and evaluate it there,
    send the store back."""
    tmp = Path(tempfile.mkdtemp(prefix="zoo-ray-"))
    try:
        root = tmp / "store"
        root.mkdir()
        _unpack(bundle, root)
        spec = parse_spec(spec_doc, "<ray>")
        store = Store(root)
        t0 = time.time()
        (o,) = run_experiment(spec, store, progress=False, retry_failed=retry_failed, device=device, run_ids=[run_id])
        o.seconds = time.time() - t0
        store.close()
        import socket

        return {"outcome": _outcome_json(o), "store": _pack(root), "host": socket.gethostname()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def merge_returned(store: Store, run_id: str, data: bytes) -> None:
    """Merge a run sent back by a worker: its rows (by content, see Store.import_db) and its
    run directory, which replaces the local one (it holds the newer checkpoints)."""
    tmp = Path(tempfile.mkdtemp(prefix=".merge-", dir=store.root))
    try:
        _unpack(data, tmp)
        store.import_db(tmp / "zoo.db", copy_files=False)
        got = tmp / "runs" / run_id
        if got.is_dir():
            final = store.root / "runs" / run_id
            final.parent.mkdir(parents=True, exist_ok=True)
            old = store.root / "runs" / f".old-{run_id}-{os.getpid()}"
            if final.exists():
                os.rename(final, old)
            os.rename(got, final)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_ray(spec: ExperimentSpec, store: Store, address: str | None = None, console=None,
            retry_failed: bool = False, device: str | None = None, shard: str | None = None,
            only: list[str] | None = None, ray_init: dict | None = None) -> list[Outcome]:
    """Train and evaluate the plan as Ray tasks (one GPU each when the cluster has GPUs, else
    one CPU) on a local Ray instance or the cluster at `address`; the driver merges every
    returned run into `store`."""
    try:
        import ray
    except ImportError:
        raise ZooError("--launcher ray needs the ray package", "pip install 'mixer-zoo[dist]' (or: pip install ray)"
                       ) from None
    runs = admit(spec, store, shard, only)
    todo, outcomes = split_todo(spec, store, runs, retry_failed)
    say = console.print if console is not None else (lambda *a, **k: None)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **(ray_init or {}))
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        task = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1, max_retries=0)(ray_task)
        say(f"{len(runs)} runs: {len(todo)} submitted to Ray ({'one GPU' if gpus else 'one CPU'} each, "
            f"cluster has {ray.cluster_resources().get('CPU', 0):g} CPUs, {gpus:g} GPUs), "
            f"{len(runs) - len(todo)} already settled")
        spec_doc = json.loads(spec.model_dump_json())
        refs = {}
        for p in todo:
            with tempfile.TemporaryDirectory(prefix="zoo-export-") as d:
                _export_run(store, p.run_id, Path(d) / "store")
                bundle = _pack(Path(d) / "store")
            refs[task.remote(spec_doc, p.run_id, bundle, device, retry_failed)] = (p, time.time())
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            p, t0 = refs.pop(ready[0])
            try:
                res = ray.get(ready[0])
            except Exception as e:  # the task or its worker died: what the store had stays resumable
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                outcomes[p.run_id] = Outcome(p, "failed", f"Ray task lost: {first[:200]}", {}, {}, time.time() - t0)
                say(f"[red]failed[/] {escape(p.label)} [dim]{p.run_id}[/]: {escape(str(outcomes[p.run_id].reason))}")
                continue
            merge_returned(store, p.run_id, res["store"])
            d = res["outcome"]
            outcomes[p.run_id] = o = Outcome(p, d["status"], d["reason"], d["summary"] or {}, d["evals"] or {},
                                             time.time() - t0)
            say(f"[{'red' if o.status == 'failed' else 'green'}]{o.status}[/] {escape(p.label)} [dim]{p.run_id}[/] on "
                f"{res['host']} in {o.seconds:.1f}s" + (f": {o.reason}" if o.reason else ""))
    finally:
        if started_here:
            ray.shutdown()
    return [outcomes[p.run_id] for p in runs]


# -- torchrun (one run over several processes) ------------------------------------------------------

def torchrun_train(run, nproc: int, parallel: str = "ddp", root: Path | None = None, progress: bool = True,
                   extra_env: dict[str, str] | None = None) -> int:
    """`zoo train --nproc N`: the same run under `torchrun --standalone --nproc-per-node N` on
    this machine. Returns torchrun's exit code."""
    from zoo.train.distributed import STRATEGIES

    if parallel not in STRATEGIES:
        raise ZooError(f"unknown --parallel '{parallel}'", f"allowed: {', '.join(STRATEGIES)}")
    if run.train.batch_size % nproc:
        raise ZooError(f"train.batch_size = {run.train.batch_size} does not split over {nproc} processes",
                       f"use a multiple of {nproc} (it is the global batch)")
    with tempfile.TemporaryDirectory(prefix="zoo-torchrun-") as d:
        cfg = Path(d) / "run.json"
        cfg.write_text(run.model_dump_json())
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "zoo", "train", "--config", str(cfg), "--parallel", parallel,
               "--progress" if progress else "--no-progress"]
        if root is not None:
            cmd += ["--root", str(root)]
        return subprocess.run(cmd, env={**os.environ, **(extra_env or {})}).returncode


if __name__ == "__main__":
    sys.exit(worker_main())
