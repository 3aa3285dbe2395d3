"""Data-parallel training through torchrun: two CPU processes on gloo train like one."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from charlm.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.cli import main

pytestmark = pytest.mark.slow

# float32 on every CPU: bf16 autocast (auto, where the CPU has it) rounds the two layouts differently.
COMMON = ["--hidden", "32", "--embedding", "16", "--seq-len", "32", "--sample-length", "0", "--lr", "0.01",
          "--precision", "fp32"]


def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--standalone", "-m", "charlm", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, corpus_file):
    two = _torchrun(2, str(corpus_file), *COMMON, "--batch-size", "4", "--max-steps", "25",
                    "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-8000:]
    # Only rank 0 prints the checkpoint path and writes the run.
    assert two.stdout.strip() == str(tmp_path / "two" / "best.pt")
    assert main(["train", str(corpus_file), *COMMON, "--batch-size", "8", "--max-steps", "25",
                 "--out", str(tmp_path / "one")]) == 0

    a = load_checkpoint(tmp_path / "two" / "last.pt")
    b = load_checkpoint(tmp_path / "one" / "last.pt")
    assert a["state"]["step"] == b["state"]["step"] == 25
    for name in b["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], atol=2e-4, rtol=1e-3)
    # The carried state of both ranks' streams is in the checkpoint, as in a single process.
    assert a["hidden"][0].shape == b["hidden"][0].shape == (1, 8, 32)
    torch.testing.assert_close(a["hidden"][0], b["hidden"][0], atol=2e-3, rtol=1e-2)

    # The loss fell and the checkpoint loads anywhere.
    # The loss fell well below what a model that learned nothing scores (ln of the vocabulary).
    assert a["val_nats_per_char"] < math.log(a["model_config"]["vocab_size"]) - 1.0
    model, tok = model_from_checkpoint(a)
    assert model(torch.as_tensor(tok.encode("the cat"), dtype=torch.long)[None])[0].isfinite().all()


def test_resume_with_a_different_number_of_processes(tmp_path, corpus_file):
    first = _torchrun(2, str(corpus_file), *COMMON, "--batch-size", "2", "--max-steps", "6",
                      "--schedule", "constant", "--out", str(tmp_path / "run"))
    assert first.returncode == 0, first.stderr[-8000:]
    assert main(["train", "--resume", str(tmp_path / "run" / "last.pt"), "--max-steps", "10"]) == 0
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    assert payload["state"]["step"] == 10
    assert payload["hidden"][0].shape[1] == 4  # still 4 streams, now all in one process


def test_ranks_agree_on_a_time_budget_at_their_agreement_points(tmp_path, corpus_file):
    """The clock is agreed on every AGREE_EVERY steps, not at every step: the run stops at
    such a step, the same on both ranks (a rank that left alone would hang the other)."""
    from charlm.train import AGREE_EVERY

    run = _torchrun(2, str(corpus_file), *COMMON, "--batch-size", "4", "--time-budget", "3",
                    "--out", str(tmp_path / "run"))
    assert run.returncode == 0, run.stderr[-8000:]
    step = load_checkpoint(tmp_path / "run" / "last.pt")["state"]["step"]
    assert step > AGREE_EVERY and step % AGREE_EVERY == 0


def test_each_rank_draws_its_own_dropout_masks_and_keeps_them_on_resume(tmp_path, corpus_file):
    args = [str(corpus_file), *COMMON, "--dropout", "0.3", "--batch-size", "2", "--schedule", "constant"]
    first = _torchrun(2, *args, "--max-steps", "4", "--out", str(tmp_path / "run"))
    assert first.returncode == 0, first.stderr[-8000:]
    ranks = load_checkpoint(tmp_path / "run" / "last.pt")["rng_ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])
    # Resumed by the same number of processes, each rank goes on from its own saved draws:
    # 4 + 4 steps give the same weights as 8 straight.
    resumed = _torchrun(2, "--resume", str(tmp_path / "run" / "last.pt"), "--max-steps", "8")
    assert resumed.returncode == 0, resumed.stderr[-8000:]
    straight = _torchrun(2, *args, "--max-steps", "8", "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-8000:]
    a = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)
