"""Sampling: seeded, filtered as asked, stopped where asked."""

from __future__ import annotations

import pytest
import torch

from charlm.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.sample import filter_logits, generate, generate_batch


@pytest.fixture(scope="module")
def model_and_tokenizer(trained_run):
    return model_from_checkpoint(load_checkpoint(trained_run / "best.pt"))


def _text(model, tok, **options) -> str:
    return "".join(generate(model, tok, **options))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_same_seed_same_text_other_seed_other_text(model_and_tokenizer):
    model, tok = model_and_tokenizer
    a = _text(model, tok, length=200, temperature=1.0, generator=_gen(3))
    b = _text(model, tok, length=200, temperature=1.0, generator=_gen(3))
    c = _text(model, tok, length=200, temperature=1.0, generator=_gen(4))
    assert a == b
    assert a != c


def test_length_counts_characters(model_and_tokenizer):
    model, tok = model_and_tokenizer
    for length in (0, 1, 57):
        assert len(_text(model, tok, length=length, generator=_gen(0))) == length


def test_temperature_zero_is_greedy_and_ignores_the_seed(model_and_tokenizer):
    model, tok = model_and_tokenizer
    a = _text(model, tok, prime="(the ", length=80, temperature=0.0, generator=_gen(1))
    b = _text(model, tok, prime="(the ", length=80, temperature=0.0, generator=_gen(2))
    assert a == b
    # Greedy decoding is the argmax of the model's own step-by-step prediction.
    ids = torch.as_tensor(tok.encode("(the "), dtype=torch.long)[None]
    logits, _, _ = model(ids)
    assert a[0] == tok.decode([int(logits[0, -1].argmax())])


def test_top_k_one_equals_greedy(model_and_tokenizer):
    model, tok = model_and_tokenizer
    greedy = _text(model, tok, length=60, temperature=0.0)
    top1 = _text(model, tok, length=60, temperature=1.3, top_k=1, generator=_gen(9))
    assert top1 == greedy


def test_filters_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))

    def kept(out):
        return torch.isfinite(out[0]).nonzero().flatten().tolist()

    assert kept(filter_logits(logits, 1.0, top_k=2)) == [0, 1]
    assert kept(filter_logits(logits, 1.0, top_p=0.5)) == [0]
    assert kept(filter_logits(logits, 1.0, top_p=0.8)) == [0, 1]
    assert kept(filter_logits(logits, 1.0, top_p=0.81)) == [0, 1, 2]
    assert kept(filter_logits(logits, 1.0, top_p=1.0)) == [0, 1, 2, 3]
    hot = torch.softmax(filter_logits(logits, 2.0), -1)
    assert hot[0, 3] > 0.05  # a higher temperature flattens the distribution


def test_stop_string_ends_the_sample_right_after_it(model_and_tokenizer):
    model, tok = model_and_tokenizer
    text = _text(model, tok, length=2000, temperature=1.0, stop="\n", generator=_gen(0))
    assert text.endswith("\n") and text.count("\n") == 1


def test_samples_side_by_side_are_independent_and_seeded(model_and_tokenizer):
    model, tok = model_and_tokenizer

    def run(seed):
        texts = [""] * 4
        for pieces in generate_batch(model, tok, "", 50, num_samples=4, temperature=1.0, generator=_gen(seed)):
            texts = [t + p for t, p in zip(texts, pieces)]
        return texts

    first = run(5)
    assert first == run(5)
    assert len(set(first)) == 4
    assert all(len(t) == 50 for t in first)


def test_a_prime_of_unseen_characters_works(model_and_tokenizer):
    model, tok = model_and_tokenizer
    text = _text(model, tok, prime="한국어 😀 Ω\u2581", length=30, generator=_gen(0))
    assert len(text) == 30


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("factored", [True, False])
def test_the_fast_draw_has_the_distribution_of_the_full_logits(temperature, factored):
    # Byte tokens get a good share, most of it on three bytes. With a factored head, their
    # share at temperature T depends on the byte head, which the draw computes only for the
    # streams that drew the escape.
    from charlm.model import CharRNN, ModelConfig
    from charlm.sample import TokenChooser, filter_logits
    from charlm.tokenizer import train_tokenizer

    tok = train_tokenizer(["abcde\n" * 20], "char")
    favoured = [0x41, 0x80, 0xE2]  # ASCII, a continuation byte (never first), a lead byte
    torch.manual_seed(0)
    config = ModelConfig(tok.vocab_size, "lstm", 1, 16, 8, bytes_from=tok.bytes_from if factored else -1)
    model = CharRNN(config).eval()
    assert model.factored == factored
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        if factored:
            model.head.bias[-1] = 1.5  # the escape
            model.byte_head.weight.mul_(0.1)
            model.byte_head.bias.zero_()
            model.byte_head.bias[favoured] = 5.0
        else:
            model.head.bias[tok.bytes_from : tok.bytes_from + 256] = -3.0
            model.head.bias[[tok.bytes_from + b for b in favoured]] = 0.5
    top = torch.randn(1, 16).expand(30_000, -1)
    choose = TokenChooser(model, tok, temperature, 0, 1.0, torch.Generator().manual_seed(1), "cpu")
    assert choose.plain == factored  # byte tokens among the main outputs go the careful way
    with torch.inference_mode():
        tokens, listed = choose(top)
        banned = torch.tensor([0.0 if not tok.is_special(i) else float("-inf") for i in range(tok.vocab_size)])
        # A text starts with a whole character: a continuation byte (0x80) cannot come first.
        banned[tok.bytes_from + 0x80 : tok.bytes_from + 0xC2] = float("-inf")
        banned[tok.bytes_from + 0xF5 : tok.bytes_from + 256] = float("-inf")
        expected = torch.softmax(filter_logits(model.logits(top[:1]) + banned, temperature), dim=-1)[0]
    assert tokens.tolist() == listed
    seen = torch.bincount(tokens, minlength=tok.vocab_size).double() / len(tokens)
    is_byte = torch.zeros(tok.vocab_size, dtype=torch.bool)
    is_byte[tok.bytes_from : tok.bytes_from + 256] = True
    assert 0.2 < float(expected[is_byte].sum()) < 0.95  # the bytes matter at every temperature
    assert abs(float(seen[is_byte].sum() - expected[is_byte].sum())) < 0.015
    for token in torch.nonzero(expected > 0.01).flatten().tolist():
        assert abs(float(seen[token] - expected[token])) < 0.015, token
    assert float(seen[~torch.isfinite(banned)].sum()) == 0  # never a special id


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("table", [True, False])
@pytest.mark.parametrize("streams", [1, 3])
def test_packed_cells_step_like_the_model(cell, layers, table, streams, monkeypatch):
    from charlm import sample
    from charlm.model import CharRNN, ModelConfig

    if not table:  # as for a big vocabulary: layer 0 multiplies the embedding each step
        monkeypatch.setattr(sample, "TABLE_LIMIT", 0)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=40, cell=cell, layers=layers, hidden=24, embedding=8)).eval()
    cells = sample.PackedCells(model, streams)
    assert (cells.table is not None) == table
    idx = torch.randint(0, 40, (streams, 12))
    hidden = model.init_hidden(streams)
    with torch.no_grad():
        _, _, hidden = model(idx[:, :4], hidden)  # start from a state that is not zero
    state = cells.state(hidden)
    for t in range(4, 12):
        _, hidden = model.step(idx[:, t], hidden)
        state = cells(idx[:, t], state)
        top = (hidden[0] if cell == "lstm" else hidden)[-1]
        torch.testing.assert_close(cells.top(state), top, atol=1e-5, rtol=1e-5)
    for packed, reference in zip(cells.state(hidden), state):
        torch.testing.assert_close(packed, reference, atol=1e-5, rtol=1e-5)


def test_a_reader_that_stops_early_ends_sampling_quietly(trained_run):
    # charlm sample | head -1: once the pipe closes, the next write fails; that ends the
    # sample with exit 0 and nothing on stderr, as `yes | head` does.
    import os
    import subprocess
    import sys

    argv = [sys.executable, "-m", "charlm", "sample", str(trained_run / "best.pt"), "--length", "1000000"]
    env = {**os.environ, "CHARLM_DEBUG": "0"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert len(proc.stdout.read(50)) == 50  # streaming has begun
        proc.stdout.close()
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.stderr.read().decode() == ""
    assert rc == 0
