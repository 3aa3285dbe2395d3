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
from .tokenizer import KINDS, Tokenizer

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
    """Read a checkpoint safely; any problem is a one-line UsageError naming the file.

    A file that cannot be used is bad input, whatever is wrong with it (exit 2); the
    exception torch raised stays attached for CHARLM_DEBUG=1."""
    path = Path(path)
    if path.is_dir():
        path = find_in_run(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such checkpoint")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        size = path.stat().st_size
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}") from None
    if magic != ZIP_MAGIC:
        # torch.save writes a zip archive; anything else (text, a bare pickle, the legacy
        # format) is refused before any unpickling starts.
        raise UsageError(f"{path}: not a charlm checkpoint (not a zip archive as torch.save writes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's warnings would break the one-line error
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe contents"
        if "weights_only" in str(e) or "Unsupported" in str(e) or "global" in str(e).lower():
            reason = "it holds objects that are not plain data, so charlm will not load it"
        raise UsageError(f"{path}: refused: {reason}") from e
    except Exception as e:  # noqa: BLE001  (a damaged file fails inside torch in many ways)
        # torch's own words end mid-sentence or speak of its internals; CHARLM_DEBUG=1 shows them.
        raise UsageError(f"{path}: cannot be read: truncated or damaged, or not a charlm checkpoint "
                         f"({size:,} bytes)") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UsageError(f"{path}: not a charlm checkpoint")
    version = payload.get("version")
    if version != VERSION:
        raise UsageError(f"{path}: checkpoint format version {version!r} is not supported "
                         f"(this charlm reads version {VERSION})")
    payload["path"] = str(path)
    return payload


def as_payload(checkpoint: Path | str | dict[str, Any]) -> dict[str, Any]:
    """A loaded checkpoint as it is, or the checkpoint at a path, loaded."""
    return checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)


def model_from_checkpoint(payload: dict[str, Any],
                          device: str | torch.device = "cpu") -> tuple[CharRNN | BiLM, Tokenizer]:
    """Rebuild the model (in eval mode) and its tokenizer from a loaded checkpoint: a CharRNN,
    or for --direction both a BiLM (directions.py); a checkpoint from before directions reads forward."""
    path = payload.get("path", "checkpoint")
    try:
        config = ModelConfig(**payload["model_config"])
        if config.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {config.direction!r}")
        model = build_model(config)
        tokenizer = tokenizer_from_checkpoint(payload)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UsageError(f"{path}: damaged checkpoint: its configuration or vocabulary is missing or "
                         "unreadable") from e
    try:
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        # torch lists every mismatched tensor, far more than a line; CHARLM_DEBUG=1 shows it.
        raise UsageError(f"{path}: damaged checkpoint: its weights do not fit its own configuration "
                         f"({config.cell.upper()} {config.layers}x{config.hidden})") from e
    return model.to(device).eval(), tokenizer


def tokenizer_from_checkpoint(payload: dict[str, Any]) -> Tokenizer:
    """The tokenizer a checkpoint holds; a kind this charlm does not know is named, not a crash."""
    kind = payload["tokenizer"]["kind"]
    if kind not in KINDS:
        raise UsageError(f"{payload.get('path', 'checkpoint')}: its tokenizer is {str(kind)[:40]!r}, which this "
                          f"charlm does not know (it knows {', '.join(KINDS)}); a newer charlm may read it")
    return Tokenizer(payload["tokenizer"]["model"], kind)


def describe(payload: dict[str, Any]) -> str:
    """What a checkpoint holds, in a few words: `LSTM 1x256, step 4,244, 1.52 nats/char`.

    The validation figure is the one of these weights; a checkpoint saved after its last
    validation (an interrupted run's last.pt) names the step that figure is from."""
    config = payload.get("model_config") or {}
    words = [f"{str(config.get('cell', '?')).upper()} {config.get('layers', '?')}x{config.get('hidden', '?')}"]
    state = payload.get("state") or {}
    step = state.get("step")
    if isinstance(step, int):
        words.append(f"step {step:,}")
    val = payload.get("val_nats_per_char")
    if val is None:
        words.append("not validated")
        return ", ".join(words)
    validated_at = next((entry.get("step") for entry in reversed(state.get("history") or [])
                         if entry.get("val_nats_per_char") == val), step)
    if validated_at is not None and validated_at != step:
        return ", ".join(words) + f"; {val:.2f} nats/char at step {validated_at:,}"
    return ", ".join(words + [f"{val:.2f} nats/char"])


def find_in_run(run_dir: Path, prefer: str = "best.pt") -> Path:
    """A run folder's best checkpoint (lowest validation loss), else its last one; with
    `prefer="last.pt"` (resuming) the other way round."""
    names = ("best.pt", "last.pt") if prefer == "best.pt" else ("last.pt", "best.pt")
    for name in names:
        if (run_dir / name).is_file():
            return run_dir / name
    raise UsageError(f"{run_dir}: folder holds no best.pt or last.pt")


def latest_checkpoint(runs_dir: Path = DEFAULT_RUNS_DIR) -> Path:
    """The checkpoint of the most recently written run anywhere under `runs_dir`: the
    folders of `charlm compare` (runs/<name>/<cell>/) count as much as those of `train`.
    Hidden folders (the token cache, .cache) are not looked in."""
    newest: tuple[float, Path] | None = None
    for folder, dirnames, filenames in os.walk(runs_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in ("best.pt", "last.pt"):
            if name in filenames:
                path = Path(folder) / name
                try:
                    written = path.stat().st_mtime
                except OSError:  # removed meanwhile
                    continue
                if newest is None or written > newest[0]:
                    newest = (written, path)
    if newest is None:
        raise UsageError(f"no trained model under {runs_dir}/: run 'charlm train' first, or name a checkpoint")
    return find_in_run(newest[1].parent)


def trained_on_bytes(payload: dict[str, Any]) -> bool:
    """Whether the model's training text had byte-fallback tokens, so that its byte head
    learned something and sampling may draw them.

    Checkpoints from before charlm counted them (corpus.byte_tokens) are judged by their
    vocabulary: a char vocabulary learned without --vocab-size has a token for every
    character of its text (bytes only for U+2581 and lone surrogates), so no; any other may
    have needed bytes, so yes, and sampling still keeps them to valid UTF-8."""
    corpus = payload.get("corpus") or {}
    if "byte_tokens" in corpus:
        return corpus["byte_tokens"] > 0
    config = payload.get("train_config") or {}
    return not (config.get("tokenizer", "char") == "char" and config.get("vocab_size") is None)
