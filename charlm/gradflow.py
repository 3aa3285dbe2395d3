"""Vanishing and exploding gradients, measured: how much the loss at step t feels the state at t-k.

For many positions t of a text, the model first reads the `warmup` characters before the
window (no gradient), so its state is the one it would really have there. It then reads
the window t-K..t one step at a time with the cell functions over its trained weights,
keeping each step's state s_{t-k} (every layer's h) in the autograd graph. One backward
pass from the loss at t gives dL_t/ds_{t-k} for every k at once; its norm, averaged over
the positions, is the curve. The derivative is taken with respect to the whole carried
state, as if the model were restarted at t-k from that state: an LSTM's cell state c is
held fixed and not part of the norm, so all three cells are measured on the same h.
A checkpoint is measured in float64, so a gradient that has vanished far below float32's
smallest number (about 1e-45) still shows how far it fell instead of reading 0.
Windows are processed in groups so memory stays small whatever the number of positions.
A backward model is measured over the text reversed, as it reads; a biLM by its forward model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.text import Text

from .charts import Series, line_chart
from .checkpoint import load_checkpoint, model_from_checkpoint
from .corpus import Corpus
from .directions import readers
from .errors import UsageError
from .model import CharRNN

DEFAULT_MAX_K = 200
DEFAULT_POSITIONS = 128
DEFAULT_WARMUP = 100
GROUP = 32  # windows run side by side; bounds the memory the unrolled graph takes
MAX_TEXT_CHARS = 2_000_000  # enough for any number of positions; a 10 GB corpus is not read whole


@dataclass
class GradientFlow:
    checkpoint: str
    cell: str
    layers: int
    hidden: int
    params: int
    positions: int
    norms: list[float]  # norms[k]: mean over positions of |dL_t / ds_{t-k}|
    direction: str = "forward"  # the language model measured: forward, or backward over the text reversed

    def as_dict(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "cell": self.cell, "layers": self.layers,
                "hidden": self.hidden,
                "params": self.params, "positions": self.positions, "k": list(range(len(self.norms))),
                "grad_norm": self.norms, "direction": self.direction}


def window_ends(n_tokens: int, max_k: int, warmup: int, count: int) -> list[int]:
    """`count` positions t spread evenly over the text, each with room for warmup, window and target."""
    first, last = warmup + max_k, n_tokens - 2
    if last < first:
        return []
    return sorted({round(t) for t in np.linspace(first, last, count)})


def gradient_norms(model: CharRNN, tokens: torch.Tensor, ends: list[int], max_k: int,
                   warmup: int = DEFAULT_WARMUP) -> torch.Tensor:
    """|dL_t / ds_{t-k}| for each t in `ends` (rows) and k = 0..max_k (columns): (len(ends), max_k + 1).

    L_t is the cross-entropy of predicting tokens[t + 1] after reading tokens[..t]; s_j is the
    state after reading tokens[j]. Reading starts from a zero state at t - max_k - warmup.
    """
    model.eval()
    rows = []
    for start in range(0, len(ends), GROUP):
        group = torch.as_tensor(ends[start : start + GROUP])
        offsets = torch.arange(-max_k - warmup, 2)  # warmup, window, then the target
        ids = tokens[group[:, None] + offsets[None, :]]  # (B, warmup + max_k + 2)
        rows.append(_group_norms(model, ids[:, :warmup], ids[:, warmup:-1], ids[:, -1]))
    return torch.cat(rows)


def _group_norms(model: CharRNN, warm: torch.Tensor, window: torch.Tensor,
                 target: torch.Tensor) -> torch.Tensor:
    batch, lstm = window.shape[0], model.config.cell == "lstm"
    device = next(model.parameters()).device
    warm, window, target = warm.to(device), window.to(device), target.to(device)
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        hidden = model.init_hidden(batch, device)
        hidden = tuple(h.to(dtype) for h in hidden) if lstm else hidden.to(dtype)
        if warm.shape[1]:
            _, _, hidden = model(warm, hidden)
    hs, cs = hidden if lstm else (hidden, None)
    states = []
    for step in range(window.shape[1]):
        x = model.embed(window[:, step])  # (B, E)
        new_h, new_c = [], []
        for layer in range(model.config.layers):
            weights = model.layer_weights(layer)
            if lstm:
                h, c = torch.lstm_cell(x, (hs[layer], cs[layer]), *weights)
                new_c.append(c)
            elif model.config.cell == "gru":
                h = torch.gru_cell(x, hs[layer], *weights)
            else:
                h = torch.rnn_tanh_cell(x, hs[layer], *weights)
            new_h.append(h)
            x = h
        # The stacked state is its own graph node: its gradient comes only through later steps
        # and the head, not through the layer above at the same step, so it is dL/ds as defined.
        hs = torch.stack(new_h)  # (L, B, H)
        cs = torch.stack(new_c) if lstm else None
        states.append(hs)
    logits = model.logits(hs[-1])  # (B, V)
    # Summed over the windows: they share no computation, so each window's state gets its own gradient.
    loss = F.cross_entropy(logits, target, reduction="sum")
    grads = torch.autograd.grad(loss, states)
    norms = torch.stack(grads).pow(2).sum(dim=(1, 3)).sqrt()  # (K + 1, B), step order
    return norms.flip(0).T.cpu()  # (B, K + 1), column k = k steps back


def gradient_flow(checkpoint: Path | str, text: Corpus | None = None, max_k: int = DEFAULT_MAX_K,
                  positions: int = DEFAULT_POSITIONS, warmup: int = DEFAULT_WARMUP,
                  device: str | torch.device = "cpu") -> GradientFlow:
    """The gradient-flow curve of one checkpoint over `text` (default: the corpus it was trained on)."""
    if max_k < 0 or positions <= 0 or warmup < 0:
        raise UsageError("--max-k and --warmup must not be negative, --positions must be positive")
    payload = load_checkpoint(checkpoint)
    model, tokenizer = model_from_checkpoint(payload, device)
    reader = readers(model)[0]
    if reader.direction == "bidirectional":
        raise UsageError(f"{payload['path']}: the bidirectional model of --cheat-demo has no gradient through "
                         "time to measure one way; measure a language model")
    model = reader.model.double()
    source = text if text is not None else _training_corpus(payload)
    tokens = torch.from_numpy(reader.order(tokenizer.encode(_read_start(source))).astype(np.int64))
    ends = window_ends(len(tokens), max_k, warmup, positions)
    if not ends:
        raise UsageError(f"{source.files[0]}: too short for --max-k {max_k}: at least "
                         f"{max_k + warmup + 2} tokens are needed, it has {len(tokens)}")
    norms = gradient_norms(model, tokens, ends, max_k, warmup).mean(dim=0)
    config = model.config
    return GradientFlow(str(payload["path"]), config.cell, config.layers, config.hidden, model.num_params(),
                        len(ends), norms.tolist(), reader.direction)


def _training_corpus(payload: dict[str, Any]) -> Corpus:
    info = payload.get("corpus") or {}
    files = tuple(Path(f) for f in info.get("files", []))
    missing = [f for f in files if not f.is_file()]
    if not files or missing:
        raise UsageError(f"{payload['path']}: its training text is gone "
                         f"({missing[0] if missing else 'not recorded'}); name a text file")
    return Corpus(files, info.get("encoding", "utf-8"), info.get("errors", "strict"))


def _read_start(corpus: Corpus) -> str:
    parts, size = [], 0
    for chunk in corpus.chunks():
        parts.append(chunk[: MAX_TEXT_CHARS - size])
        size += len(parts[-1])
        if size >= MAX_TEXT_CHARS:
            break
    return "".join(parts)


def flow_chart(flows: list[GradientFlow], width: int = 64, height: int = 16) -> Text:
    series = []
    for flow in flows:
        last = len(flow.norms) - 1
        which = "" if flow.direction == "forward" else f" ({flow.direction})"
        name = f"{flow.cell} {flow.layers}x{flow.hidden} {flow.checkpoint}{which}: {flow.norms[0]:.1e} at k=0, " \
               f"{flow.norms[last]:.1e} at k={last}"
        series.append(Series(name, list(range(len(flow.norms))), flow.norms))
    positions = ", ".join(sorted({str(f.positions) for f in flows}))
    return line_chart(series, width=width, height=height, log_y=True,
                      x_label="k: steps back from the predicted character",
                      y_label=f"|dL_t / dh_(t-k)|, mean over {positions} positions (log scale)")
