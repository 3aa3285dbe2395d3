"""The model and learning rate a new run gets when the user does not choose them.

On a CPU quality per second is a trade. A wider model learns more from each character but
reads fewer characters in the same time, and a model that reads its text many times
memorizes it. charlm settles it with rules measured by characters seen (bench/tune.py,
bench/README.md), so that they hold on any machine:

- width: the one of WIDTHS (a GRU's and an RNN's: CELL_WIDTHS) whose training tokens per
  parameter come closest (by ratio) to TOKENS_PER_PARAM (a GRU has its own, higher goal:
  CELL_TOKENS_PER_PARAM): a narrower model would have read its text too often for what it
  can hold, a wider one too little for what it could learn. Under --time-budget the tokens
  each width would read come from timing a few real training steps of it on the run's
  device, at the run's precision and thread count (times SUSTAINED_PACE: a whole run is a
  little slower than its first steps): a faster machine, or bf16, gets a wider model for
  the same budget. Under --epochs or --max-steps they are known.
- dropout: by how many times the chosen model will read its text (DROPOUT_BY_PASSES).
- learning rate: the cell's (LR_BY_CELL) up to LR_STEADY_STEPS steps of the run, then
  falling as one over the square root of the run's steps: a GRU at 0.01 for ten minutes
  lets its gradients grow until the loss climbs, and even before that, long runs learn more
  at a lower rate.

Any of --hidden, --layers, --dropout keeps the model as given, and --lr keeps the rate.
"""

from __future__ import annotations

import gc
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import (
    CELL_TOKENS_PER_PARAM,
    CELL_WIDTHS,
    DROPOUT_BY_PASSES,
    LR_BY_CELL,
    LR_STEADY_STEPS,
    TOKENS_PER_PARAM,
    WIDTHS,
    ModelConfig,
    TrainConfig,
)
from .errors import CharlmError

GIVEN_BY_USER = ("hidden", "layers", "dropout")  # any of these: the user sizes the model
PROBE_SECONDS = 0.3  # timed steps of the probe, after two untimed ones
# A run keeps up a little less than the pace of the probe's first steps: the runs of
# bench/README.md read 0.93 and 0.84 (float32, AVX2; 107 s and 600 s) and 0.78 (bf16,
# AVX512-BF16; both) of the tokens their probe expected.
SUSTAINED_PACE = 0.85


def plan_run(model_config: ModelConfig, config: TrainConfig, train_tokens: np.ndarray, given: dict[str, Any],
             device: torch.device, world: int = 1) -> tuple[ModelConfig, float, str | None]:
    """(the model, the peak learning rate, the reason the model was resized or None) for a new run.

    `given` holds the model options the user gave; `world` is the number of processes, each
    reading its own share of `train_tokens`. A probe that fails (a non-finite step, no memory
    for it on a GPU) leaves the model as it stands and the cell's own rate."""
    timer = _StepTimer(config, train_tokens, device)
    reason = None
    if not any(given.get(key) is not None for key in GIVEN_BY_USER):
        try:
            model_config, reason = choose_model(model_config, config, len(train_tokens), world, timer)
        except (CharlmError, torch.OutOfMemoryError):
            pass
    lr = config.lr
    if lr is None:
        lr = LR_BY_CELL[model_config.cell]
        if math.isfinite(LR_STEADY_STEPS[model_config.cell]):  # the rate follows the run's length
            try:
                tokens = planned_tokens(config, len(train_tokens), world, lambda: timer(model_config))
                lr = learning_rate(model_config.cell, tokens / (config.batch_size * config.seq_len * world))
            except (CharlmError, torch.OutOfMemoryError):
                pass
    return model_config, lr, reason


def choose_model(model_config: ModelConfig, config: TrainConfig, n_train: int, world: int,
                 time_step: Callable[[ModelConfig], float]) -> tuple[ModelConfig, str | None]:
    """The one of the cell's widths whose tokens per parameter come closest to the cell's goal,
    with the dropout for its passes over the text; with the reason when that is not `model_config`.
    `time_step(model)` gives the seconds of one step of `model`, and is called only under a
    time budget, from the narrowest width up, while wider ones still have a chance."""
    from .model import CharRNN

    candidates = []
    goal = CELL_TOKENS_PER_PARAM.get(model_config.cell, TOKENS_PER_PARAM)
    for width in CELL_WIDTHS.get(model_config.cell, WIDTHS):
        candidate = replace(model_config, hidden=width, dropout=0.0)
        candidates.append(candidate)
        if planned_tokens(config, n_train, world, lambda: time_step(candidate)) <= \
                goal * CharRNN(candidate).num_params():
            break  # wider models read fewer tokens still, for more parameters: further off

    def off(candidate: ModelConfig) -> float:  # how far its tokens per parameter are from the goal, as a log ratio
        reads = planned_tokens(config, n_train, world, lambda: time_step(candidate))  # timed once, above
        return abs(math.log(reads / CharRNN(candidate).num_params() / goal))

    chosen = min(candidates, key=off)
    tokens = planned_tokens(config, n_train, world, lambda: time_step(chosen))
    passes = tokens / n_train
    chosen = replace(chosen, dropout=dropout_for(passes))
    if (chosen.hidden, chosen.dropout) == (model_config.hidden, model_config.dropout):
        return model_config, None
    reason = (f"this run will read about {_count(tokens)} training tokens ({passes:.1f} passes over its text): "
              f"using {chosen.hidden} units" + (f" and dropout {chosen.dropout:g}" if chosen.dropout else "")
              + ", which learn the most from that (pass --hidden, --layers or --dropout to choose yourself)")
    return chosen, reason


def dropout_for(passes: float) -> float:
    """Dropout for a model that reads its text `passes` times: none for a few, more for many."""
    return next(dropout for most, dropout in DROPOUT_BY_PASSES if passes <= most)


def learning_rate(cell: str, steps: float) -> float:
    """Peak learning rate of a `cell` run of about `steps` optimizer steps."""
    steady = LR_STEADY_STEPS[cell]
    return LR_BY_CELL[cell] * min(1.0, math.sqrt(steady / steps)) if steps > steady else LR_BY_CELL[cell]


def planned_tokens(config: TrainConfig, n_train: int, world: int, time_step: Callable[[], float]) -> float:
    """How many training tokens the run reads before its first stop (all processes together).
    `time_step()`, the seconds of one step, is called only where a time budget may decide."""
    per_step = config.batch_size * config.seq_len * world
    reads = []
    if config.epochs:
        reads.append(config.epochs * n_train)
    if config.max_steps:
        reads.append(config.max_steps * per_step)
    if config.time_budget:
        reads.append(SUSTAINED_PACE * config.time_budget / time_step() * per_step)
    return min(reads) if reads else float(n_train)


class _StepTimer:
    """Seconds per step of each model tried (seconds_per_step), the fastest of its timings.

    A model timed after another is followed by a second timing of that other one, so that
    a machine whose load changes during the probes slows both alike, not only the first."""

    def __init__(self, config: TrainConfig, train_tokens: np.ndarray, device: torch.device):
        self.config, self.train_tokens, self.device = config, train_tokens, device
        self.timed: dict[str, tuple[ModelConfig, float]] = {}

    def __call__(self, model_config: ModelConfig) -> float:
        model_config = replace(model_config, dropout=0.0)  # dropout costs next to nothing
        key = repr(model_config)
        if key not in self.timed:
            previous = next(reversed(self.timed.items()), None)
            self.timed[key] = (model_config, self._time(model_config))
            if previous is not None:
                other, seconds = previous[1]
                self.timed[previous[0]] = (other, min(seconds, self._time(other)))
        return self.timed[key][1]

    def _time(self, model_config: ModelConfig) -> float:
        return seconds_per_step(model_config, self.config, self.train_tokens, self.device)


def seconds_per_step(model_config: ModelConfig, config: TrainConfig, train_tokens: np.ndarray,
                     device: torch.device) -> float:
    """Time real training steps (charlm's Trainer, its optimizer and precision) of `model_config`
    on `device`: the median of those that fit in PROBE_SECONDS, after two to warm up."""
    from .directions import build_model
    from .train import Trainer  # train imports this module

    times: list[float] = []
    # The run's seed stays where it was, and anything the probe might write goes nowhere.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            tempfile.TemporaryDirectory(prefix="charlm-probe-") as folder:
        trainer = Trainer(build_model(model_config), None, train_tokens, train_tokens[:0], 0, replace(config),
                          Path(folder), device)
        for i in range(2 + 50):
            t0 = time.perf_counter()
            trainer.train_step()
            if device.type == "cuda":  # the step is queued, not done, until the device says so
                torch.cuda.synchronize(device)
            elif device.type == "mps":
                torch.mps.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
                if sum(times) > PROBE_SECONDS:
                    break
        del trainer
    gc.collect()  # the probe's model and optimizer state go now, not whenever a cycle is collected
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return float(np.median(times))


def _count(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"
