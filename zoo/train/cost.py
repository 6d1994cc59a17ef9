"""What a run costs before it trains: parameters, optimizer steps, tokens and FLOPs.

    steps, tokens, flops = run_budget(run_config)
    params = count_params(model_config)

The plan of an experiment prices every run with these, and the trainer counts its steps
with the same `budget`, so a plan and the run it describes never disagree. Models are built
on the meta device (no memory, no initialisation) where their mixers allow it.
"""

from __future__ import annotations

import math

from zoo.errors import ZooError
from zoo.model import ModelConfig, ZooLM, build_on_meta
from zoo.train.config import RunConfig, TrainConfig
from zoo.train.schedule import values_at


def count_params(cfg: ModelConfig, embedding: bool = True) -> int:
    """Parameters of a ZooLM (`embedding=False`: without the embedding table, which the head shares)."""
    return build_on_meta(lambda: ZooLM(cfg)).num_params(embedding)


def run_budget(run: RunConfig) -> tuple[int, float, float]:
    """(steps, tokens, FLOPs) the run will train for; see `budget`."""
    model = build_on_meta(lambda: ZooLM(run.model))
    return budget(run.train, lambda L: model.flops_per_token(L, training=True))


def lengths_at(cfg: TrainConfig, step: int) -> tuple[int, float, int]:
    """(seq_len, long_fraction, short_seq_len) at a step, after their schedules."""
    v = values_at({k: s for k, s in cfg.schedules.items() if k in ("seq_len", "long_fraction", "short_seq_len")},
                  step)
    seq_len = int(v.get("seq_len", cfg.seq_len))
    return seq_len, float(v.get("long_fraction", 1.0)), int(v.get("short_seq_len", max(2, seq_len // 2)))


def budget(cfg: TrainConfig, flops_per_token=None) -> tuple[int, float, float]:
    """(steps, expected tokens, expected FLOPs) of the budget: the first of steps, max_tokens,
    max_flops reached. Tokens and FLOPs follow the length schedule and mixture. Steps between
    two changes of the lengths are taken together, so a budget of 10**9 steps costs no more
    than its schedule has points."""
    limit = cfg.steps if cfg.steps is not None else 10**9
    tokens = flops = 0.0
    per_tok = flops_per_token or (lambda L: 0.0)
    cache: dict[int, float] = {}
    scheds = [sc for k, sc in cfg.schedules.items() if k in ("seq_len", "long_fraction", "short_seq_len")]
    step = 0
    while step < limit:
        seq_len, f, short = lengths_at(cfg, step)
        if short >= seq_len:
            f = 1.0
        for L in (seq_len, short):
            if L not in cache:
                cache[L] = per_tok(L)
                if not cache[L] >= 0:  # a mixer's estimate gone wrong would turn the FLOP budget upside down
                    raise ZooError(f"the model's FLOPs estimate at length {L} is {cache[L]}, not a count",
                                   "a mixer's flops_per_token is wrong for this config")
        seqs = cfg.batch_size * cfg.grad_accum
        t = seqs * (f * seq_len + (1 - f) * short)
        fl = seqs * (f * seq_len * cache[seq_len] + (1 - f) * short * cache[short])
        n = min([limit] + [_next_change(sc, step) for sc in scheds]) - step  # steps until the lengths change
        for have, cap, per in ((tokens, cfg.max_tokens, t), (flops, cfg.max_flops, fl)):
            if cap is not None and per > 0:
                k = max(1, math.ceil((cap - have) / per))
                if k > 1 and have + (k - 1) * per >= cap:  # the division rounded up past the step that reaches it
                    k -= 1
                n = min(n, k)
        tokens += n * t
        flops += n * fl
        step += n
        if (cfg.max_tokens is not None and tokens >= cfg.max_tokens) or \
                (cfg.max_flops is not None and flops >= cfg.max_flops):
            break
        if cfg.steps is None and step >= 10**7:
            raise ZooError("the token or FLOP budget needs more than 10 million steps", "raise batch_size")
    return step, tokens, flops


def _next_change(sched, step: int) -> int:
    """The first step after `step` at which `sched` may take another value."""
    steps = [s for s, _ in sched.points]
    if sched.interp == "linear" and steps[0] <= step < steps[-1]:
        return step + 1
    later = [s for s in steps if s > step]
    return later[0] if later else 10**18


def total_steps(cfg: TrainConfig, flops_per_token=None) -> int:
    """Optimizer steps the budget allows."""
    return budget(cfg, flops_per_token)[0]
