/**
 * Batches of rows of different lengths: padded right or left, with pads masked out of attention and
 * real tokens at positions 0..n-1. Each row of a padded run is compared at its real positions with
 * (1) the same row run alone by this library — every hook, tolerance 1e-5 x max(1, max |single|) in
 * float32 — and (2) the independent plain-PyTorch reference (test/reference/hf_reference.py) run on
 * that row alone — every hook it records, 1e-4 x max(1, max |reference|), the tolerance of
 * test/model.test.ts. Losses are checked against the reference's per-row logits.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { evaluate, InvalidArgumentError, ReplacementModel, loadModel, meanInputTimesGradient, mlpHooks, Tensor, Transcoder, type Model, type RunOutput } from '../lib/index.js';
import type { RandomModelSpec } from '../lib/models/random.js';
import { DEVICE, makeTempModel, TINY_GPT2, TINY_NEOX } from './helpers/fixtures.js';
import { logSoftmaxRows, referenceForward } from './helpers/reference.js';

const SINGLE_TOL = 1e-5;
const REF_TOL = 1e-4;

function randomRows(vocab: number, lengths: number[], seed: number): number[][] {
  let s = seed;
  const next = () => (s = (s * 1103515245 + 12345) % 2147483648);
  return lengths.map((n) => Array.from({ length: n }, () => next() % vocab));
}

/** Largest |a - b| (equal infinities count as equal, NaN as infinitely far) and largest finite |b|. */
function compare(a: Float32Array, b: Float32Array): { diff: number; scale: number } {
  if (a.length !== b.length) throw new Error(`length mismatch: ${a.length} vs ${b.length}`);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (Number.isNaN(x) || Number.isNaN(y)) diff = Infinity;
    else if (x !== y) diff = Math.max(diff, Math.abs(x - y));
    if (Number.isFinite(y)) scale = Math.max(scale, Math.abs(y));
  }
  return { diff, scale };
}

const isPattern = (name: string) => /attn\.hook_(attn_scores|pattern)$/.test(name);

/**
 * Row b of a padded activation at real positions [start, start + n): [n, ...rest] for [B, T, ...]
 * hooks, [H, n, n] (queries and keys) for the [B, H, T, T] attention hooks.
 */
function realSlice(name: string, t: Tensor, b: number, start: number, n: number): Float32Array {
  const data = t.toFloat32Array();
  const shape = t.shape;
  if (isPattern(name)) {
    const [, H, T] = shape as [number, number, number, number];
    const out = new Float32Array(H * n * n);
    for (let h = 0; h < H; h++)
      for (let q = 0; q < n; q++)
        for (let k = 0; k < n; k++) out[(h * n + q) * n + k] = data[((b * H + h) * T + start + q) * T + start + k]!;
    return out;
  }
  const T = shape[1]!;
  const inner = shape.slice(2).reduce((x, y) => x * y, 1);
  return data.slice((b * T + start) * inner, (b * T + start + n) * inner);
}

interface Fixture {
  name: string;
  spec: RandomModelSpec;
}

const FIXTURES: Fixture[] = [
  { name: 'gpt2 (learned positions)', spec: TINY_GPT2 },
  { name: 'neox (rotary on a quarter of each head, parallel residual)', spec: TINY_NEOX },
  { name: 'neox (full rotary, sequential residual)', spec: { ...TINY_NEOX, rotaryPct: 1, parallelResidual: false, seed: 9 } },
];

// A row of one token, rows shorter than the longest, and the longest itself.
const LENGTHS = [11, 4, 1, 8];

describe.each(FIXTURES)('padded batches: $name', ({ spec }) => {
  let dir: string;
  let model: Model;
  let rows: number[][];
  let singles: RunOutput[];
  let references: Record<string, Tensor>[];

  beforeAll(async () => {
    dir = makeTempModel(spec);
    model = await loadModel(dir, { device: DEVICE });
    rows = randomRows(spec.vocabSize, LENGTHS, spec.seed ?? 3);
    singles = [];
    for (const row of rows) singles.push(await model.run([row], { cache: [...model.hookNames] }));
    references = [];
    for (const row of rows) references.push(await referenceForward(dir, [row]));
  });

  it.each(['right', 'left'] as const)('%s padding: every row equals its single run and the reference at its real positions', async (padding) => {
    const T = Math.max(...LENGTHS);
    const out = await model.run(rows, { cache: [...model.hookNames], padding });
    expect(out.lengths).toEqual(LENGTHS);
    expect(out.padding).toBe(padding);
    expect(out.logits!.shape).toEqual([rows.length, T, spec.vocabSize]);
    const names = ['logits', ...model.hookNames];
    const padded = (name: string) => (name === 'logits' ? out.logits! : out.cache[name]!);
    const single = (b: number, name: string) => (name === 'logits' ? singles[b]!.logits! : singles[b]!.cache[name]!);
    let compared = 0;
    rows.forEach((row, b) => {
      const n = row.length;
      const start = padding === 'left' ? T - n : 0;
      for (const name of names) {
        const got = realSlice(name, padded(name), b, start, n);
        const alone = compare(got, single(b, name).toFloat32Array());
        expect(alone.diff, `${name} row ${b}: ${alone.diff} (scale ${alone.scale})`).toBeLessThanOrEqual(SINGLE_TOL * Math.max(1, alone.scale));
        const ref = references[b]![name];
        if (ref) {
          const r = compare(got, ref.toFloat32Array());
          expect(r.diff, `${name} row ${b} vs reference: ${r.diff} (scale ${r.scale})`).toBeLessThanOrEqual(REF_TOL * Math.max(1, r.scale));
          compared++;
        }
      }
    });
    // The reference records most hooks (not the scores or the rotated q/k): make sure it was used.
    expect(compared).toBeGreaterThan(20 * rows.length);

    // Pad positions: finite everywhere (scores are -inf exactly where a key is masked), and no real
    // query gives any weight to a pad key.
    for (const name of names) {
      const data = padded(name).toFloat32Array();
      const bad = name.endsWith('hook_attn_scores') ? data.findIndex((v) => Number.isNaN(v) || v === Infinity) : data.findIndex((v) => !Number.isFinite(v));
      expect(bad, `${name} has a non-finite value at flat index ${bad}`).toBe(-1);
    }
    const pattern = out.cache['blocks.1.attn.hook_pattern']!;
    const [, H] = pattern.shape as [number, number];
    const p = pattern.toFloat32Array();
    rows.forEach((row, b) => {
      const start = padding === 'left' ? T - row.length : 0;
      const real = (t: number) => t >= start && t < start + row.length;
      for (let h = 0; h < H; h++)
        for (let q = 0; q < T; q++) {
          if (!real(q)) continue;
          for (let k = 0; k < T; k++) if (!real(k)) expect(p[((b * H + h) * T + q) * T + k]).toBe(0);
        }
    });
  });

  it.each(['right', 'left'] as const)('%s padding: the fused path (no hooks) gives the same logits', async (padding) => {
    const hooked = await model.run(rows, { cache: ['blocks.0.attn.hook_pattern'], padding });
    const plain = await model.run(rows, { padding });
    const d = compare(plain.logits!.toFloat32Array(), hooked.logits!.toFloat32Array());
    expect(d.diff).toBeLessThanOrEqual(SINGLE_TOL * Math.max(1, d.scale));
  });

  it.each(['right', 'left'] as const)('%s padding: the loss averages real predictions only; per-token losses mark pads with NaN', async (padding) => {
    // Every row needs two tokens for a loss: drop the one-token row.
    const lossRows = rows.filter((r) => r.length >= 2);
    const refs = references.filter((_, b) => rows[b]!.length >= 2);
    const T = Math.max(...lossRows.map((r) => r.length));
    const V = spec.vocabSize;
    // Per-token NLL of each row from the reference's logits, computed here.
    const refNll = lossRows.map((row, b) => {
      const logProbs = logSoftmaxRows(refs[b]!.logits!.toFloat32Array(), V);
      return row.slice(1).map((next, t) => -logProbs[t * V + next]!);
    });
    const all = refNll.flat();
    const expectedMean = all.reduce((a, v) => a + v, 0) / all.length;
    expect(Math.abs((await model.loss(lossRows, { padding })) - expectedMean)).toBeLessThanOrEqual(1e-4);

    const perToken = await model.lossPerToken(lossRows, { padding });
    expect(perToken.shape).toEqual([lossRows.length, T - 1]);
    const got = perToken.toFloat32Array();
    lossRows.forEach((row, b) => {
      const n = row.length;
      const start = padding === 'left' ? T - n : 0;
      for (let t = 0; t < T - 1; t++) {
        const v = got[b * (T - 1) + t]!;
        if (t >= start && t < start + n - 1) expect(Math.abs(v - refNll[b]![t - start]!), `row ${b} prediction ${t}`).toBeLessThanOrEqual(1e-4);
        else expect(v, `row ${b} prediction ${t} reads or predicts a pad`).toBeNaN();
      }
    });
  });
});

describe('padded batches: splicing and errors', () => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(makeTempModel(TINY_GPT2), { device: DEVICE });
  });

  it.each(['right', 'left'] as const)("%s padding: 'mean' averages the MLP output over real positions only", async (padding) => {
    const rows = randomRows(TINY_GPT2.vocabSize, [9, 3, 6], 5);
    const T = 9;
    const d = TINY_GPT2.dModel;
    const last = TINY_GPT2.nLayers - 1;
    const clean = await model.run(rows, { cache: [`blocks.${last}.hook_mlp_out`], padding });
    const mlpOut = clean.cache[`blocks.${last}.hook_mlp_out`]!.toFloat32Array();
    // The mean over real positions, and (to show the test tells them apart) the mean over all.
    const real = new Float64Array(d);
    const every = new Float64Array(d);
    let count = 0;
    rows.forEach((row, b) => {
      const start = padding === 'left' ? T - row.length : 0;
      for (let t = 0; t < T; t++) {
        const isReal = t >= start && t < start + row.length;
        if (isReal) count++;
        for (let i = 0; i < d; i++) {
          const v = mlpOut[(b * T + t) * d + i]!;
          every[i]! += v / (rows.length * T);
          if (isReal) real[i]! += v;
        }
      }
    });
    const realMean = Float32Array.from(real, (v) => v / count);
    const gap = Math.max(...realMean.map((v, i) => Math.abs(v - every[i]!)));
    expect(gap).toBeGreaterThan(1e-3);
    const out = await model.run(rows, { replaceMlp: { [last]: 'mean' }, cache: [`blocks.${last}.hook_mlp_out`], padding });
    const spliced = out.cache[`blocks.${last}.hook_mlp_out`]!.toFloat32Array();
    for (let p = 0; p < rows.length * T; p++) {
      for (let i = 0; i < d; i++) expect(Math.abs(spliced[p * d + i]! - realMean[i]!)).toBeLessThanOrEqual(1e-6);
    }
    const given = await model.run(rows, { replaceMlp: { [last]: { mean: Tensor.from(realMean, [d]) } }, padding });
    const diff = compare(out.logits!.toFloat32Array(), given.logits!.toFloat32Array());
    expect(diff.diff).toBeLessThanOrEqual(SINGLE_TOL * Math.max(1, diff.scale));
  });

  it('a callback sees the padded [B, T, d] batch', async () => {
    const rows = [[1, 2, 3, 4], [5, 6]];
    const shapes: number[][] = [];
    const out = await model.run(rows, { replaceMlp: { 0: (input, original) => (shapes.push(input.shape), original) }, padding: 'left' });
    expect(shapes).toEqual([[2, 4, TINY_GPT2.dModel]]);
    expect(out.lengths).toEqual([4, 2]);
  });

  it('equal-length rows are not padded; a tensor input is all real', async () => {
    const rows = [[1, 2, 3], [4, 5, 6]];
    const a = await model.run(rows, { padding: 'left' });
    const b = await model.run(rows);
    expect(a.lengths).toEqual([3, 3]);
    expect(compare(a.logits!.toFloat32Array(), b.logits!.toFloat32Array()).diff).toBe(0);
    const t = await model.run(Tensor.from(new Int32Array([1, 2, 3, 4, 5, 6]), [2, 3]));
    expect(t.lengths).toEqual([3, 3]);
    expect(t.padding).toBe('right');
  });

  it('bad input: padding side, empty rows, one-token rows in a loss, token ids named by row and position', async () => {
    await expect(model.run([[1, 2], [3]], { padding: 'middle' as 'left' })).rejects.toThrow(InvalidArgumentError);
    await expect(model.run([[1, 2], [3]], { padding: 'middle' as 'left' })).rejects.toThrow(/padding must be 'right' or 'left', got 'middle'/);
    await expect(model.run([[1, 2], []])).rejects.toThrow(/tokens: row 1 is empty/);
    await expect(model.loss([[1, 2, 3], [4]])).rejects.toThrow(/the loss needs at least 2 tokens per row, row 1 has 1/);
    await expect(model.lossPerToken([[1, 2, 3], [4]], { padding: 'left' })).rejects.toThrow(InvalidArgumentError);
    const V = TINY_GPT2.vocabSize;
    for (const padding of ['right', 'left'] as const) {
      await expect(model.run([[1, 2, 3, 4], [5, V]], { padding })).rejects.toThrow(new RegExp(`token id ${V} \\(row 1, position 1\\) is out of range`));
    }
    // The native side checks the lengths it is given (the library always passes valid ones).
    const tokens = Tensor.from(new Int32Array([1, 2, 3]), [1, 3]);
    await expect(model.handle.run(tokens.handle, { lengths: Tensor.from(new Int32Array([5])).handle })).rejects.toThrow(/lengths: row 0 has length 5, outside \[1, 3\]/);
    await expect(model.handle.run(tokens.handle, { lengths: Tensor.from(new Int32Array([1, 1])).handle })).rejects.toThrow(/lengths must be an integer tensor of shape \[1\]/);
    await expect(model.handle.run(tokens.handle, { lengths: Tensor.from(new Float32Array([2])).handle })).rejects.toThrow(InvalidArgumentError);
  });

  it('users of activations: mean ixg skips pads; evaluate refuses rows of different lengths in one batch', async () => {
    const d = TINY_GPT2.dModel;
    const up = await Transcoder.create({ arch: 'relu', dIn: d, dOut: d, dSae: 24, layer: 0, ...mlpHooks(0) }, { seed: 4, device: DEVICE });
    const down = await Transcoder.create({ arch: 'relu', dIn: d, dOut: d, dSae: 24, layer: 1, ...mlpHooks(1) }, { seed: 5, device: DEVICE });
    const sequences = randomRows(TINY_GPT2.vocabSize, [7, 3, 5], 8);
    const rm = ReplacementModel.create(model, [up, down]);
    const ragged = await meanInputTimesGradient(rm, 0, 1, 2, sequences, { batchSize: 3 });
    // The mean over every token = the token-weighted mean of each sequence's own mean (no pads).
    const expected = new Float64Array(24);
    for (const seq of sequences) {
      const one = await meanInputTimesGradient(rm, 0, 1, 2, [seq]);
      one.forEach((v, i) => (expected[i]! += (v * seq.length) / 15));
    }
    ragged.forEach((v, i) => expect(Math.abs(v - expected[i]!)).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(expected[i]!))));
    await expect(evaluate(ReplacementModel.create(model, [up]), [[1, 2, 3], [4, 5]])).rejects.toThrow(/evaluate: row 1 has 2 tokens but row 0 has 3; rows evaluated in one batch \(batchSize 8\) must have equal length/);
  });
});
