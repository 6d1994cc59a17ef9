"""Retrieval recall: does a retrieval layer select the chunk that holds the answer?

For single-hop HashHop queries (the HashHop evaluator's samples: split "eval", the same seed,
hash length and queries per sample, so these numbers sit beside its accuracy curve), every
answer position is checked in every retrieval layer (`zoo.retrieval`, e.g. HSA): is the chunk
holding the character that position copies among the chunks that layer selected for it?

    config = RecallConfig(n_chars=[2048, 8192, 32768], samples=3)
    rows = recall_rows(model, config, 8192)   # one row per retrieval layer

- Answer positions: the fed positions whose next token is an answer character or its closing
  quote (as the HashHop evaluator scores them); position c predicts token c + 1.
- The wanted chunk: the one holding, in the prompt, the character the position copies (the
  value's characters and its closing quote, `value_sources`). Where a value straddles a chunk
  boundary its characters past the boundary want the next chunk, so a layer that finds only
  the chunk of the key's line scores a miss there (what the auxiliary retrieval loss trains).
- A trial is one (answer position, KV head): each KV head selects its own K chunks. A hit is a
  trial whose selection holds the wanted chunk. Recall = hits / trials, with a 95%
  interval by sample as the HashHop evaluator's (`zoo.stats.clustered`: the positions of one
  sample share its haystack, so Wilson's interval is taken at the effective number of trials).
- Chance: the recall of a selection of K chunks drawn uniformly from those visible at the
  position (token t sees chunk c iff (c + 1) S <= t), averaged over the trials: K / n with n
  visible (1 when n <= K, 0 when the wanted chunk is not visible yet).
- Weight: the mean, over the trials, of the weight the layer's output gives the wanted chunk
  (HSA's fusion weight; 0 when not selected). Recall can be 1 while the weight is split with
  another selected chunk, as for the characters next to the boundary of a value that straddles
  two chunks: `straddle_weight` is the mean over straddling values' characters alone.
- Miss rate: where the layer records the scores behind its selection (HSA's retrieval queries
  and landmarks), the share of the competing chunks (the visible ones other than the wanted
  one) that outscore the wanted chunk, over the trials whose wanted chunk is visible; 0.5 for
  scores at random. If each competitor wins independently with this rate p, the wanted chunk
  stays first among C competitors with probability (1 - p)^C, so p measured at one length says
  how far a layer that needs its chunk first can reach. `ranked_first`: the share of those
  trials where no competitor outscores it.
- Exact: teacher-forced exact match of the same queries, from the same forward pass; also of the
  queries whose value straddles a chunk boundary (`exact_straddling` of `asked_straddling`).

The model runs through its caches in chunks of `chunk_size` tokens, as the HashHop evaluator
runs it; a model without retrieval layers gets one "n/a" row per cell saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from zoo.errors import LengthError
from zoo.eval.hashhop import HashHopGrid, model_device, score_samples
from zoo.retrieval import no_retrieval_reason, record_selections, retrieval_layers, top_k_override
from zoo.stats import clustered
from zoo.tasks.hashhop import MAX_CHARS, MAX_HASH_LEN, MAX_QUERIES, HashHopSample, answers, check_params


class RecallConfig(BaseModel):
    """What to evaluate: one cell per problem size (single-hop HashHop, no chain of thought)."""

    model_config = ConfigDict(extra="forbid")

    n_chars: list[int] = Field(default_factory=lambda: [2048, 8192], min_length=1,
                               description="problem sizes in characters (the HashHop grid's n_chars)")
    hash_len: int = Field(16, ge=1, le=MAX_HASH_LEN, description="characters per hash")
    samples: int = Field(3, ge=1, le=100_000, description="samples per cell (the first ones of the HashHop cell)")
    queries: int = Field(5, ge=1, le=MAX_QUERIES, description="queries per sample")
    seed: int = Field(0, ge=0, lt=2**63, description="seed of the evaluation stream (as the HashHop evaluator's)")
    top_k: int | None = Field(None, ge=1, le=256, description="chunks each retrieval layer selects during this "
                              "evaluation (default: as trained)")
    chunk_size: int | None = Field(None, ge=1, le=1 << 24, description="tokens per chunk through the caches "
                                   "(default: the model's chunk_size, else 8192)")

    @field_validator("n_chars")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if any(not 1 <= x <= MAX_CHARS for x in v):
            raise ValueError(f"sizes must be from 1 to {MAX_CHARS:,} characters")
        if len(set(v)) != len(v):
            raise ValueError("sizes repeat")
        return v

    def check(self) -> None:
        for n in self.n_chars:
            check_params(n, self.queries, 1, self.hash_len)

    def grid(self, n_chars: int) -> HashHopGrid:
        """The HashHop cell whose first `samples` samples this cell scores."""
        return HashHopGrid(n_chars=[n_chars], hops=[1], cot=[False], samples=self.samples, queries=self.queries,
                           hash_len=self.hash_len, greedy_samples=0, seed=self.seed, split="eval")


def value_sources(sample: HashHopSample, key: str) -> list[int]:
    """The prompt tokens the answer to `key` copies, in order: the characters of the value of
    its line `key = 'value'` and the closing quote (token = text index + 1, after `<bos>`)."""
    pos = 0
    for line in sample.prompt.split("\n"):
        k, sep, v = line.partition(" = '")
        if sep and k == key:
            first = 1 + pos + len(k) + len(sep)
            return list(range(first, first + len(v)))  # v ends with the closing quote
        pos += len(line) + 1
    raise ValueError(f"key {key!r} heads no line of the prompt")


def chance_of(visible: int, wanted: int, k: int) -> float:
    """Recall of k chunks drawn uniformly without replacement from `visible`, `wanted` of them
    the answer's: 1 - C(visible - wanted, k) / C(visible, k)."""
    k = min(k, visible)
    if wanted <= 0 or visible <= 0:
        return 0.0
    miss = 1.0
    for j in range(k):
        miss *= max(0, visible - wanted - j) / (visible - j)
    return 1.0 - miss


def straddles(sources: list[int], chunk_size: int) -> bool:
    """Whether an answer's prompt tokens (`value_sources`) span a chunk boundary."""
    return sources[0] // chunk_size != sources[-1] // chunk_size


@dataclass
class _Counts:
    """One sample's trials in one layer: hits, chance and the weight on the wanted chunk, overall
    and over the characters of straddling values, and the exact matches of straddling queries."""

    hits: int = 0
    trials: int = 0
    straddle_trials: int = 0
    exact_straddling: int = 0  # queries whose value straddles a boundary: exact, asked
    asked_straddling: int = 0
    chance: float = 0.0
    weight: float = 0.0
    straddle_weight: float = 0.0
    ranked: int = 0  # trials whose wanted chunk is visible, in calls that record their scores
    first: int = 0  # of those, the trials where no competitor outscores the wanted chunk
    outscored: int = 0  # competitors that outscore it, summed over those trials
    competitors: int = 0  # visible chunks other than the wanted one, summed over those trials


def _rank_counts(n: _Counts, pos: torch.Tensor, want: torch.Tensor, qr: torch.Tensor, lmk: torch.Tensor,
                 chunk_size: int) -> None:
    """Add to `n` where the wanted chunk ranks among every chunk visible at each position: qr
    `[n, Hkv, Dr]` at absolute positions `pos` `[n]`, lmk `[C, Hkv, Dr]`, wanted chunk `want` `[n]`."""
    visible = pos // chunk_size  # chunks c < visible are complete before the position
    ok = want < visible
    if not ok.any():
        return
    visible, want = visible[ok], want[ok]
    scores = torch.einsum("nhd,chd->nhc", qr[ok].float(), lmk.float())  # as the selection scores them
    seen = torch.arange(scores.shape[-1])[None, None, :] < visible[:, None, None]
    mine = scores.gather(-1, want[:, None, None].expand(-1, scores.shape[1], 1))
    above = ((scores > mine) & seen).sum(-1)  # [n, Hkv]
    n.ranked += above.numel()
    n.first += int((above == 0).sum())
    n.outscored += int(above.sum())
    n.competitors += int((visible - 1).sum()) * above.shape[1]


def _sample_counts(sample: HashHopSample, calls: list[tuple], chunk_size: int,
                   top_k: int, exact: list[bool] | None = None) -> _Counts:
    """The counts of one sample's answer positions in one layer's recorded calls; `exact`, per
    query in `answers` order, whether it was answered exactly (None: not counted)."""
    pos, want, cross = [], [], []
    n = _Counts()
    for j, a in enumerate(answers(sample)):
        src = value_sources(sample, a.key)
        if len(src) != a.end - a.start:
            raise ValueError(f"answer to {a.key!r} has {a.end - a.start} positions, its prompt value {len(src)}")
        pos.extend(range(a.start, a.end))  # position c predicts token c + 1, the answer's next character
        want.extend(t // chunk_size for t in src)
        cross.extend([straddles(src, chunk_size)] * len(src))
        if exact is not None and straddles(src, chunk_size):
            n.exact_straddling += int(exact[j])
            n.asked_straddling += 1
    if not pos:
        return n
    P, W, X = torch.tensor(pos), torch.tensor(want), torch.tensor(cross)
    for start, ids, weights, *scored in calls:
        m = (P >= start) & (P < start + ids.shape[1])
        if not m.any():
            continue
        at = (P[m] - start).to(ids.device)
        if scored:  # (qr, lmk): the scores behind the selection
            qr, lmk = scored
            _rank_counts(n, P[m], W[m], qr[0, at].cpu(), lmk[0].cpu(), chunk_size)
        sel, w = ids[0, at].cpu(), weights[0, at].float().cpu()  # [n, Hkv, K]
        is_wanted = sel == W[m][:, None, None]
        hit = is_wanted.any(-1)  # [n, Hkv]
        got = (w * is_wanted).sum(-1)  # [n, Hkv]: the weight the layer gives the wanted chunk
        n.hits += int(hit.sum())
        n.trials += hit.numel()
        n.weight += float(got.sum())
        n.straddle_trials += int(X[m].sum()) * hit.shape[1]
        n.straddle_weight += float(got[X[m]].sum())
        for p, c in zip(P[m].tolist(), W[m].tolist()):
            n.chance += sel.shape[1] * chance_of(p // chunk_size, int(c < p // chunk_size), top_k)
    return n


def recall_rows(model: Any, config: RecallConfig, n_chars: int, chunk_size: int | None = None,
                device: torch.device | None = None) -> list[dict[str, Any]]:
    """The rows of one cell: one per retrieval layer (one "n/a" row when there is none, or
    one per layer when the model cannot run the cell's length)."""
    grid = config.grid(n_chars)
    fed = grid.cell_tokens(n_chars, 1, False)
    base: dict[str, Any] = {"n_chars": n_chars, "length": fed, "hash_len": config.hash_len, "samples": config.samples,
                            "queries": config.queries, "seed": config.seed, "split": "eval"}
    layers = retrieval_layers(model)
    if not layers:
        return [{**base, "layer": None, "status": "n/a", "reason": no_retrieval_reason(model)}]

    def meta(i: int, m: Any) -> dict[str, Any]:
        return {**base, "layer": i, "mixer": m.spec.name, "chunk_size": m.chunk_size,
                "top_k": config.top_k if config.top_k is not None else m.top_k}

    max_len = getattr(model, "max_length", None)
    if max_len is not None and fed > max_len:
        why = f"needs {fed} tokens, the model runs at most {max_len}"
        return [{**meta(i, m), "status": "n/a", "reason": why} for i, m in layers]
    device = torch.device(device) if device is not None else model_device(model)
    chunk = chunk_size or getattr(getattr(model, "config", None), "chunk_size", None) or 8192
    if hasattr(model, "eval"):
        model.eval()
    counts: dict[int, list[_Counts]] = {i: [] for i, _ in layers}  # per layer, per sample
    per_query: list[tuple[int, int]] = []  # per sample: (exact, queries)
    try:
        with top_k_override(layers, config.top_k), record_selections(layers) as picked:
            for sample in grid.cell_samples(n_chars, 1, False):
                for calls in picked.values():
                    calls.clear()
                scores = score_samples(model, [sample], chunk, device=device)[0]
                per_query.append((sum(s.exact for s in scores), len(scores)))
                for i, m in layers:
                    counts[i].append(_sample_counts(sample, picked[i], m.chunk_size, m.top_k,
                                                    [s.exact for s in scores]))
    except LengthError as e:  # a mixer narrower than the model's declared length
        return [{**meta(i, m), "status": "n/a", "reason": e.message} for i, m in layers]
    ex = clustered([(float(k), float(q)) for k, q in per_query])
    rows = []
    for i, m in layers:
        cs = counts[i]
        r = clustered([(float(c.hits), float(c.trials)) for c in cs])
        n, n_st = sum(c.trials for c in cs), sum(c.straddle_trials for c in cs)
        n_rk, n_cmp = sum(c.ranked for c in cs), sum(c.competitors for c in cs)
        rows.append({**meta(i, m), "status": "ok", "reason": None,
                     "hits": sum(c.hits for c in cs), "n": n, "recall": r["acc"], "low": r["lo"],
                     "high": r["hi"], "n_eff": r["n_eff"], "interval": "cluster",
                     "chance": sum(c.chance for c in cs) / n if n else None,
                     "weight": sum(c.weight for c in cs) / n if n else None,
                     "straddle_n": n_st, "straddle_weight": sum(c.straddle_weight for c in cs) / n_st if n_st else None,
                     "ranked": n_rk, "ranked_first": sum(c.first for c in cs) / n_rk if n_rk else None,
                     "miss_rate": sum(c.outscored for c in cs) / n_cmp if n_cmp else None,
                     "exact": int(ex["k"]), "asked": int(ex["n"]), "exact_accuracy": ex["acc"], "exact_low": ex["lo"],
                     "exact_high": ex["hi"], "exact_straddling": sum(c.exact_straddling for c in cs),
                     "asked_straddling": sum(c.asked_straddling for c in cs),
                     "per_sample": [[c.hits, c.trials] for c in cs]})
    return rows

