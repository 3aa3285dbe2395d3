"""The commands end to end, as a user types them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from charlm.cli import main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "sample", "eval", "inspect-neurons"):
        assert command in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("charlm ")


def test_train_sample_eval_from_the_command_line(in_tmp, corpus_file, capsys):
    rc = main(["train", str(corpus_file), "--hidden", "24", "--embedding", "8", "--batch-size", "4",
               "--seq-len", "32", "--max-steps", "20", "--sample-length", "20", "--out", "runs/first"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out.strip() == "runs/first/best.pt"
    assert "step" in captured.err

    # No checkpoint named: the latest run. The prime comes first on stdout.
    assert main(["sample", "--prime", "the cat", "--length", "40", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("the cat") and len(first.rstrip("\n")) >= 40
    assert main(["sample", "runs/first/best.pt", "--prime", "the cat", "--length", "40", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first

    assert main(["eval", "runs/first/best.pt", str(corpus_file), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"nats_per_char", "bits_per_char", "perplexity", "chars"}
    assert result["chars"] == len(corpus_file.read_text()) - 1
    assert result["bits_per_char"] == pytest.approx(result["nats_per_char"] / 0.6931471805599453)


def test_eval_compares_several_checkpoints(trained_run, corpus_file, capsys):
    other = trained_run.parent / "copy"
    if not other.exists():
        shutil.copytree(trained_run, other)
    assert main(["eval", str(trained_run / "best.pt"), str(other / "last.pt"), str(corpus_file)]) == 0
    out = capsys.readouterr().out
    assert "bits/char" in out and "copy" in out and "best.pt" in out
    assert main(["eval", str(trained_run), str(other), str(corpus_file), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and all("checkpoint" in r for r in rows)


def test_eval_show_colours_the_text(trained_run, corpus_file, capsys):
    assert main(["eval", str(trained_run), str(corpus_file), "--show", "--show-chars", "100"]) == 0
    out = capsys.readouterr().out
    assert "surprisal" in out


def test_several_samples(trained_run, capsys):
    assert main(["sample", str(trained_run), "--num-samples", "3", "--length", "20", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("=== sample")] == [
        "=== sample 1 ===", "=== sample 2 ===", "=== sample 3 ==="]


def test_python_dash_m_runs_the_cli(trained_run):
    proc = subprocess.run([sys.executable, "-m", "charlm", "sample", str(trained_run), "--length", "10",
                           "--seed", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) >= 10
