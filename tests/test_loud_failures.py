"""Every command's exit status tells the truth, every bad input is one line, none hangs.

The fuzz tests throw generated spec files and option values at the command line and
require, for each: exit 0 or 2, a single `error: ...` line when 2, no traceback, and an
answer within a bounded time."""

import contextlib
import io
import json
import math
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoo.cli import main
from zoo.errors import ZooError

SECONDS = 30  # per command: bounded time (it answers at once; the bound is for a loaded CI machine)


@contextlib.contextmanager
def time_limit(seconds: float):
    def expire(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with time_limit(SECONDS), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_truthful(code: int, err: str, allowed=(0, 2)) -> None:
    assert code in allowed, (code, err)
    assert "Traceback" not in err, err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err


# -- exit codes ---------------------------------------------------------------------------------------

SPEC = {"name": "codes", "mixers": ["nope"],
        "model": {"d_model": 16, "n_layers": 1, "mixer_config": {"nope": {"n_heads": 2}}},
        "task": {"name": "hashhop", "config": {"hops": [1], "hash_len": 4}},
        "train": {"steps": 2, "batch_size": 2, "seq_len": 64, "threads": 1},
        "eval": {"hashhop": {"n_chars": [200], "hops": [1], "samples": 1}}}


def to_toml(d: dict, prefix: str = "") -> str:
    """Enough of a TOML writer for these specs: scalars and lists inline, tables as tables."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(str(k))} = {val(x)}" for k, x in v.items()) + "}"
        raise TypeError(v)

    lines = [f"{json.dumps(str(k))} = {val(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            name = f"{prefix}.{json.dumps(str(k))}" if prefix else json.dumps(str(k))
            lines.append(f"\n[{name}]\n" + to_toml(v, name))
    return "\n".join(lines)


def _fake_train(outcome):
    def train(run, store, **kw):
        if isinstance(outcome, Exception):
            raise outcome
        return SimpleNamespace(summary={"final_loss": 1.0})
    return train


@pytest.mark.parametrize("outcome,why", [
    ("trained", "evaluations failed"),  # no checkpoint: the HashHop evaluation fails
    ("failed", "run(s) failed"),
    ("busy", "being trained by another process"),
])
def test_compare_exits_1_when_anything_failed_or_was_busy(tmp_path, monkeypatch, outcome, why):
    import zoo.experiment.sweep as sweep
    from zoo.train.trainer import RunBusy, RunFailed

    fake = {"trained": None, "failed": RunFailed("loss is not finite"), "busy": RunBusy("run x is busy")}[outcome]
    monkeypatch.setattr(sweep, "train", _fake_train(fake))
    p = tmp_path / "spec.toml"
    p.write_text(to_toml(SPEC))
    code, out, err = run_cli(["compare", str(p), "--root", str(tmp_path / "root"), "--no-progress"])
    assert code == 1, (out, err)
    assert why in " ".join(out.split()), out


def test_compare_exits_1_when_the_bench_fails(tmp_path, monkeypatch):
    import zoo.experiment.sweep as sweep
    from zoo.errors import ZooError

    def broken_bench(*a, **k):
        raise ZooError("no lengths fit")

    monkeypatch.setattr(sweep, "train", _fake_train(None))
    monkeypatch.setattr(sweep, "bench_experiment", broken_bench)
    p = tmp_path / "spec.toml"
    p.write_text(to_toml({**SPEC, "eval": {"bench": {"lengths": [64]}}}))
    code, out, err = run_cli(["compare", str(p), "--root", str(tmp_path / "root"), "--no-progress"])
    assert code == 1, (out, err)
    assert "bench failed" in out and "(bench)" in " ".join(out.split()), out


def test_exit_codes_of_typer_exit_usage_and_interrupt(tmp_path, monkeypatch):
    import zoo.experiment.sweep as sweep

    assert run_cli(["train", "--steps", "x"])[0] == 2  # usage
    assert run_cli(["runs", "list", "--root", str(tmp_path)])[0] == 0

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "train", interrupted)
    p = tmp_path / "spec.toml"
    p.write_text(to_toml(SPEC))
    code, _, err = run_cli(["compare", str(p), "--root", str(tmp_path / "r"), "--no-progress"])
    assert code == 130 and "interrupted" in err


def test_markup_in_user_text_prints_literally(tmp_path):
    code, _, err = run_cli(["train", "--mixer", "[/]", "--root", str(tmp_path)])
    assert code == 2 and "unknown mixer '[/]'" in err
    code, _, err = run_cli(["runs", "show", "[/]", "--root", str(tmp_path)])
    assert code == 2 and "no run '[/]'" in err
    from zoo.cli import print_error

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        print_error("reports need weasyprint", "pip install 'mixer-zoo[report]'")
    assert "pip install 'mixer-zoo[report]'" in buf.getvalue()


def test_plugin_calling_sys_exit_is_reported_broken(monkeypatch):
    from zoo.registry import MIXERS

    class EP:
        name, value, dist = "exits", "exits:Mixer", None

        def load(self):
            raise SystemExit(3)

    before = list(MIXERS.broken)
    MIXERS._load(EP())
    assert MIXERS.broken[-1]["name"] == "exits" and "SystemExit" in MIXERS.broken[-1]["error"]
    MIXERS.broken[:] = before


def test_mqar_trains_with_its_own_vocabulary(tmp_path):
    code, out, err = run_cli(["train", "--task", "mqar", "--seq-len", "64", "--steps", "2", "--d-model", "16",
                              "--n-layers", "1", "--batch-size", "2", "--no-progress", "--root", str(tmp_path),
                              "--set", "model.mixer_config.nope.n_heads=2", "--set", "train.threads=1"])
    assert code == 0, err
    from zoo.store import Store

    (run,) = Store(tmp_path).runs()
    assert run["config"]["model"]["vocab_size"] == 8192


# -- one-line errors, named cases ----------------------------------------------------------------------

BAD_SPECS = {
    "sweep value out of bounds": {"sweep": {"lr": [float("nan")]}},
    "unknown sweep key": {"sweep": {"axes": {"train.nonsense": [1]}}},
    "sweep through a value": {"sweep": {"axes": {"train.lr.x": [3]}}},
    "bad per-mixer model value": {"mixers": {"nope": {"model": {"d_model": -4}}}},
    "negative seq_len schedule": {"train": {"schedules": {"seq_len": {"points": [[0, -5]]}}}},
    "unused mixer_config name": {"model": {"mixer_config": {"nope": {"n_heads": 2}, "nopee": {}}}},
    "duplicate mixers": {"mixers": ["nope", "nope"]},
    "n_chars beyond the bound": {"eval": {"hashhop": {"n_chars": [10**12]}}},
    "hops beyond the bound": {"eval": {"hashhop": {"hops": [10**6]}}},
}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "mixers" else v
    return out


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_spec_is_one_line(tmp_path, case):
    p = tmp_path / "spec.toml"
    p.write_text(to_toml(_merge(SPEC, BAD_SPECS[case])))
    code, out, err = run_cli(["compare", str(p), "--dry-run", "--root", str(tmp_path / "root")])
    assert code == 2, (case, out, err)
    assert_truthful(code, err)


def test_deeply_nested_toml_and_json_are_one_line(tmp_path):
    p = tmp_path / "deep.toml"
    p.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    code, _, err = run_cli(["compare", str(p), "--dry-run", "--root", str(tmp_path / "r")])
    assert_truthful(code, err, (2,))
    j = tmp_path / "deep.json"
    j.write_text("[" * 100000 + "]" * 100000)
    code, _, err = run_cli(["train", "--config", str(j), "--dry-run", "--root", str(tmp_path / "r")])
    assert_truthful(code, err, (2,))
    j.write_text("[1, 2]")
    code, _, err = run_cli(["train", "--config", str(j), "--dry-run", "--root", str(tmp_path / "r")])
    assert_truthful(code, err, (2,))
    assert "not an object" in err


@pytest.mark.parametrize("argv", [
    ["hashhop", "generate", "--n-chars", "10000000000000"],
    ["hashhop", "generate", "--n-chars", "1000", "--hash-len", "100000000"],
    ["hashhop", "generate", "--n-chars", "1000", "--hops", "1000000"],
    ["hashhop", "eval", "--untrained", '{"d_model": 16, "n_layers": 1, "mixer_config": {"nope": {"n_heads": 2}}}',
     "--n-chars", "1e12"],
    ["hashhop", "eval", "--untrained", '{"d_model": 16, "n_layers": 1, "mixer_config": {"nope": {"n_heads": 2}}}',
     "--n-chars", "inf"],
    ["train", "--set", "train.lr.x=3", "--dry-run"],
    ["train", "--set", "train.steps=10000000000", "--dry-run"],
    ["train", "--d-model", "100000", "--dry-run"],
])
def test_bounds_state_themselves(tmp_path, argv):
    code, _, err = run_cli([*argv, "--root", str(tmp_path)] if argv[0] == "train" else argv)
    assert_truthful(code, err, (2,))


# -- fuzz ------------------------------------------------------------------------------------------------

LEAVES = [("model", "d_model"), ("model", "n_layers"), ("model", "mlp_hidden"), ("model", "vocab_size"),
          ("model", "chunk_size"), ("train", "steps"), ("train", "seq_len"), ("train", "batch_size"),
          ("train", "lr"), ("train", "grad_accum"), ("train", "warmup_steps"), ("train", "max_tokens"),
          ("train", "ckpt_minutes"), ("task", "config", "hash_len"), ("task", "config", "n_chars"),
          ("task", "config", "hops"), ("task", "name"), ("eval", "hashhop", "n_chars"),
          ("eval", "hashhop", "hops"), ("eval", "hashhop", "samples"), ("eval", "hashhop", "queries"),
          ("eval", "hashhop", "hash_len"), ("sweep", "lr"), ("sweep", "d_model"), ("sweep", "seed"),
          ("sweep", "axes", "train.batch_size"), ("sweep", "multiple"), ("name",), ("mixers",),
          ("model", "mixer_config", "nope", "n_heads"), ("train", "schedules", "seq_len"), ("nonsense",)]

nasty_text = st.sampled_from(["[/]", "$x$", "=1+1", "-", "@", "../../etc", "", " ", "nope", "x" * 300, "%",
                              "mixer-zoo[report]", "[bold]", "\x00"])
nasty_number = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                         st.sampled_from([0, -1, 1, 2, 2**31, 2**63, 10**12, 1e300, -0.0]))
scalar = st.one_of(nasty_number, nasty_text, st.booleans())
value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(nasty_text, inner, max_size=2)), max_leaves=6)


def _set(d: dict, path: tuple, v) -> dict:
    d = json.loads(json.dumps(d))
    node = d
    for p in path[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[path[-1]] = v
    return d


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.sampled_from(LEAVES), value), min_size=1, max_size=3))
def test_fuzzed_spec_files(tmp_path, edits):
    spec = SPEC
    for path, v in edits:
        spec = _set(spec, path, v)
    try:
        text = to_toml(spec)
    except TypeError:
        return
    p = tmp_path / "fuzz.toml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    t0 = time.time()
    code, out, err = run_cli(["compare", str(p), "--dry-run", "--root", str(tmp_path / "root")])
    assert_truthful(code, err)
    assert time.time() - t0 < SECONDS


OPTIONS = {
    "train": ["--d-model", "--n-layers", "--steps", "--batch-size", "--grad-accum", "--seq-len", "--lr", "--warmup",
              "--seed", "--eval-every", "--ckpt-every", "--ckpt-minutes", "--mixer", "--task", "--lr-schedule",
              "--set", "--label"],
    "generate": ["--n-chars", "--queries", "--hops", "--hash-len", "--seed", "--count"],
    "eval": ["--n-chars", "--hops", "--cot", "--samples", "--queries", "--hash-len", "--greedy", "--seed",
             "--chunk-size", "--rope-scaling", "--rope-factor"],
    "runs": ["--status", "--kind", "--experiment", "--format", "--what"],
}
TINY = json.dumps({"d_model": 16, "n_layers": 1, "mixer_config": {"nope": {"n_heads": 2}}})
option_value = st.one_of(nasty_number.map(str), nasty_text, st.sampled_from(
    ["train.lr=nan", "train.steps=-1", "model.d_model=1e9", "train.lr.x=3", "task.config.hops=[0]", "x=1",
     "model.mixer_config.zzz.a=1", "1k", "1e12", "inf", "nan", "0x10"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(command=st.sampled_from(list(OPTIONS)), data=st.data())
def test_fuzzed_cli_options(tmp_path, command, data):
    opts = data.draw(st.lists(st.tuples(st.sampled_from(OPTIONS[command]), option_value), min_size=1, max_size=4))
    if command == "train":
        argv = ["train", "--dry-run", "--root", str(tmp_path / "root")]
    elif command == "eval":  # small valid settings unless the draw replaces them
        argv = ["hashhop", "eval", "--untrained", TINY, "--n-chars", "200", "--hops", "1", "--samples", "1",
                "--queries", "1", "--greedy", "0", "--out", str(tmp_path / "e.json")]
    elif command == "runs":
        sub = data.draw(st.sampled_from(["list", "export", "show"]))
        opts = [(f, v) for f, v in opts if (f in ("--format", "--what")) == (sub == "export")]
        argv = ["runs", sub, "--root", str(tmp_path / "root")] + ([data.draw(nasty_text)] if sub == "show" else [])
    else:  # a valid size unless the draw replaces it: generation itself must stay small
        argv = ["hashhop", "generate", "--n-chars", "300", "--out", str(tmp_path / "s.jsonl")]
    for flag, v in opts:
        argv += [flag, v]
    if command == "generate" and any(f == "--n-chars" and v.lstrip("-").isdigit() and 300 < int(v) <= 1 << 24
                                     for f, v in opts):
        return  # a valid large size is real work, not a bad input
    if command == "generate" and any(f == "--count" and v.isdigit() and int(v) > 100 for f, v in opts):
        return
    if command == "eval" and any(f in ("--samples", "--queries", "--n-chars") and v.isdigit() and int(v) > 2000
                                 for f, v in opts):
        return  # valid but large: real work
    t0 = time.time()
    code, out, err = run_cli(argv)
    assert_truthful(code, err)
    assert time.time() - t0 < SECONDS


def test_invalid_helper_is_one_line():
    from pydantic import BaseModel, ValidationError

    from zoo.errors import invalid

    class M(BaseModel):
        x: int

    with pytest.raises(ValidationError) as e:
        M(x={"a": "b" * 1000})
    err = invalid(e.value, "bad setting", "hint")
    assert isinstance(err, ZooError) and "\n" not in str(err) and len(err.message) < 200


def test_spec_file_path_is_reported(tmp_path):
    code, _, err = run_cli(["compare", str(Path(tmp_path) / "missing.toml"), "--dry-run"])
    assert_truthful(code, err, (2,))


def test_invalid_helper_names_unknown_and_bad_keys_alike():
    from pydantic import BaseModel, ConfigDict, ValidationError

    from zoo.errors import invalid

    class Inner(BaseModel):
        model_config = ConfigDict(extra="forbid")
        lr: float = 1.0

    class Outer(BaseModel):
        model_config = ConfigDict(extra="forbid")
        train: Inner = Inner()

    with pytest.raises(ValidationError) as e:
        Outer(train={"lrr": 2})
    err = invalid(e.value, "spec.toml", model=Outer)
    assert err.message == "spec.toml: unknown key 'train.lrr'" and err.hint == "did you mean 'lr'? allowed: lr"
    with pytest.raises(ValidationError) as e:
        Inner(lr="fast")
    err = invalid(e.value, "setting", prefix=("train",))
    assert err.message.startswith("setting: key 'train.lr' = 'fast' is invalid:")
