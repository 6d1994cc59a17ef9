"""Training batches built ahead of the step that needs them.

    loader = Prefetcher(task, upcoming_keys, workers=1, depth=4, pin=True)
    batch = loader.get(key)      # usually ready; built here if the key was not foreseen
    loader.close()

A batch is a pure function of its `BatchKey` (the task's `batch` arguments), so building it
early, in another thread or process, changes nothing a run sees: a resumed run reads exactly
the batches an uninterrupted one would. `workers` = 0 builds in one background thread of
this process (enough when a batch takes a small share of a step); N > 0 in N worker processes
(spawned: they never inherit CUDA state), which keeps the training thread's interpreter free.
On CUDA the batches come back pinned, so the copy to the GPU can overlap compute.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from zoo.tasks.base import Batch, Task, get_task


@dataclass(frozen=True)
class BatchKey:
    """The arguments of one `Task.batch` call."""

    index: int  # data position: step * grad_accum + micro
    batch_size: int
    seq_len: int
    split: str
    seed: int
    knobs: dict[str, Any] = field(default_factory=dict)


def build(task: Task, key: BatchKey) -> Batch:
    return task.batch(key.index, key.batch_size, key.seq_len, split=key.split, seed=key.seed, knobs=key.knobs)


# -- worker processes --------------------------------------------------------------------------------

_TASK: Task | None = None


def _init_worker(name: str, config: dict[str, Any]) -> None:
    global _TASK
    torch.set_num_threads(1)  # the workers share the cores the run was given
    _TASK = get_task(name, config)


def _worker_build(key: BatchKey) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    b = build(_TASK, key)
    return b.tokens.numpy(), b.targets.numpy(), None if b.sources is None else b.sources.numpy()


class Prefetcher:
    """Keeps the next `depth` batches of `keys` in flight. `get(key)` returns the batch of `key`:
    the oldest one in flight when it matches (the usual case), else one built on the spot (the
    queue is dropped and refilled from `keys`, which must then continue after `key`)."""

    def __init__(self, task: Task, keys: Iterator[BatchKey], workers: int = 0, depth: int = 2, pin: bool = False):
        self.task, self.keys, self.depth, self.pin = task, keys, depth, pin
        self.procs: cf.ProcessPoolExecutor | None = None
        if workers > 0 and depth > 0:
            self.procs = cf.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                initargs=(task.name, task.config.model_dump()))
        # one thread waits on the workers (or builds) and pins, in order
        self.stager = cf.ThreadPoolExecutor(1, thread_name_prefix="zoo-data") if depth > 0 else None
        self.queue: deque[tuple[BatchKey, cf.Future]] = deque()
        self._fill()

    def _stage(self, key: BatchKey, remote: cf.Future | None) -> Batch:
        if remote is not None:
            tokens, targets, sources = remote.result()
            b = Batch(torch.from_numpy(tokens), torch.from_numpy(targets),
                      None if sources is None else torch.from_numpy(sources))
        else:
            b = build(self.task, key)
        if self.pin:
            b = Batch(b.tokens.pin_memory(), b.targets.pin_memory(),
                      None if b.sources is None else b.sources.pin_memory())
        return b

    def _fill(self) -> None:
        while self.stager is not None and len(self.queue) < self.depth:
            key = next(self.keys, None)
            if key is None:
                return
            remote = self.procs.submit(_worker_build, key) if self.procs is not None else None
            self.queue.append((key, self.stager.submit(self._stage, key, remote)))

    def get(self, key: BatchKey) -> Batch:
        if self.queue and self.queue[0][0] == key:
            _, fut = self.queue.popleft()
            batch = fut.result()
        else:  # not foreseen: drop what is in flight
            self._drop()
            batch = self._stage(key, None)
        self._fill()
        return batch

    def _drop(self) -> None:
        for _, fut in self.queue:
            fut.cancel()
        self.queue.clear()

    def close(self) -> None:
        self._drop()
        if self.stager is not None:
            self.stager.shutdown(wait=True, cancel_futures=True)
        if self.procs is not None:
            self.procs.shutdown(wait=True, cancel_futures=True)
