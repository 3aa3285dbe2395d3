"""How a model's own text compares with real text: a free-running measure.

Validation loss feeds the model the true held-out text (teacher forcing), so it cannot see
what the case for scheduled sampling is about: a model that has only ever read true text
then reads its own, mistakes and all (exposure bias). This measure looks at what the model
writes on its own: SAMPLES texts of SAMPLE_LENGTH tokens drawn at temperature 1 from a line
start, and the Jensen-Shannon divergence, in bits (0 to 1), between the distribution of
their token bigrams and that of the held-out text. 0 would be the same statistics. A finite
sample never matches exactly, so the same measure of real text, as many stretches of the
same length from the end of the training split, is the floor to read it against: near the
floor, the model's text has the local statistics of real text; far above it, it has drifted
into noise or loops. Bigrams look only two characters deep, so it is a coarse measure, but
it needs no other model to judge by and cannot be gamed by one.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .model import CharRNN
from .sample import generate_batch
from .tokenizer import Tokenizer

SAMPLES = 8
SAMPLE_LENGTH = 500  # characters per sample: 4,000 in all


def bigram_distribution(pieces: list[np.ndarray], vocab: int) -> dict[int, float]:
    """The share of each token bigram (coded a * vocab + b) over pieces of ids, none across pieces."""
    codes = [p[:-1].astype(np.int64) * vocab + p[1:] for p in pieces if len(p) > 1]
    if not codes:
        return {}
    values, counts = np.unique(np.concatenate(codes), return_counts=True)
    return dict(zip(values.tolist(), (counts / counts.sum()).tolist()))


def js_divergence(p: dict[int, float], q: dict[int, float]) -> float:
    """Jensen-Shannon divergence between two distributions, in bits (0: the same, 1: disjoint)."""
    total = 0.0
    for key in p.keys() | q.keys():
        a, b = p.get(key, 0.0), q.get(key, 0.0)
        m = (a + b) / 2
        total += (a * math.log2(a / m) if a else 0.0) + (b * math.log2(b / m) if b else 0.0)
    return total / 2


def real_text_floor(train_tokens: np.ndarray, reference: dict[int, float], vocab: int) -> float | None:
    """The divergence of SAMPLES real stretches of SAMPLE_LENGTH tokens, from the end of the
    training split, from the reference: what a model that writes like the text would score."""
    need = SAMPLES * SAMPLE_LENGTH
    if len(train_tokens) < need or not reference:
        return None
    tail = np.asarray(train_tokens[-need:]).astype(np.int64)
    return js_divergence(bigram_distribution(list(tail.reshape(SAMPLES, SAMPLE_LENGTH)), vocab), reference)


def free_running_divergence(model: CharRNN, tokenizer: Tokenizer, reference: dict[int, float],
                            seed: int = 0, device: str | torch.device = "cpu") -> float | None:
    """The divergence of the model's own text from the reference bigram distribution."""
    if not reference:
        return None
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[str]] = [[] for _ in range(SAMPLES)]
    for pieces in generate_batch(model, tokenizer, "", SAMPLE_LENGTH, SAMPLES, 1.0, generator=generator,
                                 device=device):
        for i, piece in enumerate(pieces):
            parts[i].append(piece)
    ids = [tokenizer.encode("".join(p)) for p in parts]
    return js_divergence(bigram_distribution(ids, tokenizer.vocab_size), reference)
