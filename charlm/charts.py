"""Line charts for the terminal, drawn as rich Text: several series on shared axes, linear or log y.

Each series gets its own glyph as well as its own colour, so a chart still reads when it is
pasted as plain text or printed without colour. Points are joined column by column (a
vertical run fills any jump between neighbouring columns), which is all a loss curve or a
gradient-norm decay needs. On a log scale, values that are zero, negative or not finite
cannot be placed and leave a gap; the legend says how many.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from rich.text import Text

GLYPHS = "•×+o*#%@"
COLORS = ("cyan", "magenta", "yellow", "green", "red", "blue", "bright_white", "bright_black")


@dataclass
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float]


def line_chart(series: Sequence[Series], width: int = 64, height: int = 16, log_y: bool = False,
               x_label: str = "", y_label: str = "", empty: str = "nothing to chart") -> Text:
    """Draw `series` into a `width` x `height` plot area with axes, tick labels and a legend."""
    placed, dropped = [], []
    for s in series:
        points = [(float(x), _y_position(float(y), log_y)) for x, y in zip(s.xs, s.ys)]
        kept = [(x, y) for x, y in points if y is not None and math.isfinite(x)]
        placed.append(kept)
        dropped.append(len(points) - len(kept))
    all_points = [p for kept in placed for p in kept]
    if not all_points:
        return Text(f"({empty})\n", style="dim")
    # The x axis spans every point given, placed or not, so a curve that falls off the log
    # scale visibly ends early.
    x_lo, x_hi = _span([float(x) for s in series for x in s.xs if math.isfinite(float(x))])
    y_lo, y_hi = _span([y for _, y in all_points])

    def column(x: float) -> int:
        return round((x - x_lo) / (x_hi - x_lo) * (width - 1))

    def row(y: float) -> int:  # row 0 is the top
        return round((y_hi - y) / (y_hi - y_lo) * (height - 1))

    grid: list[list[int | None]] = [[None] * width for _ in range(height)]
    for index, kept in enumerate(placed):
        cells = sorted((column(x), row(y)) for x, y in kept)
        for (c0, r0), (c1, r1) in pairwise(cells):
            previous = r0
            for c in range(c0, c1 + 1):
                r = r1 if c1 == c0 else round(r0 + (r1 - r0) * (c - c0) / (c1 - c0))
                for fill in range(min(previous, r), max(previous, r) + 1):
                    grid[fill][c] = index
                previous = r
        for c, r in cells[:1] + cells[-1:]:
            grid[r][c] = index

    labels = _y_ticks(y_lo, y_hi, log_y, height, row)
    label_width = max(len(text) for text in labels.values())
    out = Text()
    if y_label:
        out.append(f"{y_label}\n", style="bold")
    for r in range(height):
        out.append(labels.get(r, "").rjust(label_width), style="dim")
        out.append(" ┤" if r in labels else " │", style="dim")
        for index in grid[r]:
            if index is None:
                out.append(" ")
            else:
                out.append(GLYPHS[index % len(GLYPHS)], style=COLORS[index % len(COLORS)])
        out.append("\n")
    out.append(" " * label_width + " └" + "─" * width + "\n", style="dim")
    left, middle, right = _number(x_lo), _number((x_lo + x_hi) / 2), _number(x_hi)
    axis = left + middle.center(width - len(left) - len(right)) + right
    out.append(" " * (label_width + 2) + axis + "\n", style="dim")
    if x_label:
        out.append(" " * (label_width + 2) + x_label.center(width) + "\n", style="bold")
    for index, s in enumerate(series):
        out.append("  ")
        out.append(GLYPHS[index % len(GLYPHS)], style=COLORS[index % len(COLORS)])
        out.append(f" {s.name}")
        if dropped[index]:
            out.append(f"  ({dropped[index]} point(s) not drawn: zero, negative or not finite)", style="dim")
        out.append("\n")
    return out


def _y_position(y: float, log_y: bool) -> float | None:
    if not math.isfinite(y):
        return None
    if log_y:
        return math.log10(y) if y > 0 else None
    return y


def _span(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        pad = 0.5 if hi == 0 else abs(hi) * 0.1
        return lo - pad, hi + pad
    return lo, hi


def _y_ticks(y_lo: float, y_hi: float, log_y: bool, height: int, row) -> dict[int, str]:
    """Row -> label: powers of ten on a log scale (thinned to fit), else top, middle and bottom."""
    ticks: dict[int, str] = {}
    if log_y:
        decades = list(range(math.ceil(y_lo - 1e-9), math.floor(y_hi + 1e-9) + 1))
        stride = max(1, math.ceil(len(decades) / max(1, height // 2)))
        for e in decades[::-1][::stride]:
            ticks.setdefault(row(e), f"1e{e:+03d}" if e else "1")
        if len(ticks) >= 2:
            return ticks
        return {0: _number(10**y_hi), height - 1: _number(10**y_lo), **ticks}
    for r in (0, (height - 1) // 2, height - 1):
        value = y_hi - (y_hi - y_lo) * r / (height - 1)
        ticks[r] = _number(value)
    return ticks


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.1e}"
