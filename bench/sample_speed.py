"""How fast `charlm sample` writes characters on a CPU, next to a bare PyTorch loop, in one process.

Builds an untrained 2-layer, 512-unit LSTM (and GRU) over the characters of
../shared/corpora/tinyshakespeare.txt (or, when that is absent, of the built-in sample
text); speed does not depend on training, but a trained model never draws the tokens its
text never uses (byte fallback, unknown), so their head bias is set far below the rest to
draw, like a trained model, only the text's characters. Then it times, batch 1, at
temperature 0.8: the bare baseline, nn.LSTMCell / nn.GRUCell modules loaded with the same
weights plus the embedding, linear head, softmax and torch.multinomial, one character at
a time under torch.inference_mode; charlm's real path, `sample.write_samples` over
`sample.generate_batch` (what `charlm sample` runs: decoding, the stop-string check,
writing and flushing each piece) into os.devnull instead of a terminal; and the same with
64 samples side by side; and, as the ceiling for those, the recurrent matrix products
of the same 64-stream steps alone, with charlm's packed weights. Rounds of the four
alternate, so a busy machine slows all alike; the medians are compared. Targets: charlm
at batch 1 at least 0.9x the bare loop; 64 samples at least 20x the characters per
second of one. Characters per CPU-second of the process are shown too: on a shared
machine they move less than the wall-clock figures.

    python bench/sample_speed.py                                   # LSTM and GRU, 2 x 512
    python bench/sample_speed.py --cells lstm --chars 1000 --rounds 3   # a quicker look
    OMP_NUM_THREADS=1 python bench/sample_speed.py                 # one thread
    python bench/sample_speed.py --device cuda --cells lstm --samples 256   # on a GPU (figures only)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from charlm.config import NUM_BYTES, ModelConfig
from charlm.features import BUILTIN_TEXT
from charlm.model import CharRNN
from charlm.sample import PackedCells, generate_batch, write_samples
from charlm.tokenizer import Tokenizer, train_tokenizer

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "tinyshakespeare.txt"
TEMPERATURE = 0.8  # charlm sample's default
STOP = "\n\n\n\n"  # checked after every character; an untrained model seldom writes it


def corpus_text() -> tuple[str, str]:
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_text(encoding="utf-8"), SHAKESPEARE.name
    return BUILTIN_TEXT, "the built-in sample text"


def untrained_model(cell: str, tokenizer: Tokenizer, used: set[int], layers: int, hidden: int) -> CharRNN:
    """A model as `charlm train` makes it (factored head over the byte tokens), never drawing
    the ids its text does not use."""
    torch.manual_seed(0)
    config = ModelConfig(tokenizer.vocab_size, cell, layers, hidden, bytes_from=tokenizer.bytes_from)
    model = CharRNN(config).eval()
    with torch.no_grad():
        for head_row, token in enumerate(main_symbols(model)):
            if token not in used:  # the byte escape (-1) and the unknown id
                model.head.bias[head_row] = -30.0
    return model


def main_symbols(model: CharRNN) -> list[int]:
    """The token id of each output of model.head; -1 for the byte escape of a factored head."""
    vocab, start = model.config.vocab_size, model.config.bytes_from
    if not model.factored:
        return list(range(vocab))
    return [*range(start), *range(start + NUM_BYTES, vocab), -1]


class BareSampler:
    """The least sampling can do: cell modules, embedding, head, softmax, multinomial, over
    the text's own symbols (model.head's outputs; a bare model has no byte fallback)."""

    def __init__(self, model: CharRNN, start_id: int, device: torch.device):
        config = model.config
        cell_class = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}[config.cell]
        self.cells = []
        for layer in range(config.layers):
            cell = cell_class(config.embedding if layer == 0 else config.hidden, config.hidden)
            with torch.no_grad():
                for param, weight in zip((cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh),
                                         model.layer_weights(layer)):
                    param.copy_(weight)
            self.cells.append(cell.eval().to(device))
        symbols = main_symbols(model)
        # Row j of this embedding is the vector of the token model.head's output j stands for.
        self.embed = nn.Embedding.from_pretrained(model.embed.weight.detach()[[max(t, 0) for t in symbols]].clone())
        self.head = nn.Linear(config.hidden, len(symbols))
        self.head.load_state_dict(model.head.state_dict())
        self.embed, self.head, self.device = self.embed.to(device), self.head.to(device), device
        self.lstm = config.cell == "lstm"
        self.hidden = config.hidden
        self.start = symbols.index(start_id)

    def run(self, chars: int, generator: torch.Generator) -> int:
        """Draw `chars` characters; returns how many."""
        with torch.inference_mode():
            idx = torch.tensor([self.start], device=self.device)
            hs = [torch.zeros(1, self.hidden, device=self.device) for _ in self.cells]
            cs = [torch.zeros(1, self.hidden, device=self.device) for _ in self.cells]
            drawn = []
            for _ in range(chars):
                x = self.embed(idx)
                for layer, cell in enumerate(self.cells):
                    if self.lstm:
                        hs[layer], cs[layer] = cell(x, (hs[layer], cs[layer]))
                    else:
                        hs[layer] = cell(x, hs[layer])
                    x = hs[layer]
                probs = torch.softmax(self.head(x) / TEMPERATURE, dim=-1)
                idx = torch.multinomial(probs, 1, generator=generator)[0]
                drawn.append(idx)
            return len(torch.cat(drawn).tolist())


def charlm_run(model: CharRNN, tokenizer: Tokenizer, length: int, samples: int, sink,
               generator: torch.Generator) -> int:
    """charlm's sampling path, `samples` side by side; returns the characters written."""
    device = model.embed.weight.device
    stream = generate_batch(model, tokenizer, "", length, samples, TEMPERATURE, stop=STOP, generator=generator,
                            device=device)
    return sum(len(t) for t in write_samples(stream, sink, "", samples))


def products_only(model: CharRNN, streams: int, steps: int) -> int:
    """Only the recurrent matrix products of `steps` sampling steps over `streams` streams,
    with charlm's packed operands: what batched sampling cannot beat on this machine.
    Returns the characters the steps stand for."""
    cells = PackedCells(model, streams)
    device = model.embed.weight.device
    with torch.inference_mode():
        operands = [(torch.randn(streams, w.shape[0], device=device), w)
                    for w_ih, _, w_hh, _, joint in cells.layers for w in (w_ih, w_hh, joint) if w is not None]
        for _ in range(steps):
            for x, w in operands:
                torch.mm(x, w)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return streams * steps


def timed(run) -> tuple[float, float]:
    """(characters per second, characters per CPU-second of this process) of one run."""
    wall, cpu = time.perf_counter(), time.process_time()
    chars = run()
    return chars / (time.perf_counter() - wall), chars / (time.process_time() - cpu)


def compare(cell: str, tokenizer: Tokenizer, used: set[int], args, sink) -> None:
    device = torch.device(args.device)
    model = untrained_model(cell, tokenizer, used, args.layers, args.hidden).to(device)
    bare = BareSampler(model, tokenizer.newline_id, device)
    generator = torch.Generator().manual_seed(0)  # charlm draws its uniform numbers on the CPU
    bare_generator = torch.Generator(device).manual_seed(0)  # torch.multinomial draws on the device
    batch_length = max(1, args.chars // args.batch_share)
    runs = {
        "bare": lambda: bare.run(args.chars, bare_generator),
        "one": lambda: charlm_run(model, tokenizer, args.chars, 1, sink, generator),
        "many": lambda: charlm_run(model, tokenizer, batch_length, args.samples, sink, generator),
        "products": lambda: products_only(model, args.samples, batch_length),
    }
    bare.run(20, bare_generator)  # warm up all three
    charlm_run(model, tokenizer, 20, 1, sink, generator)
    charlm_run(model, tokenizer, 2, args.samples, sink, generator)
    products_only(model, args.samples, 2)
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for round_ in range(args.rounds):
        # Rotate the order, so none of them always runs right after another.
        for name in (list(runs) * 2)[round_ % len(runs) : round_ % len(runs) + len(runs)]:
            rates[name].append(timed(runs[name]))
    wall = {name: statistics.median(r[0] for r in rates[name]) for name in runs}
    cpu = {name: statistics.median(r[1] for r in rates[name]) for name in runs}
    spread = {name: f"{min(r[0] for r in rates[name]):,.0f}-{max(r[0] for r in rates[name]):,.0f}" for name in runs}
    labels = {"bare": f"bare {bare.cells[0].__class__.__name__} loop, batch 1",
              "one": "charlm sample, batch 1", "many": f"charlm sample, {args.samples} x {batch_length}",
              "products": f"matrix products alone, {args.samples} x {batch_length}"}
    print(f"{cell.upper()} {args.layers}x{args.hidden}, medians of {args.rounds} rounds "
          f"(chars/s; range; chars per CPU-second):")
    for name in runs:
        print(f"  {labels[name]:<30} {wall[name]:9,.0f}  ({spread[name]}; {cpu[name]:,.0f} per CPU-s)")
    print(f"  charlm / bare:          {wall['one'] / wall['bare']:6.2f}  (target >= 0.9; "
          f"by CPU time {cpu['one'] / cpu['bare']:.2f})\n"
          f"  {args.samples} samples / one:    {wall['many'] / wall['one']:6.1f}x (target >= 20; "
          f"by CPU time {cpu['many'] / cpu['one']:.1f}x; the products alone {wall['products'] / wall['one']:.1f}x)\n"
          f"  {args.samples} samples / bare:   {wall['many'] / wall['bare']:6.1f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru"])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--chars", type=int, default=1000, help="characters per batch-1 measurement")
    parser.add_argument("--samples", type=int, default=64, help="samples side by side")
    parser.add_argument("--batch-share", type=int, default=8,
                        help="each of the side-by-side samples is --chars / this long")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    text, source = corpus_text()
    tokenizer = train_tokenizer([text], "char")
    used = set(tokenizer.encode(text).tolist())
    print(f"{len(used)} characters of {source} (vocabulary {tokenizer.vocab_size} with byte fallback); "
          + (torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} threads"),
          flush=True)
    with open(os.devnull, "w", encoding="utf-8") as sink:
        for cell in args.cells:
            compare(cell, tokenizer, used, args, sink)


if __name__ == "__main__":
    main()
