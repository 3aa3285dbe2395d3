"""Rich renderables shared by the commands: result tables and text coloured per character.

Generated or user text is always added with `Text.append(..., style=...)`, never parsed as
markup, so brackets and backslashes in it show as they are.
"""

from __future__ import annotations

import io
import math
import re

from rich.cells import cell_len
from rich.color import Color
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.measure import Measurement
from rich.style import Style
from rich.table import Table
from rich.text import Text

LN2 = math.log(2)
_VISIBLE = {"\n": "↵\n", "\t": "→   ", "\r": "␍"}


class FoldedPath:
    """A path in a table cell that wraps after a `/`, never inside a name (unless one name
    alone is wider than the column)."""

    def __init__(self, path: str, style: str = ""):
        self.path, self.style = path, style
        self.parts = re.findall(r"[^/]*/|[^/]+$", path) or [path]

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(max(cell_len(p) for p in self.parts), cell_len(self.path))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = [""]
        for part in self.parts:
            if lines[-1] and cell_len(lines[-1] + part) > options.max_width:
                lines.append("")
            lines[-1] += part
        for line in lines:
            yield Text(line, overflow="fold", style=self.style)


def cut_at_line(text: str, limit: int) -> str:
    """At most `limit` characters of `text`, ending after a newline (or, with no newline in
    the second half, after a space), so that a view never stops mid-word."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    for boundary in ("\n", " "):
        at = head.rfind(boundary)
        if at >= limit // 2:
            return head[: at + 1]
    return head


def cut_note(shown: int, total: int) -> Text | None:
    """`showing 2,000 of 48,211 characters; --show-chars N for more`, when the view is cut."""
    if shown >= total:
        return None
    return Text(f"showing {shown:,} of {total:,} characters; --show-chars N for more", style="dim")


class EvalTable:
    """`charlm eval`'s results: a table when every path fits whole in its column, else (a
    narrow terminal, long run names) each checkpoint on a line of its own with its figures
    under it, so that no path is broken inside a name."""

    FIGURES = ("bits/char", "nats/char", "perplexity", "chars")

    def __init__(self, reports):
        # One row per language model: a biLM's two models get a row each, with a column saying
        # which way each reads (shown when any checkpoint reads otherwise than forward).
        rows = [(r, direction, res) for r in reports
                for direction, res in (r.directions or {r.direction: r.result}).items()]
        directed = any(direction != "forward" for _, direction, _ in rows)
        self.headers = (("reads",) if directed else ()) + self.FIGURES
        proper = [res.nats_per_char for _, direction, res in rows if direction not in ("bidirectional", "writing")]
        best = min(proper, default=None)
        self.rows = []
        for r, direction, res in rows:
            style = "bold green" if len(rows) > 1 and res.nats_per_char == best else None
            reads = (_READS.get(direction, direction),) if directed else ()
            self.rows.append((r.checkpoint, reads + (f"{res.bits_per_char:.4f}", f"{res.nats_per_char:.4f}",
                                                     f"{res.perplexity:.3f}", f"{res.chars:,}"), style))
        notes = [_EVAL_NOTES[d] for d in ("both", "bidirectional") if any(r.direction == d for r in reports)]
        self.caption = " ".join(notes) or None

    def table(self) -> Table:
        table = Table(title="held-out text", title_justify="left")
        table.add_column("checkpoint", no_wrap=True)
        for header in self.headers:
            table.add_column(header, justify="left" if header == "reads" else "right")
        for path, figures, style in self.rows:
            table.add_row(path, *figures, style=style)
        if self.caption:
            table.caption, table.caption_justify = self.caption, "left"
        return table

    def width(self) -> int:
        """Columns the table takes with every cell on one line."""
        cells = [max(len(h), *(len(f[i]) for _, f, _ in self.rows)) for i, h in enumerate(self.headers)]
        path = max(len("checkpoint"), *(cell_len(p) for p, _, _ in self.rows))
        return path + sum(cells) + 3 * (len(cells) + 1) + 1  # padding and rules

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.width() <= options.max_width:
            yield self.table()
            return
        yield Text("held-out text", style="italic")
        for path, figures, style in self.rows:
            yield FoldedPath(path, style=style or "")
            yield Text("  " + "  ".join(f"{value} {name}" for value, name in zip(figures, self.headers)),
                       style=style or "")
        if self.caption:
            yield Text(self.caption, style="dim")


def eval_table(reports) -> EvalTable:
    return EvalTable(reports)


_READS = {"forward": "forward", "backward": "backward", "bidirectional": "both ways",
          "writing": "as it writes"}
_EVAL_NOTES = {
    "both": "A biLM (--direction both) is two language models over the same text, one reading it forward, "
            "one backward: each of its rows is a proper loss per character of the whole text.",
    "bidirectional": "A bidirectional model (--cheat-demo) has read the character it predicts: its figure is "
                     "no probability of the text. 'As it writes' predicts each character from the text before "
                     "it only (at most 4,096 characters, spread over the text).",
}


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
    shown = 0
    for piece, loss in report.shown:
        bits = 0.0 if loss is None else loss / LN2
        shown += len(piece)
        for ch in piece:
            text.append(_VISIBLE.get(ch, ch), style=heat(bits / max_bits))
    text.append("\n")
    note = cut_note(shown, getattr(report, "text_chars", shown))
    if note is not None:
        text.append_text(note)
        text.append("\n")
    return text


# -- inspect-neurons: text coloured by one unit, rankings, gate saturation ------------------------------
_NEGATIVE, _POSITIVE, _GUESS = (33, 102, 172), (178, 24, 43), (26, 152, 80)
_LEGEND_STEPS = 11
# A guess that is a byte token (a character outside the vocabulary) decodes to U+FFFD alone.
_GUESS_GLYPHS = {" ": "␣", "\n": "↵", "\t": "→", "": " ", "\ufffd": "▪"}
_SIGMOID_STATES = ("input", "forget", "output", "reset", "update")


def _blend(rgb: tuple[int, int, int], amount: float) -> Color:
    """White (0) to `rgb` (1)."""
    a = min(max(amount, 0.0), 1.0)
    return Color.from_rgb(*(round(255 + (c - 255) * a) for c in rgb))


def diverging(fraction: float) -> Style:
    """Blue (-1), white (0), red (+1), as a background under black text."""
    if not math.isfinite(fraction):
        fraction = 0.0
    rgb = _POSITIVE if fraction >= 0 else _NEGATIVE
    return Style(color=Color.from_rgb(0, 0, 0), bgcolor=_blend(rgb, abs(fraction)))


class UnitScale:
    """Where white sits and how far from it full colour is, for one state's values."""

    def __init__(self, state: str, values):
        state = state.rstrip("<")  # a backward unit's state lives where its forward kind does
        if state in _SIGMOID_STATES:
            self.centre, self.half = 0.5, 0.5  # gates live in (0, 1)
        elif state == "c":
            # The cell state is unbounded: scale to the largest magnitude shown.
            peak = float(max((abs(float(v)) for v in values), default=0.0))
            self.centre, self.half = 0.0, float(f"{max(peak, 1e-6):.2g}")
        else:
            self.centre, self.half = 0.0, 1.0  # h and the tanh candidate live in (-1, 1)

    def style(self, value: float) -> Style:
        return diverging((value - self.centre) / self.half)

    def legend(self) -> Text:
        text = Text("scale ")
        text.append(f"{self.centre - self.half:+.3g} ")
        for i in range(_LEGEND_STEPS):
            text.append("  ", style=diverging(-1 + 2 * i / (_LEGEND_STEPS - 1)))
        text.append(f" {self.centre + self.half:+.3g}   white = {self.centre:g}")
        return text


def _glyph(ch: str) -> str:
    if ch == "\n":
        return "↵"
    if ch == "\t":
        return "→   "
    if ch < " ":
        return chr(0x2400 + ord(ch))  # the control picture, never the control itself
    if ch == "\x7f":
        return "␡"
    return ch


class CharacterView:
    """Text drawn one character per cell group, each with its own style, folded to the width it is given.

    A newline shows as ↵ and breaks the line; a long line folds at any character. With
    `guesses` (guesses[i]: the model's likeliest next characters after reading character i),
    rows of guesses sit under each line, shaded by probability, each under the character it
    is a guess for: under character i, what the model expected after character i - 1.
    """

    def __init__(self, text: str, styles: list[Style | None], guesses: list[list[tuple[str, float]]] | None = None):
        self.text, self.styles, self.guesses = text, styles, guesses

    def _lines(self, width: int) -> list[list[int]]:
        lines: list[list[int]] = [[]]
        used = 0
        for i, ch in enumerate(self.text):
            cells = cell_len(_glyph(ch))
            if used + cells > width and lines[-1]:
                lines.append([])
                used = 0
            lines[-1].append(i)
            used += cells
            if ch == "\n":
                lines.append([])
                used = 0
        return lines if lines[-1] else lines[:-1]

    def __rich_console__(self, console, options):
        width = max(options.max_width, 8)
        rows = len(self.guesses[0]) if self.guesses else 0
        for line in self._lines(width):
            text = Text(no_wrap=True, overflow="ignore")
            for i in line:
                text.append(_glyph(self.text[i]), style=self.styles[i])
            yield text
            for k in range(rows):
                guess_row = Text(no_wrap=True, overflow="ignore")
                for i in line:
                    column = cell_len(_glyph(self.text[i]))
                    guess, prob = self.guesses[i - 1][k] if i > 0 else ("", 0.0)
                    glyph = _glyph(_GUESS_GLYPHS.get(guess, guess)[:1] or " ")
                    if cell_len(glyph) > column:
                        glyph = "▪"  # a wide guess under a narrow character
                    guess_row.append(glyph + " " * (column - cell_len(glyph)),
                                     style=Style(color=Color.from_rgb(0, 0, 0), bgcolor=_blend(_GUESS, prob)))
                yield guess_row
            if rows:
                yield Text("")


def unit_title(view) -> Text:
    title = Text(f"layer {view.layer} · {view.state} · unit {view.unit}", style="bold")
    if view.score is not None:
        title.append(f"   score {view.score:+.3f}")
        if view.feature:
            title.append(f" with {view.feature}", style="dim")
    return title


def unit_view(view, text: str, guesses=None) -> Group:
    """One unit: its title, its scale's legend, and the text coloured by its activation."""
    scale = UnitScale(view.state, view.values)
    styles = [scale.style(float(v)) for v in view.values]
    return Group(unit_title(view), scale.legend(), CharacterView(text, styles, guesses))


def ranking_table(ranking) -> Table:
    table = Table()
    table.add_column("rank", justify="right")
    table.add_column("layer", justify="right")
    table.add_column("state")
    table.add_column("unit", justify="right")
    table.add_column("score", justify="right")
    for rank, entry in enumerate(ranking, 1):
        table.add_row(str(rank), str(entry.layer), entry.state, str(entry.unit),
                      Text(f"{entry.score:+.3f}", style=diverging(entry.score)))
    return table


def overview_table(overview) -> Table:
    table = Table()
    for name, justify in (("feature", "left"), ("layer", "right"), ("state", "left"), ("unit", "right"),
                          ("score", "right")):
        table.add_column(name, justify=justify)
    for feature, entry in overview:
        table.add_row(feature, str(entry.layer), entry.state, str(entry.unit),
                      Text(f"{entry.score:+.3f}", style=diverging(entry.score)))
    return table


def saturation_table(saturation) -> Table:
    table = Table()
    for name in ("layer", "gate", "mean left", "mean right", "units mostly left", "units mostly right"):
        table.add_column(name, justify="left" if name == "gate" else "right")
    for gate in saturation:
        table.add_row(str(gate.layer), gate.gate, f"{gate.left.mean():.3f}", f"{gate.right.mean():.3f}",
                      str(int((gate.left > 0.5).sum())), str(int((gate.right > 0.5).sum())))
    return table


_PLOT_ROWS, _PLOT_COLUMNS = 10, 21
_DENSITY = ((1, "·"), (2, "•"), (5, "●"), (20, "█"))


def _scatter(gate) -> Text:
    """Each unit a point: x the share of time left-saturated, y the share right-saturated."""
    counts = [[0] * _PLOT_COLUMNS for _ in range(_PLOT_ROWS)]
    for left, right in zip(gate.left.tolist(), gate.right.tolist()):
        column = min(int(left * (_PLOT_COLUMNS - 1) + 0.5), _PLOT_COLUMNS - 1)
        row = min(int(right * (_PLOT_ROWS - 1) + 0.5), _PLOT_ROWS - 1)
        counts[row][column] += 1
    text = Text(f"{gate.gate}, layer {gate.layer}\n", style="bold")
    for row in range(_PLOT_ROWS - 1, -1, -1):
        text.append("1 ┤" if row == _PLOT_ROWS - 1 else "0 ┤" if row == 0 else "  │", style="dim")
        for count in counts[row]:
            glyph = next((g for limit, g in reversed(_DENSITY) if count >= limit), " ")
            text.append(glyph, style="bold red" if count else None)
        text.append("\n")
    text.append("  └" + "─" * _PLOT_COLUMNS + "\n", style="dim")
    text.append("   0   left-saturated  1", style="dim")
    return text


def saturation_plot(saturation) -> Table:
    """Scatter plots in a grid, one row per layer, one column per gate (y: right-saturated)."""
    grid = Table.grid(padding=(1, 3))
    by_layer: dict[int, list] = {}
    for gate in saturation:
        by_layer.setdefault(gate.layer, []).append(_scatter(gate))
    for plots in by_layer.values():
        grid.add_row(*plots)
    return grid


def inspect_renderables(report) -> list:
    """Everything `charlm inspect-neurons` shows, in order."""
    model = report.model
    parts: list = [Text(f"{report.checkpoint}: {model.cell.upper()} {model.layers}x{model.hidden}, "
                        f"{report.chars:,} characters inspected", style="dim")]
    if getattr(model, "direction", "forward") in ("backward", "both"):
        parts.append(Text("states ending in < are a backward model's: at each character it has read the text "
                          "from its end down to that character", style="dim"))
    if report.overview:
        parts += [Text(f"the best unit for each feature over {report.searched}", style="bold"),
                  overview_table(report.overview)]
    if report.ranking is not None:
        parts += [Text(f"units that track {report.feature} over {report.searched}", style="bold"),
                  ranking_table(report.ranking)]
    if report.saturation:
        parts += [Text("gate saturation: the share of characters with the gate below 0.1 (left-saturated) "
                       "or above 0.9 (right-saturated)", style="bold"),
                  saturation_table(report.saturation), saturation_plot(report.saturation)]
    if report.guesses is not None:
        parts += [Text("under each character, the model's three likeliest guesses for it, made from the "
                       "text before it (darker green: more likely; ▪ a character outside its vocabulary)",
                       style="bold")]
    for view in report.views:
        parts += [Text(""), unit_view(view, report.shown_text, report.guesses)]
    if report.guesses is not None and not report.views:
        styles = [None] * len(report.shown_text)
        parts += [CharacterView(report.shown_text, styles, report.guesses)]
    note = cut_note(len(report.shown_text), report.chars)
    if note is not None and (report.views or report.guesses is not None):
        parts.append(note)
    return parts


def _self_contained_svg_format() -> str | None:
    """rich's SVG template without its web-font download, so the image needs no network."""
    try:
        from rich._export_format import CONSOLE_SVG_FORMAT
    except ImportError:  # a rich without the template: its default (with the web font) still works
        return None
    return re.sub(r"    @font-face \{\{.*?\}\}\n", "", CONSOLE_SVG_FORMAT, flags=re.DOTALL).replace(
        "font-family: Fira Code, monospace;", "font-family: 'Fira Code', 'DejaVu Sans Mono', Menlo, Consolas, monospace;")


SVG_FORMAT = _self_contained_svg_format()


def export_views(parts: list, kind: str, width: int = 100, title: str = "charlm inspect-neurons") -> str:
    """The renderables as a self-contained HTML page (kind "html") or SVG image ("svg")."""
    recorder = Console(record=True, file=io.StringIO(), width=width, force_terminal=True,
                       color_system="truecolor", highlight=False)
    recorder.print(Group(*parts))
    if kind == "html":
        return recorder.export_html()
    return recorder.export_svg(title=title, **({"code_format": SVG_FORMAT} if SVG_FORMAT else {}))
