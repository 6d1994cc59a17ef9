"""`glr-loop`: a bench peer beside `short-conv-glr`, the recurrence as a plain loop over tokens.

What a user would write first: one token at a time, h_t = a_t h_{t-1} + (1 - a_t) u_t, with the
mixer's own weight names, so `zoo check-peer glr-loop` holds it to the chunked parallel form and
`zoo bench --mixers short-conv-glr` shows how much the chunks buy. Shapes: x `[B, L, D]`,
u, a, h `[B, L, E]`; the state is the last `conv_width - 1` conv inputs `[B, k-1, E]` and h `[B, E]`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.bench.peers import Peer, register_peer

MAX_TOKENS = 2**16  # a Python step per token: longer calls would hold the bench for minutes


class GLRLoop(nn.Module):
    def __init__(self, d_model: int, inner: int, conv_width: int, tau: float):
        super().__init__()
        self.inner, self.k, self.tau = inner, conv_width, tau
        self.w_in = nn.Linear(d_model, inner, bias=False)
        self.w_a = nn.Linear(d_model, inner)
        self.w_g = nn.Linear(d_model, inner, bias=False)
        self.w_out = nn.Linear(inner, d_model, bias=False)
        self.conv = nn.Parameter(torch.randn(inner, conv_width) / conv_width**0.5)

    def unsupported(self, B: int, L: int) -> str | None:
        return f"a Python loop over {L} tokens (at most {MAX_TOKENS})" if L > MAX_TOKENS else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, self.new_state(x))

    def new_state(self, x: torch.Tensor) -> dict:
        B = x.shape[0]
        return {"conv": x.new_zeros(B, self.k - 1, self.inner),
                "h": x.new_zeros(B, self.inner, dtype=torch.float32)}

    def run(self, x: torch.Tensor, state: dict) -> torch.Tensor:
        v = self.w_in(x)
        a = (F.logsigmoid(self.w_a(x).float()) / self.tau).exp()
        window, h, hs = state["conv"], state["h"], []
        for t in range(x.shape[1]):
            window = torch.cat([window, v[:, t:t + 1]], 1)       # [B, k, E]
            u = (window * self.conv.T).sum(1)                     # causal depthwise conv at t
            h = a[:, t] * h + (1 - a[:, t]) * u.float()
            hs.append(h)
            window = window[:, 1:]
        state["conv"], state["h"] = window, h
        return self.w_out(torch.stack(hs, 1).to(x.dtype) * F.silu(self.w_g(x)))

    def prefill(self, x: torch.Tensor, chunk: int, extra: int) -> dict:
        state = self.new_state(x)
        for i in range(0, x.shape[1], chunk):
            self.run(x[:, i:i + chunk], state)
        return state

    def step(self, state: dict, x1: torch.Tensor) -> torch.Tensor:
        return self.run(x1, state)

    def state_nbytes(self, state: dict) -> int:
        return sum(t.numel() * t.element_size() for t in state.values())


def make(mixer: nn.Module, device: torch.device, dtype: torch.dtype) -> GLRLoop:
    c = mixer.config
    return GLRLoop(mixer.d_model, mixer.inner, c.conv_width, c.tau)


register_peer(Peer("glr-loop", "short-conv-glr", "plain loop over tokens (example plugin)", make,
                   matches_mixer=True, unsupported_example=(1, 2**20)))
