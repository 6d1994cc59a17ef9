"""ZooLM under torch.compile takes other paths than eagerly (q/k/v and SwiGLU's gate/up as one
GEMM each, RoPE tables computed once through `zoo::materialize`); the loss and every gradient
must still be the eager ones."""

import pytest
import torch
import torch._dynamo

from zoo.model import ModelConfig, ZooLM
from zoo.train.trainer import _loss_sum


def _loss_and_grads(model, tokens, targets, fn):
    model.zero_grad(set_to_none=True)
    loss = fn(tokens, targets)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("mixer", "backend"), [("rope", "aot_eager"), ("xpos", "aot_eager"), ("nope", "aot_eager"),
                                                ("sinusoidal", "aot_eager"), ("rope", "inductor")])
def test_compiled_step_equals_eager_step(mixer, backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ZooLM(ModelConfig(vocab_size=64, d_model=32, n_layers=2, layers=[mixer],
                              mixer_config={mixer: {"n_heads": 2}}))
    tokens, targets = torch.randint(0, 64, (2, 24)), torch.randint(0, 64, (2, 24))

    def forward_loss(x, y):
        return _loss_sum(model(x), y)[0]

    eager_loss, eager_grads = _loss_and_grads(model, tokens, targets, forward_loss)
    compiled = torch.compile(forward_loss, backend=backend, fullgraph=True)
    loss, grads = _loss_and_grads(model, tokens, targets, compiled)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == eager_grads.keys() and len(grads) == len(list(model.parameters()))
    for name, g in grads.items():
        torch.testing.assert_close(g, eager_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_compiled_projections_are_fused():
    """The compiled attention block runs q/k/v as one matmul and SwiGLU's gate/up as one: the
    traced graph holds 4 linears per layer (qkv, output, gate and up, down) plus the head."""
    torch._dynamo.reset()
    model = ZooLM(ModelConfig(vocab_size=64, d_model=32, n_layers=2, layers=["rope"],
                              mixer_config={"rope": {"n_heads": 2}}))
    explained = torch._dynamo.explain(model)(torch.randint(0, 64, (1, 16)))
    linears = sum(getattr(n.target, "__name__", "") == "linear" for g in explained.graphs for n in g.graph.nodes)
    assert explained.graph_break_count == 0
    assert linears == 2 * 4 + 1  # per layer: qkv, wo, gate+up, down; then the tied head
