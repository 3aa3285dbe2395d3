"""Generating text: one character at a time, many samples side by side.

The prime is run through the model in one batched forward pass; after that each new
character costs one step of the model's cells for all samples at once (`PackedCells`:
the trained weights, packed once for the run) and one draw. Temperature 0 takes the most
likely character; otherwise the distribution is sharpened or flattened by the temperature
and cut by top-k and top-p (nucleus) before drawing, with a seeded generator so the same
seed gives the same text. Without top-k and top-p a draw reads only the model's main head,
and a factored head's byte softmax only for the rare streams that draw the byte escape
(`TokenChooser`), so on a CPU a character costs little more than the recurrence.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TextIO

import torch
import torch.nn.functional as F

from .config import NUM_BYTES
from .model import CharRNN, Hidden
from .tokenizer import Tokenizer

# Temperatures that scale float32 scores without overflow or underflow; outside them, and
# with top-k or top-p, the draw goes through filter_logits, the slower, careful way.
PLAIN_TEMPERATURES = (1e-3, 1e3)
# Largest table of layer-0 input gates (vocabulary x gates, in floats: 16 MB) worth keeping;
# a bigger vocabulary multiplies its embedding each step instead.
TABLE_LIMIT = 1 << 22


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Scale by temperature and mask (to -inf) what top-k and top-p leave out. logits (B, V)."""
    logits = logits.float()
    # Shift the largest logit to 0 first: the same distribution, but a tiny temperature then
    # sends the rest to -inf instead of overflowing into inf - inf = nan; -inf (a banned
    # token) stays -inf even at an infinite temperature.
    logits = logits - logits.max(dim=-1, keepdim=True).values
    # (divided in float64: a temperature like 1e-300 is 0 in float32)
    logits = torch.where(torch.isinf(logits), logits, (logits.double() / temperature).float())
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the first always stays.
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        drop[:, 0] = False  # even when top_p rounds to 0 in float32
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def pick_next(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Next token of each row of logits (B, V) -> (B,)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    return draw(torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1), generator)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of probs (B, V) -> (B,), by where a uniform number falls in the
    running sum: one random number per row, and at 64 rows about ten times cheaper than
    torch.multinomial. An index of probability 0 adds nothing to the sum, so none falls on it."""
    cumulative = probs.cumsum(dim=-1)  # (B, V)
    total = cumulative[:, -1:].contiguous()  # about 1; its own rounding is what counts
    uniform = torch.rand(total.shape, generator=generator, dtype=probs.dtype).to(probs.device)
    index = torch.searchsorted(cumulative, uniform * total, right=True)
    # A product that rounds up to the total itself would point past the end: take the last
    # index that raises the sum instead.
    last = torch.searchsorted(cumulative, total)
    return torch.minimum(index, last).squeeze(1)


# Valid UTF-8, byte by byte: a stream is at a character boundary (BOUNDARY) or inside a
# character, owing `remaining` more bytes of which the next lies in lo..hi. The ranges leave
# out overlong forms, surrogates and anything above U+10FFFF.
BOUNDARY = (0, 0, 0)
_LEADS = [(0xC2, 0xDF, (1, 0x80, 0xBF)), (0xE0, 0xE0, (2, 0xA0, 0xBF)), (0xE1, 0xEC, (2, 0x80, 0xBF)),
          (0xED, 0xED, (2, 0x80, 0x9F)), (0xEE, 0xEF, (2, 0x80, 0xBF)), (0xF0, 0xF0, (3, 0x90, 0xBF)),
          (0xF1, 0xF3, (3, 0x80, 0xBF)), (0xF4, 0xF4, (3, 0x80, 0x8F))]


def utf8_after(state: tuple[int, int, int], byte: int) -> tuple[int, int, int]:
    """The state after `byte`, which must be one `utf8_allowed(state)` allows."""
    remaining = state[0]
    if remaining:
        return (remaining - 1, 0x80, 0xBF) if remaining > 1 else BOUNDARY
    for first, last, after in _LEADS:
        if first <= byte <= last:
            return after
    return BOUNDARY  # an ASCII byte is a whole character


def utf8_allowed(state: tuple[int, int, int]) -> list[bool]:
    """Which of the 256 byte values may come next without breaking UTF-8."""
    if state[0]:
        return [state[1] <= b <= state[2] for b in range(NUM_BYTES)]
    return [b < 0x80 or 0xC2 <= b <= 0xF4 for b in range(NUM_BYTES)]


# The same, for text written right to left (a backward model): a character's bytes come last
# first. The state is (continuation bytes seen, the nearest of them, -1): at a boundary any
# ASCII or continuation byte may come; after k continuations, another one (up to three) or
# the lead byte of a (k + 1)-byte character whose second byte may be the nearest one seen.
def utf8_after_reversed(state: tuple[int, int, int], byte: int) -> tuple[int, int, int]:
    """The state after `byte`, read right to left, which `utf8_allowed_reversed(state)` allows."""
    if 0x80 <= byte <= 0xBF:
        return (state[0] + 1, byte, -1)
    return BOUNDARY  # ASCII, or the lead byte that completes the character


def utf8_allowed_reversed(state: tuple[int, int, int]) -> list[bool]:
    """Which of the 256 byte values may come next, right to left, without breaking UTF-8."""
    seen, nearest = state[0], state[1]
    if not seen:
        return [b <= 0xBF for b in range(NUM_BYTES)]
    allowed = [seen < 3 and 0x80 <= b <= 0xBF for b in range(NUM_BYTES)]
    for first, last, (remaining, lo, hi) in _LEADS:
        if remaining == seen and lo <= nearest <= hi:
            allowed[first : last + 1] = [True] * (last + 1 - first)
    return allowed


class TokenChooser:
    """Draws each stream's next token from the top layer's output (B, H), exactly as
    `pick_next` would from the model's logits with the tokenizer's special ids banned, and
    with the byte-fallback tokens held to valid UTF-8.

    The common case (no top-k or top-p, an ordinary temperature) costs one small matrix
    product: model.head with the temperature and the bans folded into its weights. With a
    factored head, its last output, the escape, stands for all 256 byte tokens; at
    temperature T the bytes together weigh p_escape^(1/T) * Z with Z = sum of p_byte^(1/T),
    which only the byte head knows. Z is at most Z_max (1 up to T = 1, 256^(1 - 1/T)
    above), so the escape is drawn with weight p_escape^(1/T) * Z_max, and a stream that
    draws it computes its byte head, keeps the escape with probability Z / Z_max (then
    draws the byte) or else draws again: rejection sampling, whose result has exactly the
    full distribution, and which computes the byte head only where the escape comes up.

    A sample is always valid text. Z counts only the bytes that can start a character (a
    lead byte or ASCII), and a stream inside a character draws its next byte from the byte
    head alone, among the bytes that continue the character validly; so no byte sequence is
    ever left broken. `allow_bytes` False bans the byte tokens altogether: a model whose
    training text had none never learned them, and its byte head is noise. `reverse` holds
    the bytes to UTF-8 read right to left, for a backward model, which writes a character's
    bytes last first.
    """

    def __init__(self, model: CharRNN, tokenizer: Tokenizer, temperature: float, top_k: int, top_p: float,
                 generator: torch.Generator | None, device: str | torch.device, allow_bytes: bool = True,
                 reverse: bool = False):
        self.model, self.generator = model, generator
        self._allowed, self._after = ((utf8_allowed_reversed, utf8_after_reversed) if reverse
                                      else (utf8_allowed, utf8_after))
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        vocab = tokenizer.vocab_size
        banned = {i for i in range(vocab) if tokenizer.is_special(i)}
        self.bytes_from = tokenizer.bytes_from  # first byte token id; -1: none to watch
        self.allow_bytes = allow_bytes and self.bytes_from >= 0
        if self.bytes_from >= 0 and not self.allow_bytes:
            banned |= set(range(self.bytes_from, self.bytes_from + NUM_BYTES))
        self.states: list[tuple[int, int, int]] = []  # each stream's place in UTF-8, from the first call
        self.inside: set[int] = set()  # the streams in the middle of a character
        self._masks: dict[tuple[int, int, int], torch.Tensor] = {}
        self.device = device
        self.plain = top_k == 0 and top_p >= 1.0 and PLAIN_TEMPERATURES[0] <= temperature <= PLAIN_TEMPERATURES[1]
        if self.allow_bytes and not model.factored:
            self.plain = False  # byte tokens among the main outputs: the careful way masks them
        if not self.plain:
            self.ban = None
            if banned:  # added to the logits: -inf on the ids that stand for no text
                self.ban = torch.zeros(vocab, device=device)
                self.ban[list(banned)] = float("-inf")
            return
        # The token id of each output of model.head; a factored head ends with the escape.
        if model.factored:
            start = model.config.bytes_from
            self.token_of = [*range(start), *range(start + NUM_BYTES, vocab)]
            self.escape = len(self.token_of)
            self.z_max = 1.0 if temperature <= 1 else NUM_BYTES ** (1 - 1 / temperature)
        else:
            self.token_of = list(range(vocab))
            self.escape = -1
        weight = model.head.weight.detach() / temperature
        bias = model.head.bias.detach() / temperature
        bias[[j for j, token in enumerate(self.token_of) if token in banned]] = float("-inf")
        if self.escape >= 0:
            bias[self.escape] += math.log(self.z_max) if self.allow_bytes else float("-inf")
        self.weight, self.bias = weight.to(device), bias.to(device)

    def byte_mask(self, state: tuple[int, int, int]) -> torch.Tensor:
        """(256,): 0 on the bytes that may come next in `state`, -inf elsewhere."""
        if state not in self._masks:
            allowed = torch.tensor(self._allowed(state), device=self.device)
            self._masks[state] = torch.zeros(NUM_BYTES, device=self.device).masked_fill(~allowed, float("-inf"))
        return self._masks[state]

    def __call__(self, top: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """top (B, H) -> the next token of each stream, as a tensor (B,) and as a list."""
        if len(self.states) != top.shape[0]:  # the first call: every stream starts a character
            self.states, self.inside = [BOUNDARY] * top.shape[0], set()
        if not self.plain:
            tokens = self._careful(top)
            return torch.tensor(tokens, device=top.device), tokens
        probs = torch.softmax(F.linear(top, self.weight, self.bias).float(), dim=-1)  # (B, outputs)
        choice = draw(probs, self.generator).tolist()
        tokens = [self.token_of[c] if c != self.escape else -1 for c in choice]
        inside = set(self.inside)
        for i in inside:  # a stream inside a character must draw its next byte
            tokens[i] = -1
        while -1 in tokens:  # rare: only streams that drew the escape, or are inside a character
            self._resolve_escapes(top, probs, tokens, inside)
        return torch.tensor(tokens, device=top.device), tokens

    def _set_state(self, row: int, state: tuple[int, int, int]) -> None:
        self.states[row] = state
        (self.inside.add if state[0] else self.inside.discard)(row)

    def _resolve_escapes(self, top: torch.Tensor, probs: torch.Tensor, tokens: list[int], inside: set[int]) -> None:
        """Fill the -1 entries of tokens: a byte token, or (rejected) a new draw."""
        rows = [i for i, token in enumerate(tokens) if token == -1]
        index = torch.tensor(rows, device=top.device)
        masks = torch.stack([self.byte_mask(self.states[row]) for row in rows])  # (n, 256)
        scaled = F.log_softmax(self.model.byte_head(top[index]).float(), dim=-1) / self.temperature + masks
        z = scaled.exp().sum(dim=-1)  # sum of p_byte^(1/T) over the allowed bytes, at most z_max
        uniform = torch.rand(len(rows), generator=self.generator, dtype=z.dtype).to(z.device)
        keep = (uniform * self.z_max < z).tolist()
        byte = draw(torch.softmax(scaled, dim=-1), self.generator).tolist()
        again = draw(probs[index], self.generator).tolist()
        for n, row in enumerate(rows):
            if keep[n] or row in inside:
                tokens[row] = self.bytes_from + byte[n]
                self._set_state(row, self._after(self.states[row], byte[n]))
            elif again[n] != self.escape:
                tokens[row] = self.token_of[again[n]]

    def _careful(self, top: torch.Tensor) -> list[int]:
        """Any temperature, top-k and top-p: the full logits, masked, through pick_next."""
        logits = self.model.logits(top).float()
        if self.ban is not None:
            logits = logits + self.ban
        if self.allow_bytes:
            b0 = self.bytes_from
            logits[:, b0 : b0 + NUM_BYTES] += torch.stack([self.byte_mask(state) for state in self.states])
            for row in self.inside:  # inside a character: only its next byte may come
                logits[row, :b0] = float("-inf")
                logits[row, b0 + NUM_BYTES :] = float("-inf")
        tokens = pick_next(logits, self.temperature, self.top_k, self.top_p, self.generator).tolist()
        if self.allow_bytes:
            for row, token in enumerate(tokens):
                if self.bytes_from <= token < self.bytes_from + NUM_BYTES:
                    self._set_state(row, self._after(self.states[row], token - self.bytes_from))
        return tokens


class PackedCells:
    """The recurrence of `CharRNN.step` over weights packed once for a sampling run.

    Layer 0's input part is a row of a table (each token's embedding already multiplied by
    W_ih, biases added), and each layer's hidden part is one matrix product added onto its
    input part (kept apart in a GRU). For a single stream every matrix is stored
    transposed, so that the matrix-vector product reads rows as long as the gate vector,
    which on a CPU streams the weights about twice as fast as PyTorch's layout (rows as
    long as the input); a matrix product over many streams repacks the weights anyway, and
    runs a little faster from PyTorch's layout. Over many streams an LSTM or RNN layer
    whose input part is a product too makes both parts in one product over [input, h]:
    on a CPU one product with twice the depth takes less time than two. The packing
    copies weights, so it lasts one sampling run. The state is a list per layer: (h, c)
    for an LSTM, h otherwise.
    """

    def __init__(self, model: CharRNN, streams: int):
        def operand(weight: torch.Tensor) -> torch.Tensor:  # (G, K) -> (K, G), the right side of x @ W^T
            return weight.t().contiguous() if streams == 1 else weight.t()

        self.cell = model.config.cell
        self.embedding = model.embed.weight.detach()
        self.table: torch.Tensor | None = None
        self.layers = []
        for layer in range(model.config.layers):
            w_ih, w_hh, b_ih, b_hh = (w.detach() for w in model.layer_weights(layer))
            # A GRU keeps b_hh with the hidden part: its candidate gate scales that part by r.
            input_bias, hidden_bias = (b_ih, b_hh) if self.cell == "gru" else (b_ih + b_hh, None)
            if layer == 0 and self.embedding.shape[0] * w_ih.shape[0] <= TABLE_LIMIT:
                self.table = torch.addmm(input_bias, self.embedding, w_ih.t())  # (V, G)
                w_ih = None  # the table replaces it
            joint = None  # (K + H, G): both parts in one product
            if streams > 1 and w_ih is not None and self.cell != "gru":
                joint, w_ih, w_hh = torch.cat([w_ih, w_hh], dim=1).t(), None, None
            self.layers.append((w_ih if w_ih is None else operand(w_ih), input_bias,
                                w_hh if w_hh is None else operand(w_hh), hidden_bias, joint))

    def state(self, hidden: Hidden) -> list:
        if self.cell == "lstm":
            return list(zip(hidden[0], hidden[1]))
        return list(hidden)

    def top(self, state: list) -> torch.Tensor:
        """The top layer's output (B, H): what the head reads."""
        return state[-1][0] if self.cell == "lstm" else state[-1]

    def __call__(self, idx: torch.Tensor, state: list) -> list:
        """idx (B,) -> the state after it."""
        new: list = []
        below = None  # the output of the layer below
        for w_ih, input_bias, w_hh, hidden_bias, joint in self.layers:
            h, c = state[len(new)] if self.cell == "lstm" else (state[len(new)], None)
            x = below if below is not None else (None if self.table is not None else self.embedding[idx])
            if joint is not None:
                gates = torch.addmm(input_bias, torch.cat([x, h], dim=1), joint)  # (B, G)
            else:
                from_input = self.table[idx] if x is None else torch.addmm(input_bias, x, w_ih)
                gates = None if self.cell == "gru" else torch.addmm(from_input, h, w_hh)
            if self.cell == "gru":
                new.append(_gru(from_input, torch.addmm(hidden_bias, h, w_hh), h))
            else:
                new.append(_lstm(gates, c) if self.cell == "lstm" else torch.tanh(gates))
            below = new[-1][0] if self.cell == "lstm" else new[-1]
        return new


def _lstm(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's LSTM gate order: input, forget, cell candidate, output."""
    size = c.shape[1]
    squashed = torch.sigmoid(gates)
    keep, forget, output = squashed[:, :size], squashed[:, size : 2 * size], squashed[:, 3 * size :]
    # forget part of the old memory, write the new candidate through the input gate
    c = torch.addcmul(forget * c, keep, torch.tanh(gates[:, 2 * size : 3 * size]))
    return output * torch.tanh(c), c


def _gru(from_input: torch.Tensor, from_hidden: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """PyTorch's GRU gate order: reset, update, candidate."""
    size = h.shape[1]
    reset_update = torch.sigmoid(from_input[:, : 2 * size] + from_hidden[:, : 2 * size])
    reset, update = reset_update[:, :size], reset_update[:, size:]
    candidate = torch.tanh(torch.addcmul(from_input[:, 2 * size :], reset, from_hidden[:, 2 * size :]))
    # blend the new candidate and the previous hidden state
    return torch.lerp(candidate, h, update)


@torch.inference_mode()
def generate_batch(
    model: CharRNN,
    tokenizer: Tokenizer,
    prime: str = "",
    length: int = 500,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop: str | None = None,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    bytes_seen: bool = True,
) -> Iterator[list[str]]:
    """Yield, after each step, the new text of every sample ('' once a sample is done).

    `length` counts generated characters (the prime not included). A sample ends early
    right after it writes `stop`. `bytes_seen` False says the model's training text had no
    byte-fallback tokens: then it draws none, unless the prime has some (characters unseen
    in training), which it may want to continue.
    """
    model.eval()
    prime_ids = tokenizer.encode(prime)
    if len(prime_ids) == 0:
        # With no prime, start as if at the beginning of a line.
        prime_ids = [tokenizer.newline_id]
    context = torch.as_tensor(prime_ids, dtype=torch.long, device=device).unsqueeze(0)
    _, _, hidden = model(context)
    hidden = tuple(h.expand(-1, num_samples, -1).contiguous() for h in hidden) if isinstance(hidden, tuple) \
        else hidden.expand(-1, num_samples, -1).contiguous()
    cells = PackedCells(model, num_samples)
    state = cells.state(hidden)
    b0 = tokenizer.bytes_from
    prime_has_bytes = b0 >= 0 and bool(((context >= b0) & (context < b0 + NUM_BYTES)).any())
    choose = TokenChooser(model, tokenizer, temperature, top_k, top_p, generator, device,
                          allow_bytes=bytes_seen or prime_has_bytes)
    decoders = [tokenizer.stream_decoder() for _ in range(num_samples)]
    written = [0] * num_samples
    tails = [""] * num_samples  # the last len(stop) characters, to spot the stop string
    going = list(range(num_samples)) if length > 0 else []
    while going:
        token, drawn = choose(cells.top(state))
        new = [""] * num_samples
        still_going = []
        for i in going:
            text = decoders[i](drawn[i])
            room = length - written[i]
            if len(text) > room:
                text = text[:room]
            finished = len(text) == room
            if stop:
                seen = tails[i] + text
                at = seen.find(stop)
                if at >= 0:
                    text = text[: at + len(stop) - len(tails[i])]
                    finished = True
                tails[i] = seen[-len(stop):]
            written[i] += len(text)
            new[i] = text
            if not finished:
                still_going.append(i)
        yield new
        going = still_going
        if going:  # no step after the last character
            state = cells(token, state)
    # No sample ends inside a character: a stream inside one draws only its next byte, and a
    # sample ends only on text, so nothing is left in the decoders to flush.


def generate(model: CharRNN, tokenizer: Tokenizer, prime: str = "", length: int = 500, **options) -> Iterator[str]:
    """One sample, as a stream of text pieces (the prime not included)."""
    for pieces in generate_batch(model, tokenizer, prime, length, num_samples=1, **options):
        if pieces[0]:
            yield pieces[0]


def write_samples(stream: Iterator[list[str]], out: TextIO, prime: str, num_samples: int) -> list[str]:
    """What `charlm sample` prints: one sample streamed piece by piece, or several once done."""
    if num_samples == 1:
        out.write(prime)
        out.flush()
        written = []
        for pieces in stream:
            if pieces[0]:
                out.write(pieces[0])
                out.flush()
                written.append(pieces[0])
        out.write("\n")
        out.flush()
        return ["".join(written)]
    parts: list[list[str]] = [[] for _ in range(num_samples)]
    for pieces in stream:
        for i, piece in enumerate(pieces):
            parts[i].append(piece)
    texts = ["".join(p) for p in parts]
    for i, text in enumerate(texts):
        out.write(f"=== sample {i + 1} ===\n{prime}{text}\n")
    out.flush()
    return texts
