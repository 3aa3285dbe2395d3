"""Reading backwards, the biLM that reads both ways, its units, and the bidirectional model that cheats."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from charlm import features
from charlm.backward import ReverseDecoder, generate_backward
from charlm.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from charlm.cli import main
from charlm.config import ModelConfig, TrainConfig
from charlm.corpus import open_corpus
from charlm.directions import BiLM, check_supported, join_states, readers
from charlm.errors import UsageError
from charlm.model import CharRNN
from charlm.neurons import align_text, reader_activations, scan_readers, state_names
from charlm.tokenizer import train_tokenizer

from .conftest import make_text

SMALL = ["--hidden", "24", "--embedding", "8", "--batch-size", "4", "--seq-len", "32", "--sample-length", "0"]
CODE = features.BUILTIN_TEXT


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A corpus, and a forward, a backward and a both run on it, briefly trained."""
    folder = tmp_path_factory.mktemp("directions")
    corpus = folder / "corpus.txt"
    corpus.write_text(make_text(12_000), encoding="utf-8")
    found = {"corpus": corpus}
    for direction in ("forward", "backward", "both"):
        assert main(["train", str(corpus), *SMALL, "--max-steps", "60", "--direction", direction,
                     "--out", str(folder / direction)]) == 0
        found[direction] = folder / direction
    return found


def run(argv: list, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    # A run folder given for a checkpoint first gets a line saying which file it holds.
    err = "".join(line for line in err.splitlines(True) if not line.startswith("using "))
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("charlm: "), err
    return err


# -- a backward model is a forward model of the reversed text -----------------------------------------
def test_backward_training_equals_forward_training_on_the_reversed_text(tmp_path):
    text = "\n" + make_text(6_000, seed=4)  # a newline at both ends: a file read gets one at its end
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    (tmp_path / "reversed.txt").write_text(text[::-1], encoding="utf-8")
    common = [*SMALL, "--max-steps", "15", "--val-fraction", "0"]
    assert main(["train", str(tmp_path / "text.txt"), *common, "--direction", "backward",
                 "--out", str(tmp_path / "backward")]) == 0
    assert main(["train", str(tmp_path / "reversed.txt"), *common, "--out", str(tmp_path / "forward")]) == 0
    backward, forward = load_checkpoint(tmp_path / "backward"), load_checkpoint(tmp_path / "forward")
    assert backward["tokenizer"] == forward["tokenizer"]
    assert all(torch.equal(backward["model"][k], forward["model"][k]) for k in forward["model"])
    # eval reads the text backwards for the one what it reads forwards for the other: the same figures.
    held_out = "\n" + make_text(3_000, seed=5)
    (tmp_path / "held.txt").write_text(held_out, encoding="utf-8")
    (tmp_path / "held-reversed.txt").write_text(held_out[::-1], encoding="utf-8")
    scores = [evaluate_json(tmp_path / "backward", tmp_path / "held.txt"),
              evaluate_json(tmp_path / "forward", tmp_path / "held-reversed.txt")]
    assert scores[0]["direction"] == "backward"
    assert scores[0]["nats_per_char"] == pytest.approx(scores[1]["nats_per_char"], rel=1e-6)
    assert scores[0]["chars"] == scores[1]["chars"]


def evaluate_json(checkpoint: Path, text: Path) -> dict:
    from charlm.evaluate import evaluate_text

    return evaluate_text(checkpoint, open_corpus([text])).as_dict()


def test_a_checkpoint_from_before_directions_loads_and_behaves_as_a_forward_model(runs, tmp_path, capsys):
    payload = load_checkpoint(runs["forward"] / "best.pt")
    del payload["model_config"]["direction"]
    for key in ("teacher_forcing", "teacher_forcing_end"):
        del payload["train_config"][key]
    save_checkpoint(tmp_path / "old.pt", {k: v for k, v in payload.items() if k not in ("format", "version", "path")})
    model, _ = model_from_checkpoint(load_checkpoint(tmp_path / "old.pt"))
    assert isinstance(model, CharRNN) and model.config.direction == "forward"
    code, out, _ = run(["eval", tmp_path / "old.pt", runs["corpus"], "--json"], capsys)
    assert code == 0 and "direction" not in json.loads(out)  # what an old checkpoint always printed
    assert json.loads(out) == evaluate_json(runs["forward"] / "best.pt", runs["corpus"])
    assert run(["sample", tmp_path / "old.pt", "--length", "20", "--seed", "1"], capsys)[0] == 0
    assert run(["train", "--resume", tmp_path / "old.pt", "--max-steps", "62"], capsys)[0] == 0


# -- the biLM --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_bilm_runs_its_two_models_side_by_side_and_concatenates_their_states(cell):
    torch.manual_seed(0)
    model = BiLM(ModelConfig(vocab_size=20, cell=cell, layers=2, hidden=5, embedding=4, direction="both"))
    hidden = model.init_hidden(3)
    width = [h.shape for h in hidden] if cell == "lstm" else [hidden.shape]
    assert width == [(2, 3, 10)] * len(width)  # the state is twice as wide
    x, y = torch.randint(0, 20, (6, 7)), torch.randint(0, 20, (6, 7))
    _, loss, new = model(x, hidden, y)
    _, loss_f, new_f = model.forward_lm(x[:3], model.forward_lm.init_hidden(3), y[:3])
    _, loss_b, new_b = model.backward_lm(x[3:], model.backward_lm.init_hidden(3), y[3:])
    torch.testing.assert_close(loss, (loss_f + loss_b) / 2)
    parts = lambda state: state if cell == "lstm" else [state]  # noqa: E731
    for state, forward, backward in zip(parts(new), parts(new_f), parts(new_b)):
        assert torch.equal(state, torch.cat([forward, backward], dim=-1))  # the forward model's first
    for state, joined in zip(parts(new), parts(join_states(new_f, new_b))):
        assert torch.equal(state, joined)


def test_a_both_run_is_one_checkpoint_and_eval_gives_each_directions_figure(runs, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # wide enough for the table form, whatever the temporary path
    payload = load_checkpoint(runs["both"] / "best.pt")
    assert payload["model_config"]["direction"] == "both"
    assert payload["hidden"][0].shape == (1, 4, 48)  # 4 streams, each with both models' states
    entry = [e for e in payload["state"]["history"] if "val_by_direction" in e][-1]
    assert set(entry["val_by_direction"]) == {"forward", "backward"}
    assert entry["val_nats_per_char"] == pytest.approx(sum(entry["val_by_direction"].values()) / 2)

    code, out, _ = run(["eval", runs["both"], runs["corpus"]], capsys)
    assert code == 0
    reads = [line.split("│")[2].strip() for line in out.splitlines() if line.startswith("│")]
    assert [r for r in reads if r] == ["forward", "backward"]  # (a long path folds onto more lines)
    assert "two language models" in out
    code, out, _ = run(["eval", runs["both"], runs["corpus"], "--json"], capsys)
    result = json.loads(out)
    assert result["direction"] == "both" and "two language models" in result["note"]
    # Each figure is its own model's, reading the text its own way.
    model, tokenizer = model_from_checkpoint(payload)
    text = runs["corpus"].read_text(encoding="utf-8")
    tokens = tokenizer.encode(text)
    from charlm.evaluate import token_losses

    for name, lm, ids in (("forward", model.forward_lm, tokens), ("backward", model.backward_lm, tokens[::-1])):
        nats = float(token_losses(lm, ids).double().sum()) / (len(text) - 1)
        assert result["directions"][name]["nats_per_char"] == pytest.approx(nats, rel=1e-6)
    assert result["nats_per_char"] == result["directions"]["forward"]["nats_per_char"]
    assert result["directions"]["forward"] != result["directions"]["backward"]


def test_both_is_refused_where_it_is_not_supported_yet():
    config = TrainConfig()
    with pytest.raises(UsageError, match="torchrun"):
        check_supported("both", config, distributed=True, device=torch.device("cpu"))
    with pytest.raises(UsageError, match="--device cpu"):
        check_supported("both", config, distributed=False, device=torch.device("cuda"))
    check_supported("backward", config, distributed=True, device=torch.device("cuda"))


# -- writing backwards -------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["backward", "both"])
def test_a_backward_sample_ends_with_the_prime(runs, capsys, direction):
    code, out, _ = run(["sample", runs[direction], "--backward", "--prime", "the end.", "--length", "120",
                        "--seed", "3"], capsys)
    assert code == 0
    assert out.endswith("the end.\n")
    assert len(out) == 120 + len("the end.") + 1


def test_backward_samples_are_seeded_and_a_stop_ends_them_leftmost(runs):
    model, tokenizer = model_from_checkpoint(load_checkpoint(runs["backward"]))
    sample = lambda seed, **o: generate_backward(model, tokenizer, "(cat)", 80, num_samples=3,  # noqa: E731
                                                 generator=torch.Generator().manual_seed(seed), **o)
    assert sample(1) == sample(1) != sample(2)
    for text in sample(1, stop="\n"):
        assert text.startswith("\n") and "\n" not in text[1:] and len(text) <= 80


def test_a_character_written_as_bytes_comes_out_whole_once_its_first_byte_arrives():
    tokenizer = train_tokenizer(["hello world"], "char")
    ids = tokenizer.encode("hé!")  # é is unseen: two byte tokens
    assert len(ids) == 4
    decoder = ReverseDecoder(tokenizer)
    pieces = [decoder(int(i)) for i in ids[::-1]]
    assert pieces == ["!", "", "é", "h"]


def test_backward_errors_are_one_line(runs, capsys):
    code, _, err = run(["sample", runs["forward"], "--backward", "--prime", "x"], capsys)
    assert code == 2 and "--backward" in one_error_line(err) and "forward" in err
    code, _, err = run(["sample", runs["backward"], "--prime", "x"], capsys)
    assert code == 2 and "add --backward" in one_error_line(err)


# -- backward units ------------------------------------------------------------------------------------
def test_a_backward_unit_at_a_character_has_read_the_text_from_its_end_down_to_it():
    tokenizer = train_tokenizer([CODE], "char")
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(tokenizer.vocab_size, cell="lstm", hidden=6, embedding=4, direction="backward"))
    text = "def f(x):\n    return [x, 'é']\n"  # é is unseen: two byte tokens
    values, _ = reader_activations(model.eval(), align_text(tokenizer, text), [(0, "h<", 2), (0, "c<", 4)])
    for i in range(len(text)):
        ids = torch.as_tensor(tokenizer.encode(text[i:])[::-1].copy(), dtype=torch.long)[None]
        with torch.no_grad():
            _, _, (h, c) = model(ids)
        assert values[0, i] == pytest.approx(float(h[0, 0, 2]), abs=1e-6)
        assert values[1, i] == pytest.approx(float(c[0, 0, 4]), abs=1e-6)


def planted_backward_counter(tokenizer, hidden: int = 8, unit: int = 3) -> BiLM:
    """A random biLM whose backward model's unit 3 counts closers minus openers as it reads right to left."""
    torch.manual_seed(1)
    model = BiLM(ModelConfig(tokenizer.vocab_size, hidden=hidden, embedding=6, direction="both")).eval()
    lm = model.backward_lm
    with torch.no_grad():
        lm.embed.weight[:, 0] = 0.0
        for ch, sign in (("(", -1), ("[", -1), ("{", -1), (")", 1), ("]", 1), ("}", 1)):
            lm.embed.weight[int(tokenizer.encode(ch)[0]), 0] = sign
        w_ih, w_hh, b_ih, b_hh = lm.layer_weights(0)
        for gate in range(4):
            row = gate * hidden + unit
            w_ih[row].zero_()
            w_hh[row].zero_()
            b_hh[row] = 0.0
            b_ih[row] = 30.0  # gates wide open
        w_ih[2 * hidden + unit, 0] = 30.0
        b_ih[2 * hidden + unit] = 0.0
    return model


def test_the_search_finds_a_backward_unit_that_knows_how_many_brackets_are_still_to_close():
    tokenizer = train_tokenizer([CODE], "char")
    model = planted_backward_counter(tokenizer)
    aligned = align_text(tokenizer, CODE)
    wanted = {0: set(state_names(model.config))}
    assert {"h", "c", "h<", "c<", "forget<"} <= wanted[0]
    result = scan_readers(model, aligned, {"bracket-depth": features.bracket_depth(CODE)}, wanted)
    ranking = result.rankings["bracket-depth"]
    assert (ranking[0].layer, ranking[0].state, ranking[0].unit) == (0, "c<", 3)
    assert ranking[0].score > 0.95  # at a bracket itself, the backward count has already seen it
    assert len(ranking) == 2 * 6 * 8  # every unit of both models


def test_inspect_neurons_command_shows_backward_units_with_their_own_state_names(runs, capsys):
    code, out, _ = run(["inspect-neurons", runs["both"], runs["corpus"], "--find", "bracket-depth",
                        "--top", "0", "--json"], capsys)
    states = {entry["state"] for entry in json.loads(out)}
    assert code == 0 and {"h", "c", "h<", "c<", "output<"} <= states
    code, out, _ = run(["inspect-neurons", runs["backward"], "--unit", "1", "--show-chars", "40"], capsys)
    assert code == 0 and "h< · unit 1" in out and "from its end down to that character" in out
    code, _, err = run(["inspect-neurons", runs["forward"], "--find", "indent", "--state", "h<"], capsys)
    assert code == 2 and "--state h<" in one_error_line(err)


def test_gradient_flow_of_a_backward_model_reads_the_text_reversed(runs, capsys):
    code, out, _ = run(["gradient-flow", runs["backward"], runs["both"], "--max-k", "5", "--positions", "4",
                        "--json"], capsys)
    assert code == 0 and [flow["direction"] for flow in json.loads(out)] == ["backward", "forward"]


# -- the cheat -------------------------------------------------------------------------------------------
def test_a_single_bidirectional_model_is_refused_with_the_reason(runs, tmp_path, capsys):
    code, _, err = run(["train", runs["corpus"], "--direction", "bidirectional", "--out", tmp_path / "x"], capsys)
    line = one_error_line(err)
    assert code == 2 and "cheat" in line and "--direction both" in line and "--cheat-demo" in line
    assert not (tmp_path / "x").exists()


def test_the_cheat_demo_shows_a_near_zero_loss_and_a_model_that_cannot_write(runs, tmp_path, capsys):
    common = [str(runs["corpus"]), *SMALL, "--max-steps", "300"]
    assert main(["train", *common, "--cheat-demo", "--out", str(tmp_path / "cheat")]) == 0
    assert main(["train", *common, "--out", str(tmp_path / "honest")]) == 0
    payload = load_checkpoint(tmp_path / "cheat")
    assert payload["model_config"]["direction"] == "bidirectional"
    honest = evaluate_json(tmp_path / "honest", runs["corpus"])["nats_per_char"]
    cheat = evaluate_json(tmp_path / "cheat", runs["corpus"])
    reading, writing = (cheat["directions"][k]["nats_per_char"] for k in ("bidirectional", "writing"))
    assert payload["val_nats_per_char"] < 0.25 and reading < 0.25 < honest  # it has read the answers
    # Predicting each character from the text before it only, as it must when it writes, it does
    # worse than the honest model it seemed to beat, and many times worse than its own figure.
    assert writing > honest + 0.1 and writing > 4 * reading
    code, out, _ = run(["eval", tmp_path / "cheat", runs["corpus"]], capsys)
    assert code == 0 and "both ways" in out and "no probability of the text" in out and "as it writes" in out
    code, out, _ = run(["sample", tmp_path / "cheat", "--length", "50", "--seed", "1"], capsys)
    assert code == 0 and len(out) == 51
    code, _, err = run(["inspect-neurons", tmp_path / "cheat"], capsys)
    assert code == 2 and "--cheat-demo" in one_error_line(err)


def test_readers_list_each_language_model_forward_first(runs):
    model, _ = model_from_checkpoint(load_checkpoint(runs["both"]))
    assert [(r.direction, r.suffix) for r in readers(model)] == [("forward", ""), ("backward", "<")]
    assert isinstance(model, BiLM) and asdict(model.config)["direction"] == "both"
    backward = readers(model)[1]
    tokens = np.arange(5)
    assert backward.order(tokens).tolist() == [4, 3, 2, 1, 0]


@pytest.mark.parametrize("direction", ["forward", "backward", "both", "bidirectional"])
def test_training_can_show_a_sample_from_a_model_of_every_direction(direction):
    from charlm.directions import build_model, progress_sample

    tokenizer = train_tokenizer(["the cat sat on the mat\n"], "char")
    torch.manual_seed(0)
    model = build_model(ModelConfig(tokenizer.vocab_size, hidden=8, embedding=4, direction=direction))
    first = progress_sample(model, tokenizer, 30, torch.Generator().manual_seed(0), "cpu")
    again = progress_sample(model, tokenizer, 30, torch.Generator().manual_seed(0), "cpu")
    assert first == again and 0 < len(first) <= 30


# -- bytes written right to left stay valid UTF-8 --------------------------------------------------
def test_every_character_written_last_byte_first_is_accepted_and_nothing_else_is():
    from charlm.sample import BOUNDARY, utf8_after_reversed, utf8_allowed_reversed

    def accepts(data: bytes) -> bool:
        state = BOUNDARY
        for byte in reversed(data):
            if not utf8_allowed_reversed(state)[byte]:
                return False
            state = utf8_after_reversed(state, byte)
        return state == BOUNDARY

    for point in [*range(0, 0x800, 7), *range(0x800, 0x110000, 997), 0xD7FF, 0xE000, 0xFFFF, 0x10000, 0x10FFFF]:
        if not 0xD800 <= point <= 0xDFFF:
            assert accepts(chr(point).encode("utf-8")), hex(point)
    for broken in (b"\xc0\x80", b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xe1\x80"):
        assert not accepts(broken), broken


def test_random_right_to_left_byte_walks_read_as_valid_text():
    import random

    from charlm.sample import BOUNDARY, utf8_after_reversed, utf8_allowed_reversed

    rng = random.Random(0)
    for _ in range(300):
        state, written = BOUNDARY, []
        for _ in range(rng.randint(1, 12)):
            byte = rng.choice([b for b, ok in enumerate(utf8_allowed_reversed(state)) if ok])
            written.append(byte)
            state = utf8_after_reversed(state, byte)
        while state != BOUNDARY:  # a stream inside a character must finish it
            byte = rng.choice([b for b, ok in enumerate(utf8_allowed_reversed(state)) if ok])
            written.append(byte)
            state = utf8_after_reversed(state, byte)
        bytes(reversed(written)).decode("utf-8")  # strict: raises on anything invalid
