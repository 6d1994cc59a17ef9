"""`zoo hashhop generate` (samples as JSON Lines) and `zoo hashhop eval` (a model over a grid)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from zoo.cli import hf as hf_cli
from zoo.errors import ZooError, invalid
from zoo.tasks.hashhop import MAX_CHARS

SPEC_TABLES = (("eval", "hashhop"), ("evaluations", "hashhop"), ("hashhop",))


def parse_sizes(text: str, train: int | None = None) -> list[int]:
    """`1000,4k,1M` (k = 1e3, M = 1e6, characters) or a doubling range `4k..1M` (ends included);
    `train` stands for the run's training length (`train..1M`)."""

    def one(tok: str) -> int:
        tok = tok.strip()
        if tok == "train":
            if train is None:
                raise ZooError("'train' in --n-chars needs a trained run with a training length")
            return train
        mult = {"k": 1_000, "K": 1_000, "m": 1_000_000, "M": 1_000_000}.get(tok[-1:], 1)
        try:
            value = float(tok[:-1] if mult > 1 else tok) * mult
        except ValueError:
            raise ZooError(f"bad size {tok!r}", "sizes look like 1000, 4k or 1M") from None
        if not math.isfinite(value) or value < 1 or value != int(value):
            raise ZooError(f"bad size {tok!r}", "sizes are whole numbers of characters, at least 1")
        if value > MAX_CHARS:
            raise ZooError(f"size {tok!r} is too large", f"at most {MAX_CHARS:,} characters")
        return int(value)

    out: list[int] = []
    for part in text.split(","):
        if ".." in part:
            lo, hi = (one(t) for t in part.split("..", 1))
            if lo > hi:
                raise ZooError(f"empty range {part!r}", "write small..large, e.g. 4k..1M")
            while lo < hi:
                out.append(lo)
                lo *= 2
            out.append(hi)
        elif part.strip():
            out.append(one(part))
    if not out:
        raise ZooError("no sizes given", "e.g. --n-chars 4k..1M")
    return list(dict.fromkeys(out))


def parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ZooError(f"bad {what} {text!r}", "a comma-separated list of integers, e.g. 1,2") from None


def parse_cot(text: str) -> list[bool]:
    words = {"false": [False], "true": [True], "both": [False, True], "no": [False], "yes": [True]}
    out: list[bool] = []
    for t in text.lower().split(","):
        if t.strip() not in words:
            raise ZooError(f"bad --cot value {t!r}", "use false, true or both")
        out += words[t.strip()]
    return list(dict.fromkeys(out))


def parse_rope(method: str | None, factor: float | None):
    """`--rope-scaling M --rope-factor S` -> RopeScaling, or None when neither is given."""
    from pydantic import ValidationError

    from zoo.eval.ppl import RopeScaling

    if method is None and factor is None:
        return None
    if method is None or factor is None:
        raise ZooError("--rope-scaling and --rope-factor go together", "e.g. --rope-scaling yarn --rope-factor 16")
    try:
        return RopeScaling(method=method, factor=factor)
    except ValidationError as e:
        raise invalid(e, "RoPE scaling", "methods: pi, ntk, dynamic-ntk, yarn, rerope, leaky-rerope; "
                      "factor >= 1") from None


def spec_grid(path: Path) -> dict[str, Any]:
    """The HashHop grid table of an experiment file (`[eval.hashhop]` or `[hashhop]`)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ZooError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ZooError(f"{path}: not valid TOML: {e}") from None
    for keys in SPEC_TABLES:
        node: Any = data
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            return dict(node)
    raise ZooError(f"{path} has no HashHop grid", f"add a [{'.'.join(SPEC_TABLES[0])}] table")


def _fmt(acc: float | None, lo: float | None, hi: float | None) -> str:
    return "-" if acc is None else f"{acc:.2f} ({lo:.2f}-{hi:.2f})"


def results_table(results: dict[str, Any]) -> Table:
    t = Table(title="HashHop exact match per query (teacher-forced, Wilson 95%; greedy k/n)", box=box.SIMPLE_HEAD)
    variants = any(c.get("variant") for c in results["cells"])
    for col in ("chars", "hops", "CoT", *(["variant"] if variants else []), "exact", "greedy", "char", "NLL",
                "reached", "s"):
        t.add_column(col, justify="left" if col in ("CoT", "variant") else "right", no_wrap=True)
    reasons: list[str] = []
    for c, sec in zip(results["cells"], results["seconds"], strict=True):
        head = [str(c.get("n_chars", c.get("length"))), str(c["hops"]), "yes" if c["cot"] else "no"]
        if variants:
            head.append(escape(c.get("variant") or "as trained"))
        if c.get("redrawn"):
            reasons.append(f"{c.get('n_chars', c['length'])} characters, {c['hops']} hops: {c['redrawn']} of "
                           f"{c['samples']} samples drawn again (a key on two lines made them ambiguous)")
        if c["status"] != "ok":
            t.add_row(*head, "[yellow]n/a[/]", "-", "-", "-", "-", f"{sec:.1f}")
            where = f"{c['length']} tokens" if c.get("length") else f"{c.get('n_chars')} characters"
            reasons.append(f"n/a at {where}: {escape(str(c['reason']))}")
            continue
        reached = "-" if c["depth_reached"] is None else f"{c['depth_reached']:.1f}/{c['hops']}"
        greedy = f"{c['greedy_correct']}/{c['greedy_n']}" if c["greedy_n"] else "-"
        t.add_row(*head, _fmt(c["accuracy"], c["low"], c["high"]), greedy, f"{c['char_accuracy']:.2f}",
                  f"{c['nll']:.2f}", reached, f"{sec:.1f}")
    if reasons:
        t.caption = "\n".join(dict.fromkeys(reasons))
    return t


def cli_eval_id(grid, rope) -> str:
    """The id of an ad-hoc evaluation's rows: its grid (variants are cells, not settings, so a
    grid keeps the id it had before variants existed) and its RoPE scaling."""
    from zoo.eval.base import get_evaluator
    from zoo.store import config_id

    return config_id({"kind": "hashhop", "settings": get_evaluator("hashhop").identity(grid),
                      "rope": rope.model_dump() if rope else None})


def find_store(run_dir: Path | None, root: Path | None):
    """The store at `root`, else the one holding `run_dir` (`<root>/runs/<id>`); None when neither."""
    from zoo.store import Store

    if root is not None:
        return Store(root)
    if run_dir is None:
        return None
    guess = run_dir.resolve().parent.parent
    if run_dir.resolve().parent.name == "runs" and (guess / "zoo.db").is_file():
        return Store(guess)
    return None


def register(app: typer.Typer) -> None:
    from zoo.cli import console, err_console

    hh = typer.Typer(help="HashHop: samples compatible with Magic's generator, and the evaluator.",
                     no_args_is_help=True)
    app.add_typer(hh, name="hashhop")

    @hh.command("generate")
    def generate_cmd(
        n_chars: int = typer.Option(..., "--n-chars", help="problem size in characters (the original's n_chars)"),
        queries: int = typer.Option(5, "--queries", help="queries in the completion"),
        hops: int = typer.Option(2, "--hops", help="pairs per chain"),
        hash_len: int = typer.Option(16, "--hash-len", help="characters per hash"),
        cot: bool = typer.Option(False, "--cot", help="ask for the whole chain (chain of thought)"),
        seed: int = typer.Option(0, "--seed", help="seed of the first sample, as random.seed + np.random.seed"),
        count: int = typer.Option(1, "--count", help="samples; later ones use seeds derived from --seed"),
        out: Path = typer.Option(None, "--out", help="JSON Lines file (default: standard output)"),
    ) -> None:
        """Write HashHop samples as JSON Lines: prompt, completion, targets, queries, params, seed."""
        from zoo.tasks.hashhop import MAX_SEED, check_params, derived_seed, generate

        check_params(n_chars, queries, hops, hash_len)
        if not 0 <= seed < MAX_SEED:
            raise ZooError(f"seed must be in [0, 2**32), got {seed}", "NumPy's RandomState takes a 32-bit seed")
        if not 1 <= count <= 1_000_000:
            raise ZooError(f"count must be from 1 to 1,000,000, got {count}")
        fh = open(out, "w", encoding="utf-8") if out is not None else sys.stdout
        try:
            for i in range(count):
                s = generate(n_chars, queries, hops, hash_len, cot, seed=derived_seed(seed, i))
                fh.write(json.dumps(s.to_json()) + "\n")
        finally:
            if out is not None:
                fh.close()
        if out is not None:
            err_console.print(f"wrote {count} sample{'s' * (count > 1)} to [bold]{escape(str(out))}[/]")

    @hh.command("eval")
    def eval_cmd(
        run: str = typer.Argument(None, help="run id (or a unique prefix), run directory or checkpoint directory "
                                  "of a trained model"),
        untrained: str = typer.Option(None, "--untrained", help="evaluate a fresh ZooLM with this model config "
                                      "(JSON, e.g. '{\"d_model\": 64}'): a baseline"),
        spec: Path = typer.Option(None, "--spec", help="experiment TOML whose [eval.hashhop] table is the grid"),
        samples_file: Path = typer.Option(None, "--samples-file", help="score samples from a JSON Lines file "
                                          "(ours or the original's) instead of generating"),
        n_chars: str = typer.Option(None, "--n-chars", help="sizes in characters: 1000,4k,1M or 4k..1M (doubling); "
                                    "'train' is the largest problem that fits the run's training length "
                                    "(in tokens), e.g. train..64k"),
        hops: str = typer.Option(None, "--hops", help="hop counts, e.g. 1,2"),
        cot: str = typer.Option(None, "--cot", help="false, true or both"),
        samples: int = typer.Option(None, "--samples", help="samples per cell"),
        queries: int = typer.Option(None, "--queries", help="queries per sample"),
        hash_len: int = typer.Option(None, "--hash-len", help="characters per hash"),
        greedy: int = typer.Option(None, "--greedy", help="samples per cell also decoded greedily"),
        seed: int = typer.Option(None, "--seed", help="seed of the evaluation stream"),
        chunk_size: int = typer.Option(None, "--chunk-size", help="tokens per chunk through the caches"),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
        root: Path = typer.Option(None, "--root", help="results store (default: the one holding RUN, if any)"),
        out: Path = typer.Option(None, "--out", help="results JSON (default: RUN/hashhop_eval.json or ./)"),
        rope_scaling: str = typer.Option(None, "--rope-scaling",
                                         help="evaluation-time RoPE scaling: pi, ntk, dynamic-ntk, yarn, rerope, "
                                              "leaky-rerope (RoPE models only)"),
        rope_factor: float = typer.Option(None, "--rope-factor", help="scale factor s of --rope-scaling"),
        hf: str = typer.Option(None, "--hf", help="evaluate a Hugging Face causal LM (hub id or local directory) "
                               "with its own tokenizer instead of a run"),
        revision: str = hf_cli.REVISION,
        dtype: str = hf_cli.DTYPE,
        trust_remote_code: bool = hf_cli.TRUST_REMOTE_CODE,
    ) -> None:
        """Evaluate a trained run (or a fresh baseline, or a Hugging Face model) over a HashHop grid.

        Results go to the results store holding the run (or --root), each cell as it finishes (a
        stopped evaluation resumes at the next cell), and to a JSON file."""
        if hf is not None:

            if run is not None or untrained is not None:
                raise ZooError("--hf evaluates a pretrained model alone", "leave out the run directory and --untrained")
            flags = {"n_chars": n_chars and parse_sizes(n_chars), "hops": hops and parse_ints(hops, "--hops"),
                     "cot": cot and parse_cot(cot), "samples": samples, "queries": queries, "hash_len": hash_len,
                     "greedy_samples": greedy, "seed": seed, "chunk_size": chunk_size}
            grid = {**(spec_grid(spec) if spec is not None else {}),
                    **{k: v for k, v in flags.items() if v is not None}}
            ref = hf_cli.model_ref(hf, revision, dtype, trust_remote_code, parse_rope(rope_scaling, rope_factor))
            return hf_cli.hashhop_eval(ref, grid, device, root, out, samples_file)
        import torch
        from pydantic import ValidationError

        from zoo.env import resolve_device
        from zoo.eval.base import EvalTarget, get_evaluator
        from zoo.eval.hashhop import HashHopGrid, evaluate, evaluate_file, read_samples
        from zoo.model import ModelConfig, ZooLM
        from zoo.progress import Progress
        from zoo.store import Store, config_id, provenance
        from zoo.train.checkpoint import load_model, resolve_checkpoint

        if (run is None) == (untrained is None):
            raise ZooError("give either a run directory / checkpoint or --untrained MODEL_JSON")
        dev = resolve_device(device)
        if run is not None:
            path = Path(run)
            if not path.exists() and "/" not in run and os.sep not in run:  # a run id, as `zoo ppl` takes them
                store = Store.existing(root)
                path = store.root / "runs" / store.find_run(run)["id"]
            model, trained = load_model(path, dev)
            run_dir = resolve_checkpoint(path).parent.parent
            run_id, run_config = run_dir.name, None
        else:
            try:
                cfg = ModelConfig(**json.loads(untrained))
            except json.JSONDecodeError as e:
                raise ZooError(f"--untrained is not JSON: {e.msg}",
                               "e.g. '{\"d_model\": 64, \"n_layers\": 2}'") from None
            except ValidationError as e:
                raise invalid(e, "--untrained", f"fields: {', '.join(ModelConfig.model_fields)}",
                              model=ModelConfig) from None
            torch.manual_seed(0)
            model = ZooLM(cfg).to(dev)
            run_config = {"model": cfg.model_dump(), "untrained": True, "init_seed": 0}
            run_dir, run_id, trained = None, config_id(run_config), {}

        # the grid: the run's own task settings, then the spec table, then the flags
        grid_dict: dict[str, Any] = {}
        task = trained.get("task") or {}
        if task.get("name") == "hashhop" and (task.get("config") or {}).get("hash_len"):
            grid_dict["hash_len"] = task["config"]["hash_len"]
        train_len = (trained.get("train") or {}).get("seq_len")
        rope = parse_rope(rope_scaling, rope_factor)
        if rope is not None:
            from zoo.eval.ppl import apply_rope_scaling

            apply_rope_scaling(model, rope.method, rope.factor, train_len)
        grid_dict.update(spec_grid(spec) if spec is not None else {})
        flags = {"hops": hops and parse_ints(hops, "--hops"),
                 "cot": cot and parse_cot(cot), "samples": samples, "queries": queries, "hash_len": hash_len,
                 "greedy_samples": greedy, "seed": seed, "chunk_size": chunk_size}
        grid_dict.update({k: v for k, v in flags.items() if v is not None})

        def make_grid(d: dict[str, Any]) -> HashHopGrid:
            try:
                return HashHopGrid(**d)
            except ValidationError as e:
                raise invalid(e, "HashHop grid", f"fields: {', '.join(HashHopGrid.model_fields)}",
                              model=HashHopGrid) from None

        if n_chars:  # 'train': the largest problem of this grid that fits the training length in tokens
            train_chars = make_grid({**grid_dict, "n_chars": [1]}).chars_for_tokens(train_len) \
                if train_len and "train" in n_chars else None
            grid_dict["n_chars"] = parse_sizes(n_chars, train_chars)
        grid = make_grid(grid_dict)

        store = find_store(run_dir, root)
        if grid.variants and (store is None or samples_file is not None):
            raise ZooError("evaluation-time variants are cells of a stored evaluation",
                           "evaluate a run of a results store (or pass --root), without --samples-file")
        if store is not None and run_config is None and store.get_run(run_id) is None:
            raise ZooError(f"run '{run_id}' is not in the store at {store.root}",
                           "pass --root of the store that trained it")
        if samples_file is not None:
            total = len(read_samples(samples_file))
        else:
            grid.check()
            total = grid.samples * len(grid.cells()) * (1 + len(grid.variants))  # variants score every sample again
        with Progress(err_console, "hashhop", total, unit="samples") as bar:

            def advance(k: int) -> None:
                bar.update(advance=k)

            def cell_done(c: dict[str, Any]) -> None:
                acc = "n/a" if c["status"] != "ok" else f"{c['accuracy']:.3f}"
                size = f"{c['length']} tokens" if c.get("length") else f"{c['n_chars']} characters"
                under = f", {escape(c['variant'])}" if c.get("variant") else ""
                bar.update(description=f"hashhop (last: {size}, {c['hops']} hops{under}: {acc})")

            if samples_file is not None:
                results = evaluate_file(model, samples_file, grid.greedy_samples,
                                        grid.chunk_size or model.config.chunk_size, dev, advance)
            elif store is None:
                results = evaluate(model, grid, dev, advance, cell_done)
            else:  # through the sweep's evaluator: each finished cell is stored before the next starts
                if run_config is not None:  # a baseline becomes a run of its own
                    store.upsert_run(run_id, run_config, kind="baseline", status="done",
                                     provenance=provenance(model, dev))
                # scaled evaluations are rows of their own, never merged with unscaled ones
                ev = get_evaluator("hashhop")
                tag = {"eval_id": cli_eval_id(grid, rope)}
                if rope is not None:
                    tag.update(rope_scaling=rope.method, rope_factor=rope.factor)
                stored = [r for r in store.results(run_id, "hashhop") if r.get("eval_id") == tag["eval_id"]]
                order = {c: i for i, c in enumerate(ev.cells(grid))}
                cells = [r for r in stored if ev.cell_of(r) in order]
                seconds = [0.0] * len(cells)
                advance(grid.samples * len(cells))
                clock = [time.perf_counter()]

                def keep(rows: list[dict[str, Any]], note: str) -> None:
                    store.add_results(run_id, "hashhop", [{**r, **tag} for r in rows])
                    cells.extend(rows)
                    seconds.append(time.perf_counter() - clock[0])
                    clock[0] = time.perf_counter()
                    cell_done(rows[-1])

                ev.run(EvalTarget(model, trained, dev, on_sample=advance), grid, stored, keep)
                ranked = sorted(zip(cells, seconds), key=lambda cs: order[ev.cell_of(cs[0])])
                results = {"kind": "hashhop", "grid": grid.model_dump(), "device": str(dev),
                           "cells": [c for c, _ in ranked], "seconds": [t for _, t in ranked]}
                if rope is not None:
                    results["rope"] = rope.model_dump()
                resumed = sum(t == 0.0 for t in seconds)
                console.print(f"stored {len(cells) - resumed} cells for run {run_id} in "
                              f"[bold]{escape(str(store.path))}[/]"
                              + (f" ({resumed} were stored before)" if resumed else ""))
        results["run_id"] = run_id
        console.print(results_table(results))
        if store is not None and samples_file is not None:
            if run_config is not None:
                store.upsert_run(run_id, run_config, kind="baseline", status="done", provenance=provenance(model, dev))
            rows = results["cells"]
            if rope is not None:
                rows = [{**c, "rope_scaling": rope.method, "rope_factor": rope.factor} for c in rows]
            new = store.add_results(run_id, "hashhop", rows)
            console.print(f"{new} new result rows for run {run_id} in [bold]{escape(str(store.path))}[/]")
        if out is None:
            out = (run_dir / "hashhop_eval.json") if run_dir is not None else Path("hashhop_eval.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
        console.print(f"results in [bold]{escape(str(out))}[/]")
