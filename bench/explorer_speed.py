"""The explorer page (`inspect-neurons --html`): its size, how fast it is written and how fast it answers.

On the first --chars characters of ../shared/corpora/tinyshakespeare.txt and a checkpoint (given,
or trained here with the defaults for --train-seconds on the same corpus), it times in this one
process the terminal's search (`inspect-neurons --find line-position`: the ranking and its view)
and writing the page, then opens the page from file:// in headless Chromium (Debian's, through
Playwright) and reads the page's own clock for: time to interactive (text coloured and the unit
list filled), recolouring for another unit (h, an LSTM cell state, a gate), and a selection's
ranking and matches. The bars: page <= 10 MB, interactive <= 3 s, selection <= 0.5 s,
recolour <= 0.2 s, writing <= 1.5 x the search.

    python bench/explorer_speed.py                       # trains the default model for 60 s first
    python bench/explorer_speed.py runs/my-run/best.pt   # an existing checkpoint
    python bench/explorer_speed.py --chars 2000 --train-seconds 5   # a quick check that it runs
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from contextlib import redirect_stderr
from pathlib import Path

from common import shared_corpus

from charlm.cli import main as charlm_main
from charlm.explorer import ExplorerOptions, write_explorer

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
REPEATS = 3


def train_default(corpus: Path, seconds: float, folder: Path) -> Path:
    """The default model, an LSTM 1x256 (ModelConfig's; a longer run may get 512 units, whose page
    is bigger: its weights alone take 7 MB), trained for `seconds`."""
    from charlm.corpus import open_corpus
    from charlm.train import train

    with redirect_stderr(io.StringIO()):
        result = train(open_corpus([corpus]), {"hidden": 256}, {"time_budget": seconds, "sample_length": 0},
                       out=folder / "run")
    return result.out_dir / "last.pt"


def best_of(seconds: list[float]) -> float:
    return min(seconds)


def time_search(checkpoint: Path, text_file: Path) -> float:
    """`charlm inspect-neurons CKPT FILE --find line-position` as the terminal runs it, output discarded."""
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        with redirect_stderr(io.StringIO()), _quiet_stdout():
            rc = charlm_main(["inspect-neurons", str(checkpoint), str(text_file), "--find", "line-position"])
        times.append(time.perf_counter() - start)
        assert rc == 0
    return best_of(times)


class _quiet_stdout:
    def __enter__(self):
        self.saved, sys.stdout = sys.stdout, io.StringIO()

    def __exit__(self, *exc):
        sys.stdout = self.saved


def time_write(checkpoint: Path, text: str, out: Path) -> tuple[float, int]:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        page = write_explorer(checkpoint, text, out, ExplorerOptions(chars=len(text)))
        times.append(time.perf_counter() - start)
    return best_of(times), len(page.html.encode("utf-8"))


def browser_figures(page_path: Path) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    figures: dict[str, list[float]] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for _ in range(REPEATS):
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(page_path.resolve().as_uri())
            page.wait_for_selector("body[data-ready=true]", timeout=60_000)
            # Each figure runs until the browser has painted the result (two animation frames later).
            timing = page.evaluate("""async () => {
                const app = CharlmExplorer.app;
                const painted = () => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
                const out = {interactive: app.timings.interactive};
                const states = app.data.states.filter(s => s.source).map(s => s.name);
                for (const state of ["h", "c", states.find(s => !["h", "c"].includes(s))]) {
                    if (!state || !states.includes(state)) continue;
                    app.cache.clear();
                    const start = performance.now();
                    CharlmExplorer.selectUnit({layer: 0, state, unit: 1});
                    await painted();
                    out["recolour " + state] = performance.now() - start;
                }
                const from = Math.floor(app.chars.length / 2);
                const start = performance.now();
                CharlmExplorer.selectText(from, from + 11);
                await painted();
                out.selection = performance.now() - start;
                return out;
            }""")
            for name, value in timing.items():
                figures.setdefault(name, []).append(value / 1000)
            page.close()
        browser.close()
    return {name: statistics.median(values) for name, values in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, help="default: train the default model first")
    parser.add_argument("--chars", type=int, default=20_000)
    parser.add_argument("--train-seconds", type=float, default=60.0)
    parser.add_argument("--corpus", type=Path, help="default: ../shared/corpora/tinyshakespeare.txt")
    args = parser.parse_args()

    corpus = args.corpus or shared_corpus("tinyshakespeare.txt")
    text = corpus.read_text(encoding="utf-8")[: args.chars]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = args.checkpoint or train_default(corpus, args.train_seconds, folder)
        text_file = folder / "text.txt"
        text_file.write_text(text, encoding="utf-8")
        search = time_search(checkpoint, text_file)
        write, size = time_write(checkpoint, text, folder / "page.html")
        print(f"{len(text):,} characters of {corpus.name}; {checkpoint}")
        print(f"page size:        {size / 1e6:6.2f} MB   (bar: 10 MB)")
        print(f"terminal search:  {search:6.2f} s    (inspect-neurons --find line-position)")
        print(f"write the page:   {write:6.2f} s    = {write / search:.2f} x the search (bar: 1.5)")
        for name, seconds in browser_figures(folder / "page.html").items():
            bar = {"interactive": 3.0, "selection": 0.5}.get(name, 0.2)
            print(f"{name + ':':17} {seconds:6.3f} s    (bar: {bar} s)")


if __name__ == "__main__":
    main()
