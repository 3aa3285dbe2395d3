"""A new run's model and learning rate follow its length: the widest model it feeds enough
tokens per parameter, dropout for its passes, and a lower rate for a long GRU run; whatever
the user gave is kept."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from charlm.checkpoint import load_checkpoint
from charlm.config import (CELL_TOKENS_PER_PARAM, DROPOUT_BY_PASSES, LR_BY_CELL, LR_STEADY_STEPS, TOKENS_PER_PARAM,
                           WIDTHS, ModelConfig, TrainConfig)
from charlm.corpus import open_corpus
from charlm.model import CharRNN
from charlm.sizing import (SUSTAINED_PACE, _StepTimer, choose_model, dropout_for, learning_rate, plan_run,
                           planned_tokens, seconds_per_step)
from charlm.train import train

from .conftest import make_text

SMALL_BATCH = {"batch_size": 4, "seq_len": 32, "sample_length": 0, "seed": 0, "val_fraction": 0.1}
CPU = torch.device("cpu")


def never(*args):
    raise AssertionError("only a time budget needs a step timed")


def params(hidden: int, cell: str = "lstm", vocab: int = 70) -> int:
    return CharRNN(ModelConfig(vocab, cell, hidden=hidden)).num_params()


def test_tokens_come_from_the_first_stop():
    config = TrainConfig(batch_size=4, seq_len=25, max_steps=300)
    assert planned_tokens(config, 10_000, 1, never) == 30_000
    assert planned_tokens(config, 10_000, 2, never) == 60_000  # each process reads its own streams
    config.epochs = 2.0
    assert planned_tokens(config, 10_000, 1, never) == 20_000
    config.epochs = config.max_steps = None
    config.time_budget = 10.0  # 10 s at 0.1 s a step: 100 steps of 100 tokens, at the pace a run keeps up
    assert planned_tokens(config, 10_000, 1, lambda: 0.1) == pytest.approx(SUSTAINED_PACE * 10_000)


def chosen_width(tokens: float) -> int:
    config = TrainConfig(batch_size=10, seq_len=100, max_steps=max(1, round(tokens / 1000)))
    chosen, _ = choose_model(ModelConfig(70), config, 10**10, 1, never)  # a corpus too big to read twice
    assert chosen.dropout == 0.0
    return chosen.hidden


def test_the_width_fed_closest_to_the_goal_tokens_per_parameter_is_chosen():
    for width in WIDTHS:
        assert chosen_width(TOKENS_PER_PARAM * params(width)) == width
    for narrow, wide in zip(WIDTHS, WIDTHS[1:]):
        # Between two widths, the choice changes where their ratios are equally far from the goal.
        middle = TOKENS_PER_PARAM * math.sqrt(params(narrow) * params(wide))
        assert chosen_width(0.98 * middle) == narrow
        assert chosen_width(1.02 * middle) == wide
    assert chosen_width(1000) == WIDTHS[0]  # however short the run
    assert chosen_width(100 * TOKENS_PER_PARAM * params(WIDTHS[-1])) == WIDTHS[-1]  # however long


@pytest.mark.parametrize("faster, chosen, timed_widths", [(1.5, 0, 2), (16.0, -1, len(WIDTHS))])
def test_a_time_budget_is_sized_by_each_widths_timed_step(faster, chosen, timed_widths):
    model = ModelConfig(70)
    config = TrainConfig(batch_size=10, seq_len=100, time_budget=100.0)
    # The narrowest width reads `faster` times the goal's tokens per parameter in the 100 s,
    # each wider one less, the widest an eighth of it: the one closest to the goal, by ratio,
    # is chosen, and no width is timed after the first that falls short of the goal.
    goal = {w: TOKENS_PER_PARAM * params(w) / 100 for w in WIDTHS}  # the tokens/s that reach the goal
    speed = {w: faster / 8 ** (k / (len(WIDTHS) - 1)) * goal[w] for k, w in enumerate(WIDTHS)}
    timed = []

    def time_step(candidate):
        timed.append(candidate.hidden)
        return 1000 / speed[candidate.hidden]

    picked, reason = choose_model(model, config, 10**9, 1, time_step)
    assert picked.hidden == WIDTHS[chosen] and list(dict.fromkeys(timed)) == list(WIDTHS[:timed_widths])
    assert (reason is None) == (chosen == 0)
    if reason:
        assert f"using {WIDTHS[-1]} units" in reason and "--hidden" in reason


def test_a_gru_goes_wide_only_for_more_tokens_per_parameter_than_an_lstm():
    goal = CELL_TOKENS_PER_PARAM["gru"]
    assert goal > TOKENS_PER_PARAM

    def chosen(cell: str, tokens: float) -> int:
        config = TrainConfig(batch_size=10, seq_len=100, max_steps=max(1, round(tokens / 1000)))
        return choose_model(ModelConfig(70, cell), config, 10**10, 1, never)[0].hidden

    for cell, goal_of_cell in (("gru", goal), ("lstm", TOKENS_PER_PARAM)):
        middle = goal_of_cell * math.sqrt(params(256, cell) * params(512, cell))
        assert chosen(cell, 0.98 * middle) == 256 and chosen(cell, 1.02 * middle) == 512
    # Enough tokens for a 512-wide LSTM leave a GRU at 256.
    assert chosen("gru", 1.5 * TOKENS_PER_PARAM * math.sqrt(params(256, "gru") * params(512, "gru"))) == 256


def test_each_width_is_timed_again_after_the_next_one_and_the_fastest_timing_counts(monkeypatch):
    # The machine gets busy during the first probe and quiet after it: timing the first
    # width again after the second keeps the ratio of their speeds honest.
    timings = iter([3.0, 2.0, 1.0])  # 256 units while busy, 512 units, 256 units again
    order = []
    monkeypatch.setattr("charlm.sizing.seconds_per_step",
                        lambda model, *args: order.append(model.hidden) or next(timings))
    timer = _StepTimer(TrainConfig(), np.zeros(100, np.uint16), CPU)
    narrow, wide = (ModelConfig(70, hidden=w, dropout=0.2) for w in (256, 512))
    assert timer(narrow) == 3.0
    assert timer(wide) == 2.0 and timer(narrow) == 1.0 and timer(wide) == 2.0
    assert order == [256, 512, 256]


def test_dropout_follows_the_passes_over_the_text():
    assert dropout_for(1.0) == 0.0
    bounds = [most for most, _ in DROPOUT_BY_PASSES]
    rates = [rate for _, rate in DROPOUT_BY_PASSES]
    assert rates == sorted(rates) and bounds == sorted(bounds)
    for most, rate in DROPOUT_BY_PASSES[:-1]:
        assert dropout_for(most) == rate and dropout_for(most * 1.01) > rate
    # A small text read many times: the default width, with dropout against memorizing it.
    model = ModelConfig(70)
    chosen, reason = choose_model(model, TrainConfig(batch_size=4, seq_len=32, max_steps=1000), 5_000, 1, never)
    assert chosen.hidden == WIDTHS[0] and chosen.dropout == DROPOUT_BY_PASSES[-1][1]
    assert "25.6 passes" in reason


def test_a_short_run_keeps_the_defaults_with_no_reason_given():
    model = ModelConfig(70)
    chosen, reason = choose_model(model, TrainConfig(batch_size=16, seq_len=64, max_steps=100), 10**6, 1, never)
    assert chosen == model and reason is None


@pytest.mark.parametrize("given", [{"hidden": 64}, {"layers": 2}, {"dropout": 0.0}])
def test_a_model_the_user_sized_is_kept(given):
    model = ModelConfig(70, **given)
    config = TrainConfig(epochs=50, lr=0.02)
    chosen, lr, reason = plan_run(model, config, np.zeros(100_000, np.uint16), given, CPU)
    assert chosen == model and reason is None and lr == 0.02


def test_a_long_gru_run_gets_a_lower_rate_and_an_lstm_keeps_its_own():
    steady = LR_STEADY_STEPS["gru"]
    assert learning_rate("gru", steady / 2) == LR_BY_CELL["gru"]
    assert learning_rate("gru", 4 * steady) == pytest.approx(LR_BY_CELL["gru"] / 2)
    assert learning_rate("lstm", 10**6) == LR_BY_CELL["lstm"]
    assert learning_rate("gru", 0) == LR_BY_CELL["gru"]  # length unknown: the cell's own
    tokens = np.zeros(10**6, np.uint16)
    config = TrainConfig(batch_size=16, seq_len=64, max_steps=int(4 * steady))
    _, lr, _ = plan_run(ModelConfig(70, "gru", hidden=64), config, tokens, {"hidden": 64}, CPU)
    assert lr == pytest.approx(LR_BY_CELL["gru"] / 2)
    config.lr = 0.03
    assert plan_run(ModelConfig(70, "gru", hidden=64), config, tokens, {"hidden": 64}, CPU)[1] == 0.03


def test_the_step_probe_times_real_steps_and_leaves_the_seed_alone():
    tokens = np.random.default_rng(0).integers(0, 60, 5000).astype(np.uint16)
    config = TrainConfig(batch_size=4, seq_len=16)
    torch.manual_seed(3)
    seconds = seconds_per_step(ModelConfig(60, hidden=32, embedding=8), config, tokens, CPU)
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(3))
    assert 0 < seconds < 5
    assert config.lr is None  # the probe's trainer worked on a copy


def test_a_probe_that_diverges_keeps_the_default_model_and_rate(monkeypatch, tmp_path):
    # Every step non-finite: the probe's trainer gives up as a run would, and the run goes on
    # with the model and rate it had, leaving nothing behind in the working folder.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, clip: torch.tensor(float("nan")))
    model = ModelConfig(60, "gru", hidden=16, embedding=8)
    tokens = np.random.default_rng(0).integers(0, 60, 5000).astype(np.uint16)
    chosen, lr, reason = plan_run(model, TrainConfig(batch_size=4, seq_len=16, time_budget=1e6), tokens, {}, CPU)
    assert (chosen, lr, reason) == (model, LR_BY_CELL["gru"], None)
    assert list(tmp_path.iterdir()) == []


def _checkpoint_configs(corpus_file, out, model_options, **train_options):
    train(open_corpus([corpus_file]), model_options, {**SMALL_BATCH, **train_options}, out=out)
    payload = load_checkpoint(out / "last.pt")
    return payload["model_config"], payload["train_config"]


def test_runs_are_sized_and_their_rate_saved_in_the_checkpoint(tmp_path):
    corpus_file = tmp_path / "small.txt"
    corpus_file.write_text(make_text(1200), encoding="utf-8")  # about 1,080 training tokens; 128 per step
    model, config = _checkpoint_configs(corpus_file, tmp_path / "long", {"cell": "gru"}, max_steps=100)  # ~12 passes
    assert (model["hidden"], model["dropout"]) == (WIDTHS[0], dropout_for(12))
    assert config["lr"] == LR_BY_CELL["gru"]  # 100 steps: short
    model, config = _checkpoint_configs(corpus_file, tmp_path / "sized", {"hidden": 40}, max_steps=20, lr=0.02)
    assert (model["hidden"], model["dropout"], config["lr"]) == (40, 0.0, 0.02)


@pytest.mark.parametrize("step_seconds, dropout", [(0.01, dropout_for(12 * SUSTAINED_PACE)), (1.0, 0.0)])
def test_a_time_budget_is_sized_by_the_timed_step(tmp_path, monkeypatch, step_seconds, dropout):
    corpus_file = tmp_path / "small.txt"
    corpus_file.write_text(make_text(1200), encoding="utf-8")
    timed = []
    monkeypatch.setattr("charlm.sizing.seconds_per_step", lambda *args: timed.append(args[0]) or step_seconds)
    # 1 s of 128-token steps over about 1,080 tokens: 100 steps read it 12 times (a run keeps up
    # SUSTAINED_PACE of that), 1 step not once.
    model, _ = _checkpoint_configs(corpus_file, tmp_path / "run", {}, time_budget=1.0)
    assert (model["hidden"], model["dropout"]) == (WIDTHS[0], dropout)
    assert [m.hidden for m in timed] == [WIDTHS[0]]  # too few tokens for 256 units: no wider one is timed
