"""Training data: contiguous streams, shifted targets, a compact cache that is reused."""

from __future__ import annotations

import numpy as np
import pytest

from charlm.corpus import open_corpus
from charlm.checkpoint import load_checkpoint
from charlm.data import StreamBatches, encode_corpus, learn_vocabulary, split_tokens
from charlm.tokenizer import train_tokenizer

from .conftest import TINY_MODEL, TINY_TRAIN


def test_batches_walk_contiguous_streams_with_targets_shifted_by_one():
    tokens = np.arange(1000, dtype=np.int64)
    batches = StreamBatches(tokens, batch_size=4, seq_len=10)
    assert batches.stream_len == 250
    x0, y0 = batches.get(0)
    x1, _ = batches.get(1)
    assert x0.shape == y0.shape == (4, 10)
    # Each row is one stream: row s starts at s * stream_len and the next batch continues it.
    assert x0[:, 0].tolist() == [0, 250, 500, 750]
    assert (y0 == x0 + 1).all()
    assert (x1[:, 0] == x0[:, -1] + 1).all()


def test_every_batch_of_an_epoch_fits_inside_its_stream():
    tokens = np.arange(1003, dtype=np.int64)
    batches = StreamBatches(tokens, batch_size=3, seq_len=7)
    seen = []
    for i in range(batches.batches_per_epoch):
        x, y = batches.get(i)
        assert x.shape == (3, 7)
        assert (y == x + 1).all()
        seen.append(x[0])
    row0 = np.concatenate(seen)
    assert (np.diff(row0) == 1).all()


def test_ranks_take_disjoint_streams():
    tokens = np.arange(1200, dtype=np.int64)
    firsts = [StreamBatches(tokens, 3, 10, rank=r, world=2).get(0)[0][:, 0].tolist() for r in range(2)]
    assert not set(firsts[0]) & set(firsts[1])
    assert sorted(firsts[0] + firsts[1]) == [0, 200, 400, 600, 800, 1000]


def test_split_is_contiguous_and_holds_out_the_end():
    tokens = np.arange(100)
    train, val = split_tokens(tokens, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    train, val = split_tokens(tokens, 0.0)
    assert len(train) == 100 and len(val) == 0


def test_encoded_corpus_is_cached_compactly_and_reused(tmp_path, corpus_file, monkeypatch):
    corpus = open_corpus([corpus_file])
    tok = train_tokenizer(corpus.chunks())
    first = encode_corpus(corpus, tok, cache_dir=tmp_path / "cache")
    assert first.dtype == np.uint16  # the vocabulary includes 256 byte pieces
    assert tok.decode(first) == corpus_file.read_text(encoding="utf-8")

    def no_encoding(text):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(tok, "encode", no_encoding)
    again = encode_corpus(corpus, tok, cache_dir=tmp_path / "cache")
    assert isinstance(again, np.memmap)
    assert np.array_equal(first, again)


def test_corpus_is_encoded_a_chunk_at_a_time_with_progress(tmp_path, monkeypatch):
    # Memory stays bounded only if the tokenizer never sees more than one chunk of the file.
    path = tmp_path / "mixed.txt"
    text = "한국어 문장 and plain words 😀\n" * 400  # chunk borders fall inside multi-byte characters
    path.write_text(text, encoding="utf-8")
    corpus = open_corpus([path])
    tok = train_tokenizer(corpus.chunks())
    monkeypatch.setattr("charlm.corpus.CHUNK_BYTES", 1000)
    encoded_lengths, progress = [], []
    encode = tok.encode
    monkeypatch.setattr(tok, "encode", lambda chunk: encoded_lengths.append(len(chunk)) or encode(chunk))
    tokens = encode_corpus(corpus, tok, cache_dir=tmp_path / "cache", on_progress=lambda *p: progress.append(p))
    assert len(encoded_lengths) > 10 and max(encoded_lengths) <= 1000
    assert tok.decode(tokens) == text
    done = [d for d, _ in progress]
    assert done == sorted(done) and progress[-1] == (path.stat().st_size, path.stat().st_size)


def test_a_second_run_beside_the_first_reuses_its_token_cache(tmp_path, corpus_file, monkeypatch):
    from charlm.train import train

    options = {**TINY_TRAIN, "max_steps": 1}
    train(open_corpus([corpus_file]), TINY_MODEL, options, out=tmp_path / "runs" / "first")

    def no_encoding(*args):
        raise AssertionError("the second run encoded the corpus again")

    def no_learning(*args):
        raise AssertionError("the second run learned the vocabulary again")

    monkeypatch.setattr("charlm.data._encode_to_file", no_encoding)
    monkeypatch.setattr("charlm.data.train_tokenizer", no_learning)
    train(open_corpus([corpus_file]), TINY_MODEL, options, out=tmp_path / "runs" / "second")
    assert len(list((tmp_path / "runs" / ".cache").glob("tokens-*"))) == 1
    first, second = (load_checkpoint(tmp_path / "runs" / run / "last.pt")["tokenizer"] for run in ("first", "second"))
    assert first == second


def test_a_changed_corpus_or_tokenizer_learns_its_own_vocabulary(tmp_path, corpus_file):
    learned = []
    report = lambda: learned.append(1)  # noqa: E731
    chars = learn_vocabulary(open_corpus([corpus_file]), "char", None, tmp_path, report)
    assert learn_vocabulary(open_corpus([corpus_file]), "char", None, tmp_path, report).model == chars.model
    assert len(learned) == 1
    learn_vocabulary(open_corpus([corpus_file]), "char", 300, tmp_path, report)
    assert len(learned) == 2
    corpus_file.write_text("something else entirely\n", encoding="utf-8")
    other = learn_vocabulary(open_corpus([corpus_file]), "char", None, tmp_path, report)
    assert len(learned) == 3 and other.vocab_size < chars.vocab_size
    for damage in (b"damaged", b""):  # an unreadable or empty cache is learned again, not an error
        for cached in tmp_path.glob("vocab-*"):
            cached.write_bytes(damage)
        assert learn_vocabulary(open_corpus([corpus_file]), "char", None, tmp_path, report).model == other.model
    assert len(learned) == 5


def test_changed_corpus_is_encoded_again(tmp_path, corpus_file):
    corpus = open_corpus([corpus_file])
    tok = train_tokenizer(corpus.chunks())
    before = encode_corpus(corpus, tok, cache_dir=tmp_path / "cache")
    corpus_file.write_text("something else entirely\n", encoding="utf-8")
    after = encode_corpus(open_corpus([corpus_file]), tok, cache_dir=tmp_path / "cache")
    assert len(after) != len(before)


def test_folders_are_read_recursively_in_a_fixed_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("first\n")
    (tmp_path / "b" / "c.txt").write_text("second")
    (tmp_path / "b" / "blob.bin").write_bytes(b"\x00\x01binary")
    corpus = open_corpus([tmp_path])
    assert [f.name for f in corpus.files] == ["a.txt", "c.txt"]
    assert corpus.read() == "first\nsecond\n"


def test_default_corpus_is_the_standard_library_without_tests():
    corpus = open_corpus([])
    names = [f.as_posix() for f in corpus.files]
    assert any(n.endswith("/json/decoder.py") for n in names)
    assert not any("/test/" in n or "/tests/" in n or "site-packages" in n for n in names)
    assert corpus.total_bytes > 5_000_000
    assert names == [f.as_posix() for f in open_corpus([]).files]


def test_undecodable_bytes_name_the_file_and_offset(tmp_path):
    from charlm.errors import CharlmError

    path = tmp_path / "latin1.txt"
    path.write_bytes("café ".encode() * 1000 + b"caf\xe9")
    with pytest.raises(CharlmError, match=r"latin1\.txt.*offset 6003"):
        open_corpus([path]).read()
    assert open_corpus([path], errors="replace").read().endswith("caf\ufffd\n")
    assert open_corpus([path], encoding="latin-1").read().endswith("café\n")
