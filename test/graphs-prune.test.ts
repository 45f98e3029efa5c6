/**
 * Influence, pruning and graph scores (lib/graphs/prune.ts) against hand-worked values and the
 * independent numpy reference (test/reference/graph_reference.py: dense matrix inverse, the prune rules
 * written from their definitions), on dense and sparse forms of the same graphs.
 */
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../lib/errors.js';
import { nodeRanges, toSparseAdjacency, validateAttributionGraph, type AttributionGraph, type SparseAdjacency } from '../lib/graphs/graph.js';
import {
  computeInfluence, cumulativeShares, edgeScores, findThreshold, graphScores, nodeInfluence, normalizeRows, pruneGraph, type PruneResult,
} from '../lib/graphs/prune.js';
import { handBuiltGraph, randomDag, referencePrune, type ReferenceResult } from './helpers/graphs.js';

/** |a - b| <= rel * |b| + abs for every element. */
function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, rel = 1e-6, abs = 1e-12): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!;
    const b = expected[i]!;
    if (!(Math.abs(a - b) <= rel * Math.abs(b) + abs)) throw new Error(`element ${i}: ${a} vs expected ${b}`);
  }
}

/** The kept edges of a prune result as sorted "target,source" keys. */
function keptEdges(graph: AttributionGraph, result: PruneResult): string[] {
  const out: string[] = [];
  if (graph.adjacency.form === 'dense') {
    const n = graph.adjacency.n;
    result.edgeMask.forEach((kept, i) => {
      if (kept) out.push(`${Math.floor(i / n)},${i % n}`);
    });
  } else {
    const { rowStart, columns } = graph.adjacency;
    for (let t = 0; t < graph.adjacency.n; t++) for (let k = rowStart[t]!; k < rowStart[t + 1]!; k++) if (result.edgeMask[k]) out.push(`${t},${columns[k]}`);
  }
  return out.sort();
}

function referenceEdges(ref: ReferenceResult): string[] {
  return ref.edge_mask.map(([t, s]) => `${t},${s}`).sort();
}

describe('the hand-built graph', () => {
  // Influences worked out by hand (helpers/graphs.ts explains each).
  const f2 = (0.6 * 4) / 9;
  const f3 = (0.6 * 2) / 9 + (0.3 * 3) / 4;
  const e7 = (0.6 * 2) / 9 + 0.3 / 4;
  const f1 = 0.6 / 9 + f2 / 3 + f3 / 2;
  const f0 = f2 / 9;
  const byHand = [f0, f1, f2, f3, f2 / 9, f3 / 2, 0, e7, f0 + f1 / 4, (4 * f2) / 9 + (3 * f1) / 4, 0, 0];

  it('has the influences worked out by hand, and the numpy reference agrees', () => {
    const graph = handBuiltGraph();
    expectClose(nodeInfluence(graph), byHand, 1e-12);
    const ref = referencePrune(graph, 0.8, 0.98);
    expectClose(ref.node_influence, byHand, 1e-12);
  });

  it('keeps the nodes and edges worked out by hand at the default thresholds', () => {
    const graph = handBuiltGraph();
    const result = pruneGraph(graph);
    // e5 (0.179) falls below the cut at e7 (0.208); f0, e4, e6 below it too. Inputs and logits stay.
    expect([...result.nodeMask]).toEqual([0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1]);
    // At 0.98 the cut lands on the smallest score: every edge between kept nodes stays.
    expect(keptEdges(graph, result)).toEqual(['1,8', '1,9', '10,1', '10,2', '10,3', '10,7', '11,3', '11,7', '2,1', '2,9', '3,1'].sort());
    const ref = referencePrune(graph, 0.8, 0.98);
    expect([...result.nodeMask]).toEqual(ref.node_mask);
    expect(keptEdges(graph, result)).toEqual(referenceEdges(ref));
    expectClose(result.cumulativeInfluence, ref.cumulative, 1e-12);
  });

  it('has the post-pruning edge scores worked out by hand', () => {
    const graph = handBuiltGraph();
    const mask = pruneGraph(graph).nodeMask;
    // Before dangling removal the node mask is the threshold's; here no node dangles, so it is the same.
    const scores = edgeScores(graph, mask);
    // Pruned influence: f1' = 0.6/9 + f2·3/7 + f3 (f2's row loses f0 and e4, f3's loses e5).
    const f1p = 0.6 / 9 + (f2 * 3) / 7 + f3;
    const n = 12;
    const expected: Record<string, number> = {
      '10,2': (0.6 * 4) / 9, '10,3': (0.6 * 2) / 9, '10,7': (0.6 * 2) / 9, '10,1': 0.6 / 9,
      '11,3': 0.3 * 0.75, '11,7': 0.3 * 0.25,
      '2,1': (f2 * 3) / 7, '2,9': (f2 * 4) / 7, '2,0': 0, '2,4': 0,
      '3,1': f3, '3,5': 0,
      '1,8': f1p / 4, '1,9': (f1p * 3) / 4, '0,8': 0,
    };
    for (const [key, value] of Object.entries(expected)) {
      const [t, s] = key.split(',').map(Number) as [number, number];
      expect(scores[t * n + s]).toBeCloseTo(value, 12);
    }
    const ref = referencePrune(graph, 0.8, 0.98);
    expectClose(scores, ref.edge_scores.flat(), 1e-12);
  });

  it('drops dangling nodes to the fixed point (edge threshold 0.6)', () => {
    const graph = handBuiltGraph();
    const result = pruneGraph(graph, { edgeThreshold: 0.6 });
    // The cut (0.225, f3 → logit11) keeps t9 → f1, f1 → f3, f2 → logit10, f3 → logit11; f2 then has no
    // edge in and goes with its edge, e7 has no edge out.
    expect([...result.nodeMask]).toEqual([0, 1, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1]);
    expect(keptEdges(graph, result)).toEqual(['1,9', '11,3', '3,1']);
    const ref = referencePrune(graph, 0.8, 0.6);
    expect([...result.nodeMask]).toEqual(ref.node_mask);
    expect(keptEdges(graph, result)).toEqual(referenceEdges(ref));
  });

  it('keeps tied edges together (edge threshold 0.85 lands on two equal scores)', () => {
    const graph = handBuiltGraph();
    const result = pruneGraph(graph, { edgeThreshold: 0.85 });
    const edges = keptEdges(graph, result);
    expect(edges).toContain('10,3');
    expect(edges).toContain('10,7');
    expect(edges).not.toContain('2,1');
    expect(edges).toEqual(referenceEdges(referencePrune(graph, 0.8, 0.85)));
  });

  it('has the graph scores of the definitions', () => {
    const graph = handBuiltGraph();
    const scores = graphScores(graph);
    const tokens = byHand[8]! + byHand[9]!;
    const errors = byHand[4]! + byHand[5]! + byHand[6]! + byHand[7]!;
    expect(scores.replacementScore).toBeCloseTo(tokens / (tokens + errors), 12);
    const ref = referencePrune(graph, 0.8, 0.98);
    expect(scores.replacementScore).toBeCloseTo(ref.replacement_score, 12);
    expect(scores.completenessScore).toBeCloseTo(ref.completeness_score, 12);
  });
});

describe('findThreshold', () => {
  it('returns the score where the cumulative share first reaches the threshold', () => {
    // Shares of [4, 3, 2, 1] in descending order: 0.4, 0.7, 0.9, 1 (exact in binary after division).
    expect(findThreshold([1, 4, 3, 2], 0.7)).toBe(3);
    expect(findThreshold([1, 4, 3, 2], 0.5)).toBe(3);
    expect(findThreshold([1, 4, 3, 2], 0.4)).toBe(4);
    expect(findThreshold([1, 4, 3, 2], 0.71)).toBe(2);
    expect(findThreshold([1, 4, 3, 2], 0)).toBe(4);
    expect(findThreshold([1, 4, 3, 2, 0], 1)).toBe(1);
    expect(findThreshold([0, 0], 0.8)).toBe(0);
    // Zeros outside the array change nothing but the value past the last positive score.
    expect(findThreshold([1, 4, 3, 2], 0.7, 100)).toBe(3);
  });

  it('refuses negative or non-finite scores and thresholds outside [0, 1]', () => {
    expect(() => findThreshold([0.2, -1], 0.8)).toThrow(/scores\[1\] is -1/);
    expect(() => findThreshold([NaN], 0.8)).toThrow(/scores\[0\] is NaN/);
    expect(() => findThreshold([1], 1.5)).toThrow(/threshold must be between 0 and 1, got 1.5/);
    expect(() => pruneGraph(handBuiltGraph(), { nodeThreshold: -0.1 })).toThrow(/nodeThreshold must be between 0 and 1/);
  });

  it('cumulative shares follow descending influence, ties in node order', () => {
    expect([...cumulativeShares(Float64Array.from([1, 3, 0, 1]))]).toEqual([0.8, 0.6, 1, 1]);
    expect([...cumulativeShares(new Float64Array(3))]).toEqual([0, 0, 0]);
  });
});

/** The node mask of step 1 alone (influence threshold, inputs and logits kept), before dangling removal. */
function thresholdMask(graph: AttributionGraph, nodeThreshold: number): Uint8Array {
  const influence = nodeInfluence(graph);
  const cut = findThreshold(influence, nodeThreshold);
  const { inputStart } = nodeRanges(graph.nodes);
  return Uint8Array.from(influence, (v, i) => (i >= inputStart || v >= cut ? 1 : 0));
}

describe('random DAGs', () => {
  let danglingDropped = 0;
  for (const seed of [1, 2, 3, 4]) {
    it(`seed ${seed}: sparse pruning = dense pruning = the numpy reference`, () => {
      const { dense, sparse } = randomDag(seed, { density: seed <= 2 ? 0.2 : 0.1 });
      const n = dense.nodes.length;
      expect(n).toBeGreaterThan(150);
      for (const [nodeThreshold, edgeThreshold] of [[0.8, 0.98], [0.9, 0.9]] as const) {
        const fromDense = pruneGraph(dense, { nodeThreshold, edgeThreshold });
        const fromSparse = pruneGraph(sparse, { nodeThreshold, edgeThreshold });
        // Same arithmetic in the same order (stored zeros add nothing): identical to the bit.
        expect(fromSparse.nodeInfluence).toEqual(fromDense.nodeInfluence);
        expect(fromSparse.nodeMask).toEqual(fromDense.nodeMask);
        expect(fromSparse.cumulativeInfluence).toEqual(fromDense.cumulativeInfluence);
        expect(keptEdges(sparse, fromSparse)).toEqual(keptEdges(dense, fromDense));
        expect(fromSparse.edgeMask.length).toBe((sparse.adjacency as SparseAdjacency).columns.length);

        const ref = referencePrune(dense, nodeThreshold, edgeThreshold);
        expectClose(fromDense.nodeInfluence, ref.node_influence);
        expectClose(fromDense.cumulativeInfluence, ref.cumulative);
        expect([...fromDense.nodeMask]).toEqual(ref.node_mask);
        expect(keptEdges(dense, fromDense)).toEqual(referenceEdges(ref));
        // The pruning did something: some nodes and edges go, some stay.
        const kept = fromDense.nodeMask.reduce((a, b) => a + b, 0);
        expect(kept).toBeGreaterThan(nodeRanges(dense.nodes).n - nodeRanges(dense.nodes).inputStart);
        expect(kept).toBeLessThan(n);
        const before = thresholdMask(dense, nodeThreshold).reduce((a, b) => a + b, 0);
        danglingDropped += before - kept;
        if (nodeThreshold === 0.8) {
          const scores = graphScores(sparse);
          expect(scores.replacementScore).toBeCloseTo(ref.replacement_score, 10);
          expect(scores.completenessScore).toBeCloseTo(ref.completeness_score, 10);
          expect(graphScores(dense)).toEqual(scores);
        }
      }
    });
  }

  it('the random graphs exercise the dangling-node removal', () => {
    expect(danglingDropped).toBeGreaterThan(0);
  });

  it('edge scores on the pruned graph match the reference, in both forms', () => {
    const { dense, sparse } = randomDag(7);
    const mask = pruneGraph(dense).nodeMask;
    const ref = referencePrune(dense, 0.8, 0.98);
    // The reference's scores are on the node-threshold mask, before dangling removal.
    const stepOne = thresholdMask(dense, 0.8);
    expect(mask.every((kept, i) => !kept || stepOne[i])).toBe(true);
    const denseScores = edgeScores(dense, stepOne);
    expectClose(denseScores, ref.edge_scores.flat());
    const sparseScores = edgeScores(sparse, stepOne);
    const { rowStart, columns } = sparse.adjacency as SparseAdjacency;
    const n = dense.nodes.length;
    for (let t = 0; t < n; t++) for (let k = rowStart[t]!; k < rowStart[t + 1]!; k++) expect(sparseScores[k]).toBe(denseScores[t * n + columns[k]!]);
  });

  it('uses memory for the stored entries only: a sparse graph of 100k nodes prunes without n² arrays', () => {
    // 100k nodes would need 40 GB densely; a chain of features feeding one logit has n entries.
    const n = 100_000;
    const nFeatures = n - 3;
    const nodes = [] as AttributionGraph['nodes'];
    for (let i = 0; i < nFeatures; i++) nodes.push({ kind: 'feature', layer: Math.floor((i * 4) / nFeatures), position: 0, index: i, activation: 1 });
    nodes.push({ kind: 'error', layer: 0, position: 0, index: -1, activation: 0 });
    nodes.push({ kind: 'token', layer: -1, position: 0, index: 1, activation: 0 });
    nodes.push({ kind: 'logit', layer: 4, position: 0, index: 2, activation: 0, probability: 1 });
    const rowStart = new Int32Array(n + 1);
    const columns: number[] = [];
    const values: number[] = [];
    for (let t = 0; t < n; t++) {
      // Features of layer l read the token; the logit reads every feature of the last layer and the error.
      if (t < nFeatures) {
        columns.push(nFeatures + 1);
        values.push(1 + (t % 7));
      } else if (t === n - 1) {
        for (let s = 0; s < nFeatures; s++) if (nodes[s]!.layer === 3) {
          columns.push(s);
          values.push(1 + (s % 5));
        }
        columns.push(nFeatures);
        values.push(0.5);
      }
      rowStart[t + 1] = columns.length;
    }
    const graph: AttributionGraph = {
      prompt: 'x', tokens: [1], tokenStrings: ['x'], nLayers: 4, dTranscoder: [n, n, n, n], nodes,
      adjacency: { form: 'sparse', n, rowStart, columns: Int32Array.from(columns), values: Float32Array.from(values) },
      scan: 'chain', transcoderList: [],
    };
    const started = performance.now();
    const result = pruneGraph(graph);
    expect(performance.now() - started).toBeLessThan(5000);
    expect(result.edgeMask.length).toBe(columns.length);
    // Only last-layer features reach the logit; the others have no influence and go.
    expect(result.nodeMask[0]).toBe(0);
    expect(result.nodeMask[n - 1]).toBe(1);
  });
});

describe('bad graphs', () => {
  it('a cycle is an error naming its nodes; the influence series gives up after 1000 rounds', () => {
    const graph = handBuiltGraph();
    const values = Float32Array.from((graph.adjacency as { values: Float32Array }).values);
    values[1 * 12 + 3] = 1; // f3 → f1 closes the loop f1 → f3 → f1
    const cyclic = { ...graph, adjacency: { form: 'dense' as const, n: 12, values } };
    expect(() => pruneGraph(cyclic)).toThrow(
      /not acyclic: node (1|3) \(feature layer \d index \d at position 1\) -> node (1|3) .* -> node (1|3) .* is a cycle of direct effects/,
    );
    // Without validation, the series itself notices: f1 and f3 reading only each other never decay.
    values.fill(0);
    values[1 * 12 + 3] = 1;
    values[3 * 12 + 1] = 1;
    values[10 * 12 + 3] = 1;
    const rows = normalizeRows({ form: 'dense', n: 12, values });
    const weights = new Float64Array(12);
    weights[10] = 1;
    expect(() => computeInfluence(rows, weights, { nodeName: (i) => `#${i}` })).toThrow(/did not vanish after 1000 rounds: the graph is not acyclic \(the series still runs through #(1|3)\)/);
  });

  it('a NaN or infinite weight is an error naming both nodes', () => {
    const graph = handBuiltGraph();
    const values = Float32Array.from((graph.adjacency as { values: Float32Array }).values);
    values[10 * 12 + 2] = NaN;
    expect(() => pruneGraph({ ...graph, adjacency: { form: 'dense', n: 12, values } })).toThrow(/A\[10, 2\] from node 2 \(feature layer 1 index 0 at position 1\) to node 10 \(logit 7 at position 1\) is NaN/);
    const sparse = toSparseAdjacency(graph.adjacency);
    const bad = { ...sparse, values: Float32Array.from(sparse.values) };
    bad.values[0] = Infinity;
    expect(() => pruneGraph({ ...graph, adjacency: bad })).toThrow(/is Infinity; every weight must be finite/);
  });

  it('structure errors name the node or entry', () => {
    const graph = handBuiltGraph();
    const withValues = (edit: (v: Float32Array) => void): AttributionGraph => {
      const values = Float32Array.from((graph.adjacency as { values: Float32Array }).values);
      edit(values);
      return { ...graph, adjacency: { form: 'dense', n: 12, values } };
    };
    expect(() => validateAttributionGraph(withValues((v) => { v[7 * 12 + 1] = 1; }))).toThrow(/row of node 7 \(error layer 1 at position 1\) has an entry.*sources only/);
    expect(() => validateAttributionGraph(withValues((v) => { v[2 * 12 + 10] = 1; }))).toThrow(/column of node 10 \(logit 7 at position 1\) has an entry.*targets only/);
    expect(() => validateAttributionGraph(withValues((v) => { v[2 * 12 + 2] = 1; }))).toThrow(/self-loop on node 2/);
    const swapped = { ...graph, nodes: [graph.nodes[1]!, graph.nodes[0]!, ...graph.nodes.slice(2)] };
    expect(() => validateAttributionGraph(swapped)).toThrow(/node 1 \(feature layer 0 index 3 at position 0\) is out of order: features must be sorted/);
    const misplaced = { ...graph, nodes: [...graph.nodes.slice(0, 4), graph.nodes[8]!, ...graph.nodes.slice(4, 8), ...graph.nodes.slice(9)] };
    expect(() => validateAttributionGraph(misplaced)).toThrow(/is out of order: nodes must come as feature, error, token, positional, bias, logit/);
    const noWeight = { ...graph, nodes: graph.nodes.map((node) => (node.kind === 'logit' ? { ...node, probability: 0 } : node)) };
    expect(() => pruneGraph(noWeight)).toThrow(/no logit node has a positive probability/);
    const badFeature = { ...graph, nodes: graph.nodes.map((node, i) => (i === 0 ? { ...node, index: 4 } : node)) };
    expect(() => validateAttributionGraph(badFeature)).toThrow(/nodes\[0\]\.index is 4; a feature node needs a feature index in \[0, 4\)/);
    const nanActivation = { ...graph, nodes: graph.nodes.map((node, i) => (i === 2 ? { ...node, activation: NaN } : node)) };
    expect(() => validateAttributionGraph(nanActivation)).toThrow(/nodes\[2\]\.activation is NaN; a feature node needs a finite number/);
    const sparse = toSparseAdjacency(graph.adjacency);
    const unsorted = { ...sparse, columns: Int32Array.from(sparse.columns) };
    // Row 1 (f1) holds entries 1 and 2 (from t8 and t9): swap them.
    [unsorted.columns[1], unsorted.columns[2]] = [unsorted.columns[2]!, unsorted.columns[1]!];
    expect(() => validateAttributionGraph({ ...graph, adjacency: unsorted })).toThrow(/columns out of order/);
    expect(() => validateAttributionGraph({ ...graph, adjacency: { ...sparse, n: 11 } })).toThrow(/adjacency has n = 11 but the graph has 12 nodes/);
  });
});
