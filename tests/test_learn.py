"""Learning with charlm: cells compared, gradient flow measured, clipping logged, novelty of samples."""

from __future__ import annotations

import io
import json
import random
import re
import shlex
import string
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from rich.console import Console

import charlm.cli

from charlm.checkpoint import load_checkpoint
from charlm.cli import main
from charlm.compare import PeakMemory, compare_cells, hidden_for_params, param_count
from charlm.corpus import open_corpus
from charlm.errors import UsageError
from charlm.gradflow import gradient_norms, window_ends
from charlm.model import CharRNN, ModelConfig
from charlm.novelty import measure_novelty, ngram_hashes
from charlm.progress import Reporter, RichReporter
from charlm.train import train

from .conftest import TINY_MODEL, TINY_TRAIN, make_text


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
    """A small LSTM trained for a moment on the generated corpus; returns (run folder, corpus file)."""
    folder = tmp_path_factory.mktemp("learn")
    corpus = folder / "corpus.txt"
    corpus.write_text(make_text(20_000), encoding="utf-8")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(open_corpus([corpus]), {"hidden": 32, "embedding": 16},
                       {"batch_size": 8, "seq_len": 32, "max_steps": 80, "lr": 0.01, "sample_length": 0, "seed": 0},
                       out=folder / "run")
    finally:
        torch.set_num_threads(before)
    return result.out_dir, corpus


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


# -- compare -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 3])
def test_parameter_formula_counts_what_the_model_holds(cell, layers):
    for hidden, vocab, embedding in [(1, 5, 2), (37, 90, 16), (128, 300, 64)]:
        model = CharRNN(ModelConfig(vocab_size=vocab, cell=cell, layers=layers, hidden=hidden, embedding=embedding))
        assert param_count(cell, hidden, vocab, embedding, layers, factored=False) == model.num_params()
    for hidden, vocab, embedding in [(1, 260, 2), (128, 322, 64)]:  # with a byte-fallback block at ids 2..257
        model = CharRNN(ModelConfig(vocab, cell, layers, hidden, embedding, bytes_from=2))
        assert param_count(cell, hidden, vocab, embedding, layers) == model.num_params()


@pytest.mark.parametrize("layers", [1, 2])
def test_hidden_sizes_solved_for_a_parameter_budget_match_within_five_percent(layers):
    for target in (30_000, 250_000, 3_000_000):
        counts = {}
        for cell in ("rnn", "gru", "lstm"):
            hidden = hidden_for_params(cell, target, vocab=100, embedding=32, layers=layers)
            counts[cell] = param_count(cell, hidden, 100, 32, layers)
            # the neighbouring sizes are no closer: the solver found the best integer
            for other in (hidden - 1, hidden + 1):
                assert abs(counts[cell] - target) <= abs(param_count(cell, other, 100, 32, layers) - target)
        assert all(abs(n - target) <= 0.05 * target for n in counts.values())
        assert counts["rnn"] != counts["lstm"]  # different hidden sizes were needed


def test_a_parameter_budget_below_the_embedding_and_head_is_refused():
    with pytest.raises(UsageError, match="--params"):
        hidden_for_params("gru", 1_000, vocab=300, embedding=64, layers=1)


def test_compare_trains_every_cell_on_the_same_terms_with_matched_parameters(tmp_path, corpus_file):
    target = 12_000
    comparison = compare_cells(open_corpus([corpus_file]), ["rnn", "gru", "lstm"], {"embedding": 8},
                               {"batch_size": 4, "seq_len": 16, "max_steps": 50, "sample_length": 0, "seed": 3},
                               params=target, out=tmp_path / "cmp")
    assert [r.cell for r in comparison.results] == ["rnn", "gru", "lstm"]
    configs = []
    for r in comparison.results:
        payload = load_checkpoint(r.run_dir / "best.pt")
        assert r.run_dir == tmp_path / "cmp" / r.cell
        assert abs(r.params - target) <= 0.05 * target
        assert r.params == sum(t.numel() for t in payload["model"].values())
        assert payload["model_config"]["hidden"] == r.hidden
        assert r.steps == 50 and r.chars_per_sec > 0
        assert r.val_nats == pytest.approx(payload["val_nats_per_char"])
        assert r.val_bits == pytest.approx(r.val_nats / np.log(2))
        assert r.curve and all(loss > 0 for _, loss in r.curve)  # the loss curve comes from the run's log
        configs.append({k: v for k, v in payload["train_config"].items()})
    assert configs[0] == configs[1] == configs[2]  # same seed, split, budget, batches
    hidden = [r.hidden for r in comparison.results]
    assert hidden[0] > hidden[1] > hidden[2]  # an RNN needs the most units for the same budget


def test_compare_command_prints_one_row_per_cell_and_json(in_tmp, corpus_file, capsys):
    args = ["compare", str(corpus_file), "--cells", "rnn,lstm", "--hidden", "16", "--embedding", "8",
            "--max-steps", "50", "--batch-size", "4", "--seq-len", "16", "--sample-length", "0"]
    assert main(args + ["--out", "a"]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["rnn", "lstm"]
    assert "training loss" in table
    assert (in_tmp / "a" / "rnn" / "best.pt").is_file() and (in_tmp / "a" / "lstm" / "best.pt").is_file()
    assert main(args + ["--out", "b", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [c["cell"] for c in result["cells"]] == ["rnn", "lstm"]
    assert all(c["hidden"] == 16 and c["steps"] == 50 for c in result["cells"])
    assert main(["compare", str(corpus_file), "--cells", "rnn,tree"]) == 2
    assert "--cells" in capsys.readouterr().err
    assert main(["compare", str(corpus_file), "--params", "9000", "--hidden", "8"]) == 2


def test_peak_memory_sees_a_large_allocation_made_and_freed_inside_its_window():
    memory = PeakMemory(torch.device("cpu"))
    if memory.method is None:
        pytest.skip("peak memory is not measurable on this platform")
    memory.start()
    quiet = memory.stop()
    memory.start()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written so the pages are really resident
    del block
    peak = memory.stop()
    assert peak >= 60 * 2**20
    assert quiet < 32 * 2**20


# -- gradient flow -----------------------------------------------------------------------------
def _direct_gradient_norm(model: CharRNN, tokens: torch.Tensor, end: int, k: int, max_k: int, warmup: int) -> float:
    """|dL_end / ds_(end-k)| the plain way: the fused model up to end-k, a leaf state, the rest on top."""
    start = end - max_k - warmup
    with torch.no_grad():
        _, _, state = model(tokens[None, start : end - k + 1])  # reads tokens[start .. end-k]
    lstm = isinstance(state, tuple)
    h = (state[0] if lstm else state).clone().requires_grad_(True)
    carried = (h, state[1]) if lstm else h
    if k == 0:
        logits = model.logits(h[-1])
    else:
        logits, _, _ = model(tokens[None, end - k + 1 : end + 1], carried)
        logits = logits[:, -1]
    loss = F.cross_entropy(logits, tokens[end + 1 : end + 2])
    (grad,) = torch.autograd.grad(loss, h)
    return float(grad.norm())


@pytest.mark.parametrize("cell,layers", [("rnn", 1), ("gru", 1), ("lstm", 1), ("lstm", 2), ("gru", 2)])
def test_gradient_flow_matches_a_direct_autograd_computation(cell, layers):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=11, cell=cell, layers=layers, hidden=12, embedding=5)).double().eval()
    with torch.no_grad():
        for p in model.rnn.parameters():
            p.mul_(3.0)  # larger weights: the norms then change a lot with k, a sharper test
    tokens = torch.randint(0, 11, (200,))
    max_k, warmup = 6, 4
    ends = window_ends(len(tokens), max_k, warmup, count=5)
    assert len(ends) == 5 and ends[0] == max_k + warmup and ends[-1] == len(tokens) - 2
    measured = gradient_norms(model, tokens, ends, max_k, warmup)
    assert measured.shape == (5, max_k + 1)
    direct = torch.tensor([[_direct_gradient_norm(model, tokens, t, k, max_k, warmup) for k in range(max_k + 1)]
                           for t in ends], dtype=torch.float64)
    torch.testing.assert_close(measured, direct, rtol=1e-9, atol=0)
    assert not torch.allclose(direct[:, 0], direct[:, -1])  # the curve is not flat: k matters


def test_gradient_flow_command_draws_a_curve_per_checkpoint_and_json(lstm_run, capsys):
    trained_run, corpus_file = lstm_run
    assert main(["gradient-flow", str(trained_run), str(trained_run / "last.pt"), str(corpus_file),
                 "--max-k", "30", "--positions", "8"]) == 0
    chart = capsys.readouterr().out
    assert "log scale" in chart and chart.count("lstm 1x32") == 2
    assert main(["gradient-flow", str(trained_run), str(corpus_file), "--max-k", "30", "--positions", "8",
                 "--json"]) == 0
    (flow,) = json.loads(capsys.readouterr().out)
    assert flow["cell"] == "lstm" and flow["positions"] == 8 and flow["k"] == list(range(31))
    norms = flow["grad_norm"]
    assert all(np.isfinite(norms)) and min(norms) > 0  # measured in float64: nothing underflows to 0
    assert norms[30] < norms[0]  # the far past matters less to a trained model than the present
    # With no text named, the checkpoint's own training corpus is used.
    assert main(["gradient-flow", str(trained_run), "--max-k", "5", "--positions", "4", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["grad_norm"]) == 6


def test_gradient_flow_on_a_text_too_short_is_a_usage_error(lstm_run, tmp_path, capsys):
    trained_run, _ = lstm_run
    short = tmp_path / "short.txt"
    short.write_text("just a few words\n")
    assert main(["gradient-flow", str(trained_run), str(short)]) == 2
    assert "too short" in capsys.readouterr().err
    assert main(["gradient-flow", str(short)]) == 2  # no checkpoint named


# -- gradient norms and clipping during training -------------------------------------------------
@pytest.mark.parametrize("clip,rate", [(1e-6, 1.0), (1e9, 0.0), (0.0, None)])
def test_the_log_holds_the_gradient_norm_and_how_often_clipping_fired(tmp_path, corpus_file, clip, rate):
    updates = []

    class Recorder(Reporter):
        def update(self, **info):
            updates.append(info)

    run = train(open_corpus([corpus_file]), TINY_MODEL, {**TINY_TRAIN, "max_steps": 50, "grad_clip": clip},
                out=tmp_path / "run", reporter=Recorder())
    entries = [e for e in _log(run.out_dir) if "loss" in e]
    assert entries and all(e["grad_norm"] > 0 for e in entries)
    assert all(e["clip_rate"] == rate for e in entries)
    assert updates and all(u["clip_rate"] == rate and u["grad_norm"] > 0 for u in updates)


def test_clipping_rate_counts_only_the_steps_above_the_threshold(tmp_path, corpus_file):
    probe = train(open_corpus([corpus_file]), TINY_MODEL, {**TINY_TRAIN, "max_steps": 50, "grad_clip": 0.0},
                  out=tmp_path / "probe")
    # A threshold inside the range of the norms clips some steps and not others.
    norms = [e["grad_norm"] for e in _log(probe.out_dir) if "loss" in e]
    run = train(open_corpus([corpus_file]), TINY_MODEL,
                {**TINY_TRAIN, "max_steps": 50, "grad_clip": float(np.median(norms))}, out=tmp_path / "run")
    entries = [e for e in _log(run.out_dir) if "loss" in e]
    clipped, previous = 0.0, 0
    for e in entries:
        window = e["step"] - previous  # the steps this entry sums up
        assert e["clip_rate"] * window == pytest.approx(round(e["clip_rate"] * window))  # a share of whole steps
        clipped += e["clip_rate"] * window
        previous = e["step"]
    assert 0 < round(clipped) < previous


def test_progress_line_shows_the_gradient_norm_and_clipping():
    buffer = io.StringIO()
    reporter = RichReporter(Console(file=buffer, width=200, force_terminal=False))
    reporter.start(0.0)
    reporter.update(step=10, loss=2.5, val=None, chars_per_sec=1000.0, progress=0.5, elapsed=1.0,
                    grad_norm=3.21, clip_rate=0.4)
    reporter.finish(step=10, loss=2.5, val=None, elapsed=1.0)
    assert "grad 3.2 clip 40%" in buffer.getvalue()


def test_no_clip_option_turns_clipping_off(in_tmp, corpus_file, capsys):
    args = ["train", str(corpus_file), "--hidden", "16", "--embedding", "8", "--batch-size", "4", "--seq-len", "16",
            "--max-steps", "50", "--sample-length", "0"]
    assert main(args + ["--no-clip", "--out", "off"]) == 0
    assert load_checkpoint(in_tmp / "off" / "last.pt")["train_config"]["grad_clip"] == 0
    assert all(e["clip_rate"] is None for e in _log(in_tmp / "off") if "loss" in e)
    assert main(args + ["--no-clip", "--grad-clip", "2", "--out", "both"]) == 2
    assert "--no-clip" in capsys.readouterr().err


# -- novelty -----------------------------------------------------------------------------------
def _brute_force_novel(sample: str, corpus: str, n: int) -> int:
    seen = {corpus[i : i + n] for i in range(len(corpus) - n + 1)}
    return sum(sample[i : i + n] not in seen for i in range(len(sample) - n + 1))


def test_a_sample_copied_from_the_corpus_is_not_novel_and_a_random_one_is():
    corpus = make_text(30_000, seed=4)
    copied = corpus[7_000:7_600]
    rng = random.Random(0)
    noise = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(600))
    for result in measure_novelty([copied], [corpus]):
        assert result.ngrams == 600 - result.n + 1 and result.novel == 0 and result.share == 0.0
    for result in measure_novelty([noise], [corpus]):
        assert result.novel == result.ngrams and result.share == 1.0
    assert [r.n for r in measure_novelty([copied], [corpus])] == [10, 20, 40]


def test_novelty_equals_a_brute_force_count_across_chunk_boundaries(monkeypatch):
    monkeypatch.setattr("charlm.novelty.PIECE_CHARS", 97)  # many pieces, n-grams straddling them
    corpus = make_text(8_000, seed=1) + "ünïcödé 한국어 😀 emoji\n"
    rng = random.Random(2)
    # Pieces of the corpus joined by made-up text: some n-grams occur, some do not.
    samples = [corpus[i : i + rng.randint(5, 80)] + rng.choice(["xq", " the ", "😀z", "\n"]) for i in
               rng.sample(range(len(corpus) - 80), 30)]
    samples.append("abc")  # shorter than every n: no n-grams
    chunks = [corpus[i : i + 1000] for i in range(0, len(corpus), 1000)]
    for result in measure_novelty(samples, chunks, sizes=(3, 10, 20, 40)):
        expected = sum(_brute_force_novel(s, corpus, result.n) for s in samples)
        total = sum(max(0, len(s) - result.n + 1) for s in samples)
        assert (result.novel, result.ngrams) == (expected, total)
        assert 0 < result.novel < result.ngrams


def test_ngram_hashes_tell_different_windows_apart():
    text = make_text(20_000, seed=5)
    for n in (10, 20, 40):
        hashes = ngram_hashes(text, n)
        windows = {text[i : i + n] for i in range(len(text) - n + 1)}
        assert len(hashes) == len(text) - n + 1
        assert len(set(hashes.tolist())) == len(windows)  # one hash per distinct n-gram, no collisions


def test_sample_novelty_is_shown_on_stderr_after_the_sample(lstm_run, capsys):
    trained_run, corpus_file = lstm_run
    assert main(["sample", str(trained_run), "--length", "200", "--seed", "1", "--novelty", str(corpus_file)]) == 0
    captured = capsys.readouterr()
    assert "novelty" not in captured.out and len(captured.out) > 150  # the sample alone on stdout
    rows = [line for line in captured.err.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["10", "20", "40"]
    assert all(row.split("│")[3].strip().endswith("%") for row in rows)
    assert main(["sample", str(trained_run), "--length", "5", "--novelty", "missing.txt"]) == 2


# -- the docs: docs/learn.md and its Korean version show what today's charlm prints ------------
LEARN_DOCS = [Path(__file__).resolve().parents[1] / "docs" / name for name in ("learn.md", "learn.ko.md")]
FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _charlm_options() -> dict[str, set[str]]:
    """Every subcommand of the real command line, with every spelling of its options
    (secondary ones such as --no-x included, and --help)."""
    group = typer.main.get_command(charlm.cli.app)
    commands = {}
    for name, command in group.commands.items():
        spellings = {"--help"}
        for param in command.params:
            if param.param_type_name == "option":
                spellings.update(param.opts)
                spellings.update(param.secondary_opts)
        commands[name] = spellings
    return commands


def _command_line_problems(line: str, commands: dict[str, set[str]]) -> list[str]:
    """What is wrong with a `$ charlm SUBCOMMAND ...` line: an unknown subcommand or option."""
    words = shlex.split(line[2:])
    if len(words) < 2 or words[1] not in commands:
        return [f"no such subcommand: {line}"]
    known = commands[words[1]]
    return [f"{words[1]} has no option {word.split('=')[0]}: {line}" for word in words[2:]
            if word.startswith("--") and word.split("=")[0] not in known]


def test_the_docs_guard_catches_a_renamed_option():
    commands = _charlm_options()
    assert "--no-clip" in commands["train"] and "--find" in commands["inspect-neurons"]
    assert not _command_line_problems('$ charlm sample runs/bilm --backward --prime "the end." --seed 1', commands)
    assert _command_line_problems("$ charlm train x.txt --no-clipping", commands)
    assert _command_line_problems("$ charlm trian x.txt", commands)


@pytest.mark.parametrize("doc", LEARN_DOCS, ids=lambda p: p.name)
def test_the_learn_docs_show_what_charlm_prints_today(doc):
    text = doc.read_text(encoding="utf-8")
    assert "TODO(refresh)" not in text
    blocks = FENCED.findall(text)
    assert len(blocks) > 20
    for block in blocks:
        assert "\ufffd" not in block, "a sample with U+FFFD: today's sampler writes none"
        assert "\u2026" not in block, "an output cut with \u2026 (a narrow terminal): show whole lines"
    commands = _charlm_options()
    lines = [line for block in blocks for line in block.splitlines() if line.startswith("$ charlm ")]
    assert len(lines) > 25
    problems = [problem for line in lines for problem in _command_line_problems(line, commands)]
    assert not problems, "\n".join(problems)
