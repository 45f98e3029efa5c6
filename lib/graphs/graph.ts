/**
 * The attribution graph: every active transcoder feature, transcoder error, input and output logit of one
 * prompt, and the direct effect of each node on each other (circuit-tracer's adjacency matrix, with our
 * extra input kinds). The native attribution produces it; pruning (prune.ts), the graph JSON
 * (graph-json.ts) and the adjacency file (adjacency-file.ts) consume it. docs/graphs.md describes it.
 *
 * Node order (the same on both axes of the adjacency; circuit-tracer's order with our extra inputs before
 * the logits):
 *
 *   features   sorted by (layer, position, index)
 *   errors     layer-major, then position
 *   tokens     by position (token embeddings)
 *   positional by position (positional embeddings, on models that add them)
 *   bias       by layer (one per layer, all positions together)
 *   logits     the attribution targets, top-1 first
 *
 * Tokens, positional and bias nodes are inputs: sources only, their rows are empty. Errors are sources
 * only too; logits are targets only (their columns are empty).
 */
import { InvalidArgumentError } from '../errors.js';

/** What a node stands for. */
export type NodeKind = 'feature' | 'error' | 'token' | 'logit' | 'positional' | 'bias';

/** The integer code of each kind in the adjacency file's `node_kind` tensor. */
export const NODE_KIND_CODES: Readonly<Record<NodeKind, number>> = Object.freeze({ feature: 0, error: 1, token: 2, logit: 3, positional: 4, bias: 5 });

/** Kinds in the order their blocks appear in `AttributionGraph.nodes`. */
export const NODE_KIND_ORDER: readonly NodeKind[] = Object.freeze(['feature', 'error', 'token', 'positional', 'bias', 'logit']);

/** Input kinds: sources only, always kept by pruning (circuit-tracer's rule for tokens). */
export const INPUT_KINDS: readonly NodeKind[] = Object.freeze(['token', 'positional', 'bias']);

export interface GraphNode {
  kind: NodeKind;
  /**
   * feature / error: the layer; bias: the layer whose biases it stands for (nLayers: those after the last
   * block, read by the logits only); token / positional: -1; logit: nLayers.
   */
  layer: number;
  /** Context index; bias nodes: -1 (one bias node per layer stands for all positions). */
  position: number;
  /**
   * The feature index (feature), token id (token), vocabulary id (logit; -1 for a target that is no single
   * token, e.g. a custom direction); positional: -1 or its position; -1 for errors and biases.
   */
  index: number;
  /** A feature's activation; 0 for the other kinds. */
  activation: number;
  /** Logit nodes (required there): the target's probability, or its weight for custom targets. */
  probability?: number;
  /** Decoded token for token and logit nodes. */
  label?: string;
}

/** A dense adjacency: `values[target * n + source]`, row-major n x n. */
export interface DenseAdjacency {
  form: 'dense';
  n: number;
  values: Float32Array;
}

/**
 * A sparse adjacency in CSR form: row t (a target) holds the entries `rowStart[t] .. rowStart[t + 1]` of
 * `columns` (its sources, strictly increasing) and `values`. Float64Array row starts allow more than 2^31
 * entries.
 */
export interface SparseAdjacency {
  form: 'sparse';
  n: number;
  rowStart: Float64Array | Int32Array;
  columns: Int32Array;
  values: Float32Array;
}

/** Rows are targets, columns sources: weight = A[target, source], the direct effect of source on target. */
export type Adjacency = DenseAdjacency | SparseAdjacency;

export interface AttributionGraph {
  prompt: string;
  tokens: number[];
  /** Decoded text of each token (unescaped; the graph JSON escapes newlines and tabs). */
  tokenStrings: string[];
  nLayers: number;
  /** Width of each layer's transcoder. */
  dTranscoder: number[];
  /** In the order described at the top of this file. */
  nodes: GraphNode[];
  adjacency: Adjacency;
  /** Identifies the model and transcoders for the viewers (e.g. "gemma-2-2b"); required by both. */
  scan: string;
  /** Ids of the transcoders used, one per layer (circuit-tracer's metadata.transcoder_list). */
  transcoderList: string[];
}

/** A half-open range [start, end) of node indices. */
export interface NodeRange {
  start: number;
  end: number;
}

/** Where each kind's block lies in the node order. */
export interface NodeRanges {
  feature: NodeRange;
  error: NodeRange;
  token: NodeRange;
  positional: NodeRange;
  bias: NodeRange;
  logit: NodeRange;
  /** First input node (= token.start): nodes from here on are always kept by pruning. */
  inputStart: number;
  /** Number of nodes. */
  n: number;
}

/** A node as named in messages, e.g. "node 12 (feature layer 3 index 881 at position 5)". */
export function describeNode(nodes: readonly GraphNode[], i: number): string {
  const node = nodes[i];
  if (!node) return `node ${i}`;
  const where = node.position >= 0 ? ` at position ${node.position}` : '';
  switch (node.kind) {
    case 'feature': return `node ${i} (feature layer ${node.layer} index ${node.index}${where})`;
    case 'error': return `node ${i} (error layer ${node.layer}${where})`;
    case 'token': return `node ${i} (token ${node.index}${where})`;
    case 'positional': return `node ${i} (positional embedding${where})`;
    case 'bias': return `node ${i} (bias layer ${node.layer})`;
    case 'logit': return `node ${i} (logit ${node.index}${where})`;
    default: return `node ${i}`;
  }
}

/**
 * The blocks of `nodes`, checking that the kinds come in the documented order (each kind in one
 * contiguous block). Throws an InvalidArgumentError naming the first node out of order.
 */
export function nodeRanges(nodes: readonly GraphNode[]): NodeRanges {
  const ranges = {} as Record<NodeKind, NodeRange>;
  let i = 0;
  for (const kind of NODE_KIND_ORDER) {
    const start = i;
    while (i < nodes.length && nodes[i]!.kind === kind) i++;
    ranges[kind] = { start, end: i };
  }
  if (i < nodes.length) {
    const kind = nodes[i]!.kind;
    const known = (NODE_KIND_ORDER as readonly string[]).includes(kind);
    throw new InvalidArgumentError(
      known
        ? `attribution graph: ${describeNode(nodes, i)} is out of order: nodes must come as ${NODE_KIND_ORDER.join(', ')} (each kind in one block)`
        : `attribution graph: nodes[${i}].kind is ${JSON.stringify(kind)}; expected one of ${NODE_KIND_ORDER.join(', ')}`,
    );
  }
  return { ...ranges, inputStart: ranges.token.start, n: nodes.length };
}

function isInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v);
}

/**
 * Checks everything the consumers rely on and returns the node blocks: the graph's fields, every node's
 * conventions (layer, position, index per kind, finite activations, logit probabilities), the node order
 * (features sorted by (layer, position, index), errors by (layer, position), ...), and the adjacency (its
 * size, CSR structure, finite weights, no self-loops, empty rows for error and input nodes, empty columns
 * for logits). O(n + stored entries). Throws an InvalidArgumentError naming the field, node or entry.
 */
export function validateAttributionGraph(graph: AttributionGraph): NodeRanges {
  const fail = (why: string): never => {
    throw new InvalidArgumentError(`attribution graph: ${why}`);
  };
  if (typeof graph !== 'object' || graph === null) fail('expected an object');
  if (typeof graph.prompt !== 'string') fail(`prompt must be a string, got ${typeof graph.prompt}`);
  if (typeof graph.scan !== 'string' || graph.scan === '') fail(`scan must be a non-empty string (it names the model and transcoders for the viewers), got ${JSON.stringify(graph.scan)}`);
  if (!Array.isArray(graph.transcoderList) || !graph.transcoderList.every((t) => typeof t === 'string')) fail('transcoderList must be an array of strings');
  if (!isInt(graph.nLayers) || graph.nLayers < 1) fail(`nLayers must be a positive integer, got ${graph.nLayers}`);
  const nLayers = graph.nLayers;
  if (!Array.isArray(graph.dTranscoder) || graph.dTranscoder.length !== nLayers) fail(`dTranscoder must have one width per layer (${nLayers}), got ${Array.isArray(graph.dTranscoder) ? graph.dTranscoder.length : typeof graph.dTranscoder}`);
  graph.dTranscoder.forEach((d, l) => {
    if (!isInt(d) || d < 0) fail(`dTranscoder[${l}] must be a non-negative integer, got ${d}`);
  });
  if (!Array.isArray(graph.tokens) || graph.tokens.length === 0) fail('tokens must be a non-empty array');
  const T = graph.tokens.length;
  graph.tokens.forEach((t, p) => {
    if (!isInt(t) || t < 0) fail(`tokens[${p}] must be a non-negative integer, got ${t}`);
  });
  if (!Array.isArray(graph.tokenStrings) || graph.tokenStrings.length !== T) fail(`tokenStrings must have one string per token (${T}), got ${Array.isArray(graph.tokenStrings) ? graph.tokenStrings.length : typeof graph.tokenStrings}`);
  graph.tokenStrings.forEach((s, p) => {
    if (typeof s !== 'string') fail(`tokenStrings[${p}] must be a string, got ${typeof s}`);
  });
  if (!Array.isArray(graph.nodes)) fail('nodes must be an array');
  const nodes = graph.nodes;
  const ranges = nodeRanges(nodes);
  if (ranges.logit.end === ranges.logit.start) fail('the graph has no logit node: there is nothing to attribute');

  const inPrompt = (p: number) => isInt(p) && p >= 0 && p < T;
  const name = (i: number) => describeNode(nodes, i);
  let anyPositiveWeight = false;
  const logitKeys = new Set<string>();
  for (let i = 0; i < nodes.length; i++) {
    const node = nodes[i]!;
    const bad = (field: keyof GraphNode, want: string): never => {
      const value = node[field];
      // String(), not JSON: JSON.stringify writes NaN and Infinity as null.
      return fail(`nodes[${i}].${field} is ${typeof value === 'number' ? String(value) : JSON.stringify(value)}; a ${node.kind} node needs ${want}`);
    };
    if (!isInt(node.layer)) bad('layer', 'an integer');
    if (!isInt(node.position)) bad('position', 'an integer');
    if (!isInt(node.index)) bad('index', 'an integer');
    if (typeof node.activation !== 'number' || !Number.isFinite(node.activation)) bad('activation', 'a finite number');
    const prev = i > 0 && nodes[i - 1]!.kind === node.kind ? nodes[i - 1]! : null;
    switch (node.kind) {
      case 'feature':
        if (node.layer < 0 || node.layer >= nLayers) bad('layer', `a layer in [0, ${nLayers})`);
        if (!inPrompt(node.position)) bad('position', `a position in [0, ${T})`);
        if (node.index < 0 || node.index >= graph.dTranscoder[node.layer]!) bad('index', `a feature index in [0, ${graph.dTranscoder[node.layer]}) (dTranscoder[${node.layer}])`);
        if (prev && !(prev.layer < node.layer || (prev.layer === node.layer && (prev.position < node.position || (prev.position === node.position && prev.index < node.index))))) {
          fail(`${name(i)} is out of order: features must be sorted by (layer, position, index) without repeats`);
        }
        break;
      case 'error':
        if (node.layer < 0 || node.layer >= nLayers) bad('layer', `a layer in [0, ${nLayers})`);
        if (!inPrompt(node.position)) bad('position', `a position in [0, ${T})`);
        if (node.index !== -1) bad('index', '-1');
        if (prev && !(prev.layer < node.layer || (prev.layer === node.layer && prev.position < node.position))) {
          fail(`${name(i)} is out of order: errors must be sorted by (layer, position) without repeats`);
        }
        break;
      case 'token':
      case 'positional':
        if (node.layer !== -1) bad('layer', '-1');
        if (!inPrompt(node.position)) bad('position', `a position in [0, ${T})`);
        if (node.kind === 'token' && node.index !== graph.tokens[node.position]) bad('index', `the token at its position (${graph.tokens[node.position]})`);
        if (node.kind === 'positional' && node.index !== -1 && node.index !== node.position) bad('index', '-1 or its position');
        if (prev && !(prev.position < node.position)) fail(`${name(i)} is out of order: ${node.kind} nodes must be sorted by position without repeats`);
        break;
      case 'bias':
        if (node.layer < 0 || node.layer > nLayers) bad('layer', `a layer in [0, ${nLayers}]`);
        if (node.position !== -1) bad('position', '-1 (a bias node stands for all positions)');
        if (node.index !== -1) bad('index', '-1');
        if (prev && !(prev.layer < node.layer)) fail(`${name(i)} is out of order: bias nodes must be sorted by layer without repeats`);
        break;
      case 'logit': {
        if (node.layer !== nLayers) bad('layer', `nLayers (${nLayers})`);
        if (!inPrompt(node.position)) bad('position', `a position in [0, ${T})`);
        if (node.index < -1) bad('index', 'a vocabulary id, or -1 for a target that is no single token');
        const p = node.probability;
        if (typeof p !== 'number' || !Number.isFinite(p) || p < 0) bad('probability', 'a finite, non-negative probability (its weight in the influence)');
        if (p! > 0) anyPositiveWeight = true;
        const key = `${node.index}@${node.position}`;
        if (logitKeys.has(key)) fail(`${name(i)} repeats another logit node (same vocabulary id and position)`);
        logitKeys.add(key);
        break;
      }
    }
    if (node.label !== undefined && typeof node.label !== 'string') bad('label', 'a string or nothing');
  }
  if (!anyPositiveWeight) fail('no logit node has a positive probability: the influence of every node would be 0');
  validateAdjacency(graph.adjacency, nodes, ranges);
  const cycle = findCycle(toSparseAdjacency(graph.adjacency));
  if (cycle) fail(`the graph is not acyclic: ${cycle.slice(0, 4).map(name).join(' -> ')}${cycle.length > 4 ? ' -> …' : ''} -> ${name(cycle[0]!)} is a cycle of direct effects`);
  return ranges;
}

/**
 * A cycle of nonzero entries, as node indices in the direction of the effects (each a source of the
 * next), or null when the graph is acyclic. Iterative depth-first search along rows (target to its
 * sources: the reversed graph, acyclic exactly when the graph is); O(n + entries) time, 13 bytes per node.
 */
export function findCycle(adjacency: SparseAdjacency): number[] | null {
  const { n, rowStart, columns, values } = adjacency;
  const state = new Uint8Array(n); // 0 unvisited, 1 on the stack, 2 done
  const stack = new Int32Array(n);
  const next = new Float64Array(n); // the next entry of each stacked node's row to look at
  for (let root = 0; root < n; root++) {
    if (state[root] !== 0) continue;
    let depth = 0;
    stack[0] = root;
    next[0] = rowStart[root]!;
    state[root] = 1;
    while (depth >= 0) {
      const t = stack[depth]!;
      const k = next[depth]!;
      if (k >= rowStart[t + 1]!) {
        state[t] = 2;
        depth--;
        continue;
      }
      next[depth] = k + 1;
      if (values[k] === 0) continue;
      const s = columns[k]!;
      if (state[s] === 1) {
        // s is on the stack: the stack from s up to t is the cycle, t reading s, ..., each reading the next.
        const at = stack.subarray(0, depth + 1).lastIndexOf(s);
        return Array.from(stack.subarray(at, depth + 1)).reverse();
      }
      if (state[s] === 0) {
        state[s] = 1;
        stack[++depth] = s;
        next[depth] = rowStart[s]!;
      }
    }
  }
  return null;
}

/** The structural checks of validateAttributionGraph on the adjacency alone. */
function validateAdjacency(adjacency: Adjacency, nodes: readonly GraphNode[], ranges: NodeRanges): void {
  const n = nodes.length;
  const fail = (why: string): never => {
    throw new InvalidArgumentError(`attribution graph: adjacency ${why}`);
  };
  if (typeof adjacency !== 'object' || adjacency === null) fail('must be an object');
  if (adjacency.n !== n) fail(`has n = ${adjacency.n} but the graph has ${n} nodes`);
  const sourceOnly = (t: number) => t >= ranges.error.start && t < ranges.logit.start;
  const checkEntry = (t: number, s: number, w: number) => {
    if (!Number.isFinite(w)) fail(`weight A[${t}, ${s}] from ${describeNode(nodes, s)} to ${describeNode(nodes, t)} is ${w}; every weight must be finite`);
    if (w === 0) return;
    if (t === s) fail(`has a self-loop on ${describeNode(nodes, t)} (weight ${w}): the graph must be acyclic`);
    if (sourceOnly(t)) fail(`row of ${describeNode(nodes, t)} has an entry (from ${describeNode(nodes, s)}, weight ${w}); error and input nodes are sources only`);
    if (s >= ranges.logit.start) fail(`column of ${describeNode(nodes, s)} has an entry (to ${describeNode(nodes, t)}, weight ${w}); logit nodes are targets only`);
  };
  if (adjacency.form === 'dense') {
    if (!(adjacency.values instanceof Float32Array)) fail('values must be a Float32Array');
    if (adjacency.values.length !== n * n) fail(`values have ${adjacency.values.length} entries; a dense ${n} x ${n} adjacency needs ${n * n}`);
    const v = adjacency.values;
    for (let t = 0; t < n; t++) {
      const row = t * n;
      for (let s = 0; s < n; s++) {
        const w = v[row + s]!;
        if (w !== 0) checkEntry(t, s, w); // NaN included: NaN !== 0
      }
    }
    return;
  }
  if (adjacency.form !== 'sparse') fail(`form must be 'dense' or 'sparse', got ${JSON.stringify((adjacency as { form: unknown }).form)}`);
  const { rowStart, columns, values } = adjacency;
  if (!(rowStart instanceof Float64Array || rowStart instanceof Int32Array)) fail('rowStart must be a Float64Array or Int32Array');
  if (!(columns instanceof Int32Array)) fail('columns must be an Int32Array');
  if (!(values instanceof Float32Array)) fail('values must be a Float32Array');
  if (rowStart.length !== n + 1) fail(`rowStart has ${rowStart.length} entries; ${n} rows need ${n + 1}`);
  if (columns.length !== values.length) fail(`columns (${columns.length}) and values (${values.length}) differ in length`);
  if (rowStart[0] !== 0) fail(`rowStart[0] is ${rowStart[0]}, expected 0`);
  if (rowStart[n] !== columns.length) fail(`rowStart[${n}] is ${rowStart[n]} but there are ${columns.length} entries`);
  for (let t = 0; t < n; t++) {
    const begin = rowStart[t]!;
    const end = rowStart[t + 1]!;
    if (!Number.isSafeInteger(end) || end < begin) fail(`rowStart[${t + 1}] is ${end}, below rowStart[${t}] = ${begin} (row starts must not decrease)`);
    let previous = -1;
    for (let k = begin; k < end; k++) {
      const s = columns[k]!;
      if (s < 0 || s >= n) fail(`entry ${k} of row ${t} has column ${s}, outside [0, ${n})`);
      if (s <= previous) fail(`row ${t} has columns out of order (${previous} then ${s}); each row's columns must be strictly increasing`);
      previous = s;
      checkEntry(t, s, values[k]!);
    }
  }
}

/** The logit weight vector: each logit node's probability, 0 for every other node (float64). */
export function logitWeights(graph: AttributionGraph, ranges: NodeRanges = nodeRanges(graph.nodes)): Float64Array {
  const w = new Float64Array(ranges.n);
  for (let i = ranges.logit.start; i < ranges.logit.end; i++) w[i] = graph.nodes[i]!.probability ?? 0;
  return w;
}

/**
 * The adjacency in CSR form. A sparse adjacency is returned as it is; a dense one is converted, keeping
 * only its nonzero entries (int32 columns and float32 values: 8 bytes per nonzero, plus the row starts).
 */
export function toSparseAdjacency(adjacency: Adjacency): SparseAdjacency {
  if (adjacency.form === 'sparse') return adjacency;
  const { n, values } = adjacency;
  let nonzero = 0;
  for (let i = 0; i < values.length; i++) if (values[i] !== 0) nonzero++;
  const rowStart = new Float64Array(n + 1);
  const columns = new Int32Array(nonzero);
  const out = new Float32Array(nonzero);
  let k = 0;
  for (let t = 0; t < n; t++) {
    const row = t * n;
    for (let s = 0; s < n; s++) {
      const w = values[row + s]!;
      if (w !== 0) {
        columns[k] = s;
        out[k++] = w;
      }
    }
    rowStart[t + 1] = k;
  }
  return { form: 'sparse', n, rowStart, columns, values: out };
}

/** The adjacency as a dense row-major n x n Float32Array (a dense adjacency's own values, not a copy). */
export function toDenseValues(adjacency: Adjacency): Float32Array {
  if (adjacency.form === 'dense') return adjacency.values;
  const { n, rowStart, columns, values } = adjacency;
  const dense = new Float32Array(n * n);
  for (let t = 0; t < n; t++) {
    const row = t * n;
    for (let k = rowStart[t]!; k < rowStart[t + 1]!; k++) dense[row + columns[k]!] = values[k]!;
  }
  return dense;
}
