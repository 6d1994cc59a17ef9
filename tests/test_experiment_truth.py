"""A report tells the truth about its own runs: chance levels from the tasks, findings that
say what the intervals support, a spec's report holding exactly its experiment, and the
command-line edges around it (progress in logs, run ids, read-only commands)."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys

import pytest
from rich.console import Console

from zoo.report import analysis as A
from zoo.report.data import HashHopCell, ReportData, Run
from zoo.store import Store
from zoo.tasks.base import get_task

TINY = """
name = "{name}"
mixers = {mixers}
[model]
d_model = 16
n_layers = 1
[model.mixer_config]
{mixer_config}
[task]
name = "hashhop"
config = {{ hops = [1], hash_len = 2 }}
[train]
steps = 2
batch_size = 2
seq_len = 64
threads = 1
[eval.hashhop]
n_chars = [14]
hops = [1]
hash_len = 2
samples = 2
queries = 2
greedy_samples = 0
"""


def zoo(*args, cwd=None):
    env = dict(os.environ, COLUMNS="250", ZOO_PROGRESS_INTERVAL="0")
    return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, text=True, env=env, cwd=cwd)


# -- chance levels ---------------------------------------------------------------------------------

def test_chance_levels_come_from_the_task_settings():
    hh = get_task("hashhop", {"hops": [1], "hash_len": 3})
    # three letters guessed among 52, the closing quote right: the plateau of an untrained model
    assert hh.chance("loss") == pytest.approx(3 * math.log(52) / 4)
    assert hh.chance("accuracy") == pytest.approx(52.0 ** -3)
    assert hh.chance("char_accuracy") == pytest.approx((3 / 52 + 1) / 4)
    assert hh.chance("first_accuracy") == pytest.approx(1 / 52)
    assert hh.chance("accuracy", hash_len=2) == pytest.approx(52.0 ** -2)
    assert hh.chance("perplexity") is None
    # a mix of hop counts without CoT: each target is one hash, so the chance is the same
    assert get_task("hashhop", {"hops": [1, 2], "hash_len": 3}).chance("loss") == pytest.approx(hh.chance("loss"))
    assert get_task("mqar", {"vocab_size": 64}).chance("accuracy") == pytest.approx(1 / 32)
    assert get_task("lm").chance("loss") == pytest.approx(math.log(256))


def _point(acc, lo, hi, length=100):
    return A.Point(length, 100, acc * 100, acc, lo, hi)


def test_findings_say_chance_and_what_the_intervals_support():
    chance = 1e-3
    assert A.versus_chance(_point(0.3, 0.2, 0.4), chance) == "above chance"
    assert A.versus_chance(_point(0.0, 0.0, 0.03), chance) == "at chance"
    s = A.compare_sentence("At 100 tokens", [("b", _point(0.0, 0.0, 0.03)), ("a", _point(0.3, 0.2, 0.4))], chance)
    assert "a 0.300 [0.20, 0.40] is above chance" in s and "b 0.000 [0.00, 0.03] is at chance" in s
    assert "a is above b with intervals that do not overlap" in s
    s = A.compare_sentence("At 100 tokens", [("a", _point(0.3, 0.2, 0.4)), ("b", _point(0.25, 0.15, 0.35))], chance)
    assert "within their intervals" in s and "do not overlap" not in s


def _cell(rid, length, k, n, n_chars):
    from zoo.stats import wilson

    lo, hi = wilson(k, n)
    return HashHopCell(rid, length, 1, False, n, k, k / n, lo, hi, n_chars=n_chars, meta={"hash_len": 2})


def test_first_finding_compares_every_length_up_to_training():
    runs = [Run(run_id=r, label=r, mixers=["nope"], status="done", train_len=96, params=1) for r in ("att", "rec")]
    cells = [_cell("att", 71, 40, 128, 14), _cell("att", 91, 20, 128, 28), _cell("att", 211, 0, 128, 112),
             _cell("rec", 71, 2, 128, 14), _cell("rec", 91, 0, 128, 28), _cell("rec", 211, 0, 128, 112)]
    data = ReportData("t", runs, hashhop=cells)
    found = A.findings(data, A.entries(data))
    assert found[0].startswith("Up to the training length (71 to 91 tokens, 2 and 4 key-value lines)")
    assert "att is above rec at every one of these lengths, with intervals that do not overlap" in found[0]
    largest = next(f for f in found if f.startswith("At the largest length"))
    assert "are at chance" in largest and "within their intervals" in largest


# -- a report is exactly its experiment ------------------------------------------------------------

@pytest.fixture(scope="module")
def two_specs(tmp_path_factory):
    """Spec a trains nope and sinusoidal; spec b reuses nope's config under its own label."""
    d = tmp_path_factory.mktemp("specs")
    heads = "nope = { n_heads = 2 }\n"
    (d / "a.toml").write_text(TINY.format(name="a", mixers='["nope", "sinusoidal"]',
                                          mixer_config=heads + "sinusoidal = { n_heads = 2 }"))
    (d / "b.toml").write_text(TINY.format(name="b", mixers='{ attn = { mixer = "nope" } }', mixer_config=heads))
    root = d / "store"
    for spec in ("a", "b"):
        r = zoo("compare", str(d / f"{spec}.toml"), "--root", str(root))
        assert r.returncode == 0, r.stderr + r.stdout
    return d, root


def test_runs_list_by_experiment_uses_that_experiments_labels(two_specs):
    d, root = two_specs
    r = zoo("runs", "list", "--experiment", "b", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert "(1)" in r.stdout and "attn" in r.stdout and "sinusoidal" not in r.stdout
    members = Store(root).members("b")
    assert [(m["label"], m["kind"]) for m in members] == [("attn", "train")]


def test_compare_records_the_experiment(two_specs):
    d, root = two_specs
    record = Store(root).experiment("b")
    assert [(r["label"], r["kind"]) for r in record["runs"]] == [("attn", "train")]
    assert record["runs"][0]["id"] == Store(root).members("b")[0]["run_id"] and "hashhop" in record["eval_ids"]


def test_a_spec_report_holds_only_its_own_rows(two_specs):
    from zoo.experiment.record import recorded
    from zoo.experiment.spec import load_spec
    from zoo.report.load import load

    d, root = two_specs
    store = Store(root)
    rid = store.members("b")[0]["run_id"]
    # an ad-hoc evaluation and bench of the same run must not enter the spec's report
    r = zoo("hashhop", "eval", rid, "--root", str(root), "--n-chars", "21", "--hops", "1", "--samples", "2",
            "--queries", "2", "--hash-len", "2", "--greedy", "0", "--out", str(d / "hh.json"))
    assert r.returncode == 0, r.stderr + r.stdout
    r = zoo("bench", "--mixers", "nope", "--seq-lens", "32", "--mode", "fwd", "--d-model", "16",
            "--tokens-per-batch", "64", "--peers", "none", "--root", str(root))
    assert r.returncode == 0, r.stderr + r.stdout
    data = load(store, recorded(load_spec(d / "b.toml"), store), spec_path=d / "b.toml")
    assert [r.label for r in data.runs] == ["attn"]
    assert {c.n_chars for c in data.hashhop} == {14} and not data.bench
    adhoc = load(store, run_ids=[rid])
    assert {c.n_chars for c in adhoc.hashhop} == {14, 21} and adhoc.bench


def test_hashhop_eval_stores_cells_and_resumes(two_specs):
    d, root = two_specs
    store = Store(root)
    rid = store.members("a")[0]["run_id"]
    args = ["hashhop", "eval", rid[:8], "--root", str(root), "--n-chars", "14,28", "--hops", "1", "--samples", "2",
            "--queries", "2", "--hash-len", "2", "--greedy", "0", "--out", str(d / "hh2.json")]
    r = zoo(*args)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "stored 2 cells" in r.stdout
    r = zoo(*args)  # the same grid again: nothing is evaluated twice
    assert r.returncode == 0 and "stored 0 cells" in r.stdout and "2 were stored before" in r.stdout


# -- command-line edges ------------------------------------------------------------------------------

def test_train_in_n_chars_is_the_training_length_in_tokens():
    from zoo.eval.hashhop import HashHopGrid

    g = HashHopGrid(n_chars=[1], hops=[1], hash_len=2, queries=2)
    chars = g.chars_for_tokens(96)
    assert g.cell_tokens(chars, 1, False) <= 96 < g.cell_tokens(chars + 7, 1, False)


def test_progress_writes_plain_lines_when_not_a_terminal():
    from zoo.progress import Progress

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    with Progress(console, "rope", total=10, unit="step", interval=0, fields=("loss",)) as p:
        for step in range(1, 11):
            p.update(step, loss=f"{1 / step:.2f}")
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("rope: step 1/10 (10%) loss 1.00 elapsed") and "ETA" in lines[0]
    assert lines[-1].startswith("rope: step 10/10 (100%)") and "ETA" not in lines[-1]


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_shows_a_label_as_written(terminal):
    from zoo.progress import Progress

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=terminal, width=200)
    with Progress(console, "[/]rope[b]", total=2, unit="step", interval=0) as p:
        p.update(1)
        p.update(2, description="[/]again")
    assert "[/]" in buf.getvalue()


def test_read_only_commands_create_no_store(tmp_path):
    r = zoo("runs", "list", cwd=tmp_path)
    assert r.returncode == 0 and "no runs" in r.stdout
    r = zoo("report", "--runs", "abc", cwd=tmp_path)
    assert r.returncode != 0
    assert not (tmp_path / "zoo-runs").exists()


def test_a_config_error_leaves_no_run_record(tmp_path):
    r = zoo("train", "--seq-len", "3", "--root", str(tmp_path))
    assert r.returncode == 2 and "needs more than 3 tokens" in r.stderr
    assert Store(tmp_path).runs() == [] and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args,hint", [(("--task", "hashop"), "did you mean 'hashhop'?"),
                                       (("--set", "train.stepz=3"), "did you mean 'train.steps'?"),
                                       (("--set", "learning_rate=3"), "did you mean 'train.lr'?"),
                                       (("--mixer", "ropee"), "did you mean 'rope'")])
def test_did_you_mean(tmp_path, args, hint):
    r = zoo("train", *args, "--root", str(tmp_path))
    assert r.returncode == 2 and hint in r.stderr


def test_bench_defaults_follow_the_device():
    from zoo.bench import BenchConfig

    cpu = BenchConfig(device="cpu")
    assert (cpu.d_model, cpu.tokens_per_batch, cpu.seq_lens) == (256, 8192, [256, 1024, 4096])
    assert BenchConfig(device="cpu", d_model=64).d_model == 64


def test_a_broken_plugin_is_named_by_its_import_error(monkeypatch):
    from zoo import registry
    from zoo.errors import ZooError

    registry.MIXERS.ensure_loaded()
    monkeypatch.setattr(registry.MIXERS, "broken", [{"name": "myconv", "package": "zoo-myconv",
                                                       "error": "ImportError: no module named 'fancy'"}])
    with pytest.raises(ZooError, match="failed to import: ImportError: no module named 'fancy'"):
        registry.get_spec("myconv")


def test_wandb_mode_from_the_environment_wins(monkeypatch, tmp_path):
    import importlib.machinery
    import types

    from zoo.train.config import TrainConfig
    from zoo.train.trainer import Sinks

    seen = {}
    fake = types.ModuleType("wandb")  # a module as the import system knows one: the trainer looks it up first
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kw: seen.update(kw) or types.SimpleNamespace(log=None, finish=None)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    Sinks(TrainConfig(steps=1, wandb=True), Store(tmp_path), "r", tmp_path, {})
    assert seen["mode"] == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    Sinks(TrainConfig(steps=1, wandb=True), Store(tmp_path), "r", tmp_path, {})
    assert seen["mode"] == "offline"


def test_hashhop_eval_progress_counts_every_variant(two_specs):
    # each variant scores every sample again: the bar's total says so and ends at 100%
    d, root = two_specs
    rid = Store(root).members("a")[0]["run_id"]
    spec = d / "variants.toml"
    spec.write_text(TINY.format(name="v", mixers='["nope"]', mixer_config="nope = { n_heads = 2 }")
                    + 'variants = [{ "mixer.nope.window" = 4 }, { "mixer.nope.window" = 8 }]\n')
    r = zoo("hashhop", "eval", rid, "--root", str(root), "--spec", str(spec), "--out", str(d / "hv.json"))
    assert r.returncode == 0, r.stderr + r.stdout
    assert "stored 3 cells" in r.stdout
    assert "samples 6/6 (100%)" in r.stderr, r.stderr
