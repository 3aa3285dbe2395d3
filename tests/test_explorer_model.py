"""The explorer page's own model (charlm/explorer/model.js), run under node against torch and the tokenizer.

Each test writes one job (a model payload and a list of tasks) and runs one node process over it,
so a test costs a fraction of a second however many checks it makes.
"""

from __future__ import annotations

import base64
import json
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from charlm.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.explorer.weights import USER_DEFINED, estimate_payload_bytes, model_payload, piece_types
from charlm.model import CharRNN, ModelConfig
from charlm.neurons import STATES, align_text, run_stack, zero_carry
from charlm.sample import generate
from charlm.tokenizer import train_tokenizer

from .conftest import make_text

MODEL_JS = Path(__file__).resolve().parents[1] / "charlm" / "explorer" / "model.js"
NODE = shutil.which("node") or "/usr/bin/node"

# Runs the tasks of a job file with model.js and prints their results as JSON; arrays of numbers
# come back as base64 of float64, so that a thousand steps of activations cost little to move.
DRIVER = r"""
"use strict";
const fs = require("fs");
const CharlmModel = require(process.argv[2]);
const job = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
const model = CharlmModel.load(job.payload);
const floats = (values) => Buffer.from(Float64Array.from(values).buffer).toString("base64");
const TASKS = {
  run({ ids }) {
    const { state, activations } = model.run(ids);
    const out = { final: { h: state.h.map(floats), c: state.c ? state.c.map(floats) : null } };
    activations.forEach((perState, layer) => {
      for (const name of model.stateNames) out[`${layer}/${name}`] = floats(perState[name]);
    });
    return out;
  },
  probs({ ids, k }) {
    const { states } = model.run(ids);
    const probs = [];
    const top = [];
    for (const state of states) {
      probs.push(...model.probs(state));
      top.push(model.topNext(state, k).map((entry) => entry.id));
    }
    return { probs: floats(probs), top };
  },
  encode({ texts }) {
    return texts.map((text) => {
      const { ids, chars, charToken } = model.encode(text);
      return { ids: Array.from(ids), chars: chars.length, charToken: Array.from(charToken) };
    });
  },
  decode({ ids }) {
    const decoder = model.decoder();
    return { pieces: ids.map((id) => decoder.push(id)), rest: decoder.flush() };
  },
  sample({ prime, length, temperature, seed }) {
    const { state } = model.run(model.encode(prime).ids);
    const rng = seed === null ? undefined : CharlmModel.seededRandom(seed);
    const { ids, text } = model.continueText(state, length, temperature, rng);
    return { ids, text };
  },
};
process.stdout.write(JSON.stringify(job.tasks.map((task) => TASKS[task.op](task))));
"""


def run_js(tmp_path: Path, payload: dict, tasks: list[dict]) -> list:
    """Every task of one job, in one node process."""
    if not Path(NODE).is_file():
        pytest.skip("node is not installed: the explorer's JavaScript model is tested under node")
    driver = tmp_path / "driver.js"
    driver.write_text(DRIVER, encoding="utf-8")
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"payload": payload, "tasks": tasks}), encoding="utf-8")
    done = subprocess.run([NODE, str(driver), str(MODEL_JS), str(job)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def floats(data: str, *shape: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data), dtype=np.float64).reshape(shape)


def mixed_corpus(chars: int = 20_000, seed: int = 0) -> str:
    """make_text's English-like lines, with made-up words, Korean words, tabs and an emoji among them."""
    rng = random.Random(seed)
    korean = ["안녕", "하세요", "세계", "한국어", "텍스트", "사랑해", "고양이"]
    lines = make_text(chars, seed).splitlines()
    out = []
    for line in lines:
        if rng.random() < 0.5:
            syllables = [rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(1, 3))]
            line += " " + "".join(syllables)
        if rng.random() < 0.3:
            line += " " + " ".join(rng.choice(korean) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.1:
            line = "\t" + line + " 😀"
        out.append(line)
    return "\n".join(out) + "\n"


def tiny_model(cell: str, vocab: int, bytes_from: int = -1, layers: int = 2, hidden: int = 24,
               seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=vocab, cell=cell, layers=layers, hidden=hidden, embedding=8, bytes_from=bytes_from)
    return CharRNN(config).eval()


# Texts the page may be given: newlines, tabs, spaces in runs, emoji, Hangul, characters no
# vocabulary here holds (byte fallback), U+2581 (always bytes), combining marks, control characters.
TEXTS = [
    "the cat sat on the mat\n",
    "  (alpha beta)\n\tgamma:  delta  \n\n",
    "안녕하세요 세계 한국어 텍스트 😀 고양이",
    "unseen: Ωmega café e\u0301 漢字 😎 \u2581 a\u2581b \u2581\u2581",
    "\x00\x7f\r\n\u3000\ufeff\u00a0 end ",
    "print(return)\u2581return 😀😀\t\t한",
    "",
]
SURROGATE_TEXTS = ["a\ud800b", "x\udcff y", "\udc80\ud83d", "the \udfff cat"]  # lone halves: ids only


def random_texts(corpus: str, count: int, seed: int = 1) -> list[str]:
    """Pieces of the corpus and of an alphabet around it, shuffled: many ties and near-misses for
    the subword encoders, and unknown characters in every position."""
    rng = random.Random(seed)
    alphabet = sorted(set(corpus)) + list("Ωé漢😎\u2581") + [" "] * 6
    texts = []
    for _ in range(count):
        start = rng.randrange(len(corpus) - 60)
        texts.append(corpus[start : start + rng.randint(1, 60)])
        texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))))
    return texts


# -- the numbers match torch ----------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_js_activations_of_every_state_of_every_layer_equal_torch_over_1000_characters(tmp_path, cell):
    text = mixed_corpus(3000)[:1000]
    tokenizer = train_tokenizer([make_text(2000)], "char")  # it never saw the Korean words, nor the emoji
    model = tiny_model(cell, tokenizer.vocab_size, tokenizer.bytes_from)
    ids = tokenizer.encode(text).astype(np.int64)
    assert len(ids) > 1000  # byte fallback made some characters several tokens
    [js] = run_js(tmp_path, model_payload(model, tokenizer), [{"op": "run", "ids": ids.tolist()}])

    batch = torch.from_numpy(ids)[None]  # (1, T)
    with torch.no_grad():
        top, final = model.top_outputs(batch)  # CharRNN.forward's own path
        acts, _, _ = run_stack(model, batch.t(), zero_carry(model, 2, 1, "cpu"),
                               {layer: set(STATES[cell]) for layer in range(2)})
    steps, hidden = len(ids), model.config.hidden
    worst = 0.0
    for layer in range(2):
        for name in STATES[cell]:
            got = floats(js[f"{layer}/{name}"], steps, hidden)
            worst = max(worst, np.abs(got - acts[(layer, name)][:, 0].double().numpy()).max())
    assert worst < 1e-4
    assert np.abs(floats(js["1/h"], steps, hidden) - top[0].double().numpy()).max() < 1e-4
    final_h = final[0] if cell == "lstm" else final
    for layer in range(2):
        assert np.abs(floats(js["final"]["h"][layer], hidden) - final_h[layer, 0].double().numpy()).max() < 1e-4
        if cell == "lstm":
            assert np.abs(floats(js["final"]["c"][layer], hidden) - final[1][layer, 0].double().numpy()).max() < 1e-4


@pytest.mark.parametrize("factored", [True, False])
def test_js_next_token_probabilities_equal_the_softmax_of_the_models_logits(tmp_path, factored):
    text = make_text(2000)
    tokenizer = train_tokenizer([text], "char")
    model = tiny_model("lstm", tokenizer.vocab_size, tokenizer.bytes_from if factored else -1, seed=3)
    with torch.no_grad():  # a sharper head than at initialisation, and a likely escape to the bytes
        model.head.weight.mul_(8)
        if factored:
            model.head.bias[-1] += 2.0
    prompt = text[:300] + "é 😀 한"
    ids = tokenizer.encode(prompt).astype(np.int64)
    [js] = run_js(tmp_path, model_payload(model, tokenizer), [{"op": "probs", "ids": ids.tolist(), "k": 5}])
    with torch.no_grad():
        logits, _, _ = model(torch.from_numpy(ids)[None])
        expected = torch.softmax(logits[0].double(), dim=-1).numpy()
    got = floats(js["probs"], len(ids), tokenizer.vocab_size)
    assert np.abs(got - expected).max() < 1e-5
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)
    ranked = np.argsort(-expected, axis=1, kind="stable")[:, :5]
    matching = np.mean([js_top == ranked[t].tolist() for t, js_top in enumerate(js["top"])])
    assert matching > 0.95  # float32 near-ties may swap a pair now and then


# -- the tokenizer ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizers() -> dict:
    corpus = mixed_corpus()
    return {"corpus": corpus, "char": train_tokenizer([corpus], "char"),
            "unigram": train_tokenizer([corpus], "unigram", 400), "bpe": train_tokenizer([corpus], "bpe", 400),
            "jamo": train_tokenizer([corpus], "jamo")}


# A jamo vocabulary's edge cases: syllables whose jamo it lacks (whole-syllable byte fallback), jamo
# already in the text (conjoining, compatibility, NFD), half-formed sequences and the private-use
# code points under which it stores decomposed jamo.
JAMO_TEXTS = ["뷁 똠얌꿍 안녕", "\u1100\u1161\u11ab 한", "ㄱㅏㄴ ㅎ", "\U0010fd00\U0010fd21 x", "\u1161\u11a8 \u1100 ",
              "한글\u1112\u1161\u11ab"]


@pytest.mark.parametrize("kind", ["char", "jamo", "unigram", "bpe"])
def test_js_encode_equals_the_tokenizer_and_align_text(tmp_path, tokenizers, kind):
    tokenizer = tokenizers[kind]
    texts = TEXTS + JAMO_TEXTS + random_texts(tokenizers["corpus"], 150)
    model = tiny_model("gru", tokenizer.vocab_size, tokenizer.bytes_from, layers=1, hidden=4)
    [encoded, surrogates] = run_js(tmp_path, model_payload(model, tokenizer),
                                   [{"op": "encode", "texts": texts}, {"op": "encode", "texts": SURROGATE_TEXTS}])
    for text, js in zip(texts, encoded):
        aligned = align_text(tokenizer, text)
        assert js["ids"] == tokenizer.encode(text).tolist(), text
        assert aligned.text == text and js["chars"] == len(text)
        assert js["charToken"] == aligned.char_token.tolist(), text
    for text, js in zip(SURROGATE_TEXTS, surrogates):
        assert js["ids"] == tokenizer.encode(text).tolist(), ascii(text)
        assert js["chars"] == len(text)


def test_js_subword_encoders_match_sentencepiece_on_real_text(tmp_path):
    from .conftest import shared_corpus

    english = shared_corpus("tinyshakespeare.txt").read_text(encoding="utf-8")[:100_000]
    korean = shared_corpus("korean.txt").read_text(encoding="utf-8")[:100_000]
    for kind, corpus in (("unigram", korean + english[:20_000]), ("bpe", english + korean[:20_000])):
        tokenizer = train_tokenizer([corpus], kind, 2000)
        texts = [corpus[i : i + 400] for i in range(0, len(corpus) - 400, 2000)] + random_texts(corpus, 40)
        model = tiny_model("rnn", tokenizer.vocab_size, tokenizer.bytes_from, layers=1, hidden=4)
        [encoded] = run_js(tmp_path, model_payload(model, tokenizer), [{"op": "encode", "texts": texts}])
        for text, js in zip(texts, encoded):
            assert js["ids"] == tokenizer.encode(text).tolist(), (kind, text)
            assert js["charToken"] == align_text(tokenizer, text).char_token.tolist(), (kind, text)


def test_js_stream_decoder_equals_the_tokenizers_including_broken_byte_runs(tmp_path, tokenizers):
    tokenizer = tokenizers["char"]
    rng = random.Random(0)
    byte_ids = [tokenizer.bytes_from + b for b in (0x41, 0xC3, 0xA9, 0xE2, 0x96, 0x81, 0xF0, 0x9F, 0x98, 0x80,
                                                   0x80, 0xFF, 0xED, 0xA0, 0xE0, 0xF4, 0x90)]
    others = [i for i in range(tokenizer.vocab_size) if tokenizer.piece_text(i) and not tokenizer._byte[i] >= 0]
    ids = [rng.choice(byte_ids if rng.random() < 0.7 else others) for _ in range(3000)] + [byte_ids[3]]
    model = tiny_model("rnn", tokenizer.vocab_size, tokenizer.bytes_from, layers=1, hidden=4)
    [js] = run_js(tmp_path, model_payload(model, tokenizer), [{"op": "decode", "ids": ids}])
    decoder = tokenizer.stream_decoder()
    assert js["pieces"] == [decoder(i) for i in ids]
    assert js["rest"] == decoder.flush() == "\ufffd"  # the last byte started a character that never ended


def test_js_jamo_decoder_composes_syllables_as_the_tokenizers(tmp_path, tokenizers):
    tokenizer = tokenizers["jamo"]
    rng = random.Random(0)
    jamo = [i for i in range(tokenizer.vocab_size) if tokenizer.role[i]]
    bytes_ = [tokenizer.bytes_from + b for b in (0xED, 0x95, 0x9C, 0x41, 0xF0, 0x9F)]
    others = [i for i in range(tokenizer.vocab_size)
              if tokenizer.piece_text(i) and not tokenizer.role[i] and not tokenizer._byte[i] >= 0]
    # Mostly jamo in any order: whole syllables, open ones, and vowels and finals that join nothing.
    ids = [rng.choice(jamo if rng.random() < 0.7 else bytes_ if rng.random() < 0.3 else others) for _ in range(3000)]
    ids += [int(tokenizer.encode("한")[0])]  # ends on an initial that nothing follows
    model = tiny_model("rnn", tokenizer.vocab_size, tokenizer.bytes_from, layers=1, hidden=4)
    [js] = run_js(tmp_path, model_payload(model, tokenizer), [{"op": "decode", "ids": ids}])
    decoder = tokenizer.stream_decoder()
    assert js["pieces"] == [decoder(i) for i in ids]
    assert js["rest"] == decoder.flush() == "\u1112"
    assert "".join(js["pieces"]) + js["rest"] == tokenizer.decode(ids)


def test_js_jamo_sampling_writes_whole_syllables_and_the_text_encodes_back(tmp_path, tokenizers):
    tokenizer = tokenizers["jamo"]
    model = tiny_model("gru", tokenizer.vocab_size, tokenizer.bytes_from, seed=3)
    tasks = [{"op": "sample", "prime": "안녕", "length": 300, "temperature": 1.0, "seed": seed} for seed in (1, 2)]
    for js in run_js(tmp_path, model_payload(model, tokenizer), tasks):
        assert js["text"] == tokenizer.decode(js["ids"])
        assert "\ufffd" not in js["text"] and len(js["text"]) >= 300
        assert any(0xAC00 <= ord(ch) <= 0xD7A3 for ch in js["text"]), "an untrained model still composes some"


# -- sampling -------------------------------------------------------------------------------------------
def test_js_sampling_writes_valid_utf8_even_when_byte_tokens_are_likely(tmp_path, tokenizers):
    tokenizer = tokenizers["char"]
    model = tiny_model("lstm", tokenizer.vocab_size, tokenizer.bytes_from, seed=5)
    with torch.no_grad():  # half of all draws go to the bytes, spread over all 256
        model.head.bias[-1] += 4.0
        model.byte_head.weight.zero_()
    tasks = [{"op": "sample", "prime": "the ", "length": 400, "temperature": t, "seed": seed}
             for t, seed in ((1.0, 1), (2.0, 2), (1.0, 1), (1.0, 3))]
    results = run_js(tmp_path, model_payload(model, tokenizer), tasks)
    for task, js in zip(tasks, results):
        text = tokenizer.decode(js["ids"])
        assert "\ufffd" not in text and js["text"] == text
        assert len(text) == 400  # the last character is never left half made
        assert sum(tokenizer._byte[i] >= 0 for i in js["ids"]) > 100, "the test should draw many byte tokens"
        assert not tokenizer.is_special(js["ids"][0]) and not any(tokenizer.is_special(i) for i in js["ids"])
    assert results[0]["ids"] == results[2]["ids"]  # the same seed, the same sample
    assert results[0]["ids"] != results[3]["ids"]


def test_js_greedy_continuation_equals_torchs(tmp_path, trained_run):
    model, tokenizer = model_from_checkpoint(load_checkpoint(trained_run / "best.pt"), "cpu")
    prime = "(the cat"
    expected = "".join(generate(model, tokenizer, prime, 300, temperature=0.0))
    [js] = run_js(tmp_path, model_payload(model, tokenizer),
                  [{"op": "sample", "prime": prime, "length": 300, "temperature": 0, "seed": None}])
    assert js["text"] == expected


# -- the payload ----------------------------------------------------------------------------------------
def test_payload_size_estimate_bounds_the_real_size_and_the_default_model_stays_small():
    tokenizer = train_tokenizer(["".join(map(chr, range(32, 127))) + "\n\téèüöä"], "char")
    assert 90 <= tokenizer.vocab_size - 256 <= 110  # about the symbols of an English text
    for config in (ModelConfig(tokenizer.vocab_size, bytes_from=tokenizer.bytes_from),  # the default model
                   ModelConfig(tokenizer.vocab_size, cell="gru", layers=3, hidden=40, embedding=8),
                   ModelConfig(tokenizer.vocab_size, cell="rnn", hidden=17, embedding=5,
                               bytes_from=tokenizer.bytes_from)):
        torch.manual_seed(0)
        size = len(json.dumps(model_payload(CharRNN(config), tokenizer)))
        estimate = estimate_payload_bytes(config, tokenizer)
        assert size <= estimate <= size + 1000, (config, size, estimate)
    assert estimate_payload_bytes(ModelConfig(tokenizer.vocab_size, bytes_from=tokenizer.bytes_from), tokenizer) \
        < 2.5e6  # a quarter of the page's 10 MB


def test_piece_types_finds_the_user_defined_newline():
    tokenizer = train_tokenizer([make_text(3000)], "unigram", 300)
    types = piece_types(tokenizer.model)
    assert len(types) == tokenizer.vocab_size
    assert [i for i, t in enumerate(types) if t == USER_DEFINED] == [tokenizer.newline_id]
    assert all(t == 6 for i, t in enumerate(types) if tokenizer._byte[i] >= 0)  # BYTE
    assert types[tokenizer._sp.unk_id()] == 2  # UNKNOWN


def test_js_load_refuses_what_it_cannot_run_with_a_clear_message(tmp_path, tokenizers):
    if not Path(NODE).is_file():
        pytest.skip("node is not installed: the explorer's JavaScript model is tested under node")
    tokenizer = tokenizers["char"]
    payload = model_payload(tiny_model("rnn", tokenizer.vocab_size, tokenizer.bytes_from, layers=1, hidden=4),
                            tokenizer)
    newer = {**payload, "version": payload["version"] + 1}
    other_kind = {**payload, "tokenizer": {**payload["tokenizer"], "kind": "words"}}
    path = tmp_path / "payloads.json"
    path.write_text(json.dumps([newer, other_kind]), encoding="utf-8")
    script = ("const M = require(process.argv[1]); const payloads = require(process.argv[2]);"
              "for (const p of payloads) {"
              "  try { M.load(p); console.log('loaded'); } catch (e) { console.log(e.message); }"
              "}")
    done = subprocess.run([NODE, "-e", script, str(MODEL_JS), str(path)], capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == [
        "charlm model: payload version 2; this page reads version 1",
        'charlm model: the "words" tokenizer cannot run in the page',
    ]
