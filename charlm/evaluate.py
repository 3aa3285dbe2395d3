"""How well a model predicts held-out text, in nats and bits per character.

The text is cut into a few long contiguous streams that are run side by side, each with
its hidden state carried from chunk to chunk, so almost every character is predicted with
its full left context while the work stays batched. Losses are summed over tokens and
divided by the characters of the original text, so char, jamo, unigram and bpe models are
compared on the same footing: a jamo model's two or three tokens per Hangul syllable count
as the one character they spell.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from .model import IGNORE, CharRNN, detach_hidden

DEFAULT_STREAMS = 32
MIN_STREAM_TOKENS = 2048  # shorter texts run as fewer streams, so context is rarely cut
CHUNK = 256


@dataclass
class EvalResult:
    nats: float  # summed negative log-likelihood
    chars: int  # characters predicted
    tokens: int

    @property
    def nats_per_char(self) -> float:
        return self.nats / max(self.chars, 1)

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.nats_per_char, 700.0))

    def as_dict(self) -> dict:
        return {
            "nats_per_char": self.nats_per_char,
            "bits_per_char": self.bits_per_char,
            "perplexity": self.perplexity,
            "chars": self.chars,
        }


@torch.no_grad()
def _chunk_losses(model: CharRNN, tokens: np.ndarray, device, streams: int, chunk: int) -> Iterator[torch.Tensor]:
    """Losses (streams, <=chunk) of consecutive chunks; stream s predicts positions s*L .. s*L+L-1.

    Each chunk's ids are gathered from `tokens` as they are needed, so a memory-mapped split of
    any size costs only a chunk's worth of memory; positions past the end give loss 0."""
    n = len(tokens) - 1
    length = -(-n // streams)  # ceil
    was_training = model.training
    model.eval()
    hidden = None
    rows = np.arange(streams)[:, None] * length
    tokens = np.asarray(tokens)  # a view: a memory-mapped split stays on disk
    try:
        for start in range(0, length, chunk):
            at = rows + start + np.arange(min(chunk, length - start))[None, :]  # (streams, c) positions
            valid = at < n
            x = tokens.take(np.minimum(at, n - 1)).astype(np.int64)
            y = np.where(valid, tokens.take(np.minimum(at + 1, n)).astype(np.int64), IGNORE)
            out, hidden = model.top_outputs(torch.from_numpy(x).to(device), hidden)
            hidden = detach_hidden(hidden)
            yield model.token_nll(out, torch.from_numpy(y).to(device)).cpu()
    finally:
        model.train(was_training)


def stream_count(n_tokens: int, streams: int, min_stream_tokens: int) -> int:
    """How many parallel streams `n_tokens` are cut into: at most `streams`, none too short."""
    return max(1, min(streams, n_tokens // max(min_stream_tokens, 1)))


def token_losses(
    model: CharRNN,
    tokens: np.ndarray,
    device: str | torch.device = "cpu",
    streams: int = DEFAULT_STREAMS,
    chunk: int = CHUNK,
) -> torch.Tensor:
    """Negative log-likelihood of each token after the first: a float32 tensor of len(tokens)-1."""
    n = len(tokens) - 1
    if n <= 0:
        return torch.zeros(0)
    streams = stream_count(n, streams, MIN_STREAM_TOKENS)
    losses = torch.cat(list(_chunk_losses(model, tokens, device, streams, chunk)), dim=1)
    return losses.flatten()[:n]


def evaluate_tokens(model: CharRNN, tokens: np.ndarray, chars: int, device="cpu",
                    streams: int = DEFAULT_STREAMS) -> EvalResult:
    """Total loss of a token sequence whose text is `chars` characters long (only sums are kept)."""
    n = len(tokens) - 1
    if n <= 0:
        return EvalResult(nats=0.0, chars=max(chars, 0), tokens=0)
    parts = _chunk_losses(model, tokens, device, stream_count(n, streams, MIN_STREAM_TOKENS), CHUNK)
    nats = sum(float(part.double().sum()) for part in parts)
    return EvalResult(nats=nats, chars=max(chars, 0), tokens=n)


@dataclass
class EvalReport:
    """The result of `charlm eval` for one checkpoint, with what --show needs."""

    checkpoint: str
    result: EvalResult  # the first language model's: the forward one, if the checkpoint has one
    shown: list[tuple[str, float | None]]  # (text of a token, its loss in nats) for the start of the text
    text_chars: int = 0  # characters of the whole text, of which `shown` holds the first
    direction: str = "forward"  # the model's: forward, backward, both (a biLM) or bidirectional (cheats)
    directions: dict[str, EvalResult] = field(default_factory=dict)  # each language model's own result

    def as_dict(self) -> dict:
        """The figures of `result`; for a model that does not only read forward, also which way it
        reads, each language model's figures and, for a biLM or the cheat, what they mean."""
        data = self.result.as_dict()
        if self.direction != "forward":
            data["direction"] = self.direction
            data["directions"] = {name: res.as_dict() for name, res in self.directions.items()}
            if self.direction in DIRECTION_NOTES:
                data["note"] = DIRECTION_NOTES[self.direction]
        return data


DIRECTION_NOTES = {
    "both": "two language models over the same text, one reading forward, one backward; each direction's "
            "figures are a proper loss per character of the text; the top-level figures are the forward model's",
    "bidirectional": "a single bidirectional model (--cheat-demo) reads the character it predicts: its "
                     "figures are no probability of the text; 'writing' scores each character from the text "
                     "before it only, as the model writes",
}


def evaluate_text(checkpoint, corpus, device="cpu", keep_losses: bool = False, show_chars: int = 3000,
                  streams: int = DEFAULT_STREAMS) -> EvalReport:
    """Evaluate a checkpoint (a path, or a loaded one) on a Corpus of held-out text: each of its
    language models, each reading the text its own way (directions.py). With `keep_losses`, the
    report keeps the first `show_chars` characters at most, cut at the end of a line, with each
    token's loss (the first language model's)."""
    from .checkpoint import as_payload, model_from_checkpoint
    from .directions import readers
    from .render import cut_at_line

    payload = as_payload(checkpoint)
    model, tokenizer = model_from_checkpoint(payload, device)
    parts, total_chars = [], 0
    for chunk in corpus.chunks():
        parts.append(tokenizer.encode(chunk))
        total_chars += len(chunk)
    tokens = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    if len(tokens) < 2:
        from .errors import UsageError

        raise UsageError(f"{corpus.files[0]}: too short to evaluate (at least 2 characters are needed)")
    results, shown_losses = {}, None
    for reader in readers(model):
        ordered = reader.order(tokens)
        losses = token_losses(reader.model, ordered, device, streams)
        first = tokenizer.count_chars(ordered[:1]) or 1  # read, never predicted
        results[reader.direction] = EvalResult(nats=float(losses.double().sum()), chars=total_chars - first,
                                               tokens=len(losses))
        if shown_losses is None:  # the first model's losses colour --show
            shown_losses, backward = losses, reader.backward
        if reader.direction == "bidirectional":  # the cheat: also what it is worth as a writer
            from .cheat import writing_loss

            window = (payload.get("train_config") or {}).get("seq_len", 64)
            results["writing"] = writing_loss(reader.model, tokens, total_chars / len(tokens), window, device)
    shown: list[tuple[str, float | None]] = []
    if keep_losses:
        pending = 0.0
        count = 0
        n = len(tokens)
        # A character's loss is that of all its tokens, shown once it is complete.
        for i, text in enumerate(tokenizer.token_texts(tokens[: show_chars * 4].tolist())):
            # Token i's own loss; the token read first (the first, or backwards the last) has none.
            at = n - 2 - i if backward else i - 1
            loss = float(shown_losses[at]) if 0 <= at < n - 1 else None
            pending += loss or 0.0
            if text:
                shown.append((text, pending if loss is not None or pending else None))
                pending = 0.0
                count += len(text)
                if count >= show_chars:
                    break
        keep = len(cut_at_line("".join(piece for piece, _ in shown), show_chars))
        while shown and count > keep:  # drop what lies past the cut, piece by piece
            piece, loss = shown.pop()
            count -= len(piece)
            if count < keep:
                shown.append((piece[: keep - count], loss))
                count = keep
    first = next(iter(results.values()))
    return EvalReport(checkpoint=str(payload["path"]), result=first, shown=shown, text_chars=total_chars,
                      direction=model.config.direction, directions=results)
