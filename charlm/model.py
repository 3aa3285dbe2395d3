"""The character-level recurrent language model: embedding -> stacked RNN -> linear head.

`forward` runs whole sequences through PyTorch's fused nn.LSTM / nn.GRU / nn.RNN (cuDNN on
a GPU, oneDNN on a CPU): that is the fast path for training and evaluation. `step` advances
one character at a time with the cell functions (`torch.lstm_cell`, ...) over the same
weights; on a CPU that is about ten times faster than calling the fused module once per
character, which is what sampling does. A test holds the two paths equal.

The head is factored when the vocabulary has byte-fallback tokens (it always does when
charlm made it): one softmax over the real symbols plus an escape, and a 256-way byte
softmax after the escape. Byte tokens stand only for characters unseen in training, so
training and evaluation almost never compute the byte softmax; with 65 characters, the
factored head is a fifth of the size of a plain one over all 322 tokens.

With a teacher-forcing probability below 1, `forward` runs the cells one character at a
time with gradients (`advance`), since an input may be the model's own draw from the step
before (scheduled.py). A model's `config.direction` says which way it reads its text
(directions.py); the model itself always reads the ids it is given in order. Only the
"bidirectional" model of `charlm train --cheat-demo` (cheat.py) differs here: its recurrent
layers also run right to left, and the head reads both directions' outputs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import CELLS, NUM_BYTES, ModelConfig

IGNORE = -100  # a target that counts for nothing (padding)

# An LSTM's state is (h, c); a GRU's or RNN's is h alone. Each tensor is (layers, batch, hidden).
Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.cell not in CELLS:
            raise ValueError(f"unknown cell {config.cell!r}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embedding)
        rnn_class = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[config.cell]
        self.reads_ahead = config.direction == "bidirectional"  # the cheat of cheat.py
        self.rnn = rnn_class(
            config.embedding,
            config.hidden,
            config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
            bidirectional=self.reads_ahead,
        )
        self.drop = nn.Dropout(config.dropout)
        self.factored = config.bytes_from >= 0
        width = config.hidden * (2 if self.reads_ahead else 1)  # what the head reads
        if self.factored:
            # Real symbols plus one escape meaning "a byte token"; the byte itself comes from byte_head.
            self.head = nn.Linear(width, config.vocab_size - NUM_BYTES + 1)
            self.byte_head = nn.Linear(width, NUM_BYTES)
        else:
            self.head = nn.Linear(width, config.vocab_size)
        if config.cell == "lstm":
            # Start with the forget gate open, so memory survives from the first step.
            hidden = config.hidden
            for layer in range(config.layers):
                for suffix in ("", "_reverse") if self.reads_ahead else ("",):
                    with torch.no_grad():
                        getattr(self.rnn, f"bias_ih_l{layer}{suffix}")[hidden : 2 * hidden].fill_(1.0)
                        getattr(self.rnn, f"bias_hh_l{layer}{suffix}")[hidden : 2 * hidden].zero_()

    def init_hidden(self, batch: int, device: torch.device | str = "cpu") -> Hidden:
        shape = (self.config.layers * (2 if self.reads_ahead else 1), batch, self.config.hidden)
        h = torch.zeros(shape, device=device)
        return (h, torch.zeros_like(h)) if self.config.cell == "lstm" else h

    def forward(
        self, idx: torch.Tensor, hidden: Hidden | None = None, targets: torch.Tensor | None = None,
        teacher_forcing: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor | None, Hidden]:
        """idx (B, T) token ids -> (logits (B, T, V), None, new hidden); with targets given,
        (None, mean cross-entropy, new hidden): training never builds the full scores.

        teacher_forcing < 1: each input after the first is idx's with that probability, else
        the model's own draw from the step before (scheduled.py); slower, one step at a time."""
        if teacher_forcing < 1:
            from .scheduled import sampled_top_outputs  # scheduled imports this module

            out, hidden = sampled_top_outputs(self, idx, hidden, teacher_forcing)
        else:
            out, hidden = self.top_outputs(idx, hidden)
        if targets is None:
            return self.logits(out), None, hidden
        # Training needs the loss only: the full (B, T, V) scores are never built.
        nll = self.token_nll(out, targets)
        return None, nll.sum() / (targets != IGNORE).sum().clamp_min(1), hidden

    def top_outputs(self, idx: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        """idx (B, T) token ids -> the top layer's outputs (B, T, H), which the head reads, and the new hidden."""
        x = self.drop(self.embed(idx))  # (B, T, E)
        out, hidden = self.rnn(x, hidden)  # (B, T, H)
        return self.drop(out), hidden

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """Top-layer outputs (..., H) -> scores over the whole vocabulary (..., V).

        With the byte head these are log-probabilities; softmax gives the same distribution."""
        if not self.factored:
            return self.head(out)
        main = F.log_softmax(_wide(self.head(out)), dim=-1)
        byte = main[..., -1:] + F.log_softmax(_wide(self.byte_head(out)), dim=-1)
        b0 = self.config.bytes_from
        return torch.cat([main[..., :b0], byte, main[..., b0:-1]], dim=-1)

    def token_nll(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """-log p(target) at each position of `out` (..., H); 0 where the target is IGNORE (-100)."""
        flat, t = out.reshape(-1, out.size(-1)), targets.reshape(-1)
        if not self.factored:
            nll = F.cross_entropy(_wide(self.head(flat)), t, ignore_index=IGNORE, reduction="none")
            return nll.view(targets.shape)
        b0 = self.config.bytes_from
        is_byte = (t >= b0) & (t < b0 + NUM_BYTES)
        escape = self.head.out_features - 1
        main_t = torch.where(t < b0, t, torch.where(is_byte, escape, t - NUM_BYTES))  # IGNORE stays IGNORE
        nll = F.cross_entropy(_wide(self.head(flat)), main_t, ignore_index=IGNORE, reduction="none")
        if flat.is_cuda:  # no host sync: score the byte head everywhere, keep it where needed
            byte_nll = F.cross_entropy(_wide(self.byte_head(flat)), (t - b0).clamp(0, NUM_BYTES - 1),
                                       reduction="none")
            nll = nll + byte_nll * is_byte
        else:  # on a CPU only the (rare) byte positions pay for the byte head
            where = is_byte.nonzero().squeeze(1)
            if len(where):
                byte_nll = F.cross_entropy(_wide(self.byte_head(flat[where])), t[where] - b0, reduction="none")
                nll = nll.index_add(0, where, byte_nll)
        return nll.view(targets.shape)

    def layer_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W_ih, W_hh, b_ih, b_hh) of one layer, as the fused module stores them."""
        rnn = self.rnn
        return (
            getattr(rnn, f"weight_ih_l{layer}"),
            getattr(rnn, f"weight_hh_l{layer}"),
            getattr(rnn, f"bias_ih_l{layer}"),
            getattr(rnn, f"bias_hh_l{layer}"),
        )

    @torch.no_grad()
    def step(self, idx: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, Hidden]:
        """One character per stream: idx (B,) -> logits (B, V), new hidden. Inference only."""
        top, hidden = self.advance(self.embed(idx), hidden)
        return self.logits(top), hidden

    def advance(self, x: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, Hidden]:
        """Every layer one step, with gradients: layer-0 inputs x (B, E) -> top output (B, H), new
        hidden. Between layers the same dropout as the fused module's (active only in training)."""
        lstm = self.config.cell == "lstm"
        hs, cs = (hidden if lstm else (hidden, None))
        new_h, new_c = [], []
        for layer in range(self.config.layers):
            weights = self.layer_weights(layer)
            if lstm:
                h, c = torch.lstm_cell(x, (hs[layer], cs[layer]), *weights)
                new_c.append(c)
            elif self.config.cell == "gru":
                h = torch.gru_cell(x, hs[layer], *weights)
            else:
                h = torch.rnn_tanh_cell(x, hs[layer], *weights)
            new_h.append(h)
            x = self.drop(h) if layer < self.config.layers - 1 else h
        h = torch.stack(new_h)
        return x, ((h, torch.stack(new_c)) if lstm else h)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _wide(scores: torch.Tensor) -> torch.Tensor:
    """Half-precision scores (under autocast) go to float32 for the softmax; float64 stays."""
    return scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores


def detach_hidden(hidden: Hidden) -> Hidden:
    """Cut the graph at a chunk boundary: truncated BPTT keeps the state, not its history."""
    if isinstance(hidden, tuple):
        return tuple(h.detach() for h in hidden)  # type: ignore[return-value]
    return hidden.detach()


def select_streams(hidden: Hidden, index: torch.Tensor) -> Hidden:
    if isinstance(hidden, tuple):
        return tuple(h[:, index] for h in hidden)  # type: ignore[return-value]
    return hidden[:, index]
