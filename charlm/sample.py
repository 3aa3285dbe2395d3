"""Generating text: one character at a time, many samples side by side.

The prime is run through the model in one batched forward pass; after that each new
character costs one `CharRNN.step` (the cell functions over the trained weights) for all
samples at once. Temperature 0 takes the most likely character; otherwise the
distribution is sharpened or flattened by the temperature and cut by top-k and top-p
(nucleus) before drawing, with a seeded generator so the same seed gives the same text.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .model import CharRNN
from .tokenizer import Tokenizer


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Scale by temperature and mask (to -inf) what top-k and top-p leave out. logits (B, V)."""
    logits = logits.float()
    # Shift the largest logit to 0 first: the same distribution, but a tiny temperature then
    # sends the rest to -inf instead of overflowing into inf - inf = nan; -inf (a banned
    # token) stays -inf even at an infinite temperature.
    logits = logits - logits.max(dim=-1, keepdim=True).values
    # (divided in float64: a temperature like 1e-300 is 0 in float32)
    logits = torch.where(torch.isinf(logits), logits, (logits.double() / temperature).float())
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the first always stays.
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        drop[:, 0] = False  # even when top_p rounds to 0 in float32
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def pick_next(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Next token of each row of logits (B, V) -> (B,)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(logits.device)


@torch.no_grad()
def generate_batch(
    model: CharRNN,
    tokenizer: Tokenizer,
    prime: str = "",
    length: int = 500,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop: str | None = None,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[list[str]]:
    """Yield, after each step, the new text of every sample ('' once a sample is done).

    `length` counts generated characters (the prime not included). A sample ends early
    right after it writes `stop`.
    """
    model.eval()
    prime_ids = tokenizer.encode(prime)
    if len(prime_ids) == 0:
        # With no prime, start as if at the beginning of a line.
        prime_ids = [tokenizer.newline_id]
    context = torch.as_tensor(prime_ids, dtype=torch.long, device=device).unsqueeze(0)
    logits, _, hidden = model(context)
    logits = logits[:, -1].expand(num_samples, -1)
    hidden = tuple(h.expand(-1, num_samples, -1).contiguous() for h in hidden) if isinstance(hidden, tuple) \
        else hidden.expand(-1, num_samples, -1).contiguous()
    banned = [i for i in range(tokenizer.vocab_size) if tokenizer.is_special(i)]
    decoders = [tokenizer.stream_decoder() for _ in range(num_samples)]
    written = [0] * num_samples
    tails = [""] * num_samples  # the last len(stop) characters, to spot the stop string
    done = [length <= 0] * num_samples
    while not all(done):
        if banned:
            logits = logits.clone()
            logits[:, banned] = float("-inf")
        token = pick_next(logits, temperature, top_k, top_p, generator)
        new = []
        for i, tok in enumerate(token.tolist()):
            if done[i]:
                new.append("")
                continue
            text = decoders[i](tok)
            text = text[: length - written[i]]
            if stop:
                seen = tails[i] + text
                at = seen.find(stop)
                if at >= 0:
                    text = text[: at + len(stop) - len(tails[i])]
                    done[i] = True
                tails[i] = seen[-len(stop):]
            written[i] += len(text)
            done[i] = done[i] or written[i] >= length
            new.append(text)
        yield new
        logits, hidden = model.step(token, hidden)
    # Bytes of a character left unfinished at the end come out as U+FFFD rather than vanish.
    leftovers = [d.flush() if written[i] < length else "" for i, d in enumerate(decoders)]
    if any(leftovers):
        yield leftovers


def generate(model: CharRNN, tokenizer: Tokenizer, prime: str = "", length: int = 500, **options) -> Iterator[str]:
    """One sample, as a stream of text pieces (the prime not included)."""
    for pieces in generate_batch(model, tokenizer, prime, length, num_samples=1, **options):
        if pieces[0]:
            yield pieces[0]
