/* charlm's model, run inside the explorer page: the tokenizer, the recurrent layers and the head of
 * a checkpoint, from the payload that charlm/explorer/weights.py writes (model_payload). It computes
 * in float64 from the float32 weights, with PyTorch's gate order and formulas (torch.nn.LSTM, GRU,
 * RNN with tanh), so its activations equal CharRNN.forward's and charlm.neurons.run_stack's
 * (tests/test_explorer_model.py holds them to 1e-4 over 1,000 characters). Plain JavaScript: in a
 * page it sets globalThis.CharlmModel, under node it is module.exports.
 *
 * API (stable; the page relies on it)
 *   CharlmModel.load(payload) -> model        payload: model_payload(...) as parsed JSON
 *   CharlmModel.STATES                         {lstm: [...], gru: [...], rnn: ["h"]}, as charlm.neurons.STATES
 *   CharlmModel.seededRandom(seed) -> rng      a small seeded PRNG: rng() gives numbers in [0, 1)
 *   model.config                               {cell, layers, hidden, embedding, vocab_size, bytes_from}
 *   model.stateNames                           this cell's states, e.g. ["h", "c", "input", "forget", ...]
 *   model.vocabSize, model.newlineId
 *   model.encode(text) -> {ids, chars, charToken}
 *       ids: Int32Array of token ids, exactly as charlm's Tokenizer.encode gives them (byte fallback
 *       for characters outside the vocabulary, and always for U+2581 and lone surrogates; for a
 *       jamo tokenizer, each Hangul syllable as its 2 or 3 jamo, or its bytes if one is unknown);
 *       chars: the text's characters, one per code point (what Array.from(text) gives);
 *       charToken: Int32Array, for each of chars the index in ids of the token that completes it,
 *       as charlm.neurons.align_text gives it (a byte-fallback character: its last byte token; a
 *       subword piece: the same token for each of its characters).
 *   model.initialState() -> state              all zeros. A state is never changed in place: keep any
 *                                              of them to resume from (e.g. after an edit).
 *   model.step(id, state) -> {state, layers}   layers[l][name]: Float64Array(hidden), for every name
 *                                              of model.stateNames, after reading token `id`
 *   model.run(ids, state?) -> {state, states, activations}
 *       states[t]: the state after ids[t]; activations[l][name]: Float64Array(ids.length * hidden),
 *       row t (from t * hidden) holding the values after ids[t]. `state` defaults to initialState().
 *   model.logProbs(state) -> Float64Array(vocab)   natural log of the next token's probabilities
 *   model.probs(state) -> Float64Array(vocab)      next-token probabilities (softmax of CharRNN.logits)
 *   model.topNext(state, k) -> [{id, text, p, isByte}]   the k likeliest next tokens, best first,
 *       special ids left out; text is what the token writes ("<0xE2>" for a byte token)
 *   model.tokenText(id) -> string              the same display text of one token
 *   model.decoder() -> decoder                 ids to text as they come: decoder.push(id) -> the text
 *       it completes (byte tokens wait until they form a whole UTF-8 character), decoder.flush() ->
 *       what is held back (an incomplete character comes out as U+FFFD), decoder.pending: bytes held.
 *       A jamo model's decoder composes syllables as charlm's JamoStreamDecoder does.
 *   model.sample(state, temperature, rng?, decoder?) -> id
 *       temperature 0: the likeliest token; otherwise probabilities to the power 1/temperature.
 *       Special ids are never drawn, nor any byte token that would break UTF-8: pass the decoder
 *       that will receive the id, so that a started character is always finished.
 *       rng defaults to Math.random.
 *   model.continueText(state, length, temperature, rng?, decoder?) -> {ids, text, state}
 *       draws until `length` characters are written and no character is left half made (a
 *       syllable still open at the end, waiting for a final, is written as it stands).
 */
(function (root) {
  "use strict"; // inside the function, so that it holds wherever the page puts this script

  const STATES = {
    lstm: ["h", "c", "input", "forget", "candidate", "output"],
    gru: ["h", "reset", "update", "candidate"],
    rnn: ["h"],
  };
  const FORMAT = "charlm-explorer-model";
  const VERSION = 1;
  const NUM_BYTES = 256;
  const REPLACEMENT = "\uFFFD";
  const UNK_PENALTY = 10; // sentencepiece's kUnkPenalty: an unknown character scores min_score - 10
  const FLT_MAX = 3.4028234663852886e38;
  const FLT_MIN = 1.1754943508222875e-38; // sentencepiece starts max_score there, the smallest normal float

  // Unicode's Hangul syllable arithmetic (as charlm/jamo.py): S = S_BASE + (L * V_COUNT + V) * T_COUNT + T.
  const S_BASE = 0xac00;
  const L_BASE = 0x1100;
  const V_BASE = 0x1161;
  const T_BASE = 0x11a7;
  const L_COUNT = 19;
  const V_COUNT = 21;
  const T_COUNT = 28;
  const N_COUNT = V_COUNT * T_COUNT;
  const S_COUNT = L_COUNT * N_COUNT;
  const INITIAL = 1;
  const VOWEL = 2;
  const FINAL = 3;
  const JAMO_BASES = { [INITIAL]: L_BASE, [VOWEL]: V_BASE, [FINAL]: T_BASE };

  // A tokenizer kind that first rewrites each character into the symbols its vocabulary holds
  // registers it here: (chars: string[]) -> {symbols: string[], source: Int32Array}, where
  // source[j] is the index in chars of the character that symbol j comes from.
  const PRE_SPLIT = {};

  // -- numbers -------------------------------------------------------------------------------------
  function decodeFloats(array) {
    const binary = atob(array.data);
    const view = new DataView(new ArrayBuffer(binary.length));
    for (let i = 0; i < binary.length; i++) view.setUint8(i, binary.charCodeAt(i));
    const values = new Float64Array(binary.length / 4);
    for (let i = 0; i < values.length; i++) values[i] = view.getFloat32(4 * i, true);
    const expected = array.shape.reduce((a, b) => a * b, 1);
    if (values.length !== expected) {
      throw new Error(`charlm model: an array of shape [${array.shape}] holds ${values.length} numbers`);
    }
    return values;
  }

  /** out[r] = bias[r] + sum over c of weight[r, c] * x[c], for a row-major (rows, x.length) weight.
   * Four running sums per row let the multiplications overlap: about 1.6 times faster in V8. */
  function affine(out, weight, bias, x) {
    const cols = x.length;
    const whole = cols & ~3;
    for (let r = 0; r < out.length; r++) {
      const row = r * cols;
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      let c = 0;
      for (; c < whole; c += 4) {
        s0 += weight[row + c] * x[c];
        s1 += weight[row + c + 1] * x[c + 1];
        s2 += weight[row + c + 2] * x[c + 2];
        s3 += weight[row + c + 3] * x[c + 3];
      }
      for (; c < cols; c++) s0 += weight[row + c] * x[c];
      out[r] = bias[r] + (s0 + s1 + (s2 + s3));
    }
    return out;
  }

  function sigmoid(x) {
    return 1 / (1 + Math.exp(-x));
  }

  function logSoftmaxInPlace(values) {
    let max = -Infinity;
    for (const v of values) if (v > max) max = v;
    let total = 0;
    for (const v of values) total += Math.exp(v - max);
    const shift = max + Math.log(total);
    for (let i = 0; i < values.length; i++) values[i] -= shift;
    return values;
  }

  /** mulberry32: a tiny, well-mixed 32-bit generator, enough for reproducible samples. */
  function seededRandom(seed) {
    let a = seed >>> 0;
    return function () {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  // -- UTF-8 ---------------------------------------------------------------------------------------
  /** The bytes charlm's tokenizer falls back to for one code point: UTF-8, and for a lone
   * surrogate what Python writes (U+DC80..U+DCFF: the one byte it escapes; others: 3 bytes). */
  function charBytes(point) {
    if (point < 0x80) return [point];
    if (point < 0x800) return [0xc0 | (point >> 6), 0x80 | (point & 63)];
    if (point >= 0xdc80 && point <= 0xdcff) return [point - 0xdc00];
    if (point < 0x10000) return [0xe0 | (point >> 12), 0x80 | ((point >> 6) & 63), 0x80 | (point & 63)];
    return [0xf0 | (point >> 18), 0x80 | ((point >> 12) & 63), 0x80 | ((point >> 6) & 63), 0x80 | (point & 63)];
  }

  /** Bytes in the UTF-8 sequence a lead byte starts; 0 for a byte no valid sequence starts with. */
  function sequenceLength(lead) {
    if (lead < 0x80) return 1;
    if (lead >= 0xc2 && lead <= 0xdf) return 2;
    if (lead >= 0xe0 && lead <= 0xef) return 3;
    if (lead >= 0xf0 && lead <= 0xf4) return 4;
    return 0;
  }

  /** [lowest, highest] byte that may follow the bytes held: the second byte's range excludes
   * overlong forms, surrogates (after 0xED) and code points past U+10FFFF. */
  function nextByteRange(held) {
    if (held.length === 1) {
      const lead = held[0];
      if (lead === 0xe0) return [0xa0, 0xbf];
      if (lead === 0xed) return [0x80, 0x9f];
      if (lead === 0xf0) return [0x90, 0xbf];
      if (lead === 0xf4) return [0x80, 0x8f];
    }
    return [0x80, 0xbf];
  }

  function sequenceText(bytes) {
    const n = bytes.length;
    const first = n === 1 ? bytes[0] : bytes[0] & (0xff >> (n + 1));
    let point = first;
    for (let i = 1; i < n; i++) point = (point << 6) | (bytes[i] & 63);
    return String.fromCodePoint(point);
  }

  /** Ids to text, one at a time, as Python's incremental UTF-8 decoder with errors="replace"
   * does it: each broken stretch of bytes becomes one U+FFFD, and at the same token as there. */
  class StreamDecoder {
    constructor(tokenizer) {
      this.tokenizer = tokenizer;
      this.held = [];
    }

    get pending() {
      return this.held.length;
    }

    /** Whether a byte token of value `byte` may come next without breaking UTF-8. */
    acceptsByte(byte) {
      if (!this.held.length) return sequenceLength(byte) > 0;
      if (this.holdsSurrogate()) return false;
      const [low, high] = nextByteRange(this.held);
      return byte >= low && byte <= high;
    }

    /** Python holds 0xED and a byte from 0xA0 (the start of an encoded surrogate) as if it could
     * go on, and only rejects the two bytes with the next token; so does this decoder. */
    holdsSurrogate() {
      return this.held.length === 2 && this.held[0] === 0xed && this.held[1] >= 0xa0;
    }

    push(id) {
      const byte = this.tokenizer.byteOf[id];
      if (byte < 0) return this.flush() + this.tokenizer.pieces[id];
      let out = "";
      if (this.held.length) {
        if (this.acceptsByte(byte)) {
          this.held.push(byte);
          if (this.held.length < sequenceLength(this.held[0])) return "";
          out = sequenceText(this.held);
          this.held = [];
          return out;
        }
        if (this.held.length === 1 && this.held[0] === 0xed && byte >= 0xa0 && byte <= 0xbf) {
          this.held.push(byte);
          return "";
        }
        out = this.flush();
      }
      const length = sequenceLength(byte);
      if (length === 1) return out + String.fromCharCode(byte);
      if (length === 0) return out + REPLACEMENT;
      this.held = [byte];
      return out;
    }

    flush() {
      const out = this.holdsSurrogate() ? REPLACEMENT + REPLACEMENT : this.held.length ? REPLACEMENT : "";
      this.held = [];
      return out;
    }
  }

  /** A jamo model's ids to text, as charlm's JamoStreamDecoder: decomposed jamo are composed into
   * a syllable, given out once the next id shows it cannot grow (a final, or anything else after
   * a vowel); a jamo that joins nothing comes out as the conjoining jamo itself. Byte ids go
   * through the UTF-8 decoder; `pending` counts its bytes only (a held syllable is whole text). */
  class JamoDecoder {
    constructor(tokenizer) {
      this.tokenizer = tokenizer;
      this.plain = new StreamDecoder(tokenizer);
      this.initial = -1;
      this.vowel = -1;
    }

    get pending() {
      return this.plain.pending;
    }

    acceptsByte(byte) {
      return this.plain.acceptsByte(byte);
    }

    push(id) {
      const role = this.tokenizer.jamoRole[id];
      if (!role) {
        const earlier = this.release();
        return earlier + this.plain.push(id);
      }
      const index = this.tokenizer.jamoIndex[id];
      let earlier = this.plain.flush(); // bytes left without the rest of their character
      if (role === INITIAL) {
        earlier += this.release();
        this.initial = index;
        return earlier;
      }
      if (role === VOWEL && this.initial >= 0 && this.vowel < 0) {
        this.vowel = index;
        return earlier;
      }
      if (role === FINAL && this.vowel >= 0) {
        const text = syllableText(this.initial, this.vowel, index);
        this.initial = this.vowel = -1;
        return earlier + text;
      }
      return earlier + this.release() + String.fromCharCode(JAMO_BASES[role] + index);
    }

    /** The partial syllable held, as text: a syllable without a final, or a lone initial. */
    release() {
      if (this.initial < 0) return "";
      const text = this.vowel >= 0 ? syllableText(this.initial, this.vowel, 0) : String.fromCharCode(L_BASE + this.initial);
      this.initial = this.vowel = -1;
      return text;
    }

    flush() {
      return this.release() + this.plain.flush();
    }
  }

  function syllableText(initial, vowel, final) {
    return String.fromCharCode(S_BASE + (initial * V_COUNT + vowel) * T_COUNT + final);
  }

  // -- the tokenizer -------------------------------------------------------------------------------
  function needsBytes(symbol) {
    // sentencepiece reads U+2581 as its own space mark, and UTF-8 cannot carry a lone surrogate.
    const unit = symbol.charCodeAt(0);
    return symbol === "\u2581" || (symbol.length === 1 && unit >= 0xd800 && unit <= 0xdfff);
  }

  function utf8Length(text) {
    let length = 0;
    for (const ch of text) length += charBytes(ch.codePointAt(0)).length;
    return length;
  }

  class TrieNode {
    constructor() {
      this.id = -1;
      this.children = new Map();
    }
  }

  class Tokenizer {
    constructor(table) {
      this.kind = table.kind;
      this.pieces = table.pieces;
      this.vocabSize = table.pieces.length;
      this.byteIds = table.byte_ids;
      this.byteOf = new Int16Array(this.vocabSize).fill(-1);
      this.byteIds.forEach((id, byte) => (this.byteOf[id] = byte));
      this.special = new Uint8Array(this.vocabSize);
      for (const id of table.special) this.special[id] = 1;
      this.unkId = table.unk_id;
      if (this.kind === "char" || this.kind === "jamo") {
        this.jamoRole = new Int8Array(this.vocabSize);
        if (this.kind === "jamo") this.initJamo(table);
        this.idOfChar = new Map();
        this.pieces.forEach((piece, id) => {
          if (Array.from(piece).length === 1 && !this.jamoRole[id]) this.idOfChar.set(piece, id);
        });
      } else if (this.kind === "unigram" || this.kind === "bpe") {
        this.initSubword(table);
      } else {
        throw new Error(`charlm model: the ${JSON.stringify(this.kind)} tokenizer cannot run in the page`);
      }
    }

    /** A jamo vocabulary: which ids are a decomposed syllable's initial, vowel or final (their
     * pieces show the conjoining jamo, but they are not the jamo a text may hold), and the id of
     * each jamo of each role (-1: not in the vocabulary). */
    initJamo(table) {
      this.jamoIndex = Int8Array.from(table.jamo_index);
      this.jamoId = { [INITIAL]: new Int32Array(L_COUNT).fill(-1), [VOWEL]: new Int32Array(V_COUNT).fill(-1),
        [FINAL]: new Int32Array(T_COUNT).fill(-1) };
      table.jamo_role.forEach((role, id) => {
        this.jamoRole[id] = role;
        if (role) this.jamoId[role][this.jamoIndex[id]] = id;
      });
    }

    /** The ids that spell a Hangul syllable (2 or 3), or null: it falls back whole to its bytes. */
    spellSyllable(point) {
      const s = point - S_BASE;
      const initial = this.jamoId[INITIAL][Math.floor(s / N_COUNT)];
      const vowel = this.jamoId[VOWEL][Math.floor((s % N_COUNT) / T_COUNT)];
      const finalIndex = s % T_COUNT;
      const final = finalIndex ? this.jamoId[FINAL][finalIndex] : 0;
      if (initial < 0 || vowel < 0 || final < 0) return null;
      return finalIndex ? [initial, vowel, final] : [initial, vowel];
    }

    /** What sentencepiece keeps for its encoders: pieces by text (normal, user-defined and
     * unused ones), their float32 scores, and a trie over them (and one over user-defined ones). */
    initSubword(table) {
      this.scores = table.scores;
      this.userDefined = new Uint8Array(this.vocabSize);
      for (const id of table.user_defined) this.userDefined[id] = 1;
      this.unused = new Uint8Array(this.vocabSize);
      for (const id of table.unused) this.unused[id] = 1;
      this.idOfPiece = new Map();
      this.trie = new TrieNode();
      this.userTrie = new TrieNode();
      this.pieceBytes = new Int32Array(this.vocabSize);
      this.minScore = FLT_MAX;
      this.maxScore = FLT_MIN;
      for (let id = 0; id < this.vocabSize; id++) {
        if (this.byteOf[id] >= 0 || this.special[id]) continue;
        const piece = this.pieces[id];
        this.idOfPiece.set(piece, id);
        this.pieceBytes[id] = utf8Length(piece);
        insert(this.trie, piece, id);
        if (this.userDefined[id]) insert(this.userTrie, piece, id);
        if (!this.userDefined[id] && !this.unused[id]) {
          this.minScore = Math.min(this.minScore, this.scores[id]);
          this.maxScore = Math.max(this.maxScore, this.scores[id]);
        }
      }
      this.unkScore = Math.fround(this.minScore - UNK_PENALTY);

      function insert(trie, piece, id) {
        let node = trie;
        for (const ch of piece) {
          if (!node.children.has(ch)) node.children.set(ch, new TrieNode());
          node = node.children.get(ch);
        }
        node.id = id;
      }
    }

    encode(text) {
      const chars = Array.from(text);
      const split = PRE_SPLIT[this.kind] ? PRE_SPLIT[this.kind](chars) : identitySplit(chars);
      const symbols = split.symbols;
      const out = new TokenList(symbols.length, this.byteIds);
      if (this.kind === "char" || this.kind === "jamo") {
        symbols.forEach((symbol, j) => {
          const point = symbol.codePointAt(0);
          if (this.kind === "jamo" && point >= S_BASE && point < S_BASE + S_COUNT) {
            const spelled = this.spellSyllable(point);
            if (spelled === null) out.addBytes(symbol, j);
            else for (const id of spelled) out.add(id, j, j + 1);
            return;
          }
          const id = needsBytes(symbol) ? undefined : this.idOfChar.get(symbol);
          if (id === undefined) out.addBytes(symbol, j);
          else out.add(id, j, j + 1);
        });
      } else {
        // As charlm's Tokenizer: sentencepiece encodes the stretches between the characters
        // that must go to bytes, each on its own.
        let start = 0;
        for (let j = 0; j <= symbols.length; j++) {
          if (j < symbols.length && !needsBytes(symbols[j])) continue;
          if (j > start) {
            const segment = this.kind === "unigram" ? this.unigram(symbols, start, j) : this.bpe(symbols, start, j);
            for (const [from, to, id] of segment) {
              if (id === this.unkId) for (let k = from; k < to; k++) out.addBytes(symbols[k], k);
              else out.add(id, from, to);
            }
          }
          if (j < symbols.length) out.addBytes(symbols[j], j);
          start = j + 1;
        }
      }
      return { ids: out.finish(), chars, charToken: charTokens(chars.length, split.source, out.symbolToken) };
    }

    /** sentencepiece's unigram encoder (Model::EncodeOptimized): the best-scoring segmentation
     * of symbols[start, end) into pieces, in float32 as it computes it, ties to the earliest.
     * Returns [from, to, id] per piece; an unknown character is one piece of id unk. */
    unigram(symbols, start, end) {
      const n = end - start;
      const bestScore = new Float64Array(n + 1);
      const bestStart = new Int32Array(n + 1).fill(-1);
      const bestId = new Int32Array(n + 1).fill(-1);
      const offer = (to, from, id, score) => {
        if (bestStart[to] === -1 || score > bestScore[to]) {
          bestScore[to] = Math.fround(score);
          bestStart[to] = from;
          bestId[to] = id;
        }
      };
      for (let from = 0; from < n; from++) {
        const before = bestScore[from];
        let node = this.trie;
        let hasSingle = false;
        for (let k = from; k < n; k++) {
          node = node.children.get(symbols[start + k]);
          if (node === undefined) break;
          const id = node.id;
          if (id < 0 || this.unused[id]) continue;
          // A user-defined piece scores in double precision (its length times the best score, less 0.1).
          const score = this.userDefined[id]
            ? Math.fround(this.pieceBytes[id] * this.maxScore) - 0.1 + before
            : Math.fround(this.scores[id] + before);
          offer(k + 1, from, id, score);
          if (k === from) hasSingle = true;
        }
        if (!hasSingle) offer(from + 1, from, this.unkId, Math.fround(this.unkScore + before));
      }
      const pieces = [];
      for (let to = n; to > 0; to = bestStart[to]) pieces.push([start + bestStart[to], start + to, bestId[to]]);
      return pieces.reverse();
    }

    /** sentencepiece's bpe encoder (bpe::Model::Encode): merge the adjacent pair whose merged piece
     * scores highest (the leftmost of equals) until no pair forms a piece; user-defined pieces are
     * matched first and never merged; unused pieces are split back into the pieces they merged. */
    bpe(symbols, start, end) {
      const parts = []; // {text, from, to, prev, next, frozen}
      for (let k = start; k < end; ) {
        const matched = longestMatch(this.userTrie, symbols, k, end);
        const to = k + Math.max(matched, 1);
        const text = symbols.slice(k, to).join("");
        parts.push({ text, from: k, to, prev: parts.length - 1, next: -1, frozen: matched > 0 });
        if (parts.length > 1) parts[parts.length - 2].next = parts.length - 1;
        k = to;
      }
      const agenda = new PairHeap();
      const splits = new Map(); // an unused piece -> the two texts it was merged from
      const offer = (left, right) => {
        if (left < 0 || right < 0 || parts[left].frozen || parts[right].frozen) return;
        const text = parts[left].text + parts[right].text;
        const id = this.idOfPiece.get(text);
        if (id === undefined) return;
        agenda.push({ left, right, score: this.scores[id], size: text.length });
        if (this.unused[id]) splits.set(text, [parts[left].text, parts[right].text]);
      };
      for (let i = 1; i < parts.length; i++) offer(i - 1, i);
      while (agenda.size) {
        const top = agenda.pop();
        const left = parts[top.left];
        const right = parts[top.right];
        // A pair whose sides have changed since it was offered is stale.
        if (!left.text || !right.text || left.text.length + right.text.length !== top.size) continue;
        left.text += right.text;
        left.to = right.to;
        left.next = right.next;
        if (right.next >= 0) parts[right.next].prev = top.left;
        right.text = "";
        offer(left.prev, top.left);
        offer(top.left, left.next);
      }
      const pieces = [];
      const resegment = (text, from) => {
        const to = from + Array.from(text).length;
        const id = this.idOfPiece.has(text) ? this.idOfPiece.get(text) : this.unkId;
        const split = this.unused[id] ? splits.get(text) : undefined;
        if (split === undefined) {
          pieces.push([from, to, id]);
          return;
        }
        resegment(split[0], from);
        resegment(split[1], from + Array.from(split[0]).length);
      };
      for (let i = parts.length ? 0 : -1; i >= 0; i = parts[i].next) resegment(parts[i].text, parts[i].from);
      return pieces;
    }
  }

  function identitySplit(chars) {
    return { symbols: chars, source: Int32Array.from(chars, (_, i) => i) };
  }

  /** Code points of the longest piece in `trie` that symbols[k, end) starts with; 0 if none. */
  function longestMatch(trie, symbols, k, end) {
    let node = trie;
    let longest = 0;
    for (let j = k; j < end; j++) {
      node = node.children.get(symbols[j]);
      if (node === undefined) break;
      if (node.id >= 0) longest = j - k + 1;
    }
    return longest;
  }

  function charTokens(count, source, symbolToken) {
    const charToken = new Int32Array(count).fill(-1);
    for (let j = 0; j < source.length; j++) {
      charToken[source[j]] = Math.max(charToken[source[j]], symbolToken[j]);
    }
    return charToken;
  }

  /** Token ids as they are made, and for each symbol the index of the token that completes it. */
  class TokenList {
    constructor(symbolCount, byteIds) {
      this.byteIds = byteIds;
      this.ids = [];
      this.symbolToken = new Int32Array(symbolCount).fill(-1);
    }

    add(id, from, to) {
      for (let j = from; j < to; j++) this.symbolToken[j] = this.ids.length;
      this.ids.push(id);
    }

    addBytes(symbol, index) {
      for (const ch of symbol) {
        for (const byte of charBytes(ch.codePointAt(0))) this.ids.push(this.byteIds[byte]);
      }
      this.symbolToken[index] = this.ids.length - 1;
    }

    finish() {
      return Int32Array.from(this.ids);
    }
  }

  /** A max-heap of candidate merges: the highest score first, then the leftmost. */
  class PairHeap {
    constructor() {
      this.items = [];
    }

    get size() {
      return this.items.length;
    }

    before(a, b) {
      return a.score > b.score || (a.score === b.score && a.left < b.left);
    }

    push(item) {
      const items = this.items;
      items.push(item);
      for (let i = items.length - 1; i > 0; ) {
        const parent = (i - 1) >> 1;
        if (!this.before(items[i], items[parent])) break;
        [items[i], items[parent]] = [items[parent], items[i]];
        i = parent;
      }
    }

    pop() {
      const items = this.items;
      const top = items[0];
      const last = items.pop();
      if (items.length) {
        items[0] = last;
        for (let i = 0; ; ) {
          const l = 2 * i + 1;
          const r = l + 1;
          let best = i;
          if (l < items.length && this.before(items[l], items[best])) best = l;
          if (r < items.length && this.before(items[r], items[best])) best = r;
          if (best === i) break;
          [items[i], items[best]] = [items[best], items[i]];
          i = best;
        }
      }
      return top;
    }
  }

  // -- the model -----------------------------------------------------------------------------------
  const GATES = { lstm: 4, gru: 3, rnn: 1 };

  class Model {
    constructor(payload) {
      if (!payload || payload.format !== FORMAT) throw new Error("charlm model: not a charlm explorer model payload");
      if (payload.version !== VERSION) {
        throw new Error(`charlm model: payload version ${payload.version}; this page reads version ${VERSION}`);
      }
      const config = payload.config;
      if (!(config.cell in STATES)) throw new Error(`charlm model: unknown cell ${JSON.stringify(config.cell)}`);
      this.config = config;
      this.cell = config.cell;
      this.layers = config.layers;
      this.hidden = config.hidden;
      this.stateNames = STATES[config.cell];
      this.tokenizer = new Tokenizer(payload.tokenizer);
      this.vocabSize = config.vocab_size;
      this.newlineId = this.tokenizer.pieces.indexOf("\n");
      const weights = payload.weights;
      this.embed = decodeFloats(weights.embed);
      this.layerWeights = weights.layers.map((layer) => ({
        wIh: decodeFloats(layer.w_ih),
        wHh: decodeFloats(layer.w_hh),
        bIh: decodeFloats(layer.b_ih),
        bHh: decodeFloats(layer.b_hh),
      }));
      this.head = { weight: decodeFloats(weights.head.weight), bias: decodeFloats(weights.head.bias) };
      this.byteHead = weights.byte_head
        ? { weight: decodeFloats(weights.byte_head.weight), bias: decodeFloats(weights.byte_head.bias) }
        : null;
      this.bytesFrom = this.byteHead ? config.bytes_from : -1;
    }

    encode(text) {
      return this.tokenizer.encode(text);
    }

    initialState() {
      const zeros = () => Array.from({ length: this.layers }, () => new Float64Array(this.hidden));
      return { h: zeros(), c: this.cell === "lstm" ? zeros() : null };
    }

    step(id, state) {
      if (!(id >= 0 && id < this.vocabSize)) throw new Error(`charlm model: token id ${id} is out of range`);
      const size = this.hidden;
      let x = this.embed.subarray(id * this.config.embedding, (id + 1) * this.config.embedding);
      const newState = { h: [], c: this.cell === "lstm" ? [] : null };
      const layers = [];
      for (let l = 0; l < this.layers; l++) {
        const { wIh, wHh, bIh, bHh } = this.layerWeights[l];
        const rows = GATES[this.cell] * size;
        const fromInput = affine(new Float64Array(rows), wIh, bIh, x);
        const fromHidden = affine(new Float64Array(rows), wHh, bHh, state.h[l]);
        const h = new Float64Array(size);
        let acts;
        if (this.cell === "lstm") {
          const [input, forget, candidate, output, c] = Array.from({ length: 5 }, () => new Float64Array(size));
          const previous = state.c[l];
          for (let u = 0; u < size; u++) {
            // PyTorch's order: input, forget, cell candidate, output
            input[u] = sigmoid(fromInput[u] + fromHidden[u]);
            forget[u] = sigmoid(fromInput[size + u] + fromHidden[size + u]);
            candidate[u] = Math.tanh(fromInput[2 * size + u] + fromHidden[2 * size + u]);
            output[u] = sigmoid(fromInput[3 * size + u] + fromHidden[3 * size + u]);
            // forget part of the old memory, write the candidate through the input gate
            c[u] = forget[u] * previous[u] + input[u] * candidate[u];
            h[u] = output[u] * Math.tanh(c[u]);
          }
          newState.c.push(c);
          acts = { h, c, input, forget, candidate, output };
        } else if (this.cell === "gru") {
          const [reset, update, candidate] = Array.from({ length: 3 }, () => new Float64Array(size));
          const previous = state.h[l];
          for (let u = 0; u < size; u++) {
            // PyTorch's order: reset, update, candidate
            reset[u] = sigmoid(fromInput[u] + fromHidden[u]);
            update[u] = sigmoid(fromInput[size + u] + fromHidden[size + u]);
            // the reset gate scales the previous state's part of the candidate, its bias included
            candidate[u] = Math.tanh(fromInput[2 * size + u] + reset[u] * fromHidden[2 * size + u]);
            // blend the new candidate and the previous hidden state
            h[u] = (1 - update[u]) * candidate[u] + update[u] * previous[u];
          }
          acts = { h, reset, update, candidate };
        } else {
          for (let u = 0; u < size; u++) h[u] = Math.tanh(fromInput[u] + fromHidden[u]);
          acts = { h };
        }
        newState.h.push(h);
        layers.push(acts);
        x = h;
      }
      return { state: newState, layers };
    }

    run(ids, state) {
      let current = state || this.initialState();
      const size = this.hidden;
      const activations = Array.from({ length: this.layers }, () => {
        const perState = {};
        for (const name of this.stateNames) perState[name] = new Float64Array(ids.length * size);
        return perState;
      });
      const states = [];
      for (let t = 0; t < ids.length; t++) {
        const stepped = this.step(ids[t], current);
        current = stepped.state;
        states.push(current);
        stepped.layers.forEach((acts, l) => {
          for (const name of this.stateNames) activations[l][name].set(acts[name], t * size);
        });
      }
      return { state: current, states, activations };
    }

    logProbs(state) {
      const top = state.h[this.layers - 1];
      const head = this.head;
      const main = logSoftmaxInPlace(affine(new Float64Array(head.bias.length), head.weight, head.bias, top));
      if (!this.byteHead) return main;
      // Factored head: real symbols plus an escape, then the byte given the escape.
      const byteHead = this.byteHead;
      const byte = logSoftmaxInPlace(affine(new Float64Array(NUM_BYTES), byteHead.weight, byteHead.bias, top));
      const escape = main[main.length - 1];
      const out = new Float64Array(this.vocabSize);
      const from = this.bytesFrom;
      for (let id = 0; id < this.vocabSize; id++) {
        if (id < from) out[id] = main[id];
        else if (id < from + NUM_BYTES) out[id] = escape + byte[id - from];
        else out[id] = main[id - NUM_BYTES];
      }
      return out;
    }

    probs(state) {
      return this.logProbs(state).map(Math.exp);
    }

    tokenText(id) {
      const byte = this.tokenizer.byteOf[id];
      if (byte >= 0) return `<0x${byte.toString(16).toUpperCase().padStart(2, "0")}>`;
      return this.tokenizer.pieces[id];
    }

    topNext(state, k) {
      const probs = this.probs(state);
      const ids = [];
      for (let id = 0; id < this.vocabSize; id++) if (!this.tokenizer.special[id]) ids.push(id);
      ids.sort((a, b) => probs[b] - probs[a] || a - b);
      return ids.slice(0, k).map((id) => ({
        id,
        text: this.tokenText(id),
        p: probs[id],
        isByte: this.tokenizer.byteOf[id] >= 0,
      }));
    }

    decoder() {
      return this.tokenizer.kind === "jamo" ? new JamoDecoder(this.tokenizer) : new StreamDecoder(this.tokenizer);
    }

    /** Whether `id` may be drawn next: no special id, and nothing that breaks UTF-8. */
    drawable(id, decoder) {
      const tokenizer = this.tokenizer;
      if (tokenizer.special[id]) return false;
      const byte = tokenizer.byteOf[id];
      if (byte < 0) return !(decoder && decoder.pending);
      return decoder ? decoder.acceptsByte(byte) : sequenceLength(byte) > 0;
    }

    sample(state, temperature, rng, decoder) {
      const random = rng || Math.random;
      const logProbs = this.logProbs(state);
      const allowed = [];
      let best = -1;
      for (let id = 0; id < this.vocabSize; id++) {
        if (!this.drawable(id, decoder)) continue;
        allowed.push(id);
        if (best < 0 || logProbs[id] > logProbs[best]) best = id;
      }
      if (best < 0) throw new Error("charlm model: no token can be drawn");
      if (!(temperature > 0)) return best;
      // Weights relative to the likeliest allowed token: never all zero, whatever the temperature.
      const weights = allowed.map((id) => Math.exp((logProbs[id] - logProbs[best]) / temperature));
      const total = weights.reduce((a, b) => a + b, 0);
      let target = random() * total;
      for (let i = 0; i < allowed.length; i++) {
        target -= weights[i];
        if (target < 0) return allowed[i];
      }
      return best; // rounding left a sliver past the last weight
    }

    continueText(state, length, temperature, rng, decoder) {
      const decode = decoder || this.decoder();
      const ids = [];
      let text = "";
      let written = 0;
      let current = state;
      while (written < length || decode.pending) {
        const id = this.sample(current, temperature, rng, decode);
        ids.push(id);
        const piece = decode.push(id);
        text += piece;
        written += Array.from(piece).length;
        current = this.step(id, current).state;
      }
      // A syllable still open (its final may never come) is written as it stands.
      if (decode.release) text += decode.release();
      return { ids, text, state: current };
    }
  }

  const CharlmModel = {
    STATES,
    FORMAT,
    VERSION,
    load: (payload) => new Model(payload),
    seededRandom,
  };

  if (typeof module === "object" && module.exports) module.exports = CharlmModel;
  else root.CharlmModel = CharlmModel;
})(typeof globalThis !== "undefined" ? globalThis : this);
