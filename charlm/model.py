"""The character-level recurrent language model: embedding -> stacked RNN -> linear head.

`forward` runs whole sequences through PyTorch's fused nn.LSTM / nn.GRU / nn.RNN (cuDNN on
a GPU, oneDNN on a CPU): that is the fast path for training and evaluation. `step` advances
one character at a time with the cell functions (`torch.lstm_cell`, ...) over the same
weights; on a CPU that is about ten times faster than calling the fused module once per
character, which is what sampling does. A test holds the two paths equal.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import CELLS, ModelConfig

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
        self.rnn = rnn_class(
            config.embedding,
            config.hidden,
            config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, config.vocab_size)
        if config.cell == "lstm":
            # Start with the forget gate open, so memory survives from the first step.
            hidden = config.hidden
            for layer in range(config.layers):
                with torch.no_grad():
                    getattr(self.rnn, f"bias_ih_l{layer}")[hidden : 2 * hidden].fill_(1.0)
                    getattr(self.rnn, f"bias_hh_l{layer}")[hidden : 2 * hidden].zero_()

    def init_hidden(self, batch: int, device: torch.device | str = "cpu") -> Hidden:
        shape = (self.config.layers, batch, self.config.hidden)
        h = torch.zeros(shape, device=device)
        return (h, torch.zeros_like(h)) if self.config.cell == "lstm" else h

    def forward(
        self, idx: torch.Tensor, hidden: Hidden | None = None, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, Hidden]:
        """idx (B, T) token ids -> logits (B, T, V), mean cross-entropy if targets given, new hidden."""
        x = self.drop(self.embed(idx))  # (B, T, E)
        out, hidden = self.rnn(x, hidden)  # (B, T, H)
        logits = self.head(self.drop(out))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss, hidden

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
        x = self.embed(idx)  # (B, E)
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
            x = h
        h = torch.stack(new_h)
        return self.head(x), ((h, torch.stack(new_c)) if lstm else h)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_hidden(hidden: Hidden) -> Hidden:
    """Cut the graph at a chunk boundary: truncated BPTT keeps the state, not its history."""
    if isinstance(hidden, tuple):
        return tuple(h.detach() for h in hidden)  # type: ignore[return-value]
    return hidden.detach()


def select_streams(hidden: Hidden, index: torch.Tensor) -> Hidden:
    if isinstance(hidden, tuple):
        return tuple(h[:, index] for h in hidden)  # type: ignore[return-value]
    return hidden[:, index]
