/* The explorer page: reads the JSON that charlm/explorer/page.py wrote into #charlm-data and
 * shows the text coloured by one unit, the units ranked by each feature, what the model
 * guesses at each character, the units that are on in a dragged selection and where else
 * they are on together (LSTMVis), the gate saturation scatter, and a live box where the
 * model runs on what the user types (model.js). Text from the corpus or the user reaches
 * the page only through textContent. Stored h comes 8-bit per unit; gates and LSTM cell
 * states are recomputed here from it and the weights, one weight row per step.
 */
"use strict";

const CharlmExplorer = (function () {
  const CHUNK_CHARS = 2500; // characters laid out per frame: the first ones show at once
  const FIRST_ROWS = 100; // rows of a ranking shown before "show all"
  const MATCHES = 50;
  const FLANK = 5; // tokens on each side of a selection that should be off
  const GUESS_GLYPHS = { " ": "␣", "\n": "↵", "\t": "→" };
  const NEGATIVE = [33, 102, 172];
  const POSITIVE = [178, 24, 43];

  const app = {
    data: null,
    chars: [], // the text, one entry per code point
    spans: [], // one per character
    tokens: null,
    charToken: null,
    tokenFirstChar: null,
    stored: {}, // "layer/state" -> {q: Int8Array (unit-major), scale: Float32Array}
    snapshots: null, // per layer: Float32Array (streams, chunks, hidden) of cell states at chunk ends
    model: null,
    unit: null, // {layer, state, unit}
    values: null, // the shown unit's value per token
    scale: null,
    cache: new Map(),
    rankings: [],
    feature: null,
    palette: [],
    selection: null,
    matchSpans: [],
    timings: {},
    ready: false,
  };

  // -- data ---------------------------------------------------------------------------------------
  function base64Bytes(text) {
    if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(text);
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  const ARRAY_TYPES = {
    int8: Int8Array, uint8: Uint8Array, int16: Int16Array, uint16: Uint16Array,
    int32: Int32Array, uint32: Uint32Array, float32: Float32Array, float64: Float64Array,
  };

  async function inflate(part) {
    const stream = new Blob([base64Bytes(part)]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  /** A packed array (page.py's pack): parts of base64 of deflated little-endian bytes, inflated by the browser. */
  async function unpack(packed) {
    const parts = await Promise.all(packed.zlib.map(inflate));
    const bytes = new Uint8Array(parts.reduce((total, part) => total + part.length, 0));
    let offset = 0;
    for (const part of parts) { bytes.set(part, offset); offset += part.length; }
    return new ARRAY_TYPES[packed.dtype](bytes.buffer);
  }

  async function loadArrays(data) {
    const jobs = [];
    const want = (packed, store) => jobs.push(unpack(packed).then(store));
    want(data.tokens, (a) => { app.tokens = a; });
    if (data.char_token) want(data.char_token, (a) => { app.charToken = a; });
    for (const entry of data.stored) {
      const slot = { q: null, scale: null };
      app.stored[`${entry.layer}/${entry.state}`] = slot;
      want(entry.values, (a) => { slot.q = a; });
      want(entry.scale, (a) => { slot.scale = a; });
    }
    if (data.cell_snapshots) {
      app.snapshots = [];
      data.cell_snapshots.forEach((packed, layer) => want(packed, (a) => { app.snapshots[layer] = a; }));
    }
    want(data.surprisal_centibits, (a) => { app.surprisal = a; });
    want(data.guesses.ids, (a) => { app.guessIds = a; });
    want(data.guesses.probs, (a) => { app.guessProbs = a; });
    for (const ranking of data.rankings) {
      const entry = { name: ranking.name, keys: null, scores: null };
      app.rankings.push(entry);
      want(ranking.keys, (a) => { entry.keys = a; });
      want(ranking.scores, (a) => { entry.scores = a; });
    }
    app.saturation = [];
    for (const gate of data.saturation.gates) {
      const entry = { layer: gate.layer, gate: gate.gate, left: null, right: null };
      app.saturation.push(entry);
      want(gate.left, (a) => { entry.left = a; });
      want(gate.right, (a) => { entry.right = a; });
    }
    await Promise.all(jobs);
    if (!app.charToken) app.charToken = Int32Array.from({ length: app.chars.length }, (_, i) => i);
    app.tokenFirstChar = new Int32Array(app.tokens.length).fill(-1);
    for (let i = app.charToken.length - 1; i >= 0; i--) app.tokenFirstChar[app.charToken[i]] = i;
  }

  function stateInfo(name) {
    return app.data.states.find((s) => s.name === name);
  }

  function unitName(unit) {
    return `${unit.layer}/${unit.state}/${unit.unit}`;
  }

  function unitOfKey(key) {
    const { hidden } = app.data.model;
    const states = app.data.states.length;
    const unit = key % hidden;
    const rest = (key - unit) / hidden;
    return { layer: Math.floor(rest / states), state: app.data.states[rest % states].name, unit };
  }

  // -- values of one unit -------------------------------------------------------------------------
  function storedValues(layer, state, unit) {
    const slot = app.stored[`${layer}/${state}`];
    const n = app.tokens.length;
    const out = new Float32Array(n);
    const scale = slot.scale[unit];
    const q = slot.q;
    for (let t = 0, k = unit * n; t < n; t++, k++) out[t] = q[k] * scale;
    return out;
  }

  function streamStart(t) {
    return t % app.data.streams.length === 0; // the search restarts the state from zero here
  }

  /** Pre-activations of weight rows over tokens [from, to): input part and hidden part, each with its
   * bias, from the stored h of the layer below (or the embedding) and of this layer one step back. */
  function preActivations(layer, rows, from, to) {
    const model = app.model;
    const { wIh, wHh, bIh, bHh } = model.layerWeights[layer];
    const hidden = app.data.model.hidden;
    const n = app.tokens.length;
    const span = to - from;
    const input = rows.map((r) => new Float32Array(span).fill(bIh[r]));
    const recurrent = rows.map((r) => new Float32Array(span).fill(bHh[r]));
    if (layer === 0 && span < app.data.model.vocab_size) { // a short window: one dot product per token
      const width = app.data.model.embedding;
      rows.forEach((r, k) => {
        for (let t = from; t < to; t++) {
          const x = app.tokens[t] * width;
          let sum = 0;
          for (let e = 0; e < width; e++) sum += wIh[r * width + e] * model.embed[x + e];
          input[k][t - from] += sum;
        }
      });
    } else if (layer === 0) { // the whole text: project each vocabulary entry once
      const width = app.data.model.embedding;
      rows.forEach((r, k) => {
        const projected = new Float64Array(app.data.model.vocab_size);
        for (let v = 0; v < projected.length; v++) {
          let sum = 0;
          for (let e = 0; e < width; e++) sum += wIh[r * width + e] * model.embed[v * width + e];
          projected[v] = sum;
        }
        for (let t = from; t < to; t++) input[k][t - from] += projected[app.tokens[t]];
      });
    } else {
      addProducts(input, wIh, rows, app.stored[`${layer - 1}/h`], from, to, 0, hidden, n);
    }
    addProducts(recurrent, wHh, rows, app.stored[`${layer}/h`], from, to, 1, hidden, n);
    for (let t = Math.max(from, 1); t < to; t++) {
      if (streamStart(t)) rows.forEach((_, k) => { recurrent[k][t - from] = bHh[rows[k]]; });
    }
    if (from === 0) rows.forEach((_, k) => { recurrent[k][0] = bHh[rows[k]]; });
    return { input, recurrent };
  }

  /** out[k][t - from] += sum over j of weight[rows[k], j] * h_j(t - lag), h dequantised; unit-major
   * loops keep the reads contiguous. */
  function addProducts(out, weight, rows, slot, from, to, lag, hidden, n) {
    const first = Math.max(from, lag);
    for (let j = 0; j < hidden; j++) {
      const base = j * n - lag;
      rows.forEach((r, k) => {
        const w = weight[r * hidden + j] * slot.scale[j];
        if (w === 0) return;
        const target = out[k];
        for (let t = first; t < to; t++) target[t - from] += w * slot.q[base + t];
      });
    }
  }

  function sigmoid(x) {
    return 1 / (1 + Math.exp(-x));
  }

  function gateValues(layer, state, unit, from, to) {
    const info = stateInfo(state);
    const hidden = app.data.model.hidden;
    const span = to - from;
    const out = new Float32Array(span);
    if (info.source === "lstm-gate") {
      const { input, recurrent } = preActivations(layer, [info.gate * hidden + unit], from, to);
      const squash = info.range === "sigmoid" ? sigmoid : Math.tanh;
      for (let t = 0; t < span; t++) out[t] = squash(input[0][t] + recurrent[0][t]);
    } else if (info.source === "gru-gate") {
      if (info.gate < 2) {
        const { input, recurrent } = preActivations(layer, [info.gate * hidden + unit], from, to);
        for (let t = 0; t < span; t++) out[t] = sigmoid(input[0][t] + recurrent[0][t]);
      } else { // the candidate: the reset gate scales the previous state's part, bias included
        const { input, recurrent } = preActivations(layer, [unit, 2 * hidden + unit], from, to);
        for (let t = 0; t < span; t++) {
          const reset = sigmoid(input[0][t] + recurrent[0][t]);
          out[t] = Math.tanh(input[1][t] + reset * recurrent[1][t]);
        }
      }
    }
    return out;
  }

  /** LSTM cell states of `units` over tokens [from, to): from the nearest stored chunk-end state (or
   * zero at a stream's start), c_t = forget_t * c_{t-1} + input_t * candidate_t. */
  function cellValues(layer, units, from, to) {
    const { length, chunk } = app.data.streams;
    const hidden = app.data.model.hidden;
    const chunksPerStream = Math.ceil(length / chunk);
    const begin = Math.max(0, from - ((from % length) % chunk));
    const rows = [];
    units.forEach((u) => rows.push(u, hidden + u, 2 * hidden + u));
    const { input, recurrent } = preActivations(layer, rows, begin, to);
    const snapshot = app.snapshots[layer];
    return units.map((u, k) => {
      const out = new Float32Array(to - from);
      let c = 0;
      for (let t = begin; t < to; t++) {
        const local = t % length;
        if (local === 0) c = 0;
        else if (local % chunk === 0) {
          const stream = (t - local) / length;
          c = snapshot[(stream * chunksPerStream + local / chunk - 1) * hidden + u];
        }
        const i = t - begin;
        const gateIn = sigmoid(input[3 * k][i] + recurrent[3 * k][i]);
        const forget = sigmoid(input[3 * k + 1][i] + recurrent[3 * k + 1][i]);
        const candidate = Math.tanh(input[3 * k + 2][i] + recurrent[3 * k + 2][i]);
        c = forget * c + gateIn * candidate;
        if (t >= from) out[t - from] = c;
      }
      return out;
    });
  }

  function available(state) {
    const info = stateInfo(state);
    return Boolean(info && info.source && (info.source === "stored" || app.model));
  }

  /** The unit's value at every token (cached: recomputed gates cost a few milliseconds). */
  function unitValues(unit) {
    const key = unitName(unit);
    if (app.cache.has(key)) return app.cache.get(key);
    const info = stateInfo(unit.state);
    const n = app.tokens.length;
    let values;
    if (info.source === "stored") values = storedValues(unit.layer, unit.state, unit.unit);
    else if (info.source === "lstm-cell") values = cellValues(unit.layer, [unit.unit], 0, n)[0];
    else values = gateValues(unit.layer, unit.state, unit.unit, 0, n);
    if (app.cache.size > 24) app.cache.delete(app.cache.keys().next().value);
    app.cache.set(key, values);
    return values;
  }

  // -- colour -------------------------------------------------------------------------------------
  function buildPalette() {
    const steps = 255;
    for (let k = 0; k <= steps; k++) {
      const f = (2 * k) / steps - 1; // -1 .. 1
      const rgb = f >= 0 ? POSITIVE : NEGATIVE;
      const a = Math.abs(f);
      const mix = rgb.map((c) => Math.round(255 + (c - 255) * a));
      app.palette.push(`rgb(${mix[0]},${mix[1]},${mix[2]})`);
    }
  }

  /** Where white sits and how far full colour is: gates in (0, 1), tanh states in (-1, 1), a cell
   * state to its largest magnitude over the text. */
  function scaleFor(state, values) {
    const info = stateInfo(state);
    if (info.range === "sigmoid") return { centre: 0.5, half: 0.5 };
    if (info.range === "tanh") return { centre: 0, half: 1 };
    let peak = 1e-6;
    for (let t = 0; t < values.length; t++) peak = Math.max(peak, Math.abs(values[t]));
    return { centre: 0, half: Number(peak.toPrecision(2)) };
  }

  function colourOf(value, scale) {
    const f = Math.max(-1, Math.min(1, (value - scale.centre) / scale.half));
    return app.palette[Math.round(((f + 1) / 2) * 255)] || app.palette[128];
  }

  function colourSpans(from, to) {
    const { spans, charToken, values, scale } = app;
    for (let i = from; i < to; i++) spans[i].style.backgroundColor = colourOf(values[charToken[i]], scale);
  }

  function formatValue(x) {
    return (x >= 0 ? "+" : "") + x.toFixed(Math.abs(x) >= 10 ? 1 : 3);
  }

  // -- the text -----------------------------------------------------------------------------------
  function glyph(ch) {
    if (ch === "\n") return "↵\n";
    if (ch === "\t" || ch === " ") return ch;
    const code = ch.codePointAt(0);
    if (code < 32) return String.fromCodePoint(0x2400 + code);
    if (code === 127) return "␡";
    return ch;
  }

  function layoutChunk(from) {
    const to = Math.min(from + CHUNK_CHARS, app.chars.length);
    const fragment = document.createDocumentFragment();
    const { length } = app.data.streams;
    for (let i = from; i < to; i++) {
      const span = document.createElement("span");
      span.textContent = glyph(app.chars[i]);
      span.charIndex = i;
      if (app.chars[i] === "\n") span.className = "nl";
      const token = app.charToken[i];
      if (token > 0 && token % length === 0 && app.tokenFirstChar[token] === i) {
        span.classList.add("restart");
        span.title = "the search reads the text as parallel streams: the model's state starts from zero here";
      }
      app.spans.push(span);
      fragment.appendChild(span);
    }
    document.getElementById("text").appendChild(fragment);
    colourSpans(from, to);
    return to;
  }

  function layoutText() {
    return new Promise((resolve) => {
      let next = layoutChunk(0);
      const step = () => {
        if (next >= app.chars.length) { resolve(); return; }
        next = layoutChunk(next);
        requestAnimationFrame(step);
      };
      requestAnimationFrame(step);
    });
  }

  // -- choosing a unit ----------------------------------------------------------------------------
  function selectUnit(unit) {
    if (!available(unit.state)) {
      showUnitLabel(unit, `this page holds only the stored states: ${app.data.note || ""}`);
      return;
    }
    const started = performance.now();
    app.unit = unit;
    app.values = unitValues(unit);
    app.scale = scaleFor(unit.state, app.values);
    colourSpans(0, app.spans.length);
    showUnitLabel(unit, null);
    showLegend();
    markRankingRow();
    drawSaturation();
    colourLive();
    app.timings.recolour = performance.now() - started;
  }

  function scoreOf(unit) {
    const ranking = currentRanking();
    if (!ranking) return null;
    const key = keyOf(unit);
    const index = ranking.index || (ranking.index = rankIndex(ranking));
    const at = index.get(key);
    return at === undefined ? null : { rank: at + 1, score: ranking.scores[at] };
  }

  function keyOf(unit) {
    const states = app.data.states.map((s) => s.name);
    return (unit.layer * states.length + states.indexOf(unit.state)) * app.data.model.hidden + unit.unit;
  }

  function rankIndex(ranking) {
    const index = new Map();
    ranking.keys.forEach((key, i) => index.set(key, i));
    return index;
  }

  function showUnitLabel(unit, problem) {
    const label = document.getElementById("unit-label");
    label.textContent = "";
    const name = document.createElement("strong");
    name.textContent = `layer ${unit.layer} · ${unit.state} · unit ${unit.unit}`;
    label.appendChild(name);
    const score = scoreOf(unit);
    if (score) label.append(` score ${formatValue(score.score)} with ${app.feature} (rank ${score.rank})`);
    if (problem) {
      const warning = document.createElement("span");
      warning.className = "error";
      warning.textContent = ` ${problem}`;
      label.appendChild(warning);
    }
  }

  function showLegend() {
    const { centre, half } = app.scale;
    document.getElementById("legend-low").textContent = formatValue(centre - half);
    document.getElementById("legend-high").textContent = `${formatValue(centre + half)}  (white ${centre})`;
  }

  function parseUnit(text) {
    const parts = text.trim().split(/[\s/,·]+/).filter(Boolean);
    const { layers, hidden } = app.data.model;
    const names = app.data.states.map((s) => s.name);
    let layer = layers - 1;
    let state = names[0]; // h, or for a backward model h<
    let unit;
    if (parts.length === 3) [layer, state, unit] = [Number(parts[0]), parts[1], Number(parts[2])];
    else if (parts.length === 2) [state, unit] = [parts[0], Number(parts[1])];
    else if (parts.length === 1) unit = Number(parts[0]);
    else throw new Error("write layer/state/unit, e.g. 0/h/12");
    if (!Number.isInteger(layer) || layer < 0 || layer >= layers) throw new Error(`layers are 0-${layers - 1}`);
    if (!names.includes(state)) throw new Error(`states are ${names.join(", ")}`);
    if (!Number.isInteger(unit) || unit < 0 || unit >= hidden) throw new Error(`units are 0-${hidden - 1}`);
    return { layer, state, unit };
  }

  function onJump(event) {
    event.preventDefault();
    const error = document.getElementById("jump-error");
    error.textContent = "";
    try {
      selectUnit(parseUnit(document.getElementById("jump-box").value));
    } catch (e) {
      error.textContent = e.message;
    }
  }

  // -- the unit list ------------------------------------------------------------------------------
  function currentRanking() {
    return app.rankings.find((r) => r.name === app.feature) || null;
  }

  function fillFeatures() {
    const select = document.getElementById("feature");
    for (const ranking of app.rankings) {
      const option = document.createElement("option");
      option.value = ranking.name;
      option.textContent = ranking.name;
      select.appendChild(option);
    }
    if (!app.rankings.length) {
      const option = document.createElement("option");
      option.textContent = "no feature varies over this text";
      select.appendChild(option);
      select.disabled = true;
    }
    select.value = app.feature || "";
    select.addEventListener("change", () => {
      app.feature = select.value;
      fillRanking(FIRST_ROWS);
      if (app.unit) showUnitLabel(app.unit, null);
    });
  }

  function fillRanking(rows) {
    const body = document.querySelector("#ranking tbody");
    body.textContent = "";
    const ranking = currentRanking();
    const help = document.getElementById("ranking-help");
    const total = ranking ? ranking.keys.length : 0;
    help.textContent = ranking
      ? `every unit-state ranked by |Pearson r| with ${ranking.name} over ${app.chars.length.toLocaleString()} characters (the same ranking as inspect-neurons --find)`
      : "no feature varies over this text: pick a unit with the box above";
    const shown = Math.min(rows, total);
    const fragment = document.createDocumentFragment();
    for (let i = 0; i < shown; i++) fragment.appendChild(rankingRow(i + 1, unitOfKey(ranking.keys[i]), ranking.scores[i]));
    body.appendChild(fragment);
    const more = document.getElementById("more-units");
    more.hidden = shown >= total;
    more.textContent = `show all ${total.toLocaleString()}`;
    markRankingRow();
  }

  function rankingRow(rank, unit, score) {
    const row = document.createElement("tr");
    row.unit = unit;
    row.className = available(unit.state) ? "pick" : "pick unavailable";
    const cells = [String(rank), unitName(unit), formatValue(score)];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    const barCell = document.createElement("td");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(Math.abs(score) * 60)}px`;
    bar.style.backgroundColor = colourOf(score, { centre: 0, half: 1 });
    barCell.appendChild(bar);
    row.appendChild(barCell);
    return row;
  }

  function markRankingRow() {
    for (const row of document.querySelectorAll("tr.pick")) {
      row.classList.toggle("chosen", Boolean(app.unit) && unitName(row.unit) === unitName(app.unit));
    }
  }

  function onTableClick(event) {
    const row = event.target.closest("tr.pick");
    if (row) selectUnit(row.unit);
  }

  // -- hovering a character -----------------------------------------------------------------------
  function unitStats() {
    if (app.stats) return app.stats;
    const n = app.tokens.length;
    app.stats = {};
    for (const [key, slot] of Object.entries(app.stored)) {
      const hidden = slot.scale.length;
      const mean = new Float32Array(hidden);
      const spread = new Float32Array(hidden);
      for (let u = 0; u < hidden; u++) {
        let sum = 0;
        let squares = 0;
        for (let t = 0, k = u * n; t < n; t++, k++) { sum += slot.q[k]; squares += slot.q[k] * slot.q[k]; }
        const m = sum / n;
        mean[u] = m * slot.scale[u];
        spread[u] = Math.sqrt(Math.max(squares / n - m * m, 0)) * slot.scale[u];
      }
      app.stats[key] = { mean, spread };
    }
    return app.stats;
  }

  /** The stored units farthest from their own mean at token t, in standard deviations. */
  function mostActive(t, count) {
    const stats = unitStats();
    const n = app.tokens.length;
    const found = [];
    for (const [key, slot] of Object.entries(app.stored)) {
      const [layer, state] = key.split("/");
      const { mean, spread } = stats[key];
      for (let u = 0; u < slot.scale.length; u++) {
        if (!(spread[u] > 0)) continue;
        const value = slot.q[u * n + t] * slot.scale[u];
        found.push({ unit: { layer: Number(layer), state, unit: u }, value, z: (value - mean[u]) / spread[u] });
      }
    }
    found.sort((a, b) => Math.abs(b.z) - Math.abs(a.z));
    return found.slice(0, count);
  }

  function guessText(id) {
    if (id < 0) return "(unseen)";
    const piece = app.data.pieces[id];
    return Array.from(piece).map((ch) => GUESS_GLYPHS[ch] || glyph(ch)).join("") || "(byte)";
  }

  function onHover(event) {
    const i = event.target.charIndex;
    if (i === undefined || app.tokens === null) return;
    const t = app.charToken[i];
    const box = document.getElementById("hover");
    box.textContent = "";
    const head = document.createElement("div");
    const shown = document.createElement("code");
    shown.textContent = glyphLabel(app.chars[i]);
    head.append(shown, ` character ${(i + 1).toLocaleString()} · `);
    const bits = app.surprisal[i];
    const backward = app.data.model.direction === "backward";
    head.append(bits === 65535 ? `surprisal: nothing ${backward ? "after" : "before"} it`
      : `surprisal ${(bits / 100).toFixed(2)} bits`);
    if (app.unit && app.values) head.append(` · ${unitName(app.unit)} = ${formatValue(app.values[t])}`);
    box.appendChild(head);
    const guesses = document.createElement("div");
    guesses.append(backward ? "previous (the model reads right to left): " : "next: ");
    for (let k = 0; k < 5; k++) {
      const chip = document.createElement("span");
      chip.className = "guess";
      const p = app.guessProbs[t * 5 + k] / 255;
      chip.style.backgroundColor = `rgba(26,152,80,${(0.15 + 0.85 * p).toFixed(2)})`;
      chip.textContent = `${guessText(app.guessIds[t * 5 + k])} ${(100 * p).toFixed(0)}%`;
      guesses.appendChild(chip);
    }
    box.appendChild(guesses);
    const active = document.createElement("div");
    active.append("most active: ");
    for (const entry of mostActive(t, 6)) {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "chip";
      chip.unit = entry.unit;
      chip.textContent = `${unitName(entry.unit)} ${formatValue(entry.value)} (${entry.z >= 0 ? "+" : ""}${entry.z.toFixed(1)}σ)`;
      active.appendChild(chip);
    }
    box.appendChild(active);
  }

  function glyphLabel(ch) {
    return GUESS_GLYPHS[ch] || glyph(ch);
  }

  function onHoverClick(event) {
    const chip = event.target.closest("button.chip");
    if (chip && chip.unit) selectUnit(chip.unit);
  }

  // -- select and match (LSTMVis) -----------------------------------------------------------------
  function spanIndex(node) {
    let element = node.nodeType === Node.TEXT_NODE ? node.parentNode : node;
    while (element && element.charIndex === undefined && element.id !== "text") element = element.parentNode;
    return element && element.charIndex !== undefined ? element.charIndex : null;
  }

  function onMouseUp() {
    const selection = window.getSelection();
    if (!selection || selection.isCollapsed || !selection.rangeCount) return;
    const range = selection.getRangeAt(0);
    let from = spanIndex(range.startContainer);
    let to = spanIndex(range.endContainer);
    if (from === null || to === null) return;
    if (range.endOffset === 0 && to > from && range.endContainer.nodeType === Node.TEXT_NODE) to -= 1;
    if (from > to) [from, to] = [to, from];
    selectText(from, to);
  }

  /** Characters from..to (inclusive) as the hypothesis: rank units on inside, off just around. */
  function selectText(from, to) {
    const started = performance.now();
    app.selection = { from, to, tokenFrom: app.charToken[from], tokenTo: app.charToken[to] };
    for (const span of document.querySelectorAll("#text .selected")) span.classList.remove("selected");
    for (let i = from; i <= to; i++) app.spans[i].classList.add("selected");
    showTab("select");
    rankSelection();
    app.timings.selection = performance.now() - started;
  }

  function threshold() {
    return Number(document.getElementById("threshold").value);
  }

  /** Each candidate's values over the window, on one scale where "on" means above the threshold:
   * stored h as a share of the unit's largest value, an LSTM cell state through tanh (as h sees it). */
  function candidates(from, to) {
    const list = [];
    const n = app.tokens.length;
    for (const [key, slot] of Object.entries(app.stored)) {
      const [layer, state] = key.split("/");
      for (let u = 0; u < slot.scale.length; u++) {
        const window = new Float32Array(to - from);
        for (let t = from; t < to; t++) window[t - from] = slot.q[u * n + t] / 127;
        list.push({ unit: { layer: Number(layer), state, unit: u }, window });
      }
    }
    if (app.model && app.snapshots && stateInfo("c") && stateInfo("c").source === "lstm-cell") {
      const hidden = app.data.model.hidden;
      const units = Array.from({ length: hidden }, (_, u) => u);
      for (let layer = 0; layer < app.data.model.layers; layer++) {
        cellValues(layer, units, from, to).forEach((values, u) => {
          list.push({ unit: { layer, state: "c", unit: u }, window: values.map(Math.tanh) });
        });
      }
    }
    return list;
  }

  function rankSelection() {
    const sel = app.selection;
    if (!sel) return;
    const n = app.tokens.length;
    const from = Math.max(0, sel.tokenFrom - FLANK);
    const to = Math.min(n, sel.tokenTo + 1 + FLANK);
    const inside = sel.tokenTo - sel.tokenFrom + 1;
    const around = to - from - inside;
    const level = threshold();
    const scored = [];
    for (const candidate of candidates(from, to)) {
      for (const sign of [1, -1]) {
        let on = 0;
        let offAround = 0;
        for (let t = from; t < to; t++) {
          const active = sign * candidate.window[t - from] > level;
          if (t >= sel.tokenFrom && t <= sel.tokenTo) on += active;
          else offAround += active;
        }
        const score = on / inside - (around ? offAround / around : 0);
        if (score > 0) scored.push({ unit: candidate.unit, sign, on: on / inside, around: around ? offAround / around : 0, score });
      }
    }
    scored.sort((a, b) => b.score - a.score || b.on - a.on);
    showSelectionUnits(scored.slice(0, 8), inside);
    const size = Number(document.getElementById("pattern-size").value) || 3;
    findMatches(scored.slice(0, Math.max(1, Math.min(size, 20))));
  }

  function showSelectionUnits(best, inside) {
    const info = document.getElementById("selection-info");
    const sel = app.selection;
    info.textContent = `selected characters ${(sel.from + 1).toLocaleString()}-${(sel.to + 1).toLocaleString()} ` +
      `(${inside} token${inside === 1 ? "" : "s"}); ${best.length ? "units on inside, off around:" : "no unit is on inside and off around at this threshold"}`;
    const body = document.querySelector("#selection-units tbody");
    body.textContent = "";
    document.querySelector("#selection-units thead").hidden = !best.length;
    for (const entry of best) {
      const row = document.createElement("tr");
      row.className = "pick";
      row.unit = entry.unit;
      for (const text of [unitName(entry.unit), entry.sign < 0 ? "low" : "high",
        `${(100 * entry.on).toFixed(0)}%`, `${(100 * entry.around).toFixed(0)}%`]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.appendChild(cell);
      }
      body.appendChild(row);
    }
  }

  /** Runs of tokens where every unit of the pattern is on, best first: length nearest the selection's,
   * then the strongest weakest unit. */
  function findMatches(pattern) {
    const list = document.getElementById("matches");
    list.textContent = "";
    document.getElementById("matches-title").hidden = !pattern.length;
    if (!pattern.length) return;
    const n = app.tokens.length;
    const level = threshold();
    const weakest = new Float32Array(n).fill(Infinity);
    for (const entry of pattern) {
      const values = unitValues(entry.unit);
      const peak = entry.unit.state === "c" ? null : app.stored[`${entry.unit.layer}/${entry.unit.state}`].scale[entry.unit.unit] * 127;
      for (let t = 0; t < n; t++) {
        const shown = peak === null ? Math.tanh(values[t]) : values[t] / peak;
        weakest[t] = Math.min(weakest[t], entry.sign * shown);
      }
    }
    const sel = app.selection;
    const wanted = sel.tokenTo - sel.tokenFrom + 1;
    const runs = [];
    for (let t = 0; t < n; t++) {
      if (!(weakest[t] > level)) continue;
      let end = t;
      let strength = 0;
      while (end < n && weakest[end] > level) { strength += weakest[end]; end++; }
      if (end <= sel.tokenFrom || t > sel.tokenTo) runs.push({ from: t, to: end - 1, strength: strength / (end - t) });
      t = end;
    }
    runs.sort((a, b) => Math.abs(a.to - a.from + 1 - wanted) - Math.abs(b.to - b.from + 1 - wanted) || b.strength - a.strength);
    document.getElementById("matches-title").textContent =
      `${runs.length.toLocaleString()} other place${runs.length === 1 ? "" : "s"} where ${pattern.map(patternName).join(", ")} are on together` +
      (runs.length > MATCHES ? ` (the ${MATCHES} nearest in length)` : "");
    for (const run of runs.slice(0, MATCHES)) list.appendChild(matchItem(run));
  }

  function patternName(entry) {
    return `${unitName(entry.unit)} ${entry.sign < 0 ? "low" : "high"}`;
  }

  function snippetText(chars) {
    return chars.map((ch) => (ch === "\n" ? "↵" : ch === "\t" ? "→" : glyph(ch))).join("");
  }

  function charRange(run) {
    let first = app.tokenFirstChar[run.from];
    let t = run.from;
    while (first < 0 && t <= run.to) first = app.tokenFirstChar[++t];
    let last = first;
    while (last + 1 < app.chars.length && app.charToken[last + 1] <= run.to) last++;
    return { first: Math.max(first, 0), last };
  }

  function matchItem(run) {
    const item = document.createElement("li");
    const { first, last } = charRange(run);
    item.range = { first, last };
    const before = snippetText(app.chars.slice(Math.max(0, first - 20), first));
    const inside = snippetText(app.chars.slice(first, last + 1));
    const after = snippetText(app.chars.slice(last + 1, last + 21));
    const where = document.createElement("span");
    where.className = "dim";
    where.textContent = `#${(first + 1).toLocaleString()} `;
    const hit = document.createElement("mark");
    hit.textContent = inside;
    item.append(where, before, hit, after);
    return item;
  }

  function onMatchClick(event) {
    const item = event.target.closest("li");
    if (!item || !item.range) return;
    for (const span of app.matchSpans) span.classList.remove("match");
    app.matchSpans = app.spans.slice(item.range.first, item.range.last + 1);
    for (const span of app.matchSpans) span.classList.add("match");
    app.spans[item.range.first].scrollIntoView({ block: "center" });
  }

  // -- gate saturation ----------------------------------------------------------------------------
  const PLOT = 150;
  const MARGIN = 24;

  function buildSaturation() {
    const box = document.getElementById("saturation");
    const help = document.getElementById("saturation-help");
    if (!app.saturation.length) {
      help.textContent = "a vanilla RNN has no gates";
      return;
    }
    help.textContent = `each point a unit: how often its gate is left-saturated (below ${app.data.saturation.left_below}) ` +
      `and right-saturated (above ${app.data.saturation.right_above}) over the text, as in Karpathy, Johnson & Fei-Fei (2015), Figure 3. Hover names a unit; click shows it.`;
    for (const gate of app.saturation) {
      const figure = document.createElement("figure");
      const canvas = document.createElement("canvas");
      const ratio = window.devicePixelRatio || 1;
      canvas.width = (PLOT + MARGIN) * ratio;
      canvas.height = (PLOT + MARGIN) * ratio;
      canvas.style.width = `${PLOT + MARGIN}px`;
      canvas.style.height = `${PLOT + MARGIN}px`;
      canvas.gate = gate;
      const caption = document.createElement("figcaption");
      caption.textContent = `layer ${gate.layer} · ${gate.gate}`;
      figure.append(caption, canvas);
      box.appendChild(figure);
      gate.canvas = canvas;
    }
    box.addEventListener("mousemove", onSaturationHover);
    box.addEventListener("mouseleave", () => { document.getElementById("saturation-tip").hidden = true; });
    box.addEventListener("click", onSaturationClick);
    drawSaturation();
  }

  function pointOf(gate, u) {
    return [MARGIN + gate.left[u] * PLOT, PLOT - gate.right[u] * PLOT + 4];
  }

  function drawSaturation() {
    for (const gate of app.saturation || []) {
      if (!gate.canvas) continue;
      const context = gate.canvas.getContext("2d");
      const ratio = window.devicePixelRatio || 1;
      context.setTransform(ratio, 0, 0, ratio, 0, 0);
      context.clearRect(0, 0, PLOT + MARGIN, PLOT + MARGIN);
      context.strokeStyle = "#999";
      context.lineWidth = 1;
      context.strokeRect(MARGIN, 4, PLOT, PLOT);
      context.beginPath(); // no unit can be past the diagonal: left + right <= 1
      context.moveTo(MARGIN, 4);
      context.lineTo(MARGIN + PLOT, PLOT + 4);
      context.setLineDash([3, 3]);
      context.stroke();
      context.setLineDash([]);
      context.fillStyle = "#555";
      context.font = "10px sans-serif";
      context.fillText("0", MARGIN - 8, PLOT + 6);
      context.fillText("1", MARGIN - 8, 12);
      context.fillText("left-saturated →", MARGIN + 40, PLOT + 18);
      context.save();
      context.translate(10, PLOT - 20);
      context.rotate(-Math.PI / 2);
      context.fillText("right-saturated →", 0, 0);
      context.restore();
      context.fillStyle = "rgba(178,24,43,0.45)";
      for (let u = 0; u < gate.left.length; u++) {
        const [x, y] = pointOf(gate, u);
        context.beginPath();
        context.arc(x, y, 2.5, 0, 2 * Math.PI);
        context.fill();
      }
      const chosen = app.unit;
      if (chosen && chosen.layer === gate.layer && chosen.state === gate.gate) {
        const [x, y] = pointOf(gate, chosen.unit);
        context.strokeStyle = "#000";
        context.lineWidth = 2;
        context.beginPath();
        context.arc(x, y, 6, 0, 2 * Math.PI);
        context.stroke();
      }
    }
  }

  function nearestPoint(event) {
    const canvas = event.target;
    if (!canvas.gate) return null;
    const box = canvas.getBoundingClientRect();
    const x = event.clientX - box.left;
    const y = event.clientY - box.top;
    let best = null;
    let bestDistance = 36; // within 6 px
    for (let u = 0; u < canvas.gate.left.length; u++) {
      const [px, py] = pointOf(canvas.gate, u);
      const distance = (px - x) ** 2 + (py - y) ** 2;
      if (distance < bestDistance) { best = u; bestDistance = distance; }
    }
    return best === null ? null : { gate: canvas.gate, unit: best };
  }

  function onSaturationHover(event) {
    const tip = document.getElementById("saturation-tip");
    const found = nearestPoint(event);
    if (!found) { tip.hidden = true; return; }
    const { gate, unit } = found;
    tip.hidden = false;
    tip.textContent = `${gate.layer}/${gate.gate}/${unit}: left ${gate.left[unit].toFixed(3)}, right ${gate.right[unit].toFixed(3)}`;
    tip.style.left = `${event.clientX + 12}px`;
    tip.style.top = `${event.clientY + 12}px`;
  }

  function onSaturationClick(event) {
    const found = nearestPoint(event);
    if (found) selectUnit({ layer: found.gate.layer, state: found.gate.gate, unit: found.unit });
  }

  // -- live ---------------------------------------------------------------------------------------
  const live = { chars: [], ids: [], steps: [], spans: [], help: "" }; // help: page.html's own line

  /** Run the model over the typed text, again only from the first token that changed. */
  function runLive() {
    const model = app.model;
    const text = document.getElementById("live-input").value;
    const encoded = model.encode(text);
    let same = 0;
    while (same < encoded.ids.length && same < live.ids.length && encoded.ids[same] === live.ids[same]) same++;
    live.steps.length = same;
    let state = same ? live.steps[same - 1].state : model.initialState();
    for (let t = same; t < encoded.ids.length; t++) {
      const stepped = model.step(encoded.ids[t], state);
      state = stepped.state;
      live.steps.push(stepped);
    }
    live.ids = Array.from(encoded.ids);
    live.chars = encoded.chars;
    live.charToken = encoded.charToken;
    layoutLive();
  }

  function layoutLive() {
    const view = document.getElementById("live-view");
    view.textContent = "";
    live.spans = live.chars.map((ch) => {
      const span = document.createElement("span");
      span.textContent = glyph(ch);
      if (ch === "\n") span.className = "nl";
      return span;
    });
    view.append(...live.spans);
    colourLive();
  }

  function colourLive() {
    if (!app.model || !app.unit || !live.spans.length) return;
    const { layer, state, unit } = app.unit;
    const help = document.getElementById("live-help");
    if (!app.model.stateNames.includes(state)) { // a backward unit: the page runs the forward model only
      help.textContent = `${unitName(app.unit)} belongs to the backward model, which the page does not run: ` +
        "select a forward unit to colour what you type";
      for (const span of live.spans) { span.style.backgroundColor = ""; span.title = ""; }
      return;
    }
    help.textContent = live.help;
    live.spans.forEach((span, i) => {
      const value = live.steps[live.charToken[i]].layers[layer][state][unit];
      span.style.backgroundColor = colourOf(value, app.scale);
      span.title = `${unitName(app.unit)} = ${formatValue(value)}`;
    });
  }

  function onContinue() {
    const model = app.model;
    const input = document.getElementById("live-input");
    if (!live.steps.length && input.value) runLive();
    const state = live.steps.length ? live.steps[live.steps.length - 1].state : model.initialState();
    const temperature = Number(document.getElementById("temperature").value);
    const result = model.continueText(state, 200, temperature);
    input.value += result.text;
    runLive();
  }

  function setUpLive() {
    live.help = document.getElementById("live-help").textContent;
    const section = document.getElementById("live");
    if (!app.model) {
      document.getElementById("live-help").textContent =
        `no live mode in this page: ${app.data.note || "the model is not embedded"}`;
      for (const element of section.querySelectorAll("textarea, button, input")) element.disabled = true;
      return;
    }
    let pending = false;
    document.getElementById("live-input").addEventListener("input", () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; runLive(); });
    });
    document.getElementById("continue").addEventListener("click", onContinue);
    const temperature = document.getElementById("temperature");
    temperature.addEventListener("input", () => {
      document.getElementById("temperature-value").textContent = temperature.value;
    });
  }

  // -- tabs and start -----------------------------------------------------------------------------
  function showTab(name) {
    for (const button of document.querySelectorAll(".tabs button")) button.classList.toggle("active", button.dataset.tab === name);
    for (const panel of document.querySelectorAll("[data-panel]")) panel.hidden = panel.dataset.panel !== name;
  }

  function describeModel() {
    const { model, checkpoint } = app.data;
    document.getElementById("model-line").textContent =
      `${checkpoint} · ${model.cell.toUpperCase()} ${model.layers}x${model.hidden} · ${model.tokenizer} tokenizer · ` +
      (model.direction === "both" ? "forward and backward (biLM; backward units end in <) · "
        : model.direction === "backward" ? "reads right to left (units end in <) · " : "") +
      `${app.chars.length.toLocaleString()} characters · ${app.model ? "live model embedded" : "no live model"}`;
    if (app.data.note) {
      const note = document.getElementById("note");
      note.hidden = false;
      note.textContent = `Note: ${app.data.note}.`;
    }
  }

  function wireEvents() {
    const text = document.getElementById("text");
    text.addEventListener("mouseover", onHover);
    text.addEventListener("mouseup", onMouseUp);
    document.getElementById("hover").addEventListener("click", onHoverClick);
    document.getElementById("ranking").addEventListener("click", onTableClick);
    document.getElementById("selection-units").addEventListener("click", onTableClick);
    document.getElementById("matches").addEventListener("click", onMatchClick);
    document.getElementById("jump").addEventListener("submit", onJump);
    document.getElementById("more-units").addEventListener("click", () => fillRanking(Infinity));
    for (const button of document.querySelectorAll(".tabs button")) button.addEventListener("click", () => showTab(button.dataset.tab));
    const slider = document.getElementById("threshold");
    slider.addEventListener("input", () => {
      document.getElementById("threshold-value").textContent = Number(slider.value).toFixed(2);
      rankSelection();
    });
    document.getElementById("pattern-size").addEventListener("change", rankSelection);
  }

  async function start() {
    const started = performance.now();
    app.data = JSON.parse(document.getElementById("charlm-data").textContent);
    app.chars = Array.from(app.data.text);
    buildPalette();
    describeModel();
    await loadArrays(app.data);
    if (app.data.model_payload) app.model = CharlmModel.load(app.data.model_payload);
    describeModel();
    app.feature = app.data.start.feature;
    const [layer, state, unit] = app.data.start.unit;
    app.unit = available(state) ? { layer, state, unit } : { layer, state: app.data.stored[0].state, unit };
    app.values = unitValues(app.unit);
    app.scale = scaleFor(app.unit.state, app.values);
    showUnitLabel(app.unit, null);
    showLegend();
    fillFeatures();
    fillRanking(FIRST_ROWS);
    wireEvents();
    await layoutText();
    buildSaturation();
    setUpLive();
    app.timings.interactive = performance.now(); // since the page began to load
    app.timings.startup = performance.now() - started; // since its script began
    app.ready = true;
    document.body.dataset.ready = "true";
  }

  return { app, start, selectUnit, selectText, parseUnit, unitValues };
})();

document.addEventListener("DOMContentLoaded", () => {
  CharlmExplorer.start().catch((error) => {
    const note = document.getElementById("note");
    note.hidden = false;
    note.textContent = `The page could not start: ${error.message}`;
    throw error;
  });
});
