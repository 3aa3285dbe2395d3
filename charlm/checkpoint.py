"""Checkpoints: one file holds everything needed to sample, evaluate, inspect or resume.

A checkpoint is a dict of plain types only (tensors, dicts, lists, str, int, float, bytes,
bool, None): model weights, the configs as dicts, the tokenizer's serialized sentencepiece
model, and, for resuming, the optimizer, step, data position, carried hidden state and RNG
states. It is read with `torch.load(weights_only=True)` and never by full unpickling, so a
file from a stranger cannot run code. Saves are atomic: a temporary file in the same folder
is written, flushed and fsynced, then renamed over the old one, so a crash or kill -9 at
any moment leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import CharlmError, UsageError
from .config import DIRECTIONS
from .directions import BiLM, build_model
from .model import CharRNN, ModelConfig
from .tokenizer import Tokenizer

FORMAT = "charlm-checkpoint"
VERSION = 1
ZIP_MAGIC = b"PK\x03\x04"
DEFAULT_RUNS_DIR = Path("runs")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` atomically (temp file, fsync, rename, fsync the folder)."""
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CharlmError(f"{path.parent}: cannot write a checkpoint there: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file private (0600); a checkpoint is shared like any other file.
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise CharlmError(f"{path}: checkpoint not saved ({e.strerror}); the previous one is intact") from None
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely; any problem is a one-line CharlmError naming the file."""
    path = Path(path)
    if path.is_dir():
        path = find_in_run(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such checkpoint")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise CharlmError(f"{path}: cannot read: {e.strerror}") from None
    if magic != ZIP_MAGIC:
        # torch.save writes a zip archive; anything else (text, a bare pickle, the legacy
        # format) is refused before any unpickling starts.
        raise CharlmError(f"{path}: not a charlm checkpoint (not a zip archive as torch.save writes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's warnings would break the one-line error
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe contents"
        if "weights_only" in str(e) or "Unsupported" in str(e) or "global" in str(e).lower():
            reason = "it holds objects that are not plain data, so charlm will not load it"
        raise CharlmError(f"{path}: refused: {reason}") from None
    except Exception as e:  # noqa: BLE001  (a damaged file fails inside torch in many ways)
        raise CharlmError(f"{path}: not a readable charlm checkpoint ({_first_line(e)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CharlmError(f"{path}: not a charlm checkpoint")
    version = payload.get("version")
    if version != VERSION:
        raise CharlmError(f"{path}: checkpoint format version {version!r} is not supported "
                          f"(this charlm reads version {VERSION})")
    payload["path"] = str(path)
    return payload


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def model_from_checkpoint(payload: dict[str, Any],
                          device: str | torch.device = "cpu") -> tuple[CharRNN | BiLM, Tokenizer]:
    """Rebuild the model (in eval mode) and its tokenizer from a loaded checkpoint: a CharRNN,
    or for --direction both a BiLM (directions.py); a checkpoint from before directions reads forward."""
    try:
        config = ModelConfig(**payload["model_config"])
        if config.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {config.direction!r}")
        model = build_model(config)
        model.load_state_dict(payload["model"])
        tokenizer = Tokenizer(payload["tokenizer"]["model"], payload["tokenizer"]["kind"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CharlmError(f"{payload.get('path', 'checkpoint')}: damaged checkpoint ({_first_line(e)})") from None
    return model.to(device).eval(), tokenizer


def find_in_run(run_dir: Path) -> Path:
    """A run folder's best checkpoint (lowest validation loss), else its last one."""
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise UsageError(f"{run_dir}: folder holds no best.pt or last.pt")


def latest_checkpoint(runs_dir: Path = DEFAULT_RUNS_DIR) -> Path:
    """The checkpoint of the most recently written run under `runs_dir`."""
    candidates = [p for p in Path(runs_dir).glob("*/*.pt") if p.name in ("best.pt", "last.pt")]
    if not candidates:
        raise UsageError(f"no trained model under {runs_dir}/: run 'charlm train' first, or name a checkpoint")
    newest_run = max(candidates, key=lambda p: p.stat().st_mtime).parent
    return find_in_run(newest_run)
