/**
 * MLP splicing: replacing a layer's MLP output (hook_mlp_out) by zero, a mean, a fixed value or a
 * callback. Checked against identities and a hand computation of the final LayerNormPre + unembedding
 * in JS (on a TransformerLens-processed model, where ln_final has no affine).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { loadModel, Tensor, type Model } from '../lib/index.js';
import { DEVICE, makeTempModel, TINY_GPT2 } from './helpers/fixtures.js';
import { layerNormPre, matmulRows, maxDiff } from './helpers/reference.js';

const tokens = [
  [5, 17, 200, 42, 9, 250, 3, 77],
  [299, 0, 1, 150, 151, 152, 8, 8],
];
const last = TINY_GPT2.nLayers - 1;
const d = TINY_GPT2.dModel;
const V = TINY_GPT2.vocabSize;

let model: Model;
let clean: Awaited<ReturnType<Model['run']>>;

/** Logits a processed model gives when the last block's output is `residMid + mlpOut`. */
function logitsFromFinalResidual(resid: Float32Array): Float32Array {
  const normalized = layerNormPre(resid, d, model.config.lnEps);
  return matmulRows(normalized, d, model.weight('unembed.W_U').toFloat32Array(), V, model.weight('unembed.b_U').toFloat32Array());
}

beforeAll(async () => {
  model = await loadModel(makeTempModel(TINY_GPT2), { processing: 'transformerlens', device: DEVICE });
  clean = await model.run(tokens, { cache: ['blocks.*.hook_mlp_out', 'blocks.*.hook_resid_mid', 'blocks.*.ln2.hook_normalized'] });
});

describe('replaceMlp', () => {
  it('zero-ablation of the last MLP gives unembed(LN(resid_mid))', async () => {
    const out = await model.run(tokens, { replaceMlp: { [last]: 'zero' }, cache: [`blocks.${last}.hook_mlp_out`] });
    const expected = logitsFromFinalResidual(clean.cache[`blocks.${last}.hook_resid_mid`]!.toFloat32Array());
    const { diff, scale } = maxDiff(out.logits!, expected);
    expect(diff).toBeLessThanOrEqual(1e-4 * Math.max(1, scale));
    expect(Math.max(...out.cache[`blocks.${last}.hook_mlp_out`]!.toFloat32Array().map(Math.abs))).toBe(0);
  });

  it("'mean' replaces the output by its mean over the batch's positions", async () => {
    const mlpOut = clean.cache[`blocks.${last}.hook_mlp_out`]!.toFloat32Array();
    const rows = mlpOut.length / d;
    const mean = new Float32Array(d);
    for (let r = 0; r < rows; r++) for (let i = 0; i < d; i++) mean[i]! += mlpOut[r * d + i]! / rows;
    const resid = clean.cache[`blocks.${last}.hook_resid_mid`]!.toFloat32Array().map((v, i) => v + mean[i % d]!);
    const expected = logitsFromFinalResidual(resid);
    const out = await model.run(tokens, { replaceMlp: { [last]: 'mean' } });
    expect(maxDiff(out.logits!, expected).diff).toBeLessThanOrEqual(1e-4 * Math.max(1, maxDiff(out.logits!, expected).scale));
    const given = await model.run(tokens, { replaceMlp: { [last]: { mean: Tensor.from(mean, [d]) } } });
    expect(maxDiff(given.logits!, out.logits!).diff).toBeLessThanOrEqual(1e-5);
  });

  it('a fixed value equal to the clean output reproduces the clean logits (any layer)', async () => {
    const out = await model.run(tokens, { replaceMlp: { 0: { value: clean.cache['blocks.0.hook_mlp_out']! } } });
    expect(maxDiff(out.logits!, clean.logits!).diff).toBeLessThanOrEqual(1e-5);
  });

  it('a callback receives ln2.hook_normalized and the original output; its result is spliced in', async () => {
    const seen: { layer: number; input: Float32Array; original: Float32Array }[] = [];
    const out = await model.run(tokens, {
      replaceMlp: {
        0: (input, original, layer) => {
          seen.push({ layer, input: input.toFloat32Array(), original: original.toFloat32Array() });
          return original;
        },
        [last]: async () => Tensor.from(new Float32Array(tokens.length * tokens[0]!.length * d), [tokens.length, tokens[0]!.length, d]),
      },
    });
    expect(seen).toHaveLength(1);
    expect(seen[0]!.layer).toBe(0);
    expect(maxDiff(seen[0]!.input, clean.cache['blocks.0.ln2.hook_normalized']!.toFloat32Array()).diff).toBe(0);
    expect(maxDiff(seen[0]!.original, clean.cache['blocks.0.hook_mlp_out']!.toFloat32Array()).diff).toBe(0);
    const ablated = await model.run(tokens, { replaceMlp: { [last]: 'zero' } });
    expect(maxDiff(out.logits!, ablated.logits!).diff).toBeLessThanOrEqual(1e-5);
  });

  it('ablation changes the loss, and the loss accepts the same replacements', async () => {
    const base = await model.loss(tokens);
    const ablated = await model.loss(tokens, { replaceMlp: { 0: 'zero' } });
    expect(ablated).not.toBeCloseTo(base, 3);
    const viaValue = await model.loss(tokens, { replaceMlp: { 0: { value: Tensor.from(new Float32Array(d), [d]) } } });
    expect(viaValue).toBeCloseTo(ablated, 5);
  });
});
