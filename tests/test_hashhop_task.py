"""The HashHop training stream and Zoology's MQAR task."""

import pytest
import torch

from zoo.errors import ZooError
from zoo.tasks.base import IGNORE, get_task
from zoo.tasks.hashhop import ALPHABET, parse_header
from zoo.tasks.tokenizer import BOS, PAD, decode


def rows(batch):
    """(text, answer characters) of every row, read back from the tokens."""
    out = []
    for tok, tgt in zip(batch.tokens, batch.targets, strict=True):
        assert tok[0] == BOS
        text = decode(tok[tok != PAD])
        out.append((text, decode(tgt[tgt != IGNORE])))
    return out


def test_batch_layout_and_loss_mask():
    task = get_task("hashhop", {"hops": [1, 2, 3], "cot_prob": 0.5})
    b = task.batch(step=3, batch_size=6, seq_len=600, split="train", seed=1)
    assert b.tokens.shape == b.targets.shape == (6, 600) and b.tokens.dtype == torch.long
    # targets are the next tokens wherever a loss is taken
    keep = b.targets[:, :-1] != IGNORE
    assert torch.equal(b.targets[:, :-1][keep], b.tokens[:, 1:][keep])
    seen_cot = set()
    for text, answer in rows(b):
        prompt, _, completion = text.partition("\nCOMPLETION:")
        hops, cot = parse_header("COMPLETION:" + completion)
        seen_cot.add(cot)
        lines = [ln for ln in ("COMPLETION:" + completion).split("\n")[5:] if ln]
        targets = [ln.partition(" = '")[2] for ln in lines]
        assert answer == "".join(targets)  # the target characters and the closing quote, nothing else
        assert len(lines) == len(prompt.split("\n")) // hops  # every chain is asked (queries=None)
        assert set(answer) <= set(ALPHABET + "' =")
    assert seen_cot == {False, True}


def test_deterministic_and_splits_disjoint():
    task = get_task("hashhop", {"hops": [2]})
    a = task.batch(5, 2, 300, "train", seed=0)
    b = task.batch(5, 2, 300, "train", seed=0)
    c = task.batch(5, 2, 300, "eval", seed=0)
    d = task.batch(6, 2, 300, "train", seed=0)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.tokens, c.tokens) and not torch.equal(a.tokens, d.tokens)


def test_fills_the_sequence_and_respects_sizes():
    task = get_task("hashhop", {"hops": [1], "queries": 4})
    b = task.batch(0, 4, 1000, seed=2)
    used = (b.tokens != PAD).sum(1)
    assert (used <= 1000).all() and (used > 1000 - 60).all()  # one more chain would not fit
    assert all(len([ln for ln in t.split("COMPLETION:")[1].split("\n") if " = '" in ln]) == 4 for t, _ in rows(b))

    small = get_task("hashhop", {"hops": [2], "n_chars": 350, "queries": 2})
    for text, _ in rows(small.batch(0, 3, 1000)):
        assert text.split("\nCOMPLETION")[0].count("\n") + 1 == 2 * 5  # ceil(350 / 70) = 5 chains of 2 lines

    mixed = get_task("hashhop", {"hops": [1], "long_frac": 0.0, "min_chars": 64})
    lengths = {int((r != PAD).sum()) for r in mixed.batch(0, 16, 2000).tokens}
    assert len(lengths) > 4 and max(lengths) <= 2000


def test_knobs_override_the_config():
    task = get_task("hashhop", {"hops": [1, 2]})
    for text, _ in rows(task.batch(0, 6, 500, knobs={"hops": 3, "cot_prob": 1.0})):
        assert "Hops=3" in text and "CoT=True" in text


def test_errors():
    with pytest.raises(ZooError, match="does not fit"):
        get_task("hashhop", {"n_chars": 5000}).batch(0, 1, 1000)
    with pytest.raises(ZooError, match="needs more than"):
        get_task("hashhop", {"hops": [4]}).batch(0, 1, 100)
    with pytest.raises(ZooError, match="hops"):
        get_task("hashhop", {"hops": [0]})
    with pytest.raises(ZooError, match="hash_len"):
        get_task("hashhop", {"hash_len": 0})


# -- MQAR ------------------------------------------------------------------------------------

def test_mqar_layout():
    V, K, L = 128, 8, 64
    task = get_task("mqar", {"vocab_size": V, "num_kv_pairs": K})
    b = task.batch(0, 16, L, seed=3)
    assert b.tokens.shape == b.targets.shape == (16, L)
    assert task.vocab_size == V and int(b.tokens.max()) < V and int(b.tokens.min()) >= 0
    for tok, tgt in zip(b.tokens.tolist(), b.targets.tolist(), strict=True):
        keys, values = tok[0:2 * K:2], tok[1:2 * K:2]
        assert len(set(keys)) == K and all(1 <= k < V // 2 for k in keys)
        assert len(set(values)) == K and all(V // 2 <= v < V for v in values)
        pairs = dict(zip(keys, values, strict=True))
        labelled = [i for i, t in enumerate(tgt) if t != IGNORE]
        assert len(labelled) == K and all(i >= 2 * K and (i - 2 * K) % 2 == 0 for i in labelled)
        assert {tok[i] for i in labelled} == set(keys)
        assert all(tgt[i] == pairs[tok[i]] for i in labelled)  # the query's target is its key's value


def test_mqar_power_law_and_determinism():
    task = get_task("mqar", {"vocab_size": 512, "num_kv_pairs": 4, "power_a": 0.01})
    b = task.batch(0, 64, 256, seed=0)
    first = (b.targets[:, 8:] != IGNORE).float().argmax(1)  # offset of the first query after the pairs
    assert first.float().median() < 40  # small a: queries crowd near the pairs
    assert torch.equal(task.batch(0, 4, 256, seed=0).tokens, b.tokens[:4])
    assert not torch.equal(task.batch(0, 4, 256, split="eval").tokens, b.tokens[:4])
    plain = get_task("mqar", {"vocab_size": 64, "num_kv_pairs": 2, "random_non_queries": False}).batch(0, 1, 16)
    assert int((plain.tokens[0, 4:] == 0).sum()) == 12 - 2


def test_mqar_errors():
    with pytest.raises(ZooError, match="at least 32 tokens"):
        get_task("mqar", {"num_kv_pairs": 8}).batch(0, 1, 16)
    with pytest.raises(ZooError, match="distinct keys"):
        get_task("mqar", {"vocab_size": 16, "num_kv_pairs": 8}).batch(0, 1, 64)


def test_short_hashes_that_merge_chains_do_not_stop_training():
    """2-character hashes repeat within a few hundred characters; the stream asks fewer queries."""
    task = get_task("hashhop", {"hash_len": 2})
    for step in range(40):
        b = task.batch(step, 4, 128)
        assert b.n_loss_tokens > 0


@pytest.mark.parametrize("config_len, knob_len", [(4, 16), (16, 4)])
def test_a_scheduled_hash_length_sizes_the_sample(config_len, knob_len):
    # the chains that fit are counted with the step's hash length, not the config's
    task = get_task("hashhop", {"hops": [1], "hash_len": config_len})
    b = task.batch(step=0, batch_size=2, seq_len=512, knobs={"hash_len": knob_len})
    for text, _ in rows(b):
        prompt = text.partition("\nCOMPLETION:")[0]
        keys = [line.partition(" = ")[0] for line in prompt.split("\n")]
        assert {len(k) for k in keys} == {knob_len}
        assert len(text) + 1 > 512 - (2 * knob_len + 5) * 2  # filled: no room for another chain and its query
