"""Shared fixtures: small generated corpora, a tiny trained run, the optional real corpora."""

from __future__ import annotations

import importlib
import os
import random
from pathlib import Path

import pytest
import torch

# The tests train tiny models: one thread runs them fastest, and one thread cannot stall
# waiting for a core another process holds. Subprocesses (python -m charlm) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

SHARED_CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


@pytest.fixture(scope="session", autouse=True)
def auto_means_cpu():
    """`--device auto` means the CPU in the tests, also on a machine with a GPU: what they
    hold to bit for bit (exact resume, the skip-and-retry of a bad step) is the CPU path.
    The GPU path has its own tests (tests/test_cuda.py), which ask for it by name."""
    if not torch.cuda.is_available():  # also fixes this process's view of the GPUs
        yield
        return
    patch = pytest.MonkeyPatch()
    pick_device = importlib.import_module("charlm.train").pick_device  # `charlm.train` is also the function
    for module in ("charlm.train", "charlm.compare"):
        patch.setattr(importlib.import_module(module), "pick_device",
                      lambda name: pick_device("cpu" if name == "auto" else name))
    patch.setenv("CUDA_VISIBLE_DEVICES", "")  # for python -m charlm and torchrun
    yield
    patch.undo()


def make_text(chars: int = 20_000, seed: int = 0) -> str:
    """Learnable text: lines of a few words with brackets and quotes, from a fixed generator."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "the", "cat", "sat", "on", "mat", "print", "return"]
    lines = []
    size = 0
    while size < chars:
        body = " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))
        line = rng.choice([body, f"({body})", f'"{body}"', f"  {body}:"])
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines) + "\n"


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch) -> Path:
    """Run in an empty folder, so runs/ lands there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("charlm.cli.RUNS_DIR", Path("runs"))
    return tmp_path


TINY_MODEL = {"hidden": 32, "embedding": 16}
TINY_TRAIN = {"batch_size": 4, "seq_len": 32, "sample_length": 0, "seed": 0}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One small LSTM trained for a few seconds, shared by the tests that only read it."""
    from charlm.corpus import open_corpus
    from charlm.train import train

    folder = tmp_path_factory.mktemp("trained")
    path = folder / "corpus.txt"
    path.write_text(make_text(30_000), encoding="utf-8")
    result = train(open_corpus([path]), {"hidden": 48, "embedding": 16},
                   {"batch_size": 8, "seq_len": 64, "max_steps": 150, "lr": 0.01, "sample_length": 0, "seed": 0},
                   out=folder / "run")
    return result.out_dir


def shared_corpus(name: str) -> Path:
    path = SHARED_CORPORA / name
    if not path.is_file():
        pytest.skip(f"{path} is not here (it lives in ../shared/corpora beside the repository)")
    return path
