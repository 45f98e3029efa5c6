/**
 * Builds the attribution graph of one prompt (circuit-tracer's method, docs/graphs.md): the native
 * core (native/circuits/graph.cc) runs the prompt through the frozen local replacement model and
 * yields sparse rows of direct effects; this module chooses the targets (the logits that make up
 * `logitProbability` of the next-token mass, a logit difference or a direction), visits features
 * in the order of their influence on the targets under `maxFeatureNodes`, and assembles the node
 * table and adjacency in the order of lib/graphs/graph.ts.
 */
import { InvalidArgumentError, throwIfCancelled } from '../errors.js';
import { runOnDevice } from '../device-queue.js';
import { native, type NativeAttributionGraph, type NativeAttributionGraphInfo, type NativeGraphRows, type NativeGraphTarget } from '../native.js';
import { Tensor } from '../tensor.js';
import { softmax } from '../util/softmax.js';
import type { ReplacementModel } from '../circuits/replacement-model.js';
import type { AttributionGraph, GraphNode, SparseAdjacency } from './graph.js';
import { computeInfluence, normalizeRows } from './prune.js';

/** What the graph explains. Default: the top logits (`maxLogits`, `logitProbability`). */
export type GraphTargets =
  | { kind: 'logits' }
  | { kind: 'logit-difference'; token: number; minus: number }
  | { kind: 'direction'; direction: Float32Array; label?: string };

export interface AttributeOptions {
  targets?: GraphTargets;
  /** Logit targets: at most this many (default 10) ... */
  maxLogits?: number;
  /** ... the fewest top logits whose probabilities sum to at least this (default 0.95). */
  logitProbability?: number;
  /** Features to compute rows for, the most influential first (default: every active feature). */
  maxFeatureNodes?: number;
  /** Prompt copies per backward pass: rows computed at once (default 32). */
  batchSize?: number;
  /** Batches of rows between re-rankings of the unvisited features by influence (default 4). */
  updateInterval?: number;
  /** Keep only the topK largest |A| of each row (0: every non-zero entry, exact; default 0). */
  rowTopK?: number;
  /** Drop entries with |A| at or below this (default 0: keep every non-zero). */
  rowThreshold?: number;
  /** Viewer identifiers (metadata.scan and the transcoder list). */
  scan?: string;
  transcoderList?: string[];
  /** Called after each batch of rows: rows done, rows planned. */
  onProgress?: (done: number, planned: number) => void;
  /** Stops the graph between batches of rows (the batch running finishes): a CancelledError. */
  signal?: AbortSignal;
}

export const ATTRIBUTE_DEFAULTS: Readonly<{ maxLogits: number; logitProbability: number; batchSize: number; updateInterval: number; rowTopK: number; rowThreshold: number }> = Object.freeze({
  maxLogits: 10, logitProbability: 0.95, batchSize: 32, updateInterval: 4, rowTopK: 0, rowThreshold: 0,
});

/** The graph plus what its construction measured. */
export interface AttributedGraph extends AttributionGraph {
  /** Per node: the target quantity (feature pre-activation or demeaned logit) of each row computed; NaN for nodes without a row. */
  targetValues: Float64Array;
  /** Per node: sum of |A| a row's top-k / threshold left out (0 when exact). */
  droppedMass: Float64Array;
  /** Active features of the prompt, and how many got rows. */
  activeFeatures: number;
  visitedFeatures: number;
}

/** The logit targets: the fewest top tokens reaching `probability`, at most `max`. */
export function topLogitTargets(logits: Float32Array, max: number, probability: number): { token: number; probability: number }[] {
  const p = softmax(logits);
  const order = [...p.keys()].sort((a, b) => p[b]! - p[a]!);
  const out: { token: number; probability: number }[] = [];
  let mass = 0;
  for (const token of order) {
    if (out.length >= max || mass >= probability) break;
    out.push({ token, probability: p[token]! });
    mass += p[token]!;
  }
  return out;
}

function checkPositiveInt(value: number, name: string): void {
  if (!Number.isInteger(value) || value < 1) throw new InvalidArgumentError(`${name} must be a positive integer, got ${value}`);
}

/**
 * The attribution graph of `prompt` (text or token ids) on a replacement model. Rows run on the
 * model's device queue; nothing dense of size n_nodes^2 is formed.
 */
export async function attributionGraph(replacement: ReplacementModel, prompt: string | readonly number[], options: AttributeOptions = {}): Promise<AttributedGraph> {
  const o = { ...ATTRIBUTE_DEFAULTS, ...options };
  checkPositiveInt(o.maxLogits, 'maxLogits');
  checkPositiveInt(o.batchSize, 'batchSize');
  checkPositiveInt(o.updateInterval, 'updateInterval');
  if (!(o.logitProbability > 0 && o.logitProbability <= 1)) throw new InvalidArgumentError(`logitProbability must be in (0, 1], got ${o.logitProbability}`);
  if (o.maxFeatureNodes !== undefined && (!Number.isInteger(o.maxFeatureNodes) || o.maxFeatureNodes < 0)) throw new InvalidArgumentError(`maxFeatureNodes must be a non-negative integer, got ${o.maxFeatureNodes}`);
  const model = replacement.model;
  const tokens = typeof prompt === 'string' ? replacement.tokenize(prompt) : [...prompt];
  if (tokens.length === 0) throw new InvalidArgumentError('the prompt has no tokens');
  if (tokens.length > model.config.nCtx) throw new InvalidArgumentError(`the prompt has ${tokens.length} tokens, more than the model's context of ${model.config.nCtx}`);
  const ids = Tensor.from(Int32Array.from(tokens), [tokens.length]);
  const handle: NativeAttributionGraph = await runOnDevice(model.device, () => native().AttributionGraph.create(replacement.handle, ids.handle, { batchSize: o.batchSize }));
  try {
    return await assemble(replacement, handle, tokens, typeof prompt === 'string' ? prompt : null, o);
  } finally {
    handle.dispose();
  }
}

type Resolved = AttributeOptions & { -readonly [K in keyof typeof ATTRIBUTE_DEFAULTS]: number };

async function assemble(replacement: ReplacementModel, handle: NativeAttributionGraph, tokens: number[], text: string | null, o: Resolved): Promise<AttributedGraph> {
  const model = replacement.model;
  const info = handle.info();
  const T = info.length;
  const L = info.nLayers;
  const V = model.config.vocabSize;
  const last = T - 1;
  const nf = info.numFeatures;
  if (nf === 0) throw new InvalidArgumentError(`no transcoder feature is active on this prompt (${T} tokens): the graph would have no feature nodes`);
  const decode = (id: number) => model.tokenizer?.decode([id]) ?? String(id);

  // Targets (the graph's logit nodes).
  const targetSpec = o.targets ?? { kind: 'logits' };
  let logitTargets: { target: NativeGraphTarget; node: GraphNode }[];
  if (targetSpec.kind === 'logits') {
    logitTargets = topLogitTargets(new Tensor(info.lastLogits).toFloat32Array(), o.maxLogits, o.logitProbability).map(({ token, probability }) => ({
      target: { kind: 'logit', position: last, index: token },
      node: { kind: 'logit', layer: L, position: last, index: token, activation: 0, probability, label: decode(token) },
    }));
  } else if (targetSpec.kind === 'logit-difference') {
    for (const id of [targetSpec.token, targetSpec.minus]) {
      if (!Number.isInteger(id) || id < 0 || id >= V) throw new InvalidArgumentError(`logit difference: token id ${id} is out of range [0, ${V})`);
    }
    const W_U = model.weight('unembed.W_U').toFloat32Array(); // [d, V]
    const d = model.config.dModel;
    const u = Float32Array.from({ length: d }, (_, i) => W_U[i * V + targetSpec.token]! - W_U[i * V + targetSpec.minus]!);
    logitTargets = [{
      target: { kind: 'direction', position: last, direction: Tensor.from(u, [d]).handle },
      node: { kind: 'logit', layer: L, position: last, index: targetSpec.token, activation: 0, probability: 1, label: `${decode(targetSpec.token)} − ${decode(targetSpec.minus)}` },
    }];
  } else {
    const d = model.config.dModel;
    if (targetSpec.direction.length !== d) throw new InvalidArgumentError(`direction target: expected ${d} values, got ${targetSpec.direction.length}`);
    logitTargets = [{
      target: { kind: 'direction', position: last, direction: Tensor.from(targetSpec.direction, [d]).handle },
      node: { kind: 'logit', layer: L, position: last, index: -1, activation: 0, probability: 1, label: targetSpec.label ?? 'direction' },
    }];
  }

  const featLayer = new Tensor(info.features.layer).toTypedArray() as BigInt64Array;
  const featPos = new Tensor(info.features.position).toTypedArray() as BigInt64Array;
  const featIdx = new Tensor(info.features.index).toTypedArray() as BigInt64Array;
  const featAct = new Tensor(info.features.activation).toFloat32Array();
  const budget = Math.min(nf, o.maxFeatureNodes ?? nf);
  const planned = logitTargets.length + budget;
  let done = 0;
  const runRows = async (targets: NativeGraphTarget[]): Promise<NativeGraphRows> => {
    throwIfCancelled(o.signal);
    const rows = await runOnDevice(model.device, () => handle.rows(targets, { threshold: o.rowThreshold, topK: o.rowTopK }));
    done += targets.length;
    o.onProgress?.(done, planned);
    return rows;
  };

  // Rows by source index space: sources 0..S-1, logit targets S..S+nLogits-1.
  const S = info.numSources;
  const rowsOf = new Map<number, { columns: Int32Array; values: Float32Array; target: number; dropped: number }>();
  const store = (rowIds: number[], r: NativeGraphRows) => {
    const start = new Tensor(r.rowStart).toTypedArray() as BigInt64Array;
    const cols = new Tensor(r.columns).toTypedArray() as Int32Array;
    const vals = new Tensor(r.values).toFloat32Array();
    const tv = new Tensor(r.targetValues).toTypedArray() as Float64Array;
    const dm = new Tensor(r.droppedMass).toTypedArray() as Float64Array;
    rowIds.forEach((id, i) => {
      const a = Number(start[i]!), b = Number(start[i + 1]!);
      rowsOf.set(id, { columns: cols.slice(a, b), values: vals.slice(a, b), target: tv[i]!, dropped: dm[i]! });
    });
  };
  store(logitTargets.map((_, j) => S + j), await runRows(logitTargets.map((t) => t.target)));

  // Features, most influential first (all of them when the budget covers them: no ranking needed).
  const visited = new Uint8Array(nf);
  const featureTarget = (f: number): NativeGraphTarget => ({ kind: 'feature', layer: Number(featLayer[f]!), position: Number(featPos[f]!), index: Number(featIdx[f]!) });
  let visitedCount = 0;
  while (visitedCount < budget) {
    let next: number[];
    if (budget === nf) {
      next = [];
      for (let f = 0; f < nf && next.length < o.batchSize * o.updateInterval; f++) if (!visited[f]) next.push(f);
    } else {
      const influence = partialInfluence(rowsOf, S, logitTargets.map((t) => t.node.probability ?? 1));
      next = [...Array(nf).keys()].filter((f) => !visited[f]).sort((a, b) => influence[b]! - influence[a]! || a - b).slice(0, Math.min(o.batchSize * o.updateInterval, budget - visitedCount));
    }
    next.forEach((f) => (visited[f] = 1));
    // The same set in (layer, position) order: a batch's backward pass then reaches only as low and
    // over as long a prefix as its targets need (active features are already in that order).
    next.sort((a, b) => a - b);
    visitedCount += next.length;
    for (let i = 0; i < next.length; i += o.batchSize) {
      const chunk = next.slice(i, i + o.batchSize);
      store(chunk, await runRows(chunk.map(featureTarget)));
    }
  }

  // Node table in graph order, and each source's node index (-1: an unvisited feature, dropped).
  const nodes: GraphNode[] = [];
  const nodeOfSource = new Int32Array(S).fill(-1);
  const sourceOfNode: number[] = [];
  for (let f = 0; f < nf; f++) {
    if (!visited[f]) continue;
    nodeOfSource[f] = nodes.length;
    sourceOfNode.push(f);
    nodes.push({ kind: 'feature', layer: Number(featLayer[f]!), position: Number(featPos[f]!), index: Number(featIdx[f]!), activation: featAct[f]! });
  }
  const add = (source: number, node: GraphNode) => {
    nodeOfSource[source] = nodes.length;
    sourceOfNode.push(source);
    nodes.push(node);
  };
  for (let l = 0; l < L; l++) for (let p = 0; p < T; p++) add(info.errorOffset + l * T + p, { kind: 'error', layer: l, position: p, index: -1, activation: 0 });
  for (let p = 0; p < T; p++) add(info.tokenOffset + p, { kind: 'token', layer: -1, position: p, index: tokens[p]!, activation: 0, label: decode(tokens[p]!) });
  if (info.positionalOffset !== null) for (let p = 0; p < T; p++) add(info.positionalOffset + p, { kind: 'positional', layer: -1, position: p, index: p, activation: 0 });
  for (let l = 0; l <= L; l++) add(info.biasOffset + l, { kind: 'bias', layer: l, position: -1, index: -1, activation: 0 });
  logitTargets.forEach((t, j) => {
    sourceOfNode.push(S + j);
    nodes.push(t.node);
  });

  // CSR over nodes: each node's row (if computed) with columns remapped, dropped sources left out.
  const n = nodes.length;
  const rowStart = new Float64Array(n + 1);
  const targetValues = new Float64Array(n).fill(NaN);
  const droppedMass = new Float64Array(n);
  let nnz = 0;
  for (let i = 0; i < n; i++) {
    const row = rowsOf.get(sourceOfNode[i]!);
    if (row) for (const c of row.columns) if (nodeOfSource[c]! >= 0) nnz++;
    rowStart[i + 1] = nnz;
  }
  const columns = new Int32Array(nnz);
  const values = new Float32Array(nnz);
  let k = 0;
  for (let i = 0; i < n; i++) {
    const row = rowsOf.get(sourceOfNode[i]!);
    if (!row) continue;
    targetValues[i] = row.target;
    droppedMass[i] = row.dropped;
    // Sources keep their relative order under the remapping (both are in graph order).
    for (let j = 0; j < row.columns.length; j++) {
      const c = nodeOfSource[row.columns[j]!]!;
      if (c < 0) continue;
      columns[k] = c;
      values[k++] = row.values[j]!;
    }
  }
  const adjacency: SparseAdjacency = { form: 'sparse', n, rowStart, columns, values };
  const dTranscoder = Array.from({ length: L }, (_, l) => replacement.featureCount(l));
  return {
    prompt: text ?? tokens.map(decode).join(''),
    tokens,
    tokenStrings: tokens.map(decode),
    nLayers: L,
    dTranscoder,
    nodes,
    adjacency,
    scan: o.scan ?? model.dir.split('/').filter(Boolean).pop() ?? 'model',
    transcoderList: o.transcoderList ?? Array.from({ length: L }, (_, l) => (replacement.featureCount(l) > 0 ? `layer_${l}` : '')).filter(Boolean),
    targetValues,
    droppedMass,
    activeFeatures: nf,
    visitedFeatures: visitedCount,
  };
}

/**
 * Influence of every source on the targets from the rows computed so far (circuit-tracer's
 * compute_partial_influences): rows not yet computed are empty.
 */
function partialInfluence(rowsOf: Map<number, { columns: Int32Array; values: Float32Array }>, S: number, logitWeights: number[]): Float64Array {
  const n = S + logitWeights.length;
  const rowStart = new Float64Array(n + 1);
  for (let i = 0; i < n; i++) rowStart[i + 1] = rowStart[i]! + (rowsOf.get(i)?.columns.length ?? 0);
  const columns = new Int32Array(rowStart[n]!);
  const values = new Float32Array(rowStart[n]!);
  for (let i = 0; i < n; i++) {
    const row = rowsOf.get(i);
    if (!row) continue;
    columns.set(row.columns, rowStart[i]!);
    values.set(row.values, rowStart[i]!);
  }
  const weights = new Float64Array(n);
  logitWeights.forEach((w, j) => (weights[S + j] = w));
  return computeInfluence(normalizeRows({ form: 'sparse', n, rowStart, columns, values }), weights);
}

export type { NativeAttributionGraphInfo };
