"""The `retrieval-recall` evaluator: recall rows are well formed, exactly 1 when every visible
chunk is selected, the same whatever the evaluator's chunking; a model without retrieval layers
says so in one line. Its conformance runs with the other built-ins' (tests/test_evaluators.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from zoo.errors import ZooError
from zoo.eval.base import get_evaluator, schema_errors
from zoo.eval.recall import RecallConfig, chance_of, recall_rows, value_sources
from zoo.retrieval import require_retrieval_layers, retrieval_layers

sys.path.insert(0, str(Path(__file__).parent))
from test_retrieval import tiny_model  # noqa: E402

CONFIG = RecallConfig(n_chars=[240], hash_len=4, samples=2, queries=2)


def test_rows_are_well_formed():
    rows = recall_rows(tiny_model(), CONFIG, 240, chunk_size=100)
    assert [r["layer"] for r in rows] == [1]
    r = rows[0]
    assert r["status"] == "ok" and r["mixer"] == "hsa" and r["chunk_size"] == 16 and r["top_k"] == 2
    # every answer position (4 hash letters and the quote) of every query, once per KV head
    assert r["n"] == 2 * 2 * (4 + 1) * 2 and [t for _, t in r["per_sample"]] == [20, 20]
    assert r["hits"] == sum(h for h, _ in r["per_sample"]) and r["recall"] == r["hits"] / r["n"]
    assert r["low"] <= r["recall"] <= r["high"] and 0 < r["chance"] < 1
    assert r["asked"] == 4 and 0 <= r["exact"] <= 4
    assert r["length"] == CONFIG.grid(240).cell_tokens(240, 1, False)


def test_selecting_every_visible_chunk_finds_every_answer():
    model = tiny_model()
    rows = recall_rows(model, CONFIG.model_copy(update={"top_k": 256}), 240)
    assert [(r["recall"], r["hits"], r["chance"], r["top_k"]) for r in rows] == [(1.0, 40, 1.0, 256)]
    assert retrieval_layers(model)[0][1].top_k == 2  # the override is undone
    assert recall_rows(model, CONFIG, 240)[0]["recall"] < 1.0  # top-2 of 10+ chunks misses some


def test_the_miss_rate_ranks_the_wanted_chunk_as_the_selection_does():
    """One retrieval layer: its scores do not depend on its own top-K, so the ranks are the same
    at every K; at K = 1 a hit is a wanted chunk ranked first, so recall equals `ranked_first`."""
    model = tiny_model(seed=7)
    rows = {k: recall_rows(model, CONFIG.model_copy(update={"top_k": k}), 240)[0] for k in (1, 2, 256)}
    assert len({(r["ranked"], r["ranked_first"], r["miss_rate"]) for r in rows.values()}) == 1
    r1 = rows[1]
    assert r1["ranked"] == r1["n"] == 40  # every wanted chunk is visible at 240 characters
    assert r1["recall"] == r1["ranked_first"] and 0 < r1["ranked_first"] < 1
    assert 0 < r1["miss_rate"] < 1 and rows[2]["recall"] > r1["recall"]


def test_rows_do_not_depend_on_the_evaluator_chunking():
    model = tiny_model(seed=3)
    one = recall_rows(model, CONFIG, 240)
    many = recall_rows(model, CONFIG, 240, chunk_size=37)
    weights = ("weight", "straddle_weight")  # sums of float weights: equal to rounding
    assert [{k: v for k, v in r.items() if k not in weights} for r in one] == \
        [{k: v for k, v in r.items() if k not in weights} for r in many]
    for a, b in zip(one, many):
        assert [a[k] for k in weights] == pytest.approx([b[k] for k in weights], abs=1e-6)


def test_value_sources_and_chance():
    s = next(CONFIG.grid(240).cell_samples(240, 1, False))
    key, value = s.queries[0], s.targets[s.queries[0]]
    line = s.prompt.index(f"{key} = '{value}'")
    first = 1 + line + len(key) + 4  # token of the value's first character, after <bos>
    src = value_sources(s, key)
    assert src == list(range(first, first + len(value) + 1))  # the value's characters and its closing quote
    tokens = "\0" + s.text  # token i is text character i - 1
    assert "".join(tokens[t] for t in src) == value + "'"
    assert chance_of(10, 1, 2) == pytest.approx(0.2)
    assert chance_of(10, 2, 2) == pytest.approx(1 - 28 / 45)
    assert chance_of(3, 1, 8) == 1.0 and chance_of(0, 1, 8) == 0.0 and chance_of(5, 0, 2) == 0.0


def test_a_straddling_value_wants_the_chunk_of_each_character():
    """Selecting only the chunk where the value starts scores the characters past the boundary
    as misses: recall is per copied character, not per value."""
    from zoo.eval.recall import _sample_counts
    from zoo.tasks.hashhop import answers

    for s in CONFIG.grid(240).cell_samples(240, 1, False):
        for a in answers(s):
            src = value_sources(s, a.key)
            if src[0] // 16 != src[-1] // 16:
                break
        else:
            continue
        break
    else:
        pytest.fail("no straddling value in the samples")
    L = a.end + 1
    ids = torch.full((1, L, 1, 1), -1, dtype=torch.long)
    ids[0, a.start:a.end, 0, 0] = src[0] // 16  # the first character's chunk, at every position of this answer
    w = (ids >= 0).float() * 0.5
    n = _sample_counts(s, [(0, ids, w)], 16, 1)
    n_first = sum(t // 16 == src[0] // 16 for t in src)
    assert n.hits == n_first < len(src)
    assert n.trials == sum(b.end - b.start for b in answers(s))
    assert n.weight == pytest.approx(0.5 * n_first) and n.straddle_weight == pytest.approx(0.5 * n_first)
    assert n.straddle_trials >= len(src)


def test_a_model_without_retrieval_layers_is_named_in_one_line():
    model = tiny_model(layers=("swa", "rope"))
    with pytest.raises(ZooError, match=r"no retrieval layer: the model's layers are swa, rope, "
                                       r"the retrieval mixers .*hsa") as e:
        require_retrieval_layers(model)
    assert "\n" not in str(e.value)
    rows = recall_rows(model, CONFIG, 240)
    assert [(r["status"], r["layer"]) for r in rows] == [("n/a", None)] and "layers are swa, rope" in rows[0]["reason"]
    assert schema_errors(get_evaluator("retrieval-recall"), rows) == []


def test_config_is_checked():
    ev = get_evaluator("retrieval-recall")
    with pytest.raises(ZooError, match="too few for 5 queries"):
        ev.make_config({"n_chars": [40]})
    with pytest.raises(ZooError, match="unknown key 'hops'"):
        ev.make_config({"hops": [2]})


# -- the report -----------------------------------------------------------------------------------

def test_report_draws_recall_with_hostile_labels_escaped(tmp_path):
    pytest.importorskip("jinja2")
    pytest.importorskip("matplotlib")
    from zoo.report import figures as F
    from zoo.report.data import ReportData, Run
    from zoo.report.render import build
    from zoo.report.style import Palette

    bad = '<script>alert("x")</script> & $k$'
    runs = [Run("r1", bad, ["swa", "hsa"], "done", final_loss=1.0, train_len=2048),
            Run("r2", "rope", ["rope"], "done", final_loss=2.0, train_len=2048),
            Run("r3", "hsa-old", ["swa", "hsa"], "done", final_loss=1.0, train_len=2048)]  # no rows of this evaluation
    rows = []
    for n_chars, length, recall, chance in ((2048, 2463, 0.99, 0.21), (8192, 9151, 0.9, 0.056)):
        for layer in (1, 3):
            rows.append({"kind": "retrieval-recall", "run_id": "r1", "label": bad, "eval_id": "e", "n_chars": n_chars,
                         "length": length, "layer": layer, "mixer": "hsa", "top_k": 8, "chunk_size": 64,
                         "status": "ok", "recall": recall / layer, "low": recall / layer - 0.05,
                         "high": min(1.0, recall / layer + 0.01), "chance": chance, "hits": 10, "n": 12,
                         "exact": 4, "asked": 5, "exact_accuracy": 0.8,
                         **({"ranked": 12, "ranked_first": 0.75, "miss_rate": 3.2e-4 * layer}
                            if n_chars == 2048 else {})})
    rows.append({"kind": "retrieval-recall", "run_id": "r2", "label": "rope", "eval_id": "e", "n_chars": 2048,
                 "length": 2463, "layer": None, "status": "n/a", "reason": "the model has no retrieval layer"})
    data = ReportData("recall", runs, other_evals={"retrieval-recall": rows}, source="test")

    fig = F.retrieval_recall(data, Palette(data.labels()))
    assert fig.svg is not None and "<script" not in fig.svg and "&lt;script&gt;" in fig.svg
    assert "layer 1" in fig.svg and "layer 3" in fig.svg and "chance" in fig.svg
    assert fig.missing == ["rope at 2463: n/a (the model has no retrieval layer)",
                           "hsa-old (r3): not evaluated (no rows of this retrieval-recall evaluation in the store)"]
    assert [[v.display for v in r[:4]] for r in fig.side.rows][:2] == [[bad, "1", "2463", "0.990"],
                                                                       [bad, "1", "9151", "0.900"]]
    misses = fig.side.columns.index("misses per chunk")
    assert [r[misses].display for r in fig.side.rows][::2] == ["3.2e-04", "9.6e-04"]
    assert fig.side.rows[1][misses].value is None  # rows without ranks (not recorded): n/a, not 0

    built = build(data, tmp_path, pdf=False)
    html = built.html.read_text()
    assert 'id="fig-retrieval"' in html and "<script" not in html and "&lt;script&gt;" in html
    assert "retrieval-recall: 5 rows in data/eval_retrieval-recall.csv" in html
    assert (tmp_path / "data" / "retrieval_recall_side.csv").exists()
