"""Teacher forcing and scheduled sampling: whose character each training step reads, and what it costs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from charlm import scheduled
from charlm.checkpoint import load_checkpoint
from charlm.cli import main
from charlm.compare import compare_teacher_forcing
from charlm.config import TrainConfig
from charlm.corpus import open_corpus
from charlm.freerun import bigram_distribution, free_running_divergence, js_divergence
from charlm.model import CharRNN, ModelConfig
from charlm.scheduled import parse_teacher_forcing, sampled_top_outputs, teacher_forcing_at
from charlm.train import train

from .conftest import TINY_MODEL, TINY_TRAIN

SMALL = ["--hidden", "16", "--embedding", "8", "--batch-size", "4", "--seq-len", "16", "--sample-length", "0"]


def tiny(cell: str = "lstm", layers: int = 2, vocab: int = 30) -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=vocab, cell=cell, layers=layers, hidden=12, embedding=6))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_the_step_by_step_path_with_every_input_true_equals_the_fused_loss_and_gradients(cell):
    model = tiny(cell)
    x, y = torch.randint(0, 30, (3, 9)), torch.randint(0, 30, (3, 9))
    hidden = model.init_hidden(3)
    _, fused, fused_hidden = model(x, hidden, y)
    fused.backward()
    fused_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out, stepped_hidden = sampled_top_outputs(model, x, hidden, 1.0)
    stepped = model.token_nll(out, y).mean()
    stepped.backward()
    torch.testing.assert_close(stepped, fused)
    for a, b in zip(fused_grads, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for a, b in zip(fused_hidden if cell == "lstm" else [fused_hidden],
                    stepped_hidden if cell == "lstm" else [stepped_hidden]):
        torch.testing.assert_close(a, b)


def inputs_read(model: CharRNN, x: torch.Tensor, p: float) -> torch.Tensor:
    """The ids the model's embedding was given, step by step, while the sampled path ran: (B, T)."""
    seen = []
    handle = model.embed.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    try:
        sampled_top_outputs(model, x, None, p)
    finally:
        handle.remove()
    return torch.stack(seen, dim=1)


def certain_of(model: CharRNN, token: int) -> CharRNN:
    """The model made sure the next token is always `token` (not a byte token), whatever it reads."""
    start = model.config.bytes_from
    row = token - 256 if model.factored and token >= start + 256 else token  # a factored head skips the bytes
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(-50.0)
        model.head.bias[row] = 50.0
    return model


def test_with_no_teacher_forcing_every_input_after_the_first_is_the_models_own_draw():
    model = certain_of(tiny(), token=7)
    x = torch.randint(10, 30, (4, 12))  # the truth never holds a 7
    read = inputs_read(model, x, 0.0)
    assert torch.equal(read[:, 0], x[:, 0])  # a chunk starts from the true character
    assert (read[:, 1:] == 7).all()  # then only what the model drew
    assert torch.equal(inputs_read(model, x, 1.0), x)  # full teacher forcing reads the truth


def test_half_teacher_forcing_reads_the_truth_about_half_the_time():
    model = certain_of(tiny(), token=7)
    torch.manual_seed(3)
    x = torch.randint(10, 30, (32, 40))
    read = inputs_read(model, x, 0.5)[:, 1:]
    true_share = (read == x[:, 1:]).float().mean().item()
    assert ((read == 7) | (read == x[:, 1:])).all()
    assert 0.4 < true_share < 0.6


def test_the_draw_follows_the_models_distribution():
    model = tiny(layers=1, vocab=4)
    with torch.no_grad():  # whatever it reads, the next token is 0 with p 0.2, 1 with p 0.8
        model.head.weight.zero_()
        model.head.bias.copy_(torch.log(torch.tensor([0.2, 0.8, 1e-12, 1e-12])))
    torch.manual_seed(0)
    read = inputs_read(model, torch.full((200, 11), 3), 0.0)[:, 1:]
    assert set(read.unique().tolist()) <= {0, 1}
    assert (read == 1).float().mean().item() == pytest.approx(0.8, abs=0.03)


def test_default_training_takes_the_fused_path_and_below_one_the_step_by_step_path(tmp_path, corpus_file,
                                                                                      monkeypatch):
    calls = []
    real = scheduled.sampled_top_outputs
    monkeypatch.setattr(scheduled, "sampled_top_outputs", lambda *a: calls.append(a[3]) or real(*a))
    options = {**TINY_TRAIN, "max_steps": 3}
    train(open_corpus([corpus_file]), TINY_MODEL, options, out=tmp_path / "fused")
    assert calls == []
    train(open_corpus([corpus_file]), TINY_MODEL, {**options, "teacher_forcing": 0.25}, out=tmp_path / "sampled")
    assert calls == [0.25] * 3


def test_a_schedule_moves_the_probability_linearly_over_the_run(tmp_path, corpus_file):
    config = TrainConfig(teacher_forcing=1.0, teacher_forcing_end=0.0)
    assert [teacher_forcing_at(config, p) for p in (0.0, 0.25, 1.0, 2.0)] == [1.0, 0.75, 0.0, 0.0]
    assert teacher_forcing_at(TrainConfig(teacher_forcing=0.3), 0.9) == 0.3
    train(open_corpus([corpus_file]), TINY_MODEL,
          {**TINY_TRAIN, "max_steps": 40, "teacher_forcing": 1.0, "teacher_forcing_end": 0.0}, out=tmp_path / "run")
    logged = [e for e in map(json.loads, (tmp_path / "run" / "log.jsonl").open()) if "loss" in e]
    # Each entry holds the probability of its window's last step, taken when step - 1 steps were done.
    assert [e["teacher_forcing"] for e in logged] == [round(1 - (e["step"] - 1) / 40, 4) for e in logged]
    assert logged[-1]["step"] == 40


@pytest.mark.parametrize(("text", "parsed"), [("1", (1.0, None)), ("0.5", (0.5, None)), ("1:0", (1.0, 0.0)),
                                                ("0:0.25", (0.0, 0.25))])
def test_teacher_forcing_is_a_probability_or_a_schedule(text, parsed):
    assert parse_teacher_forcing(text) == parsed


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "often", "1:2", "1:0:0"])
def test_a_teacher_forcing_outside_zero_to_one_is_a_usage_error(value, corpus_file, tmp_path, capsys):
    assert main(["train", str(corpus_file), *SMALL, "--max-steps", "1", "--teacher-forcing", value,
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("charlm: --teacher-forcing") and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_scheduled_sampling_run_resumes_exactly(tmp_path, corpus_file):
    common = [str(corpus_file), *SMALL, "--teacher-forcing", "0.5", "--schedule", "constant"]
    assert main(["train", *common, "--max-steps", "12", "--out", str(tmp_path / "straight")]) == 0
    assert main(["train", *common, "--max-steps", "6", "--out", str(tmp_path / "half")]) == 0
    assert main(["train", "--resume", str(tmp_path / "half" / "last.pt"), "--max-steps", "12"]) == 0
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "half" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    shutil.rmtree(tmp_path / "half")


# -- comparing settings ---------------------------------------------------------------------------------
def test_compare_trains_one_cell_per_setting_on_the_same_terms(tmp_path, corpus_file):
    comparison = compare_teacher_forcing(open_corpus([corpus_file]), [(1.0, None), (0.0, None), (1.0, 0.0)],
                                         "gru", {"hidden": 16, "embedding": 8},
                                         {"batch_size": 4, "seq_len": 16, "max_steps": 10, "sample_length": 0},
                                         out=tmp_path / "cmp")
    assert [r.label for r in comparison.results] == ["1", "0", "1:0"]
    configs = []
    for r in comparison.results:
        payload = load_checkpoint(r.run_dir / "last.pt")
        assert payload["model_config"]["cell"] == "gru" and r.steps == 10
        config = payload["train_config"]
        configs.append({k: v for k, v in config.items() if not k.startswith("teacher_forcing")})
        assert scheduled.describe(config["teacher_forcing"], config["teacher_forcing_end"]) == r.label
        assert 0 < r.free_js < 1
    assert configs[0] == configs[1] == configs[2]
    assert 0 <= comparison.free_floor < min(r.free_js for r in comparison.results)


def test_compare_command_prints_one_row_per_setting_and_json(in_tmp, corpus_file, capsys):
    args = ["compare", str(corpus_file), "--teacher-forcing", "1,0", *SMALL, "--max-steps", "8"]
    assert main(args + ["--out", "a"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["1", "0"]
    assert "teacher forcing compared (lstm" in out and "training loss" in out
    assert main(args + ["--out", "b", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["compared"] == "teacher forcing"
    assert [c["teacher_forcing"] for c in result["cells"]] == ["1", "0"]
    assert all(0 < c["free_running_js_bits"] < 1 for c in result["cells"])
    assert main(["compare", str(corpus_file), "--teacher-forcing", "1,0", "--cells", "gru,lstm"]) == 2
    assert "--cells" in capsys.readouterr().err


def test_bigram_divergence_is_zero_for_the_same_text_and_one_for_disjoint_texts():
    import numpy as np

    a = bigram_distribution([np.array([1, 2, 3, 1, 2, 3])], 10)
    assert js_divergence(a, a) == 0.0
    assert js_divergence(a, bigram_distribution([np.array([4, 5, 4, 5])], 10)) == pytest.approx(1.0)
    # No bigram across the pieces' boundary.
    assert bigram_distribution([np.array([1, 2]), np.array([3, 4])], 10) == {12: 0.5, 34: 0.5}


def test_a_model_that_writes_one_character_forever_is_far_from_real_text(trained_run):
    from charlm.checkpoint import model_from_checkpoint
    from charlm.corpus import open_corpus as corpus_of

    model, tokenizer = model_from_checkpoint(load_checkpoint(trained_run / "best.pt"))
    text = corpus_of([trained_run.parent / "corpus.txt"]).read()
    reference = bigram_distribution([tokenizer.encode(text[-5000:])], tokenizer.vocab_size)
    trained = free_running_divergence(model, tokenizer, reference)
    certain_of(model, int(tokenizer.encode("a")[0]))
    assert trained < 0.5 < free_running_divergence(model, tokenizer, reference)
