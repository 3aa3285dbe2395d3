"""Quality per second: train with the defaults on tinyshakespeare for a time budget, then eval.

Trains `charlm train` with default settings on the first 90% of tinyshakespeare.txt (all of
it used for training: --val-fraction 0) for --time-budget seconds, then reports
`charlm eval --json` on the last 10%, the same split as nanoGPT's shakespeare_char.

    python bench/quality.py                 # 107 s, the foundation's bar (<= 1.55 nats/char)
    python bench/quality.py --budget 600    # the longer bar
    python bench/quality.py -- --cell gru   # anything after -- goes to charlm train
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


def run(budget: float, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        train, val = split_90_10(shared_corpus("tinyshakespeare.txt"), folder)
        start = time.time()
        subprocess.run([sys.executable, "-m", "charlm", "train", str(train), "--time-budget", str(budget),
                        "--val-fraction", "0", "--out", str(folder / "run"), *extra],
                       check=True, stdout=subprocess.DEVNULL)
        wall = time.time() - start
        out = subprocess.run([sys.executable, "-m", "charlm", "eval", str(folder / "run" / "last.pt"), str(val),
                              "--json"], check=True, capture_output=True, text=True).stdout
        result = json.loads(out)
        payload = __import__("torch").load(folder / "run" / "last.pt", weights_only=True)
        state, config = payload["state"], payload["train_config"]
        result.update(budget=budget, wall_seconds=round(wall, 1), steps=state["step"],
                      chars_per_sec=round(state["step"] * config["batch_size"] * config["seq_len"] / state["elapsed"]),
                      model=payload["model_config"], lr=config["lr"], extra=" ".join(extra))
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=107.0, help="training seconds")
    parser.add_argument("extra", nargs="*", help="options passed on to charlm train (after --)")
    args = parser.parse_args()
    r = run(args.budget, args.extra)
    print(json.dumps(r))
    model = r["model"]
    print(f"tinyshakespeare, {args.budget:g} s of training: {r['nats_per_char']:.4f} nats/char "
          f"({r['bits_per_char']:.4f} bits/char), {r['steps']} steps, {r['wall_seconds']} s wall")
    print(f"  {model['cell'].upper()} {model['layers']}x{model['hidden']}, dropout {model['dropout']:g}, "
          f"lr {r['lr']:.3g}, {r['chars_per_sec']:,} chars/s over the run (its summary on stderr names the precision)")


if __name__ == "__main__":
    main()
