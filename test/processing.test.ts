/**
 * TransformerLens weight processing (fold_ln, center_writing_weights, center_unembed,
 * fold_value_biases). Checked three ways:
 * - identities of the processed model (mean-zero residual stream, LayerNormPre formula, weights);
 * - unchanged next-token log-probabilities;
 * - against the independent reference run on the *unprocessed* checkpoint: processing only
 *   re-centres what is written to the residual stream, so processed activations are the
 *   reference's with the d_model mean removed, and attention patterns / MLP pre-activations
 *   are unchanged.
 * Tolerance: 1e-4 x max(1, scale) in float32.
 */
import { describe, expect, it } from 'vitest';
import { loadModel, type Model } from '../lib/index.js';
import { DEVICE, makeTempModel, TINY_GPT2, TINY_NEOX } from './helpers/fixtures.js';
import { centerRows, layerNormPre, logSoftmaxRows, mapRows, maxDiff, referenceForward } from './helpers/reference.js';

const TOL = 1e-4;
const tokens = [
  [5, 17, 200, 42, 9, 250, 3, 77, 120, 64, 33],
  [299, 0, 1, 150, 151, 152, 8, 8, 8, 90, 10],
];

function expectClose(a: Float32Array, b: Float32Array, what: string): void {
  const { diff, scale } = maxDiff(a, b);
  expect(diff, `${what}: max diff ${diff} (scale ${scale})`).toBeLessThanOrEqual(TOL * Math.max(1, scale));
}

function maxAbsRowMean(data: Float32Array, d: number): number {
  let worst = 0;
  for (let i = 0; i < data.length; i += d) {
    let sum = 0;
    for (let j = 0; j < d; j++) sum += data[i + j]!;
    worst = Math.max(worst, Math.abs(sum / d));
  }
  return worst;
}

describe.each([
  { name: 'gpt2', spec: TINY_GPT2 },
  { name: 'neox parallel', spec: TINY_NEOX },
  { name: 'neox sequential', spec: { ...TINY_NEOX, parallelResidual: false } },
])('processing: transformerlens ($name)', ({ spec }) => {
  let dir: string;
  let processed: Model;
  let raw: Model;

  it('loads both ways', async () => {
    dir = makeTempModel(spec);
    processed = await loadModel(dir, { processing: 'transformerlens', device: DEVICE });
    raw = await loadModel(dir, { processing: 'none', device: DEVICE });
    expect(processed.processing).toBe('transformerlens');
  });

  it('leaves next-token log-probabilities unchanged', async () => {
    const V = spec.vocabSize;
    const a = logSoftmaxRows((await processed.run(tokens)).logits!.toFloat32Array(), V);
    const b = logSoftmaxRows((await raw.run(tokens)).logits!.toFloat32Array(), V);
    expectClose(a, b, 'log-probs');
    expect(Math.abs((await processed.loss(tokens)) - (await raw.loss(tokens)))).toBeLessThan(1e-4);
  });

  it('makes the residual stream mean-zero and LayerNorms parameter-free', async () => {
    const d = spec.dModel;
    const cache = (await processed.run(tokens, { cache: ['blocks.*.hook_resid_*', 'blocks.*.hook_*_out', 'hook_embed', 'hook_pos_embed'].filter((p) => p !== 'hook_pos_embed' || spec.arch === 'gpt2') })).cache;
    expect(Object.keys(cache).length).toBeGreaterThan(6);
    for (const [name, t] of Object.entries(cache)) {
      const data = t.toFloat32Array();
      const scale = Math.max(...data.map(Math.abs));
      expect(maxAbsRowMean(data, d), name).toBeLessThanOrEqual(1e-5 * Math.max(1, scale));
    }
    const names = processed.weightNames();
    expect(names.some((n) => /ln\d\.w|ln_final\.w/.test(n))).toBe(false);
    expect(raw.weightNames()).toContain('blocks.0.ln1.w');
  });

  it('ln2.hook_normalized = x / sqrt(mean(x^2) + eps) of the MLP input, and hook_scale matches', async () => {
    const d = spec.dModel;
    const eps = processed.config.lnEps;
    const input = processed.config.parallelResidual ? 'hook_resid_pre' : 'hook_resid_mid';
    const { cache } = await processed.run(tokens, { cache: [`blocks.1.${input}`, 'blocks.1.ln2.hook_normalized', 'blocks.1.ln2.hook_scale'] });
    const x = cache[`blocks.1.${input}`]!.toFloat32Array();
    const expected = mapRows(x, d, (row) => {
      const s = Math.sqrt(row.reduce((a, v) => a + v * v, 0) / d + eps);
      return Array.from(row, (v) => v / s);
    });
    expectClose(cache['blocks.1.ln2.hook_normalized']!.toFloat32Array(), expected, 'ln2.hook_normalized');
    const scales = new Float32Array(x.length / d).map((_, i) => Math.sqrt(x.subarray(i * d, (i + 1) * d).reduce((a, v) => a + v * v, 0) / d + eps));
    expectClose(cache['blocks.1.ln2.hook_scale']!.toFloat32Array(), scales, 'ln2.hook_scale');
  });

  it('agrees with the independent reference on the unprocessed checkpoint, up to re-centring', async () => {
    const d = spec.dModel;
    const ref = await referenceForward(dir, tokens);
    const { cache } = await processed.run(tokens, { cache: ['*'] });
    let compared = 0;
    for (const name of Object.keys(cache)) {
      const ours = cache[name]!.toFloat32Array();
      compared++;
      if (/hook_resid_|hook_attn_out|hook_mlp_out|hook_embed|hook_pos_embed/.test(name)) {
        expectClose(ours, centerRows(ref[name]!.toFloat32Array(), d), name);
      } else if (/attn\.hook_(q|k|pattern)$|mlp\.hook_(pre|post)|hook_scale/.test(name)) {
        // Folding moves LayerNorm gains and biases into Q/K and W_in: these are unchanged.
        expectClose(ours, ref[name]!.toFloat32Array(), name);
      } else if (/ln\d\.hook_normalized|ln_final\.hook_normalized/.test(name)) {
        // LayerNormPre output = the reference LayerNorm's input, centred and scaled, without the affine.
        const input = name === 'ln_final.hook_normalized'
          ? `blocks.${spec.nLayers - 1}.hook_resid_post`
          : name.replace(/ln1\.hook_normalized/, 'hook_resid_pre').replace(/ln2\.hook_normalized/, processed.config.parallelResidual ? 'hook_resid_pre' : 'hook_resid_mid');
        expectClose(ours, layerNormPre(ref[input]!.toFloat32Array(), d, processed.config.lnEps), name);
      } else {
        compared--; // hook_v / hook_z lose the folded value bias; rotary and scores hooks have no reference
      }
    }
    expect(compared).toBeGreaterThanOrEqual(14 * spec.nLayers);
  });

  it('folds value biases, centres the unembedding and the embeddings', () => {
    const H = processed.config.nHeads;
    for (let l = 0; l < spec.nLayers; l++) {
      expect(Math.max(...processed.weight(`blocks.${l}.attn.b_V`).toFloat32Array().map(Math.abs))).toBe(0);
    }
    const V = spec.vocabSize;
    const d = spec.dModel;
    // W_U [d, V]: each row mean-zero over the vocabulary.
    expect(maxAbsRowMean(processed.weight('unembed.W_U').toFloat32Array(), V)).toBeLessThan(1e-6);
    expect(maxAbsRowMean(processed.weight('embed.W_E').toFloat32Array(), d)).toBeLessThan(1e-6);
    expect(processed.weight('blocks.0.attn.W_Q').shape).toEqual([H, d, d / H]);
  });
});
