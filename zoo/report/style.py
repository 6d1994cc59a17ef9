"""One look per mixer for the whole report: colour, marker and line style.

Colours come from the Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design"),
which stays distinguishable under the common colour-vision deficiencies; its yellow is too
light for thin lines on white, so Paul Tol's wine takes its place. Greyscale
printing loses hue, so every entry also has its own marker and line style: two mixers
never share all three. Peer kernels in the speed figures reuse the palette with hollow
markers and a thin dotted line, so ours and theirs read apart at a glance.
"""

from __future__ import annotations

from dataclasses import dataclass

OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#882255"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
LINESTYLES: list = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (8, 2, 2, 2))]
# HTML/CSS dash patterns matching LINESTYLES, for the legend swatches in tables
CSS_DASH = ["", "6,3", "6,2,1,2", "1,2", "5,1", "3,1,1,1,1,1", "1,1", "8,2,2,2"]


@dataclass(frozen=True)
class Look:
    color: str
    marker: str
    linestyle: object
    dash: str  # SVG stroke-dasharray of the line style ("" = solid)
    hollow: bool = False

    def line_kw(self) -> dict:
        kw = dict(color=self.color, marker=self.marker, linestyle=self.linestyle, markersize=5, linewidth=1.6)
        if self.hollow:
            kw.update(markerfacecolor="white", linewidth=1.0)
        return kw

    def swatch_svg(self, width: int = 34, height: int = 12) -> str:
        """A tiny inline SVG of the line and marker, for legends inside HTML tables."""
        y = height / 2
        dash = f' stroke-dasharray="{self.dash}"' if self.dash else ""
        fill = "white" if self.hollow else self.color
        m = _marker_svg(self.marker, width / 2, y, 3.6, self.color, fill)
        return (f'<svg class="swatch" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
                f'aria-hidden="true"><line x1="1" y1="{y}" x2="{width - 1}" y2="{y}" stroke="{self.color}" '
                f'stroke-width="1.8"{dash}/>{m}</svg>')


def _marker_svg(marker: str, x: float, y: float, r: float, stroke: str, fill: str) -> str:
    common = f'fill="{fill}" stroke="{stroke}" stroke-width="1.2"'
    if marker == "o":
        return f'<circle cx="{x}" cy="{y}" r="{r}" {common}/>'
    if marker == "s":
        return f'<rect x="{x - r}" y="{y - r}" width="{2 * r}" height="{2 * r}" {common}/>'
    shapes = {
        "^": [(0, -1), (1, 0.8), (-1, 0.8)], "v": [(0, 1), (1, -0.8), (-1, -0.8)],
        "<": [(-1, 0), (0.8, -1), (0.8, 1)], ">": [(1, 0), (-0.8, -1), (-0.8, 1)],
        "D": [(0, -1.1), (1.1, 0), (0, 1.1), (-1.1, 0)],
        "P": [(-0.35, -1), (0.35, -1), (0.35, -0.35), (1, -0.35), (1, 0.35), (0.35, 0.35), (0.35, 1),
              (-0.35, 1), (-0.35, 0.35), (-1, 0.35), (-1, -0.35), (-0.35, -0.35)],
        "X": [(-1, -0.6), (-0.6, -1), (0, -0.4), (0.6, -1), (1, -0.6), (0.4, 0), (1, 0.6), (0.6, 1), (0, 0.4),
              (-0.6, 1), (-1, 0.6), (-0.4, 0)],
        "*": [(0, -1.1), (0.3, -0.35), (1.05, -0.35), (0.45, 0.12), (0.68, 0.9), (0, 0.42), (-0.68, 0.9),
              (-0.45, 0.12), (-1.05, -0.35), (-0.3, -0.35)],
        "h": [(0, -1), (0.87, -0.5), (0.87, 0.5), (0, 1), (-0.87, 0.5), (-0.87, -0.5)],
        "p": [(0, -1), (0.95, -0.31), (0.59, 0.81), (-0.59, 0.81), (-0.95, -0.31)],
    }
    pts = " ".join(f"{x + dx * r:.2f},{y + dy * r:.2f}" for dx, dy in shapes.get(marker, shapes["D"]))
    return f'<polygon points="{pts}" {common}/>'


class Palette:
    """Assigns each name a `Look` the first time it is asked for, in a fixed order.

    Build it once per report from the leaderboard order so that the same mixer has the
    same look in every figure and table.
    """

    def __init__(self, names: list[str] | None = None):
        self._looks: dict[str, Look] = {}
        self._peers: dict[str, Look] = {}
        for n in names or []:
            self[n]

    def __getitem__(self, name: str) -> Look:
        if name not in self._looks:
            i = len(self._looks)
            # colour cycles every 8, marker every 12, line style every 8 shifted by the colour round,
            # so (colour, marker, line style) stays unique for the first 96 entries
            c = i % len(OKABE_ITO)
            ls = (i + i // len(OKABE_ITO)) % len(LINESTYLES)
            self._looks[name] = Look(OKABE_ITO[c], MARKERS[i % len(MARKERS)], LINESTYLES[ls], CSS_DASH[ls])
        return self._looks[name]

    def peer(self, name: str) -> Look:
        """A peer kernel: hollow marker, thin dotted line, colours counted from the end of the palette."""
        if name not in self._peers:
            i = len(self._peers)
            color = OKABE_ITO[(len(OKABE_ITO) - 2 - i) % len(OKABE_ITO)]
            self._peers[name] = Look(color, MARKERS[(i + 5) % len(MARKERS)], ":", "1,2", hollow=True)
        return self._peers[name]

    def names(self) -> list[str]:
        return list(self._looks)
