/**
 * The paper-method circuit (a greedy path search's graph, lib/circuits/graph.ts) as an attribution
 * graph, so that `transcoders circuit` writes the same viewer files with the same node ids as
 * `transcoders graph` (lib/graphs/graph-json.ts). Edge weights stay the paper's path attributions.
 *
 * Mapping: features, transcoder errors and embeddings (token nodes) keep their place; attention nodes
 * are not a kind of the viewers' format, so each is collapsed into the edges it carries (a child's
 * weight into a head is passed on to the head's parents in proportion to what the head gives each);
 * a feature's encoder-bias error node becomes its layer's bias node; the pruning remainders are left
 * out (they stand for no source). The root must be a logit or logit difference.
 */
import { InvalidArgumentError } from '../errors.js';
import type { CircuitGraph, GraphNode as CircuitNode } from '../circuits/graph.js';
import type { AttributionGraph, GraphNode } from './graph.js';
import { nodeRanges } from './graph.js';
import { cumulativeShares, nodeInfluence, type PruneResult } from './prune.js';

export interface CircuitAsGraph {
  graph: AttributionGraph;
  /** Everything kept: the search already chose the nodes. */
  kept: PruneResult;
}

/** The circuit of `circuit` (with its error nodes) as an attribution graph of a model with `nLayers` blocks. */
export function circuitToAttributionGraph(circuit: CircuitGraph, nLayers: number, options: { scan: string; transcoderList: string[] }): CircuitAsGraph {
  const m = /^logit\[(\d+)(?:-(\d+))?\]@(\d+)$/.exec(circuit.metadata.root);
  if (!m) throw new InvalidArgumentError(`the viewers' format needs a logit target: this circuit's root is ${circuit.metadata.root} (search from --logit or --logit-diff)`);
  const [token, minus, rootPosition] = [Number(m[1]), m[2] === undefined ? null : Number(m[2]), Number(m[3])];
  const { tokens, tokenTexts } = circuit.metadata;
  const byId = new Map(circuit.nodes.map((n) => [n.id, n]));

  // Collapse attention nodes: edges into a head move to the head's parents, in proportion.
  const out = new Map<string, { target: string; weight: number }[]>();
  for (const e of circuit.edges) (out.get(e.source) ?? out.set(e.source, []).get(e.source)!).push({ target: e.target, weight: e.weight });
  const resolved = new Map<string, number>(); // "source\0target" -> weight, attention-free
  const addEdge = (source: string, target: string, weight: number) => {
    const key = `${source}\u0000${target}`;
    resolved.set(key, (resolved.get(key) ?? 0) + weight);
  };
  const isAttention = (id: string) => byId.get(id)?.kind === 'attention';
  const pass = (source: string, target: string, weight: number, depth: number) => {
    if (depth > circuit.nodes.length) throw new InvalidArgumentError('the circuit graph has a cycle');
    if (!isAttention(target)) return addEdge(source, target, weight);
    const onward = out.get(target) ?? [];
    const total = onward.reduce((s, e) => s + e.weight, 0);
    for (const e of onward) pass(source, e.target, total !== 0 ? (weight * e.weight) / total : 0, depth + 1);
  };
  for (const e of circuit.edges) if (!isAttention(e.source)) pass(e.source, e.target, e.weight, 0);

  // Nodes in the graph order of lib/graphs/graph.ts.
  const graphId = new Map<string, number>();
  const nodes: GraphNode[] = [];
  const add = (ids: string[], node: GraphNode) => {
    ids.forEach((id) => graphId.set(id, nodes.length));
    nodes.push(node);
  };
  const group = <K>(items: CircuitNode[], key: (n: CircuitNode) => K) => {
    const m = new Map<K, CircuitNode[]>();
    for (const n of items) (m.get(key(n)) ?? m.set(key(n), []).get(key(n))!).push(n);
    return m;
  };
  const features = circuit.nodes.filter((n) => n.kind === 'feature').sort((a, b) => a.layer - b.layer || a.position - b.position || a.feature! - b.feature!);
  for (const n of features) add([n.id], { kind: 'feature', layer: n.layer, position: n.position, index: n.feature!, activation: n.activation ?? 0 });
  const errors = circuit.nodes.filter((n) => n.kind === 'error' && n.error === 'transcoder').sort((a, b) => a.layer - b.layer || a.position - b.position);
  for (const n of errors) add([n.id], { kind: 'error', layer: n.layer, position: n.position, index: -1, activation: 0 });
  const embeddings = [...group(circuit.nodes.filter((n) => n.kind === 'embedding'), (n) => n.position)].sort((a, b) => a[0] - b[0]);
  for (const [p, ns] of embeddings) add(ns.map((n) => n.id), { kind: 'token', layer: -1, position: p, index: tokens[p]!, activation: 0, label: tokenTexts[p] ?? String(tokens[p]) });
  const biases = [...group(circuit.nodes.filter((n) => n.kind === 'error' && n.error === 'bias'), (n) => n.layer)].sort((a, b) => a[0] - b[0]);
  for (const [l, ns] of biases) add(ns.map((n) => n.id), { kind: 'bias', layer: l, position: -1, index: -1, activation: 0 });
  const label = minus === null ? (tokenTexts[rootPosition] ?? String(token)) : `#${token} − #${minus}`;
  add([circuit.metadata.root], { kind: 'logit', layer: nLayers, position: rootPosition, index: token, activation: 0, probability: 1, label });

  // Rows: each target's sources, ascending.
  const rows = new Map<number, Map<number, number>>();
  for (const [key, weight] of resolved) {
    const [source, target] = key.split('\u0000') as [string, string];
    const s = graphId.get(source), t = graphId.get(target);
    if (s === undefined || t === undefined || s === t) continue; // pruning remainders, collapsed leaves
    const row = rows.get(t) ?? rows.set(t, new Map()).get(t)!;
    row.set(s, (row.get(s) ?? 0) + weight);
  }
  const n = nodes.length;
  const rowStart = new Float64Array(n + 1);
  const columns: number[] = [];
  const values: number[] = [];
  for (let t = 0; t < n; t++) {
    for (const [s, w] of [...(rows.get(t) ?? new Map<number, number>())].sort((a, b) => a[0] - b[0])) {
      if (w === 0) continue;
      columns.push(s);
      values.push(w);
    }
    rowStart[t + 1] = columns.length;
  }
  const dTranscoder = Array.from({ length: nLayers }, (_, l) => circuit.metadata.transcoders.find((t) => t.layer === l)?.dSae ?? 0);
  const graph: AttributionGraph = {
    prompt: circuit.metadata.prompt ?? tokenTexts.map((t, i) => t ?? `#${tokens[i]}`).join(''),
    tokens: [...tokens],
    tokenStrings: tokenTexts.map((t, i) => t ?? `#${tokens[i]}`),
    nLayers,
    dTranscoder,
    nodes,
    adjacency: { form: 'sparse', n, rowStart, columns: Int32Array.from(columns), values: Float32Array.from(values) },
    scan: options.scan,
    transcoderList: options.transcoderList,
  };
  const influence = nodeInfluence(graph);
  const kept: PruneResult = {
    nodeMask: new Uint8Array(n).fill(1),
    edgeMask: new Uint8Array(columns.length).fill(1),
    cumulativeInfluence: cumulativeShares(influence),
    nodeInfluence: influence,
    // Nothing is pruned by influence: the search chose the nodes.
    nodeThreshold: 1,
    edgeThreshold: 1,
    ranges: nodeRanges(nodes),
  };
  return { graph, kept };
}
