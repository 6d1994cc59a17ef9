"""Checkpoints: written atomically, loaded without unpickling arbitrary objects.

    <run_dir>/config.json                      the run config (model, task, train)
    <run_dir>/checkpoints/step_00000100/
        model.safetensors                      model weights
        state.pt                               optimizer state, RNG states, step (plain tensors,
                                               numbers, strings; loaded with weights_only=True)
        meta.json                              step, data position, knob values, run config
    <run_dir>/checkpoints/latest               name of the newest complete checkpoint

A checkpoint is written into a temporary directory, flushed to disk, then renamed into
place; `latest` is replaced the same way. A process killed at any moment leaves either the
previous checkpoint or the new one, never half of one. The data position is the step:
tasks are deterministic in (seed, split, step).

    model, run_config = load_model("zoo-runs/runs/3f2a9c01d4e5")   # run dir or checkpoint dir
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model

from zoo.errors import ZooError

CKPT_DIR = "checkpoints"
WEIGHTS = "model.safetensors"
STATE = "state.pt"
META = "meta.json"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _python_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state()`. The generators take CPU byte tensors: a state loaded with
    `map_location` a GPU (the trainer's resume) has them on the GPU, so they come back first."""
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind torch.compile (its state dict has no `_orig_mod.` prefix)."""
    return getattr(model, "_orig_mod", model)


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    run_config: dict, knobs: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                    keep: int = 2) -> Path:
    """Write `checkpoints/step_<step>` atomically, point `latest` at it, keep the newest `keep`."""
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    st_save_model(unwrap(model), str(tmp / WEIGHTS), metadata={"step": str(step)})
    state = {"step": step, "rng": rng_state(), "extra": extra or {}}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    torch.save(state, tmp / STATE)
    meta = {"step": step, "data_position": step, "knobs": knobs or {}, "run_config": run_config}
    with open(tmp / META, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True, default=str)
    for p in tmp.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():  # the same step written again (e.g. the final checkpoint of a resumed run)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    latest = root / "latest"
    ltmp = root / f".latest.tmp{os.getpid()}"
    ltmp.write_text(name)
    os.replace(ltmp, latest)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporaries are never listed)."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / META).is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = Path(run_dir) / CKPT_DIR
    pointer = root / "latest"
    if pointer.is_file():
        p = root / pointer.read_text().strip()
        if (p / META).is_file():
            return p
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def candidates(run_dir: Path) -> list[Path]:
    """Checkpoints to resume from, newest first: the one `latest` names, then the others."""
    first = latest_checkpoint(run_dir)
    rest = [p for p in reversed(list_checkpoints(run_dir)) if p != first]
    return ([first] if first is not None else []) + rest


def restore(model: torch.nn.Module, run_dir: Path, device: str | torch.device = "cpu",
            need_state=lambda meta: True, warn=lambda msg: None) -> tuple[Path, dict, dict | None] | None:
    """Load the newest checkpoint that reads back whole into `model`: (path, meta, state or None).

    A damaged checkpoint (a truncated file, say) is skipped with `warn(message)` and the one
    before it is tried; None when the run has no checkpoint. `need_state(meta)` says whether
    the optimizer and RNG state are needed (not for a final checkpoint)."""
    tried = candidates(run_dir)
    damaged = []
    for c in tried:
        try:
            meta = load_meta(c)
            if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
                raise ValueError("meta.json has no step")
            load_weights(model, c, device)
            state = load_state(c, map_location=device) if need_state(meta) else None
        except Exception as e:  # any damage: a truncated file fails in json, safetensors or torch.load
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            damaged.append(c.name)
            nxt = tried[tried.index(c) + 1].name if c is not tried[-1] else None
            warn(f"checkpoint {c} is damaged ({type(e).__name__}: {why}); "
                 + (f"falling back to {nxt}" if nxt else "no older checkpoint is left"))
            continue
        return c, meta, state
    if damaged:
        raise ZooError(f"every checkpoint of {Path(run_dir).name} is damaged: {', '.join(damaged)}",
                       f"move {Path(run_dir) / CKPT_DIR} aside to train the run from step 0")
    return None


def clean_temporaries(run_dir: Path) -> list[str]:
    """Remove what a killed writer left half-written (call only while holding the run's lock)."""
    run_dir = Path(run_dir)
    gone = []
    for d in (run_dir, run_dir / CKPT_DIR):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if p.name.startswith((".tmp-", ".latest.tmp")) or (p.name.startswith(".") and ".tmp" in p.name):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                gone.append(p.name)
    return sorted(gone)


def load_state(ckpt: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Optimizer/RNG state of a checkpoint; `weights_only` refuses anything but plain data."""
    return torch.load(Path(ckpt) / STATE, map_location=map_location, weights_only=True)


def load_meta(ckpt: Path) -> dict[str, Any]:
    return json.loads((Path(ckpt) / META).read_text())


def load_weights(model: torch.nn.Module, ckpt: Path, device: str | torch.device = "cpu") -> None:
    missing, unexpected = st_load_model(unwrap(model), str(Path(ckpt) / WEIGHTS), strict=False, device=str(device))
    if missing or unexpected:
        raise ZooError(f"checkpoint {ckpt} does not fit the model: missing {sorted(missing)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}", "was the model config changed after training?")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory from a run directory, a checkpoints/ directory or a checkpoint."""
    p = Path(path)
    if (p / WEIGHTS).is_file() and (p / META).is_file():
        return p
    run_dir = p.parent if p.name == CKPT_DIR else p
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise ZooError(f"no checkpoint under {p}", "train the run first (`zoo train` or `zoo compare`)")
    return ckpt


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a trained ZooLM from a run directory or a checkpoint directory.

    Returns `(model, run_config)`; the model is in eval mode on `device`, with the scheduled
    mixer settings (e.g. an HSA window or RoPE base) at their values of the checkpoint's step.
    """
    from zoo.model import ModelConfig, ZooLM
    from zoo.train.schedule import apply_mixer_knobs

    ckpt = resolve_checkpoint(path)
    meta = load_meta(ckpt)
    run_config = meta["run_config"]
    model = ZooLM(ModelConfig(**run_config["model"]))
    load_weights(model, ckpt)
    apply_mixer_knobs(model, meta.get("knobs", {}))
    return model.to(device).eval(), run_config
