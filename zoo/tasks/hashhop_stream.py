"""The HashHop training stream, built with NumPy arrays instead of strings.

`HashHopTask.batch` draws each row here. A row has the distribution of the generator's
training samples (`HashHopTask.sample`, which runs `make_one`): the same hop, CoT, chain and
query counts drawn the same way, `key = value` lines shuffled uniformly, the same text
layout and loss mask. Its random streams are its own, so rows are not byte-equal to
`make_one`'s; evaluation and `zoo hashhop generate` keep using `make_one`.

One difference on purpose: every hash of a problem is distinct. `make_one` lets a repeated
hash overwrite a line (the original never checks), which merges chains and, with short
hashes, asks about keys that sit on two lines. Here a problem with any repeated hash is
drawn again from the row's stream; `StreamStats` counts how often.

Per row (C chains of h hops, hash length L), all as arrays:

    hashes  [C, h + 1, L] letters      line j of chain c: hashes[c, j] = hashes[c, j + 1]
    lines   [C * h, 2L + 6] bytes      the last hop's value quoted, padded, then shuffled
    queries [q, ...] bytes             `key = 'target'` for the first q chains
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass

import numpy as np

from zoo.errors import ZooError
from zoo.tasks.base import IGNORE
from zoo.tasks.tokenizer import BOS

LETTERS = np.frombuffer((string.ascii_lowercase + string.ascii_uppercase).encode(), dtype=np.uint8)
SEP, QUOTE, NL = np.frombuffer(b" = ", np.uint8), ord("'"), ord("\n")
MAX_DRAWS = 64  # redraws of one problem before its settings are called impossible


@dataclass
class StreamStats:
    """Problems drawn, and those drawn again because a hash repeated."""

    problems: int = 0
    redrawn: int = 0


@functools.lru_cache(maxsize=64)
def header_bytes(hops: int, cot: bool) -> np.ndarray:
    from zoo.tasks.hashhop import HEADER

    return np.frombuffer(HEADER.format(hops=hops, cot=cot).encode(), dtype=np.uint8)


def draw_hashes(rng: np.random.Generator, chains: int, hops: int, hash_len: int,
                stats: StreamStats) -> np.ndarray:
    """`[chains, hops + 1, hash_len]` ASCII letters, every hash distinct."""
    n = chains * (hops + 1)
    if n > 52 ** min(hash_len, 8):
        raise ZooError(f"{n} distinct {hash_len}-letter hashes do not exist", "raise hash_len or lower seq_len")
    width = -(-hash_len // 8) * 8  # letters drawn in whole 8-byte words, the tail zeroed
    for _ in range(MAX_DRAWS):
        stats.problems += 1
        idx = rng.integers(0, 52, size=(n, width), dtype=np.uint8)
        idx[:, hash_len:] = 0
        words = idx.view(np.uint64)  # [n, width / 8]: equal hashes have equal words
        fp = words[:, 0].copy()
        for j in range(1, words.shape[1]):  # fold in the rest; wraps, so distinct hashes may collide (a redraw)
            fp = fp * np.uint64(0x9E3779B97F4A7C15) ^ words[:, j]
        fp.sort()
        if not (fp[1:] == fp[:-1]).any():
            return LETTERS[idx[:, :hash_len]].reshape(chains, hops + 1, hash_len)
        stats.redrawn += 1
    raise ZooError(f"{MAX_DRAWS} draws of {n} {hash_len}-letter hashes all repeated one",
                   "raise hash_len or lower seq_len")


def prompt_bytes(hashes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The shuffled `key = value` lines, each ending in a newline (the prompt and the newline
    that joins it to the completion): `[C * h * (2L + 4) + 2C]` bytes; and `[C]` the prompt
    offset of each chain's quoted last-hop value (the answer a query copies)."""
    C, h1, L = hashes.shape
    h = h1 - 1
    W = 2 * L + 6  # key, ' = ', quote, value, quote, newline
    lines = np.zeros((C, h, W), dtype=np.uint8)
    lines[:, :, :L] = hashes[:, :-1]
    lines[:, :, L:L + 3] = SEP
    lines[:, :, L + 3:2 * L + 3] = hashes[:, 1:]  # unquoted lines: value right after ' = '
    lines[:, :, 2 * L + 3] = NL
    last = lines[:, h - 1]
    last[:, L + 3] = QUOTE
    last[:, L + 4:2 * L + 4] = hashes[:, h]
    last[:, 2 * L + 4] = QUOTE
    last[:, 2 * L + 5] = NL
    width = np.full((C, h), 2 * L + 4, dtype=np.int64)
    width[:, h - 1] = W
    keep = np.arange(W) < width[..., None]  # [C, h, W]
    order = rng.permutation(C * h)
    starts = np.zeros(C * h, dtype=np.int64)  # prompt offset of each line, in chain-major order
    starts[order] = np.concatenate([[0], np.cumsum(width.reshape(-1)[order])[:-1]])
    value_at = starts.reshape(C, h)[:, h - 1] + L + 4  # after key, ' = ' and the opening quote
    return lines.reshape(C * h, W)[order][keep.reshape(C * h, W)[order]], value_at


def completion_bytes(hashes: np.ndarray, queries: int, cot: bool) -> tuple[np.ndarray, np.ndarray]:
    """Header and `key = 'target'` lines for the first `queries` chains, and the answer mask
    (each target's characters and its closing quote)."""
    C, h1, L = hashes.shape
    h = h1 - 1
    q = hashes[:queries]
    if cot:  # hash_1 = hash_2 = ... = hash_h
        parts = np.zeros((queries, h, L + 3), dtype=np.uint8)
        parts[:, :, :L] = q[:, 1:]
        parts[:, :, L:] = SEP
        target = parts.reshape(queries, h * (L + 3))[:, :-3]
    else:
        target = q[:, h]
    T = target.shape[1]
    line = np.empty((queries, L + 4 + T + 2), dtype=np.uint8)
    line[:, :L] = q[:, 0]
    line[:, L:L + 3] = SEP
    line[:, L + 3] = QUOTE
    line[:, L + 4:L + 4 + T] = target
    line[:, L + 4 + T] = QUOTE
    line[:, L + 5 + T] = NL
    mask = np.zeros(line.shape, dtype=bool)
    mask[:, L + 4:L + 5 + T] = True
    head = header_bytes(h, cot)
    return (np.concatenate([head, line.reshape(-1)]),
            np.concatenate([np.zeros(head.size, dtype=bool), mask.reshape(-1)]))


def fill_row(tokens: np.ndarray, targets: np.ndarray, rng: np.random.Generator, chains: int, queries: int,
             hops: int, hash_len: int, cot: bool, stats: StreamStats, sources: np.ndarray | None = None) -> None:
    """Write one problem into a row: `tokens` = `<bos> text` minus its last token, `targets`
    the next tokens where the mask says an answer token comes, IGNORE elsewhere.

    `sources` (optional, the row's `[L]` int64, -1 where none): at each answer position t of a
    query without chain of thought, the row position of the prompt token that `targets[t]`
    copies, so `tokens[sources[t]] == targets[t]`: the characters of the chain's quoted
    last-hop value and its closing quote (the value appears once in the prompt, at any hop
    count). Rows with chain of thought stay -1: their answer spells the inner hashes, each of
    which appears twice (as one line's value and the next line's key). Filling it draws
    nothing: tokens and targets are the same with or without it."""
    hashes = draw_hashes(rng, chains, hops, hash_len, stats)
    prompt, value_at = prompt_bytes(hashes, rng)
    completion, mask = completion_bytes(hashes, queries, cot)
    n = prompt.size + completion.size  # tokens after <bos>; the row holds n of the n + 1
    if n > tokens.size:
        raise ZooError(f"a HashHop row of {n + 1} tokens does not fit {tokens.size}", "raise seq_len")
    tokens[0] = BOS
    tokens[1:prompt.size + 1] = prompt
    tokens[prompt.size + 1:n] = completion[:-1]
    start = prompt.size  # target i is token i + 1: the completion's byte j is target prompt.size + j
    targets[start:n] = np.where(mask, completion.astype(np.int64), IGNORE)
    if sources is not None and not cot:
        L, line = hash_len, 2 * hash_len + 6  # completion line: key, ' = ', quote, value, quote, newline
        head = completion.size - queries * line
        at = start + head + np.arange(queries)[:, None] * line + L + 4 + np.arange(L + 1)  # [q, L + 1]
        sources[at] = 1 + value_at[:queries, None] + np.arange(L + 1)  # token i + 1 is prompt byte i
