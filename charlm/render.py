"""Rich renderables shared by the commands: result tables and text coloured per character.

Generated or user text is always added with `Text.append(..., style=...)`, never parsed as
markup, so brackets and backslashes in it show as they are.
"""

from __future__ import annotations

import math

from rich.color import Color
from rich.style import Style
from rich.table import Table
from rich.text import Text

LN2 = math.log(2)
_VISIBLE = {"\n": "↵\n", "\t": "→   ", "\r": "␍"}


def eval_table(reports) -> Table:
    table = Table(title="held-out text", title_justify="left")
    table.add_column("checkpoint", overflow="fold")
    table.add_column("bits/char", justify="right")
    table.add_column("nats/char", justify="right")
    table.add_column("perplexity", justify="right")
    table.add_column("chars", justify="right")
    best = min(r.result.nats_per_char for r in reports)
    for r in reports:
        res = r.result
        style = "bold green" if len(reports) > 1 and res.nats_per_char == best else None
        table.add_row(Text(r.checkpoint), f"{res.bits_per_char:.4f}", f"{res.nats_per_char:.4f}",
                      f"{res.perplexity:.3f}", f"{res.chars:,}", style=style)
    return table


def heat(fraction: float) -> Style:
    """White (0) to deep red (1): how hard a character was to predict."""
    f = min(max(fraction, 0.0), 1.0)
    fg = Color.from_rgb(0, 0, 0)
    return Style(color=fg, bgcolor=Color.from_rgb(255, int(255 * (1 - 0.85 * f)), int(255 * (1 - f))))


def surprisal_text(report, limit: int, max_bits: float = 8.0) -> Text:
    """The evaluated text, each character's background showing its surprisal in bits."""
    text = Text()
    text.append(f"{report.checkpoint}: surprisal per character, white 0 bits to red ≥{max_bits:g} bits\n",
                style="bold")
    for piece, loss in report.shown:
        bits = 0.0 if loss is None else loss / LN2
        for ch in piece:
            text.append(_VISIBLE.get(ch, ch), style=heat(bits / max_bits))
    text.append("\n")
    return text
