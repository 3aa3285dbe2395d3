"""charlm's training step next to the same RNN trained in bare PyTorch, in one process.

The baseline is the least a training step can do: embedding, nn.LSTM or nn.GRU, a linear
head over the whole vocabulary (charlm's factored head skips the 256 byte-fallback rows
unless --plain-head), cross-entropy, backward and a fused torch.optim.Adam step, with the
carried state detached; both at the precision charlm's `--precision` (default auto) picks
for the cell and device: bf16 autocast on a GPU, and for an LSTM on a CPU with native bf16;
float32 elsewhere. charlm's
side is its real loop, `Trainer.run`: batching from the token array, the learning-rate
schedule, forward, backward, gradient clipping, AdamW, the finiteness check, the log
window, log.jsonl and the rich progress line (drawn into a buffer). Its
periodic validation is left out here and measured on its own by --eval-share. Rounds of
the two alternate, so a busy machine slows both alike; the medians are compared. On a GPU
it also counts the host syncs of charlm's training steps (torch.cuda's sync debug mode):
there should be none between logging points.

    python bench/step_speed.py                       # LSTM and GRU, 2 x 512, batch 64 x 100 (target >= 0.9)
    python bench/step_speed.py --cells lstm --steps 5 --rounds 3     # a quicker look
    python bench/step_speed.py --plain-head          # charlm without its factored output head
    python bench/step_speed.py --precision fp32      # both in float32 (on a CPU with bf16: the other bar)
    python bench/step_speed.py --eval-share 60       # share of a 60 s default run spent validating (<= 5%)
    python bench/step_speed.py --device cuda --cells lstm --hidden 1024 --batch 128 --seq 256   # the GPU bar
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from charlm.config import ModelConfig, TrainConfig
from charlm.errors import CharlmError
from charlm.features import BUILTIN_TEXT
from charlm.model import CharRNN
from charlm.progress import RichReporter
from charlm.tokenizer import train_tokenizer
from charlm.train import Trainer

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "tinyshakespeare.txt"


def corpus_text() -> str:
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_text(encoding="utf-8")
    return BUILTIN_TEXT * 200


class Bare(nn.Module):
    def __init__(self, cell: str, vocab: int, embedding: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, embedding)
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](embedding, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, h):
        out, h = self.rnn(self.embed(x), h)
        return self.head(out), h


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_steps(model: Bare, opt, tokens: torch.Tensor, batch: int, seq: int, steps: int, state: dict,
               bf16: bool = False) -> float:
    """`steps` training steps; the token array already lives on the model's device."""
    device = tokens.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        i = state["pos"]
        if i + batch * (seq + 1) >= len(tokens):
            i = 0
        chunk = tokens[i : i + batch * (seq + 1)].view(batch, seq + 1)
        state["pos"] = i + batch * (seq + 1)
        with autocast:
            logits, h = model(chunk[:, :-1], state["h"])
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), chunk[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["h"] = tuple(t.detach() for t in h) if isinstance(h, tuple) else h.detach()
    synchronize(device)
    return time.perf_counter() - start


def charlm_steps(trainer: Trainer, steps: int) -> float:
    trainer.config.max_steps = trainer.state.step + steps
    synchronize(trainer.device)
    start = time.perf_counter()
    trainer.run()
    synchronize(trainer.device)
    return time.perf_counter() - start


def count_syncs(trainer: Trainer, steps: int) -> int:
    """Host syncs in `steps` of charlm's training steps (CUDA only)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                trainer.train_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message) and "prototype" not in str(w.message)]
    for w in syncs[:3]:
        print(f"  sync: {w.message}", flush=True)
    return len(syncs)


def make_trainer(cell, tokenizer, tokens, args, folder: Path, val_tokens=None, **train) -> Trainer:
    bytes_from = -1 if getattr(args, "plain_head", False) else tokenizer.bytes_from
    config = ModelConfig(tokenizer.vocab_size, cell, args.layers, args.hidden, args.embedding, bytes_from=bytes_from)
    torch.manual_seed(0)
    model = CharRNN(config)
    tc = TrainConfig(batch_size=args.batch, seq_len=args.seq, sample_length=0,
                     precision=getattr(args, "precision", "auto"), **train)
    reporter = RichReporter(Console(file=io.StringIO(), force_terminal=True, width=120))
    folder.mkdir(parents=True, exist_ok=True)
    val = val_tokens if val_tokens is not None else tokens[:0]
    device = torch.device(getattr(args, "device", "cpu"))
    trainer = Trainer(model, tokenizer, tokens, val, len(val), tc, folder, device, reporter)
    trainer.threads = None  # a fixed thread count on both sides (busy.py measures the tuner)
    return trainer


def compare_step(cell: str, tokenizer, tokens: np.ndarray, args, folder: Path) -> None:
    trainer = make_trainer(cell, tokenizer, tokens, args, folder / cell, schedule="linear")
    trainer._validate_and_save = lambda: None  # validation is measured by --eval-share
    device = torch.device(args.device)
    bf16 = trainer.precision.name == "bf16"
    torch.manual_seed(0)
    bare = Bare(cell, tokenizer.vocab_size, args.embedding, args.hidden, args.layers).to(device)
    opt = torch.optim.Adam(bare.parameters(), lr=1e-3, fused=True)
    state = {"pos": 0, "h": None}
    as_tensor = torch.from_numpy(tokens.astype(np.int64)).to(device)
    bare_steps(bare, opt, as_tensor, args.batch, args.seq, 2, state, bf16)  # warm up both
    charlm_steps(trainer, 2)
    if device.type == "cuda":
        print(f"{cell.upper()}: host syncs in 20 charlm training steps: {count_syncs(trainer, 20)} "
              "(target 0)", flush=True)
    times = {"bare": [], "charlm": []}
    for _ in range(args.rounds):
        times["bare"].append(bare_steps(bare, opt, as_tensor, args.batch, args.seq, args.steps, state, bf16)
                             / args.steps)
        times["charlm"].append(charlm_steps(trainer, args.steps) / args.steps)
    chars = args.batch * args.seq
    bare_t, ours_t = statistics.median(times["bare"]), statistics.median(times["charlm"])
    print(f"{cell.upper()} {args.layers}x{args.hidden}, batch {args.batch} x {args.seq}, {trainer.precision.name}: "
          f"bare {chars / bare_t:9,.0f} chars/s ({bare_t * 1000:.0f} ms/step), "
          f"charlm {chars / ours_t:9,.0f} chars/s ({ours_t * 1000:.0f} ms/step); "
          f"ratio {bare_t / ours_t:.3f} (target >= 0.9)", flush=True)


def eval_share(tokenizer, tokens: np.ndarray, seconds: float, folder: Path) -> None:
    """A default run (default model and batch) with its periodic validation on a 10% split."""
    cut = int(len(tokens) * 0.9)
    defaults = argparse.Namespace(**{k: getattr(ModelConfig, k) for k in ("layers", "hidden", "embedding")},
                                  batch=TrainConfig.batch_size, seq=TrainConfig.seq_len)
    trainer = make_trainer(ModelConfig.cell, tokenizer, tokens[:cut], defaults, folder / "share",
                           val_tokens=tokens[cut:], time_budget=seconds)
    start = time.perf_counter()
    result = trainer.run()
    wall = time.perf_counter() - start
    validations = sum(1 for e in trainer.state.history if "val_nats_per_char" in e)
    print(f"default run of {seconds:g} s: {wall:.1f} s wall, {result.elapsed:.1f} s in training steps, "
          f"{validations} validations of {len(tokens) - cut:,} tokens; everything else "
          f"{(wall - result.elapsed) / wall:.1%} of the wall time (target <= 5%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru"])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--embedding", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10, help="steps per round")
    parser.add_argument("--plain-head", action="store_true",
                        help="charlm with one softmax over all tokens, as the baseline has, "
                             "instead of its factored head")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="of both sides, as charlm train --precision picks it")
    parser.add_argument("--eval-share", type=float, metavar="SECONDS",
                        help="instead: time a default run this long and report what validation costs")
    args = parser.parse_args()
    text = corpus_text()
    tokenizer = train_tokenizer([text], "char")
    tokens = tokenizer.encode(text)
    where = (torch.cuda.get_device_name() if args.device == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    print(f"torch {torch.__version__}, {where}, {len(tokens):,} tokens", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.eval_share:
            eval_share(tokenizer, tokens, args.eval_share, Path(tmp))
            return
        for cell in args.cells:
            try:
                compare_step(cell, tokenizer, tokens, args, Path(tmp))
            except CharlmError as e:
                sys.exit(f"step_speed: {e}")


if __name__ == "__main__":
    main()
