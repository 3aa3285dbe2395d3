"""Which defaults give the best model per second of a CPU? Train a grid, print a table.

Each configuration trains on the first 90% of tinyshakespeare (all for training) and is
evaluated on the last 10%. Two ways to spend the budget:
  --budget S   S seconds of training each (what a user gets; needs a quiet machine)
  --chars N    N training characters each (how much a config learns per character seen;
               independent of machine load), with chars/s measured over the first steps.

    python bench/tune.py --budget 107 --grid cells
    python bench/tune.py --chars 2000000 --grid batch
    python bench/tune.py --grid width-107     # grids whose configurations give their own "chars"
    python bench/tune.py --speeds             # chars/s of each cell and width: what "chars" keys are made from
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import shared_corpus, split_90_10  # noqa: E402

from charlm.config import ModelConfig  # noqa: E402
from charlm.corpus import open_corpus  # noqa: E402
from charlm.evaluate import evaluate_text  # noqa: E402
from charlm.train import train  # noqa: E402

GRIDS = {
    "cells": [
        {"cell": "lstm", "hidden": 256}, {"cell": "gru", "hidden": 256},
        {"cell": "lstm", "hidden": 384}, {"cell": "gru", "hidden": 384},
        {"cell": "lstm", "hidden": 512},
    ],
    "batch": [
        {"batch_size": 8, "seq_len": 64}, {"batch_size": 16, "seq_len": 64}, {"batch_size": 16, "seq_len": 128},
        {"batch_size": 32, "seq_len": 64}, {"batch_size": 32, "seq_len": 128},
    ],
    "lr": [{"lr": 2e-3}, {"lr": 3e-3}, {"lr": 5e-3}, {"lr": 8e-3}, {"lr": 1.2e-2}],
    "small-batch": [
        {"batch_size": 8, "seq_len": 64, "lr": 5e-3}, {"batch_size": 8, "seq_len": 64, "lr": 1e-2},
        {"batch_size": 16, "seq_len": 64, "lr": 1e-2}, {"batch_size": 16, "seq_len": 32, "lr": 1e-2},
        {"batch_size": 8, "seq_len": 64, "lr": 1e-2, "cell": "gru"},
    ],
    "defaults": [{}],
    "steps-a": [{"hidden": 256, "batch_size": 16, "seq_len": 64, "lr": 5e-3},
                {"hidden": 256, "batch_size": 16, "seq_len": 32, "lr": 5e-3}],
    "steps-b": [{"hidden": 256, "batch_size": 16, "seq_len": 64, "lr": 1e-2},
                {"hidden": 384, "batch_size": 16, "seq_len": 64, "lr": 5e-3}],
    "lr-high": [{"hidden": 256, "batch_size": 16, "seq_len": 64, "lr": 2e-2}],
    "wide": [{"hidden": 512, "batch_size": 32, "seq_len": 64, "lr": 1e-2}],
    "shape-a": [{"batch_size": 32, "seq_len": 32, "lr": 1e-2}, {"cell": "gru", "lr": 1e-2}],
    "shape-b": [{"batch_size": 32, "seq_len": 64, "lr": 2e-2}, {"hidden": 192, "lr": 1e-2}],
    "schedule-a": [{}, {"schedule": "cosine"}, {"lr": 1.5e-2}],
    "schedule-b": [{"warmup_steps": 100}, {"min_lr_fraction": 0.1}, {"grad_clip": 5.0}],
    "warmup-a": [{"warmup_steps": 200}, {"warmup_steps": 100, "lr": 1.5e-2}],
    "warmup-b": [{"warmup_steps": 300}, {"warmup_steps": 100, "batch_size": 32, "seq_len": 32}],
    "seed-a": [{"seed": 7, "warmup_steps": 30}, {"seed": 11, "warmup_steps": 30}],
    "seed-b": [{"seed": 7, "warmup_steps": 200}, {"seed": 11, "warmup_steps": 200}],
    # Round 2. A "chars" key gives that configuration its own length: the characters it reads
    # in the time the default model reads --chars (one-thread float32 speeds; bench/README.md).
    "width-107": [{"hidden": 256, "chars": 3_300_000}, {"hidden": 384, "chars": 1_600_000},
                  {"hidden": 384, "dropout": 0.1, "chars": 1_600_000}, {"hidden": 512, "chars": 1_100_000}],
    "width-107-seed7": [{"hidden": 256, "chars": 3_300_000, "seed": 7}, {"hidden": 384, "chars": 1_600_000, "seed": 7},
                        {"hidden": 512, "chars": 1_100_000, "seed": 7}],
    "width-300": [{"hidden": 384, "dropout": d, "chars": 4_600_000} for d in (0.1, 0.0)],
    "rnn-lr": [{"cell": "rnn", "lr": 5e-3, "chars": 6_144_000},
               {"cell": "rnn", "hidden": 512, "lr": 1e-2, "chars": 6_144_000},
               {"cell": "rnn", "hidden": 512, "lr": 5e-3, "chars": 6_144_000}],
    "dropout-600": [{"hidden": 512, "dropout": 0.1, "chars": 6_500_000}],
    "dropout-600-none": [{"hidden": 512, "dropout": 0.0, "chars": 6_500_000}],
    "dropout-9-a": [{"hidden": 512, "dropout": 0.1, "chars": 8_800_000}],
    "dropout-9-b": [{"hidden": 512, "dropout": 0.2, "chars": 8_800_000}],
    "dropout-512": [{"hidden": 512, "dropout": d, "chars": 2_600_000} for d in (0.0, 0.1, 0.2)],
    "gru-long": [{"cell": "gru", "lr": lr, "chars": 6_144_000} for lr in (1e-2, 5e-3, 3e-3)],
    "gru-512": [{"cell": "gru", "hidden": 512, "dropout": 0.2, "lr": 7e-3, "chars": 3_700_000}],
    "lstm-long": [{"lr": lr, "chars": 6_144_000} for lr in (1e-2, 5e-3)],
    "rnn-long": [{"cell": "rnn", "lr": 1e-2, "chars": 6_144_000},
                 {"cell": "rnn", "lr": 1e-2, "schedule": "constant", "chars": 6_144_000}],
}
MODEL_KEYS = {"cell", "layers", "hidden", "embedding", "dropout"}


def run_one(train_file: Path, val_file: Path, options: dict, budget: float | None, chars: int | None,
            out: Path) -> dict:
    model = {k: v for k, v in options.items() if k in MODEL_KEYS}
    model.setdefault("hidden", ModelConfig.hidden)  # named, so that a long run keeps the model it tunes
    config = {k: v for k, v in options.items() if k not in MODEL_KEYS and k != "chars"}
    chars = options.get("chars", chars)
    config.update(val_fraction=0.0, sample_length=0)
    if budget:
        config["time_budget"] = budget
    else:
        from charlm.train import TrainConfig

        if not chars:
            sys.exit(f"{options}: give --budget or --chars")
        base = TrainConfig(**{k: v for k, v in config.items() if k in TrainConfig.__dataclass_fields__})
        config["max_steps"] = max(1, chars // (base.batch_size * base.seq_len))
    start = time.time()
    result = train(open_corpus([train_file]), model, config, out=out)
    report = evaluate_text(out / "last.pt", open_corpus([val_file]))
    return {"options": options, "val_nats": round(report.result.nats_per_char, 4), "steps": result.steps,
            "train_seconds": round(result.elapsed, 1), "wall": round(time.time() - start, 1),
            "chars_per_sec": round(result.chars_per_sec), **gradient_trace(out / "log.jsonl")}


def gradient_trace(log: Path) -> dict:
    """What shows a run diverging: its largest windowed gradient norm (and the step), the
    first step whose window passed 10x the clip, and the training loss at the end."""
    windows = [e for e in map(json.loads, log.read_text(encoding="utf-8").splitlines()) if "grad_norm" in e]
    if not windows:
        return {}
    worst = max(windows, key=lambda e: e["grad_norm"])
    first_big = next((e["step"] for e in windows if e["grad_norm"] > 10), None)
    return {"max_grad_norm": float(f"{worst['grad_norm']:.3g}"), "at_step": worst["step"],
            "grad_norm_over_10_from": first_big, "last_loss": round(windows[-1]["loss"], 4)}


def speeds(train_file: Path) -> None:
    """Training chars/s of each cell at each width, batch 16 x 64, timed by charlm's own probe
    (sizing.seconds_per_step: real steps at this machine's precision and threads)."""
    import torch

    from charlm.config import TrainConfig
    from charlm.sizing import seconds_per_step
    from charlm.tokenizer import train_tokenizer

    text = train_file.read_text(encoding="utf-8")
    tokenizer = train_tokenizer([text], "char")
    tokens = tokenizer.encode(text[:300_000])
    config = TrainConfig(batch_size=16, seq_len=64)
    for cell in ("lstm", "gru", "rnn"):
        for width in (256, 384, 512, 768):
            model = ModelConfig(tokenizer.vocab_size, cell, hidden=width, bytes_from=tokenizer.bytes_from)
            rate = max(16 * 64 / seconds_per_step(model, config, tokens, torch.device("cpu")) for _ in range(3))
            print(json.dumps({"cell": cell, "hidden": width, "chars_per_sec": round(rate)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--budget", type=float)
    group.add_argument("--chars", type=int)
    parser.add_argument("--grid", choices=sorted(GRIDS), default="defaults")
    parser.add_argument("--base", default="{}", help="JSON options every configuration starts from")
    parser.add_argument("--speeds", action="store_true", help="only time each cell and width")
    args = parser.parse_args()
    base = json.loads(args.base)
    with tempfile.TemporaryDirectory() as tmp:
        train_file, val_file = split_90_10(shared_corpus("tinyshakespeare.txt"), Path(tmp))
        if args.speeds:
            speeds(train_file)
            return
        for i, options in enumerate(GRIDS[args.grid]):
            row = run_one(train_file, val_file, {**base, **options}, args.budget, args.chars, Path(tmp) / f"r{i}")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
