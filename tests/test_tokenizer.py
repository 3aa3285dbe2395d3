"""The tokenizer gives back exactly the text it was given, for any text."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charlm.tokenizer import Tokenizer, tokens_dtype, train_tokenizer

from .conftest import make_text, shared_corpus

# Any text a file or a terminal can hold: every code point but lone surrogates, which
# UTF-8 cannot carry (they are covered on their own below).
TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=60)

TRAINING_TEXT = make_text(5000) + "Ünïcödé 한국어 문장 😀\r\n\ttabs  and   spaces\n"


@pytest.fixture(scope="module")
def char_tok() -> Tokenizer:
    return train_tokenizer([TRAINING_TEXT])


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def subword_tok(request) -> Tokenizer:
    return train_tokenizer([make_text(40_000)], request.param, vocab_size=300)


TRICKY = [
    "",
    "\n",
    "a\nb\r\nc\rd",
    "   leading spaces",
    "trailing spaces   ",
    "runs    of     spaces\t\ttabs",
    "\u2581 sentencepiece's own space mark \u2581\u2581",
    "emoji 😀👩‍👩‍👧 and Hangul 한국어 and 漢字",
    "never seen: Ωmega ∑ ∞ \x01\x7f",
    "A\u0301 combining, ﬁ ligature (NFKC would change these)",
]


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_texts_round_trip(char_tok, text):
    assert char_tok.decode(char_tok.encode(text)) == text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_any_text_round_trips_char(char_tok, text):
    assert char_tok.decode(char_tok.encode(text)) == text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_any_text_round_trips_subword(subword_tok, text):
    assert subword_tok.decode(subword_tok.encode(text)) == text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\u2581"), max_size=60))
def test_fast_char_encoding_matches_sentencepiece(char_tok, text):
    assert char_tok.encode(text).tolist() == char_tok._sp.encode(text)


def test_unseen_characters_use_byte_fallback(char_tok):
    ids = char_tok.encode("Ω")
    assert len(ids) == len("Ω".encode()) == 2
    assert all(char_tok.piece_text(int(i)).startswith("<0x") for i in ids)


def test_every_training_character_is_one_token(char_tok):
    text = "".join(sorted(set(TRAINING_TEXT)))
    assert len(char_tok.encode(text)) == len(text)


def test_stream_decoder_waits_for_a_whole_character(char_tok):
    decoder = char_tok.stream_decoder()
    ids = char_tok.encode("Ω!")  # Ω was never seen: two byte tokens
    assert decoder(int(ids[0])) == ""
    assert decoder(int(ids[1])) == "Ω"
    assert decoder(int(ids[2])) == "!"


def test_lone_surrogates_do_not_crash(char_tok, subword_tok):
    for tok in (char_tok, subword_tok):
        assert tok.decode(tok.encode("a\udcffb")) == "a\ufffdb"


def test_serialized_model_rebuilds_the_same_tokenizer(char_tok):
    again = Tokenizer(char_tok.model, char_tok.kind)
    assert again.encode(TRAINING_TEXT).tolist() == char_tok.encode(TRAINING_TEXT).tolist()


def test_subword_tokens_are_fewer_than_characters(subword_tok):
    text = make_text(2000, seed=5)
    assert len(subword_tok.encode(text)) < 0.7 * len(text)


def test_vocab_size_caps_a_char_vocabulary():
    tok = train_tokenizer(["aaaabbbc"], vocab_size=256 + 2 + 2)
    assert tok.vocab_size == 260
    assert len(tok.encode("c")) == 1 and tok.piece_text(int(tok.encode("c")[0])).startswith("<0x")


def test_token_dtype_is_compact():
    assert tokens_dtype(200) == np.uint8
    assert tokens_dtype(2000) == np.uint16
    assert tokens_dtype(70000) == np.int32


def test_korean_corpus_keeps_every_character():
    text = shared_corpus("korean.txt").read_text(encoding="utf-8")
    tok = train_tokenizer([text])
    distinct = set(text) - {"\n"}
    assert tok.vocab_size == len(distinct) + 256 + 2
    sample = text[:20_000]
    ids = tok.encode(sample)
    assert len(ids) == len(sample)
    assert tok.decode(ids) == sample


def test_character_count_reads_long_id_arrays_in_slices(char_tok, monkeypatch):
    text = "unseen Ωmega ∑ ∞, seen 한국어 and 😀, plain words\n" * 50  # byte-fallback runs cross slices
    ids = char_tok.encode(text)
    monkeypatch.setattr("charlm.tokenizer.COUNT_SLICE", 7)
    assert char_tok.count_chars(ids) == len(text)
    assert char_tok.count_chars(ids[:0]) == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_character_count_without_decoding(char_tok, subword_tok, text):
    for tok in (char_tok, subword_tok):
        assert tok.count_chars(tok.encode(text)) == len(text)
