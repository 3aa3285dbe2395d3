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

import click
import typer
from rich.console import Console

from . import __version__
from .errors import CharlmError, UsageError

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
    layers: Annotated[Optional[int], typer.Option(min=1, help="Stacked recurrent layers. \\[default: 1]")] = None,
    hidden: Annotated[Optional[int], typer.Option(min=1, help="Hidden units per layer. \\[default: 512]")] = None,
    embedding: Annotated[Optional[int], typer.Option(min=1, help="Embedding size. \\[default: 64]")] = None,
    dropout: Annotated[Optional[float], typer.Option(min=0.0, max=0.99,
                                                     help="Dropout probability. \\[default: 0]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Parallel text streams. \\[default: 32]")] = None,
    seq_len: Annotated[Optional[int], typer.Option(min=1,
                                                   help="Characters per BPTT chunk. \\[default: 128]")] = None,
    lr: Annotated[Optional[float], typer.Option(min=0.0, help="Peak learning rate. \\[default: 0.003]")] = None,
    schedule: Annotated[Optional[Schedule], typer.Option(
        help="Learning-rate decay after warmup. \\[default: linear]", show_default=False)] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(min=0, help="Warmup steps. \\[default: 30]")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(min=0.0, help="AdamW weight decay. \\[default: 0]")] = None,
    grad_clip: Annotated[Optional[float], typer.Option(min=0.0,
                                                       help="Clip the gradient norm to this; 0: off. \\[default: 1]")] = None,
    max_steps: Annotated[Optional[int], typer.Option(min=1, help="Stop after this many steps.")] = None,
    epochs: Annotated[Optional[float], typer.Option(
                                                    help="Stop after this many passes over the text.")] = None,
    time_budget: Annotated[Optional[float], typer.Option(
                                                         help="Stop after this many seconds of training.")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(
                                                          help="Share of the text held out, from its end. \\[default: 0.1]")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(min=1, help="Also save last.pt every N steps.")] = None,
    sample_length: Annotated[Optional[int], typer.Option(min=0, help="Characters of each progress sample; 0: none. \\[default: 200]")] = None,
    tokenizer: Annotated[Optional[TokenizerKind], typer.Option(
        help="char, or a subword model: unigram, bpe. \\[default: char]", show_default=False)] = None,
    vocab_size: Annotated[Optional[int], typer.Option(min=1, help="Vocabulary size (subword tokenizers; "
                                                      "caps the characters kept for char).")] = None,
    encoding: Annotated[str, typer.Option(help="Text encoding of the corpus.")] = "utf-8",
    errors: Annotated[Errors, typer.Option(help="strict: undecodable bytes are an error; replace: U+FFFD.")] = Errors.strict,
    out: Annotated[Optional[Path], typer.Option(help="Run folder. \\[default: runs/<time>-<corpus>-<cell>]",
                                                show_default=False)] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this checkpoint (or run folder).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed. \\[default: 1337]")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or mps. \\[default: auto]")] = None,
) -> None:
    """Train a model. With no stop given, it trains for one epoch.

    [bold]Examples[/]

      charlm train --time-budget 60                  [dim]# the built-in Python corpus[/]
      charlm train shakespeare.txt --cell gru --time-budget 300
      charlm train notes/ --layers 2 --hidden 256 --epochs 5
      charlm train --resume runs/my-run/last.pt --max-steps 20000
    """
    from .corpus import open_corpus
    from .progress import RichReporter
    from .train import train as run_training

    corpus = None
    if paths or resume is None:
        corpus = open_corpus(paths or [], encoding, errors.value)
    model_options = {"cell": cell.value if cell else None, "layers": layers, "hidden": hidden,
                     "embedding": embedding, "dropout": dropout}
    train_options = {
        "batch_size": batch_size, "seq_len": seq_len, "lr": lr, "schedule": schedule.value if schedule else None,
        "warmup_steps": warmup_steps, "weight_decay": weight_decay, "grad_clip": grad_clip,
        "max_steps": max_steps, "epochs": epochs, "time_budget": time_budget, "val_fraction": val_fraction,
        "checkpoint_every": checkpoint_every, "sample_length": sample_length,
        "tokenizer": tokenizer.value if tokenizer else None, "vocab_size": vocab_size, "seed": seed,
        "device": device,
    }
    result = run_training(corpus, model_options, train_options, out=out, resume=resume, runs_dir=RUNS_DIR,
                          reporter=RichReporter(_stderr()))
    best = result.out_dir / "best.pt"
    print(best if best.exists() else result.out_dir / "last.pt")


def _validate_top_p(value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise typer.BadParameter(f"must be in (0, 1], got {value}")
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
    seed: Annotated[Optional[int], typer.Option(help="Random seed: the same seed gives the same text.")] = None,
    stop: Annotated[Optional[str], typer.Option(help="End a sample right after it writes this string.")] = None,
    device: Device = "auto",
) -> None:
    """Generate text, streamed to stdout as it is made.

    [bold]Examples[/]

      charlm sample --temp 0.8
      charlm sample runs/my-run --prime "def " --length 300 --stop "\\n\\n"
      charlm sample --num-samples 5 --top-p 0.9 --seed 1
    """
    import torch

    from .checkpoint import latest_checkpoint, load_checkpoint, model_from_checkpoint
    from .sample import generate_batch
    from .train import pick_device

    if prime_file is not None:
        prime = _read_text_option(prime_file, "--prime-file")
    path = checkpoint if checkpoint is not None else latest_checkpoint(RUNS_DIR)
    dev = pick_device(device)
    model, tokenizer = model_from_checkpoint(load_checkpoint(path), dev)
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    stream = generate_batch(model, tokenizer, prime, length, num_samples, temp, top_k, top_p,
                            stop or None, generator, dev)
    out = sys.stdout
    if num_samples == 1:
        out.write(prime)
        out.flush()
        for pieces in stream:
            if pieces[0]:
                out.write(pieces[0])
                out.flush()
        out.write("\n")
    else:
        texts = [""] * num_samples
        for pieces in stream:
            for i, piece in enumerate(pieces):
                texts[i] += piece
        for i, text in enumerate(texts):
            out.write(f"=== sample {i + 1} ===\n{prime}{text}\n")
    out.flush()


def _read_text_option(path: Path, option: str) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise UsageError(f"{option} {path}: {e.strerror}") from None


def _is_checkpoint(path: Path) -> bool:
    if path.is_dir():
        return True
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
            print(json.dumps(results[0].result.as_dict()))
        else:
            print(json.dumps([{"checkpoint": str(r.checkpoint), **r.result.as_dict()} for r in results]))
    else:
        Console().print(eval_table(results))
    del console


@app.command("inspect-neurons")
def inspect_neurons() -> None:
    """Colour text by single hidden units and find the units that track brackets, quotes, lines."""
    raise UsageError("inspect-neurons is not available in this build")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and turns every failure into one line and an exit code."""
    debug = os.environ.get("CHARLM_DEBUG") == "1"
    try:
        result = app(args=argv, prog_name="charlm", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.UsageError as e:
        if debug:
            raise
        command = f" {e.ctx.info_name}" if e.ctx is not None and e.ctx.parent is not None else ""
        _fail(f"charlm{command}: {_one_line(e.format_message())} (see 'charlm{command} --help')")
        return 2
    except click.exceptions.Abort:
        _fail("charlm: aborted")
        return 130
    except CharlmError as e:
        if debug:
            raise
        _fail(f"charlm: {_one_line(str(e))}")
        return e.exit_code
    except BrokenPipeError:
        # The reader went away (charlm sample | head): not an error worth a message.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
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


def _fail(message: str) -> None:
    print(message, file=sys.stderr)
