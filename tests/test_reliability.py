"""Reliability guarantees: what a user can count on when things go wrong.

Loading a checkpoint never runs code from it; a save is atomic, so kill -9, a full disk or
an unwritable folder leaves the previous checkpoint whole and loadable; Ctrl-C and SIGTERM
save `last.pt` and say how to resume, a second Ctrl-C stops at once; a resumed run goes on
bit for bit as if it had never stopped; a NaN/inf step is skipped with a lower learning
rate, a run that keeps diverging stops with a message, and best.pt never gets a NaN model.
"""

from __future__ import annotations

import errno
import importlib
import json
import math
import os
import pickle
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from charlm.checkpoint import FORMAT, VERSION, load_checkpoint, model_from_checkpoint, save_checkpoint
from charlm.cli import main
from charlm.errors import CharlmError
from charlm.model import CharRNN
from charlm.train import MAX_BAD_STEPS, Trainer, lr_at

from .conftest import make_text

train_module = importlib.import_module("charlm.train")  # `charlm.train` is also the function

# Two layers with dropout between them: resuming must restore the RNG, not just the weights.
SMALL_MODEL = ["--layers", "2", "--hidden", "24", "--embedding", "8", "--dropout", "0.3"]
SMALL_RUN = ["--batch-size", "4", "--seq-len", "16", "--sample-length", "0", "--seed", "5",
             "--warmup-steps", "6", "--lr", "0.01"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    # About 21 batches of 4 x 16 per epoch, so a 40-step run crosses an epoch boundary.
    path.write_text(make_text(1500, seed=1), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, corpus) -> Path:
    """A finished 6-step run (best.pt and last.pt), for the tests that only read or copy it."""
    out = tmp_path_factory.mktemp("small") / "run"
    assert cli("train", corpus, *SMALL_MODEL, *SMALL_RUN, "--max-steps", 6, "--out", out) == 0
    return out


def cli(*args) -> int:
    return main([str(a) for a in args])


def error_line(err: str) -> str:
    """The one 'charlm: ...' line a failed command prints last (progress lines may come before)."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("charlm")]
    assert len(lines) == 1, err
    assert err.rstrip().splitlines()[-1] == lines[0], err
    return lines[0]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors.values())


# -- 1. no code from a checkpoint -----------------------------------------------------------------
class PlantFile:
    """Unpickling this runs a shell command that creates `target`."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch '{self.target}'",))


def hostile_checkpoints(folder: Path, target: Path) -> dict[str, Path]:
    """The same planted payload as the zip charlm writes, as a bare pickle, and in torch's legacy layout."""
    payload = {"format": FORMAT, "version": VERSION, "model": PlantFile(target)}
    files = {"zip": folder / "evil.pt", "raw pickle": folder / "evil-raw.pt",
             "legacy": folder / "evil-legacy.pt"}
    torch.save(payload, files["zip"])
    files["raw pickle"].write_bytes(pickle.dumps(payload))
    torch.save(payload, files["legacy"], _use_new_zipfile_serialization=False)
    return files


def test_the_planted_payload_really_runs_code_when_fully_unpickled(tmp_path):
    # Without this, the refusal tests below could pass with a payload that does nothing.
    target = tmp_path / "planted"
    files = hostile_checkpoints(tmp_path, target)
    torch.load(files["zip"], weights_only=False)
    assert target.exists()
    target.unlink()
    pickle.loads(files["raw pickle"].read_bytes())
    assert target.exists()


@pytest.mark.parametrize("kind", ["zip", "raw pickle", "legacy"])
def test_a_hostile_checkpoint_is_refused_and_runs_nothing(tmp_path, kind):
    target = tmp_path / "planted"
    path = hostile_checkpoints(tmp_path, target)[kind]
    with pytest.raises(CharlmError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert not target.exists()


@pytest.mark.parametrize("command", [["sample", "{evil}"], ["eval", "{evil}", "{text}"],
                                     ["train", "--resume", "{evil}"]])
def test_every_command_refuses_a_hostile_checkpoint_in_one_line(tmp_path, capsys, command):
    target = tmp_path / "planted"
    evil = hostile_checkpoints(tmp_path, target)["zip"]
    text = tmp_path / "held-out.txt"
    text.write_text("some held-out text\n")
    rc = main([part.format(evil=evil, text=text) for part in command])
    err = capsys.readouterr().err
    assert rc == 2  # a file that is not plain data is bad input
    assert err.count("\n") == 1 and err.startswith("charlm: ") and str(evil) in err
    assert "refused" in err
    assert not target.exists()


def test_loading_never_falls_back_to_full_unpickling(tmp_path, small_run, monkeypatch):
    calls = []
    real_load = torch.load

    def spying_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    class NoUnpickler:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a full unpickler was used")

    monkeypatch.setattr(torch, "load", spying_load)
    monkeypatch.setattr(pickle, "Unpickler", NoUnpickler)
    monkeypatch.setattr(pickle, "load", NoUnpickler)
    monkeypatch.setattr(pickle, "loads", NoUnpickler)
    target = tmp_path / "planted"
    evil = hostile_checkpoints(tmp_path, target)["zip"]
    with pytest.raises(CharlmError):
        load_checkpoint(evil)
    model_from_checkpoint(load_checkpoint(small_run / "best.pt"))
    assert calls and all(flag is True for flag in calls)
    assert not target.exists()


def test_checkpoints_hold_only_plain_data(small_run):
    allowed = (torch.Tensor, str, bytes, int, float, bool, type(None))

    def walk(value, where):
        if isinstance(value, dict):
            for key, item in value.items():
                assert isinstance(key, (str, int)), where
                walk(item, f"{where}.{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")
        else:
            assert isinstance(value, allowed), f"{where} is a {type(value).__name__}"

    for name in ("best.pt", "last.pt"):
        path = small_run / name
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
        walk(torch.load(path, weights_only=True), name)


@pytest.mark.parametrize("change, words", [
    ({"version": VERSION + 1}, f"version {VERSION + 1} is not supported"),
    ({"version": None}, "version None is not supported"),
    ({"format": "someone-elses-model"}, "not a charlm checkpoint"),
])
def test_an_unknown_format_or_version_is_a_clear_error(tmp_path, small_run, capsys, change, words):
    payload = torch.load(small_run / "best.pt", weights_only=True)
    payload.update(change)
    path = tmp_path / "other.pt"
    torch.save(payload, path)
    with pytest.raises(CharlmError, match=re.escape(words)):
        load_checkpoint(path)
    assert cli("sample", path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and words in err


@pytest.mark.parametrize("keep", [0, 3, 100, "half", "all but one"])
def test_a_truncated_checkpoint_is_a_clear_error(tmp_path, small_run, keep):
    data = (small_run / "best.pt").read_bytes()
    keep = {"half": len(data) // 2, "all but one": len(data) - 1}.get(keep, keep)
    path = tmp_path / "cut.pt"
    path.write_bytes(data[:keep])
    with pytest.raises(CharlmError) as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


# -- 2. atomic saves --------------------------------------------------------------------------------
def test_a_save_is_flushed_to_disk_before_it_replaces_the_old_file(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(src).parent == Path(dst).parent))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.ones(2)}})
    # Data on disk first, then the rename within the same folder, then the rename itself on disk.
    assert events == [("fsync", "file"), ("replace", True), ("fsync", "folder")]


def failing(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


def _disk_fills_mid_write(payload, f, *args, **kwargs):
    f.write(b"PK\x03\x04" + b"\0" * 4096)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


FAILURES = {
    "disk full mid-write": (torch, "save", _disk_fills_mid_write),
    "fsync fails": (os, "fsync", failing(errno.EIO)),
    "rename refused": (os, "replace", failing(errno.EACCES)),
    "folder not writable": (tempfile, "mkstemp", failing(errno.EROFS)),
}


@pytest.mark.parametrize("failure", FAILURES)
def test_a_failed_save_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "state": {"step": 1}})
    before = path.read_bytes()
    module, name, replacement = FAILURES[failure]
    monkeypatch.setattr(module, name, replacement)
    with pytest.raises(CharlmError) as caught:
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "state": {"step": 2}})
    monkeypatch.undo()
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path) in message
    assert path.read_bytes() == before
    assert load_checkpoint(path)["state"]["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_folder_is_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}})
    before = path.read_bytes()
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(CharlmError, match="cannot write a checkpoint there"):
            save_checkpoint(path, {"model": {"w": torch.zeros(3)}})
    finally:
        tmp_path.chmod(0o755)
    assert path.read_bytes() == before


def test_a_full_disk_during_training_stops_with_one_line_and_keeps_last_pt(tmp_path, corpus, monkeypatch,
                                                                            capsys):
    real_save = torch.save
    saves = []

    def save_until_the_disk_fills(payload, f, *args, **kwargs):
        saves.append(payload["state"]["step"])
        if len(saves) > 4:
            return _disk_fills_mid_write(payload, f)
        return real_save(payload, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    out = tmp_path / "run"
    rc = cli("train", corpus, *SMALL_MODEL, *SMALL_RUN, "--max-steps", 12, "--checkpoint-every", 1,
             "--out", out)
    monkeypatch.undo()
    line = error_line(capsys.readouterr().err)
    assert rc == 1
    assert str(out / "last.pt") in line and "No space left on device" in line and "intact" in line
    assert load_checkpoint(out / "last.pt")["state"]["step"] == 4
    assert sorted(p.name for p in out.glob("*.pt*")) == ["last.pt"]


# Big enough that a save takes tens of milliseconds, so kills land inside saves.
KILL_MODEL = ["--layers", "2", "--hidden", "128", "--embedding", "16"]


def spawn_training(args: list, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CHARLM_DEBUG", None)
    log = open(cwd / f"stderr-{time.monotonic_ns()}.txt", "w+")  # noqa: SIM115 (closed by read_stderr)
    proc = subprocess.Popen([sys.executable, "-m", "charlm", "train", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=log, text=True)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def read_stderr(proc: subprocess.Popen) -> str:
    proc.log.seek(0)  # type: ignore[attr-defined]
    text = proc.log.read()  # type: ignore[attr-defined]
    proc.log.close()  # type: ignore[attr-defined]
    return text


def wait_until(proc: subprocess.Popen, condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"training ended (rc {proc.returncode}) before the moment came:\n{read_stderr(proc)}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the moment to kill")
        time.sleep(0.001)  # a save takes tens of milliseconds: this still lands inside it


def temp_files(folder: Path, name: str) -> set[str]:
    return {n for n in os.listdir(folder) if n.startswith(f".{name}.") and n.endswith(".tmp")}


def assert_checkpoints_load(folder: Path) -> int:
    """Every checkpoint in the folder loads and holds a finite model; returns last.pt's step."""
    assert (folder / "last.pt").exists(), "last.pt vanished"
    for path in (folder / "best.pt", folder / "last.pt"):
        if path.exists():
            model, _ = model_from_checkpoint(load_checkpoint(path))
            assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    return load_checkpoint(folder / "last.pt")["state"]["step"]


@pytest.mark.slow
def test_kill_9_at_any_moment_leaves_loadable_checkpoints(tmp_path, corpus):
    run = tmp_path / "run"
    settings = [*KILL_MODEL, *SMALL_RUN, "--checkpoint-every", 1]

    def save_begins(name: str):
        def moment(proc) -> str:
            if name == "last.pt":  # kill a save that replaces an existing file
                wait_until(proc, lambda: (run / name).exists())
            seen = temp_files(run, name)
            wait_until(proc, lambda: temp_files(run, name) - seen)
            return next(iter(temp_files(run, name) - seen))
        return moment

    def at_random(proc) -> None:
        mtime = (run / "last.pt").stat().st_mtime_ns
        wait_until(proc, lambda: (run / "last.pt").stat().st_mtime_ns != mtime)
        time.sleep(random.uniform(0.0, 0.05))

    # Each kill ends a process; the next one resumes the killed run, which is also under test.
    plans = [
        ("a save over last.pt", lambda step: [corpus, *settings, "--max-steps", 100_000, "--out", run],
         save_begins("last.pt")),
        # A few steps on, the final validation writes best.pt for the first time.
        ("the first save of best.pt", lambda step: ["--resume", run / "last.pt", "--max-steps", step + 6],
         save_begins("best.pt")),
        ("a random moment", lambda step: ["--resume", run / "last.pt", "--max-steps", 100_000], at_random),
    ]
    step = 0
    for description, args, moment in plans:
        proc = spawn_training(args(step), tmp_path)
        in_flight = moment(proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        read_stderr(proc)
        if in_flight is not None:
            assert (run / in_flight).exists(), f"the kill during {description} did not land inside the save"
        if description == "the first save of best.pt":
            assert not (run / "best.pt").exists()  # the previous version: none
        new_step = assert_checkpoints_load(run)
        assert new_step >= step, description
        step = new_step
    # And the run goes on from whatever kill -9 left behind.
    assert cli("train", "--resume", run / "last.pt", "--max-steps", step + 2) == 0
    assert load_checkpoint(run / "last.pt")["state"]["step"] == step + 2


# -- 3. interrupts ----------------------------------------------------------------------------------
RESUME_HINT = re.compile(
    r"charlm: interrupted at step (\d+); (.+) is saved; resume with: charlm train --resume (.+)")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_last_pt_and_says_how_to_resume(tmp_path, corpus, sig):
    run = tmp_path / "run"
    proc = spawn_training([corpus, *SMALL_MODEL, *SMALL_RUN, "--max-steps", 100_000, "--checkpoint-every", 5,
                           "--out", run], tmp_path)
    wait_until(proc, lambda: (run / "last.pt").exists())
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 1
    match = RESUME_HINT.fullmatch(error_line(read_stderr(proc)))
    assert match, "the last line should say where the run is saved and how to resume it"
    step, saved = int(match[1]), Path(match[3])
    assert saved == run / "last.pt"
    assert load_checkpoint(saved)["state"]["step"] == step  # saved at the step it stopped, not an older one
    # The command it printed works.
    assert cli("train", "--resume", saved, "--max-steps", step + 2) == 0
    assert load_checkpoint(saved)["state"]["step"] == step + 2


def interrupt_at(monkeypatch, step: int, presses: int = 1, sig: int = signal.SIGINT) -> list[int]:
    """Send ourselves `sig` `presses` times right after training step `step`; returns the saves after it."""
    real_step, real_save = Trainer.train_step, train_module.save_checkpoint
    saves_after: list[int] = []
    pressed = []

    def train_step(self):
        out = real_step(self)
        if out is not None and self.state.step == step and not pressed:
            pressed.append(True)
            for _ in range(presses):
                os.kill(os.getpid(), sig)
        return out

    def save_checkpoint(path, payload):
        if pressed:
            saves_after.append(payload["state"]["step"])
        real_save(path, payload)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    monkeypatch.setattr(train_module, "save_checkpoint", save_checkpoint)
    return saves_after


def test_a_second_ctrl_c_exits_at_once(tmp_path, corpus, monkeypatch, capsys):
    handler_before = signal.getsignal(signal.SIGINT)
    saves_after = interrupt_at(monkeypatch, step=7, presses=2)
    out = tmp_path / "run"
    rc = cli("train", corpus, *SMALL_MODEL, *SMALL_RUN, "--max-steps", 40, "--checkpoint-every", 5,
             "--out", out)
    assert rc == 130
    assert "Traceback" not in capsys.readouterr().err
    assert saves_after == []  # no save, no validation, nothing more
    assert load_checkpoint(out / "last.pt")["state"]["step"] == 5  # the last periodic save is intact
    assert signal.getsignal(signal.SIGINT) is handler_before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_one_signal_saves_last_pt_at_once_without_validating(tmp_path, corpus, monkeypatch, capsys, sig):
    handlers_before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    saves_after = interrupt_at(monkeypatch, step=7, sig=sig)
    validations = []
    monkeypatch.setattr(Trainer, "validate", lambda self: validations.append(self.state.step))
    out = tmp_path / "run"
    assert cli("train", corpus, *SMALL_MODEL, *SMALL_RUN, "--max-steps", 40, "--out", out) == 1
    assert "interrupted at step 7" in error_line(capsys.readouterr().err)
    assert saves_after == [7] and validations == []
    assert load_checkpoint(out / "last.pt")["state"]["step"] == 7
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers_before


# -- 4. exact resume --------------------------------------------------------------------------------
def assert_same_state(a: Path, b: Path) -> None:
    pa, pb = load_checkpoint(a), load_checkpoint(b)
    for key in ("step", "epoch", "batch_index", "lr_scale"):
        assert pa["state"][key] == pb["state"][key], key
    assert pa["model"].keys() == pb["model"].keys()
    for name in pa["model"]:
        assert torch.equal(pa["model"][name], pb["model"][name]), name
    for index, moments in pa["optimizer"]["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, pb["optimizer"]["state"][index][key]), (index, key)
    assert all(torch.equal(x, y) for x, y in zip(pa["hidden"], pb["hidden"], strict=True))
    assert torch.equal(pa["rng"]["torch"], pb["rng"]["torch"])


def eval_json(checkpoint: Path, text: Path, capsys) -> dict:
    capsys.readouterr()
    assert cli("eval", checkpoint, text, "--json") == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module", params=["lstm", "gru"])
def constant_runs(request, tmp_path_factory, corpus) -> tuple[Path, Path]:
    """40 steps straight, and the same run stopped after 20 (constant schedule: the stop doesn't matter)."""
    folder = tmp_path_factory.mktemp(f"constant-{request.param}")
    common = [corpus, "--cell", request.param, *SMALL_MODEL, *SMALL_RUN, "--schedule", "constant"]
    assert cli("train", *common, "--max-steps", 40, "--out", folder / "straight") == 0
    assert cli("train", *common, "--max-steps", 20, "--out", folder / "first-half") == 0
    return folder / "straight", folder / "first-half"


def test_twenty_steps_plus_resume_to_forty_equals_forty_straight(tmp_path, constant_runs, corpus, capsys):
    straight, first_half = constant_runs
    split = shutil.copytree(first_half, tmp_path / "split")
    assert load_checkpoint(split / "last.pt")["state"]["step"] == 20
    assert cli("train", "--resume", split / "last.pt", "--max-steps", 40) == 0
    assert_same_state(straight / "last.pt", split / "last.pt")
    assert load_checkpoint(split / "last.pt")["state"]["epoch"] >= 1  # the epoch boundary was crossed
    assert eval_json(straight / "last.pt", corpus, capsys) == eval_json(split / "last.pt", corpus, capsys)


# What happens when one piece of the saved state is not restored: each must change the result.
FORGET = {
    "rng": lambda trainer: torch.manual_seed(0),
    "carried hidden state": lambda trainer: setattr(
        trainer, "hidden", trainer.model.init_hidden(trainer.config.batch_size, trainer.device)),
    "optimizer moments": lambda trainer: trainer.optimizer.state.clear(),
    "data position": lambda trainer: setattr(trainer.state, "batch_index", 0),
}


@pytest.mark.parametrize("piece", FORGET)
def test_each_piece_of_saved_state_is_needed_for_an_exact_resume(tmp_path, constant_runs, monkeypatch, piece):
    straight, first_half = constant_runs
    split = shutil.copytree(first_half, tmp_path / "split")
    real_restore = Trainer.restore

    def forgetful_restore(self, payload):
        real_restore(self, payload)
        FORGET[piece](self)

    monkeypatch.setattr(Trainer, "restore", forgetful_restore)
    assert cli("train", "--resume", split / "last.pt", "--max-steps", 40) == 0
    a, b = weights(straight / "last.pt"), weights(split / "last.pt")
    assert not all(torch.equal(a[name], b[name]) for name in a)


def test_an_interrupted_run_resumed_equals_the_straight_run(tmp_path, corpus, monkeypatch, capsys):
    # The default (linear) schedule decays over the run's stop, which the checkpoint keeps.
    common = [corpus, *SMALL_MODEL, *SMALL_RUN, "--max-steps", 40]
    assert cli("train", *common, "--out", tmp_path / "straight") == 0
    interrupt_at(monkeypatch, step=13)
    assert cli("train", *common, "--out", tmp_path / "split") == 1
    hint = RESUME_HINT.fullmatch(error_line(capsys.readouterr().err))
    assert hint and hint[1] == "13"
    monkeypatch.undo()
    assert cli("train", "--resume", hint[3]) == 0
    assert load_checkpoint(tmp_path / "split" / "last.pt")["state"]["step"] == 40
    assert_same_state(tmp_path / "straight" / "last.pt", tmp_path / "split" / "last.pt")
    assert (eval_json(tmp_path / "straight" / "last.pt", corpus, capsys)
            == eval_json(tmp_path / "split" / "last.pt", corpus, capsys))


def test_a_half_precision_carried_state_is_saved_in_float32_and_resumes_on_a_cpu(tmp_path, corpus, monkeypatch):
    """Under CUDA autocast the RNN hands back its state in bf16; a checkpoint keeps float32,
    or a GPU run could not be resumed on a CPU (oneDNN has no bf16-state LSTM)."""
    real_payload = Trainer.checkpoint_payload

    def half_state_payload(self, val):
        kept = self.hidden
        self.hidden = tuple(h.bfloat16() for h in kept)  # what autocast leaves on a GPU
        try:
            return real_payload(self, val)
        finally:
            self.hidden = kept

    monkeypatch.setattr(Trainer, "checkpoint_payload", half_state_payload)
    out = tmp_path / "run"
    assert cli("train", corpus, *SMALL_MODEL, *SMALL_RUN, "--max-steps", 4, "--out", out) == 0
    assert all(h.dtype == torch.float32 for h in load_checkpoint(out / "last.pt")["hidden"])
    monkeypatch.setattr(Trainer, "checkpoint_payload", real_payload)
    assert cli("train", "--resume", out / "last.pt", "--max-steps", 8) == 0
    assert load_checkpoint(out / "last.pt")["state"]["step"] == 8


# -- 6. numerical faults ----------------------------------------------------------------------------
class NanGradient(torch.autograd.Function):
    """Identity going forward (the loss stays finite); NaN gradients coming back."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


POISONS = {
    "nan loss": lambda loss: loss * float("nan"),
    "inf loss": lambda loss: loss + float("inf"),
    "nan gradient": NanGradient.apply,
}


def poison_training(monkeypatch, bad_passes, poison: str) -> None:
    """Make the training forward passes numbered in `bad_passes` (from 0) non-finite."""
    real_forward = CharRNN.forward
    passes = [0]

    def forward(self, idx, hidden=None, targets=None):
        logits, loss, hidden = real_forward(self, idx, hidden, targets)
        if targets is not None and self.training:
            if passes[0] in bad_passes:
                loss = POISONS[poison](loss)
            passes[0] += 1
        return logits, loss, hidden

    monkeypatch.setattr(CharRNN, "forward", forward)


def record_steps(monkeypatch) -> list[dict]:
    records: list[dict] = []
    real_step = Trainer.train_step

    def train_step(self):
        before = {k: v.clone() for k, v in self.model.state_dict().items()}
        step, scale = self.state.step, self.state.lr_scale
        scheduled = lr_at(self.config, self.state.step, self.progress())
        out = real_step(self)
        records.append({
            "skipped": out is None, "step": step, "advanced": self.state.step - step,
            "lr_ratio": self.lr / scheduled, "scale_before": scale, "scale_after": self.state.lr_scale,
            "unchanged": all(torch.equal(before[k], v) for k, v in self.model.state_dict().items()),
        })
        return out

    monkeypatch.setattr(Trainer, "train_step", train_step)
    return records


@pytest.mark.parametrize("poison", POISONS)
def test_a_non_finite_step_is_skipped_and_the_learning_rate_halved(tmp_path, corpus, monkeypatch, capsys,
                                                                    poison):
    poison_training(monkeypatch, {3, 4}, poison)
    records = record_steps(monkeypatch)
    out = tmp_path / "run"
    assert cli("train", corpus, *SMALL_MODEL, *SMALL_RUN, "--max-steps", 10, "--out", out) == 0
    err = capsys.readouterr().err
    skipped = [r for r in records if r["skipped"]]
    assert len(records) == 12 and len(skipped) == 2
    assert all(r["step"] == 3 and r["advanced"] == 0 and r["unchanged"] for r in skipped)
    assert [r["scale_after"] for r in skipped] == [0.5, 0.25]
    after = records[5:]
    assert after and all(r["lr_ratio"] == 0.25 and not r["unchanged"] for r in after)
    assert err.count("non-finite loss, update skipped") == 2
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["lr_scale"] for e in events if "non-finite" in e.get("event", "")] == [0.5, 0.25]
    assert load_checkpoint(out / "last.pt")["state"]["step"] == 10
    assert all_finite(weights(out / "best.pt")) and all_finite(weights(out / "last.pt"))


@pytest.mark.parametrize("poison", ["nan loss", "nan gradient"])
def test_deferred_checks_leave_a_non_finite_step_undone_without_waiting_for_the_device(
        tmp_path, corpus, monkeypatch, capsys, poison):
    """The GPU path, run on a CPU: the step is not skipped at once (that would wait for the
    device) but left undone by the fused optimizer, and counted at the next logging point."""
    real_init, real_step = Trainer.__init__, Trainer.train_step
    records: list[dict] = []

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.defer_checks = True

    def train_step(self):
        weights = {k: v.clone() for k, v in self.model.state_dict().items()}
        moments = [st["exp_avg"].clone() for st in self.optimizer.state.values()]
        out = real_step(self)
        hidden = torch.cat([h.flatten() for h in self.hidden])
        records.append({
            "finite": bool(out[2]), "scale": self.state.lr_scale, "zero_state": not hidden.any(),
            "weights_kept": all(torch.equal(weights[k], v) for k, v in self.model.state_dict().items()),
            "moments_kept": moments == [] or all(torch.equal(m, st["exp_avg"]) for m, st in
                                                 zip(moments, self.optimizer.state.values())),
        })
        return out

    monkeypatch.setattr(Trainer, "__init__", init)
    monkeypatch.setattr(Trainer, "train_step", train_step)
    poison_training(monkeypatch, {3, 4}, poison)
    out = tmp_path / "run"
    assert cli("train", corpus, *SMALL_MODEL, *SMALL_RUN, "--max-steps", 10, "--out", out) == 0
    err = capsys.readouterr().err
    assert len(records) == 10  # the batch of a bad step is dropped, not retried
    assert [r["finite"] for r in records] == [n not in (3, 4) for n in range(10)]
    assert all(r["weights_kept"] and r["moments_kept"] and r["zero_state"] for r in records[3:5])
    assert not any(r["weights_kept"] or r["zero_state"] for r in records[:3] + records[5:])
    assert err.count("non-finite loss, update skipped") == 2
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(e["step"], e["lr_scale"]) for e in events if "non-finite" in e.get("event", "")] == [(3, 0.5), (4, 0.25)]
    assert all(math.isfinite(e["loss"]) for e in events if "loss" in e)
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint["state"]["step"] == 10 and checkpoint["state"]["lr_scale"] == 0.25
    assert all(float(st["step"]) == 8 for st in checkpoint["optimizer"]["state"].values())
    assert all_finite(weights(out / "best.pt")) and all_finite(weights(out / "last.pt"))


# Bad passes counted from the resumed run's first; passes 0 and 1 are good (steps 7 and 8).
BURSTS = {
    "two bursts just short of the limit": set(range(2, 1 + MAX_BAD_STEPS))
    | set(range(2 + MAX_BAD_STEPS, 1 + 2 * MAX_BAD_STEPS)),
    "the limit in a row": set(range(2, 2 + MAX_BAD_STEPS)),
}


@pytest.mark.parametrize("bursts", BURSTS)
def test_training_stops_after_repeated_failures_and_best_pt_is_untouched(tmp_path, small_run, monkeypatch,
                                                                          capsys, bursts):
    run = shutil.copytree(small_run, tmp_path / "run")
    best_before = (run / "best.pt").read_bytes()
    poison_training(monkeypatch, BURSTS[bursts], "nan loss")
    rc = cli("train", "--resume", run / "last.pt", "--max-steps", 12)
    err = capsys.readouterr().err
    if bursts == "two bursts just short of the limit":
        # A good step in between resets the count: the run recovers and finishes.
        assert rc == 0, err
        assert load_checkpoint(run / "last.pt")["state"]["step"] == 12
        return
    assert rc == 1
    line = error_line(err)
    assert f"training diverged: {MAX_BAD_STEPS} non-finite steps in a row at step 8" in line
    assert str(run / "best.pt") in line
    assert (run / "best.pt").read_bytes() == best_before


def test_a_nan_model_never_overwrites_best_pt(tmp_path, small_run, monkeypatch):
    run = shutil.copytree(small_run, tmp_path / "run")
    best_before = (run / "best.pt").read_bytes()
    real_step, real_save = Trainer.train_step, train_module.save_checkpoint
    saved = []

    def corrupting_step(self):
        out = real_step(self)
        if self.state.step == 10:  # the loss of this step was fine; the weights it left are not
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float("nan"))
        return out

    def spying_save(path, payload):
        saved.append((Path(path).name, all_finite(payload["model"])))
        real_save(path, payload)

    monkeypatch.setattr(Trainer, "train_step", corrupting_step)
    monkeypatch.setattr(train_module, "save_checkpoint", spying_save)
    assert cli("train", "--resume", run / "last.pt", "--max-steps", 10) == 0
    assert ("last.pt", False) in saved  # the final validation and save did run on the NaN model
    assert all(finite for name, finite in saved if name == "best.pt")
    assert (run / "best.pt").read_bytes() == best_before
    assert all_finite(weights(run / "best.pt"))
