/**
 * Attribution-graph fixtures: a hand-built 12-node graph with influences worked out by hand, random
 * DAGs shaped like real attribution graphs, and the bridge to the numpy reference
 * (test/reference/graph_reference.py).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AttributionGraph, GraphNode, SparseAdjacency } from '../../lib/graphs/graph.js';
import { Rng } from '../../lib/util/random.js';
import { tempDir } from './fixtures.js';
import { runPython } from './reference.js';

const feature = (layer: number, position: number, index: number, activation = 1): GraphNode => ({ kind: 'feature', layer, position, index, activation });
const error = (layer: number, position: number): GraphNode => ({ kind: 'error', layer, position, index: -1, activation: 0 });
const token = (position: number, id: number, label: string): GraphNode => ({ kind: 'token', layer: -1, position, index: id, activation: 0, label });
const positional = (position: number): GraphNode => ({ kind: 'positional', layer: -1, position, index: -1, activation: 0 });
const bias = (layer: number): GraphNode => ({ kind: 'bias', layer, position: -1, index: -1, activation: 0 });
const logit = (nLayers: number, position: number, id: number, probability: number, label: string): GraphNode => ({ kind: 'logit', layer: nLayers, position, index: id, activation: 0, probability, label });

/** Dense row-major n x n from (target, source, weight) triples. */
function denseFrom(n: number, edges: [number, number, number][]): Float32Array {
  const values = new Float32Array(n * n);
  for (const [t, s, w] of edges) values[t * n + s] = w;
  return values;
}

/**
 * The hand-built graph: 2 layers, prompt of 2 tokens, 12 nodes.
 *
 *   0 f0 = feature L0 @0 #3     4 e4 = error L0 @0     8  t8 = token @0
 *   1 f1 = feature L0 @1 #1     5 e5 = error L0 @1     9  t9 = token @1
 *   2 f2 = feature L1 @1 #0     6 e6 = error L1 @0     10 logit " a" p = 0.6
 *   3 f3 = feature L1 @1 #2     7 e7 = error L1 @1     11 logit " b" p = 0.3
 *
 * Row L1 sums normalise: logit10 ← f2 2, f3 −1, e7 1, f1 0.5 (sum 4.5); logit11 ← f3 3, e7 1;
 * f2 ← f0 1, f1 3, e4 −1, t9 4; f3 ← f1 −2, e5 2; f0 ← t8 1; f1 ← t8 1, t9 3.
 * By hand, influence: f2 = 0.6·4/9, f3 = 0.6·2/9 + 0.3·3/4, e7 = 0.6·2/9 + 0.3/4,
 * f1 = 0.6/9 + f2/3 + f3/2, f0 = e4 = f2/9, e5 = f3/2, t8 = f0 + f1/4, t9 = 4 f2/9 + 3 f1/4, e6 = 0.
 * At node threshold 0.8 the kept set is t9, f3, f1, f2, e7 (cumulative share 0.81 at e7) + inputs, logits.
 */
export const HAND_EDGES: [number, number, number][] = [
  [10, 2, 2], [10, 3, -1], [10, 7, 1], [10, 1, 0.5],
  [11, 3, 3], [11, 7, 1],
  [2, 0, 1], [2, 1, 3], [2, 4, -1], [2, 9, 4],
  [3, 1, -2], [3, 5, 2],
  [0, 8, 1],
  [1, 8, 1], [1, 9, 3],
];

export function handBuiltGraph(): AttributionGraph {
  const nodes: GraphNode[] = [
    feature(0, 0, 3, 1.5), feature(0, 1, 1, 2.25), feature(1, 1, 0, 0.75), feature(1, 1, 2, 3),
    error(0, 0), error(0, 1), error(1, 0), error(1, 1),
    token(0, 5, '<bos>'), token(1, 11, ' x\n'),
    logit(2, 1, 7, 0.6, ' a'), logit(2, 1, 9, 0.3, ' b'),
  ];
  return {
    prompt: '<bos> x\n', tokens: [5, 11], tokenStrings: ['<bos>', ' x\n'], nLayers: 2, dTranscoder: [4, 4],
    nodes, adjacency: { form: 'dense', n: nodes.length, values: denseFrom(nodes.length, HAND_EDGES) },
    scan: 'hand-model', transcoderList: ['tc-l0', 'tc-l1'],
  };
}

/**
 * The hand-built graph with our extra inputs: positional nodes at both positions and a bias node per
 * layer (feeding f1, f2 and logit10), inserted before the logits as the node order demands.
 */
export function handBuiltGraphWithInputs(): AttributionGraph {
  const base = handBuiltGraph();
  const nodes = [...base.nodes.slice(0, 10), positional(0), positional(1), bias(0), bias(1), ...base.nodes.slice(10)];
  // Old indices 10 and 11 (logits) move to 14 and 15; the new inputs are 10..13.
  const move = (i: number) => (i >= 10 ? i + 4 : i);
  const edges: [number, number, number][] = HAND_EDGES.map(([t, s, w]) => [move(t), move(s), w]);
  edges.push([1, 11, 0.5], [2, 10, -0.25], [2, 12, 0.5], [14, 13, 0.75], [3, 11, 0.125]);
  return { ...base, nodes, adjacency: { form: 'dense', n: nodes.length, values: denseFrom(nodes.length, edges) } };
}

export interface RandomDagOptions {
  nLayers?: number;
  positions?: number;
  /** Most features per (layer, position). */
  maxFeaturesPerCell?: number;
  /** Probability that an allowed (source, target) pair is an edge. */
  density?: number;
  /** Store this share of the allowed non-edges as explicit zero entries in the sparse form. */
  storedZeros?: number;
}

/**
 * A random graph shaped like an attribution graph: features, errors, tokens, positional and bias inputs
 * and 3 logits at the last position; edges only from earlier layers (inputs: any) at the same or an
 * earlier position; weights spanning orders of magnitude. Returns the dense graph and the same graph in
 * sparse form (with some explicit zeros stored, and Int32Array or Float64Array row starts).
 */
export function randomDag(seed: number, options: RandomDagOptions = {}): { dense: AttributionGraph; sparse: AttributionGraph } {
  const rng = new Rng(seed);
  const L = options.nLayers ?? 3;
  const T = options.positions ?? 6;
  const maxPerCell = options.maxFeaturesPerCell ?? 20;
  const density = options.density ?? 0.2;
  const storedZeros = options.storedZeros ?? 0.02;
  const d = 64;
  const nodes: GraphNode[] = [];
  for (let l = 0; l < L; l++) {
    for (let p = 0; p < T; p++) {
      const chosen = new Set<number>();
      const count = rng.int(maxPerCell + 1);
      while (chosen.size < count) chosen.add(rng.int(d));
      for (const f of [...chosen].sort((a, b) => a - b)) nodes.push(feature(l, p, f, 0.1 + 5 * rng.uniform()));
    }
  }
  for (let l = 0; l < L; l++) for (let p = 0; p < T; p++) nodes.push(error(l, p));
  const tokens = Array.from({ length: T }, () => rng.int(1000));
  tokens.forEach((id, p) => nodes.push(token(p, id, `t${id}`)));
  for (let p = 0; p < T; p++) nodes.push(positional(p));
  for (let l = 0; l < L; l++) nodes.push(bias(l));
  const probabilities = [0.3 + 0.4 * rng.uniform(), 0.05 + 0.2 * rng.uniform(), 0.01 + 0.05 * rng.uniform()];
  probabilities.forEach((prob, i) => nodes.push(logit(L, T - 1, 100 + i, prob, ` l${i}`)));
  const n = nodes.length;

  // Which sources can feed a target: strictly earlier layers (inputs count as layer -1), not later positions.
  const layerOf = (node: GraphNode) => (node.kind === 'token' || node.kind === 'positional' ? -1 : node.layer);
  const allowed = (target: GraphNode, source: GraphNode) => {
    if (target.kind !== 'feature' && target.kind !== 'logit') return false;
    if (source.kind === 'logit') return false;
    if (layerOf(source) >= layerOf(target)) return false;
    return source.kind === 'bias' || source.position <= target.position;
  };
  const values = new Float32Array(n * n);
  const rowStart = new Int32Array(n + 1);
  const columns: number[] = [];
  const stored: number[] = [];
  for (let t = 0; t < n; t++) {
    for (let s = 0; s < n; s++) {
      if (!allowed(nodes[t]!, nodes[s]!)) continue;
      // Inputs feed fewer nodes than features do, as in real graphs, so that influence reaches features.
      const isInput = nodes[s]!.kind === 'token' || nodes[s]!.kind === 'positional' || nodes[s]!.kind === 'bias';
      if (rng.uniform() < (isInput ? density / 3 : density)) {
        const w = Math.fround(rng.normal() * Math.exp(rng.normal()));
        values[t * n + s] = w;
        columns.push(s);
        stored.push(w);
      } else if (rng.uniform() < storedZeros) {
        columns.push(s);
        stored.push(0);
      }
    }
    rowStart[t + 1] = columns.length;
  }
  const base = {
    prompt: tokens.map((id) => `t${id}`).join(''), tokens, tokenStrings: tokens.map((id) => `t${id}`), nLayers: L,
    dTranscoder: Array.from({ length: L }, () => d), nodes, scan: 'random-dag', transcoderList: Array.from({ length: L }, (_, l) => `tc${l}`),
  };
  const sparse: SparseAdjacency = {
    form: 'sparse', n,
    rowStart: seed % 2 === 0 ? rowStart : Float64Array.from(rowStart),
    columns: Int32Array.from(columns), values: Float32Array.from(stored),
  };
  return { dense: { ...base, adjacency: { form: 'dense', n, values } }, sparse: { ...base, adjacency: sparse } };
}

export interface ReferenceResult {
  node_influence: number[];
  node_mask: number[];
  edge_mask: [number, number][];
  cumulative: number[];
  pruned_influence: number[];
  edge_scores: number[][];
  replacement_score: number;
  completeness_score: number;
}

/** The numpy reference's influences, masks and scores for a graph given densely. */
export function referencePrune(graph: AttributionGraph, nodeThreshold: number, edgeThreshold: number): ReferenceResult {
  if (graph.adjacency.form !== 'dense') throw new Error('referencePrune takes the dense form');
  const { n, values } = graph.adjacency;
  const rows = Array.from({ length: n }, (_, t) => Array.from(values.subarray(t * n, (t + 1) * n)));
  const dir = tempDir('transcoders-graph-ref-');
  const input = join(dir, 'in.json');
  const output = join(dir, 'out.json');
  writeFileSync(input, JSON.stringify({
    kinds: graph.nodes.map((node) => node.kind),
    adjacency: rows,
    logit_weights: graph.nodes.map((node) => (node.kind === 'logit' ? node.probability : 0)),
    node_threshold: nodeThreshold,
    edge_threshold: edgeThreshold,
  }));
  runPython('graph_reference.py', [input, output]);
  return JSON.parse(readFileSync(output, 'utf8')) as ReferenceResult;
}
