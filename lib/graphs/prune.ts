/**
 * Influence and pruning of attribution graphs, by circuit-tracer's definitions (its graph.py:
 * normalize_matrix, compute_influence, find_threshold, prune_graph, compute_graph_scores), on the sparse
 * form of the adjacency. A dense adjacency is converted to its nonzero entries first, so there is one
 * implementation; memory follows the stored entries, never n^2 for a sparse graph (docs/graphs.md states
 * the bound).
 *
 * Every sum is accumulated in float64 (row sums, the influence series, the cumulative shares): the
 * thresholds compare cumulative shares against 0.8 / 0.98, where float32 rounding over millions of
 * entries would move the cut. Float64 also makes circuit-tracer's guard against float32 overflow of row
 * sums (rescaling each row by its max first) unnecessary: a float64 sum of float32 magnitudes cannot
 * overflow, and the normalised values are the same.
 */
import { InvalidArgumentError } from '../errors.js';
import {
  describeNode, logitWeights, toSparseAdjacency, validateAttributionGraph,
  type Adjacency, type AttributionGraph, type NodeRanges, type SparseAdjacency,
} from './graph.js';

/** circuit-tracer's clamp of a row's L1 sum: an all-zero row stays zero instead of dividing by 0. */
export const ROW_SUM_FLOOR = 1e-10;

/** circuit-tracer's bound on the rounds of the influence series before it calls the graph cyclic. */
export const MAX_INFLUENCE_ROUNDS = 1000;

/**
 * Â = |A| with each row divided by its L1 sum (floored at ROW_SUM_FLOOR), read through a node mask:
 * entries whose target or source is outside the mask count as zero (the pruned graph of circuit-tracer,
 * whose rows and columns of dropped nodes are zeroed). Â[t, s] = |A[t, s]| / denominators[t] is computed
 * when read, so the normalisation costs 8 bytes per node, not per entry.
 */
export interface NormalizedRows {
  readonly matrix: SparseAdjacency;
  /** 1 for nodes taking part; null: all nodes. */
  readonly nodeMask: Uint8Array | null;
  /** max(Σ_s |A[t, s]|, ROW_SUM_FLOOR) over the entries taking part, per target row t (float64). */
  readonly denominators: Float64Array;
}

/** Row-normalises |A| (circuit-tracer's normalize_matrix), optionally restricted to the nodes of `nodeMask`. */
export function normalizeRows(adjacency: Adjacency, nodeMask?: Uint8Array | null): NormalizedRows {
  const matrix = toSparseAdjacency(adjacency);
  const { n, rowStart, columns, values } = matrix;
  const mask = nodeMask ?? null;
  if (mask && mask.length !== n) throw new InvalidArgumentError(`normalizeRows: the node mask has ${mask.length} entries for ${n} nodes`);
  const denominators = new Float64Array(n);
  for (let t = 0; t < n; t++) {
    let sum = 0;
    if (!mask || mask[t]) {
      for (let k = rowStart[t]!; k < rowStart[t + 1]!; k++) if (!mask || mask[columns[k]!]) sum += Math.abs(values[k]!);
    }
    denominators[t] = Math.max(sum, ROW_SUM_FLOOR);
  }
  return { matrix, nodeMask: mask, denominators };
}

/** `x · Â` into `out` (zeroed first): each row t with x[t] ≠ 0 scatters x[t] Â[t, s] into out[s]. */
function multiplyLeft(x: Float64Array, rows: NormalizedRows, out: Float64Array): void {
  const { matrix: { n, rowStart, columns, values }, nodeMask: mask, denominators } = rows;
  out.fill(0);
  for (let t = 0; t < n; t++) {
    const xt = x[t]!;
    if (xt === 0 || (mask && !mask[t])) continue;
    const scale = xt / denominators[t]!;
    for (let k = rowStart[t]!; k < rowStart[t + 1]!; k++) {
      const s = columns[k]!;
      if (mask && !mask[s]) continue;
      out[s] = out[s]! + scale * Math.abs(values[k]!);
    }
  }
}

export interface InfluenceOptions {
  /** Rounds of the series before giving up (default MAX_INFLUENCE_ROUNDS, as circuit-tracer). */
  maxRounds?: number;
  /** Names node i in the error a cyclic graph gets. */
  nodeName?: (i: number) => string;
}

/**
 * circuit-tracer's compute_influence: `w·Â + w·Â² + w·Â³ + …`, summed until a term is all zero, which on an
 * acyclic graph happens after at most (longest path) terms since Â is nilpotent there; this equals
 * `w((I − Â)⁻¹ − I)`. Float64 throughout. A term still nonzero after `maxRounds` rounds means a cycle: an
 * InvalidArgumentError naming the nodes where the series still runs.
 */
export function computeInfluence(rows: NormalizedRows, weights: Float64Array, options: InfluenceOptions = {}): Float64Array {
  const n = rows.matrix.n;
  if (weights.length !== n) throw new InvalidArgumentError(`computeInfluence: ${weights.length} weights for ${n} nodes`);
  const maxRounds = options.maxRounds ?? MAX_INFLUENCE_ROUNDS;
  let current = new Float64Array(n);
  let next = new Float64Array(n);
  multiplyLeft(weights, rows, current);
  const influence = Float64Array.from(current);
  for (let rounds = 0; current.some((v) => v !== 0); rounds++) {
    if (rounds >= maxRounds) {
      const name = options.nodeName ?? ((i: number) => `node ${i}`);
      const live: string[] = [];
      for (let i = 0; i < n && live.length < 3; i++) if (current[i] !== 0) live.push(name(i));
      throw new InvalidArgumentError(`the influence series did not vanish after ${maxRounds} rounds: the graph is not acyclic (the series still runs through ${live.join(', ')})`);
    }
    multiplyLeft(current, rows, next);
    [current, next] = [next, current];
    for (let i = 0; i < n; i++) influence[i] = influence[i]! + current[i]!;
  }
  return influence;
}

/**
 * circuit-tracer's compute_node_influence: each node's influence on the logits, through the
 * row-normalised |A| of the whole graph, weighted by the logit probabilities. Validates the graph.
 */
export function nodeInfluence(graph: AttributionGraph): Float64Array {
  const ranges = validateAttributionGraph(graph);
  return computeInfluence(normalizeRows(graph.adjacency), logitWeights(graph, ranges), { nodeName: (i) => describeNode(graph.nodes, i) });
}

/** Â[t, s] of entry k (row t) through the mask; 0 outside it. */
function normalizedEntry(rows: NormalizedRows, t: number, k: number): number {
  const { matrix, nodeMask: mask } = rows;
  if (mask && (!mask[t] || !mask[matrix.columns[k]!])) return 0;
  return Math.abs(matrix.values[k]!) / rows.denominators[t]!;
}

/**
 * The per-row factor of the edge scores: the pruned graph's influence plus the logit weight of each
 * target (circuit-tracer's compute_edge_influence); score of entry (t, s) = Â[t, s] · rowFactor[t].
 */
function edgeRowFactors(rows: NormalizedRows, weights: Float64Array, nodeName?: (i: number) => string): Float64Array {
  const factors = computeInfluence(rows, weights, nodeName ? { nodeName } : {});
  for (let i = 0; i < factors.length; i++) factors[i] = factors[i]! + weights[i]!;
  return factors;
}

/**
 * circuit-tracer's edge scores: the row-normalised |A| of the graph restricted to `nodeMask` (all nodes
 * when absent), each row scaled by its target's influence plus logit weight. Indexed like the input:
 * one score per stored entry of a sparse adjacency, n x n row-major for a dense one.
 */
export function edgeScores(graph: AttributionGraph, nodeMask?: Uint8Array): Float64Array {
  const ranges = validateAttributionGraph(graph);
  const rows = normalizeRows(graph.adjacency, nodeMask);
  const factors = edgeRowFactors(rows, logitWeights(graph, ranges), (i) => describeNode(graph.nodes, i));
  const { n, rowStart, columns } = rows.matrix;
  const dense = graph.adjacency.form === 'dense';
  const scores = new Float64Array(dense ? n * n : columns.length);
  for (let t = 0; t < n; t++) {
    for (let k = rowStart[t]!; k < rowStart[t + 1]!; k++) {
      scores[dense ? t * n + columns[k]! : k] = normalizedEntry(rows, t, k) * factors[t]!;
    }
  }
  return scores;
}

/**
 * circuit-tracer's find_threshold: sort the scores in descending order and return the score at the first
 * place where the cumulative share (cumulative sum / total) reaches `threshold` (a searchsorted), or the
 * last score when rounding keeps the share below it (threshold 1). `implicitZeros` counts zero scores not
 * in `scores` (the unstored entries of a sparse matrix): they never move the cumulative share but make the
 * last score 0, exactly as the dense matrix would. Scores must be finite and non-negative (influences
 * are); the total is the sequential float64 sum in descending order. Returns 0 when every score is 0.
 */
export function findThreshold(scores: ArrayLike<number>, threshold: number, implicitZeros = 0): number {
  checkFraction(threshold, 'findThreshold: threshold');
  const sorted = new Float64Array(scores.length);
  let positives = 0;
  for (let i = 0; i < scores.length; i++) {
    const v = scores[i]!;
    if (!(v >= 0) || v === Infinity) throw new InvalidArgumentError(`findThreshold: scores[${i}] is ${v}; scores must be finite and non-negative`);
    if (v > 0) sorted[positives++] = v;
  }
  return thresholdOfPositives(sorted.subarray(0, positives), scores.length - positives + implicitZeros, threshold);
}

/**
 * findThreshold on the positive scores `positives` (sorted here, in place) with `zeros` zero scores
 * besides them.
 */
function thresholdOfPositives(positives: Float64Array, zeros: number, threshold: number): number {
  const p = positives.length;
  if (p === 0) return 0;
  positives.sort(); // ascending; walked from the end for the descending order
  let total = 0;
  for (let i = p - 1; i >= 0; i--) total += positives[i]!;
  let cumulative = 0;
  for (let i = p - 1; i >= 0; i--) {
    cumulative += positives[i]!;
    if (cumulative / total >= threshold) return positives[i]!;
  }
  return zeros > 0 ? 0 : positives[0]!;
}

function checkFraction(value: number, what: string): void {
  if (typeof value !== 'number' || !(value >= 0 && value <= 1)) throw new InvalidArgumentError(`${what} must be between 0 and 1, got ${value}`);
}

export interface PruneOptions {
  /** Keep the fewest nodes whose influence makes up this share of the total (default 0.8). */
  nodeThreshold?: number;
  /** Keep the fewest edges whose scores make up this share of the total (default 0.98). */
  edgeThreshold?: number;
}

export const PRUNE_DEFAULTS: Readonly<Required<PruneOptions>> = Object.freeze({ nodeThreshold: 0.8, edgeThreshold: 0.98 });

export interface PruneResult {
  /** 1 for each node kept. */
  nodeMask: Uint8Array;
  /**
   * 1 for each edge kept: one flag per stored entry of a sparse adjacency (aligned with its `columns`
   * and `values`), n x n row-major for a dense one. Kept edges join kept nodes and have nonzero weight.
   */
  edgeMask: Uint8Array;
  /**
   * Each node's cumulative influence as circuit-tracer exports it (the JSON's `influence`): the share of
   * the total influence held by the nodes at least as influential as it, in descending order of influence
   * (ties in node order). The most influential node has its own share; nodes of zero influence have 1.
   */
  cumulativeInfluence: Float64Array;
  /** Each node's influence on the logits in the whole graph (before pruning). */
  nodeInfluence: Float64Array;
  /** The thresholds used. */
  nodeThreshold: number;
  edgeThreshold: number;
  /** The node blocks of the graph. */
  ranges: NodeRanges;
}

/**
 * circuit-tracer's prune_graph:
 *
 * 1. node influence on the whole graph; keep the nodes at or above findThreshold(influence,
 *    nodeThreshold); tokens, positional and bias inputs and logits are always kept;
 * 2. on the graph restricted to the kept nodes, edge score = Â[t, s] · (influence[t] + w[t]); keep the
 *    edges at or above findThreshold(scores, edgeThreshold) (over all n² entries, unstored ones as 0);
 * 3. repeatedly drop feature and error nodes without a kept edge out to a kept node, and features
 *    without a kept edge in from one, until nothing changes; edges keep only between kept nodes.
 *
 * One deliberate difference: an entry of zero weight is never an edge. circuit-tracer's dense mask marks
 * every zero entry kept when the edge threshold comes out as 0 (edgeThreshold 1, or rounding just below
 * it), which would also stop dangling nodes from being dropped. Validates the graph first.
 */
export function pruneGraph(graph: AttributionGraph, options: PruneOptions = {}): PruneResult {
  const nodeThreshold = options.nodeThreshold ?? PRUNE_DEFAULTS.nodeThreshold;
  const edgeThreshold = options.edgeThreshold ?? PRUNE_DEFAULTS.edgeThreshold;
  checkFraction(nodeThreshold, 'pruneGraph: nodeThreshold');
  checkFraction(edgeThreshold, 'pruneGraph: edgeThreshold');
  const ranges = validateAttributionGraph(graph);
  const nodeName = (i: number) => describeNode(graph.nodes, i);
  const matrix = toSparseAdjacency(graph.adjacency);
  const { n, rowStart, columns, values } = matrix;
  const weights = logitWeights(graph, ranges);

  // 1. Nodes by influence on the whole graph.
  const influence = computeInfluence(normalizeRows(matrix), weights, { nodeName });
  const nodeCut = findThreshold(influence, nodeThreshold);
  const nodeMask = new Uint8Array(n);
  for (let i = 0; i < n; i++) nodeMask[i] = i >= ranges.inputStart || influence[i]! >= nodeCut ? 1 : 0;

  // 2. Edges by score on the graph of the kept nodes. Only the positive scores are stored, for the sort
  // (counted first: entries of dropped nodes, usually most of them, score 0); the mask recomputes each
  // score from the same float64 expression, so it compares exactly the values sorted.
  const pruned = normalizeRows(matrix, nodeMask);
  const factors = edgeRowFactors(pruned, weights, nodeName);
  const forEachPositiveScore = (visit: (score: number) => void) => {
    for (let t = 0; t < n; t++) {
      if (factors[t] === 0 || !nodeMask[t]) continue;
      for (let k = rowStart[t]!; k < rowStart[t + 1]!; k++) {
        const score = normalizedEntry(pruned, t, k) * factors[t]!;
        if (score > 0) visit(score);
      }
    }
  };
  let p = 0;
  forEachPositiveScore(() => p++);
  const positives = new Float64Array(p);
  p = 0;
  forEachPositiveScore((score) => {
    positives[p++] = score;
  });
  const edgeCut = thresholdOfPositives(positives, n * n - p, edgeThreshold);
  const entryMask = new Uint8Array(columns.length);
  for (let t = 0; t < n; t++) {
    if (!nodeMask[t]) continue;
    for (let k = rowStart[t]!; k < rowStart[t + 1]!; k++) {
      if (values[k] === 0 || !nodeMask[columns[k]!]) continue;
      if (normalizedEntry(pruned, t, k) * factors[t]! >= edgeCut) entryMask[k] = 1;
    }
  }

  // 3. Dangling nodes, to the fixed point. Each round looks at the kept edges between nodes still kept
  // (circuit-tracer zeroes the edges of dropped nodes between rounds: the same).
  const hasOut = new Uint8Array(n);
  const hasIn = new Uint8Array(n);
  for (let changed = true; changed;) {
    hasOut.fill(0);
    hasIn.fill(0);
    for (let t = 0; t < n; t++) {
      if (!nodeMask[t]) continue;
      for (let k = rowStart[t]!; k < rowStart[t + 1]!; k++) {
        if (entryMask[k] && nodeMask[columns[k]!]) {
          hasOut[columns[k]!] = 1;
          hasIn[t] = 1;
        }
      }
    }
    changed = false;
    for (let i = 0; i < ranges.inputStart; i++) {
      const keep = nodeMask[i]! && hasOut[i]! && (i >= ranges.feature.end || hasIn[i]!) ? 1 : 0;
      if (keep !== nodeMask[i]) {
        nodeMask[i] = keep;
        changed = true;
      }
    }
  }
  for (let t = 0; t < n; t++) {
    for (let k = rowStart[t]!; k < rowStart[t + 1]!; k++) {
      if (entryMask[k] && !(nodeMask[t] && nodeMask[columns[k]!])) entryMask[k] = 0;
    }
  }

  let edgeMask = entryMask;
  if (graph.adjacency.form === 'dense') {
    edgeMask = new Uint8Array(n * n);
    for (let t = 0; t < n; t++) for (let k = rowStart[t]!; k < rowStart[t + 1]!; k++) if (entryMask[k]) edgeMask[t * n + columns[k]!] = 1;
  }
  return { nodeMask, edgeMask, cumulativeInfluence: cumulativeShares(influence), nodeInfluence: influence, nodeThreshold, edgeThreshold, ranges };
}

/**
 * For each node, the cumulative share of the total held by the nodes up to it in descending order of
 * `influence` (stable: ties in node order). All zeros when the total is 0 (circuit-tracer would give NaN).
 */
export function cumulativeShares(influence: Float64Array): Float64Array {
  const n = influence.length;
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => influence[b]! - influence[a]! || a - b);
  const shares = new Float64Array(n);
  let total = 0;
  for (const i of order) total += influence[i]!;
  if (total === 0) return shares;
  let cumulative = 0;
  for (const i of order) {
    cumulative += influence[i]!;
    shares[i] = cumulative / total;
  }
  return shares;
}

export interface GraphScores {
  /**
   * Share of the inputs' influence on the logits against the inputs' and errors' together:
   * input / (input + error), inputs being tokens, positional and bias nodes. 0 when both are 0.
   */
  replacementScore: number;
  /**
   * Influence-weighted mean over nodes of the share of each node's normalised inputs that does not come
   * from error nodes; weights: influence + logit weight.
   */
  completenessScore: number;
}

/**
 * circuit-tracer's compute_graph_scores on the whole (unpruned) graph. Our positional and bias nodes
 * count as inputs with the tokens (they are what the model starts from, like token embeddings).
 */
export function graphScores(graph: AttributionGraph): GraphScores {
  const ranges = validateAttributionGraph(graph);
  const weights = logitWeights(graph, ranges);
  const rows = normalizeRows(graph.adjacency);
  const influence = computeInfluence(rows, weights, { nodeName: (i) => describeNode(graph.nodes, i) });
  let inputInfluence = 0;
  for (let i = ranges.inputStart; i < ranges.logit.start; i++) inputInfluence += influence[i]!;
  let errorInfluence = 0;
  for (let i = ranges.error.start; i < ranges.error.end; i++) errorInfluence += influence[i]!;
  const { n, rowStart, columns } = rows.matrix;
  let weighted = 0;
  let totalWeight = 0;
  for (let t = 0; t < n; t++) {
    let errorShare = 0;
    for (let k = rowStart[t]!; k < rowStart[t + 1]!; k++) {
      const s = columns[k]!;
      if (s >= ranges.error.start && s < ranges.error.end) errorShare += normalizedEntry(rows, t, k);
    }
    const outputInfluence = influence[t]! + weights[t]!;
    weighted += (1 - errorShare) * outputInfluence;
    totalWeight += outputInfluence;
  }
  const denominator = inputInfluence + errorInfluence;
  return {
    replacementScore: denominator > 0 ? inputInfluence / denominator : 0,
    completenessScore: totalWeight > 0 ? weighted / totalWeight : 0,
  };
}
