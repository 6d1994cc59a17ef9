"""What a report is made of: plain records read from the store, one class per kind of row.

The loaders in `zoo.report.load` fill these from `zoo.store.Store`; figures, tables and
text only ever read these records, so each number on the page goes back to one run id
and one store row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Run:
    """One training run and what the trainer recorded about it."""

    run_id: str
    label: str                       # what the report compares: the mixer, or the layer pattern of a hybrid
    mixers: list[str]                # registry names in the layer pattern
    status: str                      # pending | running | done | failed
    reason: str | None = None        # why it failed, when it did
    config: dict[str, Any] = field(default_factory=dict)
    params: int | None = None
    non_embedding_params: int | None = None  # params less the (tied) embedding: what scaling laws count
    train_len: int | None = None     # training context in tokens (the largest, under a length schedule)
    steps: int | None = None
    tokens: float | None = None      # training tokens seen
    flops: float | None = None       # training FLOPs (model estimate x tokens)
    tokens_per_s: float | None = None
    tokens_per_s_range: tuple[float, float, int] | None = None  # 10th and 90th percentile over n log intervals
    mfu: float | None = None         # model FLOPs utilisation, fraction of the stated peak
    peak_flops: float | None = None  # the peak the MFU divides by
    peak_source: str | None = None   # where that peak comes from, or why there is none
    peak_mem: float | None = None    # bytes
    final_loss: float | None = None
    evals: dict[str, float] = field(default_factory=dict)  # held-out metrics at the end (eval_loss, eval_acc)
    wall_s: float | None = None
    seed: int | None = None
    backends: dict[str, str] = field(default_factory=dict)  # mixer -> backend that ran
    device: str | None = None
    host: str | None = None
    commit: str | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    started: str | None = None
    finished: str | None = None
    run_dir: str | None = None
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, tokens, loss)
    # held-out answer accuracy during training, where the task scores first answer tokens apart
    # (HashHop): (step, tokens, eval_acc, eval_first_acc)
    answer_curve: list[tuple[int, float, float, float]] = field(default_factory=list)
    max_length: int | None = None    # the model's max_length (None = unbounded)
    state_bytes: dict[int, float] = field(default_factory=dict)  # context -> cache/state bytes (batch 1, bf16)
    state_reason: str | None = None  # why state sizes could not be computed


@dataclass
class HashHopCell:
    """HashHop exact match of one run at one (length, hops, chain-of-thought) cell."""

    run_id: str
    length: int                      # tokens fed (prompt and completion): the context the model saw
    hops: int
    cot: bool
    n: int = 0                       # scored queries
    correct: float = 0.0
    accuracy: float | None = None
    low: float | None = None         # Wilson 95% interval
    high: float | None = None
    greedy_accuracy: float | None = None
    greedy_n: int | None = None
    char_accuracy: float | None = None
    nll: float | None = None
    depth: list[tuple[float | None, int]] = field(default_factory=list)  # per depth bin: (accuracy, n)
    hop_accuracy: list[float] = field(default_factory=list)              # chain of thought: per hop
    status: str = "ok"               # ok | n/a
    reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # the rest of the store row (grid settings, timings)
    n_chars: int | None = None       # the grid point (problem size in characters) the cell belongs to

    @property
    def point(self) -> int:
        """Cells of one grid point (all hop counts and CoT modes) pool together."""
        return self.n_chars if self.n_chars is not None else self.length


@dataclass
class PplPoint:
    """Perplexity of one run at one evaluation length."""

    run_id: str
    length: int | None               # None: a scaling the model could not take (the reason says why)
    ppl: float | None
    loss: float | None = None
    low: float | None = None   # 95% interval of the perplexity over windows (None: one window, or older rows)
    high: float | None = None
    tokens: int | None = None
    stride: int | None = None
    status: str = "ok"
    reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchPoint:
    """One speed/memory measurement: our mixer or a peer kernel at one sequence length."""

    name: str                        # mixer registry name, or the peer kernel's name
    seq_len: int
    mode: str = "fwd"                # fwd | fwdbwd | decode
    peer: bool = False
    peer_of: str | None = None       # the mixer a peer kernel stands beside
    tokens_per_s: float | None = None
    ms: float | None = None
    tflops: float | None = None
    peak_mem: float | None = None    # bytes
    backend: str | None = None
    device: str | None = None
    dtype: str | None = None
    status: str = "ok"               # ok | oom | n/a | error
    reason: str | None = None
    run_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ceiling:
    device: str
    matmul_tflops: float | None = None
    copy_gbps: float | None = None
    run_id: str | None = None


@dataclass
class PendingEval:
    """An evaluation the spec plans for a finished run, with cells the store does not hold yet."""

    label: str
    run_id: str
    kind: str
    planned: int                     # cells the spec plans for this run
    missing: list[str]               # the cells not stored, each as "column=value, ..."


@dataclass
class ReportData:
    title: str
    runs: list[Run]
    hashhop: list[HashHopCell] = field(default_factory=list)
    ppl: list[PplPoint] = field(default_factory=list)
    bench: list[BenchPoint] = field(default_factory=list)
    ceilings: list[Ceiling] = field(default_factory=list)
    ppl_variants: list[tuple[str, PplPoint]] = field(default_factory=list)  # (e.g. "yarn x4", point)
    hashhop_variants: list[tuple[str, HashHopCell]] = field(default_factory=list)  # evaluation-time RoPE scalings
    spec: dict[str, Any] | None = None   # the experiment spec, when the report was built from one
    companions: dict[str, list[Run]] = field(default_factory=dict)  # companion experiment -> its runs
    other_evals: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # plugin evaluator -> its rows
    pending: list[PendingEval] = field(default_factory=list)  # planned evaluation cells not yet stored
    spec_path: str | None = None
    source: str = ""                     # how the runs were chosen (spec path, run ids or filters)
    store_root: str | None = None

    @property
    def bench_only(self) -> bool:
        """No training runs, only bench runs: a speed-and-memory report."""
        return not self.runs

    def labels(self) -> list[str]:
        """Compared entries in a stable order: the spec's order (order of first run), then bench-only mixers."""
        out: list[str] = []
        for r in self.runs:
            if r.label not in out:
                out.append(r.label)
        for b in self.bench:
            if not b.peer and b.name not in out:
                out.append(b.name)
        return out

    def runs_of(self, label: str) -> list[Run]:
        return [r for r in self.runs if r.label == label]

    def run(self, run_id: str) -> Run | None:
        return next((r for r in self.runs if r.run_id == run_id), None)
