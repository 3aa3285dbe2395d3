"""The `jamo` tokenizer: Hangul syllables read as the two or three letters they are made of.

A Hangul syllable (U+AC00-U+D7A3) is, by Unicode's own arithmetic, an initial consonant, a
vowel and an optional final consonant: S = 0xAC00 + (L * 21 + V) * 28 + T. The jamo
tokenizer encodes every syllable as those two or three jamo, about 70 symbols in all, in
place of the 11,172 possible syllables (1,473 of them in a 700,000-character novel), so a
model can spell syllables it never saw. Every other character is a token as in the `char`
tokenizer, with byte fallback.

Jamo from a decomposed syllable and jamo that were already in the text (NFD text such as
macOS file names, old Hangul, a half-formed sequence) must stay apart, or decoding could not
tell "한" from "ᄒ"+"ᅡ"+"ᆫ". The decomposed jamo are therefore pieces of their own, stored
in the vocabulary under private-use code points (`piece_point`; their shown text is the real
jamo), while jamo in the text stay ordinary characters: a corpus in NFD, or in old Hangul,
gets one token per jamo like any other letter, not three byte tokens. A character of the
text that happens to lie in those private-use code points goes through byte fallback, as
U+2581 already does for sentencepiece's space mark. A syllable one of whose jamo is not in
the vocabulary (a capped --vocab-size, a final never seen in training) falls back whole to
its UTF-8 bytes, which decode to the syllable itself, never to loose jamo.

Decoding composes the jamo back into syllables as they stream: a syllable is given out as
soon as the next token shows that it cannot grow (or at the end). A sequence that forms no
syllable (a vowel without an initial, an initial followed by something else) comes out as
the conjoining jamo the model chose, so nothing it wrote is lost and an initial ㄴ stays
apart from a final ㄴ.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from .tokenizer import StreamDecoder, Tokenizer, code_points, point_table

# Unicode's Hangul syllable arithmetic (The Unicode Standard, section 3.12).
S_BASE, L_BASE, V_BASE, T_BASE = 0xAC00, 0x1100, 0x1161, 0x11A7
L_COUNT, V_COUNT, T_COUNT = 19, 21, 28
N_COUNT = V_COUNT * T_COUNT  # syllables per initial consonant
S_COUNT = L_COUNT * N_COUNT

# The role of a token: what part of a decomposed syllable it is (NONE: it is not one).
NONE, INITIAL, VOWEL, FINAL = 0, 1, 2, 3
_COUNTS = {INITIAL: L_COUNT, VOWEL: V_COUNT, FINAL: T_COUNT}
_BASES = {INITIAL: L_BASE, VOWEL: V_BASE, FINAL: T_BASE}

# Private-use code points under which decomposed jamo are stored as vocabulary pieces: one
# block of 32 per role, in plane 16, where no font or input method puts anything.
PIECE_BASE = 0x10FD00
RESERVED = range(PIECE_BASE, PIECE_BASE + 0x60)

# Hangul-heavy text, for --tokenizer auto: Hangul syllables are at least this share of the
# characters that are not whitespace, among the first AUTO_SAMPLE characters of the corpus.
HANGUL_HEAVY = 0.5
AUTO_SAMPLE = 4 << 20


def piece_point(role: int, index: int) -> int:
    """The private-use code point that stands for a decomposed jamo in the vocabulary."""
    return PIECE_BASE + 0x20 * (role - 1) + index


def jamo_char(role: int, index: int) -> str:
    """The conjoining jamo itself (U+1100...), as shown and as given out when it forms no syllable."""
    return chr(_BASES[role] + index)


def syllable(initial: int, vowel: int, final: int = 0) -> str:
    return chr(S_BASE + (initial * V_COUNT + vowel) * T_COUNT + final)


def symbol_counts(char_counts: Counter) -> Counter:
    """The jamo vocabulary's symbol counts from a text's character counts: each syllable's count
    goes to the pieces of its jamo, and characters in the reserved block are left to byte fallback."""
    counts: Counter = Counter()
    for char, n in char_counts.items():
        point = ord(char)
        offset = point - S_BASE
        if 0 <= offset < S_COUNT:
            for role, index in ((INITIAL, offset // N_COUNT), (VOWEL, offset % N_COUNT // T_COUNT),
                                (FINAL, offset % T_COUNT)):
                if role != FINAL or index:
                    counts[chr(piece_point(role, index))] += n
        elif point not in RESERVED:
            counts[char] += n
    return counts


class JamoTokenizer(Tokenizer):
    """A char vocabulary in which Hangul syllables are spelled in jamo (see the module's docstring).

    Made by `Tokenizer(model, "jamo")`; the extra tables say, for each token, whether it is a
    decomposed jamo and which, and for each jamo, its token (-1: not in the vocabulary)."""

    def __init__(self, model: bytes, kind: str = "jamo"):
        super().__init__(model, kind)
        self.role = np.zeros(self.vocab_size, dtype=np.int8)  # NONE, INITIAL, VOWEL or FINAL per token
        self.jamo_index = np.zeros(self.vocab_size, dtype=np.int8)
        self._jamo_id = {role: np.full(count, -1, dtype=np.int32) for role, count in _COUNTS.items()}
        ordinary = {}
        for i, text in enumerate(self._text):
            point = ord(text) if len(text) == 1 else -1
            if point in RESERVED:
                role, index = divmod(point - PIECE_BASE, 0x20)
                role += 1
                self.role[i], self.jamo_index[i] = role, index
                self._jamo_id[role][index] = i
                self._text[i] = jamo_char(role, index)
            elif point >= 0:
                ordinary[point] = i
        self._id_of_point = point_table(ordinary)

    def encode(self, text: str) -> np.ndarray:
        points = code_points(text)
        ids = self._id_of_point.take(points, mode="clip")
        ids[points >= len(self._id_of_point)] = -1
        offset = points.astype(np.int64) - S_BASE
        is_syllable = (offset >= 0) & (offset < S_COUNT)
        where = np.flatnonzero(is_syllable)
        s = offset[where]
        initial = self._jamo_id[INITIAL][s // N_COUNT]
        vowel = self._jamo_id[VOWEL][s % N_COUNT // T_COUNT]
        final_index = s % T_COUNT
        final = self._jamo_id[FINAL][final_index]
        spelled = (initial >= 0) & (vowel >= 0) & ((final_index == 0) | (final >= 0))
        # Tokens per character: 1, 2 or 3 jamo for a syllable, or its UTF-8 bytes for a character
        # (or a syllable) that falls back.
        lengths = np.ones(len(points), dtype=np.int64)
        lengths[where] = np.where(spelled, 2 + (final_index > 0), 3)
        other_unknown = np.flatnonzero(~is_syllable & (ids < 0))
        fallbacks = [self._char_bytes(chr(points[i])) for i in other_unknown]
        lengths[other_unknown] = [len(f) for f in fallbacks]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        out = np.empty(int(lengths.sum()), dtype=np.int32)
        plain = np.flatnonzero(~is_syllable & (ids >= 0))
        out[starts[plain]] = ids[plain]
        at = starts[where[spelled]]
        out[at] = initial[spelled]
        out[at + 1] = vowel[spelled]
        closed = final_index[spelled] > 0
        out[at[closed] + 2] = final[spelled][closed]
        # A syllable whose jamo are not all known: its three UTF-8 bytes (every syllable has three).
        whole = points[where[~spelled]].astype(np.int64)
        at = starts[where[~spelled]]
        for k, byte in enumerate((0xE0 | whole >> 12, 0x80 | (whole >> 6) & 0x3F, 0x80 | whole & 0x3F)):
            out[at + k] = self._byte_id[byte]
        for i, piece in zip(other_unknown, fallbacks):
            out[starts[i] : starts[i] + len(piece)] = piece
        return out

    def stream_decoder(self) -> JamoStreamDecoder:
        return JamoStreamDecoder(self)

    def token_texts(self, ids: Iterable[int], compose: bool = True) -> list[str]:
        if not compose:  # the text as the model reads it: each decomposed jamo on its own
            return super().token_texts(ids, compose)
        decoder = self.stream_decoder()
        pieces: list[str] = []
        for token in ids:
            earlier, now = decoder.step(int(token))
            if earlier and pieces:  # a syllable the previous token ended, released by this one
                pieces[-1] += earlier
            else:
                now = earlier + now
            pieces.append(now)
        if pieces:
            pieces[-1] += decoder.flush()
        return pieces

    def _chars_per_piece(self) -> np.ndarray:
        # A syllable counts once, at its initial: exact for any text `encode` made.
        lengths = super()._chars_per_piece()
        lengths[(self.role == VOWEL) | (self.role == FINAL)] = 0
        return lengths


class JamoStreamDecoder:
    """Turns ids into text one at a time, composing decomposed jamo into syllables.

    At most one partial syllable is held: an initial, or an initial and a vowel (which a final
    may still join). Byte-fallback ids go through the ordinary decoder; the two never hold
    text at the same time, since each releases its own before the other takes a token."""

    def __init__(self, tokenizer: JamoTokenizer):
        self._tok = tokenizer
        self._plain = StreamDecoder(tokenizer)
        self._initial = -1
        self._vowel = -1

    def __call__(self, token_id: int) -> str:
        earlier, now = self.step(token_id)
        return earlier + now

    def step(self, token_id: int) -> tuple[str, str]:
        """(text that earlier tokens ended, released now because this one cannot join it;
        text this token ends)."""
        role = int(self._tok.role[token_id])
        if role == NONE:
            return self._release(), self._plain(token_id)
        index = int(self._tok.jamo_index[token_id])
        earlier = self._plain.flush()  # bytes left without the rest of their character
        if role == INITIAL:
            earlier += self._release()
            self._initial = index
            return earlier, ""
        if role == VOWEL and self._initial >= 0 and self._vowel < 0:
            self._vowel = index
            return earlier, ""
        if role == FINAL and self._vowel >= 0:
            text = syllable(self._initial, self._vowel, index)
            self._initial = self._vowel = -1
            return earlier, text
        # A vowel or final that joins nothing: shown as itself.
        return earlier + self._release(), jamo_char(role, index)

    def _release(self) -> str:
        """The partial syllable held, as text: a syllable without a final, or a lone initial."""
        if self._initial < 0:
            return ""
        text = syllable(self._initial, self._vowel) if self._vowel >= 0 else jamo_char(INITIAL, self._initial)
        self._initial = self._vowel = -1
        return text

    def flush(self) -> str:
        """Text still held back: a partial syllable, or an incomplete byte sequence (as U+FFFD)."""
        return self._release() + self._plain.flush()


def hangul_share(chunks: Iterable[str], limit: int = AUTO_SAMPLE) -> float:
    """The share of Hangul syllables among the characters that are not whitespace, over the
    first `limit` characters."""
    syllables = visible = seen = 0
    for chunk in chunks:
        chunk = chunk[: limit - seen]
        points = code_points(chunk).astype(np.int64)
        syllables += int(np.count_nonzero((points >= S_BASE) & (points < S_BASE + S_COUNT)))
        visible += sum(map(len, chunk.split()))  # str.split() splits at every Unicode whitespace
        seen += len(chunk)
        if seen >= limit:
            break
    return syllables / visible if visible else 0.0


def choose_kind(kind: str, chunks: Iterable[str]) -> tuple[str, str | None]:
    """The tokenizer kind a run uses, and a message when `auto` chose jamo.

    `auto` is jamo for Hangul-heavy text (syllables are at least HANGUL_HEAVY of the characters
    that are not whitespace, in the first AUTO_SAMPLE characters), char otherwise."""
    if kind != "auto":
        return kind, None
    share = hangul_share(chunks)
    if share < HANGUL_HEAVY:
        return "char", None
    return "jamo", (f"the text is {share:.0%} Hangul: --tokenizer auto spells each syllable in jamo "
                    "(--tokenizer char keeps whole syllables)")


__all__: Sequence[str] = ["JamoTokenizer", "JamoStreamDecoder", "choose_kind", "hangul_share", "symbol_counts"]
