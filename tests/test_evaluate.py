"""Evaluation: parallel streams with carried state give exactly each stream's own losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charlm.evaluate import evaluate_tokens, token_losses
from charlm.model import CharRNN, ModelConfig


@pytest.mark.parametrize("bytes_from", [-1, 2])
def test_streams_and_chunks_give_each_positions_loss_as_one_forward_pass(bytes_from, monkeypatch):
    import charlm.evaluate

    monkeypatch.setattr(charlm.evaluate, "MIN_STREAM_TOKENS", 10)  # several streams on a short text
    torch.manual_seed(0)
    vocab = 300 if bytes_from >= 0 else 20
    model = CharRNN(ModelConfig(vocab, "lstm", hidden=16, embedding=8, bytes_from=bytes_from)).eval()
    tokens = np.random.default_rng(0).integers(0, vocab, 53).astype(np.uint16)
    # 52 predictions in 3 streams of 18 (the last one 16 long), run 5 positions at a time.
    losses = token_losses(model, tokens, streams=3, chunk=5)
    with torch.no_grad():
        expected = []
        for s in range(3):
            part = torch.as_tensor(tokens[s * 18 : min(s * 18 + 19, 53)].astype(np.int64))[None]
            logits, _, _ = model(part[:, :-1])
            expected.append(torch.nn.functional.cross_entropy(logits[0], part[0, 1:], reduction="none"))
    torch.testing.assert_close(losses, torch.cat(expected))


def test_the_total_is_the_sum_of_the_losses_and_a_memory_mapped_split_works(tmp_path, monkeypatch):
    import charlm.evaluate

    monkeypatch.setattr(charlm.evaluate, "MIN_STREAM_TOKENS", 10)  # several streams on a short text
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(20, "gru", hidden=8, embedding=4))
    tokens = np.random.default_rng(1).integers(0, 20, 400).astype(np.uint16)
    tokens.tofile(tmp_path / "ids")
    mapped = np.memmap(tmp_path / "ids", dtype=np.uint16, mode="r")
    result = evaluate_tokens(model, mapped, chars=400, streams=4)
    assert result.tokens == 399
    assert abs(result.nats - float(token_losses(model, tokens, streams=4).double().sum())) < 1e-6 * result.nats
    assert model.training  # evaluation leaves the model as it found it
