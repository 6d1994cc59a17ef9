"""The field's known results, tested as findings: each claim, the rule that decides it, and the
verdict read from the report's own numbers.

    for k in known_results(data, entries(data)):
        print(k.source, k.verdict, k.evidence)

A rule is written down here, before any run, from the claim as its paper states it; it is
never fitted to what a run shows. Each verdict is "reproduced", "not reproduced" (the evidence
says by how much it missed) or "not measured" (the evidence says what was missing). A mixer is
found by its layers, not by its label: the `alibi` result is the run whose every layer is alibi.
"""

from __future__ import annotations

from dataclasses import dataclass

from zoo.report import fmt
from zoo.report.analysis import THRESHOLD, Entry, mqar_by_pairs, mqar_runs, state_at_8k, state_kind
from zoo.report.data import PplPoint, ReportData
from zoo.report.fmt import Table, Val

REPRODUCED, NOT_REPRODUCED, NOT_MEASURED = "reproduced", "not reproduced", "not measured"

# Press et al. 2022 (ALiBi), perplexity at 8x the training length over perplexity at 1x:
NEAR = 1.10   # "stays near": at most 10% above its 1x value
SHARP = 1.5   # "rises sharply": at least 50% above
PPL_AT = 8


@dataclass(frozen=True)
class Known:
    key: str
    source: str
    claim: str
    rule: str
    verdict: str
    evidence: str
    run_ids: tuple[str, ...] = ()


def known_results(data: ReportData, es: list[Entry]) -> list[Known]:
    return [alibi_extrapolates(data, es), scaling_helps_rope(data, es), fixed_state_recall(data),
            hsa_holds_furthest(es)]


def measured(known: list[Known]) -> bool:
    return any(k.verdict != NOT_MEASURED for k in known)


# -- helpers ---------------------------------------------------------------------------------
def only(es: list[Entry], mixer: str) -> Entry | None:
    """The entry whose every layer is `mixer`, with a finished run."""
    return next((e for e in es if e.run is not None and e.run.mixers == [mixer]), None)


def ppl_at(points: list[PplPoint], run_id: str, length: int) -> PplPoint | None:
    return next((p for p in points if p.run_id == run_id and p.length == length and p.ppl is not None), None)


def ppl_text(p: PplPoint) -> str:
    band = f" [{fmt.sig(p.low, 3)}, {fmt.sig(p.high, 3)}]" if p.low is not None and p.high is not None else ""
    return f"{fmt.sig(p.ppl, 4)}{band}"


def _ratio(data: ReportData, e: Entry, k: int) -> tuple[float, str] | None:
    """ppl(k x T) / ppl(T) of the entry's first seed, and a sentence of its numbers."""
    T = e.run.train_len
    if not T:
        return None
    a, b = ppl_at(data.ppl, e.run.run_id, T), ppl_at(data.ppl, e.run.run_id, k * T)
    if a is None or b is None:
        return None
    r = b.ppl / a.ppl
    return r, f"{e.label} {ppl_text(a)} at {fmt.length(T)} -> {ppl_text(b)} at {fmt.length(k * T)} ({r:.3f}x)"


# -- the four results ------------------------------------------------------------------------
def alibi_extrapolates(data: ReportData, es: list[Entry]) -> Known:
    source = "Press et al. 2022 (ALiBi)"
    claim = (f"ALiBi's perplexity stays near its training-length value to {PPL_AT}x the training length, while "
             "sinusoidal and RoPE rise sharply")
    rule = (f"ppl({PPL_AT}x) / ppl(1x) <= {NEAR} for alibi, >= {SHARP} for sinusoidal and for rope "
            "(the first seed of each selected run; brackets: 95% interval over the evaluation windows)")
    got, missing, ids = {}, [], []
    for m in ("alibi", "sinusoidal", "rope"):
        e = only(es, m)
        r = _ratio(data, e, PPL_AT) if e is not None else None
        if r is None:
            missing.append(m)
        else:
            got[m] = r
            ids.append(e.run.run_id)
    if missing:
        return Known("alibi", source, claim, rule, NOT_MEASURED,
                     f"no perplexity at 1x and {PPL_AT}x for {', '.join(missing)}", tuple(ids))
    misses = []
    if got["alibi"][0] > NEAR:
        misses.append(f"alibi rose {got['alibi'][0]:.3f}x (rule <= {NEAR}x)")
    misses += [f"{m} rose {got[m][0]:.3f}x (rule >= {SHARP}x)" for m in ("sinusoidal", "rope") if got[m][0] < SHARP]
    evidence = "; ".join(t for _, t in got.values()) + "." + (f" Missed: {'; '.join(misses)}." if misses else "")
    return Known("alibi", source, claim, rule, NOT_REPRODUCED if misses else REPRODUCED, evidence, tuple(ids))


SCALINGS = ("yarn", "ntk", "dynamic-ntk")  # the evaluation-time scalings Peng et al. compare


def scaling_helps_rope(data: ReportData, es: list[Entry]) -> Known:
    source = "Peng et al. 2023 (YaRN)"
    claim = "evaluation-time YaRN or NTK scaling lowers RoPE's perplexity past the training length"
    rule = ("for yarn, ntk or dynamic-ntk applied to the trained rope model: lower perplexity than the model as "
            "trained at every evaluated length past the training length up to the scaling factor, and at the "
            "longest of those the two 95% intervals (over the evaluation windows) do not overlap")
    e = only(es, "rope")
    if e is None or not e.run.train_len:
        return Known("yarn", source, claim, rule, NOT_MEASURED, "no finished rope run")
    rid, T = e.run.run_id, e.run.train_len
    names = sorted({v for v, p in data.ppl_variants if p.run_id == rid and v.rsplit(" x", 1)[0] in SCALINGS})
    if not names:
        return Known("yarn", source, claim, rule, NOT_MEASURED,
                     f"rope was not evaluated under {', '.join(SCALINGS)}", (rid,))
    parts, decided, passed = [], [], []
    for name in names:
        method, _, factor = name.rpartition(" x")
        top = float(factor) * T if method else float("inf")
        scaled = [p for v, p in data.ppl_variants if v == name and p.run_id == rid and p.ppl is not None
                  and T < p.length <= top]
        pairs = [(s, ppl_at(data.ppl, rid, s.length)) for s in sorted(scaled, key=lambda p: p.length)]
        pairs = [(s, p) for s, p in pairs if p is not None]
        if not pairs:
            parts.append(f"{name}: no length in ({fmt.length(T)}, {fmt.length(top)}] evaluated both ways")
            continue
        lower = sum(s.ppl < p.ppl for s, p in pairs)
        s, p = pairs[-1]
        text = (f"{name}: {ppl_text(s)} against {ppl_text(p)} as trained at {fmt.length(s.length)} "
                f"({s.ppl / p.ppl:.3f}x), lower at {lower} of {len(pairs)} lengths past {fmt.length(T)}")
        if None in (s.high, p.low, s.low, p.high):
            parts.append(text + "; no interval at the longest (one window, or rows from before intervals)")
            continue
        apart = s.high < p.low
        decided.append(name)
        passed += [name] if lower == len(pairs) and apart else []
        parts.append(text + ("" if apart else "; the intervals overlap"))
    verdict = REPRODUCED if passed else NOT_REPRODUCED if decided else NOT_MEASURED
    return Known("yarn", source, claim, rule, verdict, "; ".join(parts) + ".", (rid,))


def fixed_state_recall(data: ReportData) -> Known:
    source = "Arora et al. 2023 (Zoology)"
    claim = "fixed-state mixers' recall falls as the key-value pairs outgrow their state, while attention's does not"
    rule = ("MQAR accuracy at the fewest and at the most pairs trained: every fixed-state mixer (a recurrence or a "
            "sliding window) falls (the 95% Wilson intervals, over the rows scored, do not overlap) and no "
            "attention mixer falls; best run over the learning rates tried at each point; other mixers (e.g. a "
            "long convolution) are listed but not part of the rule")
    by = mqar_by_pairs(data)
    runs = {r.run_id: r for r in mqar_runs(data)}
    as_claimed: dict[str, list[bool]] = {"fixed": [], "attention": []}  # fixed ones fall, attention holds
    texts, ids = [], []
    for label, pts in by.items():
        r = runs[pts[0].run_id]
        kind = state_kind(r)
        if len(pts) < 2 or kind is None:
            continue
        a, b = pts[0], pts[-1]
        falls = a.low > b.high
        if kind in as_claimed:
            as_claimed[kind].append(falls == (kind == "fixed"))
        texts.append(f"{label} ({kind} state, {fmt.nbytes(state_at_8k(r))} at 8K) "
                     f"{fmt.acc(a.accuracy)} {fmt.interval(a.low, a.high)} at {a.pairs} pairs -> "
                     f"{fmt.acc(b.accuracy)} {fmt.interval(b.low, b.high)} at {b.pairs}"
                     + (" (falls)" if falls else " (holds)"))
        ids += [a.run_id, b.run_id]
    fixed, attention = as_claimed["fixed"], as_claimed["attention"]
    if not fixed or not attention:
        return Known("zoology", source, claim, rule, NOT_MEASURED,
                     "needs MQAR runs at two or more pair counts of a fixed-state mixer and of attention"
                     + (f"; have: {'; '.join(texts)}" if texts else ""), tuple(ids))
    summary = (f"{sum(fixed)} of {len(fixed)} fixed-state mixers fall, {sum(attention)} of {len(attention)} "
               "attention mixers hold")
    return Known("zoology", source, claim, rule, REPRODUCED if all(fixed) and all(attention) else NOT_REPRODUCED,
                 f"{summary}: " + "; ".join(texts) + ".", tuple(ids))


def hsa_holds_furthest(es: list[Entry]) -> Known:
    source = "Hu et al. 2025 (HSA-UltraLong)"
    claim = "HSA keeps HashHop accuracy furthest past its training length"
    rule = (f"HSA's effective context (the longest evaluated length with HashHop accuracy >= {THRESHOLD}), as a "
            "multiple of its training length, is larger than every other mixer's, and each of the others was "
            "evaluated past its own (so its reach is measured, not cut off by the grid)")
    scored = [e for e in es if e.run is not None and e.run.train_len and any(p.accuracy is not None for p in e.curve)]
    hsa = [e for e in scored if "hsa" in e.run.mixers]
    rest = [e for e in scored if "hsa" not in e.run.mixers]
    if not hsa or not rest:
        return Known("hsa", source, claim, rule, NOT_MEASURED,
                     "needs HashHop curves of an HSA model and of another mixer")

    def reach(e: Entry) -> float:
        return (e.ecl.value or 0) / e.run.train_len

    def longest(e: Entry) -> int:
        return max(p.length for p in e.curve if p.accuracy is not None)

    def say(e: Entry) -> str:
        if e.ecl.value is None:
            best = max((p for p in e.curve if p.accuracy is not None), key=lambda p: p.accuracy)
            return (f"{e.label} below {THRESHOLD} at every length (best {fmt.acc(best.accuracy)} "
                    f"{fmt.interval(best.low, best.high)} at {fmt.length(best.length)})")
        return f"{e.label} to {fmt.length(e.ecl.value)} ({reach(e):.3g}x), {e.ecl.sub}"

    h = max(hsa, key=reach)
    other = max(rest, key=reach)
    ids = (h.run.run_id, other.run.run_id)
    evidence = f"{say(h)}; the next: {say(other)}."
    cut = [e.label for e in rest if e.ecl.value is not None and longest(e) <= e.ecl.value]
    if reach(h) > reach(other) and cut:
        return Known("hsa", source, claim, rule, NOT_MEASURED, evidence + f" Not evaluated past their reach: "
                     f"{', '.join(cut)}.", ids)
    if reach(h) and reach(h) == reach(other):
        evidence += " Tied: the evaluated lengths do not tell them apart."
    return Known("hsa", source, claim, rule, REPRODUCED if reach(h) > reach(other) else NOT_REPRODUCED, evidence, ids)


def known_table(known: list[Known]) -> Table:
    rows = [[Val(k.source, k.source), Val(k.claim, k.claim, source=f"rule: {k.rule}"), Val(k.verdict, k.verdict),
             Val(k.evidence, k.evidence, run_id=k.run_ids[0] if k.run_ids else None)] for k in known]
    return Table("known-results", "Known results", ["source", "claim", "verdict", "evidence"], rows, label_col=None,
                 note="Each result's rule, fixed before the runs, is in its tooltip and in Methods; "
                 "data/known_results.csv lists the runs each verdict rests on.")
