"""The trainer every mixer shares.

    result = train(run_config, store)          # resumes from the run's last checkpoint

One step: for each micro-batch (grad_accum of them) draw the batch for data position
`step * grad_accum + micro`, forward under autocast (bf16 on GPU, fp32 on CPU), backward;
then clip the global grad norm, AdamW step, log. Learning rate: linear warm-up, then cosine
or WSD (warmup-stable-decay, Hu et al. 2024, MiniCPM, arXiv:2404.06395) to
`min_lr_ratio * lr`; a pure function of the step, like the data and every scheduled knob,
so a run killed at any moment resumes exactly from its last checkpoint.

The batches are built ahead (`zoo.train.data`: a thread, or worker processes on GPU) and the
forward and loss run as one function (compiled together with `train.compile`). When a mixer
wants the batch's answer sources (HSA's `retrieval_loss`), the function also takes them and
adds the model's auxiliary loss to the LM loss; `loss` stays the LM loss and each auxiliary
term is logged under its own name (`retrieval_loss`); other runs pass nothing more. On CUDA the
host reads the loss and gradient norm only at log, evaluation and checkpoint steps, so
the GPU never waits for it in between.

Failures a sweep must survive are raised as `RunFailed` after the run is marked failed in
the store: a non-finite loss or gradient (with a diagnosis naming the step and the first
non-finite parameter, gradient or layer output) and running out of GPU memory (with the
sizes that failed and a hint).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.env import is_oom, resolve_device  # noqa: F401  (resolve_device re-exported for the sweep and CLI)
from zoo.errors import Interrupted, ZooError
from zoo.mixer import no_decay_names
from zoo.model import ModelConfig, ZooLM
from zoo.progress import Progress
from zoo.store import LOCK, Store, finite, provenance
from zoo.tasks.base import IGNORE, Batch, Task, get_task
from zoo.train import checkpoint as ckpt
from zoo.train import distributed as zdist
from zoo.train.config import RunConfig, TrainConfig
from zoo.train.cost import budget, lengths_at, total_steps  # noqa: F401  (budget re-exported)
from zoo.train.data import BatchKey, Prefetcher, build
from zoo.train.lengths import micro_seq_len
from zoo.train.mfu import device_peak_flops
from zoo.train.schedule import apply_mixer_knobs, task_knobs, values_at


class RunFailed(ZooError):
    """The run failed (non-finite values, out of memory); the store already says why."""


class NonFiniteError(RunFailed):
    pass


class OutOfMemory(RunFailed):
    pass


class RunBusy(ZooError):
    """Another process is training this run right now."""


# -- learning rate -----------------------------------------------------------------------------

def lr_at(step: int, cfg: TrainConfig, total: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    lo = cfg.lr * cfg.min_lr_ratio
    if cfg.lr_schedule == "cosine":
        t = (step - cfg.warmup_steps) / max(1, total - 1 - cfg.warmup_steps)
        return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * min(1.0, t)))
    decay = max(1, round(cfg.decay_fraction * total))  # WSD: constant, then linear decay
    start = total - decay
    if step < start:
        return cfg.lr
    return cfg.lr + (lo - cfg.lr) * min(1.0, (step - start + 1) / decay)


# -- diagnosis of non-finite values ------------------------------------------------------------

def _nonfinite(t: Any) -> bool:
    if isinstance(t, torch.Tensor):
        return t.is_floating_point() and not bool(torch.isfinite(t).all())
    if isinstance(t, (tuple, list)):
        return any(_nonfinite(u) for u in t)
    return False


def first_nonfinite_parameter(model: nn.Module, grads: bool = False) -> str | None:
    for name, p in model.named_parameters():
        t = p.grad if grads else p
        if t is not None and _nonfinite(t):
            return name
    return None


@torch.no_grad()
def first_nonfinite_activation(model: nn.Module, tokens: torch.Tensor, autocast) -> str | None:
    """Re-run the forward with hooks (only now, to diagnose) and name the first layer whose
    output is non-finite, in execution order."""
    found: list[str] = []
    handles = []
    for name, mod in model.named_modules():
        def hook(m, inp, out, name=name):
            if not found and _nonfinite(out):
                found.append(f"{name or 'model'} ({type(m).__name__})")
        handles.append(mod.register_forward_hook(hook))
    try:
        with autocast():
            model(tokens)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def diagnose(model: nn.Module, what: str, step: int, tokens: torch.Tensor | None, autocast) -> str:
    where = None
    if (p := first_nonfinite_parameter(model)) is not None:
        where = f"first non-finite parameter: {p}"
    elif (g := first_nonfinite_parameter(model, grads=True)) is not None and what != "loss":
        where = f"first non-finite gradient: {g}"
    elif tokens is not None and (a := first_nonfinite_activation(model, tokens, autocast)) is not None:
        where = f"first non-finite output: {a}"
    return f"step {step}: {what} is not finite; " + (where or "no non-finite parameter or layer output found")


# -- logging sinks -------------------------------------------------------------------------------

class Sinks:
    """Store (always), TensorBoard and Weights & Biases (when asked) through their libraries; W&B runs
    offline unless WANDB_MODE says otherwise."""

    @staticmethod
    def check(cfg: TrainConfig) -> None:
        """Refuse, before the run is touched, logging whose package is missing."""
        import importlib.util

        if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ZooError("tensorboard logging needs the tensorboard package", "pip install tensorboard")
        if cfg.wandb and importlib.util.find_spec("wandb") is None:
            raise ZooError("Weights & Biases logging needs the wandb package", "pip install wandb")

    def __init__(self, cfg: TrainConfig, store: Store, run_id: str, run_dir: Path, config: dict,
                 jsonl: bool = True):
        self.store, self.run_id, self.run_dir = store, run_id, run_dir
        self.buffer: list[tuple[int, dict[str, float | None]]] = []
        self.jsonl = jsonl  # rank 0 also appends every flushed row to metrics.jsonl
        self.tb = self.wandb = None
        self.check(cfg)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if cfg.wandb:
            import wandb

            # offline unless the user's environment says otherwise (WANDB_MODE=online, disabled, ...)
            self.wandb = wandb.init(mode=os.environ.get("WANDB_MODE") or "offline", dir=str(run_dir), id=run_id,
                                    resume="allow", project=config.get("experiment") or "mixer-zoo", config=config,
                                    name=config.get("label") or run_id)

    def log(self, step: int, values: dict[str, float | None]) -> None:
        self.buffer.append((step, values))
        if self.tb is not None:
            for k, v in values.items():
                if v is not None:
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in values.items() if v is not None}, step=step)

    def flush(self, durable: bool = False) -> None:
        """Write the buffered rows to the store and to metrics.jsonl; `durable` (at checkpoints)
        also fsyncs the file, so the run directory holds every metric its checkpoint covers even
        when the store loses its last commits."""
        if self.jsonl and (self.buffer or durable):
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                for step, vals in self.buffer:
                    f.write(json.dumps({"step": step, **finite(vals)}) + "\n")
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
        self.store.log_metrics_many(self.run_id, self.buffer)
        self.buffer = []
        if self.tb is not None:
            self.tb.flush()

    def write_jsonl(self) -> None:
        path = self.run_dir / "metrics.jsonl"
        tmp = path.with_name(".metrics.jsonl.tmp")
        by_step: dict[int, dict[str, float | None]] = {}
        for r in self.store.metrics(self.run_id):
            by_step.setdefault(r["step"], {})[r["name"]] = r["value"]
        if not by_step:  # the store lost them: what the file holds is all there is
            return
        with open(tmp, "w") as f:
            for step in sorted(by_step):
                f.write(json.dumps({"step": step, **finite(by_step[step])}) + "\n")
        tmp.replace(path)

    def close(self) -> None:
        self.flush()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


# -- the trainer ---------------------------------------------------------------------------------

@dataclass
class TrainResult:
    run_id: str
    run_dir: Path
    summary: dict[str, Any]
    model: ZooLM = field(repr=False)
    resumed_from: int | None = None


def build_model(model_config: ModelConfig, seed: int) -> ZooLM:
    torch.manual_seed(seed)
    return ZooLM(model_config)


def param_groups(model: nn.Module, weight_decay: float, exempt: set[str] | None = None) -> list[dict]:
    """AdamW groups: weight decay where `zoo.mixer.decays` says, none on tagged SSM dynamics,
    norms, biases and gains. `exempt` (parameter names) is read before FSDP2 wraps the model,
    since wrapping replaces the parameter objects and drops their tags."""
    exempt = set(no_decay_names(model)) if exempt is None else exempt
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if n not in exempt], "weight_decay": weight_decay},
            {"params": [p for n, p in named if n in exempt], "weight_decay": 0.0}]


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Run with `n` torch CPU threads, then restore the previous count."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


TINY_D_MODEL = 256  # up to this width one CPU thread trains fastest (benchmarks/NOTES.md, cpu_threads.py)


def default_threads(cfg: TrainConfig, model: ModelConfig, device: torch.device) -> int | None:
    """CPU threads for a run: `train.threads` when set; else one for a tiny model, whose ops are
    too small to split across threads; else torch's default. None on GPU."""
    if device.type != "cpu":
        return None
    if cfg.threads is not None:
        return cfg.threads
    return 1 if model.d_model <= TINY_D_MODEL else None


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Exclusive per-run lock: two processes never train the same run at once. The kernel drops
    it when the holder dies (kill -9 included)."""
    f = open(run_dir / LOCK, "w")
    try:
        for attempt in range(5):  # `zoo runs list` peeks at the lock for an instant (store.run_held)
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 4:
                    raise RunBusy(f"run {run_dir.name} is being trained by another process",
                                  "wait for it to finish") from None
                time.sleep(0.05)
        yield
    finally:
        f.close()


class StopSignals:
    """While training, SIGINT (Ctrl-C) and SIGTERM only raise a flag that the loop reads between
    optimizer steps, so it stops at a step boundary, saves a checkpoint and says so. A second
    Ctrl-C stops at once. Only in the main thread (signal handlers can be set nowhere else)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


class Trainer:
    def __init__(self, run: RunConfig, store: Store | None = None, progress: bool = False, console=None,
                 parallel: str = "ddp"):
        self.run = run.normalized()
        self.cfg = self.run.train
        # under torchrun: one process per GPU, `parallel` (ddp or fsdp) spreads the run, rank 0 writes
        self.dist = zdist.setup(self.cfg.device, parallel)
        self.dist.check_batch(self.cfg.batch_size)
        if self.dist.main:
            self.store = store if store is not None else Store()
        else:  # rank 0 writes; the others never open the database
            self.store = store if isinstance(store, zdist.FollowerStore) else zdist.FollowerStore(
                store.root if store is not None else None)
        self.run_id = run.run_id()
        self.check_task()  # a setting the task cannot serve is a user error: no run record, no directory
        self.run_dir = self.store.run_dir(self.run_id)
        self.progress = progress and self.dist.main
        self.console = console
        self.device = self.dist.device if self.dist.active else resolve_device(self.cfg.device)
        self.precision = self.cfg.precision if self.cfg.precision != "auto" else (
            "bf16" if self.device.type == "cuda" else "fp32")
        self.config_dict = self.run.model_dump()

    def check_task(self) -> None:
        """Draw one row of the first batch at the first step's length, so that a setting the task cannot
        serve (a HashHop problem longer than seq_len, an MQAR with too many pairs) fails here."""
        task = get_task(self.run.task.name, self.run.task.config)
        b = task.batch(0, 1, lengths_at(self.cfg, 0)[0], split="train", seed=self.cfg.seed,
                       knobs=task_knobs(values_at(self.cfg.schedules, 0)))
        if b.sources is None and (asks := sources_wanted_by(self.run.model)):
            raise no_sources(asks, task.name)

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def say(self, message: str) -> None:
        """A line for the user (resuming, repairs, damaged checkpoints, what an interrupt saved)."""
        if not self.dist.main:
            return
        if self.console is not None:
            from rich.markup import escape

            self.console.print(f"[dim]{escape(message)}[/]", highlight=False)
        else:
            print(message, file=sys.stderr, flush=True)

    def fit(self) -> TrainResult:
        lock = run_lock(self.run_dir) if self.dist.main else contextlib.nullcontext()
        with StopSignals() as self.stop, self.dist.together(lock), \
                cpu_threads(default_threads(self.cfg, self.run.model, self.device)):
            res = self._fit()
        if self.stop.signum is not None:  # the signal came after the last step: the run is done and stored
            name = "Ctrl-C" if self.stop.signum == signal.SIGINT else signal.Signals(self.stop.signum).name
            raise Interrupted(f"{name}: run {self.run_id} had finished and is saved", self.stop.signum)
        return res

    # the loop ----------------------------------------------------------------------------------
    def _fit(self) -> TrainResult:
        store, rid = self.store, self.run_id
        Sinks.check(self.cfg)  # before the run's status changes: a missing package fails nothing
        if self.dist.main:
            left = ckpt.clean_temporaries(self.run_dir)  # we hold the lock: no writer is alive
            if left:
                self.say(f"removed {len(left)} temporary file(s) a killed process left in {self.run_dir}")
            ckpt.write_json_atomic(self.run_dir / "config.json", {"run_id": rid, **self.config_dict})
        started = time.time()
        store.upsert_run(rid, self.config_dict, kind="train", status="running",
                         provenance=provenance(device=self.device, started=started))
        try:
            return self._train(started)
        except RunFailed as e:
            store.set_status(rid, "failed", str(e))
            raise
        except (KeyboardInterrupt, Interrupted):  # left "running": shown as interrupted once we exit
            raise
        except Exception as e:
            if is_oom(e):
                msg = self._oom_message(e)
                store.set_status(rid, "failed", msg)
                raise OutOfMemory(msg, "lower train.batch_size and raise train.grad_accum to keep tokens per step, "
                                  "shorten seq_len, or train a smaller model") from None
            store.set_status(rid, "failed", f"{type(e).__name__}: {e}")
            raise

    def _oom_message(self, e: BaseException) -> str:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        peak = (f", peak allocated {torch.cuda.max_memory_allocated(self.device) / 2**30:.2f} GiB"
                if self.device.type == "cuda" else "")
        n = getattr(self, "n_params", None)
        return (f"out of memory at step {getattr(self, 'step', 0)} on {self.device}: batch_size={self.cfg.batch_size}"
                f" x seq_len={getattr(self, 'cur_len', self.cfg.seq_len)} (grad_accum={self.cfg.grad_accum}), "
                f"{(n or 0) / 1e6:.2f}M params, {self.precision}{peak}: {first}")

    def _train(self, started: float) -> TrainResult:
        cfg, store, rid = self.cfg, self.store, self.run_id
        model = self.model = build_model(self.run.model, cfg.seed).to(self.device)
        self.n_params = model.num_params()
        task = get_task(self.run.task.name, self.run.task.config)
        if hasattr(task, "save_with_run") and self.dist.main:  # a real tokenizer goes with the run
            task.save_with_run(self.run_dir)
        total = total_steps(cfg, lambda L: model.flops_per_token(L, training=True))
        # full weights, before any sharding: a checkpoint fits any number of GPUs. A damaged newest
        # checkpoint falls back to the one before it, with a warning.
        found = ckpt.restore(model, self.run_dir, self.device, need_state=lambda meta: meta["step"] < total,
                             warn=lambda msg: self.say(f"warning: {msg}"))
        exempt = set(no_decay_names(model))
        wrapped = self.dist.wrap(model, sample_len=cfg.seq_len)  # DDP, FSDP2 (in place) or the model
        self.defer = _defer_host_reads(self.device, self.dist.strategy)
        opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay, exempt), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                eps=cfg.eps, fused=self.defer or None)  # fused: it can skip a step on device
        start, resumed = 0, None
        if found is not None:
            last, meta, state = found
            if state is not None:  # the final checkpoint needs no optimizer: nothing is left to train
                self.dist.load_optimizer_state(model, opt, state["optimizer"])
                ckpt.set_rng_state(state["rng"])
            start = resumed = meta["step"]
            self.say(f"resuming run {rid} from step {start} of {total} ({last})" if start < total else
                     f"run {rid} already reached its last step ({start}, {last}): recording it as done")
            if self.dist.main:
                self._repair_metrics(start)
        else:
            torch.manual_seed(cfg.seed + 1)  # the same RNG stream after init whether or not we resumed
        wants_sources = model.wants_sources  # an auxiliary loss on the batch's answer sources (HSA)
        fwd_loss = self._forward_loss(wrapped, wants_sources)
        peak, peak_src = device_peak_flops(self.device, self.precision, cfg.peak_tflops)
        if peak and self.dist.active:  # MFU of the whole run: all its devices
            peak, peak_src = peak * self.dist.world, f"{self.dist.world} x {peak_src}"
        sinks = Sinks(cfg if self.dist.main else cfg.model_copy(update={"tensorboard": False, "wandb": False}),
                      store, rid, self.run_dir, self.config_dict, jsonl=self.dist.main)
        store.update_summary(rid, params=self.n_params, total_steps=total, peak_flops=peak, peak_source=peak_src,
                             device=str(self.device), precision=self.precision)
        knob_values: dict[str, Any] = {}
        eval_metrics: dict[str, float] = {}
        last_loss = float("nan")
        tokens_seen = self._tokens_before(start)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        bar = Progress(self.console, self.run.display_label(), total, start, unit="step", enabled=self.progress,
                       fields=("loss", "tok_s"))
        t_log, tok_log, flop_log = time.perf_counter(), 0, 0.0
        t_ckpt = time.monotonic()  # checkpoints also every ckpt_minutes of training
        step = start
        # the batches of the steps to come, built ahead (each a pure function of its key)
        workers = cfg.data_workers if cfg.data_workers is not None else int(self.device.type == "cuda")
        loader = Prefetcher(task, self._upcoming_keys(start, total), workers=workers, depth=cfg.prefetch,
                            pin=self.device.type == "cuda")
        pending: list[tuple[int, dict, torch.Tensor]] = []  # steps whose loss and grad norm the host has not read
        flops_at: dict[int, float] = {}
        try:
            while step < total:
                self.step = step
                values = values_at(cfg.schedules, step)
                mixer_vals = {k: v for k, v in values.items() if k.startswith("mixer.")}
                if mixer_vals != {k: v for k, v in knob_values.items() if k.startswith("mixer.")}:
                    apply_mixer_knobs(model, mixer_vals)
                    flops_at.clear()  # a knob may change a mixer's cost
                knob_values = values
                lr = lr_at(step, cfg, total)
                for g in opt.param_groups:
                    g["lr"] = lr
                seq_len, frac, short = lengths_at(cfg, step)
                micro_losses, micro_aux, step_tokens, step_flops = [], [], 0, 0.0
                for micro in range(cfg.grad_accum):
                    key = self._batch_key(step, micro, seq_len, frac, short, values)
                    L = self.cur_len = key.seq_len
                    batch = loader.get(key)
                    # several processes: each keeps its rows of the global batch, and its loss is its
                    # share of the global mean (see zoo.train.distributed)
                    n_loss = batch.n_loss_tokens if self.dist.active else None
                    tokens = self.dist.rows(batch.tokens).to(self.device, non_blocking=True)
                    targets = self.dist.rows(batch.targets).to(self.device, non_blocking=True)
                    extra = ()
                    if wants_sources:
                        if batch.sources is None:
                            raise no_sources(sources_wanted_by(self.run.model), task.name)
                        extra = (self.dist.rows(batch.sources).to(self.device, non_blocking=True),)
                    with self.dist.no_sync(wrapped, micro == cfg.grad_accum - 1):
                        ce_sum, count, *aux = fwd_loss(tokens, targets, *extra)
                        loss = ce_sum / (max(1, n_loss) if n_loss is not None else count.clamp(min=1))
                        if self.dist.active:
                            loss = loss * self.dist.loss_scale()
                        total_loss = loss + aux[0]["loss"] if aux else loss  # aux: this rank's mean
                        (total_loss / cfg.grad_accum).backward()
                    if aux:
                        micro_aux.append({k: v.detach().float() for k, v in aux[0].items() if k != "loss"})
                    micro_losses.append(loss.detach().float())
                    step_tokens += batch.tokens.numel()
                    if L not in flops_at:  # the estimate walks every layer: once per length
                        flops_at[L] = model.flops_per_token(L, training=True)
                    step_flops += batch.tokens.numel() * flops_at[L]
                loss_t = self.dist.average_tensor(torch.stack(micro_losses).sum() / cfg.grad_accum)
                gnorm = self.dist.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0
                                                  else float("inf"))
                health = torch.cat([torch.stack(micro_losses), loss_t[None], gnorm.detach().float()[None]])
                tokens_seen += step_tokens
                row: dict[str, float | None] = {"lr": lr, "tokens": tokens_seen, "seq_len": seq_len}
                row.update({f"knob/{k}": float(v) for k, v in values.items() if not isinstance(v, list)})
                for name in micro_aux[0] if micro_aux else ():  # a tensor until `_settle` reads it
                    row[name] = self.dist.average_tensor(torch.stack([a[name] for a in micro_aux]).mean())
                if self.defer:  # a non-finite step changes nothing: the fused AdamW skips it on device
                    opt.found_inf = (~torch.isfinite(health[-2:]).all()).float()
                else:  # read now (free off the GPU), before the step can spoil the weights
                    self._settle([(step, row, health)], task, sinks, before=pending)
                opt.step()
                opt.zero_grad(set_to_none=True)
                tok_log += step_tokens
                flop_log += step_flops
                pending.append((step, row, health))
                step += 1
                log_now = step % cfg.log_every == 0 or step == total
                eval_now = bool(cfg.eval_every and step % cfg.eval_every == 0) or step == total
                ckpt_now = bool(cfg.ckpt_every and step % cfg.ckpt_every == 0)
                due = bool(cfg.ckpt_minutes) and time.monotonic() - t_ckpt >= 60 * cfg.ckpt_minutes
                stop = self.stop.signum is not None
                if self.dist.active:  # ranks agree (at log steps, which sync anyway) or the save deadlocks
                    agree = step % cfg.log_every == 0 and step < total
                    due = agree and not self.dist.all_true(not due)
                    stop = agree and not self.dist.all_true(not stop)
                if not (log_now or eval_now or ckpt_now or due or stop):
                    continue  # no host read this step
                last_loss = self._settle(pending, task, sinks)  # raises NonFiniteError at the first bad step
                if log_now:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    dt = time.perf_counter() - t_log
                    row["tokens_per_s"] = tok_log / dt
                    row["mfu"] = flop_log / dt / peak if peak else None
                    row["peak_mem_gb"] = (torch.cuda.max_memory_allocated(self.device) / 2**30
                                          if self.device.type == "cuda" else None)
                    t_log, tok_log, flop_log = time.perf_counter(), 0, 0.0
                    bar.update(step, loss=f"{last_loss:.4f}", tok_s=f"{row['tokens_per_s']:,.0f}")
                if eval_now:
                    eval_metrics = self.evaluate(model, task, seq_len, values)
                    row.update(eval_metrics)
                for s_, r_, _ in pending:
                    sinks.log(s_ + 1, r_)
                pending = []
                if step % cfg.log_every == 0:
                    sinks.flush()
                done = step == total or (cfg.target is not None and cfg.target.reached(eval_metrics))
                if done or stop or due or ckpt_now:
                    sinks.flush(durable=True)
                    self.dist.save_checkpoint(self.run_dir, step, model, opt, self.config_dict, knobs=knob_values,
                                              keep=cfg.keep_checkpoints)
                    t_ckpt = time.monotonic()
                if done:
                    break
                if stop:
                    signum = self.stop.signum or signal.SIGTERM
                    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
                    raise Interrupted(f"{name}: saved run {rid} at step {step} of {total} "
                                      f"({self.run_dir / ckpt.CKPT_DIR / f'step_{step:08d}'}); the same command "
                                      "resumes it", signum)
        finally:
            loader.close()
            bar.close()
            sinks.close()
        if self.dist.main:
            sinks.write_jsonl()
        if start >= total:  # killed after the final checkpoint, before the store said done
            last_loss, eval_metrics = self._logged_at(start)
        finished = time.time()
        summary = self._summary(step, total, last_loss, eval_metrics, tokens_seen, model, peak, started, finished)
        store.upsert_run(rid, self.config_dict, kind="train", status="done", summary=summary,
                         provenance=provenance(model=model, device=self.device, started=started, finished=finished,
                                               resumed_from=resumed))
        return TrainResult(rid, self.run_dir, summary, model, resumed)

    def _repair_metrics(self, start: int) -> None:
        """Metric rows up to the checkpoint that the store lost (a WAL cut short by a crash) come
        back from metrics.jsonl; rows past it are dropped from the file (those steps run again)."""
        from zoo.store import read_metrics_file

        path = self.run_dir / "metrics.jsonl"
        rows = read_metrics_file(path)
        notes = self.store.repair_run(self.run_id, self.run_dir, upto=start)
        if any(step > start for step, _ in rows):
            tmp = path.with_name(".metrics.jsonl.tmp")
            tmp.write_text("".join(json.dumps({"step": s, **v}) + "\n" for s, v in rows if s <= start))
            tmp.replace(path)
        for note in notes:
            self.say(f"repaired run {self.run_id}: {note}")

    def _batch_key(self, step: int, micro: int, seq_len: int, frac: float, short: int, values: dict) -> BatchKey:
        cfg = self.cfg
        return BatchKey(step * cfg.grad_accum + micro, cfg.batch_size,
                        micro_seq_len(cfg.seed, step, micro, seq_len, frac, short), "train", cfg.seed,
                        task_knobs(values))

    def _upcoming_keys(self, start: int, total: int):
        for step in range(start, total):
            seq_len, frac, short = lengths_at(self.cfg, step)
            values = values_at(self.cfg.schedules, step)
            for micro in range(self.cfg.grad_accum):
                yield self._batch_key(step, micro, seq_len, frac, short, values)

    def _forward_loss(self, wrapped: nn.Module, sources: bool = False):
        """`(tokens, targets) -> (summed cross-entropy, loss positions)`, forward and loss in one
        function, so that under torch.compile the loss fuses with the head (no fp32 copy of the
        logits) and a CUDA graph holds both. `sources` (a mixer wants the batch's answer
        sources): `(tokens, targets, sources) -> (..., aux)`, aux the model's auxiliary losses
        (`ZooLM.forward`); without it the function and its graph are as before."""

        def forward_loss(tokens: torch.Tensor, targets: torch.Tensor):
            with self.autocast():
                logits = wrapped(tokens)
            return _loss_sum(logits, targets)

        def forward_loss_aux(tokens: torch.Tensor, targets: torch.Tensor, sources: torch.Tensor):
            with self.autocast():
                logits, aux = wrapped(tokens, sources=sources)
            return (*_loss_sum(logits, targets), aux)

        if sources:
            forward_loss = forward_loss_aux

        if not self.cfg.compile:
            return forward_loss
        compiled = torch.compile(forward_loss, mode=None if self.cfg.compile_mode == "default" else
                                 self.cfg.compile_mode)
        graphs = self.cfg.compile_mode == "reduce-overhead"
        primed = []

        def run(tokens: torch.Tensor, targets: torch.Tensor, *extra: torch.Tensor):
            if not primed:  # one eager forward fills the mixers' lazy choices, which a trace would
                primed.append(True)  # otherwise fill as a side effect and then recompile for
                with torch.no_grad(), self.autocast():
                    wrapped(tokens[:1])
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            return compiled(tokens, targets, *extra)

        return run

    def _settle(self, pending: list[tuple[int, dict, torch.Tensor]], task: Task, sinks: Sinks,
                before: list[tuple[int, dict, torch.Tensor]] = ()) -> float:
        """Read the loss and gradient norm of `pending` steps on the host (one transfer), put them
        in their rows, and return the last loss. A non-finite one fails the run, diagnosed at
        the first bad step (its batch drawn again: data is a pure function of the step), after
        the rows of the steps before it (`before`, then `pending`'s) are logged."""
        reads = [(row, k) for _, row, _ in pending for k, v in row.items() if isinstance(v, torch.Tensor)]
        if reads:  # auxiliary losses, kept on the device until now: one transfer
            for (row, k), v in zip(reads, torch.stack([row[k] for row, k in reads]).tolist(), strict=True):
                row[k] = v
        vals = torch.stack([h for _, _, h in pending]).tolist()
        for i, ((step, row, _), v) in enumerate(zip(pending, vals, strict=True)):
            *micro, lv, gn = v
            if not (math.isfinite(lv) and math.isfinite(gn)):
                for s_, r_, _ in [*before, *pending[:i]]:
                    sinks.log(s_ + 1, r_)
            if not math.isfinite(lv):
                bad = next((j for j, x in enumerate(micro) if not math.isfinite(x)), 0)
                seq_len, frac, short = lengths_at(self.cfg, step)
                key = self._batch_key(step, bad, seq_len, frac, short, values_at(self.cfg.schedules, step))
                tokens = self.dist.rows(build(task, key).tokens).to(self.device)
                self.model.zero_grad(set_to_none=True)  # a NaN loss's gradients are its effect, not its cause
                raise NonFiniteError(diagnose(self.model, f"loss ({lv})", step, tokens, self.autocast),
                                     "lower train.lr, add warm-up, or check the mixer's numerics")
            if not math.isfinite(gn):
                raise NonFiniteError(diagnose(self.model, f"gradient norm ({gn})", step, None, self.autocast),
                                     "lower train.lr or train.grad_clip, or check the mixer's backward")
            row.update(loss=lv, grad_norm=gn)
        return vals[-1][-2]

    def _logged_at(self, step: int) -> tuple[float, dict[str, float]]:
        vals = {r["name"]: r["value"] for r in self.store.metrics(self.run_id) if r["step"] == step}
        return vals.get("loss", float("nan")), {k: v for k, v in vals.items() if k.startswith("eval_")}

    def _tokens_before(self, step: int) -> int:
        cfg = self.cfg
        n = 0
        for s in range(step):
            seq_len, f, short = lengths_at(cfg, s)
            n += sum(cfg.batch_size * micro_seq_len(cfg.seed, s, m, seq_len, f, short) for m in range(cfg.grad_accum))
        return n

    def _summary(self, step, total, last_loss, eval_metrics, tokens, model, peak, started, finished) -> dict:
        rows = self.store.metrics(self.run_id)
        tps = [r["value"] for r in rows if r["name"] == "tokens_per_s" and r["value"] is not None]
        mfus = [r["value"] for r in rows if r["name"] == "mfu" and r["value"] is not None]
        mem = [r["value"] for r in rows if r["name"] == "peak_mem_gb" and r["value"] is not None]
        tail = tps[len(tps) // 2:] or tps  # steady state: the second half of the log intervals
        return {
            "steps": step, "total_steps": total, "final_loss": last_loss, **eval_metrics, "tokens": tokens,
            "params": model.num_params(), "train_flops": tokens * model.flops_per_token(self.cfg.seq_len),
            "tokens_per_s": sum(tail) / len(tail) if tail else None,
            "mfu": sum(mfus[len(mfus) // 2:] or mfus) / len(mfus[len(mfus) // 2:] or mfus) if mfus else None,
            "peak_mem_gb": max(mem) if mem else None, "wall_s": finished - started,
        }

    def evaluate(self, model: ZooLM, task: Task, seq_len: int, values: dict[str, Any]) -> dict[str, float]:
        """`HeldOut.metrics` over the run's fixed held-out batches at this length and these knobs."""
        return held_out(model, task, seq_len, batches=self.cfg.eval_batches, batch_size=self.cfg.batch_size,
                        seed=self.cfg.seed, knobs=task_knobs(values), device=self.device,
                        autocast=self.autocast).metrics()


@dataclass
class HeldOut:
    """Sums over held-out answer positions (those that carry a loss)."""

    loss_sum: float = 0.0
    correct: int = 0
    n: int = 0
    first_correct: int = 0  # the first position of each answer, for a task with `answer_spans`
    first_n: int = 0

    def metrics(self) -> dict[str, float]:
        """Loss and next-token accuracy; for a task with `answer_spans`, also `eval_first_acc`, the
        accuracy on each answer's first token alone (HashHop: the letter that needs the key matched,
        where the rest can be copied), and how many answers it counts."""
        if self.n == 0:
            return {}
        out = {"eval_loss": self.loss_sum / self.n, "eval_acc": self.correct / self.n}
        if self.first_n:
            out["eval_first_acc"] = self.first_correct / self.first_n
            out["eval_first_n"] = self.first_n  # answers scored: the interval's sample size
        return out


@torch.no_grad()
def held_out(model: nn.Module, task: Task, seq_len: int, *, batches: int, batch_size: int, seed: int,
             knobs: dict[str, Any] | None = None, device: torch.device | str = "cpu",
             autocast=contextlib.nullcontext) -> HeldOut:
    """Score `model` on the task's held-out batches 0..batches-1 (`[batch_size, seq_len]` each)."""
    was = model.training
    model.eval()
    s = HeldOut()
    for i in range(batches):
        b: Batch = task.batch(i, batch_size, seq_len, split="eval", seed=seed, knobs=knobs)
        tokens, targets = b.tokens.to(device), b.targets.to(device)
        with autocast():
            logits = model(tokens)
        mask = targets != IGNORE
        if not mask.any():
            continue
        hit = logits.argmax(-1) == targets
        s.loss_sum += float(F.cross_entropy(logits[mask].float(), targets[mask], reduction="sum"))
        s.correct += int(hit[mask].sum())
        s.n += int(mask.sum())
        if task.answer_spans:
            first = answer_starts(mask)
            s.first_correct += int(hit[first].sum())
            s.first_n += int(first.sum())
    model.train(was)
    return s


def answer_starts(mask: torch.Tensor) -> torch.Tensor:
    """`[B, L]` True at the first position of each run of True in the `[B, L]` loss mask."""
    first = mask.clone()
    first[:, 1:] &= ~mask[:, :-1]
    return first


def sources_wanted_by(model: ModelConfig) -> str | None:
    """What in the model config trains on the batch's answer sources (e.g. "hsa.retrieval_loss",
    from `MixerConfig.source_loss`), None when nothing does; read without building the model."""
    from zoo.registry import get_spec

    for name in dict.fromkeys(model.layers):
        if (field := get_spec(name).make_config(model.mixer_config.get(name)).source_loss()) is not None:
            return f"{name}.{field}"
    return None


def no_sources(asks: str | None, task: str) -> ZooError:
    return ZooError(f"{asks} needs a task that provides answer sources, and task '{task}' gives none",
                    "allowed: hashhop; or set it to 0")


def _loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy (fp32) over the positions that carry a loss, and their count."""
    flat = logits.reshape(-1, logits.shape[-1]).float()
    tgt = targets.reshape(-1)
    return F.cross_entropy(flat, tgt, ignore_index=IGNORE, reduction="sum"), (tgt != IGNORE).sum()


def _loss(logits: torch.Tensor, targets: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Mean cross-entropy over the positions that carry a loss (0 when a batch has none);
    `n`: divide by this count instead (the loss positions of a global batch split over ranks)."""
    total, count = _loss_sum(logits, targets)
    return total / (count.clamp(min=1) if n is None else max(1, n))


def _defer_host_reads(device: torch.device, strategy: str) -> bool:
    """Whether the loss and gradient norm are read on the host only every `log_every` steps
    (and at evaluations and checkpoints) instead of every step. On CUDA a read waits for the
    GPU to drain, so each one costs a step's launch overlap; the fused AdamW then skips a
    non-finite step on the device (`found_inf`), so the weights the diagnosis sees are those
    before the bad step. FSDP2's AdamW is not fused: it reads every step."""
    return device.type == "cuda" and strategy != "fsdp"



def train(run: RunConfig, store: Store | None = None, progress: bool = False, console=None,
          parallel: str = "ddp") -> TrainResult:
    """Train (or resume) one run; under torchrun, across its processes with `parallel` = ddp or fsdp."""
    return Trainer(run, store, progress=progress, console=console, parallel=parallel).fit()
