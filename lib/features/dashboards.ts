/**
 * Feature dashboards: one streaming pass over a corpus for every feature of every layer of a
 * replacement model (per-layer transcoders or a cross-layer transcoder), then a card per feature in
 * circuit-tracer's feature JSON schema (peers.md 1.6): top-activating contexts and quantile buckets
 * with the activation of every token, the activation histogram, firing frequency, extremes, top and
 * bottom logits (decoder . unembedding) and, for the first layer, the de-embedding (the tokens whose
 * embeddings the encoder reads most).
 *
 * A context is one row of a token file (lib/data/token-file.ts). The pass keeps per feature only its
 * statistics (feature-stats.ts): memory is features x examples x context, not the corpus. It
 * checkpoints its state every `checkpointEveryRows` rows into `checkpointDir` and resumes from there.
 * The cards are written by feature-files.ts.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ReplacementModel } from '../circuits/replacement-model.js';
import { topkConnections } from '../circuits/connections.js';
import { readTokenFileHeader, readTokenRows, type TokenFileHeader } from '../data/token-file.js';
import { InvalidArgumentError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import { Tensor } from '../tensor.js';
import { stackLayers } from '../transcoders/cross-layer.js';
import { cantorPairing } from '../graphs/graph-json.js';
import { FEATURE_RUN_FILE, LayerBinWriter, writeFeatureIndex, writeFeatureJson, type FeatureCardJson, type FeatureExample, type FeatureIndexEntry } from './feature-files.js';

export type { FeatureCardJson, FeatureExample } from './feature-files.js';
import { FeatureStats, type FeatureStatsArrays } from './feature-stats.js';

export interface FeaturePassOptions {
  /** Layers to describe (default: every layer the replacement model replaces). */
  layers?: number[];
  /** Stop after this many tokens (whole rows; default: the whole file). */
  maxTokens?: number;
  /** Top-activating contexts per feature, and examples per quantile bucket (default 10). */
  examples?: number;
  /** Quantile buckets below the top (default 4). */
  quantiles?: number;
  /** Histogram bins (a power of two, default 64). */
  bins?: number;
  /** Rows per model forward (default 8). */
  batchRows?: number;
  seed?: number;
  /** Where the pass saves its state; with `resume`, it continues from the state there. */
  checkpointDir?: string;
  /** Rows between checkpoints (default: by time, see checkpointEverySeconds). */
  checkpointEveryRows?: number;
  /** Seconds between checkpoints when checkpointEveryRows is not given (default 600: the state is gigabytes at GPT-2 scale). */
  checkpointEverySeconds?: number;
  resume?: boolean;
  onProgress?: (rowsDone: number, rowsTotal: number) => void;
  signal?: AbortSignal;
  /** Use the device-agnostic ATen path on the CPU too (tests compare it with the fused CPU loops). */
  portable?: boolean;
}

/** What the pass gathered: per layer the statistics, and the data they cover. */
export interface FeaturePass {
  tokenFile: string;
  layers: number[];
  rows: number;
  context: number;
  stats: Map<number, FeatureStats>;
  options: Required<Pick<FeaturePassOptions, 'examples' | 'quantiles' | 'bins' | 'seed'>>;
}

const STATE_FILE = 'pass.json';
const layerStateFile = (layer: number) => `layer_${layer}.safetensors`;

function positive(v: number | undefined, fallback: number, name: string): number {
  const x = v ?? fallback;
  if (!Number.isSafeInteger(x) || x < 1) throw new InvalidArgumentError(`${name} must be a positive integer, got ${String(v)}`);
  return x;
}

/**
 * The streaming pass: every row of `tokenFile` (up to `maxTokens`) through the model once, every
 * layer's features computed from that forward and folded into their statistics.
 */
export async function collectFeatureStats(replacement: ReplacementModel, tokenFile: string, options: FeaturePassOptions = {}): Promise<FeaturePass> {
  const header = readTokenFileHeader(tokenFile);
  const T = header.contextSize;
  const layers = options.layers ?? replacement.layers;
  for (const l of layers) if (!replacement.layers.includes(l)) throw new InvalidArgumentError(`layer ${l} has no transcoder in this replacement model (it replaces layers ${replacement.layers.join(', ')})`);
  if (layers.length === 0) throw new InvalidArgumentError('no layers to describe');
  const examples = positive(options.examples, 10, 'examples');
  const quantiles = positive(options.quantiles, 4, 'quantiles');
  const bins = positive(options.bins, 64, 'bins');
  const batchRows = positive(options.batchRows, 8, 'batchRows');
  const seed = options.seed ?? 0;
  const maxRows = options.maxTokens === undefined ? header.rows : Math.min(header.rows, Math.floor(positive(options.maxTokens, 1, 'maxTokens') / T));
  if (maxRows < 1) throw new InvalidArgumentError(`maxTokens ${options.maxTokens} is less than one row of ${T} tokens`);
  // Enough uniform samples that each quantile bucket can show `examples` of them once the (at most
  // `examples`) top rows among them are left out.
  const samples = (quantiles + 1) * examples;
  const everyRows = options.checkpointEveryRows === undefined ? Infinity : positive(options.checkpointEveryRows, 1, 'checkpointEveryRows');
  const everyMs = 1000 * (options.checkpointEverySeconds ?? 600);
  const device = replacement.model.device;
  const statsOptions = (layer: number) => ({ features: replacement.featureCount(layer), context: T, examples, samples, bins, seed, layer, device, portable: options.portable ?? false });
  const recorded = { tokenFile: header.path, rows: maxRows, context: T, layers, examples, quantiles, bins, seed, batchRows };

  let start = 0;
  const stats = new Map<number, FeatureStats>();
  const dir = options.checkpointDir;
  if (dir && options.resume && existsSync(join(dir, STATE_FILE))) {
    const saved = JSON.parse(readFileSync(join(dir, STATE_FILE), 'utf8')) as typeof recorded & { done: number };
    for (const key of Object.keys(recorded) as (keyof typeof recorded)[]) {
      if (JSON.stringify(saved[key]) !== JSON.stringify(recorded[key])) {
        throw new InvalidArgumentError(`resume from ${dir}: ${key} was ${JSON.stringify(saved[key])}, now ${JSON.stringify(recorded[key])}; resume with the same data and options or start a new output folder`);
      }
    }
    for (const l of layers) stats.set(l, FeatureStats.fromTensors(statsOptions(l), (await readSafetensors(join(dir, layerStateFile(l)))).tensors));
    start = saved.done;
  } else {
    for (const l of layers) stats.set(l, FeatureStats.create(statsOptions(l)));
  }
  const save = (done: number) => {
    if (!dir) return;
    mkdirSync(dir, { recursive: true });
    for (const [l, s] of stats) writeSafetensors(join(dir, layerStateFile(l)), s.tensors());
    // Written last: a state file names only complete layer files.
    writeFileAtomic(join(dir, STATE_FILE), [JSON.stringify({ ...recorded, done }, null, 2) + '\n']);
  };

  const cross = replacement.crossLayer;
  const hooks = cross ? [...new Set(cross.config.hookIn)] : [...new Set(layers.map((l) => replacement.placement(l).hookIn))];
  let sinceCheckpoint = 0;
  let lastCheckpoint = performance.now();
  const result = (rows: number): FeaturePass => ({ tokenFile: header.path, layers, rows, context: T, stats, options: { examples, quantiles, bins, seed } });
  options.onProgress?.(start, maxRows);
  for (let row = start; row < maxRows; row += batchRows) {
    if (options.signal?.aborted) break;
    const n = Math.min(batchRows, maxRows - row);
    const flat = await readTokenRows(header, row, n);
    const batch = Array.from({ length: n }, (_, i) => Array.from(flat.subarray(i * T, (i + 1) * T)));
    const { cache } = await replacement.model.run(batch, { cache: hooks, logits: false });
    const ids = Array.from({ length: n }, (_, i) => row + i);
    if (cross) {
      // Every layer's features from one CLT encode of the stacked inputs [n T, L, d].
      const x = await stackLayers(cross.config.hookIn.map((h) => cache[h]!));
      const f = (await cross.encode(x)).toFloat32Array();
      const F = cross.config.dSae;
      const L = cross.config.nLayers;
      for (const l of layers) {
        const part = new Float32Array(n * T * F);
        for (let r = 0; r < n * T; r++) part.set(f.subarray((r * L + l) * F, (r * L + l + 1) * F), r * F);
        const acts = Tensor.from(part, [n, T, F]);
        await stats.get(l)!.update(acts, ids);
        acts.dispose();
      }
      x.dispose();
    } else {
      for (const l of layers) {
        const acts = await replacement.transcoder(l).encode(cache[replacement.placement(l).hookIn]!);
        await stats.get(l)!.update(acts, ids);
        acts.dispose();
      }
    }
    Object.values(cache).forEach((t) => t.dispose());
    sinceCheckpoint += n;
    const done = row + n;
    if ((sinceCheckpoint >= everyRows || performance.now() - lastCheckpoint >= everyMs) && done < maxRows) {
      save(done);
      sinceCheckpoint = 0;
      lastCheckpoint = performance.now();
    }
    options.onProgress?.(done, maxRows);
    if (options.signal?.aborted && done < maxRows) {
      save(done);
      return result(done);
    }
  }
  save(maxRows);
  return result(maxRows);
}

/** Token effects of every feature of a layer: top and bottom k (indices and values, row-major [F, k]). */
export interface LayerTokenEffects {
  k: number;
  topIndex: Float64Array;
  topValue: Float32Array;
  bottomIndex: Float64Array;
  bottomValue: Float32Array;
}

/** -data (a plain loop: Float32Array.from with a map function is ~100x slower on arrays this size). */
function negatedData(data: Float32Array): Float32Array {
  const out = new Float32Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = -data[i]!;
  return out;
}

const negated = (t: Tensor): Tensor => Tensor.from(negatedData(t.toFloat32Array()), t.shape);

async function topAndBottom(source: Tensor, target: Tensor, k: number, direction: 'downstream' | 'upstream'): Promise<LayerTokenEffects> {
  // The bottom k of s . t are the top k of s . (-t): negate the operand that is one per layer, not per token.
  const negTarget = direction === 'downstream' ? negated(target) : target;
  const negSource = direction === 'upstream' ? negated(source) : source;
  const top = await topkConnections(source, target, { k, direction });
  const bottom = await topkConnections(negSource, negTarget, { k, direction });
  const out: LayerTokenEffects = {
    k,
    topIndex: Float64Array.from(top.indices.toTypedArray() as BigInt64Array, Number),
    topValue: top.values.toFloat32Array(),
    bottomIndex: Float64Array.from(bottom.indices.toTypedArray() as BigInt64Array, Number),
    bottomValue: negatedData(bottom.values.toFloat32Array()),
  };
  for (const t of [top.indices, top.values, bottom.indices, bottom.values]) t.dispose();
  return out;
}

/** The decoder rows of a layer's features as one [F, d] tensor (a CLT feature: the sum of its decoders into every later layer). */
function decoderRows(replacement: ReplacementModel, layer: number): Tensor {
  const cross = replacement.crossLayer;
  if (!cross) return replacement.transcoder(layer).parameters().W_dec!;
  const L = cross.config.nLayers;
  const { dSae: F, dOut: d } = cross.config;
  const w = cross.parameters()[`W_dec_${layer}`]!.toFloat32Array(); // [F, L - layer, d]
  const out = new Float32Array(F * d);
  const targets = L - layer;
  for (let j = 0; j < F; j++) for (let t = 0; t < targets; t++) for (let i = 0; i < d; i++) out[j * d + i]! += w[(j * targets + t) * d + i]!;
  return Tensor.from(out, [F, d]);
}

function encoderColumns(replacement: ReplacementModel, layer: number): Tensor {
  const cross = replacement.crossLayer;
  if (!cross) return replacement.transcoder(layer).parameters().W_enc!;
  const { dIn: d, dSae: F } = cross.config;
  const w = cross.parameters().W_enc!.toFloat32Array();
  return Tensor.from(w.subarray(layer * d * F, (layer + 1) * d * F), [d, F]);
}

/** Direct logit effects W_dec[f] . W_U of every feature of `layer` (no final norm), top and bottom `k`. */
export async function layerLogitEffects(replacement: ReplacementModel, layer: number, k: number): Promise<LayerTokenEffects> {
  return topAndBottom(decoderRows(replacement, layer), replacement.model.weight('unembed.W_U'), k, 'downstream');
}

/** De-embeddings W_E . W_enc[:, f] of every feature of `layer`: the tokens whose embeddings it reads most, top and bottom `k`. */
export async function layerDeEmbeddings(replacement: ReplacementModel, layer: number, k: number): Promise<LayerTokenEffects> {
  return topAndBottom(replacement.model.weight('embed.W_E'), encoderColumns(replacement, layer), k, 'upstream');
}

/** Reads the token rows `rows` (sorted, distinct) of a token file: row -> ids. */
export async function readRows(header: TokenFileHeader, rows: readonly number[]): Promise<Map<number, Int32Array>> {
  const out = new Map<number, Int32Array>();
  for (let i = 0; i < rows.length; ) {
    // Runs of adjacent rows in one read.
    let j = i + 1;
    while (j < rows.length && rows[j] === rows[j - 1]! + 1 && j - i < 1024) j++;
    const flat = await readTokenRows(header, rows[i]!, j - i);
    for (let r = i; r < j; r++) out.set(rows[r]!, flat.slice((r - i) * header.contextSize, (r - i + 1) * header.contextSize));
    i = j;
  }
  return out;
}

/** Context: what the card builder needs besides the statistics. */
export interface CardContext {
  layer: number;
  transcoderId: string;
  /** Global feature id as the graph JSON writes it (circuit-tracer: the Cantor pairing of layer and feature). */
  globalId: (layer: number, feature: number) => number;
  decode: (id: number) => string;
  rows: Map<number, Int32Array>;
  logits: LayerTokenEffects;
  deEmbedding?: LayerTokenEffects;
  quantiles: number;
}

/** The card of feature `f` from its layer's statistics. */
export function featureCard(s: FeatureStatsArrays, f: number, c: CardContext): FeatureCardJson {
  const { examples: K, samples: R, context: T, bins } = s;
  const example = (row: number, acts: Float32Array): FeatureExample => {
    const ids = c.rows.get(row)!;
    let best = 0;
    for (let t = 1; t < T; t++) if (acts[t]! > acts[best]!) best = t;
    return { tokens: Array.from(ids, c.decode), tokens_acts_list: Array.from(acts, (v) => Math.fround(v)), train_token_ind: best, is_repeated_datapoint: false };
  };
  const top: { row: number; score: number; acts: Float32Array }[] = [];
  for (let i = 0; i < K; i++) {
    const row = s.topRow[f * K + i]!;
    if (row < 0) break;
    top.push({ row, score: s.topScore[f * K + i]!, acts: s.topActs.subarray((f * K + i) * T, (f * K + i + 1) * T) });
  }
  const inTop = new Set(top.map((e) => e.row));
  // The uniform sample of activating rows, less the top ones, in equal-count buckets by score.
  const sample: { row: number; score: number; acts: Float32Array }[] = [];
  for (let i = 0; i < R; i++) {
    const row = s.sampleRow[f * R + i]!;
    if (row < 0) break;
    if (!inTop.has(row)) sample.push({ row, score: s.sampleScore[f * R + i]!, acts: s.sampleActs.subarray((f * R + i) * T, (f * R + i + 1) * T) });
  }
  // Slots are in random-key order: within a bucket, the first K are a uniform pick.
  const byScore = [...sample].sort((a, b) => b.score - a.score);
  const Q = Math.min(c.quantiles, byScore.length);
  const buckets: { quantile_name: string; examples: FeatureExample[] }[] = [];
  const quantileValues: number[] = [];
  for (let q = 0; q < Q; q++) {
    const lo = Math.floor((q * byScore.length) / Q);
    const hi = Math.floor(((q + 1) * byScore.length) / Q);
    const members = new Set(byScore.slice(lo, hi).map((e) => e.row));
    const picked = sample.filter((e) => members.has(e.row)).slice(0, K).sort((a, b) => b.score - a.score);
    const floor = byScore[hi - 1]!.score;
    quantileValues.push(floor);
    buckets.push({ quantile_name: `Quantile ${q + 1} of ${Q} (max activation ${floor.toPrecision(3)}-${byScore[lo]!.score.toPrecision(3)})`, examples: picked.map((e) => example(e.row, e.acts)) });
  }
  const range = s.count[f]! > 0 ? 2 ** s.histExp[f]! : 0;
  const k = c.logits.k;
  const tokens = (e: LayerTokenEffects, which: 'top' | 'bottom') => Array.from((which === 'top' ? e.topIndex : e.bottomIndex).subarray(f * e.k, (f + 1) * e.k), c.decode);
  const values = (e: LayerTokenEffects, which: 'top' | 'bottom') => Array.from((which === 'top' ? e.topValue : e.bottomValue).subarray(f * e.k, (f + 1) * e.k));
  return {
    index: c.globalId(c.layer, f),
    transcoder_id: c.transcoderId,
    layer: c.layer,
    feature: f,
    examples_quantiles: [{ quantile_name: 'Top activations', examples: top.map((e) => example(e.row, e.acts)) }, ...buckets],
    top_logits: tokens(c.logits, 'top').slice(0, k),
    bottom_logits: tokens(c.logits, 'bottom').slice(0, k),
    top_logit_values: values(c.logits, 'top'),
    bottom_logit_values: values(c.logits, 'bottom'),
    act_min: s.count[f]! > 0 ? s.actMin[f]! : 0,
    act_max: s.actMax[f]!,
    quantile_values: quantileValues,
    histogram: Array.from(s.hist.subarray(f * bins, (f + 1) * bins)),
    histogram_max: range,
    activation_frequency: s.tokens > 0 ? s.count[f]! / s.tokens : 0,
    ...(c.deEmbedding
      ? { de_embedding: { top: tokens(c.deEmbedding, 'top'), top_values: values(c.deEmbedding, 'top'), bottom: tokens(c.deEmbedding, 'bottom'), bottom_values: values(c.deEmbedding, 'bottom') } }
      : {}),
  };
}

export interface FeatureCardOptions {
  /** Viewer id of the transcoders (the graph JSON's `scan`); cards' `transcoder_id` is `{scan}/{layer}`. */
  scan?: string;
  /** Tokens in the top and bottom logit (and de-embedding) lists (default 10). */
  logits?: number;
  /** Also write every card as json/layer_{l}/{f}.json. */
  json?: boolean;
  onProgress?: (layer: number, featuresDone: number, features: number) => void;
}

/** Writes the cards of a pass into `dir` (feature-files.ts layout) and `features.json`; returns the files' index entries by layer. */
export async function writeFeatureCards(replacement: ReplacementModel, pass: FeaturePass, dir: string, options: FeatureCardOptions = {}): Promise<Map<number, FeatureIndexEntry>> {
  const model = replacement.model;
  const k = positive(options.logits, 10, 'logits');
  const scan = options.scan ?? (model.dir.split('/').filter(Boolean).pop() ?? 'model');
  const header = readTokenFileHeader(pass.tokenFile);
  const vocab = new Map<number, string>();
  const decode = (id: number) => {
    let s = vocab.get(id);
    if (s === undefined) {
      // A model whose tokenizer covers fewer ids than its embedding (random test models) shows the rest as <id>.
      try {
        s = model.tokenizer?.decode([id]) ?? `<${id}>`;
      } catch {
        s = `<${id}>`;
      }
      vocab.set(id, s);
    }
    return s;
  };
  const entries = new Map<number, FeatureIndexEntry>();
  for (const layer of pass.layers) {
    const s = await pass.stats.get(layer)!.arrays();
    const used = new Set<number>();
    for (const r of s.topRow) if (r >= 0) used.add(r);
    for (const r of s.sampleRow) if (r >= 0) used.add(r);
    const rows = await readRows(header, [...used].sort((a, b) => a - b));
    const context: CardContext = {
      layer,
      transcoderId: `${scan}/${layer}`,
      globalId: cantorPairing,
      decode,
      rows,
      logits: await layerLogitEffects(replacement, layer, Math.min(k, model.config.vocabSize)),
      ...(layer === 0 ? { deEmbedding: await layerDeEmbeddings(replacement, layer, Math.min(k, model.config.vocabSize)) } : {}),
      quantiles: pass.options.quantiles,
    };
    const writer = new LayerBinWriter(dir, layer);
    for (let f = 0; f < s.features; f++) {
      const card = featureCard(s, f, context);
      writer.append(card);
      if (options.json) writeFeatureJson(dir, card);
      if (f % 1024 === 1023) options.onProgress?.(layer, f + 1, s.features);
    }
    entries.set(layer, writer.close());
    options.onProgress?.(layer, s.features, s.features);
  }
  writeFileAtomic(join(dir, FEATURE_RUN_FILE), [JSON.stringify({
    format: 'transcoders-features', version: 1, scan, model: model.dir, tokenFile: pass.tokenFile, rows: pass.rows, context: pass.context,
    tokens: pass.rows * pass.context, layers: pass.layers, features: pass.layers.map((l) => replacement.featureCount(l)), ...pass.options, logits: k,
  }, null, 2) + '\n']);
  writeFeatureIndex(dir, entries);
  return entries;
}
