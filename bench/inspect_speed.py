"""How long the feature search of `charlm inspect-neurons` takes next to `charlm eval` on the same text.

Builds an untrained 2-layer, 512-unit LSTM checkpoint (speed does not depend on training),
then times, in this one process, evaluation (what `charlm eval` runs) and a `--find`
search over every state of every unit of both layers, on the first --chars characters of
../shared/corpora/tinyshakespeare.txt (or, when that is absent, of the built-in sample
text repeated). The target: the search takes at most 2.5 times as long as evaluation.

    python bench/inspect_speed.py                  # 1 MB, as the target is stated
    python bench/inspect_speed.py --chars 100000   # a quicker look
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from charlm import evaluate, neurons
from charlm.checkpoint import save_checkpoint
from charlm.corpus import open_corpus
from charlm.evaluate import DEFAULT_STREAMS, evaluate_text, stream_count
from charlm.features import BUILTIN_TEXT
from charlm.model import CharRNN, ModelConfig
from charlm.neurons import SEARCH_STREAMS, InspectOptions, inspect
from charlm.tokenizer import train_tokenizer

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "tinyshakespeare.txt"


def bench_text(chars: int) -> tuple[str, str]:
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_text(encoding="utf-8")[:chars], SHAKESPEARE.name
    return (BUILTIN_TEXT * (chars // len(BUILTIN_TEXT) + 1))[:chars], "the built-in sample, repeated"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=1_000_000)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--streams", type=int, default=SEARCH_STREAMS, help="parallel streams of the search")
    args = parser.parse_args()

    text, source = bench_text(args.chars)
    torch.manual_seed(0)
    tokenizer = train_tokenizer([text], "char")
    config = ModelConfig(tokenizer.vocab_size, "lstm", args.layers, args.hidden, bytes_from=tokenizer.bytes_from)
    model = CharRNN(config)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, text_file = Path(tmp) / "random.pt", Path(tmp) / "text.txt"
        save_checkpoint(ckpt, {"model_config": asdict(model.config), "model": model.state_dict(),
                               "tokenizer": {"kind": tokenizer.kind, "model": tokenizer.model}})
        text_file.write_text(text, encoding="utf-8")
        print(f"{len(text):,} characters of {source}; LSTM {args.layers}x{args.hidden}; "
              f"{torch.get_num_threads()} threads")

        start = time.perf_counter()
        report = evaluate_text(ckpt, open_corpus([text_file]), "cpu")
        eval_time = time.perf_counter() - start
        eval_streams = stream_count(report.result.tokens, DEFAULT_STREAMS, evaluate.MIN_STREAM_TOKENS)
        print(f"eval:   {eval_time:8.2f} s  ({eval_streams} streams; {report.result.bits_per_char:.3f} bits/char)")

        # line-position varies over any text; the cost is the same for every feature.
        options = InspectOptions(find="line-position", top=0, show=0, streams=args.streams)
        start = time.perf_counter()
        found = inspect(ckpt, text, options, "cpu")
        search_time = time.perf_counter() - start
        streams = stream_count(len(tokenizer.encode(text)), args.streams, neurons.MIN_STREAM_TOKENS)
        print(f"search: {search_time:8.2f} s  ({len(found.ranking):,} unit-states, {streams} streams; "
              f"best |score| {abs(found.ranking[0].score):.3f})")
        print(f"ratio:  {search_time / eval_time:8.2f}  (target: at most 2.5)")


if __name__ == "__main__":
    main()
