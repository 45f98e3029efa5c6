/**
 * The attribution identities of paper-method.md §6 C and D on random small models (TransformerLens
 * processing) with random transcoders at every layer: LN constants, attention decomposition,
 * children vectors, embedding term, input x gradient sums, and the complete decomposition of a feature's
 * activation and of a logit difference into embedding + attention + biases + transcoder features +
 * errors (+ encoder bias). Tolerance: 1e-4 relative.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { Attribution, type Sublayer } from '../lib/circuits/attribution.js';
import { loadModel, Tensor, type Model } from '../lib/index.js';
import type { RandomModelSpec } from '../lib/models/random.js';
import { Rng } from '../lib/util/random.js';
import { CIRCUIT_DSAE, circuitFixture } from './helpers/circuits.js';
import { makeTempModel } from './helpers/fixtures.js';

const dot = (a: Float32Array, b: Float32Array) => a.reduce((s, v, i) => s + v * b[i]!, 0);
const row = (t: Tensor, i: number) => {
  const d = t.shape.at(-1)!;
  return t.toFloat32Array().subarray(i * d, (i + 1) * d);
};
const vec = (a: Float32Array) => Tensor.from(Float32Array.from(a), [a.length]);

function expectRel(actual: number, expected: number, what: string, tol = 1e-4): void {
  expect(Math.abs(actual - expected), `${what}: ${actual} vs ${expected}`).toBeLessThanOrEqual(tol * Math.max(1, Math.abs(expected)));
}

interface Setup {
  model: Model;
  attribution: Attribution;
  tokens: number[];
  cache: Record<string, Tensor>;
  logits: Tensor;
}

async function setup(spec: RandomModelSpec): Promise<Setup> {
  const { model, transcoders } = await circuitFixture(spec);
  const rng = new Rng(17);
  const tokens = Array.from({ length: 9 }, () => rng.int(spec.vocabSize));
  const attribution = await Attribution.create(model, transcoders, tokens);
  const { cache, logits } = await model.run([tokens], { cache: ['*'] });
  return { model, attribution, tokens, cache: Object.fromEntries(Object.entries(cache).map(([k, t]) => [k, Tensor.from(t.toFloat32Array(), t.shape.slice(1))])), logits: logits! };
}

/** The complete decomposition of v read at (layer, sublayer, t), minus the encoder-bias term. */
async function decompose(s: Setup, v: Tensor, layer: number, sublayer: Sublayer, t: number): Promise<number> {
  const { model, attribution } = s;
  const vv = v.toFloat32Array();
  let total = attribution.embeddingContribution(v, t);
  const attnLayers = sublayer === 'resid_pre' ? layer : layer + 1;
  const mlpLayers = sublayer === 'resid_post' ? layer + 1 : layer;
  for (let l = 0; l < attnLayers; l++) {
    total += attribution.attentionContributions(v, l, t).toFloat32Array().reduce((a, b) => a + b, 0); // all heads, all sources incl. BOS
    total += dot(model.weight(`blocks.${l}.attn.b_O`).toFloat32Array(), vv);
  }
  for (let l = 0; l < mlpLayers; l++) {
    total += (await attribution.featureContributions(v, l, t)).toFloat32Array().reduce((a, b) => a + b, 0);
    total += dot(attribution.transcoders.get(l)!.parameters().b_dec_out.toFloat32Array(), vv);
    total += attribution.transcoderError(v, l, t);
  }
  return total;
}

describe.each([
  { name: 'gpt2', spec: { arch: 'gpt2', nLayers: 3, dModel: 32, nHeads: 4, vocabSize: 300, nCtx: 32, std: 0.2 } as RandomModelSpec },
  { name: 'neox parallel', spec: { arch: 'gpt_neox', nLayers: 3, dModel: 32, nHeads: 4, vocabSize: 300, nCtx: 32, std: 0.2 } as RandomModelSpec },
])('attribution identities ($name)', ({ spec }) => {
  let s: Setup;
  const t = 7;
  beforeAll(async () => {
    s = await setup(spec);
  });

  it('D1: the LN constant is 1 / hook_scale (ln1, ln2, ln_final)', () => {
    for (let l = 0; l < spec.nLayers; l++) {
      expectRel(s.attribution.lnConstant(l, t, 'ln2'), 1 / row(s.cache[`blocks.${l}.ln2.hook_scale`]!, t)[0]!, `ln2 ${l}`);
      expectRel(s.attribution.lnConstant(l, t, 'ln1'), 1 / row(s.cache[`blocks.${l}.ln1.hook_scale`]!, t)[0]!, `ln1 ${l}`);
    }
    expectRel(s.attribution.lnConstant(spec.nLayers, t), 1 / row(s.cache['ln_final.hook_scale']!, t)[0]!, 'ln_final');
  });

  it('C4: attention contributions over heads and sources plus b_O equal the attention output along v', () => {
    const rng = new Rng(3);
    for (let l = 0; l < spec.nLayers; l++) {
      const v = vec(Float32Array.from({ length: spec.dModel }, () => rng.normal()));
      const c = s.attribution.attentionContributions(v, l, t).toFloat32Array();
      const bO = dot(s.model.weight(`blocks.${l}.attn.b_O`).toFloat32Array(), v.toFloat32Array());
      expectRel(c.reduce((a, b) => a + b, 0) + bO, dot(row(s.cache[`blocks.${l}.hook_attn_out`]!, t), v.toFloat32Array()), `layer ${l}`);
    }
  });

  it('D5: feature contributions sum to v . (transcoder output - b_dec_out)', async () => {
    const v = vec(Float32Array.from({ length: spec.dModel }, (_, i) => Math.sin(i + 1)));
    for (let l = 0; l < spec.nLayers; l++) {
      const sum = (await s.attribution.featureContributions(v, l, t)).toFloat32Array().reduce((a, b) => a + b, 0);
      const out = row(s.attribution.transcoderOutput(l), t);
      const bias = s.attribution.transcoders.get(l)!.parameters().b_dec_out.toFloat32Array();
      expectRel(sum, dot(out, v.toFloat32Array()) - dot(bias, v.toFloat32Array()), `layer ${l}`);
    }
  });

  it('D2-D4: children vectors and contributions (attention and embedding exact on the residual, features up to their bias)', async () => {
    const root = s.attribution.featureRoot(2, 0, t);
    // Pick an active root feature.
    const acts = row(s.attribution.activations(2), t);
    const F = acts.findIndex((a) => a > 0.05);
    expect(F).toBeGreaterThanOrEqual(0);
    const r = s.attribution.featureRoot(2, F, t);
    expect(r.contrib).toBeCloseTo(acts[F]!, 5);
    expect(root.sublayer).toBe(s.attribution.mlpInput);
    const kids = await s.attribution.children(r, 1000, { ignoreBos: false }); // every candidate
    expect(kids.some((k) => k.kind === 'feature')).toBe(true);
    expect(kids.some((k) => k.kind === 'attention')).toBe(true);
    expect(kids.filter((k) => k.kind === 'embedding')).toHaveLength(1);
    for (const k of kids) {
      const resid = row(s.attribution.residual(k.layer, k.sublayer), k.position);
      // D3 / D4: attention and embedding children read exactly their contribution off the residual.
      if (k.kind !== 'feature') expectRel(dot(k.vector.toFloat32Array(), resid), k.contrib, `${k.kind} L${k.layer} ${k.head ?? ''}@${k.position}`);
      if (k.kind === 'feature') {
        // D2: contrib = (W_dec[i] . v) z_i, and (W_dec[i] . v)(z_i - b_enc[i] + W_enc[:, i] . b_dec) for the vector.
        const p = s.attribution.transcoders.get(k.layer)!.parameters();
        const d = spec.dModel;
        const g = dot(row(p.W_dec, k.feature!), r.vector.toFloat32Array());
        const z = row(s.attribution.activations(k.layer), t)[k.feature!]!;
        expectRel(k.contrib, g * z, 'D2 contrib');
        const wEncCol = Float32Array.from({ length: d }, (_, i) => p.W_enc.toFloat32Array()[i * CIRCUIT_DSAE + k.feature!]!);
        if (z > 0) expectRel(dot(k.vector.toFloat32Array(), resid), g * (z - p.b_enc.toFloat32Array()[k.feature!]! + dot(wEncCol, p.b_dec.toFloat32Array())), 'D2 vector');
      }
      if (k.kind === 'embedding') {
        // D4: token + position embedding.
        const WE = s.model.weight('embed.W_E');
        const emb = Float32Array.from(row(WE, s.tokens[t]!));
        if (spec.arch === 'gpt2') row(s.model.weight('pos_embed.W_pos'), t).forEach((x, i) => (emb[i]! += x));
        expectRel(k.contrib, dot(emb, r.vector.toFloat32Array()), 'D4');
      }
    }
    // Children are causal: attention sources at or before t, earlier layers only.
    for (const k of kids) {
      expect(k.position).toBeLessThanOrEqual(t);
      if (k.kind === 'feature') expect(k.layer).toBeLessThan(2);
      if (k.kind === 'attention') expect(k.layer).toBeLessThanOrEqual(s.attribution.mlpInput === 'resid_mid' ? 2 : 1);
    }
    // Sorted by contribution, at most k.
    expect(kids.map((k) => k.contrib)).toEqual([...kids.map((k) => k.contrib)].sort((a, b) => b - a));
  });

  it('D6: the complete decomposition reproduces a feature activation', async () => {
    const L = 2;
    const acts = row(s.attribution.activations(L), t);
    let checked = 0;
    for (let F = 0; F < acts.length && checked < 5; F++) {
      if (acts[F]! <= 0.05) continue;
      const root = s.attribution.featureRoot(L, F, t);
      const p = s.attribution.transcoders.get(L)!.parameters();
      const wEncCol = Float32Array.from({ length: spec.dModel }, (_, i) => p.W_enc.toFloat32Array()[i * CIRCUIT_DSAE + F]!);
      const encoderBias = p.b_enc.toFloat32Array()[F]! - dot(wEncCol, p.b_dec.toFloat32Array());
      const total = (await decompose(s, root.vector, L, root.sublayer, t)) + encoderBias;
      expectRel(total, acts[F]!, `feature ${F}`);
      checked++;
    }
    expect(checked).toBeGreaterThan(0);
  });

  it('D6: the complete decomposition reproduces a logit difference', async () => {
    const V = spec.vocabSize;
    const WU = s.model.weight('unembed.W_U').toFloat32Array(); // [d, V]
    const a = 5;
    const b = 77;
    const ln = s.attribution.lnConstant(spec.nLayers, t);
    const v = vec(Float32Array.from({ length: spec.dModel }, (_, i) => (WU[i * V + a]! - WU[i * V + b]!) * ln));
    const logits = row(Tensor.from(s.logits.toFloat32Array(), [s.tokens.length, V]), t);
    const bU = s.model.weight('unembed.b_U').toFloat32Array();
    const total = (await decompose(s, v, spec.nLayers - 1, 'resid_post', t)) + bU[a]! - bU[b]!;
    expectRel(total, logits[a]! - logits[b]!, 'logit difference');
  });
});

describe('attribution input checks', () => {
  it('needs the processed model', async () => {
    const model = await loadModel(makeTempModel({ arch: 'gpt2', nLayers: 1, dModel: 16, nHeads: 2, vocabSize: 300, nCtx: 8 }));
    await expect(Attribution.create(model, [], [1, 2, 3])).rejects.toThrow(/processing 'transformerlens'/);
  });
});
