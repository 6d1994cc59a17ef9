"""Plugins: the example package installs, lists its mixer and its task, both pass their
conformance checks and train by name; a broken or clashing plugin is reported without
breaking anything else; `zoo new-plugin` scaffolds a mixer or task package that passes its
checks as generated."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoo import conformance, plugins, registry
from zoo.errors import UnknownMixerError, ZooError
from zoo.model import ModelConfig, ZooLM
from zoo.tasks import conformance as task_conformance
from zoo.tasks.base import TASKS, get_task

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "plugins" / "zoo-example-mixer"
EXAMPLE_MODULES = ("zoo_example_mixer", "zoo_example_mixer.mixer", "zoo_example_mixer.selective_copy")


def pip_install(src: Path, target: Path) -> None:
    """Install a copy of `src`, so setuptools' in-tree build/ never lands in the repository."""
    copy = target.parent / f"{src.name}-src"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(copy)], check=True, capture_output=True)


def zoo_cli(*args: str, site: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="250")
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, text=True, env=env)


def reset_all() -> None:
    for kind in plugins.REGISTRIES:
        plugins.registry(kind).reset()


class on_path:
    """Put an install target on sys.path and rediscover plugins; undo on exit."""

    def __init__(self, site: Path, modules: tuple[str, ...]):
        self.site, self.modules = str(site), modules

    def __enter__(self):
        sys.path.insert(0, self.site)
        importlib.invalidate_caches()
        reset_all()
        return self

    def __exit__(self, *exc):
        sys.path.remove(self.site)
        for m in [m for m in sys.modules if m.split(".")[0] in self.modules]:  # submodules too
            del sys.modules[m]
        importlib.invalidate_caches()
        reset_all()


@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("example") / "site"
    pip_install(EXAMPLE, site)
    return site


def test_example_plugin_is_listed(example_site):
    r = zoo_cli("mixers", site=example_site)
    assert r.returncode == 0, r.stderr
    assert "short-conv-glr" in r.stdout and "zoo-example-mixer" in r.stdout
    assert "nope" in r.stdout and "broken" not in r.stdout
    r = zoo_cli("tasks", site=example_site)
    assert r.returncode == 0, r.stderr
    assert "selective-copy" in r.stdout and "zoo-example-mixer" in r.stdout
    assert "hashhop" in r.stdout and "broken" not in r.stdout


def test_example_plugin_passes_conformance(example_site):
    with on_path(example_site, EXAMPLE_MODULES):
        spec = registry.get_spec("short-conv-glr")
        assert spec.source == "zoo-example-mixer"
        assert conformance.run_all(spec) == dict.fromkeys(conformance.CHECKS)


def test_example_task_passes_conformance(example_site):
    with on_path(example_site, EXAMPLE_MODULES):
        assert TASKS.source("selective-copy") == "zoo-example-mixer"
        assert task_conformance.run_all(TASKS.get("selective-copy")) == dict.fromkeys(task_conformance.CHECKS)
    r = zoo_cli("check-task", "selective-copy", site=example_site)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("pass") == len(task_conformance.CHECKS)


def test_example_task_trains_by_name(example_site, tmp_path):
    r = zoo_cli("train", "--mixer", "short-conv-glr", "--task", "selective-copy", "--seq-len", "64", "--steps", "2",
                "--d-model", "16", "--n-layers", "1", "--batch-size", "2", "--no-progress", "--root", str(tmp_path),
                "--set", "train.threads=1", site=example_site)
    assert r.returncode == 0, r.stdout + r.stderr
    from zoo.store import Store

    (run,) = Store(tmp_path).runs()
    assert run["config"]["task"]["name"] == "selective-copy"
    assert run["config"]["model"]["vocab_size"] == 18  # sized from the task's own vocabulary


def test_example_plugin_trains_by_name(example_site):
    with on_path(example_site, EXAMPLE_MODULES):
        torch.manual_seed(0)
        model = ZooLM(ModelConfig(d_model=32, n_layers=2, layers=["short-conv-glr"]))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        tokens = torch.arange(64).repeat(4, 1) % 7  # a periodic sequence: learnable from local context
        losses = []
        for _ in range(40):
            logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.5 * losses[0], losses


def test_broken_plugin_is_reported_not_raised(example_site, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(example_site, site)
    (site / "zoo_example_mixer" / "mixer.py").write_text("raise ImportError('deliberately broken')\n")
    r = zoo_cli("mixers", site=site)
    assert r.returncode == 0, r.stderr
    assert "broken plugins" in r.stdout and "deliberately broken" in r.stdout and "zoo-example-mixer" in r.stdout
    assert "nope" in r.stdout  # the built-ins are still listed
    with on_path(site, EXAMPLE_MODULES):
        assert "nope" in registry.names() and "short-conv-glr" not in registry.names()
        [b] = registry.broken_plugins()
        assert b["name"] == "short-conv-glr" and b["package"] == "zoo-example-mixer"
        assert "selective-copy" in TASKS.names()  # the package's task loads without its mixer


def test_broken_task_plugin_is_reported_by_tasks_and_doctor(example_site, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(example_site, site)
    (site / "zoo_example_mixer" / "selective_copy.py").write_text("raise ImportError('task deliberately broken')\n")
    for args in (("tasks",), ("doctor",)):
        r = zoo_cli(*args, site=site)
        assert r.returncode == 0, r.stderr
        assert "broken plugins" in r.stdout and "task deliberately broken" in r.stdout, args
    with on_path(site, EXAMPLE_MODULES):
        [b] = TASKS.broken_plugins()
        assert b["name"] == "selective-copy" and b["package"] == "zoo-example-mixer"
        with pytest.raises(ZooError, match="task 'selective-copy' from zoo-example-mixer failed to import"):
            get_task("selective-copy")
        assert "short-conv-glr" in registry.names()


def test_name_clash_names_both_sources(tmp_path):
    site = tmp_path / "site"
    (site / "clash_plugin").mkdir(parents=True)
    (site / "clash_plugin" / "__init__.py").write_text(
        "from zoo.mixers.attention import NoPE\nfrom zoo.registry import register_mixer\n"
        "from zoo.mixer import TORCH_BACKEND, Capabilities\n"
        "@register_mixer(name='nope', family='x', description='x', citation='x',\n"
        "                capabilities=Capabilities(cost='O(L^2)', state='growing'), backends=[TORCH_BACKEND])\n"
        "class Other(NoPE):\n    pass\n")
    dist = site / "clash_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: clash-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[zoo.mixers]\nnope = clash_plugin\n")
    with on_path(site, ("clash_plugin",)):
        [b] = registry.broken_plugins()
        assert "mixer-zoo" in b["error"] and "clash-plugin" in b["error"], b
        assert registry.get_spec("nope").source == "mixer-zoo"


def test_unknown_mixer_suggests_close_names():
    with pytest.raises(UnknownMixerError, match="did you mean 'nope'"):
        registry.get_spec("nop")
    r = zoo_cli("mixers", "show", "nop")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown mixer 'nop'" in r.stderr and "nope" in r.stderr
    assert "Traceback" not in r.stderr


def test_new_plugin_mixer_passes_conformance(tmp_path):
    out = tmp_path / "zoo-my-conv"
    r = zoo_cli("new-plugin", "mixer", "my-conv", "--out", str(out))
    assert r.returncode == 0, r.stderr
    site = tmp_path / "site"
    pip_install(out, site)
    r = zoo_cli("check", "my-conv", site=site)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("pass") == len(conformance.CHECKS)
    with on_path(site, ("zoo_my_conv",)):
        assert registry.get_spec("my-conv").source == "zoo-my-conv"
        assert conformance.run_all(registry.get_spec("my-conv")) == dict.fromkeys(conformance.CHECKS)


def test_new_plugin_task_passes_check_task(tmp_path):
    out = tmp_path / "zoo-my-copy"
    r = zoo_cli("new-plugin", "task", "my-copy", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "zoo check-task my-copy" in r.stdout
    site = tmp_path / "site"
    pip_install(out, site)
    r = zoo_cli("check-task", "my-copy", site=site)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("pass") == len(task_conformance.CHECKS)
    with on_path(site, ("zoo_my_copy",)):
        assert TASKS.source("my-copy") == "zoo-my-copy"
        assert get_task("my-copy").batch(0, 2, 64).tokens.shape == (2, 64)


@pytest.mark.parametrize("kind, bad", [("mixer", "Bad_Name"), ("mixer", "nope"), ("task", "lm"), ("task", "x_y"),
                                       ("nonsense", "my-thing")])
def test_new_plugin_rejects_bad_names_and_kinds(kind, bad, tmp_path):
    r = zoo_cli("new-plugin", kind, bad, "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and r.stderr.startswith("error:") and r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "x").exists()


def test_every_kind_has_one_registry_shape():
    for kind in plugins.REGISTRIES:
        reg = plugins.registry(kind)
        assert isinstance(reg, plugins.PluginRegistry) and reg.kind == kind and reg.group.startswith("zoo.")
        assert reg.names() and all(reg.source(n) == "mixer-zoo" for n in reg.names())
        with pytest.raises(ZooError, match=f"unknown {kind} 'no-such-entry'"):
            reg.get("no-such-entry")
    with pytest.raises(ZooError, match="unknown plugin kind 'nonsense'"):
        plugins.registry("nonsense")
