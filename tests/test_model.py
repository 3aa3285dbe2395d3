"""The model: one step at a time equals the whole sequence; truncated BPTT cuts gradients."""

from __future__ import annotations

import math

import pytest
import torch

from charlm.model import CELLS, CharRNN, ModelConfig, detach_hidden


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_step_by_step_logits_equal_full_sequence_logits(cell, layers):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=40, cell=cell, layers=layers, hidden=24, embedding=8)).eval()
    idx = torch.randint(0, 40, (3, 17))
    full, _, full_hidden = model(idx)
    hidden = model.init_hidden(3)
    steps = []
    for t in range(idx.shape[1]):
        logits, hidden = model.step(idx[:, t], hidden)
        steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)
    for a, b in zip(hidden if isinstance(hidden, tuple) else (hidden,),
                    full_hidden if isinstance(full_hidden, tuple) else (full_hidden,)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_carried_state_continues_the_sequence(cell):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=30, cell=cell, hidden=16, embedding=8)).eval()
    idx = torch.randint(0, 30, (2, 20))
    whole, _, _ = model(idx)
    first, _, hidden = model(idx[:, :12])
    second, _, _ = model(idx[:, 12:], hidden)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_do_not_cross_chunk_boundaries(cell):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=30, cell=cell, hidden=16, embedding=8))
    idx = torch.randint(0, 30, (2, 20))
    emb1 = model.embed(idx[:, :10]).detach().requires_grad_(True)
    out1, hidden = model.rnn(emb1)
    emb2 = model.embed(idx[:, 10:]).detach().requires_grad_(True)

    # Without the cut, chunk 2's loss reaches back into chunk 1 ...
    out2, _ = model.rnn(emb2, hidden)
    out2.sum().backward(retain_graph=True)
    assert emb1.grad is not None and emb1.grad.abs().sum() > 0

    # ... with detach_hidden (what training does between chunks) it does not.
    emb1.grad = None
    out2, _ = model.rnn(emb2, detach_hidden(hidden))
    out2.sum().backward()
    assert emb1.grad is None
    assert emb2.grad.abs().sum() > 0


@pytest.mark.parametrize("bytes_from", [-1, 2], ids=["plain head", "factored head"])
def test_loss_is_mean_cross_entropy_and_ignores_padding(bytes_from):
    torch.manual_seed(0)
    vocab = 300 if bytes_from >= 0 else 10
    model = CharRNN(ModelConfig(vocab_size=vocab, hidden=8, embedding=4, bytes_from=bytes_from))
    idx = torch.randint(0, vocab, (1, 6))
    targets = torch.tensor([[0, 1, 2, 130, 257, vocab - 1]]) if bytes_from >= 0 else torch.randint(0, 10, (1, 6))
    logits, _, _ = model(idx)
    _, loss, _ = model(idx, targets=targets)
    expected = torch.nn.functional.cross_entropy(logits[0], targets[0])
    torch.testing.assert_close(loss, expected)
    padded = targets.clone()
    padded[0, 3:] = -100
    _, loss_padded, _ = model(idx, targets=padded)
    torch.testing.assert_close(loss_padded, torch.nn.functional.cross_entropy(logits[0, :3], targets[0, :3]))


def test_factored_head_is_one_distribution_over_the_whole_vocabulary():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=300, hidden=8, embedding=4, bytes_from=2))
    assert model.head.out_features == 300 - 256 + 1 and model.byte_head.out_features == 256
    logits, _, _ = model(torch.randint(0, 300, (2, 5)))
    assert logits.shape == (2, 5, 300)
    torch.testing.assert_close(logits.logsumexp(-1), torch.zeros(2, 5))  # log-probabilities
    # The 256 byte tokens share the escape's probability in the proportions the byte head gives.
    out = torch.randn(3, 8)
    escape = torch.log_softmax(model.head(out), -1)[:, -1]
    torch.testing.assert_close(model.logits(out)[:, 2:258].logsumexp(-1), escape)
    # Training on a byte target moves the byte head; on a character target it leaves it alone.
    for target, moves in ((100, True), (280, False)):
        model.zero_grad()
        _, loss, _ = model(torch.zeros(1, 1, dtype=torch.long), targets=torch.tensor([[target]]))
        loss.backward()
        assert (model.byte_head.weight.grad is not None and model.byte_head.weight.grad.abs().sum() > 0) == moves


def test_a_trained_model_has_the_factored_head_and_scores_unseen_characters(tmp_path):
    from charlm.checkpoint import load_checkpoint, model_from_checkpoint
    from charlm.corpus import open_corpus
    from charlm.evaluate import evaluate_tokens
    from charlm.train import train

    corpus = tmp_path / "c.txt"
    corpus.write_text("abc abd abe\n" * 200, encoding="utf-8")
    train(open_corpus([corpus]), {"hidden": 16, "embedding": 8}, {"max_steps": 3, "sample_length": 0,
          "batch_size": 2, "seq_len": 16}, out=tmp_path / "run")
    model, tok = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "last.pt"))
    assert model.config.bytes_from == tok.bytes_from >= 0 and model.factored
    text = "abc 한 abd"  # 한 was never seen: three byte tokens
    ids = tok.encode(text)
    result = evaluate_tokens(model, ids, len(text))
    with torch.no_grad():
        logits, _, _ = model(torch.as_tensor(ids, dtype=torch.long)[None])
    expected = torch.nn.functional.cross_entropy(logits[0, :-1], torch.as_tensor(ids[1:], dtype=torch.long),
                                                 reduction="sum")
    assert math.isfinite(result.nats) and abs(result.nats - float(expected)) < 1e-3


def test_lstm_forget_gate_starts_open():
    model = CharRNN(ModelConfig(vocab_size=10, cell="lstm", layers=2, hidden=8, embedding=4))
    for layer in range(2):
        _, _, b_ih, b_hh = model.layer_weights(layer)
        assert torch.all(b_ih[8:16] + b_hh[8:16] == 1.0)
