"""A checkpoint's model as plain data for the explorer page, which runs it in JavaScript (model.js).

`model_payload` gives a JSON-ready dict: the model's shape, the tokenizer's piece table (with
what sentencepiece's unigram and bpe encoders need: each piece's score and type) and every
weight as base64 of little-endian float32, a third more than the raw bytes, where a JSON list
of floats would take about three times as much. `estimate_payload_bytes` tells the size of
that payload from the config and tokenizer alone, so a page can decide before building it
that a model is too big to embed.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import torch

from ..config import NUM_BYTES, ModelConfig
from ..model import CharRNN
from ..tokenizer import Tokenizer

FORMAT = "charlm-explorer-model"
VERSION = 1
LIVE_KINDS = ("char", "jamo", "unigram", "bpe")  # the tokenizer kinds model.js can encode text for
GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # rows of W_ih per unit, as PyTorch stacks them
USER_DEFINED, UNUSED = 4, 5  # sentencepiece's ModelProto.SentencePiece.Type values
# JSON around each array ({"shape": [...], "data": "..."}) and around the payload as a whole.
_ARRAY_OVERHEAD, _PAYLOAD_OVERHEAD = 48, 512


def model_payload(model: CharRNN, tokenizer: Tokenizer) -> dict:
    """Everything model.js needs to run `model` and encode text as `tokenizer` does."""
    config = model.config
    layers = []
    for layer in range(config.layers):
        w_ih, w_hh, b_ih, b_hh = model.layer_weights(layer)
        layers.append({"w_ih": _array(w_ih), "w_hh": _array(w_hh), "b_ih": _array(b_ih), "b_hh": _array(b_hh)})
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": _config(config),
        "tokenizer": tokenizer_table(tokenizer),
        "weights": {
            "embed": _array(model.embed.weight),
            "layers": layers,
            "head": {"weight": _array(model.head.weight), "bias": _array(model.head.bias)},
            "byte_head": ({"weight": _array(model.byte_head.weight), "bias": _array(model.byte_head.bias)}
                          if model.factored else None),
        },
    }


def tokenizer_table(tokenizer: Tokenizer) -> dict:
    """The piece table: each id's text ('' for byte and special ids), the id of each byte value,
    the special ids, for subword kinds each piece's score and the user-defined and unused ids, and
    for jamo each id's role and index in a decomposed syllable."""
    sp = tokenizer._sp
    table = {
        "kind": tokenizer.kind,
        "pieces": [tokenizer._text[i] for i in range(tokenizer.vocab_size)],
        "byte_ids": [int(i) for i in tokenizer._byte_id],
        "special": sorted(tokenizer._special),
        "unk_id": sp.unk_id(),
    }
    if tokenizer.kind == "jamo":  # which ids are a syllable's decomposed jamo (role 1-3: initial, vowel, final)
        table["jamo_role"] = tokenizer.role.tolist()
        table["jamo_index"] = tokenizer.jamo_index.tolist()
    if tokenizer.kind in ("unigram", "bpe"):
        types = piece_types(tokenizer.model)
        # float32 scores, written as the doubles they equal: model.js compares them exactly as sentencepiece does.
        table["scores"] = [float(np.float32(sp.get_score(i))) for i in range(tokenizer.vocab_size)]
        table["user_defined"] = [i for i, t in enumerate(types) if t == USER_DEFINED]
        table["unused"] = [i for i, t in enumerate(types) if t == UNUSED]
    return table


def estimate_payload_bytes(config: ModelConfig, tokenizer: Tokenizer) -> int:
    """The size of `model_payload`'s JSON (json.dumps, ASCII) for a model of this shape, without
    building it: an upper bound within a few hundred bytes."""
    gates, hidden = GATES[config.cell], config.hidden
    shapes = [(config.vocab_size, config.embedding)]
    for layer in range(config.layers):
        below = config.embedding if layer == 0 else hidden
        shapes += [(gates * hidden, below), (gates * hidden, hidden), (gates * hidden,), (gates * hidden,)]
    if config.bytes_from >= 0:
        outputs = config.vocab_size - NUM_BYTES + 1
        shapes += [(outputs, hidden), (outputs,), (NUM_BYTES, hidden), (NUM_BYTES,)]
    else:
        shapes += [(config.vocab_size, hidden), (config.vocab_size,)]
    weights = sum(_base64_length(4 * int(np.prod(shape))) + _ARRAY_OVERHEAD for shape in shapes)
    return weights + len(json.dumps(tokenizer_table(tokenizer))) + len(json.dumps(_config(config))) + _PAYLOAD_OVERHEAD


def piece_types(model_proto: bytes) -> list[int]:
    """Each piece's type, read from the serialized sentencepiece ModelProto (field 1: the pieces;
    in a piece, field 3: its type, NORMAL = 1 when absent). The Python API tells byte, unknown,
    control and unused pieces apart but not user-defined ones, which both encoders treat apart."""
    types = []
    for field, value in _fields(model_proto):
        if field == 1:
            piece_type = 1
            for piece_field, piece_value in _fields(value):
                if piece_field == 3:
                    piece_type = piece_value
            types.append(piece_type)
    return types


def _fields(message: bytes):
    """(field number, value) of each field of a protobuf message: varints as ints, the rest as bytes."""
    pos = 0
    while pos < len(message):
        key, pos = _varint(message, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(message, pos)
        elif wire == 2:
            length, pos = _varint(message, pos)
            value, pos = message[pos : pos + length], pos + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = message[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, value


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _config(config: ModelConfig) -> dict:
    return {"cell": config.cell, "layers": config.layers, "hidden": config.hidden, "embedding": config.embedding,
            "vocab_size": config.vocab_size, "bytes_from": config.bytes_from}


def _array(tensor: torch.Tensor) -> dict:
    data = tensor.detach().cpu().to(torch.float32).contiguous().numpy().astype("<f4", copy=False)
    return {"shape": list(data.shape), "data": base64.b64encode(data.tobytes()).decode("ascii")}


def _base64_length(raw_bytes: int) -> int:
    return 4 * -(-raw_bytes // 3)
