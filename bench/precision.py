"""Would bf16 weights make `charlm sample` and the `inspect-neurons` scan faster on this CPU?

charlm samples and inspects in float32. On a CPU with native bf16 (AVX512-BF16 or AMX), a
batch-1 sampling step, bound by reading the weights, might run faster from weights half
the size. This measures it before anything is built: an untrained 2-layer, 512-unit model
(speed does not depend on training) over tinyshakespeare's characters, float32 against
the same weights cast to bf16, alternating rounds, medians compared:

  sample      charlm's sampling path (`generate_batch` + `write_samples` into /dev/null),
              one stream and 64 side by side, at temperature 0.8 with the same seed; and how
              many of the first characters of one stream the two precisions agree on
  scan        the forward part of the `inspect-neurons --find` scan (`neurons.run_stack`:
              every layer's states and gates over 128 streams, chunk by chunk), which is
              most of its time; the Pearson sums after it stay float32 either way

On a CPU without native bf16 there is nothing to measure (bf16 would be emulated, many times
slower): it says so and exits 0. --force runs it anyway, to check the script itself.

    python bench/precision.py
    python bench/precision.py --cells lstm --rounds 3 --chars 300
    python bench/precision.py --force --cells gru --chars 50 --scan-chars 5000 --rounds 1   # a check
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sample_speed import TEMPERATURE, STOP, corpus_text, untrained_model  # noqa: E402

from charlm.neurons import SEARCH_STREAMS, STATES, CHUNK, run_stack, zero_carry  # noqa: E402
from charlm.precision import cpu_has_native_bf16  # noqa: E402
from charlm.sample import generate_batch, write_samples  # noqa: E402
from charlm.tokenizer import train_tokenizer  # noqa: E402


def sample_run(model, tokenizer, length: int, samples: int, seed: int = 0) -> str:
    generator = torch.Generator().manual_seed(seed)
    stream = generate_batch(model, tokenizer, "", length, samples, TEMPERATURE, stop=STOP, generator=generator)
    with open(os.devnull, "w", encoding="utf-8") as sink:
        return "".join(write_samples(stream, sink, "", samples))


def scan_run(model, ids: torch.Tensor) -> int:
    """The scan's forward pass over ids (streams, length), every state of every layer wanted."""
    wanted = {layer: set(STATES[model.config.cell]) for layer in range(model.config.layers)}
    carry = zero_carry(model, model.config.layers, ids.shape[0], "cpu")
    if next(model.parameters()).dtype == torch.bfloat16:
        carry = [tuple(c.bfloat16() for c in pair) if isinstance(pair, tuple) else pair.bfloat16() for pair in carry]
    for start in range(0, ids.shape[1], CHUNK):
        _, carry, _ = run_stack(model, ids[:, start : start + CHUNK].t(), carry, wanted)
    return ids.numel()


def median_rates(runs: dict, rounds: int) -> dict[str, float]:
    """Characters per second of each run, median over alternating rounds."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(rounds):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
        for name in order:
            start = time.perf_counter()
            chars = runs[name]()
            rates[name].append(chars / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def agreement(a: str, b: str) -> int:
    """How many characters two samples share before they first differ."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def compare(cell: str, tokenizer, used, text: str, args) -> None:
    fp32 = untrained_model(cell, tokenizer, used, args.layers, args.hidden)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    models = {"float32": fp32, "bf16": bf16}
    streams = SEARCH_STREAMS
    ids = torch.as_tensor(tokenizer.encode(text[: args.scan_chars]), dtype=torch.long)
    ids = ids[: len(ids) // streams * streams].view(streams, -1)
    length_many = max(1, args.chars // 8)
    runs = {}
    for name, model in models.items():
        runs[f"sample, batch 1, {name}"] = lambda m=model: len(sample_run(m, tokenizer, args.chars, 1))
        runs[f"sample, {args.samples} x {length_many}, {name}"] = (
            lambda m=model: len(sample_run(m, tokenizer, length_many, args.samples)))
        runs[f"scan, {streams} streams, {name}"] = lambda m=model: scan_run(m, ids)
    for run in runs.values():  # warm up
        run()
    rates = median_rates(runs, args.rounds)
    print(f"{cell.upper()} {args.layers}x{args.hidden}, medians of {args.rounds} rounds (chars/s):")
    for name, rate in rates.items():
        print(f"  {name:<36} {rate:10,.0f}")
    for what in ("sample, batch 1", f"sample, {args.samples} x {length_many}", f"scan, {streams} streams"):
        print(f"  {what}: bf16 / float32 {rates[f'{what}, bf16'] / rates[f'{what}, float32']:.2f}")
    same = agreement(*(sample_run(m, tokenizer, args.chars, 1, seed=1) for m in (fp32, bf16)))
    print(f"  seed 1, one stream: the two precisions write the same first {same} of {args.chars} characters",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru"])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--chars", type=int, default=1000, help="characters of each batch-1 sample")
    parser.add_argument("--samples", type=int, default=64, help="samples side by side (each --chars / 8 long)")
    parser.add_argument("--scan-chars", type=int, default=300_000, help="characters the scan reads")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--force", action="store_true", help="run even without native bf16 (emulated: slow)")
    args = parser.parse_args()
    if not cpu_has_native_bf16() and not args.force:
        print("no native bf16 on this CPU (AVX512-BF16 or AMX): nothing to measure here")
        return
    text, source = corpus_text()
    tokenizer = train_tokenizer([text], "char")
    used = set(tokenizer.encode(text).tolist())
    print(f"{source}; {torch.get_num_threads()} threads; native bf16: {cpu_has_native_bf16()}", flush=True)
    for cell in args.cells:
        compare(cell, tokenizer, used, text, args)


if __name__ == "__main__":
    main()
