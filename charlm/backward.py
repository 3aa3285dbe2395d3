"""Writing text backwards: a backward model writes what leads up to a given ending.

The backward model reads the ending right to left (its ids in reverse), then draws the
token before, and the one before that, exactly as forward sampling draws the next one
(`PackedCells` and `TokenChooser` over the backward model's weights). Tokens come out
last first, so a character that is several byte tokens is complete only when its first
byte arrives; `ReverseDecoder` holds its bytes until then. The text grows leftwards, so it
is handed back whole, in reading order, once it is complete: `charlm sample --backward`
prints it then, ending with the prime. `length` counts the characters written before the
ending; a `stop` string ends a sample as soon as it has been written, leftmost in the text.
"""

from __future__ import annotations

from typing import TextIO

import torch

from .config import NUM_BYTES
from .model import CharRNN
from .sample import PackedCells, TokenChooser
from .tokenizer import Tokenizer


class ReverseDecoder:
    """Turns ids that arrive last first into text to put in front of what is written so far."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.pending: list[int] = []  # ids of a character whose first byte has not come yet

    def __call__(self, token_id: int) -> str:
        self.pending.append(token_id)
        if not self._completes(token_id):
            return ""
        return self.flush()

    def flush(self) -> str:
        """Whatever is held, decoded in reading order (an unfinished byte run becomes U+FFFD)."""
        text = self.tokenizer.decode(reversed(self.pending))
        self.pending = []
        return text

    def _completes(self, token_id: int) -> bool:
        start = self.tokenizer.bytes_from
        if 0 <= start <= token_id < start + NUM_BYTES:
            return (token_id - start) & 0xC0 != 0x80  # a lead byte or ASCII: the character's first byte
        return True


@torch.inference_mode()
def generate_backward(model: CharRNN, tokenizer: Tokenizer, ending: str = "", length: int = 500,
                      num_samples: int = 1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                      stop: str | None = None, generator: torch.Generator | None = None,
                      device: str | torch.device = "cpu", bytes_seen: bool = True) -> list[str]:
    """`num_samples` texts of `length` characters (fewer after a `stop`) that lead up to `ending`,
    in reading order, the ending not included. `model` must read right to left. Byte tokens
    are drawn as in sample.generate_batch (`bytes_seen`), held to UTF-8 read right to left."""
    model.eval()
    ids = tokenizer.encode(ending)[::-1].tolist() or [tokenizer.newline_id]  # no ending: a line's end
    context = torch.as_tensor(ids, dtype=torch.long, device=device).unsqueeze(0)
    _, _, hidden = model(context)
    hidden = tuple(h.expand(-1, num_samples, -1).contiguous() for h in hidden) if isinstance(hidden, tuple) \
        else hidden.expand(-1, num_samples, -1).contiguous()
    cells = PackedCells(model, num_samples)
    state = cells.state(hidden)
    b0 = tokenizer.bytes_from
    ending_has_bytes = b0 >= 0 and any(b0 <= i < b0 + NUM_BYTES for i in ids)
    choose = TokenChooser(model, tokenizer, temperature, top_k, top_p, generator, device,
                          allow_bytes=bytes_seen or ending_has_bytes, reverse=True)
    decoders = [ReverseDecoder(tokenizer) for _ in range(num_samples)]
    written: list[list[str]] = [[] for _ in range(num_samples)]  # pieces, last first
    count = [0] * num_samples
    heads = [""] * num_samples  # the first len(stop) characters written so far, to spot the stop
    going = list(range(num_samples)) if length > 0 else []
    while going:
        token, drawn = choose(cells.top(state))
        still_going = []
        for i in going:
            text = decoders[i](drawn[i])
            room = length - count[i]
            if len(text) > room:
                text = text[len(text) - room :]
            finished = len(text) == room
            if stop and text:
                seen = text + heads[i]
                at = seen.rfind(stop)
                if at >= 0:  # the rightmost match is the first one written
                    text = text[at:]
                    finished = True
                heads[i] = seen[: len(stop)]
            written[i].append(text)
            count[i] += len(text)
            if not finished:
                still_going.append(i)
        going = still_going
        if going:
            state = cells(token, state)
    for i, decoder in enumerate(decoders):  # bytes of a character left unfinished at the start
        if count[i] < length and decoder.pending:
            written[i].append(decoder.flush()[-(length - count[i]):])
    return ["".join(reversed(pieces)) for pieces in written]


def write_backward(texts: list[str], out: TextIO, ending: str) -> None:
    """What `charlm sample --backward` prints: each text followed by its ending."""
    if len(texts) == 1:
        out.write(f"{texts[0]}{ending}\n")
    else:
        for i, text in enumerate(texts):
            out.write(f"=== sample {i + 1} ===\n{text}{ending}\n")
    out.flush()
