"""One run across several processes (GPUs): torchrun's environment, DDP or FSDP2, rank-0 writes.

    torchrun --nproc-per-node 2 -m zoo train ...          # or: zoo train --nproc 2 ...

    d = setup(device="auto", strategy="ddp")               # reads RANK, WORLD_SIZE, LOCAL_RANK
    fwd = d.wrap(model, sample_len=256)                    # DDP, FSDP2 (in place) or the model itself
    tokens = d.rows(batch.tokens)                          # this rank's rows of the global batch

Equal to one process at the same global batch: every rank draws the whole global batch (the
tasks are deterministic in the step) and keeps its `batch_size / world` rows; each rank's loss
is its share of the *global* token-mean (sum over its rows / loss tokens of the whole batch,
times world size, because DDP and FSDP average gradients over ranks), so the averaged gradient
is exactly the one-process gradient, up to float summation order.

Checkpoints hold the full, unsharded state in the one-process layout (the same safetensors
weights and optimizer state as `zoo.train.checkpoint` writes): rank 0 writes them, after
FSDP2's shards are gathered with `torch.distributed.checkpoint.state_dict`, and any number of
processes reads them back, so a run resumes on a different number of GPUs.

Strategies: DDP (PyTorch DistributedDataParallel, Li et al. 2020, arXiv:2006.15704) for models
that fit one GPU; FSDP2 (`fully_shard`, per-parameter sharding over a device mesh, as in
torchtitan, Liang et al. 2024, arXiv:2410.06511) shards parameters, gradients and optimizer
state, one group per block and one for the embedding and final norm.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from zoo.errors import ZooError

STRATEGIES = ("ddp", "fsdp")


def env_world_size() -> int:
    """Processes in this run according to torchrun (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Dist:
    """Where this process stands in the run. One process: rank 0 of 1, every method a no-op."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    strategy: str = "none"  # none | ddp | fsdp
    device: torch.device | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    # -- data and loss ----------------------------------------------------------------------------
    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world:
            raise ZooError(f"train.batch_size = {batch_size} does not split over {self.world} processes",
                           f"use a multiple of {self.world} (it is the global batch)")

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch `[B, ...]` -> `[B / world, ...]`."""
        if not self.active:
            return t
        b = t.shape[0] // self.world
        return t[self.rank * b:(self.rank + 1) * b]

    def loss_scale(self) -> int:
        """Factor on a rank's loss (its sum / the global count) so that the gradient average the
        wrappers take over ranks equals the gradient of the global mean."""
        return self.world

    def average(self, t: torch.Tensor) -> float:
        """Mean over ranks of a scalar tensor, as a Python float (the global loss)."""
        if not self.active:
            return t.item()
        t = t.detach().clone().float()
        dist.all_reduce(t)
        return (t / self.world).item()

    def average_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """Mean over ranks of a scalar tensor, left on the device (no wait for the host)."""
        if not self.active:
            return t
        t = t.detach().clone().float()
        dist.all_reduce(t)
        return t / self.world

    def all_true(self, flag: bool) -> bool:
        if not self.active:
            return flag
        t = torch.tensor([0 if flag else 1], device=self.device)
        dist.all_reduce(t)
        return int(t.item()) == 0

    @contextlib.contextmanager
    def together(self, ctx):
        """Enter `ctx` (rank 0's run lock) so that every rank goes on, or every rank fails, together."""
        if not self.active:
            with ctx:
                yield
            return
        error: BaseException | None = None
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(ctx)
            except ZooError as e:
                error = e
            if not self.all_true(error is None):
                raise error or ZooError("rank 0 could not start this run", "see rank 0's message")
            yield

    def barrier(self) -> None:
        if self.active:
            if self.device is not None and self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    # -- wrapping ---------------------------------------------------------------------------------
    def wrap(self, model: nn.Module, sample_len: int = 64) -> nn.Module:
        """The module to call for training: DDP around `model`, `model` sharded in place by
        FSDP2, or `model` itself in one process. Always keep `model` for parameters, FLOP
        counts, evaluation and checkpoints."""
        if not self.active:
            return model
        if self.strategy == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(self.device.type, (self.world,))
            for block in getattr(model, "blocks", []):
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)  # the rest: embedding (tied to the output layer), final norm
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        unused = _unused_parameters(model, sample_len, self.device)
        return DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                   find_unused_parameters=bool(unused))

    def no_sync(self, wrapped: nn.Module, last_micro: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of a step."""
        if not self.active:
            return contextlib.nullcontext()
        if self.strategy == "fsdp":
            wrapped.set_requires_gradient_sync(last_micro)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last_micro else wrapped.no_sync()

    def clip_grad_norm_(self, params, max_norm: float) -> torch.Tensor:
        """Global gradient norm (clipped to `max_norm`), whole over shards."""
        params = list(params)
        if self.strategy != "fsdp":
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        from torch.distributed.tensor import DTensor

        grads = [p.grad for p in params if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads, 2.0)
        if isinstance(total, DTensor):  # per-shard partial norms: reduce them
            total = total.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return total

    # -- checkpoints ------------------------------------------------------------------------------
    def load_optimizer_state(self, model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
        """Load a one-process-layout optimizer state (from any number of processes) into `opt`."""
        if self.strategy != "fsdp" or not self.active:
            opt.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = _param_names(model, opt)
        fqn_state = {"state": {names[int(i)]: s for i, s in state["state"].items()},
                     "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]}
                                      for g in state["param_groups"]]}
        set_optimizer_state_dict(model, opt, fqn_state, options=StateDictOptions(full_state_dict=True))

    def save_checkpoint(self, run_dir: Path, step: int, model: nn.Module, opt: torch.optim.Optimizer,
                        run_config: dict, knobs: dict[str, Any] | None = None, keep: int = 2) -> None:
        """Every rank calls this; rank 0 writes the full state in the one-process layout."""
        from zoo.train import checkpoint as ckpt

        if self.strategy != "fsdp" or not self.active:
            if self.main:  # DDP: every rank holds the same full state
                ckpt.save_checkpoint(run_dir, step, model, opt, run_config, knobs=knobs, keep=keep)
            self.barrier()
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = get_model_state_dict(model, options=full)          # collectives: every rank takes part
        osd = get_optimizer_state_dict(model, opt, options=full)
        if self.main:
            names = _param_names(model, opt)
            index = {n: i for i, n in enumerate(names)}
            plain = {"state": {index[n]: s for n, s in osd["state"].items()},
                     "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]]}
            ckpt.save_checkpoint(run_dir, step, _plain_copy(model, msd), _Frozen(plain), run_config, knobs=knobs,
                                 keep=keep)
        self.barrier()


class _Frozen:
    """An optimizer stand-in holding an already gathered state dict (what checkpoints save)."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def _plain_copy(model: nn.Module, full_state: dict) -> nn.Module:
    """An unsharded module of the same class and config holding `full_state` (no copies)."""
    from torch.distributed.fsdp import FSDPModule

    from zoo.model import build_on_meta

    cfg = getattr(model, "config", None)
    cls = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))  # FSDPZooLM -> ZooLM
    plain = build_on_meta(lambda: cls(cfg))
    plain.load_state_dict(full_state, assign=True)
    return plain


def _param_names(model: nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's order (the integer keys of its state dict)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for g in opt.param_groups for p in g["params"]]


def _unused_parameters(model: nn.Module, sample_len: int, device: torch.device) -> list[str]:
    """Parameters that get no gradient from one forward/backward of a sample batch. DDP must be
    told about them (it waits for every gradient otherwise). Uses its own generator, so the
    global random stream is untouched, and leaves no gradients behind."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", 256)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (1, max(2, sample_len)), generator=g).to(device)
    model.zero_grad(set_to_none=True)
    out = model(tokens)
    out.float().sum().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    return unused


def setup(device: str = "auto", strategy: str = "ddp") -> Dist:
    """Join the process group torchrun describes (once per process); one process: `Dist()`.

    GPUs: rank r uses cuda:LOCAL_RANK with NCCL. CPUs: gloo."""
    if strategy not in STRATEGIES:
        raise ZooError(f"unknown parallel strategy '{strategy}'", f"allowed: {', '.join(STRATEGIES)}")
    world = env_world_size()
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device == "auto" or device.startswith("cuda")
    if want_cuda and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ZooError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible)",
                           "start at most one process per GPU (--nproc-per-node)")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif device.startswith("cuda"):
        raise ZooError(f"device '{device}' asked for, but no GPU is visible", "use device = 'auto' or 'cpu'")
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend, **kwargs)
    return Dist(rank=rank, world=world, local_rank=local_rank, strategy=strategy, device=dev)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class FollowerStore:
    """The results store as ranks other than 0 see it: writes are dropped and the database is
    never opened (rank 0 writes each run's rows; SQLite must not be shared over a network
    filesystem by processes on several nodes). Run directories (checkpoints) are shared."""

    def __init__(self, root: str | os.PathLike | None = None):
        from zoo.store import default_root

        self.root = Path(root) if root is not None else default_root()

    def run_dir(self, run_id: str) -> Path:
        from zoo.store import safe_run_dir

        d = safe_run_dir(self.root, run_id)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def metrics(self, run_id: str, name: str | None = None) -> list[dict]:
        return []  # summaries are rank 0's business

    def _drop(self, *args, **kwargs) -> None:
        return None

    upsert_run = set_status = update_summary = log_metrics = log_metrics_many = add_results = _drop
