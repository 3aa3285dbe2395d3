"""Helpers shared by the benchmarks: where the real corpora are, and nanoGPT's split of them."""

from __future__ import annotations

import sys
from pathlib import Path

SHARED_CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


def shared_corpus(name: str) -> Path:
    path = SHARED_CORPORA / name
    if not path.is_file():
        sys.exit(f"{path}: not found (the benchmarks read ../shared/corpora beside the repository)")
    return path


def split_90_10(source: Path, folder: Path) -> tuple[Path, Path]:
    """First 90% of the characters for training, last 10% held out (nanoGPT's shakespeare_char split)."""
    text = source.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    train, val = folder / "train.txt", folder / "val.txt"
    train.write_text(text[:cut], encoding="utf-8")
    val.write_text(text[cut:], encoding="utf-8")
    return train, val
