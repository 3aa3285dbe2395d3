"""The explorer page (inspect-neurons --html): its data is the search's, its text is escaped, its
limits speak clearly, it needs no network, and its own files ship with the package."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from charlm import features
from charlm.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.cli import main
from charlm.evaluate import token_losses
from charlm.explorer import DEFAULT_CHARS, ExplorerOptions, explorer_data, render_page
from charlm.explorer.page import ASSETS, unpack
from charlm.neurons import CHUNK, STATES, align_text, run_stack, zero_carry
from tests.test_neurons import save_tiny_checkpoint

# Two streams of the search (each at least 2,048 tokens), every built-in feature varying.
LONG_CODE = features.BUILTIN_TEXT * 4
HOSTILE = 'x = "</script><script>alert(1)</script>"\n<img src=x onerror="alert(2)"> <!-- <script> & </style>\n'


def page_data(page: str) -> dict:
    """The JSON a written page carries, read back as the page reads it."""
    match = re.search(r'<script type="application/json" id="charlm-data">(.*?)</script>', page, re.DOTALL)
    assert match, "the page has no data element"
    return json.loads(match.group(1))


def ranking_of(data: dict, name: str) -> list[dict]:
    entry = next(r for r in data["rankings"] if r["name"] == name)
    states, hidden = [s["name"] for s in data["states"]], data["model"]["hidden"]
    ranked = []
    for key, score in zip(unpack(entry["keys"]).tolist(), unpack(entry["scores"]).tolist()):
        unit, rest = key % hidden, key // hidden
        ranked.append({"layer": rest // len(states), "state": states[rest % len(states)], "unit": unit, "score": score})
    return ranked


def run_cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(["inspect-neurons", *map(str, args)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def load(path: Path):
    return model_from_checkpoint(load_checkpoint(path))


# -- the page's rankings are the terminal's ----------------------------------------------------------
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_every_ranking_in_the_page_equals_find_json(tmp_path, capsys, cell):
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt", cell=cell, layers=2)
    text_file = tmp_path / "code.txt"
    text_file.write_text(LONG_CODE, encoding="utf-8")
    rc, _, err = run_cli(capsys, ckpt, text_file, "--html", tmp_path / "page.html", "--find-regex", "[0-9]+")
    assert rc == 0, err
    data = page_data((tmp_path / "page.html").read_text(encoding="utf-8"))
    # Every built-in feature that varies over the text (the Korean ones do not vary over code).
    varying = [name for name, compute in features.FEATURES.items() if np.ptp(compute(LONG_CODE)) > 0]
    assert "bracket-depth" in varying and "jamo-position" not in varying
    searches = [["--find", name] for name in varying] + [["--find-regex", "[0-9]+"]]
    assert [r["name"] for r in data["rankings"]] == varying + ["regex [0-9]+"]
    for search in searches:
        rc, out, err = run_cli(capsys, ckpt, text_file, *search, "--top", "0", "--json")
        assert rc == 0, err
        expected = json.loads(out)
        name = search[1] if search[0] == "--find" else f"regex {search[1]}"
        got = ranking_of(data, name)
        assert len(got) == len(expected) == 2 * len(STATES[cell]) * 12
        assert [(e["layer"], e["state"], e["unit"]) for e in got] == [(e["layer"], e["state"], e["unit"]) for e in expected]
        assert np.allclose([e["score"] for e in got], [e["score"] for e in expected], rtol=0, atol=1e-9)


def save_model(path: Path, text: str, kind: str = "char", direction: str = "forward", cell: str = "lstm",
               layers: int = 2, hidden: int = 12) -> Path:
    """An untrained checkpoint of any tokenizer and direction (a biLM for "both") over `text`'s vocabulary."""
    from dataclasses import asdict

    from charlm.checkpoint import save_checkpoint
    from charlm.directions import build_model
    from charlm.model import ModelConfig
    from charlm.tokenizer import train_tokenizer

    tokenizer = train_tokenizer([text], kind)
    torch.manual_seed(0)
    model = build_model(ModelConfig(tokenizer.vocab_size, cell, layers, hidden, embedding=8,
                                    bytes_from=tokenizer.bytes_from, direction=direction))
    save_checkpoint(path, {"model_config": asdict(model.config), "model": model.state_dict(),
                           "tokenizer": {"kind": tokenizer.kind, "model": tokenizer.model}})
    return path


def korean_and_code() -> str:
    from tests.test_jamo import korean_text

    return korean_text(3000) + LONG_CODE[:3000] + "뷁 é 😀\n"  # a syllable and characters unseen: byte fallback


@pytest.mark.parametrize(("kind", "direction"), [("jamo", "forward"), ("char", "backward"), ("char", "both"),
                                                 ("jamo", "both")])
def test_rankings_of_jamo_and_backward_units_equal_find_json(tmp_path, capsys, kind, direction):
    text = korean_and_code()
    ckpt = save_model(tmp_path / "m.pt", text[:-8], kind, direction)
    text_file = tmp_path / "text.txt"
    text_file.write_text(text, encoding="utf-8")
    rc, _, err = run_cli(capsys, ckpt, text_file, "--html", tmp_path / "page.html")
    assert rc == 0, err
    data = page_data((tmp_path / "page.html").read_text(encoding="utf-8"))
    directions = 2 if direction == "both" else 1
    names = [s["name"] for s in data["states"]]
    assert ("h<" in names) == (direction != "forward") and ("h" in names) == (direction != "backward")
    for name in ("jamo-position", "bracket-depth", "line-position"):
        rc, out, err = run_cli(capsys, ckpt, text_file, "--find", name, "--top", "0", "--json")
        assert rc == 0, err
        expected = json.loads(out)
        got = ranking_of(data, name)
        assert len(got) == len(expected) == directions * 2 * len(STATES["lstm"]) * 12
        assert [(e["layer"], e["state"], e["unit"]) for e in got] == \
            [(e["layer"], e["state"], e["unit"]) for e in expected]
        assert np.allclose([e["score"] for e in got], [e["score"] for e in expected], rtol=0, atol=1e-9)


def test_a_backward_units_stored_h_is_its_state_with_each_character_read_whole(tmp_path):
    from charlm.neurons import reader_activations

    text = korean_and_code()[-2500:]  # code, then characters that take three byte tokens each
    model, tokenizer = load(save_model(tmp_path / "m.pt", korean_and_code()[:-8], "char", "both", layers=1))
    data = explorer_data(model, tokenizer, text, ExplorerOptions(streams=1))
    aligned = align_text(tokenizer, text)
    assert len(aligned.tokens) > len(text)
    stored = next(s for s in data["stored"] if s["state"] == "h<")
    scale = unpack(stored["scale"])
    h = unpack(stored["values"]).astype(np.float32) * scale[:, None]  # (units, tokens)
    expected, _ = reader_activations(model, aligned, [(0, "h<", u) for u in range(12)])  # (units, chars)
    assert np.all(np.abs(h[:, aligned.char_token] - expected) <= scale[:, None] / 2 + 1e-6)
    assert data["model_payload"] is not None and data["model"]["direction"] == "both"  # live: the forward model


def test_a_backward_models_page_guesses_the_previous_character(tmp_path):
    text = "(a[b]c) 'q' €\n" * 30
    model, tokenizer = load(save_model(tmp_path / "m.pt", text[:-3], "char", "backward", layers=1))
    data = explorer_data(model, tokenizer, text, ExplorerOptions())
    aligned = align_text(tokenizer, text)
    assert data["model_payload"] is None and "reads backward" in data["note"]
    reversed_ids = torch.from_numpy(aligned.tokens[::-1].copy()).view(1, -1)
    with torch.no_grad():
        probs = torch.softmax(model(reversed_ids)[0][0], dim=-1).numpy()[::-1]  # at token t: p(token t - 1)
    guess_ids = unpack(data["guesses"]["ids"])
    first = aligned.first_token()
    for i in (3, 12, 13, len(text) - 1):  # 12 and 13: '€', three byte tokens read right to left
        t = aligned.char_token[i]
        assert guess_ids[t][0] == np.argmax(probs[first[i]])
    bits = unpack(data["surprisal_centibits"]).astype(np.float64)
    assert bits[-1] == 65535 and bits[0] != 65535  # the backward model read the last character first
    nats = token_losses(model, aligned.tokens[::-1].copy(), streams=1).double().sum().item()
    assert abs(bits[:-1].sum() / 100 - nats / np.log(2)) < 0.005 * len(text)


def test_a_cheating_bidirectional_model_gets_no_page(tmp_path, capsys):
    ckpt = save_model(tmp_path / "m.pt", LONG_CODE, direction="bidirectional", layers=1)
    rc, _, err = run_cli(capsys, ckpt, "--html", tmp_path / "p.html")
    assert rc == 2 and "sees the answer" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.html").exists()


# -- what the page stores is the model's ----------------------------------------------------------------
def test_stored_h_and_cell_snapshots_are_the_searchs_streams(tmp_path):
    model, tokenizer = load(save_tiny_checkpoint(tmp_path / "m.pt", cell="lstm", layers=2))
    data = explorer_data(model, tokenizer, LONG_CODE, ExplorerOptions())
    tokens = align_text(tokenizer, LONG_CODE).tokens
    streams, length = data["streams"]["count"], data["streams"]["length"]
    assert streams == 2 and data["streams"]["chunk"] == CHUNK
    for layer in range(2):
        stored = data["stored"][layer]
        h = unpack(stored["values"]).astype(np.float32) * unpack(stored["scale"])[:, None]  # (units, tokens)
        snapshots = unpack(data["cell_snapshots"][layer])  # (streams, chunks, units)
        for b in range(streams):
            # Each stream of the search starts from a zero state.
            ids = torch.from_numpy(tokens[b * length : (b + 1) * length]).view(-1, 1)
            acts, _, _ = run_stack(model, ids, zero_carry(model, 2, 1, "cpu"), {layer: {"h", "c"}})
            expected_h = acts[(layer, "h")][:, 0].numpy().T
            step = unpack(stored["scale"])[:, None] / 2  # 8-bit rounding
            assert np.all(np.abs(h[:, b * length : b * length + ids.shape[0]] - expected_h) <= step + 1e-6)
            chunk_ends = acts[(layer, "c")][CHUNK - 1 :: CHUNK, 0].numpy()
            assert np.allclose(snapshots[b, : len(chunk_ends)], chunk_ends, atol=1e-5)


@pytest.mark.parametrize("text", ["x", "\n\n\n"])
def test_a_text_no_feature_varies_over_still_stores_h(tmp_path, text):
    model, tokenizer = load(save_tiny_checkpoint(tmp_path / "m.pt", layers=1))
    data = explorer_data(model, tokenizer, text, ExplorerOptions())
    assert data["rankings"] == [] and data["start"] == {"feature": None, "unit": [0, "h", 0]}
    tokens = torch.from_numpy(align_text(tokenizer, text).tokens).view(-1, 1)
    acts, _, _ = run_stack(model, tokens, zero_carry(model, 1, 1, "cpu"), {0: {"h"}})
    stored = data["stored"][0]
    h = unpack(stored["values"]) * unpack(stored["scale"])[:, None]
    assert np.abs(h - acts[(0, "h")][:, 0].numpy().T).max() <= unpack(stored["scale"]).max()


def test_the_page_opens_on_the_feature_and_unit_asked_for(tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt", layers=2)
    rc, _, err = run_cli(capsys, ckpt, "--html", tmp_path / "p.html", "--find", "indent", "--unit", "3",
                         "--state", "forget")
    assert rc == 0, err
    start = page_data((tmp_path / "p.html").read_text(encoding="utf-8"))["start"]
    assert start == {"feature": "indent", "unit": [1, "forget", 3]}  # the top layer unless --layer


def test_guesses_and_surprisal_are_the_models_probabilities(tmp_path):
    text = "(a[b]c) 'q' €\n" * 30  # '€' is unseen in training: byte fallback, three tokens for one character
    model, tokenizer = load(save_tiny_checkpoint(tmp_path / "m.pt", cell="gru", layers=2))
    data = explorer_data(model, tokenizer, text, ExplorerOptions())
    aligned = align_text(tokenizer, text)
    assert len(aligned.tokens) > len(text)
    ids = torch.from_numpy(aligned.tokens).view(1, -1)
    with torch.no_grad():
        probs = torch.softmax(model(ids)[0][0], dim=-1).numpy()  # (tokens, vocab)
    guess_ids = unpack(data["guesses"]["ids"])
    guess_probs = unpack(data["guesses"]["probs"]) / 255
    for t in (0, 5, 17, len(aligned.tokens) - 1):
        real = [i for i in guess_ids[t] if i >= 0]
        assert np.allclose(guess_probs[t][: len(real)], probs[t][real], atol=0.5 / 255 + 1e-6)
        order = np.argsort(-probs[t])
        assert real[0] == order[0]
    bits = unpack(data["surprisal_centibits"]).astype(np.float64)
    assert len(bits) == len(text) and bits[0] == 65535  # nothing predicted the first character
    nats = token_losses(model, aligned.tokens, streams=1).double().sum().item()
    assert abs(bits[1:].sum() / 100 - nats / np.log(2)) < 0.005 * len(text)


# -- escaping and the network ---------------------------------------------------------------------------
def test_a_hostile_text_stays_text_inside_the_page(tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt", layers=1)
    rc, _, err = run_cli(capsys, ckpt, "--text", HOSTILE, "--html", tmp_path / "page.html")
    assert rc == 0, err
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert page_data(page)["text"] == HOSTILE
    # The only elements are the page's own: three scripts, no image.
    assert len(re.findall(r"<script\b", page)) == 3 and len(re.findall(r"</script>", page, re.I)) == 3
    assert "<img" not in page and "<!--" not in page.split("<body>")[1]


def test_a_lone_surrogate_in_the_text_survives_as_an_escape(tmp_path):
    model, tokenizer = load(save_tiny_checkpoint(tmp_path / "m.pt", layers=1))
    text = "a\udc80(b) \U0001f600 가\n"  # a lone surrogate (an undecodable byte), an emoji, Hangul
    page = render_page(explorer_data(model, tokenizer, text, ExplorerOptions(), "m\udcff.pt"))
    page.encode("utf-8")  # writable as UTF-8
    data = page_data(page)
    assert data["text"] == text.replace("\udc80", "\ufffd")  # what the model read: its bytes, decoded
    assert data["checkpoint"] == "m\udcff.pt"


def test_the_page_refers_to_nothing_outside_itself(tmp_path):
    model, tokenizer = load(save_tiny_checkpoint(tmp_path / "m.pt", layers=1))
    page = render_page(explorer_data(model, tokenizer, features.BUILTIN_TEXT, ExplorerOptions(), "m.pt"))
    assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/|\bsrc=|\bhref=|@import|url\(|fetch\(|XMLHttpRequest|"
                         r"new Worker|WebSocket|EventSource", page, re.IGNORECASE)
    assert "default-src 'none'" in page  # and the browser is told to refuse any load it might still try


# -- limits -------------------------------------------------------------------------------------------
def test_a_text_over_the_cap_is_refused_in_one_line_naming_chars(tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt", layers=1)
    long_file = tmp_path / "long.txt"
    long_file.write_text("ab(c)\n" * (DEFAULT_CHARS // 6 + 10), encoding="utf-8")  # 20,058 characters
    rc, out, err = run_cli(capsys, ckpt, long_file, "--html", tmp_path / "page.html")
    assert rc == 2 and out == "" and not (tmp_path / "page.html").exists()
    assert len(err.strip().splitlines()) == 1
    assert f"{long_file} has {6 * (DEFAULT_CHARS // 6 + 10):,} characters" in err and "--chars N" in err
    rc, _, err = run_cli(capsys, ckpt, long_file, "--html", tmp_path / "page.html", "--chars", "600")
    assert rc == 0, err
    assert page_data((tmp_path / "page.html").read_text(encoding="utf-8"))["text"] == ("ab(c)\n" * 100)


@pytest.mark.parametrize(("args", "message"), [
    (["--chars", "10"], "--chars: only with --html"),
    (["--html", "p.html", "--json"], "--html writes the explorer on its own"),
    (["--html", "p.html", "--chars", "0"], "--chars 0: give 1 to"),
    (["--find-regex", "a", "--find-regex", "b"], "--find-regex: give one at a time"),
    (["--html", "p.html", "--unit", "99"], "--unit 99: the model has 12 units"),
])
def test_bad_explorer_options_are_usage_errors(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt", layers=1)
    rc, out, err = run_cli(capsys, ckpt, *args)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_a_model_too_big_to_embed_gets_a_page_without_live_mode(tmp_path):
    model, tokenizer = load(save_tiny_checkpoint(tmp_path / "m.pt", cell="lstm", layers=1))
    data = explorer_data(model, tokenizer, features.BUILTIN_TEXT, ExplorerOptions(model_limit=1000))
    assert data["model_payload"] is None and data["cell_snapshots"] is None
    assert "no live mode" in data["note"] and "MB" in data["note"]
    sources = {s["name"]: s["source"] for s in data["states"]}
    assert sources == {"h": "stored", "c": None, "input": None, "forget": None, "candidate": None, "output": None}
    assert data["rankings"] and data["stored"]  # the rankings and h are all there
    render_page(data)


# -- packaging ------------------------------------------------------------------------------------------
def test_the_pages_own_files_are_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    patterns = declared["tool"]["setuptools"]["package-data"]["charlm.explorer"]
    folder = resources.files("charlm.explorer")
    for name in ASSETS:
        assert folder.joinpath(name).read_text(encoding="utf-8").strip(), name
        assert any(Path(name).match(pattern) for pattern in patterns), f"{name} would not ship in a wheel"
