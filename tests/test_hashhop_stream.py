"""The array-built HashHop training stream against the generator's samples (`HashHopTask.sample`,
which runs `make_one`): same layout, same per-row counts, same query-depth distribution, and
never a hash on two lines."""

import numpy as np
import pytest
import torch

from zoo.errors import ZooError
from zoo.tasks.base import IGNORE, get_task
from zoo.tasks.hashhop import HashHopSample, answers, parse_header, sample_key, tokens_and_mask
from zoo.tasks.tokenizer import BOS, PAD, decode


def fast_rows(batch):
    """HashHopSample of every row, read back from its tokens, and its answer characters."""
    out = []
    for tok, tgt in zip(batch.tokens, batch.targets, strict=True):
        assert tok[0] == BOS
        text = decode(tok[tok != PAD][1:]) + "\n"  # the row drops the last token: the final newline
        prompt, _, rest = text.partition("\nCOMPLETION:")
        completion = "COMPLETION:" + rest
        hops, cot = parse_header(completion)
        keys = [ln.partition(" = ")[0] for ln in completion.split("\n")[5:] if ln]
        out.append((HashHopSample(prompt, completion, {}, keys, hops, cot), decode(tgt[tgt != IGNORE])))
    return out


def stats(s: HashHopSample) -> dict:
    lines = s.prompt.split("\n")
    return {"hops": s.hops, "cot": s.cot, "lines": len(lines), "queries": len(s.queries),
            "answer_lens": [len(a.target) for a in answers(s)]}


SETTINGS = {"hops": [1, 2, 3], "cot_prob": 0.5, "long_frac": 0.5, "min_chars": 200}


def test_rows_have_the_generators_layout_counts_and_mask():
    task = get_task("hashhop", SETTINGS)
    for step in range(3):
        b = task.batch(step, 8, 1500, seed=4)
        for row, (s, answer) in enumerate(fast_rows(b)):
            ref = task.sample(sample_key(4, "train", step, row), 1500)
            assert stats(s) == stats(ref)  # the same hops, CoT, chains, queries, answer lengths
            # the loss mask: every target's characters and its closing quote, as tokens_and_mask says
            ids, mask = tokens_and_mask(s)
            expect = [i for i, m in zip(ids[1:], mask[1:], strict=True) if m]
            assert answer == decode(expect) and len(ids) - 1 <= 1500
            # each query's answer is the end of its chain (or the whole chain with CoT)
            pairs = dict(ln.partition(" = ")[::2] for ln in s.prompt.split("\n"))
            for a in answers(s):
                chain, h = [], a.key
                for _ in range(s.hops):
                    h = pairs[h].strip("'")
                    chain.append(h)
                assert a.target == (" = ".join(chain) if s.cot else chain[-1])
    keep = b.targets[:, :-1] != IGNORE
    assert torch.equal(b.targets[:, :-1][keep], b.tokens[:, 1:][keep])


def test_query_depths_and_line_order_follow_the_generator():
    """Where the queried chains' lines sit in the prompt: both streams shuffle uniformly."""
    task = get_task("hashhop", {"hops": [2]})
    fast, ref = [], []
    for step in range(12):
        fast += [a.depth for s, _ in fast_rows(task.batch(step, 4, 1200, seed=1)) for a in answers(s)]
        ref += [a.depth for r in range(4) for a in answers(task.sample(sample_key(1, "train", step, r), 1200))]
    assert len(fast) == len(ref) > 400
    # depth is the mean of two uniform line positions: mean 1/2, sd ~0.2; the samples agree
    assert abs(np.mean(fast) - 0.5) < 0.03 and abs(np.mean(ref) - 0.5) < 0.03
    assert abs(np.std(fast) - np.std(ref)) < 0.03
    assert np.histogram(fast, bins=4, range=(0, 1))[0].min() > 0.1 * len(fast)


@pytest.mark.parametrize("hash_len", [1, 2, 16])
def test_no_hash_is_on_two_lines_and_redraws_are_counted(hash_len):
    task = get_task("hashhop", {"hops": [1, 2], "hash_len": hash_len})
    seq = 64 if hash_len == 1 else 256
    for step in range(30):
        for s, _ in fast_rows(task.batch(step, 4, seq)):
            keys = [ln.partition(" = ")[0] for ln in s.prompt.split("\n")]
            values = [ln.partition(" = ")[2].strip("'") for ln in s.prompt.split("\n")]
            assert len(set(keys)) == len(keys)  # no ambiguous lookup
            assert len(set(keys) | set(values)) == len(keys) + len(s.queries)  # chains never merge
            assert len(s.queries) == len(keys) // s.hops  # every chain asked
    assert task.stats.problems >= 120
    if hash_len <= 2:
        assert task.stats.redrawn > 0  # short hashes repeat; those problems were drawn again
    else:
        assert task.stats.redrawn == 0


def test_a_pure_function_of_seed_split_step_and_row():
    task = get_task("hashhop", SETTINGS)
    a = task.batch(7, 4, 800, "train", seed=2)
    again = get_task("hashhop", SETTINGS).batch(7, 4, 800, "train", seed=2)
    assert torch.equal(a.tokens, again.tokens) and torch.equal(a.targets, again.targets)
    assert torch.equal(a.sources, again.sources)
    wide = task.batch(7, 6, 800, "train", seed=2)  # row r does not depend on the batch size
    assert torch.equal(wide.tokens[:4], a.tokens)
    for other in (task.batch(8, 4, 800, "train", seed=2), task.batch(7, 4, 800, "eval", seed=2),
                  task.batch(7, 4, 800, "train", seed=3)):
        assert not torch.equal(other.tokens, a.tokens)


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_sources_point_at_the_prompt_token_each_answer_copies(hops):
    """targets[b, t] is the token after tokens[b, :t + 1]; sources[b, t] is the prompt position
    holding that same character: inside the chain's quoted last-hop line, before t."""
    task = get_task("hashhop", {"hops": [hops], "cot_prob": 0.0, "long_frac": 0.5, "min_chars": 100})
    for step in range(4):
        b = task.batch(step, 4, 600, "train", seed=1)
        answer = b.targets != IGNORE
        assert torch.equal(b.sources >= 0, answer)  # every answer character, and nothing else
        rows, cols = answer.nonzero(as_tuple=True)
        src = b.sources[rows, cols]
        assert (src < cols).all() and (src >= 1).all()
        assert torch.equal(b.tokens[rows, src], b.targets[rows, cols])
        for r in range(4):  # a source lies in the prompt, inside a quoted value (or on its closing quote)
            text = decode(b.tokens[r][b.tokens[r] != PAD][1:])
            prompt_end = text.index("\nCOMPLETION:") + 1
            for t in b.sources[r][b.sources[r] >= 0].tolist():
                assert t <= prompt_end
                line_start = text.rindex("\n", 0, t - 1) + 1 if "\n" in text[:t - 1] else 0
                assert "'" in text[line_start:t]  # after the opening quote of its line


def test_sources_are_unset_with_chain_of_thought():
    task = get_task("hashhop", {"hops": [2], "cot_prob": 1.0})
    b = task.batch(0, 3, 512)
    assert (b.targets != IGNORE).any() and (b.sources == -1).all()


def test_impossible_hash_counts_fail_loudly():
    with pytest.raises(ZooError, match="distinct 1-letter hashes"):
        get_task("hashhop", {"hops": [1], "hash_len": 1}).batch(0, 1, 2048)
