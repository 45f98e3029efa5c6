/**
 * Circuit graphs from search paths (paper-method.md §3.8), with the stable JSON schema documented in
 * docs/circuits.md: nodes with readable ids (`mlp8[89]@9`, `attn2.h2@8`, `embed@9`, `err.tc8@9`), edges
 * from contributor to contributee weighted by the attribution, and error nodes that account for
 * what the paths leave out (transcoder errors, encoder and LayerNorm biases, pruned children).
 */
import { InvalidArgumentError } from '../errors.js';
import { Tensor } from '../tensor.js';
import type { Attribution, AttributionNode } from './attribution.js';
import type { Path, SearchOptions } from './search.js';

export const GRAPH_SCHEMA = 'transcoders.circuit-graph/1';

export type GraphNodeKind = 'feature' | 'attention' | 'embedding' | 'error' | 'logit' | 'direction';

export interface GraphNode {
  id: string;
  kind: GraphNodeKind;
  layer: number;
  position: number;
  /** Text of the token at `position`. */
  token: string | null;
  feature?: number;
  head?: number;
  /** Sum of the attributions of the distinct paths ending at this node (roots: their value). */
  contribution: number;
  /** Feature nodes: the feature's activation at `position`. */
  activation?: number;
  /** Error nodes: what they stand for. */
  error?: 'transcoder' | 'bias' | 'prune';
}

export interface GraphEdge {
  /** The contributing (earlier) node. */
  source: string;
  /** The node it contributes to. */
  target: string;
  weight: number;
}

export interface CircuitGraph {
  schema: typeof GRAPH_SCHEMA;
  metadata: {
    model: string;
    transcoders: { layer: number; hookIn: string; hookOut: string; dSae: number }[];
    prompt: string | null;
    tokens: number[];
    tokenTexts: (string | null)[];
    root: string;
    search: Required<Pick<SearchOptions, 'iters' | 'branches' | 'ignoreBos' | 'cap'>>;
  };
  nodes: GraphNode[];
  edges: GraphEdge[];
}

/** The stable, readable id of a node. */
export function nodeId(n: AttributionNode): string {
  switch (n.kind) {
    case 'feature': return `mlp${n.layer}[${n.feature}]@${n.position}`;
    case 'attention': return `attn${n.layer}.h${n.head}@${n.position}`;
    case 'embedding': return `embed@${n.position}`;
    case 'logit': return `logit[${n.token}${n.minus !== undefined ? `-${n.minus}` : ''}]@${n.position}`;
    case 'direction': return `dir${n.layer}.${n.sublayer}@${n.position}`;
  }
}

export interface GraphOptions {
  prompt?: string | null;
  search: Required<Pick<SearchOptions, 'iters' | 'branches' | 'ignoreBos' | 'cap'>>;
  /** Add transcoder-error, encoder-bias and pruning-error nodes (default true). */
  errors?: boolean;
}

/**
 * Builds the graph of a search's paths. Every distinct path prefix counts once: its last node gets
 * the prefix's attribution, and the edge from it to its parent the same amount.
 */
export function pathsToGraph(attribution: Attribution, levels: Path[][], options: GraphOptions): CircuitGraph {
  const paths = levels.flat();
  if (paths.length === 0) throw new InvalidArgumentError('no paths to build a graph from');
  const tokenizer = attribution.model.tokenizer;
  const tokenTexts = attribution.tokens.map((id) => (tokenizer && id < tokenizer.vocabSize ? tokenizer.decode([id]) : null));
  const nodes = new Map<string, GraphNode>();
  const vectors = new Map<string, Float32Array>();
  const source = new Map<string, AttributionNode>();
  const edges = new Map<string, GraphEdge>();
  const seen = new Set<string>();
  const root = paths[0]![0]!;
  const addNode = (n: AttributionNode, contribution: number) => {
    const id = nodeId(n);
    const existing = nodes.get(id);
    if (existing) {
      existing.contribution += contribution;
      const v = vectors.get(id)!;
      n.vector.toFloat32Array().forEach((x, i) => (v[i]! += x));
      return id;
    }
    const activation = n.kind === 'feature' ? attribution.activation(n.layer, n.position, n.feature!) : undefined;
    nodes.set(id, {
      id, kind: n.kind, layer: n.layer, position: n.position, token: tokenTexts[n.position] ?? null, contribution,
      ...(n.feature !== undefined ? { feature: n.feature } : {}),
      ...(n.head !== undefined ? { head: n.head } : {}),
      ...(activation !== undefined ? { activation } : {}),
    });
    vectors.set(id, Float32Array.from(n.vector.toFloat32Array()));
    source.set(id, n);
    return id;
  };
  for (const path of paths) {
    if (nodeId(path[0]!) !== nodeId(root)) throw new InvalidArgumentError('all paths must start at the same root');
    let key = '';
    for (let j = 0; j < path.length; j++) {
      const n = path[j]!;
      key += (j ? ' <- ' : '') + nodeId(n);
      if (seen.has(key)) continue;
      seen.add(key);
      if (n.capped) throw new InvalidArgumentError('graphs need raw attributions: search without cap (zero-ablation mode)');
      if (j === 0) {
        addNode(n, n.contrib);
        continue;
      }
      const id = addNode(n, n.contrib);
      const parent = nodeId(path[j - 1]!);
      const edgeKey = `${id}\u0000${parent}`;
      const edge = edges.get(edgeKey) ?? { source: id, target: parent, weight: 0 };
      edge.weight += n.contrib;
      edges.set(edgeKey, edge);
    }
  }
  if (options.errors ?? true) addErrorNodes(attribution, nodes, vectors, source, edges, tokenTexts);
  return {
    schema: GRAPH_SCHEMA,
    metadata: {
      model: attribution.model.dir,
      transcoders: [...attribution.replacement.placements.values()].map((p) => ({ layer: p.layer, hookIn: p.hookIn, hookOut: p.hookOut, dSae: attribution.transcoders.get(p.layer)!.config.dSae })),
      prompt: options.prompt ?? null,
      tokens: [...attribution.tokens],
      tokenTexts,
      root: nodeId(root),
      search: options.search,
    },
    nodes: [...nodes.values()],
    edges: [...edges.values()],
  };
}

/**
 * For every node with children in the graph: per-layer transcoder errors along its vector
 * (`err.tc{l}@{t}`, shared by the parents at that position), its encoder bias if it is a feature
 * (`err.bias.<id>`), and the part of its contribution its children do not explain (`err.prune.<id>`).
 */
function addErrorNodes(
  attribution: Attribution,
  nodes: Map<string, GraphNode>,
  vectors: Map<string, Float32Array>,
  source: Map<string, AttributionNode>,
  edges: Map<string, GraphEdge>,
  tokenTexts: (string | null)[],
): void {
  const children = new Map<string, number>();
  for (const e of edges.values()) children.set(e.target, (children.get(e.target) ?? 0) + e.weight);
  const add = (node: GraphNode, target: string, weight: number) => {
    const existing = nodes.get(node.id);
    if (existing) existing.contribution += weight;
    else nodes.set(node.id, { ...node, contribution: weight });
    edges.set(`${node.id}\u0000${target}`, { source: node.id, target, weight });
  };
  for (const [parentId, explained] of children) {
    const parent = nodes.get(parentId)!;
    const n = source.get(parentId)!;
    const t = parent.position;
    const v = vectors.get(parentId)!;
    const mlpLayers = n.sublayer === 'resid_post' ? n.layer + 1 : n.layer;
    const vector = Tensor.from(v, [v.length]);
    for (let l = 0; l < mlpLayers; l++) {
      if (!attribution.transcoders.has(l)) continue;
      const weight = attribution.transcoderError(vector, l, t);
      add({ id: `err.tc${l}@${t}`, kind: 'error', error: 'transcoder', layer: l, position: t, token: tokenTexts[t] ?? null, contribution: 0 }, parentId, weight);
    }
    // A feature's own bias, unscaled as the paper has it (E5); an attention node's LayerNorm and value
    // biases (non-zero on raw models only) exactly.
    const bias = n.kind === 'feature' ? attribution.featureBias(n.layer, n.feature!) : n.kind === 'attention' ? n.bias : 0;
    if (n.kind === 'feature' || bias !== 0) {
      add({ id: `err.bias.${parentId}`, kind: 'error', error: 'bias', layer: n.layer, position: t, token: tokenTexts[t] ?? null, contribution: 0 }, parentId, bias);
    }
    add({ id: `err.prune.${parentId}`, kind: 'error', error: 'prune', layer: n.layer, position: t, token: tokenTexts[t] ?? null, contribution: 0 }, parentId, parent.contribution - explained);
  }
}

/** The id of a node with its position dropped (for graphs summed over tokens). */
function withoutPosition(id: string): string {
  return id.replace(/@\d+/g, '');
}

/**
 * The graph with every position merged (paper's sum_over_tokens): nodes that differ only by position
 * become one, their contributions and the weights of merged edges summed. Positions become -1.
 */
export function sumOverTokens(graph: CircuitGraph): CircuitGraph {
  const nodes = new Map<string, GraphNode>();
  for (const n of graph.nodes) {
    const id = withoutPosition(n.id);
    const existing = nodes.get(id);
    if (existing) existing.contribution += n.contribution;
    else {
      const { activation: _activation, ...rest } = n;
      nodes.set(id, { ...rest, id, position: -1, token: null });
    }
  }
  const edges = new Map<string, GraphEdge>();
  for (const e of graph.edges) {
    const source = withoutPosition(e.source);
    const target = withoutPosition(e.target);
    const key = `${source}\u0000${target}`;
    const existing = edges.get(key);
    if (existing) existing.weight += e.weight;
    else edges.set(key, { source, target, weight: e.weight });
  }
  return { ...graph, metadata: { ...graph.metadata, root: withoutPosition(graph.metadata.root) }, nodes: [...nodes.values()], edges: [...edges.values()] };
}
