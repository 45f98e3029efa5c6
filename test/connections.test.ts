/**
 * Input-invariant connections (lib/circuits/connections.ts) against brute-force dense references
 * computed here in float64:
 * - the blocked all-pairs top-k at block sizes 1..1000, both directions, both merges, on dyadic data
 *   whose products are exact in float32 (identical indices and values), and on tie-heavy data (the
 *   scan merge's order is (value desc, index asc) exactly);
 * - one feature's upstream/downstream lists (direct and through every head's OV), de-embedding
 *   (direct and through a head) and logit effects on a tiny processed GPT-2 with random transcoders;
 * - InvalidArgumentError for bad k, block size, layer, feature, head;
 * - the `transcoders connections` command on a folder of saved transcoders.
 */
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  deEmbedding,
  featureConnections,
  logitEffects,
  topkConnections,
  type ConnectionList,
  type TokenScore,
} from '../lib/circuits/connections.js';
import { InvalidArgumentError, loadModel, logitEffectsOn, ReplacementModel, Tensor, type Model } from '../lib/index.js';
import { mlpHooks } from '../lib/transcoders/config.js';
import { saveTranscoder } from '../lib/transcoders/formats/native.js';
import { Transcoder } from '../lib/transcoders/transcoder.js';
import { Rng } from '../lib/util/random.js';
import { ensureDist, runCli } from './helpers/cli.js';
import { makeTempModel, tempDir } from './helpers/fixtures.js';

/** Sorted (value desc, index asc) top-k of a score vector: the dense reference. */
function denseTopK(scores: ArrayLike<number>, k: number, largest = true): { indices: number[]; values: number[] } {
  const order = Array.from({ length: scores.length }, (_, i) => i);
  const sign = largest ? 1 : -1;
  order.sort((a, b) => sign * (scores[b]! - scores[a]!) || a - b);
  return { indices: order.slice(0, k), values: order.slice(0, k).map((i) => scores[i]!) };
}

/** Dense scores [R][C] of the output rows: downstream S = dec @ enc, upstream S^T. */
function denseScores(dec: Float32Array, enc: Float32Array, m1: number, d: number, m2: number, direction: 'downstream' | 'upstream'): number[][] {
  const S = Array.from({ length: m1 }, (_, i) =>
    Array.from({ length: m2 }, (_, j) => {
      let s = 0;
      for (let t = 0; t < d; t++) s += dec[i * d + t]! * enc[t * m2 + j]!;
      return s;
    }),
  );
  return direction === 'downstream' ? S : Array.from({ length: m2 }, (_, j) => S.map((row) => row[j]!));
}

const rows = (t: Tensor, k: number): number[][] => {
  const a = [...(t.toTypedArray() as Iterable<number | bigint>)].map(Number);
  return Array.from({ length: a.length / k }, (_, r) => a.slice(r * k, (r + 1) * k));
};

describe('topkConnections: blocked all-pairs top-k equals the dense computation', () => {
  const m1 = 70;
  const m2 = 61;
  const d = 12;
  const k = 5;
  const BLOCK_SIZES = [1, 7, 16, 64, 70, 1000];

  // Dyadic entries j / 1024 with |j| < 1024: every product and every sum of 12 of them is exact in
  // float32, so any summation order (BLAS blocking included) gives the same scores. The seed is
  // chosen so that no row has two equal scores (at::topk's order among ties is unspecified).
  function dyadic(seed: number, n: number): Float32Array {
    const rng = new Rng(seed);
    return Float32Array.from({ length: n }, () => (rng.int(2047) - 1023) / 1024);
  }
  let dec: Float32Array;
  let enc: Float32Array;
  beforeAll(() => {
    for (let seed = 1; ; seed++) {
      dec = dyadic(seed, m1 * d);
      enc = dyadic(seed + 1000, d * m2);
      const tieFree = (['downstream', 'upstream'] as const).every((dir) => denseScores(dec, enc, m1, d, m2, dir).every((r) => new Set(r).size === r.length));
      if (tieFree) break;
    }
  });

  for (const direction of ['downstream', 'upstream'] as const) {
    for (const merge of ['scan', 'topk'] as const) {
      it(`${direction}, ${merge} merge, block sizes ${BLOCK_SIZES.join(', ')}: identical indices and values`, async () => {
        const ref = denseScores(dec, enc, m1, d, m2, direction).map((r) => denseTopK(r, k));
        for (const blockSize of BLOCK_SIZES) {
          const r = await topkConnections(Tensor.from(dec, [m1, d]), Tensor.from(enc, [d, m2]), { k, blockSize, direction, merge });
          expect(r.indices.shape).toEqual([direction === 'downstream' ? m1 : m2, k]);
          expect(r.indices.dtype).toBe('int64');
          expect(rows(r.indices, k), `blockSize ${blockSize}`).toEqual(ref.map((x) => x.indices));
          const values = rows(r.values, k);
          values.forEach((row, i) => row.forEach((v, j) => expect(Math.abs(v - ref[i]!.values[j]!)).toBeLessThanOrEqual(1e-5)));
        }
      });
    }
  }

  it('scan merge with many ties: exactly the dense order by (value desc, index asc), for every block size', async () => {
    const rng = new Rng(5);
    const a = Float32Array.from({ length: m1 * 3 }, () => rng.int(3) - 1);
    const b = Float32Array.from({ length: 3 * m2 }, () => rng.int(3) - 1);
    for (const direction of ['downstream', 'upstream'] as const) {
      const ref = denseScores(a, b, m1, 3, m2, direction).map((r) => denseTopK(r, 7));
      for (const blockSize of BLOCK_SIZES) {
        const r = await topkConnections(Tensor.from(a, [m1, 3]), Tensor.from(b, [3, m2]), { k: 7, blockSize, direction, merge: 'scan' });
        expect(rows(r.indices, 7), `${direction} blockSize ${blockSize}`).toEqual(ref.map((x) => x.indices));
        expect(rows(r.values, 7)).toEqual(ref.map((x) => x.values));
      }
    }
  });

  it('takes transcoders (W_dec of the source, W_enc of the target) and k = m', async () => {
    const cfg = (layer: number, m: number) => ({ arch: 'relu' as const, dIn: d, dOut: d, dSae: m, layer, ...mlpHooks(layer) });
    const src = await Transcoder.fromParameters(cfg(0, m1), { W_dec: Tensor.from(dec, [m1, d]), W_enc: Tensor.from(new Float32Array(d * m1), [d, m1]), b_enc: Tensor.from(new Float32Array(m1)), b_dec: Tensor.from(new Float32Array(d)), b_dec_out: Tensor.from(new Float32Array(d)) });
    const dst = await Transcoder.fromParameters(cfg(1, m2), { W_enc: Tensor.from(enc, [d, m2]), W_dec: Tensor.from(new Float32Array(m2 * d), [m2, d]), b_enc: Tensor.from(new Float32Array(m2)), b_dec: Tensor.from(new Float32Array(d)), b_dec_out: Tensor.from(new Float32Array(d)) });
    const r = await topkConnections(src, dst, { k: m2, blockSize: 16 });
    expect(rows(r.indices, m2)).toEqual(denseScores(dec, enc, m1, d, m2, 'downstream').map((x) => denseTopK(x, m2).indices));
  });

  it('rejects bad arguments with InvalidArgumentError', async () => {
    const A = Tensor.from(dec, [m1, d]);
    const B = Tensor.from(enc, [d, m2]);
    await expect(topkConnections(A, B, { k: m2 + 1 })).rejects.toThrow(InvalidArgumentError);
    await expect(topkConnections(A, B, { k: m2 + 1 })).rejects.toThrow(/k = 62 exceeds the 61 target features/);
    await expect(topkConnections(A, B, { k: m1 + 1, direction: 'upstream' })).rejects.toThrow(/source features/);
    await expect(topkConnections(A, B, { k: m1, direction: 'upstream' })).resolves.toBeDefined();
    await expect(topkConnections(A, B, { k: 0 })).rejects.toThrow(/k must be an integer >= 1/);
    await expect(topkConnections(A, B, { blockSize: 0 })).rejects.toThrow(InvalidArgumentError);
    await expect(topkConnections(A, Tensor.from(enc.subarray(0, 11 * m2), [11, m2]))).rejects.toThrow(/must share d/);
    await expect(topkConnections(A, B, { direction: 'sideways' as 'upstream' })).rejects.toThrow(InvalidArgumentError);
  });
});

describe('featureConnections, deEmbedding, logitEffects on a processed model', () => {
  const L = 3;
  const dModel = 32;
  const H = 4;
  const dh = dModel / H;
  const V = 300;
  const widths = [40, 48, 56];
  let model: Model;
  let tcs: Transcoder[];
  const W: Record<string, Float32Array> = {};
  const P: { W_enc: Float32Array; W_dec: Float32Array }[] = [];

  beforeAll(async () => {
    model = await loadModel(makeTempModel({ arch: 'gpt2', nLayers: L, dModel, nHeads: H, vocabSize: V, nCtx: 32, std: 0.2 }), { processing: 'transformerlens' });
    const rng = new Rng(23);
    const mat = (a: number, b: number, s: number) => Tensor.from(Float32Array.from({ length: a * b }, () => s * rng.normal()), [a, b]);
    const vec = (n: number) => Tensor.from(Float32Array.from({ length: n }, () => 0.1 * rng.normal()), [n]);
    tcs = [];
    for (let l = 0; l < L; l++) {
      const m = widths[l]!;
      tcs.push(await Transcoder.fromParameters(
        { arch: 'relu', dIn: dModel, dOut: dModel, dSae: m, layer: l, ...mlpHooks(l), processing: 'transformerlens' },
        { W_enc: mat(dModel, m, 0.3), b_enc: vec(m), W_dec: mat(m, dModel, 0.3), b_dec: vec(dModel), b_dec_out: vec(dModel) },
      ));
      const p = tcs[l]!.parameters();
      P.push({ W_enc: p.W_enc.toFloat32Array(), W_dec: p.W_dec.toFloat32Array() });
      W[`V${l}`] = model.weight(`blocks.${l}.attn.W_V`).toFloat32Array();
      W[`O${l}`] = model.weight(`blocks.${l}.attn.W_O`).toFloat32Array();
    }
    W.E = model.weight('embed.W_E').toFloat32Array();
    W.U = model.weight('unembed.W_U').toFloat32Array();
  });

  const rm = (list: Transcoder[]) => ReplacementModel.create(model, list);

  // Dense helpers (row-major, float64).
  const encCol = (l: number, j: number) => Array.from({ length: dModel }, (_, t) => P[l]!.W_enc[t * widths[l]! + j]!);
  const decRow = (l: number, i: number) => Array.from(P[l]!.W_dec.subarray(i * dModel, (i + 1) * dModel));
  const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => {
    let s = 0;
    for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
    return s;
  };
  /** x W_V[la,h] W_O[la,h] for a row vector x [d]. */
  const throughOV = (x: number[], la: number, h: number) => {
    const z = Array.from({ length: dh }, (_, e) => x.reduce((s, v, t) => s + v * W[`V${la}`]![(h * dModel + t) * dh + e]!, 0));
    return Array.from({ length: dModel }, (_, t) => z.reduce((s, v, e) => s + v * W[`O${la}`]![(h * dh + e) * dModel + t]!, 0));
  };
  /** OV n = W_V[la,h] (W_O[la,h] n) for a column vector n [d]. */
  const ovColumn = (n: number[], la: number, h: number) => {
    const z = Array.from({ length: dh }, (_, e) => n.reduce((s, v, t) => s + W[`O${la}`]![(h * dh + e) * dModel + t]! * v, 0));
    return Array.from({ length: dModel }, (_, t) => z.reduce((s, v, e) => s + W[`V${la}`]![(h * dModel + t) * dh + e]! * v, 0));
  };
  const upScores = (l: number, n: number[]) => Array.from({ length: widths[l]! }, (_, i) => dot(decRow(l, i), n));
  const downScores = (l: number, w: number[]) => Array.from({ length: widths[l]! }, (_, j) => dot(w, encCol(l, j)));

  /** The list equals the dense top-k: values rank by rank, and each index's dense score equals its value. */
  function expectTopK(features: { feature: number; value: number }[], scores: number[], k: number, what: string): void {
    const ref = denseTopK(scores, k);
    expect(features.length, what).toBe(k);
    expect(new Set(features.map((f) => f.feature)).size, what).toBe(k);
    features.forEach((f, r) => {
      expect(Math.abs(f.value - ref.values[r]!), `${what} rank ${r}`).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(ref.values[r]!)));
      expect(Math.abs(scores[f.feature]! - f.value), `${what} rank ${r}`).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(f.value)));
    });
    expect(features.map((f) => f.feature).sort(), what).toEqual([...ref.indices].sort());
  }
  function expectTokens(got: TokenScore[], scores: number[], k: number, largest: boolean, what: string): void {
    const ref = denseTopK(scores, k, largest);
    expect(got.map((t) => t.token), what).toEqual(ref.indices);
    got.forEach((t, r) => expect(Math.abs(t.value - ref.values[r]!), what).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(ref.values[r]!))));
    for (const t of got) expect(t.text, what).toBe(model.tokenizer!.decode([t.token]));
  }
  const find = (lists: ConnectionList[], layer: number, attnLayer?: number, head?: number) =>
    lists.find((l) => l.layer === layer && l.attnLayer === attnLayer && l.head === head)!;

  it('direct and through-attention upstream/downstream lists equal the dense products', async () => {
    const k = 6;
    const layer = 1;
    const F = 17;
    const r = await featureConnections(rm(tcs), layer, F, { k, throughAttention: true });
    const n = encCol(layer, F);
    const w = decRow(layer, F);
    // Direct: one list per other layer.
    expect(r.upstream.filter((l) => l.head === undefined).map((l) => l.layer)).toEqual([0]);
    expect(r.downstream.filter((l) => l.head === undefined).map((l) => l.layer)).toEqual([2]);
    expectTopK(find(r.upstream, 0).features, upScores(0, n), k, 'upstream 0');
    expectTopK(find(r.downstream, 2).features, downScores(2, w), k, 'downstream 2');
    // Through heads: upstream l1 = 0 < la = 1 <= 1; downstream 1 < la = 2 <= l2 = 2.
    expect(r.upstream.filter((l) => l.head !== undefined)).toHaveLength(H);
    expect(r.downstream.filter((l) => l.head !== undefined)).toHaveLength(H);
    for (let h = 0; h < H; h++) {
      expectTopK(find(r.upstream, 0, 1, h).features, upScores(0, ovColumn(n, 1, h)), k, `upstream via 1.${h}`);
      expectTopK(find(r.downstream, 2, 2, h).features, downScores(2, throughOV(w, 2, h)), k, `downstream via 2.${h}`);
    }
    // Merged rankings.
    expect(r.top.upstream.map((c) => c.value)).toEqual(find(r.upstream, 0).features.map((f) => f.value));
    const allVia = r.downstream.filter((l) => l.head !== undefined).flatMap((l) => l.features.map((f) => f.value)).sort((a, b) => b - a);
    expect(r.topThroughAttention!.downstream.map((c) => c.value)).toEqual(allVia.slice(0, k));
  });

  it('the last layer has only upstream lists: per earlier layer, and per (l1 < la <= 2, head)', async () => {
    const r = await featureConnections(ReplacementModel.create(model, new Map(tcs.map((t, l) => [l, t]))), 2, 3, { k: 4, throughAttention: true });
    expect(r.downstream).toHaveLength(0);
    // Direct 2 lists; through heads: la = 1 (l1 = 0) and la = 2 (l1 = 0, 1): 3 * H lists.
    expect(r.upstream).toHaveLength(2 + 3 * H);
    const n = encCol(2, 3);
    expectTopK(find(r.upstream, 1).features, upScores(1, n), 4, 'upstream 1');
    expectTopK(find(r.upstream, 0, 2, 3).features, upScores(0, ovColumn(n, 2, 3)), 4, 'upstream 0 via 2.3');
    expectTopK(find(r.upstream, 1, 2, 0).features, upScores(1, ovColumn(n, 2, 0)), 4, 'upstream 1 via 2.0');
    const noAttn = await featureConnections(rm(tcs), 2, 3, { k: 4 });
    expect(noAttn.upstream).toHaveLength(2);
    expect(noAttn.topThroughAttention).toBeUndefined();
  });

  it('de-embedding (direct and through a head) and logit effects equal W_E @ n, W_E @ OV n, W_dec[F] @ W_U', async () => {
    const F = 9;
    const layer = 2;
    const n = encCol(layer, F);
    const direct = Array.from({ length: V }, (_, v) => dot(W.E!.subarray(v * dModel, (v + 1) * dModel), n));
    const d = await deEmbedding(rm(tcs), layer, F, { k: 7 });
    expectTokens(d.top, direct, 7, true, 'de-embedding top');
    expectTokens(d.bottom, direct, 7, false, 'de-embedding bottom');

    const ov = ovColumn(n, 1, 2);
    const viaHead = Array.from({ length: V }, (_, v) => dot(W.E!.subarray(v * dModel, (v + 1) * dModel), ov));
    const h = await deEmbedding(rm(tcs), layer, F, { k: 5, head: { layer: 1, head: 2 } });
    expectTokens(h.top, viaHead, 5, true, 'de-embedding via 1.2');

    const w = decRow(layer, F);
    const logits = Array.from({ length: V }, (_, v) => w.reduce((s, x, t) => s + x * W.U![t * V + v]!, 0));
    const e = await logitEffects(rm(tcs), layer, F, { k: 6 });
    expectTokens(e.top, logits, 6, true, 'logit effects top');
    expectTokens(e.bottom, logits, 6, false, 'logit effects bottom');
  });

  it('logit effects on chosen tokens equal W_dec[F] . W_U[:, t], directly and through a later head', async () => {
    const F = 5;
    const layer = 0;
    const tokens = [3, 17, 299, 0, 42];
    const w = decRow(layer, F);
    const direct = tokens.map((v) => w.reduce((s, x, t) => s + x * W.U![t * V + v]!, 0));
    const ov = throughOV(w, 2, 1);
    const viaHead = tokens.map((v) => ov.reduce((s, x, t) => s + x * W.U![t * V + v]!, 0));
    const got = await logitEffectsOn(rm(tcs), layer, F, tokens);
    const gotHead = await logitEffectsOn(rm(tcs), layer, F, tokens, { head: { layer: 2, head: 1 } });
    got.forEach((g, i) => expect(Math.abs(g - direct[i]!)).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(direct[i]!))));
    gotHead.forEach((g, i) => expect(Math.abs(g - viaHead[i]!)).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(viaHead[i]!))));
    await expect(logitEffectsOn(rm(tcs), 1, F, tokens, { head: { layer: 1, head: 0 } })).rejects.toThrow(/does not come after the transcoder's layer 1/);
    await expect(logitEffectsOn(rm(tcs), 1, F, [V])).rejects.toThrow(/out of range/);
  });

  it('rejects bad layer, feature, k and head with InvalidArgumentError', async () => {
    const cases: [string, () => Promise<unknown>, RegExp][] = [
      ['layer out of range', () => featureConnections(rm(tcs), 3, 0), /no transcoder for layer 3/],
      ['layer without a transcoder', () => featureConnections(rm(tcs.slice(0, 2)), 2, 0), /no transcoder for layer 2/],
      ['negative layer', () => featureConnections(rm(tcs), -1, 0), /layer must be an integer/],
      ['feature out of range', () => featureConnections(rm(tcs), 1, 48), /feature 48 is out of range for the layer-1 transcoder \(d_sae = 48\)/],
      ['k > m of another layer', () => featureConnections(rm(tcs), 1, 0, { k: 41 }), /k = 41 exceeds the layer-0 transcoder's d_sae = 40/],
      ['k < 1', () => featureConnections(rm(tcs), 1, 0, { k: 0 }), /k must be an integer >= 1/],
      ['de-embedding feature', () => deEmbedding(rm(tcs), 0, 40), /feature 40 is out of range/],
      ['de-embedding k > V', () => deEmbedding(rm(tcs), 0, 0, { k: V + 1 }), /exceeds the 300 tokens/],
      ['de-embedding head after the layer', () => deEmbedding(rm(tcs), 0, 0, { head: { layer: 1, head: 0 } }), /comes after the transcoder's layer 0/],
      ['de-embedding head out of range', () => deEmbedding(rm(tcs), 2, 0, { head: { layer: 1, head: H } }), /head 4 is out of range/],
      ['logit effects feature', () => logitEffects(rm(tcs), 0, -1), /feature must be an integer/],
      ['logit effects k', () => logitEffects(rm(tcs), 0, 0, { k: 0 }), /k must be/],
    ];
    for (const [what, run, message] of cases) {
      const err = await run().then(() => null, (e: unknown) => e);
      expect(err, what).toBeInstanceOf(InvalidArgumentError);
      expect((err as Error).message, what).toMatch(message);
    }
  });

  it('transcoders connections --json on a folder of layer_L transcoders', async () => {
    ensureDist();
    const dir = tempDir('transcoders-connections-');
    tcs.forEach((t, l) => saveTranscoder(t, join(dir, `layer_${l}`)));
    let r = runCli(['connections', model.dir, '--transcoders', dir, '--feature', '1:17', '--k', '6', '--through-attention', '--deembed-head', '1:2', '--json']);
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    const lib = await featureConnections(rm(tcs), 1, 17, { k: 6, throughAttention: true });
    expect(out.layers).toEqual([0, 1, 2]);
    expect(out.top).toEqual(lib.top);
    expect(out.upstream).toHaveLength(lib.upstream.length);
    expect(out.deEmbedding.top).toEqual((await deEmbedding(rm(tcs), 1, 17, { k: 6, head: { layer: 1, head: 2 } })).top);
    expect(out.logitEffects.bottom).toEqual((await logitEffects(rm(tcs), 1, 17, { k: 6 })).bottom);

    r = runCli(['connections', model.dir, '--transcoders', dir, '--feature', '0:3', '--k', '3']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('Upstream features');
    expect(r.stdout).toContain('(none)');
    expect(r.stdout).toContain('De-embedding');
    expect(r.stdout).toContain('Logit effects');

    r = runCli(['connections', model.dir, '--transcoders', dir, '--feature', '1-17']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--feature must be L:F/);
    r = runCli(['connections', model.dir, '--transcoders', dir, '--feature', '1:99']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/feature 99 is out of range/);
    r = runCli(['connections', '--help']);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^Usage: transcoders connections/);
  });
});
