/**
 * The attribution identities of paper-method.md §6 C and D on random small models with random
 * transcoders at every layer: LN constants, attention decomposition, children vectors, embedding term,
 * input x gradient sums, and the complete decomposition of a feature's activation and of a logit
 * difference into embedding + attention + biases + transcoder features + errors (+ the root's bias).
 * Run on TransformerLens-processed models (the paper's setting) and on raw models (processing
 * 'none': LayerNorm centring, weights and biases applied exactly), with transcoders reading the MLP
 * input (`ln2.hook_normalized` / `mlp.hook_in`) or the residual before the MLP's LayerNorm
 * (`hook_resid_mid`; `hook_resid_pre` in parallel blocks). The expected biases are computed here from
 * the weights (the LayerNorm and value biases of the raw model, the encoder's bias terms), not read
 * from the library. Tolerance: 1e-4 relative.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { Attribution, type Sublayer } from '../lib/circuits/attribution.js';
import { Tensor, type Model, type Processing } from '../lib/index.js';
import { PRESETS, type RandomModelSpec } from '../lib/models/random.js';
import { Rng } from '../lib/util/random.js';
import { CIRCUIT_DSAE, circuitFixture, type FixtureInput } from './helpers/circuits.js';

const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
};
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
  raw: boolean;
  input: FixtureInput;
}

async function setup(spec: RandomModelSpec, processing: Processing, input: FixtureInput): Promise<Setup> {
  const { model, replacement } = await circuitFixture(spec, { processing, input });
  const rng = new Rng(17);
  const tokens = Array.from({ length: 9 }, () => rng.int(spec.vocabSize));
  const attribution = await Attribution.create(replacement, tokens);
  const { cache, logits } = await model.run([tokens], { cache: ['*'] });
  return {
    model, attribution, tokens, raw: processing === 'none', input,
    cache: Object.fromEntries(Object.entries(cache).map(([k, t]) => [k, Tensor.from(t.toFloat32Array(), t.shape.slice(1))])),
    logits: logits!,
  };
}

/** A model weight, or zeros when processing folded it away (LayerNorm weights and biases). */
function weightOrZeros(s: Setup, name: string, n: number): Float32Array {
  return s.model.weightNames().includes(name) ? s.model.weight(name).toFloat32Array() : new Float32Array(n);
}

/** b_enc[F] - W_enc[:, F] . b_dec, plus W_enc[:, F] . ln2.b when the transcoder reads a raw MLP input. */
function expectedFeatureBias(s: Setup, layer: number, feature: number): number {
  const p = s.attribution.transcoders.get(layer)!.parameters();
  const d = s.model.config.dModel;
  const column = Float32Array.from({ length: d }, (_, i) => p.W_enc.toFloat32Array()[i * CIRCUIT_DSAE + feature]!);
  let bias = p.b_enc.toFloat32Array()[feature]! - dot(column, p.b_dec.toFloat32Array());
  if (s.input !== 'residual') bias += dot(column, weightOrZeros(s, `blocks.${layer}.ln2.b`, d));
  return bias;
}

/**
 * The definition of a head's contribution, from the cache: pattern[h, t, src] * (v_src,h W_O[h]) . v,
 * and its bias: pattern[h, t, src] * (ln1.b W_V[h] + b_V[h]) W_O[h] . v (0 on processed models).
 */
function headTerms(s: Setup, v: Float32Array, layer: number, t: number, head: number, src: number): { contrib: number; bias: number } {
  const { dModel: d, nHeads: H } = s.model.config;
  const dh = d / H;
  const WO = s.model.weight(`blocks.${layer}.attn.W_O`).toFloat32Array(); // [H, dh, d]
  const WV = s.model.weight(`blocks.${layer}.attn.W_V`).toFloat32Array(); // [H, d, dh]
  const bV = s.model.weight(`blocks.${layer}.attn.b_V`).toFloat32Array(); // [H, dh]
  const out = Float32Array.from({ length: dh }, (_, j) => dot(WO.subarray((head * dh + j) * d, (head * dh + j + 1) * d), v)); // W_O[h] v
  const value = s.cache[`blocks.${layer}.attn.hook_v`]!.toFloat32Array().subarray((src * H + head) * dh, (src * H + head + 1) * dh);
  const pattern = s.cache[`blocks.${layer}.attn.hook_pattern`]!.toFloat32Array()[(head * s.tokens.length + t) * s.tokens.length + src]!;
  const ln1b = weightOrZeros(s, `blocks.${layer}.ln1.b`, d);
  const lnTerm = Array.from({ length: dh }, (_, j) => Array.from({ length: d }, (_, i) => ln1b[i]! * WV[(head * d + i) * dh + j]!).reduce((a, b) => a + b, 0));
  return {
    contrib: pattern * dot(value, out),
    bias: pattern * (dot(lnTerm, out) + dot(bV.subarray(head * dh, (head + 1) * dh), out)),
  };
}

/** The complete decomposition of v read at (layer, sublayer, t), without the root's own bias. */
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

const GPT2: RandomModelSpec = { arch: 'gpt2', nLayers: 3, dModel: 32, nHeads: 4, vocabSize: 300, nCtx: 32, std: 0.2 };
const NEOX: RandomModelSpec = { arch: 'gpt_neox', nLayers: 3, dModel: 32, nHeads: 4, vocabSize: 300, nCtx: 32, std: 0.2 };

describe.each([
  { name: 'gpt2, processed, ln2.hook_normalized', spec: GPT2, processing: 'transformerlens' as Processing, input: 'ln2' as FixtureInput },
  { name: 'neox parallel, processed, ln2.hook_normalized', spec: NEOX, processing: 'transformerlens' as Processing, input: 'ln2' as FixtureInput },
  { name: 'gpt2, raw, ln2.hook_normalized', spec: GPT2, processing: 'none' as Processing, input: 'ln2' as FixtureInput },
  { name: 'gpt2, raw, hook_resid_mid', spec: GPT2, processing: 'none' as Processing, input: 'residual' as FixtureInput },
  { name: 'gpt2, processed, hook_resid_mid', spec: GPT2, processing: 'transformerlens' as Processing, input: 'residual' as FixtureInput },
  { name: 'gpt2, raw, mlp.hook_in -> mlp.hook_out', spec: GPT2, processing: 'none' as Processing, input: 'mlp.hook_in' as FixtureInput },
  { name: 'neox parallel, raw, hook_resid_pre', spec: NEOX, processing: 'none' as Processing, input: 'residual' as FixtureInput },
])('attribution identities ($name)', ({ spec, processing, input }) => {
  let s: Setup;
  const t = 7;
  beforeAll(async () => {
    s = await setup(spec, processing, input);
  });

  it('the raw fixture has non-trivial LayerNorm weights and biases (else the raw cases prove nothing)', () => {
    if (processing !== 'none') {
      expect(s.model.weightNames()).not.toContain('blocks.0.ln2.w');
      return;
    }
    const w = s.model.weight('blocks.1.ln2.w').toFloat32Array();
    const b = s.model.weight('blocks.1.ln1.b').toFloat32Array();
    expect(Math.max(...w.map((x) => Math.abs(x - 1)))).toBeGreaterThan(0.05);
    expect(Math.max(...b.map(Math.abs))).toBeGreaterThan(0.01);
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

  it('D2-D4: children vectors read their contribution off the residual, up to a bias computed from the weights', async () => {
    const acts = row(s.attribution.activations(2), t);
    const F = acts.findIndex((a) => a > 0.05);
    expect(F).toBeGreaterThanOrEqual(0);
    const r = s.attribution.featureRoot(2, F, t);
    expect(r.contrib).toBeCloseTo(acts[F]!, 5);
    expect(r.sublayer).toBe(s.attribution.mlpInput);
    // D7 (and its raw form): the root reads the residual exactly: vector . resid + bias = activation.
    expectRel(r.bias, expectedFeatureBias(s, 2, F), 'root bias');
    expectRel(dot(r.vector.toFloat32Array(), row(s.attribution.residual(2, r.sublayer), t)) + r.bias, acts[F]!, 'root identity');
    const kids = await s.attribution.children(r, 1000, { ignoreBos: false }); // every candidate
    expect(kids.some((k) => k.kind === 'feature')).toBe(true);
    expect(kids.some((k) => k.kind === 'attention')).toBe(true);
    expect(kids.filter((k) => k.kind === 'embedding')).toHaveLength(1);
    let features = 0;
    for (const k of kids) {
      const resid = row(s.attribution.residual(k.layer, k.sublayer), k.position);
      const read = dot(k.vector.toFloat32Array(), resid);
      if (k.kind === 'attention') {
        // D3: the definition from the cache, and vector . resid_pre[src] + bias = contrib.
        const expected = headTerms(s, r.vector.toFloat32Array(), k.layer, t, k.head!, k.position);
        expectRel(k.contrib, expected.contrib, `D3 contrib attn${k.layer}.h${k.head}@${k.position}`);
        expectRel(k.bias, expected.bias, `D3 bias attn${k.layer}.h${k.head}@${k.position}`);
        expectRel(read + k.bias, k.contrib, `D3 attn${k.layer}.h${k.head}@${k.position}`);
      }
      if (k.kind === 'feature') {
        // D2: contrib = (W_dec[i] . v) z_i; for an active feature, vector . resid + bias = contrib,
        // the bias being (W_dec[i] . v) times the feature's own bias.
        const p = s.attribution.transcoders.get(k.layer)!.parameters();
        const g = dot(row(p.W_dec, k.feature!), r.vector.toFloat32Array());
        const z = row(s.attribution.activations(k.layer), t)[k.feature!]!;
        expectRel(k.contrib, g * z, 'D2 contrib');
        if (z > 0) {
          expectRel(k.bias, g * expectedFeatureBias(s, k.layer, k.feature!), 'D2 bias');
          expectRel(read + k.bias, k.contrib, 'D2 vector');
          features++;
        }
      }
      if (k.kind === 'embedding') {
        // D4: token + position embedding.
        const emb = Float32Array.from(row(s.model.weight('embed.W_E'), s.tokens[t]!));
        if (spec.arch === 'gpt2') row(s.model.weight('pos_embed.W_pos'), t).forEach((x, i) => (emb[i]! += x));
        expectRel(k.contrib, dot(emb, r.vector.toFloat32Array()), 'D4');
        expect(k.bias).toBe(0);
      }
    }
    expect(features).toBeGreaterThan(0);
    // Children are causal: attention sources at or before t, earlier layers only.
    for (const k of kids) {
      expect(k.position).toBeLessThanOrEqual(t);
      if (k.kind === 'feature') expect(k.layer).toBeLessThan(2);
      if (k.kind === 'attention') expect(k.layer).toBeLessThanOrEqual(s.attribution.mlpInput === 'resid_mid' ? 2 : 1);
    }
    // Sorted by contribution.
    expect(kids.map((k) => k.contrib)).toEqual([...kids.map((k) => k.contrib)].sort((a, b) => b - a));
  });

  it('D6: the complete decomposition reproduces a feature activation', async () => {
    const L = 2;
    const acts = row(s.attribution.activations(L), t);
    let checked = 0;
    for (let F = 0; F < acts.length && checked < 5; F++) {
      if (acts[F]! <= 0.05) continue;
      const root = s.attribution.featureRoot(L, F, t);
      const total = (await decompose(s, root.vector, L, root.sublayer, t)) + expectedFeatureBias(s, L, F);
      expectRel(total, acts[F]!, `feature ${F}`);
      checked++;
    }
    expect(checked).toBeGreaterThan(0);
  });

  it('D6: the complete decomposition reproduces a logit difference (the logit root read through ln_final)', async () => {
    const V = spec.vocabSize;
    const d = spec.dModel;
    const a = 5;
    const b = 77;
    const logits = row(Tensor.from(s.logits.toFloat32Array(), [s.tokens.length, V]), t);
    const root = s.attribution.logitRoot(t, a, b);
    expectRel(root.contrib, logits[a]! - logits[b]!, 'logit root value');
    const WU = s.model.weight('unembed.W_U').toFloat32Array(); // [d, V]
    const bU = s.model.weight('unembed.b_U').toFloat32Array();
    const delta = Float32Array.from({ length: d }, (_, i) => WU[i * V + a]! - WU[i * V + b]!);
    const bias = dot(delta, weightOrZeros(s, 'ln_final.b', d)) + bU[a]! - bU[b]!;
    expectRel(root.bias, bias, 'logit root bias');
    const total = (await decompose(s, root.vector, spec.nLayers - 1, 'resid_post', t)) + bias;
    expectRel(total, logits[a]! - logits[b]!, 'logit difference');
    if (processing === 'transformerlens') {
      // The paper's root: (W_U[:, a] - W_U[:, b]) / scale, no centring on a processed model.
      const ln = s.attribution.lnConstant(spec.nLayers, t);
      root.vector.toFloat32Array().forEach((x, i) => expectRel(x, delta[i]! * ln, `root vector ${i}`));
    }
  });

  it('names what is wrong with a bad root', () => {
    expect(() => s.attribution.logitRoot(t, spec.vocabSize)).toThrow(/token id 300 is out of range/);
    expect(() => s.attribution.logitRoot(99, 1)).toThrow(/position 99 is outside the prompt/);
    expect(() => s.attribution.featureRoot(2, CIRCUIT_DSAE, t)).toThrow(/feature 48 is out of range/);
    expect(() => s.attribution.featureBias(5, 0)).toThrow(/no transcoder for layer 5/);
  });
});

/**
 * The paper's attribution on the modern families (RMSNorm without centring, grouped-query attention with
 * repeated value heads, Gemma's post-attention norm taken back through its frozen scale and gain): the
 * complete decomposition of a feature activation and of a logit difference (Gemma: before its final
 * soft-cap, undone here with atanh), 1e-4 relative.
 */
describe.each([
  { name: 'llama raw, mlp.hook_in', preset: 'tiny-llama', input: 'mlp.hook_in' as FixtureInput },
  { name: 'llama raw, hook_resid_mid', preset: 'tiny-llama', input: 'residual' as FixtureInput },
  { name: 'qwen3 raw, mlp.hook_in', preset: 'tiny-qwen3', input: 'mlp.hook_in' as FixtureInput },
  { name: 'gemma2 raw, mlp.hook_in', preset: 'tiny-gemma2', input: 'mlp.hook_in' as FixtureInput },
  { name: 'gemma3 raw, hook_resid_mid', preset: 'tiny-gemma3', input: 'residual' as FixtureInput },
])('attribution on $name', ({ preset, input }) => {
  let s: Setup;
  const t = 7;
  beforeAll(async () => {
    s = await setup({ ...PRESETS[preset]!, nLayers: 3, std: 0.2 }, 'none', input);
  });

  it('D6: the complete decomposition reproduces a feature activation and a logit difference', async () => {
    const L = 2;
    const acts = row(s.attribution.activations(L), t);
    let checked = 0;
    for (let F = 0; F < acts.length && checked < 4; F++) {
      if (acts[F]! <= 0.05) continue;
      const root = s.attribution.featureRoot(L, F, t);
      expectRel((await decompose(s, root.vector, L, root.sublayer, t)) + expectedFeatureBias(s, L, F), acts[F]!, `feature ${F}`);
      checked++;
    }
    expect(checked).toBeGreaterThan(0);
    const V = s.model.config.vocabSize;
    const cap = s.model.config.finalSoftcap;
    const pre = (x: number) => (cap > 0 ? cap * Math.atanh(x / cap) : x);
    const logits = row(Tensor.from(s.logits.toFloat32Array(), [s.tokens.length, V]), t);
    const root = s.attribution.logitRoot(t, 5, 77);
    expectRel(root.contrib, pre(logits[5]!) - pre(logits[77]!), 'logit root value');
    expectRel((await decompose(s, root.vector, s.model.config.nLayers - 1, 'resid_post', t)) + root.bias, pre(logits[5]!) - pre(logits[77]!), 'logit difference');
  });
});
