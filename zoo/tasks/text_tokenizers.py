"""Real tokenizers for the `lm` task, beside the default byte level (`zoo.tasks.tokenizer`).

    "byte"          UTF-8 bytes and the zoo's specials (260 tokens); the default
    "hf:NAME"       a Hugging Face tokenizer by hub id or local directory (the hf extra)
    "bpe:N"         a byte-level BPE of N tokens trained with `tokenizers` on the corpus's
                    training split; the trainer stores it with the run as tokenizer.json

Each document is encoded and followed by the tokenizer's end-of-text token. `vocab_size`
is what the model's `vocab_size` must cover.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache

from zoo.errors import ZooError
from zoo.tasks.tokenizer import EOS, VOCAB_SIZE

HINT = "tokenizer is 'byte', 'hf:NAME_OR_PATH' or 'bpe:VOCAB_SIZE'"
BPE_EOS = "<eos>"


class TextTokenizer:
    """`encode(text) -> ids`, the end-of-text id, the vocabulary size, and a JSON definition
    to store with a run (None for the built-in byte level)."""

    def __init__(self, name: str, vocab_size: int, eos_id: int, encode: Callable[[str], list[int]],
                 definition: str | None = None):
        self.name, self.vocab_size, self.eos_id, self.encode, self.definition = (
            name, vocab_size, eos_id, encode, definition)


def check_spec(spec: str) -> str:
    kind, _, arg = spec.partition(":")
    if spec == "byte" or (kind == "hf" and arg):
        return spec
    if kind == "bpe":
        try:
            n = int(arg)
        except ValueError:
            n = 0
        if n >= 512:
            return spec
        raise ZooError(f"bad tokenizer {spec!r}: a BPE needs at least 512 tokens", "e.g. bpe:8192")
    raise ZooError(f"unknown tokenizer {spec!r}", HINT)


def get_tokenizer(spec: str, train_texts: Callable[[], list[str]]) -> TextTokenizer:
    """The tokenizer `spec` names; `train_texts` gives the corpus a BPE is trained on."""
    check_spec(spec)
    if spec == "byte":
        return TextTokenizer("byte", VOCAB_SIZE, EOS, lambda t: list(t.encode("utf-8")))
    kind, _, arg = spec.partition(":")
    if kind == "hf":
        return _hf(arg)
    return _bpe(int(arg), tuple(train_texts()))


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ZooError("this tokenizer needs the tokenizers package", "pip install 'mixer-zoo[hf]'") from None
    return tokenizers


@lru_cache(maxsize=4)
def _hf(name: str) -> TextTokenizer:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ZooError("tokenizer 'hf:...' needs transformers", "pip install 'mixer-zoo[hf]'") from None
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ZooError(f"cannot load the tokenizer '{name}': {first}",
                       "a local directory with tokenizer files, or a hub id (network or the local hub cache)") from None
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    if eos is None:
        raise ZooError(f"the tokenizer '{name}' has no end-of-text token", "documents need a separator")
    backend = getattr(tok, "backend_tokenizer", None)
    definition = json.dumps({"hf": name, "tokenizer": json.loads(backend.to_str()) if backend else None})
    return TextTokenizer(f"hf:{name}", len(tok), eos, lambda t: tok(t, add_special_tokens=False)["input_ids"],
                         definition)


@lru_cache(maxsize=2)
def _bpe(vocab_size: int, texts: tuple[str, ...]) -> TextTokenizer:
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BPE_EOS], show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return TextTokenizer(f"bpe:{vocab_size}", tok.get_vocab_size(), tok.token_to_id(BPE_EOS),
                         lambda t: tok.encode(t, add_special_tokens=False).ids, tok.to_str())
