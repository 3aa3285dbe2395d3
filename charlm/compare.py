"""Comparing recurrent cells: the same text, split, budget and seed for each, one table at the end.

Each cell is trained by `charlm.train.train` into a run folder of its own (so `sample`,
`eval` and `inspect-neurons` work on each), one after the other in this process. With
`params` given, each cell's hidden size is solved from CharRNN's parameter formula so the
cells have (within 5%) the same number of parameters: a fair fight between a vanilla RNN,
which spends one weight matrix per layer, a GRU (three) and an LSTM (four).

Peak memory is what the training loop adds on top of what was already held when it began
(the model's weights and the data): activations kept for backpropagation through time,
gradients and the optimizer's moments. On a GPU it is torch's own count of tensor memory
(max_memory_allocated). On Linux it is the process's resident-memory high-water mark
(VmHWM), reset at the start of the loop through /proc/self/clear_refs, after freed heap
memory is returned to the system, so an earlier cell's leftovers are not counted for the
next. Elsewhere it is not measured rather than guessed.

Teacher-forcing settings are compared the same way, one cell trained once per setting
(`compare_teacher_forcing`): the table then also shows how far each model's own text is
from real text in its bigram statistics (freerun.py), since the held-out loss, measured
with the true text as input, cannot show what free running does to a model.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .charts import Series, line_chart
from .checkpoint import load_checkpoint, model_from_checkpoint
from .corpus import Corpus
from .data import encode_corpus, split_tokens
from .errors import UsageError
from .freerun import SAMPLE_LENGTH, SAMPLES, bigram_distribution, free_running_divergence, real_text_floor
from .model import CELLS, ModelConfig
from .progress import Reporter, RichReporter
from .scheduled import describe, parse_teacher_forcing
from .tokenizer import train_tokenizer
from .train import VALIDATION_TOKENS, _safe, pick_device, train

GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # weight blocks per layer: the candidate, plus the gates
PARAMS_TOLERANCE = 0.05
DEFAULT_TIME_BUDGET = 60.0  # seconds per cell when no stop is given
LN2 = math.log(2)
FREE_CHARS = SAMPLES * SAMPLE_LENGTH


# -- matching parameter counts ------------------------------------------------------------------
def param_count(cell: str, hidden: int, vocab: int, embedding: int, layers: int, factored: bool = True) -> int:
    """CharRNN's parameters: embedding, per layer g blocks of (W_ih, W_hh, b_ih, b_hh), the head.

    A factored head (what charlm's byte-fallback vocabularies get) has one output more: the escape."""
    g = GATES[cell]
    first = g * hidden * (embedding + hidden + 2)
    deeper = (layers - 1) * g * hidden * (2 * hidden + 2)
    outputs = vocab + 1 if factored else vocab
    return vocab * embedding + first + deeper + hidden * outputs + outputs


def hidden_for_params(cell: str, params: int, vocab: int, embedding: int, layers: int) -> int:
    """The hidden size whose parameter count is closest to `params`; UsageError if none is within 5%."""
    g = GATES[cell]
    # param_count is a*H^2 + b*H + c in the hidden size H; take the positive root.
    a = g * (2 * layers - 1)
    outputs = vocab + 1
    b = g * (embedding + 2) + 2 * g * (layers - 1) + outputs
    c = vocab * embedding + outputs - params
    fixed = vocab * embedding + vocab + vocab  # what even hidden = 1 costs besides the cell
    if c >= 0:
        # vocab counts the 256 byte-fallback tokens too: call them tokens, not characters
        raise UsageError(f"--params {params}: too few for a vocabulary of {vocab:,} tokens "
                         f"(the embedding and output layer alone take about {fixed:,})")
    root = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    candidates = {max(1, math.floor(root)), max(1, math.ceil(root))}
    best = min(candidates, key=lambda h: abs(param_count(cell, h, vocab, embedding, layers) - params))
    got = param_count(cell, best, vocab, embedding, layers)
    if abs(got - params) > PARAMS_TOLERANCE * params:
        raise UsageError(f"--params {params}: the closest {cell} has {got:,} parameters (hidden {best}), "
                         "more than 5% off; ask for more parameters")
    return best


# -- measuring memory ---------------------------------------------------------------------------
class PeakMemory:
    """Peak memory added between start() and stop(), by the most exact means the platform has."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = self._pick_method()
        self._base = 0

    def _pick_method(self) -> str | None:
        if self.device.type == "cuda":
            return "cuda"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the high-water mark; fails where the kernel lacks it
            return "vmhwm" if _status_kib("VmHWM") is not None else None
        except OSError:
            return None

    def start(self) -> None:
        if self.method == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.method == "vmhwm":
            gc.collect()
            _return_free_heap()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._base = (_status_kib("VmRSS") or 0) * 1024

    def stop(self) -> int | None:
        if self.method == "cuda":
            torch.cuda.synchronize(self.device)
            return max(0, torch.cuda.max_memory_allocated(self.device) - self._base)
        if self.method == "vmhwm":
            return max(0, (_status_kib("VmHWM") or 0) * 1024 - self._base)
        return None

    def describe(self) -> str:
        return {
            "cuda": "peak GPU tensor memory during the training loop above what was held when it began "
                    "(torch.cuda.max_memory_allocated)",
            "vmhwm": "peak resident memory during the training loop above the resident memory when it began "
                     "(Linux VmHWM, reset through /proc/self/clear_refs)",
        }.get(self.method or "", "peak memory is not measured on this platform")


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _return_free_heap() -> None:
    """Hand freed heap pages back to the system (glibc), so reused memory shows up as new."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _MeasuringReporter(Reporter):
    """Passes every training event on, and measures memory from the loop's start to its finish."""

    def __init__(self, inner: Reporter, memory: PeakMemory):
        self.inner, self.memory = inner, memory
        self.peak: int | None = None

    def message(self, text):
        self.inner.message(text)

    def task(self, description):
        return self.inner.task(description)

    def summary(self, **info):
        self.inner.summary(**info)

    def start(self, progress):
        self.inner.start(progress)
        self.memory.start()

    def update(self, **info):
        self.inner.update(**info)

    def validated(self, **info):
        self.inner.validated(**info)

    def sample(self, step, text):
        self.inner.sample(step, text)

    def finish(self, **info):
        self.peak = self.memory.stop()
        self.inner.finish(**info)


# -- the comparison -----------------------------------------------------------------------------
@dataclass
class CellResult:
    cell: str
    hidden: int
    params: int
    steps: int
    train_seconds: float  # time spent in training steps, validation not included
    chars_per_sec: float
    peak_memory: int | None  # bytes, see PeakMemory
    val_nats: float | None  # best validation loss, the one best.pt holds
    run_dir: Path
    curve: list[tuple[float, float]] = field(default_factory=list)  # (training seconds, loss in nats/char)
    teacher_forcing: str = "1"  # as written: 0.5, or 1:0 for a schedule
    free_js: float | None = None  # freerun.py: its own text's bigram divergence from held-out text, bits
    label: str = ""  # what tells this row from the others: its cell, or its teacher forcing

    @property
    def val_bits(self) -> float | None:
        return None if self.val_nats is None else self.val_nats / LN2

    def as_dict(self) -> dict[str, Any]:
        return {"cell": self.cell, "hidden": self.hidden, "params": self.params, "steps": self.steps,
                "train_seconds": self.train_seconds, "chars_per_sec": self.chars_per_sec,
                "peak_memory_bytes": self.peak_memory, "val_nats_per_char": self.val_nats,
                "val_bits_per_char": self.val_bits, "run": str(self.run_dir),
                "teacher_forcing": self.teacher_forcing,
                **({"free_running_js_bits": self.free_js} if self.free_js is not None else {})}


@dataclass
class Comparison:
    out_dir: Path
    results: list[CellResult]
    memory_method: str
    axis: str = "cell"  # what the rows differ in: cell, or teacher forcing
    free_floor: float | None = None  # freerun.py: what real text of the same length scores

    def as_dict(self) -> dict[str, Any]:
        data = {"out": str(self.out_dir), "peak_memory": self.memory_method,
                "cells": [r.as_dict() for r in self.results]}
        if self.axis != "cell":
            data.update(compared=self.axis, free_running_js_bits_of_real_text=self.free_floor)
        return data


def parse_cells(text: str) -> list[str]:
    cells = [c.strip().lower() for c in text.split(",") if c.strip()]
    if not cells:
        raise UsageError("--cells: name at least one of rnn, gru, lstm")
    for cell in cells:
        if cell not in CELLS:
            raise UsageError(f"--cells: unknown cell {cell!r}; expected rnn, gru or lstm")
    if len(set(cells)) != len(cells):
        raise UsageError("--cells: a cell is listed twice")
    return cells


def parse_teacher_forcing_list(text: str) -> list[tuple[float, float | None]]:
    """'1,0.5,0' -> [(1.0, None), (0.5, None), (0.0, None)]; '1:0' is a schedule."""
    settings = [parse_teacher_forcing(part.strip()) for part in text.split(",") if part.strip()]
    if not settings:
        raise UsageError("--teacher-forcing: give at least one setting, e.g. 1,0.5,0")
    if len({describe(*s) for s in settings}) != len(settings):
        raise UsageError("--teacher-forcing: a setting is listed twice")
    return settings


def run_comparison(corpus: Corpus, cells: str | None, teacher_forcing: str | None, **options) -> Comparison:
    """What `charlm compare` compares: several teacher-forcing settings of one cell (lstm unless
    `cells` names one), or else the cells (rnn, gru, lstm by default), each with the one setting."""
    settings = parse_teacher_forcing_list(teacher_forcing) if teacher_forcing is not None else []
    if len(settings) > 1:
        chosen = parse_cells(cells or "lstm")
        if len(chosen) > 1:
            raise UsageError("--teacher-forcing: several settings are compared for one cell; "
                             "name one with --cells")
        return compare_teacher_forcing(corpus, settings, chosen[0], **options)
    if settings:
        start, end = settings[0]
        options["train_options"] = {**(options.get("train_options") or {}), "teacher_forcing": start,
                                    "teacher_forcing_end": end if end is not None else start}
    return compare_cells(corpus, parse_cells(cells or "rnn,gru,lstm"), **options)


def compare_teacher_forcing(
    corpus: Corpus,
    settings: list[tuple[float, float | None]],
    cell: str = "lstm",
    model_options: dict[str, Any] | None = None,
    train_options: dict[str, Any] | None = None,
    params: int | None = None,
    out: Path | None = None,
    runs_dir: Path = Path("runs"),
    console: Console | None = None,
) -> Comparison:
    """Train `cell` once per teacher-forcing setting (start, end or None) on the same terms, and
    measure each model's free-running text as well as its held-out loss."""
    variants = [(describe(*s), f"tf-{describe(*s).replace(':', '-')}",
                 {"teacher_forcing": s[0], "teacher_forcing_end": s[1] if s[1] is not None else s[0]})
                for s in settings]
    comparison = _compare(corpus, [(cell, *v) for v in variants], model_options, train_options, params, out,
                          runs_dir, console)
    comparison.axis = "teacher forcing"
    _measure_free_running(comparison, corpus)
    return comparison


def compare_cells(
    corpus: Corpus,
    cells: list[str],
    model_options: dict[str, Any] | None = None,
    train_options: dict[str, Any] | None = None,
    params: int | None = None,
    out: Path | None = None,
    runs_dir: Path = Path("runs"),
    console: Console | None = None,
) -> Comparison:
    """Train each of `cells` on `corpus` under the same options and collect what they cost and reach.

    `model_options` and `train_options` are passed to `train` for every cell (hidden, layers,
    embedding; seq_len, time_budget, seed...). `params` sets each cell's hidden size instead.
    With no stop given, each cell trains for DEFAULT_TIME_BUDGET seconds.
    """
    return _compare(corpus, [(cell, cell, cell, {}) for cell in cells], model_options, train_options, params,
                    out, runs_dir, console)


def _compare(corpus, variants, model_options, train_options, params, out, runs_dir, console) -> Comparison:
    """Train each (cell, label, folder, extra train options) variant on the same terms."""
    cells = list(dict.fromkeys(cell for cell, *_ in variants))
    model_options = {k: v for k, v in (model_options or {}).items() if v is not None}
    train_options = {k: v for k, v in (train_options or {}).items() if v is not None}
    if params is not None and "hidden" in model_options:
        raise UsageError("--params and --hidden: give one or the other")
    if params is not None and params <= 0:
        raise UsageError(f"--params: must be positive, got {params}")
    if not any(k in train_options for k in ("max_steps", "epochs", "time_budget")):
        train_options["time_budget"] = DEFAULT_TIME_BUDGET
    train_options["tokenizer"] = "char"  # per-token losses are then per-character losses
    hidden_sizes = {cell: model_options.get("hidden", ModelConfig.hidden) for cell in cells}
    if params is not None:
        vocab = train_tokenizer(corpus.chunks(), "char", train_options.get("vocab_size")).vocab_size
        embedding = model_options.get("embedding", ModelConfig.embedding)
        layers = model_options.get("layers", ModelConfig.layers)
        hidden_sizes = {cell: hidden_for_params(cell, params, vocab, embedding, layers) for cell in cells}
    out_dir = Path(out) if out is not None else \
        runs_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-compare-{_safe(corpus.name)}"
    memory = PeakMemory(pick_device(train_options.get("device", "auto")))
    results = []
    for number, (cell, label, folder, extra) in enumerate(variants, 1):
        if console is not None:
            console.rule(Text(f"{label} ({number}/{len(variants)}), hidden {hidden_sizes[cell]}"), style="dim")
        reporter = _MeasuringReporter(RichReporter(console) if console is not None else Reporter(), memory)
        result = train(corpus, {**model_options, "cell": cell, "hidden": hidden_sizes[cell]},
                       {**train_options, **extra}, out=out_dir / folder, runs_dir=runs_dir, reporter=reporter)
        payload = load_checkpoint(result.out_dir / "last.pt")
        config = payload["train_config"]
        chars = result.steps * config["batch_size"] * config["seq_len"]
        results.append(CellResult(
            cell=cell,
            hidden=hidden_sizes[cell],
            params=sum(t.numel() for t in payload["model"].values()),
            steps=result.steps,
            train_seconds=result.elapsed,
            chars_per_sec=chars / result.elapsed if result.elapsed > 0 else 0.0,
            peak_memory=reporter.peak,
            val_nats=result.best_val if math.isfinite(result.best_val) else None,
            run_dir=result.out_dir,
            curve=_loss_curve(result.out_dir / "log.jsonl"),
            teacher_forcing=describe(config["teacher_forcing"], config["teacher_forcing_end"]),
            label=label,
        ))
    return Comparison(out_dir, results, memory.describe())


def _measure_free_running(comparison: Comparison, corpus: Corpus) -> None:
    """Each run's free-running divergence from the held-out text, and real text's, the floor."""
    first = load_checkpoint(comparison.results[0].run_dir / "last.pt")
    _, tokenizer = model_from_checkpoint(first)
    tokens = encode_corpus(corpus, tokenizer, comparison.out_dir / ".cache")  # the runs' cached encoding
    train_tokens, val_tokens = split_tokens(tokens, first["train_config"]["val_fraction"])
    reference = bigram_distribution([np.asarray(val_tokens[:VALIDATION_TOKENS])], tokenizer.vocab_size)
    comparison.free_floor = real_text_floor(train_tokens, reference, tokenizer.vocab_size)
    for r in comparison.results:
        model, _ = model_from_checkpoint(load_checkpoint(r.run_dir))  # best.pt, as the val column
        r.free_js = free_running_divergence(model, tokenizer, reference, first["train_config"]["seed"])


def _loss_curve(log_path: Path) -> list[tuple[float, float]]:
    curve = []
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            if "loss" in entry and "elapsed" in entry:
                curve.append((entry["elapsed"], entry["loss"]))
    return curve


# -- showing it ---------------------------------------------------------------------------------
def comparison_table(comparison: Comparison) -> Table:
    forcing = comparison.axis == "teacher forcing"
    if forcing:  # one cell and size for all rows: said once, in the title
        first = comparison.results[0]
        what = f"teacher forcing compared ({first.cell}, hidden {first.hidden}, {first.params:,} parameters)"
        columns = [comparison.axis, "steps", "chars/s", "peak mem", "val nats", "val bpc", "free JS"]
    else:
        what = "cells compared"
        columns = ["cell", "hidden", "params", "steps", "chars/s", "peak mem", "val nats", "val bpc"]
    table = Table(title=f"{what}: same text, split, budget and seed; val = held-out loss per character",
                  title_justify="left")
    for name in columns:
        table.add_column(name, justify="left" if name == columns[0] else "right")
    vals = [r.val_nats for r in comparison.results if r.val_nats is not None]
    best = min(vals) if vals else None
    for r in comparison.results:
        style = "bold green" if len(comparison.results) > 1 and r.val_nats == best else None
        sizes = [] if forcing else [str(r.hidden), f"{r.params:,}"]
        free = [_fixed(r.free_js)] if forcing else []
        table.add_row(r.label or r.cell, *sizes, f"{r.steps:,}", f"{r.chars_per_sec:,.0f}",
                      _megabytes(r.peak_memory), _fixed(r.val_nats), _fixed(r.val_bits), *free, style=style)
    caption = f"peak memory: {comparison.memory_method}"
    if forcing:
        caption = (
            "teacher forcing: the probability that a training input is the true character rather than the "
            "model's own draw (START:END moves it over the run). val: measured with true inputs. free JS: "
            f"Jensen-Shannon divergence (bits) between the bigrams of {FREE_CHARS:,} characters the model "
            "wrote on its own and those of the held-out text; real text of that length scores "
            f"{_fixed(comparison.free_floor)}. " + caption)
    table.caption = Text(caption)  # a Text: no markup or :emoji: codes in it
    table.caption_justify = "left"
    return table


def loss_chart(comparison: Comparison, width: int = 64, height: int = 14) -> Text:
    series = [Series(r.label, [x for x, _ in r.curve], [y for _, y in r.curve]) for r in comparison.results]
    return line_chart(series, width=width, height=height, x_label="seconds of training",
                      y_label="training loss (nats/char)",
                      empty="no loss curve: the runs ended before their first log entry (50 steps or 0.5 s)")


def _megabytes(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f} MiB"


def _fixed(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
