"""HashHop: multi-hop lookups over random hashes, and its training stream.

The format follows Magic's benchmark (magicproduct/hash-hop, MIT): a prompt of shuffled
`key = value` lines whose hashes form chains H1 -> H2 -> ... -> H(hops+1), the last pair
of each chain quoted, then a completion asking for the end of some chains:

    puJxpnvWXfPJaFfE = aXYKIWDdIQnWNvja          <- prompt: hop-1 pair
    aXYKIWDdIQnWNvja = 'TZjfHhEiuhdvBSdM'        <- prompt: last pair, quoted
    ...
    COMPLETION:\\nHops=2\\n\\nCoT=False\\n\\n
    puJxpnvWXfPJaFfE = 'TZjfHhEiuhdvBSdM'        <- completion: one line per query

Hashes are random and incompressible, so a model can only answer by storing what it read
and retrieving it. `make_one` consumes its two random streams exactly as the original
`MultiHopEval.make_one` consumes Python's and NumPy's global ones, so with seed S the
output equals the original's after `random.seed(S); np.random.seed(S)`, to the byte.

The training task (`hashhop`) packs one sample per row, `<bos> prompt \\n completion`,
and takes the loss only on answer tokens: each target's characters and its closing quote.
Its rows come from an array-built stream of the same distribution (`zoo.tasks.hashhop_stream`),
an order of magnitude faster than building strings; `HashHopTask.sample` is the reference.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import string
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator

from zoo.errors import ZooError
from zoo.tasks.base import IGNORE, SPLITS, Batch, Task, TaskConfig, register_task
from zoo.tasks.tokenizer import BOS, PAD, encode_ascii

ALPHABET = string.ascii_lowercase + string.ascii_uppercase  # 52 letters, lowercase first
HEADER = "COMPLETION:\nHops={hops}\n\nCoT={cot}\n\n"
MAX_SEED = 2**32  # NumPy's RandomState takes one 32-bit word as an integer seed
# upper bounds: a problem is built in memory, so its size must be bounded up front
MAX_CHARS = 1 << 24       # characters of one problem (16x the 1M tokens the evaluator targets)
MAX_HOPS = 64
MAX_HASH_LEN = 256
MAX_QUERIES = 1 << 20


# -- the generator ---------------------------------------------------------------------------

@dataclass
class HashHopSample:
    """One problem. `targets` maps every chain's first hash to its answer (insertion order);
    `queries` are the keys the completion asks about, in order."""

    prompt: str
    completion: str
    targets: dict[str, str]
    queries: list[str]
    hops: int
    cot: bool
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None

    @property
    def text(self) -> str:
        """The training / evaluation sequence (without the `<bos>` token)."""
        return self.prompt + "\n" + self.completion

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "completion": self.completion, "targets": self.targets,
                "queries": self.queries, "params": self.params, "seed": self.seed}


def check_params(n_chars: int, num_queries: int, hops: int, hash_len: int) -> None:
    """One readable error for each bad argument, before any randomness is drawn."""
    if not 1 <= hash_len <= MAX_HASH_LEN:
        raise ZooError(f"hash length must be from 1 to {MAX_HASH_LEN}, got {hash_len}",
                       "use --hash-len 16 as in the original")
    if not 1 <= hops <= MAX_HOPS:
        raise ZooError(f"hops must be from 1 to {MAX_HOPS}, got {hops}", "hops counts the pairs in each chain")
    if not 1 <= n_chars <= MAX_CHARS:
        raise ZooError(f"n_chars must be from 1 to {MAX_CHARS:,}, got {n_chars:,}", "the prompt size in characters")
    if not 1 <= num_queries <= MAX_QUERIES:
        raise ZooError(f"queries must be from 1 to {MAX_QUERIES:,}, got {num_queries:,}",
                       "the completion asks at least one query")
    chains = n_chains(n_chars, hops, hash_len)
    if num_queries > chains:
        need = num_queries * (2 * hash_len + 3) * hops
        raise ZooError(f"{n_chars} characters hold {chains} chains of {hops} hops, too few for {num_queries} queries",
                       f"use at least {need} characters or at most {chains} queries")


def n_chains(n_chars: int, hops: int, hash_len: int) -> int:
    """Chains in a problem of `n_chars` characters, as the original counts them: a pair
    `k = v` is taken to be 2L + 3 characters (the newline and the quotes are not counted)."""
    return math.ceil(n_chars / ((2 * hash_len + 3) * hops))


def random_hash(np_rng: np.random.RandomState, length: int) -> str:
    """One draw of `choice(52, length)` (uniform, with replacement) through the alphabet."""
    return "".join(ALPHABET[i] for i in np_rng.choice(len(ALPHABET), length))


def make_levels(chains: int, hops: int, hash_len: int, np_rng: np.random.RandomState) -> list[dict[str, str]]:
    """`levels[0]` maps each chain's first hash to its second (key drawn before value);
    `levels[i]` maps every value of level i-1, in order, to a fresh hash. Repeated keys
    overwrite, as in the original, which never checks for them."""
    levels: list[dict[str, str]] = [{}]
    for _ in range(chains):
        key = random_hash(np_rng, hash_len)
        levels[0][key] = random_hash(np_rng, hash_len)
    for _ in range(hops - 1):
        levels.append({v: random_hash(np_rng, hash_len) for v in levels[-1].values()})
    return levels


def make_one(n_chars: int, num_queries: int, hops: int, hash_len: int, cot: bool,
             rng: random.Random, np_rng: np.random.RandomState, cap_queries: bool = False) -> HashHopSample:
    """Magic's `MultiHopEval.make_one` with explicit random streams.

    `np_rng` draws the hashes, `rng` shuffles the lines and then shuffles the target items
    once more, a shuffle whose result the original discards; it only advances the stream.
    `cap_queries` (training) asks fewer queries when short hashes repeated and merged chains,
    instead of the generator's error.
    """
    check_params(n_chars, num_queries, hops, hash_len)
    levels = make_levels(n_chains(n_chars, hops, hash_len), hops, hash_len, np_rng)
    lines = []
    for i, level in enumerate(levels):
        last = i == len(levels) - 1
        lines.extend(f"{k} = '{v}'" if last else f"{k} = {v}" for k, v in level.items())

    targets: dict[str, str] = {}
    for key in levels[0]:
        chain, h = [], key
        for level in levels:
            h = level[h]
            chain.append(h)
        targets[key] = " = ".join(chain) if cot else chain[-1]

    rng.shuffle(lines)
    rng.shuffle(list(targets.items()))  # discarded: keeps the stream in step with the original
    if cap_queries:
        num_queries = min(num_queries, len(targets))
    if num_queries > len(targets):  # only when repeated hashes merged chains
        raise ZooError(f"only {len(targets)} distinct chains for {num_queries} queries (hashes repeated)",
                       "use a longer hash length or fewer queries")
    queries = list(targets)[:num_queries]
    completion = HEADER.format(hops=hops, cot=cot) + "\n".join(f"{k} = '{targets[k]}'" for k in queries) + "\n"
    params = {"n_chars": n_chars, "queries": num_queries, "hops": hops, "hash_len": hash_len, "cot": cot}
    return HashHopSample("\n".join(lines), completion, targets, queries, hops, cot, params)


def rngs(seed: int) -> tuple[random.Random, np.random.RandomState]:
    """The two streams for `seed`. For 0 <= seed < 2**32 they equal Python's and NumPy's
    global streams after `random.seed(seed); np.random.seed(seed)`; larger seeds (the
    training and evaluation streams) seed NumPy with their 32-bit words."""
    if seed < 0:
        raise ZooError(f"seed must be non-negative, got {seed}")
    if seed < MAX_SEED:
        return random.Random(seed), np.random.RandomState(seed)
    words = [(seed >> (32 * i)) & 0xFFFF_FFFF for i in range((seed.bit_length() + 31) // 32)]
    return random.Random(seed), np.random.RandomState(words)


def generate(n_chars: int, queries: int, hops: int, hash_len: int = 16, cot: bool = False,
             seed: int = 0) -> HashHopSample:
    """One sample from `seed`; equal to the original's output after seeding both globals."""
    check_params(n_chars, queries, hops, hash_len)
    sample = make_one(n_chars, queries, hops, hash_len, cot, *rngs(seed))
    sample.seed = seed
    return sample


def derived_seed(seed: int, index: int) -> int:
    """Seed of the `index`-th sample of a series that starts at `seed` (index 0 is `seed`
    itself). Derived seeds stay below 2**32, so the original generator reproduces each one."""
    if index == 0:
        return seed
    digest = hashlib.blake2b(f"hashhop-series:{seed}:{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def sample_key(seed: int, split: str, *parts: Any) -> int:
    """A seed for one sample of a stream. The split sits in the two lowest bits, so the
    train, eval and test streams never share a seed; `parts` (step, row, cell ...) are hashed."""
    if split not in SPLITS:
        raise ZooError(f"unknown split '{split}'", f"allowed: {', '.join(SPLITS)}")
    digest = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") << 2 | SPLITS[split]


# -- lengths, answer positions -------------------------------------------------------------

def target_len(hops: int, hash_len: int, cot: bool) -> int:
    return hops * hash_len + 3 * (hops - 1) if cot else hash_len


def text_len(chains: int, queries: int, hops: int, hash_len: int, cot: bool) -> int:
    """Characters of `prompt + "\\n" + completion` (exact unless repeated hashes merged chains,
    which only makes it shorter). Per chain: hops - 1 lines of 2L + 3, one of 2L + 5, and
    the newlines; per query: `k = 'target'` and a newline."""
    prompt = chains * (hops * (2 * hash_len + 4) + 2) - 1
    completion = len(HEADER.format(hops=hops, cot=cot)) + queries * (hash_len + target_len(hops, hash_len, cot) + 6)
    return prompt + 1 + completion


@dataclass
class Answer:
    """Where one query's answer sits in `sample.text`: characters [start, end) are the
    target and its closing quote; `hops` are the [start, end) of each hash of a CoT target."""

    key: str
    target: str
    start: int
    end: int
    hops: list[tuple[int, int]]
    depth: float  # mean relative position in the prompt of the chain's lines, in [0, 1)


def chance(metric: str, hash_len: int, hops: int = 1, cot: bool = False) -> float | None:
    """A query's score for a model that knows the format but not the prompt: it guesses each
    hash letter uniformly from the 52 and gets the closing quote (and, with CoT, the ` = `
    separators) right. Exact match: 52^-letters; per answer character: the mean of 1/52 per
    letter and 1 per format character; an answer's first letter: 1/52; "loss": the nats per
    answer token of that guess."""
    letters = hash_len * (hops if cot else 1)
    chars = target_len(hops, hash_len, cot) + 1  # the target and its closing quote
    p = 1 / len(ALPHABET)
    return {"accuracy": p ** letters, "char_accuracy": (letters * p + chars - letters) / chars,
            "first_accuracy": p, "loss": letters * math.log(len(ALPHABET)) / chars}.get(metric)


def parse_header(completion: str) -> tuple[int, bool]:
    lines = completion.split("\n")
    try:
        assert lines[0] == "COMPLETION:" and lines[1].startswith("Hops=") and lines[3].startswith("CoT=")
        return int(lines[1][5:]), lines[3][4:] == "True"
    except (AssertionError, IndexError, ValueError):
        raise ZooError("completion does not start with the HashHop header",
                       "expected 'COMPLETION:\\nHops=N\\n\\nCoT=True|False\\n\\n'") from None


def answers(sample: HashHopSample) -> list[Answer]:
    """Answer spans of every query line of the completion, found from the text alone, so
    samples written by the original generator score the same way as ours."""
    prompt, hops = sample.prompt, sample.hops
    pairs: dict[str, str] = {}
    line_start: dict[str, int] = {}
    pos = 0
    for line in prompt.split("\n"):
        k, sep, v = line.partition(" = ")
        if sep:
            pairs[k], line_start[k] = v.strip("'"), pos
        pos += len(line) + 1

    header = HEADER.format(hops=hops, cot=sample.cot)
    offset = len(prompt) + 1 + len(header)
    out = []
    for line in sample.completion[len(header):].split("\n"):
        if line:
            key, sep, rest = line.partition(" = '")
            if not sep or not rest.endswith("'"):
                raise ZooError(f"completion line {line[:60]!r} is not of the form k = 'target'")
            target = rest[:-1]
            start = offset + len(key) + 4
            spans, h, starts = [], start, []
            for part in target.split(" = ") if sample.cot else [target]:
                spans.append((h, h + len(part)))
                h += len(part) + 3
            node = key
            for _ in range(hops):
                if node not in line_start:
                    raise ZooError(f"query {key!r}: hash {node!r} has no line in the prompt",
                                   "the prompt and the completion do not belong together")
                starts.append(line_start[node])
                node = pairs[node]
            depth = sum(starts) / len(starts) / max(len(prompt), 1)
            out.append(Answer(key, target, start, start + len(target) + 1, spans, min(depth, 0.999999)))
        offset += len(line) + 1
    return out


def tokens_and_mask(sample: HashHopSample) -> tuple[list[int], list[bool]]:
    """`<bos> + text` as token ids, and for each token whether it is an answer token."""
    ids = [BOS] + encode_ascii(sample.text)
    mask = [False] * len(ids)
    for a in answers(sample):
        mask[a.start + 1:a.end + 1] = [True] * (a.end - a.start)  # +1: the <bos> token
    return ids, mask


# -- the training task -------------------------------------------------------------------------

class HashHopConfig(TaskConfig):
    n_chars: int | None = Field(None, ge=1, le=MAX_CHARS, description="problem size in characters (the original's "
                                "n_chars); None fills the sequence length with as many chains as fit")
    hops: list[int] = Field(default_factory=lambda: [1, 2], min_length=1,
                            description="hop counts, one drawn uniformly per sample")
    hash_len: int = Field(16, ge=1, le=MAX_HASH_LEN, description="characters per hash")
    queries: int | None = Field(None, ge=1, le=MAX_QUERIES, description="queries per sample (capped at the chains); "
                                "None asks all")
    cot_prob: float = Field(0.0, ge=0.0, le=1.0, description="fraction of samples with chain of thought")
    long_frac: float = Field(1.0, ge=0.0, le=1.0,
                             description="fraction of samples at the full size; the rest are uniformly shorter")
    min_chars: int = Field(64, ge=1, le=MAX_CHARS, description="smallest problem size of the shorter samples")

    @field_validator("hops")
    @classmethod
    def _hops_positive(cls, v: list[int]) -> list[int]:
        if any(not 1 <= h <= MAX_HOPS for h in v):
            raise ValueError(f"every hop count must be from 1 to {MAX_HOPS}")
        return v


@register_task
class HashHopTask(Task):
    """One HashHop sample per row, padded; loss only on answer tokens. Its batches carry
    `sources` (see `Batch`): where each answer character sits in the prompt, filled for rows
    without chain of thought (`hashhop_stream.fill_row`).

    Knobs (scheduled settings) override config fields per step: `n_chars`, `hops` (an int
    or a list to mix), `cot_prob`, `long_frac`, `queries`.
    """

    name = "hashhop"
    Config = HashHopConfig
    answer_spans = True  # a value's first letter needs its key matched; the rest can be copied

    def __init__(self, config: HashHopConfig | None = None):
        super().__init__(config)
        from zoo.tasks.hashhop_stream import StreamStats

        self.stats = StreamStats()  # problems drawn by `batch`, and those redrawn for a repeated hash

    def settings(self, knobs: dict[str, Any] | None) -> dict[str, Any]:
        s = self.config.model_dump()
        for k, v in (knobs or {}).items():
            if k in s:
                s[k] = [int(v)] if k == "hops" and not isinstance(v, (list, tuple)) else v
        return s

    def chance(self, metric: str, **setting: Any) -> float | None:
        """`chance` of one query; over the training mix of hop counts and CoT, "loss" and
        "char_accuracy" are weighted by answer characters (the tokens the loss is taken on)
        and exact match averaged per query."""
        s = {**self.config.model_dump(), **setting}
        hops = s["hops"] if isinstance(s["hops"], (list, tuple)) else [s["hops"]]
        cot_p = float(s["cot"]) if "cot" in setting else s["cot_prob"]
        mix = [(h, c, w / len(hops)) for h in hops for c, w in ((False, 1 - cot_p), (True, cot_p)) if w > 0]
        if metric not in ("accuracy", "char_accuracy", "first_accuracy", "loss"):
            return None
        if metric == "first_accuracy":  # a letter, whatever the hops
            return chance(metric, s["hash_len"])
        if metric == "accuracy":
            return sum(w * chance(metric, s["hash_len"], h, c) for h, c, w in mix)
        chars = [(w * (target_len(h, s["hash_len"], c) + 1), chance(metric, s["hash_len"], h, c)) for h, c, w in mix]
        return sum(n * v for n, v in chars) / sum(n for n, _ in chars)

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def max_chains(seq_len: int, hops: int, cot: bool, queries: int | None, hash_len: int) -> int:
        """Most chains whose sequence fits `seq_len` tokens (<bos> + text minus the last token)."""
        lo, hi = 0, seq_len
        while lo < hi:  # text_len grows with chains: bisect
            mid = (lo + hi + 1) // 2
            q = mid if queries is None else min(queries, mid)
            lo, hi = (mid, hi) if text_len(mid, q, hops, hash_len, cot) <= seq_len else (lo, mid - 1)
        return lo

    def plan(self, meta: np.random.Generator, seq_len: int, s: dict[str, Any]) -> tuple[int, bool, int, int]:
        """(hops, cot, chains, queries) of one row, drawn from `meta`; `s` are the step's settings."""
        hops = int(meta.choice(s["hops"]))
        cot = bool(meta.random() < s["cot_prob"])
        L = s["hash_len"]
        fit = self.max_chains(seq_len, hops, cot, s["queries"], L)  # the step's hash length (a knob may set it)
        if fit < 1:
            raise ZooError(f"a {hops}-hop HashHop sample with {L}-character hashes needs more than {seq_len} tokens",
                           "raise seq_len or lower hash_len")
        full = fit if s["n_chars"] is None else n_chains(s["n_chars"], hops, L)
        if full > fit:
            raise ZooError(f"n_chars={s['n_chars']} ({full} chains of {hops} hops) does not fit {seq_len} tokens",
                           f"at most {fit * (2 * L + 3) * hops} characters fit; raise seq_len or leave n_chars unset")
        chains = full
        if meta.random() >= s["long_frac"]:
            lo = min(n_chains(s["min_chars"], hops, L), full)
            chains = int(meta.integers(lo, full + 1))
        return hops, cot, chains, chains if s["queries"] is None else min(s["queries"], chains)

    def sample(self, key: int, seq_len: int, knobs: dict[str, Any] | None = None) -> HashHopSample:
        """The row of stream key `key` (see `sample_key`) as the generator makes it (`make_one`):
        the reference the fast stream of `batch` is checked against."""
        s = self.settings(knobs)
        hops, cot, chains, q = self.plan(np.random.default_rng(key), seq_len, s)
        L = s["hash_len"]
        out = make_one(chains * (2 * L + 3) * hops, q, hops, L, cot, *rngs(key), cap_queries=True)
        out.seed = key
        return out

    def batch(self, step: int, batch_size: int, seq_len: int, split: str = "train", seed: int = 0,
              knobs: dict[str, Any] | None = None) -> Batch:
        """Rows from the array-built stream (`zoo.tasks.hashhop_stream`): row r is a pure function
        of (seed, split, step, r) and the step's knobs."""
        from zoo.tasks.hashhop_stream import fill_row

        s = self.settings(knobs)
        tokens = np.full((batch_size, seq_len), PAD, dtype=np.int64)
        targets = np.full((batch_size, seq_len), IGNORE, dtype=np.int64)
        sources = np.full((batch_size, seq_len), -1, dtype=np.int64)
        for row in range(batch_size):
            rng = np.random.default_rng(sample_key(seed, split, step, row))
            hops, cot, chains, q = self.plan(rng, seq_len, s)
            fill_row(tokens[row], targets[row], rng, chains, q, hops, s["hash_len"], cot, self.stats, sources[row])
        return Batch(torch.from_numpy(tokens), torch.from_numpy(targets), torch.from_numpy(sources))
