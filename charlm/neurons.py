"""Looking inside a model: each unit's activation at each character, and the units that track a feature.

The stacked RNN runs one layer at a time through the fused kernel the model itself uses
(torch.lstm / torch.gru / torch.rnn_tanh over `CharRNN.layer_weights`), so every layer's
hidden state h is exactly the model's. The gates are then recomputed in bulk, two large
matrix products per layer, from each step's layer input and previous h; the LSTM cell
state follows from them by one cheap elementwise pass over time. A long text runs as many
parallel streams, chunk by chunk with the state carried, and the feature search keeps only
float64 running sums per unit and state (Pearson statistics, saturation counts), so memory
stays bounded however long the text. Activations are per token; a character takes the state
after the token that completes it (the last of its byte tokens when it was unseen in
training; the same token for every character of a subword piece; a Hangul syllable's vowel
or final for a jamo model). A jamo model takes two or three steps per syllable, and what
happens inside a syllable is what its units may track, so its search runs over tokens
(`search_units`): each token takes the feature value of the character it belongs to, or for
features of a syllable's inside, of its jamo in the text spelled out.

A backward model's units (a backward model's, or a biLM's backward half) are units of their
own, their state names ending in `<` (`h<`, `c<`, `forget<`; directions.py). They run over
the tokens reversed, and are lined up with the text by character: a backward unit's value
at character i is its state after reading the text from its end down to i (for a character
of several byte tokens, down to its first byte).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .directions import Reader, readers, split_state_name, state_suffixes
from .errors import UsageError
from .evaluate import stream_count
from .features import FEATURES, SPELLED, compute_feature, regex_feature
from .model import CharRNN, ModelConfig
from .tokenizer import Tokenizer

# The states a unit has, per cell, in the order PyTorch stores the gates.
STATES = {
    "lstm": ("h", "c", "input", "forget", "candidate", "output"),
    "gru": ("h", "reset", "update", "candidate"),
    "rnn": ("h",),
}
SIGMOID_GATES = ("input", "forget", "output", "reset", "update")
LEFT_SATURATED, RIGHT_SATURATED = 0.1, 0.9  # thresholds of Karpathy, Johnson & Fei-Fei (2015)
SEARCH_STREAMS = 128  # wide batches keep the recurrent matrix products efficient on a CPU
MIN_STREAM_TOKENS = 2048  # a stream starts from a zero state, so keep each long enough to warm up
CHUNK = 128
GUESSES = 3  # next-character guesses shown under each character with --predictions

Carry = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # one layer's state, (1, B, H) each


@dataclass(frozen=True)
class UnitScore:
    layer: int
    state: str
    unit: int
    score: float

    def as_dict(self) -> dict:
        return {"layer": self.layer, "state": self.state, "unit": self.unit, "score": self.score}


@dataclass
class GateSaturation:
    layer: int
    gate: str
    left: np.ndarray  # per unit: fraction of characters with the gate below 0.1
    right: np.ndarray  # ... above 0.9

    def as_dict(self) -> dict:
        return {"layer": self.layer, "gate": self.gate, "left_saturated": self.left.round(6).tolist(),
                "right_saturated": self.right.round(6).tolist()}


# -- running the layers -----------------------------------------------------------------------------
def run_layer(model: CharRNN, layer: int, x: torch.Tensor, carry: Carry, wanted: set[str]
              ) -> tuple[torch.Tensor, Carry, dict[str, torch.Tensor]]:
    """One layer over x (T, B, In), time-major: (h (T, B, H), the carried state, the wanted states)."""
    cell = model.config.cell
    weights = list(model.layer_weights(layer))
    w_ih, w_hh, b_ih, b_hh = weights
    if cell == "lstm":
        out, h_n, c_n = torch.lstm(x, carry, weights, True, 1, 0.0, False, False, False)
        new_carry: Carry = (h_n, c_n)
    elif cell == "gru":
        out, h_n = torch.gru(x, carry, weights, True, 1, 0.0, False, False, False)
        new_carry = h_n
    else:
        out, h_n = torch.rnn_tanh(x, carry, weights, True, 1, 0.0, False, False, False)
        new_carry = h_n
    acts = {"h": out} if "h" in wanted else {}
    if not wanted - {"h"}:
        return out, new_carry, acts
    steps, batch, hidden = out.shape
    h0 = carry[0] if cell == "lstm" else carry
    if cell == "lstm":
        # Both products go into one buffer: x_t W_ih^T + b, then += h_{t-1} W_hh^T.
        gates = torch.addmm(b_ih + b_hh, x.reshape(steps * batch, -1), w_ih.t())  # (T*B, 4H)
        _add_previous_h(gates, h0, out, w_hh)
        gates = gates.view(steps, batch, 4, hidden)  # i, f, g, o, activated in place
        gates[:, :, :2].sigmoid_()
        gates[:, :, 2].tanh_()
        gates[:, :, 3].sigmoid_()
        input_gate, forget, candidate, output = gates.unbind(2)
        acts.update(input=input_gate, forget=forget, candidate=candidate, output=output)
        if "c" in wanted:
            acts["c"] = _cell_states(input_gate * candidate, forget, carry[1][0])
    else:  # gru: the two parts stay apart, since the reset gate scales the hidden one
        gi = torch.addmm(b_ih, x.reshape(steps * batch, -1), w_ih.t()).view(steps, batch, 3, hidden)
        gh = b_hh.expand(steps * batch, -1).clone()
        _add_previous_h(gh, h0, out, w_hh)
        gh = gh.view(steps, batch, 3, hidden)
        reset = torch.sigmoid(gi[:, :, 0] + gh[:, :, 0])
        update = torch.sigmoid(gi[:, :, 1] + gh[:, :, 1])
        # The reset gate scales the previous state's contribution to the candidate, bias included.
        candidate = torch.tanh(gi[:, :, 2] + reset * gh[:, :, 2])
        acts.update(reset=reset, update=update, candidate=candidate)
    return out, new_carry, {name: acts[name] for name in wanted}


def _add_previous_h(into: torch.Tensor, h0: torch.Tensor, out: torch.Tensor, w_hh: torch.Tensor) -> None:
    """into (T*B, G) += h_{t-1} W_hh^T, where h_{t-1} is h0 (1, B, H) at t = 0 and out[t - 1] after."""
    steps, batch, hidden = out.shape
    into[:batch].addmm_(h0[0], w_hh.t())
    if steps > 1:
        into[batch:].addmm_(out[:-1].reshape(-1, hidden), w_hh.t())


def _cell_states(written: torch.Tensor, forget: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """c_t = forget_t * c_{t-1} + input_t * candidate_t, one (B, H) step at a time; written = i * g."""
    cells = torch.empty_like(written)
    previous = c0
    for t in range(written.shape[0]):
        previous = torch.addcmul(written[t], forget[t], previous, out=cells[t])
    return cells


def zero_carry(model: CharRNN, layer_count: int, batch: int, device) -> list[Carry]:
    zeros = [torch.zeros(1, batch, model.config.hidden, device=device) for _ in range(layer_count)]
    if model.config.cell == "lstm":
        return [(z, torch.zeros_like(z)) for z in zeros]
    return zeros


@torch.no_grad()
def run_stack(model: CharRNN, ids: torch.Tensor, carry: list[Carry], wanted: dict[int, set[str]]
              ) -> tuple[dict[tuple[int, str], torch.Tensor], list[Carry], torch.Tensor]:
    """Layers 0..len(carry)-1 over ids (T, B): the wanted {(layer, state): (T, B, H)}, carry, top h."""
    x = model.embed(ids)
    acts: dict[tuple[int, str], torch.Tensor] = {}
    new_carry = []
    for layer in range(len(carry)):
        x, layer_carry, layer_acts = run_layer(model, layer, x, carry[layer], wanted.get(layer, set()))
        new_carry.append(layer_carry)
        acts.update({(layer, name): value for name, value in layer_acts.items()})
    return acts, new_carry, x


# -- characters and tokens ----------------------------------------------------------------------------
@dataclass
class AlignedText:
    """A text, its tokens, and for each character the index of the token that completes it."""

    text: str
    tokens: np.ndarray  # int64
    char_token: np.ndarray  # int64, one per character of `text`

    def per_token(self, values: np.ndarray) -> np.ndarray:
        """Sum per-character values onto the tokens that complete those characters (float64)."""
        return np.bincount(self.char_token, weights=values, minlength=len(self.tokens))

    def first_token(self) -> np.ndarray:
        """For each character, the index of its first token (its last one is char_token): a character's
        tokens start after the previous character's last one, unless both share a subword piece."""
        last = self.char_token
        before = np.concatenate([[-1], last[:-1]])  # the last token of the character before
        return np.where(before < last, before + 1, last)

    def token_char(self) -> np.ndarray:
        """For each token, the character it belongs to: the first one completed at or after it."""
        index = np.searchsorted(self.char_token, np.arange(len(self.tokens)), side="left")
        return np.minimum(index, max(len(self.char_token) - 1, 0))


def reading_view(aligned: AlignedText, reader: Reader) -> AlignedText:
    """The text as `reader` reads it: for a backward model the tokens reversed, and each character
    mapped to the reversed position of its first token, the one that completes it read right to left."""
    if not reader.backward:
        return aligned
    n = len(aligned.tokens)
    return AlignedText(aligned.text, aligned.tokens[::-1].copy(), n - 1 - aligned.first_token())


def state_names(config: ModelConfig) -> list[str]:
    """Every state name a model's units have, forward ones first: h, c, ..., then h<, c<, ..."""
    return [state + suffix for suffix in state_suffixes(config.direction) for state in STATES[config.cell]]


def align_text(tokenizer: Tokenizer, text: str, compose: bool = True) -> AlignedText:
    """`text` aligned with its tokens; `compose=False`: a jamo model's text spelled in jamo."""
    tokens = tokenizer.encode(text).astype(np.int64)
    if tokenizer.kind == "char" and len(tokens) == len(text):
        return AlignedText(text, tokens, np.arange(len(text), dtype=np.int64))
    return align_tokens(tokenizer, tokens, compose)


def align_tokens(tokenizer: Tokenizer, tokens: np.ndarray, compose: bool = True) -> AlignedText:
    # Byte fallback, jamo or subword pieces: which characters each token completes.
    pieces = tokenizer.token_texts(tokens.tolist(), compose)
    completed = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    return AlignedText("".join(pieces), tokens, np.repeat(np.arange(len(tokens), dtype=np.int64), completed))


def search_units(tokenizer: Tokenizer, aligned: AlignedText, features: dict[str, np.ndarray]
                 ) -> tuple[AlignedText, dict[str, np.ndarray]]:
    """What a search correlates over: characters, or a jamo model's tokens, with each per-character
    feature moved onto them (module docstring); a feature in SPELLED is computed on the spelled text."""
    if tokenizer.kind != "jamo" or not len(aligned.tokens):
        return aligned, features
    belongs = aligned.token_char()
    spelled = None
    moved = {}
    for name, values in features.items():
        if name in SPELLED:
            if spelled is None:
                spelled = align_tokens(tokenizer, aligned.tokens, compose=False)
            moved[name] = FEATURES[name](spelled.text)[spelled.token_char()]
        else:
            moved[name] = values[belongs]
    return AlignedText(aligned.text, aligned.tokens, np.arange(len(aligned.tokens), dtype=np.int64)), moved


# -- the feature search -------------------------------------------------------------------------------
@dataclass
class ScanResult:
    rankings: dict[str, list[UnitScore]]  # per feature, every unit-state, best |score| first
    saturation: list[GateSaturation] = field(default_factory=list)
    chars: int = 0


def stream_layout(n_tokens: int, streams: int = SEARCH_STREAMS, min_stream_tokens: int = MIN_STREAM_TOKENS
                  ) -> tuple[int, int]:
    """(streams, length) of a search: stream b reads tokens b*length up to (b+1)*length from a zero state."""
    count = stream_count(n_tokens, streams, min_stream_tokens)
    return count, -(-n_tokens // count)


def _stats_device(device: torch.device) -> torch.device:
    return torch.device("cpu") if device.type == "mps" else device  # MPS has no float64


@torch.no_grad()
def scan(model: CharRNN, aligned: AlignedText, features: dict[str, np.ndarray], wanted: dict[int, set[str]],
         saturation: bool = False, device: str | torch.device = "cpu", streams: int = SEARCH_STREAMS,
         chunk: int = CHUNK, on_progress: Callable[[int, int], None] | None = None,
         min_stream_tokens: int = MIN_STREAM_TOKENS,
         on_chunk: Callable[[int, dict[tuple[int, str], torch.Tensor]], None] | None = None) -> ScanResult:
    """One pass over the text: the Pearson correlation of each wanted {layer: states} unit with each
    per-character feature, and with `saturation`, how often each sigmoid gate of those layers saturates.

    Over characters, a unit's activation is its token's; so per token the sums are weighted by
    how many characters it completes, and take the sum of those characters' feature values.
    `on_chunk(start, acts)` sees each chunk's activations, (T, streams, H) per wanted (layer, state), for
    steps start..start+T of every stream, laid out as `stream_layout` says (the explorer keeps them).
    """
    device = torch.device(device)
    stats_dev = _stats_device(device)
    cell, hidden = model.config.cell, model.config.hidden
    n_tokens, n_chars = len(aligned.tokens), len(aligned.char_token)
    names = list(features)
    ranked = [(layer, state) for layer in sorted(wanted) for state in STATES[cell] if state in wanted[layer]]
    ranked = ranked if names else []
    gates = [(layer, g) for layer in sorted(wanted) for g in STATES[cell] if g in SIGMOID_GATES] if saturation else []
    run_wanted: dict[int, set[str]] = {}
    for layer, state in ranked + gates:
        run_wanted.setdefault(layer, set()).add(state)
    if on_chunk is not None:  # it sees every wanted state, even with no feature to rank them by
        for layer, states in wanted.items():
            run_wanted.setdefault(layer, set()).update(states)
    if not run_wanted:
        return ScanResult({name: [] for name in names}, [], n_chars)

    columns = [aligned.per_token(np.ones(n_chars))] + [aligned.per_token(features[k]) for k in names]
    streams, length = stream_layout(n_tokens, streams, min_stream_tokens)
    pad = streams * length - n_tokens
    ids = torch.from_numpy(np.pad(aligned.tokens, (0, pad))).view(streams, length)
    # Padding carries weight 0, so it adds nothing to any sum.
    weights = torch.from_numpy(np.pad(np.stack(columns, 1), ((0, pad), (0, 0))).astype(np.float32))
    weights = weights.view(streams, length, -1)
    sums = {key: torch.zeros(1 + len(names), hidden, dtype=torch.float64, device=stats_dev) for key in ranked}
    squares = {key: torch.zeros(hidden, dtype=torch.float64, device=stats_dev) for key in ranked}
    # Sums are taken of each activation minus a reference near its mean (the first chunk's), in float32
    # within a chunk and float64 across chunks: the shift keeps the variance from cancelling away.
    shifts: dict[tuple[int, str], torch.Tensor] = {}
    saturated = {key: torch.zeros(2, hidden, dtype=torch.float64, device=stats_dev) for key in gates}
    carry = zero_carry(model, max(run_wanted) + 1, streams, device)
    shifted = None  # one buffer for every state's shifted activations, reused chunk after chunk
    for start in range(0, length, chunk):
        step_ids = ids[:, start : start + chunk].t().to(device)  # (T, B)
        acts, carry, _ = run_stack(model, step_ids, carry, run_wanted)
        if on_chunk is not None:
            on_chunk(start, acts)
        # Rows of a (T, B, H) activation flattened to (T*B, H) are time-major, like these weights.
        w = weights[:, start : start + chunk].transpose(0, 1).reshape(-1, 1 + len(names)).to(stats_dev)
        w_chars = w[:, 0]
        w_columns = w.t().contiguous()
        for key, value in acts.items():
            rows = value.reshape(-1, hidden).to(stats_dev)
            if key in saturated:
                saturated[key][0] += w_chars @ (rows < LEFT_SATURATED).float()
                saturated[key][1] += w_chars @ (rows > RIGHT_SATURATED).float()
            if key in sums:
                if key not in shifts:
                    shifts[key] = rows.mean(0)
                if shifted is None or shifted.shape != rows.shape:
                    shifted = torch.empty_like(rows)
                torch.sub(rows, shifts[key], out=shifted)
                # (1+K, H): the sum of w*d, then of F_k*d per feature. One product per column, not one
                # matrix product: a feature's sums must not depend on how many others are searched with
                # it, so the explorer's all-feature pass ranks exactly as a one-feature --find.
                for k, column in enumerate(w_columns):
                    sums[key][k] += (column @ shifted).double()
                squares[key] += (w_chars @ shifted.square_()).double()
        if on_progress is not None:
            on_progress(min((start + chunk) * streams, n_tokens), n_tokens)
    rankings = {}
    for k, name in enumerate(names):
        f = features[name].astype(np.float64)
        scores = {key: _pearson(sums[key][0], squares[key], sums[key][1 + k], n_chars, f.sum(), (f * f).sum(),
                                shifts[key].double())
                  for key in ranked}
        rankings[name] = _ranked(scores, cell)
    sat = [GateSaturation(layer, gate, (counts[0] / max(n_chars, 1)).cpu().numpy(),
                          (counts[1] / max(n_chars, 1)).cpu().numpy())
           for (layer, gate), counts in saturated.items()]
    return ScanResult(rankings, sat, n_chars)


def _pearson(sum_d, sum_dd, sum_fd, n, sum_f, sum_ff, shift) -> np.ndarray:
    """Per unit, from sums of d = activation - shift: Pearson's r is the same for d as for the activation."""
    mean_d, mean_f = sum_d / n, sum_f / n
    var_a = sum_dd / n - mean_d * mean_d
    var_f = sum_ff / n - mean_f * mean_f
    cov = sum_fd / n - mean_d * mean_f
    if not var_f > 0:  # a constant feature: nothing can track it
        return np.zeros(len(sum_d))
    # A unit that never moves has no correlation; float32 rounding leaves it a variance near 1e-14
    # of its squared size, which must not turn into a score.
    scale = (shift + mean_d).square() + var_a.clamp_min(0)
    moving = var_a > 1e-10 * (scale + 1e-30)
    score = torch.where(moving, cov / torch.sqrt(var_a.clamp_min(1e-300) * var_f), torch.zeros_like(cov))
    return score.clamp(-1.0, 1.0).cpu().numpy()


def _ranked(scores: dict[tuple[int, str], np.ndarray], cell: str) -> list[UnitScore]:
    entries = [UnitScore(layer, state, unit, float(s))
               for (layer, state), values in scores.items() for unit, s in enumerate(values)]
    return _sorted(entries, list(STATES[cell]))


def _sorted(entries: list[UnitScore], order: list[str]) -> list[UnitScore]:
    return sorted(entries, key=lambda e: (-abs(e.score), e.layer, order.index(e.state), e.unit))


def _for_reader(wanted: dict[int, set[str]], reader: Reader) -> dict[int, set[str]]:
    """The wanted states of `reader`'s units, without their ending: {layer: {'h', 'c'}}. Every layer
    stays, if only for the gate saturation, which looks at all of a layer's gates."""
    return {layer: {split_state_name(name)[0] for name in names if split_state_name(name)[1] == reader.suffix}
            for layer, names in wanted.items()}


def scan_readers(model, aligned: AlignedText, features: dict[str, np.ndarray], wanted: dict[int, set[str]],
                 saturation: bool = False, device: str | torch.device = "cpu", streams: int = SEARCH_STREAMS,
                 on_progress: Callable[[int, int], None] | None = None,
                 on_chunk: Callable[[Reader], Callable[[int, dict], None] | None] | None = None) -> ScanResult:
    """`scan` over each language model of `model` (a biLM has two), each reading the text its own
    way, with the backward units' state names ending in '<', merged into one ranking per feature.
    `on_chunk(reader)` gives the chunk callback of `scan` for that reader's pass (states in its
    reading order, under their own names)."""
    found = readers(model)
    order = state_names(model.config)
    rankings: dict[str, list[UnitScore]] = {name: [] for name in features}
    gates: list[GateSaturation] = []
    chars = 0
    for k, reader in enumerate(found):
        mine = _for_reader(wanted, reader)

        def progress(done: int, total: int, k=k) -> None:
            if on_progress is not None:
                on_progress(k * total + done, len(found) * total)

        result = scan(reader.model, reading_view(aligned, reader), features, mine, saturation, device, streams,
                      on_progress=progress, on_chunk=on_chunk(reader) if on_chunk else None)
        for name, ranking in result.rankings.items():
            rankings[name] += [UnitScore(e.layer, e.state + reader.suffix, e.unit, e.score) for e in ranking]
        gates += [GateSaturation(g.layer, g.gate + reader.suffix, g.left, g.right) for g in result.saturation]
        chars = result.chars
    return ScanResult({name: _sorted(entries, order) for name, entries in rankings.items()}, gates, chars)


# -- the activations of a few units over a short text ------------------------------------------------
@torch.no_grad()
def unit_activations(model: CharRNN, aligned: AlignedText, units: list[tuple[int, str, int]],
                     tokenizer: Tokenizer | None = None, guesses: int = 0, device="cpu", chunk: int = 512
                     ) -> tuple[np.ndarray, list[list[tuple[str, float]]] | None]:
    """Per character, the activations of (layer, state, unit)s, (len(units), chars), and optionally
    the model's `guesses` likeliest next tokens after each character, as (text, probability)."""
    device = torch.device(device)
    n = len(aligned.tokens)
    wanted: dict[int, set[str]] = {}
    for layer, state, _ in units:
        wanted.setdefault(layer, set()).add(state)
    top = model.config.layers - 1 if guesses else max(wanted, default=0)
    per_token = np.zeros((len(units), n), dtype=np.float32)
    guess_ids, guess_probs = np.zeros((n, guesses), np.int64), np.zeros((n, guesses), np.float32)
    ids = torch.from_numpy(aligned.tokens).view(1, n)
    carry = zero_carry(model, top + 1, 1, device)
    for start in range(0, n, chunk):
        acts, carry, top_h = run_stack(model, ids[:, start : start + chunk].t().to(device), carry, wanted)
        for i, (layer, state, unit) in enumerate(units):
            per_token[i, start : start + chunk] = acts[(layer, state)][:, 0, unit].float().cpu().numpy()
        if guesses:
            probs = torch.softmax(model.logits(top_h[:, 0]).float(), dim=-1)
            best = torch.topk(probs, min(guesses, probs.shape[-1]), dim=-1)
            guess_ids[start : start + chunk, : best.indices.shape[1]] = best.indices.cpu().numpy()
            guess_probs[start : start + chunk, : best.values.shape[1]] = best.values.cpu().numpy()
    per_char = per_token[:, aligned.char_token]
    if not guesses or tokenizer is None:
        return per_char, None
    texts = {i: tokenizer.decode([i]) for i in np.unique(guess_ids).tolist()}
    shown = [[(texts[int(i)], float(p)) for i, p in zip(guess_ids[t], guess_probs[t])] for t in aligned.char_token]
    return per_char, shown


def reader_activations(model, aligned: AlignedText, units: list[tuple[int, str, int]],
                       tokenizer: Tokenizer | None = None, guesses: int = 0, device="cpu"
                       ) -> tuple[np.ndarray, list[list[tuple[str, float]]] | None]:
    """`unit_activations` for units of any direction (state names ending in '<' are backward);
    guesses come from the first language model: the next character, or for a backward-only
    model the previous one."""
    found = readers(model)
    values = np.zeros((len(units), len(aligned.text)), dtype=np.float32)
    shown = None
    for k, reader in enumerate(found):
        rows = [i for i, (_, state, _) in enumerate(units) if split_state_name(state)[1] == reader.suffix]
        wants_guesses = guesses if k == 0 else 0
        if not rows and not wants_guesses:
            continue
        mine = [(units[i][0], split_state_name(units[i][1])[0], units[i][2]) for i in rows]
        got, guessed = unit_activations(reader.model, reading_view(aligned, reader), mine, tokenizer,
                                        wants_guesses, device)
        values[rows] = got
        shown = guessed if k == 0 else shown
    return values, shown


# -- the command as a whole ---------------------------------------------------------------------------
@dataclass
class InspectOptions:
    units: list[int] = field(default_factory=list)
    layer: int | None = None  # with units: default the top layer; with a search: every layer
    state: str | None = None  # with units: default h; with a search: every state
    find: str | None = None
    find_regex: str | None = None
    top: int = 10  # rows of the ranking kept; 0: all
    show: int = 2  # best units of a search coloured over the text
    saturation: bool = False
    predictions: bool = False
    show_chars: int = 2000
    streams: int = SEARCH_STREAMS


@dataclass
class UnitView:
    layer: int
    state: str
    unit: int
    values: np.ndarray  # one per shown character
    score: float | None = None
    feature: str | None = None


@dataclass
class InspectReport:
    checkpoint: str
    model: ModelConfig
    chars: int  # characters of the inspected text
    shown_text: str
    feature: str | None = None  # what --find / --find-regex searched for
    ranking: list[UnitScore] | None = None
    overview: list[tuple[str, UnitScore]] | None = None  # the best unit for each built-in feature
    views: list[UnitView] = field(default_factory=list)
    guesses: list[list[tuple[str, float]]] | None = None
    saturation: list[GateSaturation] | None = None
    tokens_searched: int | None = None  # a jamo model's search runs over its tokens, not characters

    @property
    def searched(self) -> str:
        """What the scores were computed over, for a title."""
        if self.tokens_searched is None:
            return f"{self.chars:,} characters"
        return f"{self.tokens_searched:,} tokens (syllables spelled in jamo)"

    def as_json(self) -> list[dict]:
        """The main result as plain data: the ranking of a search, else the saturation, the best unit
        per feature, the shown units' activations, or the next-character guesses."""
        if self.ranking is not None:
            return [entry.as_dict() for entry in self.ranking]
        if self.saturation:
            return [gate.as_dict() for gate in self.saturation]
        if self.overview is not None:
            return [{"feature": name, **entry.as_dict()} for name, entry in self.overview]
        if self.views:
            return [{"layer": v.layer, "state": v.state, "unit": v.unit, "text": self.shown_text,
                     "activations": v.values.round(6).tolist()} for v in self.views]
        return [{"char": ch, "guesses": [{"text": t, "probability": round(p, 6)} for t, p in guesses]}
                for ch, guesses in zip(self.shown_text, self.guesses or [])]


def check_options(config: ModelConfig, options: InspectOptions) -> None:
    """Bad --layer / --state / --unit / --find choices, as usage errors naming the option."""
    states = state_names(config)
    if config.direction == "bidirectional":
        raise UsageError("the bidirectional model of --cheat-demo reads the text both ways at once; "
                         "inspect-neurons looks inside language models (train --direction both for two)")
    if options.layer is not None and not 0 <= options.layer < config.layers:
        raise UsageError(f"--layer {options.layer}: the model has {config.layers} layer"
                         f"{'s' if config.layers > 1 else ''} (0-{config.layers - 1})")
    if options.state is not None and options.state not in states:
        article = "a" if config.cell == "gru" else "an"
        raise UsageError(f"--state {options.state}: {article} {config.cell.upper()} unit has {', '.join(states)}")
    for unit in options.units:
        if not 0 <= unit < config.hidden:
            raise UsageError(f"--unit {unit}: the model has {config.hidden} units per layer (0-{config.hidden - 1})")
    if options.find is not None and options.find not in FEATURES:
        raise UsageError(f"--find {options.find}: unknown feature; choose one of {', '.join(FEATURES)}")
    if options.find and options.find_regex is not None:
        raise UsageError("--find and --find-regex: give one feature at a time")
    if options.top < 0 or options.show < 0 or options.show_chars < 1:
        raise UsageError("--top and --show must not be negative, --show-chars must be positive")
    if options.saturation and config.cell == "rnn":
        raise UsageError("--saturation: a vanilla RNN has no gates")


def inspect(checkpoint: Path | str | dict, text: str, options: InspectOptions, device: str | torch.device = "cpu",
            on_progress: Callable[[int, int], None] | None = None) -> InspectReport:
    """Everything `charlm inspect-neurons` shows, for a checkpoint and a text."""
    from .checkpoint import as_payload, model_from_checkpoint
    from .render import cut_at_line

    payload = as_payload(checkpoint)
    model, tokenizer = model_from_checkpoint(payload, device)
    config = model.config
    check_options(config, options)
    if not text:
        raise UsageError("the text to inspect is empty")
    aligned = align_text(tokenizer, text)
    shown_text = cut_at_line(aligned.text, options.show_chars)  # to the end of a line
    report = InspectReport(str(payload["path"]), config, len(aligned.text), shown_text)
    search = options.find is not None or options.find_regex is not None
    overview = not (search or options.units or options.saturation or options.predictions)
    layers = [options.layer] if options.layer is not None else list(range(config.layers))
    states = [options.state] if options.state is not None else state_names(config)
    features = {}
    if search:
        name = options.find or f"regex {options.find_regex}"
        report.feature = name
        values = (compute_feature(options.find, aligned.text) if options.find
                  else regex_feature(options.find_regex, aligned.text))
        units, found = search_units(tokenizer, aligned, {name: values})
        features[name] = _nonconstant(name, found[name])
    elif overview:
        units, found = search_units(tokenizer, aligned, {name: f(aligned.text) for name, f in FEATURES.items()})
        features = {name: values for name, values in found.items() if len(values) and values.min() != values.max()}
    else:
        units = aligned
    if overview and not features:
        raise UsageError("the text is too uniform for any built-in feature to vary over it; "
                         "give a longer text, or --unit N to colour it by a unit")
    wanted = {layer: set(states) if features else set() for layer in layers}
    if features or options.saturation:
        result = scan_readers(model, units, features, wanted, options.saturation, device, options.streams,
                              on_progress=on_progress)
        report.saturation = result.saturation if options.saturation else None
        report.tokens_searched = len(units.tokens) if units is not aligned else None
        if search:
            ranking = result.rankings[report.feature]
            report.ranking = ranking[: options.top] if options.top else ranking
        elif overview:
            report.overview = [(name, result.rankings[name][0]) for name in features]
    units: list[tuple[int, str, int, float | None, str | None]] = []
    if report.ranking:
        units += [(s.layer, s.state, s.unit, s.score, report.feature) for s in report.ranking[: options.show]]
    elif report.overview:
        best = sorted(report.overview, key=lambda item: -abs(item[1].score))[: options.show]
        units += [(s.layer, s.state, s.unit, s.score, name) for name, s in best]
    unit_layer = options.layer if options.layer is not None else config.layers - 1
    units += [(unit_layer, options.state or state_names(config)[0], u, None, None) for u in options.units]
    shown = align_text(tokenizer, report.shown_text) if len(report.shown_text) < len(aligned.text) else aligned
    if units or options.predictions:
        values, report.guesses = reader_activations(model, shown, [u[:3] for u in units], tokenizer,
                                                    GUESSES if options.predictions else 0, device)
        report.views = [UnitView(layer, state, unit, values[i], score, feature)
                        for i, (layer, state, unit, score, feature) in enumerate(units)]
    return report


def _nonconstant(name: str, values: np.ndarray) -> np.ndarray:
    if len(values) < 2 or values.min() == values.max():
        what = f"--find-regex {name[6:]!r}" if name.startswith("regex ") else f"--find {name}"
        raise UsageError(f"{what}: the feature does not vary over this text, so no unit can track it")
    return values
