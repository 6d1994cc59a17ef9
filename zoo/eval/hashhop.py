"""The HashHop evaluator: exact match per query over a grid of lengths, hops and CoT modes.

    grid = HashHopGrid(n_chars=[4000, 64000, 1_000_000], hops=[1, 2], cot=[False, True], samples=8)
    results = evaluate(model, grid)          # {"grid": ..., "model": ..., "cells": [...]}

Scoring (the metrics are ours; the format is Magic's, see `zoo.tasks.hashhop`):

- teacher-forced exact match: a query is right when every answer token (the target's
  characters and its closing quote) is the argmax given the gold prefix. One forward pass
  over `<bos> prompt \\n completion` scores every query of a sample.
- greedy exact match on a subset (`greedy_samples` per cell): from the cache at the start
  of each answer, decode argmax tokens until the closing quote, on a copy of the cache so
  the teacher-forced pass goes on undisturbed; reported with its agreement with the above.
- chain of thought: per-hop accuracy (the hop's hash exactly right) and the hop depth
  reached (leading hops right).
- character accuracy and answer NLL (nats per answer token).
- accuracy by depth: a chain's depth is the mean relative position of its lines in the
  prompt; 10 equal bins, for length x depth heatmaps.
- every accuracy carries a 95% interval by the sampling unit: the queries of one sample
  share its haystack, so they are not independent. `zoo.stats.clustered` resamples whole
  samples (a seeded cluster bootstrap) for the design effect and gives Wilson's interval at
  the effective number of queries; character accuracy, per-hop, greedy and depth-bin
  accuracies likewise. Cells are never pooled across hop counts or modes here.

Inputs run through the mixers' caches in chunks, so memory is bounded by the cache, not
by the logits. A model whose `max_length` is below a cell's length gets that cell marked
"n/a" with the reason.

The model is anything with `new_cache(batch, device, dtype)`, `model(tokens [B, l], cache)
-> logits [B, l, V]` and an optional `max_length` (ZooLM is one).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from zoo.errors import LengthError, ZooError
from zoo.stats import clustered
from zoo.tasks.hashhop import (
    MAX_CHARS,
    MAX_HASH_LEN,
    MAX_HOPS,
    MAX_QUERIES,
    HashHopSample,
    answers,
    check_params,
    generate,
    n_chains,
    parse_header,
    sample_key,
    text_len,
    tokens_and_mask,
)

QUOTE = ord("'")
DEPTH_BINS = 10
MAX_REDRAWS = 100  # draws of one ambiguous sample before the cell is refused


def repeated_keys(sample: HashHopSample) -> list[str]:
    """Keys that head two lines of the prompt: with them a query has two answers. Short
    hashes make this happen (the generator, like the original, never checks)."""
    seen: set[str] = set()
    twice: list[str] = []
    for line in sample.prompt.split("\n"):
        k = line.split(" = ", 1)[0]
        if k in seen and k not in twice:
            twice.append(k)
        seen.add(k)
    return twice


def variant_name(settings: dict[str, Any]) -> str:
    """A variant's name in rows and legends: its settings, sorted, e.g. 'hsa.chunk_overlap=8'."""
    return ", ".join(f"{k.removeprefix('mixer.')}={v}" for k, v in sorted(settings.items()))


class HashHopGrid(BaseModel):
    """What to evaluate: every (n_chars, hops, cot) combination is one cell."""

    model_config = ConfigDict(extra="forbid")

    n_chars: list[int] = Field(default_factory=lambda: [1000], min_length=1,
                               description="problem sizes in characters (the original's n_chars)")
    hops: list[int] = Field(default_factory=lambda: [1, 2], min_length=1, description="hop counts")
    cot: list[bool] = Field(default_factory=lambda: [False], min_length=1, description="chain-of-thought modes")
    samples: int = Field(8, ge=1, le=1_000_000, description="samples per cell")
    queries: int = Field(5, ge=1, le=MAX_QUERIES, description="queries per sample (the original's num_queries)")
    hash_len: int = Field(16, ge=1, le=MAX_HASH_LEN, description="characters per hash")
    greedy_samples: int = Field(1, ge=0, le=1_000_000, description="samples per cell also decoded greedily")
    seed: int = Field(0, ge=0, lt=2**63, description="seed of the evaluation stream")
    split: Literal["eval", "test"] = Field("eval", description="seed stream, disjoint from training's")
    chunk_size: int | None = Field(None, ge=1, le=1 << 24, description="tokens per chunk through the caches "
                                   "(default: the model's chunk_size, else 8192)")
    batch_tokens: int = Field(65536, ge=1, le=1 << 30, description="samples of a cell are batched up to this many "
                              "tokens")
    variants: list[dict[str, Any]] = Field(default_factory=list, description="evaluation-time settings of the "
                                           "trained model's layers, each a table of `mixer.MIXER.SETTING` = value "
                                           "(the schedules' names, e.g. {'mixer.hsa.top_k' = 16}): every cell is "
                                           "evaluated as trained and again under each")

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for settings in v:
            if not settings:
                raise ValueError("a variant sets nothing; give it at least one mixer.MIXER.SETTING")
            for k in settings:
                parts = k.split(".")
                if len(parts) != 3 or parts[0] != "mixer" or not all(parts[1:]):
                    raise ValueError(f"variant key '{k}' must be mixer.MIXER.SETTING, e.g. mixer.hsa.top_k")
        if len({variant_name(x) for x in v}) != len(v):
            raise ValueError("two variants set the same values")
        return v

    @field_validator("n_chars")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if any(not 1 <= x <= MAX_CHARS for x in v):
            raise ValueError(f"sizes must be from 1 to {MAX_CHARS:,} characters")
        return v

    @field_validator("hops")
    @classmethod
    def _hops(cls, v: list[int]) -> list[int]:
        if any(not 1 <= x <= MAX_HOPS for x in v):
            raise ValueError(f"hop counts must be from 1 to {MAX_HOPS}")
        return v

    def cells(self) -> list[tuple[int, int, bool]]:
        return [(n, h, c) for n in self.n_chars for h in self.hops for c in self.cot]

    def check(self) -> None:
        """Every cell can hold the queries (one readable error otherwise)."""
        for n, h, _ in self.cells():
            check_params(n, self.queries, h, self.hash_len)

    def cell_samples(self, n_chars: int, hops: int, cot: bool, redrawn: list[int] | None = None
                     ) -> Iterator[HashHopSample]:
        """The cell's samples. One whose prompt has a key on two lines (short hashes repeat) has
        two answers and is drawn again from a seed of its own; `redrawn` collects their indices."""
        for i in range(self.samples):
            for attempt in range(MAX_REDRAWS):
                extra = ("redraw", attempt) if attempt else ()
                key = sample_key(self.seed, self.split, "hashhop-eval", n_chars, hops, cot, self.hash_len,
                                 self.queries, i, *extra)
                s = generate(n_chars, self.queries, hops, self.hash_len, cot, seed=key)
                if not repeated_keys(s):
                    break
                if redrawn is not None and not attempt:
                    redrawn.append(i)
            else:
                raise ZooError(f"HashHop cell of {n_chars} characters, {hops} hops, {self.hash_len}-character hashes: "
                               f"{MAX_REDRAWS} draws in a row put a key on two lines (ambiguous problems)",
                               "use longer hashes (hash_len) or fewer characters")
            yield s

    def chars_for_tokens(self, tokens: int) -> int:
        """The largest problem size in characters whose every cell (hop count, CoT mode) fits in
        `tokens` tokens: what "the training length" means as an `n_chars` grid point."""
        best = None
        for hops in self.hops:
            for cot in self.cot:
                per = (2 * self.hash_len + 3) * hops  # characters per chain, as the generator counts them
                chains = 0
                while text_len(chains + 1, self.queries, hops, self.hash_len, cot) <= tokens:
                    chains += 1
                if chains < self.queries:
                    raise ZooError(f"{tokens} tokens hold {chains} chains of {hops} hops with "
                                   f"{self.hash_len}-character hashes, too few for {self.queries} queries",
                                   "lower --queries or --hash-len, or give --n-chars in characters")
                best = chains * per if best is None else min(best, chains * per)
        return best

    def cell_tokens(self, n_chars: int, hops: int, cot: bool) -> int:
        """Tokens fed for one sample of the cell: `<bos>` + text less its last character
        (the final newline predicts nothing), i.e. the text length."""
        return text_len(n_chains(n_chars, hops, self.hash_len), self.queries, hops, self.hash_len, cot)


# -- scoring one batch of samples ----------------------------------------------------------------

@dataclass
class QueryScore:
    exact: bool
    chars_ok: int
    chars: int
    nll: float                # summed over the answer tokens
    hops_ok: list[bool]       # per hash of a CoT target; [exact target] without CoT
    depth: float
    greedy: bool | None = None
    greedy_text: str | None = None
    sample: int = 0           # which sample of the cell: the cluster its interval resamples


@dataclass
class _Pending:
    """Answer tokens of one batch, flattened: row, predicting position, gold token, query id."""

    row: torch.Tensor
    pos: torch.Tensor
    gold: torch.Tensor
    query: torch.Tensor
    correct: torch.Tensor = field(init=False)
    nll: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.correct = torch.zeros(len(self.pos), dtype=torch.bool)
        self.nll = torch.zeros(len(self.pos), dtype=torch.float64)


def model_device(model: Any) -> torch.device:
    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return p.device if p is not None else torch.device("cpu")


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _cache_dtype(model: Any, device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16
    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return p.dtype if p is not None else torch.float32


@torch.no_grad()
def score_samples(model: Any, samples: list[HashHopSample], chunk_size: int = 8192, greedy: bool = False,
                  device: torch.device | None = None) -> list[list[QueryScore]]:
    """Teacher-forced (and, with `greedy`, greedily decoded) scores of every query.

    All samples must have the same token length; they run as one batch `[B, T]`. Position
    p of the fed tokens predicts token p + 1, so an answer character at text index c (token
    c + 1 after `<bos>`) is predicted at position c.
    """
    device = device or model_device(model)
    enc = [tokens_and_mask(s) for s in samples]
    ans = [answers(s) for s in samples]
    T = len(enc[0][0])
    if any(len(ids) != T for ids, _ in enc):
        raise ValueError("score_samples needs samples of equal length")
    if greedy and len(samples) != 1:
        raise ValueError("greedy decoding runs one sample at a time")
    ids = torch.tensor([e[0] for e in enc], dtype=torch.long)

    rows, pos, gold, qid = [], [], [], []
    qbase = []
    for b, a_list in enumerate(ans):
        qbase.append(sum(len(x) for x in ans[:b]))
        for j, a in enumerate(a_list):
            for c in range(a.start, a.end):
                rows.append(b)
                pos.append(c)
                gold.append(int(ids[b, c + 1]))
                qid.append(qbase[b] + j)
    pend = _Pending(torch.tensor(rows), torch.tensor(pos), torch.tensor(gold), torch.tensor(qid))

    fed = T - 1  # the last token (a newline) predicts nothing we score
    cuts = {a.start + 1: a for a in ans[0]} if greedy else {}
    bounds = sorted(set(range(0, fed, chunk_size)) | set(cuts) | {fed})
    greedy_out: dict[int, str] = {}
    cache = model.new_cache(len(samples), device, _cache_dtype(model, device))
    tokens = ids.to(device)
    with _autocast(device):
        for s, e in zip(bounds, bounds[1:]):
            logits = model(tokens[:, s:e], cache)
            sel = ((pend.pos >= s) & (pend.pos < e)).nonzero().squeeze(1)
            if len(sel):
                lg = logits[pend.row[sel].to(device), (pend.pos[sel] - s).to(device)].float()
                g = pend.gold[sel].to(device)
                pend.correct[sel] = (lg.argmax(-1) == g).cpu()
                pend.nll[sel] = (-lg.log_softmax(-1).gather(1, g[:, None]).squeeze(1)).double().cpu()
            if e in cuts:
                greedy_out[e] = _greedy(model, copy.deepcopy(cache), logits[:, -1], len(cuts[e].target) + 1)

    out = []
    for b, a_list in enumerate(ans):
        scores = []
        for j, a in enumerate(a_list):
            m = pend.query == qbase[b] + j
            ok = pend.correct[m]
            hops_ok = [bool(ok[h0 - a.start:h1 - a.start].all()) for h0, h1 in a.hops]
            sc = QueryScore(bool(ok.all()), int(ok.sum()), int(m.sum()), float(pend.nll[m].sum()), hops_ok, a.depth)
            if greedy:
                sc.greedy_text = greedy_out[a.start + 1]
                sc.greedy = sc.greedy_text == a.target + "'"
            scores.append(sc)
        out.append(scores)
    return out


def _greedy(model: Any, cache: Any, last_logits: torch.Tensor, max_new: int) -> str:
    """Argmax decoding `[1, V]` -> up to `max_new` tokens, stopping after the closing quote."""
    out: list[int] = []
    nxt = last_logits.argmax(-1)
    while True:
        out.append(int(nxt[0]))
        if out[-1] == QUOTE or len(out) >= max_new:
            break
        nxt = model(nxt[:, None], cache)[:, -1].argmax(-1)
    return "".join(chr(t) if t < 128 else "\ufffd" for t in out)  # specials and non-ASCII never match


# -- aggregation --------------------------------------------------------------------------------

def _by_sample(scores: list[QueryScore], hit: Callable[[QueryScore], float],
               trials: Callable[[QueryScore], float] = lambda s: 1) -> dict[str, Any]:
    """`clustered` over the samples of `scores`: per sample, (sum of hit, sum of trials)."""
    per: dict[int, list[float]] = {}
    for s in scores:
        c = per.setdefault(s.sample, [0.0, 0.0])
        c[0] += hit(s)
        c[1] += trials(s)
    return clustered([tuple(per[i]) for i in sorted(per)])


def summarize(scores: list[QueryScore], hops: int, cot: bool) -> dict[str, Any]:
    """Cell metrics from its query scores, as one flat row (the results-store format):
    accuracy/low/high over n queries, greedy_*, char_*, nll, hop_* and depth_reached (CoT),
    and `depth`: per depth bin [accuracy, n] with depth_low/depth_high. Intervals resample
    samples (`zoo.stats.clustered`); `per_sample` keeps [correct, queries, chars right, chars]
    of each sample so a report can combine cells without losing the sampling unit."""
    n = len(scores)
    chars = sum(s.chars for s in scores)
    exact = _by_sample(scores, lambda s: s.exact)
    char = _by_sample(scores, lambda s: s.chars_ok, lambda s: s.chars)
    g = [s for s in scores if s.greedy is not None]
    greedy = _by_sample(g, lambda s: bool(s.greedy))
    row: dict[str, Any] = {
        "n": n, "correct": int(exact["k"]), "accuracy": exact["acc"], "low": exact["lo"], "high": exact["hi"],
        "n_eff": exact["n_eff"], "interval": "cluster",
        "greedy_n": len(g), "greedy_correct": int(greedy["k"]), "greedy_accuracy": greedy["acc"],
        "greedy_low": greedy["lo"], "greedy_high": greedy["hi"],
        "greedy_agreement": sum(s.greedy == s.exact for s in g) / len(g) if g else None,
        "chars": chars, "char_accuracy": char["acc"], "char_low": char["lo"], "char_high": char["hi"],
        "nll": sum(s.nll for s in scores) / chars if chars else None,
        "hop_accuracy": [], "hop_low": [], "hop_high": [], "depth_reached": None,
    }
    if cot:
        for j in range(hops):
            w = _by_sample(scores, lambda s, j=j: s.hops_ok[j])
            row["hop_accuracy"].append(w["acc"])
            row["hop_low"].append(w["lo"])
            row["hop_high"].append(w["hi"])
        reached = [next((j for j, ok in enumerate(s.hops_ok) if not ok), hops) for s in scores]
        row["depth_reached"] = sum(reached) / n if n else None
    bins: list[list[QueryScore]] = [[] for _ in range(DEPTH_BINS)]
    for s in scores:
        bins[min(int(s.depth * DEPTH_BINS), DEPTH_BINS - 1)].append(s)
    ws = [_by_sample(b, lambda s: s.exact) for b in bins]
    row["depth"] = [[w["acc"], int(w["n"])] for w in ws]
    row["depth_low"] = [w["lo"] for w in ws]
    row["depth_high"] = [w["hi"] for w in ws]
    per: dict[int, list[int]] = {}
    for s in scores:
        c = per.setdefault(s.sample, [0, 0, 0, 0])
        c[0] += s.exact
        c[1] += 1
        c[2] += s.chars_ok
        c[3] += s.chars
    row["per_sample"] = [per[i] for i in sorted(per)]
    return row


def score_cell(model: Any, samples: list[HashHopSample], greedy_samples: int = 0, chunk_size: int = 8192,
               batch_tokens: int = 65536, device: torch.device | None = None,
               on_sample: Callable[[int], None] | None = None) -> list[QueryScore]:
    """Scores of every query of `samples`: the first `greedy_samples` one by one with
    greedy decoding, the others batched by equal length up to `batch_tokens`."""
    scores: list[QueryScore] = []
    for i, s in enumerate(samples[:greedy_samples]):
        for sc in score_samples(model, [s], chunk_size, greedy=True, device=device)[0]:
            sc.sample = i
            scores.append(sc)
        if on_sample:
            on_sample(1)
    by_len: dict[int, list[tuple[int, HashHopSample]]] = {}
    for i, s in enumerate(samples[greedy_samples:], greedy_samples):
        by_len.setdefault(len(s.text), []).append((i, s))
    for length, group in by_len.items():
        per = max(1, batch_tokens // (length + 1))
        for j in range(0, len(group), per):
            batch = group[j:j + per]
            for (i, _), sc in zip(batch, score_samples(model, [s for _, s in batch], chunk_size, device=device)):
                for q in sc:
                    q.sample = i
                scores += sc
            if on_sample:
                on_sample(len(batch))
    return scores


def model_info(model: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"class": type(model).__name__, "max_length": getattr(model, "max_length", None)}
    if hasattr(model, "parameters"):
        info["params"] = sum(p.numel() for p in model.parameters())
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "model_dump"):
        info["config"] = cfg.model_dump()
    return info


def evaluate(model: Any, grid: HashHopGrid, device: torch.device | str | None = None,
             on_sample: Callable[[int], None] | None = None,
             on_cell: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every cell of `grid` on `model`; cells past the model's `max_length` are "n/a"."""
    grid.check()
    device = torch.device(device) if device is not None else model_device(model)
    chunk = grid.chunk_size or getattr(getattr(model, "config", None), "chunk_size", None) or 8192
    max_len = getattr(model, "max_length", None)
    if hasattr(model, "eval"):
        model.eval()
    cells: list[dict[str, Any]] = []
    seconds: list[float] = []  # per cell, kept apart so cells are deterministic (store rows deduplicate)
    for n_chars, hops, cot in grid.cells():
        t0 = time.perf_counter()
        fed = grid.cell_tokens(n_chars, hops, cot)
        cell: dict[str, Any] = {"length": fed, "n_chars": n_chars, "hops": hops, "cot": cot,
                                "hash_len": grid.hash_len, "queries": grid.queries, "samples": grid.samples,
                                "seed": grid.seed, "split": grid.split}
        if max_len is not None and fed > max_len:
            cell.update(status="n/a", reason=f"needs {fed} tokens, the model runs at most {max_len}")
            if on_sample:
                on_sample(grid.samples)
        else:
            redrawn: list[int] = []
            samples = list(grid.cell_samples(n_chars, hops, cot, redrawn))
            if redrawn:  # only then: cells without ambiguous draws keep their stored form
                cell["redrawn"] = len(redrawn)
            try:
                scores = score_cell(model, samples, min(grid.greedy_samples, grid.samples), chunk,
                                    grid.batch_tokens, device, on_sample)
            except LengthError as e:  # a mixer narrower than the model's declared length
                cell.update(status="n/a", reason=e.message)
            else:
                cell.update(status="ok", reason=None, **summarize(scores, hops, cot))
        cells.append(cell)
        seconds.append(time.perf_counter() - t0)
        if on_cell:
            on_cell(cell)
    return {"kind": "hashhop", "grid": grid.model_dump(), "model": model_info(model), "device": str(device),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cells": cells, "seconds": seconds}


def evaluate_file(model: Any, path: Path, greedy_samples: int = 1, chunk_size: int = 8192,
                  device: torch.device | str | None = None,
                  on_sample: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Score samples from a JSON Lines file (ours or the original generator's: `prompt` and
    `completion` are all that is read), one cell per (hops, CoT) found in it."""
    samples = read_samples(path)
    device = torch.device(device) if device is not None else model_device(model)
    max_len = getattr(model, "max_length", None)
    groups: dict[tuple[int, int, bool], list[HashHopSample]] = {}
    for s in samples:
        groups.setdefault((len(s.text), s.hops, s.cot), []).append(s)
    cells: list[dict[str, Any]] = []
    seconds: list[float] = []
    for (length, hops, cot), group in sorted(groups.items()):
        t0 = time.perf_counter()
        cell: dict[str, Any] = {"length": length, "hops": hops, "cot": cot, "samples": len(group),
                                "source": str(path)}
        if max_len is not None and length > max_len:
            cell.update(status="n/a", reason=f"needs {length} tokens, the model runs at most {max_len}")
            if on_sample:
                on_sample(len(group))
        else:
            try:
                scores = score_cell(model, group, min(greedy_samples, len(group)), chunk_size, device=device,
                                    on_sample=on_sample)
            except LengthError as e:
                cell.update(status="n/a", reason=e.message)
            else:
                cell.update(status="ok", reason=None, **summarize(scores, hops, cot))
        cells.append(cell)
        seconds.append(time.perf_counter() - t0)
    return {"kind": "hashhop", "source": str(path), "model": model_info(model), "device": str(device),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cells": cells, "seconds": seconds}


def read_samples(path: Path) -> list[HashHopSample]:
    out = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ZooError(f"cannot read samples from {path}: {e}") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            prompt, completion = obj["prompt"], obj["completion"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ZooError(f"{path}:{i}: not a HashHop sample ({type(e).__name__}: {e})",
                           "each line needs 'prompt' and 'completion'") from None
        hops, cot = parse_header(completion)
        s = HashHopSample(prompt, completion, dict(obj.get("targets") or {}), [], hops, cot,
                          dict(obj.get("params") or {}), obj.get("seed"))
        try:
            s.queries = [a.key for a in answers(s)]
            tokens_and_mask(s)  # non-ASCII text fails here, with its position
        except ZooError as e:
            raise ZooError(f"{path}:{i}: {e.message}", e.hint) from None
        twice = repeated_keys(s)
        if twice:  # a query could have two right answers: such a problem cannot be scored
            raise ZooError(f"{path}:{i}: ambiguous problem: key '{twice[0]}' heads two lines of the prompt"
                           + (f" ({len(twice)} such keys)" if len(twice) > 1 else ""),
                           "generate the samples with longer hashes, or drop this one")
        out.append(s)
    if not out:
        raise ZooError(f"{path} holds no samples")
    return out


# -- loading a trained model ----------------------------------------------------------------------
