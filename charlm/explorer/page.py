"""The explorer page: one self-contained HTML file to look inside a model (`inspect-neurons --html`).

Python does the exact work once, in the feature search's single pass over the text
(`neurons.scan`, the same call and streams as `inspect-neurons --find`, so the page's
rankings are the terminal's): the Pearson ranking of every unit-state for each built-in
feature and each --find-regex, the gate saturation, and, caught chunk by chunk on the way,
every layer's hidden state h and, for an LSTM, its cell state at each chunk's end. The top
layer's h then gives each character's surprisal and the model's five likeliest next
characters. h is stored per token as 8-bit integers with one scale per unit, unit-major
and deflated (base64 inside the page's JSON): about 0.9 byte a value. Gates and LSTM cell
states are not stored: the page recomputes them for the unit it shows from the stored h
and the embedded weights (a row dot product per step), starting a cell state from the
nearest stored snapshot. A model too big to embed still gets a page, with h only and no
live mode, and says why. A backward model's units (a biLM has both kinds) are searched as
`--find` searches them, reading right to left; their h is stored as state `h<`, each
character's value taken where the model has read that character whole. The page's own
code is package data beside this module (page.html, page.css, page.js, and model.js for
the forward pass), inlined as is.
"""

from __future__ import annotations

import base64
import functools
import html
import os
import json
import re
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..config import NUM_BYTES
from ..directions import Reader, readers
from ..errors import CharlmError, UsageError
from ..features import FEATURES, regex_feature
from ..model import CharRNN
from ..neurons import (
    CHUNK,
    LEFT_SATURATED,
    RIGHT_SATURATED,
    SEARCH_STREAMS,
    SIGMOID_GATES,
    STATES,
    AlignedText,
    align_text,
    scan_readers,
    search_units,
    state_names,
    stream_layout,
)
from ..tokenizer import Tokenizer
from . import DEFAULT_CHARS

FORMAT, VERSION = "charlm-explorer", 1
MAX_CHARS = 200_000  # what --chars may ask for; the page grows by about 0.35 KB per character per 256 units
MAX_STORED_VALUES = 60_000_000  # tokens x layers x hidden: a page of about 60 MB, as far as a browser goes well
MODEL_LIMIT_BYTES = 8 << 20  # embedded weights (base64) up to this; a bigger model gets the page without live mode
GUESSES = 5  # next characters shown on hover
PACK_PART = 1 << 20
NO_SURPRISAL = 65535  # the first character: nothing predicted it
STORED_STATES = ("h",)
ASSETS = ("page.html", "page.css", "page.js", "model.js")


@dataclass
class ExplorerOptions:
    chars: int | None = None  # explore the first N characters; None: the whole text, up to DEFAULT_CHARS
    find: str | None = None  # the feature the page opens on
    find_regex: list[str] = field(default_factory=list)
    unit: tuple[int | None, str, int] | None = None  # the unit the page opens on: (layer (None: the top), state, unit)
    model_limit: int = MODEL_LIMIT_BYTES
    streams: int = SEARCH_STREAMS


@dataclass
class ExplorerPage:
    html: str
    chars: int
    live: bool  # the model is embedded: live mode, gates and cell states
    note: str | None = None  # why it is not


# -- the data ----------------------------------------------------------------------------------------
def pack(array: np.ndarray) -> dict:
    """A numeric array as the page reads it: dtype, shape and base64 of its little-endian bytes, deflated
    in parts of at most PACK_PART bytes (compressed side by side on every core; the page joins them)."""
    array = np.ascontiguousarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    raw = memoryview(array.astype(dtype, copy=False).tobytes())
    parts = [raw[start : start + PACK_PART] for start in range(0, max(len(raw), 1), PACK_PART)]
    # Level 1: stored activations deflate to about 0.7 of their size at any level; higher ones cost time.
    deflated = _pool().map(lambda part: base64.b64encode(zlib.compress(part, 1)).decode(), parts)
    return {"dtype": dtype.name, "shape": list(array.shape), "zlib": list(deflated)}


def unpack(packed: dict) -> np.ndarray:
    """The inverse of `pack` (tests read pages with it)."""
    raw = b"".join(zlib.decompress(base64.b64decode(part)) for part in packed["zlib"])
    return np.frombuffer(raw, dtype=np.dtype(packed["dtype"]).newbyteorder("<")).reshape(packed["shape"])


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1)  # zlib lets go of the GIL while it works


def quantise(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, units) float -> unit-major int8 (units, tokens) and one float32 scale per unit (value = q * scale)."""
    peak = np.abs(values).max(axis=0) if len(values) else np.zeros(values.shape[1], np.float32)
    scale = (np.maximum(peak, 1e-12) / 127).astype(np.float32)
    return np.rint(values / scale).astype(np.int8).T.copy(), scale


class _Capture:
    """Keeps what the page stores from the search's chunks: h of each layer in token order, and
    for an LSTM the cell state at the end of each chunk of each stream."""

    def __init__(self, n_tokens: int, layers: int, hidden: int, streams: int, length: int, chunk: int, lstm: bool):
        self.n, self.length, self.chunk = n_tokens, length, chunk
        self.h = np.zeros((layers, streams, length, hidden), np.float32)
        chunks = -(-length // chunk)
        self.c_ends = np.zeros((layers, streams, chunks, hidden), np.float32) if lstm else None

    def __call__(self, start: int, acts: dict[tuple[int, str], torch.Tensor]) -> None:
        for (layer, state), value in acts.items():
            if state == "h":
                steps = value.shape[0]
                self.h[layer, :, start : start + steps] = value.transpose(0, 1).float().cpu().numpy()
            elif state == "c" and self.c_ends is not None:
                self.c_ends[layer, :, start // self.chunk] = value[-1].float().cpu().numpy()

    def h_in_token_order(self, layer: int) -> np.ndarray:
        return self.h[layer].reshape(-1, self.h.shape[-1])[: self.n]  # (tokens, H)


@torch.no_grad()
def _predictions(model: CharRNN, top_h: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """After each token: the five likeliest next tokens (-1: "some character never seen in training",
    the byte head's escape) and their probabilities; and each token's -log p (NaN for the first)."""
    out = torch.from_numpy(top_h)
    config = model.config
    scores = torch.log_softmax(model.head(out).float(), dim=-1)  # (tokens, head rows)
    best = torch.topk(scores, min(GUESSES, scores.shape[-1]), dim=-1)
    ids = best.indices.numpy().astype(np.int32)
    if model.factored:  # the head's rows are the real symbols with the byte block cut out, then the escape
        escape = scores.shape[-1] - 1
        ids = np.where(ids == escape, -1, np.where(ids >= config.bytes_from, ids + NUM_BYTES, ids))
    probs = best.values.exp().numpy()
    nll = np.full(len(tokens), np.nan)
    if len(tokens) > 1:
        nll[1:] = _next_token_nll(model, out[:-1], scores[:-1], torch.from_numpy(tokens[1:].astype(np.int64)))
    return ids, probs, nll


def _next_token_nll(model: CharRNN, out: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """CharRNN.token_nll from head scores already taken: the byte head runs only where a byte comes next."""
    if not model.factored:
        return (-scores.gather(1, targets[:, None])[:, 0]).double().numpy()
    b0 = model.config.bytes_from
    is_byte = (targets >= b0) & (targets < b0 + NUM_BYTES)
    rows = torch.where(targets < b0, targets, torch.where(is_byte, scores.shape[-1] - 1, targets - NUM_BYTES))
    nll = -scores.gather(1, rows[:, None])[:, 0].double()
    where = is_byte.nonzero()[:, 0]
    if len(where):
        byte_scores = torch.log_softmax(model.byte_head(out[where]).float(), dim=-1)
        nll[where] -= byte_scores.gather(1, (targets[where] - b0)[:, None])[:, 0].double()
    return nll.numpy()


def char_surprisal(aligned: AlignedText, token_nll: np.ndarray) -> np.ndarray:
    """Bits per character: the tokens read since the previous character was complete, shared evenly
    by the characters their last token completes (a subword piece); NaN where a token of the span
    has no figure (the one read first, which nothing predicted)."""
    n_chars = len(aligned.char_token)
    if n_chars == 0:
        return np.zeros(0)
    completing, first_char, counts = np.unique(aligned.char_token, return_index=True, return_counts=True)
    unknown = np.isnan(token_nll)
    total = np.concatenate([[0.0], np.cumsum(np.where(unknown, 0.0, token_nll))])  # total[t + 1]: tokens 0..t
    missing = np.concatenate([[0], np.cumsum(unknown)])
    previous = np.concatenate([[-1], completing[:-1]])
    spans = total[completing + 1] - total[previous + 1]
    per_char = spans / counts / np.log(2)
    per_char[missing[completing + 1] > missing[previous + 1]] = np.nan
    return np.repeat(per_char, counts)


def in_text_order(values: np.ndarray, reader: Reader, aligned: AlignedText) -> np.ndarray:
    """Per-token values of `reader`'s pass, (tokens, ...) in its reading order, put in the text's token
    order, where the page reads each character's value at its last token (char_token). A backward
    model has read a character whole only at its first token, so that value is put at the last."""
    if not reader.backward:
        return values
    ordered = values[::-1].copy()
    ordered[aligned.char_token] = ordered[aligned.first_token()]
    return ordered


def _feature_values(text: str, regexes: list[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every built-in feature that varies over the text and each regex (as `--find-regex` names it)."""
    features, flat = {}, []
    for name, compute in FEATURES.items():
        values = compute(text)
        if len(values) > 1 and values.min() != values.max():
            features[name] = values
        else:
            flat.append(name)
    for pattern in regexes:
        values = regex_feature(pattern, text)
        if len(values) < 2 or values.min() == values.max():
            raise UsageError(f"--find-regex {pattern!r}: the feature does not vary over this text, "
                             "so no unit can track it")
        features[f"regex {pattern}"] = values
    return features, flat


def _state_sources(cell: str, live: bool, suffix: str = "") -> list[dict]:
    """How the page gets each state of the units whose state names end in `suffix`: stored, or
    recomputed from stored h and the weights (which gate row). The page recomputes a forward
    model's states only: a backward model's units show their stored h."""
    sources = []
    for state in STATES[cell]:
        kind = "sigmoid" if state in SIGMOID_GATES else "free" if state == "c" else "tanh"
        entry = {"name": state + suffix, "range": kind}
        if state in STORED_STATES:
            entry["source"] = "stored"
        elif not live or suffix:
            entry["source"] = None
        elif state == "c":
            entry["source"] = "lstm-cell"
        else:
            entry["source"] = f"{cell}-gate"
            entry["gate"] = STATES[cell].index(state) - (2 if cell == "lstm" else 1)  # PyTorch's row block
        sources.append(entry)
    return sources


def check_text(text: str, chars: int | None, source: str) -> str:
    """The text the page holds, or a usage error that says how to ask for less."""
    if chars is not None and not 1 <= chars <= MAX_CHARS:
        raise UsageError(f"--chars {chars}: give 1 to {MAX_CHARS:,}")
    if not text:
        raise UsageError("the text to inspect is empty")
    if chars is None and len(text) > DEFAULT_CHARS:
        raise UsageError(f"{source} has {len(text):,} characters, more than the explorer page holds "
                         f"by default ({DEFAULT_CHARS:,}, about 10 MB): give --chars N to explore its first N")
    return text[: chars or DEFAULT_CHARS]


@torch.no_grad()
def explorer_data(model, tokenizer: Tokenizer, text: str, options: ExplorerOptions,
                  checkpoint: str = "", on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Everything the page shows, as JSON-ready data (see the module docstring for what is stored how).
    `model` is a CharRNN or a biLM (directions.BiLM), whose backward units have states of their own."""
    from .weights import LIVE_KINDS, estimate_payload_bytes, model_payload

    config = model.config
    cell, layers, hidden = config.cell, config.layers, config.hidden
    found = readers(model)
    if found[0].direction == "bidirectional":
        raise UsageError("--html: this model reads each chunk both ways to predict the next character, so it "
                         "sees the answer (--cheat-demo); the explorer shows language models only")
    aligned = align_text(tokenizer, text)
    n_tokens = len(aligned.tokens)
    if n_tokens * layers * hidden * len(found) > MAX_STORED_VALUES:
        raise UsageError(f"--chars: {len(aligned.text):,} characters of a {layers}x{hidden} model would make a page "
                         f"of about {n_tokens * layers * hidden * len(found) / 1e6:.0f} MB; give a smaller --chars")
    features, flat = _feature_values(aligned.text, options.find_regex)
    # What the search correlates over, as `--find` does: characters, or a jamo model's tokens.
    units, features = search_units(tokenizer, aligned, features)
    streams, length = stream_layout(n_tokens, options.streams)
    captures: dict[str, _Capture] = {}

    def capture(reader: Reader) -> _Capture:
        captures[reader.direction] = _Capture(n_tokens, layers, hidden, streams, length, CHUNK, cell == "lstm")
        return captures[reader.direction]

    names = state_names(config)
    wanted = {layer: set(names) for layer in range(layers)}
    result = scan_readers(model, units, features, wanted, saturation=cell != "rnn", device="cpu",
                          streams=options.streams, on_progress=on_progress, on_chunk=capture)

    forward = next((reader for reader in found if not reader.backward), None)
    model_bytes = estimate_payload_bytes(config, tokenizer)
    live = forward is not None and tokenizer.kind in LIVE_KINDS and model_bytes <= options.model_limit
    note = None
    if forward is None:
        note = ("this model reads backward: no live mode (the page runs a forward model), and only h< is shown "
                "(the page recomputes gates and cell states of a forward model)")
    elif tokenizer.kind not in LIVE_KINDS:
        note = f"the page cannot encode text for a {tokenizer.kind} tokenizer: no live mode, and only h is shown"
    elif not live:
        note = (f"the model's weights take {model_bytes / 2**20:.1f} MB, more than the "
                f"{options.model_limit / 2**20:.1f} MB a page embeds: no live mode, and only h "
                "is shown (gates and cell states need the weights)")

    stored = []
    for reader in found:
        for layer in range(layers):
            q, scale = quantise(in_text_order(captures[reader.direction].h_in_token_order(layer), reader, aligned))
            stored.append({"layer": layer, "state": "h" + reader.suffix, "values": pack(q), "scale": pack(scale)})
    # Hover: the first model's guesses (the next character, or for a backward model the previous one).
    first = found[0]
    top_h = captures[first.direction].h_in_token_order(layers - 1)
    guess_ids, guess_probs, token_nll = _predictions(first.model, top_h, first.order(aligned.tokens))
    guess_ids, guess_probs = (in_text_order(a, first, aligned) for a in (guess_ids, guess_probs))
    surprisal = char_surprisal(aligned, token_nll[::-1] if first.backward else token_nll)
    centibits = np.where(np.isnan(surprisal), NO_SURPRISAL, np.clip(np.rint(surprisal * 100), 0, NO_SURPRISAL - 1))

    rankings = []
    for name, ranking in result.rankings.items():
        keys = np.array([(e.layer * len(names) + names.index(e.state)) * hidden + e.unit for e in ranking], np.int32)
        rankings.append({"name": name, "regex": name.startswith("regex "), "keys": pack(keys),
                         "scores": pack(np.array([e.score for e in ranking], np.float64))})
    identity = tokenizer.kind == "char" and n_tokens == len(aligned.text)
    cells = captures["forward"].c_ends if forward is not None else None
    data = {
        "format": FORMAT,
        "version": VERSION,
        "checkpoint": checkpoint,
        "model": {"cell": cell, "layers": layers, "hidden": hidden, "embedding": config.embedding,
                  "vocab_size": config.vocab_size, "tokenizer": tokenizer.kind, "direction": config.direction},
        "states": [entry for reader in found for entry in _state_sources(cell, live, reader.suffix)],
        "text": aligned.text,
        "tokens": pack(aligned.tokens.astype(np.int32)),
        "char_token": None if identity else pack(aligned.char_token.astype(np.int32)),
        "pieces": [tokenizer.piece_text(i) for i in range(tokenizer.vocab_size)],
        "streams": {"count": streams, "length": length, "chunk": CHUNK},
        "stored": stored,
        "cell_snapshots": [pack(cells[layer]) for layer in range(layers)] if cells is not None and live else None,
        "surprisal_centibits": pack(centibits.astype(np.uint16)),
        "guesses": {"ids": pack(guess_ids), "probs": pack(np.rint(guess_probs * 255).astype(np.uint8))},
        "rankings": rankings,
        "flat_features": flat,
        "saturation": {"left_below": LEFT_SATURATED, "right_above": RIGHT_SATURATED,
                       "gates": [{"layer": g.layer, "gate": g.gate, "left": pack(g.left.astype(np.float32)),
                                  "right": pack(g.right.astype(np.float32))} for g in result.saturation]},
        "start": _start(options, rankings, result.rankings, stored[0]["state"]),
        "model_payload": model_payload(forward.model, tokenizer) if live else None,
        "note": note,
    }
    return data


def _start(options: ExplorerOptions, packed: list[dict], rankings: dict, first_state: str) -> dict:
    """The feature and unit the page opens on: those asked for, else the feature with the best-scoring unit."""
    feature = options.find if options.find in rankings else None
    if feature is None and options.find_regex:
        feature = f"regex {options.find_regex[0]}"
    if feature is None and rankings:
        feature = max(rankings, key=lambda name: abs(rankings[name][0].score) if rankings[name] else 0.0)
    unit = list(options.unit) if options.unit else None
    if unit is None and feature is not None and rankings[feature]:
        best = rankings[feature][0]
        unit = [best.layer, best.state, best.unit]
    return {"feature": feature, "unit": unit or [0, first_state, 0]}


# -- the page ----------------------------------------------------------------------------------------
def asset(name: str) -> str:
    """One of the page's source files, read from the installed package."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


_SLOT = re.compile(r"<!--@(\w+)@-->")
_SURROGATE = re.compile("[\ud800-\udfff]")


def page_json(data: dict) -> str:
    """JSON that is safe inside <script type="application/json">: every '<' is written \\u003c, so no
    '</script>' or '<!--' can end or bend the element, and lone surrogates are escaped (UTF-8 has none)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c")
    try:
        text.encode("utf-8")  # much faster than a regular-expression scan of the whole page
        return text
    except UnicodeEncodeError:
        return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def render_page(data: dict) -> str:
    """The page: the template with the CSS, the data and the scripts put in its slots, in one pass."""
    slots = {
        "TITLE": html.escape(f"charlm explorer: {Path(data['checkpoint']).name or 'model'}".encode(
            "utf-8", "replace").decode()),  # a file name may hold undecodable bytes
        "CSS": asset("page.css"),
        "DATA": page_json(data),
        "MODEL_JS": asset("model.js"),
        "PAGE_JS": asset("page.js"),
    }
    for name in ("CSS", "MODEL_JS", "PAGE_JS"):
        if re.search(r"</(script|style)", slots[name], re.IGNORECASE):
            raise CharlmError(f"charlm/explorer: {name} holds a closing tag that would end its element")
    return _SLOT.sub(lambda m: slots[m.group(1)], asset("page.html"))


def write_explorer(checkpoint: Path | str | dict, text: str, out: Path, options: ExplorerOptions,
                   source: str = "the text", on_progress: Callable[[int, int], None] | None = None
                   ) -> ExplorerPage:
    """Load a checkpoint (or take a loaded one), build the page for `text` and write it to `out`."""
    from ..checkpoint import as_payload, model_from_checkpoint

    text = check_text(text, options.chars, source)
    payload = as_payload(checkpoint)
    model, tokenizer = model_from_checkpoint(payload, "cpu")
    _check_start(model, options)
    data = explorer_data(model, tokenizer, text, options, str(payload["path"]), on_progress)
    page = ExplorerPage(render_page(data), len(data["text"]), data["model_payload"] is not None, data["note"])
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(page.html, encoding="utf-8")
    except OSError as e:
        raise CharlmError(f"--html {out}: cannot write: {e.strerror}") from None
    return page


def _check_start(model: CharRNN, options: ExplorerOptions) -> None:
    if options.unit is None:
        return
    layer, state, unit = options.unit
    config = model.config
    if layer is None:
        layer = config.layers - 1
        options.unit = (layer, state, unit)
    if not 0 <= layer < config.layers:
        raise UsageError(f"--layer {layer}: the model has {config.layers} layer(s) (0-{config.layers - 1})")
    if state not in state_names(config):
        raise UsageError(f"--state {state}: this {config.cell.upper()} model's units have "
                         f"{', '.join(state_names(config))}")
    if not 0 <= unit < config.hidden:
        raise UsageError(f"--unit {unit}: the model has {config.hidden} units per layer (0-{config.hidden - 1})")
