"""Training: teacher forcing and truncated backpropagation through time over contiguous streams.

Each step feeds `seq_len` true characters of every stream (teacher forcing), backpropagates
through those steps only, and carries the detached hidden state into the next step, so the
model sees unbroken text while gradients stay bounded in length. AdamW with gradient-norm
clipping; the learning rate warms up, then decays over whichever stop was given (steps,
epochs or a time budget). Validation runs over the held-out split (its first 500,000
tokens at most), paced so that it and the progress samples take a few percent of the
time. `best.pt` keeps the lowest validation loss, `last.pt` the latest state; both are
enough to resume exactly.
"""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from . import __version__
from .checkpoint import find_in_run, load_checkpoint, save_checkpoint, tokenizer_from_checkpoint
from .corpus import Corpus
from .data import count_byte_tokens, encode_corpus, learn_vocabulary, split_tokens
from .directions import build_model, check_supported, evaluate_readers, progress_sample, training_batches
from .distributed import Dist, from_environment, shutdown
from .errors import CharlmError, UsageError
from .evaluate import evaluate_tokens
from .config import LR_BY_CELL, ModelConfig, TrainConfig
from .jamo import choose_kind
from .model import CharRNN, detach_hidden
from .precision import resolve_precision
from .progress import NullReporter, Reporter
from .scheduled import always_forced, teacher_forcing_at
from .sizing import plan_run
from .threads import thread_tuner, use_available_cpus
from .tokenizer import Tokenizer, describe_vocabulary

_STOP, _INTERRUPT, _VALIDATE = 1, 2, 4  # what the ranks agree on before a step
EVAL_SHARE = 0.03  # at most this share of training time goes to periodic validation and samples
MAX_BAD_STEPS = 8  # consecutive non-finite steps before training gives up
VALIDATION_TOKENS = 500_000  # held-out tokens each validation reads, at most
WARMUP_SHARE = 0.1  # the warmup never lasts longer than this share of the run
AGREE_EVERY = 16  # steps between the agreements of torchrun's ranks on time, signals and validation


@dataclass
class TrainState:
    """Where a run is: everything besides weights and optimizer that resuming needs."""

    step: int = 0
    epoch: int = 0
    batch_index: int = 0  # next batch within the epoch
    elapsed: float = 0.0  # seconds spent training, across resumes
    best_val: float = math.inf  # nats per char
    lr_scale: float = 1.0  # halved after each non-finite step
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    elapsed: float
    best_val: float  # nats per char
    last_val: float | None
    chars_per_sec: float
    stopped_by: str
    main_process: bool = True  # False on the ranks of a torchrun run other than rank 0


def pick_device(name: str) -> torch.device:
    """The device to compute on; on a CPU, torch's threads are set to the cores this process
    may use (threads.py)."""
    device = _device(name)
    if device.type == "cpu":
        use_available_cpus()
    return device


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: no Apple GPU is available")
    if name not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device: expected auto, cpu, cuda or mps, got {name!r}")
    return torch.device(name)


def lr_at(config: TrainConfig, step: int, progress: float) -> float:
    """Learning rate for `step`, `progress` being the fraction of the run done (0..1).

    The rate warms up linearly over `warmup_steps`. A decaying schedule, which the stop
    shapes anyway, also ends the warmup by the first tenth of the run, so a short run is
    not spent warming up; a constant one never depends on the stop."""
    warm = 1.0
    if config.warmup_steps:
        warm = (step + 1) / config.warmup_steps
        if config.schedule != "constant":
            warm = max(warm, progress / WARMUP_SHARE)
        warm = min(1.0, warm)
    if config.schedule == "constant":
        return config.lr * warm
    floor = config.min_lr_fraction
    progress = min(max(progress, 0.0), 1.0)
    if config.schedule == "cosine":
        decay = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    else:
        decay = 1 - (1 - floor) * progress
    return config.lr * warm * decay


class Trainer:
    """Owns a run: model, optimizer, data position, carried state, and its folder."""

    def __init__(
        self,
        model: CharRNN,
        tokenizer: Tokenizer,
        train_tokens: np.ndarray,
        val_tokens: np.ndarray,
        val_chars: int,
        config: TrainConfig,
        out_dir: Path,
        device: torch.device,
        reporter: Reporter | None = None,
        corpus_info: dict[str, Any] | None = None,
        dist: Dist | None = None,
    ):
        self.dist = dist or Dist()
        self.model = model.to(device)
        # Under torchrun, DistributedDataParallel averages the gradients of all ranks. On a CPU the
        # byte head is used only by steps with a byte target, so DDP must look for unused parameters.
        unused = model.factored and device.type != "cuda"
        self.ddp = (DistributedDataParallel(self.model, find_unused_parameters=unused) if self.dist.active
                    else self.model)
        self.tokenizer = tokenizer
        self.config = config
        self.out_dir = Path(out_dir)
        self.device = device
        if config.lr is None:  # a trainer built without plan_run: the cell's own rate
            config.lr = LR_BY_CELL[model.config.cell]
        self.reporter = reporter or NullReporter()
        self.corpus_info = corpus_info or {}
        # A backward model reads the split reversed; a biLM both ways at once (directions.py).
        self.batches = training_batches(model.config.direction, train_tokens, config.batch_size, config.seq_len,
                                        rank=self.dist.rank, world=self.dist.world)
        self.val_tokens, self.val_chars = val_tokens, val_chars
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (decay if p.dim() >= 2 and not name.startswith("embed") else no_decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
            betas=(0.9, 0.99),
            # One kernel for all tensors instead of a loop of small ones per tensor, on a CPU too.
            fused=device.type in ("cpu", "cuda"),
        )
        # On a GPU a step must not wait for the device: the optimizer skips a non-finite step
        # itself, and the host learns of it at the next logging point (see train_step).
        self.defer_checks = device.type == "cuda"
        self.state = TrainState()
        self.hidden = model.init_hidden(config.batch_size, device)
        # Master weights, optimizer state and checkpoints stay float32 under either precision.
        self.precision = resolve_precision(config.precision, device, model.config.cell, model.config.hidden)
        self.autocast = self.precision.autocast(device)
        self.threads = thread_tuner(device)  # None where the thread count is fixed
        self.lr = config.lr
        self.teacher_forcing = config.teacher_forcing  # this step's probability of a true input
        self.val_by_direction: dict[str, float] = {}  # the last validation, per language model
        self._bad_steps = 0  # non-finite steps in a row

    # -- the schedule -----------------------------------------------------------------------
    def progress(self) -> float:
        """Fraction of the run done, by whichever stop comes first."""
        c, s = self.config, self.state
        done = []
        if c.max_steps:
            done.append(s.step / c.max_steps)
        if c.epochs:
            done.append((s.epoch + s.batch_index / max(self.batches.batches_per_epoch, 1)) / c.epochs)
        if c.time_budget:
            done.append(s.elapsed / c.time_budget)
        return max(done) if done else 0.0

    # -- one step ---------------------------------------------------------------------------
    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """One optimizer step; returns (loss, grad norm, all finite) tensors, or None if it was
        skipped. With deferred checks a non-finite step is not skipped here but left undone by
        the optimizer, and returned with finite False."""
        c, s = self.config, self.state
        if s.batch_index >= self.batches.batches_per_epoch:
            s.epoch += 1
            s.batch_index = 0
            self.hidden = self.model.init_hidden(c.batch_size, self.device)
        x, y = self.batches.get(s.batch_index)
        if self.device.type == "cuda":  # from page-locked memory the copy does not block the host
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.lr = lr_at(c, s.step, self.progress()) * s.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.teacher_forcing = teacher_forcing_at(c, self.progress())
        # Only below 1 does the model hear of it: the default step is the call it always was.
        forcing = {"teacher_forcing": self.teacher_forcing} if self.teacher_forcing < 1 else {}
        self.model.train()
        with self.autocast:
            _, loss, hidden = self.ddp(x, self.hidden, y, **forcing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = c.grad_clip if c.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        if self.defer_checks:
            # No host sync: the fused optimizer leaves the weights and its state alone where
            # found_inf is 1, and streams whose state went bad restart from zeros.
            self.optimizer.found_inf = (~finite).float()
            self.optimizer.step()
            self.hidden = _zero_unless(finite, detach_hidden(hidden))
        else:
            if not bool(finite):
                self._skip_bad_step(s.step)
                return None
            self.optimizer.step()
            self.hidden = detach_hidden(hidden)
        s.batch_index += 1
        s.step += 1
        return loss.detach(), grad_norm.detach(), finite

    def _skip_bad_step(self, step: int, reset_state: bool = True) -> None:
        """A NaN/inf loss or gradient at `step`: the update is dropped, the streams' state
        restarts and the rate halves."""
        s = self.state
        s.lr_scale *= 0.5
        self.log({"step": step, "event": "non-finite loss, step skipped", "lr_scale": s.lr_scale})
        if reset_state:
            self.hidden = self.model.init_hidden(self.config.batch_size, self.device)
        self._bad_steps += 1
        self.reporter.message(f"step {step}: non-finite loss, update skipped, learning rate x{s.lr_scale:g}")
        if self._bad_steps >= MAX_BAD_STEPS:
            raise CharlmError(
                f"training diverged: {MAX_BAD_STEPS} non-finite steps in a row at step {step}; "
                f"try a lower --lr or a --grad-clip; {self.out_dir / 'best.pt'} holds the best model so far"
            )

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> float | None:
        """Held-out nats per character; a biLM's is the mean of its two models' (each is kept
        in val_by_direction), so that best.pt keeps the best pair."""
        if len(self.val_tokens) < 2:
            return None
        if self.model.config.direction == "forward":
            results = {"forward": evaluate_tokens(self.model, self.val_tokens, self.val_chars, self.device)}
        else:
            results = evaluate_readers(self.model, self.val_tokens, self.tokenizer.count_chars, self.device)
        self.val_by_direction = {d: r.nats_per_char for d, r in results.items()}
        return sum(self.val_by_direction.values()) / len(results)

    def sample_text(self) -> str:
        if self.config.sample_length <= 0:
            return ""
        gen = torch.Generator().manual_seed(self.state.step)
        return progress_sample(self.model, self.tokenizer, self.config.sample_length, gen, self.device,
                               bytes_seen=self.corpus_info.get("byte_tokens", 1) > 0)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> TrainResult:
        try:
            return self._run()
        finally:
            if self.threads is not None:  # the next run in this process starts from the same count
                self.threads.restart()

    def _run(self) -> TrainResult:
        c, s = self.config, self.state
        self._bad_steps = 0
        # A biLM's step reads every chunk twice, once each way.
        chars_per_step = c.batch_size * c.seq_len * (2 if self.model.config.direction == "both" else 1)
        last_val: float | None = None
        last_val_step: int | None = None  # the step last_val was measured at
        eval_cost = 0.0  # seconds the last validation + sample took
        next_eval = None
        window = _LogWindow(c.grad_clip, chars_per_step)
        chars_per_sec = 0.0
        shown_loss = math.nan
        interrupted = None
        self.reporter.start(self.progress())
        with _graceful_interrupts() as stop_flag:
            while True:
                # Under torchrun every rank acts on the same flags at the same step. Stops by
                # steps or epochs come at the same step everywhere; the clock, signals and
                # validation are agreed on every AGREE_EVERY steps, so that a GPU step does
                # not wait for the ranks to talk.
                agree = not self.dist.active or s.step % AGREE_EVERY == 0
                stop = self._stop_reason_now(clock=agree)
                flags = (_STOP if stop else 0) | (_INTERRUPT if stop_flag.signal and agree else 0)
                if (agree and self.dist.is_main and next_eval is not None and s.elapsed >= next_eval
                        and not stop):
                    flags |= _VALIDATE
                if agree or stop:
                    flags = self.dist.any_rank(flags, self.device)
                if flags & _INTERRUPT:
                    interrupted = stop_flag.signal or "another rank's signal"
                    stop = f"interrupted by {interrupted}"
                    break
                if flags & _STOP:
                    stop = stop or "a stop reached on another rank"
                    break
                if flags & _VALIDATE:
                    t_eval = time.perf_counter()
                    last_val = self._validate_and_save()
                    last_val_step = s.step if last_val is not None else last_val_step
                    if self.dist.is_main:
                        self.reporter.sample(s.step, self.sample_text())
                    eval_cost = time.perf_counter() - t_eval
                    interval = eval_cost / EVAL_SHARE
                    next_eval = s.elapsed + interval
                    progress = self.progress()
                    if progress > 0 and next_eval > s.elapsed / progress - interval / 2:
                        next_eval = math.inf  # the final validation comes soon enough
                    window.restart_clock()
                t0 = time.perf_counter()
                out = self.train_step()
                s.elapsed += time.perf_counter() - t0
                if out is None:
                    continue
                if not self.defer_checks:
                    self._bad_steps = 0
                window.add(*out)
                if c.checkpoint_every and s.step % c.checkpoint_every == 0:
                    self.save("last.pt", last_val)
                if window.due():
                    shown_loss, chars_per_sec = self._report(window, last_val)
                    if next_eval is None:
                        # First validation once the steady pace is known, never past 10% of the run.
                        step_time = chars_per_step / max(chars_per_sec, 1e-9)
                        guess = 0.5 * step_time * len(self.val_tokens) / chars_per_step
                        next_eval = s.elapsed + max(guess / EVAL_SHARE, 5.0)
                        if c.time_budget:
                            next_eval = min(next_eval, 0.1 * c.time_budget)
            if window.steps:
                shown_loss, _ = self._report(window, last_val)
            if interrupted:
                # Save at once: a full validation could outlast a SIGTERM's grace period or
                # the user's patience, and a second Ctrl-C would then lose the steps since
                # the last checkpoint.
                self.save("last.pt", last_val)
            else:
                final_val = self._validate_and_save()
                if final_val is not None:
                    last_val, last_val_step = final_val, s.step
                    if len(self.val_by_direction) > 1:
                        self.reporter.message("validation: " + ", ".join(
                            f"{d} {v:.4f} nats/char = {v / math.log(2):.4f} bits/char"
                            for d, v in self.val_by_direction.items()) + "; the line below gives their mean")
        self.reporter.finish(step=s.step, loss=shown_loss, val=last_val, elapsed=s.elapsed,
                             val_step=last_val_step, interrupted=bool(interrupted))
        if interrupted:
            raise CharlmError(
                f"interrupted at step {s.step}; {self.out_dir / 'last.pt'} is saved; "
                f"resume with: charlm train --resume {self.out_dir / 'last.pt'}"
            )
        return TrainResult(self.out_dir, s.step, s.elapsed, s.best_val, last_val, chars_per_sec, stop or "",
                           self.dist.is_main)

    def _report(self, window: _LogWindow, last_val: float | None) -> tuple[float, float]:
        """Log and show the window's mean loss, gradient norm and speed; returns (loss, chars/s)."""
        c, s = self.config, self.state
        entry, finite = window.close()
        if self.defer_checks:  # now the host learns which of the window's steps were skipped
            first = s.step - len(finite)  # the step count when the window's first step began
            for n, ok in enumerate(finite):
                if ok:
                    self._bad_steps = 0
                else:
                    self._skip_bad_step(first + n, reset_state=False)
        if self.device.type == "cpu":
            entry["threads"] = torch.get_num_threads()  # the window's, before the tuner moves it
        if not always_forced(c):
            entry["teacher_forcing"] = round(self.teacher_forcing, 4)  # at the window's last step
        self.log({"step": s.step, **entry, "lr": self.lr, "elapsed": round(s.elapsed, 3)})
        if self.threads is not None:
            changed = self.threads.observe(entry["chars_per_sec"])
            if changed is not None:
                self.reporter.message(f"step {s.step}: training on {changed} thread{'s' if changed > 1 else ''} "
                                      "from now on, the faster count while other programs share the CPU")
        self.reporter.update(step=s.step, loss=entry["loss"], val=last_val, chars_per_sec=entry["chars_per_sec"],
                             progress=self.progress(), elapsed=s.elapsed, grad_norm=entry["grad_norm"],
                             clip_rate=entry["clip_rate"])
        return entry["loss"], entry["chars_per_sec"]

    def _stop_reason_now(self, clock: bool = True) -> str | None:
        """Why the run stops now, if it does; with clock False, the time budget is not looked at."""
        c, s = self.config, self.state
        if c.max_steps is not None and s.step >= c.max_steps:
            return f"{c.max_steps} steps"
        if c.epochs is not None and s.epoch + s.batch_index / max(self.batches.batches_per_epoch, 1) >= c.epochs:
            return f"{c.epochs:g} epochs"
        if clock and c.time_budget is not None and s.elapsed >= c.time_budget:
            return f"time budget of {c.time_budget:g}s"
        return None

    def _validate_and_save(self) -> float | None:
        """Validate (rank 0) and write last.pt, and best.pt when validation improved."""
        s = self.state
        val = self.validate() if self.dist.is_main else None
        names = ["last.pt"]
        if val is not None:
            entry = {"step": s.step, "val_nats_per_char": val, "elapsed": round(s.elapsed, 3)}
            if len(self.val_by_direction) > 1:  # a biLM: its two models' figures, val being their mean
                entry["val_by_direction"] = dict(self.val_by_direction)
            s.history.append(entry)
            self.log(entry)
            self.reporter.validated(step=s.step, val=val)
            if math.isfinite(val) and val < s.best_val:
                s.best_val = val
                names.insert(0, "best.pt")
        self.save(names, val)
        return val

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint_payload(self, val: float | None) -> dict[str, Any]:
        """Everything a checkpoint holds, all on the CPU and the carried state in float32 (bf16
        under CUDA autocast), so a run from a GPU loads, samples and resumes on a laptop.
        Under torchrun every rank calls this together: the carried state of all ranks'
        streams is gathered into one."""
        hidden = self.hidden if isinstance(self.hidden, tuple) else (self.hidden,)
        hidden = tuple(self.dist.gather_streams(h) for h in hidden)
        return {
            "charlm_version": __version__,
            "model_config": asdict(self.model.config),
            "train_config": asdict(self.config),
            "tokenizer": {"kind": self.tokenizer.kind, "model": self.tokenizer.model},
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": _on_cpu(self.optimizer.state_dict()),
            "state": asdict(self.state),
            "hidden": [h.detach().float().cpu() for h in hidden],
            "rng": _rng_state(),
            "rng_ranks": self.dist.gather(_rng_state()),  # under torchrun each rank draws its own dropout masks
            "corpus": self.corpus_info,
            "val_nats_per_char": val,
        }

    def log(self, entry: dict[str, Any]) -> None:
        """Append one line to the run's log.jsonl (steps, losses, gradient norms, validations)."""
        if not self.dist.is_main:
            return
        with open(self.out_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def save(self, names: str | list[str], val: float | None) -> None:
        payload = self.checkpoint_payload(val)
        if self.dist.is_main:
            for name in [names] if isinstance(names, str) else names:
                save_checkpoint(self.out_dir / name, payload)

    def restore(self, payload: dict[str, Any]) -> None:
        """Continue exactly where the checkpoint left off."""
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.state = TrainState(**payload["state"])
        # The checkpoint holds every stream's state; this rank continues its own share.
        b, r = self.config.batch_size, self.dist.rank
        hidden = [h[:, r * b : (r + 1) * b].to(self.device) for h in payload["hidden"]]
        self.hidden = tuple(hidden) if self.model.config.cell == "lstm" else hidden[0]
        ranks = payload.get("rng_ranks") or [payload["rng"]]
        if len(ranks) == self.dist.world:
            _set_rng_state(ranks[self.dist.rank])
        else:  # the streams were shared out anew: so are the random draws
            torch.manual_seed(_rank_seed(self.config.seed, self.dist.rank, self.state.step))


class _LogWindow:
    """Losses and gradient norms of the steps since the last logging point.

    They stay on the device until the window closes: reading a loss back waits for the
    device, so that happens only at logging points (twice a second or every 50 steps).
    """

    def __init__(self, grad_clip: float, chars_per_step: int):
        self.grad_clip, self.chars_per_step = grad_clip, chars_per_step
        self.losses: list[torch.Tensor] = []
        self.norms: list[torch.Tensor] = []
        self.finite: list[torch.Tensor] = []
        self.restart_clock()

    @property
    def steps(self) -> int:
        return len(self.losses)

    def restart_clock(self) -> None:
        """Start timing afresh (after a pause for validation, which is not training speed)."""
        self.start = time.perf_counter()
        self.timed_steps = self.steps

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, finite: torch.Tensor) -> None:
        self.losses.append(loss)
        self.norms.append(grad_norm)
        self.finite.append(finite)

    def due(self) -> bool:
        return self.steps >= 50 or (self.steps > 0 and time.perf_counter() - self.start >= 0.5)

    def close(self) -> tuple[dict[str, Any], list[bool]]:
        """The window's figures over its finite steps, and which of its steps were finite."""
        finite = torch.stack(self.finite).cpu()
        seconds = max(time.perf_counter() - self.start, 1e-9)  # after the wait for the device
        norms = torch.stack(self.norms).float().cpu()[finite]  # before clipping
        entry = {
            "loss": float(torch.stack(self.losses).float().cpu()[finite].mean()),
            "grad_norm": float(norms.mean()),
            # Share of the steps whose gradient was clipped; None when clipping is off.
            "clip_rate": float((norms > self.grad_clip).float().mean()) if self.grad_clip > 0 else None,
            "chars_per_sec": round((self.steps - self.timed_steps) * self.chars_per_step / seconds),
        }
        self.losses, self.norms, self.finite = [], [], []
        self.restart_clock()
        return entry, finite.tolist()


def _on_cpu(state: Any) -> Any:
    """A copy of nested dicts and lists with every tensor moved to the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: _on_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_on_cpu(v) for v in state)
    return state


def _zero_unless(keep: torch.Tensor, hidden):
    """`hidden` if the 0-d bool `keep` is true, else zeros of its shape and dtype, chosen on the device."""
    if isinstance(hidden, tuple):
        return tuple(torch.where(keep, h, 0.0) for h in hidden)
    return torch.where(keep, hidden, 0.0)


def _rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A seed of its own for each rank of a torchrun run (and each step it resumes at)."""
    return int(np.random.SeedSequence([seed % 2**64, rank, step]).generate_state(1, np.uint64)[0] >> 1)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _StopFlag:
    signal: str | None = None


@contextmanager
def _graceful_interrupts():
    """First Ctrl-C or SIGTERM: finish the step, save, stop. A second Ctrl-C: stop at once."""
    flag = _StopFlag()

    def handler(signum, frame):
        if flag.signal is not None:
            raise KeyboardInterrupt
        flag.signal = signal.Signals(signum).name

    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals alone
        previous = {}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# -- putting a run together ---------------------------------------------------------------------
def prepare_out_dir(out: Path | None, corpus: Corpus, cell: str, runs_dir: Path,
                    created: list[Path] | None = None) -> Path:
    """The run folder, made if need be; the folders made are appended to `created`."""
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = runs_dir / f"{stamp}-{_safe(corpus.name)}-{cell}"
        n = 1
        while out.exists():
            n += 1
            out = runs_dir / f"{stamp}-{_safe(corpus.name)}-{cell}-{n}"
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, not a folder")
    if (out / "last.pt").exists() or (out / "best.pt").exists():
        raise UsageError(f"--out {out}: already holds a run; continue it with --resume {out / 'last.pt'} "
                         "or choose another --out")
    _make_folder(out, created)
    return out


def _make_folder(out: Path, created: list[Path] | None) -> None:
    missing = [folder for folder in [out, *out.parents] if not folder.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CharlmError(f"--out {out}: cannot create the folder: {e.strerror}") from None
    if created is not None:
        created.extend(reversed(missing))


def _safe(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name).strip("-.")
    return cleaned[:40] or "corpus"


def _fit_to_corpus(config: TrainConfig, n_train: int, reporter: Reporter) -> None:
    """Shrink the batch (then the sequence) so a short corpus still gives at least one batch."""
    if n_train < 2:
        raise UsageError(f"corpus too short: {n_train} training tokens; at least 2 are needed")
    if n_train // config.batch_size >= config.seq_len + 1:
        return
    batch = max(1, n_train // (config.seq_len + 1))
    if batch == 1 and n_train < config.seq_len + 1:
        seq_len = n_train - 1
        reporter.message(f"corpus is short ({n_train} tokens): using --batch-size 1 --seq-len {seq_len}")
        config.batch_size, config.seq_len = 1, seq_len
    else:
        reporter.message(f"corpus is short ({n_train} tokens): --batch-size {config.batch_size} needs "
                         f"{config.batch_size * (config.seq_len + 1)}; using --batch-size {batch}")
        config.batch_size = batch


def train(
    corpus: Corpus | None,
    model_options: dict[str, Any] | None = None,
    train_options: dict[str, Any] | None = None,
    out: Path | None = None,
    resume: Path | None = None,
    runs_dir: Path = Path("runs"),
    reporter: Reporter | None = None,
) -> TrainResult:
    """Train a model on `corpus` (or continue the run in `resume`) and return where it went.

    `model_options` are ModelConfig fields and `train_options` TrainConfig fields; only the
    ones given are used, the rest keep their defaults (or, on resume, the run's values), except
    that a long run gets a wider model with dropout when it is not sized (sizing.py).
    """
    model_options = {k: v for k, v in (model_options or {}).items() if v is not None}
    train_options = {k: v for k, v in (train_options or {}).items() if v is not None}
    dist, device = from_environment(pick_device(train_options.get("device", "auto")))
    reporter = (reporter or NullReporter()) if dist.is_main else NullReporter()
    created: list[Path] = []  # the folders this run made, outermost first
    try:
        result = _train(corpus, model_options, train_options, out, resume, runs_dir, reporter, dist, device,
                        created)
        dist.barrier()  # rank 0 may still be writing; no rank leaves the group while another is busy
        return result
    except BaseException:
        # A run that fails before it writes anything (bad text, a corpus too short) leaves no
        # empty folder behind; rmdir removes only empty ones, so nothing written is ever lost.
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    finally:
        shutdown(dist)


def _train(corpus, model_options, train_options, out, resume, runs_dir, reporter, dist, device,
           created: list[Path]) -> TrainResult:
    payload = None
    if resume is not None:
        # A run folder resumes from its latest state, not from its best one.
        payload = load_checkpoint(find_in_run(Path(resume), prefer="last.pt") if Path(resume).is_dir() else resume)
        config, model_config = _resumed_configs(payload, train_options, model_options)
        try:
            resolve_precision(config.precision, device, model_config.cell)
        except UsageError as e:
            if "precision" in train_options:
                raise
            raise UsageError(f"this run was begun with {e}") from None
        check_supported(model_config.direction, config, dist.active, device)
        tokenizer = tokenizer_from_checkpoint(payload)
        if corpus is None:
            corpus = _stored_corpus(payload)
        out = Path(payload["path"]).parent if out is None else Path(out)
        # The run's streams are shared out anew when the number of processes changed.
        streams = payload["hidden"][0].shape[1]
        if streams % dist.world:
            raise UsageError(f"this run has {streams} streams, which {dist.world} processes cannot share evenly")
        config.batch_size = streams // dist.world
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out}: is a file, not a folder")
        _make_folder(out, created)
    else:
        if corpus is None:
            raise UsageError("no corpus given")
        config = TrainConfig(**train_options)
        config.validate()
        resolve_precision(config.precision, device, model_options.get("cell", ModelConfig.cell))  # fail early
        check_supported(model_options.get("direction", "forward"), config, dist.active, device)
        if not config.stop_given:
            config.epochs = 1.0
        # Rank 0 makes the folder and the vocabulary; the other ranks take them from it.
        if dist.is_main:
            out = prepare_out_dir(out, corpus, model_options.get("cell", "lstm"), runs_dir, created)
            config.tokenizer, chose = choose_kind(config.tokenizer, corpus.chunks())
            if chose:
                reporter.message(chose)
            tokenizer = learn_vocabulary(corpus, config.tokenizer, config.vocab_size, out.parent / ".cache",
                                         lambda: reporter.message(f"learning a {config.tokenizer} vocabulary "
                                                                  f"from {len(corpus.files)} file(s)"))
        out, model, kind = dist.broadcast((out, tokenizer.model, tokenizer.kind) if dist.is_main else None)
        tokenizer = tokenizer if dist.is_main else Tokenizer(model, kind)
        config.tokenizer = kind  # what `auto` chose, as the checkpoint records it
        model_config = ModelConfig(tokenizer.vocab_size, bytes_from=tokenizer.bytes_from, **model_options)
    torch.manual_seed(config.seed)

    cache_dir = out.parent / ".cache"
    if dist.is_main:
        with reporter.task("encoding corpus") as advance:
            tokens = encode_corpus(corpus, tokenizer, cache_dir, on_progress=advance)
    dist.barrier()  # the others read the token cache rank 0 wrote
    if not dist.is_main:
        tokens = encode_corpus(corpus, tokenizer, cache_dir)
    began_with = (payload.get("corpus") or {}).get("tokens") if payload is not None else None
    if began_with is not None and began_with != len(tokens):
        reporter.message(f"the corpus is not the text this run began on ({len(tokens):,} tokens, not {began_with:,}): "
                         "training goes on over it, its vocabulary unchanged")
    train_tokens, val_tokens = split_tokens(tokens, config.val_fraction)
    _fit_to_corpus(config, len(train_tokens) // dist.world, reporter)
    # Validation reads the start of the held-out split only, so that on a big corpus it takes
    # seconds, not minutes; `charlm eval` scores any held-out file whole.
    val_tokens = val_tokens[:VALIDATION_TOKENS]
    val_chars = tokenizer.count_chars(val_tokens[1:])
    if payload is None:  # the model and rate the user left open follow the run's length (sizing.py)
        if dist.is_main:
            model_config, config.lr, reason = plan_run(model_config, config, train_tokens, model_options, device,
                                                       dist.world)
            if reason:
                reporter.message(reason)
        model_config, config.lr = dist.broadcast((model_config, config.lr))

    model = build_model(model_config)
    if dist.active:  # the weights come from rank 0 (DistributedDataParallel); dropout masks differ by rank
        torch.manual_seed(_rank_seed(config.seed, dist.rank))
    # Whether the text had byte-fallback tokens: a model that never saw one is not asked to
    # write one when it samples (sample.py). A resumed run keeps what its earlier text had.
    byte_tokens = count_byte_tokens(tokens, tokenizer.bytes_from)
    if payload is not None:
        byte_tokens = max(byte_tokens, (payload.get("corpus") or {}).get("byte_tokens", 0))
    corpus_info = {"files": [str(f) for f in corpus.files[:1000]], "encoding": corpus.encoding,
                   "errors": corpus.errors, "tokens": len(tokens), "byte_tokens": byte_tokens}
    trainer = Trainer(model, tokenizer, train_tokens, val_tokens, val_chars, config, out, device,
                      reporter, corpus_info, dist)
    if payload is not None:
        trainer.restore(payload)
    threads = torch.get_num_threads()
    threads = f", {threads} thread{'s' if threads > 1 else ''}" if device.type == "cpu" else ""
    reporter.summary(
        out_dir=out, device=str(device) + threads + (f" x {dist.world} processes" if dist.active else ""),
        precision=trainer.precision.describe(),
        params=model.num_params(), vocab=describe_vocabulary(tokenizer),
        train_tokens=len(train_tokens), val_tokens=len(val_tokens), model=model_config, config=config,
        resumed_at=trainer.state.step if payload is not None else None,
    )
    return trainer.run()


# What a resumed run cannot change: its data layout and its vocabulary.
_FIXED_ON_RESUME = ("batch_size", "seq_len", "tokenizer", "vocab_size", "val_fraction")


def _resumed_configs(payload, train_options, model_options) -> tuple[TrainConfig, ModelConfig]:
    try:
        saved = TrainConfig(**payload["train_config"])
        model_config = ModelConfig(**payload["model_config"])
    except (KeyError, TypeError) as e:
        raise UsageError(f"{payload['path']}: damaged checkpoint: its configuration is missing or unreadable") from e
    for key, value in model_options.items():
        if getattr(model_config, key) != value:
            raise UsageError(f"--{key}: a resumed run keeps its model ({key}={getattr(model_config, key)})")
    for key, value in train_options.items():
        if key in _FIXED_ON_RESUME and value != getattr(saved, key):
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag}: a resumed run keeps its {flag} ({getattr(saved, key)})")
        setattr(saved, key, value)
    saved.validate()
    return saved, model_config


def _stored_corpus(payload) -> Corpus:
    info = payload.get("corpus") or {}
    files = tuple(Path(f) for f in info.get("files", []))
    missing = [f for f in files if not f.is_file()]
    if not files or missing:
        raise UsageError(f"the corpus of this run is gone ({missing[0] if missing else 'not recorded'}); "
                         "name it on the command line")
    return Corpus(files, info.get("encoding", "utf-8"), info.get("errors", "strict"))
