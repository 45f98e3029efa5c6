/**
 * Child process of bench/graph.ts: our attribution graph of one prompt, timed, with this process's peak
 * RSS. Loads the model (unprocessed, as circuit-tracer runs it) and a circuit-tracer transcoder folder,
 * then times attributionGraph (setup forward + every row + assembly) and pruneGraph.
 *
 * Usage: node --import tsx bench/graph_ours.ts '<json options>'  (see GraphChildOptions)
 *
 * Prints one JSON line (GraphChildResult). With `out`, writes a safetensors file holding what the
 * benchmark compares with the PyTorch baseline: the active-feature table, the logit targets, the logit
 * rows and the rows of `checkFeatures` over the shared columns [features | errors | tokens] (our
 * positional and bias nodes left out).
 */
import { readFileSync } from 'node:fs';
import { attributionGraph } from '../lib/graphs/attribute.js';
import type { SparseAdjacency } from '../lib/graphs/graph.js';
import { pruneGraph } from '../lib/graphs/prune.js';
import { loadModel, ReplacementModel, setNumThreads } from '../lib/index.js';
import { writeSafetensors, type RawTensor } from '../lib/io/safetensors.js';
import { loadTranscoderSet } from '../lib/transcoders/transcoder-set.js';

export interface GraphChildOptions {
  modelDir: string;
  transcoderDir: string;
  tokensFile: string;
  batchSize: number;
  maxFeatureNodes?: number;
  rowTopK?: number;
  threads: number;
  prune: boolean;
  out?: string;
  /** Rows of this many active features written to `out`: active features floor((i + 0.5) n / count), i < count. */
  checkCount?: number;
}

export interface GraphChildResult {
  /** attributionGraph: until the first progress report (setup forward and the logit rows), and in all. */
  firstRowsS: number;
  attributeS: number;
  pruneS: number;
  totalS: number;
  activeFeatures: number;
  visitedFeatures: number;
  nNodes: number;
  /** Nodes the baseline also has: features, errors, tokens, logits. */
  nSharedNodes: number;
  storedEntries: number;
  keptNodes: number;
  keptEdges: number;
  peakRss: number;
  rssAfterLoad: number;
}

function status(field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync('/proc/self/status', 'utf8'));
  if (!m) throw new Error(`/proc/self/status has no ${field}`);
  return Number(m[1]) * 1024;
}

const o = JSON.parse(process.argv[2]!) as GraphChildOptions;
setNumThreads(o.threads);
const model = await loadModel(o.modelDir, { processing: 'none' });
const replacement = ReplacementModel.create(model, await loadTranscoderSet(o.transcoderDir));
const tokens = JSON.parse(readFileSync(o.tokensFile, 'utf8')) as number[];
const rssAfterLoad = status('VmHWM');

const t0 = performance.now();
let first = 0;
const graph = await attributionGraph(replacement, tokens, {
  batchSize: o.batchSize,
  ...(o.maxFeatureNodes ? { maxFeatureNodes: o.maxFeatureNodes } : {}),
  ...(o.rowTopK ? { rowTopK: o.rowTopK } : {}),
  onProgress: () => (first ||= performance.now()),
});
const t1 = performance.now();
const pruned = o.prune ? pruneGraph(graph) : null;
const t2 = performance.now();

const a = graph.adjacency as SparseAdjacency;
const T = tokens.length;
const L = graph.nLayers;
const nShared = graph.visitedFeatures + (L + 1) * T; // features, errors, tokens: the first nodes in our order
const logitNodes = graph.nodes.map((n, i) => [n, i] as const).filter(([n]) => n.kind === 'logit');
let keptEdges = 0;
if (pruned) for (const f of pruned.edgeMask) keptEdges += f;

if (o.out) {
  const denseRow = (i: number) => {
    const row = new Float32Array(nShared);
    for (let k = a.rowStart[i]!; k < a.rowStart[i + 1]!; k++) if (a.columns[k]! < nShared) row[a.columns[k]!] = a.values[k]!;
    return row;
  };
  const rows = (ids: number[]) => {
    const out = new Float32Array(ids.length * nShared);
    ids.forEach((id, j) => out.set(denseRow(id), j * nShared));
    return out;
  };
  const feats = graph.nodes.filter((n) => n.kind === 'feature');
  const raw = (data: Float32Array | Int32Array, shape: number[], dtype: 'F32' | 'I32'): RawTensor => ({ dtype, shape, bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) });
  const tensors: Record<string, RawTensor> = {
    logit_rows: raw(rows(logitNodes.map(([, i]) => i)), [logitNodes.length, nShared], 'F32'),
    logit_tokens: raw(Int32Array.from(logitNodes, ([n]) => n.index), [logitNodes.length], 'I32'),
    logit_probs: raw(Float32Array.from(logitNodes, ([n]) => n.probability ?? 0), [logitNodes.length], 'F32'),
    feat_layer: raw(Int32Array.from(feats, (n) => n.layer), [feats.length], 'I32'),
    feat_pos: raw(Int32Array.from(feats, (n) => n.position), [feats.length], 'I32'),
    feat_idx: raw(Int32Array.from(feats, (n) => n.index), [feats.length], 'I32'),
  };
  if (o.checkCount) {
    // With every active feature visited, the node index of active feature i is i.
    if (graph.visitedFeatures !== graph.activeFeatures) throw new Error('checkCount needs a graph of every active feature');
    const picks = Array.from({ length: o.checkCount }, (_, i) => Math.floor(((i + 0.5) * graph.activeFeatures) / o.checkCount!));
    tensors.check_rows = raw(rows(picks), [picks.length, nShared], 'F32');
  }
  writeSafetensors(o.out, tensors);
}

const result: GraphChildResult = {
  firstRowsS: (first - t0) / 1000,
  attributeS: (t1 - t0) / 1000,
  pruneS: (t2 - t1) / 1000,
  totalS: (t2 - t0) / 1000,
  activeFeatures: graph.activeFeatures,
  visitedFeatures: graph.visitedFeatures,
  nNodes: graph.nodes.length,
  nSharedNodes: nShared + logitNodes.length,
  storedEntries: a.columns.length,
  keptNodes: pruned ? pruned.nodeMask.reduce((s, f) => s + f, 0) : -1,
  keptEdges: pruned ? keptEdges : -1,
  peakRss: status('VmHWM'),
  rssAfterLoad,
};
console.log(JSON.stringify(result));
