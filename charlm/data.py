"""Token ids for training: encoded once, stored compactly, walked as contiguous streams.

The corpus is encoded chunk by chunk into a flat file of the smallest integer type that
holds the vocabulary (uint8/uint16/int32) and memory-mapped, so a corpus of any size costs
little memory, and the file is kept in a cache folder, with the vocabulary learned from the
corpus, so the next run on the same corpus and tokenizer starts at once. Training follows
the reference truncated-BPTT layout (pytorch/examples' word_language_model): the training
tokens are cut into `batch_size` contiguous streams, and batch i is the next `seq_len`
tokens of every stream, with targets the same tokens shifted by one. The hidden state is
carried from one batch to the next.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .config import NUM_BYTES
from .corpus import Corpus
from .errors import CharlmError
from .tokenizer import Tokenizer, tokens_dtype, train_tokenizer


def corpus_fingerprint(corpus: Corpus) -> str:
    """Changes when any file's path, size or modification time does."""
    h = hashlib.sha256(f"{corpus.encoding}|{corpus.errors}".encode())
    for f in corpus.files:
        st = f.stat()
        h.update(f"|{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def learn_vocabulary(corpus: Corpus, kind: str, vocab_size: int | None, cache_dir: Path,
                     on_learning: Callable[[], None] | None = None) -> Tokenizer:
    """The vocabulary of `corpus`, learned once and kept in `cache_dir` beside its token ids,
    since learning reads the whole corpus (seconds per gigabyte). `on_learning` is called
    before it is learned, not when it comes from the cache."""
    # charlm's version is in the key: a later charlm may learn vocabularies differently.
    key = hashlib.sha256(f"{corpus_fingerprint(corpus)}|{kind}|{vocab_size}|{__version__}".encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"vocab-{key}.model"
    try:
        cached = Tokenizer(path.read_bytes(), kind)
        if cached.bytes_from >= 0:  # charlm's vocabularies always have byte fallback; an empty file has not
            return cached
    except (OSError, RuntimeError, CharlmError):  # none yet, or unreadable: learn it again
        pass
    if on_learning:
        on_learning()
    tokenizer = train_tokenizer(corpus.chunks(), kind, vocab_size)
    # A cache that cannot be written costs the next run those seconds again, nothing more.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".vocab.", dir=path.parent)
    except OSError:
        return tokenizer
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(tokenizer.model)
            f.flush()
            os.fsync(f.fileno())  # on disk before its name is, so a power cut cannot leave it empty
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
    return tokenizer


def encode_corpus(
    corpus: Corpus,
    tokenizer: Tokenizer,
    cache_dir: Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """All token ids of the corpus as a (memory-mapped, when cached) 1-D array."""
    dtype = tokens_dtype(tokenizer.vocab_size)
    total = corpus.total_bytes
    if cache_dir is None:
        parts, done = [], 0
        for chunk in corpus.chunks():
            parts.append(tokenizer.encode(chunk).astype(dtype))
            done += len(chunk.encode(corpus.encoding, "replace")) if on_progress else 0
            if on_progress:
                on_progress(min(done, total), total)
        return np.concatenate(parts) if parts else np.zeros(0, dtype)
    key = hashlib.sha256(corpus_fingerprint(corpus).encode() + tokenizer.model).hexdigest()[:20]
    path = Path(cache_dir) / f"tokens-{key}.{dtype.name}"
    if not path.exists():
        _encode_to_file(corpus, tokenizer, dtype, path, on_progress)
    if path.stat().st_size == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _encode_to_file(corpus, tokenizer, dtype, path: Path, on_progress) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tokens.", dir=path.parent)
    except OSError as e:
        raise CharlmError(f"{path.parent}: cannot write the token cache: {e.strerror}") from None
    total, done = corpus.total_bytes, 0
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in corpus.chunks():
                f.write(tokenizer.encode(chunk).astype(dtype, copy=False))
                if on_progress:
                    done += len(chunk.encode(corpus.encoding, "replace"))
                    on_progress(min(done, total), total)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CharlmError(f"{path}: cannot write the token cache: {e.strerror}") from None
        raise


def count_byte_tokens(tokens: np.ndarray, bytes_from: int, slice_size: int = 1 << 24) -> int:
    """How many of `tokens` are byte-fallback tokens (ids bytes_from .. bytes_from + 255), read
    in slices so that a memory-mapped corpus of any size costs little memory."""
    if bytes_from < 0:
        return 0
    count = 0
    for start in range(0, len(tokens), slice_size):
        part = np.asarray(tokens[start : start + slice_size])
        count += int(np.count_nonzero((part >= bytes_from) & (part < bytes_from + NUM_BYTES)))
    return count


def split_tokens(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous split: the last `val_fraction` of the text is held out for validation."""
    n_val = int(round(len(tokens) * val_fraction))
    return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]


class StreamBatches:
    """Training tokens as `batch_size` contiguous streams, read `seq_len` tokens at a time.

    `rank`/`world` give each process of a data-parallel run its own disjoint set of streams.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, rank: int = 0, world: int = 1):
        total_streams = batch_size * world
        self.stream_len = len(tokens) // total_streams
        self.batch_size, self.seq_len = batch_size, seq_len
        all_streams = tokens[: total_streams * self.stream_len].reshape(total_streams, self.stream_len)
        self.streams = all_streams[rank * batch_size : (rank + 1) * batch_size]
        # Each batch needs seq_len inputs plus the one target beyond them.
        self.batches_per_epoch = max(0, (self.stream_len - 1) // seq_len)

    def get(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `index` of an epoch: inputs and targets, both (batch_size, seq_len) int64."""
        start = index * self.seq_len
        window = np.asarray(self.streams[:, start : start + self.seq_len + 1]).astype(np.int64)
        window = torch.from_numpy(window)
        return window[:, :-1], window[:, 1:]
