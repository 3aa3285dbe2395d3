"""What a training run shows while it works.

The trainer reports events to a `Reporter`; the base class ignores them (library use,
tests), `RichReporter` draws a live progress line on stderr (step, loss, validation
bits/char, chars/s, elapsed and remaining time) with a short sample printed above it at
every validation, so the user can watch the model learn. The line fits any terminal width
by dropping its least useful fields first; when stderr is not a terminal, plain complete
lines are written at a modest pace instead, a log that reads back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

LN2 = math.log(2)


class Reporter:
    """Receives training events and shows nothing."""

    def message(self, text: str) -> None: ...

    @contextmanager
    def task(self, description: str) -> Iterator[Callable[[int, int], None]]:
        yield lambda done, total: None

    def summary(self, **info: Any) -> None: ...

    def start(self, progress: float) -> None: ...

    def update(self, *, step: int, loss: float, val: float | None, chars_per_sec: float, progress: float,
               elapsed: float, grad_norm: float | None = None, clip_rate: float | None = None) -> None:
        """grad_norm: mean norm before clipping; clip_rate: share of steps clipped (None: clipping off)."""

    def validated(self, *, step: int, val: float) -> None: ...

    def sample(self, step: int, text: str) -> None: ...

    def finish(self, *, step: int, loss: float, val: float | None, elapsed: float, val_step: int | None = None,
               interrupted: bool = False) -> None:
        """val: the last validation, measured at val_step; interrupted: stopped by a signal."""


NullReporter = Reporter


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-:--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RichReporter(Reporter):
    """Shows a run on a rich console: a live progress line on a terminal, plain log lines elsewhere.

    On a terminal the line is redrawn in place (at most ten times a second) and fitted to the
    terminal's width by dropping or shortening its least useful fields, so the remaining
    time is never cut off. When stderr is a file or a pipe, nothing is redrawn: a complete
    line is written every LOG_SECONDS seconds and at every validation, which a person or a
    script can read back.
    """

    LOG_SECONDS = 10.0

    def __init__(self, console: Console):
        self.console = console
        self._live: Live | None = None
        self._line: ProgressLine | None = None
        self._drawn = -math.inf  # time.monotonic() of the last redraw (or log line)
        self._plain = not console.is_terminal
        self._val_step: int | None = None

    def message(self, text: str) -> None:
        self.console.print(Text(text, style="dim"), soft_wrap=True)  # a whole line, in a log too

    @contextmanager
    def task(self, description: str):
        if self._plain:  # a bar drawn in place means nothing in a log
            yield lambda done, total: None
            return
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=None)

            def advance(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            yield advance

    def summary(self, **info: Any) -> None:
        model, config = info["model"], info["config"]
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        vocab = info["vocab"] if isinstance(info["vocab"], str) else f"vocabulary {info['vocab']:,}"
        rows = [
            ("run", str(info["out_dir"])),
            ("model", f"{model.cell.upper()} {model.layers}x{model.hidden}, embedding {model.embedding}, "
                      + (f"dropout {model.dropout:g}, " if model.dropout else "") + f"{info['params']:,} parameters"
                      + _DIRECTIONS.get(getattr(model, "direction", "forward"), "")),
            ("data", f"{info['train_tokens']:,} training tokens, {info['val_tokens']:,} validation; "
                     f"{vocab}" + ("" if config.tokenizer == "char" or isinstance(info["vocab"], str)
                                   else f" ({config.tokenizer})")),
            ("steps", f"batch {config.batch_size} x seq {config.seq_len}, lr {config.lr:g} ({config.schedule}), "
                      f"stop after {_stops(config)}" + _forcing(config)),
            ("device", info["device"]),
        ]
        if info.get("precision"):
            rows.append(("precision", info["precision"]))
        if info.get("resumed_at") is not None:
            rows.append(("resumed", f"at step {info['resumed_at']}"))
        if self._plain:  # whole lines, as a log wants them, the values in one column as in the table
            width = max(len(key) for key, _ in rows) + 2
            for key, value in rows:
                self.console.print(f"{key:<{width}}{value}", markup=False, highlight=False, soft_wrap=True)
            return
        for key, value in rows:
            table.add_row(key, Text(value))
        self.console.print(table)

    def start(self, progress: float) -> None:
        self._line = ProgressLine(progress)
        if not self._plain:
            # Redrawn when the figures change, not by a thread of its own: on a GPU the training
            # loop is bound by how fast the host launches kernels, and a redraw thread would
            # take the interpreter from it at any moment.
            self._live = Live(self._line, console=self.console, auto_refresh=False, transient=False)
            self._live.start()

    def update(self, *, step, loss, val, chars_per_sec, progress, elapsed, grad_norm=None,
               clip_rate=None) -> None:
        if self._line is None:
            return
        left = elapsed * (1 - progress) / progress if progress > 0 else math.inf
        self._line.set(step=step, progress=min(progress, 1.0), loss=loss, val=val, val_step=self._val_step,
                       speed=chars_per_sec, elapsed=elapsed, left=left, grad_norm=grad_norm, clip_rate=clip_rate)
        now = time.monotonic()
        if self._plain:
            if now - self._drawn >= self.LOG_SECONDS:
                self._drawn = now
                self.console.print(self._line.log_line(), markup=False, highlight=False, soft_wrap=True)
        elif now - self._drawn >= 0.1:
            self._drawn = now
            self._live.refresh()

    def validated(self, *, step, val) -> None:
        self._val_step = step
        if self._line is not None:
            self._line.set(val=val, val_step=step)
            if self._live is not None:
                self._live.refresh()
        if self._plain:
            self.console.print(f"step {step}: validation {val:.4f} nats/char = {val / LN2:.4f} bits/char",
                               markup=False, highlight=False, soft_wrap=True)

    def sample(self, step: int, text: str) -> None:
        if text:
            self.console.print(Panel(Text(text), title=f"sample at step {step}", title_align="left",
                                     border_style="dim"))

    def finish(self, *, step, loss, val, elapsed, val_step=None, interrupted=False) -> None:
        if self._line is not None:
            self._line.set(step=step, progress=1.0 if not interrupted else self._line.progress, val=val,
                           val_step=val_step, elapsed=elapsed, left=0.0 if not interrupted else math.inf)
            if self._live is not None:
                self._live.refresh()
                self._live.stop()
            elif self._line.step:  # the log ends with the run's last figures
                self.console.print(self._line.log_line(), markup=False, highlight=False, soft_wrap=True)
        self._live = self._line = None
        self.console.print(Text(finish_line(step, elapsed, val, val_step, interrupted), style="bold"), soft_wrap=True)


def finish_line(step: int, elapsed: float, val: float | None, val_step: int | None, interrupted: bool) -> str:
    """`done: 972 steps in 0:01:02; validation at step 972: 1.6879 nats/char = 2.4351 bits/char`,
    or `interrupted: ...; last validation at step 351: ...`: a figure always names its step."""
    line = f"{'interrupted' if interrupted else 'done'}: {step} steps in {_clock(elapsed)}"
    if val is None:
        return line + "; not validated"
    where = f"step {val_step}" if val_step is not None else "an earlier step"
    label = "validation" if val_step == step else "last validation"
    return line + f"; {label} at {where}: {val:.4f} nats/char = {val / LN2:.4f} bits/char"


# The progress line's fields, in the order shown; each has a list of forms, widest first, and
# None where the field may be left out.
_FIELDS = ("step", "bar", "loss", "grad", "val", "speed", "elapsed", "left")
# What goes first when the terminal is narrow: one step down this list at a time.
_SHRINK = ("bar", "elapsed", "grad", "speed", "grad", "speed", "val", "step")


class ProgressLine:
    """The live progress line: the latest figures, drawn to fit the width it is given."""

    def __init__(self, progress: float = 0.0):
        self.step, self.progress = 0, progress
        self.loss: float | None = None
        self.val: float | None = None
        self.val_step: int | None = None
        self.speed: float | None = None
        self.elapsed, self.left = 0.0, math.inf
        self.grad_norm: float | None = None
        self.clip_rate: float | None = None

    def set(self, **figures: Any) -> None:
        for name, value in figures.items():
            setattr(self, name, value)

    def _forms(self) -> dict[str, list]:
        loss = "-" if self.loss is None or not math.isfinite(self.loss) else f"{self.loss:.3f}"
        val = _bpc(self.val)
        speed = "-" if self.speed is None else f"{self.speed:,.0f}"
        short_speed = "-" if self.speed is None else f"{self.speed / 1000:,.0f}k"
        filled = round(10 * min(max(self.progress, 0.0), 1.0))
        bar = Text("━" * filled, style="bar.complete") + Text("━" * (10 - filled), style="bar.back")
        return {
            "step": [Text(f"step {self.step:>6}", style="bold"), Text(f"step {self.step}", style="bold")],
            "bar": [bar, None],
            "loss": [f"loss {loss}"],
            "grad": [f"grad {_grad(self.grad_norm, self.clip_rate)}",
                     "grad -" if self.grad_norm is None else f"grad {self.grad_norm:.2g}", None],
            "val": [f"val {val} bpc", f"val {val}"],
            "speed": [f"{speed} chars/s", f"{short_speed} c/s", None],
            "elapsed": [_clock(self.elapsed), None],
            "left": [f"left {_clock(self.left)}"],
        }

    def fit(self, width: int) -> Text:
        """The widest form of the line that fits `width` cells."""
        forms = self._forms()
        level = dict.fromkeys(_FIELDS, 0)

        def compose() -> Text:
            parts = [forms[name][level[name]] for name in _FIELDS if forms[name][level[name]] is not None]
            return Text("  ").join(Text(p) if isinstance(p, str) else p for p in parts)

        line = compose()
        for name in _SHRINK:
            if line.cell_len <= width:
                break
            level[name] = min(level[name] + 1, len(forms[name]) - 1)
            line = compose()
        line.no_wrap, line.overflow = True, "crop"
        return line

    def log_line(self) -> str:
        """The figures as one complete plain line, for a log file."""
        val = _bpc(self.val)
        if self.val is not None and self.val_step is not None:
            val += f" bpc at step {self.val_step}"
        elif self.val is not None:
            val += " bpc"
        loss = "-" if self.loss is None else f"{self.loss:.3f}"
        speed = "-" if self.speed is None else f"{self.speed:,.0f}"
        return (f"step {self.step} ({100 * self.progress:.0f}%): loss {loss}, "
                f"grad {_grad(self.grad_norm, self.clip_rate)}, val {val}, {speed} chars/s, "
                f"elapsed {_clock(self.elapsed)}, left {_clock(self.left)}")

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.fit(options.max_width)


_DIRECTIONS = {
    "backward": ", reading right to left",
    "both": ", two language models (a biLM): one reads forward, one backward",
    "bidirectional": ", bidirectional: it reads the characters it predicts (--cheat-demo)",
}


def _forcing(config) -> str:
    """', teacher forcing 0.5' (or '1 -> 0' over the run) unless every input is the true one."""
    start, end = getattr(config, "teacher_forcing", 1.0), getattr(config, "teacher_forcing_end", None)
    if end is None or end == start:
        return "" if start == 1 else f", teacher forcing {start:g}"
    return f", teacher forcing {start:g} -> {end:g}"


def _grad(norm: float | None, clip_rate: float | None) -> str:
    """Gradient norm before clipping and how often clipping fired, e.g. '3.2 clip 40%'."""
    if norm is None:
        return "-"
    return f"{norm:.2g} " + ("no clip" if clip_rate is None else f"clip {100 * clip_rate:.0f}%")


def _bpc(val: float | None) -> str:
    return "-" if val is None else f"{val / LN2:.3f}"


def _stops(config) -> str:
    stops = []
    if config.max_steps:
        stops.append(f"{config.max_steps} steps")
    if config.epochs:
        stops.append(f"{config.epochs:g} epochs")
    if config.time_budget:
        stops.append(f"{config.time_budget:g}s")
    return " or ".join(stops) or "-"
