"""How the command line reads: option checks, escapes in text options, and help that fits 80 columns.

Every number an option takes goes through one of the checks here, so nan, an infinity, zero
or a negative number is refused the same way everywhere, with the option named (exit 2).
Text options that stand for generated text (--prime, --stop) understand the escapes a
shell user types: `\\n`, `\\t`, `\\r` and `\\\\`. `Command` and `Group` are the typer classes
of charlm's commands: they give flags no value placeholder, show each positional
argument's placeholder (`[CKPT] [FILE]`) as written in the usage line, and join the lines of
a prose paragraph so that rich wraps it to the terminal instead of breaking it where the
source did.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import typer
from typer.core import TyperCommand, TyperGroup

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def unescape(text: str | None) -> str | None:
    """`\\n`, `\\t`, `\\r` and `\\\\` as the characters they stand for; any other backslash stays."""
    if text is None:
        return None
    return _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(0)), text)


def _number_check(test: Callable[[float], bool], rule: str) -> Callable:
    def check(value):
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v is None:
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise typer.BadParameter(f"must be a finite number, got {v}")
            if not test(v):
                raise typer.BadParameter(f"must be {rule}, got {v}")
        return value

    return check


# Callbacks for typer options; each lets None (an option not given) through.
positive = _number_check(lambda v: v > 0, "positive")
not_negative = _number_check(lambda v: v >= 0, "0 or more")
finite = _number_check(lambda v: True, "a number")
below_one = _number_check(lambda v: 0 <= v < 1, "at least 0 and below 1")
probability = _number_check(lambda v: 0 < v <= 1, "above 0 and at most 1")


def text_with_escapes(value: str | None) -> str | None:
    """Callback for --prime and --stop."""
    return unescape(value)


def reflow(help_text: str | None) -> str | None:
    """Join the lines of each prose paragraph; a paragraph with an indented or a command line
    (examples) keeps its lines."""
    if not help_text:
        return help_text
    paragraphs = help_text.split("\n\n")
    out = []
    for paragraph in paragraphs:
        lines = paragraph.split("\n")
        literal = any(line.startswith((" ", "charlm ", "torchrun ")) for line in lines[1:]) or \
            any(line.lstrip().startswith(("charlm ", "torchrun ")) for line in lines)
        out.append(paragraph if literal else " ".join(line.strip() for line in lines))
    return "\n\n".join(out)


class _ReadableHelp:
    """What Command and Group share: flags without a placeholder, arguments as their metavar says."""

    def _tidy(self) -> None:
        import inspect

        self.help = reflow(inspect.cleandoc(self.help)) if self.help else self.help
        for param in self.params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""  # a flag takes no value: no `<bool>` after it
            if param.param_type_name == "argument" and param.metavar:
                # The name column shows the metavar already; no type after it.
                param.display_type_rich = lambda ctx: None

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument" and param.metavar:
                pieces.append(param.metavar)  # as written: [CKPT] [FILE], [PATHS]...
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class Command(_ReadableHelp, TyperCommand):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tidy()


class Group(_ReadableHelp, TyperGroup):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tidy()

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [*super().collect_usage_pieces(ctx), self.subcommand_metavar]  # COMMAND [ARGS]...
