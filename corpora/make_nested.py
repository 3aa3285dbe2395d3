"""Writes corpora/nested.txt: made-up code full of nested brackets, quoted strings and indentation.

The text is a small invented language, generated from a fixed seed so the file is the same
on every machine. A line is an assignment `x = ...`, a block header `if x:` whose body is
indented four spaces, or a comment; an expression nests lists [...], maps {...} and groups
(...) up to five deep, and a line ends only when every bracket is closed. Some assignments
put a whole expression inside double quotes. Two rules make this structure worth learning,
so that a small LSTM trained for about a minute grows units that `charlm inspect-neurons
--find bracket-depth` and `--find in-string` find (tests/test_neurons.py checks it):
- outside strings, a number is the bracket depth where it stands, so predicting one takes
  counting brackets;
- inside a string every number is 0, so predicting one takes knowing that a quote is open.

    python corpora/make_nested.py              # writes corpora/nested.txt (about 300 KB)
    python corpora/make_nested.py --chars 50000 --seed 2 --out other.txt
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterator
from pathlib import Path

NAMES = "abcdefgh"
BRACKETS = ("()", "[]", "{}")
MAX_DEPTH = 5


class Generator:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def name(self) -> str:
        return self.rng.choice(NAMES)

    def expression(self, depth: int, quoted: bool) -> str:
        # Deeper expressions are more often single atoms, so depth stays varied and lines short.
        if depth >= MAX_DEPTH or self.rng.random() < 0.15 + 0.15 * depth:
            if self.rng.random() < 0.5 and depth > 0:
                return "0" if quoted else str(depth)
            return self.name()
        opener, closer = self.rng.choice(BRACKETS)
        items = ", ".join(self.expression(depth + 1, quoted) for _ in range(self.rng.randint(1, 3)))
        return opener + items + closer

    def assignment(self) -> str:
        if self.rng.random() < 0.35:
            quoted = ""
            while len(quoted) < 3:  # a string worth the name
                quoted = self.expression(0, quoted=True)
            return f'{self.name()} = "{quoted}"'
        return f"{self.name()} = {self.expression(0, quoted=False)}"

    def lines(self) -> Iterator[str]:
        indent = 0
        while True:
            roll = self.rng.random()
            if roll < 0.04:
                yield " " * indent + "# " + " ".join(self.name() for _ in range(self.rng.randint(2, 5)))
            elif roll < 0.12 and indent < 8:
                yield " " * indent + f"{self.rng.choice(('if', 'while'))} {self.name()}:"
                indent += 4
                yield " " * indent + self.assignment()
            else:
                yield " " * indent + self.assignment()
            if indent and self.rng.random() < 0.35:
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
