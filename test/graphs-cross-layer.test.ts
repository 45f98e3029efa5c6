/**
 * Attribution graphs with cross-layer transcoder features (each feature a source at every layer it
 * writes into, as circuit-tracer builds them), on random raw models of three families:
 *  - circuit-tracer's oracle: removing a sampled source (features, errors, tokens, positional
 *    embeddings, bias nodes) in the frozen local replacement model moves every target by exactly
 *    its column (test/reference/graph_oracle.py with a `cross_layer` spec, float64 PyTorch), 1e-4;
 *  - the complete decomposition: each row sums to its target (1e-4 relative), feature targets equal
 *    x_s W_enc[s][:, j] + b_enc[s][j] from the model's own hooks;
 *  - interventions: zeroing a CLT feature with only direct effects moves each logit by minus its
 *    edge (what it writes into its own and every later MLP output), 1e-4 relative;
 *  - structure: edges from earlier layers (features) and earlier-or-equal positions only.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { intervene } from '../lib/circuits/interventions.js';
import { attributionGraph, type AttributedGraph } from '../lib/graphs/attribute.js';
import type { GraphNode, SparseAdjacency } from '../lib/graphs/graph.js';
import { readSafetensors } from '../lib/io/safetensors.js';
import { Rng } from '../lib/util/random.js';
import { tempDir } from './helpers/fixtures.js';
import { CROSS_LAYER_GRAPH_SPECS, crossLayerGraphFixture, perturbationOf, presetSpec, type CrossLayerGraphFixture } from './helpers/graph-fixtures.js';
import { runPython } from './helpers/reference.js';
import { compactCrossLayer, lazyCrossLayerGraph } from '../lib/graphs/lazy-cross-layer.js';
import { ReplacementModel } from '../lib/circuits/replacement-model.js';
import { CrossLayerTranscoder, crossLayerHooks } from '../lib/transcoders/cross-layer.js';
import { exportCircuitTracerCrossLayer, loadCrossLayerTranscoder } from '../lib/transcoders/formats/cross-layer.js';
import { lazyCrossLayer } from '../lib/transcoders/lazy.js';
import { loadModel } from '../lib/models/model.js';
import { Tensor } from '../lib/tensor.js';
import { DEVICE, makeTempModel } from './helpers/fixtures.js';

const TOL = 1e-4;
const PROMPT = [1, 17, 42, 250, 9, 33, 100, 7, 58, 12];

function rowOf(a: SparseAdjacency, i: number): { columns: Int32Array; values: Float32Array } {
  return { columns: a.columns.subarray(a.rowStart[i]!, a.rowStart[i + 1]!), values: a.values.subarray(a.rowStart[i]!, a.rowStart[i + 1]!) };
}

function expectRel(actual: number, expected: number, what: string, tol = TOL): void {
  expect(Math.abs(actual - expected), `${what}: ${actual} vs ${expected}`).toBeLessThanOrEqual(tol * Math.max(1, Math.abs(expected)));
}

describe.each(CROSS_LAYER_GRAPH_SPECS)('cross-layer attribution graph: $name', (spec) => {
  let fx: CrossLayerGraphFixture;
  let graph: AttributedGraph;
  const setup = async () => {
    fx ??= await crossLayerGraphFixture(spec);
    graph ??= await attributionGraph(fx.replacement, PROMPT, { batchSize: 16 });
    return { fx, graph };
  };

  it('every row sums to its target; feature targets are x_s W_enc[s] + b_enc[s] from the model\'s hooks', async () => {
    const { fx, graph } = await setup();
    const a = graph.adjacency as SparseAdjacency;
    expect(graph.activeFeatures).toBeGreaterThan(20);
    expect(graph.dTranscoder).toEqual(Array(fx.model.config.nLayers).fill(fx.clt.config.dSae));
    let rows = 0;
    for (let i = 0; i < graph.nodes.length; i++) {
      if (Number.isNaN(graph.targetValues[i]!)) continue;
      let sum = 0;
      for (const v of rowOf(a, i).values) sum += v;
      expectRel(sum, graph.targetValues[i]!, `row ${i} (${graph.nodes[i]!.kind})`);
      rows++;
    }
    expect(rows).toBeGreaterThan(10);
    const { hookIn } = fx.clt.config;
    const { cache } = await fx.model.run([PROMPT], { cache: hookIn });
    const p = fx.clt.parameters();
    const [W, b] = [p.W_enc!.toFloat32Array(), p.b_enc!.toFloat32Array()];
    const d = fx.model.config.dModel;
    const F = fx.clt.config.dSae;
    const rng = new Rng(2);
    const features = graph.nodes.map((n, i) => [n, i] as const).filter(([n, i]) => n.kind === 'feature' && !Number.isNaN(graph.targetValues[i]!));
    for (let j = 0; j < 4; j++) {
      const [n, i] = features[rng.int(features.length)]!;
      const x = cache[hookIn[n.layer]!]!.toFloat32Array();
      let s = b[n.layer * F + n.index]!;
      for (let q = 0; q < d; q++) s += x[n.position * d + q]! * W[(n.layer * d + q) * F + n.index]!;
      expectRel(graph.targetValues[i]!, s, `pre-activation of ${n.layer}:${n.index}@${n.position}`);
    }
  });

  it('features receive edges from earlier layers and earlier-or-equal positions only', async () => {
    const { graph } = await setup();
    const a = graph.adjacency as SparseAdjacency;
    let crossLayerEdges = 0;
    graph.nodes.forEach((t, i) => {
      for (const c of rowOf(a, i).columns) {
        const s = graph.nodes[c]!;
        if (s.position >= 0) expect(s.position).toBeLessThanOrEqual(t.position);
        if (t.kind === 'feature' && (s.kind === 'feature' || s.kind === 'error')) expect(s.layer).toBeLessThan(t.layer);
        if (t.kind === 'feature' && s.kind === 'feature' && t.layer - s.layer >= 2) crossLayerEdges++;
      }
    });
    // Features two or more layers up read features below: the edges that skip layers exist.
    expect(crossLayerEdges).toBeGreaterThan(0);
  });

  it("each sampled source column equals the frozen model's response to removing that source (the oracle)", async () => {
    const { fx, graph } = await setup();
    const a = graph.adjacency as SparseAdjacency;
    const rng = new Rng(11);
    const byKind = (kind: GraphNode['kind']) => graph.nodes.map((n, i) => [n, i] as const).filter(([n]) => n.kind === kind);
    const pick = <T,>(items: T[], k: number) => Array.from({ length: Math.min(k, items.length) }, () => items[rng.int(items.length)]!);
    const sources = [...pick(byKind('feature'), 12), ...pick(byKind('error'), 6), ...pick(byKind('token'), 3), ...pick(byKind('positional'), 2), ...byKind('bias')];
    const rows = graph.nodes.map((n, i) => [n, i] as const).filter(([, i]) => !Number.isNaN(graph.targetValues[i]!));
    // Feature targets of the top layer (which features of every layer below write into) and every logit.
    const top = fx.model.config.nLayers - 1;
    const targets = [...pick(rows.filter(([n]) => n.kind === 'feature' && n.layer === top), 5), ...pick(rows.filter(([n]) => n.kind === 'feature'), 5), ...rows.filter(([n]) => n.kind === 'logit')];
    const dir = tempDir('transcoders-clt-oracle-');
    const specFile = join(dir, 'spec.json');
    writeFileSync(specFile, JSON.stringify({
      model_dir: fx.dir, tokens: PROMPT, processing: 'none', cross_layer: fx.oracleFile,
      perturbations: sources.map(([n]) => perturbationOf(n)),
      targets: targets.map(([n]) => (n.kind === 'feature' ? { kind: 'feature', layer: n.layer, position: n.position, feature: n.index } : { kind: 'logit', position: n.position, token: n.index })),
    }));
    runPython('graph_oracle.py', [specFile, join(dir, 'out.safetensors')]);
    const out = (await readSafetensors(join(dir, 'out.safetensors'))).tensors;
    const effects = out.effects_direct!.toTypedArray() as Float64Array;
    const values = out.target_values!.toTypedArray() as Float64Array;
    let nonzero = 0;
    let skipping = 0;
    targets.forEach(([tn, t], j) => {
      expectRel(graph.targetValues[t]!, values[j]!, `target ${t} value`);
      const scale = Math.max(1, Math.abs(values[j]!));
      sources.forEach(([s, si], i) => {
        let column = 0;
        for (let k = a.rowStart[t]!; k < a.rowStart[t + 1]!; k++) if (a.columns[k] === si) column = a.values[k]!;
        const expected = effects[i * targets.length + j]!;
        if (expected !== 0) nonzero++;
        if (expected !== 0 && s.kind === 'feature' && tn.kind === 'feature' && tn.layer - s.layer >= 2) skipping++;
        expect(Math.abs(column - expected), `A[${t}, ${si}] (${s.kind} L${s.layer}@${s.position}) ${column} vs ${expected}`).toBeLessThanOrEqual(TOL * scale);
      });
    });
    expect(nonzero).toBeGreaterThan(sources.length);
    expect(skipping).toBeGreaterThan(0);
  });

  it('an intervention on a feature (direct effects) moves each logit by minus its edge', async () => {
    const { fx, graph } = await setup();
    const a = graph.adjacency as SparseAdjacency;
    const logits = graph.nodes.map((n, i) => [n, i] as const).filter(([n]) => n.kind === 'logit');
    const cap = fx.model.config.finalSoftcap;
    const demeaned = (row: Float32Array, v: number) => {
      const pre = cap > 0 ? Float64Array.from(row, (x) => cap * Math.atanh(x / cap)) : Float64Array.from(row);
      return pre[v]! - pre.reduce((x, y) => x + y, 0) / pre.length;
    };
    const V = fx.model.config.vocabSize;
    const T = PROMPT.length;
    const clean = await intervene(fx.replacement, PROMPT, [], { directEffects: true });
    const cleanRow = clean.logits.toFloat32Array().subarray((T - 1) * V, T * V);
    // The layer-0 features with the largest edge into the first logit: they write into every MLP.
    const [, first] = logits[0]!;
    const candidates = graph.nodes.map((n, i) => [n, i] as const).filter(([n]) => n.kind === 'feature' && n.layer === 0);
    const edge = (t: number, s: number) => {
      for (let k = a.rowStart[t]!; k < a.rowStart[t + 1]!; k++) if (a.columns[k] === s) return a.values[k]!;
      return 0;
    };
    candidates.sort((x, y) => Math.abs(edge(first, y[1])) - Math.abs(edge(first, x[1])));
    for (const [n, si] of candidates.slice(0, 2)) {
      const r = await intervene(fx.replacement, PROMPT, [{ layer: n.layer, position: n.position, feature: n.index, value: 0 }], { directEffects: true });
      const row = r.logits.toFloat32Array().subarray((T - 1) * V, T * V);
      expect(r.activations.get(n.layer)!.toFloat32Array()[n.position * fx.clt.config.dSae + n.index]).toBe(0);
      for (const [tn, ti] of logits) {
        const moved = demeaned(row, tn.index) - demeaned(cleanRow, tn.index);
        expectRel(moved, -edge(ti, si), `logit ${tn.index} after zeroing ${n.layer}:${n.index}@${n.position}`);
      }
    }
  });
});

describe('attribution graphs from a lazily read cross-layer transcoder', () => {
  it.each(['relu', 'jumprelu'] as const)('%s: the compact CLT of the active features gives the full CLT\'s graph (same nodes and edges, 1e-5)', async (arch) => {
    const dir = makeTempModel(presetSpec('tiny-gpt2', { nLayers: 3 }));
    const model = await loadModel(dir, { processing: 'none', device: DEVICE });
    const rng = new Rng(21);
    const d = model.config.dModel;
    const L = model.config.nLayers;
    const F = 400; // most features never fire on the prompt: the compact CLT is much smaller
    const vec = (n: number, s: number, shift = 0) => Tensor.from(Float32Array.from({ length: n }, () => shift + s * rng.normal()), [n]);
    const params: Record<string, Tensor> = {
      W_enc: Tensor.from(vec(L * d * F, 0.05).toFloat32Array(), [L, d, F]),
      // Deeper residuals are larger: a more negative bias keeps each layer's active set a small part.
      b_enc: Tensor.from(Float32Array.from({ length: L * F }, (_, i) => [-0.6, -2, -3][Math.floor(i / F)]! + 0.3 * rng.normal()), [L, F]),
      b_dec: Tensor.from(vec(L * d, 0.1).toFloat32Array(), [L, d]),
    };
    for (let s = 0; s < L; s++) params[`W_dec_${s}`] = Tensor.from(vec(F * (L - s) * d, 0.25).toFloat32Array(), [F, L - s, d]);
    if (arch === 'jumprelu') params.threshold = Tensor.from(Float32Array.from({ length: L * F }, () => 0.1 + 0.3 * rng.uniform()), [L, F]);
    const hooks = crossLayerHooks(L, 'gpt2');
    const clt = await CrossLayerTranscoder.fromParameters(
      { arch, nLayers: L, dIn: d, dOut: d, dSae: F, skip: false, hookIn: hooks.hookIn.map((_, l) => `blocks.${l}.hook_resid_mid`), hookOut: hooks.hookOut, processing: 'none' },
      params,
      { device: DEVICE },
    );
    const folder = join(tempDir(), 'clt');
    exportCircuitTracerCrossLayer(clt, folder);
    const full = await attributionGraph(ReplacementModel.createCrossLayer(model, await loadCrossLayerTranscoder(folder, { device: DEVICE })), PROMPT, { batchSize: 16 });
    const lazy = lazyCrossLayer(folder);
    const { features } = await compactCrossLayer(model, lazy, PROMPT, { device: DEVICE });
    const compactWidth = Math.max(...features.map((f) => f.length));
    expect(compactWidth).toBeLessThan(F / 2);
    for (const f of features) expect(f.length).toBeGreaterThan(3);
    const graph = await lazyCrossLayerGraph(model, lazy, PROMPT, { batchSize: 16, device: DEVICE });
    expect(graph.dTranscoder).toEqual([F, F, F]);
    expect(graph.activeFeatures).toBe(full.activeFeatures);
    const key = (n: GraphNode) => `${n.kind}/${n.layer}/${n.position}/${n.index}`;
    expect(graph.nodes.map(key)).toEqual(full.nodes.map(key));
    graph.nodes.forEach((n, i) => expectRel(n.activation, full.nodes[i]!.activation, `activation of ${key(n)}`, 1e-5));
    const [a, b] = [graph.adjacency as SparseAdjacency, full.adjacency as SparseAdjacency];
    let edges = 0;
    for (let i = 0; i < graph.nodes.length; i++) {
      const ours = new Map(Array.from(rowOf(a, i).columns, (c, k) => [c, rowOf(a, i).values[k]!]));
      const theirs = rowOf(b, i);
      const scale = Math.max(1, ...Array.from(theirs.values, Math.abs));
      theirs.columns.forEach((c, k) => {
        expect(Math.abs((ours.get(c) ?? 0) - theirs.values[k]!), `A[${i}, ${c}]`).toBeLessThanOrEqual(1e-5 * scale);
        edges++;
      });
      for (const [c, v] of ours) if (!theirs.columns.includes(c)) expect(Math.abs(v), `A[${i}, ${c}] only in the lazy graph`).toBeLessThanOrEqual(1e-5 * scale);
    }
    expect(edges).toBeGreaterThan(100);
    model.dispose();
  });
});
