/**
 * Feature dashboards: the streaming statistics (native/features/feature_stats.cc) against a
 * brute-force numpy computation over the whole activation array (test/reference/
 * feature_dashboard_reference.py, written without reading our code): counts, extremes, histograms and
 * top examples exactly, logit effects and de-embeddings to 1e-4; the uniform sample's examples are
 * real activating rows with their true scores and activations; a resumed pass equals an uninterrupted
 * one bit for bit; the compact files decode with an independent Python reader; cross-layer
 * transcoders; bad activations are refused.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ReplacementModel } from '../lib/circuits/replacement-model.js';
import { tokenizeToFile } from '../lib/data/tokenize.js';
import { readTokenFileHeader, readTokenRows } from '../lib/data/token-file.js';
import { collectFeatureStats, featureCard, readRows, writeFeatureCards, layerLogitEffects, type FeaturePass } from '../lib/features/dashboards.js';
import { FeatureFiles } from '../lib/features/feature-files.js';
import { FeatureStats } from '../lib/features/feature-stats.js';
import { cantorPairing } from '../lib/graphs/graph-json.js';
import { readSafetensors, writeSafetensors } from '../lib/io/safetensors.js';
import { loadModel, type Model } from '../lib/models/model.js';
import { Tensor } from '../lib/tensor.js';
import { CrossLayerTranscoder, crossLayerHooks, stackLayers } from '../lib/transcoders/cross-layer.js';
import { Transcoder } from '../lib/transcoders/transcoder.js';
import { Rng } from '../lib/util/random.js';
import { DEVICE, makeTempModel, tempDir, TINY_GPT2 } from './helpers/fixtures.js';
import { runPython } from './helpers/reference.js';

const K = 3;
const Q = 2;
const BINS = 16;
const F = 40;

let model: Model;
let tokenFile: string;
let replacement: ReplacementModel;
let N: number;
let T: number;

async function randomTranscoder(layer: number, seed: number): Promise<Transcoder> {
  const rng = new Rng(seed);
  const d = model.config.dModel;
  const vec = (n: number, s: number, shift = 0) => Float32Array.from({ length: n }, () => shift + s * rng.normal());
  return Transcoder.fromParameters(
    { arch: 'relu', dIn: d, dOut: d, dSae: F, layer, hookIn: `blocks.${layer}.ln2.hook_normalized`, hookOut: `blocks.${layer}.hook_mlp_out`, processing: 'none' },
    // A negative bias: most features fire on a few rows only; features 0-2 never.
    { W_enc: Tensor.from(vec(d * F, 0.25), [d, F]), b_enc: Tensor.from(vec(F, 0.3, -1.1).map((v, j) => (j < 3 ? -50 : v)), [F]), W_dec: Tensor.from(vec(F * d, 0.3), [F, d]), b_dec: Tensor.from(vec(d, 0)), b_dec_out: Tensor.from(vec(d, 0.05)) },
    { device: DEVICE },
  );
}

/**
 * Every row's activations of every layer, computed directly (the reference's input), in batches of
 * the pass's size: the same GEMM shapes, so the same float32 values.
 */
async function allActivations(layers: number[], encode: (cache: Record<string, Tensor>) => Promise<Map<number, Float32Array>>, hooks: string[], batchRows: number): Promise<Map<number, Float32Array>> {
  const header = readTokenFileHeader(tokenFile);
  const parts = new Map<number, Float32Array[]>(layers.map((l) => [l, []]));
  for (let start = 0; start < N; start += batchRows) {
    const n = Math.min(batchRows, N - start);
    const flat = await readTokenRows(header, start, n);
    const rows = Array.from({ length: n }, (_, i) => Array.from(flat.subarray(i * T, (i + 1) * T)));
    const { cache } = await model.run(rows, { cache: hooks, logits: false });
    const out = await encode(cache);
    expect([...out.keys()]).toEqual(layers);
    for (const [l, a] of out) parts.get(l)!.push(a);
  }
  return new Map([...parts].map(([l, ps]) => {
    const all = new Float32Array(ps.reduce((x, p) => x + p.length, 0));
    let at = 0;
    for (const p of ps) {
      all.set(p, at);
      at += p.length;
    }
    return [l, all];
  }));
}

async function reference(acts: Map<number, Float32Array>, weights: Record<string, Tensor>, deembedding: number[]): Promise<Record<string, Tensor>> {
  const dir = tempDir('transcoders-features-ref-');
  const tensors: Record<string, Tensor> = { ...weights };
  for (const [l, a] of acts) tensors[`acts_${l}`] = Tensor.from(a, [N, T, a.length / (N * T)]);
  writeSafetensors(join(dir, 'in.safetensors'), tensors);
  writeFileSync(join(dir, 'options.json'), JSON.stringify({ layers: [...acts.keys()], k: K, bins: BINS, logits: 5, deembedding }));
  runPython('feature_dashboard_reference.py', [join(dir, 'in.safetensors'), join(dir, 'options.json'), join(dir, 'out.safetensors')]);
  return (await readSafetensors(join(dir, 'out.safetensors'))).tensors;
}

const num = (t: Tensor) => Array.from(t.toTypedArray() as ArrayLike<number | bigint>, Number);

/** Every statistic of every layer of `pass` against the reference computed from `acts`. */
async function expectMatchesReference(pass: FeaturePass, acts: Map<number, Float32Array>, ref: Record<string, Tensor>): Promise<void> {
  for (const l of pass.layers) {
    const s = await pass.stats.get(l)!.arrays();
    const a = acts.get(l)!;
    const Fl = s.features;
    expect(s.tokens).toBe(N * T);
    expect(Array.from(s.count)).toEqual(num(ref[`count_${l}`]!));
    const [refMax, refMin] = [num(ref[`act_max_${l}`]!), num(ref[`act_min_${l}`]!)];
    for (let f = 0; f < Fl; f++) {
      expect(s.actMax[f]).toBe(Math.fround(refMax[f]!));
      expect(s.count[f]! > 0 ? s.actMin[f] : 0).toBe(Math.fround(refMin[f]!));
    }
    expect(Array.from(s.hist)).toEqual(num(ref[`hist_${l}`]!));
    const range = num(ref[`hist_range_${l}`]!);
    for (let f = 0; f < Fl; f++) expect(s.count[f]! > 0 ? 2 ** s.histExp[f]! : 0).toBe(range[f]);
    const [topRows, topScores] = [num(ref[`top_rows_${l}`]!), num(ref[`top_scores_${l}`]!)];
    const rowScores = num(ref[`row_scores_${l}`]!);
    for (let f = 0; f < Fl; f++) {
      for (let i = 0; i < K; i++) {
        expect(s.topRow[f * K + i], `layer ${l} feature ${f} top ${i}`).toBe(topRows[f * K + i]);
        if (topRows[f * K + i]! >= 0) {
          expect(s.topScore[f * K + i]).toBe(Math.fround(topScores[f * K + i]!));
          // The stored activations of the row are the feature's at every token.
          const row = topRows[f * K + i]!;
          for (let t = 0; t < T; t++) expect(s.topActs[(f * K + i) * T + t]).toBe(a[(row * T + t) * Fl + f]);
        }
      }
      // The sample: distinct activating rows, each with its true score and activations.
      const seen = new Set<number>();
      let activating = 0;
      for (let r = 0; r < N; r++) if (rowScores[r * Fl + f]! > 0) activating++;
      let kept = 0;
      for (let i = 0; i < s.samples; i++) {
        const row = s.sampleRow[f * s.samples + i]!;
        if (row < 0) continue;
        kept++;
        expect(seen.has(row)).toBe(false);
        seen.add(row);
        expect(rowScores[row * Fl + f]).toBeGreaterThan(0);
        expect(s.sampleScore[f * s.samples + i]).toBe(Math.fround(rowScores[row * Fl + f]!));
        for (let t = 0; t < T; t++) expect(s.sampleActs[(f * s.samples + i) * T + t]).toBe(a[(row * T + t) * Fl + f]);
      }
      expect(kept).toBe(Math.min(activating, s.samples));
    }
  }
}

beforeAll(async () => {
  const dir = makeTempModel({ ...TINY_GPT2, nLayers: 2, nCtx: 16 });
  model = await loadModel(dir, { processing: 'none', device: DEVICE });
  const data = tempDir('transcoders-features-');
  const text = Array.from({ length: 120 }, (_, i) => `Item ${i}: the year 17${10 + (i % 80)} came after 16${(i * 7) % 90}. Mary gave John a drink.`);
  writeFileSync(join(data, 'data.txt'), text.join('\n\n'));
  tokenFile = join(data, 'tokens.safetensors');
  await tokenizeToFile([join(data, 'data.txt')], model.tokenizer!, tokenFile, { contextSize: 16 });
  const header = readTokenFileHeader(tokenFile);
  N = header.rows;
  T = header.contextSize;
  replacement = ReplacementModel.create(model, [await randomTranscoder(0, 1), await randomTranscoder(1, 2)]);
});

describe('feature statistics over a corpus (per-layer transcoders)', () => {
  it('counts, extremes, histograms, top examples and the sample equal the brute-force reference; logits and de-embeddings to 1e-4', async () => {
    expect(N).toBeGreaterThan(40);
    const pass = await collectFeatureStats(replacement, tokenFile, { examples: K, quantiles: Q, bins: BINS, batchRows: 5 });
    expect(pass.rows).toBe(N);
    const hooks = [0, 1].map((l) => replacement.placement(l).hookIn);
    const acts = await allActivations([0, 1], async (cache) => {
      const out = new Map<number, Float32Array>();
      for (const l of [0, 1]) out.set(l, (await replacement.transcoder(l).encode(cache[hooks[l]!]!)).toFloat32Array());
      return out;
    }, hooks, 5);
    const params = [0, 1].map((l) => replacement.transcoder(l).parameters());
    const ref = await reference(acts, { W_dec_0: params[0]!.W_dec!, W_dec_1: params[1]!.W_dec!, W_U: model.weight('unembed.W_U'), W_enc_0: params[0]!.W_enc!, W_E: model.weight('embed.W_E') }, [0]);
    await expectMatchesReference(pass, acts, ref);
    // The device-agnostic ATen path (what CUDA runs) gives the same statistics as the fused CPU loops.
    const portable = await collectFeatureStats(replacement, tokenFile, { examples: K, quantiles: Q, bins: BINS, batchRows: 5, portable: true });
    await expectMatchesReference(portable, acts, ref);
    // Some features never fire, some fire on more rows than the top list holds.
    const s0 = await pass.stats.get(0)!.arrays();
    expect(Array.from(s0.count).some((c) => c === 0)).toBe(true);
    expect(Array.from(s0.topRow).filter((r) => r >= 0).length).toBeGreaterThan(K * 5);

    // Logit effects (decoder . W_U) and layer 0's de-embedding (W_E . encoder).
    for (const l of [0, 1]) {
      const e = await layerLogitEffects(replacement, l, 5);
      const [ti, tv, bi, bv] = ['top_idx', 'top_val', 'bottom_idx', 'bottom_val'].map((k) => num(ref[`logit_${k}_${l}`]!)) as [number[], number[], number[], number[]];
      for (let i = 0; i < F * 5; i++) {
        expect(Math.abs(e.topValue[i]! - tv[i]!)).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(tv[i]!)));
        expect(Math.abs(e.bottomValue[i]! - bv[i]!)).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(bv[i]!)));
      }
      // Indices agree wherever the values are not near-ties.
      let same = 0;
      for (let i = 0; i < F * 5; i++) same += Number(e.topIndex[i] === ti[i]) + Number(e.bottomIndex[i] === bi[i]);
      expect(same).toBeGreaterThan(0.95 * 2 * F * 5);
    }

    // Cards: the schema circuit-tracer's viewer reads, from these statistics.
    const header = readTokenFileHeader(tokenFile);
    const used = [...new Set([...s0.topRow, ...s0.sampleRow].filter((r) => r >= 0))].sort((a, b) => a - b);
    const rows = await readRows(header, used);
    const logits = await layerLogitEffects(replacement, 0, 5);
    const f = Array.from(s0.count).findIndex((c, i) => c > 0 && s0.topRow[i * K + K - 1]! >= 0);
    const card = featureCard(s0, f, { layer: 0, transcoderId: 'tiny/0', globalId: cantorPairing, decode: (id) => model.decode([id]), rows, logits, quantiles: Q });
    expect(Object.keys(card)).toEqual(expect.arrayContaining(['index', 'transcoder_id', 'examples_quantiles', 'top_logits', 'bottom_logits', 'act_min', 'act_max', 'quantile_values', 'histogram', 'activation_frequency']));
    expect(card.index).toBe(cantorPairing(0, f));
    expect(card.activation_frequency).toBeCloseTo(num(ref.count_0!)[f]! / (N * T), 12);
    const top = card.examples_quantiles[0]!;
    expect(top.quantile_name).toBe('Top activations');
    expect(top.examples).toHaveLength(K);
    const topArgpos = num(ref.top_argpos_0!);
    top.examples.forEach((ex, i) => {
      const row = num(ref.top_rows_0!)[f * K + i]!;
      expect(ex.tokens).toEqual(Array.from(rows.get(row)!, (id) => model.decode([id])));
      expect(ex.train_token_ind).toBe(topArgpos[f * K + i]);
      expect(ex.tokens_acts_list).toHaveLength(T);
    });
    expect(card.histogram.reduce((x, y) => x + y, 0)).toBe(num(ref.count_0!)[f]);
    expect(card.top_logits).toEqual(Array.from(logits.topIndex.subarray(f * 5, f * 5 + 5), (id) => model.decode([id])));
  });

  it('a pass stopped and resumed equals the uninterrupted one bit for bit', async () => {
    const whole = await collectFeatureStats(replacement, tokenFile, { examples: K, quantiles: Q, bins: BINS, batchRows: 4, seed: 3 });
    const dir = tempDir('transcoders-features-ckpt-');
    const controller = new AbortController();
    const part = await collectFeatureStats(replacement, tokenFile, {
      examples: K, quantiles: Q, bins: BINS, batchRows: 4, seed: 3, checkpointDir: dir, checkpointEveryRows: 8,
      signal: controller.signal, onProgress: (done) => { if (done >= 20) controller.abort(); },
    });
    expect(part.rows).toBeLessThan(N);
    const resumed = await collectFeatureStats(replacement, tokenFile, { examples: K, quantiles: Q, bins: BINS, batchRows: 4, seed: 3, checkpointDir: dir, resume: true });
    expect(resumed.rows).toBe(N);
    for (const l of [0, 1]) {
      const [a, b] = [whole.stats.get(l)!.tensors(), resumed.stats.get(l)!.tensors()];
      for (const name of Object.keys(a)) expect(num(b[name]!), `${name} of layer ${l}`).toEqual(num(a[name]!));
    }
    await expect(collectFeatureStats(replacement, tokenFile, { examples: K + 1, quantiles: Q, bins: BINS, batchRows: 4, seed: 3, checkpointDir: dir, resume: true })).rejects.toThrow(/resume from .*: examples was 3, now 4/);
  });

  it('writes the compact layout circuit-tracer\'s viewer reads; an independent reader decodes every record', async () => {
    const pass = await collectFeatureStats(replacement, tokenFile, { examples: K, quantiles: Q, bins: BINS, batchRows: 8 });
    const dir = tempDir('transcoders-features-out-');
    await writeFeatureCards(replacement, pass, dir, { scan: 'tiny', logits: 5, json: true });
    const files = new FeatureFiles(dir);
    expect(files.layers).toEqual([0, 1]);
    expect(files.features(1)).toBe(F);
    const out = JSON.parse(runPython('read_feature_bin.py', [dir, '1', '7'])) as { card: Record<string, unknown>; records: number };
    expect(out.records).toBe(F);
    expect(out.card).toEqual(files.read(1, 7));
    expect(out.card).toMatchObject({ layer: 1, feature: 7, index: cantorPairing(1, 7), transcoder_id: 'tiny/1' });
    expect(() => files.read(1, F)).toThrow(/feature 40 is out of range \[0, 40\) of layer 1/);
    expect(() => files.read(5, 0)).toThrow(/no feature cards for layer 5/);
  });

  it('refuses NaN, negative or mis-shaped activations with a clear error', async () => {
    const s = FeatureStats.create({ features: 4, context: 3, examples: 2, samples: 2, bins: 4 });
    await expect(s.update(Tensor.from(new Float32Array(2 * 3 * 4).fill(Number.NaN), [2, 3, 4]), [0, 1])).rejects.toThrow(/NaN or infinite/);
    await expect(s.update(Tensor.from(new Float32Array(2 * 3 * 4).fill(-1), [2, 3, 4]), [0, 1])).rejects.toThrow(/must be >= 0/);
    await expect(s.update(Tensor.from(new Float32Array(2 * 3 * 5), [2, 3, 5]), [0, 1])).rejects.toThrow(/must be \[rows, 3, 4\]/);
    expect(() => FeatureStats.create({ features: 4, context: 3, bins: 6 })).toThrow(/power of two/);
  });
});

describe('feature statistics of a cross-layer transcoder', () => {
  it('every layer from one CLT encode per batch, equal to the reference', async () => {
    const rng = new Rng(9);
    const d = model.config.dModel;
    const L = model.config.nLayers;
    const vec = (n: number, s: number, shift = 0) => Float32Array.from({ length: n }, () => shift + s * rng.normal());
    const params: Record<string, Tensor> = { W_enc: Tensor.from(vec(L * d * F, 0.25), [L, d, F]), b_enc: Tensor.from(vec(L * F, 0.3, -1.1), [L, F]), b_dec: Tensor.from(vec(L * d, 0.05), [L, d]) };
    for (let s = 0; s < L; s++) params[`W_dec_${s}`] = Tensor.from(vec(F * (L - s) * d, 0.3), [F, L - s, d]);
    const clt = await CrossLayerTranscoder.fromParameters({ arch: 'relu', nLayers: L, dIn: d, dOut: d, dSae: F, skip: false, ...crossLayerHooks(L, 'gpt2'), processing: 'none' }, params, { device: DEVICE });
    const rm = ReplacementModel.createCrossLayer(model, clt);
    const pass = await collectFeatureStats(rm, tokenFile, { examples: K, quantiles: Q, bins: BINS, batchRows: 6 });
    const acts = await allActivations([0, 1], async (cache) => {
      const f = (await clt.encode(await stackLayers(clt.config.hookIn.map((h) => cache[h]!)))).toFloat32Array(); // [n T, L, F]
      const rows = f.length / (L * F);
      const out = new Map<number, Float32Array>();
      for (const l of [0, 1]) out.set(l, Float32Array.from({ length: rows * F }, (_, i) => f[(Math.floor(i / F) * L + l) * F + (i % F)]!));
      return out;
    }, clt.config.hookIn, 6);
    await expectMatchesReference(pass, acts, await reference(acts, {}, []));
  });
});
