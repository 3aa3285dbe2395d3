"""Teacher forcing and scheduled sampling: whose character a training step reads next.

Training normally feeds the true previous character at every step (teacher forcing), so
a whole chunk runs through the fused recurrent kernel at once. `--teacher-forcing P` with
P < 1 feeds, at each step after a chunk's first, the true character with probability P and
otherwise one drawn from the model's own prediction at the step before (scheduled sampling,
Bengio et al. 2015): drawn from the full softmax at temperature 1, as the paper does, and
treated as a constant, so no gradient flows through the draw (nor in the paper). The
targets stay the true next characters. A coin is tossed per stream and per step. Since a
step's input then depends on the step before's output, the chunk runs one character at a
time through the cell functions (`CharRNN.advance`), several times slower than the fused
kernel. The first input of every chunk is always the true character: the draw that would
replace it belongs to the step before, which the previous optimizer step has already taken.

`--teacher-forcing START:END` moves the probability linearly from START to END over the
run, by the same measure of progress as the learning-rate schedule (steps, epochs or time).
At exactly 1 the step takes the fused path, bit for bit what it always did.
"""

from __future__ import annotations

import torch

from .config import TrainConfig
from .errors import UsageError
from .model import CharRNN, Hidden
from .sample import draw


def parse_teacher_forcing(text: str, option: str = "--teacher-forcing") -> tuple[float, float | None]:
    """'0.5' -> (0.5, None), constant; '1:0' -> (1.0, 0.0), linear over the run."""
    parts = text.split(":")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise UsageError(f"{option}: expected a probability P or a schedule START:END, got {text!r}")
    for value in values:
        if not 0 <= value <= 1:
            raise UsageError(f"{option}: a probability must be in [0, 1], got {value:g}")
    return values[0], (values[1] if len(values) == 2 else None)


def describe(start: float, end: float | None) -> str:
    """The setting as the user would write it: '0.5' or '1:0'."""
    return f"{start:g}" if end is None or end == start else f"{start:g}:{end:g}"


def always_forced(config: TrainConfig) -> bool:
    """True when every input of the run is the true character (the default)."""
    return config.teacher_forcing == 1 and config.teacher_forcing_end in (None, 1)


def teacher_forcing_at(config: TrainConfig, progress: float) -> float:
    """The probability of a true input at `progress` (0..1) through the run."""
    if config.teacher_forcing_end is None:
        return config.teacher_forcing
    progress = min(max(progress, 0.0), 1.0)
    return config.teacher_forcing + (config.teacher_forcing_end - config.teacher_forcing) * progress


def sampled_top_outputs(model: CharRNN, idx: torch.Tensor, hidden: Hidden | None,
                        teacher_forcing: float) -> tuple[torch.Tensor, Hidden]:
    """Like `model.top_outputs`, one step at a time: idx (B, T) -> top outputs (B, T, H), new hidden.

    Input t > 0 of each stream is idx[:, t] with probability `teacher_forcing`, else a token
    drawn from the model's prediction at step t - 1 (no gradient through the draw)."""
    batch, steps = idx.shape
    if hidden is None:
        hidden = model.init_hidden(batch, idx.device)
    # One coin per stream and step, tossed up front; the first column is never used.
    true_input = torch.rand(batch, steps, device=idx.device) < teacher_forcing
    outputs = []
    token = idx[:, 0]
    for t in range(steps):
        if t > 0:
            with torch.no_grad():
                probs = torch.softmax(model.logits(outputs[-1]).float(), dim=-1)  # (B, V)
                drawn = draw(probs, None)  # the global generator, whose state checkpoints keep
            token = torch.where(true_input[:, t], idx[:, t], drawn)
        top, hidden = model.advance(model.drop(model.embed(token)), hidden)  # (B, H)
        outputs.append(model.drop(top))
    return torch.stack(outputs, dim=1), hidden  # (B, T, H)
