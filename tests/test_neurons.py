"""charlm inspect-neurons: exact activations, per-character features, the streamed feature search, views, CLI."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from charlm import features
from charlm.checkpoint import save_checkpoint
from charlm.cli import main
from charlm.model import CharRNN, ModelConfig
from charlm.neurons import (
    STATES,
    InspectOptions,
    align_text,
    inspect,
    run_stack,
    scan,
    unit_activations,
    zero_carry,
)
from charlm.render import CharacterView, inspect_renderables
from charlm.tokenizer import train_tokenizer

CODE = features.BUILTIN_TEXT


def tiny_model(cell: str, layers: int = 2, hidden: int = 12, vocab: int = 40, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(vocab_size=vocab, cell=cell, layers=layers, hidden=hidden, embedding=6)).eval()


def save_tiny_checkpoint(path: Path, cell: str = "lstm", layers: int = 2, hidden: int = 12, text: str = CODE,
                         model: CharRNN | None = None) -> Path:
    tokenizer = train_tokenizer([text], "char")
    model = model or tiny_model(cell, layers, hidden, tokenizer.vocab_size)
    save_checkpoint(path, {"model_config": asdict(model.config), "model": model.state_dict(),
                           "tokenizer": {"kind": tokenizer.kind, "model": tokenizer.model}})
    return path


def all_states(model: CharRNN) -> dict[int, set[str]]:
    return {layer: set(STATES[model.config.cell]) for layer in range(model.config.layers)}


# -- the activations are the model's own ------------------------------------------------------------
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_extracted_h_of_every_layer_equals_the_models_own_states(cell):
    model = tiny_model(cell, layers=3)
    ids = torch.randint(0, 40, (4, 25))  # (B, T)
    acts, carry, top = run_stack(model, ids.t(), zero_carry(model, 3, 4, "cpu"), all_states(model))
    with torch.no_grad():
        fused_out, fused_final = model.rnn(model.embed(ids))  # the model's own multi-layer module
        hidden = model.init_hidden(4)
        stepped = []  # every layer's h after each step, through the model's cell path
        for t in range(ids.shape[1]):
            _, hidden = model.step(ids[:, t], hidden)
            stepped.append((hidden[0] if cell == "lstm" else hidden).clone())
    torch.testing.assert_close(acts[(2, "h")], fused_out.transpose(0, 1), rtol=0, atol=1e-6)
    torch.testing.assert_close(top, fused_out.transpose(0, 1), rtol=0, atol=1e-6)
    for layer in range(3):
        per_step = torch.stack([h[layer] for h in stepped])  # (T, B, H)
        torch.testing.assert_close(acts[(layer, "h")], per_step, rtol=1e-5, atol=1e-6)
        final = fused_final[0] if cell == "lstm" else fused_final
        carried = carry[layer][0] if cell == "lstm" else carry[layer]
        torch.testing.assert_close(carried[0], final[layer], rtol=0, atol=1e-6)


def test_lstm_cell_state_and_gates_equal_a_step_by_step_lstmcell():
    model = tiny_model("lstm", layers=2)
    ids = torch.randint(0, 40, (30, 3))  # (T, B)
    acts, _, _ = run_stack(model, ids, zero_carry(model, 2, 3, "cpu"), all_states(model))
    with torch.no_grad():
        x = model.embed(ids)
        for layer in range(2):
            w_ih, w_hh, b_ih, b_hh = model.layer_weights(layer)
            cell = torch.nn.LSTMCell(x.shape[-1], 12)
            for name, value in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), (w_ih, w_hh, b_ih, b_hh)):
                getattr(cell, name).copy_(value)
            h, c = torch.zeros(3, 12), torch.zeros(3, 12)
            expected = {name: [] for name in STATES["lstm"]}
            for t in range(30):
                i, f, g, o = (x[t] @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh).chunk(4, dim=-1)
                for name, value in zip(("input", "forget", "candidate", "output"),
                                       (i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid())):
                    expected[name].append(value)
                h, c = cell(x[t], (h, c))
                expected["h"].append(h)
                expected["c"].append(c)
            for name, values in expected.items():
                torch.testing.assert_close(acts[(layer, name)], torch.stack(values), rtol=1e-5, atol=1e-6)
            x = torch.stack(expected["h"])


def test_gru_gates_equal_a_step_by_step_grucell():
    model = tiny_model("gru", layers=2)
    ids = torch.randint(0, 40, (30, 3))
    acts, _, _ = run_stack(model, ids, zero_carry(model, 2, 3, "cpu"), all_states(model))
    with torch.no_grad():
        x = model.embed(ids)
        for layer in range(2):
            w_ih, w_hh, b_ih, b_hh = model.layer_weights(layer)
            cell = torch.nn.GRUCell(x.shape[-1], 12)
            for name, value in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), (w_ih, w_hh, b_ih, b_hh)):
                getattr(cell, name).copy_(value)
            h = torch.zeros(3, 12)
            expected = {name: [] for name in STATES["gru"]}
            for t in range(30):
                gi, gh = (x[t] @ w_ih.t() + b_ih).chunk(3, -1), (h @ w_hh.t() + b_hh).chunk(3, -1)
                reset, update = (gi[0] + gh[0]).sigmoid(), (gi[1] + gh[1]).sigmoid()
                expected["reset"].append(reset)
                expected["update"].append(update)
                expected["candidate"].append((gi[2] + reset * gh[2]).tanh())
                h = cell(x[t], h)
                expected["h"].append(h)
            for name, values in expected.items():
                torch.testing.assert_close(acts[(layer, name)], torch.stack(values), rtol=1e-5, atol=1e-6)
            x = torch.stack(expected["h"])


# -- characters and tokens ----------------------------------------------------------------------------
def test_a_character_unseen_in_training_takes_the_state_after_its_last_byte_token():
    tokenizer = train_tokenizer(["plain ascii (text) only"], "char")
    text = "a é 한 (b)"
    aligned = align_text(tokenizer, text)
    assert aligned.text == text
    assert len(aligned.tokens) == len(text) + 1 + 2  # é is 2 UTF-8 bytes, 한 is 3
    assert aligned.char_token.tolist() == [0, 1, 3, 4, 7, 8, 9, 10, 11]
    model = tiny_model("lstm", vocab=tokenizer.vocab_size)
    per_char, _ = unit_activations(model, aligned, [(1, "c", 5)])
    with torch.no_grad():
        acts, _, _ = run_stack(model, torch.from_numpy(aligned.tokens)[:, None], zero_carry(model, 2, 1, "cpu"),
                               {1: {"c"}})
    np.testing.assert_allclose(per_char[0], acts[(1, "c")][aligned.char_token, 0, 5].numpy())


# -- features -----------------------------------------------------------------------------------------
def values(array) -> list[int]:
    return [int(v) for v in array]


def test_bracket_depth_counts_every_kind_and_never_goes_below_zero():
    assert values(features.bracket_depth("a(b[c]{d})e))(x")) == [0, 1, 1, 2, 2, 1, 2, 2, 1, 0, 0, 0, 0, 1, 1]


def test_in_string_covers_the_opening_quote_and_the_content_but_not_the_closing_quote():
    text = "x = \"a#b\" + f'c' # don't\ny = 'it's' + \"\"\"two\nlines\"\"\""
    got = "".join(str(v) for v in values(features.in_string(text)))
    # x = "a#b" + f'c' # don't / y = 'it's' + """two / lines""": the apostrophes open nothing, and
    # of a closing triple quote only the last character is outside.
    expected = "0000" "1111" "00000" "11" + "0" * 14 + "111" + "0" * 6 + "1" * 14 + "0"
    assert got == expected, f"\n{text!r}\n{got}"


def test_in_comment_knows_strings_and_floor_division():
    text = 'a = "# no" # yes\nb = a // 2 ; // yes\n/* yes\n */ c'
    got = "".join(str(v) for v in values(features.in_comment(text)))
    expected = "0" * 11 + "1" * 5 + "0" * 14 + "1" * 6 + "0" + "1" * 9 + "0" * 3  # the closing / is outside
    assert got == expected, f"\n{text!r}\n{got}"


def test_line_indent_and_word_features():
    text = "ab cd\n    xy\n\tz\n"
    assert values(features.line_position(text)) == [1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 0]
    assert values(features.indent(text)) == [0] * 6 + [4] * 7 + [4] * 3
    assert values(features.word_position("ab cd_e1 f\n")) == [1, 2, 0, 1, 2, 3, 4, 5, 0, 1, 0]


def test_regex_feature_marks_matches_and_rejects_bad_patterns():
    assert values(features.regex_feature(r"\d+", "a12b3")) == [0, 1, 1, 0, 1]
    from charlm.errors import UsageError

    with pytest.raises(UsageError, match="--find-regex"):
        features.regex_feature("(unclosed", "text")


# -- the streamed search ------------------------------------------------------------------------------
def pearson(a: np.ndarray, f: np.ndarray) -> float:
    return float(np.corrcoef(a, f)[0, 1]) if a.std() > 0 else 0.0


@pytest.mark.parametrize(("streams", "chunk"), [(1, 7), (3, 16), (5, 128)])
def test_streamed_scores_equal_pearson_over_all_activations(streams, chunk):
    tokenizer = train_tokenizer([CODE], "char")
    model = tiny_model("lstm", hidden=6, vocab=tokenizer.vocab_size)
    text = CODE + "é (ü) 'x'"  # unseen characters: several tokens for one character
    aligned = align_text(tokenizer, text)
    feature = features.bracket_depth(aligned.text)
    result = scan(model, aligned, {"depth": feature}, all_states(model), streams=streams, chunk=chunk,
                  min_stream_tokens=1)
    # The reference: each stream run alone from a zero state, every activation kept, numpy's Pearson.
    n = len(aligned.tokens)
    length = -(-n // streams)
    units = [(layer, state, unit) for layer in range(2) for state in STATES["lstm"] for unit in range(6)]
    per_token = np.concatenate([_token_activations(model, aligned.tokens[start : start + length], units)
                                for start in range(0, n, length)], axis=1)
    per_char = per_token[:, aligned.char_token]
    scores = {(s.layer, s.state, s.unit): s.score for s in result.rankings["depth"]}
    assert len(scores) == len(units)
    for i, key in enumerate(units):
        assert scores[key] == pytest.approx(pearson(per_char[i], feature), abs=2e-5), key
    ranked = [abs(s.score) for s in result.rankings["depth"]]
    assert ranked == sorted(ranked, reverse=True)


def _token_activations(model, tokens, units):
    from charlm.neurons import AlignedText

    part = AlignedText("", np.asarray(tokens, np.int64), np.arange(len(tokens)))
    return unit_activations(model, part, units)[0]


def planted_depth_counter(tokenizer, hidden: int = 8, unit: int = 3) -> CharRNN:
    """A random LSTM whose unit 3 is wired to count brackets: its cell state is the depth exactly."""
    model = tiny_model("lstm", layers=1, hidden=hidden, vocab=tokenizer.vocab_size, seed=1)
    with torch.no_grad():
        model.embed.weight[:, 0] = 0.0
        for ch, sign in (("(", 1), ("[", 1), ("{", 1), (")", -1), ("]", -1), ("}", -1)):
            model.embed.weight[int(tokenizer.encode(ch)[0]), 0] = sign
        w_ih, w_hh, b_ih, b_hh = model.layer_weights(0)
        for gate in range(4):
            row = gate * hidden + unit
            w_ih[row].zero_()
            w_hh[row].zero_()
            b_hh[row] = 0.0
            b_ih[row] = 30.0  # input, forget and output gates wide open
        w_ih[2 * hidden + unit, 0] = 30.0  # the candidate: +1 at an opener, -1 at a closer, 0 otherwise
        b_ih[2 * hidden + unit] = 0.0
    return model


def test_search_ranks_a_planted_bracket_counter_first():
    tokenizer = train_tokenizer([CODE], "char")
    model = planted_depth_counter(tokenizer)
    aligned = align_text(tokenizer, CODE)
    result = scan(model, aligned, {"bracket-depth": features.bracket_depth(CODE)}, all_states(model))
    best = result.rankings["bracket-depth"][0]
    assert (best.layer, best.state, best.unit) == (0, "c", 3)
    assert best.score == pytest.approx(1.0, abs=1e-4)
    assert abs(result.rankings["bracket-depth"][2].score) < 0.9  # h = tanh(c) bends, the rest are random


def test_saturation_is_the_share_of_characters_beyond_the_thresholds():
    tokenizer = train_tokenizer([CODE], "char")
    model = tiny_model("lstm", vocab=tokenizer.vocab_size)
    with torch.no_grad():
        model.layer_weights(1)[2][12:24] += torch.linspace(-6, 6, 12)  # forget gates from shut to open
    aligned = align_text(tokenizer, CODE)
    result = scan(model, aligned, {}, {0: set(), 1: set()}, saturation=True)
    assert [(g.layer, g.gate) for g in result.saturation] == [
        (layer, gate) for layer in (0, 1) for gate in ("input", "forget", "output")]
    forget = next(g for g in result.saturation if (g.layer, g.gate) == (1, "forget"))
    acts, _ = unit_activations(model, aligned, [(1, "forget", u) for u in range(12)])
    np.testing.assert_allclose(forget.left, (acts < 0.1).mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(forget.right, (acts > 0.9).mean(axis=1), atol=1e-6)
    assert forget.left[0] > 0.5 and forget.right[-1] > 0.5


# -- the views --------------------------------------------------------------------------------------------
def rendered(renderable, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_character_view_keeps_newlines_visible_and_folds_long_lines_to_the_width():
    text = "short\n" + "x" * 50 + "\n\tend\x1b"
    out = rendered(CharacterView(text, [None] * len(text)), width=20)
    lines = out.rstrip("\n").split("\n")
    assert all(len(line) <= 20 for line in lines)
    assert lines[0] == "short↵"
    assert "".join(lines[1:4]) == "x" * 50 + "↵"
    assert lines[4] == "→   end␛"  # a control character shows as its picture, never raw
    assert "\x1b" not in out


def test_predictions_put_guess_rows_under_each_line(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt")
    report = inspect(ckpt, "ab\ncd", InspectOptions(predictions=True))
    assert len(report.guesses) == 5 and all(len(g) == 3 for g in report.guesses)
    probabilities = [p for guesses in report.guesses for _, p in guesses]
    assert all(0 <= p <= 1 for p in probabilities)
    out = rendered(inspect_renderables(report)[-1], width=40).rstrip("\n").split("\n")
    assert out[0] == "ab↵" and out[5] == "cd"  # 3 guess rows and a blank line after each text line
    assert all(len(row) == 3 for row in out[1:4])


# -- the command --------------------------------------------------------------------------------------
def run_cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(["inspect-neurons", *map(str, args)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_find_json_is_a_ranking_sorted_by_absolute_score(tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt")
    rc, out, _ = run_cli(capsys, ckpt, "--find", "bracket-depth", "--top", "7", "--json")
    assert rc == 0
    ranking = json.loads(out)
    assert len(ranking) == 7
    assert all(set(entry) == {"layer", "state", "unit", "score"} for entry in ranking)
    scores = [abs(entry["score"]) for entry in ranking]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0


def test_default_checkpoint_is_the_latest_run_and_default_text_the_builtin_sample(tmp_path, capsys, monkeypatch):
    import charlm.cli

    (tmp_path / "runs" / "old").mkdir(parents=True)
    (tmp_path / "runs" / "new").mkdir()
    save_tiny_checkpoint(tmp_path / "runs" / "old" / "best.pt", cell="gru")
    save_tiny_checkpoint(tmp_path / "runs" / "new" / "best.pt", cell="lstm", layers=1)
    import os

    os.utime(tmp_path / "runs" / "old" / "best.pt", (1, 1))
    monkeypatch.setattr(charlm.cli, "RUNS_DIR", tmp_path / "runs")
    rc, out, _ = run_cli(capsys, "--unit", "3", "--state", "forget")
    assert rc == 0
    header = " ".join(out.split("\n")[:3])  # the header may wrap at a long temporary path
    assert "new/best.pt" in header and "LSTM 1x12" in header
    assert f"{len(CODE):,} characters inspected" in header
    assert "layer 0 · forget · unit 3" in out


def test_overview_lists_the_best_unit_for_each_builtin_feature(tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt")
    rc, out, _ = run_cli(capsys, ckpt, "--json")
    assert rc == 0
    korean = ("jamo-position", "syllable-boundary", "eojeol-position")  # constant: the built-in text has no Hangul
    assert [entry["feature"] for entry in json.loads(out)] == [name for name in features.FEATURES if name not in korean]


@pytest.mark.parametrize(("args", "message"), [
    (["--unit", "12"], "--unit 12: the model has 12 units per layer (0-11)"),
    (["--layer", "2", "--unit", "0"], "--layer 2: the model has 2 layers (0-1)"),
    (["--state", "forget", "--unit", "0", "--cell", "gru"], "--state forget: a GRU unit has h, reset, update, candidate"),
    (["--state", "c", "--find", "indent", "--cell", "rnn"], "--state c: an RNN unit has h"),
    (["--saturation", "--cell", "rnn"], "--saturation: a vanilla RNN has no gates"),
    (["--find-regex", "(oops"], "--find-regex '(oops': not a valid regular expression"),
    (["--find-regex", "zzz"], "--find-regex 'zzz': the feature does not vary over this text"),
    (["--find", "in-comment", "--text", "no comments here"], "--find in-comment: the feature does not vary"),
    (["--find", "indent", "--find-regex", "x"], "--find and --find-regex: give one feature at a time"),
    (["--find", "indent", "--saturation", "--json"], "--json: prints one result"),
])
def test_bad_options_are_usage_errors_naming_the_option(tmp_path, capsys, args, message):
    cell = args[args.index("--cell") + 1] if "--cell" in args else "lstm"
    args = [a for i, a in enumerate(args) if a != "--cell" and (i == 0 or args[i - 1] != "--cell")]
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt", cell=cell)
    rc, out, err = run_cli(capsys, ckpt, *args)
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


def test_text_and_file_together_are_refused(tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt")
    (tmp_path / "t.txt").write_text("(a)", encoding="utf-8")
    rc, _, err = run_cli(capsys, ckpt, tmp_path / "t.txt", "--text", "(b)")
    assert rc == 2 and "--text" in err


def test_a_file_is_inspected_and_the_views_export_as_html_and_svg(tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt")
    text_file = tmp_path / "code.txt"
    text_file.write_text('f(x, "<b>&</b>")\n' * 20, encoding="utf-8")
    rc, out, _ = run_cli(capsys, ckpt, text_file, "--find", "in-string", "--show", "1",
                         "--html-static", tmp_path / "v.html", "--svg", tmp_path / "v.svg")
    assert rc == 0
    # Each part of the report starts its own line, on the terminal and in the page.
    assert any(line.startswith("units that track in-string") for line in out.splitlines())
    page = (tmp_path / "v.html").read_text(encoding="utf-8")
    assert "inspected units" not in page.replace("\n", " ").replace("</span>", "")
    assert page.startswith("<!DOCTYPE html>")
    assert "&lt;" in page and "&amp;" in page and "<b>" not in page  # the text is escaped
    assert "background-color: #" in page  # coloured per character
    svg = (tmp_path / "v.svg").read_text(encoding="utf-8")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    # Self-contained: no web font to download (url(#...) clip paths point inside the file).
    assert "url(\"http" not in svg and "@font-face" not in svg


# -- end to end: a trained model grows units the search finds ------------------------------------------
NESTED = Path(__file__).resolve().parents[1] / "corpora" / "nested.txt"
# Measured with this recipe over training seeds 1-5: the best trained unit scored 0.83-0.94 on
# bracket-depth and 0.80-0.96 on in-string; an untrained LSTM of the same shape 0.50-0.73 (bracket
# depth follows how many brackets were seen lately, which random units smooth) and 0.36-0.51. The
# smallest gap between a trained model and the untrained one of the same seed was 0.17. Training on
# two threads instead of one (another rounding path) changed seed 1's scores by under 0.001.
THRESHOLD = {"bracket-depth": 0.75, "in-string": 0.75}
MARGIN_OVER_UNTRAINED = 0.15


@pytest.mark.slow
def test_search_finds_bracket_and_string_units_in_a_briefly_trained_lstm(tmp_path):
    from charlm.checkpoint import load_checkpoint, model_from_checkpoint
    from charlm.corpus import open_corpus
    from charlm.train import train

    train(open_corpus([NESTED]), {"cell": "lstm", "layers": 1, "hidden": 128, "embedding": 16},
          {"max_steps": 1500, "lr": 0.01, "seq_len": 128, "batch_size": 16, "sample_length": 0, "seed": 1},
          out=tmp_path / "run")
    trained, tokenizer = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "last.pt"))
    torch.manual_seed(1)
    untrained = CharRNN(trained.config).eval()
    held_out = NESTED.read_text(encoding="utf-8")[-20000:]  # inside the validation split, never trained on
    held_out = held_out[held_out.index("\n") + 1 :]  # from a line start: depth 0, no string open
    aligned = align_text(tokenizer, held_out)
    wanted = {"bracket-depth": features.bracket_depth(held_out), "in-string": features.in_string(held_out)}

    def best_scores(model):
        rankings = scan(model, aligned, wanted, all_states(model)).rankings
        return {name: abs(ranking[0].score) for name, ranking in rankings.items()}

    best, chance = best_scores(trained), best_scores(untrained)
    for name in wanted:
        assert best[name] >= THRESHOLD[name], (name, best, chance)
        assert best[name] >= chance[name] + MARGIN_OVER_UNTRAINED, (name, best, chance)
