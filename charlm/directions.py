"""Which way a model reads: forward, backward, or both ways as a biLM.

A backward model is an ordinary CharRNN that reads the token sequence from its end to its
start and predicts the previous token. The text is tokenized as always (left to right) and
only the order of the ids is turned round, so a backward model scores the same token
sequence as a forward one: both figures are -log p(text) per character, by the chain rule
taken one way or the other, and can be compared directly.

`--direction both` trains the pair in one run (`BiLM`, in the style of ELMo's biLM): two
language models over the same text, one forward, one backward, each with its own weights,
one optimizer and one checkpoint. A training batch holds the forward model's streams in its
first half and the backward model's (over the reversed training split) in its second; the
carried state holds each stream's two states side by side, so it is twice as wide. Where
the states are looked at (inspect-neurons) they are lined up by character: at character i
the forward state has read the text up to i and the backward state the text from its end
down to i, and the backward units get state names of their own (`h<`, `c<`, ...).

A single bidirectional RNN trained to predict the next character is not a language model
(cheat.py); this module lists it as a reader of its own kind so that every command can
refuse or flag it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn

from .config import ModelConfig, TrainConfig
from .data import StreamBatches
from .errors import UsageError
from .evaluate import EvalResult, evaluate_tokens
from .model import CharRNN, Hidden

BACKWARD_MARK = "<"  # ends the state names of backward units: h<, c<, forget<
_SUFFIX = {"forward": "", "backward": BACKWARD_MARK, "bidirectional": ""}


@dataclass
class Reader:
    """One language model of a checkpoint and the way it reads its text."""

    direction: str  # forward, backward, or bidirectional (the cheat: no language model)
    model: CharRNN

    @property
    def backward(self) -> bool:
        return self.direction == "backward"

    @property
    def suffix(self) -> str:
        """What ends the names of this model's states: '' forward, '<' backward."""
        return _SUFFIX[self.direction]

    def order(self, tokens: np.ndarray) -> np.ndarray:
        """Token ids in the order this model reads them (a view, however long)."""
        return tokens[::-1] if self.backward else tokens


class BiLM(nn.Module):
    """Two language models over the same text: `forward_lm` reads left to right and predicts
    the next token, `backward_lm` reads right to left and predicts the previous one."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.forward_lm = CharRNN(replace(config, direction="forward"))
        self.backward_lm = CharRNN(replace(config, direction="backward"))
        self.factored = self.forward_lm.factored

    def init_hidden(self, batch: int, device: torch.device | str = "cpu") -> Hidden:
        return join_states(self.forward_lm.init_hidden(batch, device), self.backward_lm.init_hidden(batch, device))

    def forward(self, idx: torch.Tensor, hidden: Hidden | None = None, targets: torch.Tensor | None = None,
                teacher_forcing: float = 1.0) -> tuple[torch.Tensor | None, torch.Tensor | None, Hidden]:
        """idx (2B, T): B forward streams, then B backward ones; hidden (layers, B, 2H) or None.
        With targets (2B, T), the loss is the mean of the two models' losses (the same number
        of tokens each); without, the logits of both, stacked like idx."""
        half = idx.shape[0] // 2
        hf, hb = split_states(hidden) if hidden is not None else (None, None)
        tf, tb = (targets[:half], targets[half:]) if targets is not None else (None, None)
        logits_f, loss_f, hf = self.forward_lm(idx[:half], hf, tf, teacher_forcing)
        logits_b, loss_b, hb = self.backward_lm(idx[half:], hb, tb, teacher_forcing)
        if targets is None:
            return torch.cat([logits_f, logits_b]), None, join_states(hf, hb)
        return None, (loss_f + loss_b) / 2, join_states(hf, hb)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def join_states(forward: Hidden, backward: Hidden) -> Hidden:
    """Two models' states (layers, B, H) -> one (layers, B, 2H), the forward model's first."""
    if isinstance(forward, tuple):
        return tuple(torch.cat([f, b], dim=-1) for f, b in zip(forward, backward))  # type: ignore[return-value]
    return torch.cat([forward, backward], dim=-1)


def split_states(hidden: Hidden) -> tuple[Hidden, Hidden]:
    """The inverse of join_states."""
    if isinstance(hidden, tuple):
        pairs = [h.chunk(2, dim=-1) for h in hidden]
        return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)  # type: ignore[return-value]
    return hidden.chunk(2, dim=-1)  # type: ignore[return-value]


def build_model(config: ModelConfig) -> CharRNN | BiLM:
    """The module a config describes: a BiLM for "both", else a CharRNN."""
    return BiLM(config) if config.direction == "both" else CharRNN(config)


def readers(model: CharRNN | BiLM) -> list[Reader]:
    """The language models of `model`, forward first."""
    if isinstance(model, BiLM):
        return [Reader("forward", model.forward_lm), Reader("backward", model.backward_lm)]
    return [Reader(model.config.direction, model)]


def choose_reader(model: CharRNN | BiLM, backward: bool, path: str) -> Reader:
    """The language model `charlm sample` writes with: the backward one with --backward."""
    found = readers(model)
    if backward:
        for reader in found:
            if reader.backward:
                return reader
        raise UsageError(f"--backward: {path} reads {found[0].direction}, not backward; train a model with "
                         "--direction backward or both to write text that leads up to --prime")
    if found[0].backward:
        raise UsageError(f"{path}: a backward model writes the text that leads up to --prime: add --backward")
    return found[0]


def state_suffixes(direction: str) -> list[str]:
    """The endings of a model's state names, forward first: ['', '<'] for a biLM."""
    return {"both": ["", BACKWARD_MARK], "backward": [BACKWARD_MARK]}.get(direction, [""])


def split_state_name(name: str) -> tuple[str, str]:
    """'forget<' -> ('forget', '<'); 'h' -> ('h', '')."""
    if name.endswith(BACKWARD_MARK):
        return name[: -len(BACKWARD_MARK)], BACKWARD_MARK
    return name, ""


def training_batches(direction: str, tokens: np.ndarray, batch_size: int, seq_len: int, rank: int = 0,
                     world: int = 1) -> StreamBatches | PairedBatches:
    """The training batches a model of `direction` reads from the training split `tokens`."""
    if direction == "backward":
        return StreamBatches(tokens[::-1], batch_size, seq_len, rank, world)
    if direction == "both":
        return PairedBatches(StreamBatches(tokens, batch_size, seq_len, rank, world),
                             StreamBatches(tokens[::-1], batch_size, seq_len, rank, world))
    return StreamBatches(tokens, batch_size, seq_len, rank, world)


class PairedBatches:
    """A biLM's batches: batch i of the forward streams on top of batch i of the backward ones."""

    def __init__(self, forward: StreamBatches, backward: StreamBatches):
        self.forward, self.backward = forward, backward
        self.batch_size, self.seq_len = forward.batch_size, forward.seq_len
        self.batches_per_epoch = min(forward.batches_per_epoch, backward.batches_per_epoch)

    def get(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets, both (2 * batch_size, seq_len) int64."""
        (xf, yf), (xb, yb) = self.forward.get(index), self.backward.get(index)
        return torch.cat([xf, xb]), torch.cat([yf, yb])


def evaluate_readers(model: CharRNN | BiLM, tokens: np.ndarray, count_chars: Callable[[np.ndarray], int],
                     device="cpu") -> dict[str, EvalResult]:
    """Each language model's loss over `tokens` read its own way: {direction: result}. Every
    token but the one read first is predicted, so each direction counts its own characters."""
    results = {}
    for reader in readers(model):
        ordered = reader.order(tokens)
        chars = count_chars(ordered[1:]) if len(ordered) > 1 else 0
        results[reader.direction] = evaluate_tokens(reader.model, ordered, chars, device)
    return results


def progress_sample(model: CharRNN | BiLM, tokenizer, length: int, generator: torch.Generator,
                    device, bytes_seen: bool = True) -> str:
    """The sample training shows: forward text; for a backward model, text leading up to a
    line's end, in reading order; for a biLM, its forward model's. `bytes_seen` False: the
    training text had no byte tokens, so none is drawn (sample.TokenChooser)."""
    from .backward import generate_backward
    from .cheat import generate_cheating
    from .sample import generate

    reader = readers(model)[0]
    options = {"temperature": 0.8, "generator": generator, "device": device}
    if reader.direction == "bidirectional":
        return generate_cheating(reader.model, tokenizer, "", length, **options)[0]
    if reader.direction == "backward":
        return generate_backward(reader.model, tokenizer, "", length, bytes_seen=bytes_seen, **options)[0]
    return "".join(generate(reader.model, tokenizer, prime="", length=length, bytes_seen=bytes_seen, **options))


def check_supported(direction: str, config: TrainConfig, distributed: bool, device: torch.device) -> None:
    """What a model of `direction` cannot train with yet, as a usage error naming the option."""
    if direction == "both" and distributed:
        raise UsageError("--direction both: not supported under torchrun yet; train it in one process")
    if direction == "both" and device.type != "cpu":
        raise UsageError(f"--direction both: trains on the CPU only for now, not on {device.type}; "
                         "add --device cpu")
    lowest = min(config.teacher_forcing, 1.0 if config.teacher_forcing_end is None else config.teacher_forcing_end)
    if direction == "bidirectional" and lowest < 1:
        raise UsageError("--teacher-forcing: the cheating bidirectional model reads whole chunks both ways, "
                         "so it cannot be fed its own characters one at a time")
