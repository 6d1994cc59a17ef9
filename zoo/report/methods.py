"""The Methods section, written from the run configs, the spec and the stored rows.

Every setting quoted here is read from what the runs and evaluators recorded; where runs
differ in a setting, the text lists each value with the mixers that used it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from zoo.report import analysis as A
from zoo.report import fmt, known
from zoo.report.data import ReportData


@dataclass
class Method:
    id: str
    title: str
    paragraphs: list[str]


_ABSENT = object()  # a setting missing from a stored config (an older version), unlike one left unset


def _get(d: dict, path: str, default: Any = None) -> Any:
    for k in path.split("."):
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _values(data: ReportData, path: str, show=str) -> str:
    """One setting across the runs: 'v' when shared, else 'v1 (a, b); v2 (c)'."""
    by: dict[str, list[str]] = defaultdict(list)
    for r in data.runs:
        v = _get(r.config, path, _ABSENT)
        key = "n/a (not recorded)" if v is _ABSENT else "not set" if v is None else show(v)
        if r.label not in by[key]:
            by[key].append(r.label)
    if not by:
        return "n/a (no runs)"
    if len(by) == 1:
        return next(iter(by))
    return "; ".join(f"{k} ({', '.join(v)})" for k, v in by.items())


def _settings(v: dict) -> str:
    """k=v, ... with unset values as 'not set', never Python's None."""
    return ", ".join(f"{k}={'not set' if x is None else x}" for k, x in sorted(v.items()))


def _list(xs) -> str:
    xs = list(xs)
    return ", ".join(str(x) for x in xs) if xs else "n/a"


def methods(data: ReportData) -> list[Method]:
    out = [_models(data), _training(data), _hashhop(data), _ppl(data), _bench(data), _leaderboard(data),
           _known(data)]
    return [m for m in out if m is not None]


def _known(data: ReportData) -> Method | None:
    """The rule of each known result the summary tests, when the report measures any of them."""
    ks = known.known_results(data, A.entries(data))
    if not known.measured(ks):
        return None
    return Method("methods-known", "Known results", [f"{k.source}: {k.claim}. Rule: {k.rule}." for k in ks])


def _models(data: ReportData) -> Method:
    ps = [
        "Every mixer is trained inside the same language model (ZooLM): byte-level tokens (256 bytes and 4 "
        "specials), a learned embedding tied to the output head, pre-norm blocks x = x + mixer(RMSNorm(x)); "
        "x = x + SwiGLU(RMSNorm(x)), and a final RMSNorm. Only the sequence mixer differs between entries.",
        f"Width d_model: {_values(data, 'model.d_model')}. Blocks: {_values(data, 'model.n_layers')}. "
        f"Layer patterns: {_values(data, 'model.layers', lambda v: '[' + ', '.join(v) + ']')}. "
        f"SwiGLU hidden width: {_values(data, 'model.mlp_hidden', lambda v: str(v))} "
        "(n/a = the default, 8/3 d_model rounded up to a multiple of 64).",
        "Parameters count every weight including the embedding. State size is the sum over layers of each "
        "mixer's declared cache or recurrent state (`state_bytes`) after 8K and 1M tokens for one sequence in "
        "bf16, computed from the model config; the conformance suite checks each mixer's declaration against the "
        "bytes its cache really holds.",
    ]
    return Method("methods-models", "Models", ps)


def _training(data: ReportData) -> Method:
    ps = [
        f"Task: {_values(data, 'task.name')}; task settings: "
        f"{_values(data, 'task.config', lambda v: _settings(v) or 'defaults')}.",
        f"Training length (tokens per sequence): {_values(data, 'train.seq_len')}. Budget: steps "
        f"{_values(data, 'train.steps')}, tokens {_values(data, 'train.max_tokens')}, FLOPs "
        f"{_values(data, 'train.max_flops')}; the first reached stops a run. Batch: "
        f"{_values(data, 'train.batch_size')} sequences x {_values(data, 'train.grad_accum')} accumulation steps.",
        f"AdamW (no weight decay on norms, biases, gains and the SSM dynamics each mixer marks, such as Mamba's "
        f"A_log and D), peak learning rate {_values(data, 'train.lr')}, "
        f"{_values(data, 'train.lr_schedule')} schedule after {_values(data, 'train.warmup_steps')} warm-up steps "
        f"down to {_values(data, 'train.min_lr_ratio')} of the peak, weight decay "
        f"{_values(data, 'train.weight_decay')}, betas ({_values(data, 'train.beta1')}, "
        f"{_values(data, 'train.beta2')}), gradient clipping at {_values(data, 'train.grad_clip')}, precision "
        f"{_values(data, 'train.precision')} (auto: bf16 autocast on GPU, fp32 on CPU), seed "
        f"{_values(data, 'train.seed')}.",
    ]
    ps.append(f"Learning rates and seeds: where a mixer ran at several learning rates, reports use the rate with "
              f"the best mean {A.select_metric(data)} at the training length over its seeds (lower loss or higher "
              "accuracy), for each model size, and draw every rate in the learning-rate figure. Where it ran at "
              "several seeds, every number is the mean over them with the smallest and largest seed beside it.")
    sched = _values(data, "train.schedules", lambda v: ", ".join(sorted(v)) or "none")
    ps.append(f"Scheduled settings: {sched}.")
    ps.append("Tokens/s is the trainer's throughput over the run; MFU divides the achieved FLOP/s (the model's own "
              "FLOP estimate: matmuls at 2 FLOPs per multiply-add, forward + backward = 3x forward) by the device's "
              "dense bf16 datasheet peak, and is n/a where no peak is stated (CPUs). Training FLOPs = FLOPs per "
              "token x training tokens.")
    return Method("methods-training", "Training", ps)


def _hashhop(data: ReportData) -> Method | None:
    if not data.hashhop:
        return Method("methods-hashhop", "HashHop evaluation",
                      ["n/a (no HashHop results for these runs)."])
    sizes = sorted({c.n_chars for c in data.hashhop if c.n_chars is not None})
    lengths = sorted({c.length for c in data.hashhop})
    settings = A.hashhop_settings(data)
    extra = grid_info(data)
    ps = [
        "HashHop prompts follow Magic's generator (magicproduct/hash-hop): random hashes of 52 letters, chains "
        "H1 -> ... -> H(hops+1) written as `k = v` lines, shuffled; the model must answer each queried chain's last "
        "hash (or, with chain of thought, every hash along it). Hashes are incompressible, so the only way to "
        "answer is to store and retrieve what was read.",
        f"Grid: problem sizes {_list(sizes) if sizes else 'n/a'} characters (the original's n_chars), hops "
        f"{_list(sorted({h for h, _ in settings}))}, chain of thought "
        f"{_list(sorted({'on' if c else 'off' for _, c in settings}))}; {extra} Lengths in this report are the "
        f"tokens the model reads, prompt and completion (one character is one token): "
        f"{_list(fmt.length(L) for L in lengths)}. The cells of one problem size (hop counts, modes) differ by their "
        "completions; they are drawn per hop count and mode, never pooled; the leaderboard and the summary figure "
        f"show {A.setting_text(A.headline_setting(data))}. A leaderboard column k x the training length takes the "
        f"evaluated length nearest to it within a factor {2 ** A.LENGTH_TOLERANCE:.2f}, and says which.",
        "Score: teacher-forced exact match per query: a query counts as right when every answer token (the "
        "target's characters and the closing quote) is the argmax given the gold prefix, so one forward pass "
        "scores all queries of a sample. A subset is also decoded greedily from the cache and compared"
        + greedy_agreement(data) + " With chain of thought, per-hop accuracy and the depth reached are recorded too.",
        f"Depth: the mean relative position in the prompt of a queried chain's lines, in {grid_bins(data)} equal "
        "bins (0% = start of the prompt).",
        "Intervals (95%) respect the sampling unit, the sample: the queries of one sample share its haystack and "
        "are not independent. A seeded cluster bootstrap (2000 resamplings of whole samples) gives the variance of "
        "the accuracy and from it the effective number of queries (Kish's design effect), kept between the number "
        "of samples and the number of queries; the interval is Wilson's score interval (Wilson 1927) at that "
        "effective count, so it stays within [0, 1]. Where every query of a cell agrees (accuracy 0 or 1) the "
        "correlation cannot be seen and each sample counts once. Character, per-hop, greedy and per-depth "
        "accuracies are treated alike, each cell on its own: cells of different hop counts or modes are never "
        "pooled. Rows stored before per-sample counts keep the Wilson interval over queries they were stored with."
        + (" Over several seeds the band is the smallest to the largest seed, around their mean."
           if any(len(set(r.seed for r in data.runs_of(lb))) > 1 for lb in data.labels()) else ""),
        "Cells longer than a model's declared max_length are marked n/a with the reason, not run. Long inputs run "
        "through the mixers' caches in chunks, which the conformance suite proves equal to one full forward.",
    ]
    return Method("methods-hashhop", "HashHop evaluation", ps)


def grid_info(data: ReportData) -> str:
    parts = []
    grid = ((data.spec or {}).get("eval") or {}).get("hashhop") or {}
    for key, what in (("queries", "queries per sample"), ("samples", "samples per cell"),
                      ("hash_len", "characters per hash"), ("greedy_samples", "greedy-decoded samples per cell")):
        vals = sorted({v for v in (c.meta.get(key) for c in data.hashhop) if v is not None})
        if not vals and grid.get(key) is not None:
            vals = [grid[key]]
        if vals:
            parts.append(f"{_list(vals)} {what}")
    return ("; ".join(parts) + ".") if parts else "sample counts per cell are in data/hashhop_cells.csv."


def greedy_agreement(data: ReportData) -> str:
    """How often greedy decoding agreed with the teacher-forced verdict, over every greedy-decoded query."""
    n = agree = 0.0
    for c in data.hashhop:
        a, g = c.meta.get("greedy_agreement"), c.greedy_n
        if a is not None and g:
            n += g
            agree += a * g
    if not n:
        return "; per-cell agreement is in data/hashhop_cells.csv."
    return (f": the two verdicts agree on {100 * agree / n:.1f}% of the {int(n)} greedy-decoded queries "
            "(per cell in data/hashhop_cells.csv).")


def grid_bins(data: ReportData) -> int:
    return max((len(c.depth) for c in data.hashhop), default=10) or 10


def _ppl(data: ReportData) -> Method | None:
    if not data.ppl:
        return Method("methods-ppl", "Perplexity", ["n/a (no perplexity results for these runs)."])
    lengths = sorted({p.length for p in data.ppl})
    strides = sorted({(p.length, p.stride) for p in data.ppl if p.stride})
    disjoint = all(s == L for L, s in strides)
    windows = sorted({p.meta.get("windows") for p in data.ppl if p.meta.get("windows")})
    ps = [
        f"Byte-level perplexity exp(mean NLL per byte) of the held-out split of the lm task at evaluation lengths "
        f"{_list(fmt.length(L) for L in lengths)}. For each length L, windows of L + 1 tokens are cut from the "
        "held-out text at offsets 0, s, 2s, ... with stride s "
        + ("equal to L (disjoint windows)" if disjoint else
           "; ".join(f"{fmt.length(s)} at L = {fmt.length(L)}" for L, s in strides))
        + (f", {_list(windows)} windows per length" if windows else "")
        + ". Each window is scored from its first token, so position p sees exactly p tokens of context, and the "
          "reported perplexity averages every position of the window (per-position buckets and the positions past "
          "the training length are in data/ppl.csv when stored). Brackets: the 95% interval of the mean loss "
          "over the windows (Student's t), exponentiated; none where one window was scored"
        + ("." if disjoint else "; the windows overlap at these strides, so they are not independent and the "
           "interval is too narrow."),
    ]
    if data.ppl_variants:
        ps.append("Evaluation-time RoPE scalings of the trained models ("
                  + _list(dict.fromkeys(v for v, _ in data.ppl_variants))
                  + ") are drawn beside them with hollow markers; the leaderboard quotes the models as trained.")
    return Method("methods-ppl", "Perplexity", ps)


def _bench(data: ReportData) -> Method:
    if not data.bench:
        return Method("methods-bench", "Speed and memory", ["n/a (no bench results for these runs)."])
    modes = A.bench_modes(data)
    dtypes = sorted({b.dtype for b in data.bench if b.dtype})
    devices = sorted({b.device for b in data.bench if b.device})
    ps = [
        f"Modes: {_list(modes)} (fwd: forward; fwdbwd: forward and backward; decode: one token with a cache "
        f"filled to the length). dtype {_list(dtypes)}, on {_list(devices)}. Each point is the median time over "
        "many repetitions after warm-up (CUDA events on GPU); tokens/s = tokens per batch / median time; peak "
        "memory is the allocator's peak during the timed call. Peer kernels run in the same process at the same "
        "shapes. A length that ran out of memory is recorded as such and drawn as an x.",
    ]
    if data.ceilings:
        ps.append("Device ceilings measured in the same run: " + "; ".join(
            f"{c.device}: matmul {fmt.sig(c.matmul_tflops, 3)} TFLOP/s, copy {fmt.sig(c.copy_gbps, 3)} GB/s"
            for c in data.ceilings) + ".")
    return Method("methods-bench", "Speed and memory", ps)


def _leaderboard(data: ReportData) -> Method:
    ps = [
        "Each leaderboard row speaks for one run: the largest finished model of that mixer (parameters, then "
        "training tokens); every other run of the mixer is drawn in the loss and scaling figures. "
        f"Effective context length: the largest evaluated length with HashHop accuracy >= {A.THRESHOLD}, shown "
        "with that accuracy and its interval.",
        "Scaling fits: y = a x^b by least squares on log y against log x (the pure power-law form of Kaplan et al. "
        "2020, without an irreducible term), for the loss (held out when every run has it) and for the error rate "
        "1 - accuracy, against non-embedding parameters N (all parameters less the tied embedding, as Kaplan et al. "
        "count) and training FLOPs C; fitted only with at least 3 model sizes, each size at its selected learning "
        "rate. The exponent's 95% interval is b ± t(n - 2) times its regression standard error (Student's t: "
        "4.30 at 4 points), so few sizes give a wide interval. Where two fitted curves cross inside both fits' "
        "measured range, the crossing is named; none is extrapolated.",
        "Training FLOPs C = 3 x forward FLOPs per token x training tokens (backward counted as twice the forward). "
        "The forward count per token adds each mixer's own estimate, the MLPs (2 per multiply-add of each matrix) "
        "and the output head (2 d V): matmuls of the work a mixer needs, causal attention its lower triangle "
        "only, FFT convolutions and scans by their own arithmetic. Each estimate is held in the test suite to "
        "torch's FlopCounterMode on the mixer's torch reference, within the differences that counter's "
        "conventions explain (it counts the full masked score matrix, misses FFTs and elementwise scans, and sees "
        "the intra-chunk matrices of chunked references).",
        "Every number in this report is read from the results store; data/ holds each table and series as CSV with "
        "the run id it comes from.",
    ]
    return Method("methods-leaderboard", "Leaderboard, fits and provenance", ps)
