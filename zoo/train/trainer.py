"""The trainer every mixer shares.

    result = train(run_config, store)          # resumes from the run's last checkpoint

One step: for each micro-batch (grad_accum of them) draw the batch for data position
`step * grad_accum + micro`, forward under autocast (bf16 on GPU, fp32 on CPU), backward;
then clip the global grad norm, AdamW step, log. Learning rate: linear warm-up, then cosine
or WSD (warmup-stable-decay, Hu et al. 2024, MiniCPM, arXiv:2404.06395) to
`min_lr_ratio * lr`; a pure function of the step, like the data and every scheduled knob,
so a run killed at any moment resumes exactly from its last checkpoint.

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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.env import resolve_device  # noqa: F401  (re-exported for the sweep and CLI)
from zoo.errors import ZooError
from zoo.model import ModelConfig, ZooLM
from zoo.store import Store, provenance
from zoo.tasks.base import IGNORE, Batch, Task, get_task
from zoo.train import checkpoint as ckpt
from zoo.train import distributed as zdist
from zoo.train.config import RunConfig, TrainConfig
from zoo.train.perf import device_peak_flops, micro_seq_len
from zoo.train.schedule import apply_mixer_knobs, task_knobs, values_at


class RunFailed(ZooError):
    """The run failed (non-finite values, out of memory); the store already says why."""


class NonFiniteError(RunFailed):
    pass


class OutOfMemory(RunFailed):
    pass


class RunBusy(ZooError):
    """Another process is training this run right now."""


# -- learning rate and budget ----------------------------------------------------------------

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


def lengths_at(cfg: TrainConfig, step: int) -> tuple[int, float, int]:
    """(seq_len, long_fraction, short_seq_len) at a step, after their schedules."""
    v = values_at({k: s for k, s in cfg.schedules.items() if k in ("seq_len", "long_fraction", "short_seq_len")},
                  step)
    seq_len = int(v.get("seq_len", cfg.seq_len))
    return seq_len, float(v.get("long_fraction", 1.0)), int(v.get("short_seq_len", max(2, seq_len // 2)))


def budget(cfg: TrainConfig, flops_per_token=None) -> tuple[int, float, float]:
    """(steps, expected tokens, expected FLOPs) of the budget: the first of steps, max_tokens,
    max_flops reached. Tokens and FLOPs follow the length schedule and mixture."""
    limit = cfg.steps if cfg.steps is not None else 10**9
    tokens = flops = 0.0
    per_tok = flops_per_token or (lambda L: 0.0)
    cache: dict[int, float] = {}
    step = 0
    while step < limit:
        seq_len, f, short = lengths_at(cfg, step)
        if short >= seq_len:
            f = 1.0
        for L in (seq_len, short):
            if L not in cache:
                cache[L] = per_tok(L)
        seqs = cfg.batch_size * cfg.grad_accum
        tokens += seqs * (f * seq_len + (1 - f) * short)
        flops += seqs * (f * seq_len * cache[seq_len] + (1 - f) * short * cache[short])
        step += 1
        if (cfg.max_tokens is not None and tokens >= cfg.max_tokens) or \
                (cfg.max_flops is not None and flops >= cfg.max_flops):
            break
        if cfg.steps is None and step >= 10**7:
            raise ZooError("the token or FLOP budget needs more than 10 million steps", "raise batch_size")
    return step, tokens, flops


def total_steps(cfg: TrainConfig, flops_per_token=None) -> int:
    """Optimizer steps the budget allows."""
    return budget(cfg, flops_per_token)[0]


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
    """Store (always), TensorBoard and Weights & Biases offline (when asked) through their libraries."""

    def __init__(self, cfg: TrainConfig, store: Store, run_id: str, run_dir: Path, config: dict):
        self.store, self.run_id, self.run_dir = store, run_id, run_dir
        self.buffer: list[tuple[int, dict[str, float | None]]] = []
        self.tb = self.wandb = None
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ZooError("tensorboard logging needs the tensorboard package", "pip install tensorboard") from None
            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if cfg.wandb:
            try:
                import wandb
            except ImportError:
                raise ZooError("Weights & Biases logging needs the wandb package", "pip install wandb") from None
            self.wandb = wandb.init(mode="offline", dir=str(run_dir), id=run_id, resume="allow",
                                    project=config.get("experiment") or "mixer-zoo", config=config,
                                    name=config.get("label") or run_id)

    def log(self, step: int, values: dict[str, float | None]) -> None:
        self.buffer.append((step, values))
        if self.tb is not None:
            for k, v in values.items():
                if v is not None:
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in values.items() if v is not None}, step=step)

    def flush(self) -> None:
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
        with open(tmp, "w") as f:
            for step in sorted(by_step):
                f.write(json.dumps({"step": step, **by_step[step]}) + "\n")
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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]  # norms, biases, gains
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Exclusive per-run lock: two processes never train the same run at once. The kernel drops
    it when the holder dies (kill -9 included)."""
    f = open(run_dir / ".lock", "w")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusy(f"run {run_dir.name} is being trained by another process", "wait for it to finish") from None
        yield
    finally:
        f.close()


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
        self.run_dir = self.store.run_dir(self.run_id)
        self.progress = progress and self.dist.main
        self.console = console
        self.device = self.dist.device if self.dist.active else resolve_device(self.cfg.device)
        self.precision = self.cfg.precision if self.cfg.precision != "auto" else (
            "bf16" if self.device.type == "cuda" else "fp32")
        self.config_dict = self.run.model_dump()

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def fit(self) -> TrainResult:
        lock = run_lock(self.run_dir) if self.dist.main else contextlib.nullcontext()
        with self.dist.together(lock), cpu_threads(self.cfg.threads if self.device.type == "cpu" else None):
            return self._fit()

    # the loop ----------------------------------------------------------------------------------
    def _fit(self) -> TrainResult:
        store, rid = self.store, self.run_id
        if self.dist.main:
            ckpt.write_json_atomic(self.run_dir / "config.json", {"run_id": rid, **self.config_dict})
        started = time.time()
        store.upsert_run(rid, self.config_dict, kind="train", status="running",
                         provenance=provenance(device=self.device, started=started))
        try:
            return self._train(started)
        except RunFailed as e:
            store.set_status(rid, "failed", str(e))
            raise
        except Exception as e:
            if _is_oom(e):
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
        model = build_model(self.run.model, cfg.seed).to(self.device)
        self.n_params = model.num_params()
        task = get_task(self.run.task.name, self.run.task.config)
        need = getattr(task, "vocab_size", None)  # a task with a real tokenizer (lm)
        if need is not None and need > self.run.model.vocab_size:
            raise ZooError(f"the task's tokenizer has {need} tokens, the model's vocab_size is "
                           f"{self.run.model.vocab_size}", f"set model.vocab_size = {need}")
        if hasattr(task, "save_with_run") and self.dist.main:
            task.save_with_run(self.run_dir)
        last = ckpt.latest_checkpoint(self.run_dir)
        if last is not None:  # full weights, before any sharding: a checkpoint fits any number of GPUs
            ckpt.load_weights(model, last, self.device)
        wrapped = self.dist.wrap(model, sample_len=cfg.seq_len)  # DDP, FSDP2 (in place) or the model
        fused = self.device.type == "cuda" and self.dist.strategy != "fsdp"
        opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                eps=cfg.eps, fused=fused or None)
        total = total_steps(cfg, lambda L: model.flops_per_token(L, training=True))
        start, resumed = 0, None
        if last is not None:
            meta = ckpt.load_meta(last)
            if meta["step"] < total:  # the final checkpoint needs no optimizer: nothing is left to train
                state = ckpt.load_state(last, map_location=self.device)
                self.dist.load_optimizer_state(model, opt, state["optimizer"])
                ckpt.set_rng_state(state["rng"])
            start = resumed = meta["step"]
        else:
            torch.manual_seed(cfg.seed + 1)  # the same RNG stream after init whether or not we resumed
        fwd = torch.compile(wrapped) if cfg.compile else wrapped
        peak, peak_src = device_peak_flops(self.device, self.precision, cfg.peak_tflops)
        if peak and self.dist.active:  # MFU of the whole run: all its devices
            peak, peak_src = peak * self.dist.world, f"{self.dist.world} x {peak_src}"
        sinks = Sinks(cfg if self.dist.main else cfg.model_copy(update={"tensorboard": False, "wandb": False}),
                      store, rid, self.run_dir, self.config_dict)
        store.update_summary(rid, params=self.n_params, total_steps=total, peak_flops=peak, peak_source=peak_src,
                             device=str(self.device), precision=self.precision)
        knob_values: dict[str, Any] = {}
        eval_metrics: dict[str, float] = {}
        last_loss = float("nan")
        tokens_seen = self._tokens_before(start)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        bar = _Progress(self.progress, self.console, self.run.display_label(), total, start)
        t_log, tok_log, flop_log = time.perf_counter(), 0, 0.0
        step = start
        try:
            while step < total:
                self.step = step
                values = values_at(cfg.schedules, step)
                mixer_vals = {k: v for k, v in values.items() if k.startswith("mixer.")}
                if mixer_vals != {k: v for k, v in knob_values.items() if k.startswith("mixer.")}:
                    apply_mixer_knobs(model, mixer_vals)
                knob_values = values
                lr = lr_at(step, cfg, total)
                for g in opt.param_groups:
                    g["lr"] = lr
                seq_len, frac, short = lengths_at(cfg, step)
                loss_sum, step_tokens, step_flops = 0.0, 0, 0.0
                for micro in range(cfg.grad_accum):
                    L = micro_seq_len(cfg.seed, step, micro, seq_len, frac, short)
                    self.cur_len = L
                    batch = task.batch(step * cfg.grad_accum + micro, cfg.batch_size, L, split="train",
                                       seed=cfg.seed, knobs=task_knobs(values))
                    # several processes: each keeps its rows of the global batch, and its loss is its
                    # share of the global mean (see zoo.train.distributed)
                    n_loss = batch.n_loss_tokens if self.dist.active else None
                    tokens = self.dist.rows(batch.tokens).to(self.device)
                    targets = self.dist.rows(batch.targets).to(self.device)
                    with self.dist.no_sync(wrapped, micro == cfg.grad_accum - 1):
                        with self.autocast():
                            logits = fwd(tokens)
                        loss = _loss(logits, targets, n_loss)
                        if self.dist.active:
                            loss = loss * self.dist.loss_scale()
                        lv = self.dist.average(loss)
                        if not math.isfinite(lv):
                            raise NonFiniteError(diagnose(model, f"loss ({lv})", step, tokens, self.autocast),
                                                 "lower train.lr, add warm-up, or check the mixer's numerics")
                        (loss / cfg.grad_accum).backward()
                    loss_sum += lv / cfg.grad_accum
                    step_tokens += batch.tokens.numel()
                    step_flops += batch.tokens.numel() * model.flops_per_token(L, training=True)
                gnorm = self.dist.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0
                                                  else float("inf"))
                gn = float(gnorm)
                if not math.isfinite(gn):
                    raise NonFiniteError(diagnose(model, f"gradient norm ({gn})", step, None, self.autocast),
                                         "lower train.lr or train.grad_clip, or check the mixer's backward")
                opt.step()
                opt.zero_grad(set_to_none=True)
                last_loss = loss_sum
                tokens_seen += step_tokens
                tok_log += step_tokens
                flop_log += step_flops
                step += 1
                row: dict[str, float | None] = {"loss": loss_sum, "lr": lr, "grad_norm": gn, "tokens": tokens_seen,
                                                "seq_len": seq_len}
                row.update({f"knob/{k}": float(v) for k, v in values.items() if not isinstance(v, list)})
                if step % cfg.log_every == 0 or step == total:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    dt = time.perf_counter() - t_log
                    row["tokens_per_s"] = tok_log / dt
                    row["mfu"] = flop_log / dt / peak if peak else None
                    row["peak_mem_gb"] = (torch.cuda.max_memory_allocated(self.device) / 2**30
                                          if self.device.type == "cuda" else None)
                    t_log, tok_log, flop_log = time.perf_counter(), 0, 0.0
                    bar.update(step, loss_sum, row["tokens_per_s"])
                if (cfg.eval_every and step % cfg.eval_every == 0) or step == total:
                    eval_metrics = self.evaluate(model, task, seq_len, values)
                    row.update(eval_metrics)
                sinks.log(step, row)
                if step % cfg.log_every == 0:
                    sinks.flush()
                done = step == total or (cfg.target is not None and cfg.target.reached(eval_metrics))
                if done or (cfg.ckpt_every and step % cfg.ckpt_every == 0):
                    sinks.flush()
                    self.dist.save_checkpoint(self.run_dir, step, model, opt, self.config_dict, knobs=knob_values,
                                              keep=cfg.keep_checkpoints)
                if done:
                    break
        finally:
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

    @torch.no_grad()
    def evaluate(self, model: ZooLM, task: Task, seq_len: int, values: dict[str, Any]) -> dict[str, float]:
        """Loss and next-token accuracy (on the positions that carry a loss) over fixed held-out batches."""
        was = model.training
        model.eval()
        loss_sum = correct = n = 0.0
        for i in range(self.cfg.eval_batches):
            b: Batch = task.batch(i, self.cfg.batch_size, seq_len, split="eval", seed=self.cfg.seed,
                                  knobs=task_knobs(values))
            tokens, targets = b.tokens.to(self.device), b.targets.to(self.device)
            with self.autocast():
                logits = model(tokens)
            mask = targets != IGNORE
            k = int(mask.sum())
            if k == 0:
                continue
            loss_sum += float(F.cross_entropy(logits[mask].float(), targets[mask], reduction="sum"))
            correct += float((logits[mask].argmax(-1) == targets[mask]).sum())
            n += k
        model.train(was)
        if n == 0:
            return {}
        return {"eval_loss": loss_sum / n, "eval_acc": correct / n}


def _loss(logits: torch.Tensor, targets: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Mean cross-entropy over the positions that carry a loss (0 when a batch has none);
    `n`: divide by this count instead (the loss positions of a global batch split over ranks)."""
    flat = logits.reshape(-1, logits.shape[-1]).float()
    tgt = targets.reshape(-1)
    n = (tgt != IGNORE).sum().clamp(min=1) if n is None else max(1, n)
    return F.cross_entropy(flat, tgt, ignore_index=IGNORE, reduction="sum") / n


def _is_oom(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(e, (oom, torch.cuda.OutOfMemoryError))


class _Progress:
    """A rich progress bar (step, loss, tokens/s, ETA), or nothing."""

    def __init__(self, enabled: bool, console, label: str, total: int, start: int):
        self.p = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                          TimeRemainingColumn(), console=console, transient=False)
        self.p.start()
        self.t = self.p.add_task(label, total=total, completed=start, loss="-", tps="-")

    def update(self, step: int, loss: float, tps: float) -> None:
        if self.p is not None:
            self.p.update(self.t, completed=step, loss=f"{loss:.4f}", tps=f"{tps:,.0f}")

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()


def train(run: RunConfig, store: Store | None = None, progress: bool = False, console=None,
          parallel: str = "ddp") -> TrainResult:
    """Train (or resume) one run; under torchrun, across its processes with `parallel` = ddp or fsdp."""
    return Trainer(run, store, progress=progress, console=console, parallel=parallel).fit()
