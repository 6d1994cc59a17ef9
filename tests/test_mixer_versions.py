"""A mixer's implementation version is part of the run id, and a reused run whose mixer files
changed since its commit is flagged."""

import subprocess
from pathlib import Path

import pytest

from zoo import registry
from zoo.errors import RegistryError
from zoo.experiment.sweep import Outcome, stale_mixer_files, stale_warnings
from zoo.model import ModelConfig
from zoo.store import Store
from zoo.train.config import RunConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def run_of(mixer: str) -> RunConfig:
    return RunConfig(model=ModelConfig(d_model=32, n_layers=1, layers=[mixer]), train=TrainConfig(steps=5))


def test_version_changes_the_run_id(monkeypatch):
    spec = registry.get_spec("nope")
    assert spec.version == 1 and "mixer_versions" not in run_of("nope").identity()  # ids from before versions
    before = run_of("nope").run_id()
    monkeypatch.setattr(spec, "version", 2)
    assert run_of("nope").identity()["mixer_versions"] == {"nope": 2}
    assert run_of("nope").run_id() != before


def test_versions_of_mixers_whose_training_changed():
    assert registry.get_spec("mamba").version >= 2  # A_log stopped decaying
    assert "mixer_versions" in run_of("mamba").identity()


def test_bad_version_is_refused():
    from zoo.mixer import TORCH_BACKEND, Capabilities, Mixer

    class M(Mixer):
        pass

    with pytest.raises(RegistryError, match="version must be an integer >= 1"):
        registry.register_mixer(name="bad-version", family="t", description="", citation="",
                                capabilities=Capabilities(cost="O(L)", state="fixed"), backends=[TORCH_BACKEND],
                                version=0)(M)


def test_source_file_is_the_defining_module():
    assert registry.source_file("mamba") == REPO / "zoo" / "mixers" / "mamba.py"


def _record(mixer: str, commit: str | None) -> dict:
    return {"config": {"model": {"layers": [mixer]}}, "provenance": {"git_commit": commit}}


def test_stale_when_the_mixer_file_differs_from_the_run_commit():
    root = git("rev-list", "--max-parents=0", "HEAD").split()[0]  # mamba.py differs from (or is absent at) it
    assert stale_mixer_files(_record("mamba", root + "+dirty")) == ["zoo/mixers/mamba.py"]


def test_not_stale_when_unchanged_or_unknown(monkeypatch):
    dirty = set(git("diff", "--name-only", "HEAD").split())
    clean = next(f for f in git("ls-files", "zoo").split() if f not in dirty)
    monkeypatch.setattr(registry, "source_file", lambda name: REPO / clean)
    assert stale_mixer_files(_record("mamba", git("rev-parse", "HEAD"))) == []
    assert stale_mixer_files(_record("mamba", "0" * 40)) == []   # a commit git does not have: cannot tell
    assert stale_mixer_files(_record("mamba", None)) == []


def test_compare_warns_about_reused_stale_runs(tmp_path):
    store = Store(tmp_path)
    run = run_of("mamba")
    rid = run.run_id()
    root = git("rev-list", "--max-parents=0", "HEAD").split()[0]
    store.upsert_run(rid, run.model_dump(), kind="train", status="done", provenance={"git_commit": root})

    class Planned:
        run_id, label = rid, "mamba"

    lines = stale_warnings([Outcome(Planned, "skipped")], store)
    assert len(lines) == 1 and "zoo/mixers/mamba.py" in lines[0] and rid in lines[0]
    assert stale_warnings([Outcome(Planned, "done")], store) == []  # trained now: current code
