"""Fuzzing the command line: any option values, one clear answer.

Hypothesis draws values for every option of every command: sensible ones, edge cases
(0, negatives, nan, inf, subnormals, integers beyond 64 bits) and arbitrary Unicode,
including lone surrogates, which is what Python makes of undecodable bytes in argv.
Whatever it draws, charlm must exit with 0, 1 or 2, print at most one `charlm: ...`
error line (the last on stderr), and never a traceback or an "internal error".
Sizes stay small so each training example takes a fraction of a second.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import os
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charlm.cli import main

from .conftest import make_text

FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

TEXT = st.text(st.characters(exclude_categories=()), max_size=8)  # surrogates included
FLOATS = st.floats(allow_nan=True, allow_infinity=True).map(repr)  # nan, inf, -0.0, 5e-324...
ANY_INT = st.integers().map(str)  # beyond 64 bits too
ODD = st.sampled_from(["", "-1", "0", "nan", "inf", "-inf", "1e999", "0x10", "1_000", " 3", "3.5", "--", "-"])


HOSTILE = st.one_of(ODD, TEXT, FLOATS, ANY_INT)
# For options that set how much work is done: a huge valid value would just run for ages.
NOT_HUGE = st.one_of(ODD, TEXT, FLOATS, st.integers(max_value=0).map(str))
HOSTILE_FOR = {"--max-steps": NOT_HUGE, "--length": NOT_HUGE, "--num-samples": NOT_HUGE}


def ints(low: int, high: int):
    return st.integers(low, high).map(str)


def floats(low: float, high: float):
    return st.floats(low, high).map(repr)


def choice(*values: str):
    return st.sampled_from(values)


# For each option: values a user might well type. Any option may instead get a HOSTILE value.
TRAIN_OPTIONS = {
    "--cell": choice("lstm", "gru", "rnn"), "--layers": ints(1, 3), "--hidden": ints(1, 16),
    "--embedding": ints(1, 8), "--dropout": floats(0, 0.9), "--batch-size": ints(1, 8),
    "--seq-len": ints(1, 16), "--lr": floats(1e-4, 0.05),
    "--schedule": choice("linear", "cosine", "constant"), "--warmup-steps": ints(0, 50),
    "--weight-decay": floats(0, 0.1), "--grad-clip": floats(0, 5), "--epochs": floats(0.01, 3),
    "--time-budget": floats(0.01, 10), "--val-fraction": floats(0, 0.5), "--checkpoint-every": ints(1, 3),
    "--sample-length": ints(0, 30), "--tokenizer": choice("char", "char", "unigram", "bpe"),
    "--vocab-size": ints(100, 600), "--encoding": choice("utf-8", "latin-1", "cp1252", "utf-16", "ascii"),
    "--errors": choice("strict", "replace"), "--seed": ints(0, 2**32), "--device": choice("auto", "cpu"),
}
SAMPLE_OPTIONS = {
    "--temp": floats(0, 2), "--top-k": ints(0, 50), "--top-p": floats(0.01, 1), "--prime": TEXT,
    "--length": ints(0, 30), "--num-samples": ints(1, 3), "--seed": ints(0, 2**32), "--stop": TEXT,
    "--device": choice("auto", "cpu"),
}
EVAL_OPTIONS = {"--show-chars": ints(1, 50), "--encoding": choice("utf-8", "latin-1", "utf-16"),
                "--errors": choice("strict", "replace"), "--device": choice("auto", "cpu")}


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> dict[str, Path]:
    """Good and bad files to hand to the commands, and a tiny trained model."""
    d = tmp_path_factory.mktemp("fuzz")
    paths = {name: d / file for name, file in {
        "corpus": "corpus.txt", "empty": "empty.txt", "binary": "image.gif", "latin1": "latin1.txt",
        "folder": "texts", "notes": "notes.pt", "missing": "missing.txt", "a_file": "a-file", "run": "run",
    }.items()}
    paths["corpus"].write_text(make_text(2000), encoding="utf-8")
    paths["empty"].write_bytes(b"")
    paths["binary"].write_bytes(b"GIF89a\x01\x00\x01\x00\x00\x00\x00")
    paths["latin1"].write_bytes("café au lait\n".encode("latin-1"))
    paths["folder"].mkdir()
    (paths["folder"] / "a.txt").write_text("some text in a folder\n")
    paths["notes"].write_text("not a model\n")
    paths["a_file"].write_text("a file\n")
    with quietly():
        assert main(["train", str(paths["corpus"]), "--hidden", "8", "--embedding", "4", "--batch-size", "4",
                     "--seq-len", "16", "--max-steps", "2", "--sample-length", "0",
                     "--out", str(paths["run"])]) == 0
    paths["model"] = paths["run"] / "best.pt"
    paths["truncated"] = d / "cut.pt"
    paths["truncated"].write_bytes(paths["model"].read_bytes()[:3000])
    return paths


@contextlib.contextmanager
def quietly():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


@contextlib.contextmanager
def working_in(folder: Path):
    before = os.getcwd()
    os.chdir(folder)  # a run with no --out, or a sample with no checkpoint, stays in here
    try:
        yield
    finally:
        os.chdir(before)


def assert_one_clear_answer(argv: list[str], folder: Path) -> int:
    stdout, stderr = io.StringIO(), io.StringIO()
    with working_in(folder), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(argv)
    err = stderr.getvalue()
    assert rc in (0, 1, 2), (argv, rc, err)
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
    errors = [line for line in err.splitlines() if line.startswith("charlm")]
    if rc != 0:
        assert len(errors) == 1 and err.rstrip("\n").splitlines()[-1] == errors[0], (argv, err)
    return rc


def options(data, table: dict[str, st.SearchStrategy[str]], hostile: bool) -> list[str]:
    """Some of the options with plausible values; with `hostile`, one of them gets any value at all.

    Values go as --name=value, since a drawn value may start with '-'.
    """
    present = data.draw(st.lists(st.sampled_from(sorted(table)), unique=True))
    spoiled = data.draw(st.sampled_from(present)) if hostile and present else None
    return [f"{name}={data.draw(HOSTILE_FOR.get(name, HOSTILE) if name == spoiled else table[name])}"
            for name in present]


def paths_from(pool: dict[str, Path], names: list[str]):
    return st.sampled_from(names).map(lambda name: str(pool[name]))


RUN_NUMBER = itertools.count()
# What one example spoils, if anything: about half the examples should run to the end.
SPOIL = st.sampled_from([None, None, None, None, "input", "option", "option", "output", "stop"])


@settings(FUZZ, max_examples=20)
@given(data=st.data())
def test_train_answers_any_options_cleanly(pool, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("train-fuzz", numbered=True)
    spoil = data.draw(SPOIL)
    corpus = data.draw(st.sampled_from(["empty", "binary", "latin1", "missing"])) if spoil == "input" else \
        data.draw(st.sampled_from(["corpus", "folder"]))
    argv = ["train", str(pool[corpus]), *options(data, TRAIN_OPTIONS, hostile=spoil == "option")]
    # Always a small stop (or a bad one): nothing here may train for long.
    argv.append(f"--max-steps={data.draw(NOT_HUGE if spoil == 'stop' else ints(1, 3))}")
    out = data.draw(st.sampled_from(["a_file", "run", "inside a file"])) if spoil == "output" else "fresh"
    argv.append("--out=" + {"fresh": str(folder / f"run-{next(RUN_NUMBER)}"),
                            "inside a file": str(pool["a_file"] / "run")}.get(out, str(pool.get(out))))
    if data.draw(st.integers(0, 5)) == 0:
        resume = data.draw(paths_from(pool, ["model", "notes", "truncated", "missing", "run"]))
        argv.append(f"--resume={resume}")
        if out == "fresh":  # never add steps to the shared model
            argv.append(f"--out={folder / f'resumed-{next(RUN_NUMBER)}'}")
    assert_one_clear_answer(argv, folder)


@settings(FUZZ, max_examples=30)
@given(data=st.data())
def test_sample_answers_any_options_cleanly(pool, tmp_path_factory, data):
    spoil = data.draw(SPOIL)
    candidates = ["notes", "truncated", "missing", "folder", None] if spoil == "input" else ["model", "run"]
    checkpoint = data.draw(st.sampled_from(candidates))
    argv = ["sample", *([str(pool[checkpoint])] if checkpoint else []),
            *options(data, SAMPLE_OPTIONS, hostile=spoil == "option")]
    if data.draw(st.integers(0, 4)) == 0:
        prime_file = data.draw(paths_from(pool, ["corpus", "binary", "empty", "folder", "missing"]))
        argv.append(f"--prime-file={prime_file}")
    assert_one_clear_answer(argv, tmp_path_factory.getbasetemp())


@settings(FUZZ, max_examples=20)
@given(data=st.data())
def test_eval_answers_any_options_cleanly(pool, tmp_path_factory, data):
    spoil = data.draw(SPOIL)
    checkpoints = data.draw(st.lists(paths_from(pool, ["model", "run"]), min_size=1, max_size=2))
    texts = data.draw(st.lists(paths_from(pool, ["corpus", "folder"]), min_size=1, max_size=2))
    if spoil == "input":
        bad = data.draw(st.sampled_from(["latin1", "binary", "empty", "notes", "truncated", "missing", None]))
        if bad is None:
            checkpoints = []  # then the latest run under runs/, and there is none
        else:
            texts.append(str(pool[bad]))
    flags = data.draw(st.lists(st.sampled_from(["--json", "--show"]), max_size=2, unique=True))
    argv = ["eval", *data.draw(st.permutations(checkpoints + texts)), *flags,
            *options(data, EVAL_OPTIONS, hostile=spoil == "option")]
    assert_one_clear_answer(argv, tmp_path_factory.getbasetemp())


def discovered_options(command: str) -> list[str]:
    """The options a command lists in its --help: the fuzz follows the command as it grows."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        assert main([command, "--help"]) == 0
    return sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", stdout.getvalue())) - {"--help"})


@settings(FUZZ, max_examples=10)
@given(data=st.data())
def test_inspect_neurons_answers_any_options_cleanly(pool, tmp_path_factory, data):
    known = discovered_options("inspect-neurons")
    spoil = data.draw(SPOIL)
    argv = ["inspect-neurons", str(pool[data.draw(st.sampled_from(["model", "run"]))])]
    if spoil == "input":
        argv.append(data.draw(paths_from(pool, ["latin1", "binary", "empty", "notes", "missing"])))
    elif data.draw(st.booleans()):
        argv.append(str(pool["corpus"]))
    for name in data.draw(st.lists(st.sampled_from(known), max_size=3, unique=True)) if known else []:
        # The types are not known here: a flag, a small number, a word, a path, or (spoiled) anything.
        drawn = data.draw(st.one_of(st.none(), ints(0, 20), st.sampled_from(["h", "c", "bracket-depth", "x"]),
                                    NOT_HUGE if spoil == "option" else ints(0, 3)))
        argv.append(name if drawn is None else f"{name}={drawn}")
    assert_one_clear_answer(argv, tmp_path_factory.getbasetemp())


@settings(FUZZ, max_examples=150)
@given(logits=st.lists(st.one_of(st.floats(-60, 60), st.just(float("-inf"))), min_size=1, max_size=12)
       .filter(lambda row: any(x != float("-inf") for x in row)),
       temperature=st.floats(min_value=0, exclude_min=True, allow_infinity=True),  # subnormals too
       top_k=st.integers(0, 15), top_p=st.floats(0, 1, exclude_min=True))
def test_sampling_draws_a_real_token_for_any_settings(logits, temperature, top_k, top_p):
    from charlm.sample import filter_logits, pick_next

    row = torch.tensor([logits])
    probs = torch.softmax(filter_logits(row, temperature, top_k, top_p), dim=-1)
    assert bool(torch.isfinite(probs).all()) and abs(float(probs.sum()) - 1) < 1e-4
    assert all(logits[i] != float("-inf") for i in probs[0].nonzero().flatten().tolist())
    token = int(pick_next(row, temperature, top_k, top_p, torch.Generator().manual_seed(0)))
    assert logits[token] != float("-inf")  # never a banned token


@functools.lru_cache(maxsize=None)
def _byte_happy_model(factored: bool):
    """An untrained model over a tiny vocabulary whose byte head is noise: the worst case for
    valid text, since it picks any byte at all wherever it is allowed to."""
    from charlm.model import CharRNN, ModelConfig
    from charlm.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["abc de\n" * 10], "char")
    torch.manual_seed(0)
    config = ModelConfig(tokenizer.vocab_size, "gru", 1, 16, 8, bytes_from=tokenizer.bytes_from if factored else -1)
    return CharRNN(config).eval(), tokenizer


@settings(FUZZ, max_examples=60)
@given(temperature=st.one_of(st.just(0.0), st.floats(0.01, 100)), top_k=st.integers(0, 300),
       top_p=st.floats(0.05, 1.0), num_samples=st.integers(1, 3), seed=st.integers(0, 2**32),
       prime=TEXT, escape=st.floats(-3, 10), bytes_seen=st.booleans(), factored=st.booleans())
def test_sampled_text_is_valid_utf8_for_any_settings(temperature, top_k, top_p, num_samples, seed, prime, escape,
                                                    bytes_seen, factored):
    from charlm.sample import generate_batch

    model, tokenizer = _byte_happy_model(factored)
    with torch.no_grad():  # how much the model wants a byte
        if factored:
            model.head.bias[-1] = escape
        else:
            model.head.bias[tokenizer.bytes_from : tokenizer.bytes_from + 256] = escape
    parts = [[] for _ in range(num_samples)]
    for pieces in generate_batch(model, tokenizer, prime, 40, num_samples, temperature, top_k, top_p,
                                 generator=torch.Generator().manual_seed(seed), bytes_seen=bytes_seen):
        for part, piece in zip(parts, pieces):
            part.append(piece)
    vocabulary = set("abc de\n")
    unseen_in_prime = any(ch not in vocabulary for ch in prime)
    for text in ("".join(part) for part in parts):
        text.encode("utf-8")  # strict: no lone surrogate
        assert "\ufffd" not in text or "\ufffd" in prime  # never a broken byte sequence
        assert len(text) == 40
        if not bytes_seen and not unseen_in_prime:
            assert set(text) <= vocabulary  # bytes never learned are never drawn
