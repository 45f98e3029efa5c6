/**
 * The forward pass against an independent plain-PyTorch implementation (test/reference/hf_reference.py,
 * written separately from the Hugging Face definitions): logits, loss and every hook, for GPT-2 and
 * GPT-NeoX variants. Tolerance (float32): max |ours - reference| <= 1e-4 x max(1, max |reference|).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel } from '../lib/index.js';
import type { RandomModelSpec } from '../lib/models/random.js';
import { DEVICE, makeTempModel, TINY_GPT2, TINY_NEOX } from './helpers/fixtures.js';
import { maxDiff, referenceForward } from './helpers/reference.js';

const F32_TOL = 1e-4;

function tokenBatch(vocab: number, B: number, T: number, seed: number): number[][] {
  let s = seed;
  const next = () => (s = (s * 1103515245 + 12345) % 2147483648);
  return Array.from({ length: B }, () => Array.from({ length: T }, () => next() % vocab));
}

interface Variant {
  name: string;
  spec: RandomModelSpec;
  /** Edits applied to config.json after generation. */
  configPatch?: Record<string, unknown>;
}

const VARIANTS: Variant[] = [
  { name: 'gpt2', spec: TINY_GPT2 },
  { name: 'gpt2 prefixed keys, 3 shards, exact gelu, inverse-layer attention scaling', spec: { ...TINY_GPT2, prefixed: true, shards: 3, activation: 'gelu', seed: 1 }, configPatch: { scale_attn_by_inverse_layer_idx: true } },
  { name: 'gpt2 relu, n_inner set', spec: { ...TINY_GPT2, activation: 'relu', dMlp: 40, seed: 2 } },
  { name: 'neox parallel residual', spec: TINY_NEOX },
  { name: 'neox sequential residual', spec: { ...TINY_NEOX, parallelResidual: false, seed: 3 } },
  { name: 'neox full rotary, gelu_new, 2 shards', spec: { ...TINY_NEOX, rotaryPct: 1, activation: 'gelu_new', shards: 2, seed: 4 } },
  { name: 'gpt2 bf16 weights', spec: { ...TINY_GPT2, dtype: 'BF16', seed: 5 } },
  { name: 'neox f16 weights', spec: { ...TINY_NEOX, dtype: 'F16', seed: 6 } },
];

describe.each(VARIANTS)('forward pass matches the PyTorch reference: $name', ({ spec, configPatch }) => {
  it('logits, loss and every hook agree', async () => {
    const dir = makeTempModel(spec);
    if (configPatch) {
      const file = join(dir, 'config.json');
      writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, 'utf8')), ...configPatch }));
    }
    const tokens = tokenBatch(spec.vocabSize, 3, 17, spec.seed ?? 0);
    const ref = await referenceForward(dir, tokens);
    const model = await loadModel(dir, { device: DEVICE });
    const hookNames = Object.keys(ref).filter((k) => k !== 'logits' && k !== 'loss');
    expect(hookNames.length).toBeGreaterThan(20);

    const out = await model.run(tokens, { cache: hookNames });
    const { diff, scale } = maxDiff(out.logits!, ref.logits!);
    expect(scale).toBeGreaterThan(0.1);
    expect(diff).toBeLessThanOrEqual(F32_TOL * Math.max(1, scale));
    for (const name of hookNames) {
      expect(out.cache[name]!.shape, name).toEqual(ref[name]!.shape);
      const d = maxDiff(out.cache[name]!, ref[name]!);
      expect(d.diff, `${name}: max diff ${d.diff} (scale ${d.scale})`).toBeLessThanOrEqual(F32_TOL * Math.max(1, d.scale));
    }
    // Without hooks the forward takes the fused LayerNorm / attention paths: same logits.
    const plain = await model.run(tokens);
    expect(maxDiff(plain.logits!, ref.logits!).diff).toBeLessThanOrEqual(F32_TOL * Math.max(1, scale));
    expect(Object.keys(plain.cache)).toEqual([]);

    const loss = await model.loss(tokens);
    expect(Math.abs(loss - ref.loss!.item())).toBeLessThanOrEqual(1e-4);
    const perToken = await model.lossPerToken(tokens);
    expect(perToken.shape).toEqual([3, 16]);
    const values = perToken.toFloat32Array();
    expect(values.reduce((a, b) => a + b, 0) / values.length).toBeCloseTo(loss, 4);
    model.dispose();
  });
});

describe('single sequences and batches', () => {
  it('a row run alone equals the same row inside a batch; [T] input gets a batch dimension', async () => {
    const dir = makeTempModel(TINY_GPT2);
    const model = await loadModel(dir, { device: DEVICE });
    const tokens = tokenBatch(TINY_GPT2.vocabSize, 4, 9, 11);
    const batch = (await model.run(tokens)).logits!.toFloat32Array();
    const single = await model.run(tokens[2]!);
    expect(single.logits!.shape).toEqual([1, 9, TINY_GPT2.vocabSize]);
    const row = batch.subarray(2 * 9 * TINY_GPT2.vocabSize, 3 * 9 * TINY_GPT2.vocabSize);
    expect(maxDiff(single.logits!.toFloat32Array(), row).diff).toBeLessThanOrEqual(1e-5);
  });

  it('prompts are tokenised with the model convention (GPT-2 prepends BOS, NeoX does not)', async () => {
    const gpt2 = await loadModel(makeTempModel(TINY_GPT2));
    const neox = await loadModel(makeTempModel(TINY_NEOX));
    const text = 'The war lasted from the year 1732 to the year 17';
    expect(gpt2.tokenize(text)[0]).toBe(gpt2.config.bosTokenId);
    expect(neox.tokenize(text)[0]).not.toBe(neox.config.bosTokenId);
    expect(neox.tokenize(text, { prependBos: true })[0]).toBe(neox.config.bosTokenId);
    const fromText = await gpt2.run(text);
    const fromIds = await gpt2.run(gpt2.tokenize(text));
    expect(maxDiff(fromText.logits!, fromIds.logits!).diff).toBe(0);
  });
});

describe('bfloat16 compute', () => {
  it('stays close to the float32 reference (tolerance 3% of the logit scale)', async () => {
    const dir = makeTempModel(TINY_GPT2);
    const tokens = tokenBatch(TINY_GPT2.vocabSize, 2, 12, 7);
    const ref = await referenceForward(dir, tokens);
    const model = await loadModel(dir, { dtype: 'bfloat16', device: DEVICE });
    const out = await model.run(tokens);
    expect(out.logits!.dtype).toBe('bfloat16');
    const { diff, scale } = maxDiff(out.logits!, ref.logits!);
    expect(diff).toBeLessThanOrEqual(0.03 * scale);
  });
});
