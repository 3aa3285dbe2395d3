"""The jamo tokenizer: Hangul syllables spelled in jamo, composed back as they stream, any text kept exactly."""

from __future__ import annotations

import json
import random
import unicodedata
from dataclasses import asdict

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charlm.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from charlm.cli import main
from charlm.corpus import open_corpus
from charlm.evaluate import evaluate_text
from charlm.features import FEATURES
from charlm.jamo import FINAL, INITIAL, NONE, VOWEL, JamoTokenizer, choose_kind
from charlm.model import CharRNN, ModelConfig
from charlm.neurons import align_text, search_units
from charlm.progress import Reporter
from charlm.sample import generate
from charlm.tokenizer import Tokenizer, train_tokenizer
from charlm.train import train

from .conftest import TINY_MODEL, TINY_TRAIN, make_text, shared_corpus

WORDS = ["그는", "학교에서", "집으로", "돌아갔다", "사람", "이야기를", "하였다", "어머니가", "눈물을", "흘렸다",
         "밤이", "깊었다", "우리는", "함께", "밥을", "먹고", "웃었다", "편지를", "썼다", "바람", "소리"]


def korean_text(chars: int, seed: int = 0) -> str:
    """Sentences of common words: enough Hangul for a model to learn something in seconds."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < chars:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7))) + rng.choice([".", "?", "!"])
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines) + "\n"


# -- the text a Korean user may have -----------------------------------------------------------------
def _chars(low: int, high: int) -> st.SearchStrategy[str]:
    return st.characters(min_codepoint=low, max_codepoint=high, exclude_categories=("Cs",))


SYLLABLES = _chars(0xAC00, 0xD7A3)
CONJOINING = st.one_of(_chars(0x1100, 0x11FF), _chars(0xA960, 0xA97F), _chars(0xD7B0, 0xD7FF))
MODERN_JAMO = st.one_of(_chars(0x1100, 0x1112), _chars(0x1161, 0x1175), _chars(0x11A8, 0x11C2))
PIECES = st.one_of(
    st.text(SYLLABLES, min_size=1, max_size=6),  # ordinary Korean
    st.text(SYLLABLES, min_size=1, max_size=4).map(lambda s: unicodedata.normalize("NFD", s)),  # macOS names
    st.text(_chars(0x3131, 0x318E), min_size=1, max_size=3),  # compatibility jamo: ㅋㅋ ㅠㅠ
    st.text(_chars(0xFFA0, 0xFFDC), min_size=1, max_size=3),  # halfwidth jamo
    st.text(CONJOINING, min_size=1, max_size=4),  # old Hangul, fillers, any conjoining jamo
    st.sampled_from(["ᄒᆞᆫ", "ᄀᆞᄅᆞᆷ", "ᄠᅳᆮ", "ᄆᆞᅀᆞ", "나ᄅᆞ"]),  # old Hangul as written
    st.text(MODERN_JAMO, min_size=1, max_size=5),  # half-formed: a vowel alone, two initials, ...
    st.tuples(SYLLABLES, MODERN_JAMO).map("".join),  # a syllable, then a loose jamo (가 + ᆫ)
    st.text(_chars(0x10FD00, 0x10FD5F), min_size=1, max_size=2),  # where decomposed jamo are stored
    st.sampled_from(["😀", "👩‍👩‍👧", "🇰🇷", "👍🏽", "\u2581", " ", "\n", "\r\n", "\t"]),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=5),  # any script
)
MIXED = st.lists(PIECES, max_size=12).map("".join)

TRAINING = korean_text(3000) + "".join(chr(c) for c in range(0xAC00, 0xD7A4, 97)) + \
    "ᄒᆞᆫ글 " + unicodedata.normalize("NFD", "한국어") + " ㅋㅋ ﾡ 😀 Hello, 世界\n"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer([TRAINING], "jamo")


@pytest.fixture(scope="module")
def small_tok() -> Tokenizer:
    """Jamo for 가, 나, 다 only: most syllables must fall back, whole, to their bytes."""
    return train_tokenizer(["가나다 abc"], "jamo")


@pytest.fixture(scope="module")
def every_jamo_tok() -> Tokenizer:
    return train_tokenizer(["".join(chr(c) for c in range(0xAC00, 0xD7A4))], "jamo")


# -- round trip -------------------------------------------------------------------------------------
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=MIXED)
def test_any_mix_of_korean_forms_round_trips(tok, small_tok, text):
    for tokenizer in (tok, small_tok):
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert tokenizer.count_chars(ids) == len(text)
        assert "".join(tokenizer.token_texts(ids.tolist())) == text


@pytest.mark.parametrize("text", [
    "", "한", "가", "한국어 문장", unicodedata.normalize("NFD", "한국어 문장"),
    "가\u11ab", "\u1100\u1100\u1161", "\u1161", "\u11ab", "ᄒᆞᆫ", "\u3131\u314f", "\uffa1\uffc2",
    "\U0010fd00\U0010fd20\U0010fd41", "가\U0010fd41", "😀한👍🏽", "\u2581한\u2581",
])
def test_tricky_korean_texts_round_trip(tok, small_tok, text):
    for tokenizer in (tok, small_tok):
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_a_decomposed_syllable_and_the_same_jamo_in_the_text_are_different_tokens(tok):
    composed, decomposed = tok.encode("한"), tok.encode(unicodedata.normalize("NFD", "한"))
    assert [tok.role[i] for i in composed] == [INITIAL, VOWEL, FINAL]
    assert all(tok.role[i] == NONE for i in decomposed)  # seen in training: characters of their own
    assert [tok.piece_text(int(i)) for i in composed] == [tok.piece_text(int(i)) for i in decomposed]
    assert tok.decode(composed) == "한" and tok.decode(decomposed) == "\u1112\u1161\u11ab"


def test_every_syllable_decomposes_by_unicode_arithmetic(every_jamo_tok):
    syllables = "".join(chr(c) for c in range(0xAC00, 0xD7A4))
    ids = every_jamo_tok.encode(syllables)
    assert "".join(every_jamo_tok.token_texts(ids.tolist(), compose=False)) == unicodedata.normalize("NFD", syllables)
    assert every_jamo_tok.decode(ids) == syllables
    assert np.count_nonzero(every_jamo_tok.role[ids] == INITIAL) == len(syllables)


def test_a_syllable_with_an_unknown_jamo_falls_back_whole_to_its_bytes(small_tok):
    ids = small_tok.encode("각")  # no final ㄱ in 가나다
    assert len(ids) == 3 and all(small_tok.piece_text(int(i)).startswith("<0x") for i in ids)
    assert small_tok.decode(ids) == "각"
    assert [small_tok.role[i] for i in small_tok.encode("나")] == [INITIAL, VOWEL]


def test_reserved_code_points_in_the_text_go_through_bytes(tok):
    ids = tok.encode("\U0010fd00")
    assert len(ids) == 4 and tok.decode(ids) == "\U0010fd00"


def test_a_jamo_vocabulary_is_small_and_rebuilt_from_its_model(tok):
    again = Tokenizer(tok.model, "jamo")
    assert isinstance(again, JamoTokenizer)
    assert again.encode(TRAINING).tolist() == tok.encode(TRAINING).tolist()
    assert tok.vocab_size < 256 + 2 + 150  # about 70 jamo and the few other characters


def test_korean_corpus_needs_under_a_tenth_of_the_char_vocabulary():
    text = shared_corpus("korean.txt").read_text(encoding="utf-8")
    char, jamo = train_tokenizer([text], "char"), train_tokenizer([text], "jamo")
    assert jamo.vocab_size - 258 < (char.vocab_size - 258) / 10
    ids = jamo.encode(text)
    assert jamo.decode(ids) == text and jamo.count_chars(ids) == len(text)


# -- streaming --------------------------------------------------------------------------------------
def test_a_syllable_is_given_out_when_the_next_token_shows_it_is_complete(tok):
    decoder = tok.stream_decoder()
    ids = tok.encode("가한a가")  # 가: initial vowel; 한: initial vowel final
    assert [decoder(int(i)) for i in ids] == ["", "", "가", "", "한", "a", "", ""]
    assert decoder.flush() == "가"  # the end completes it


def test_ill_formed_jamo_come_out_as_jamo(tok):
    g, a = tok.encode("가").tolist()
    n, _, final_n = tok.encode("난").tolist()
    decoder = tok.stream_decoder()
    pieces = [decoder(i) for i in (a, g, n, a, final_n, final_n, a)] + [decoder.flush()]
    # a vowel alone; an initial followed by an initial; 난; a second final; a vowel alone
    assert "".join(pieces) == "\u1161" + "\u1100" + "난" + "\u11ab" + "\u1161"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_token_sequence_decodes_with_nothing_lost(tok, data):
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=40))
    text = tok.decode(ids)  # never raises
    plain = [i for i in ids if tok._byte[i] < 0]
    if len(plain) == len(ids):  # without byte tokens, every jamo drawn is in the text
        assert unicodedata.normalize("NFD", text) == unicodedata.normalize(
            "NFD", "".join(tok.piece_text(i) for i in ids))
    assert "".join(tok.token_texts(ids)) == text


def test_a_syllable_belongs_to_its_last_jamo(tok):
    ids = tok.encode("가한a").tolist()
    assert tok.token_texts(ids) == ["", "가", "", "", "한", "a"]


def test_an_untrained_model_streams_ill_formed_jamo_without_losing_any():
    text = korean_text(20_000)
    tokenizer = train_tokenizer([text], "jamo")
    torch.manual_seed(0)
    untrained = CharRNN(ModelConfig(tokenizer.vocab_size, hidden=16, embedding=8, bytes_from=tokenizer.bytes_from))
    wild = "".join(generate(untrained, tokenizer, length=300, temperature=1.5,
                            generator=torch.Generator().manual_seed(0)))
    assert len(wild) == 300  # ill-formed jamo are counted and shown, not dropped
    assert unicodedata.normalize("NFC", wild) == wild  # nothing composable is left apart


def test_a_jamo_model_trained_for_seconds_writes_well_formed_hangul(tmp_path):
    corpus = tmp_path / "ko.txt"
    corpus.write_text(korean_text(20_000), encoding="utf-8")
    result = train(open_corpus([corpus]), TINY_MODEL, {**TINY_TRAIN, "max_steps": 150, "tokenizer": "jamo"},
                   out=tmp_path / "run")
    model, tokenizer = model_from_checkpoint(load_checkpoint(result.out_dir / "last.pt"))
    assert tokenizer.kind == "jamo"
    text = "".join(generate(model, tokenizer, prime="그는 ", length=200, temperature=0.5,
                            generator=torch.Generator().manual_seed(0)))
    assert len(text) == 200 and unicodedata.normalize("NFC", text) == text
    hangul = [c for c in text if not c.isspace() and c not in ".?!"]
    syllables = [c for c in hangul if "\uac00" <= c <= "\ud7a3"]
    assert len(syllables) >= 0.9 * len(hangul), text
    # The held-out figure is per character of the text: a syllable counts once.
    report = evaluate_text(result.out_dir / "last.pt", open_corpus([corpus]))
    assert report.result.chars == len(corpus.read_text(encoding="utf-8")) - 1
    assert report.result.tokens > 2 * report.result.chars * 0.9


# -- --tokenizer auto -------------------------------------------------------------------------------
def test_auto_picks_jamo_for_hangul_heavy_text_and_says_so():
    kind, message = choose_kind("auto", [korean_text(2000)])
    assert kind == "jamo" and "jamo" in message and "--tokenizer char" in message
    assert choose_kind("auto", [make_text(2000)]) == ("char", None)
    mixed = korean_text(400) + make_text(2000)  # a little Korean in English
    assert choose_kind("auto", [mixed]) == ("char", None)
    assert choose_kind("char", [korean_text(2000)]) == ("char", None)


def test_a_run_with_auto_records_the_tokenizer_it_chose(tmp_path):
    class Messages(Reporter):
        said: list[str] = []

        def message(self, text):
            self.said.append(text)

    corpus = tmp_path / "ko.txt"
    corpus.write_text(korean_text(5000), encoding="utf-8")
    reporter = Messages()
    result = train(open_corpus([corpus]), TINY_MODEL, {**TINY_TRAIN, "max_steps": 2, "tokenizer": "auto"},
                   out=tmp_path / "run", reporter=reporter)
    payload = load_checkpoint(result.out_dir / "last.pt")
    assert payload["tokenizer"]["kind"] == payload["train_config"]["tokenizer"] == "jamo"
    assert any("auto" in said and "jamo" in said for said in reporter.said)


# -- a checkpoint from elsewhere ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def future_checkpoint(tmp_path_factory):
    """A whole run's checkpoint whose tokenizer is of a kind this charlm has never heard of."""
    folder = tmp_path_factory.mktemp("future")
    text = folder / "t.txt"
    text.write_text(make_text(3000), encoding="utf-8")
    train(open_corpus([text]), TINY_MODEL, {**TINY_TRAIN, "max_steps": 1}, out=folder / "run")
    payload = load_checkpoint(folder / "run" / "last.pt")
    for key in ("format", "version", "path"):
        payload.pop(key)
    payload["tokenizer"]["kind"] = "syllable-pairs"
    save_checkpoint(folder / "future.pt", payload)
    return folder / "future.pt", text


@pytest.mark.parametrize("command", ["sample", "eval", "inspect-neurons", "train --resume"])
def test_a_tokenizer_this_charlm_does_not_know_is_one_line_exit_2(future_checkpoint, capsys, command):
    path, text = future_checkpoint
    argv = {"sample": ["sample", str(path)], "eval": ["eval", str(path), str(text)],
            "inspect-neurons": ["inspect-neurons", str(path), str(text)],
            "train --resume": ["train", "--resume", str(path)]}[command]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "'syllable-pairs'" in err[0] and "jamo" in err[0]


# -- features for inspect-neurons ---------------------------------------------------------------------
QUOTED = '그는 "책을 읽었다."'


@pytest.mark.parametrize("name, expected", [
    ("jamo-position", [2, 3, 0, 0, 3, 3, 0, 3, 3, 2, 0, 0]),  # 2: ends on its vowel, 3: on a final
    ("syllable-boundary", [1, 1, 0, 0, 1, 1, 0, 1, 1, 1, 0, 0]),
    ("eojeol-position", [1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5]),  # quotes and the full stop belong to the word
])
def test_korean_features_of_precomposed_text(name, expected):
    assert FEATURES[name](QUOTED).tolist() == expected


SPELLED_OUT = unicodedata.normalize("NFD", "한") + "가\u11ab ᄒᆞᆫ ㅋ"  # NFD, a loose final, old Hangul


@pytest.mark.parametrize("name, expected", [
    ("jamo-position", [1, 2, 3, 2, 3, 0, 1, 2, 3, 0, 0]),  # ㅋ is a letter of its own, not a syllable's part
    ("syllable-boundary", [0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0]),  # 가 goes on into the loose final
    ("eojeol-position", [1, 2, 3, 4, 5, 0, 1, 2, 3, 0, 1]),
])
def test_korean_features_of_conjoining_jamo(name, expected):
    assert FEATURES[name](SPELLED_OUT).tolist() == expected


SENTENCE = '그는 "밥을 먹고.'


@pytest.mark.parametrize("name, expected", [
    # tokens: 그(ㄱ ㅡ) 는(ㄴ ㅡ ㄴ) ' ' '"' 밥(ㅂ ㅏ ㅂ) 을(ㅇ ㅡ ㄹ) ' ' 먹(ㅁ ㅓ ㄱ) 고(ㄱ ㅗ) '.'
    ("jamo-position", [1, 2, 1, 2, 3, 0, 0, 1, 2, 3, 1, 2, 3, 0, 1, 2, 3, 1, 2, 0]),
    ("syllable-boundary", [0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0]),
    ("eojeol-position", [1, 1, 2, 2, 2, 0, 1, 2, 2, 2, 3, 3, 3, 0, 1, 1, 1, 2, 2, 3]),
    ("word-position", [1, 1, 2, 2, 2, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1, 1, 1, 2, 2, 0]),
])
def test_a_jamo_model_is_searched_over_its_tokens(tok, name, expected):
    aligned = align_text(tok, SENTENCE)
    units, values = search_units(tok, aligned, {name: FEATURES[name](SENTENCE)})
    assert len(units.char_token) == len(aligned.tokens) == len(expected)
    assert values[name].tolist() == expected


def test_a_jamo_models_character_takes_the_state_after_its_last_jamo(tok):
    aligned = align_text(tok, "가한a")
    assert aligned.text == "가한a"
    assert aligned.char_token.tolist() == [1, 4, 5]  # 가 at its vowel, 한 at its final


def test_inspect_finds_units_of_a_jamo_model_by_jamo_position(tmp_path, capsys, tok):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(tok.vocab_size, "gru", hidden=8, embedding=4, bytes_from=tok.bytes_from))
    path = tmp_path / "jamo.pt"
    save_checkpoint(path, {"model_config": asdict(model.config), "model": model.state_dict(),
                           "tokenizer": {"kind": tok.kind, "model": tok.model}})
    text = tmp_path / "ko.txt"
    text.write_text(korean_text(1500), encoding="utf-8")
    for feature in ("jamo-position", "syllable-boundary", "eojeol-position"):
        capsys.readouterr()
        assert main(["inspect-neurons", str(path), str(text), "--find", feature, "--top", "3", "--json"]) == 0
        ranking = json.loads(capsys.readouterr().out)
        assert len(ranking) == 3 and all(-1 <= entry["score"] <= 1 for entry in ranking)
        assert abs(ranking[0]["score"]) > 0.1  # an untrained GRU's units already echo what they read
