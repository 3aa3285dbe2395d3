"""Per-character features of a text that a hidden unit might track, and the built-in sample text.

Each feature is a float32 array with one value per character, describing the state of the
text *after* reading that character, which is what a unit's activation at that character
reflects: an opening quote gives 1 (now inside a string), its closing quote 0; a newline
gives line position 0. Brackets, strings and comments are found by one regular-expression
scan in C and turned into arrays with numpy, so a megabyte takes a fraction of a second.
The rules are simple on purpose (see each function); they fit code and ordinary prose.

Three features follow Korean text: where a character ends within a Hangul syllable, where
syllables end, and how far into a Korean word (어절) it is. A jamo model takes two or three
steps per syllable, so for it the search runs over tokens (neurons.py): `SPELLED` features
are then computed on the text as the model reads it, each syllable spelled in jamo.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import numpy as np

from .errors import UsageError

TAB_WIDTH = 4  # a tab counts as this many columns of indentation

# Strings and comments in one left-to-right scan, so that a '#' inside a string is not a comment
# and a quote inside a comment opens no string. A single quote right after a letter is an
# apostrophe (don't, the students' books), unless the letters are a string prefix (f'...', rb'...').
# Ordinary strings end at their closing quote or at the end of the line; triple-quoted ones may
# span lines. '//' starts a comment only at the start of a line or after ; { } (so a // b, Python's
# floor division, is not one).
_STRINGS_AND_COMMENTS = re.compile(
    r"""
      (?P<triple>(?:(?<!\w)[rRbBuUfF]{1,2})?(?P<q3>\"\"\"|''')(?P<body3>(?:\\.|.)*?)(?:(?P=q3)|\Z))
    | (?P<string>(?:(?<!\w)[rRbBuUfF]{1,2}|(?<!\w)(?=')|(?="))(?P<q1>["'])(?P<body1>(?:\\.|[^\\\n])*?)(?:(?P=q1)|(?=\n)|\Z))
    | (?P<hash>\#[^\n]*)
    | (?:^|(?<=[;{}]))[ \t]*(?P<slashes>//[^\n]*)
    | (?P<block>/\*.*?(?:\*/|\Z))
    """,
    re.VERBOSE | re.DOTALL | re.MULTILINE,
)
_OPENERS = "([{"
_CLOSERS = ")]}"


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _spans_to_mask(n: int, spans: Iterable[tuple[int, int]]) -> np.ndarray:
    """1.0 inside each [start, end), 0.0 elsewhere, built from a difference array."""
    diff = np.zeros(n + 1, dtype=np.int32)
    for start, end in spans:
        if end > start:
            diff[start] += 1
            diff[end] -= 1
    return (np.cumsum(diff[:n]) > 0).astype(np.float32)


def _string_and_comment_spans(text: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    strings, comments = [], []
    for m in _STRINGS_AND_COMMENTS.finditer(text):
        if m.group("triple") is not None or m.group("string") is not None:
            quote, body = ("q3", "body3") if m.group("triple") is not None else ("q1", "body1")
            closed = m.end() > m.end(body)
            # The closing quote itself is outside: after reading it, the string is over.
            strings.append((m.start(quote), m.end() - 1 if closed else m.end()))
        elif m.group("block") is not None:
            closed = m.group("block").endswith("*/")
            comments.append((m.start(), m.end() - 1 if closed else m.end()))
        else:
            kind = "hash" if m.group("hash") is not None else "slashes"
            comments.append((m.start(kind), m.end(kind)))
    return strings, comments


def in_string(text: str) -> np.ndarray:
    """1 from an opening quote up to (not including) its closing quote: "..." '...' and triple quotes."""
    strings, _ = _string_and_comment_spans(text)
    return _spans_to_mask(len(text), strings)


def in_comment(text: str) -> np.ndarray:
    """1 inside # and // comments (to the end of the line) and /* */ comments; the closing / is 0."""
    _, comments = _string_and_comment_spans(text)
    return _spans_to_mask(len(text), comments)


def bracket_depth(text: str) -> np.ndarray:
    """Nesting of ( [ { after each character: openers add one, closers take one, never below zero."""
    points = _code_points(text)
    step = np.zeros(len(points), dtype=np.int64)
    for ch in _OPENERS:
        step[points == ord(ch)] = 1
    for ch in _CLOSERS:
        step[points == ord(ch)] = -1
    walk = np.cumsum(step)
    # A stray closer would push the count below zero; clamping restarts it there. The clamped
    # walk equals the raw walk minus the lowest point it has reached so far (if below zero).
    floor = np.minimum(np.minimum.accumulate(walk), 0) if len(walk) else walk
    return (walk - floor).astype(np.float32)


def line_position(text: str) -> np.ndarray:
    """Characters read on the current line so far: 1 for a line's first character, 0 for a newline."""
    points = _code_points(text)
    index = np.arange(len(points))
    last_newline = np.maximum.accumulate(np.where(points == ord("\n"), index, -1)) if len(points) else index
    return (index - last_newline).astype(np.float32)


def indent(text: str) -> np.ndarray:
    """Leading whitespace of the line each character is on (tabs count 4); a newline ends its line."""
    points = _code_points(text)
    newline = (points == ord("\n")).astype(np.int64)
    line_of_char = np.cumsum(newline) - newline
    leading = re.finditer(r"^[ \t]*", text, re.MULTILINE)  # one match per line
    per_line = np.array([len(m.group().expandtabs(TAB_WIDTH)) for m in leading], dtype=np.float32)
    return per_line[line_of_char] if len(points) else np.zeros(0, np.float32)


def word_position(text: str) -> np.ndarray:
    """1, 2, 3... through each word (a run of letters, digits or _), 0 outside words."""
    n = len(text)
    in_word = _spans_to_mask(n, (m.span() for m in re.finditer(r"\w+", text))) > 0
    index = np.arange(n)
    starts_word = in_word & ~np.concatenate([[False], in_word[:-1]])
    word_start = np.maximum.accumulate(np.where(starts_word, index, 0)) if n else index
    return np.where(in_word, index - word_start + 1, 0).astype(np.float32)


# Hangul_Syllable_Type of the conjoining jamo (Unicode's HangulSyllableType.txt): leading
# consonants (L), vowels (V), trailing consonants (T); precomposed syllables are LV or LVT.
_L_RANGES = ((0x1100, 0x115F), (0xA960, 0xA97C))
_V_RANGES = ((0x1160, 0x11A7), (0xD7B0, 0xD7C6))
_T_RANGES = ((0x11A8, 0x11FF), (0xD7CB, 0xD7FB))
_HANGUL_RANGES = ((0xAC00, 0xD7A3), (0x1100, 0x11FF), (0x3131, 0x318E), (0xA960, 0xA97F), (0xD7B0, 0xD7FF),
                  (0xFFA0, 0xFFDC))  # syllables, conjoining, compatibility and halfwidth jamo
_L, _V, _T, _LV, _LVT = 1, 2, 3, 4, 5


def _in_ranges(points: np.ndarray, ranges) -> np.ndarray:
    inside = np.zeros(len(points), dtype=bool)
    for low, high in ranges:
        inside |= (points >= low) & (points <= high)
    return inside


def _syllable_types(points: np.ndarray) -> np.ndarray:
    kinds = np.zeros(len(points), dtype=np.int8)
    kinds[_in_ranges(points, _L_RANGES)] = _L
    kinds[_in_ranges(points, _V_RANGES)] = _V
    kinds[_in_ranges(points, _T_RANGES)] = _T
    offset = points.astype(np.int64) - 0xAC00
    syllable = (offset >= 0) & (offset < 11172)
    kinds[syllable] = np.where(offset[syllable] % 28 == 0, _LV, _LVT)
    return kinds


def jamo_position(text: str) -> np.ndarray:
    """Where a character leaves its Hangul syllable: 1 after an initial consonant, 2 after the
    vowel, 3 after a final consonant; 0 for anything else (compatibility jamo such as ㅋ are
    letters of their own: 0). A precomposed syllable is read whole, so it gives 2 (ends on its
    vowel, 가) or 3 (ends on a final, 각): to a char model, whether the syllable is closed, which
    picks 은/는 and 이/가 after it. Conjoining jamo (NFD text, old Hangul, and the spelled text a
    jamo model reads) give their own part."""
    kinds = _syllable_types(_code_points(text))
    return np.array([0, 1, 2, 3, 2, 3], dtype=np.float32)[kinds]


def syllable_boundary(text: str) -> np.ndarray:
    """1 on a character that ends a Hangul syllable block, 0 elsewhere. Blocks follow Unicode's
    grapheme rules for Hangul (UAX #29, GB6-GB8): an initial goes on into a vowel or a syllable,
    a vowel (or LV syllable) into a vowel or final, a final (or LVT syllable) into a final. So
    every precomposed syllable ends one, and in spelled text the vowel or final that closes it."""
    kinds = _syllable_types(_code_points(text))
    following = np.append(kinds[1:], 0)
    goes_on = (((kinds == _L) & np.isin(following, (_L, _V, _LV, _LVT)))
               | (np.isin(kinds, (_V, _LV)) & np.isin(following, (_V, _T)))
               | (np.isin(kinds, (_T, _LVT)) & (following == _T)))
    return ((kinds > 0) & ~goes_on).astype(np.float32)


def eojeol_position(text: str) -> np.ndarray:
    """1, 2, 3... through each Korean word (어절: a run of characters between whitespace, with its
    particles and punctuation attached, that holds some Hangul); 0 on whitespace and in runs
    without Hangul."""
    points = _code_points(text)
    position = np.zeros(len(points), dtype=np.float32)
    runs = [m.span() for m in re.finditer(r"\S+", text)]
    if not runs:
        return position
    starts = np.array([start for start, _ in runs], dtype=np.int64)
    index = np.arange(len(points))
    run_of = np.maximum(np.searchsorted(starts, index, side="right") - 1, 0)  # the run a character is in, if any
    in_run = _spans_to_mask(len(points), runs) > 0
    has_hangul = np.bincount(run_of[in_run & _in_ranges(points, _HANGUL_RANGES)], minlength=len(runs)) > 0
    korean = in_run & has_hangul[run_of]
    position[korean] = (index - starts[run_of] + 1)[korean]
    return position


def regex_feature(pattern: str, text: str) -> np.ndarray:
    """1 inside the matches of a user's regular expression, 0 elsewhere."""
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise UsageError(f"--find-regex {pattern!r}: not a valid regular expression ({e})") from None
    return _spans_to_mask(len(text), (m.span() for m in compiled.finditer(text)))


FEATURES: dict[str, Callable[[str], np.ndarray]] = {
    "bracket-depth": bracket_depth,
    "in-string": in_string,
    "in-comment": in_comment,
    "line-position": line_position,
    "indent": indent,
    "word-position": word_position,
    "jamo-position": jamo_position,
    "syllable-boundary": syllable_boundary,
    "eojeol-position": eojeol_position,
}
# Features of a syllable's inside: for a jamo model, computed on the text spelled in jamo.
SPELLED = ("jamo-position", "syllable-boundary")


def compute_feature(name: str, text: str) -> np.ndarray:
    if name not in FEATURES:
        raise UsageError(f"--find {name}: unknown feature; choose one of {', '.join(FEATURES)}")
    return FEATURES[name](text)


# Shown when no text is given: code and prose that exercise every built-in feature.
BUILTIN_TEXT = '''\
def count_words(path, limit=None):
    """Return the most common words of a file, with how often each appears."""
    counts = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            # Split on whitespace; punctuation stays attached to its word.
            for word in line.lower().split():
                counts[word] = counts.get(word, 0) + 1
    ranked = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))
    return ranked[:limit] if limit else ranked


if __name__ == "__main__":
    table = count_words("notes.txt", limit=[3, 5][0])
    for word, n in table:
        print(f"{word!r:>12} {n:4d}  {'#' * min(n, 40)}")
    settings = {"mode": 'fast', "sizes": [(1, 2), (3, [4, 5])], "name": "a (quoted) word"}

/* The same loop in C, for comparison. */
int total(const int *xs, int n) {
    int sum = 0;  // running total
    for (int i = 0; i < n; i++) { sum += xs[i] * (i + 1); }
    return sum;
}

The ferry left at noon (or a little after, if the tide was late). "Bring a coat," said
the captain, "and keep the tickets dry." Nobody listened: the wind took two hats, one
map and a paper bag of plums [see the log, page 4]. By evening the harbour lights came
on one by one, and the passengers (tired, cold, but cheerful) walked up the hill.
'''
