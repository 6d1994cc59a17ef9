"""The training length mixture: each micro-batch at the full `seq_len` or at a shorter length,
drawn as a pure function of (seed, step, micro) so a resumed run draws the same lengths."""

from __future__ import annotations

import hashlib


def micro_seq_len(seed: int, step: int, micro: int, seq_len: int, long_fraction: float, short_seq_len: int) -> int:
    """Length of one micro-batch: `seq_len` with probability `long_fraction`, else `short_seq_len`.

    A pure function of (seed, step, micro), so a resumed run draws the same lengths."""
    if long_fraction >= 1.0 or short_seq_len >= seq_len:
        return seq_len
    h = hashlib.sha256(f"len/{seed}/{step}/{micro}".encode()).digest()
    u = int.from_bytes(h[:8], "little") / 2**64
    return seq_len if u < long_fraction else short_seq_len
