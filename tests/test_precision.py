"""--precision: bf16 autocast where the device has native bf16, float32 elsewhere; weights,
optimizer state, checkpoints and evaluation float32 either way.

The decision is tested with the CPU's capability check monkeypatched, so it runs on any CPU.
The bf16 training path is run for real with a vanilla RNN, whose bf16 autocast works (slowly,
emulated) on any x86 CPU; the LSTM's bf16 path goes through oneDNN, which needs native bf16,
so its tests run only on a CPU that has it.
"""

from __future__ import annotations

import math

import shutil

import pytest
import torch

from charlm import precision
from charlm.checkpoint import load_checkpoint
from charlm.errors import UsageError
from charlm.model import CharRNN
from charlm.precision import cpu_has_native_bf16, resolve_precision

from .test_reliability import SMALL_RUN, all_finite, assert_same_state, cli, error_line, poison_training

CPU = torch.device("cpu")
TINY = ["--hidden", "24", "--embedding", "8"]
NO_NATIVE_BF16 = "this CPU has no native bf16 (AVX512-BF16 or AMX): its bf16 LSTM path cannot run here"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from .conftest import make_text

    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(make_text(1500, seed=1), encoding="utf-8")
    return path


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)


@pytest.fixture
def no_native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)


# -- the decision ---------------------------------------------------------------------------------
def test_auto_is_float32_on_a_cpu_without_native_bf16(no_native_bf16):
    for cell in ("lstm", "gru", "rnn"):
        chosen = resolve_precision("auto", CPU, cell)
        assert chosen.name == "fp32" and "no native bf16" in chosen.why


def test_auto_takes_bf16_for_a_wide_lstm_or_gru_on_a_cpu_with_native_bf16(native_bf16):
    for cell in ("lstm", "gru"):
        assert resolve_precision("auto", CPU, cell, 512).name == "bf16"
        assert resolve_precision("auto", CPU, cell, 384).name == "bf16"
        narrow = resolve_precision("auto", CPU, cell, 256)  # measured faster in float32
        assert narrow.name == "fp32" and "below 384 units" in narrow.why
    assert resolve_precision("auto", CPU, "rnn", 512).name == "fp32"  # an RNN's gain is not measured
    assert resolve_precision("bf16", CPU, "gru", 256).name == "bf16"  # asked for, it is given


def test_fp32_is_float32_everywhere(native_bf16):
    chosen = resolve_precision("fp32", CPU, "lstm")
    assert chosen.name == "fp32"
    with chosen.autocast(CPU):
        assert not torch.is_autocast_enabled("cpu")


def test_bf16_where_the_cpu_lacks_it_is_a_usage_error(no_native_bf16):
    with pytest.raises(UsageError, match="--precision bf16: this CPU has no native bf16"):
        resolve_precision("bf16", CPU, "lstm")
    with pytest.raises(UsageError, match="expected one of auto, fp32, bf16"):
        resolve_precision("fp16", CPU, "lstm")


def test_bf16_on_an_apple_gpu_is_a_usage_error():
    with pytest.raises(UsageError, match="not on mps"):
        resolve_precision("bf16", torch.device("mps"), "lstm")
    assert resolve_precision("auto", torch.device("mps"), "lstm").name == "fp32"


def test_native_bf16_is_read_from_torchs_capabilities(monkeypatch):
    for found, native in [({"avx512_bf16": True, "amx_bf16": False}, True), ({"amx_bf16": True}, True),
                          ({"avx2": True, "avx512_bf16": False, "amx_bf16": False}, False)]:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda found=found: found, raising=False)
        assert cpu_has_native_bf16() is native
    # A torch without get_capabilities: its older private checks answer.
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert cpu_has_native_bf16() is True
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert cpu_has_native_bf16() is False


def test_autocast_leaves_a_gru_in_float32_on_a_cpu():
    """A GRU's recurrence stays float32 under CPU autocast (its input and output products run in
    bf16): its measured bf16 gain (bench/README.md) comes from those."""
    gru = torch.nn.GRU(8, 16, batch_first=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = gru(torch.randn(2, 3, 8))
    assert out.dtype == torch.float32


# -- the command line -----------------------------------------------------------------------------
def test_train_with_bf16_on_a_cpu_without_it_fails_in_one_line(tmp_path, corpus, no_native_bf16, capsys):
    assert cli("train", corpus, *TINY, *SMALL_RUN, "--max-steps", 2, "--precision", "bf16",
               "--out", tmp_path / "run") == 2
    line = error_line(capsys.readouterr().err)
    assert line == "charlm: --precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); " \
                   "use --precision fp32 or auto"
    assert not (tmp_path / "run").exists()  # refused before any work


def test_the_summary_says_which_precision_the_run_uses(tmp_path, corpus, no_native_bf16, capsys):
    assert cli("train", corpus, *TINY, *SMALL_RUN, "--max-steps", 2, "--out", tmp_path / "run") == 0
    err = capsys.readouterr().err
    assert "precision  float32; auto: this CPU has no native bf16" in err


# -- the bf16 path, run with a vanilla RNN -------------------------------------------------------
def _dtypes_seen(monkeypatch) -> dict[bool, set[torch.dtype]]:
    """The dtypes of the recurrent layer's output, in training and in evaluation passes."""
    seen: dict[bool, set[torch.dtype]] = {True: set(), False: set()}
    real = CharRNN.top_outputs

    def top_outputs(self, idx, hidden=None):
        out, hidden = real(self, idx, hidden)
        seen[self.training].add(out.dtype)
        return out, hidden

    monkeypatch.setattr(CharRNN, "top_outputs", top_outputs)
    return seen


def test_bf16_trains_in_bf16_validates_in_float32_and_saves_float32(tmp_path, corpus, native_bf16, monkeypatch,
                                                                     capsys):
    seen = _dtypes_seen(monkeypatch)
    assert cli("train", corpus, "--cell", "rnn", *TINY, *SMALL_RUN, "--max-steps", 12, "--precision", "bf16",
               "--out", tmp_path / "run") == 0
    assert "precision  bf16 autocast, float32 weights; asked for" in capsys.readouterr().err
    assert seen == {True: {torch.bfloat16}, False: {torch.float32}}
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    assert payload["train_config"]["precision"] == "bf16"
    tensors = [*payload["model"].values(), *payload["hidden"],
               *(v for state in payload["optimizer"]["state"].values() for v in state.values()
                 if isinstance(v, torch.Tensor) and v.is_floating_point())]
    assert tensors and all(t.dtype == torch.float32 for t in tensors)


def test_a_bf16_run_resumes_exactly(tmp_path, corpus, native_bf16):
    common = [corpus, "--cell", "rnn", *TINY, *SMALL_RUN, "--precision", "bf16", "--schedule", "constant"]
    assert cli("train", *common, "--max-steps", 16, "--out", tmp_path / "straight") == 0
    assert cli("train", *common, "--max-steps", 8, "--out", tmp_path / "split") == 0
    assert cli("train", "--resume", tmp_path / "split" / "last.pt", "--max-steps", 16) == 0
    assert_same_state(tmp_path / "straight" / "last.pt", tmp_path / "split" / "last.pt")


def test_a_non_finite_bf16_step_is_skipped(tmp_path, corpus, native_bf16, monkeypatch, capsys):
    poison_training(monkeypatch, {3}, "nan loss")
    assert cli("train", corpus, "--cell", "rnn", *TINY, *SMALL_RUN, "--max-steps", 8, "--precision", "bf16",
               "--out", tmp_path / "run") == 0
    assert capsys.readouterr().err.count("non-finite loss, update skipped") == 1
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    assert payload["state"]["lr_scale"] == 0.5 and all_finite(payload["model"])


def test_a_bf16_run_resumed_on_a_cpu_without_bf16_says_how_to_go_on(tmp_path, corpus, monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert cli("train", corpus, "--cell", "rnn", *TINY, *SMALL_RUN, "--max-steps", 4, "--precision", "bf16",
               "--out", tmp_path / "run") == 0
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    capsys.readouterr()
    split = shutil.copytree(tmp_path / "run", tmp_path / "copy")
    assert cli("train", "--resume", split / "last.pt", "--max-steps", 6) == 2
    assert error_line(capsys.readouterr().err) == (
        "charlm: this run was begun with --precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); "
        "use --precision fp32 or auto")
    assert cli("train", "--resume", split / "last.pt", "--max-steps", 6, "--precision", "auto") == 0
    assert load_checkpoint(split / "last.pt")["state"]["step"] == 6


# -- the LSTM's bf16 path, only where the CPU has native bf16 -----------------------------------
@pytest.mark.skipif(not cpu_has_native_bf16(), reason=NO_NATIVE_BF16)
def test_an_lstm_trains_in_bf16_and_resumes_exactly_on_a_cpu_with_native_bf16(tmp_path, corpus, monkeypatch,
                                                                                capsys):
    seen = _dtypes_seen(monkeypatch)
    common = [corpus, *TINY, *SMALL_RUN, "--schedule", "constant", "--precision", "bf16"]
    assert cli("train", *common, "--max-steps", 30, "--out", tmp_path / "straight") == 0
    assert "bf16 autocast, float32 weights; asked for" in capsys.readouterr().err
    assert seen == {True: {torch.bfloat16}, False: {torch.float32}}
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    assert all(t.dtype == torch.float32 for t in [*straight["model"].values(), *straight["hidden"]])
    logged = [__import__("json").loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    vocab = straight["model_config"]["vocab_size"]
    assert logged[-1]["val_nats_per_char"] < 0.6 * math.log(vocab)  # it learned: well below a uniform guess
    assert cli("train", *common, "--max-steps", 15, "--out", tmp_path / "split") == 0
    assert cli("train", "--resume", tmp_path / "split" / "last.pt", "--max-steps", 30) == 0
    assert_same_state(tmp_path / "straight" / "last.pt", tmp_path / "split" / "last.pt")
