"""Writes corpora/nested.txt: made-up code full of nested brackets, quoted strings, comments and indentation.

The text is a small invented language, generated from a fixed seed so the file is the same
on every machine. Each line is one statement and ends only at bracket depth 0; expressions
nest calls f(...), lists [...], maps {...} and groups (...) up to five deep; a line ending
in ':' opens a block indented four more spaces; '#' starts a comment. Two rules make the
structure worth learning, so that a small model trained for a minute grows units that
`charlm inspect-neurons --find bracket-depth` and `--find in-string` can find:
- a number outside a string is the bracket depth where it stands, so predicting it takes
  counting brackets;
- a string holds a long comma-separated list like the code around it, but its numbers are
  random and it ends with a quote, so predicting inside it takes remembering the quote.

    python corpora/make_nested.py              # writes corpora/nested.txt (about 300 KB)
    python corpora/make_nested.py --chars 50000 --seed 2 --out other.txt
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

WORDS = ("ant", "bee", "cat", "dog", "eel", "fox", "gnu", "hen", "jay", "kit", "owl", "pig", "ram", "yak")
OPERATORS = (" + ", " - ", " * ", " or ")
MAX_DEPTH = 5


class Generator:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def word(self) -> str:
        return self.rng.choice(WORDS)

    def string(self) -> str:
        quote = '"' if self.rng.random() < 0.8 else "'"
        items = (self.word() if self.rng.random() < 0.5 else str(self.rng.randint(0, 9))
                 for _ in range(self.rng.randint(3, 10)))
        return quote + ", ".join(items) + quote

    def atom(self, depth: int) -> str:
        roll = self.rng.random()
        if roll < 0.2:
            return self.string()
        if roll < 0.6:
            return str(depth)
        return self.word()

    def expression(self, depth: int) -> str:
        # Deeper expressions are more often plain atoms, so lines stay short and depth stays varied.
        if depth >= MAX_DEPTH or self.rng.random() < 0.15 + 0.15 * depth:
            return self.atom(depth)
        kind = self.rng.random()
        if kind < 0.35:
            return f"{self.word()}({self.items(depth + 1)})"
        if kind < 0.6:
            return f"[{self.items(depth + 1)}]"
        if kind < 0.8:
            pairs = (f"{self.word()}: {self.expression(depth + 1)}" for _ in range(self.rng.randint(1, 3)))
            return "{" + ", ".join(pairs) + "}"
        return f"({self.expression(depth + 1)}{self.rng.choice(OPERATORS)}{self.expression(depth + 1)})"

    def items(self, depth: int) -> str:
        return ", ".join(self.expression(depth) for _ in range(self.rng.randint(1, 3)))

    def statement(self) -> str:
        if self.rng.random() < 0.5:
            return f"{self.word()} = {self.expression(0)}"
        return f"{self.word()}({self.items(1)})"

    def lines(self):
        indent = 0
        while True:
            roll = self.rng.random()
            pad = " " * indent
            if roll < 0.06:
                yield f"{pad}# {' '.join(self.word() for _ in range(self.rng.randint(2, 6)))}"
            elif roll < 0.18 and indent < 12:
                yield f"{pad}{self.rng.choice(('if', 'while', 'for'))} {self.expression(0)}:"
                indent += 4
                yield " " * indent + self.statement()
            else:
                yield pad + self.statement()
            if indent and self.rng.random() < 0.3:
                indent -= 4


def generate(chars: int, seed: int = 0) -> str:
    """About `chars` characters of text, whole lines only, ending with a newline."""
    out, size = [], 0
    for line in Generator(seed).lines():
        if size + len(line) + 1 > chars:
            break
        out.append(line)
        size += len(line) + 1
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the nested-brackets-and-quotes corpus.")
    parser.add_argument("--chars", type=int, default=300_000, help="size of the text")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("nested.txt"))
    args = parser.parse_args()
    args.out.write_text(generate(args.chars, args.seed), encoding="utf-8")
    print(args.out)


if __name__ == "__main__":
    main()
