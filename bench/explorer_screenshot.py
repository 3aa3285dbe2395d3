"""The explorer's screenshot in the README (docs/explorer.png), made in headless Chromium as the tests drive it.

Writes the page for a checkpoint over the built-in sample text, opens it at 1280x800, shows
the best unit for --find, drags over the first stretch of --select, types --live into the
live box, hovers a character, and saves the window as a PNG.

    charlm train --time-budget 75 --out runs/py
    python bench/explorer_screenshot.py runs/py docs/explorer.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from charlm.cli import main as charlm_main
from charlm.features import BUILTIN_TEXT

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def drag(page, first: int, last: int) -> None:
    start = page.locator("#text span").nth(first).bounding_box()
    end = page.locator("#text span").nth(last).bounding_box()
    page.mouse.move(start["x"] + 1, start["y"] + start["height"] / 2)
    page.mouse.down()
    page.mouse.move(end["x"] + end["width"] - 1, end["y"] + end["height"] / 2, steps=5)
    page.mouse.up()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--find", default="bracket-depth")
    parser.add_argument("--select", default="(path, limit=None)", help="drag over the first place of this text")
    parser.add_argument("--live", default="print(total([1, (2, 3)], n))")
    parser.add_argument("--hover", default="encoding=", help="hover the last character of the first place of this")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        page_path = Path(tmp) / "explorer.html"
        if charlm_main(["inspect-neurons", str(args.checkpoint), "--html", str(page_path), "--find", args.find]):
            sys.exit("charlm could not write the page")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(page_path.as_uri())
            page.wait_for_selector("body[data-ready=true]")
            first = BUILTIN_TEXT.index(args.select)
            drag(page, first, first + len(args.select) - 1)
            page.locator("#live-input").click()
            page.keyboard.type(args.live)
            page.locator("#text span").nth(BUILTIN_TEXT.index(args.hover) + len(args.hover) - 1).hover()
            page.screenshot(path=str(args.out))
            browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
