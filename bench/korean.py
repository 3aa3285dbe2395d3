"""Korean: whole syllables (char) against syllables spelled in jamo, at the same time budget.

For each tokenizer, trains `charlm train --tokenizer KIND` with the defaults on the first 90%
of korean.txt (all of it used for training: --val-fraction 0) for --budget seconds, then
reports `charlm eval --json` on the last 10%, in nats and bits per character of the text
(a syllable is one character whatever the tokenizer), the characters of text trained on
per second, and a short sample of each. unigram and bpe are there for reference.

    python bench/korean.py                        # 107 s per tokenizer
    python bench/korean.py --budget 600
    python bench/korean.py --budget 5             # a quick check that it runs
    python bench/korean.py --kinds char,jamo -- --cell gru --lr 0.003
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import shared_corpus, split_90_10  # noqa: E402

SAMPLE_CHARS = 80


def run(kind: str, budget: float, train: Path, val: Path, folder: Path, extra: list[str]) -> dict:
    out = folder / kind
    start = time.time()
    subprocess.run([sys.executable, "-m", "charlm", "train", str(train), "--tokenizer", kind,
                    "--time-budget", str(budget), "--val-fraction", "0", "--out", str(out), *extra],
                   check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - start
    checkpoint = out / "last.pt"
    result = json.loads(subprocess.run([sys.executable, "-m", "charlm", "eval", str(checkpoint), str(val), "--json"],
                                       check=True, capture_output=True, text=True).stdout)
    sample = subprocess.run([sys.executable, "-m", "charlm", "sample", str(checkpoint), "--length",
                             str(SAMPLE_CHARS), "--seed", "1"], check=True, capture_output=True, text=True).stdout
    payload = __import__("torch").load(checkpoint, weights_only=True)
    state, config = payload["state"], payload["train_config"]
    tokens_per_char = payload["corpus"]["tokens"] / len(train.read_text(encoding="utf-8"))
    tokens_per_sec = state["step"] * config["batch_size"] * config["seq_len"] / max(state["elapsed"], 1e-9)
    result.update(tokenizer=kind, budget=budget, wall_seconds=round(wall, 1), steps=state["step"],
                  vocab=payload["model_config"]["vocab_size"], tokens_per_char=round(tokens_per_char, 3),
                  chars_per_sec=round(tokens_per_sec / tokens_per_char), sample=sample.strip("\n"),
                  extra=" ".join(extra))
    return result


def table(results: list[dict], budget: float) -> str:
    lines = [f"korean.txt, last 10% held out, {budget:g} s of training each",
             "| tokenizer | nats/char | bits/char | steps | vocabulary | tokens/char | chars/s |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['tokenizer']} | {r['nats_per_char']:.4f} | {r['bits_per_char']:.4f} | {r['steps']} | "
                     f"{r['vocab']} | {r['tokens_per_char']:.2f} | {r['chars_per_sec']:,} |")
    for r in results:
        lines.append(f"\n{r['tokenizer']}: {r['sample']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=107.0, help="training seconds per tokenizer")
    parser.add_argument("--kinds", default="char,jamo,unigram,bpe", help="tokenizers, comma-separated")
    parser.add_argument("extra", nargs="*", help="options passed on to charlm train (after --)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        train, val = split_90_10(shared_corpus("korean.txt"), folder)
        for kind in args.kinds.split(","):
            results.append(run(kind.strip(), args.budget, train, val, folder, args.extra))
            print(json.dumps(results[-1], ensure_ascii=False), flush=True)
    print(table(results, args.budget))


if __name__ == "__main__":
    main()
