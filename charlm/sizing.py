"""The model a new run gets when its size is not given: the default, or for a run that will
read its text many times, a wider one with dropout.

ModelConfig's defaults are tuned for quality per second of runs of a few minutes on a CPU,
which read the text a few times at most. A longer run memorizes with them: ten minutes of the
default LSTM read tinyshakespeare about 17 times and score worse on held-out text than two
minutes do, while a 512-wide LSTM with dropout 0.2 uses the ten minutes well (bench/README.md).
So when a run will read its text more than LONG_RUN_PASSES times, and the user gave none of
--hidden, --layers, --dropout, it gets LONG_RUN instead.

The number of passes is known from --epochs or --max-steps. For --time-budget it is estimated
by timing a few real training steps of the default model on the run's device.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import LONG_RUN, LONG_RUN_PASSES, ModelConfig, TrainConfig

GIVEN_BY_USER = ("hidden", "layers", "dropout")  # any of these: the user sizes the model
PROBE_SECONDS = 0.3  # timed steps of the probe, after two untimed ones


def choose_model(model_config: ModelConfig, config: TrainConfig, train_tokens: np.ndarray, given: dict[str, Any],
                 device: torch.device, out_dir: Path, world: int = 1) -> tuple[ModelConfig, str | None]:
    """`model_config` as it stands, or resized for a long run; with the reason when resized.

    `given` holds the model options the user gave; `out_dir` is the run's folder; `world` is
    the number of processes, each reading its own share of `train_tokens`."""
    if any(given.get(key) is not None for key in GIVEN_BY_USER):
        return model_config, None
    passes = planned_passes(config, len(train_tokens), world,
                            lambda: seconds_per_step(model_config, config, train_tokens, device, out_dir))
    if passes <= LONG_RUN_PASSES:
        return model_config, None
    resized = ModelConfig(**{**vars(model_config), **LONG_RUN})
    reason = (f"this run will read its text about {passes:.0f} times: a {resized.hidden}-wide model with "
              f"dropout {resized.dropout:g} learns more from that than the default, which would memorize it "
              "(--hidden, --layers or --dropout choose for yourself)")
    return resized, reason


def planned_passes(config: TrainConfig, n_train: int, world: int, step_seconds) -> float:
    """How many times the run reads its n_train training tokens before its first stop.
    `step_seconds()` is called only for a time budget."""
    tokens_per_step = config.batch_size * config.seq_len * world
    passes = []
    if config.epochs:
        passes.append(config.epochs)
    if config.max_steps:
        passes.append(config.max_steps * tokens_per_step / n_train)
    if config.time_budget:
        passes.append(config.time_budget / step_seconds() * tokens_per_step / n_train)
    return min(passes) if passes else 1.0


def seconds_per_step(model_config: ModelConfig, config: TrainConfig, train_tokens: np.ndarray,
                     device: torch.device, out_dir: Path) -> float:
    """Time real training steps (charlm's Trainer, its optimizer and autocast) of `model_config`
    on `device`: the median of those that fit in PROBE_SECONDS, after two to warm up."""
    from .model import CharRNN
    from .train import Trainer  # train imports this module

    times: list[float] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the run's seed stays
        trainer = Trainer(CharRNN(model_config), None, train_tokens, train_tokens[:0], 0, config, out_dir, device)
        for i in range(2 + 50):
            t0 = time.perf_counter()
            trainer.train_step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= 2:
                times.append(time.perf_counter() - t0)
                if sum(times) > PROBE_SECONDS and len(times) >= 3:
                    break
    return float(np.median(times))
