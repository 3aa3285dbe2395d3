"""Is the model memorising? The share of sampled n-grams that never occur in the training text.

A sample that only strings together long pieces of its corpus has low novelty at n = 20 or
40 characters; a model that has learned the style but writes its own text has high
novelty there (and lower at n = 10, where words and common phrases repeat by nature).
The samples are small and the corpus may be large, so the samples' n-grams are what is
held in memory: each is reduced to a 64-bit polynomial hash, and the corpus is streamed
past them in pieces of a quarter of a million characters, each piece's n-gram hashes
computed at once with numpy and looked up in the samples' hashes. Memory stays near 20 MB
and a 10 MB corpus takes about a second. Two different n-grams of one length share
a hash with a chance of about one in 2^64 per pair, far below anything a percentage shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from rich.table import Table

DEFAULT_SIZES = (10, 20, 40)
PIECE_CHARS = 1 << 18
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so no character's weight wraps to zero modulo 2^64


@dataclass
class Novelty:
    n: int
    ngrams: int  # n-grams in the samples, counted with repeats
    novel: int  # of those, how many never occur in the corpus

    @property
    def share(self) -> float | None:
        return self.novel / self.ngrams if self.ngrams else None

    def as_dict(self) -> dict:
        return {"n": self.n, "ngrams": self.ngrams, "novel": self.novel, "share": self.share}


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """Hash of every n-character window of `text`, in order (uint64, len(text) - n + 1 values)."""
    return _window_hashes(_codes(text), [n])[n]


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.uint64)


def _window_hashes(codes: np.ndarray, sizes: Sequence[int]) -> dict[int, np.ndarray]:
    """n -> the polynomial hash of every n-window, sum of codes[i + j] * BASE^(n - 1 - j) mod 2^64.

    A window of n is its first half's hash shifted by BASE^(rest) plus the rest's hash, so
    the sizes 10, 20 and 40 together take a handful of passes over the text, not 70.
    """
    needed, pending = set(), list(sizes)
    while pending:  # every window length the halving reaches
        n = pending.pop()
        if n > 1 and n not in needed:
            needed.add(n)
            pending += [n // 2, n - n // 2]
    memo = {1: codes}
    for n in sorted(needed):
        first, rest = n // 2, n - n // 2
        count = max(0, len(codes) - n + 1)
        shift = np.uint64(pow(int(_BASE), rest, 2**64))
        # uint64 array arithmetic wraps modulo 2^64, which is the hash's modulus
        memo[n] = memo[first][:count] * shift + memo[rest][first : first + count]
    return {n: memo[n] for n in sizes}


def measure_novelty(samples: Sequence[str], corpus_chunks: Iterable[str],
                    sizes: Sequence[int] = DEFAULT_SIZES) -> list[Novelty]:
    """For each n in `sizes`: how many of the samples' n-grams never occur in the corpus text.

    Each sample is cut into n-grams on its own (none spans two samples). The corpus is the
    concatenation of `corpus_chunks`; n-grams across chunk boundaries are found too.
    """
    sizes = sorted(set(sizes))
    sampled = {n: np.concatenate([ngram_hashes(s, n) for s in samples] or [np.zeros(0, np.uint64)])
               for n in sizes}
    wanted = {n: np.unique(sampled[n]) for n in sizes}  # sorted
    found = {n: np.zeros(len(wanted[n]), bool) for n in sizes}
    overlap = max(sizes) - 1
    carry = ""
    for piece in _pieces(corpus_chunks, PIECE_CHARS):
        text = carry + piece
        open_sizes = [n for n in sizes if len(wanted[n]) and not found[n].all()]
        for n, hashes in _window_hashes(_codes(text), open_sizes).items():
            _mark_found(hashes, wanted[n], found[n])
        carry = text[len(text) - overlap :] if overlap else ""
        if all(found[n].all() for n in sizes):
            break  # every sampled n-gram is already in the corpus
    results = []
    for n in sizes:
        if len(sampled[n]):
            in_corpus = found[n][np.searchsorted(wanted[n], sampled[n])]
            novel = int((~in_corpus).sum())
        else:
            novel = 0
        results.append(Novelty(n, len(sampled[n]), novel))
    return results


def _mark_found(hashes: np.ndarray, wanted: np.ndarray, found: np.ndarray) -> None:
    # A table over the top 16 bits of the wanted hashes lets almost every corpus n-gram be
    # rejected with one lookup; only the few that pass are searched for exactly.
    table = np.zeros(1 << 16, bool)
    table[(wanted >> np.uint64(48)).astype(np.intp)] = True
    candidates = hashes[table[(hashes >> np.uint64(48)).astype(np.intp)]]
    at = np.searchsorted(wanted, candidates)
    at[at == len(wanted)] = 0  # past the end: cannot match; any index will do for the test below
    hit = wanted[at] == candidates
    found[at[hit]] = True


def _pieces(chunks: Iterable[str], size: int) -> Iterator[str]:
    """The text again, cut into pieces of at most `size` characters."""
    for chunk in chunks:
        for start in range(0, len(chunk), size):
            yield chunk[start : start + size]


def novelty_table(results: list[Novelty], corpus_name: str) -> Table:
    table = Table(title=f"novelty against {corpus_name}", title_justify="left")
    table.add_column("n", justify="right")
    table.add_column("n-grams sampled", justify="right")
    table.add_column("not in the corpus", justify="right")
    for r in results:
        share = "-" if r.share is None else f"{100 * r.share:.1f}%"
        table.add_row(str(r.n), f"{r.ngrams:,}", share)
    return table
