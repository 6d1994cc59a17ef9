"""The CLI basics: version, listing, doctor, error lines; `import zoo` stays light."""

import os
import subprocess
import sys

import zoo


def run(*args):
    env = dict(os.environ, COLUMNS="250")
    return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, text=True, env=env)


def test_version():
    r = run("--version")
    assert r.returncode == 0 and zoo.__version__ in r.stdout


def test_mixers_table_lists_builtins_with_costs():
    r = run("mixers")
    assert r.returncode == 0, r.stderr
    for name in ("nope", "sinusoidal"):
        assert name in r.stdout
    assert "O(L^2)" in r.stdout and "attention" in r.stdout


def test_tasks_table_lists_builtins_with_chance_and_source():
    r = run("tasks")
    assert r.returncode == 0, r.stderr
    for name in ("hashhop", "lm", "mqar"):
        assert name in r.stdout
    assert "0.00391" in r.stdout and "mixer-zoo" in r.stdout  # lm: a uniform guess over 256 bytes


def test_mixers_show_lists_config_bounds_and_citation():
    r = run("mixers", "show", "sinusoidal")
    assert r.returncode == 0, r.stderr
    assert "n_heads" in r.stdout and ">= 1" in r.stdout and "Vaswani" in r.stdout


def test_doctor_runs_on_cpu():
    r = run("doctor")
    assert r.returncode == 0, r.stderr
    assert "torch" in r.stdout and "flash-linear-attention" in r.stdout and "nope" in r.stdout


def test_bad_flag_is_one_line_with_hint():
    r = run("mixers", "--no-such-flag")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "--help" in r.stderr


def test_debug_shows_traceback():
    r = run("--debug", "mixers", "show", "nop")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_import_zoo_imports_no_optional_kernel():
    code = ("import sys, zoo, zoo.registry, zoo.model; zoo.registry.names(); "
            "bad = [m for m in ('fla', 'mamba_ssm', 'flash_attn', 'rwkv', 'matplotlib', 'weasyprint', 'ray') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hf_extra_is_imported_only_when_used():
    """The CLI, specs and evaluators load; transformers, tokenizers and datasets wait for --hf."""
    code = ("import sys, zoo, zoo.cli, zoo.experiment.spec, zoo.eval.hf, zoo.tasks.lm, zoo.experiment.sweep, "
            "zoo.report.load; "
            "bad = [m for m in ('transformers', 'tokenizers', 'datasets') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


import pytest  # noqa: E402


@pytest.mark.parametrize("argv,match", [
    (["train", "--device", "foo", "--steps", "1"], "unknown device 'foo'"),
    (["train", "--mixer", "rope,,swa", "--steps", "1"], "empty mixer name"),
    (["bench", "--mixers", ",", "--seq-lens", "64", "--device", "cpu"], "names no mixer"),
    (["report", "--where", "params>abc"], "is not a number"),
    (["compare", "experiments/smoke.toml", "--gpus", "7"], "not visible"),
])
def test_bad_input_is_one_line(argv, match, tmp_path):
    from zoo.store import Store

    Store(tmp_path)  # an empty store, so the checks of the arguments themselves are reached
    r = run(*argv, "--root", str(tmp_path))
    assert r.returncode == 2, r.stdout + r.stderr
    assert match in r.stderr and r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
