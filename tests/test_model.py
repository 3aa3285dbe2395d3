"""The model: one step at a time equals the whole sequence; truncated BPTT cuts gradients."""

from __future__ import annotations

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


def test_loss_is_mean_cross_entropy_and_ignores_padding():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=10, hidden=8, embedding=4))
    idx = torch.randint(0, 10, (1, 6))
    targets = torch.randint(0, 10, (1, 6))
    logits, loss, _ = model(idx, targets=targets)
    expected = torch.nn.functional.cross_entropy(logits[0], targets[0])
    torch.testing.assert_close(loss, expected)
    padded = targets.clone()
    padded[0, 3:] = -100
    _, loss_padded, _ = model(idx, targets=padded)
    torch.testing.assert_close(loss_padded, torch.nn.functional.cross_entropy(logits[0, :3], targets[0, :3]))


def test_lstm_forget_gate_starts_open():
    model = CharRNN(ModelConfig(vocab_size=10, cell="lstm", layers=2, hidden=8, embedding=4))
    for layer in range(2):
        _, _, b_ih, b_hh = model.layer_weights(layer)
        assert torch.all(b_ih[8:16] + b_hh[8:16] == 1.0)
