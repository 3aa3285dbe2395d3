"""The `charlm` command: parse options, call one library function, print the result.

Products (sampled text, JSON, checkpoint paths) go to stdout; progress, tables meant for
people and messages go to stderr, so pipes work. Errors are one line on stderr: exit 2 for
bad input or usage, 1 for runtime failures, no traceback unless CHARLM_DEBUG=1.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console, Group

from . import __version__, options
from .config import (
    CELL_TOKENS_PER_PARAM,
    CELL_WIDTHS,
    DROPOUT_BY_PASSES,
    LR_BY_CELL,
    LR_STEADY_STEPS,
    TOKENS_PER_PARAM,
    WIDTHS,
    ModelConfig,
    TrainConfig,
)
from .errors import CharlmError, UsageError
from .explorer import DEFAULT_CHARS

try:  # typer >= 0.20 carries its own copy of click, whose exceptions are not click's
    from typer._click import exceptions as click_exceptions
except ImportError:  # older typer runs on click itself
    from click import exceptions as click_exceptions

app = typer.Typer(
    cls=options.Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    help="Train character-level RNN language models (GRU, LSTM, vanilla RNN), sample from them, "
    "measure them, and look inside them.",
)

RUNS_DIR = Path(os.environ.get("CHARLM_RUNS_DIR", "runs"))


def _stderr() -> Console:
    return Console(stderr=True)


class Cell(str, Enum):
    rnn = "rnn"
    gru = "gru"
    lstm = "lstm"


class TokenizerKind(str, Enum):
    char = "char"
    jamo = "jamo"
    auto = "auto"
    unigram = "unigram"
    bpe = "bpe"


class Schedule(str, Enum):
    linear = "linear"
    cosine = "cosine"
    constant = "constant"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class Direction(str, Enum):
    forward = "forward"
    backward = "backward"
    both = "both"
    bidirectional = "bidirectional"


class Errors(str, Enum):
    strict = "strict"
    replace = "replace"


def _version(value: bool) -> None:
    if value:
        print(f"charlm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train character-level RNN language models and look inside them."""


# Options several commands share. Every number goes through a check of options.py, which
# refuses nan and infinities as well as what is out of range, naming the option.
Device = Annotated[str, typer.Option(metavar="NAME", help="auto, cpu, cuda or mps.")]
Encoding = Annotated[str, typer.Option(metavar="NAME", help="Text encoding of the text files.")]
ErrorsOption = Annotated[Errors, typer.Option(metavar="strict|replace",
                                              help="strict: undecodable bytes are an error; replace: U+FFFD.")]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
POSITIVE_INT = {"metavar": "N", "callback": options.positive}


def _lr_default() -> str:
    """The learning rate's default, as the help shows it (config.py holds the figures)."""
    rates = ", ".join(f"{cell} {rate:g}" for cell, rate in LR_BY_CELL.items())
    by_steps: dict[float, list[str]] = {}
    for cell, steps in LR_STEADY_STEPS.items():
        if steps != float("inf"):
            by_steps.setdefault(steps, []).append(cell.upper())
    longer = [f"a {' or '.join(cells)} run of more than {steps:,.0f} steps gets it times sqrt({steps:.0f} / steps)"
              for steps, cells in by_steps.items()]
    return f"the cell's: {rates}" + ("; " + "; ".join(longer) if longer else "")


LR_DEFAULT = _lr_default()
HIDDEN_DEFAULT = (
    f"the one of {', '.join(map(str, WIDTHS))} ("
    + "; ".join(f"{'an' if cell == 'rnn' else 'a'} {cell.upper()}: {', '.join(map(str, widths))}"
                for cell, widths in CELL_WIDTHS.items())
    + f") that the run feeds closest to {TOKENS_PER_PARAM:g} training tokens per parameter ("
    + "; ".join(f"a {cell.upper()}: {goal:g}" for cell, goal in CELL_TOKENS_PER_PARAM.items())
    + "), unless --layers or --dropout is given")
DROPOUT_DEFAULT = "by the passes the run makes over its text: " + ", ".join(
    f"{dropout:g} up to {most:g}" if most != float("inf") else f"{dropout:g} beyond"
    for most, dropout in DROPOUT_BY_PASSES)


def _say(text: str) -> None:
    _stderr().print(text, style="dim", markup=False, highlight=False, soft_wrap=True)  # one line, never cut


def _note_skipped(corpus) -> None:
    """Say which files of the folders given were left out, and why."""
    summary = corpus.skipped_summary()
    if summary:
        _say(summary)


@app.command(cls=options.Command)
def train(
    paths: Annotated[Optional[list[Path]], typer.Argument(
        metavar="[PATHS]...", show_default=False,
        help="Text files or folders (read recursively, each real file once). None: the Python standard "
             "library's source.")] = None,
    cell: Annotated[Optional[Cell], typer.Option(metavar="rnn|gru|lstm", show_default=False,
                                                 help="Recurrent cell. \\[default: lstm]")] = None,
    layers: Annotated[Optional[int], typer.Option(**POSITIVE_INT, help=(
        f"Stacked recurrent layers. \\[default: {ModelConfig.layers}]"))] = None,
    hidden: Annotated[Optional[int], typer.Option(**POSITIVE_INT, help=(
        f"Hidden units per layer. \\[default: {HIDDEN_DEFAULT}]"))] = None,
    embedding: Annotated[Optional[int], typer.Option(**POSITIVE_INT, help=(
        f"Embedding size. \\[default: {ModelConfig.embedding}]"))] = None,
    dropout: Annotated[Optional[float], typer.Option(metavar="P", callback=options.below_one, help=(
        f"Dropout probability, at least 0 and below 1. \\[default: {DROPOUT_DEFAULT}; "
        "0 with --hidden or --layers]"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(**POSITIVE_INT, help=(
        f"Parallel text streams. \\[default: {TrainConfig.batch_size}]"))] = None,
    seq_len: Annotated[Optional[int], typer.Option(**POSITIVE_INT, help=(
        f"Characters per BPTT chunk. \\[default: {TrainConfig.seq_len}]"))] = None,
    lr: Annotated[Optional[float], typer.Option(metavar="RATE", callback=options.positive, help=(
        f"Peak learning rate. \\[default: {LR_DEFAULT}]"))] = None,
    schedule: Annotated[Optional[Schedule], typer.Option(metavar="NAME", show_default=False,
                                                         help="Learning-rate decay after warmup: linear, "
                                                              "cosine or constant. \\[default: linear]")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(metavar="N", callback=options.not_negative, help=(
        "Warmup steps; with a decaying schedule, at most a tenth of the run. "
        f"\\[default: {TrainConfig.warmup_steps}]"))] = None,
    weight_decay: Annotated[Optional[float], typer.Option(metavar="X", callback=options.not_negative, help=(
        f"AdamW weight decay. \\[default: {TrainConfig.weight_decay}]"))] = None,
    grad_clip: Annotated[Optional[float], typer.Option(metavar="NORM", callback=options.not_negative, help=(
        f"Clip the gradient norm to this; 0: off. \\[default: {TrainConfig.grad_clip}]"))] = None,
    no_clip: Annotated[bool, typer.Option("--no-clip", help="Turn gradient clipping off (--grad-clip 0), "
                                          "to watch gradients explode.")] = False,
    max_steps: Annotated[Optional[int], typer.Option(**POSITIVE_INT, help="Stop after this many steps.")] = None,
    epochs: Annotated[Optional[float], typer.Option(metavar="N", callback=options.positive,
                                                    help="Stop after this many passes over the text.")] = None,
    time_budget: Annotated[Optional[float], typer.Option(metavar="SECONDS", callback=options.positive,
                                                         help="Stop after this many seconds of training.")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(metavar="X", callback=options.below_one, help=(
        f"Share of the text held out, from its end. \\[default: {TrainConfig.val_fraction}]"))] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(**POSITIVE_INT,
                                                            help="Also save last.pt every N steps.")] = None,
    sample_length: Annotated[Optional[int], typer.Option(metavar="N", callback=options.not_negative, help=(
        f"Characters of each progress sample; 0: none. \\[default: {TrainConfig.sample_length}]"))] = None,
    tokenizer: Annotated[Optional[TokenizerKind], typer.Option(
        metavar="KIND", show_default=False,
        help="char; jamo: Hangul syllables spelled in jamo; auto: jamo for mostly-Hangul text, else char; "
             f"or a subword model: unigram, bpe. \\[default: {TrainConfig.tokenizer}]")] = None,
    vocab_size: Annotated[Optional[int], typer.Option(**POSITIVE_INT, help=(
        "Vocabulary size (subword tokenizers; caps the characters kept for char)."))] = None,
    direction: Annotated[Optional[Direction], typer.Option(metavar="NAME", show_default=False, help=(
        "forward: read left to right, predict the next character; backward: read right to left, predict "
        "the previous one; both: the two in one run, one checkpoint (a biLM; twice the work per step); "
        "bidirectional: refused, see --cheat-demo. \\[default: forward]"))] = None,
    cheat_demo: Annotated[bool, typer.Option("--cheat-demo", help=(
        "Train a single bidirectional RNN to predict the next character anyway, to watch it cheat: its "
        "backward half reads the answer, the loss falls to near zero, and its samples are garbage."))] = False,
    teacher_forcing: Annotated[Optional[str], typer.Option(metavar="P|START:END", show_default=False, help=(
        "P: the probability that a step's input is the true previous character rather than one drawn "
        "from the model (scheduled sampling); START:END moves it linearly over the run, e.g. 1:0. "
        "Below 1 the cells run one character at a time instead of one fused kernel per chunk: "
        "several times slower per step. \\[default: 1]"))] = None,
    encoding: Annotated[str, typer.Option(metavar="NAME", help="Text encoding of the corpus.")] = "utf-8",
    errors: ErrorsOption = Errors.strict,
    out: Annotated[Optional[Path], typer.Option(metavar="FOLDER", show_default=False,
                                                help="Run folder. \\[default: runs/<time>-<corpus>-<cell>]")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        metavar="CKPT", help="Continue the run in this checkpoint (a run folder: its last.pt).")] = None,
    seed: Annotated[Optional[int], typer.Option(metavar="N", help=(
        f"Random seed. \\[default: {TrainConfig.seed}]"))] = None,
    device: Annotated[Optional[str], typer.Option(metavar="NAME",
                                                  help="auto, cpu, cuda or mps. \\[default: auto]")] = None,
    precision: Annotated[Optional[Precision], typer.Option(
        metavar="auto|fp32|bf16",
        help="Training steps in bf16 autocast or float32. auto: bf16 on a GPU, and on a CPU "
             "with native bf16 (AVX512-BF16, AMX) for an LSTM or GRU of 384 units or more, where it is the faster. "
             "Weights, checkpoints and evaluation stay float32. "
             "\\[default: auto]", show_default=False)] = None,
) -> None:
    """Train a model. With no stop given, it trains for one epoch.

    [bold]Examples[/]

    charlm train --time-budget 60               [dim]# the built-in Python corpus[/]
    charlm train shakespeare.txt --cell gru --time-budget 300
    charlm train notes/ --layers 2 --hidden 256 --epochs 5
    charlm train --resume runs/my-run --max-steps 20000
    charlm train shakespeare.txt --direction both --time-budget 300   [dim]# a biLM[/]
    charlm train shakespeare.txt --teacher-forcing 1:0 --time-budget 60
    """
    from .cheat import direction_asked
    from .corpus import open_corpus
    from .progress import RichReporter
    from .scheduled import parse_teacher_forcing
    from .train import train as run_training

    if no_clip:
        if grad_clip:
            raise UsageError("--no-clip and --grad-clip: give one or the other")
        grad_clip = 0.0
    corpus = None
    if paths or resume is None:
        corpus = open_corpus(paths or [], encoding, errors.value)
        _note_skipped(corpus)
    model_options = {"cell": cell.value if cell else None, "layers": layers, "hidden": hidden,
                     "embedding": embedding, "dropout": dropout,
                     "direction": direction_asked(direction.value if direction else None, cheat_demo)}
    forcing = parse_teacher_forcing(teacher_forcing) if teacher_forcing is not None else (None, None)
    train_options = {
        "batch_size": batch_size, "seq_len": seq_len, "lr": lr, "schedule": schedule.value if schedule else None,
        "warmup_steps": warmup_steps, "weight_decay": weight_decay, "grad_clip": grad_clip,
        "max_steps": max_steps, "epochs": epochs, "time_budget": time_budget, "val_fraction": val_fraction,
        "checkpoint_every": checkpoint_every, "sample_length": sample_length,
        "tokenizer": tokenizer.value if tokenizer else None, "vocab_size": vocab_size, "seed": seed,
        "device": device, "precision": precision.value if precision else None,
        # A constant P ends where it starts, so that it also replaces a resumed run's schedule.
        "teacher_forcing": forcing[0], "teacher_forcing_end": forcing[1] if forcing[1] is not None else forcing[0],
    }
    result = run_training(corpus, model_options, train_options, out=out, resume=resume, runs_dir=RUNS_DIR,
                          reporter=RichReporter(_stderr()))
    if result.main_process:
        best = result.out_dir / "best.pt"
        print(best if best.exists() else result.out_dir / "last.pt")


def _validate_seed(value: int | None) -> int | None:
    if value is not None and not -(2**63) <= value < 2**64:  # what torch's generators accept
        raise typer.BadParameter(f"must fit in 64 bits, got {value}")
    return value


def _checkpoint(given: Path | None) -> dict:
    """Load the checkpoint named, or the latest run's; when charlm picked the file (no
    checkpoint named, or a run folder), say on stderr which one it used and what it holds."""
    from .checkpoint import describe, find_in_run, latest_checkpoint, load_checkpoint

    if given is None:
        path = latest_checkpoint(RUNS_DIR)
    elif given.is_dir():
        path = find_in_run(given)
    else:
        return load_checkpoint(given)
    payload = load_checkpoint(path)
    _say(f"using {path} ({describe(payload)})")
    return payload


@app.command(cls=options.Command)
def sample(
    checkpoint: Annotated[Optional[Path], typer.Argument(
        metavar="[CKPT]", show_default=False,
        help="Checkpoint file or run folder. \\[default: the latest run under runs/]")] = None,
    temp: Annotated[float, typer.Option(metavar="T", callback=options.not_negative,
                                        help="Temperature; 0 always takes the likeliest character.")] = 0.8,
    top_k: Annotated[int, typer.Option(metavar="K", callback=options.not_negative,
                                       help="Draw only from the k likeliest; 0: no limit.")] = 0,
    top_p: Annotated[float, typer.Option(metavar="P", callback=options.probability,
                                         help="Draw only from the smallest set with this much probability.")] = 1.0,
    prime: Annotated[str, typer.Option(metavar="TEXT", callback=options.text_with_escapes,
                                       help="Text to start from; printed first. \\n, \\t and \\\\ stand "
                                            "for a newline, a tab and a backslash.")] = "",
    prime_file: Annotated[Optional[Path], typer.Option(metavar="FILE",
                                                       help="Read the prime from this file, as it is.")] = None,
    length: Annotated[int, typer.Option(metavar="N", callback=options.not_negative,
                                        help="Characters to generate per sample.")] = 500,
    num_samples: Annotated[int, typer.Option(metavar="N", callback=options.positive,
                                             help="Samples, generated side by side.")] = 1,
    seed: Annotated[Optional[int], typer.Option(metavar="N", callback=_validate_seed,
                                                help="Random seed: the same seed gives the same text.")] = None,
    stop: Annotated[Optional[str], typer.Option(
        metavar="TEXT", callback=options.text_with_escapes,
        help="End a sample right after it writes this text (\\n: a newline).")] = None,
    novelty: Annotated[Optional[Path], typer.Option(
        metavar="CORPUS", show_default=False,
        help="Afterwards, show on stderr which share of the sampled 10-, 20- and 40-character "
             "n-grams never occur in this training text (file or folder).")] = None,
    backward: Annotated[bool, typer.Option("--backward", help=(
        "Write the text that leads up to --prime, with a backward or both model: the prime is the "
        "ending. The text grows leftwards, so it is printed once complete, in reading order."))] = False,
    device: Device = "auto",
) -> None:
    """Generate text, streamed to stdout as it is made.

    [bold]Examples[/]

    charlm sample --temp 0.8
    charlm sample runs/my-run --prime "def " --length 300 --stop "\\n\\n"
    charlm sample --num-samples 5 --top-p 0.9 --seed 1
    charlm sample --novelty shakespeare.txt     [dim]# is it copying its corpus?[/]
    charlm sample runs/bilm --backward --prime "the end." --length 200
    """
    import torch

    from .checkpoint import model_from_checkpoint, trained_on_bytes
    from .directions import choose_reader
    from .sample import generate_batch, write_samples
    from .train import pick_device

    if prime_file is not None:
        prime = _read_text_option(prime_file, "--prime-file")
    novelty_corpus = None
    if novelty is not None:
        from .corpus import open_corpus

        # checked before sampling starts
        novelty_corpus = open_corpus([novelty], "utf-8", "replace", purpose="compare the samples with")
    payload = _checkpoint(checkpoint)
    dev = pick_device(device)
    model, tokenizer = model_from_checkpoint(payload, dev)
    reader = choose_reader(model, backward, payload["path"])
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    options = (num_samples, temp, top_k, top_p, stop or None, generator, dev)
    bytes_seen = trained_on_bytes(payload)
    try:
        if reader.backward:
            from .backward import generate_backward, write_backward

            texts = generate_backward(reader.model, tokenizer, prime, length, *options, bytes_seen=bytes_seen)
            write_backward(texts, sys.stdout, prime)
        else:
            if reader.direction == "bidirectional":
                from .cheat import generate_cheating

                window = (payload.get("train_config") or {}).get("seq_len", 64)
                stream = iter([generate_cheating(reader.model, tokenizer, prime, length, *options, window=window)])
            else:
                stream = generate_batch(reader.model, tokenizer, prime, length, *options, bytes_seen=bytes_seen)
            texts = write_samples(stream, sys.stdout, prime, num_samples)
    except BrokenPipeError:  # charlm sample | head -1: the reader has all it wants
        _drop_stdout()
        return
    if novelty_corpus is not None:
        from .novelty import measure_novelty, novelty_table

        results = measure_novelty(texts, novelty_corpus.chunks())  # the generated text, not the prime
        _stderr().print(novelty_table(results, str(novelty)))


def _read_text_option(path: Path, option: str) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise UsageError(f"{option} {path}: {e.strerror}") from None


def _is_checkpoint(path: Path) -> bool:
    if path.is_dir():  # a run folder; any other folder is a folder of text
        return (path / "best.pt").is_file() or (path / "last.pt").is_file()
    if path.suffix in (".pt", ".pth", ".ckpt"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
    except OSError:
        return False


@app.command("eval", cls=options.Command)
def eval_(
    paths: Annotated[Optional[list[Path]], typer.Argument(
        metavar="[CKPT]... FILE...", show_default=False,
        help="Checkpoints (files or run folders), then text files. No checkpoint: the latest run.")] = None,
    json_output: JsonOutput = False,
    show: Annotated[bool, typer.Option("--show", help="Show the text coloured by how surprised the model is.")
                    ] = False,
    show_chars: Annotated[int, typer.Option(**POSITIVE_INT, help=(
        "Colour at most this many characters, to the end of a line."))] = 3000,
    html: Annotated[Optional[Path], typer.Option(metavar="PATH", show_default=False,
                                                 help="Also write the coloured view as an HTML page.")] = None,
    svg: Annotated[Optional[Path], typer.Option(metavar="PATH", show_default=False,
                                                help="Also write the coloured view as an SVG image.")] = None,
    encoding: Encoding = "utf-8",
    errors: ErrorsOption = Errors.strict,
    device: Device = "auto",
) -> None:
    """Nats and bits per character of held-out text, with the hidden state carried through it.

    Characters are those of the text itself, whatever the tokenizer: a
    subword piece counts as the characters it spells, a character that fell
    back to bytes as one, and a Hangul syllable as one for a jamo model too.
    So models with different tokenizers compare directly, in one table.

    [bold]Examples[/]

    charlm eval runs/my-run/best.pt held-out.txt
    charlm eval runs/lstm runs/gru held-out.txt  [dim]# a comparison table[/]
    charlm eval held-out.txt --json              [dim]# the latest run[/]
    charlm eval held-out.txt --show --html surprise.html
    """
    from .corpus import open_corpus
    from .evaluate import evaluate_text
    from .render import eval_table, surprisal_text
    from .train import pick_device

    paths = paths or []
    checkpoints = [p for p in paths if p.exists() and _is_checkpoint(p)]
    texts = [p for p in paths if p not in checkpoints]
    if not texts:
        raise UsageError("name at least one text file to evaluate on")
    corpus = open_corpus(texts, encoding, errors.value, purpose="evaluate")
    _note_skipped(corpus)
    loaded = [_checkpoint(ckpt) for ckpt in checkpoints] if checkpoints else [_checkpoint(None)]
    dev = pick_device(device)
    view = show or html is not None or svg is not None
    results = [evaluate_text(payload, corpus, dev, keep_losses=view, show_chars=show_chars) for payload in loaded]
    views = [surprisal_text(report, show_chars) for report in results] if view else []
    if show:  # a view for people: on stderr when stdout carries JSON
        Console(highlight=False, stderr=json_output).print(Group(*views))
    if json_output:
        if len(results) == 1:
            print(json.dumps(results[0].as_dict()))
        else:
            print(json.dumps([{"checkpoint": str(r.checkpoint), **r.as_dict()} for r in results]))
    else:
        Console().print(eval_table(results))
    if html is not None or svg is not None:
        _export_views(views, html, svg, title="charlm eval")


class Feature(str, Enum):
    bracket_depth = "bracket-depth"
    in_string = "in-string"
    in_comment = "in-comment"
    line_position = "line-position"
    indent = "indent"
    word_position = "word-position"
    jamo_position = "jamo-position"
    syllable_boundary = "syllable-boundary"
    eojeol_position = "eojeol-position"


@app.command("inspect-neurons", cls=options.Command)
def inspect_neurons(
    paths: Annotated[Optional[list[Path]], typer.Argument(
        metavar="[CKPT] [FILE]", show_default=False,
        help="A checkpoint or run folder (default: the latest run under runs/) and a text file "
             "(default: a built-in sample of code and prose).")] = None,
    text: Annotated[Optional[str], typer.Option(metavar="TEXT", help="Inspect this text instead of a file.")] = None,
    unit: Annotated[Optional[list[int]], typer.Option(
        metavar="N", show_default=False, help="Colour the text by this unit (repeatable).")] = None,
    layer: Annotated[Optional[int], typer.Option(
        metavar="N", show_default=False,
        help="Layer, counted from 0. With --unit: \\[default: the top layer]; with --find: search only it.")] = None,
    state: Annotated[Optional[str], typer.Option(
        metavar="NAME", show_default=False,
        help="h, or c (LSTM cell), or a gate: input, forget, output, candidate (LSTM); reset, update, "
             "candidate (GRU); a backward model's end in < (h<, c<...). With --unit: \\[default: h, or h< "
             "for a backward model]; with --find: search only it.")] = None,
    find: Annotated[Optional[Feature], typer.Option(
        metavar="FEATURE", show_default=False,
        help="Rank every unit of every layer and state by how well it tracks this feature: "
             + ", ".join(f.value for f in Feature) + ".")] = None,
    find_regex: Annotated[Optional[list[str]], typer.Option(
        metavar="REGEX", show_default=False,
        help="Rank units by how well they track the matches of this regular expression "
             "(with --html: repeatable, each one ranked in the page).")] = None,
    top: Annotated[int, typer.Option(metavar="N", callback=options.not_negative,
                                     help="Rows of the ranking (and of --json); 0: all.")] = 10,
    show: Annotated[int, typer.Option(metavar="N", callback=options.not_negative,
                                      help="Colour the text by this many of the best units.")] = 2,
    show_chars: Annotated[int, typer.Option(**POSITIVE_INT, help=(
        "Colour at most this many characters, to the end of a line."))] = 2000,
    saturation: Annotated[bool, typer.Option(
        "--saturation",
        help="How often each gate unit is saturated (below 0.1, above 0.9): a table and scatter plots.")] = False,
    predictions: Annotated[bool, typer.Option(
        "--predictions",
        help="Under each character, the model's three likeliest guesses for it, made before reading it.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the ranking (or what was asked) as JSON.")] = False,
    html: Annotated[Optional[Path], typer.Option(
        metavar="PATH", show_default=False,
        help="Write the explorer instead: one self-contained, interactive page (every unit, every "
             "feature's ranking, select and match, gate saturation, the model running live).")] = None,
    chars: Annotated[Optional[int], typer.Option(
        metavar="N", show_default=False,  # its range is checked with the page's cap, in one message
        help=f"With --html: explore the first N characters (the page holds {DEFAULT_CHARS:,} unless asked).")] = None,
    html_static: Annotated[Optional[Path], typer.Option(
        metavar="PATH", show_default=False,
        help="Also write the terminal's coloured view as a static HTML page.")] = None,
    svg: Annotated[Optional[Path], typer.Option(
        metavar="PATH", show_default=False, help="Also write the terminal's coloured view as an SVG image.")] = None,
    encoding: Annotated[str, typer.Option(metavar="NAME", help="Text encoding of FILE.")] = "utf-8",
    errors: ErrorsOption = Errors.strict,
    device: Device = "auto",
) -> None:
    """Colour text by single hidden units, and find the units that track brackets, quotes, lines.

    With no --unit, --find or --saturation, every built-in feature is searched for and the
    best units are shown. Layers count from 0; a score is the Pearson correlation between
    a unit and the feature over every character.

    [bold]Examples[/]

    charlm inspect-neurons                      [dim]# latest run, built-in text[/]
    charlm inspect-neurons --find in-string --top 5
    charlm inspect-neurons runs/my-run code.py --find bracket-depth --svg b.svg
    charlm inspect-neurons --unit 17 --unit 42 --state c --predictions
    charlm inspect-neurons --find-regex "[0-9]+" --json
    charlm inspect-neurons runs/ko novel.txt --find jamo-position
    charlm inspect-neurons --saturation
    charlm inspect-neurons runs/my-run code.py --html page.html  [dim]# the explorer[/]
    """
    from contextlib import nullcontext

    from .corpus import open_corpus
    from .features import BUILTIN_TEXT
    from .neurons import InspectOptions, inspect
    from .progress import RichReporter
    from .render import inspect_renderables
    from .train import pick_device

    checkpoints = [p for p in paths or [] if _is_checkpoint(p)]
    files = [p for p in paths or [] if p not in checkpoints]
    if len(checkpoints) > 1 or len(files) > 1:
        raise UsageError("give at most one checkpoint and one text file")
    if files and text is not None:
        raise UsageError(f"--text: give a text or a file ({files[0]}), not both")
    if json_output and (find or find_regex is not None) and saturation:
        raise UsageError("--json: prints one result; use it with --find or with --saturation, not both")
    if html is not None and (json_output or html_static is not None or svg is not None):
        raise UsageError("--html writes the explorer on its own; give --json, --html-static or --svg in another run")
    if chars is not None and html is None:
        raise UsageError("--chars: only with --html (the terminal view has --show-chars)")
    if len(find_regex or []) > 1 and html is None:
        raise UsageError("--find-regex: give one at a time (several only with --html)")
    source = str(files[0]) if files else "--text" if text is not None else "the built-in sample"
    if text is None:
        text = open_corpus(files, encoding, errors.value, purpose="inspect").read() if files else BUILTIN_TEXT
    payload = _checkpoint(checkpoints[0] if checkpoints else None)
    if html is not None:
        _write_explorer(payload, text, html, source, chars, find.value if find else None, find_regex or [],
                        unit, layer, state)
        return
    options_ = InspectOptions(units=unit or [], layer=layer, state=state, find=find.value if find else None,
                              find_regex=find_regex[0] if find_regex else None, top=top, show=show,
                              saturation=saturation, predictions=predictions, show_chars=show_chars)
    console = _stderr()
    bar = RichReporter(console).task("inspecting") if console.is_terminal else nullcontext(None)
    with bar as advance:
        report = inspect(payload, text, options_, pick_device(device), on_progress=advance)
    parts = inspect_renderables(report)
    if json_output:
        print(json.dumps(report.as_json()))
    else:
        Console(highlight=False).print(Group(*parts))  # one part per line; print(*parts) joins texts
    if html_static is not None or svg is not None:
        _export_views(parts, html_static, svg, html_option="--html-static")


def _write_explorer(checkpoint: dict, text: str, out: Path, source: str, chars: int | None, find: str | None,
                    find_regex: list[str], units: list[int] | None, layer: int | None, state: str | None) -> None:
    """`inspect-neurons --html`: the explorer page, opened on --find's feature and the first --unit."""
    from contextlib import nullcontext

    from .explorer import ExplorerOptions, write_explorer
    from .progress import RichReporter

    start_unit = (layer, state or "h", units[0]) if units else None
    options = ExplorerOptions(chars=chars, find=find, find_regex=find_regex, unit=start_unit)
    console = _stderr()
    bar = RichReporter(console).task("exploring") if console.is_terminal else nullcontext(None)
    with bar as advance:
        page = write_explorer(checkpoint, text, out, options, source=source, on_progress=advance)
    size = len(page.html.encode("utf-8")) / 1e6
    live = "the model runs live in it" if page.live else f"no live mode: {page.note}"
    _say(f"wrote {out} ({size:.1f} MB, {page.chars:,} characters; {live})")


def _export_views(parts: list, html: Path | None, svg: Path | None, title: str = "charlm inspect-neurons",
                  html_option: str = "--html") -> None:
    """Write what the terminal shows as a page and/or an image; errors name `html_option` or --svg."""
    from .render import export_views

    terminal = Console()
    width = terminal.width if terminal.is_terminal else 100
    for path, kind, option in ((html, "html", html_option), (svg, "svg", "--svg")):
        if path is None:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(export_views(parts, kind, width, title=title), encoding="utf-8")
        except OSError as e:
            raise CharlmError(f"{option} {path}: cannot write: {e.strerror}") from None
        _say(f"wrote {path}")


@app.command(cls=options.Command)
def compare(
    paths: Annotated[Optional[list[Path]], typer.Argument(
        metavar="[PATHS]...", show_default=False,
        help="Text files or folders. None: the Python standard library's source.")] = None,
    cells: Annotated[Optional[str], typer.Option(metavar="LIST", show_default=False, help=(
        "Cells to train, comma-separated. \\[default: rnn,gru,lstm; lstm with several --teacher-forcing "
        "settings]"))] = None,
    teacher_forcing: Annotated[Optional[str], typer.Option(metavar="LIST", show_default=False, help=(
        "Teacher-forcing settings to compare, comma-separated (P, or START:END over the run), e.g. 1,0.5,0: "
        "one cell trained once per setting; the table adds how far each model's own text is from real "
        "text. One setting: every cell trains with it. \\[default: 1]"))] = None,
    time_budget: Annotated[Optional[float], typer.Option(
        metavar="SECONDS", callback=options.positive, show_default=False,
        help="Seconds of training per cell. \\[default: 60, unless --max-steps is given]")] = None,
    max_steps: Annotated[Optional[int], typer.Option(**POSITIVE_INT, help="Steps of training per cell.")] = None,
    params: Annotated[Optional[int], typer.Option(
        **POSITIVE_INT, help="Match parameter counts: each cell gets the hidden size that gives about this many.")
    ] = None,
    hidden: Annotated[Optional[int], typer.Option(
        **POSITIVE_INT, show_default=False,
        help=f"The same hidden size for every cell. \\[default: {ModelConfig.hidden}]")] = None,
    layers: Annotated[Optional[int], typer.Option(**POSITIVE_INT, help=(
        f"Stacked recurrent layers. \\[default: {ModelConfig.layers}]"))] = None,
    embedding: Annotated[Optional[int], typer.Option(**POSITIVE_INT, help=(
        f"Embedding size. \\[default: {ModelConfig.embedding}]"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(**POSITIVE_INT, help=(
        f"Parallel text streams. \\[default: {TrainConfig.batch_size}]"))] = None,
    seq_len: Annotated[Optional[int], typer.Option(**POSITIVE_INT, help=(
        f"Characters per truncated-BPTT chunk. \\[default: {TrainConfig.seq_len}]"))] = None,
    lr: Annotated[Optional[float], typer.Option(metavar="RATE", callback=options.positive, help=(
        f"Peak learning rate. \\[default: {LR_DEFAULT}]"))] = None,
    grad_clip: Annotated[Optional[float], typer.Option(metavar="NORM", callback=options.not_negative, help=(
        f"Clip the gradient norm to this; 0: off. \\[default: {TrainConfig.grad_clip}]"))] = None,
    sample_length: Annotated[Optional[int], typer.Option(metavar="N", callback=options.not_negative, help=(
        f"Characters of each progress sample; 0: none. \\[default: {TrainConfig.sample_length}]"))] = None,
    val_fraction: Annotated[Optional[float], typer.Option(metavar="X", callback=options.below_one, help=(
        f"Share of the text held out, from its end. \\[default: {TrainConfig.val_fraction}]"))] = None,
    seed: Annotated[Optional[int], typer.Option(metavar="N", help=(
        f"Random seed, the same for every cell. \\[default: {TrainConfig.seed}]"))] = None,
    out: Annotated[Optional[Path], typer.Option(
        metavar="FOLDER", show_default=False,
        help="Folder for the runs, one sub-folder per cell. \\[default: runs/<time>-compare-<corpus>]")] = None,
    json_output: JsonOutput = False,
    encoding: Annotated[str, typer.Option(metavar="NAME", help="Text encoding of the corpus.")] = "utf-8",
    errors: ErrorsOption = Errors.strict,
    device: Annotated[Optional[str], typer.Option(metavar="NAME",
                                                  help="auto, cpu, cuda or mps. \\[default: auto]")] = None,
) -> None:
    """Train several cells, or one cell with several teacher-forcing settings, on the same text,
    split, budget and seed, and compare them in one table.

    [bold]Examples[/]

    charlm compare --time-budget 60             [dim]# rnn, gru, lstm, built-in text[/]
    charlm compare shakespeare.txt --params 100000  [dim]# matched parameters[/]
    charlm compare notes.txt --cells gru,lstm --hidden 256 --max-steps 500
    charlm compare shakespeare.txt --teacher-forcing 1,0.5,0 --time-budget 30
    """
    from .compare import comparison_table, loss_chart, run_comparison
    from .corpus import open_corpus

    corpus = open_corpus(paths or [], encoding, errors.value)
    _note_skipped(corpus)
    model_options = {"hidden": hidden, "layers": layers, "embedding": embedding}
    train_options = {"time_budget": time_budget, "max_steps": max_steps, "batch_size": batch_size,
                     "seq_len": seq_len, "lr": lr, "grad_clip": grad_clip, "sample_length": sample_length,
                     "val_fraction": val_fraction, "seed": seed, "device": device}
    comparison = run_comparison(corpus, cells, teacher_forcing, model_options=model_options,
                                train_options=train_options, params=params, out=out, runs_dir=RUNS_DIR,
                                console=_stderr())
    if json_output:
        print(json.dumps(comparison.as_dict()))
    else:
        console = Console()
        console.print(comparison_table(comparison))
        console.print(loss_chart(comparison))


@app.command("gradient-flow", cls=options.Command)
def gradient_flow(
    paths: Annotated[Optional[list[Path]], typer.Argument(
        metavar="CKPT... [FILE]...", show_default=False,
        help="Checkpoints (files or run folders), then optionally text files; no text: each checkpoint's "
             "own training text.")] = None,
    max_k: Annotated[int, typer.Option(metavar="K", callback=options.not_negative,
                                       help="How many steps back to measure.")] = 200,
    positions: Annotated[int, typer.Option(**POSITIVE_INT, help="Positions of the text to average over.")] = 128,
    json_output: Annotated[bool, typer.Option("--json", help="Print the curves as JSON on stdout.")] = False,
    encoding: Encoding = "utf-8",
    errors: ErrorsOption = Errors.strict,
    device: Device = "auto",
) -> None:
    """How the gradient of the loss at step t shrinks or grows with the hidden state k steps back.

    Vanishing and exploding gradients, measured: one line per checkpoint, on a log scale.

    [bold]Examples[/]

    charlm gradient-flow runs/cmp/rnn runs/cmp/gru runs/cmp/lstm
    charlm gradient-flow runs/my-run held-out.txt --max-k 300 --json
    """
    from .corpus import open_corpus
    from .gradflow import flow_chart
    from .gradflow import gradient_flow as measure_flow
    from .train import pick_device

    paths = paths or []
    checkpoints = [p for p in paths if p.exists() and _is_checkpoint(p)]
    texts = [p for p in paths if p not in checkpoints]
    if not checkpoints:
        raise UsageError("name at least one checkpoint or run folder")
    corpus = open_corpus(texts, encoding, errors.value, purpose="measure") if texts else None
    if corpus is not None:
        _note_skipped(corpus)
    dev = pick_device(device)
    flows = [measure_flow(ckpt, corpus, max_k, positions, device=dev) for ckpt in checkpoints]
    if json_output:
        print(json.dumps([flow.as_dict() for flow in flows]))
    else:
        Console().print(flow_chart(flows))


@app.command(cls=options.Command)
def download(
    corpus: Annotated[Optional[str], typer.Argument(
        metavar="CORPUS", show_default=False,
        help="Which corpus: tinyshakespeare or korean.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        metavar="PATH", show_default=False,
        help="Where to write it. \\[default: <corpus>.txt in the current folder]")] = None,
    base_url: Annotated[Optional[str], typer.Option(
        metavar="URL", show_default=False, envvar="CHARLM_DOWNLOAD_BASE",
        help="Fetch from this mirror of raw.githubusercontent.com instead.")] = None,
) -> None:
    """Fetch a corpus the docs use, from its pinned source, and check its SHA-256.

    The file is written only once it is whole and its checksum is right.

    [bold]Examples[/]

    charlm download tinyshakespeare             [dim]# writes tinyshakespeare.txt[/]
    charlm download korean --out data/korean.txt
    """
    from .download import CORPORA, fetch_corpus

    if corpus is None or corpus not in CORPORA:
        known = ", ".join(CORPORA)
        raise UsageError(f"name a corpus to download: {known}" if corpus is None else
                         f"unknown corpus {corpus!r}; choose one of {known}")
    path = fetch_corpus(corpus, out, base_url, on_message=_say)
    print(path)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and turns every failure into one line and an exit code."""
    debug = os.environ.get("CHARLM_DEBUG") == "1"
    try:
        result = app(args=argv, prog_name="charlm", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click_exceptions.UsageError as e:
        if debug:
            raise
        if isinstance(e, getattr(click_exceptions, "NoArgsIsHelpError", ())):
            print(e.format_message(), file=sys.stderr)  # plain `charlm`: the help, as usage
            return 2
        command = f" {e.ctx.info_name}" if e.ctx is not None and e.ctx.parent is not None else ""
        _fail(f"charlm{command}: {_one_line(e.format_message())} (see 'charlm{command} --help')")
        return 2
    except typer.Abort:  # click's Abort in older typer, typer's own in newer
        _fail("charlm: aborted")
        return 130
    except CharlmError as e:
        if debug:
            raise
        _fail(f"charlm: {_one_line(str(e))}")
        return e.exit_code
    except BrokenPipeError:
        # The reader went away (charlm ... | head): not an error worth a message.
        _drop_stdout()
        return 0
    except SystemExit as e:
        if isinstance(e.__context__, BrokenPipeError):  # click met it first and exits 1
            _drop_stdout()
            return 0
        raise
    except KeyboardInterrupt:
        _fail("charlm: interrupted")
        return 130
    except Exception as e:  # a bug: still one line, with the way to the traceback
        if debug:
            raise
        if _out_of_memory(e):
            _fail("charlm: out of memory: the model or batch does not fit in this machine's memory; "
                  "give a smaller --hidden, --layers, --batch-size or --seq-len")
            return 1
        _fail(f"charlm: internal error: {type(e).__name__}: {_one_line(str(e))} "
              "(run with CHARLM_DEBUG=1 for the traceback)")
        return 1


def _out_of_memory(error: BaseException) -> bool:
    """MemoryError, torch's OutOfMemoryError (a GPU), or the CPU allocator's RuntimeError."""
    return (isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in str(error))


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def _drop_stdout() -> None:
    """Point stdout at the null device once its reader is gone, as `yes | head` ends quietly:
    what is still buffered then goes nowhere instead of failing again when Python exits."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file behind stdout (captured in tests)
        pass


def _fail(message: str) -> None:
    print(message, file=sys.stderr)
