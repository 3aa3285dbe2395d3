"""Text <-> token ids, through a sentencepiece model that lives inside each checkpoint.

The default `char` tokenizer is a sentencepiece `model_type=char` vocabulary over every
character of the corpus, with identity normalization, whitespace kept as it is, `\\n` as a
symbol of its own and byte fallback: a character never seen in training becomes its UTF-8
bytes instead of crashing or vanishing. `unigram` and `bpe` go through the same class;
`jamo`, a char vocabulary that spells Hangul syllables in jamo, is a subclass (jamo.py).

Two things sentencepiece alone would get wrong are handled here:
- it reads the literal character U+2581 as its own whitespace mark, so that character
  (and any lone surrogate, which UTF-8 cannot carry) is always sent through byte fallback;
- decoding is done here from the piece table, one id at a time if need be, so sampled
  text can stream to the terminal as it is made.
For char vocabularies, encoding is a vectorised code-point lookup that gives exactly the
ids sentencepiece gives (a test holds them equal), many times faster.
"""

from __future__ import annotations

import codecs
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm

from .config import NUM_BYTES
from .errors import CharlmError, UsageError

KINDS = ("char", "jamo", "unigram", "bpe")
META = "\u2581"  # sentencepiece's mark for a space
_NEEDS_BYTES = re.compile("[\u2581\ud800-\udfff]")
_TRAIN_TEXT_LIMIT = 200 << 20  # characters read to learn a subword vocabulary
_LONG_LINE = 4096
COUNT_SLICE = 1 << 20  # token ids counted at a time


class Tokenizer:
    def __new__(cls, model: bytes, kind: str = "char"):
        if cls is Tokenizer and kind == "jamo":  # Tokenizer(model, kind) makes whichever a checkpoint holds
            from .jamo import JamoTokenizer

            cls = JamoTokenizer
        return super().__new__(cls)

    def __init__(self, model: bytes, kind: str = "char"):
        if kind not in KINDS:
            raise CharlmError(f"unknown tokenizer kind {kind!r}")
        self.model = bytes(model)
        self.kind = kind
        self._sp = spm.SentencePieceProcessor(model_proto=self.model)
        self.vocab_size = self._sp.get_piece_size()
        self._byte = np.full(self.vocab_size, -1, dtype=np.int16)
        self._text: list[str] = []
        self._special: set[int] = set()
        for i in range(self.vocab_size):
            piece = self._sp.id_to_piece(i)
            if self._sp.is_byte(i):
                self._byte[i] = int(piece[3:5], 16)
                self._text.append("")
            elif self._sp.is_unknown(i) or self._sp.is_control(i):
                self._special.add(i)
                self._text.append("")
            else:
                self._text.append(piece.replace(META, " "))
        self._byte_id = np.array([self._sp.piece_to_id(f"<0x{b:02X}>") for b in range(NUM_BYTES)], np.int32)
        # sentencepiece lays the byte pieces out in order, one block; the model's head relies on it.
        contiguous = np.array_equal(self._byte_id, self._byte_id[0] + np.arange(NUM_BYTES))
        self.bytes_from = int(self._byte_id[0]) if contiguous else -1
        if kind == "char":
            # A table indexed by code point (-1: not in the vocabulary): encoding is one gather.
            self._id_of_point = point_table({ord(piece): i for i, piece in enumerate(self._text) if len(piece) == 1})

    # -- encoding ---------------------------------------------------------------------------
    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text` (int32). Any string is accepted."""
        if self.kind == "char":
            return self._encode_chars(text)
        parts, specials = [], []
        last = 0
        for m in _NEEDS_BYTES.finditer(text):
            parts.append(text[last : m.start()])
            specials.append(m.group())
            last = m.end()
        parts.append(text[last:])
        encoded = self._sp.encode([p for p in parts], num_threads=2) if len(parts) > 1 else [self._sp.encode(text)]
        out: list[np.ndarray] = []
        for i, ids in enumerate(encoded):
            out.append(np.asarray(ids, dtype=np.int32))
            if i < len(specials):
                out.append(self._char_bytes(specials[i]))
        return np.concatenate(out) if out else np.zeros(0, np.int32)

    def _encode_chars(self, text: str) -> np.ndarray:
        points = code_points(text)
        ids = self._id_of_point.take(points, mode="clip")
        ids[points >= len(self._id_of_point)] = -1
        known = ids >= 0
        if known.all():
            return ids
        # Unknown characters fall back to their UTF-8 bytes, so the sequence gets longer.
        unknown = np.flatnonzero(~known)
        pieces = [self._char_bytes(chr(points[i])) for i in unknown]
        lengths = np.ones(len(points), dtype=np.int64)
        lengths[unknown] = [len(p) for p in pieces]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        out = np.empty(int(lengths.sum()), dtype=np.int32)
        out[starts[known]] = ids[known]
        for i, piece in zip(unknown, pieces):
            out[starts[i] : starts[i] + len(piece)] = piece
        return out

    def _char_bytes(self, char: str) -> np.ndarray:
        for errors in ("strict", "surrogateescape", "surrogatepass"):
            try:
                return self._byte_id[np.frombuffer(char.encode("utf-8", errors), dtype=np.uint8)]
            except UnicodeEncodeError:
                continue
        raise AssertionError("unreachable: surrogatepass encodes any code point")

    # -- decoding ---------------------------------------------------------------------------
    def decode(self, ids: Iterable[int]) -> str:
        decoder = self.stream_decoder()
        return "".join(decoder(int(i)) for i in ids) + decoder.flush()

    def count_chars(self, ids: np.ndarray) -> int:
        """Characters that `ids` decode to, without decoding: each piece's length, and one per
        UTF-8 lead byte among byte-fallback tokens (an approximation only for broken byte runs).
        Read in slices, so a memory-mapped split of any size costs little memory."""
        lengths = self._chars_per_piece()
        total = 0
        for start in range(0, len(ids), COUNT_SLICE):
            part = np.asarray(ids[start : start + COUNT_SLICE])
            byte = self._byte[part]
            total += int(np.count_nonzero((byte >= 0) & ((byte & 0xC0) != 0x80)))
            total += int(lengths[part].sum(dtype=np.int64))
        return total

    def _chars_per_piece(self) -> np.ndarray:
        return np.array([len(t) for t in self._text], dtype=np.int32)  # 0 for byte pieces

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    def token_texts(self, ids: Iterable[int], compose: bool = True) -> list[str]:
        """The text of the characters each token ends, one string per token; joined, they are
        decode(ids). A character belongs to its last token: a byte-fallback character to its
        last byte, a Hangul syllable of a jamo model to its vowel or final. `compose=False`:
        a jamo model's decomposed jamo each as their own text (the text as the model reads it)."""
        decoder = self.stream_decoder() if compose else StreamDecoder(self)
        pieces = [decoder(int(t)) for t in ids]
        if pieces:
            pieces[-1] += decoder.flush()
        return pieces

    def piece_text(self, token_id: int) -> str:
        """What one token shows as on its own (a byte token shows as its hex piece)."""
        if self._byte[token_id] >= 0:
            return self._sp.id_to_piece(token_id)
        return self._text[token_id]

    def is_special(self, token_id: int) -> bool:
        """True for ids that stand for no text (unknown, control): never worth sampling."""
        return token_id in self._special

    @property
    def newline_id(self) -> int:
        return self._sp.piece_to_id("\n")


class StreamDecoder:
    """Turns ids into text one at a time; byte-fallback ids wait until they form a character."""

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, token_id: int) -> str:
        byte = self._tok._byte[token_id]
        if byte >= 0:
            return self._utf8.decode(bytes((int(byte),)))
        return self.flush() + self._tok._text[token_id]

    def flush(self) -> str:
        """Text still held back: an incomplete byte sequence comes out as U+FFFD."""
        return self._utf8.decode(b"", final=True)


def train_tokenizer(chunks: Iterable[str], kind: str = "char", vocab_size: int | None = None) -> Tokenizer:
    """Learn a vocabulary from the text chunks (read once)."""
    if kind not in KINDS:
        raise UsageError(f"--tokenizer: expected one of {', '.join(KINDS)}, got {kind!r}")
    options = dict(
        model_type=kind,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_by_whitespace=kind not in ("char", "jamo"),
        allow_whitespace_only_pieces=True,
        byte_fallback=True,
        user_defined_symbols=["\n"],
        character_coverage=1.0,
        bos_id=-1,
        eos_id=-1,
        max_sentence_length=_LONG_LINE * 4,
        minloglevel=2,
        num_threads=2,
    )
    if kind in ("char", "jamo"):
        counts = _count_chars(chunks)
        if kind == "jamo":
            from .jamo import symbol_counts

            counts = symbol_counts(counts)
            options["model_type"] = "char"
        if vocab_size is not None:
            keep = vocab_size - NUM_BYTES - 2
            if keep < 1:
                raise UsageError(f"--vocab-size: must be above {NUM_BYTES + 2} (the byte and special pieces)")
            counts = Counter(dict(counts.most_common(keep)))
        if not counts:
            counts = Counter({" ": 1})
        # Only which characters exist matters to a char vocabulary, not the full text.
        sentences: Iterator[str] = (c * min(n, 100) for c, n in counts.most_common())
        options["vocab_size"] = len(counts) + NUM_BYTES + 2
        options["hard_vocab_limit"] = False
    else:
        sentences = _training_lines(chunks)
        options["vocab_size"] = vocab_size or 2000
        options["input_sentence_size"] = 2_000_000
        options["shuffle_input_sentence"] = True
    model = _Sink()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=sentences, model_writer=model, **options)
    except RuntimeError as e:
        raise UsageError(f"--vocab-size {options['vocab_size']}: sentencepiece refused it: {_last_line(e)}") from None
    return Tokenizer(model.data, kind)


class _Sink:
    data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def _count_chars(chunks: Iterable[str]) -> Counter:
    totals = np.zeros(0, dtype=np.int64)
    for chunk in chunks:
        # One counter per code point up to the largest seen: linear time, where sorting is not.
        counts = np.bincount(np.frombuffer(chunk.encode("utf-32-le", "surrogatepass"), np.uint32))
        if len(counts) > len(totals):
            totals = np.concatenate([totals, np.zeros(len(counts) - len(totals), np.int64)])
        totals[: len(counts)] += counts
    counts = Counter({chr(p): int(totals[p]) for p in np.flatnonzero(totals)})
    for c in ("\n", META):
        counts.pop(c, None)
    for c in [c for c in counts if "\ud800" <= c <= "\udfff"]:
        del counts[c]
    return counts


def _training_lines(chunks: Iterable[str]) -> Iterator[str]:
    seen = 0
    for chunk in chunks:
        for line in _NEEDS_BYTES.sub("", chunk).split("\n"):
            for start in range(0, len(line), _LONG_LINE):
                yield line[start : start + _LONG_LINE]
        seen += len(chunk)
        if seen >= _TRAIN_TEXT_LIMIT:
            return


def _last_line(error: Exception) -> str:
    return str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__


def code_points(text: str) -> np.ndarray:
    """The code points of `text` as uint32 (lone surrogates included)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def point_table(id_of_point: dict[int, int]) -> np.ndarray:
    """A table indexed by code point (-1: not in the vocabulary): encoding is one gather."""
    table = np.full(max(id_of_point, default=0) + 1, -1, dtype=np.int32)
    table[list(id_of_point)] = list(id_of_point.values())
    return table


def tokens_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer type that holds every id: corpora stay compact in memory and on disk."""
    return np.dtype(np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.int32)


def describe_vocabulary(tokenizer: Tokenizer) -> str:
    """The vocabulary in words: `65 characters (+256 byte fallback)`, `2,000 unigram pieces ...`."""
    byte_tokens = int(np.count_nonzero(tokenizer._byte >= 0))
    symbols = tokenizer.vocab_size - byte_tokens - len(tokenizer._special)
    what = {"char": "characters", "jamo": "symbols (Hangul syllables as jamo)"}.get(tokenizer.kind,
                                                                                 f"{tokenizer.kind} pieces")
    return f"{symbols:,} {what}" + (f" (+{byte_tokens} byte fallback)" if byte_tokens else "")


__all__: Sequence[str] = ["Tokenizer", "StreamDecoder", "train_tokenizer", "tokens_dtype", "KINDS"]
