"""What the defaults choose on this machine for each cell and time budget.

For each cell and --time-budget, starts `charlm train` with the defaults on the first 90%
of tinyshakespeare (as bench/quality.py does), reads its summary (the model, the learning
rate, the precision and the reason for the width) and stops it before it trains. The
choice comes from timing a few steps of each width on this machine (sizing.py), so run it
on a quiet machine; it takes a few seconds per line.

    python bench/plans.py
    python bench/plans.py --cells lstm --budgets 60 1800
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import shared_corpus, split_90_10  # noqa: E402

FIELDS = ("model", "steps", "precision")  # summary lines, the last of them printed before training


def plan(train: Path, out: Path, cell: str, budget: float) -> dict[str, str]:
    """The summary lines of a default run of `cell` for `budget` seconds, and its reason line."""
    command = [sys.executable, "-m", "charlm", "train", str(train), "--cell", cell, "--time-budget", str(budget),
               "--val-fraction", "0", "--sample-length", "0", "--out", str(out)]
    seen: dict[str, str] = {}
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as process:
        for line in process.stderr:
            line = line.strip()
            if line.startswith("this run will read"):
                seen["reason"] = line
            key = line.split(" ", 1)[0]
            if key in FIELDS:
                seen[key] = line.split(" ", 1)[1].strip()
                if key == FIELDS[-1]:
                    break
        process.terminate()
    if FIELDS[-1] not in seen:
        sys.exit(f"charlm train --cell {cell} --time-budget {budget:g} ended before its summary")
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn"], choices=["lstm", "gru", "rnn"])
    parser.add_argument("--budgets", nargs="+", type=float, default=[60, 107, 300, 600, 1800])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        train, _ = split_90_10(shared_corpus("tinyshakespeare.txt"), folder)
        print("| cell | budget | model | lr | precision | expected passes |")
        print("|---|---|---|---|---|---|")
        for cell in args.cells:
            for budget in args.budgets:
                seen = plan(train, folder / f"{cell}-{budget:g}", cell, budget)
                model = re.sub(r", embedding \d+|, [\d,]+ parameters", "", seen["model"])
                lr = re.search(r"lr ([\d.e-]+)", seen["steps"])
                passes = re.search(r"\(([\d.]+) passes", seen.get("reason", ""))
                print(f"| {cell} | {budget:g} s | {model} | {lr.group(1) if lr else '?'} | "
                      f"{seen['precision'].split(';')[0]} | {passes.group(1) if passes else '-'} |", flush=True)


if __name__ == "__main__":
    main()
