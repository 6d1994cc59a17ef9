"""The HashHop generator against Magic's algorithm, its CLI, the tokenizer round trip."""

import hashlib
import json
import math
import random

import numpy as np
import pytest

from zoo.cli import main
from zoo.errors import ZooError
from zoo.tasks import hashhop as hh
from zoo.tasks.tokenizer import BOS, decode, encode, encode_ascii


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def transcription(seed, n_chars, num_queries, hops, L, cot):
    """The algorithm as the benchmark describes it, on the *global* random streams."""
    random.seed(seed)
    np.random.seed(seed)
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

    def draw():
        return "".join(letters[i] for i in np.random.choice(52, L))

    n = math.ceil(n_chars / ((2 * L + 3) * hops))
    first = {}
    for _ in range(n):
        k = draw()
        first[k] = draw()
    levels = [first]
    for _ in range(hops - 1):
        nxt = {}
        for v in levels[-1].values():
            nxt[v] = draw()
        levels.append(nxt)
    lines = [f"{k} = '{v}'" if i == hops - 1 else f"{k} = {v}" for i, lv in enumerate(levels) for k, v in lv.items()]
    targets = {}
    for k in first:
        seq, cur = [], k
        for lv in levels:
            cur = lv[cur]
            seq.append(cur)
        targets[k] = " = ".join(seq) if cot else seq[-1]
    random.shuffle(lines)
    items = list(targets.items())
    random.shuffle(items)
    completion = (f"COMPLETION:\nHops={hops}\n\nCoT={cot}\n\n"
                  + "\n".join(f"{k} = '{targets[k]}'" for k in list(targets)[:num_queries]) + "\n")
    return "\n".join(lines), completion, targets


@pytest.fixture
def keep_global_rngs():
    py, npy = random.getstate(), np.random.get_state()
    yield
    random.setstate(py)
    np.random.set_state(npy)


def test_seed0_matches_the_original():
    s = hh.generate(1000, 5, 2, 16, cot=False, seed=0)
    assert s.prompt.startswith("puJxpnvWXfPJaFfE = aXYKIWDdIQnWNvja\nBvNNlwErghsCRtXP = DUvjzYGBjCRrPawq\n"
                               "aXYKIWDdIQnWNvja = 'TZjfHhEiuhdvBSdM'")
    assert sha(s.prompt) == "36d306c18d5d4924"
    assert sha(s.completion) == "00b6a8542c5089ff"
    assert not s.prompt.endswith("\n") and s.completion.endswith("\n")


# digests derived from the algorithm as written (the transcription above), including short
# hashes where keys repeat and chains merge
KNOWN = [
    ((1, 500, 3, 1, 16, False), "d779adf6f4cfbf1e", "22d7d39ce122804b", 15),
    ((7, 3000, 10, 3, 16, True), "7c9099da2cf109df", "82ae53eba92decb2", 29),
    ((123456, 800, 4, 2, 8, True), "8f30546a33209d4a", "47b8875438c2b54d", 22),
    ((2**32 - 1, 200, 2, 4, 4, False), "36870e1b765cbcb7", "c2059582981b9ca3", 5),
    ((42, 2000, 50, 1, 2, False), "1db2753bae5bc39e", "a4a6fde54d7c2372", 268),
    ((99, 120, 1, 1, 1, True), "d1fcf2fca9d9412a", "a30ae3406e79ee47", 18),
]


@pytest.mark.parametrize("params,prompt_sha,completion_sha,n_targets", KNOWN)
def test_known_digests(params, prompt_sha, completion_sha, n_targets):
    seed, n_chars, q, hops, L, cot = params
    s = hh.generate(n_chars, q, hops, L, cot, seed=seed)
    assert (sha(s.prompt), sha(s.completion), len(s.targets)) == (prompt_sha, completion_sha, n_targets)


@pytest.mark.parametrize("seed", range(6))
def test_equals_the_transcription(seed, keep_global_rngs):
    rng = random.Random(1000 + seed)
    for _ in range(6):
        hops, L = rng.randint(1, 4), rng.choice([1, 2, 3, 16])
        n_chars = rng.randint((2 * L + 3) * hops, 1500)
        cot, q = rng.random() < 0.5, 1
        prompt, completion, targets = transcription(seed, n_chars, q, hops, L, cot)
        s = hh.generate(n_chars, q, hops, L, cot, seed=seed)
        assert (s.prompt, s.completion, s.targets) == (prompt, completion, targets)
        assert list(s.targets) == list(targets)  # insertion order too


def test_explicit_streams_leave_the_globals_alone(keep_global_rngs):
    random.seed(5)
    np.random.seed(5)
    a, b = random.random(), np.random.rand()
    random.seed(5)
    np.random.seed(5)
    hh.generate(2000, 5, 2, 16, seed=3)
    assert (random.random(), np.random.rand()) == (a, b)


def test_lengths_and_answer_spans():
    for hops in (1, 2, 3):
        for cot in (False, True):
            s = hh.generate(900, 4, hops, 16, cot, seed=hops)
            assert len(s.text) == hh.text_len(hh.n_chains(900, hops, 16), 4, hops, 16, cot)
            spans = hh.answers(s)
            assert [a.key for a in spans] == s.queries
            for a in spans:
                assert s.text[a.start:a.end] == s.targets[a.key] + "'"
                assert [s.text[x:y] for x, y in a.hops] == (s.targets[a.key].split(" = ") if cot else [a.target])
                assert 0 <= a.depth < 1


def test_tokens_and_mask():
    s = hh.generate(400, 3, 2, 16, True, seed=11)
    ids, mask = hh.tokens_and_mask(s)
    assert ids[0] == BOS and len(ids) == len(s.text) + 1
    answer = "".join(chr(t) for t, m in zip(ids, mask, strict=True) if m)
    assert answer == "".join(s.targets[k] + "'" for k in s.queries)


def test_tokenizer_round_trip_and_errors():
    s = hh.generate(600, 2, 2, 16, seed=2)
    assert len(encode(s.text)) == len(s.text)  # one token per character
    assert decode(encode(s.text, bos=True, eos=True)) == s.text
    assert encode_ascii(s.text) == encode(s.text)
    with pytest.raises(ZooError) as e:
        encode_ascii("abc = d\u00e9f")
    assert "\n" not in str(e.value) and "position 7" in str(e.value)


@pytest.mark.parametrize("args,match", [
    ((1000, 5, 2, 0), "hash length"),
    ((1000, 5, 0, 16), "hops"),
    ((100, 5, 2, 16), "too few for 5 queries"),
    ((1000, 0, 2, 16), "queries"),
])
def test_bad_arguments(args, match):
    with pytest.raises(ZooError, match=match) as e:
        hh.generate(*args)
    assert "\n" not in str(e.value)


def test_seeds():
    assert hh.derived_seed(17, 0) == 17
    seeds = [hh.derived_seed(17, i) for i in range(1, 200)]
    assert len(set(seeds)) == len(seeds) and all(0 <= x < 2**32 for x in seeds)
    keys = {split: {hh.sample_key(0, split, step, 0) for step in range(100)} for split in ("train", "eval", "test")}
    assert not keys["train"] & keys["eval"] and not keys["train"] & keys["test"] and not keys["eval"] & keys["test"]
    with pytest.raises(ZooError):
        hh.sample_key(0, "valid", 0)
    # stream keys beyond 32 bits still seed both generators deterministically
    big = hh.sample_key(0, "train", 1, 2)
    assert big >= 2**32 and hh.generate(300, 2, 1, seed=big).prompt == hh.generate(300, 2, 1, seed=big).prompt


def test_cli_generate(capsys, tmp_path):
    assert main(["hashhop", "generate", "--n-chars", "1000", "--queries", "5", "--hops", "2", "--hash-len", "16",
                 "--seed", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    obj = json.loads(out[0])
    assert set(obj) == {"prompt", "completion", "targets", "queries", "params", "seed"}
    assert sha(obj["prompt"]) == "36d306c18d5d4924" and sha(obj["completion"]) == "00b6a8542c5089ff"
    assert obj["queries"] == list(obj["targets"])[:5] and obj["seed"] == 0
    assert obj["params"] == {"n_chars": 1000, "queries": 5, "hops": 2, "hash_len": 16, "cot": False}

    f = tmp_path / "s.jsonl"
    assert main(["hashhop", "generate", "--n-chars", "300", "--queries", "2", "--hops", "1", "--cot",
                 "--seed", "9", "--count", "3", "--out", str(f)]) == 0
    rows = [json.loads(x) for x in f.read_text().splitlines()]
    assert [r["seed"] for r in rows] == [hh.derived_seed(9, i) for i in range(3)]
    for r in rows:  # each line reproduces from its own seed
        assert r["prompt"] == hh.generate(300, 2, 1, 16, True, seed=r["seed"]).prompt
        assert "CoT=True" in r["completion"]


@pytest.mark.parametrize("argv,match", [
    (["--n-chars", "100", "--queries", "5"], "too few for 5 queries"),
    (["--n-chars", "1000", "--hash-len", "0"], "hash length"),
    (["--n-chars", "1000", "--hops", "0"], "hops"),
    (["--n-chars", "1000", "--seed", "-1"], "seed"),
])
def test_cli_generate_errors(capsys, argv, match):
    assert main(["hashhop", "generate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1
