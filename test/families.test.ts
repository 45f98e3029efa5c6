/**
 * The modern families (Llama, Mistral, Qwen2, Qwen3, Gemma-2, Gemma-3) against an independent
 * plain-PyTorch forward (test/reference/hf_modern_reference.py, written separately from the Hugging
 * Face model definitions): logits, loss and every hook incl. GQA k/v, the attention pattern and
 * mlp.hook_in/hook_out, on random checkpoints in exact Hugging Face layout. Prompts (20 tokens) are
 * longer than the sliding windows (8) and than the Llama-3 RoPE scaling's original context (16), so
 * windows and scaled frequencies are exercised. Tolerance (float32): max |ours - reference| <=
 * 1e-4 x max(1, max |reference|); bfloat16 compute: 3% of the logit scale against the reference's
 * own bfloat16 forward (and 10% against float32).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel } from '../lib/index.js';
import { PRESETS, type RandomModelSpec } from '../lib/models/random.js';
import { DEVICE, makeTempModel } from './helpers/fixtures.js';
import { logSoftmaxRows, maxDiff, referenceForward } from './helpers/reference.js';

const F32_TOL = 1e-4;
const T = 20;

function tokenBatch(vocab: number, B: number, length: number, seed: number): number[][] {
  let s = seed + 7;
  const next = () => (s = (s * 1103515245 + 12345) % 2147483648);
  return Array.from({ length: B }, () => Array.from({ length }, () => next() % vocab));
}

/** Scores: the masked (-inf) entries must coincide; the others compared as usual. */
function maskedScoresDiff(ours: Float32Array, ref: Float32Array): { diff: number; scale: number } {
  let masked = 0;
  for (let i = 0; i < ref.length; i++) {
    if (ref[i] === -Infinity || ours[i] === -Infinity) {
      expect(ours[i], `masked score ${i}`).toBe(ref[i]);
      ours[i] = ref[i] = 0;
      masked++;
    }
  }
  expect(masked).toBeGreaterThan(0);
  return maxDiff(ours, ref);
}

function preset(name: string, extra: Partial<RandomModelSpec> = {}): RandomModelSpec {
  const base = PRESETS[name]!;
  return { ...base, std: 0.15, ...extra, configFields: { ...base.configFields, ...extra.configFields } };
}

interface Variant {
  name: string;
  spec: RandomModelSpec;
}

export const FAMILY_VARIANTS: Variant[] = [
  { name: 'llama (GQA, llama3 RoPE scaling, untied)', spec: preset('tiny-llama') },
  { name: 'llama with attention and MLP biases, linear RoPE scaling, 3 shards', spec: preset('tiny-llama', { seed: 1, shards: 3, configFields: { attention_bias: true, mlp_bias: true, rope_scaling: { rope_type: 'linear', factor: 2 } } }) },
  { name: 'llama 3.2 style: tied, no scaling, head_dim given', spec: preset('tiny-llama', { seed: 2, dHead: 8, configFields: { tie_word_embeddings: true, rope_scaling: null } }) },
  { name: 'mistral (sliding window 8)', spec: preset('tiny-mistral', { seed: 3 }) },
  { name: 'qwen2 (q/k/v biases, sliding window on layers >= 1)', spec: preset('tiny-qwen2', { seed: 4, configFields: { use_sliding_window: true, sliding_window: 6, max_window_layers: 1 } }) },
  { name: 'qwen3 (q/k norms, head_dim 32)', spec: preset('tiny-qwen3', { seed: 5 }) },
  { name: 'gemma2 (soft-capping, alternating sliding window)', spec: preset('tiny-gemma2', { seed: 6, configFields: { attn_logit_softcapping: 0.5, final_logit_softcapping: 2 } }) },
  { name: 'gemma3 (q/k norms, local/global RoPE, linear scaling)', spec: preset('tiny-gemma3', { seed: 7 }) },
  { name: 'llama bf16 weights', spec: preset('tiny-llama', { seed: 8, dtype: 'BF16' }) },
];

describe.each(FAMILY_VARIANTS)('forward pass matches the PyTorch reference: $name', ({ spec }) => {
  it('logits, loss and every hook agree (float32)', async () => {
    const dir = makeTempModel(spec);
    const tokens = tokenBatch(spec.vocabSize, 2, T, spec.seed ?? 0);
    const ref = await referenceForward(dir, tokens);
    const model = await loadModel(dir, { device: DEVICE });
    const hookNames = Object.keys(ref).filter((k) => k !== 'logits' && k !== 'loss');
    expect(hookNames.length).toBeGreaterThan(40);
    for (const h of ['blocks.0.attn.hook_k', 'blocks.1.attn.hook_pattern', 'blocks.1.mlp.hook_in', 'blocks.1.mlp.hook_out', 'blocks.0.mlp.hook_pre_linear']) {
      expect(hookNames).toContain(h);
    }
    expect(model.hookNames).toEqual(expect.arrayContaining(hookNames));

    const out = await model.run(tokens, { cache: hookNames });
    const { diff, scale } = maxDiff(out.logits!, ref.logits!);
    expect(scale).toBeGreaterThan(0.1);
    expect(diff, `logits: max diff ${diff} (scale ${scale})`).toBeLessThanOrEqual(F32_TOL * Math.max(1, scale));
    for (const name of hookNames) {
      expect(out.cache[name]!.shape, name).toEqual(ref[name]!.shape);
      const d = name.endsWith('hook_attn_scores') ? maskedScoresDiff(out.cache[name]!.toFloat32Array(), ref[name]!.toFloat32Array()) : maxDiff(out.cache[name]!, ref[name]!);
      expect(d.diff, `${name}: max diff ${d.diff} (scale ${d.scale})`).toBeLessThanOrEqual(F32_TOL * Math.max(1, d.scale));
    }
    // GQA: k/v hooks carry the key/value heads, q the query heads.
    expect(out.cache['blocks.0.attn.hook_k']!.shape).toEqual([2, T, spec.nKvHeads ?? spec.nHeads, model.config.dHead]);
    expect(out.cache['blocks.0.attn.hook_q']!.shape).toEqual([2, T, spec.nHeads, model.config.dHead]);
    // Without hooks: same logits.
    const plain = await model.run(tokens);
    expect(maxDiff(plain.logits!, ref.logits!).diff).toBeLessThanOrEqual(F32_TOL * Math.max(1, scale));
    const loss = await model.loss(tokens);
    expect(Math.abs(loss - ref.loss!.item())).toBeLessThanOrEqual(1e-4);
    model.dispose();
  });
});

describe('bfloat16 compute on the modern families', () => {
  it.each(['tiny-llama', 'tiny-gemma2'])('%s: within 3% of the reference bf16 forward and 10% of float32', async (name) => {
    const spec = preset(name, { seed: 11, dtype: 'BF16' });
    const dir = makeTempModel(spec);
    const tokens = tokenBatch(spec.vocabSize, 2, T, 11);
    const [ref16, ref32] = [await referenceForward(dir, tokens, 'bfloat16'), await referenceForward(dir, tokens)];
    const model = await loadModel(dir, { device: DEVICE, dtype: 'bfloat16' });
    const out = await model.run(tokens);
    const logits = (await out.logits!.to({ dtype: 'float32' })).toFloat32Array();
    const a = maxDiff(logits, ref16.logits!);
    const b = maxDiff(logits, ref32.logits!);
    expect(a.diff, `vs bf16 reference: ${a.diff} of ${a.scale}`).toBeLessThanOrEqual(0.03 * Math.max(1, a.scale));
    expect(b.diff, `vs float32 reference: ${b.diff} of ${b.scale}`).toBeLessThanOrEqual(0.1 * Math.max(1, b.scale));
    model.dispose();
  });
});

describe('TransformerLens processing of RMSNorm models', () => {
  it.each(['tiny-llama', 'tiny-qwen2', 'tiny-gemma2', 'tiny-gemma3'])('%s: log-probs unchanged, norms weight-free', async (name) => {
    const spec = preset(name, { seed: 12 });
    const dir = makeTempModel(spec);
    const tokens = tokenBatch(spec.vocabSize, 2, T, 12);
    const raw = await loadModel(dir, { device: DEVICE, processing: 'none' });
    const tl = await loadModel(dir, { device: DEVICE, processing: 'transformerlens' });
    expect(raw.weightNames()).toContain('blocks.0.ln2.w');
    expect(tl.weightNames()).not.toContain('blocks.0.ln2.w');
    expect(tl.weightNames()).not.toContain('ln_final.w');
    const [a, b] = [await raw.run(tokens), await tl.run(tokens)];
    const V = spec.vocabSize;
    const d = maxDiff(logSoftmaxRows(b.logits!.toFloat32Array(), V), logSoftmaxRows(a.logits!.toFloat32Array(), V));
    expect(d.diff, `log-prob diff ${d.diff}`).toBeLessThanOrEqual(1e-4 * Math.max(1, d.scale));
    raw.dispose();
    tl.dispose();
  });
});

describe('config.json errors name the field', () => {
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['unknown rope_type', { rope_scaling: { rope_type: 'yarn', factor: 2 } }, /rope_scaling\.rope_type.*yarn/],
    ['heads that do not divide', { num_key_value_heads: 3 }, /num_key_value_heads.*3.*does not divide/],
    ['llama3 without its parameters', { rope_scaling: { rope_type: 'llama3', factor: 8 } }, /rope_scaling\.low_freq_factor/],
    ['an unsupported activation', { hidden_act: 'gelu_fancy' }, /hidden_act.*gelu_fancy/],
    ['a bad layer type', { layer_types: ['full_attention', 'chunked_attention'] }, /layer_types\[1\]/],
  ];
  it.each(cases)('%s', async (_, patch, message) => {
    const dir = makeTempModel(preset('tiny-llama', { seed: 13 }));
    const file = join(dir, 'config.json');
    writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, 'utf8')), ...patch }));
    await expect(loadModel(dir, { device: DEVICE })).rejects.toThrow(message);
  });

  it('a missing or an unexpected tensor is named', async () => {
    const { readSafetensors, writeSafetensors } = await import('../lib/io/safetensors.js');
    const dir = makeTempModel(preset('tiny-qwen3', { seed: 14 }));
    const file = join(dir, 'model.safetensors');
    const { tensors } = await readSafetensors(file);
    const raw = Object.fromEntries(Object.entries(tensors).map(([k, t]) => [k, { dtype: 'F32' as const, shape: t.shape, bytes: new Uint8Array(t.toFloat32Array().buffer) }]));
    const { ['model.layers.1.self_attn.k_norm.weight']: _dropped, ...rest } = raw;
    writeSafetensors(file, rest);
    await expect(loadModel(dir, { device: DEVICE })).rejects.toThrow(/missing tensor 'model\.layers\.1\.self_attn\.k_norm\.weight'/);
    writeSafetensors(file, { ...raw, 'model.layers.0.self_attn.extra.weight': raw['model.norm.weight']! });
    await expect(loadModel(dir, { device: DEVICE })).rejects.toThrow(/unexpected tensor 'model\.layers\.0\.self_attn\.extra\.weight'/);
  });
});
