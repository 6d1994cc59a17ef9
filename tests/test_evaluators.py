"""Evaluators: the registry and its built-ins (ids of stored results pinned), `[eval.NAME]` tables,
the conformance suite (and that it can fail), and the example plugin's evaluator: listed,
conformant, and run from an experiment file into the store."""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from zoo import registry
from zoo.errors import ZooError
from zoo.eval import conformance
from zoo.eval.base import EVALUATORS, Evaluator, get_evaluator, schema_errors
from zoo.experiment.spec import eval_id, eval_settings, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_plugins import EXAMPLE, on_path, pip_install, zoo_cli  # noqa: E402

# eval ids of the committed experiment files: rows already stored under them must stay found
# (retrieval-recall is version 2: rows of version 1, any chunk of the value, are deliberately not)
PINNED = {
    "benchmarks/hashhop_recipe.toml": {"hashhop": "911cdcccfa89"},
    "benchmarks/hsa_hashhop.toml": {"hashhop": "42295ce390a0", "retrieval-recall": "e985ef7edf8a"},
    "experiments/hsa_extrapolation.toml": {"hashhop": "3b4ba05ca6fb", "retrieval-recall": "45689c841a5e"},
    "experiments/hashhop_extrapolation.toml": {"hashhop": "5cf42bd31e24"},
    "experiments/pe_extrapolation.toml": {"ppl": "0932e2cfe745"},
    "experiments/smoke.toml": {"hashhop": "e8964cf65b1e"},
}

BASE = {"name": "t", "mixers": ["nope"], "model": {"d_model": 32, "n_layers": 1},
        "task": {"name": "hashhop", "config": {"hops": [1], "hash_len": 4}}, "train": {"steps": 2}}


@pytest.mark.parametrize("path", sorted(PINNED))
def test_eval_ids_of_committed_specs_are_pinned(path):
    spec = load_spec(ROOT / path)
    assert {k: eval_id(k, v) for k, v in eval_settings(spec).items()} == PINNED[path]


def test_eval_ids_of_builtins_are_pinned():
    # HashHop hashes its table as written (defaults left out), perplexity its validated config and its
    # version (2: rows with intervals, so evaluations stored before them are redone)
    assert eval_id("hashhop", {"n_chars": [200, 800]}) == "bde01d42366b"
    assert eval_id("ppl", {"multipliers": [1, 2], "windows": 1}) == "d047e7bae71b"
    assert eval_id("ppl", {"multipliers": [1, 2], "windows": 1, "buckets": 8}) == "d047e7bae71b"


def test_hashhop_variants_are_cells_of_the_same_evaluation():
    """Evaluation-time settings (`variants`) add cells under the same eval id, run on a copy of the
    model (the cells as trained never see them), and a variant the model cannot take is an n/a
    row that says why."""
    ev = get_evaluator("hashhop")
    table = {"n_chars": [120], "hops": [1], "samples": 2, "queries": 2}
    variants = [{"mixer.rope.base": 500.0}, {"mixer.hsa.top_k": 4}]
    assert ev.eval_id({**table, "variants": variants}) == ev.eval_id(table)
    config = ev.make_config({**table, "variants": variants})
    assert ev.cells(config) == [(120, 1, False, None), (120, 1, False, "rope.base=500.0"),
                                (120, 1, False, "hsa.top_k=4")]
    t = conformance.target(ev)
    base, scaled, missing = (ev.evaluate(t, config, c) for c in ev.cells(config))
    assert t.model.mixers[0].config.base == 10000.0  # the trained model is untouched
    assert [ev.cell_of(r) for r in base + scaled + missing] == ev.cells(config)
    again = ev.evaluate(t, config, ev.cells(config)[0])
    assert base[0]["nll"] != scaled[0]["nll"] and base[0]["nll"] == again[0]["nll"]
    assert missing[0]["status"] == "n/a" and "targets mixer 'hsa', which the model does not use" in missing[0]["reason"]
    # rows stored before variants existed belong to the cells as trained
    assert ev.todo(config, [{k: v for k, v in r.items() if k != "variant"} for r in base]) == ev.cells(config)[1:]
    with pytest.raises(ZooError, match="variant key 'rope.base' must be mixer.MIXER.SETTING"):
        ev.make_config({**table, "variants": [{"rope.base": 1.0}]})
    with pytest.raises(ZooError, match="a variant sets nothing"):
        ev.make_config({**table, "variants": [{}]})


def test_ad_hoc_hashhop_ids_are_pinned():
    # `zoo hashhop eval` rows stored before variants existed must stay found (and resumable)
    from zoo.cli.hashhop import cli_eval_id
    from zoo.eval.hashhop import HashHopGrid

    assert cli_eval_id(HashHopGrid(n_chars=[200, 800]), None) == "c5d20d061e55"
    assert cli_eval_id(HashHopGrid(n_chars=[200, 800], variants=[{"mixer.hsa.top_k": 4}]), None) == "c5d20d061e55"


def test_builtins_are_registered():
    assert {"hashhop", "ppl", "retrieval-recall"} <= set(EVALUATORS.names())
    assert EVALUATORS.source("hashhop") == "mixer-zoo"
    with pytest.raises(ZooError, match="did you mean 'hashhop'"):
        get_evaluator("hashop")


@pytest.mark.parametrize("name", ["hashhop", "ppl", "retrieval-recall"])
def test_builtins_pass_conformance(name):
    assert conformance.run_all(get_evaluator(name)) == dict.fromkeys(conformance.CHECKS)


class LooseConfig(BaseModel):  # accepts unknown keys
    n: int = 2


class StrictConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = 2


class Toy(Evaluator):
    """Rows of the cell index; subclasses below break one rule each."""

    name = "toy"
    config_cls = StrictConfig
    columns = {"i": int, "value": float}
    cell_columns = ("i",)
    example = {"n": 2}

    def cells(self, config):
        return [(i,) for i in range(config.n)]

    def evaluate(self, target, config, cell):
        return [{"i": cell[0], "value": 0.5 * cell[0]}]


class Random(Toy):
    def evaluate(self, target, config, cell):
        return [{"i": cell[0], "value": random.random()}]


class Undeclared(Toy):
    def evaluate(self, target, config, cell):
        return [{"i": cell[0], "value": "high", "extra": 1}]


class Forgetful(Toy):  # rows name another cell, so stored cells are never found
    def evaluate(self, target, config, cell):
        return [{"i": cell[0] + 1, "value": 0.0}]


class Loose(Toy):
    config_cls = LooseConfig


def test_conformance_passes_a_good_evaluator_and_catches_bad_ones():
    assert conformance.run_all(Toy()) == dict.fromkeys(conformance.CHECKS)
    failing = {cls.__name__: {k for k, v in conformance.run_all(cls()).items() if v is not None}
               for cls in (Random, Undeclared, Forgetful, Loose)}
    assert failing == {"Random": {"deterministic", "resumable"}, "Undeclared": {"rows_match_schema"},
                       "Forgetful": {"rows_match_schema", "resumable"}, "Loose": {"config_errors_are_one_line"}}


def test_schema_errors_name_the_column():
    ev = Toy()
    assert schema_errors(ev, [{"i": 1, "value": 2}, {"i": 2, "value": None}]) == []  # an int is a fine float
    assert schema_errors(ev, [{"value": 1.0}]) == ["row 0: no cell column 'i'"]
    assert schema_errors(ev, [{"i": True, "value": 1.0}]) == ["row 0: column 'i' = True is not int"]


def test_config_errors_are_one_line():
    with pytest.raises(ZooError, match="eval.hashhop: unknown key 'n_char'") as e:
        get_evaluator("hashhop").make_config({"n_char": [100]})
    assert "\n" not in str(e.value)
    with pytest.raises(ZooError, match="eval.ppl: key 'windows' = 0 is invalid"):
        get_evaluator("ppl").make_config({"windows": 0})


def test_spec_eval_tables_are_checked_by_their_evaluator():
    spec = parse_spec({**BASE, "eval": {"hashhop": {"n_chars": [200], "hops": [1]}}})
    assert eval_settings(spec) == {"hashhop": {"n_chars": [200], "hops": [1]}}
    with pytest.raises(ZooError, match="'eval.hashop': unknown evaluator 'hashop'.*did you mean 'hashhop'"):
        parse_spec({**BASE, "eval": {"hashop": {}}})
    with pytest.raises(ZooError, match="unknown key 'eval.hashhop.n_char'.*did you mean 'n_chars'"):
        parse_spec({**BASE, "eval": {"hashhop": {"n_char": [100]}}})
    with pytest.raises(ZooError, match="eval.hashhop must be a table"):
        parse_spec({**BASE, "eval": {"hashhop": 3}})
    with pytest.raises(ZooError, match="key 'eval.ppl' needs task.name = 'lm', got 'hashhop'"):
        parse_spec({**BASE, "eval": {"ppl": {}}})
    with pytest.raises(ZooError, match="unknown key 'eval.bench.length'"):
        parse_spec({**BASE, "eval": {"bench": {"length": [16]}}})


def test_cli_lists_and_checks_builtins():
    r = zoo_cli("evaluators")
    assert r.returncode == 0, r.stderr
    assert "hashhop" in r.stdout and "ppl" in r.stdout and "mixer-zoo" in r.stdout
    r = zoo_cli("check-evaluator", "hashop")
    assert r.returncode == 2 and "unknown evaluator 'hashop'" in r.stderr and r.stderr.strip().count("\n") == 0


# -- the example plugin's evaluator --------------------------------------------------------------

@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("example-eval") / "site"
    pip_install(EXAMPLE, site)
    return site


def test_example_evaluator_is_listed_and_conformant(example_site):
    r = zoo_cli("evaluators", site=example_site)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if "position-accuracy" in x)
    assert "zoo-example-mixer" in line and "broken" not in r.stdout
    r = zoo_cli("check-evaluator", "position-accuracy", site=example_site)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("pass") == len(conformance.CHECKS)


def test_example_evaluator_runs_from_a_spec_into_the_store(example_site, tmp_path):
    from zoo.experiment.sweep import run_experiment
    from zoo.store import Store

    toml = tmp_path / "pos.toml"
    toml.write_text('name = "pos"\nmixers = ["nope", "short-conv-glr"]\n'
                    '[model]\nd_model = 32\nn_layers = 1\n'
                    '[task]\nname = "hashhop"\nconfig = { hops = [1], hash_len = 4 }\n'
                    '[train]\nsteps = 2\nbatch_size = 2\nseq_len = 64\nthreads = 1\n'
                    '[eval.position-accuracy]\nlengths = [64, 96]\nbuckets = 2\nbatches = 1\n')
    with on_path(example_site, ("zoo_example_mixer",)):
        assert registry.get_spec("short-conv-glr").source == "zoo-example-mixer"
        assert EVALUATORS.source("position-accuracy") == "zoo-example-mixer"
        spec = load_spec(toml)
        store = Store(tmp_path / "store")
        outcomes = run_experiment(spec, store)
        assert [o.evals for o in outcomes] == [{"position-accuracy": "ok"}] * 2
        eid = eval_id("position-accuracy", eval_settings(spec)["position-accuracy"])
        for o in outcomes:
            rows = store.results(o.planned.run_id, "position-accuracy")
            assert [(r["length"], r["bucket"]) for r in rows] == [(64, 0), (64, 1), (96, 0), (96, 1)]
            assert all(r["eval_id"] == eid for r in rows) and sum(r["tokens"] for r in rows) > 0
            assert all(r["accuracy"] is None if r["tokens"] == 0 else 0 <= r["accuracy"] <= 1 for r in rows)
        again = run_experiment(spec, store)
        assert [o.evals for o in again] == [{"position-accuracy": "cached"}] * 2
        # the report has no figure for a plugin's evaluator: its rows go to data/, named in the summary
        from zoo.experiment.record import recorded
        from zoo.report import build_report

        built = build_report(recorded(spec, store), root=store.root, out=tmp_path / "rep", pdf=False)
        lines = (tmp_path / "rep" / "data" / "eval_position-accuracy.csv").read_text().splitlines()
        assert len(lines) == 1 + 8 and lines[0].startswith("label,") and "eval_id" in lines[0]
        assert "position-accuracy: 8 rows in data/eval_position-accuracy.csv" in built.html.read_text()


def test_broken_evaluator_plugin_is_reported_not_raised(example_site, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(example_site, site)
    (site / "zoo_example_mixer" / "position_accuracy.py").write_text("raise ImportError('deliberately broken')\n")
    r = zoo_cli("evaluators", site=site)
    assert r.returncode == 0, r.stderr
    assert "broken plugins" in r.stdout and "deliberately broken" in r.stdout and "hashhop" in r.stdout
    with on_path(site, ("zoo_example_mixer",)):
        with pytest.raises(ZooError, match="failed to import: ImportError: deliberately broken"):
            get_evaluator("position-accuracy")


def test_new_evaluator_scaffold_passes_conformance(tmp_path):
    out = tmp_path / "zoo-my-eval"
    r = zoo_cli("new-plugin", "evaluator", "my-eval", "--out", str(out))
    assert r.returncode == 0, r.stderr
    site = tmp_path / "site"
    pip_install(out, site)
    r = zoo_cli("check-evaluator", "my-eval", site=site)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("pass") == len(conformance.CHECKS)
    r = zoo_cli("evaluators", site=site)
    assert "my-eval" in r.stdout and "zoo-my-eval" in r.stdout


@pytest.mark.parametrize("bad", ["Bad_Name", "hashhop"])
def test_new_evaluator_rejects_bad_names(bad, tmp_path):
    r = zoo_cli("new-plugin", "evaluator", bad, "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and r.stderr.startswith("error:") and r.stderr.strip().count("\n") == 0
