/**
 * Graph JSON in, the viewer's model out: parsing with messages that name the bad field (files come from
 * users), node kinds and rows, and the client-side pruning the sliders apply. Pure functions, no DOM,
 * so the rules can be read (and tested) apart from the drawing.
 */
import type { GraphJson, GraphJsonLink, GraphJsonNode, QParams } from './types.js';

export type NodeKind = 'feature' | 'error' | 'embedding' | 'logit';

export interface ViewNode {
  id: string;
  json: GraphJsonNode;
  kind: NodeKind;
  /** The transcoder layer of features and errors; null for embeddings and logits (they get their own rows). */
  layer: number | null;
  position: number;
  /** The transcoder's feature index (what feature cards and interventions use); null off features. */
  featureIndex: number | null;
}

export interface ViewLink {
  source: ViewNode;
  target: ViewNode;
  weight: number;
}

export interface GraphModel {
  json: GraphJson;
  slug: string;
  tokens: string[];
  nodes: ViewNode[];
  byId: Map<string, ViewNode>;
  links: ViewLink[];
  /** Layers 0 .. the deepest feature or error layer: the rows between embeddings and logits. */
  layers: number[];
  /** Links whose endpoints are not nodes of the file (skipped, reported in the UI). */
  skippedLinks: number;
}

/** circuit-tracer's feature_type values; anything else is drawn as a feature, as circuit-tracer's viewer does. */
const KIND_OF_TYPE: Record<string, NodeKind> = {
  'cross layer transcoder': 'feature',
  'mlp reconstruction error': 'error',
  embedding: 'embedding',
  logit: 'logit',
};

/** circuit-tracer's pruning defaults, for graphs that do not say theirs. */
const DEFAULT_NODE_THRESHOLD = 0.8;
const DEFAULT_EDGE_THRESHOLD = 0.98;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function fail(message: string): never {
  throw new Error(`not an attribution graph: ${message}`);
}

/** The five qParams keys circuit-tracer requires, defaulted; extra keys (our clerps) kept. */
function normalizeQParams(value: unknown): QParams {
  const q = isRecord(value) ? value : {};
  const strings = (v: unknown) => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);
  return {
    ...q,
    pinnedIds: strings(q.pinnedIds),
    supernodes: Array.isArray(q.supernodes) ? q.supernodes.map(strings).filter((s) => s.length > 0) : [],
    linkType: typeof q.linkType === 'string' ? q.linkType : 'both',
    clickedId: typeof q.clickedId === 'string' ? q.clickedId : '',
    sg_pos: typeof q.sg_pos === 'string' ? q.sg_pos : '',
  };
}

/**
 * Checks the fields the viewer relies on and returns the graph with qParams defaulted. Throws an Error
 * naming the first bad field.
 */
export function parseGraphJson(value: unknown): GraphJson {
  if (!isRecord(value)) fail('expected a JSON object with metadata, nodes and links');
  const { metadata, nodes, links } = value;
  if (!isRecord(metadata)) fail('metadata is missing');
  if (!Array.isArray(metadata.prompt_tokens) || !metadata.prompt_tokens.every((t) => typeof t === 'string')) fail('metadata.prompt_tokens must be an array of strings');
  if (typeof metadata.slug !== 'string') fail('metadata.slug must be a string');
  if (typeof metadata.prompt !== 'string') fail('metadata.prompt must be a string');
  if (!Array.isArray(nodes)) fail('nodes must be an array');
  if (!Array.isArray(links)) fail('links must be an array');
  nodes.forEach((n: unknown, i) => {
    if (!isRecord(n)) fail(`nodes[${i}] is not an object`);
    if (typeof n.node_id !== 'string' || n.node_id === '') fail(`nodes[${i}].node_id must be a non-empty string`);
    if (typeof n.layer !== 'string') fail(`nodes[${i}].layer must be a string`);
    if (typeof n.ctx_idx !== 'number' || !Number.isInteger(n.ctx_idx) || n.ctx_idx < 0) fail(`nodes[${i}].ctx_idx must be a position`);
    if (typeof n.feature_type !== 'string') fail(`nodes[${i}].feature_type must be a string`);
    if (typeof n.feature !== 'number') fail(`nodes[${i}].feature must be a number`);
  });
  links.forEach((l: unknown, i) => {
    if (!isRecord(l) || typeof l.source !== 'string' || typeof l.target !== 'string' || typeof l.weight !== 'number' || !Number.isFinite(l.weight)) {
      fail(`links[${i}] must be {source, target, weight} with a finite weight`);
    }
  });
  // A missing label is an empty one (the schema requires clerp; older files may lack it).
  const withLabels = (nodes as GraphJsonNode[]).map((n) => (typeof n.clerp === 'string' ? n : { ...n, clerp: '' }));
  return { ...value, metadata: metadata as GraphJson['metadata'], nodes: withLabels, links: links as GraphJsonLink[], qParams: normalizeQParams(value.qParams) };
}

/** Inverse of the Cantor pairing (x + y)(x + y + 1) / 2 + y. */
function cantorUnpair(z: number): [number, number] {
  const w = Math.floor((Math.sqrt(8 * z + 1) - 1) / 2);
  const y = z - (w * (w + 1)) / 2;
  return [w - y, y];
}

/**
 * A feature node's index in its transcoder. The `feature` field is newer circuit-tracer's Cantor id of
 * (layer, index), so the index comes from the node id `{layer}_{index}_{pos}`; failing that, from
 * unpairing `feature` when it gives back the node's layer; else `feature` itself (older files).
 */
export function featureIndexOf(node: GraphJsonNode, layer: number): number {
  const m = /^(\d+)_(\d+)_(\d+)$/.exec(node.node_id);
  if (m && Number(m[1]) === layer) return Number(m[2]);
  if (Number.isSafeInteger(node.feature) && node.feature >= 0) {
    const [x, y] = cantorUnpair(node.feature);
    if (x === layer) return y;
  }
  return node.feature;
}

/** The viewer's model of a parsed graph. Duplicate node ids are an error; links to unknown nodes are skipped. */
export function buildModel(json: GraphJson): GraphModel {
  const nodes: ViewNode[] = [];
  const byId = new Map<string, ViewNode>();
  let deepest = -1;
  for (const n of json.nodes) {
    if (byId.has(n.node_id)) fail(`node id ${JSON.stringify(n.node_id)} appears twice`);
    let kind: NodeKind = KIND_OF_TYPE[n.feature_type] ?? 'feature';
    const layerNumber = /^\d+$/.test(n.layer) ? Number(n.layer) : null;
    if (kind === 'feature' || kind === 'error') {
      // A feature or error needs a numeric layer to have a row; an "E" one is drawn with the inputs.
      if (layerNumber === null) kind = 'embedding';
      else deepest = Math.max(deepest, layerNumber);
    }
    const layer = kind === 'feature' || kind === 'error' ? layerNumber : null;
    const node: ViewNode = {
      id: n.node_id,
      json: n,
      kind,
      layer,
      position: n.ctx_idx,
      featureIndex: kind === 'feature' && layer !== null ? featureIndexOf(n, layer) : null,
    };
    nodes.push(node);
    byId.set(node.id, node);
  }
  const links: ViewLink[] = [];
  let skippedLinks = 0;
  for (const l of json.links) {
    const source = byId.get(l.source);
    const target = byId.get(l.target);
    if (source && target) links.push({ source, target, weight: l.weight });
    else skippedLinks++;
  }
  const tokens = [...json.metadata.prompt_tokens];
  return {
    json,
    slug: json.metadata.slug,
    tokens,
    nodes,
    byId,
    links,
    layers: Array.from({ length: deepest + 1 }, (_, i) => i),
    skippedLinks,
  };
}

/** The slider values a graph starts with: its pruning settings, else circuit-tracer's defaults. */
export function initialThresholds(json: GraphJson): { node: number; edge: number } {
  const s = json.metadata.pruning_settings;
  const valid = (v: unknown): v is number => typeof v === 'number' && v > 0 && v <= 1;
  return {
    node: valid(s?.node_threshold) ? s.node_threshold : valid(json.metadata.node_threshold) ? json.metadata.node_threshold : DEFAULT_NODE_THRESHOLD,
    edge: valid(s?.edge_threshold) ? s.edge_threshold : DEFAULT_EDGE_THRESHOLD,
  };
}

export interface PrunedView {
  nodes: ViewNode[];
  links: ViewLink[];
}

/**
 * The sliders' pruning, on the file's nodes and links. The file is already pruned at its own
 * thresholds (metadata.pruning_settings), so at or above them it is shown as it is; below them:
 * 1. keep feature and error nodes with cumulative influence ≤ nodeThreshold (as the pruning did; no
 *    influence: keep), and embeddings, logits and the nodes in `keep` (the pinned ones: a user's
 *    choice outlasts a slider) always;
 * 2. of the links between kept nodes, by |weight| descending, keep each while the cumulative share of
 *    |weight| before it is below edgeThreshold / the file's edge threshold (the file's links carry that
 *    share of the edge score; circuit-tracer's score itself needs the unpruned graph, so |weight| stands
 *    in for it). A zero-weight link is never kept;
 * 3. drop feature and error nodes left without a kept link (never those in `keep`).
 */
export function pruneView(model: GraphModel, nodeThreshold: number, edgeThreshold: number, keep: ReadonlySet<string> = new Set()): PrunedView {
  const file = initialThresholds(model.json);
  const alwaysKept = (n: ViewNode) => n.kind === 'embedding' || n.kind === 'logit' || keep.has(n.id);
  const kept = new Set<ViewNode>();
  for (const n of model.nodes) {
    const influence = n.json.influence;
    if (alwaysKept(n) || nodeThreshold >= file.node || typeof influence !== 'number' || influence <= nodeThreshold) kept.add(n);
  }
  const candidates = model.links.filter((l) => kept.has(l.source) && kept.has(l.target) && l.weight !== 0);
  const share = edgeThreshold >= file.edge ? Infinity : edgeThreshold / file.edge;
  candidates.sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight));
  const total = candidates.reduce((sum, l) => sum + Math.abs(l.weight), 0);
  const links: ViewLink[] = [];
  let cumulative = 0;
  for (const l of candidates) {
    if (cumulative / total >= share) break;
    links.push(l);
    cumulative += Math.abs(l.weight);
  }
  const linked = new Set<ViewNode>();
  for (const l of links) {
    linked.add(l.source);
    linked.add(l.target);
  }
  return { nodes: model.nodes.filter((n) => kept.has(n) && (alwaysKept(n) || linked.has(n))), links };
}

/** The token at a position, or "" past the prompt. */
export function tokenAt(model: GraphModel, position: number): string {
  return model.tokens[position] ?? '';
}

/** What a node is called in the panel and tooltip when it has no label of its own. */
export function defaultName(model: GraphModel, node: ViewNode): string {
  switch (node.kind) {
    case 'feature':
      return `L${node.layer} F${node.featureIndex}`;
    case 'error':
      return `error L${node.layer}`;
    case 'embedding':
      return /^E_-1_/.test(node.id) ? `Pos: ${node.position}` : `Emb: "${tokenAt(model, node.position)}"`;
    case 'logit':
      return `logit ${node.json.feature}`;
  }
}

/** The short text drawn next to a logit node: the quoted token of its label `Output "tok" (p=…)`. */
export function logitToken(label: string): string {
  const m = /^Output "(.*)" \(p=[^)]*\)$/s.exec(label);
  return m ? m[1]! : label;
}
