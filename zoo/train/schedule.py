"""Schedules over training steps for any numeric setting, and the knobs they drive.

A schedule is a list of (step, value) points, either piecewise constant (`step`: the value
of the last point at or before the step) or piecewise linear (`linear`: interpolated,
flat outside the points). Integer points give integer values (rounded when linear).

    Schedule(points=[(0, 256), (500, 512), (1000, 1024)])              # length curriculum
    Schedule(points=[(0, 64), (2000, 512)], interp="linear")           # HSA window warm-up
    Schedule(points=[(0, [1]), (1000, [1, 2]), (3000, [1, 2, 3, 4])])  # HashHop hop mixture

A point's value may be a list of integers (a mixture, such as the hop counts a HashHop
batch draws from); such schedules are piecewise constant.

Knob names say what a schedule drives:

- `seq_len`, `long_fraction`, `short_seq_len`: the training length. With `long_fraction`
  f < 1, each micro-batch is drawn at the current `seq_len` with probability f and at
  `short_seq_len` (default seq_len / 2) otherwise, deterministically in (seed, step, micro):
  progressive context extension as in Qwen2.5-Turbo (Yang et al. 2025, arXiv:2501.15383),
  which kept 40% of sequences at the current maximum length and 60% shorter.
- `task.NAME`: passed to the task as `knobs={"NAME": value}` (e.g. `task.hops`).
- `mixer.MIXER.ATTR`: set on every layer whose registry name is MIXER (`*` for all) through
  `set_knob` below, e.g. `mixer.hsa.window` or `mixer.rope.base`.

The mixer side of a knob: `set_knob(mixer, name, value)` calls `mixer.set_knob(name, value)`
when the mixer defines it (so a mixer can rebuild caches such as RoPE frequencies), else sets
the attribute `mixer.<name>` when the mixer has one, else raises ZooError. Mixers read such
attributes at forward time, which is what makes a scheduled value take effect.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from zoo.errors import ZooError

TRAIN_KNOBS = ("seq_len", "long_fraction", "short_seq_len")


class Schedule(BaseModel):
    """Values of one setting over steps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    points: list[tuple[int, int | float | list[int]]] = Field(
        ..., min_length=1, description="(step, value) pairs, steps increasing; a value may be a list of ints")
    interp: Literal["step", "linear"] = Field("step", description="piecewise constant or linear between points")

    @field_validator("points")
    @classmethod
    def _increasing(cls, v: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
        steps = [s for s, _ in v]
        if any(s < 0 for s in steps):
            raise ValueError("steps must be >= 0")
        if any(s > 10**9 for s in steps):
            raise ValueError("steps must be at most 10**9")
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"steps must increase strictly, got {steps}")
        for _, val in v:
            for x in val if isinstance(val, list) else [val]:
                if not math.isfinite(x) or abs(x) > 1e15:
                    raise ValueError(f"values must be finite numbers of magnitude at most 1e15, got {x}")
        return v

    @model_validator(mode="after")
    def _lists_are_steps(self) -> Schedule:
        if self.interp == "linear" and any(isinstance(val, list) for _, val in self.points):
            raise ValueError("a schedule of lists (a mixture) cannot be linear; use interp = 'step'")
        return self

    def integral(self) -> bool:
        """Integer points (as written, e.g. in TOML) give integer values."""
        return all(isinstance(val, int) for _, val in self.points)

    def __call__(self, step: int) -> float | int | list[int]:
        steps = [s for s, _ in self.points]
        i = max(0, bisect.bisect_right(steps, step) - 1)
        here = self.points[i][1]
        if isinstance(here, list):
            return list(here)
        if self.interp == "linear" and i + 1 < len(steps) and step > steps[i]:
            (s0, v0), (s1, v1) = self.points[i], self.points[i + 1]
            here = v0 + (step - s0) / (s1 - s0) * (v1 - v0)
        return int(round(here)) if self.integral() else float(here)


def check_knob_name(name: str) -> str:
    """Validate a knob name (see the module docstring) and return it."""
    parts = name.split(".")
    ok = (name in TRAIN_KNOBS or (parts[0] == "task" and len(parts) == 2 and parts[1])
          or (parts[0] == "mixer" and len(parts) == 3 and all(parts[1:])))
    if not ok:
        raise ValueError(f"unknown schedule target '{name}': use one of {', '.join(TRAIN_KNOBS)}, "
                         "task.NAME or mixer.MIXER.ATTR")
    return name


def values_at(schedules: dict[str, Schedule], step: int) -> dict[str, float | int]:
    return {name: s(step) for name, s in schedules.items()}


def task_knobs(values: dict[str, Any]) -> dict[str, Any]:
    return {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("task.")}


def set_knob(mixer, name: str, value: Any) -> None:
    """Set a runtime setting on one mixer: its own `set_knob` if any, else an existing attribute."""
    own = getattr(type(mixer), "set_knob", None)
    if callable(own):
        mixer.set_knob(name, value)
    elif hasattr(mixer, name) and not callable(getattr(mixer, name)):
        setattr(mixer, name, value)
    else:
        raise ZooError(f"mixer '{mixer.spec.name}' has no runtime setting '{name}'",
                       "schedule only attributes the mixer reads at forward time, or give it set_knob(name, value)")


def apply_mixer_knobs(model, values: dict[str, Any]) -> None:
    """Apply every `mixer.MIXER.ATTR` value to the layers of `model` (a ZooLM)."""
    for key, value in values.items():
        if not key.startswith("mixer."):
            continue
        _, target, attr = key.split(".")
        hit = False
        for m in model.mixers:
            if target in ("*", m.spec.name):
                set_knob(m, attr, value)
                hit = True
        if not hit:
            raise ZooError(f"setting '{key}' targets mixer '{target}', which the model does not use",
                           f"layers: {', '.join(sorted({m.spec.name for m in model.mixers}))}")
