"""The explorer page in a real browser: headless Chromium (Debian's) driven by Playwright.

They skip when Playwright or Chromium is missing; CI installs both (.ci/run). Each test also
checks that the page logged no error and asked for nothing but its own file.
"""

from __future__ import annotations

import math
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from charlm import features
from charlm.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from charlm.explorer import ExplorerOptions, explorer_data, render_page, write_explorer
from charlm.neurons import STATES, align_text, run_stack, zero_carry
from tests.conftest import make_text
from tests.test_explorer import HOSTILE, LONG_CODE
from tests.test_neurons import save_tiny_checkpoint

sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright for Python: pip install playwright")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip("needs Debian's chromium (apt-get install chromium); Playwright never downloads a browser here",
                allow_module_level=True)

# No background traffic of the browser's own, so that any request seen is the page's.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
NEGATIVE, POSITIVE = (33, 102, 172), (178, 24, 43)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Opened:
    """A page loaded from file://, with what it logged and requested."""

    def __init__(self, browser, path: Path):
        self.page = browser.new_page(viewport={"width": 1280, "height": 800})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready=true]", timeout=30_000)

    def check_clean(self) -> None:
        assert self.errors == []
        assert all(url == self.url or url.startswith("data:") for url in self.requests), self.requests
        assert self.dialogs == []
        self.page.close()

    def colours(self, selector: str) -> list[tuple[int, int, int]]:
        styles = self.page.eval_on_selector_all(selector, "spans => spans.map(s => s.style.backgroundColor)")
        return [tuple(int(v) for v in re.findall(r"\d+", style)) for style in styles]


def wait_until(page, predicate: str, timeout: float = 30.0) -> None:
    """Poll a JS predicate from here: Playwright's own wait_for_function compiles it inside the page,
    which the page's Content-Security-Policy (no eval) rightly refuses."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate):
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        time.sleep(0.05)


def expected_colour(value: float, centre: float = 0.0, half: float = 1.0) -> tuple[int, int, int]:
    """The page's diverging scale: blue, white at the centre, red."""
    f = max(-1.0, min(1.0, (value - centre) / half))
    bucket = math.floor((f + 1) / 2 * 255 + 0.5)
    f = 2 * bucket / 255 - 1
    rgb = POSITIVE if f >= 0 else NEGATIVE
    return tuple(math.floor(255 + (c - 255) * abs(f) + 0.5) for c in rgb)


def close_colours(got, want, tolerance: int = 3) -> bool:
    return len(got) == len(want) and all(abs(a - b) <= tolerance for g, w in zip(got, want) for a, b in zip(g, w))


# -- pages ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pages(tmp_path_factory, trained_run):
    """The trained LSTM's page over text like its corpus, and a few others."""
    folder = tmp_path_factory.mktemp("pages")
    text = make_text(3000, seed=7)
    write_explorer(trained_run / "best.pt", text, folder / "lstm.html", ExplorerOptions())
    write_explorer(trained_run / "best.pt", HOSTILE, folder / "hostile.html", ExplorerOptions())
    model, tokenizer = model_from_checkpoint(load_checkpoint(trained_run / "best.pt"))
    fallback = explorer_data(model, tokenizer, text, ExplorerOptions(model_limit=1000), "big.pt")
    (folder / "fallback.html").write_text(render_page(fallback), encoding="utf-8")
    return {"folder": folder, "text": text, "checkpoint": trained_run / "best.pt"}


def test_the_page_opens_coloured_with_the_unit_list_filled(browser, pages):
    opened = Opened(browser, pages["folder"] / "lstm.html")
    page = opened.page
    assert page.locator("#text span").count() == len(pages["text"])
    assert len(set(opened.colours("#text span"))) > 20  # coloured by a unit, not blank
    assert page.locator("#ranking tbody tr").count() == 100
    varying = [name for name, compute in features.FEATURES.items() if len(set(compute(pages["text"]))) > 1]
    assert page.locator("#feature option").all_text_contents() == varying
    assert "LSTM 1x48" in page.text_content("#model-line")
    opened.check_clean()


def test_clicking_a_unit_recolours_the_text_by_it(browser, pages):
    opened = Opened(browser, pages["folder"] / "lstm.html")
    page = opened.page
    before = opened.colours("#text span")
    row = page.locator("#ranking tbody tr").nth(3)
    name = row.locator("td").nth(1).text_content()
    row.click()
    assert name.replace("/", " · ", 1).split("/")[0] in page.text_content("#unit-label").replace("layer ", "")
    assert page.locator("#ranking tbody tr.chosen").count() == 1
    after = opened.colours("#text span")
    assert after != before
    layer, state, unit = name.split("/")
    values = page.evaluate(f"Array.from(CharlmExplorer.unitValues({{layer: {layer}, state: '{state}', unit: {unit}}}))")
    scale = page.evaluate("CharlmExplorer.app.scale")
    assert close_colours(after, [expected_colour(v, scale["centre"], scale["half"]) for v in values], tolerance=1)
    opened.check_clean()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recomputed_gates_and_cell_states_equal_the_models(browser, tmp_path, cell):
    """What the page recomputes from stored h and the weights, over two streams, matches torch."""
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt", cell=cell, layers=2)
    write_explorer(ckpt, LONG_CODE, tmp_path / "page.html", ExplorerOptions())
    model, tokenizer = model_from_checkpoint(load_checkpoint(ckpt))
    tokens = align_text(tokenizer, LONG_CODE).tokens
    opened = Opened(browser, tmp_path / "page.html")
    length = opened.page.evaluate("CharlmExplorer.app.data.streams.length")
    expected = {}
    for b in range(-(-len(tokens) // length)):  # each stream of the search from a zero state
        ids = torch.from_numpy(tokens[b * length : (b + 1) * length]).view(-1, 1)
        acts, _, _ = run_stack(model, ids, zero_carry(model, 2, 1, "cpu"), {0: set(STATES[cell]), 1: set(STATES[cell])})
        for key, value in acts.items():
            expected.setdefault(key, []).append(value[:, 0].numpy())
    for layer in (0, 1):
        for state in STATES[cell]:
            want = np.concatenate(expected[(layer, state)])
            for unit in (0, 7):
                got = np.array(opened.page.evaluate(
                    f"Array.from(CharlmExplorer.unitValues({{layer: {layer}, state: '{state}', unit: {unit}}}))"))
                peak = max(1.0, np.abs(want[:, unit]).max())
                assert np.abs(got - want[:, unit]).max() < 0.02 * peak, (layer, state, unit)
    opened.check_clean()


def test_hovering_a_character_shows_guesses_surprisal_and_active_units(browser, pages):
    opened = Opened(browser, pages["folder"] / "lstm.html")
    page = opened.page
    page.locator("#text span").nth(40).hover()
    hover = page.text_content("#hover")
    assert re.search(r"surprisal \d+\.\d\d bits", hover)
    assert page.locator("#hover .guess").count() == 5
    percents = [int(re.search(r"(\d+)%$", t).group(1)) for t in page.locator("#hover .guess").all_text_contents()]
    assert percents == sorted(percents, reverse=True) and sum(percents) <= 102
    assert page.locator("#hover button.chip").count() == 6
    page.locator("#hover button.chip").first.click()  # an active unit is one click away
    assert page.locator("#hover button.chip").first.text_content().split(" ")[0].split("/")[2] in page.text_content("#unit-label")
    opened.check_clean()


def drag(page, first: int, last: int) -> None:
    start = page.locator("#text span").nth(first).bounding_box()
    end = page.locator("#text span").nth(last).bounding_box()
    page.mouse.move(start["x"] + 1, start["y"] + start["height"] / 2)
    page.mouse.down()
    page.mouse.move(end["x"] + end["width"] / 2, end["y"] + end["height"] / 2, steps=5)
    page.mouse.move(end["x"] + end["width"] - 1, end["y"] + end["height"] / 2)
    page.mouse.up()


def test_dragging_over_text_ranks_units_and_clicking_a_match_shows_it(browser, pages):
    opened = Opened(browser, pages["folder"] / "lstm.html")
    page = opened.page
    text = pages["text"]
    first = text.index('"')  # a quoted stretch, from its opening quote to its closing one
    last = text.index('"', first + 1)
    drag(page, first, last)
    assert page.locator("#text .selected").count() == last - first + 1
    assert f"selected characters {first + 1:,}-{last + 1:,}" in page.text_content("#selection-info")
    assert page.locator("#selection-units tbody tr").count() > 0
    matches = page.locator("#matches li")
    assert 1 <= matches.count() <= 50
    assert "on together" in page.text_content("#matches-title")
    matches.first.click()
    hit = page.locator("#text .match")
    assert hit.count() >= 1
    assert not (page.locator("#text .match").first.evaluate("s => s.classList.contains('selected')"))
    inside = page.evaluate("""() => { const s = document.querySelector('#text .match').getBoundingClientRect();
        const v = document.getElementById('text').getBoundingClientRect(); return s.top >= v.top && s.bottom <= v.bottom; }""")
    assert inside  # scrolled into view
    opened.check_clean()


def test_typing_in_the_live_box_colours_it_as_torch_computes(browser, pages):
    opened = Opened(browser, pages["folder"] / "lstm.html")
    page = opened.page
    page.fill("#jump-box", "0/h/5")
    page.click("#jump button")
    typed = "(alpha (beta) 'x')\n  gamma"
    page.locator("#live-input").click()
    page.keyboard.type(typed)
    wait_until(page, f"() => document.querySelectorAll('#live-view span').length === {len(typed)}")
    model, tokenizer = model_from_checkpoint(load_checkpoint(pages["checkpoint"]))
    aligned = align_text(tokenizer, typed)
    acts, _, _ = run_stack(model, torch.from_numpy(aligned.tokens).view(-1, 1), zero_carry(model, 1, 1, "cpu"),
                           {0: {"h"}})
    values = acts[(0, "h")][:, 0, 5].numpy()[aligned.char_token]
    assert close_colours(opened.colours("#live-view span"), [expected_colour(v) for v in values], tolerance=2)
    page.click("#continue")  # samples 200 more characters at the chosen temperature
    wait_until(page, f"() => document.querySelectorAll('#live-view span').length >= {len(typed) + 200}")
    assert page.input_value("#live-input").startswith(typed)
    opened.check_clean()


def test_the_saturation_scatter_names_a_unit_on_hover_and_selects_it_on_click(browser, pages):
    opened = Opened(browser, pages["folder"] / "lstm.html")
    page = opened.page
    page.click("button[data-tab=saturation]")
    canvases = page.locator("#saturation canvas")
    assert canvases.count() == 3  # input, forget, output of one layer
    gate = page.evaluate("(() => { const g = CharlmExplorer.app.saturation[1]; return {gate: g.gate, left: g.left[0], right: g.right[0]}; })()")
    box = canvases.nth(1).bounding_box()
    x, y = box["x"] + 24 + gate["left"] * 150, box["y"] + 150 - gate["right"] * 150 + 4
    page.mouse.move(x, y)
    tip = page.text_content("#saturation-tip")
    assert re.match(rf"0/{gate['gate']}/\d+: left \d\.\d+, right \d\.\d+", tip)
    page.mouse.click(x, y)
    assert f"· {gate['gate']} ·" in page.text_content("#unit-label")
    opened.check_clean()


def test_a_hostile_text_shows_as_text_and_runs_nothing(browser, pages):
    opened = Opened(browser, pages["folder"] / "hostile.html")
    page = opened.page
    shown = page.text_content("#text")
    assert shown == HOSTILE.replace("\n", "↵\n")
    assert page.evaluate("document.querySelectorAll('img, #text script, #text *:not(span)').length") == 0
    opened.check_clean()


def test_a_page_without_the_model_works_and_says_why(browser, pages):
    opened = Opened(browser, pages["folder"] / "fallback.html")
    page = opened.page
    assert "no live mode" in page.text_content("#note")
    assert page.locator("#live-input").is_disabled()
    assert page.locator("#text span").count() == len(pages["text"])
    page.fill("#jump-box", "0/forget/3")
    page.click("#jump button")
    assert "only the stored states" in page.text_content("#unit-label")
    drag(page, 10, 20)  # selection works on the stored h alone
    assert "selected characters 11-21" in page.text_content("#selection-info")
    opened.check_clean()


@pytest.mark.parametrize(("cell", "layers", "tokenizer"), [("gru", 2, "char"), ("rnn", 1, "char"), ("lstm", 2, "unigram")])
def test_other_cells_layers_and_tokenizers_open_and_run_live(browser, tmp_path, cell, layers, tokenizer):
    from dataclasses import asdict

    from charlm.model import CharRNN, ModelConfig
    from charlm.tokenizer import train_tokenizer

    text = make_text(2500, seed=3)
    tok = train_tokenizer([text], tokenizer, vocab_size=300 if tokenizer == "unigram" else None)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(tok.vocab_size, cell, layers, 16, embedding=8, bytes_from=tok.bytes_from))
    save_checkpoint(tmp_path / "m.pt", {"model_config": asdict(model.config), "model": model.state_dict(),
                                        "tokenizer": {"kind": tok.kind, "model": tok.model}})
    write_explorer(tmp_path / "m.pt", text, tmp_path / "page.html", ExplorerOptions())
    opened = Opened(browser, tmp_path / "page.html")
    page = opened.page
    page.locator("#ranking tbody tr").nth(1).click()
    page.locator("#live-input").click()
    page.keyboard.type("(the cat) é")
    wait_until(page, "() => document.querySelectorAll('#live-view span').length === 11")
    assert len(set(opened.colours("#live-view span"))) > 1
    assert page.locator("#saturation canvas").count() == (0 if cell == "rnn" else 2 * layers if cell == "gru" else 3 * layers)
    opened.check_clean()


# -- jamo and the directions ------------------------------------------------------------------------------
def test_a_jamo_page_spells_typed_korean_as_torch_does_and_writes_whole_syllables(browser, tmp_path):
    from tests.test_explorer import save_model
    from tests.test_jamo import korean_text

    text = korean_text(2500)
    checkpoint = save_model(tmp_path / "m.pt", text, "jamo", cell="gru", layers=1, hidden=16)
    write_explorer(checkpoint, text, tmp_path / "page.html", ExplorerOptions())
    opened = Opened(browser, tmp_path / "page.html")
    page = opened.page
    described = page.text_content("#model-line")
    assert "jamo tokenizer" in described and "live model embedded" in described
    assert page.locator("#text span").count() == len(text)
    page.fill("#jump-box", "0/h/5")
    page.click("#jump button")
    typed = "그는 집으로 뷁 a"  # 뷁: its jamo were never seen, so it falls back whole to its bytes
    page.locator("#live-input").click()
    page.keyboard.type(typed)
    wait_until(page, f"() => document.querySelectorAll('#live-view span').length === {len(typed)}")
    model, tokenizer = model_from_checkpoint(load_checkpoint(checkpoint))
    aligned = align_text(tokenizer, typed)
    assert len(aligned.tokens) > len(typed) + 5  # two or three jamo a syllable
    acts, _, _ = run_stack(model, torch.from_numpy(aligned.tokens).view(-1, 1), zero_carry(model, 1, 1, "cpu"),
                           {0: {"h"}})
    values = acts[(0, "h")][:, 0, 5].numpy()[aligned.char_token]
    assert close_colours(opened.colours("#live-view span"), [expected_colour(v) for v in values], tolerance=2)
    page.click("#continue")
    wait_until(page, f"() => document.querySelectorAll('#live-view span').length >= {len(typed) + 200}")
    written = page.input_value("#live-input")[len(typed):]
    assert "\ufffd" not in written and any("\uac00" <= ch <= "\ud7a3" for ch in written)
    opened.check_clean()


def test_a_bilm_page_shows_backward_units_and_runs_the_forward_model_live(browser, tmp_path):
    from charlm.neurons import reader_activations
    from tests.test_explorer import save_model

    text = make_text(3000, seed=7)
    checkpoint = save_model(tmp_path / "m.pt", text, "char", "both", layers=1, hidden=12)
    write_explorer(checkpoint, text, tmp_path / "page.html", ExplorerOptions())
    opened = Opened(browser, tmp_path / "page.html")
    page = opened.page
    assert "biLM" in page.text_content("#model-line")
    ranked = page.locator("#ranking tbody tr td:nth-child(2)").all_text_contents()
    assert any("/h</" in name or "<" in name for name in ranked) and any("<" not in name for name in ranked)
    page.fill("#jump-box", "0/h</3")
    page.click("#jump button")
    model, tokenizer = model_from_checkpoint(load_checkpoint(checkpoint))
    values, _ = reader_activations(model, align_text(tokenizer, text), [(0, "h<", 3)])
    scale = page.evaluate("CharlmExplorer.app.scale")
    assert close_colours(opened.colours("#text span"), [expected_colour(v, scale["centre"], scale["half"])
                                                         for v in values[0]], tolerance=2)
    page.locator("#text span").nth(40).hover()
    assert "next:" in page.text_content("#hover")
    page.locator("#live-input").click()
    page.keyboard.type("(ab)")
    wait_until(page, "() => document.querySelectorAll('#live-view span').length === 4")
    assert "backward model" in page.text_content("#live-help")
    page.fill("#jump-box", "0/h/3")  # a forward unit: the live box is coloured again
    page.click("#jump button")
    assert len(set(opened.colours("#live-view span"))) > 1
    opened.check_clean()


def test_a_backward_models_page_guesses_the_previous_character(browser, tmp_path):
    from tests.test_explorer import save_model

    text = make_text(2000, seed=2)
    checkpoint = save_model(tmp_path / "m.pt", text, "char", "backward", cell="gru", layers=1, hidden=12)
    write_explorer(checkpoint, text, tmp_path / "page.html", ExplorerOptions())
    opened = Opened(browser, tmp_path / "page.html")
    page = opened.page
    assert page.locator("#live-input").is_disabled() and "reads backward" in page.text_content("#note")
    page.locator("#text span").nth(len(text) - 1).hover()
    assert "nothing after it" in page.text_content("#hover")
    page.locator("#text span").nth(10).hover()
    assert "previous" in page.text_content("#hover") and page.locator("#hover .guess").count() == 5
    opened.check_clean()
