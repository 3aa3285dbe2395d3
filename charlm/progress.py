"""What a training run shows while it works.

The trainer reports events to a `Reporter`; the base class ignores them (library use,
tests), `RichReporter` draws a live progress line on stderr (step, loss, validation
bits/char, chars/s, elapsed and remaining time) with a short sample printed above it at
every validation, so the user can watch the model learn.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn
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

    def finish(self, *, step: int, loss: float, val: float | None, elapsed: float) -> None: ...


NullReporter = Reporter


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-:--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RichReporter(Reporter):
    def __init__(self, console: Console):
        self.console = console
        self._progress: Progress | None = None
        self._task = None
        self._drawn = -math.inf  # time.monotonic() of the last redraw of the progress line

    def message(self, text: str) -> None:
        self.console.print(Text(text, style="dim"))

    @contextmanager
    def task(self, description: str):
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
        rows = [
            ("run", str(info["out_dir"])),
            ("model", f"{model.cell.upper()} {model.layers}x{model.hidden}, embedding {model.embedding}, "
                      + (f"dropout {model.dropout:g}, " if model.dropout else "") + f"{info['params']:,} parameters"
                      + _DIRECTIONS.get(getattr(model, "direction", "forward"), "")),
            ("data", f"{info['train_tokens']:,} training tokens, {info['val_tokens']:,} validation, "
                     f"vocabulary {info['vocab']:,} ({config.tokenizer})"),
            ("steps", f"batch {config.batch_size} x seq {config.seq_len}, lr {config.lr:g} ({config.schedule}), "
                      f"stop after {_stops(config)}" + _forcing(config)),
            ("device", info["device"]),
        ]
        if info.get("resumed_at") is not None:
            rows.append(("resumed", f"at step {info['resumed_at']}"))
        for key, value in rows:
            table.add_row(key, Text(value))
        self.console.print(table)

    def start(self, progress: float) -> None:
        self._progress = Progress(
            TextColumn("[bold]step {task.fields[step]:>6}"),
            BarColumn(bar_width=10),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("grad {task.fields[grad]}"),
            TextColumn("val {task.fields[val]} bpc"),
            TextColumn("{task.fields[speed]} chars/s"),
            TimeElapsedColumn(),
            TextColumn("left {task.fields[left]}"),
            console=self.console,
            # Redrawn when the figures change (at most ten times a second), not by a thread of
            # its own: on a GPU the training loop is bound by how fast the host launches
            # kernels, and a redraw thread would take the interpreter from it at any moment.
            auto_refresh=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=1.0, completed=progress, step=0, loss="-",
                                             val="-", speed="-", left="-", grad="-")

    def update(self, *, step, loss, val, chars_per_sec, progress, elapsed, grad_norm=None,
               clip_rate=None) -> None:
        if self._progress is None:
            return
        left = elapsed * (1 - progress) / progress if progress > 0 else math.inf
        now = time.monotonic()
        redraw = now - self._drawn >= 0.1
        if redraw:
            self._drawn = now
        self._progress.update(self._task, completed=min(progress, 1.0), step=step, loss=f"{loss:.3f}",
                              val=_bpc(val), speed=f"{chars_per_sec:,.0f}", left=_clock(left),
                              grad=_grad(grad_norm, clip_rate), refresh=redraw)

    def validated(self, *, step, val) -> None:
        if self._progress is not None:
            self._progress.update(self._task, val=_bpc(val), refresh=True)

    def sample(self, step: int, text: str) -> None:
        if text:
            self.console.print(Panel(Text(text), title=f"sample at step {step}", title_align="left",
                                     border_style="dim"))

    def finish(self, *, step, loss, val, elapsed) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=1.0, step=step, val=_bpc(val))
            self._progress.stop()
            self._progress = None
        line = f"done: {step} steps in {_clock(elapsed)}"
        if val is not None:
            line += f", validation {val:.4f} nats/char = {val / LN2:.4f} bits/char"
        self.console.print(Text(line, style="bold"))


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
