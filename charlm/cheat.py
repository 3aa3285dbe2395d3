"""Why a bidirectional RNN cannot simply be trained as a language model, shown honestly.

Make a character language model's RNN bidirectional and train it to predict the next
character, and the backward direction's output at position t has already read the text
from its end down to t, the character to predict (at t + 1) included. The head learns to
copy it: training and validation losses fall towards zero, and both are meaningless, since
the model was given the answer. When it writes, there is no text to its right yet: each new
character is predicted from a backward state that has read only what comes before it, so
it writes garbage. charlm refuses `--direction bidirectional` with that explanation, unless
`--cheat-demo` asks to see the collapse. The honest bidirectional model is the biLM of
`--direction both` (directions.py): two language models, one reading each way.

Sampling the cheating model does what one would naively do: each step runs the whole
model over the text so far (at most the training chunk length, its widest context) and
draws the next character from the output at the last position. `writing_loss` scores real
text the same way, each character predicted from the last position of the window before
it: what the model is worth as a writer, which `charlm eval` shows beside its cheating
figure.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .config import NUM_BYTES
from .errors import UsageError
from .evaluate import EvalResult
from .model import CharRNN
from .sample import pick_next
from .tokenizer import Tokenizer

REFUSAL = ("--direction bidirectional: a single bidirectional model trained to predict the next character "
           "would cheat, because its backward half has already read that character; its loss would fall to "
           "near zero and it could not write. Train --direction both (two language models, one reading each "
           "way), or add --cheat-demo to watch the collapse")


def direction_asked(direction: str | None, cheat_demo: bool) -> str | None:
    """The direction to train, from --direction and --cheat-demo; the cheat only when asked for."""
    if cheat_demo:
        if direction not in (None, "bidirectional"):
            raise UsageError(f"--cheat-demo: trains the cheating bidirectional model, not --direction {direction}")
        return "bidirectional"
    if direction == "bidirectional":
        raise UsageError(REFUSAL)
    return direction


@torch.inference_mode()
def generate_cheating(model: CharRNN, tokenizer: Tokenizer, prime: str = "", length: int = 500,
                      num_samples: int = 1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                      stop: str | None = None, generator: torch.Generator | None = None,
                      device: str | torch.device = "cpu", window: int = 64) -> list[str]:
    """What the cheating model writes after `prime`: `length` tokens' worth of text per sample,
    each cut right after its first `stop`. It draws no byte tokens: what it writes is a
    demonstration of its collapse, and loose bytes would only add broken characters to it."""
    model.eval()
    ids = tokenizer.encode(prime).tolist() or [tokenizer.newline_id]
    text_ids = torch.as_tensor(ids, dtype=torch.long, device=device).repeat(num_samples, 1)  # (B, n)
    ban = torch.zeros(tokenizer.vocab_size, device=device)
    ban[[i for i in range(tokenizer.vocab_size) if tokenizer.is_special(i)]] = float("-inf")
    if tokenizer.bytes_from >= 0:
        ban[tokenizer.bytes_from : tokenizer.bytes_from + NUM_BYTES] = float("-inf")
    for _ in range(length):
        logits, _, _ = model(text_ids[:, -window:])  # (B, T, V): read both ways over the window
        token = pick_next(logits[:, -1] + ban, temperature, top_k, top_p, generator)
        text_ids = torch.cat([text_ids, token[:, None]], dim=1)
    texts = [tokenizer.decode(row[len(ids):].tolist())[:length] for row in text_ids]
    if stop:
        texts = [text[: text.find(stop) + len(stop)] if stop in text else text for text in texts]
    return texts


WRITING_POSITIONS = 4096  # characters scored by writing_loss, spread over the text
WRITING_BATCH = 256


@torch.inference_mode()
def writing_loss(model: CharRNN, tokens: np.ndarray, chars_per_token: float, window: int = 64,
                 device: str | torch.device = "cpu") -> EvalResult:
    """The loss of predicting token t + 1 from the last position of the window of tokens up to t,
    with nothing to the right of it: as the model writes. At most WRITING_POSITIONS positions,
    evenly spread; chars_per_token turns their count into characters."""
    model.eval()
    ends = np.unique(np.linspace(window - 1, len(tokens) - 2, WRITING_POSITIONS).astype(np.int64))
    ends = ends[ends >= window - 1] if len(tokens) > window else np.zeros(0, np.int64)
    nats = 0.0
    for start in range(0, len(ends), WRITING_BATCH):
        part = ends[start : start + WRITING_BATCH]
        rows = np.asarray(tokens).take(part[:, None] + np.arange(1 - window, 1)[None, :]).astype(np.int64)
        targets = torch.from_numpy(np.asarray(tokens).take(part + 1).astype(np.int64)).to(device)
        logits, _, _ = model(torch.from_numpy(rows).to(device))  # (B, window, V)
        nats += float(F.cross_entropy(logits[:, -1].float(), targets, reduction="sum"))
    return EvalResult(nats=nats, chars=round(len(ends) * chars_per_token), tokens=len(ends))
