"""charlm training on a busy machine: alone, beside a busy program, and two runs at once.

Every run is `charlm train` in a process of its own, the default LSTM 1x256, batch 16 x 64,
for a fixed number of steps (--steps) on the first --chars characters of tinyshakespeare
(or the built-in sample text, repeated); its speed is its steps' characters over its
training seconds (the checkpoint's `elapsed`: the start-up and the final checkpoint left
out). Thread choices: "auto" is charlm's own (threads.py: the CPUs this process may use,
tuned while it trains); "N threads" pins OMP_NUM_THREADS=N, which charlm leaves alone.

  alone           auto against torch's default (all cores), the choice before threads.py,
                  medians of --rounds alternating pairs (single runs of a few seconds
                  differ by 10-15% on an idle machine); target >= 1.0
  beside a loop   a one-thread busy loop (`while True: pass`) holds a core; auto against
                  the best of 1 and all threads; target >= 0.8x
  two at once     two auto runs started together; the later finish against two runs one
                  after the other; target <= 1.3x

    python bench/busy.py                          # 300 steps on 200 kB, as the targets are stated
    python bench/busy.py --steps 20 --chars 20000 # a check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "tinyshakespeare.txt"


def write_corpus(folder: Path, chars: int) -> Path:
    if SHAKESPEARE.is_file():
        text = SHAKESPEARE.read_text(encoding="utf-8")
    else:
        from charlm.features import BUILTIN_TEXT

        text = BUILTIN_TEXT * (chars // len(BUILTIN_TEXT) + 1)
    path = folder / "corpus.txt"
    path.write_text(text[:chars], encoding="utf-8")
    return path


def environment(threads: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def start_run(corpus: Path, out: Path, steps: int, threads: int | None) -> subprocess.Popen:
    command = [sys.executable, "-m", "charlm", "train", str(corpus), "--max-steps", str(steps), "--hidden", "256",
               "--batch-size", "16", "--seq-len", "64", "--val-fraction", "0", "--sample-length", "0",
               "--out", str(out)]
    return subprocess.Popen(command, env=environment(threads), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def finish(process: subprocess.Popen, out: Path) -> dict:
    """Wait for a run; its training seconds, chars/s and the thread counts of its log windows."""
    _, err = process.communicate()
    if process.returncode != 0:
        sys.exit(f"charlm train failed ({process.returncode}): {err.strip().splitlines()[-1:]}")
    import torch

    state = torch.load(out / "last.pt", weights_only=True)["state"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    threads = [e["threads"] for e in log if "threads" in e]
    return {"seconds": state["elapsed"], "chars_per_sec": state["step"] * 16 * 64 / state["elapsed"],
            "threads": threads, "finished": time.perf_counter()}


def one_run(corpus: Path, folder: Path, name: str, steps: int, threads: int | None) -> dict:
    out = folder / name
    return finish(start_run(corpus, out, steps, threads), out)


def describe(result: dict) -> str:
    counts = sorted(set(result["threads"]))
    used = "/".join(map(str, counts)) if counts else "-"
    return f"{result['chars_per_sec']:9,.0f} chars/s  {result['seconds']:6.1f} s training  (threads used: {used})"


def label(key) -> str:
    return key if key == "auto" else f"{key} thread" + ("s" if key > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--chars", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5, help="alternating pairs of runs alone")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    fixed = sorted({1, cores})
    print(f"{cores} cores; LSTM 1x256, batch 16 x 64, {args.steps} steps on {args.chars:,} characters", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        corpus = write_corpus(folder, args.chars)
        one_run(corpus, folder, "warm-up", 5, None)  # caches and the vocabulary, so that no run pays for them

        print("alone:", flush=True)
        if cores > 1:
            print(f"  {label(1):>9}  {describe(one_run(corpus, folder, 'alone-1', args.steps, 1))}", flush=True)
        rates: dict = {cores: [], "auto": []}
        for round_ in range(args.rounds):
            for key in (cores, "auto") if round_ % 2 == 0 else ("auto", cores):
                result = one_run(corpus, folder, f"alone-{key}-{round_}", args.steps, None if key == "auto" else key)
                rates[key].append(result["chars_per_sec"])
                print(f"  {label(key):>9}  {describe(result)}", flush=True)
        medians = {key: statistics.median(r) for key, r in rates.items()}
        for key, median in medians.items():
            print(f"  {label(key):>9}  median {median:9,.0f} chars/s over {args.rounds} runs "
                  f"({min(rates[key]):,.0f} to {max(rates[key]):,.0f})")
        print(f"  auto / {cores} threads (the default before), medians: "
              f"{medians['auto'] / medians[cores]:.2f} (target >= 1.0, within noise)", flush=True)

        print("beside a one-thread busy loop:", flush=True)
        loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.5)
            beside = {t: one_run(corpus, folder, f"beside-{t}", args.steps, t) for t in fixed}
            beside["auto"] = one_run(corpus, folder, "beside-auto", args.steps, None)
        finally:
            loop.kill()
            loop.wait()
        for key, result in beside.items():
            print(f"  {label(key):>9}  {describe(result)}", flush=True)
        best = max(beside[t]["chars_per_sec"] for t in fixed)
        print(f"  auto / best fixed choice: {beside['auto']['chars_per_sec'] / best:.2f} (target >= 0.8)")

        print("two runs at once, against one after the other (auto):", flush=True)
        sequential = [one_run(corpus, folder, f"after-{i}", args.steps, None) for i in range(2)]
        start = time.perf_counter()
        outs = [folder / f"together-{i}" for i in range(2)]
        processes = [start_run(corpus, out, args.steps, None) for out in outs]
        together = [finish(p, out) for p, out in zip(processes, outs)]
        # Training seconds, so that the start-up of the processes counts in neither figure.
        one_after_other = sum(r["seconds"] for r in sequential)
        at_once = max(r["seconds"] for r in together)
        for name, results in (("one after the other", sequential), ("at once", together)):
            for r in results:
                print(f"  {name:>19}  {describe(r)}")
        print(f"  both at once: {at_once:.1f} s of training, one after the other: {one_after_other:.1f} s; "
              f"ratio {at_once / one_after_other:.2f} (target <= 1.3); "
              f"wall {time.perf_counter() - start:.1f} s for both at once")


if __name__ == "__main__":
    main()
