"""The `charlm` command: parse options, call one library function, print the result.

Products (sampled text, JSON, checkpoint paths) go to stdout; progress, tables meant for
people and messages go to stderr, so pipes work. Errors are one line on stderr: exit 2 for
bad usage, 1 for runtime failures, no traceback unless CHARLM_DEBUG=1.
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

from . import __version__
from .config import LONG_RUN, LONG_RUN_PASSES, ModelConfig, TrainConfig
from .errors import CharlmError, UsageError

try:  # typer >= 0.20 carries its own copy of click, whose exceptions are not click's
    from typer._click import exceptions as click_exceptions
except ImportError:  # older typer runs on click itself
    from click import exceptions as click_exceptions

app = typer.Typer(
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
    unigram = "unigram"
    bpe = "bpe"


class Schedule(str, Enum):
    linear = "linear"
    cosine = "cosine"
    constant = "constant"


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


Device = Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")]


@app.command()
def train(
    paths: Annotated[Optional[list[Path]], typer.Argument(
        help="Text files or folders (read recursively). None: the Python standard library's source.",
        show_default=False)] = None,
    cell: Annotated[Optional[Cell], typer.Option(help="Recurrent cell. \\[default: lstm]", show_default=False)] = None,
    layers: Annotated[Optional[int], typer.Option(min=1, help=f"Stacked recurrent layers. \\[default: {ModelConfig.layers}]")] = None,
    hidden: Annotated[Optional[int], typer.Option(min=1, help=(
        f"Hidden units per layer. \\[default: {ModelConfig.hidden}; {LONG_RUN['hidden']} for a run that reads its "
        f"text more than {LONG_RUN_PASSES:g} times, unless --hidden, --layers or --dropout is given]"))] = None,
    embedding: Annotated[Optional[int], typer.Option(min=1, help=f"Embedding size. \\[default: {ModelConfig.embedding}]")] = None,
    dropout: Annotated[Optional[float], typer.Option(min=0.0, max=0.99, help=(
        f"Dropout probability. \\[default: {ModelConfig.dropout}; {LONG_RUN['dropout']} where --hidden gets "
        f"{LONG_RUN['hidden']}]"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help=f"Parallel text streams. \\[default: {TrainConfig.batch_size}]")] = None,
    seq_len: Annotated[Optional[int], typer.Option(min=1,
                                                   help=f"Characters per BPTT chunk. \\[default: {TrainConfig.seq_len}]")] = None,
    lr: Annotated[Optional[float], typer.Option(min=0.0, help=f"Peak learning rate. \\[default: {TrainConfig.lr}]")] = None,
    schedule: Annotated[Optional[Schedule], typer.Option(
        help="Learning-rate decay after warmup. \\[default: linear]", show_default=False)] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(min=0, help="Warmup steps; with a decaying schedule, at most "
                            f"a tenth of the run. \\[default: {TrainConfig.warmup_steps}]")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(min=0.0, help=f"AdamW weight decay. \\[default: {TrainConfig.weight_decay}]")] = None,
    grad_clip: Annotated[Optional[float], typer.Option(min=0.0,
                                                       help=f"Clip the gradient norm to this; 0: off. \\[default: {TrainConfig.grad_clip}]")] = None,
    no_clip: Annotated[bool, typer.Option("--no-clip", help="Turn gradient clipping off (--grad-clip 0), "
                                          "to watch gradients explode.")] = False,
    max_steps: Annotated[Optional[int], typer.Option(min=1, help="Stop after this many steps.")] = None,
    epochs: Annotated[Optional[float], typer.Option(
                                                    help="Stop after this many passes over the text.")] = None,
    time_budget: Annotated[Optional[float], typer.Option(
                                                         help="Stop after this many seconds of training.")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(
                                                          help=f"Share of the text held out, from its end. \\[default: {TrainConfig.val_fraction}]")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(min=1, help="Also save last.pt every N steps.")] = None,
    sample_length: Annotated[Optional[int], typer.Option(min=0, help=f"Characters of each progress sample; 0: none. \\[default: {TrainConfig.sample_length}]")] = None,
    tokenizer: Annotated[Optional[TokenizerKind], typer.Option(
        help="char, or a subword model: unigram, bpe. \\[default: char]", show_default=False)] = None,
    vocab_size: Annotated[Optional[int], typer.Option(min=1, help="Vocabulary size (subword tokenizers; "
                                                      "caps the characters kept for char).")] = None,
    direction: Annotated[Optional[Direction], typer.Option(help=(
        "forward: read left to right, predict the next character; backward: read right to left, predict "
        "the previous one; both: the two in one run, one checkpoint (a biLM; twice the work per step); "
        "bidirectional: refused, see --cheat-demo. \\[default: forward]"), show_default=False)] = None,
    cheat_demo: Annotated[bool, typer.Option("--cheat-demo", help=(
        "Train a single bidirectional RNN to predict the next character anyway, to watch it cheat: its "
        "backward half reads the answer, the loss falls to near zero, and its samples are garbage."))] = False,
    teacher_forcing: Annotated[Optional[str], typer.Option(help=(
        "P: the probability that a step's input is the true previous character rather than one drawn "
        "from the model (scheduled sampling); START:END moves it linearly over the run, e.g. 1:0. "
        "Below 1 the cells run one character at a time instead of one fused kernel per chunk: "
        "several times slower per step. \\[default: 1]"), show_default=False)] = None,
    encoding: Annotated[str, typer.Option(help="Text encoding of the corpus.")] = "utf-8",
    errors: Annotated[Errors, typer.Option(help="strict: undecodable bytes are an error; replace: U+FFFD.")] = Errors.strict,
    out: Annotated[Optional[Path], typer.Option(help="Run folder. \\[default: runs/<time>-<corpus>-<cell>]",
                                                show_default=False)] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this checkpoint (or run folder).")] = None,
    seed: Annotated[Optional[int], typer.Option(help=f"Random seed. \\[default: {TrainConfig.seed}]")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or mps. \\[default: auto]")] = None,
) -> None:
    """Train a model. With no stop given, it trains for one epoch.

    [bold]Examples[/]

      charlm train --time-budget 60                  [dim]# the built-in Python corpus[/]
      charlm train shakespeare.txt --cell gru --lr 0.003 --time-budget 300
      charlm train notes/ --layers 2 --hidden 256 --epochs 5
      charlm train --resume runs/my-run/last.pt --max-steps 20000
      charlm train shakespeare.txt --direction both --time-budget 300   [dim]# a biLM[/]
      charlm train shakespeare.txt --teacher-forcing 1:0 --time-budget 60 [dim]# scheduled sampling[/]
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
        "device": device,
        # A constant P ends where it starts, so that it also replaces a resumed run's schedule.
        "teacher_forcing": forcing[0], "teacher_forcing_end": forcing[1] if forcing[1] is not None else forcing[0],
    }
    result = run_training(corpus, model_options, train_options, out=out, resume=resume, runs_dir=RUNS_DIR,
                          reporter=RichReporter(_stderr()))
    if result.main_process:
        best = result.out_dir / "best.pt"
        print(best if best.exists() else result.out_dir / "last.pt")


def _validate_top_p(value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise typer.BadParameter(f"must be in (0, 1], got {value}")
    return value


def _validate_seed(value: int | None) -> int | None:
    if value is not None and not -(2**63) <= value < 2**64:  # what torch's generators accept
        raise typer.BadParameter(f"must fit in 64 bits, got {value}")
    return value


@app.command()
def sample(
    checkpoint: Annotated[Optional[Path], typer.Argument(
        help="Checkpoint file or run folder. \\[default: the latest run under runs/]", show_default=False)] = None,
    temp: Annotated[float, typer.Option(min=0.0, help="Temperature; 0 always takes the likeliest character.")] = 0.8,
    top_k: Annotated[int, typer.Option(min=0, help="Draw only from the k likeliest; 0: no limit.")] = 0,
    top_p: Annotated[float, typer.Option(callback=_validate_top_p,
                                         help="Draw only from the smallest set with this much probability.")] = 1.0,
    prime: Annotated[str, typer.Option(help="Text to start from; printed first.")] = "",
    prime_file: Annotated[Optional[Path], typer.Option(help="Read the prime from this file.")] = None,
    length: Annotated[int, typer.Option(min=0, help="Characters to generate per sample.")] = 500,
    num_samples: Annotated[int, typer.Option(min=1, help="Samples, generated side by side.")] = 1,
    seed: Annotated[Optional[int], typer.Option(callback=_validate_seed,
                                                help="Random seed: the same seed gives the same text.")] = None,
    stop: Annotated[Optional[str], typer.Option(help="End a sample right after it writes this string.")] = None,
    novelty: Annotated[Optional[Path], typer.Option(
        help="Afterwards, show on stderr which share of the sampled 10-, 20- and 40-character "
             "n-grams never occur in this training text (file or folder).", show_default=False)] = None,
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
      charlm sample runs/my-run --novelty shakespeare.txt   [dim]# is it copying its corpus?[/]
      charlm sample runs/bilm --backward --prime "the end." --length 200
    """
    import torch

    from .checkpoint import latest_checkpoint, load_checkpoint, model_from_checkpoint
    from .directions import choose_reader
    from .sample import generate_batch, write_samples
    from .train import pick_device

    if prime_file is not None:
        prime = _read_text_option(prime_file, "--prime-file")
    novelty_corpus = None
    if novelty is not None:
        from .corpus import open_corpus

        novelty_corpus = open_corpus([novelty], "utf-8", "replace")  # checked before sampling starts
    path = checkpoint if checkpoint is not None else latest_checkpoint(RUNS_DIR)
    dev = pick_device(device)
    payload = load_checkpoint(path)
    model, tokenizer = model_from_checkpoint(payload, dev)
    reader = choose_reader(model, backward, payload["path"])
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    options = (num_samples, temp, top_k, top_p, stop or None, generator, dev)
    try:
        if reader.backward:
            from .backward import generate_backward, write_backward

            texts = generate_backward(reader.model, tokenizer, prime, length, *options)
            write_backward(texts, sys.stdout, prime)
        else:
            if reader.direction == "bidirectional":
                from .cheat import generate_cheating

                window = (payload.get("train_config") or {}).get("seq_len", 64)
                stream = iter([generate_cheating(reader.model, tokenizer, prime, length, *options, window=window)])
            else:
                stream = generate_batch(reader.model, tokenizer, prime, length, *options)
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


@app.command("eval")
def eval_(
    paths: Annotated[list[Path], typer.Argument(
        help="Checkpoints (files or run folders) then text files; no checkpoint: the latest run.",
        show_default=False)],
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
    show: Annotated[bool, typer.Option(help="Show the text coloured by how surprised the model is.")] = False,
    show_chars: Annotated[int, typer.Option(min=1, help="With --show: colour at most this many characters.")] = 3000,
    encoding: Annotated[str, typer.Option(help="Text encoding of the files.")] = "utf-8",
    errors: Annotated[Errors, typer.Option(help="strict or replace (undecodable bytes).")] = Errors.strict,
    device: Device = "auto",
) -> None:
    """Bits per character of held-out text, with the hidden state carried through it.

    [bold]Examples[/]

      charlm eval runs/my-run/best.pt held-out.txt
      charlm eval runs/lstm runs/gru held-out.txt      [dim]# a comparison table[/]
      charlm eval held-out.txt --json                  [dim]# the latest run[/]
    """
    from .checkpoint import latest_checkpoint
    from .corpus import open_corpus
    from .evaluate import evaluate_text
    from .render import eval_table, surprisal_text
    from .train import pick_device

    checkpoints = [p for p in paths if p.exists() and _is_checkpoint(p)]
    texts = [p for p in paths if p not in checkpoints]
    if not texts:
        raise UsageError("name at least one text file to evaluate on")
    if not checkpoints:
        checkpoints = [latest_checkpoint(RUNS_DIR)]
    corpus = open_corpus(texts, encoding, errors.value)
    dev = pick_device(device)
    results = []
    for ckpt in checkpoints:
        results.append(evaluate_text(ckpt, corpus, dev, keep_losses=show, show_chars=show_chars))
    console = _stderr()
    if show:
        for report in results:
            Console(highlight=False).print(surprisal_text(report, show_chars))
    if json_output:
        if len(results) == 1:
            print(json.dumps(results[0].as_dict()))
        else:
            print(json.dumps([{"checkpoint": str(r.checkpoint), **r.as_dict()} for r in results]))
    else:
        Console().print(eval_table(results))
    del console


class Feature(str, Enum):
    bracket_depth = "bracket-depth"
    in_string = "in-string"
    in_comment = "in-comment"
    line_position = "line-position"
    indent = "indent"
    word_position = "word-position"


@app.command("inspect-neurons")
def inspect_neurons(
    paths: Annotated[Optional[list[Path]], typer.Argument(
        help="[CKPT] [FILE]: a checkpoint or run folder (default: the latest run under runs/) and a text "
             "file (default: a built-in sample of code and prose).", show_default=False)] = None,
    text: Annotated[Optional[str], typer.Option(help="Inspect this text instead of a file.")] = None,
    unit: Annotated[Optional[list[int]], typer.Option(
        help="Colour the text by this unit (repeatable).", show_default=False)] = None,
    layer: Annotated[Optional[int], typer.Option(
        help="Layer, counted from 0. With --unit: \\[default: the top layer]; with --find: search only it.",
        show_default=False)] = None,
    state: Annotated[Optional[str], typer.Option(
        help="h, or c (LSTM cell), or a gate: input, forget, output, candidate (LSTM); reset, update, "
             "candidate (GRU); a backward model's end in < (h<, c<...). With --unit: \\[default: h, or h< "
             "for a backward model]; with --find: search only it.", show_default=False)] = None,
    find: Annotated[Optional[Feature], typer.Option(
        help="Rank every unit of every layer and state by how well it tracks this feature.",
        show_default=False)] = None,
    find_regex: Annotated[Optional[str], typer.Option(
        help="Rank units by how well they track the matches of this regular expression.",
        show_default=False)] = None,
    top: Annotated[int, typer.Option(min=0, help="Rows of the ranking (and of --json); 0: all.")] = 10,
    show: Annotated[int, typer.Option(min=0, help="Colour the text by this many of the best units.")] = 2,
    show_chars: Annotated[int, typer.Option(min=1, help="Colour at most this many characters.")] = 2000,
    saturation: Annotated[bool, typer.Option(
        help="How often each gate unit is saturated (below 0.1, above 0.9): a table and scatter plots.")] = False,
    predictions: Annotated[bool, typer.Option(
        help="Show the model's three likeliest next characters under each character.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the ranking (or what was asked) as JSON.")] = False,
    html: Annotated[Optional[Path], typer.Option(help="Also write the coloured view as an HTML page.",
                                                 show_default=False)] = None,
    svg: Annotated[Optional[Path], typer.Option(help="Also write the coloured view as an SVG image.",
                                                show_default=False)] = None,
    encoding: Annotated[str, typer.Option(help="Text encoding of FILE.")] = "utf-8",
    errors: Annotated[Errors, typer.Option(help="strict or replace (undecodable bytes).")] = Errors.strict,
    device: Device = "auto",
) -> None:
    """Colour text by single hidden units, and find the units that track brackets, quotes, lines.

    With no --unit, --find or --saturation, every built-in feature is searched for and the
    best units are shown. Layers count from 0; a score is the Pearson correlation between
    a unit and the feature over every character.

    [bold]Examples[/]

      charlm inspect-neurons                                 [dim]# latest run, built-in sample[/]
      charlm inspect-neurons --find in-string --top 5
      charlm inspect-neurons runs/my-run code.py --find bracket-depth --svg brackets.svg
      charlm inspect-neurons --unit 17 --unit 42 --state c --predictions
      charlm inspect-neurons --find-regex "[0-9]+" --json
      charlm inspect-neurons --saturation
    """
    from contextlib import nullcontext

    from .checkpoint import latest_checkpoint
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
    if text is None:
        text = open_corpus(files, encoding, errors.value).read() if files else BUILTIN_TEXT
    options = InspectOptions(units=unit or [], layer=layer, state=state, find=find.value if find else None,
                             find_regex=find_regex, top=top, show=show, saturation=saturation,
                             predictions=predictions, show_chars=show_chars)
    console = _stderr()
    bar = RichReporter(console).task("inspecting") if console.is_terminal else nullcontext(None)
    with bar as advance:
        report = inspect(checkpoints[0] if checkpoints else latest_checkpoint(RUNS_DIR), text, options,
                         pick_device(device), on_progress=advance)
    parts = inspect_renderables(report)
    if json_output:
        print(json.dumps(report.as_json()))
    else:
        Console(highlight=False).print(Group(*parts))  # one part per line; print(*parts) joins texts
    if html is not None or svg is not None:
        _export_views(parts, html, svg)


def _export_views(parts: list, html: Path | None, svg: Path | None) -> None:
    """Write what the terminal shows as a page and/or an image."""
    from .render import export_views

    terminal = Console()
    width = terminal.width if terminal.is_terminal else 100
    for path, kind in ((html, "html"), (svg, "svg")):
        if path is None:
            continue
        try:
            path.write_text(export_views(parts, kind, width), encoding="utf-8")
        except OSError as e:
            raise CharlmError(f"--{kind} {path}: cannot write: {e.strerror}") from None
        _stderr().print(f"wrote {path}", style="dim", markup=False, highlight=False)


@app.command()
def compare(
    paths: Annotated[Optional[list[Path]], typer.Argument(
        help="Text files or folders. None: the Python standard library's source.", show_default=False)] = None,
    cells: Annotated[Optional[str], typer.Option(help=(
        "Cells to train, comma-separated. \\[default: rnn,gru,lstm; lstm with several --teacher-forcing "
        "settings]"), show_default=False)] = None,
    teacher_forcing: Annotated[Optional[str], typer.Option(help=(
        "Teacher-forcing settings to compare, comma-separated (P, or START:END over the run), e.g. 1,0.5,0: "
        "one cell trained once per setting; the table adds how far each model's own text is from real "
        "text. One setting: every cell trains with it. \\[default: 1]"), show_default=False)] = None,
    time_budget: Annotated[Optional[float], typer.Option(
        help="Seconds of training per cell. \\[default: 60, unless --max-steps is given]", show_default=False)] = None,
    max_steps: Annotated[Optional[int], typer.Option(min=1, help="Steps of training per cell.")] = None,
    params: Annotated[Optional[int], typer.Option(
        min=1, help="Match parameter counts: each cell gets the hidden size that gives about this many.")] = None,
    hidden: Annotated[Optional[int], typer.Option(
        min=1, help=f"The same hidden size for every cell. \\[default: {ModelConfig.hidden}]", show_default=False)] = None,
    layers: Annotated[Optional[int], typer.Option(min=1, help=f"Stacked recurrent layers. \\[default: {ModelConfig.layers}]")] = None,
    embedding: Annotated[Optional[int], typer.Option(min=1, help=f"Embedding size. \\[default: {ModelConfig.embedding}]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help=f"Parallel text streams. \\[default: {TrainConfig.batch_size}]")] = None,
    seq_len: Annotated[Optional[int], typer.Option(
        min=1, help=f"Characters per truncated-BPTT chunk. \\[default: {TrainConfig.seq_len}]")] = None,
    lr: Annotated[Optional[float], typer.Option(min=0.0, help=f"Peak learning rate. \\[default: {TrainConfig.lr}]")] = None,
    grad_clip: Annotated[Optional[float], typer.Option(
        min=0.0, help=f"Clip the gradient norm to this; 0: off. \\[default: {TrainConfig.grad_clip}]")] = None,
    sample_length: Annotated[Optional[int], typer.Option(
        min=0, help=f"Characters of each progress sample; 0: none. \\[default: {TrainConfig.sample_length}]")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(
        help=f"Share of the text held out, from its end. \\[default: {TrainConfig.val_fraction}]")] = None,
    seed: Annotated[Optional[int], typer.Option(help=f"Random seed, the same for every cell. \\[default: {TrainConfig.seed}]")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Folder for the runs, one sub-folder per cell. \\[default: runs/<time>-compare-<corpus>]",
        show_default=False)] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout.")] = False,
    encoding: Annotated[str, typer.Option(help="Text encoding of the corpus.")] = "utf-8",
    errors: Annotated[Errors, typer.Option(help="strict or replace (undecodable bytes).")] = Errors.strict,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or mps. \\[default: auto]")] = None,
) -> None:
    """Train several cells, or one cell with several teacher-forcing settings, on the same text,
    split, budget and seed, and compare them in one table.

    [bold]Examples[/]

      charlm compare --time-budget 60                     [dim]# rnn, gru, lstm on the built-in corpus[/]
      charlm compare shakespeare.txt --params 100000      [dim]# hidden sizes chosen to match parameters[/]
      charlm compare notes.txt --cells gru,lstm --hidden 256 --max-steps 500
      charlm compare shakespeare.txt --teacher-forcing 1,0.5,0 --time-budget 30
    """
    from .compare import comparison_table, loss_chart, run_comparison
    from .corpus import open_corpus

    corpus = open_corpus(paths or [], encoding, errors.value)
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


@app.command("gradient-flow")
def gradient_flow(
    paths: Annotated[list[Path], typer.Argument(
        help="Checkpoints (files or run folders), then optionally text files; no text: each checkpoint's "
             "own training text.", show_default=False)],
    max_k: Annotated[int, typer.Option(min=0, help="How many steps back to measure (K).")] = 200,
    positions: Annotated[int, typer.Option(min=1, help="Positions of the text to average over.")] = 128,
    json_output: Annotated[bool, typer.Option("--json", help="Print the curves as JSON on stdout.")] = False,
    encoding: Annotated[str, typer.Option(help="Text encoding of the files.")] = "utf-8",
    errors: Annotated[Errors, typer.Option(help="strict or replace (undecodable bytes).")] = Errors.strict,
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

    checkpoints = [p for p in paths if p.exists() and _is_checkpoint(p)]
    texts = [p for p in paths if p not in checkpoints]
    if not checkpoints:
        raise UsageError("name at least one checkpoint or run folder")
    corpus = open_corpus(texts, encoding, errors.value) if texts else None
    dev = pick_device(device)
    flows = [measure_flow(ckpt, corpus, max_k, positions, device=dev) for ckpt in checkpoints]
    if json_output:
        print(json.dumps([flow.as_dict() for flow in flows]))
    else:
        Console().print(flow_chart(flows))


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
        _fail(f"charlm: internal error: {type(e).__name__}: {_one_line(str(e))} "
              "(run with CHARLM_DEBUG=1 for the traceback)")
        return 1


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
