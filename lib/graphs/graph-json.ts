/**
 * The attribution-graph JSON that circuit-tracer's viewer and Neuronpedia read (Anthropic's format, as
 * circuit-tracer writes it), built from a pruned graph, and the folder both viewers load it from:
 * `{dir}/{slug}.json` beside an index `{dir}/graph-metadata.json` = {"graphs": [metadata, ...]}.
 * The JSON Schema of the files is attribution-graph.schema.json (next to this file); docs/graphs.md
 * describes every field and the choices made for our extra node kinds.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Ajv, type ValidateFunction } from 'ajv';
import { FormatError, InvalidArgumentError, IoError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { describe, parseJsonText } from '../io/json.js';
import { lockFolder, type FolderLock } from '../io/lock.js';
import { prepareOutputFolder } from '../transcoders/formats/common.js';
import schema from './attribution-graph.schema.json' with { type: 'json' };
import { describeNode, toSparseAdjacency, validateAttributionGraph, type AttributionGraph, type GraphNode } from './graph.js';
import type { PruneResult } from './prune.js';

/** The `metadata.schema_version` circuit-tracer writes. */
export const GRAPH_JSON_SCHEMA_VERSION = 1;
/** The index file of a graph folder. */
export const GRAPH_METADATA_FILE = 'graph-metadata.json';

/** circuit-tracer's feature_type of each node kind in the JSON. */
export const FEATURE_TYPES = Object.freeze({
  feature: 'cross layer transcoder', // also for per-layer transcoders, as circuit-tracer writes it
  error: 'mlp reconstruction error',
  embedding: 'embedding',
  logit: 'logit',
});

export interface GraphJsonMetadata {
  slug: string;
  scan: string;
  transcoder_list: string[];
  /** Decoded tokens with circuit-tracer's escapes: newline ⏎, tab →, carriage return ↵. */
  prompt_tokens: string[];
  prompt: string;
  node_threshold: number;
  schema_version: number;
  info: {
    generator: { name: string; version?: string };
    create_time_ms?: number;
    description?: string;
  };
  pruning_settings: { node_threshold: number; edge_threshold: number };
  feature_details?: { feature_json_base_url?: string; neuronpedia_source_set?: string };
  [key: string]: unknown;
}

export interface GraphJsonNode {
  node_id: string;
  feature: number;
  layer: string;
  ctx_idx: number;
  feature_type: string;
  token_prob: number;
  is_target_logit: boolean;
  run_idx: number;
  reverse_ctx_idx: number;
  jsNodeId: string;
  clerp: string;
  influence: number | null;
  activation: number | null;
}

export interface GraphJsonLink {
  source: string;
  target: string;
  /** A[target, source]: the raw, signed direct effect. */
  weight: number;
}

export interface GraphJson {
  metadata: GraphJsonMetadata;
  /** The viewers' saved state; `clerps` (ours) holds labels edited in our viewer, [node_id, label]. */
  qParams: { pinnedIds: string[]; supernodes: string[][]; linkType: string; clickedId: string; sg_pos: string; clerps?: [string, string][] };
  nodes: GraphJsonNode[];
  links: GraphJsonLink[];
}

export interface GraphJsonOptions {
  /** The graph's name: its file is `{slug}.json`. Letters, digits, '.', '_' and '-' only. */
  slug: string;
  /** Overrides graph.scan. */
  scan?: string;
  /**
   * How positional-embedding nodes appear: 'embedding' (default) as embedding nodes at their position,
   * layer "E", node_id `E_-1_{pos}` (-1: no token id), so both viewers draw them in the input row;
   * 'omit' leaves them and their links out.
   */
  positionalNodes?: 'embedding' | 'omit';
  /** A feature node's label (`clerp`); default "". */
  featureLabel?: (node: GraphNode) => string | undefined;
  /** metadata.info.description. */
  description?: string;
  /** metadata.feature_details: where the viewers fetch feature cards. */
  featureDetails?: { feature_json_base_url?: string; neuronpedia_source_set?: string };
  /** metadata.info.create_time_ms (default: now). */
  createTimeMs?: number;
}

/** Cantor's pairing of (layer, feature): newer circuit-tracer's global feature id. */
export function cantorPairing(x: number, y: number): number {
  return ((x + y) * (x + y + 1)) / 2 + y;
}

/** circuit-tracer's escapes of prompt tokens (frontend/utils.py process_token). */
export function escapeToken(token: string): string {
  return token.replaceAll('\n', '⏎').replaceAll('\t', '→').replaceAll('\r', '↵');
}

/** Slugs are file names in the graph folder and URL parameters of the viewers. */
const SLUG_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const MAX_SLUG_LENGTH = 200;

/** Throws an InvalidArgumentError unless `slug` is a safe file name (no path separators, no leading dot). */
/** A slug from a prompt: its first words, lower case, safe characters only (what checkSlug accepts). */
export function slugOf(prompt: string): string {
  const slug = prompt.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 40).replace(/-+$/, '');
  return slug || 'graph';
}

export function checkSlug(slug: string): void {
  if (typeof slug !== 'string' || slug.length === 0 || slug.length > MAX_SLUG_LENGTH || !SLUG_PATTERN.test(slug)) {
    throw new InvalidArgumentError(
      `graph slug ${describe(slug)} is not allowed: use 1 to ${MAX_SLUG_LENGTH} letters, digits, '.', '_' or '-', starting with a letter or digit (no path separators)`,
    );
  }
}

let generatorVersion: string | undefined | null = null;
/** This library's version (package.json two folders up from lib/graphs and from dist/graphs). */
function libraryVersion(): string | undefined {
  if (generatorVersion === null) {
    try {
      const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
      generatorVersion = typeof pkg.version === 'string' ? pkg.version : undefined;
    } catch {
      generatorVersion = undefined;
    }
  }
  return generatorVersion;
}

/** A number written to the JSON: finite, or an InvalidArgumentError naming what it belongs to. */
function finite(value: number, what: () => string): number {
  if (!Number.isFinite(value)) throw new InvalidArgumentError(`graph JSON: ${what()} is ${value}; JSON files must hold finite numbers only`);
  return value;
}

/**
 * The graph JSON of `graph` pruned by `pruned` (pruneGraph's result on this graph). Nodes: the kept
 * features, errors, tokens, positional nodes (see `positionalNodes`) and logits, in graph order; feature
 * and error nodes without a link left are dropped, embeddings and logits stay (circuit-tracer's rule).
 * Links: the kept edges between written nodes, by target then source. Bias nodes are not written: neither
 * viewer has a node kind for an input without a position (docs/graphs.md); their influence still counts
 * in `influence`. Throws an InvalidArgumentError for a non-finite value, naming the node or link.
 */
export function buildGraphJson(graph: AttributionGraph, pruned: PruneResult, options: GraphJsonOptions): GraphJson {
  checkSlug(options.slug);
  const ranges = validateAttributionGraph(graph);
  const n = ranges.n;
  const { nodeMask, edgeMask, cumulativeInfluence } = pruned;
  if (nodeMask.length !== n || cumulativeInfluence.length !== n) {
    throw new InvalidArgumentError(`buildGraphJson: the prune result is for ${nodeMask.length} nodes, the graph has ${n}`);
  }
  const matrix = toSparseAdjacency(graph.adjacency);
  const denseMask = graph.adjacency.form === 'dense';
  if (edgeMask.length !== (denseMask ? n * n : matrix.columns.length)) {
    throw new InvalidArgumentError(`buildGraphJson: the prune result's edge mask has ${edgeMask.length} entries; this graph's ${denseMask ? 'dense' : 'sparse'} adjacency needs ${denseMask ? n * n : matrix.columns.length}`);
  }
  const scan = options.scan ?? graph.scan;
  if (typeof scan !== 'string' || scan === '') throw new InvalidArgumentError(`buildGraphJson: scan must be a non-empty string, got ${describe(scan)}`);
  const positional = options.positionalNodes ?? 'embedding';
  if (positional !== 'embedding' && positional !== 'omit') throw new InvalidArgumentError(`buildGraphJson: positionalNodes must be 'embedding' or 'omit', got ${describe(positional)}`);

  const promptTokens = graph.tokenStrings.map(escapeToken);
  const logitLayer = String(graph.nLayers + 1);
  const name = (i: number) => describeNode(graph.nodes, i);
  const ids: (string | null)[] = new Array(n).fill(null);
  const candidates: GraphJsonNode[] = new Array(n);
  for (let i = 0; i < n; i++) {
    if (!nodeMask[i]) continue;
    const node = graph.nodes[i]!;
    const influence = finite(cumulativeInfluence[i]!, () => `the influence of ${name(i)}`);
    const base = { token_prob: 0, is_target_logit: false, run_idx: 0, reverse_ctx_idx: 0, influence, activation: null as number | null };
    const pos = node.position;
    let json: GraphJsonNode;
    switch (node.kind) {
      case 'feature': {
        const feature = cantorPairing(node.layer, node.index);
        if (!Number.isSafeInteger(feature)) throw new InvalidArgumentError(`graph JSON: the Cantor id of ${name(i)} exceeds 2^53`);
        json = {
          ...base, node_id: `${node.layer}_${node.index}_${pos}`, feature, layer: String(node.layer), ctx_idx: pos,
          feature_type: FEATURE_TYPES.feature, jsNodeId: `${node.layer}_${node.index}-0`, clerp: options.featureLabel?.(node) ?? '',
          activation: finite(node.activation, () => `the activation of ${name(i)}`),
        };
        break;
      }
      case 'error':
        // Newer circuit-tracer's ids: "{layer}_-1_{pos}" cannot collide with a feature's "{layer}_{feat}_{pos}".
        json = { ...base, node_id: `${node.layer}_-1_${pos}`, feature: -1, layer: String(node.layer), ctx_idx: pos, feature_type: FEATURE_TYPES.error, jsNodeId: `${node.layer}_-1-${pos}`, clerp: '' };
        break;
      case 'token':
        json = { ...base, node_id: `E_${node.index}_${pos}`, feature: pos, layer: 'E', ctx_idx: pos, feature_type: FEATURE_TYPES.embedding, jsNodeId: `E_${node.index}-${pos}`, clerp: '' };
        break;
      case 'positional':
        if (positional === 'omit') continue;
        // feature -1 keeps the viewers' per-node key "{layer}_{feature}_{ctx}" apart from the token's.
        json = { ...base, node_id: `E_-1_${pos}`, feature: -1, layer: 'E', ctx_idx: pos, feature_type: FEATURE_TYPES.embedding, jsNodeId: `E_-1-${pos}`, clerp: `Pos: ${pos}` };
        break;
      case 'bias':
        continue;
      case 'logit': {
        const p = finite(node.probability ?? 0, () => `the probability of ${name(i)}`);
        const token = escapeToken(node.label ?? `#${node.index}`);
        json = {
          ...base, node_id: `${logitLayer}_${node.index}_${pos}`, feature: node.index, layer: logitLayer, ctx_idx: pos, feature_type: FEATURE_TYPES.logit,
          token_prob: p, is_target_logit: i === ranges.logit.start, jsNodeId: `L_${node.index}-${pos}`, clerp: `Output "${token}" (p=${p.toFixed(3)})`,
        };
        break;
      }
    }
    ids[i] = json.node_id;
    candidates[i] = json;
  }

  const links: GraphJsonLink[] = [];
  const linked = new Uint8Array(n);
  const { rowStart, columns, values } = matrix;
  for (let t = 0; t < n; t++) {
    const target = ids[t] ?? null;
    if (target === null) continue;
    for (let k = rowStart[t]!; k < rowStart[t + 1]!; k++) {
      const s = columns[k]!;
      const source = ids[s] ?? null;
      if (source === null || !(denseMask ? edgeMask[t * n + s] : edgeMask[k])) continue;
      const weight = finite(values[k]!, () => `the weight of the link from ${name(s)} to ${name(t)}`);
      links.push({ source, target, weight });
      linked[t] = 1;
      linked[s] = 1;
    }
  }
  const nodes: GraphJsonNode[] = [];
  for (let i = 0; i < n; i++) {
    if (ids[i] === null) continue;
    const kind = graph.nodes[i]!.kind;
    if (linked[i] || kind === 'token' || kind === 'positional' || kind === 'logit') nodes.push(candidates[i]!);
  }

  const version = libraryVersion();
  const metadata: GraphJsonMetadata = {
    slug: options.slug,
    scan,
    transcoder_list: [...graph.transcoderList],
    prompt_tokens: promptTokens,
    prompt: graph.prompt,
    node_threshold: finite(pruned.nodeThreshold, () => 'the node threshold'),
    schema_version: GRAPH_JSON_SCHEMA_VERSION,
    info: {
      generator: { name: 'transcoders', ...(version !== undefined && { version }) },
      create_time_ms: options.createTimeMs ?? Date.now(),
      ...(options.description !== undefined && { description: options.description }),
    },
    pruning_settings: { node_threshold: pruned.nodeThreshold, edge_threshold: finite(pruned.edgeThreshold, () => 'the edge threshold') },
    ...(options.featureDetails && { feature_details: { ...options.featureDetails } }),
  };
  return { metadata, qParams: { pinnedIds: [], supernodes: [], linkType: 'both', clickedId: '', sg_pos: '' }, nodes, links };
}

let validator: ValidateFunction | null = null;

/**
 * Checks `json` against attribution-graph.schema.json (ajv, allErrors, as Neuronpedia validates uploads)
 * and that every number is finite (JSON.stringify would write NaN and Infinity as null, which the
 * viewers misread): an InvalidArgumentError listing the first problems, by field.
 */
export function validateGraphJson(json: unknown): asserts json is GraphJson {
  validator ??= new Ajv({ allErrors: true, strict: false }).compile(schema);
  if (!validator(json)) {
    const errors = (validator.errors ?? []).slice(0, 5).map((e) => `${e.instancePath || '(top level)'} ${e.message ?? 'is invalid'}`);
    const more = (validator.errors?.length ?? 0) > 5 ? `, and ${validator.errors!.length - 5} more` : '';
    throw new InvalidArgumentError(`graph JSON does not match attribution-graph.schema.json: ${errors.join('; ')}${more}`);
  }
  const graph = json as GraphJson;
  const check = (value: unknown, what: () => string) => {
    if (typeof value === 'number' && !Number.isFinite(value)) throw new InvalidArgumentError(`graph JSON: ${what()} is ${value}; JSON files must hold finite numbers only`);
  };
  graph.nodes.forEach((node, i) => {
    for (const key of ['feature', 'ctx_idx', 'token_prob', 'influence', 'activation', 'run_idx', 'reverse_ctx_idx'] as const) {
      check(node[key], () => `nodes[${i}].${key} (node ${describe(node.node_id)})`);
    }
  });
  graph.links.forEach((link, i) => check(link.weight, () => `links[${i}].weight (from ${describe(link.source)} to ${describe(link.target)})`));
  const metadata = graph.metadata as Record<string, unknown>;
  check(metadata.node_threshold, () => 'metadata.node_threshold');
}

/** The JSON text of `json` in pieces (nodes and links in batches), so no single string holds a large graph. */
function* graphJsonChunks(json: GraphJson): Generator<string> {
  const { nodes, links, ...head } = json;
  const headText = JSON.stringify(head);
  yield `${headText.slice(0, -1)},"nodes":[`;
  const batch = 2048;
  for (let i = 0; i < nodes.length; i += batch) yield (i > 0 ? ',' : '') + nodes.slice(i, i + batch).map((x) => JSON.stringify(x)).join(',');
  yield '],"links":[';
  for (let i = 0; i < links.length; i += batch) yield (i > 0 ? ',' : '') + links.slice(i, i + batch).map((x) => JSON.stringify(x)).join(',');
  yield ']}\n';
}

export interface WriteGraphFilesOptions {
  /** How long to wait for another process's lock on the folder (default 10 s). */
  lockTimeoutMs?: number;
}

export interface GraphFilesWritten {
  graphFile: string;
  metadataFile: string;
}

/** The entries of an existing graph-metadata.json; a FormatError naming it when it is not one. */
function readGraphMetadataIndex(file: string): Record<string, unknown>[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new FormatError(`${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`, file);
  }
  const corrupt = (why: string): never => {
    throw new FormatError(`${file}: not a valid graph index (${why}); expected {"graphs": [metadata, ...]}. Fix or remove it.`, file);
  };
  const value = parseJsonText(text, file, 'not a valid graph index (invalid JSON)');
  if (typeof value !== 'object' || value === null || Array.isArray(value)) corrupt(`the top level is ${describe(value)}`);
  const graphs = (value as Record<string, unknown>).graphs;
  if (!Array.isArray(graphs)) corrupt(`field 'graphs' is ${describe(graphs)}`);
  (graphs as unknown[]).forEach((entry, i) => {
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry) || typeof (entry as Record<string, unknown>).slug !== 'string') {
      corrupt(`graphs[${i}] is ${describe(entry)}, not metadata with a slug`);
    }
  });
  return graphs as Record<string, unknown>[];
}

/**
 * Writes `{dir}/{slug}.json` atomically and adds its metadata to `{dir}/graph-metadata.json` (replacing
 * the entry with the same slug), atomically, holding the folder's lock (lib/io/lock.ts) so that two
 * writers cannot lose each other's entries. Creates `dir`. Validates the slug (it must equal
 * json.metadata.slug) and the JSON (validateGraphJson) before writing anything; a corrupt existing
 * graph-metadata.json is a FormatError naming it, and nothing is written then.
 */
export async function writeGraphFiles(dir: string, slug: string, json: GraphJson, options: WriteGraphFilesOptions = {}): Promise<GraphFilesWritten> {
  checkSlug(slug);
  validateGraphJson(json);
  if (json.metadata.slug !== slug) throw new InvalidArgumentError(`writeGraphFiles: slug ${describe(slug)} differs from the graph's metadata.slug ${describe(json.metadata.slug)}`);
  prepareOutputFolder(dir, 'writeGraphFiles');
  const graphFile = join(dir, `${slug}.json`);
  const metadataFile = join(dir, GRAPH_METADATA_FILE);
  const deadline = Date.now() + (options.lockTimeoutMs ?? 10_000);
  let lock: FolderLock;
  for (;;) {
    try {
      lock = lockFolder(dir, 'transcoders writeGraphFiles');
      break;
    } catch (err) {
      if (!(err instanceof IoError && err.code === 'EBUSY') || Date.now() >= deadline) throw err;
      await sleep(50);
    }
  }
  try {
    // Read (and judge) the index first: a corrupt one stops everything before the graph file is written.
    const entries = readGraphMetadataIndex(metadataFile).filter((entry) => entry.slug !== slug);
    writeFileAtomic(graphFile, graphJsonChunks(json));
    entries.push(json.metadata);
    writeFileAtomic(metadataFile, [JSON.stringify({ graphs: entries }, null, 2) + '\n']);
  } finally {
    lock.release();
  }
  return { graphFile, metadataFile };
}
