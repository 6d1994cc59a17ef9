"""Retrieval mixers: layers that, per token and KV head, select the top-K chunks of the context
they attend to. HSA (`zoo.mixers.hsa`) is the built-in one.

The protocol, `RetrievalMixer`: the mixer class declares `selections = None` (recording off),
and an instance has `chunk_size` (tokens per chunk S: chunk c holds positions [c S, (c + 1) S))
and `top_k` (chunks selected per token and KV head). While `selections` is a list (recording
on), every forward call appends `(start, ids, weights)`:

    start   position of the call's first token (0 for a full forward, the cache's position
            for a chunk of a cached forward)
    ids     `[B, L, Hkv, K]` int64, the chunks token start + t selected for each KV head;
            -1 marks an empty slot (fewer than K chunks visible)
    weights `[B, L, Hkv, K]` float32, the weight each selected chunk's attention output gets in
            the layer's output (HSA: its fusion weights), 0 on empty slots

and a mixer whose selection is the top-K of dot products may append `(start, ids, weights, qr,
lmk)`: the scores' two sides, qr `[B, L, Hkv, Dr]` for the call's tokens and lmk `[B, C, Hkv, Dr]`
for every chunk complete by the end of the call, so a chunk's score at token t is qr[t] . lmk[c]
(`zoo.eval.recall` ranks the wanted chunk among all visible ones with it; HSA records both).

    with record_selections(retrieval_layers(model)) as picked:   # {layer index: [(start, ids, weights), ...]}
        model(tokens, cache)

Recording costs nothing while off: one attribute read per call, `None` in every training step,
so a compiled training graph never sees it. Turn it on for evaluation only, in eager mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

from zoo.errors import ZooError

Selection = tuple  # (first position, ids, weights), each [B, L, Hkv, K]; optionally then qr and lmk


@runtime_checkable
class RetrievalMixer(Protocol):
    chunk_size: int
    top_k: int
    selections: list[Selection] | None


def is_retrieval(module: Any) -> bool:
    """Whether a mixer (instance or class) selects chunks and can record its selections."""
    if isinstance(module, type):
        return hasattr(module, "selections")
    return isinstance(module, RetrievalMixer)


def retrieval_mixer_names() -> list[str]:
    """Registered mixers whose class is a retrieval mixer."""
    from zoo import registry

    return [s.name for s in registry.specs() if is_retrieval(s.cls)]


def retrieval_layers(model: Any) -> list[tuple[int, Any]]:
    """(layer index, mixer) of every retrieval layer of a ZooLM (anything with `mixers`)."""
    return [(i, m) for i, m in enumerate(getattr(model, "mixers", None) or []) if is_retrieval(m)]


def no_retrieval_reason(model: Any) -> str:
    """One line: why a model has nothing to record, and what would."""
    names = [getattr(getattr(m, "spec", None), "name", type(m).__name__)
             for m in getattr(model, "mixers", None) or []]
    pattern = ", ".join(dict.fromkeys(names)) or type(model).__name__
    allowed = ", ".join(retrieval_mixer_names()) or "none registered"
    return f"no retrieval layer: the model's layers are {pattern}, the retrieval mixers {allowed}"


def require_retrieval_layers(model: Any) -> list[tuple[int, Any]]:
    """`retrieval_layers`, or a one-line ZooError naming the model's layers and the mixers allowed."""
    layers = retrieval_layers(model)
    if not layers:
        raise ZooError(no_retrieval_reason(model), "train with a retrieval mixer, e.g. layers = ['swa', 'hsa']")
    return layers


@contextmanager
def record_selections(layers: list[tuple[int, Any]]) -> Iterator[dict[int, list[Selection]]]:
    """Recording on for `layers` ((index, mixer) pairs) inside the block; yields {index: calls},
    each call's (start, ids, weights). Recording is off again afterwards, whatever happens."""
    picked: dict[int, list[Selection]] = {}
    try:
        for i, m in layers:
            picked[i] = m.selections = []
        yield picked
    finally:
        for _, m in layers:
            m.selections = None


@contextmanager
def top_k_override(layers: list[tuple[int, Any]], top_k: int | None) -> Iterator[None]:
    """Each layer selects `top_k` chunks inside the block (None: as trained); restored afterwards."""
    before = [m.top_k for _, m in layers]
    try:
        if top_k is not None:
            for _, m in layers:
                m.top_k = top_k
        yield
    finally:
        for (_, m), k in zip(layers, before):
            m.top_k = k
