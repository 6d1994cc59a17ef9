"""Length extrapolation on CPU, as a sanity run: nope, alibi, rope and sinusoidal attention
trained briefly on the lm task (bytes of Python sources), then perplexity at 1x and 4x the
training length, run chunk by chunk through the caches. The numbers are printed (`pytest -s`);
only sanity is asserted: everything finite, and every model learned something at 1x."""

import math

import torch
import torch.nn.functional as F

from zoo.model import ModelConfig, ZooLM
from zoo.tasks.base import IGNORE, get_task
from zoo.tasks.tokenizer import VOCAB_SIZE

TRAIN_LEN, STEPS, BATCH = 64, 250, 8
SCHEMES = ["nope", "alibi", "rope", "sinusoidal"]


def train(task, name: str) -> ZooLM:
    torch.manual_seed(0)
    model = ZooLM(ModelConfig(d_model=48, n_layers=2, layers=[name], mixer_config={name: {"n_heads": 4}}))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(STEPS):
        b = task.batch(step, BATCH, TRAIN_LEN, split="train", seed=0)
        loss = F.cross_entropy(model(b.tokens).transpose(1, 2), b.targets, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def per_position_loss(model: ZooLM, task, length: int, batches: int = 4) -> torch.Tensor:
    """Mean held-out loss per position `[length]`, the input run through the caches in
    training-length chunks (positions continue across chunks)."""
    total = torch.zeros(length)
    for i in range(batches):
        b = task.batch(i, BATCH, length, split="eval", seed=0)
        for start, logits in model.iter_logits(b.tokens, chunk_size=TRAIN_LEN):
            tgt = b.targets[:, start:start + logits.shape[1]]
            total[start:start + logits.shape[1]] += F.cross_entropy(logits.transpose(1, 2), tgt,
                                                                   reduction="none").mean(0)
    return total / batches




def test_extrapolation_sanity(one_thread):
    task = get_task("lm", {"max_bytes": 1 << 19})
    rows = []
    for name in SCHEMES:
        model = train(task, name)
        at_1x = per_position_loss(model, task, TRAIN_LEN)
        at_4x = per_position_loss(model, task, 4 * TRAIN_LEN)
        rows.append((name, at_1x.mean().item(), at_4x.mean().item(), at_4x[TRAIN_LEN:].mean().item()))
    print(f"\nperplexity after {STEPS} steps at {TRAIN_LEN} tokens (held-out bytes of Python sources)")
    print(f"{'scheme':<12}{'1x':>10}{'4x':>10}{'4x past 1x':>12}")
    for name, one, four, past in rows:
        print(f"{name:<12}{math.exp(one):>10.2f}{math.exp(four):>10.2f}{math.exp(past):>12.2f}")
    for name, one, four, past in rows:
        assert all(math.isfinite(v) for v in (one, four, past)), name
        assert one < math.log(VOCAB_SIZE) - 1.0, f"{name} learned nothing at 1x (loss {one:.2f})"
