"""The settings of a run, as dataclasses: the model's shape and how it is trained.

They are saved with `asdict` in every checkpoint and rebuilt from it. This module imports
no torch, so the command line can show the defaults in its help without loading it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import UsageError

CELLS = ("rnn", "gru", "lstm")
PRECISIONS = ("auto", "fp32", "bf16")  # of a training step (precision.py)
NUM_BYTES = 256  # a vocabulary's byte-fallback tokens, one per byte value
SCHEDULES = ("linear", "cosine", "constant")
# Which way a model reads its text (directions.py): left to right, right to left, or both
# ways as two language models (a biLM); "bidirectional" is the single model that cheats (cheat.py).
DIRECTIONS = ("forward", "backward", "both", "bidirectional")


@dataclass
class TrainConfig:
    """How a model is trained. The defaults are tuned for quality per second of a laptop CPU
    (bench/tune.py, bench/README.md): on a CPU the number of optimizer steps matters more
    than the characters each one sees, so batches are small and the learning rate high."""

    batch_size: int = 16
    seq_len: int = 64
    lr: float | None = None  # None: the cell's rate, lower for a long run (sizing.py, LR_BY_CELL below)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 turns clipping off
    warmup_steps: int = 200  # decaying schedules: or a tenth of the run, if shorter (bench/README.md)
    schedule: str = "linear"  # decay to min_lr_fraction * lr at the stop; "constant" never decays
    min_lr_fraction: float = 0.01
    max_steps: int | None = None
    epochs: float | None = None
    time_budget: float | None = None  # seconds of training, across resumes
    val_fraction: float = 0.1
    checkpoint_every: int | None = None  # steps; last.pt is also written at every validation
    sample_length: int = 200
    seed: int = 1337
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast where the device has native bf16 (precision.py)
    tokenizer: str = "char"
    vocab_size: int | None = None
    # The probability that a step's input is the true previous character rather than one drawn
    # from the model (scheduled sampling, scheduled.py); with teacher_forcing_end it goes
    # linearly from the one to the other over the run. 1.0: always the truth, the fused fast path.
    teacher_forcing: float = 1.0
    teacher_forcing_end: float | None = None

    def validate(self) -> None:
        positive = ["batch_size", "seq_len", "lr", "max_steps", "epochs", "time_budget", "checkpoint_every"]
        for name in positive:
            value = getattr(self, name)
            if value is not None and not value > 0:  # written so that nan fails too
                raise UsageError(f"--{name.replace('_', '-')}: must be positive, got {value}")
        for name in ("lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if value is None:  # lr: chosen for the run
                continue
            if math.isnan(value) or (math.isinf(value) and name != "grad_clip"):  # inf clip: no clipping
                raise UsageError(f"--{name.replace('_', '-')}: must be a finite number, got {value}")
        if not -(2**63) <= self.seed < 2**64:  # what torch's generators accept
            raise UsageError(f"--seed: must fit in 64 bits, got {self.seed}")
        if not 0 <= self.val_fraction < 1:
            raise UsageError(f"--val-fraction: must be in [0, 1), got {self.val_fraction}")
        if self.grad_clip < 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise UsageError("--grad-clip, --weight-decay and --warmup-steps must not be negative")
        for name in ("teacher_forcing", "teacher_forcing_end"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:  # nan fails too
                raise UsageError(f"--teacher-forcing: a probability must be in [0, 1], got {value}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"--schedule: expected one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def stop_given(self) -> bool:
        return any(v is not None for v in (self.max_steps, self.epochs, self.time_budget))



@dataclass
class ModelConfig:
    vocab_size: int
    cell: str = "lstm"
    layers: int = 1
    # The defaults suit a run of a minute or two on a CPU; a run that reads more gets a wider
    # model, and dropout for the passes it makes, unless the user sized it (sizing.py).
    hidden: int = 256  # the narrowest of WIDTHS below
    embedding: int = 64  # characters need few dimensions; the recurrent matrix dominates the cost
    dropout: float = 0.0  # short CPU runs see each character a few times at most: no overfitting to fight
    # First id of the tokenizer's 256 byte-fallback tokens (-1: none). The head then scores the
    # real symbols plus one "some byte" escape, and a second small head picks the byte only
    # where one is needed: the 256 byte rows, rare in any text, cost nothing per character.
    bytes_from: int = -1
    # Which way the model reads (DIRECTIONS); checkpoints from before it existed read forward.
    direction: str = "forward"


# What a new run gets where the user did not choose (sizing.py; measured in bench/README.md).
# The model, unless --hidden, --layers or --dropout is given: the one of WIDTHS whose training
# tokens per parameter come closest (by ratio) to TOKENS_PER_PARAM, with the dropout of
# DROPOUT_BY_PASSES for the passes it will make over its text: (at most this many, dropout).
# 384 units learned less per character than 512 in every run; 768 (without dropout) beat 512 at 600 s on a CPU with
# bf16 (bench/README.md), measured for an LSTM only: the other cells stop at 512.
WIDTHS = (256, 512, 768)
CELL_WIDTHS = {"gru": (256, 512), "rnn": (256, 512)}
TOKENS_PER_PARAM = 3.0  # the 107 s and 250 s runs of bench/README.md place it between 2.45 and 5.85
# A GRU needs more: 512 units lost to 256 at 1.7 and 3.7 tokens per parameter and won at 8.2
# (bench/README.md), which places its goal between 9.2 and 22.
CELL_TOKENS_PER_PARAM = {"gru": 10.0}
# A 768-wide LSTM did best without dropout at 5.3 passes, a 512-wide one with 0.1 at 6.5 and
# with 0.2 at 8.8 (bench/README.md).
DROPOUT_BY_PASSES = ((6.0, 0.0), (8.0, 0.1), (math.inf, 0.2))
# The peak learning rate, unless --lr is given: the cell's, for a run of up to its steady
# number of steps; a longer run gets the rate times sqrt(steady steps / its steps).
LR_BY_CELL = {"lstm": 1e-2, "gru": 1e-2, "rnn": 1e-2}
LR_STEADY_STEPS = {"lstm": math.inf, "gru": 1800.0, "rnn": 1800.0}
