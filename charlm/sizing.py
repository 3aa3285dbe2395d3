"""The model a new run gets when its size is not given: the default, or for a run that will
read its text many times, a wider one with dropout.

ModelConfig's defaults are tuned for quality per second of runs of a few minutes on a CPU,
which read the text a few times at most. A longer run memorizes with them: ten minutes of the
default LSTM read tinyshakespeare 18 times and score worse on held-out text than two
minutes do, while a 512-wide LSTM with dropout 0.2 uses the ten minutes well (bench/README.md).
So when a run will read its text more than LONG_RUN_PASSES times, and the user gave none of
--hidden, --layers, --dropout, it gets LONG_RUN instead.

The number of passes is known from --epochs or --max-steps. For --time-budget it is estimated
by timing a few real training steps of the default model on the run's device.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import LONG_RUN, LONG_RUN_PASSES, ModelConfig, TrainConfig
from .errors import CharlmError

GIVEN_BY_USER = ("hidden", "layers", "dropout")  # any of these: the user sizes the model
PROBE_SECONDS = 0.3  # timed steps of the probe, after two untimed ones


def choose_model(model_config: ModelConfig, config: TrainConfig, train_tokens: np.ndarray, given: dict[str, Any],
                 device: torch.device, world: int = 1) -> tuple[ModelConfig, str | None]:
    """`model_config` as it stands, or resized for a long run; with the reason when resized.

    `given` holds the model options the user gave; `world` is the number of processes, each
    reading its own share of `train_tokens`. A probe that fails (a non-finite step, no
    memory for it on a GPU) leaves the model as it stands."""
    if any(given.get(key) is not None for key in GIVEN_BY_USER):
        return model_config, None
    try:
        passes = planned_passes(config, len(train_tokens), world,
                                lambda: seconds_per_step(model_config, config, train_tokens, device))
    except (CharlmError, torch.OutOfMemoryError):
        return model_config, None
    if passes <= LONG_RUN_PASSES:
        return model_config, None
    resized = ModelConfig(**{**vars(model_config), **LONG_RUN})
    reason = (f"with the default model this run would read its text about {passes:.1f} times and memorize it: "
              f"using {resized.hidden} units and dropout {resized.dropout:g}, which learn more from that "
              "(pass --hidden, --layers or --dropout to choose yourself)")
    return resized, reason


def planned_passes(config: TrainConfig, n_train: int, world: int, time_step: Callable[[], float]) -> float:
    """How many times the run reads its n_train training tokens before its first stop.
    `time_step()`, the seconds of one step, is called only where a time budget decides."""
    tokens_per_step = config.batch_size * config.seq_len * world
    passes = []
    if config.epochs:
        passes.append(config.epochs)
    if config.max_steps:
        passes.append(config.max_steps * tokens_per_step / n_train)
    # No need to time a step when another stop already makes the run short.
    if config.time_budget and not (passes and min(passes) <= LONG_RUN_PASSES):
        passes.append(config.time_budget / time_step() * tokens_per_step / n_train)
    return min(passes) if passes else 1.0


def seconds_per_step(model_config: ModelConfig, config: TrainConfig, train_tokens: np.ndarray,
                     device: torch.device) -> float:
    """Time real training steps (charlm's Trainer, its optimizer and autocast) of `model_config`
    on `device`: the median of those that fit in PROBE_SECONDS, after two to warm up."""
    from .directions import build_model
    from .train import Trainer  # train imports this module

    times: list[float] = []
    # The run's seed stays where it was, and anything the probe might write goes nowhere.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            tempfile.TemporaryDirectory(prefix="charlm-probe-") as folder:
        trainer = Trainer(build_model(model_config), None, train_tokens, train_tokens[:0], 0, config, Path(folder),
                          device)
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
