"""The built-in evaluators: HashHop (`zoo.eval.hashhop`), perplexity vs length (`zoo.eval.ppl`) and
the retrieval recall of retrieval layers on HashHop (`zoo.eval.recall`).

Both wrap their modules without changing what they compute or the eval ids of rows already
stored: HashHop hashes its table as written (its defaults stay out of the id), perplexity its
validated config.
"""

from __future__ import annotations

import copy
from typing import Any

from zoo.errors import ZooError
from zoo.eval.base import Cell, EvalTarget, Evaluator, register_evaluator
from zoo.eval.hashhop import HashHopGrid, variant_name
from zoo.eval.ppl import PplEval
from zoo.eval.recall import RecallConfig


@register_evaluator
class HashHop(Evaluator):
    """Exact match per query, per hop and per length, one cell per (n_chars, hops, cot)."""

    name = "hashhop"
    description = "HashHop exact match per query, per hop, per length (teacher-forced and greedy)"
    config_cls = HashHopGrid
    version = 2  # intervals by sample, with per-sample counts
    example = {"n_chars": [120], "hops": [1, 2], "samples": 2, "queries": 2, "variants": [{"mixer.rope.base": 500.0}]}
    # `variant`: None as trained, else the name of an evaluation-time variant (`variant_name`)
    cell_columns = ("n_chars", "hops", "cot", "variant")
    columns = {
        "variant": str,
        "length": int, "n_chars": int, "hops": int, "cot": bool, "hash_len": int, "queries": int, "samples": int,
        "seed": int, "split": str, "status": str, "reason": str, "redrawn": int,
        "n": int, "correct": int, "accuracy": float, "low": float, "high": float, "n_eff": float, "interval": str,
        "greedy_n": int, "greedy_correct": int, "greedy_accuracy": float, "greedy_low": float, "greedy_high": float,
        "greedy_agreement": float, "chars": int, "char_accuracy": float, "char_low": float, "char_high": float,
        "nll": float, "hop_accuracy": list, "hop_low": list, "hop_high": list, "depth_reached": float,
        "depth": list, "depth_low": list, "depth_high": list, "per_sample": list,
    }

    def identity(self, raw: Any) -> Any:
        # variants are cells of their own: adding one keeps the id, so the cells as trained are kept
        table = raw if isinstance(raw, dict) else self.make_config(raw).model_dump()
        return {k: v for k, v in table.items() if k != "variants"}

    def check(self, config: HashHopGrid) -> None:
        config.check()

    def cells(self, config: HashHopGrid) -> list[Cell]:
        names = [None] + [variant_name(v) for v in config.variants]
        return [(*cell, name) for name in names for cell in config.cells()]

    def evaluate(self, target: EvalTarget, config: HashHopGrid, cell: Cell) -> list[dict[str, Any]]:
        """A cell's samples depend on the cell alone, not on the rest of the grid."""
        from zoo.eval.hashhop import evaluate
        from zoo.train.schedule import apply_mixer_knobs

        n_chars, hops, cot, name = cell
        model = target.model
        if name is not None:  # a fresh copy, so the cells as trained never see the settings
            model = target.reload() if target.reload is not None else copy.deepcopy(target.model)
            try:
                apply_mixer_knobs(model, next(v for v in config.variants if variant_name(v) == name))
            except ZooError as e:
                return [{"n_chars": n_chars, "hops": hops, "cot": cot, "variant": name, "status": "n/a",
                         "reason": str(e)}]
        one = config.model_copy(update={"n_chars": [n_chars], "hops": [hops], "cot": [cot], "variants": []})
        cells = evaluate(model, one, device=target.device, on_sample=target.on_sample)["cells"]
        return [{**c, "variant": name} for c in cells]

    def note(self, cell: Cell, rows: list[dict[str, Any]]) -> str:
        row = rows[0]
        acc = f"{row['accuracy']:.3f}" if row["status"] == "ok" else row["status"]
        redrawn = f" ({row['redrawn']} ambiguous samples drawn again)" if row.get("redrawn") else ""
        under = f" ({cell[3]})" if cell[3] is not None else ""
        return f"{cell[0]} characters, {cell[1]} hops{under}: {acc}{redrawn}"


@register_evaluator
class Perplexity(Evaluator):
    """Perplexity vs length on the lm task's held-out text; one cell unscaled, one per RoPE scaling."""

    name = "ppl"
    description = "perplexity vs length on held-out text, by position bucket and under RoPE scalings"
    config_cls = PplEval
    version = 2  # each row's 95% interval over its windows
    task = "lm"
    example = {"lengths": [32, 96], "windows": 1, "buckets": 2, "rope_scaling": [{"method": "pi", "factor": 2}]}
    example_task = {"max_bytes": 1 << 16}
    cell_columns = ("rope_scaling", "rope_factor")
    columns = {
        "length": int, "train_len": int, "stride": int, "rope_scaling": str, "rope_factor": float,
        "scope": str, "status": str, "reason": str, "bucket": int, "start": int, "end": int,
        "loss": float, "ppl": float, "bits_per_byte": float, "tokens": int, "windows": int,
        "loss_low": float, "loss_high": float, "ppl_low": float, "ppl_high": float,
    }

    def cells(self, config: PplEval) -> list[Cell]:
        return [(None, None)] + [(r.method, r.factor) for r in config.rope_scaling]

    def evaluate(self, target: EvalTarget, config: PplEval, cell: Cell) -> list[dict[str, Any]]:
        from zoo.eval.ppl import RopeScaling, evaluate_run

        method, factor = cell
        if method is None:
            return evaluate_run(target.model, target.run_config, config)
        rope = RopeScaling(method=method, factor=factor)
        fresh = target.reload() if target.reload is not None else target.model  # scalings change the model
        try:
            return evaluate_run(fresh, target.run_config, config, rope)
        except ZooError as e:
            return [{"length": None, "scope": "all", "status": "n/a", "rope_scaling": rope.method,
                     "rope_factor": rope.factor, "reason": e.message}]

    def note(self, cell: Cell, rows: list[dict[str, Any]]) -> str:
        return f"{len(rows)} rows" + (f" ({cell[0]} x{cell[1]:g})" if cell[0] is not None else "")


@register_evaluator
class RetrievalRecall(Evaluator):
    """Per retrieval layer (HSA), the share of HashHop answer positions whose selected chunks hold
    the chunk of the character they copy, beside chance and exact match; one cell per n_chars. A model without
    retrieval layers gets one "n/a" row per cell naming its layers and the retrieval mixers."""

    name = "retrieval-recall"
    description = ("per retrieval layer (HSA): share of HashHop answer positions whose top-K chunks hold the "
                   "character they copy")
    config_cls = RecallConfig
    version = 2  # the wanted chunk is per copied character (version 1: any chunk of the value)
    task = "hashhop"
    example = {"n_chars": [120, 240], "hash_len": 4, "samples": 2, "queries": 2}
    example_task = {"hops": [1], "hash_len": 4}
    example_model = {"layers": ["swa", "hsa"], "n_layers": 2,
                     "mixer_config": {"swa": {"n_heads": 2, "window": 8},
                                      "hsa": {"n_heads": 2, "n_kv_heads": 1, "head_dim": 16, "chunk_size": 16,
                                              "top_k": 2, "window": 8}}}
    cell_columns = ("n_chars",)
    columns = {
        "n_chars": int, "length": int, "hash_len": int, "samples": int, "queries": int, "seed": int, "split": str,
        "layer": int, "mixer": str, "chunk_size": int, "top_k": int, "status": str, "reason": str,
        "hits": int, "n": int, "recall": float, "low": float, "high": float, "n_eff": float, "interval": str,
        "chance": float, "weight": float, "straddle_n": int, "straddle_weight": float, "ranked": int,
        "ranked_first": float, "miss_rate": float, "exact": int, "asked": int,
        "exact_accuracy": float, "exact_low": float, "exact_high": float, "exact_straddling": int,
        "asked_straddling": int, "per_sample": list,
    }

    def check(self, config: RecallConfig) -> None:
        config.check()

    def cells(self, config: RecallConfig) -> list[Cell]:
        return [(n,) for n in config.n_chars]

    def evaluate(self, target: EvalTarget, config: RecallConfig, cell: Cell) -> list[dict[str, Any]]:
        from zoo.eval.recall import recall_rows

        rows = recall_rows(target.model, config, cell[0], config.chunk_size, target.device)
        if target.on_sample:
            target.on_sample(config.samples)
        return rows

    def note(self, cell: Cell, rows: list[dict[str, Any]]) -> str:
        if rows[0]["status"] != "ok":
            return f"{cell[0]} characters: n/a ({rows[0]['reason']})"
        per = ", ".join(f"layer {r['layer']} {r['recall']:.3f} (chance {r['chance']:.3f}"
                        + (f", miss rate per chunk {r['miss_rate']:.1e}" if r.get("miss_rate") is not None else "")
                        + ")" for r in rows)
        return f"{cell[0]} characters: answer chunk selected: {per}; exact {rows[0]['exact']}/{rows[0]['asked']}"
