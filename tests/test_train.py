"""Training: it learns, it is reproducible, it keeps the best model, and it stops when told."""

from __future__ import annotations

import json
import math

import pytest
import torch

from charlm.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.corpus import open_corpus
from charlm.progress import Reporter
from charlm.train import TrainConfig, lr_at, train

from .conftest import TINY_MODEL, TINY_TRAIN


def _train(corpus_file, out, **options):
    return train(open_corpus([corpus_file]), TINY_MODEL, {**TINY_TRAIN, **options}, out=out)


def test_training_lowers_validation_loss(trained_run):
    log = [json.loads(line) for line in (trained_run / "log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    vals = [e["val_nats_per_char"] for e in log if "val_nats_per_char" in e]
    assert losses[-1] < 0.7 * losses[0]
    assert vals[-1] < 2.2  # a model that learned nothing scores ln(vocab) ≈ 5.7 nats


def test_checkpoint_alone_rebuilds_the_model(trained_run):
    payload = load_checkpoint(trained_run / "last.pt")
    model, tokenizer = model_from_checkpoint(payload)
    ids = torch.as_tensor(tokenizer.encode("(the cat sat)\n"), dtype=torch.long)[None]
    again, _ = model_from_checkpoint(load_checkpoint(trained_run / "last.pt"))
    torch.testing.assert_close(model(ids)[0], again(ids)[0], atol=0, rtol=0)
    assert payload["model_config"]["hidden"] == 48
    assert payload["state"]["step"] == 150


def test_best_checkpoint_holds_the_lowest_validation_loss(trained_run):
    best = load_checkpoint(trained_run / "best.pt")
    last = load_checkpoint(trained_run / "last.pt")
    history = [e["val_nats_per_char"] for e in last["state"]["history"] if "val_nats_per_char" in e]
    assert best["val_nats_per_char"] == pytest.approx(min(history))
    assert best["val_nats_per_char"] <= last["val_nats_per_char"]


def test_same_seed_gives_identical_weights(tmp_path, corpus_file):
    a = _train(corpus_file, tmp_path / "a", max_steps=6)
    b = _train(corpus_file, tmp_path / "b", max_steps=6)
    wa = load_checkpoint(a.out_dir / "last.pt")["model"]
    wb = load_checkpoint(b.out_dir / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = _train(corpus_file, tmp_path / "c", max_steps=6, seed=1)
    wc = load_checkpoint(c.out_dir / "last.pt")["model"]
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_the_carried_hidden_state_is_saved_for_resuming(tmp_path, corpus_file):
    result = _train(corpus_file, tmp_path / "run", max_steps=3)
    payload = load_checkpoint(result.out_dir / "last.pt")
    h, c = payload["hidden"]
    assert h.shape == (1, 4, 32) and h.abs().sum() > 0 and c.abs().sum() > 0
    assert payload["state"]["batch_index"] == 3


def test_time_budget_stops_training(tmp_path, corpus_file):
    result = _train(corpus_file, tmp_path / "run", time_budget=1.0)
    assert 1.0 <= result.elapsed < 5.0
    assert result.steps > 0


def test_epochs_stop_after_one_pass(tmp_path, corpus_file):
    result = _train(corpus_file, tmp_path / "run", epochs=1.0, seq_len=64, batch_size=8)
    text_tokens = len(corpus_file.read_text()) * 0.9
    assert result.steps == int(text_tokens // 8 - 1) // 64


def test_short_corpus_shrinks_the_batch_with_a_message(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("tiny text, " * 30)
    messages = []

    class Recorder(Reporter):
        def message(self, text):
            messages.append(text)

    result = train(open_corpus([path]), TINY_MODEL, {**TINY_TRAIN, "batch_size": 64, "max_steps": 2},
                   out=tmp_path / "run", reporter=Recorder())
    assert result.steps == 2
    assert any("--batch-size" in m for m in messages)
    assert load_checkpoint(result.out_dir / "last.pt")["train_config"]["batch_size"] < 64


def test_learning_rate_warms_up_then_decays_to_the_floor():
    config = TrainConfig(lr=1.0, warmup_steps=10, min_lr_fraction=0.01)
    assert lr_at(config, 0, 0.0) == pytest.approx(0.1)
    assert lr_at(config, 9, 0.0) == pytest.approx(1.0)
    assert lr_at(config, 50, 0.5) == pytest.approx(0.505)
    assert lr_at(config, 99, 1.0) == pytest.approx(0.01)
    # A run shorter than ten warmups warms up over its first tenth instead.
    long_warmup = TrainConfig(lr=1.0, warmup_steps=200, min_lr_fraction=0.01)
    assert lr_at(long_warmup, 4, 0.05) == pytest.approx(0.5 * (1 - 0.99 * 0.05))
    assert lr_at(long_warmup, 9, 0.1) == pytest.approx(1 - 0.99 * 0.1)
    assert lr_at(long_warmup, 9, 0.001) == pytest.approx(10 / 200 * (1 - 0.99 * 0.001))
    constant = TrainConfig(lr=1.0, warmup_steps=200, schedule="constant")  # never shaped by the stop
    assert lr_at(constant, 9, 0.1) == pytest.approx(10 / 200)
    cosine = TrainConfig(lr=1.0, warmup_steps=0, schedule="cosine", min_lr_fraction=0.0)
    assert lr_at(cosine, 10, 0.5) == pytest.approx(0.5)
    constant = TrainConfig(lr=1.0, warmup_steps=0, schedule="constant")
    assert lr_at(constant, 10, 0.9) == 1.0


def test_run_folder_that_already_holds_a_run_is_not_overwritten(tmp_path, corpus_file):
    from charlm.errors import UsageError

    _train(corpus_file, tmp_path / "run", max_steps=1)
    with pytest.raises(UsageError, match="already holds a run"):
        _train(corpus_file, tmp_path / "run", max_steps=1)


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_other_cells_train(tmp_path, corpus_file, cell):
    result = train(open_corpus([corpus_file]), {**TINY_MODEL, "cell": cell, "layers": 2, "dropout": 0.1},
                   {**TINY_TRAIN, "max_steps": 3}, out=tmp_path / cell)
    payload = load_checkpoint(result.out_dir / "last.pt")
    assert payload["model_config"]["cell"] == cell
    assert math.isfinite(payload["val_nats_per_char"])


def test_subword_tokenizer_trains_through_the_same_pipeline(tmp_path, corpus_file):
    result = train(open_corpus([corpus_file]), TINY_MODEL,
                   {**TINY_TRAIN, "max_steps": 3, "tokenizer": "unigram", "vocab_size": 300}, out=tmp_path / "u")
    payload = load_checkpoint(result.out_dir / "last.pt")
    assert payload["tokenizer"]["kind"] == "unigram"
    assert payload["model_config"]["vocab_size"] == 300


def test_korean_corpus_trains_and_samples(tmp_path):
    from charlm.sample import generate

    from .conftest import shared_corpus

    path = shared_corpus("korean.txt")
    result = train(open_corpus([path]), TINY_MODEL, {**TINY_TRAIN, "max_steps": 5}, out=tmp_path / "ko")
    model, tok = model_from_checkpoint(load_checkpoint(result.out_dir / "last.pt"))
    assert tok.vocab_size == 1518 - 1 + 256 + 2  # every character but "\n", plus bytes, <unk> and "\n"
    text = "".join(generate(model, tok, prime="그는 ", length=100, generator=torch.Generator().manual_seed(0)))
    assert len(text) == 100


def test_validation_reads_at_most_the_start_of_a_big_held_out_split(tmp_path, corpus_file, monkeypatch):
    import sys

    from charlm.data import split_tokens
    from charlm.evaluate import evaluate_tokens

    class Summary(Reporter):
        def summary(self, **info):
            self.info = info

    monkeypatch.setattr(sys.modules["charlm.train"], "VALIDATION_TOKENS", 300)
    reporter = Summary()
    train(open_corpus([corpus_file]), TINY_MODEL, {**TINY_TRAIN, "max_steps": 3}, out=tmp_path / "run",
          reporter=reporter)
    assert reporter.info["val_tokens"] == 300
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    model, tok = model_from_checkpoint(payload)
    ids = tok.encode(corpus_file.read_text(encoding="utf-8"))
    held_out = split_tokens(ids, payload["train_config"]["val_fraction"])[1][:300]
    expected = evaluate_tokens(model, held_out, tok.count_chars(held_out[1:]))
    assert payload["val_nats_per_char"] == pytest.approx(expected.nats_per_char, rel=1e-5)


def test_resuming_over_a_changed_corpus_says_so(tmp_path, corpus_file):
    messages = []

    class Recorder(Reporter):
        def message(self, text):
            messages.append(text)

    first = _train(corpus_file, tmp_path / "run", max_steps=2)
    train(None, {}, {"max_steps": 3}, resume=first.out_dir / "last.pt", reporter=Recorder())
    assert not any("not the text this run began on" in m for m in messages)
    with open(corpus_file, "a", encoding="utf-8") as f:
        f.write("a line written after the run began\n")
    train(None, {}, {"max_steps": 4}, resume=first.out_dir / "last.pt", reporter=Recorder())
    assert sum("not the text this run began on" in m for m in messages) == 1
