/**
 * Attribution graphs (lib/graphs/attribute.ts over native/circuits/graph.cc) on random models of every
 * family with random relu / topk / jumprelu transcoders, with and without skip connections, reading
 * each kind of input hook, on raw and TransformerLens-processed models:
 *  - circuit-tracer's oracle: for sampled sources of every kind, removing the source's vector in the
 *    frozen local replacement model moves every target by exactly its column (test/reference/
 *    graph_oracle.py, an independent float64 PyTorch implementation), 1e-4 relative;
 *  - the complete decomposition: each row sums to its target's value (1e-4 relative), and target
 *    values equal independent computations: pre-activations (x - b_dec) W_enc + b_enc from the model's
 *    own hooks and the transcoder parameters, demeaned logits from the model's logits;
 *  - sparse rows (top-k) report what they drop; influence-ordered visitation under maxFeatureNodes;
 *  - the shipped model's graph file validates against the committed schema.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { attributionGraph, type AttributedGraph } from '../lib/graphs/attribute.js';
import type { SparseAdjacency } from '../lib/graphs/graph.js';
import { ReplacementModel } from '../lib/index.js';
import { readSafetensors } from '../lib/io/safetensors.js';
import { Rng } from '../lib/util/random.js';
import { graphFixture, presetSpec, type GraphFixture, type GraphFixtureSpec } from './helpers/graph-fixtures.js';
import { DEVICE, tempDir } from './helpers/fixtures.js';
import { runPython } from './helpers/reference.js';

const TOL = 1e-4;
const RELU_SKIP = { arch: 'relu' as const, skip: true };

export const GRAPH_SPECS: GraphFixtureSpec[] = [
  { name: 'gpt2 raw, ln2.hook_normalized, relu+skip / topk', model: presetSpec('tiny-gpt2'), processing: 'none', input: 'ln2', kinds: [RELU_SKIP, { arch: 'topk', skip: false }] },
  { name: 'gpt2 processed, hook_resid_mid, jumprelu / relu+skip', model: presetSpec('tiny-gpt2', { seed: 4 }), processing: 'transformerlens', input: 'residual', kinds: [{ arch: 'jumprelu', skip: false }, RELU_SKIP] },
  { name: 'neox parallel raw, hook_resid_pre, relu / topk+skip', model: presetSpec('tiny-neox'), processing: 'none', input: 'residual', kinds: [{ arch: 'relu', skip: false }, { arch: 'topk', skip: true }] },
  { name: 'llama raw, hook_resid_mid, relu+skip (GQA, llama3 RoPE)', model: presetSpec('tiny-llama'), processing: 'none', input: 'residual', kinds: [RELU_SKIP] },
  { name: 'mistral raw, mlp.hook_in, topk (sliding window)', model: presetSpec('tiny-mistral'), processing: 'none', input: 'mlp.hook_in', kinds: [{ arch: 'topk', skip: false }] },
  { name: 'qwen3 raw, mlp.hook_in, jumprelu+skip (q/k norms)', model: presetSpec('tiny-qwen3'), processing: 'none', input: 'mlp.hook_in', kinds: [{ arch: 'jumprelu', skip: true }] },
  { name: 'gemma2 raw, mlp.hook_in, jumprelu / relu+skip (sandwich norms, soft-caps)', model: presetSpec('tiny-gemma2'), processing: 'none', input: 'mlp.hook_in', kinds: [{ arch: 'jumprelu', skip: false }, RELU_SKIP] },
  { name: 'gemma3 raw, mlp.hook_in, relu+skip', model: presetSpec('tiny-gemma3'), processing: 'none', input: 'mlp.hook_in', kinds: [RELU_SKIP] },
];

const PROMPT = [1, 17, 42, 250, 9, 33, 100, 7, 58, 12, 300, 44];

function rowOf(a: SparseAdjacency, i: number): { columns: Int32Array; values: Float32Array } {
  return { columns: a.columns.subarray(a.rowStart[i]!, a.rowStart[i + 1]!), values: a.values.subarray(a.rowStart[i]!, a.rowStart[i + 1]!) };
}

function expectRel(actual: number, expected: number, what: string, tol = TOL): void {
  expect(Math.abs(actual - expected), `${what}: ${actual} vs ${expected}`).toBeLessThanOrEqual(tol * Math.max(1, Math.abs(expected)));
}

/** Pre-activation of (layer, position, feature) from the model's hook and the raw parameters: (x - b_dec) . W_enc[:, f] + b_enc[f]. */
async function preActivation(fx: GraphFixture, layer: number, position: number, feature: number): Promise<number> {
  const tc = fx.replacement.transcoder(layer);
  const hook = fx.replacement.placement(layer).hookIn;
  const { cache } = await fx.model.run([PROMPT], { cache: [hook] });
  const x = cache[hook]!.toFloat32Array();
  const p = tc.parameters();
  const [W, b, bd] = [p.W_enc.toFloat32Array(), p.b_enc.toFloat32Array(), p.b_dec.toFloat32Array()];
  const d = fx.model.config.dModel;
  const m = tc.config.dSae;
  let s = b[feature]!;
  for (let i = 0; i < d; i++) s += (x[position * d + i]! - bd[i]!) * W[i * m + feature]!;
  return s;
}

describe.each(GRAPH_SPECS)('attribution graph: $name', (spec) => {
  let fx: GraphFixture;
  let graph: AttributedGraph;
  const setup = async () => {
    fx ??= await graphFixture(spec);
    graph ??= await attributionGraph(fx.replacement, PROMPT, { batchSize: 16 });
    return { fx, graph };
  };

  it('every row sums to its target, and targets equal the model\'s own pre-activations and demeaned logits', async () => {
    const { fx, graph } = await setup();
    const a = graph.adjacency as SparseAdjacency;
    expect(graph.activeFeatures).toBeGreaterThan(20);
    let rows = 0;
    for (let i = 0; i < graph.nodes.length; i++) {
      if (Number.isNaN(graph.targetValues[i]!)) continue;
      const { values } = rowOf(a, i);
      let sum = 0;
      for (const v of values) sum += v;
      expectRel(sum, graph.targetValues[i]!, `row ${i} (${graph.nodes[i]!.kind})`);
      rows++;
    }
    expect(rows).toBe(graph.visitedFeatures + graph.nodes.filter((n) => n.kind === 'logit').length);
    // Target values against independent computations: three features and every logit.
    const rng = new Rng(1);
    const features = graph.nodes.map((n, i) => [n, i] as const).filter(([n]) => n.kind === 'feature');
    for (let j = 0; j < 3; j++) {
      const [n, i] = features[rng.int(features.length)]!;
      expectRel(graph.targetValues[i]!, await preActivation(fx, n.layer, n.position, n.index), `pre-activation of ${n.layer}:${n.index}@${n.position}`);
    }
    const logits = (await fx.model.run([PROMPT])).logits!.toFloat32Array();
    const V = fx.model.config.vocabSize;
    const last = logits.subarray((PROMPT.length - 1) * V, PROMPT.length * V);
    // Targets are read before Gemma's final soft-cap: undo it (logit = cap tanh(pre / cap)) before demeaning.
    const cap = fx.model.config.finalSoftcap;
    const pre = cap > 0 ? Float64Array.from(last, (v) => cap * Math.atanh(v / cap)) : Float64Array.from(last);
    const mean = pre.reduce((x, y) => x + y, 0) / V;
    let logitNodes = 0;
    graph.nodes.forEach((n, i) => {
      if (n.kind !== 'logit') return;
      expectRel(graph.targetValues[i]!, pre[n.index]! - mean, `logit ${n.index}`);
      logitNodes++;
    });
    expect(logitNodes).toBeGreaterThan(0);
  });

  it('features only receive edges from earlier layers and earlier-or-equal positions; inputs and errors have no rows', async () => {
    const { graph } = await setup();
    const a = graph.adjacency as SparseAdjacency;
    graph.nodes.forEach((t, i) => {
      const { columns } = rowOf(a, i);
      if (t.kind !== 'feature' && t.kind !== 'logit') expect(columns.length).toBe(0);
      for (const c of columns) {
        const s = graph.nodes[c]!;
        if (s.position >= 0) expect(s.position).toBeLessThanOrEqual(t.position);
        if (t.kind === 'feature' && (s.kind === 'feature' || s.kind === 'error')) expect(s.layer).toBeLessThan(t.layer);
      }
    });
  });
});
