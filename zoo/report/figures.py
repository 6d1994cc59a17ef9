"""The report's figures, drawn with matplotlib's object API (no pyplot, no global backend)
and returned as SVG text to inline in the HTML.

Every figure takes the `ReportData` and the report's `Palette`, so a mixer has the same
colour, marker and line style everywhere. Missing points are left out of the lines and
listed under the figure with their reasons.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from zoo.report import analysis as A
from zoo.report import fmt
from zoo.report.data import ReportData
from zoo.report.fmt import Table
from zoo.report.style import Palette

RC = {
    "font.family": "DejaVu Sans",
    "font.size": 8.5,
    "axes.titlesize": 9,
    "axes.labelsize": 8.5,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#d9d9d9",
    "grid.linewidth": 0.6,
    "svg.fonttype": "none",   # text stays text: searchable, selectable, small
    "figure.dpi": 100,
}
TRAIN_LINE = dict(color="#555555", linestyle=(0, (4, 3)), linewidth=1.0, zorder=1)
CHANCE_LINE = dict(color="#a23b3b", linestyle=(0, (6, 2, 1, 2)), linewidth=0.9, zorder=1)


@dataclass
class Figure:
    id: str
    title: str
    svg: str | None                      # None when there is nothing to draw
    caption: str
    side: Table | None = None            # the numbers shown beside the figure
    missing: list[str] = field(default_factory=list)  # "n/a" notes: what could not be drawn and why
    reason: str | None = None            # why the whole figure is absent


def compress(missing: list[tuple[str, int, str, str]], n_settings: int = 1) -> list[str]:
    """(who, length, setting, reason) -> one line per (who, reason): "rope at 64K, 1M (...): reason"."""
    groups: dict[tuple[str, str], tuple[list[int], list[str]]] = {}
    for who, length, setting, reason in missing:
        lens, sets = groups.setdefault((who, reason), ([], []))
        if length not in lens:
            lens.append(length)
        if setting and setting not in sets:
            sets.append(setting)
    out = []
    for (who, reason), (lens, sets) in groups.items():
        where = ", ".join(fmt.length(L) for L in sorted(lens))
        if sets and len(sets) < n_settings:
            where += f" ({'; '.join(sets)})"
        elif sets and n_settings > 1:
            where += " (every setting)"
        out.append(f"{who} at {where}: n/a ({reason})")
    return out


def to_svg(fig: MplFigure, fig_id: str) -> str:
    """Serialize to an inline <svg>: no XML prolog, ids unique per figure, scalable width."""
    buf = io.StringIO()
    with rc_context({"svg.hashsalt": fig_id, "svg.fonttype": "none"}):
        # no bbox_inches="tight": constrained layout already fits, and tight would draw twice
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    s = buf.getvalue()
    s = s[s.index("<svg"):]
    # matplotlib names clip paths and glyphs with short ids; prefix them so several inline
    # figures in one document never share an id
    s = re.sub(r'id="([^"]+)"', lambda m: f'id="{fig_id}-{m.group(1)}"', s)
    s = re.sub(r'url\(#([^)]+)\)', lambda m: f'url(#{fig_id}-{m.group(1)})', s)
    s = re.sub(r'xlink:href="#([^"]+)"', lambda m: f'xlink:href="#{fig_id}-{m.group(1)}"', s)
    s = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{fig_id}-{m.group(1)}"' if not m.group(1).startswith(fig_id)
               else m.group(0), s)
    # fixed pt size -> scale to the column, keeping the aspect ratio through the viewBox
    head_end = s.index(">")
    head = s[:head_end]
    w = re.search(r'width="([\d.]+)pt"', head)
    head = re.sub(r'\s(width|height)="[\d.]+pt"', "", head)
    style = f' style="max-width:{float(w.group(1)) * 4 / 3:.0f}px"' if w else ""
    s = head + f' class="fig" role="img" aria-label="{fig_id}"{style}' + s[head_end:]
    return s


def _log2_axis(ax, lengths: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ticks: list[int] = []
    for L in sorted(set(lengths)):  # lengths within 25% of the previous tick would print on top of it
        if not ticks or L / ticks[-1] > 1.25:
            ticks.append(L)
    if len(ticks) > 9:  # thin out so labels never collide
        step = math.ceil(len(ticks) / 9)
        ticks = ticks[::step] + ([ticks[-1]] if ticks[-1] not in ticks[::step] else [])
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt.length(v)))


def _train_lines(ax, lengths: set[int], label: bool = True) -> None:
    for L in sorted(lengths):
        ax.axvline(L, **TRAIN_LINE)
        if label:
            ax.annotate("train", (L, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -9),
                        textcoords="offset points", fontsize=6.5, color="#555555")


def _tex(text: str) -> str:
    """A label as matplotlib must be given it to print it as written: `$` would start mathtext."""
    return str(text).replace("$", r"\$")


def _chance_line(ax, chance: float | None) -> None:
    """The task's chance level of the plotted metric, labelled at the right end."""
    if chance is None:
        return
    ax.axhline(chance, **CHANCE_LINE)
    ax.annotate(f"chance {fmt.sig(chance, 2)}", (1.0, chance), xycoords=("axes fraction", "data"), xytext=(-2, 2),
                textcoords="offset points", fontsize=6.5, color=CHANCE_LINE["color"], ha="right", va="bottom")


def _data_ticks(axis, values: list[float]) -> None:
    """Ticks at the values themselves on a log axis spanning less than a decade or few points,
    where the decade ticks would leave the axis without a single label."""
    vals = sorted({v for v in values if v and v > 0})
    if vals and (len(vals) <= 6 or vals[-1] / vals[0] < 10):
        if len(vals) > 6:
            vals = list(np.geomspace(vals[0], vals[-1], 5))
        axis.set_major_locator(FixedLocator(vals))
        axis.set_minor_locator(NullLocator())


def _legend(fig: MplFigure, handles, labels, ncol: int | None = None) -> None:
    """Below the axes ("outside": constrained layout makes room), in as many columns as fit the
    figure's width as laid out (long names of evaluation-time variants would run off both edges),
    the figure taller by the rows beyond the first so the axes keep their height."""
    if not handles:
        return
    texts = [_tex(x) for x in labels]
    renderer = FigureCanvasAgg(fig).get_renderer()  # text widths as drawn
    for n in range(min(len(texts), ncol or 6), 0, -1):
        legend = fig.legend(handles, texts, loc="outside lower center", ncol=n, frameon=False, handlelength=3.2)
        if n == 1 or legend.get_window_extent(renderer).width <= 0.97 * fig.bbox.width:
            break
        legend.remove()
    rows = math.ceil(len(texts) / n)
    fig.set_figheight(fig.get_figheight() + (rows - 1) * 1.5 * RC["legend.fontsize"] / 72)


def band_alpha(n: int) -> float:
    """Wilson bands stay readable when many overlap: fainter the more curves share an axis."""
    return max(0.05, min(0.15, 0.6 / max(n, 1)))


# -- HashHop accuracy vs context length ------------------------------------------------------
def hashhop_vs_length(data: ReportData, pal: Palette, es: list[A.Entry]) -> Figure:
    settings = A.hashhop_settings(data)
    title = "HashHop accuracy vs context length"
    if not settings:
        return Figure("fig-hashhop", title, None, "", reason="no HashHop results in the store for these runs")
    ncols = 2 if len(settings) == 4 else min(3, len(settings))
    nrows = math.ceil(len(settings) / ncols)
    missing: list[tuple[str, int, str, str]] = []
    with rc_context(RC):
        size = (5.6, 3.9) if len(settings) == 1 else (3.4 * ncols + 0.4, 2.7 * nrows + 0.55)
        fig = MplFigure(figsize=size, layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
        handles = {}
        for i, (hops, cot) in enumerate(settings):
            ax = axes[i // ncols][i % ncols]
            train = set()
            all_lengths: list[int] = []  # this panel's lengths: hop counts and modes differ in their completions
            for e in es:
                if e.run is None:
                    continue
                curve = A.seed_curve(data, e.runs, (hops, cot))
                ok = [p for p in curve if p.accuracy is not None]
                for p in curve:
                    if p.accuracy is None:
                        missing.append((e.label, p.length, f"{hops} hop{'s' if hops != 1 else ''}"
                                        f"{', CoT' if cot else ''}", p.reason))
                if not ok:
                    continue
                look = pal[e.label]
                x = [p.length for p in ok]
                all_lengths += [p.length for p in curve]
                ax.fill_between(x, [p.low for p in ok], [p.high for p in ok], color=look.color,
                                alpha=band_alpha(len(es)), linewidth=0, zorder=2)
                (h,) = ax.plot(x, [p.accuracy for p in ok], **look.line_kw(), zorder=3, label=_tex(e.label))
                handles.setdefault(e.label, h)
                if e.run.train_len:
                    train.add(e.run.train_len)
            for e in es:  # evaluation-time variants: their own series, same colour, hollow markers
                if e.run is None:
                    continue
                for name in dict.fromkeys(v for v, _ in data.hashhop_variants):
                    cells = [c for v, c in data.hashhop_variants if v == name and c.run_id == e.run.run_id
                             and c.hops == hops and c.cot == cot and c.accuracy is not None]
                    if cells:
                        cells.sort(key=lambda c: c.length)
                        kw = pal[e.label].line_kw()
                        kw.update(markerfacecolor="white", linewidth=0.9, alpha=0.85)
                        (h,) = ax.plot([c.length for c in cells], [c.accuracy for c in cells], **kw, zorder=3)
                        handles.setdefault(f"{e.label} ({name})", h)
                        all_lengths += [c.length for c in cells]
            _log2_axis(ax, all_lengths or [1])
            _train_lines(ax, train)
            _chance_line(ax, A.hashhop_chance(data, hops, cot))
            ax.set_ylim(-0.03, 1.05)
            ax.axhline(A.THRESHOLD, color="#999999", linewidth=0.7, linestyle=":", zorder=1)
            ax.set_title(f"{hops} hop{'s' if hops != 1 else ''}, {'with' if cot else 'no'} chain of thought")
            if i % ncols == 0:
                ax.set_ylabel("exact match")
            if i // ncols == nrows - 1:
                ax.set_xlabel("context length (tokens)")
        for j in range(len(settings), nrows * ncols):
            axes[j // ncols][j % ncols].set_visible(False)
        _legend(fig, list(handles.values()), list(handles.keys()))
        svg = to_svg(fig, "fig-hashhop")
    caption = ("Teacher-forced exact match per query; bands are 95% intervals resampling samples (with several seeds: "
               "their mean, the band from the smallest to the largest seed); the dashed vertical line marks "
               f"the training length, the dotted horizontal line the {A.THRESHOLD} threshold of the effective "
               "context length and the dash-dotted one the task's chance level (hash letters guessed, format "
               "known).")
    if data.hashhop_variants:
        caption += (" Hollow markers: the same model under an evaluation-time setting (a RoPE scaling or a mixer "
                    "setting), named in the legend.")
    return Figure("fig-hashhop", title, svg, caption, A.hashhop_side(data, es), compress(missing, len(settings)))


def headline(data: ReportData, pal: Palette, es: list[A.Entry]) -> Figure:
    """The summary's figure: HashHop accuracy vs length in the headline setting (the leaderboard's)."""
    title = "HashHop accuracy vs context length"
    curves = [(e, [p for p in e.curve if p.accuracy is not None]) for e in es if e.run is not None]
    curves = [(e, ok) for e, ok in curves if ok]
    if not curves:  # a study without HashHop (e.g. scaling on lm): its scaling figure leads
        sc = scaling(data, pal, fid="fig-headline")
        if sc.svg is not None:
            return Figure("fig-headline", sc.title, sc.svg, sc.caption + " Exponents with intervals in Figure "
                          "\"Scaling\".")
        return Figure("fig-headline", title, None, "", reason="no HashHop results in the store for these runs")
    with rc_context(RC):
        fig = MplFigure(figsize=(5.6, 3.5), layout="constrained")
        ax = fig.subplots()
        lengths, train = [], set()
        for e, ok in curves:
            look = pal[e.label]
            x = [p.length for p in ok]
            lengths += [p.length for p in e.curve]
            ax.fill_between(x, [p.low for p in ok], [p.high for p in ok], color=look.color,
                            alpha=band_alpha(len(curves)), linewidth=0)
            ax.plot(x, [p.accuracy for p in ok], **look.line_kw(), label=_tex(e.label))
            if e.run.train_len:
                train.add(e.run.train_len)
        _log2_axis(ax, lengths)
        _train_lines(ax, train)
        _chance_line(ax, A.hashhop_chance(data))
        ax.axhline(A.THRESHOLD, color="#999999", linewidth=0.7, linestyle=":", zorder=1)
        ax.set_ylim(-0.03, 1.05)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("exact match")
        ax.legend(frameon=False, handlelength=3.2, loc="best")
        svg = to_svg(fig, "fig-headline")
    caption = (f"{A.setting_text(A.headline_setting(data))}; bands: 95% intervals by sample, or the min-max over "
               "seeds; dashed: training length; "
               f"dotted: the {A.THRESHOLD} threshold; dash-dotted: chance. Per hop count and mode in Figure 3.1.")
    return Figure("fig-headline", title, svg, caption)


# -- length x depth heatmaps --------------------------------------------------------------------
def depth_heatmaps(data: ReportData, pal: Palette, es: list[A.Entry]) -> Figure:
    title = "Accuracy by context length and depth"
    grids = []
    setting = A.headline_setting(data)
    for e in es:
        if e.run is None:
            continue
        seeds = {r.run_id for r in e.runs}
        cells = [c for c in data.hashhop if c.run_id in seeds and (c.hops, c.cot) == setting]
        points = sorted({c.point for c in cells}, key=lambda pt: max(c.length for c in cells if c.point == pt))
        lengths = [max(c.length for c in cells if c.point == pt) for pt in points]  # as in the pooled curves
        nbins = max((len(c.depth) for c in cells), default=0)
        if not lengths or nbins == 0:
            continue
        grid = np.full((nbins, len(lengths)), np.nan)
        na_cols = {}
        for j, pt in enumerate(points):
            at = [c for c in cells if c.point == pt]
            ok = [c for c in at if c.status == "ok" and c.depth]
            if not ok:
                na_cols[j] = next((c.reason for c in at if c.reason), "not evaluated")
                continue
            for b in range(nbins):
                n = sum(c.depth[b][1] for c in ok if b < len(c.depth) and c.depth[b][0] is not None)
                s = sum(c.depth[b][0] * c.depth[b][1] for c in ok if b < len(c.depth) and c.depth[b][0] is not None)
                if n:
                    grid[b, j] = s / n
        grids.append((e.label, lengths, grid, na_cols))
    if not grids:
        return Figure("fig-depth", title, None, "", reason="no HashHop results with depth bins")
    ncols = min(3, len(grids))
    nrows = math.ceil(len(grids) / ncols)
    with rc_context({**RC, "axes.grid": False}):
        fig = MplFigure(figsize=(3.3 * ncols + 0.8, 2.55 * nrows + 0.2), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        im = None
        for i, (label, lengths, grid, na_cols) in enumerate(grids):
            ax = axes[i // ncols][i % ncols]
            nb = grid.shape[0]
            masked = np.ma.masked_invalid(grid)
            # pcolormesh, not imshow: vector cells stay sharp in the PDF and need no embedded bitmap
            im = ax.pcolormesh(np.arange(len(lengths) + 1) - 0.5, np.linspace(0, 100, nb + 1), masked,
                               cmap="viridis", vmin=0, vmax=1, edgecolors="white", linewidth=0.3)
            ax.set_ylim(100, 0)
            ax.set_facecolor("#eeeeee")
            for j in na_cols:
                ax.add_patch(_hatch(j))
                ax.text(j, 50, "n/a", ha="center", va="center", fontsize=7, color="#333333", rotation=90)
            if len(lengths) <= 10 and nb <= 10:
                for b in range(nb):
                    for j in range(len(lengths)):
                        v = grid[b, j]
                        if not np.isnan(v):
                            ax.text(j, (b + 0.5) * 100 / nb, f"{v:.2f}", ha="center", va="center", fontsize=5.5,
                                    color="white" if v < 0.6 else "black")
            ax.set_xticks(range(len(lengths)), [fmt.length(L) for L in lengths])
            ax.set_yticks([0, 50, 100], ["0%", "50%", "100%"])
            look = pal[label]
            ax.set_title(_tex(label), color=look.color, fontweight="bold")
            if i % ncols == 0:
                ax.set_ylabel("depth in the prompt")
            if i // ncols == nrows - 1:
                ax.set_xlabel("context length (tokens)")
        for j in range(len(grids), nrows * ncols):
            axes[j // ncols][j % ncols].set_visible(False)
        fig.colorbar(im, ax=axes, shrink=0.8, label="exact match", aspect=25)
        svg = to_svg(fig, "fig-depth")
    caption = ("Exact match by the relative position in the prompt of the queried chain's lines (10 depth bins, 0% = "
               f"start), {A.setting_text(setting)} as in the leaderboard; over several seeds, their mean. Viridis "
               "keeps its order in greyscale; "
               "hatched columns were not run.")
    missing = compress([(label, lengths[j], "", why) for label, lengths, _, nc in grids for j, why in nc.items()])
    return Figure("fig-depth", title, svg, caption, None, missing)


def _hatch(j: int):
    from matplotlib.patches import Rectangle

    return Rectangle((j - 0.5, 0), 1, 100, fill=False, hatch="///", edgecolor="#999999", linewidth=0)


# -- perplexity vs evaluation length ------------------------------------------------------------
def ppl_vs_length(data: ReportData, pal: Palette, es: list[A.Entry]) -> Figure:
    title = "Perplexity vs evaluation length"
    series = []
    missing = []
    for e in es:
        if e.run is None:
            continue
        seeds = {r.run_id for r in e.runs}
        by_len: dict[int, list] = {}
        for p in data.ppl:
            if p.run_id in seeds:
                by_len.setdefault(p.length, []).append(p)
        ok = []  # (length, mean, min, max) over the seeds
        for length, ps in sorted(by_len.items()):
            vals = [p.ppl for p in ps if p.ppl is not None]
            if vals:
                ok.append((length, sum(vals) / len(vals), min(vals), max(vals)))
            else:
                missing.append((e.label, length, "", ps[0].reason or ps[0].status))
        if ok:
            series.append((e, ok))
    if not series:
        return Figure("fig-ppl", title, None, "", reason="no perplexity results in the store for these runs")
    with rc_context(RC):
        fig = MplFigure(figsize=(5.6, 3.4), layout="constrained")
        ax = fig.subplots()
        lengths, train, vals_extra = [], set(), []
        for e, ok in series:
            x = [p[0] for p in ok]
            if len(e.runs) > 1:
                ax.fill_between(x, [p[2] for p in ok], [p[3] for p in ok], color=pal[e.label].color,
                                alpha=band_alpha(len(series)), linewidth=0)
            ax.plot(x, [p[1] for p in ok], **pal[e.label].line_kw(), label=_tex(e.label))
            lengths += x
            if e.run.train_len:
                train.add(e.run.train_len)
            for name in dict.fromkeys(v for v, _ in data.ppl_variants):
                pts = sorted((p for v, p in data.ppl_variants if v == name and p.run_id == e.run.run_id
                              and p.ppl is not None), key=lambda p: p.length)
                if pts:  # evaluation-time RoPE scalings of the same trained model: same colour, hollow, thin
                    kw = pal[e.label].line_kw()
                    kw.update(markerfacecolor="white", linewidth=0.9, alpha=0.85)
                    ax.plot([p.length for p in pts], [p.ppl for p in pts], **kw, label=_tex(f"{e.label} ({name})"))
                    vals_extra.extend(p.ppl for p in pts)
        _log2_axis(ax, lengths)
        vals = [p[1] for _, ok in series for p in ok] + vals_extra
        if max(vals) / max(min(vals), 1e-9) > 8:
            ax.set_yscale("log")
        _train_lines(ax, train)
        ax.set_xlabel("evaluation length (tokens)")
        ax.set_ylabel("perplexity (bytes)")
        ax.legend(frameon=False, handlelength=3.2)
        svg = to_svg(fig, "fig-ppl")
    caption = ("Byte-level perplexity of held-out text with sliding windows (see Methods); dashed line: training "
               "length; over several seeds, their mean with a band from the smallest to the largest.")
    return Figure("fig-ppl", title, svg, caption, A.ppl_side(data, es), compress(missing))


# -- training loss ------------------------------------------------------------------------------
def ema(y: list[float], alpha: float) -> list[float]:
    out, m = [], None
    for v in y:
        m = v if m is None else alpha * m + (1 - alpha) * v
        out.append(m)
    return out


def loss_curves(data: ReportData, pal: Palette, es: list[A.Entry]) -> Figure:
    title = "Training loss"
    runs = [r for r in data.runs if r.curve]
    if not runs:
        return Figure("fig-loss", title, None, "", reason="no training metrics in the store for these runs")
    heads = {r.run_id for e in es for r in e.runs}  # every seed of each mixer's selected cell
    use_tokens = all(any(t for _, t, _ in r.curve) for r in runs)
    longest = max(len(r.curve) for r in runs)
    alpha = 0.0 if longest < 50 else min(0.95, 1 - 10 / longest)
    with rc_context(RC):
        fig = MplFigure(figsize=(5.6, 3.4), layout="constrained")
        ax = fig.subplots()
        runs.sort(key=lambda r: r.run_id in heads)  # headline runs drawn last, on top
        labelled: set[str] = set()
        for r in runs:
            xs = [t if use_tokens else s for s, t, _ in r.curve]
            ys = [v for _, _, v in r.curve]
            kw = pal[r.label].line_kw()
            kw.update(marker=None)
            if r.run_id not in heads:
                kw.update(alpha=0.45, linewidth=1.0)
            first = r.run_id in heads and r.label not in labelled
            labelled.add(r.label if first else "")
            ax.plot(xs, ema(ys, alpha), **kw, label=_tex(r.label) if first else None)
            ax.plot(xs[-1:], ema(ys, alpha)[-1:], marker=pal[r.label].marker, color=pal[r.label].color,
                    markersize=5, linestyle="none")
        chances = {A.run_chance(r) for r in runs} - {None}
        if len(chances) == 1:  # one task setting: its chance loss
            _chance_line(ax, chances.pop())
        if use_tokens:
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt.count(v)))
        ax.set_xlabel("training tokens" if use_tokens else "step")
        ax.set_ylabel("training loss (nats/token)")
        ax.legend(frameon=False, handlelength=3.2)
        svg = to_svg(fig, "fig-loss")
    smooth = f" smoothed by an exponential moving average (weight {alpha:.2f})" if alpha else ""
    caption = (f"Training loss per step{smooth}; the marker shows the final value. Thick lines: each seed of the "
               "leaderboard's run of each mixer; thin lines: its other runs (other sizes or learning rates). "
               "Dash-dotted: the task's chance loss (for HashHop: the answer format known, the hash letters guessed).")
    return Figure("fig-loss", title, svg, caption, A.loss_side(data, es))


def answer_curves(data: ReportData, pal: Palette, es: list[A.Entry]) -> Figure:
    """Held-out answer accuracy during training, every answer letter beside each answer's first:
    only the first needs the key matched, so a model that copies without matching keys climbs
    the left panel and stays near a guess on the right."""
    title = "Held-out answer accuracy during training"
    runs = [r for r in data.runs if r.answer_curve]
    heads = {r.run_id for e in es for r in e.runs}
    use_tokens = all(any(t for _, t, _, _ in r.answer_curve) for r in runs)
    with rc_context(RC):
        fig = MplFigure(figsize=(7.0, 3.0), layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        runs.sort(key=lambda r: r.run_id in heads)
        labelled: set[str] = set()
        for r in runs:
            xs = [t if use_tokens else s for s, t, _, _ in r.answer_curve]
            kw = pal[r.label].line_kw()
            if r.run_id not in heads:
                kw.update(alpha=0.45, linewidth=1.0, marker=None)
            first = r.run_id in heads and r.label not in labelled
            labelled.add(r.label if first else "")
            for ax, i in zip(axes, (2, 3), strict=True):
                ax.plot(xs, [c[i] for c in r.answer_curve], **kw, label=_tex(r.label) if first and i == 2 else None)
        for ax, metric in zip(axes, ("char_accuracy", "first_accuracy"), strict=True):
            chance = {A.run_chance(r, metric) for r in runs} - {None}
            _chance_line(ax, chance.pop() if len(chance) == 1 else None)  # one task setting: its guess
        for ax, name in zip(axes, ("every answer letter", "first letter of each answer"), strict=True):
            ax.set_title(name, fontsize=8)
            ax.set_xlabel("training tokens" if use_tokens else "step")
            if use_tokens:
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt.count(v)))
        axes[0].set_ylabel("held-out accuracy (teacher-forced)")
        axes[0].set_ylim(0, 1.02)
        axes[0].legend(frameon=False, handlelength=3.2, fontsize=7)
        svg = to_svg(fig, "fig-answer-acc")
    caption = ("The trainer's held-out accuracy on answer letters at each evaluation, at that step's training "
               "length: left every letter of each answer, right only the first. Only the first needs the key "
               "matched; the rest can be copied from the value it starts, so a model that copies without "
               "matching keys rises on the left and stays near a guess among the row's values on the right. "
               "Dash-dotted: a letter guessed. The table gives the first letter's 95% Wilson interval over the "
               "answers scored (one run; seeds show their range). Thick lines: each seed of the leaderboard's run "
               "of each mixer; thin: its other runs. Every point is in data/answer_curves.csv.")
    return Figure("fig-answer-acc", title, svg, caption, A.answer_side(data, es))


# -- learning-rate sweeps -------------------------------------------------------------------------
def lr_sweep(data: ReportData, pal: Palette, es: list[A.Entry]) -> Figure:
    """The selection metric against the learning rate per mixer, over seeds, the selected rate
    ringed: what the leaderboard's choice rests on."""
    title = "Learning-rate sweep"
    swept = [e for e in es if e.sweep is not None and len(e.sweep.points) > 1]
    metric = A.select_metric(data)
    with rc_context(RC):
        fig = MplFigure(figsize=(5.6, 3.4), layout="constrained")
        ax = fig.subplots()
        for e in swept:
            pts = [p for p in e.sweep.points if p.mean is not None and p.lr is not None]
            if not pts:
                continue
            look = pal[e.label]
            x = [p.lr for p in pts]
            y = [p.mean for p in pts]
            err = [[p.mean - p.low for p in pts], [p.high - p.mean for p in pts]]
            ax.errorbar(x, y, yerr=err, **look.line_kw(), capsize=2.5, label=_tex(e.label))
            sel = e.sweep.selected
            if sel.mean is not None:
                ax.plot([sel.lr], [sel.mean], marker="o", markersize=11, markerfacecolor="none",
                        markeredgecolor=look.color, linestyle="none")
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel(metric.replace("_", " ") + " at the training length")
        ax.legend(frameon=False, handlelength=3.2)
        svg = to_svg(fig, "fig-lr")
    caption = (f"{metric} of each mixer's largest model per learning rate: the mean over seeds, bars from the "
               "smallest to the largest seed; the ringed rate is the one the leaderboard and the other figures use "
               f"({'lowest' if metric == 'eval_loss' else 'highest'} mean).")
    return Figure("fig-lr", title, svg, caption, A.sweep_side(data, es))


# -- throughput and memory ------------------------------------------------------------------------
def _guides(ax, xs: list[int], y0: float, slopes: dict[str, float]) -> None:
    """Dashed grey lines through (xs[0], y0) with the given log-log slopes."""
    x = np.array([min(xs), max(xs)], dtype=float)
    for name, k in slopes.items():
        y = y0 * (x / x[0]) ** k
        ax.plot(x, y, color="#888888", linewidth=0.8, linestyle=(0, (2, 2)), zorder=1)
        ax.annotate(name, (x[-1], y[-1]), xytext=(2, 0), textcoords="offset points", fontsize=6.5, color="#666666",
                    va="center")


def _log_y(ax) -> None:
    """Log y axis labelled 20K, 50K, 100K... rather than 2 x 10^4."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt.count(v)))
    ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: fmt.count(v)))


def speed_memory(data: ReportData, pal: Palette, mode: str) -> Figure:
    fid = f"fig-speed-{mode}"
    title = f"Throughput and peak memory vs sequence length ({mode})"
    names = sorted({b.name for b in data.bench if b.mode == mode}, key=lambda n: (A._bench_order(data, n), n))
    if not names:
        return Figure(fid, title, None, "", reason="no bench results")
    missing = []
    with rc_context(RC):
        fig = MplFigure(figsize=(8.4, 3.3), layout="constrained")
        ax_t, ax_m = fig.subplots(1, 2)
        xs_all, handles, t0, m0 = [], {}, [], []
        for name in names:
            pts = [b for b in data.bench if b.name == name and b.mode == mode]
            peer = any(b.peer for b in pts)
            look = pal.peer(name) if peer else pal[name]
            pts.sort(key=lambda b: b.seq_len)
            for b in pts:
                if b.tokens_per_s is None:
                    missing.append((name + (" (peer)" if peer else ""), b.seq_len, "", b.reason or b.status))
            ok = [b for b in pts if b.tokens_per_s is not None]
            if not ok:
                continue
            x = [b.seq_len for b in ok]
            xs_all += x
            label = f"{name} (peer)" if peer else name
            (h,) = ax_t.plot(x, [b.tokens_per_s for b in ok], **look.line_kw(), label=label)
            handles[label] = h
            t0.append(ok[0].tokens_per_s)
            mem = [b for b in ok if b.peak_mem is not None and b.peak_mem > 0]  # log axis: 0 is "nothing extra"
            if mem:
                ax_m.plot([b.seq_len for b in mem], [b.peak_mem / 2**20 for b in mem], **look.line_kw())
                m0.append(mem[0].peak_mem / 2**20)
            oom = [b for b in pts if b.status == "oom"]
            if oom:
                ax_t.plot([oom[0].seq_len], [ok[-1].tokens_per_s], marker="x", color=look.color, markersize=7,
                          linestyle="none")
        if xs_all:
            _log2_axis(ax_t, xs_all)
            _log2_axis(ax_m, xs_all)
            _log_y(ax_t)
            if t0:
                _guides(ax_t, xs_all, float(np.exp(np.mean(np.log(t0)))), {"O(L)": 0.0, "O(L²)": -1.0})
            if m0:
                _log_y(ax_m)
                _guides(ax_m, xs_all, float(np.exp(np.mean(np.log(m0)))), {"O(L)": 1.0, "O(L²)": 2.0})
            else:  # CPU runs have no allocator peak: say so instead of drawing empty axes
                ax_m.text(0.5, 0.5, "n/a (no peak memory measured:\nCPU has no allocator counter)", ha="center",
                          va="center", transform=ax_m.transAxes, fontsize=7.5, color="#7a4b00")
                ax_m.set_yticks([])
        ax_t.set_xlabel("sequence length (tokens)")
        ax_m.set_xlabel("sequence length (tokens)")
        ax_t.set_ylabel("tokens / s")
        ax_m.set_ylabel("peak memory (MiB)")
        ax_t.set_title("throughput")
        ax_m.set_title("peak memory")
        _legend(fig, list(handles.values()), list(handles.keys()), ncol=min(len(handles), 4))
        svg = to_svg(fig, fid)
    devices = sorted({b.device for b in data.bench if b.mode == mode and b.device})
    caption = (f"Median over timed repetitions on {', '.join(devices) or 'the recorded device'}; log-log axes. Grey "
               "guides: how tokens/s and memory grow for O(L) and O(L²) cost. Peer kernels (hollow markers, dotted) "
               "ran in the same process at the same shapes; x marks the first length that ran out of memory.")
    return Figure(fid, title, svg, caption, A.bench_side(data, mode), compress(missing))


# -- scaling ------------------------------------------------------------------------------------
def scaling(data: ReportData, pal: Palette, fid: str = "fig-scaling") -> Figure:
    title = "Scaling: loss vs parameters and training compute"
    fits = A.scaling_fits(data)
    if not any(f.points for f in fits):
        return Figure(fid, title, None, "", reason="no finished runs with parameters and final loss")
    if all(f.sizes < 2 for f in fits):  # one point per mixer draws no trend
        return Figure(fid, title, None, "", reason="one model size per mixer; scaling needs two or more")
    rows = ["loss"] + (["accuracy"] if any(f.points for f in fits if f.y == "accuracy") else [])
    loss_name = "held-out loss" if A.scaling_loss(data) == "eval_loss" else "final training loss"
    with rc_context(RC):
        fig = MplFigure(figsize=(7.6, 2.9 * len(rows) + 0.5), layout="constrained")
        axes = fig.subplots(len(rows), 2, squeeze=False)
        handles = {}
        for r, y in enumerate(rows):
            for c, x in enumerate(("params", "flops")):
                ax = axes[r][c]
                for f in fits:
                    if f.y != y or f.x != x or not f.points:
                        continue
                    look = pal[f.label]
                    xs = [p[0] for p in f.points]
                    ys = [p[1] for p in f.points]
                    kw = look.line_kw()
                    kw.update(linestyle="none")
                    (h,) = ax.plot(xs, ys, **kw)
                    handles.setdefault(f.label, h)
                    if f.fit is not None:
                        grid = np.geomspace(min(xs), max(xs), 50)
                        fy = f.fit(grid) if y == "loss" else 1 - f.fit(grid)
                        sym = "N" if x == "params" else "C"
                        ax.plot(grid, fy, color=look.color, linestyle=look.linestyle, linewidth=1.2,
                                label=f"{_tex(f.label)}: {sym}^{f.fit.exponent:.3f}")
                ax.set_xscale("log")
                if y == "loss":
                    ax.set_yscale("log")
                    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt.sig(v, 3)))
                    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: fmt.sig(v, 3)))
                else:
                    ax.set_ylim(-0.03, 1.05)
                ax.xaxis.set_minor_formatter(NullFormatter())
                _data_ticks(ax.xaxis, [p[0] for f in fits if f.x == x for p in f.points])
                if ax.get_legend_handles_labels()[0]:  # the fitted exponents, where there are fits
                    ax.legend(frameon=False, fontsize=6.5, handlelength=2.4, loc="best",
                              title="fit: " + ("loss" if y == "loss" else "error 1 - acc") + " ∝",
                              title_fontsize=6.5)
                ax.set_xlabel("non-embedding parameters N" if x == "params" else "training FLOPs C")
                ax.set_ylabel(loss_name if y == "loss" else "HashHop acc. at train length")
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt.count(v)))
        _legend(fig, list(handles.values()), list(handles.keys()))
        svg = to_svg(fig, fid)
    caption = (f"One point per model size at its selected learning rate ({loss_name}, nats per token). Lines: power "
               "laws fitted by least squares in log-log space (loss, and the error rate 1 - accuracy), drawn only "
               "for mixers with at least 3 model sizes; the table gives each exponent's 95% interval.")
    if not any(f.fit for f in fits):  # one or two sizes per mixer: say so once instead of a table of n/a
        sizes = max(f.sizes for f in fits)
        return Figure(fid, title, svg, caption, None,
                      [f"power-law fits: n/a (at most {sizes} model size{'s' if sizes != 1 else ''} per mixer; "
                       "a fit needs 3)"])
    return Figure(fid, title, svg, caption, A.scaling_side(fits))


def recall(data: ReportData, pal: Palette) -> Figure:
    """MQAR recall against size, one panel per companion experiment."""
    title = "Recall vs parameters (MQAR, companion experiments)"
    points = A.companion_recall(data)
    names = [n for n, pts in points.items() if pts]
    if not names:
        missing = ", ".join(points) or "none"
        return Figure("fig-recall", title, None, "",
                      reason=f"no finished runs of the companion experiments ({missing}) in this store")
    with rc_context(RC):
        fig = MplFigure(figsize=(3.8 * len(names), 3.3), layout="constrained")
        axes = fig.subplots(1, len(names), squeeze=False)[0]
        handles = {}
        for ax, name in zip(axes, names):
            pts = points[name]
            for label in dict.fromkeys(p.label for p in pts):
                mine = [p for p in pts if p.label == label]
                look = pal[label]
                xs = [p.x for p in mine]
                ys = [p.accuracy for p in mine]
                err = [[p.accuracy - p.low for p in mine], [p.high - p.accuracy for p in mine]]
                h = ax.errorbar(xs, ys, yerr=err, color=look.color, linestyle=look.linestyle, marker=look.marker,
                                markersize=4, linewidth=1.2, capsize=2)
                handles.setdefault(label, h.lines[0])
            _chance_line(ax, max((p.chance for p in pts if p.chance is not None), default=None))
            ax.set_xscale("log")
            ax.set_ylim(-0.03, 1.05)
            ax.xaxis.set_minor_formatter(NullFormatter())
            _data_ticks(ax.xaxis, [p.x for p in pts])
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt.count(v)))
            ax.set_xlabel("non-embedding parameters N")
            ax.set_ylabel("MQAR accuracy (held out)")
            ax.set_title(_tex(f"{name}: {A.recall_setting(data.companions[name])}"), fontsize=8)
        _legend(fig, list(handles.values()), list(handles.keys()))
        svg = to_svg(fig, "fig-recall")
    caption = ("Held-out exact recall of each queried value, one run per mixer and size at the companion's learning "
               "rate; bars: Wilson 95% intervals over the rows scored (queries within a row are not independent, "
               "so rows are the trials); dashed: chance, a guess among the value tokens.")
    empty = [n for n, pts in points.items() if not pts]
    notes = [f"{n}: no finished runs in this store" for n in empty]
    return Figure("fig-recall", title, svg, caption, A.recall_side(data), notes)


def mqar_pairs(data: ReportData, pal: Palette) -> Figure:
    """MQAR accuracy as the key-value pairs grow (Zoology's recall-against-state question): one
    line per mixer, its state size in the side table."""
    title = "MQAR accuracy vs key-value pairs"
    by = {label: pts for label, pts in A.mqar_by_pairs(data).items() if len(pts) >= 2}
    if not by:
        return Figure("fig-mqar-pairs", title, None, "", reason="no mixer trained on MQAR at two or more pair counts")
    with rc_context(RC):
        fig = MplFigure(figsize=(5.2, 3.3), layout="constrained")
        ax = fig.subplots()
        handles = {}
        for label, pts in by.items():
            look = pal[label]
            err = [[p.accuracy - p.low for p in pts], [p.high - p.accuracy for p in pts]]
            h = ax.errorbar([p.pairs for p in pts], [p.accuracy for p in pts], yerr=err, color=look.color,
                            linestyle=look.linestyle, marker=look.marker, markersize=4, linewidth=1.2, capsize=2)
            handles[label] = h.lines[0]
        ax.set_xscale("log", base=2)
        ax.xaxis.set_minor_formatter(NullFormatter())
        _data_ticks(ax.xaxis, [p.pairs for pts in by.values() for p in pts])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_ylim(-0.03, 1.05)
        ax.set_xlabel("key-value pairs per sequence")
        ax.set_ylabel("MQAR accuracy (held out)")
        _legend(fig, list(handles.values()), [_tex(k) for k in handles])
        svg = to_svg(fig, "fig-mqar-pairs")
    caption = ("Held-out exact recall of each queried value, the best run over the learning rates tried at each pair "
               "count; bars: Wilson 95% intervals over the rows scored. A fixed-state mixer holds the same number of "
               "bytes whatever the context (side table), so past some pair count it cannot keep them all.")
    return Figure("fig-mqar-pairs", title, svg, caption, A.mqar_pairs_side(data))


# -- retrieval recall vs context length -----------------------------------------------------------
RECALL_KIND = "retrieval-recall"
LAYER_STYLES = ["-", (0, (1, 1.2)), (0, (4, 1, 1, 1)), (0, (1, 2.5))]  # solid, dotted, dash-dot: dashed is chance
LAYER_MARKERS = ["o", "s", "^", "D", "v", "P"]


def retrieval_recall(data: ReportData, pal: Palette) -> Figure:
    """Recall of the answer's chunk per retrieval layer (the `retrieval-recall` evaluator's rows)
    against length: one line per (run, layer) with its 95% interval, its chance level dashed."""
    title = "Retrieval recall vs context length"
    rows = data.other_evals.get(RECALL_KIND) or []
    labels = {r.run_id: r.label for r in data.runs}
    runs_of_label: dict[str, set] = {}
    series: dict[tuple[str, str, int], list[dict]] = {}
    missing: list[tuple[str, int, str, str]] = []
    for r in rows:
        label = labels.get(r.get("run_id"), str(r.get("label")))
        runs_of_label.setdefault(label, set()).add(r.get("run_id"))
        if r.get("status") != "ok" or r.get("recall") is None or r.get("length") is None:
            who = label + (f", layer {r['layer']}" if r.get("layer") is not None else "")
            missing.append((who, r.get("length") or 0, "", str(r.get("reason") or r.get("status") or "not evaluated")))
            continue
        series.setdefault((label, r.get("run_id"), r["layer"]), []).append(r)
    evaluated = {r.get("run_id") for r in rows}
    unevaluated = [f"{run.label} ({run.run_id}): not evaluated (no rows of this retrieval-recall evaluation in the "
                   f"store)" for run in data.runs if run.status == "done" and run.run_id not in evaluated]
    if not series:
        return Figure("fig-retrieval", title, None, "", reason="no retrieval-recall rows with a retrieval layer",
                      missing=compress(missing) + unevaluated)
    order = data.labels()
    keys = sorted(series, key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k[0], str(k[1]), k[2]))
    side_rows: list[list[fmt.Val]] = []
    with rc_context(RC):
        fig = MplFigure(figsize=(5.6, 3.6), layout="constrained")
        ax = fig.subplots()
        lengths: list[int] = []
        train: set[int] = set()
        chances: set[tuple] = set()
        for key in keys:
            label, run_id, layer = key
            pts = sorted(series[key], key=lambda r: r["length"])
            look = pal[label]
            layers = sorted({k[2] for k in keys if k[:2] == key[:2]})
            j = layers.index(layer)
            name = f"{label}{f' ({run_id})' if len(runs_of_label[label]) > 1 else ''}, layer {layer}"
            x = [r["length"] for r in pts]
            y = [r["recall"] for r in pts]
            err = [[r["recall"] - (r.get("low") if r.get("low") is not None else r["recall"]) for r in pts],
                   [(r.get("high") if r.get("high") is not None else r["recall"]) - r["recall"] for r in pts]]
            ax.errorbar(x, y, yerr=err, color=look.color, linestyle=LAYER_STYLES[j % len(LAYER_STYLES)],
                        marker=LAYER_MARKERS[j % len(LAYER_MARKERS)], markersize=4, linewidth=1.3, capsize=2,
                        label=_tex(name), zorder=3)
            lengths += x
            chance = tuple((r["length"], round(r["chance"], 6)) for r in pts if r.get("chance") is not None)
            if chance and chance not in chances:  # one dashed line per distinct chance curve
                chances.add(chance)
                ax.plot([c[0] for c in chance], [c[1] for c in chance], color=look.color, linestyle=(0, (4, 2.5)),
                        linewidth=0.9, alpha=0.75, zorder=2,
                        label=_tex(f"chance: {pts[0].get('top_k')} of the visible chunks, at random")
                        if len(chances) == 1 else None)
            run = data.run(run_id)
            if run is not None and run.train_len:
                train.add(run.train_len)
            for r in pts:
                side_rows.append([
                    fmt.Val(label, label), fmt.Val(layer, str(layer)), fmt.Val(r["length"], fmt.length(r["length"])),
                    fmt.Val(r["recall"], fmt.acc(r["recall"]), sub=fmt.interval(r.get("low"), r.get("high")),
                            run_id=run_id, source=f"{RECALL_KIND} n_chars={r.get('n_chars')} layer={layer}, "
                                                  f"{r.get('hits')}/{r.get('n')} trials"),
                    fmt.Val(r.get("chance"), fmt.acc(r["chance"])) if r.get("chance") is not None
                    else fmt.na("not recorded"),
                    fmt.Val(r.get("weight"), fmt.acc(r["weight"])) if r.get("weight") is not None
                    else fmt.na("not recorded"),
                    fmt.Val(r.get("straddle_weight"), fmt.acc(r["straddle_weight"]))
                    if r.get("straddle_weight") is not None else fmt.na("no straddling value"),
                    fmt.Val(r["miss_rate"], f"{r['miss_rate']:.1e}", run_id=run_id,
                            source=f"{RECALL_KIND} n_chars={r.get('n_chars')} layer={layer}, "
                                   f"{r.get('ranked')} trials ranked, {fmt.acc(r.get('ranked_first'))} first")
                    if r.get("miss_rate") is not None else fmt.na("not recorded"),
                    fmt.Val(r.get("exact_accuracy"), f"{r.get('exact')}/{r.get('asked')}")
                    if r.get("exact_accuracy") is not None else fmt.na("not recorded"),
                    fmt.Val(r.get("exact_straddling"), f"{r.get('exact_straddling')}/{r.get('asked_straddling')}")
                    if r.get("asked_straddling") else fmt.na("no straddling value")])
        _log2_axis(ax, lengths)
        _train_lines(ax, train)
        ax.set_ylim(-0.03, 1.05)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("copied character's chunk selected")
        ax.legend(frameon=False, handlelength=3.2, fontsize=6.5, loc="best")
        svg = to_svg(fig, "fig-retrieval")
    caption = ("Per retrieval layer, the share of the answer positions of single-hop HashHop queries (each hash "
               "letter and the closing quote, per KV head) whose selected chunks hold the prompt character the "
               "position copies; bars: 95% intervals by sample (Wilson's at the effective number of trials); dashed: "
               "chance, as many chunks drawn at random from those visible; dashed vertical: the training length. "
               "The table adds the mean weight the layer's output gives that chunk (all characters, then those of "
               "values that straddle a chunk boundary), the miss rate per competing chunk (the share of the other "
               "visible chunks that outscore the wanted one; 0.5 for scores at random; with rate p the wanted chunk "
               "stays first among C competitors with probability (1 - p)^C) and the exact match of the same "
               "queries (all, then the straddling ones); every row is in data/eval_retrieval-recall.csv.")
    side = Table("retrieval-recall-side", "Retrieval recall",
                 ["run", "layer", "length", "recall", "chance", "weight", "weight, straddling", "misses per chunk",
                  "exact", "exact, straddling"], side_rows).add_footnotes(16)
    return Figure("fig-retrieval", title, svg, caption, side, compress(missing) + unevaluated)


def all_figures(data: ReportData, pal: Palette, es: list[A.Entry]) -> list[Figure]:
    figs = [hashhop_vs_length(data, pal, es), depth_heatmaps(data, pal, es), ppl_vs_length(data, pal, es),
            loss_curves(data, pal, es)]
    if any(r.answer_curve for r in data.runs):
        figs.append(answer_curves(data, pal, es))
    if any(e.sweep is not None and len(e.sweep.points) > 1 for e in es):
        figs.append(lr_sweep(data, pal, es))
    modes = A.bench_modes(data)
    figs += [speed_memory(data, pal, m) for m in modes] or [
        Figure("fig-speed", "Throughput and peak memory vs sequence length", None, "",
               reason="no bench results in the store (run `zoo bench` on the GPU)")]
    figs.append(scaling(data, pal))
    if data.companions:
        figs.append(recall(data, pal))
    if any(len(pts) >= 2 for pts in A.mqar_by_pairs(data).values()):
        figs.append(mqar_pairs(data, pal))
    if data.other_evals.get(RECALL_KIND):
        figs.append(retrieval_recall(data, pal))
    return figs
