"""The HashHop evaluator: an oracle that reads its context scores 100%, a random model ~0,
metrics (per hop, depth bins, Wilson) behave, chunking changes nothing, the CLI stores results."""

import json

import pytest
import torch

from zoo.cli import main
from zoo.errors import ZooError
from zoo.eval.hashhop import HashHopGrid, evaluate, evaluate_file, score_samples
from zoo.model import ModelConfig, ZooLM
from zoo.stats import wilson
from zoo.tasks import hashhop as hh
from zoo.tasks.tokenizer import BOS, PAD, VOCAB_SIZE


class _Row:
    def __init__(self):
        self.pairs, self.cur, self.completion, self.hops, self.cot, self.read = {}, "", False, 1, False, 0


class OracleLM:
    """Reads its context token by token, as a model would, and looks the pairs up in it.

    `forget_after`: pairs whose line starts at or after this character are not stored.
    `wrong_hop`: (CoT) the hash of this hop (0-based) is answered with its last character changed.
    """

    def __init__(self, max_length=None, forget_after=None, wrong_hop=None):
        self.max_length, self.forget_after, self.wrong_hop = max_length, forget_after, wrong_hop
        self.calls = 0

    def new_cache(self, batch, device, dtype):
        return [_Row() for _ in range(batch)]

    def __call__(self, tokens, cache):
        self.calls += 1
        B, L = tokens.shape
        out = torch.zeros(B, L, VOCAB_SIZE)
        for b in range(B):
            st = cache[b]
            for i, t in enumerate(tokens[b].tolist()):
                if t != BOS:
                    self._read(st, chr(t))
                out[b, i, self._next(st)] = 10.0
        return out

    def _read(self, st, ch):
        st.read += 1
        if ch != "\n":
            st.cur += ch
            return
        line, st.cur = st.cur, ""
        start = st.read - len(line) - 2  # text index of the line's first character (after <bos>)
        if not st.completion:
            if line == "COMPLETION:":
                st.completion = True
            elif self.forget_after is None or start < self.forget_after:
                k, _, v = line.partition(" = ")
                st.pairs[k] = v.strip("'")
        elif line.startswith("Hops="):
            st.hops = int(line[5:])
        elif line.startswith("CoT="):
            st.cot = line[4:] == "True"

    def _next(self, st):
        key, sep, partial = st.cur.partition(" = '")
        if not (st.completion and sep):
            return PAD
        chain, h = [], key
        for j in range(st.hops):
            h = st.pairs.get(h, "?")
            chain.append(h if j != self.wrong_hop else h[:-1] + ("a" if h[-1] != "a" else "b"))
        answer = (" = ".join(chain) if st.cot else chain[-1]) + "'"
        return ord(answer[len(partial)]) if len(partial) < len(answer) else PAD


def tiny_model(**kw):
    torch.manual_seed(0)
    return ZooLM(ModelConfig(d_model=32, n_layers=2, layers=["nope"], mixer_config={"nope": {"n_heads": 2}}, **kw))


def test_oracle_scores_100_everywhere():
    grid = HashHopGrid(n_chars=[400, 4000], hops=[1, 2, 3], cot=[False, True], samples=3, queries=3,
                       greedy_samples=1, chunk_size=257)
    res = evaluate(OracleLM(), grid)
    assert len(res["cells"]) == 12
    for c in res["cells"]:
        assert c["status"] == "ok"
        assert (c["accuracy"], c["n"]) == (1.0, 9)
        assert c["char_accuracy"] == 1.0 and c["greedy_accuracy"] == 1.0 and c["greedy_n"] == 3
        assert c["greedy_agreement"] == 1.0
        # all right: how correlated a sample's queries are cannot be seen, so each sample counts once
        assert c["low"] == pytest.approx(wilson(3, 3)[0]) and c["high"] == 1.0 and c["n_eff"] == 3
        assert c["per_sample"] == [[3, 3, c["chars"] // 3, c["chars"] // 3]] * 3
        assert sum(n for _, n in c["depth"]) == 9
        if c["cot"]:
            assert c["hop_accuracy"] == [1.0] * c["hops"] and c["depth_reached"] == c["hops"]
        assert c["length"] == len(next(grid.cell_samples(c["n_chars"], c["hops"], c["cot"])).text)


def test_random_model_scores_near_zero():
    res = evaluate(tiny_model(), HashHopGrid(n_chars=[300, 1000], hops=[2], samples=3, queries=3))
    for c in res["cells"]:
        assert c["greedy_n"] == 3
        assert c["accuracy"] <= 0.05 and c["greedy_accuracy"] <= 0.05
        assert c["char_accuracy"] < 0.2
        assert c["nll"] > 3.0  # about ln(260) for an untrained model


def test_chunking_through_caches_changes_nothing():
    model = tiny_model()
    s = hh.generate(500, 2, 2, 16, seed=4)
    whole = score_samples(model, [s], chunk_size=10_000)[0]
    chunked = score_samples(model, [s], chunk_size=61, greedy=True)[0]
    for a, b in zip(whole, chunked, strict=True):
        assert (a.exact, a.chars_ok, a.chars) == (b.exact, b.chars_ok, b.chars)
        assert a.nll == pytest.approx(b.nll, rel=1e-4)
        assert b.greedy is not None and len(b.greedy_text) >= 1


def test_batched_equals_one_by_one():
    model = tiny_model()
    samples = [hh.generate(300, 2, 1, 16, seed=k) for k in range(3)]
    batched = score_samples(model, samples, chunk_size=128)
    for s, scores in zip(samples, batched, strict=True):
        single = score_samples(model, [s], chunk_size=128)[0]
        assert [(q.chars_ok, q.exact) for q in single] == [(q.chars_ok, q.exact) for q in scores]
        assert [q.nll for q in single] == pytest.approx([q.nll for q in scores], rel=1e-4)


def test_per_hop_and_depth_reached():
    res = evaluate(OracleLM(wrong_hop=1), HashHopGrid(n_chars=[800], hops=[3], cot=[True], samples=2, queries=3))
    c = res["cells"][0]
    assert c["accuracy"] == 0.0 and c["greedy_accuracy"] == 0.0 and c["greedy_agreement"] == 1.0
    assert c["hop_accuracy"] == [1.0, 0.0, 1.0] and c["depth_reached"] == 1.0
    assert 0.9 < c["char_accuracy"] < 1.0


def test_accuracy_by_depth():
    grid = HashHopGrid(n_chars=[3000], hops=[1], samples=4, queries=40, greedy_samples=0)
    prompt_len = len(next(grid.cell_samples(3000, 1, False)).prompt)
    c = evaluate(OracleLM(forget_after=prompt_len // 2), grid)["cells"][0]
    accs = [a for a, n in c["depth"]]
    assert all(n > 0 for _, n in c["depth"])
    assert accs[:5] == [1.0] * 5 and accs[5:] == [0.0] * 5  # it only remembers the first half
    assert c["accuracy"] == pytest.approx(0.5, abs=0.15)
    assert c["depth_low"][0] > 0.5 and c["depth_high"][9] < 0.5


def test_not_applicable_past_max_length():
    res = evaluate(OracleLM(max_length=1000), HashHopGrid(n_chars=[300, 3000], hops=[1], samples=1, queries=2))
    ok, na = res["cells"]
    assert ok["status"] == "ok" and ok["accuracy"] == 1.0
    assert na["status"] == "n/a" and "at most 1000" in na["reason"] and "accuracy" not in na


def _scores(pattern: list[list[bool]]) -> list:
    from zoo.eval.hashhop import QueryScore

    return [QueryScore(ok, 4 if ok else 1, 4, 0.0, [ok], 0.5, sample=i)
            for i, qs in enumerate(pattern) for ok in qs]


def test_intervals_resample_samples_not_queries():
    """Queries of one sample share its haystack: when they agree within samples (10 samples of
    5 queries, half all right), the interval is as wide as for 10 trials, not 50."""
    from zoo.eval.hashhop import summarize

    correlated = summarize(_scores([[i % 2 == 0] * 5 for i in range(10)]), hops=1, cot=False)
    assert correlated["accuracy"] == 0.5 and correlated["n"] == 50
    assert correlated["n_eff"] == pytest.approx(10, rel=0.3)
    lo, hi = wilson(25, 50)  # as if the 50 queries were independent
    assert correlated["high"] - correlated["low"] > 1.8 * (hi - lo)
    assert correlated["char_high"] - correlated["char_low"] > 0.3  # character accuracy by sample too
    # queries that vary within every sample and agree between samples are as good as independent
    mixed = summarize(_scores([[True, False, True, False, True, False, True, False, True, False]] * 6), 1, False)
    assert mixed["n_eff"] == 60
    assert summarize(_scores([[i % 3 == 0] * 5 for i in range(10)]), 1, False) == \
        summarize(_scores([[i % 3 == 0] * 5 for i in range(10)]), 1, False)  # seeded: deterministic


def test_grid_errors():
    with pytest.raises(ZooError, match="too few for 5 queries"):
        evaluate(OracleLM(), HashHopGrid(n_chars=[100], hops=[2], queries=5))


def test_samples_file(tmp_path):
    f = tmp_path / "s.jsonl"
    rows = [hh.generate(600, 3, h, 16, h == 2, seed=hh.derived_seed(1, h)).to_json() for h in (1, 2)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = evaluate_file(OracleLM(), f)
    assert sorted((c["hops"], c["cot"]) for c in res["cells"]) == [(1, False), (2, True)]
    assert all(c["accuracy"] == 1.0 for c in res["cells"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rows[0], "prompt": rows[0]["prompt"].replace(rows[0]["prompt"][3], "\u00e9", 1)}))
    with pytest.raises(ZooError, match="not ASCII"):
        evaluate_file(OracleLM(), bad)


def test_cli_eval_baseline_and_trained_run(tmp_path, capsys):
    from zoo.store import Store
    from zoo.train.checkpoint import save_checkpoint

    out = tmp_path / "r.json"
    cfg = '{"d_model": 32, "n_layers": 2, "mixer_config": {"nope": {"n_heads": 2}}}'
    argv = ["hashhop", "eval", "--untrained", cfg, "--n-chars", "150..300", "--hops", "1", "--cot", "both",
            "--samples", "2", "--queries", "2", "--greedy", "0", "--out", str(out), "--root", str(tmp_path / "store")]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert [(c["n_chars"], c["cot"]) for c in res["cells"]] == [(150, False), (150, True), (300, False), (300, True)]
    assert all(c["status"] == "ok" and c["accuracy"] <= 0.05 for c in res["cells"])
    store = Store(tmp_path / "store")
    assert len(store.results(run_id=res["run_id"], kind="hashhop")) == 4
    assert main(argv) == 0 and len(store.results(kind="hashhop")) == 4  # a re-evaluation adds no duplicates

    # a trained run: its checkpoint in the store's run directory, results stored under its id;
    # the grid takes the run's hash length and 'train' is its training length
    model = tiny_model()
    rid = "abc123"
    run_config = {"model": model.config.model_dump(), "task": {"name": "hashhop", "config": {"hash_len": 4}},
                  "train": {"seq_len": 100}}
    store.upsert_run(rid, run_config, status="done")
    save_checkpoint(store.run_dir(rid), 1, model, None, run_config)
    capsys.readouterr()
    assert main(["hashhop", "eval", str(store.run_dir(rid)), "--n-chars", "train..200", "--hops", "1,2",
                 "--samples", "1", "--queries", "1", "--greedy", "0"]) == 0
    rows = store.results(run_id=rid, kind="hashhop")
    # 'train' is the largest problem whose every cell fits the 100 training tokens: 3 chains of 11
    # characters (the queries and the header take tokens too), not 100 characters
    from zoo.eval.hashhop import HashHopGrid

    train = HashHopGrid(n_chars=[1], hops=[1, 2], hash_len=4, queries=1).chars_for_tokens(100)
    assert train == 33 and max(r["length"] for r in rows if r["n_chars"] == train) <= 100
    assert [(r["n_chars"], r["hops"], r["hash_len"], r["greedy_n"]) for r in rows] == [
        (n, h, 4, 0) for n in (33, 66, 132, 200) for h in (1, 2)]
    assert (store.run_dir(rid) / "hashhop_eval.json").is_file()
    assert "teacher-forced" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["--untrained", "{}", "--n-chars", "100", "--hops", "2"], "too few for 5 queries"),
    (["--untrained", "{}", "--hash-len", "0"], "hash_len"),
    (["--untrained", "{}", "--hops", "0"], "hops"),
    (["--untrained", "{}", "--n-chars", "4q"], "bad size"),
    (["--untrained", "{bad"], "not JSON"),
    (["--untrained", "{}", "--n-chars", "train..1M"], "needs a trained run"),
    (["--n-chars", "1000"], "either a run"),
    (["--untrained", "{}", "--rope-scaling", "yarn"], "go together"),
    (["--untrained", "{}", "--rope-scaling", "linear", "--rope-factor", "4"], "RoPE scaling: key 'method'"),
    (["--untrained", "{}", "--rope-scaling", "yarn", "--rope-factor", "4"], "RoPE"),
    (["/nonexistent/run"], "no checkpoint"),
])
def test_cli_eval_errors(capsys, argv, match):
    assert main(["hashhop", "eval", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1


def test_cli_eval_grid_from_experiment_file(tmp_path, capsys):
    spec = tmp_path / "exp.toml"
    spec.write_text('name = "x"\n[eval.hashhop]\nn_chars = [150]\nhops = [1]\nsamples = 1\nqueries = 1\n'
                    "greedy_samples = 0\nhash_len = 4\n")
    out = tmp_path / "r.json"
    assert main(["hashhop", "eval", "--untrained", "{}", "--spec", str(spec), "--hops", "1,2", "--out", str(out)]) == 0
    cells = json.loads(out.read_text())["cells"]
    assert [(c["n_chars"], c["hops"], c["hash_len"], c["samples"]) for c in cells] == [(150, 1, 4, 1), (150, 2, 4, 1)]
    spec.write_text("[model]\nd_model = 64\n")
    assert main(["hashhop", "eval", "--untrained", "{}", "--spec", str(spec)]) == 2
    assert "has no HashHop grid" in capsys.readouterr().err


def test_cli_eval_with_rope_scaling_override(tmp_path):
    """`--rope-scaling yarn --rope-factor 4` rescales a RoPE model at evaluation time; its rows are its own."""
    from zoo.store import Store

    cfg = '{"d_model": 32, "n_layers": 2, "layers": ["rope"], "mixer_config": {"rope": {"n_heads": 2}}}'
    base = ["hashhop", "eval", "--untrained", cfg, "--n-chars", "200", "--hops", "1", "--samples", "1",
            "--queries", "2", "--greedy", "0", "--root", str(tmp_path / "store")]
    assert main([*base, "--out", str(tmp_path / "a.json")]) == 0
    assert main([*base, "--out", str(tmp_path / "b.json"), "--rope-scaling", "yarn", "--rope-factor", "4"]) == 0
    plain, scaled = (json.loads((tmp_path / f).read_text())["cells"][0] for f in ("a.json", "b.json"))
    assert plain["nll"] != scaled["nll"]  # the override changed the model's positions
    rows = Store(tmp_path / "store").results(kind="hashhop")
    assert sorted(str(r.get("rope_scaling")) for r in rows) == ["None", "yarn"]
