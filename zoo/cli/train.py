"""`zoo train` (one run from flags), `zoo compare SPEC.toml` (an experiment), `zoo ppl RUN`."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from zoo.cli import hf as hf_cli
from zoo.errors import ZooError, invalid
from zoo.model import ModelConfig
from zoo.train.config import TrainConfig

ROOT_HELP = "results root (default $ZOO_ROOT or ./zoo-runs)"
# flags that set a model or training field take its default from the pydantic model, the one source;
# only --steps has its own (a run from flags needs a budget, which TrainConfig leaves unset)
STEPS = 200


def _model(name: str) -> Any:
    return ModelConfig.model_fields[name].default


def _train(name: str) -> Any:
    return TrainConfig.model_fields[name].default


def parse_value(text: str) -> Any:
    """A flag value as TOML would read it (numbers, booleans, lists, inline tables), else a string."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_sets(doc: dict, sets: list[str]) -> dict:
    for s in sets:
        if "=" not in s:
            raise ZooError(f"--set '{s}' is not KEY=VALUE", "e.g. --set train.warmup_steps=100")
        key, value = s.split("=", 1)
        parts = key.strip().split(".")
        if parts[0] not in ("model", "task", "train"):
            raise ZooError(f"--set key '{key}' must start with model., task. or train.", set_key_hint(parts[-1]))
        d = doc
        for i, p in enumerate(parts[:-1]):
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ZooError(f"--set '{s}': '{'.'.join(parts[:i + 1])}' is a value, not a table",
                               f"set '{'.'.join(parts[:i + 1])}' itself")
        d[parts[-1]] = parse_value(value.strip())
    return doc


SYNONYMS = {"learning_rate": "lr", "max_steps": "steps", "warmup": "warmup_steps", "batch": "batch_size",
            "context": "seq_len", "seq_length": "seq_len", "width": "d_model", "depth": "n_layers"}


def set_key_hint(name: str) -> str:
    """'did you mean train.lr?' for a bare or misspelt --set key, from the run config's own fields."""
    from zoo.model import ModelConfig
    from zoo.train.config import TaskRef, TrainConfig

    fields = {f"{sec}.{f}": f for sec, cls in (("train", TrainConfig), ("model", ModelConfig), ("task", TaskRef))
              for f in cls.model_fields}
    want = SYNONYMS.get(name, name)
    close = [k for k, f in fields.items() if f == want] or [
        k for f in difflib.get_close_matches(want, list(fields.values()), n=1, cutoff=0.6)
        for k, f2 in fields.items() if f2 == f]
    return f"did you mean '{close[0]}'?" if close else "e.g. --set train.warmup_steps=100"


def plan_table(runs, store, title: str) -> Table:
    from zoo.cli.runs import shown_status
    from zoo.report.fmt import count

    t = Table(title=title)
    for c in ("mixer", "run", "layers", "d_model", "mlp", "params", "steps", "tokens", "est. FLOPs", "matching",
              "status"):
        t.add_column(c, justify="right" if c in ("d_model", "mlp", "params", "steps", "tokens", "est. FLOPs")
                     else "left", no_wrap=c == "run", min_width=12 if c == "run" else None)
    for p in runs:
        m = p.run.model
        prior = store.get_run(p.run_id) if store is not None else None
        t.add_row(Text(p.label), p.run_id, Text("+".join(m.layers)), str(m.d_model), str(m.hidden()), f"{p.params:,}",
                  f"{p.steps:,}", count(p.tokens), f"{p.flops:.3g}", Text(p.matched or ""),
                  shown_status(store, prior) if prior else "new")
    return t


def register(app: typer.Typer) -> None:
    from zoo.cli import console

    @app.command("train")
    def train_cmd(
        mixer: str = typer.Option("nope", "--mixer", "-m", help="mixer name, or a comma-separated layer pattern"),
        d_model: int = typer.Option(_model("d_model"), "--d-model"),
        n_layers: int = typer.Option(_model("n_layers"), "--n-layers"),
        task: str = typer.Option("hashhop", "--task", help="hashhop, mqar, lm, ..."),
        steps: int = typer.Option(STEPS, "--steps", help="optimizer steps"),
        batch_size: int = typer.Option(_train("batch_size"), "--batch-size"),
        grad_accum: int = typer.Option(_train("grad_accum"), "--grad-accum"),
        seq_len: int = typer.Option(_train("seq_len"), "--seq-len"),
        lr: float = typer.Option(_train("lr"), "--lr"),
        warmup: int = typer.Option(_train("warmup_steps"), "--warmup", help="warm-up steps"),
        lr_schedule: str = typer.Option(_train("lr_schedule"), "--lr-schedule", help="cosine, wsd or constant"),
        seed: int = typer.Option(_train("seed"), "--seed"),
        device: str = typer.Option(_train("device"), "--device"),
        compile_: bool = typer.Option(_train("compile"), "--compile", help="torch.compile the model"),
        eval_every: int = typer.Option(_train("eval_every"), "--eval-every"),
        ckpt_every: int = typer.Option(_train("ckpt_every"), "--ckpt-every", help="also checkpoint every N steps"),
        ckpt_minutes: float = typer.Option(_train("ckpt_minutes"), "--ckpt-minutes", help="checkpoint every this many "
                                           "minutes of training (0: off); Ctrl-C and SIGTERM save one before exiting"),
        tensorboard: bool = typer.Option(_train("tensorboard"), "--tensorboard"),
        wandb: bool = typer.Option(_train("wandb"), "--wandb", help="Weights & Biases: offline unless WANDB_MODE is "
                                   "set (e.g. WANDB_MODE=online)"),
        sets: list[str] = typer.Option([], "--set", help="any setting, e.g. model.mixer_config.nope.n_heads=2, "
                                       "task.config.hops=[1,2], train.max_tokens=1000000 (repeatable)"),
        label: str = typer.Option(None, "--label"),
        root: Path = typer.Option(None, "--root", help=ROOT_HELP),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and exit"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
        config: Path = typer.Option(None, "--config", help="a run config as JSON (e.g. a run's config.json) "
                                    "instead of the flags above; --set still applies"),
        nproc: int = typer.Option(1, "--nproc", min=1, max=1024, help="processes (GPUs) for this one run: starts "
                                  "torchrun on this machine; train.batch_size is the global batch"),
        parallel: str = typer.Option("ddp", "--parallel", help="how several processes share the run: ddp "
                                     "(replicas) or fsdp (FSDP2, sharded parameters and optimizer state)"),
    ) -> None:
        """Train one run from flags. An interrupted run resumes from its last checkpoint, written
        every --ckpt-minutes of training and on Ctrl-C (exit 130) or SIGTERM (exit 143).

        Across GPUs: `zoo train --nproc N ...`, or `torchrun --nproc-per-node N -m zoo train ...`
        (several machines: torchrun's --nnodes and --rdzv-endpoint)."""
        import json
        import os

        from pydantic import ValidationError

        from zoo.experiment.spec import PlannedRun
        from zoo.store import Store
        from zoo.train.config import RunConfig
        from zoo.train.cost import budget, count_params
        from zoo.train.trainer import build_model, train

        doc: dict[str, Any] = {
            "model": {"d_model": d_model, "n_layers": n_layers, "layers": mixer.split(",")},
            "task": {"name": task, "config": {}},
            "train": {"steps": steps, "batch_size": batch_size, "grad_accum": grad_accum, "seq_len": seq_len,
                      "lr": lr, "warmup_steps": warmup, "lr_schedule": lr_schedule, "seed": seed, "device": device,
                      "compile": compile_, "eval_every": eval_every, "ckpt_every": ckpt_every,
                      "ckpt_minutes": ckpt_minutes,
                      "tensorboard": tensorboard, "wandb": wandb},
            "label": label,
        }
        if config is not None:
            try:
                doc = json.loads(Path(config).read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                raise ZooError(f"cannot read run config {config}: {type(e).__name__}: {e}",
                               "give a JSON file like a run's config.json") from None
            if not isinstance(doc, dict):
                raise ZooError(f"run config {config} holds a JSON {type(doc).__name__}, not an object",
                               "give a JSON file like a run's config.json")
            doc.pop("run_id", None)
        apply_sets(doc, sets)
        try:
            run = RunConfig(**doc)
        except ValidationError as e:
            err = e.errors()[0]
            if err["type"] == "extra_forbidden":
                key = ".".join(str(p) for p in err["loc"])
                raise ZooError(f"unknown setting '{key}'", set_key_hint(str(err["loc"][-1]))) from None
            raise invalid(e, "setting", "see `zoo train --help`") from None
        from zoo.train.distributed import FollowerStore

        # under torchrun only rank 0 opens the store
        store = Store(root) if int(os.environ.get("RANK", "0")) == 0 else FollowerStore(root)
        rid = run.run_id()
        if nproc > 1 and not dry_run:
            from zoo.experiment.launch import torchrun_train

            raise typer.Exit(torchrun_train(run, nproc, parallel=parallel, root=store.root, progress=progress))
        if dry_run:
            from zoo.model import build_on_meta

            model = build_on_meta(lambda: build_model(run.normalized().model, run.train.seed))
            n, tokens, flops = budget(run.train, lambda L: model.flops_per_token(L, training=True))
            p = PlannedRun(run.display_label(), run.model.layers[0], run, rid, count_params(run.model), n, tokens,
                           flops)
            console.print(plan_table([p], store, "plan (dry run)"))
            return
        from zoo.train.distributed import teardown

        try:
            res = train(run, store, progress=progress, console=console, parallel=parallel)
        finally:
            teardown()
        if int(os.environ.get("RANK", "0")) != 0:
            return  # rank 0 reports
        s = res.summary
        console.print(f"run [bold]{rid}[/] done: {s['steps']} steps, loss {s['final_loss']:.4f}"
                      + (f", eval loss {s['eval_loss']:.4f}, eval acc {s['eval_acc']:.3f}" if "eval_loss" in s else "")
                      + f" [dim]({escape(str(res.run_dir))})[/]")

    @app.command("compare")
    def compare_cmd(
        spec_path: Path = typer.Argument(..., help="experiment file, e.g. experiments/smoke.toml"),
        root: Path = typer.Option(None, "--root", help=ROOT_HELP),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the plan with parameters and FLOPs and exit"),
        retry_failed: bool = typer.Option(False, "--retry-failed", help="train failed runs again"),
        shard: str = typer.Option(None, "--shard", help="i/n: this process takes every n-th run (one per GPU)"),
        device: str = typer.Option(None, "--device", help="override the spec's device"),
        only: list[str] = typer.Option([], "--only", help="only these mixers (repeatable)"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
        gpus: str = typer.Option(None, "--gpus", help="run in parallel, one worker process per GPU: 0,1,2,3 or all "
                                 "(a GPU listed twice takes two runs at once)"),
        workers: int = typer.Option(None, "--workers", min=1, max=1024,
                                    help="run in parallel on N CPU worker processes"),
        runs_per_gpu: int = typer.Option(1, "--runs-per-gpu", min=1, max=64, help="with --gpus: runs at once on "
                                         "each GPU (small models leave most of a GPU idle); the host's cores are "
                                         "shared out"),
        launcher: str = typer.Option("local", "--launcher", help="local, or ray: one Ray task per run"),
        address: str = typer.Option(None, "--address", help="Ray cluster address (default: start Ray here)"),
    ) -> None:
        """Train and evaluate every run of an experiment, then print the comparison table."""
        import os

        from zoo.experiment.spec import load_spec, plan
        from zoo.experiment.sweep import failed_evals, run_experiment, select_shard, stale_warnings, summary_table
        from zoo.store import Store

        if launcher not in ("local", "ray"):
            raise ZooError(f"unknown --launcher '{launcher}'", "allowed: local, ray")
        if gpus is not None and workers is not None:
            raise ZooError("--gpus and --workers exclude each other", "GPU workers: --gpus; CPU workers: --workers")
        if runs_per_gpu > 1 and gpus is None:
            raise ZooError("--runs-per-gpu packs runs onto the GPUs of --gpus", "add --gpus 0 (or all)")
        if launcher == "ray" and (gpus is not None or workers is not None):
            raise ZooError("--gpus and --workers are for --launcher local", "Ray places runs on its own resources")
        if address is not None and launcher != "ray":
            raise ZooError("--address is for --launcher ray")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ZooError("zoo compare runs under torchrun", "spread a sweep with --gpus; one run over GPUs with "
                           "`zoo train --nproc N` or `torchrun ... -m zoo train`")
        spec = load_spec(spec_path)
        store = Store(root)
        if dry_run:
            runs = select_shard(plan(spec), shard)
            console.print(plan_table(runs, store, f"plan of {spec.name}: {len(runs)} runs (dry run)"))
            total = sum(r.flops for r in runs)
            console.print(f"total estimated training FLOPs: {total:.3g}")
            for label, ref in spec.hf.items():
                console.print(f"and beside them: {label} = Hugging Face model {ref.name} (run {ref.run_id()})")
            return
        if launcher == "ray":
            from zoo.experiment.launch import run_ray

            outcomes = run_ray(spec, store, address=address, console=console, retry_failed=retry_failed,
                               device=device, shard=shard, only=only or None)
        elif gpus is not None or workers is not None:
            from zoo.experiment.launch import parse_gpus, plan_slots, run_local

            slots = plan_slots(parse_gpus(gpus) if gpus is not None else [None] * workers, runs_per_gpu)
            outcomes = run_local(spec, store, slots, console=console, retry_failed=retry_failed, device=device,
                                 shard=shard, only=only or None)
        else:
            outcomes = run_experiment(spec, store, console=console, progress=progress, retry_failed=retry_failed,
                                      shard=shard, device=device, only=only or None)
        hf_failed = []
        if spec.hf and not only and (not shard or shard.startswith("0/")):  # once per experiment, here
            from zoo.experiment.sweep import hf_evals

            hf_status = hf_evals(spec, store, device, console)
            hf_failed = [k for k, v in hf_status.items() if v not in ("ok", "cached")]
        console.print(summary_table(outcomes, store, f"{spec.name}: {len(outcomes)} runs ({store.root})"))
        for line in stale_warnings(outcomes, store):
            console.print(f"[yellow]warning:[/] {escape(line)}")
        # exit 0 only when every run is trained and every evaluation stored
        failed = [o for o in outcomes if o.status == "failed"]
        busy = [o for o in outcomes if o.status == "busy"]
        bad_evals = [o for o in outcomes if failed_evals(o)]
        if failed:
            console.print(f"[red]{len(failed)} run(s) failed:[/] {escape(', '.join(o.planned.run_id for o in failed))}"
                          " (see the status column; `zoo runs show RUN`)")
        if bad_evals:
            console.print(f"[red]evaluations failed for {len(bad_evals)} run(s):[/] " + escape(", ".join(
                f"{o.planned.run_id} ({', '.join(failed_evals(o))})" for o in bad_evals)))
        if busy:
            console.print(f"[yellow]{len(busy)} run(s) are being trained by another process:[/] "
                          f"{', '.join(o.planned.run_id for o in busy)} (run the command again once they finish)")
        if hf_failed:
            console.print(f"[red]{len(hf_failed)} pretrained model(s) failed:[/] {escape(', '.join(hf_failed))} "
                          "(see the lines above)")
        if failed or bad_evals or busy or hf_failed:
            raise typer.Exit(1)

    @app.command("ppl")
    def ppl_cmd(
        run: str = typer.Argument(None, help="run id (or prefix) or a run / checkpoint directory"),
        lengths: str = typer.Option(None, "--lengths", help="comma-separated lengths (default: 1..64 x training)"),
        multipliers: str = typer.Option("1,2,4,8,16,32,64", "--multipliers"),
        stride: int = typer.Option(None, "--stride"),
        windows: int = typer.Option(4, "--windows"),
        buckets: int = typer.Option(8, "--buckets"),
        rope_scaling: str = typer.Option(None, "--rope-scaling",
                                         help="pi, ntk, dynamic-ntk, yarn, rerope or leaky-rerope"),
        rope_factor: float = typer.Option(None, "--rope-factor"),
        device: str = typer.Option(_train("device"), "--device"),
        root: Path = typer.Option(None, "--root", help=ROOT_HELP),
        save: bool = typer.Option(True, "--save/--no-save", help="store the rows as results of kind 'ppl'"),
        hf: str = typer.Option(None, "--hf", help="a Hugging Face causal LM (hub id or local directory) instead "
                               "of a run, in its own tokens"),
        revision: str = hf_cli.REVISION,
        dtype: str = hf_cli.DTYPE,
        trust_remote_code: bool = hf_cli.TRUST_REMOTE_CODE,
        text: list[str] = typer.Option(None, "--text", help="with --hf: text files or directories (default: the "
                                       "lm task's corpus); its held-out split is read"),
        text_field: str = typer.Option("text", "--text-field", help="JSON Lines key / Parquet column of --text"),
        chunk_size: int = typer.Option(None, "--chunk-size", help="tokens per chunk through the caches"),
    ) -> None:
        """Perplexity vs length of a trained lm run (or of a Hugging Face model), optionally under an
        evaluation-time RoPE scaling."""
        if hf is not None:
            from zoo.cli.hashhop import parse_rope, parse_sizes

            if run is not None:
                raise ZooError("give a run or --hf, not both")
            ref = hf_cli.model_ref(hf, revision, dtype, trust_remote_code, parse_rope(rope_scaling, rope_factor))
            run_id, rows = hf_cli.ppl(ref, lengths and parse_sizes(lengths), text, text_field, stride, windows,
                                      buckets, chunk_size, device, root, save)
            console.print(ppl_table(rows, f"perplexity vs length of {ref.label()} (run {run_id}, kind hf)"))
            return
        if run is None:
            raise ZooError("give a run id or directory, or --hf NAME", "see `zoo ppl --help`")
        from pydantic import ValidationError

        from zoo.eval.ppl import PplEval, RopeScaling, evaluate_run
        from zoo.store import Store, config_id
        from zoo.train.checkpoint import load_model
        from zoo.train.trainer import resolve_device

        store = Store(root)
        path = Path(run)
        run_id = None
        if not path.exists():
            run_id = store.find_run(run)["id"]
            path = store.run_dir(run_id)
        if (rope_scaling is None) != (rope_factor is None):
            raise ZooError("--rope-scaling and --rope-factor go together", "e.g. --rope-scaling yarn --rope-factor 8")
        try:
            spec = PplEval(lengths=[int(x) for x in lengths.split(",")] if lengths else None,
                           multipliers=[int(x) for x in multipliers.split(",")], stride=stride, windows=windows,
                           buckets=buckets)
            rope = RopeScaling(method=rope_scaling, factor=rope_factor) if rope_scaling else None
        except ValidationError as e:
            raise invalid(e, "perplexity setting", "see `zoo ppl --help`") from None
        except ValueError as e:  # a length that is not a number
            raise ZooError(f"bad perplexity setting: {e}", "see `zoo ppl --help`") from None
        dev = resolve_device(device)
        model, cfg = load_model(path, dev)
        rows = evaluate_run(model, cfg, spec, rope)
        console.print(ppl_table(rows, f"perplexity vs length of {run_id or path}"
                                + (f" ({rope.method} x{rope.factor:g})" if rope else "")))
        if save:
            rid = run_id or (path.name if (path / "config.json").is_file() else path.parent.parent.name)
            eid = config_id({"kind": "ppl", "settings": spec.model_dump(), "rope": rope.model_dump() if rope else None})
            store.add_results(rid, "ppl", [{**r, "eval_id": eid} for r in rows], replace=False)
            console.print(f"[dim]stored {len(rows)} rows as results of kind 'ppl' for run {rid}[/]")


def ppl_table(rows: list[dict], title: str) -> Table:
    t = Table(title=title)
    for c in ("length", "windows", "ppl", "bits/token", "ppl past training length", "status"):
        t.add_column(c, justify="right")
    beyond = {r["length"]: r for r in rows if r.get("scope") == "beyond_train"}
    for r in rows:
        if r.get("scope") != "all":
            continue
        if r["status"] != "ok":
            t.add_row(str(r["length"]), "-", "-", "-", "-", Text(str(r.get("reason", ""))))
            continue
        b = beyond.get(r["length"])
        t.add_row(str(r["length"]), str(r["windows"]), f"{r['ppl']:.3f}", f"{r['bits_per_byte']:.3f}",
                  f"{b['ppl']:.3f}" if b else "-", "ok")
    return t
