"""Hugging Face causal LMs through the zoo's evaluators: HashHop and perplexity vs length.

    ref = HFModelRef(name="meta-llama/Llama-3.2-1B", dtype="bfloat16")
    hf = load_hf(ref, torch.device("cuda"))
    results = evaluate_hf(hf, HashHopGrid(n_chars=[4000, 64000]))    # the rows of `zoo.eval.hashhop`
    rows = evaluate_ppl(hf, hf.encode_stream(texts), lengths, train_len)  # `zoo.eval.ppl`'s rows

The model reads HashHop text through its own tokenizer. Each sample's text is tokenized
once, with character offsets. A query's scored tokens are the tokens of that one
tokenization that overlap the answer's characters (the target and its closing quote):
exactly the tokens the model would produce after the prompt if it wrote the answer in
its own tokenization. Where the tokenizer merges the answer's first character with what
precedes it (a pre-tokenizer that joins one punctuation character to the letters after
it), the merged token is scored and the context ends before it; characters merged in
after the answer are scored with it (Llama 3 writes the closing quote and its newline as
one token). Tokenizing the answer apart from the prompt instead would score a
tokenization the model never sees in running text.

- teacher-forced exact match: every scored token is the argmax given the gold prefix;
  `chars`/`char_accuracy` of the rows count these tokens (`answer_unit` = "token").
- greedy: from the cache before a query's first scored token, argmax tokens are decoded
  to text and compared as strings with the answer (`lead` + target + quote).

Long inputs run through the model's cache (`past_key_values`, `cache` or `state`,
whichever its forward takes) in chunks, so memory is bounded by the cache. Whether the
cache continues multi-token chunks exactly is checked on a short probe when the model is
loaded; a model whose cache does not (transformers' Mamba-1 continues one token at a time
only) runs each sample in one forward, and greedy decoding starts from a fresh forward of
the query's prefix. The model's `max_position_embeddings` bounds the lengths: a cell past
it is "n/a" with the reason, unless a RoPE scaling override is given (`rope_parameters`,
transformers 5), which lifts the bound to `factor` times it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from zoo.errors import LengthError, ZooError
from zoo.eval.hashhop import HashHopGrid, QueryScore, summarize
from zoo.eval.ppl import RopeScaling
from zoo.tasks.hashhop import HashHopSample, answers

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# zoo RoPE scaling names -> transformers 5 `rope_type`; static NTK is a larger base (`ntk_theta`)
ROPE_TYPES = {"pi": "linear", "ntk": "default", "dynamic-ntk": "dynamic", "yarn": "yarn"}
CACHE_ARGS = ("past_key_values", "cache", "cache_params", "state")
INSTALL_HINT = "pip install 'mixer-zoo[hf]'"


class HFModelRef(BaseModel):
    """Which pretrained model, as the store records it (its run id is a hash of these fields)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, description="hub id (e.g. Qwen/Qwen2.5-0.5B) or a local directory")
    revision: str | None = Field(None, description="hub branch, tag or commit")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype (auto: the checkpoint's own)")
    trust_remote_code: bool = Field(False, description="run the model repository's own Python code")
    rope_scaling: RopeScaling | None = Field(None, description="RoPE scaling override (pi, ntk, dynamic-ntk, yarn)")

    def run_config(self, label: str | None = None) -> dict[str, Any]:
        """The stored run config: the reference and a label for tables."""
        return {"hf": self.model_dump(mode="json"), "label": label or self.label()}

    def run_id(self) -> str:
        from zoo.store import config_id

        return config_id({"hf": self.model_dump(mode="json")})

    def label(self) -> str:
        base = self.name.rstrip("/").split("/")[-1] if Path(self.name).exists() else self.name
        rope = f" ({self.rope_scaling.method} x{self.rope_scaling.factor:g})" if self.rope_scaling else ""
        return base + rope


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ZooError("evaluating Hugging Face models needs transformers", INSTALL_HINT) from None
    return transformers


# -- loading ----------------------------------------------------------------------------------------

def max_positions(config: Any) -> int | None:
    """The longest input the model declares, or None (recurrent models without one)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(config, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def rope_parameters(config: Any, rope: RopeScaling) -> tuple[dict[str, Any], int | None]:
    """transformers 5 `rope_parameters` for an evaluation-time scaling, and the new length bound."""
    if rope.method not in ROPE_TYPES:
        raise ZooError(f"RoPE scaling '{rope.method}' has no transformers counterpart",
                       f"for Hugging Face models use one of {', '.join(ROPE_TYPES)}")
    old = getattr(config, "rope_parameters", None)
    if not isinstance(old, dict) or not old:
        raise ZooError(f"{type(config).__name__} has no RoPE parameters to scale",
                       "--rope-scaling applies to RoPE models (Llama, Qwen, Mistral, ...)")
    if all(isinstance(v, dict) for v in old.values()):  # one set per layer type (e.g. Gemma 3)
        new = {k: _scaled(config, v, rope) for k, v in old.items()}
    else:
        new = _scaled(config, old, rope)
    trained = max_positions(config)
    return new, int(trained * rope.factor) if trained else None


def _scaled(config: Any, old: dict[str, Any], rope: RopeScaling) -> dict[str, Any]:
    theta = old.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0
    original = old.get("original_max_position_embeddings") or max_positions(config)
    out: dict[str, Any] = {"rope_type": ROPE_TYPES[rope.method], "rope_theta": theta}
    if "partial_rotary_factor" in old:
        out["partial_rotary_factor"] = old["partial_rotary_factor"]
    if rope.method == "ntk":  # NTK-aware: base * s^(d / (d - 2)) (bloc97 2023)
        d = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        d = int(d * out.get("partial_rotary_factor", 1.0))
        out["rope_theta"] = theta * rope.factor ** (d / (d - 2))
    else:
        out["factor"] = rope.factor
        if original:
            out["original_max_position_embeddings"] = original
    return out


def fingerprint(path: Path) -> str:
    """A local checkpoint's identity: a hash of its config and its files' names and sizes."""
    h = hashlib.sha256()
    for p in sorted(path.iterdir()):
        if p.is_file():
            h.update(f"{p.name}:{p.stat().st_size}\n".encode())
            if p.suffix == ".json":
                h.update(p.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class HFModel:
    """A loaded causal LM with its tokenizer, as the evaluators use it."""

    model: Any
    tokenizer: Any
    ref: HFModelRef
    device: torch.device
    max_length: int | None
    cache_arg: str | None
    chunked: bool = True                     # the cache continues multi-token chunks exactly
    keeps_logits: bool = False               # forward takes `logits_to_keep`
    source: dict[str, Any] = field(default_factory=dict)  # resolved commit or local fingerprint

    # -- the model interface of zoo.eval.ppl (`iter_logits`, `parameters`, `eval`) ----------------
    def parameters(self):
        return self.model.parameters()

    def eval(self) -> HFModel:
        self.model.eval()
        return self

    def new_state(self) -> dict[str, Any]:
        return {"cache": None, "seen": 0, "tokens": None}

    def forward(self, ids: torch.Tensor, state: dict[str, Any], keep: list[int] | None = None) -> torch.Tensor:
        """Logits `[B, l, V]` of tokens `[B, l]` after what `state` has seen (`[B, len(keep), V]`: only
        at positions `keep` of the chunk, where the model projects only those); updates `state`."""
        end = state["seen"] + ids.shape[1]
        if self.max_length is not None and end > self.max_length:
            raise LengthError(f"needs {end} tokens, {self.ref.name} runs at most {self.max_length} "
                              "(max_position_embeddings)", "pass a RoPE scaling override to go past it")
        kw: dict[str, Any] = {}
        if keep is not None and self.keeps_logits:  # a [l, V] projection per chunk is most of the memory
            kw["logits_to_keep"] = torch.tensor(keep, dtype=torch.long, device=ids.device) if keep else 1
        if state["tokens"] is not None:  # no usable cache: recompute from the start
            full = torch.cat([state["tokens"], ids], dim=1)
            logits = self.model(input_ids=full).logits[:, -ids.shape[1]:]
            state["tokens"], kw = full, {}
        else:
            if self.cache_arg and state["cache"] is not None:
                kw[self.cache_arg] = state["cache"]
            if self.cache_arg:
                kw["use_cache"] = True
            out = self.model(input_ids=ids, **kw)
            cache = getattr(out, self.cache_arg, None) if self.cache_arg else None
            if cache is None:
                state["tokens"] = ids if state["seen"] == 0 else None
                if state["tokens"] is None:
                    raise ZooError(f"{self.ref.name} returned no cache to continue from")
            state["cache"] = cache
            logits = out.logits
        if keep is not None and "logits_to_keep" not in kw:
            logits = logits[:, keep]
        elif keep == []:
            logits = logits[:, :0]
        want = (ids.shape[0], ids.shape[1] if keep is None else len(keep))
        if tuple(logits.shape[:2]) != want:
            raise ZooError(f"{type(self.model).__name__} returned logits of shape {tuple(logits.shape)} for "
                           f"tokens of shape {tuple(ids.shape)}", "a bug of the model's implementation")
        state["seen"] = end
        return logits

    def iter_logits(self, tokens: torch.Tensor, chunk_size: int | None = None,
                    dtype: torch.dtype | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """`[B, L]` through the cache in chunks (one chunk where the cache cannot continue them),
        after the BOS token where the tokenizer starts text with one; yields (start, logits chunk)."""
        bos = self.bos_id()
        if bos is not None:
            tokens = torch.cat([tokens.new_full((tokens.shape[0], 1), bos), tokens], dim=1)
        L = tokens.shape[1]
        starts = list(range(0, L, chunk_size if (chunk_size and self.chunked) else L))
        if len(starts) > 1 and L - starts[-1] == 1 and tokens.shape[0] > 1:
            starts.pop()  # transformers' RWKV mis-shapes one-token inputs of a batch > 1: no such last chunk
        state = self.new_state()
        for start, end in zip(starts, starts[1:] + [L]):
            logits = self.forward(tokens[:, start:end], state)
            if bos is None:
                yield start, logits
            else:  # the BOS position predicts the first token
                yield (0, logits[:, 1:]) if start == 0 else (start - 1, logits)

    def bos_id(self) -> int | None:
        """The token the tokenizer puts before text (as the model saw documents start), or None."""
        bos = self.tokenizer.bos_token_id
        first = self.tokenizer("a", add_special_tokens=True)["input_ids"][:1]
        return bos if bos is not None and first == [bos] else None

    def info(self) -> dict[str, Any]:
        return {"class": type(self.model).__name__, "max_length": self.max_length,
                "params": sum(p.numel() for p in self.model.parameters()), "hf": self.ref.model_dump(mode="json"),
                "tokenizer": self.tokenizer_info(), "dtype": str(next(self.model.parameters()).dtype),
                "chunked": self.chunked, "cache_arg": self.cache_arg, **self.source}

    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "") or self.ref.name

    def tokenizer_info(self) -> dict[str, Any]:
        """Which tokenizer, and a hash of its full definition (vocabulary, merges, normalization)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        spec = backend.to_str() if backend is not None else ""
        return {"name": self.tokenizer_name(), "class": type(self.tokenizer).__name__, "vocab": len(self.tokenizer),
                "sha256": hashlib.sha256(spec.encode()).hexdigest()[:16] if spec else None}

    def encode_stream(self, texts: list[str]) -> np.ndarray:
        """Documents as one token array, each followed by the tokenizer's end-of-text token."""
        eos = self.tokenizer.eos_token_id
        parts: list[int] = []
        for t in texts:
            parts += self.tokenizer(t, add_special_tokens=False)["input_ids"]
            if eos is not None:
                parts.append(eos)
        return np.asarray(parts, dtype=np.int64)


def load_hf(ref: HFModelRef, device: torch.device) -> HFModel:
    """Model and tokenizer from a local directory or the hub, or one line saying why not."""
    transformers = _transformers()
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    kw: dict[str, Any] = {"revision": ref.revision, "trust_remote_code": ref.trust_remote_code}
    local = Path(ref.name).expanduser()
    if not local.exists() and ref.name.startswith(("/", ".", "~")):  # a path, never a hub id
        raise ZooError(f"cannot load the Hugging Face model '{ref.name}': no such directory",
                       "pass a local directory written by save_pretrained, or a hub id such as Qwen/Qwen2.5-0.5B")
    if local.exists() and not (local / "config.json").is_file():
        raise ZooError(f"{ref.name} has no config.json", "pass a directory written by save_pretrained, or a hub id")
    try:
        config = _config(transformers, str(local) if local.exists() else ref.name, ref, kw)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ZooError(f"cannot load the Hugging Face model '{ref.name}': {first}",
                       "pass a local directory with config.json, or a hub id (network or the local hub cache)"
                       + ("; the repository's own code runs only with --trust-remote-code"
                          if "trust_remote_code" in str(e) else "")) from None
    auto_map = getattr(config, "auto_map", None) or {}
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and "AutoModelForCausalLM" not in auto_map:
        raise ZooError(f"'{ref.name}' ({config.model_type}) has no causal language-model head in transformers",
                       "HashHop and perplexity need a model that predicts the next token (AutoModelForCausalLM)")
    max_length = max_positions(config)
    if ref.rope_scaling is not None:
        config.rope_parameters, max_length = rope_parameters(config, ref.rope_scaling)
    dtype = DTYPES.get(ref.dtype, "auto")
    try:
        model = _model_class(transformers, config, ref).from_pretrained(
            str(local) if local.exists() else ref.name, config=config, dtype=dtype, **kw)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(local) if local.exists() else ref.name, **kw)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ZooError(f"cannot load the Hugging Face model '{ref.name}': {first}",
                       "the directory needs weights and a tokenizer (save_pretrained of both)") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ZooError(f"the tokenizer of '{ref.name}' is not a fast tokenizer",
                       "answer tokens are found through character offsets, which need a tokenizers-backed one")
    model = model.to(device).eval()
    loaded = next((k for k, v in DTYPES.items() if v == next(model.parameters()).dtype), None)
    if ref.dtype == "auto" and loaded:  # one run id for a model whether its dtype was named or not
        ref = ref.model_copy(update={"dtype": loaded})
    source = {"commit": getattr(config, "_commit_hash", None)} if not local.exists() else \
        {"fingerprint": fingerprint(local)}
    hf = HFModel(model, tokenizer, ref, device, max_length, _cache_arg(model), source=source,
                 keeps_logits="logits_to_keep" in _forward_params(model))
    hf.chunked = hf.cache_arg is not None and _continues_chunks(hf)
    return hf


def _config(transformers: Any, where: str, ref: HFModelRef, kw: dict[str, Any]) -> Any:
    """The checkpoint's config in transformers' own class for its model type, as AutoConfig maps
    it before other libraries register theirs (importing fla replaces the Mamba and RWKV configs
    and models with its own); the repository's own class where its code is trusted."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    raw, _ = transformers.PretrainedConfig.get_config_dict(where, **kw)
    name = CONFIG_MAPPING_NAMES.get(raw.get("model_type", ""))
    remote = ref.trust_remote_code and "AutoConfig" in (raw.get("auto_map") or {})
    if name and not remote and hasattr(transformers, name):
        return getattr(transformers, name).from_pretrained(where, **kw)
    return transformers.AutoConfig.from_pretrained(where, **kw)


def _model_class(transformers: Any, config: Any, ref: HFModelRef) -> Any:
    """transformers' own causal-LM class for the config (see `_config`), or the repository's own
    where its code is trusted."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
    remote = ref.trust_remote_code and "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if name and not remote and hasattr(transformers, name):
        return getattr(transformers, name)
    return transformers.AutoModelForCausalLM


def _forward_params(model: Any) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _cache_arg(model: Any) -> str | None:
    params = _forward_params(model)
    return next((k for k in CACHE_ARGS if k in params), None)


@torch.no_grad()
def _continues_chunks(hf: HFModel, n: int = 12) -> bool:
    """Whether chunks of several tokens through the cache give the full forward's logits."""
    g = torch.Generator().manual_seed(0)
    vocab = min(getattr(hf.model.config, "vocab_size", None) or len(hf.tokenizer), len(hf.tokenizer))
    ids = torch.randint(0, vocab, (1, n), generator=g).to(hf.device)
    try:
        full = hf.model(input_ids=ids).logits.float()
        state = hf.new_state()
        parts = [hf.forward(ids[:, s:e], state).float() for s, e in ((0, 5), (5, 6), (6, n))]
    except (TypeError, ValueError, RuntimeError):  # a model whose cache cannot take chunks at all
        return False
    tol = 1e-4 if next(hf.model.parameters()).dtype == torch.float32 else 3e-2
    scale = float(full.abs().max()) + 1e-6
    return float((torch.cat(parts, dim=1) - full).abs().max()) <= tol * scale


# -- HashHop ----------------------------------------------------------------------------------------

@dataclass
class AnswerTokens:
    """One query's scored tokens [t0, t1) of the sample's tokenization."""

    target: str
    t0: int
    t1: int
    lead: str                         # characters of token t0 before the answer (merged with it)
    hops: list[tuple[int, int]]       # token ranges of each hash of a CoT target
    depth: float


def _overlap(offsets: list[tuple[int, int]], s: int, e: int) -> tuple[int, int]:
    """Token range [i, j) of the non-empty tokens overlapping characters [s, e)."""
    hit = [i for i, (a, b) in enumerate(offsets) if b > a and b > s and a < e]
    if not hit:
        raise ZooError(f"no token covers characters {s}..{e} of the sample", "the tokenizer dropped them")
    return hit[0], hit[-1] + 1


def encode_sample(tokenizer: Any, sample: HashHopSample) -> tuple[list[int], list[AnswerTokens]]:
    """The sample's token ids (the tokenizer's own specials included) and each query's scored tokens."""
    text = sample.text
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    out = []
    for a in answers(sample):
        t0, t1 = _overlap(offsets, a.start, a.end)
        if t0 == 0:
            raise ZooError("an answer starts at the first token of the sample", "not a HashHop sample")
        out.append(AnswerTokens(a.target, t0, t1, text[offsets[t0][0]:a.start],
                                [_overlap(offsets, h0, h1) for h0, h1 in a.hops], a.depth))
    return ids, out


def score_sample(hf: HFModel, sample: HashHopSample, chunk_size: int, greedy: bool = False) -> list[QueryScore]:
    """Teacher-forced (and with `greedy`, greedily decoded) scores of every query of one sample."""
    return score_encoded(hf, *encode_sample(hf.tokenizer, sample), chunk_size, greedy)


@torch.no_grad()
def score_encoded(hf: HFModel, ids: list[int], ans: list[AnswerTokens], chunk_size: int,
                  greedy: bool = False) -> list[QueryScore]:
    """`score_sample` on a sample already tokenized by `encode_sample`."""
    tokens = torch.tensor([ids], dtype=torch.long, device=hf.device)
    fed = max(a.t1 for a in ans) - 1  # the last scored token is predicted at fed - 1
    want = sorted({t - 1 for a in ans for t in range(a.t0, a.t1)})
    cuts = {a.t0 for a in ans} if greedy and hf.chunked else set()
    step = chunk_size if hf.chunked else fed
    bounds = sorted(set(range(0, fed, step)) | cuts | {fed})
    pred: dict[int, int] = {}
    nll: dict[int, float] = {}
    decoded: dict[int, str] = {}
    state = hf.new_state()
    for s, e in zip(bounds, bounds[1:]):
        pos = [p for p in want if s <= p < e]
        logits = hf.forward(tokens[:, s:e], state, [p - s for p in pos] + ([e - s - 1] if e in cuts else []))
        if pos:
            lg = logits[0, :len(pos)].float()
            gold = tokens[0, torch.tensor(pos, device=hf.device) + 1]
            lp = lg.log_softmax(-1)
            for p, g, a, n in zip(pos, gold.tolist(), lg.argmax(-1).tolist(),
                                  (-lp.gather(1, gold[:, None]).squeeze(1)).tolist()):
                pred[p], nll[p] = int(a == g), n
        if e in cuts:
            decoded[e] = _greedy(hf, copy.deepcopy(state), logits[:, -1], next(a for a in ans if a.t0 == e))
    out = []
    for a in ans:
        ok = [pred[t - 1] for t in range(a.t0, a.t1)]
        sc = QueryScore(all(ok), sum(ok), len(ok), sum(nll[t - 1] for t in range(a.t0, a.t1)),
                        [all(pred[t - 1] for t in range(h0, h1)) for h0, h1 in a.hops], a.depth)
        if greedy:
            if a.t0 not in decoded:  # the cache cannot continue chunks: a fresh forward of the prefix
                st = hf.new_state()
                decoded[a.t0] = _greedy(hf, st, hf.forward(tokens[:, :a.t0], st, [a.t0 - 1])[:, -1], a)
            sc.greedy_text = decoded[a.t0]
            sc.greedy = sc.greedy_text == a.target + "'"
        out.append(sc)
    return out


def _greedy(hf: HFModel, state: dict[str, Any], last: torch.Tensor, a: AnswerTokens) -> str:
    """Argmax decoding from logits `[1, V]`; the text after `a.lead` up to its first quote
    (what the model wrote as the answer), or all of it when the lead was not written. At most
    one token per character of lead, answer and quote is decoded (every token writes one)."""
    strip = a.lead[:1].isspace()  # SentencePiece decoders drop a leading space
    lead = a.lead.lstrip() if strip else a.lead
    out: list[int] = []
    nxt = last.argmax(-1)
    while True:
        out.append(int(nxt[0]))
        text = hf.tokenizer.decode(out, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        text = text.lstrip() if strip else text
        if not text.startswith(lead[:len(text)]):
            return text
        rest = text[len(lead):] if len(text) >= len(lead) else ""
        if "'" in rest:
            return rest[:rest.index("'") + 1]
        if len(out) > len(a.lead) + len(a.target) + 1:
            return rest
        nxt = hf.forward(nxt[:, None], state)[:, -1].argmax(-1)


def score_cell(hf: HFModel, samples: list[HashHopSample], hops: int, cot: bool, greedy_samples: int,
               chunk_size: int, on_sample: Callable[[int], None] | None = None) -> dict[str, Any]:
    """One cell's row: its samples tokenized once, scored one by one (the first `greedy_samples`
    also greedily); "n/a" when its longest sample is past the model's maximum."""
    encoded = [encode_sample(hf.tokenizer, s) for s in samples]
    lengths = [len(ids) for ids, _ in encoded]
    cell: dict[str, Any] = {"length": max(lengths), "tokens_mean": sum(lengths) / len(lengths),
                            "answer_unit": "token", "tokenizer": hf.tokenizer_name()}
    if hf.max_length is not None and max(lengths) > hf.max_length:
        if on_sample:
            on_sample(len(encoded))
        return {**cell, "status": "n/a", "reason": f"needs {max(lengths)} tokens, {hf.ref.name} runs at most "
                                                   f"{hf.max_length} (max_position_embeddings)"}
    scores: list[QueryScore] = []
    try:
        for i, (ids, ans) in enumerate(encoded):
            scores += score_encoded(hf, ids, ans, chunk_size, greedy=i < greedy_samples)
            if on_sample:
                on_sample(1)
    except LengthError as e:
        return {**cell, "status": "n/a", "reason": e.message}
    return {**cell, "status": "ok", "reason": None, **summarize(scores, hops, cot)}


def evaluate_hf(hf: HFModel, grid: HashHopGrid, on_sample: Callable[[int], None] | None = None,
                on_cell: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every cell of `grid`, as `zoo.eval.hashhop.evaluate` returns them. A cell's `length` is its
    longest sample in the model's tokens; a cell past the model's maximum is "n/a"."""
    grid.check()
    hf.eval()
    cells: list[dict[str, Any]] = []
    seconds: list[float] = []
    for n_chars, hops, cot in grid.cells():
        t0 = time.perf_counter()
        cell: dict[str, Any] = {"n_chars": n_chars, "hops": hops, "cot": cot, "hash_len": grid.hash_len,
                                "queries": grid.queries, "samples": grid.samples, "seed": grid.seed,
                                "split": grid.split}
        cell.update(score_cell(hf, list(grid.cell_samples(n_chars, hops, cot)), hops, cot, grid.greedy_samples,
                               grid.chunk_size or 8192, on_sample))
        cells.append(cell)
        seconds.append(time.perf_counter() - t0)
        if on_cell:
            on_cell(cell)
    return {"kind": "hashhop", "grid": grid.model_dump(), "model": hf.info(), "device": str(hf.device),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cells": cells, "seconds": seconds}


def evaluate_hf_file(hf: HFModel, path: Path, greedy_samples: int = 1, chunk_size: int = 8192,
                     on_sample: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Samples from a JSON Lines file (ours or the original generator's), one cell per (text
    length, hops, CoT) found in it, as `zoo.eval.hashhop.evaluate_file` groups them."""
    from zoo.eval.hashhop import read_samples

    hf.eval()
    groups: dict[tuple[int, int, bool], list[HashHopSample]] = {}
    for s in read_samples(path):
        groups.setdefault((len(s.text), s.hops, s.cot), []).append(s)
    cells: list[dict[str, Any]] = []
    seconds: list[float] = []
    for (_, hops, cot), group in sorted(groups.items()):
        t0 = time.perf_counter()
        cell = {"hops": hops, "cot": cot, "samples": len(group), "source": str(path)}
        cell.update(score_cell(hf, group, hops, cot, greedy_samples, chunk_size, on_sample))
        cells.append(cell)
        seconds.append(time.perf_counter() - t0)
    return {"kind": "hashhop", "source": str(path), "model": hf.info(), "device": str(hf.device),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cells": cells, "seconds": seconds}


# -- perplexity vs length -----------------------------------------------------------------------------

def evaluate_ppl_hf(hf: HFModel, texts: list[str], lengths: list[int], **kw: Any) -> list[dict[str, Any]]:
    """`zoo.eval.ppl.evaluate_ppl` on `texts` in the model's tokens, each window after the model's
    BOS token where its tokenizer starts text with one; lengths past the model's maximum are "n/a"
    rows. Past-training rows are those beyond its own maximum (under a RoPE override)."""
    from zoo.eval.ppl import evaluate_ppl

    native = max_positions(hf.model.config)  # before any override
    extra = int(hf.bos_id() is not None)
    fits = [L for L in sorted(set(lengths)) if hf.max_length is None or L + extra <= hf.max_length]
    rows = evaluate_ppl(hf, hf.encode_stream(texts), fits, native or max(lengths), **kw) if fits else []
    for L in sorted(set(lengths) - set(fits)):
        rows.append({"length": L, "scope": "all", "status": "n/a", "stride": kw.get("stride") or L,
                     "reason": f"needs {L + extra} tokens{' with BOS' * extra}, {hf.ref.name} runs at most "
                               f"{hf.max_length} (max_position_embeddings)"})
    return rows


# -- the store --------------------------------------------------------------------------------------

def record_run(store: Any, hf: HFModel, label: str | None = None, experiment: str | None = None,
               status: str = "running") -> str:
    """The model as a run of kind "hf" in the store (idempotent; "done" once its evaluation is
    stored); returns its run id."""
    from zoo.store import provenance

    cfg = hf.ref.run_config(label)
    if experiment:
        cfg["experiment"] = experiment
    info = hf.info()
    store.upsert_run(hf.ref.run_id(), cfg, kind="hf", status=status,
                     provenance=provenance(device=hf.device, transformers=_transformers().__version__,
                                           tokenizer=info["tokenizer"], **hf.source),
                     summary={"params": info["params"], "max_length": hf.max_length, "dtype": info["dtype"],
                              "model_class": f"{type(hf.model).__module__}.{info['class']}", "chunked": hf.chunked})
    return hf.ref.run_id()


def dumps(results: dict[str, Any]) -> str:
    return json.dumps(results, indent=1, default=str)
