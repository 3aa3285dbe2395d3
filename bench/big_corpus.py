"""How `charlm train` copes with a big corpus: start-up time, encoding speed, peak memory, the token cache.

Writes a synthetic text of --mb megabytes into a temporary folder (prose-like ASCII words,
some Hangul lines and emoji, made here from a fixed seed), then runs
`python -m charlm train FILE --max-steps 3 --sample-length 0` twice, each run with its own
--out in one parent folder. The first run learns the vocabulary and encodes the corpus into
the token cache (<parent>/.cache); the second must find both there and do neither again.
For each run it prints the wall time, when training began (the run summary on stderr),
the encoding speed (the cache's temporary file, watched from outside), the child's peak
resident memory, and the cache file. Targets: peak RSS <= 1.5 GB, encoding >= 10 MB/s,
no vocabulary learning or encoding on the second run, the same memory for 1 GB as for 100 MB.

    python bench/big_corpus.py                          # 100 MB, as the target is stated
    python bench/big_corpus.py --mb 1000                # memory must not grow with the corpus
    python bench/big_corpus.py --mb 1000 -- --val-fraction 0.01   # anything after -- goes to charlm train

About half of each run's wall time is the final validation, which reads at most the
first 500,000 held-out tokens however big the corpus is.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MB = 1 << 20
RSS_LIMIT = 1.5 * (1 << 30)
MIN_ENCODE_MB_PER_SEC = 10.0
BLOCK_BYTES = 4 * MB
HANGUL = [chr(0xAC00 + i) for i in range(0, 11172, 29)]  # a few hundred syllables spread over the block
EMOJI = ["\U0001F600", "\U0001F389", "\U0001F680", "\U0001F431", "\u2764\ufe0f", "\U0001F44D", "\U0001F525",
         "\U0001F30D", "\U0001F914", "\U0001F4DA"]


def synthetic_lines(rng: random.Random, target_bytes: int) -> list[str]:
    """About `target_bytes` of lines: invented words in sentences, one line in eight Korean."""
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"] + ["th", "ch", "sh", "qu"]
    words = ["the", "of", "and", "to", "in", "a", "is", "that", "it", "was"]
    words += ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    korean = ["".join(rng.choice(HANGUL) for _ in range(rng.randint(1, 4))) for _ in range(1500)]
    lines, size = [], 0
    while size < target_bytes:
        if rng.random() < 0.125:
            line = " ".join(rng.choice(korean) for _ in range(rng.randint(3, 12))) + "."
        else:
            picked = [rng.choice(words) for _ in range(rng.randint(4, 18))]
            picked[0] = picked[0].capitalize()
            if rng.random() < 0.2:
                picked.insert(rng.randrange(len(picked)), rng.choice(EMOJI))
            line = " ".join(picked) + rng.choice([".", ".", ",", "?", "!", ":", ";"])
        lines.append(line if rng.random() < 0.9 else "")  # some blank lines, like paragraphs
        size += len(line.encode("utf-8")) + 1
    return lines


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    """Write the corpus: one block of lines, reshuffled for each block written. Returns its bytes."""
    rng = random.Random(seed)
    lines = synthetic_lines(rng, min(BLOCK_BYTES, int(megabytes * MB)))
    target, written = int(megabytes * MB), 0
    with open(path, "wb") as f:
        while written < target:
            rng.shuffle(lines)
            data = ("\n".join(lines) + "\n").encode("utf-8")[: target - written]
            if written + len(data) >= target:  # end on a whole character and a newline
                data = data[: data.rfind(b"\n") + 1] or data
            f.write(data)
            written += len(data)
            if len(data) < BLOCK_BYTES // 2:
                break
    return written


@dataclass
class RunResult:
    wall: float = 0.0
    peak_rss: int = 0  # bytes
    returncode: int = 0
    stderr: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, line)
    encode_start: float | None = None  # the cache's temporary file first seen
    encode_end: float | None = None  # the finished cache file first seen
    first_log: float | None = None  # log.jsonl first seen: the 3 steps are done
    cache_files: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (size, mtime_ns)

    def when(self, prefix: str) -> float | None:
        return next((t for t, line in self.stderr if line.strip().startswith(prefix)), None)


def run_train(corpus: Path, out: Path, extra: list[str]) -> RunResult:
    """One `charlm train` child: stderr lines timestamped, the cache and run folder watched, wait4 rusage."""
    cache = out.parent / ".cache"
    result = RunResult()
    known_cache = {p.name for p in cache.glob("tokens-*")} if cache.is_dir() else set()
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "charlm", "train", str(corpus), "--max-steps", "3",
                              "--sample-length", "0", "--out", str(out), *extra],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    done = threading.Event()

    def read_stderr() -> None:
        for line in child.stderr:
            result.stderr.append((time.perf_counter() - start, line.rstrip("\n")))

    def watch_files() -> None:
        # Polled from outside, so the measurement needs nothing from charlm itself.
        while not done.is_set():
            now = time.perf_counter() - start
            if cache.is_dir():
                names = {p.name for p in cache.iterdir()}
                if result.encode_start is None and any(n.startswith(".tokens.") for n in names):
                    result.encode_start = now
                if result.encode_end is None and any(n.startswith("tokens-") for n in names - known_cache):
                    result.encode_end = now
            if result.first_log is None and (out / "log.jsonl").exists():
                result.first_log = now
            time.sleep(0.02)

    threads = [threading.Thread(target=read_stderr), threading.Thread(target=watch_files)]
    for t in threads:
        t.start()
    # wait4 gives this child's own peak RSS; RUSAGE_CHILDREN would be the peak of all children so far.
    _, status, usage = os.wait4(child.pid, 0)
    result.wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    result.returncode = child.returncode
    done.set()
    for t in threads:
        t.join()
    result.peak_rss = usage.ru_maxrss * 1024  # Linux reports kilobytes
    result.cache_files = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in cache.glob("tokens-*")}
    return result


def report(label: str, result: RunResult, corpus_bytes: int) -> float | None:
    """Print one run's figures; returns its encoding speed in MB/s (None: it did not encode)."""
    print(f"{label}:")
    if result.returncode != 0:
        print("  FAILED, exit code", result.returncode)
        for _, line in result.stderr[-10:]:
            print("  |", line)
        return None
    vocab = result.when("learning a")
    summary = result.when("run ")
    finished = result.when("done:")
    print(f"  wall {result.wall:.1f} s; peak RSS {result.peak_rss / MB:,.0f} MB")
    if vocab is not None:
        print(f"  {vocab:.1f} s: learning the vocabulary")
    speed = None
    if result.encode_start is not None and result.encode_end is not None:
        seconds = max(result.encode_end - result.encode_start, 1e-3)
        speed = corpus_bytes / MB / seconds
        print(f"  {result.encode_start:.1f} s: encoding began; {result.encode_end:.1f} s: cache written "
              f"({seconds:.1f} s, {speed:.1f} MB/s)")
    else:
        print("  no encoding: the token cache was used")
    if summary is not None:
        print(f"  {summary:.1f} s: training began (run summary shown)")
    if result.first_log is not None:
        print(f"  {result.first_log:.1f} s: 3 steps done (first log.jsonl entry)")
    if finished is not None and result.first_log is not None:
        print(f"  {finished:.1f} s: done (final validation and checkpoint took {finished - result.first_log:.1f} s)")
    for name, (size, _) in sorted(result.cache_files.items()):
        dtype = name.rsplit(".", 1)[-1]
        print(f"  cache {name}: {size / MB:,.1f} MB, {dtype}")
    return speed


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100, help="size of the synthetic corpus in megabytes")
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary folder goes")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="charlm-big-", dir=args.dir) as tmp:
        folder = Path(tmp)
        corpus = folder / "big.txt"
        start = time.perf_counter()
        corpus_bytes = write_corpus(corpus, args.mb)
        print(f"corpus: {corpus_bytes / MB:,.1f} MB synthetic text, written in {time.perf_counter() - start:.1f} s; "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}, nice {os.nice(0)}")
        first = run_train(corpus, folder / "runs" / "first", extra)
        speed = report("first run (vocabulary + encoding)", first, corpus_bytes)
        second = run_train(corpus, folder / "runs" / "second", extra)
        report("second run (token cache)", second, corpus_bytes)

    ok_runs = first.returncode == 0 and second.returncode == 0
    peak = max(first.peak_rss, second.peak_rss)
    reused = (ok_runs and second.encode_start is None and second.when("learning a") is None
              and len(second.cache_files) == 1 and second.cache_files == first.cache_files)
    checks = [
        (f"peak RSS {peak / MB:,.0f} MB <= {RSS_LIMIT / MB:,.0f} MB", ok_runs and peak <= RSS_LIMIT),
        (f"encoding {speed or 0:.1f} MB/s >= {MIN_ENCODE_MB_PER_SEC:g} MB/s",
         speed is not None and speed >= MIN_ENCODE_MB_PER_SEC),
        ("second run learned and encoded nothing again" if reused
         else "second run learned or encoded again (or failed)", reused),
    ]
    verdict = "PASS" if all(ok for _, ok in checks) else "FAIL"
    print(f"verdict {verdict} at {corpus_bytes / MB:,.0f} MB: " + "; ".join(
        f"{text} {'ok' if ok else 'MISSED'}" for text, ok in checks))
    sys.exit(0 if verdict == "PASS" else 1)


if __name__ == "__main__":
    main()
