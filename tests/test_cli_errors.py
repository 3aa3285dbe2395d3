"""Bad input gets one clear line, never a traceback.

Every failure a user can cause ends with exit code 2 (bad usage) or 1 (a runtime failure)
and a single `charlm: ...` line on stderr that names the file or option at fault. The full
traceback appears only with CHARLM_DEBUG=1, for bug reports.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from charlm.cli import main
from charlm.errors import CharlmError, UsageError

from .conftest import make_text


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """One file or folder for each kind of bad input, plus a good corpus and a tiny model."""
    d = tmp_path_factory.mktemp("inputs")
    paths = {name: d / file for name, file in {
        "corpus": "corpus.txt", "empty": "empty.txt", "no_text": "pictures", "binary": "image.gif",
        "latin1": "latin1.txt", "newline": "newline.txt", "tiny": "tiny.txt", "notes": "notes.pt",
        "a_file": "a-file", "missing": "missing.txt", "model": "run", "truncated": "cut.pt",
    }.items()}
    paths["corpus"].write_text(make_text(1500), encoding="utf-8")
    paths["empty"].write_bytes(b"")
    paths["no_text"].mkdir()
    (paths["no_text"] / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
    (paths["no_text"] / ".hidden.txt").write_text("not read\n")
    paths["binary"].write_bytes(b"GIF89a\x01\x00\x01\x00\x00\x00\x00")
    paths["latin1"].write_bytes("café au lait\n".encode("latin-1"))  # 0xe9 at offset 3
    paths["newline"].write_text("\n")
    paths["tiny"].write_text("hello world\n")
    paths["notes"].write_text("these are my notes, not a model\n")
    paths["a_file"].write_text("I am a file\n")
    assert main(["train", str(paths["corpus"]), "--hidden", "8", "--embedding", "4", "--batch-size", "4",
                 "--seq-len", "16", "--max-steps", "2", "--sample-length", "0",
                 "--out", str(paths["model"])]) == 0
    paths["model"] = paths["model"] / "best.pt"
    data = paths["model"].read_bytes()
    paths["truncated"].write_bytes(data[: len(data) // 2])
    return paths


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ and any default output land here
    monkeypatch.delenv("CHARLM_DEBUG", raising=False)


def run(argv: list[str], inputs: dict[str, Path], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([part.format(**inputs) for part in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def the_error(err: str, alone: bool = True) -> str:
    """The one `charlm: ...` line; `alone`: nothing else on stderr (else progress lines may precede it)."""
    assert "Traceback" not in err
    lines = err.rstrip("\n").splitlines()
    errors = [line for line in lines if line.startswith("charlm")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    if alone:
        assert len(lines) == 1, err
    return errors[0]


# (argv, exit code, words the line must hold); {name} is replaced by the path of that input.
CASES = {
    "missing file": (["train", "{missing}"], 2, ["{missing}", "no such file"]),
    "empty file": (["train", "{empty}"], 2, ["{empty}", "empty"]),
    "folder with no text files": (["train", "{no_text}"], 2, ["{no_text}", "no text files"]),
    "binary file": (["train", "{binary}"], 2, ["{binary}", "binary", "offset 7"]),
    "undecodable bytes": (["train", "{latin1}"], 2, ["{latin1}", "0xe9", "offset 3", "--encoding"]),
    "UTF-16 without a byte-order mark": (["train", "{corpus}", "--encoding", "utf-16"], 2,
                                         ["{corpus}", "utf-16"]),
    "corpus too short for any batch": (["train", "{newline}"], 2, ["too short", "at least 2"]),
    "text file as a checkpoint (sample)": (["sample", "{notes}"], 2, ["{notes}", "not a charlm checkpoint"]),
    "text file as a checkpoint (resume)": (["train", "--resume", "{notes}"], 2,
                                           ["{notes}", "not a charlm checkpoint"]),
    "truncated checkpoint (sample)": (["sample", "{truncated}"], 2, ["{truncated}", "truncated", "bytes)"]),
    "truncated checkpoint (eval)": (["eval", "{truncated}", "{corpus}"], 2, ["{truncated}", "truncated"]),
    "truncated checkpoint (resume)": (["train", "--resume", "{truncated}"], 2, ["{truncated}", "truncated"]),
    "missing checkpoint": (["sample", "{missing}.pt"], 2, ["{missing}.pt", "no such checkpoint"]),
    "folder with no checkpoint": (["sample", "{no_text}"], 2, ["{no_text}", "no best.pt or last.pt"]),
    "no run yet": (["sample"], 2, ["no trained model", "charlm train"]),
    "output folder that is a file": (["train", "{corpus}", "--out", "{a_file}"], 2,
                                     ["--out", "{a_file}", "is a file"]),
    "output folder that is a file (resume)": (["train", "--resume", "{model}", "--out", "{a_file}"], 2,
                                              ["--out", "{a_file}", "is a file"]),
    "output folder inside a file": (["train", "{corpus}", "--out", "{a_file}/run"], 1,
                                    ["--out", "{a_file}/run"]),
    "unknown --cell": (["train", "{corpus}", "--cell", "transformer"], 2, ["--cell", "transformer"]),
    "unknown --schedule": (["train", "{corpus}", "--schedule", "sometimes"], 2, ["--schedule"]),
    "unknown --tokenizer": (["train", "{corpus}", "--tokenizer", "words"], 2, ["--tokenizer"]),
    "unknown --errors": (["train", "{corpus}", "--errors", "ignore"], 2, ["--errors"]),
    "unknown --encoding": (["train", "{corpus}", "--encoding", "klingon"], 2, ["--encoding", "klingon"]),
    "unknown option": (["train", "{corpus}", "--colour", "red"], 2, ["--colour"]),
    "option without its value": (["train", "{corpus}", "--hidden"], 2, ["--hidden"]),
    "not a number": (["train", "{corpus}", "--hidden", "lots"], 2, ["--hidden", "integer"]),
    "--temp below 0": (["sample", "{model}", "--temp", "-0.5"], 2, ["--temp"]),
    "--top-p 0": (["sample", "{model}", "--top-p", "0"], 2, ["--top-p"]),
    "--top-p above 1": (["sample", "{model}", "--top-p", "1.5"], 2, ["--top-p"]),
    "--top-p negative": (["sample", "{model}", "--top-p", "-0.1"], 2, ["--top-p"]),
    "--top-p nan": (["sample", "{model}", "--top-p", "nan"], 2, ["--top-p"]),
    "--top-k below 0": (["sample", "{model}", "--top-k", "-1"], 2, ["--top-k"]),
    "--seed beyond 64 bits (sample)": (["sample", "{model}", "--seed", str(2**64)], 2, ["--seed"]),
    "--seed beyond 64 bits (train)": (["train", "{corpus}", "--seed", str(-(2**63) - 1)], 2, ["--seed"]),
    "--epochs nan": (["train", "{corpus}", "--epochs", "nan"], 2, ["--epochs"]),
    "--grad-clip nan": (["train", "{corpus}", "--grad-clip", "nan"], 2, ["--grad-clip"]),
    "--lr infinite": (["train", "{corpus}", "--lr", "inf"], 2, ["--lr"]),
    "--val-fraction 1": (["train", "{corpus}", "--val-fraction", "1"], 2, ["--val-fraction"]),
    "--vocab-size too small for char": (["train", "{corpus}", "--vocab-size", "10"], 2, ["--vocab-size"]),
    "--vocab-size too large for bpe": (["train", "{corpus}", "--tokenizer", "bpe", "--vocab-size", "5000"], 2,
                                       ["--vocab-size"]),
    "unavailable --device": (["sample", "{model}", "--device", "tpu"], 2, ["--device", "tpu"]),
    "missing --prime-file": (["sample", "{model}", "--prime-file", "{missing}"], 2,
                             ["--prime-file", "{missing}"]),
    "folder as --prime-file": (["sample", "{model}", "--prime-file", "{no_text}"], 2, ["--prime-file"]),
    "eval without a text file": (["eval", "{model}"], 2, ["text file"]),
    "eval of a missing file": (["eval", "{model}", "{missing}"], 2, ["{missing}"]),
    "eval of a binary file": (["eval", "{model}", "{binary}"], 2, ["{binary}"]),
    "eval of too little text": (["eval", "{model}", "{empty}"], 2, ["{empty}"]),
    "resumed run keeps its model": (["train", "--resume", "{model}", "--hidden", "99"], 2, ["--hidden"]),
    "resumed run keeps its batches": (["train", "--resume", "{model}", "--batch-size", "7"], 2,
                                      ["--batch-size"]),
    "resumed run whose corpus is gone": (["train", "--resume", "{model}", "--max-steps", "3"], 2, ["corpus"]),
}
# These fail only after training has started to report progress on stderr.
AFTER_PROGRESS = {"undecodable bytes", "UTF-16 without a byte-order mark", "corpus too short for any batch",
                  "--vocab-size too small for char", "--vocab-size too large for bpe"}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_one_line_and_the_right_exit_code(inputs, capsys, case, tmp_path):
    argv, code, words = CASES[case]
    if case == "resumed run whose corpus is gone":
        moved = tmp_path / "moved.pt"
        moved.write_bytes(inputs["model"].read_bytes())
        inputs = {**inputs, "model": moved, "corpus": tmp_path / "gone.txt"}
        payload = torch.load(moved, weights_only=True)
        payload["corpus"]["files"] = [str(tmp_path / "gone.txt")]
        torch.save(payload, moved)
    rc, out, err = run(argv, inputs, capsys)
    line = the_error(err, alone=case not in AFTER_PROGRESS)
    assert rc == code, line
    assert line.startswith("charlm")
    for word in words:
        assert word.format(**inputs) in line, line
    assert out == ""


SIZES = [
    ("train", "--layers", "0"), ("train", "--hidden", "0"), ("train", "--hidden", "-1"),
    ("train", "--embedding", "0"), ("train", "--batch-size", "0"), ("train", "--seq-len", "-5"),
    ("train", "--max-steps", "0"), ("train", "--epochs", "0"), ("train", "--epochs", "-1"),
    ("train", "--time-budget", "0"), ("train", "--time-budget", "-3"), ("train", "--checkpoint-every", "0"),
    ("train", "--vocab-size", "0"), ("train", "--lr", "-0.1"), ("train", "--lr", "0"),
    ("train", "--warmup-steps", "-1"), ("train", "--sample-length", "-1"), ("train", "--weight-decay", "-1"),
    ("train", "--grad-clip", "-1"), ("train", "--val-fraction", "-0.1"), ("train", "--dropout", "-0.1"),
    ("train", "--dropout", "1"), ("sample", "--length", "-1"), ("sample", "--num-samples", "0"),
    ("eval", "--show-chars", "0"),
]


@pytest.mark.parametrize("command, option, value", SIZES)
def test_zero_or_negative_sizes_are_usage_errors_naming_the_option(inputs, capsys, command, option, value):
    target = {"train": ["{corpus}"], "sample": ["{model}"], "eval": ["{model}", "{corpus}"]}[command]
    rc, _, err = run([command, *target, option, value], inputs, capsys)
    line = the_error(err)
    assert rc == 2 and option in line, line


def test_a_corpus_shorter_than_one_batch_shrinks_the_batch_with_a_warning(inputs, capsys):
    argv = ["train", "{tiny}", "--hidden", "8", "--max-steps", "2", "--out", "tiny-run"]
    rc, out, err = run(argv, inputs, capsys)
    assert rc == 0, err
    assert "corpus is short" in err and "--batch-size 1" in err
    assert out.strip() in ("tiny-run/last.pt", "tiny-run/best.pt")


def test_a_prime_of_unseen_characters_works(inputs, capsys):
    prime = "한국어 ✓ 🎉 \u2581 \x00"  # none of these is in the tiny model's vocabulary
    argv = ["sample", "{model}", "--prime", prime, "--length", "20", "--seed", "1"]
    rc, out, err = run(argv, inputs, capsys)
    assert rc == 0, err
    assert out.startswith(prime) and len(out) > len(prime)


def test_an_internal_bug_is_still_one_line_pointing_at_charlm_debug(inputs, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("charlm.sample.generate_batch", broken)
    rc, _, err = run(["sample", "{model}"], inputs, capsys)
    line = the_error(err)
    assert rc == 1
    assert "internal error" in line and "ZeroDivisionError" in line and "CHARLM_DEBUG=1" in line


def test_a_model_too_big_for_memory_is_one_line_not_an_internal_error(inputs, capsys, tmp_path):
    # Four million units: the recurrent weights alone would take hundreds of terabytes.
    rc, _, err = run(["train", "{corpus}", "--hidden", "4000000", "--max-steps", "1", "--out",
                      str(tmp_path / "huge")], inputs, capsys)
    line = the_error(err, alone=False)
    assert rc == 1
    assert "out of memory" in line and "--hidden" in line and "internal error" not in line


def test_a_view_or_page_written_into_a_folder_not_made_yet_makes_it(inputs, capsys, tmp_path):
    rc, _, err = run(["inspect-neurons", "{model}", "{corpus}", "--svg", str(tmp_path / "new" / "view.svg")],
                     inputs, capsys)
    assert rc == 0, err
    assert "<svg" in (tmp_path / "new" / "view.svg").read_text(encoding="utf-8")[:300]


@pytest.mark.parametrize("argv, error", [(["sample", "{missing}"], UsageError),
                                          (["train", "{latin1}"], CharlmError),
                                          (["sample", "{model}", "--top-p", "2"], Exception)])
def test_charlm_debug_lets_the_exception_through(inputs, monkeypatch, argv, error):
    monkeypatch.setenv("CHARLM_DEBUG", "1")
    with pytest.raises(error):
        main([part.format(**inputs) for part in argv])


@pytest.mark.slow
def test_charlm_debug_prints_the_full_traceback(inputs):
    env = {k: v for k, v in os.environ.items() if k != "CHARLM_DEBUG"}
    argv = [sys.executable, "-m", "charlm", "sample", str(inputs["missing"])]
    plain = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    debug = subprocess.run(argv, env={**env, "CHARLM_DEBUG": "1"}, capture_output=True, text=True,
                           timeout=120, check=False)
    assert plain.returncode == 2
    assert plain.stderr == f"charlm: {inputs['missing']}: no such checkpoint\n"
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr
    assert "UsageError" in debug.stderr and str(inputs["missing"]) in debug.stderr


@pytest.mark.parametrize("command", [["eval", "{model}", "{corpus}", "--json"],
                                     ["sample", "{model}", "--length", "50"]])
def test_a_reader_gone_before_any_output_is_not_an_error(inputs, command):
    # charlm eval --json | head -0: the first write meets a closed pipe. Like `yes | head`,
    # that ends the command quietly with exit 0, also where click sees the broken pipe first.
    argv = [sys.executable, "-m", "charlm", *(a.format(model=inputs["model"], corpus=inputs["corpus"])
                                                for a in command)]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(argv, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, check=False,
                              env={k: v for k, v in os.environ.items() if k != "CHARLM_DEBUG"})
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (0, "")
