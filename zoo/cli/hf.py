"""`zoo hashhop eval --hf NAME` and `zoo ppl --hf NAME`: pretrained Hugging Face causal LMs.

The `--hf` options are declared once here and used by those two commands (`zoo.cli.hashhop`,
`zoo.cli.train`); this module does their work so that a zoo-trained model's path through them
stays as it was.
An evaluated model is a run of kind "hf" in the results store, beside the trained ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from zoo.errors import ZooError, invalid

# the options that say which pretrained model, shared by both commands
REVISION = typer.Option(None, "--revision", help="hub branch, tag or commit of --hf")
DTYPE = typer.Option("auto", "--dtype", help="weights dtype of --hf: auto (the checkpoint's), float32, bfloat16, "
                     "float16")
TRUST_REMOTE_CODE = typer.Option(False, "--trust-remote-code", help="let --hf run its repository's own code")


def model_ref(name: str, revision: str | None, dtype: str, trust_remote_code: bool, rope):
    from pydantic import ValidationError

    from zoo.eval.hf import HFModelRef

    try:
        return HFModelRef(name=name, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code,
                          rope_scaling=rope)
    except ValidationError as e:
        raise invalid(e, "--hf", "--dtype is auto, float32, bfloat16 or float16") from None


def load(ref, device: str):
    from zoo.env import resolve_device
    from zoo.eval.hf import load_hf

    return load_hf(ref, resolve_device(device))


def hashhop_eval(ref, grid_dict: dict[str, Any], device: str, root: Path | None, out: Path | None,
                 samples_file: Path | None = None) -> None:
    """Evaluate `ref` over a HashHop grid (or the samples of a file); rows go to the store (run
    kind "hf") and a JSON file."""
    from pydantic import ValidationError

    from zoo.cli import console, err_console
    from zoo.cli.hashhop import results_table
    from zoo.eval.hashhop import HashHopGrid, read_samples
    from zoo.eval.hf import dumps, evaluate_hf, evaluate_hf_file, record_run
    from zoo.progress import Progress
    from zoo.store import Store

    try:
        grid = HashHopGrid(**grid_dict)
    except ValidationError as e:
        raise invalid(e, "HashHop grid", f"fields: {', '.join(HashHopGrid.model_fields)}", model=HashHopGrid) from None
    if samples_file is not None:
        samples = read_samples(samples_file)
        total = len(samples)
    else:
        grid.check()
        total = grid.samples * len(grid.cells())
    hf = load(ref, device)
    store = Store(root)
    run_id = record_run(store, hf)
    with Progress(err_console, "hashhop", total, unit="samples") as bar:

        def cell_done(c: dict[str, Any]) -> None:
            acc = "n/a" if c["status"] != "ok" else f"{c['accuracy']:.3f}"
            bar.update(description=f"hashhop (last: {c['length']} tokens, {c['hops']} hops: {acc})")

        if samples_file is not None:
            results = evaluate_hf_file(hf, samples_file, grid.greedy_samples, grid.chunk_size or 8192,
                                       lambda k: bar.update(advance=k))
        else:
            results = evaluate_hf(hf, grid, lambda k: bar.update(advance=k), cell_done)
    results["run_id"] = run_id
    console.print(results_table(results))
    new = store.add_results(run_id, "hashhop", [{**c, "label": ref.label()} for c in results["cells"]])
    store.set_status(run_id, "done")
    console.print(f"{new} new result rows for {ref.name} (run {run_id}, kind hf) in [bold]{store.path}[/]")
    out = out or store.run_dir(run_id) / "hashhop_eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps(results))
    console.print(f"results in [bold]{out}[/]")


def ppl(ref, lengths: list[int] | None, text: list[str] | None, text_field: str, stride: int | None,
        windows: int, buckets: int, chunk_size: int | None, device: str, root: Path | None, save: bool):
    """Perplexity vs length of `ref` on held-out text (the lm task's corpus, or `text`) in its own
    tokens. Returns (run id, rows)."""
    from pydantic import ValidationError

    from zoo.eval.hf import evaluate_ppl_hf, record_run
    from zoo.store import Store, config_id
    from zoo.tasks.lm import LMConfig, split_texts

    if not lengths:
        raise ZooError("--hf needs --lengths", "a pretrained model has no training length here, e.g. --lengths 512,2k")
    try:
        cfg = LMConfig(paths=list(text or []), text_field=text_field)
    except ValidationError as e:
        raise invalid(e, "text setting", "see `zoo ppl --help`") from None
    texts = split_texts(cfg, "eval")
    hf = load(ref, device)
    rows = evaluate_ppl_hf(hf, texts, lengths, stride=stride, windows=windows, buckets=buckets, chunk_size=chunk_size)
    store = Store(root)
    run_id = record_run(store, hf)
    if save:
        settings = {"lengths": sorted(set(lengths)), "text": cfg.model_dump(), "stride": stride, "windows": windows,
                    "buckets": buckets}
        eid = config_id({"kind": "ppl", "settings": settings})
        store.add_results(run_id, "ppl", [{**r, "eval_id": eid, "label": ref.label(),
                                           "tokenizer": hf.tokenizer_name()} for r in rows])
    store.set_status(run_id, "done")
    return run_id, rows


def register(app: typer.Typer) -> None:
    """No commands of its own: see `zoo hashhop eval --hf` and `zoo ppl --hf`."""
