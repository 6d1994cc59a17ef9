"""Bench peers: the field's kernel or layer beside one of our mixers, timed at the same shapes.

A peer is registered under a name with the mixer it stands beside (`peer_of`), a one-line
description (what actually runs), `make` and `check`:

    make(mixer, device, dtype) -> module    built at the shapes of `mixer` (our layer, built)
    check(device) -> None | why             why it cannot run here (package or device missing)

The module answers what the bench calls, with x `[B, L, D]`, x1 `[B, 1, D]`:

    forward(x) -> y `[B, L, D]`             causal, like the mixer
    prefill(x, chunk, extra) -> state       a decode state holding x's L tokens, room for `extra` more
    step(state, x1) -> y1 `[B, 1, D]`       one token through that state
    state_nbytes(state) -> int              bytes the state holds
    unsupported(B, L) -> None | why         optional: shapes its kernel cannot run (one line); the
                                            bench never calls it there (an illegal memory access
                                            would take the process down), the row reads "n/a: why"

`matches_mixer` says that the module, given the mixer's weights (`load_state_dict(strict=False)`),
computes the mixer's output; `zoo check-peer NAME` (`zoo.bench.conformance`) then holds it to it.

Built-ins register when `zoo.bench.builtin_peers` is imported; a package registers more
through the entry-point group `zoo.bench_peers`, whose value names a module that calls
`register_peer` on import:

    [project.entry-points."zoo.bench_peers"]
    my-peer = "my_package.bench_peer"
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from zoo import registry
from zoo.plugins import PluginRegistry


@dataclass(frozen=True)
class Peer:
    name: str
    peer_of: str  # the registry name of the mixer it stands beside
    description: str
    make: Callable[[nn.Module, torch.device, torch.dtype], nn.Module]
    check: Callable[[torch.device], str | None] = lambda device: None
    matches_mixer: bool = False  # on the mixer's weights, the mixer's output (conformance holds it to it)
    unsupported_example: tuple[int, int] | None = None  # a (B, L) it declares it cannot run, for conformance


class PeerRegistry(PluginRegistry[Peer]):
    def ensure_loaded(self) -> None:
        # mixers first: a plugin's peer module that imports its own mixer package must find that
        # mixer already registered under its package, not register it as a built-in
        registry.MIXERS.ensure_loaded()
        super().ensure_loaded()


PEERS = PeerRegistry("zoo.bench_peers", kind="peer", builtins="zoo.bench.builtin_peers",
                     listing="zoo bench --list-peers")


def register_peer(peer: Peer) -> Peer:
    """Register `peer` under its name (a second peer of that name is an error naming both)."""
    PEERS.add(peer.name, peer)
    return peer


def peers() -> list[Peer]:
    """Every registered peer: the built-ins in their order (the bench's row order), then plugins'."""
    PEERS.ensure_loaded()
    return list(PEERS.items.values())


def peer_names() -> list[str]:
    return [p.name for p in peers()]


def get_peer(name: str) -> Peer:
    """The peer called `name`, or a one-line ZooError with the nearest names."""
    return PEERS.get(name)

