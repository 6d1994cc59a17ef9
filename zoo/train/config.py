"""What one training run is: model, task and training settings, validated by pydantic.

    run = RunConfig(model=ModelConfig(d_model=64, n_layers=2, layers=["nope"]),
                    task=TaskRef(name="hashhop"), train=TrainConfig(steps=200, seq_len=256))
    run.run_id()        # short hash of the normalized identity (model, task, train)

Settings that do not change what is learned (logging, checkpoint cadence, compile, device,
the stated peak) are left out of the identity, so they never cause a retrain.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from zoo.model import ModelConfig
from zoo.store import config_id
from zoo.train.schedule import Schedule, check_knob_name

# training settings outside the run identity: how a run is watched and executed, not what it learns
NON_ID_FIELDS = {"log_every", "tensorboard", "wandb", "ckpt_every", "ckpt_minutes", "keep_checkpoints", "compile",
                 "device", "peak_tflops", "threads", "compile_mode", "data_workers", "prefetch"}

# torch.compile modes; "reduce-overhead" captures CUDA graphs (static shapes replay without launches)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class TargetMetric(BaseModel):
    """Stop early once an evaluation metric reaches a value."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(..., description="an evaluation metric, e.g. eval_loss or eval_acc")
    value: float
    mode: Literal["min", "max"] = Field("min", description="min: stop when metric <= value; max: when >=")

    def reached(self, metrics: dict[str, float]) -> bool:
        v = metrics.get(self.metric)
        if v is None:
            return False
        return v <= self.value if self.mode == "min" else v >= self.value


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # budget: the first one reached stops the run (at least one of steps, max_tokens, max_flops)
    steps: int | None = Field(None, ge=1, le=10**9, description="optimizer steps")
    max_tokens: int | None = Field(None, ge=1, le=10**16, description="training tokens (inputs, all micro-batches)")
    max_flops: float | None = Field(None, gt=0, le=1e30, description="training FLOPs (model estimate, forward + "
                                    "backward)")
    target: TargetMetric | None = Field(None, description="stop early when an eval metric reaches a value")
    # batch
    batch_size: int = Field(8, ge=1, le=1 << 20, description="sequences per micro-batch")
    grad_accum: int = Field(1, ge=1, le=4096, description="micro-batches per optimizer step")
    seq_len: int = Field(256, ge=2, le=1 << 24, description="training length (tokens per sequence)")
    # optimizer: AdamW; no weight decay on norms, biases, gains and tagged SSM dynamics (zoo.mixer.decays)
    lr: float = Field(1e-3, gt=0, le=10.0, description="peak learning rate")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final learning rate / peak")
    warmup_steps: int = Field(0, ge=0, le=10**9, description="linear warm-up steps")
    lr_schedule: Literal["cosine", "wsd", "constant"] = Field("cosine", description="after warm-up")
    decay_fraction: float = Field(0.2, gt=0, le=1, description="WSD: fraction of the steps spent decaying")
    weight_decay: float = Field(0.1, ge=0, le=10)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0, le=1)
    grad_clip: float = Field(1.0, ge=0, le=1e9, description="max global grad norm (0: no clipping)")
    seed: int = Field(0, ge=0, lt=2**63, description="model init, data stream and length mixing")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU")
    # evaluation
    eval_every: int = Field(0, ge=0, le=10**9, description="steps between evaluations (0: only at the end)")
    eval_batches: int = Field(4, ge=1, le=10000, description="held-out batches per evaluation")
    # scheduled settings: knob name -> schedule (see zoo.train.schedule)
    schedules: dict[str, Schedule] = Field(default_factory=dict)
    # execution and logging (outside the run identity)
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    compile: bool = Field(False, description="torch.compile the model for training")
    compile_mode: Literal[COMPILE_MODES] = Field(
        "default", description="torch.compile mode when compile is on: default, reduce-overhead (CUDA graphs), "
        "max-autotune, max-autotune-no-cudagraphs")
    data_workers: int | None = Field(None, ge=0, le=64, description="processes building training batches ahead "
                                     "(0: one thread of the run's process; default: 1 on GPU, 0 on CPU)")
    prefetch: int = Field(4, ge=0, le=64, description="training batches built ahead (0: built by the step itself)")
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads for torch (default: one for a "
                                "model of d_model <= 256, which runs fastest on one, else torch's)")
    ckpt_every: int = Field(0, ge=0, le=10**9, description="steps between checkpoints (0: none by step count)")
    ckpt_minutes: float = Field(5.0, ge=0, le=7 * 24 * 60, description="minutes of training between "
                                "checkpoints (0: none by time); Ctrl-C and SIGTERM also save one before exiting")
    keep_checkpoints: int = Field(2, ge=1, le=1000)
    log_every: int = Field(10, ge=1, le=10**9, description="steps between metric flushes and progress updates")
    peak_tflops: float | None = Field(None, gt=0, le=1e9, description="device peak for MFU (default: datasheet "
                                      "table)")
    tensorboard: bool = Field(False, description="also log to TensorBoard (needs the tensorboard package)")
    wandb: bool = Field(False, description="also log to Weights & Biases (needs wandb): offline unless "
                          "WANDB_MODE is set")

    @field_validator("schedules")
    @classmethod
    def _knob_names(cls, v: dict[str, Schedule]) -> dict[str, Schedule]:
        bounds = {"seq_len": (2, 1 << 24), "short_seq_len": (2, 1 << 24), "long_fraction": (0, 1)}
        for name, sched in v.items():
            check_knob_name(name)
            lo, hi = bounds.get(name, (None, None))
            for _, val in sched.points if lo is not None else []:
                if isinstance(val, list) or not lo <= val <= hi:
                    raise ValueError(f"schedule '{name}' takes numbers from {lo} to {hi}, got {val}")
        return v

    @model_validator(mode="after")
    def _has_budget(self) -> TrainConfig:
        if self.steps is None and self.max_tokens is None and self.max_flops is None:
            raise ValueError("give a training budget: steps, max_tokens or max_flops")
        return self


class TaskRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("hashhop", description="registered task: hashhop, mqar, lm, ...")
    config: dict[str, Any] = Field(default_factory=dict, description="task settings")


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskRef = Field(default_factory=TaskRef)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(steps=100))
    label: str | None = Field(None, description="name shown in tables (default: the layer pattern)")
    experiment: str | None = Field(None, description="the spec this run came from")

    @model_validator(mode="after")
    def _vocab_from_task(self) -> RunConfig:
        """The model's vocabulary is the task's unless set; a smaller one could not embed its tokens."""
        from zoo.tasks.base import get_task

        need = get_task(self.task.name, self.task.config).vocab_size
        if "vocab_size" not in self.model.model_fields_set:
            if self.model.vocab_size != need:
                self.model = self.model.model_copy(update={"vocab_size": need})
        elif self.model.vocab_size < need:
            raise ValueError(f"model.vocab_size={self.model.vocab_size} is smaller than task '{self.task.name}''s "
                             f"{need} token ids")
        return self

    def normalized(self) -> RunConfig:
        """Fill in task and mixer defaults, so equal runs written differently get one id."""
        from zoo.registry import get_spec
        from zoo.tasks.base import get_task

        task = get_task(self.task.name, self.task.config)
        mixer_config = {name: get_spec(name).make_config(self.model.mixer_config.get(name)).identity_dump()
                        for name in dict.fromkeys(self.model.layers)}
        model = self.model.model_copy(update={"mixer_config": mixer_config})
        return self.model_copy(update={"model": ModelConfig(**model.model_dump()),
                                       "task": TaskRef(name=self.task.name, config=task.config.model_dump())})

    def identity(self) -> dict[str, Any]:
        from zoo.registry import get_spec

        n = self.normalized()
        out = {"model": n.model.model_dump(), "task": n.task.model_dump(),
               "train": n.train.model_dump(exclude=NON_ID_FIELDS)}
        # version 1 is left out, so ids from before mixers had versions stay valid
        versions = {name: v for name in dict.fromkeys(n.model.layers) if (v := get_spec(name).version) != 1}
        if versions:
            out["mixer_versions"] = versions
        return out

    def run_id(self) -> str:
        return config_id(self.identity())

    def display_label(self) -> str:
        return self.label or "+".join(self.model.layers)
