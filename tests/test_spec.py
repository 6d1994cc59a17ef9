"""Experiment specs: precise errors for malformed files, sweep expansion, parameter matching, dry run."""

import pytest

import zoo.experiment.spec as spec_mod
from zoo import registry
from zoo.cli import main
from zoo.errors import ZooError
from zoo.experiment.spec import load_spec, parse_spec, plan
from zoo.model import ModelConfig
from zoo.registry import get_spec
from zoo.train.cost import count_params

BASE = """
name = "t"
mixers = ["nope", "sinusoidal"]
[model]
d_model = 32
n_layers = 2
mixer_config = { nope = { n_heads = 2 }, sinusoidal = { n_heads = 2 } }
[task]
name = "hashhop"
config = { hops = [1], hash_len = 4 }
[train]
steps = 10
seq_len = 64
"""


def _write(tmp_path, text, name="spec.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("edit, message, hint", [
    (("steps = 10", "steps = 10\nlrr = 0.1"), "unknown key 'train.lrr'", "did you mean 'lr'?"),
    (("steps = 10", "steps = 10\nlr = -1"), "key 'train.lr' = -1 is invalid", "greater than 0"),
    (("steps = 10", "steps = 10\nlr_schedule = 'linear'"), "key 'train.lr_schedule' = 'linear'", "'cosine'"),
    (("n_layers = 2", "n_layers = 2\ndepth = 3"), "unknown key 'model.depth'", "allowed: d_model"),
    (('"sinusoidal"]', '"sinusoidall"]'), "key 'mixers.sinusoidall' = 'sinusoidall' is not a registered mixer",
     "did you mean sinusoidal"),
    (("d_model = 32", "d_model = 'wide'"), "key 'model.d_model' = 'wide' is invalid", "valid integer"),
    (("hash_len = 4", "hash_len = 0"), "task: task 'hashhop': key 'hash_len' = 0 is invalid", "fields:"),
    (("steps = 10", "steps = 10\nschedules = { 'mixer.nope' = { points = [[0, 1]] } }"),
     "key 'train.schedules'", "task.NAME or mixer.MIXER.ATTR"),
    (("steps = 10", "steps = 10\n[sweep]\nmatch_by = 'heads'"), "key 'sweep.match_by' = 'heads'", "'d_model'"),
    (("name = \"t\"", "name = \"t\"\nmixers2 = []"), "unknown key 'mixers2'", "did you mean 'mixers'?"),
])
def test_malformed_spec_names_file_key_value_and_allowed(tmp_path, edit, message, hint):
    old, new = edit
    assert old in BASE
    p = _write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(ZooError) as e:
        load_spec(p)
    text = str(e.value)
    assert text.startswith(f"{p}: "), text
    assert message in text and hint in text, text


def test_toml_syntax_error_and_missing_file(tmp_path):
    p = _write(tmp_path, "name = \n")
    with pytest.raises(ZooError, match=f"{p}: not valid TOML"):
        load_spec(p)
    with pytest.raises(ZooError, match="no experiment file"):
        load_spec(tmp_path / "nope.toml")


def test_sweep_expands_and_dedupes():
    spec = parse_spec({"name": "s", "mixers": ["nope"],
                       "model": {"d_model": 32, "mixer_config": {"nope": {"n_heads": 2}}},
                       "task": {"name": "hashhop", "config": {"hash_len": 4}},
                       "train": {"steps": 5, "seq_len": 64},
                       "sweep": {"lr": [1e-3, 3e-3], "seed": [0, 1], "axes": {"train.batch_size": [4, 4]}}})
    runs = plan(spec)
    assert len(runs) == 4  # the repeated batch size is one run, not two
    assert len({r.run_id for r in runs}) == 4
    assert {(r.run.train.lr, r.run.train.seed) for r in runs} == {(1e-3, 0), (1e-3, 1), (3e-3, 0), (3e-3, 1)}
    assert all(r.flops > 0 and r.steps == 5 for r in runs)


@pytest.mark.parametrize("by", ["d_model", "mlp_hidden"])
def test_parameter_matching(by):
    spec = parse_spec({"name": "m", "mixers": {"nope": {"config": {"n_heads": 2}},
                                               "wide": {"mixer": "sinusoidal", "config": {"n_heads": 2},
                                                        "model": {"d_model": 48}}},
                       "model": {"d_model": 64, "n_layers": 2},
                       "task": {"name": "hashhop"}, "train": {"steps": 5, "seq_len": 64},
                       "sweep": {"match_params": True, "match_by": by, "multiple": 8}})
    ref, other = plan(spec)
    assert ref.label == "nope" and ref.matched is None
    assert other.matched is not None and "params" in other.matched
    assert abs(other.params - ref.params) / ref.params < 0.05
    if by == "d_model":
        assert other.run.model.d_model == 64  # same mixer family at the same layout: the same width
    else:
        assert other.run.model.d_model == 48 and other.run.model.mlp_hidden % 8 == 0


@pytest.mark.parametrize("name", registry.names())
def test_width_matching_bisects_to_what_a_scan_finds(monkeypatch, name):
    """Matching by d_model bisects the width grid (parameters grow with width, checked here for
    every mixer) and picks what counting every width on the grid picks, ties to the narrower."""
    mc = {"d_model": 64, "n_layers": 2, "layers": [name], "mixer_config": {name: dict(get_spec(name).tiny or {})}}
    counts: dict[int, int | None] = {}

    def count(cfg, embedding=True):
        if cfg.d_model not in counts:
            try:
                counts[cfg.d_model] = count_params(cfg)
            except Exception:
                counts[cfg.d_model] = None
        if counts[cfg.d_model] is None:
            raise ValueError("no model at this width")
        return counts[cfg.d_model]

    monkeypatch.setattr(spec_mod, "count_params", count)
    grid = range(16, 257, 8)  # _match's grid for d_model 64, multiple 8
    for d in grid:
        try:
            count(ModelConfig(**{**mc, "d_model": d}))
        except ValueError:
            pass
    valid = [(d, counts[d]) for d in grid if counts[d] is not None]
    assert len(valid) > 2 and all(a[1] <= b[1] for a, b in zip(valid, valid[1:]))
    p1, p2 = valid[len(valid) // 2][1], valid[len(valid) // 2 + 1][1]
    for target in (valid[0][1] - 1, p1, (p1 + p2) // 2, (p1 + p2 + 1) // 2, p2 + 1, valid[-1][1] + 10**6):
        want = min(valid, key=lambda v: (abs(v[1] - target), v[0]))
        got, params = spec_mod._match(mc, target, "d_model", 8)
        assert (got["d_model"], params) == want, f"target {target}"


def test_per_mixer_overrides_and_hybrid_layers():
    spec = parse_spec({"name": "h", "mixers": {"hybrid": {"mixer": "hsa", "layers": ["swa", "hsa"],
                                                          "config": {"window": 16},
                                                          "train": {"schedules": {"mixer.hsa.window": {
                                                              "points": [[0, 8], [5, 16]]}}}}},
                       "model": {"d_model": 32, "n_layers": 2, "mixer_config": {"swa": {"n_heads": 2, "window": 8}}},
                       "task": {"name": "hashhop"}, "train": {"steps": 10, "seq_len": 64}})
    (r,) = plan(spec)
    assert r.run.model.layers == ["swa", "hsa"]
    assert r.run.model.mixer_config["hsa"]["window"] == 16 and r.run.model.mixer_config["swa"]["window"] == 8
    assert r.run.train.schedules["mixer.hsa.window"](7) == 16


def test_compare_dry_run_prints_plan(tmp_path, capsys):
    p = _write(tmp_path, BASE)
    assert main(["compare", str(p), "--dry-run", "--root", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "plan of t: 2 runs" in out and "total estimated training FLOPs" in out


def test_cli_reports_spec_errors_in_one_line(tmp_path, capsys):
    p = _write(tmp_path, BASE.replace("steps = 10", "steps = 0"))
    assert main(["compare", str(p), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "key 'train.steps' = 0 is invalid" in err and "Traceback" not in err


def test_sweep_runs_named_evaluations_once(tmp_path):
    from zoo.experiment.sweep import run_experiment, summary_table
    from zoo.store import Store

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(10):
        (corpus / f"{i}.txt").write_text(f"line {i} of the corpus. " * 30)
    spec = parse_spec({"name": "evals", "mixers": ["nope", "rope"],
                       "model": {"d_model": 32, "n_layers": 1,
                                 "mixer_config": {"nope": {"n_heads": 2}, "rope": {"n_heads": 2}}},
                       "task": {"name": "lm", "config": {"paths": [str(corpus)], "extensions": [".txt"],
                                                         "eval_fraction": 0.3}},
                       "train": {"steps": 3, "batch_size": 2, "seq_len": 16, "threads": 1},
                       "eval": {"ppl": {"multipliers": [1, 2], "windows": 1, "buckets": 2,
                                        "rope_scaling": [{"method": "pi", "factor": 2.0}]},
                                "bench": {"lengths": [16], "modes": ["fwd"], "peers": False,
                                          "tokens_per_batch": 32}}}, "evals.toml")
    store = Store(tmp_path / "store")
    outcomes = run_experiment(spec, store)
    assert [o.evals for o in outcomes] == [{"ppl": "ok"}, {"ppl": "ok"}]
    nope, rope = (store.results(o.planned.run_id, "ppl") for o in outcomes)
    assert {r["length"] for r in nope if r["scope"] == "all" and r["rope_scaling"] is None} == {16, 32}
    assert [r["status"] for r in nope if r["rope_scaling"] == "pi"] == ["n/a"]  # no RoPE layers to rescale
    assert {r["length"] for r in rope if r["rope_scaling"] == "pi" and r["scope"] == "all"} == {16, 32}
    bench = store.results(kind="bench")
    assert {r["mixer"] for r in bench} == {"nope", "rope"} and all(r["status"] == "ok" for r in bench)
    again = run_experiment(spec, store)
    assert [o.status for o in again] == ["skipped", "skipped"]
    assert [o.evals for o in again] == [{"ppl": "cached"}, {"ppl": "cached"}]
    table = summary_table(again, store, "t")
    assert [c.header for c in table.columns][-3:] == ["ppl@16", "ppl@32", "status"]


def test_summary_hashhop_columns_are_the_model_as_trained(tmp_path):
    """The comparison table's hashhop@L is the mean over hops of the cells as trained: a cell
    under an evaluation-time variant or a RoPE scaling is another model and stays out of it."""
    from zoo.experiment.sweep import hashhop_by_length
    from zoo.store import Store

    store = Store(tmp_path / "store")
    cell = {"status": "ok", "length": 100, "hops": 1, "cot": False}
    store.add_results("r1", "hashhop", [
        {**cell, "accuracy": 0.9, "variant": None},
        {**cell, "hops": 2, "accuracy": 0.5, "variant": None},
        {**cell, "accuracy": 0.1, "variant": "hsa.top_k=4"},
        {**cell, "accuracy": 0.2, "variant": None, "rope_scaling": "yarn", "rope_factor": 4.0},
        {**cell, "length": 200, "accuracy": 0.3},
    ])
    assert hashhop_by_length(store, "r1") == pytest.approx({100: 0.7, 200: 0.3})


def test_sweep_selection_metric_is_checked():
    base = {"name": "s", "mixers": ["nope"], "train": {"steps": 2}}
    spec = parse_spec({**base, "sweep": {"lr": [1e-3, 3e-3], "seed": [0, 1, 2], "select": "best"}})
    assert spec.sweep.metric == "eval_loss" and len(plan(spec)) == 6
    with pytest.raises(ZooError, match="unknown metric 'loss'; allowed: eval_loss, eval_acc, eval_first_acc, "
                                       "hashhop_accuracy"):
        parse_spec({**base, "sweep": {"metric": "loss"}})
    with pytest.raises(ZooError, match="needs an \\[eval.hashhop\\] grid"):
        parse_spec({**base, "sweep": {"metric": "hashhop_accuracy"}})
    with pytest.raises(ZooError, match="sweep.select"):
        parse_spec({**base, "sweep": {"select": "worst"}})


def test_sizes_set_paths_together_and_tokens_follow_params():
    spec = parse_spec({"name": "z", "mixers": ["nope"],
                       "model": {"n_layers": 2, "mixer_config": {"nope": {"n_heads": 2}}},
                       "task": {"name": "hashhop"}, "train": {"seq_len": 64},
                       "sweep": {"sizes": [{"d_model": 32, "model.mixer_config.nope.n_heads": 2},
                                           {"d_model": 64, "model.mixer_config.nope.n_heads": 4}],
                                 "lr": [1e-3, 3e-3], "tokens_per_param": 20}})
    runs = plan(spec)
    assert [r.run.model.d_model for r in runs] == [32, 32, 64, 64]  # small sizes first
    assert [r.run.model.mixer_config["nope"]["n_heads"] for r in runs] == [2, 2, 4, 4]
    for r in runs:
        non_embedding = r.params - r.run.model.vocab_size * r.run.model.d_model
        assert r.run.train.max_tokens == round(20 * non_embedding)
    with pytest.raises(ZooError, match="a size sets nothing"):
        parse_spec({"name": "z", "mixers": ["nope"], "task": {"name": "hashhop"}, "sweep": {"sizes": [{}]}})
