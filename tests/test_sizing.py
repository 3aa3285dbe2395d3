"""A long run gets a wider model with dropout unless the user sized it; a short one keeps the defaults."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charlm.checkpoint import load_checkpoint
from charlm.config import LONG_RUN, LONG_RUN_PASSES, ModelConfig, TrainConfig
from charlm.corpus import open_corpus
from charlm.sizing import choose_model, planned_passes, seconds_per_step
from charlm.train import train

from .conftest import make_text

SMALL_BATCH = {"batch_size": 4, "seq_len": 32, "sample_length": 0, "seed": 0, "val_fraction": 0.1}


def never():
    raise AssertionError("only a time budget needs the step timed")


def test_passes_come_from_the_first_stop():
    config = TrainConfig(batch_size=4, seq_len=25, max_steps=300)
    assert planned_passes(config, 10_000, 1, never) == pytest.approx(3.0)
    assert planned_passes(config, 10_000, 2, never) == pytest.approx(6.0)  # each process reads its own streams
    config.epochs = 2.0
    assert planned_passes(config, 10_000, 1, never) == pytest.approx(2.0)
    config.time_budget = 10.0  # 10 s at 0.1 s a step: 100 steps, one pass; epochs alone are short enough
    assert planned_passes(config, 10_000, 1, never) == pytest.approx(2.0)
    config.epochs = config.max_steps = None
    assert planned_passes(config, 10_000, 1, lambda: 0.1) == pytest.approx(1.0)


@pytest.mark.parametrize("given", [{"hidden": 64}, {"layers": 2}, {"dropout": 0.0}])
def test_a_model_the_user_sized_is_kept(given):
    model = ModelConfig(70, **given)
    config = TrainConfig(epochs=50)
    chosen, reason = choose_model(model, config, np.zeros(1000, np.uint16), given, torch.device("cpu"))
    assert chosen == model and reason is None


def test_only_a_long_run_is_resized():
    model = ModelConfig(70)
    tokens = np.zeros(1000, np.uint16)
    short, reason = choose_model(model, TrainConfig(epochs=LONG_RUN_PASSES), tokens, {}, torch.device("cpu"))
    assert short == model and reason is None
    long, reason = choose_model(model, TrainConfig(epochs=LONG_RUN_PASSES + 1), tokens, {"cell": "lstm"},
                                torch.device("cpu"))
    assert (long.hidden, long.dropout) == (LONG_RUN["hidden"], LONG_RUN["dropout"])
    assert (long.cell, long.layers, long.vocab_size) == (model.cell, model.layers, model.vocab_size)
    assert f"about {LONG_RUN_PASSES + 1:.1f} times" in reason and "--hidden" in reason


def test_the_step_probe_times_real_steps_and_leaves_the_seed_alone():
    tokens = np.random.default_rng(0).integers(0, 60, 5000).astype(np.uint16)
    config = TrainConfig(batch_size=4, seq_len=16)
    torch.manual_seed(3)
    seconds = seconds_per_step(ModelConfig(60, hidden=32, embedding=8), config, tokens, torch.device("cpu"))
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(3))
    assert 0 < seconds < 5


def test_a_probe_that_diverges_keeps_the_default_model(monkeypatch, tmp_path):
    # Every step non-finite: the probe's trainer gives up as a run would, and the run goes on
    # with the model it had, leaving nothing behind in the working folder.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, clip: torch.tensor(float("nan")))
    model = ModelConfig(60, hidden=16, embedding=8)
    tokens = np.random.default_rng(0).integers(0, 60, 5000).astype(np.uint16)
    chosen, reason = choose_model(model, TrainConfig(batch_size=4, seq_len=16, time_budget=1e6), tokens, {},
                                  torch.device("cpu"))
    assert (chosen, reason) == (model, None)
    assert list(tmp_path.iterdir()) == []


def _checkpoint_model(corpus_file, out, model_options, **train_options):
    train(open_corpus([corpus_file]), model_options, {**SMALL_BATCH, **train_options}, out=out)
    return load_checkpoint(out / "last.pt")["model_config"]


def test_runs_are_sized_by_how_often_they_read_the_text(tmp_path):
    corpus_file = tmp_path / "small.txt"
    corpus_file.write_text(make_text(1200), encoding="utf-8")  # about 1,080 training tokens; 128 per step
    long = _checkpoint_model(corpus_file, tmp_path / "long", {}, max_steps=100)  # about 12 passes
    assert (long["hidden"], long["dropout"]) == (LONG_RUN["hidden"], LONG_RUN["dropout"])
    short = _checkpoint_model(corpus_file, tmp_path / "short", {}, max_steps=30)
    assert (short["hidden"], short["dropout"]) == (ModelConfig.hidden, ModelConfig.dropout)
    sized = _checkpoint_model(corpus_file, tmp_path / "sized", {"hidden": 40}, max_steps=100)
    assert (sized["hidden"], sized["dropout"]) == (40, 0.0)


@pytest.mark.parametrize("step_seconds, hidden", [(0.01, LONG_RUN["hidden"]), (1.0, ModelConfig.hidden)])
def test_a_time_budget_is_sized_by_the_timed_step(tmp_path, monkeypatch, step_seconds, hidden):
    corpus_file = tmp_path / "small.txt"
    corpus_file.write_text(make_text(1200), encoding="utf-8")
    timed = []
    monkeypatch.setattr("charlm.sizing.seconds_per_step", lambda *args: timed.append(args[0]) or step_seconds)
    # 1 s of 128-token steps over about 1,080 tokens: 100 steps read it 12 times, 1 step not once.
    chosen = _checkpoint_model(corpus_file, tmp_path / "run", {}, time_budget=1.0)
    assert chosen["hidden"] == hidden
    assert [model.hidden for model in timed] == [ModelConfig.hidden]  # the default model was timed, once
