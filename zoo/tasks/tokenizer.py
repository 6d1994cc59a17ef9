"""The byte-level tokenizer shared by every text task.

Token ids 0..255 are the UTF-8 bytes; specials follow. For ASCII text (HashHop) one
character is one token, so context sizes in characters and in tokens coincide.
"""

from __future__ import annotations

import torch

from zoo.errors import ZooError

PAD, BOS, EOS, SEP = 256, 257, 258, 259
VOCAB_SIZE = 260
SPECIALS = {"<pad>": PAD, "<bos>": BOS, "<eos>": EOS, "<sep>": SEP}


def encode(text: str, bos: bool = False, eos: bool = False) -> list[int]:
    ids = list(text.encode("utf-8"))
    return ([BOS] if bos else []) + ids + ([EOS] if eos else [])


def encode_ascii(text: str) -> list[int]:
    """Encode text that must be ASCII (one token per character), else a clear error."""
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        raise ZooError(f"character {bad!r} at position {e.start} is not ASCII",
                       "this task's tokenizer maps one ASCII character to one token") from None
    return list(data)


def decode(ids: list[int] | torch.Tensor) -> str:
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")
