"""The first hour of a new user, replayed: each rough edge of issue 14 as a command and what it must do.

The items are numbered as in the issue. Each test runs the command a user ran (through
`charlm.cli.main`, in-process) or, where the defect lived in one function, that function,
and asserts the behaviour the user should have seen. One tiny model, trained once on a
text of short stanzas, serves the commands that only read a model.
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import re
import signal
import threading
import typing
from pathlib import Path

import pytest
import torch
from rich.console import Console

from charlm import cli
from charlm.cli import main
from charlm.errors import UsageError

from .conftest import make_text

TINY = ["--hidden", "32", "--embedding", "16", "--batch-size", "8", "--seq-len", "32", "--sample-length", "0"]


def stanzas(chars: int = 12_000) -> str:
    """Short lines in stanzas of four, a blank line after each: plenty of "\\n\\n" to stop at."""
    lines = make_text(chars).splitlines()
    return "".join(line + ("\n\n" if n % 4 == 3 else "\n") for n, line in enumerate(lines))


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A user's folder: a corpus of stanzas and one run trained on it, under runs/."""
    folder = tmp_path_factory.mktemp("home")
    (folder / "poems.txt").write_text(stanzas(), encoding="utf-8")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert main(["train", "poems.txt", *TINY, "--max-steps", "200", "--lr", "0.02", "--out", "runs/poems"]) == 0
    finally:
        os.chdir(cwd)
    return folder


@pytest.fixture
def at_home(home, monkeypatch, capsys) -> Path:
    monkeypatch.chdir(home)
    monkeypatch.setattr(cli, "RUNS_DIR", Path("runs"))
    monkeypatch.delenv("CHARLM_DEBUG", raising=False)
    capsys.readouterr()
    return home


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("charlm")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- 1. "the latest run" is the newest checkpoint at any depth, and commands say which -------------
def test_1_after_compare_the_latest_run_is_the_compared_one_and_every_command_names_it(at_home, capsys):
    rc, _, err = run(capsys, "compare", "poems.txt", "--cells", "lstm", "--hidden", "8", "--embedding", "4",
                     "--max-steps", "3", "--sample-length", "0", "--out", "runs/cmp")
    assert rc == 0, err
    newest = Path("runs/cmp/lstm/best.pt")
    for argv in (["sample", "--length", "5", "--seed", "0"], ["eval", "poems.txt", "--json"],
                 ["inspect-neurons", "--unit", "0", "--show-chars", "50"]):
        rc, _, err = run(capsys, *argv)
        assert rc == 0, err
        using = [line for line in err.splitlines() if line.startswith("using ")]
        assert using and using[0].startswith(f"using {newest} (LSTM 1x8, step 3, "), err
        assert re.search(r"\d\.\d\d nats/char\)$", using[0]), using[0]


def test_1_the_token_cache_is_never_taken_for_a_run(tmp_path):
    from charlm.checkpoint import latest_checkpoint

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "last.pt").write_bytes(b"run")
    (tmp_path / ".cache" / "x").mkdir(parents=True)
    (tmp_path / ".cache" / "x" / "best.pt").write_bytes(b"not a run")
    assert latest_checkpoint(tmp_path) == tmp_path / "old" / "last.pt"
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "best.pt").write_bytes(b"newer, deeper")
    assert latest_checkpoint(tmp_path) == deep / "best.pt"


def test_1_resuming_a_run_folder_continues_from_its_last_state_not_its_best(at_home, capsys, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree("runs/poems", run_dir)
    last_step = torch.load(run_dir / "last.pt", weights_only=True)["state"]["step"]
    best = torch.load(run_dir / "best.pt", weights_only=True)
    best["state"]["step"] = 7  # a best.pt from early in the run
    torch.save(best, run_dir / "best.pt")
    rc, _, err = run(capsys, "train", "--resume", run_dir, "poems.txt", "--max-steps", last_step + 2)
    assert rc == 0, err
    assert f"at step {last_step}" in err


# -- 2. the escapes of --stop and --prime, and the help's own example ---------------------------------
def test_2_the_stop_example_of_sample_help_stops_at_the_first_blank_line(at_home, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    _, help_text, _ = run(capsys, "sample", "--help")
    example = re.search(r'--stop "([^"]+)"', help_text).group(1)
    assert example == "\\n\\n"  # what the user types, backslashes and all
    rc, out, err = run(capsys, "sample", "runs/poems", "--stop", example, "--length", "3000", "--seed", "1",
                       "--prime", "the cat\\n")
    assert rc == 0, err
    assert out.startswith("the cat\n")
    text = out[len("the cat\n"):-1]  # the sample, without the newline write_samples ends with
    assert text.endswith("\n\n") and text.find("\n\n") == len(text) - 2, text


def test_2_escapes_are_the_usual_ones_and_nothing_else():
    from charlm.options import unescape

    assert unescape(r"a\nb\tc\\n\d") == "a\nb\tc\\n\\d"
    assert unescape("\\") == "\\"


# -- 3. each real file once, and what was skipped said ----------------------------------------------
def test_3_a_folder_with_links_reads_each_file_once_and_says_what_it_skipped(at_home, capsys, tmp_path):
    licenses = tmp_path / "licenses"
    licenses.mkdir()
    for n in range(14):
        (licenses / f"LICENSE-{n:02d}").write_text(f"license {n}\n" + make_text(300, seed=n))
    for n in range(3):
        (licenses / f"link-{n}").symlink_to(f"LICENSE-{n:02d}")
    (licenses / "loop").symlink_to(".")  # a folder that links to itself ends
    rc, _, err = run(capsys, "train", licenses, "--hidden", "8", "--embedding", "4", "--max-steps", "1",
                     "--sample-length", "0", "--out", tmp_path / "run")
    assert rc == 0, err
    assert "from 14 file(s)" in err
    assert "skipped 3 links to files already read (link-0, link-1, link-2)" in err


# -- 4. every number an option takes: no nan, no infinity, no negative size ---------------------------
def _numeric_options():
    commands = {"train": cli.train, "sample": cli.sample, "eval": cli.eval_, "inspect-neurons": cli.inspect_neurons,
                "compare": cli.compare, "gradient-flow": cli.gradient_flow}
    for command, function in commands.items():
        for name, hint in typing.get_type_hints(function, include_extras=True).items():
            if typing.get_origin(hint) is not typing.Annotated:  # the return type
                continue
            kinds = {a for a in typing.get_args(typing.get_args(hint)[0]) or [typing.get_args(hint)[0]]}
            if kinds & {int, float} and name != "paths":
                option = next((d for d in typing.get_args(hint)[1].param_decls or () if d.startswith("--")),
                              "--" + name.replace("_", "-"))
                yield command, option, float in kinds


NUMERIC = list(_numeric_options())


@pytest.mark.parametrize("command, option, is_float", NUMERIC, ids=[f"{c} {o}" for c, o, _ in NUMERIC])
def test_4_no_numeric_option_takes_nan_infinity_or_a_negative_number(at_home, capsys, command, option, is_float):
    target = {"train": ["poems.txt"], "compare": ["poems.txt"], "eval": ["runs/poems", "poems.txt"],
              "sample": ["runs/poems"], "inspect-neurons": ["runs/poems"], "gradient-flow": ["runs/poems"]}[command]
    values = ["nan", "inf", "-inf", "-1"] if is_float else (["-1"] if option != "--seed" else [])
    for value in values:
        rc, out, err = run(capsys, command, *target, f"{option}={value}")
        assert rc == 2 and option in one_error(err), (value, err)


def test_4_time_budget_inf_is_refused(at_home, capsys):
    rc, _, err = run(capsys, "train", "poems.txt", "--time-budget", "inf")
    assert rc == 2 and one_error(err) == (
        "charlm train: Invalid value for '--time-budget': must be a finite number, got inf "
        "(see 'charlm train --help')")


# -- 5. a coloured view that is cut says so, and ends at a line ---------------------------------------
def test_5_inspect_neurons_says_how_much_of_the_text_it_shows(at_home, capsys, tmp_path):
    long = tmp_path / "long.txt"
    long.write_text(stanzas(6_000))
    total = len(long.read_text())
    rc, out, err = run(capsys, "inspect-neurons", "runs/poems", long, "--unit", "3", "--show-chars", "500")
    assert rc == 0, err
    note = re.search(r"showing ([\d,]+) of ([\d,]+) characters; --show-chars N for more", out)
    assert note and int(note.group(2).replace(",", "")) == total
    shown = int(note.group(1).replace(",", ""))
    assert 250 <= shown <= 500 and long.read_text()[:shown].endswith("\n")


def test_5_eval_show_says_how_much_of_the_text_it_shows(at_home, capsys):
    rc, out, err = run(capsys, "eval", "runs/poems", "poems.txt", "--show", "--show-chars", "300")
    assert rc == 0, err
    total = len(Path("poems.txt").read_text())
    assert re.search(rf"showing \d{{3}} of {total:,} characters; --show-chars N for more", out), out


def test_5_a_cut_ends_at_a_line_and_never_inside_a_word():
    from charlm.render import cut_at_line

    text = "line one\nline two\nline three\n"
    assert cut_at_line(text, 22) == "line one\nline two\n"
    assert cut_at_line("alpha beta gamma delta", 14) == "alpha beta "
    assert cut_at_line(text, 100) == text
    assert cut_at_line("one\n" + "x " * 50, 40) == "one\n" + "x " * 18  # a line break too early: a space


# -- 6. the progress line: every field that matters, at any width and in a log -------------------------
def test_6_a_narrow_terminal_drops_fields_whole_and_keeps_the_time_left():
    from charlm.progress import ProgressLine

    line = ProgressLine(0.3)
    line.set(step=972, loss=1.523, val=1.6, speed=12345, elapsed=31, left=89, grad_norm=0.41, clip_rate=0.03)
    for width in range(46, 160):
        shown = line.fit(width).plain
        assert len(shown) <= width and "…" not in shown, width
        assert shown.endswith("left 0:01:29") and "loss 1.523" in shown and "val 2.308" in shown
    assert "12,345 chars/s" in line.fit(80).plain  # at 80 only the least useful fields go


def test_6_a_log_gets_complete_lines_at_a_modest_pace():
    from charlm.progress import RichReporter

    log = io.StringIO()
    reporter = RichReporter(Console(file=log, width=80))  # not a terminal
    reporter.start(0.0)
    for step in range(1, 201):  # two hundred updates within a second: one line
        reporter.update(step=step, loss=2.0, val=None, chars_per_sec=1000.0, progress=step / 1000, elapsed=step / 100,
                        grad_norm=0.5, clip_rate=0.0)
    reporter.validated(step=200, val=1.5)
    reporter.finish(step=200, loss=2.0, val=1.5, elapsed=2.0, val_step=200)
    lines = log.getvalue().splitlines()
    progress = [line for line in lines if re.match(r"step \d+ \(\d+%\): loss", line)]
    assert len(progress) == 2  # the first update, and the run's last figures
    assert progress[-1] == ("step 200 (100%): loss 2.000, grad 0.5 clip 0%, val 2.164 bpc at step 200, "
                            "1,000 chars/s, elapsed 0:00:02, left 0:00:00")
    assert "step 200: validation 1.5000 nats/char = 2.1640 bits/char" in lines
    assert "\x1b" not in log.getvalue() and "…" not in log.getvalue()


def test_6_training_into_a_file_writes_readable_lines(at_home, capsys, tmp_path):
    rc, _, err = run(capsys, "train", "poems.txt", *TINY, "--max-steps", "30", "--out", tmp_path / "run")
    assert rc == 0, err
    lines = err.splitlines()
    assert any(re.fullmatch(r"step \d+ \(\d+%\): loss [\d.]+, grad .+, val .+, [\d,]+ chars/s, "
                            r"elapsed \d:\d\d:\d\d, left \d:\d\d:\d\d", line) for line in lines), err
    assert all(len(line) < 200 and "…" not in line for line in lines)


# -- 7. after Ctrl-C: "interrupted", and a validation figure names its step ----------------------------
def test_7_an_interrupted_run_says_so_and_dates_its_last_validation(at_home, capsys, monkeypatch, tmp_path):
    from charlm.progress import RichReporter

    validated = []
    original_validated, original_update = RichReporter.validated, RichReporter.update

    def note_validation(self, **info):
        validated.append(info["step"])
        original_validated(self, **info)

    interrupted_after: list[int] = []

    def ctrl_c_after_a_validation(self, **info):
        original_update(self, **info)
        if validated and info["step"] > validated[-1] and not interrupted_after:
            interrupted_after.append(validated[-1])
            signal.raise_signal(signal.SIGINT)  # once: a second Ctrl-C stops at once

    monkeypatch.setattr(RichReporter, "validated", note_validation)
    monkeypatch.setattr(RichReporter, "update", ctrl_c_after_a_validation)
    rc, _, err = run(capsys, "train", "poems.txt", *TINY, "--time-budget", "30", "--out", tmp_path / "run")
    assert rc == 1
    stopped = re.search(r"^interrupted: (\d+) steps in .*; last validation at step (\d+): [\d.]+ nats/char", err,
                        re.MULTILINE)
    assert stopped and int(stopped.group(2)) == interrupted_after[0] < int(stopped.group(1)), err
    assert "done:" not in err
    from charlm.checkpoint import describe, load_checkpoint

    saved = describe(load_checkpoint(tmp_path / "run" / "last.pt"))
    assert saved.endswith(f"nats/char at step {interrupted_after[0]:,}"), saved


def test_7_the_finish_line_names_the_step_of_its_validation():
    from charlm.progress import finish_line

    assert finish_line(972, 62, 1.6879, 351, interrupted=True) == (
        "interrupted: 972 steps in 0:01:02; last validation at step 351: 1.6879 nats/char = 2.4351 bits/char")
    assert finish_line(972, 62, 1.6879, 972, interrupted=False).startswith("done: 972 steps in 0:01:02; validation "
                                                                           "at step 972: 1.6879")


def test_7_a_checkpoint_saved_after_its_validation_says_when_it_was_validated():
    from charlm.checkpoint import describe

    payload = {"model_config": {"cell": "lstm", "layers": 1, "hidden": 256}, "val_nats_per_char": 1.6879,
               "state": {"step": 972, "history": [{"step": 351, "val_nats_per_char": 1.6879}]}}
    assert describe(payload) == "LSTM 1x256, step 972; 1.69 nats/char at step 351"


# -- 8. the vocabulary in words ----------------------------------------------------------------------
def test_8_the_summary_counts_characters_and_byte_fallback_apart(at_home, capsys, tmp_path):
    rc, _, err = run(capsys, "train", "poems.txt", *TINY, "--max-steps", "2", "--out", tmp_path / "run")
    assert rc == 0, err
    distinct = len(set(Path("poems.txt").read_text()))
    assert f"{distinct} characters (+256 byte fallback)" in err


# -- 9. a guess sits under the character it guesses -----------------------------------------------------
def test_9_each_guess_is_shown_under_the_character_it_is_for():
    from charlm.render import CharacterView

    guesses = [[("X", 0.9)], [("Y", 0.9)], [("Z", 0.9)]]  # after "a": X; after "b": Y; after "c": Z
    out = io.StringIO()
    Console(file=out, width=20).print(CharacterView("abc", [None] * 3, guesses))
    lines = out.getvalue().splitlines()
    assert lines[0].rstrip() == "abc" and lines[1].rstrip() == " XY"


def test_9_predictions_say_what_the_rows_are(at_home, capsys):
    rc, out, err = run(capsys, "inspect-neurons", "--predictions", "--text", "the cat sat\n")
    assert rc == 0, err
    assert "three likeliest guesses for it, made from the text before it" in " ".join(out.split())


# -- 10. eval --show can be kept ---------------------------------------------------------------------
def test_10_eval_show_is_written_as_a_page_and_an_image(at_home, capsys, tmp_path):
    page, image = tmp_path / "view.html", tmp_path / "view.svg"
    rc, _, err = run(capsys, "eval", "runs/poems", "poems.txt", "--show-chars", "200", "--html", page, "--svg", image)
    assert rc == 0, err
    assert "surprisal per character" in page.read_text() and "<html" in page.read_text()
    assert "charlm&#160;eval" in image.read_text() and image.read_text().startswith("<svg")
    assert f"wrote {page}" in err and f"wrote {image}" in err


# -- 11. a sample is valid text --------------------------------------------------------------------------
def test_11_a_model_whose_text_had_no_bytes_never_writes_one(at_home, capsys):
    from charlm.checkpoint import load_checkpoint, trained_on_bytes

    payload = load_checkpoint("runs/poems/best.pt")
    assert payload["corpus"]["byte_tokens"] == 0 and not trained_on_bytes(payload)
    vocabulary = set(Path("poems.txt").read_text())
    rc, out, err = run(capsys, "sample", "runs/poems", "--length", "2000", "--temp", "3", "--seed", "2")
    assert rc == 0, err
    assert set(out) <= vocabulary


def test_11_checkpoints_that_did_not_count_bytes_get_a_safe_default():
    from charlm.checkpoint import trained_on_bytes

    # A char vocabulary learned from the whole text has a token for every character of it.
    assert not trained_on_bytes({"train_config": {"tokenizer": "char", "vocab_size": None}, "corpus": {}})
    # A capped or subword vocabulary may have needed bytes: they stay possible, and valid.
    assert trained_on_bytes({"train_config": {"tokenizer": "char", "vocab_size": 300}, "corpus": {}})
    assert trained_on_bytes({"train_config": {"tokenizer": "bpe", "vocab_size": 2000}})


def test_11_a_prime_with_unseen_characters_lets_the_model_continue_them(at_home, capsys):
    rc, out, err = run(capsys, "sample", "runs/poems", "--prime", "한국어 ", "--length", "300", "--temp", "2",
                       "--seed", "3")
    assert rc == 0, err
    assert out.startswith("한국어 ") and "\ufffd" not in out
    out.encode("utf-8")  # no lone surrogate either


# The property over random models and settings is in tests/test_fuzz.py:
# test_sampled_text_is_valid_utf8_for_any_settings.


# -- 12. a truncated checkpoint, in charlm's words ---------------------------------------------------------
def test_12_a_truncated_checkpoint_is_named_with_its_size_and_torch_stays_quiet(at_home, capsys, tmp_path,
                                                                                 monkeypatch):
    cut = tmp_path / "cut.pt"
    data = Path("runs/poems/best.pt").read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    rc, _, err = run(capsys, "sample", cut)
    assert rc == 2
    assert one_error(err) == (f"charlm: {cut}: cannot be read: truncated or damaged, or not a charlm checkpoint "
                              f"({len(data) // 3:,} bytes)")
    monkeypatch.setenv("CHARLM_DEBUG", "1")
    with pytest.raises(UsageError) as raised:
        main(["sample", str(cut)])
    assert raised.value.__cause__ is not None  # torch's own exception, for the bug report


# -- 13. evaluating an empty file ------------------------------------------------------------------------
def test_13_an_empty_file_has_nothing_to_evaluate(at_home, capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    rc, _, err = run(capsys, "eval", "runs/poems", empty)
    assert rc == 2 and one_error(err) == f"charlm: {empty}: is empty, nothing to evaluate"


# -- 14. bad input is 2 everywhere, and a failed start leaves no folder ---------------------------------
@pytest.mark.parametrize("content", [b"caf\xe9 au lait\n", b"\n"], ids=["undecodable", "too short"])
def test_14_bad_text_exits_2_and_leaves_no_run_folder(at_home, capsys, tmp_path, content):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    rc, _, err = run(capsys, "train", bad, "--out", tmp_path / "new" / "run")
    assert rc == 2, err
    one_error(err)
    assert not (tmp_path / "new" / "run").exists()  # (new/ may keep the vocabulary cache)
    rc, _, err = run(capsys, "eval", "runs/poems", bad)
    assert rc == 2, err


# -- 15. help and tables at 80 columns ---------------------------------------------------------------------
COMMANDS = ["", "train", "sample", "eval", "inspect-neurons", "compare", "gradient-flow", "download"]


@pytest.mark.parametrize("command", COMMANDS)
def test_15_every_help_reads_well_at_80_columns(capsys, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "80")
    rc, out, _ = run(capsys, *([command] if command else []), "--help")
    assert rc == 0
    assert max(len(line) for line in out.splitlines()) <= 80
    assert not re.search(r"<(bool|int|str|float|path|list)", out, re.IGNORECASE), out  # type placeholders
    assert "…" not in out  # nothing cut off (a default, a path)
    usage = re.search(r"Usage: charlm(?: [a-z-]+)? \[OPTIONS\](.*)", out).group(1).strip()
    assert re.fullmatch(r"[A-Z\[\]. ]*", usage), usage  # [PATHS]..., [CKPT] [FILE]: one style
    assert "--no-" not in out.replace("--no-clip", "")  # no flag doubled as --x/--no-x


@pytest.mark.parametrize("command", COMMANDS[1:])
def test_15_examples_fit_80_columns_without_wrapping(command):
    function = next(c.callback for c in cli.app.registered_commands if (c.name or c.callback.__name__) == command)
    for line in function.__doc__.splitlines():
        if line.strip().startswith("charlm "):
            shown = re.sub(r"\[/?\w*\]", "", line.strip())  # without rich markup
            assert len(shown) <= 77, shown  # the help's margin is one column each side


def test_15_the_eval_table_never_splits_a_run_name():
    from charlm.evaluate import EvalReport, EvalResult
    from charlm.render import eval_table

    paths = ["runs/20260101-120000-tinyshakespeare-lstm/best.pt", "runs/20260101-130000-compare-poems/gru/best.pt"]
    reports = [EvalReport(p, EvalResult(1000.0, 700, 700), []) for p in paths]
    out = io.StringIO()
    Console(file=out, width=80).print(eval_table(reports))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    for path in paths:
        assert path in text, text
    out = io.StringIO()
    Console(file=out, width=120).print(eval_table(reports))  # room enough: a table
    assert "┃ checkpoint" in out.getvalue() and paths[0] in out.getvalue()


# -- 16. the README's install text is true ---------------------------------------------------------------
def test_16_the_readme_gives_the_cpu_only_install_and_keeps_its_two_commands():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "pip install torch==2.13.0 && pip install -e . && charlm train --time-budget 60 && charlm sample" in readme
    assert "pip install torch==2.13.0 && pip install -e '.[test]' && python -m pytest -q" in readme
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in readme
    assert "takes the CPU build" not in readme


# -- 17. the docs' corpora can be had, checked -------------------------------------------------------------
@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local server standing in for raw.githubusercontent.com, with a generated tinyshakespeare."""
    import hashlib

    from charlm import download

    root = tmp_path / "mirror"
    source = download.CORPORA["tinyshakespeare"]
    text = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 50).encode()
    (root / source.paths[0]).parent.mkdir(parents=True)
    (root / source.paths[0]).write_bytes(text)
    fake = download.Source(source.name, hashlib.sha256(text).hexdigest(), len(text), source.paths, source.build,
                           source.about)
    monkeypatch.setitem(download.CORPORA, "tinyshakespeare", fake)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("CHARLM_DOWNLOAD_BASE", f"http://127.0.0.1:{server.server_port}")
    yield root / source.paths[0], text
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no access log on stderr
        pass


def test_17_download_fetches_checks_and_writes_the_corpus(mirror, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    served, text = mirror
    rc, out, err = run(capsys, "download", "tinyshakespeare")
    assert rc == 0, err
    assert out == "tinyshakespeare.txt\n" and Path("tinyshakespeare.txt").read_bytes() == text
    assert "SHA-256 checked" in err
    rc, out, err = run(capsys, "download", "tinyshakespeare")  # again: already there, nothing fetched
    assert rc == 0 and "already there" in err


def test_17_a_corrupted_download_is_one_line_and_leaves_nothing(mirror, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    served, text = mirror
    served.write_bytes(text[:-1] + b"!")
    rc, out, err = run(capsys, "download", "tinyshakespeare", "--out", "data/shakespeare.txt")
    assert rc == 1 and "checksum mismatch" in one_error(err) and "nothing written" in err
    assert not Path("data/shakespeare.txt").exists()
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and "mirror" not in p.parts]  # nor a temporary file


def test_17_offline_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import socket

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    rc, _, err = run(capsys, "download", "korean", "--base-url", f"http://127.0.0.1:{port}")
    line = one_error(err)
    assert rc == 1 and "cannot download" in line and "offline?" in line
    assert not Path("korean.txt").exists()


def test_17_the_korean_corpus_is_rebuilt_as_its_sources_note_says():
    from charlm.download import _korean_text

    first = '{"doc_id": "1_0", "text": "첫째 줄\\r\\n둘째 줄"}\n{"doc_id": "1_1", "text": "셋째"}\n'
    second = '{"doc_id": "2_0", "text": "다른 이야기"}\n'
    rebuilt = _korean_text([first.encode(), second.encode()]).decode()
    assert rebuilt == "첫째 줄\n둘째 줄\n셋째\n\n다른 이야기\n"


def test_17_the_docs_say_where_each_corpus_comes_from_and_use_todays_defaults():
    from charlm.config import TrainConfig

    docs = Path(__file__).resolve().parents[1] / "docs"
    for name, corpus in (("learn.md", "tinyshakespeare"), ("learn.ko.md", "tinyshakespeare"),
                         ("learn.ko.md", "korean")):
        text = (docs / name).read_text()
        if f"{corpus}.txt" in text:
            assert f"charlm download {corpus}" in text, (name, corpus)
    english = (docs / "learn.md").read_text()
    for streams in re.findall(r"(\d+) text streams", english):
        assert int(streams) == TrainConfig.batch_size, streams
    assert f"instead of the\ndefault {TrainConfig.seq_len}" in english
    korean = (docs / "learn.ko.md").read_text()
    assert f"학습은 {TrainConfig.batch_size}개(`--batch-size`)의 텍스트 흐름" in korean
    assert f"기본값 {TrainConfig.seq_len}자 대신" in korean
    # (The outputs themselves are refreshed by re-running each command; see the TODO at the top.)
