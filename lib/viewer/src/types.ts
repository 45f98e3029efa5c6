/**
 * The data the viewer reads: graph JSON (circuit-tracer / Neuronpedia format, as lib/graphs/graph-json.ts
 * writes it), feature cards (lib/features/feature-files.ts) and the service's answers. They are
 * restated here rather than imported: the viewer is compiled for the browser on its own
 * (lib/viewer/tsconfig.json) and the Node-side modules pull in Node's APIs; and the graph types are
 * looser than the writer's (optional fields), since the viewer also opens files other tools wrote.
 */

export interface GraphJsonMetadata {
  slug: string;
  scan: string;
  transcoder_list?: string[];
  /** Decoded tokens with circuit-tracer's escapes (⏎, →, ↵). */
  prompt_tokens: string[];
  prompt: string;
  node_threshold?: number | null;
  schema_version?: number | null;
  info?: { generator?: { name?: string; version?: string }; create_time_ms?: number; description?: string };
  pruning_settings?: { node_threshold?: number; edge_threshold?: number };
  [key: string]: unknown;
}

export interface GraphJsonNode {
  node_id: string;
  /** Features: the Cantor pairing of (layer, index); logits: the token id; embeddings: the position or -1. */
  feature: number;
  /** "E" for embeddings, the layer for features and errors, past the last layer for logits. */
  layer: string;
  ctx_idx: number;
  feature_type: string;
  token_prob?: number;
  is_target_logit?: boolean;
  jsNodeId?: string;
  clerp: string;
  /** Cumulative influence share in [0, 1]: smaller is more important. */
  influence?: number | null;
  activation?: number | null;
  [key: string]: unknown;
}

export interface GraphJsonLink {
  source: string;
  target: string;
  weight: number;
}

/** The viewer's saved state; `clerps` (edited labels) is ours, the other five keys circuit-tracer's. */
export interface QParams {
  pinnedIds: string[];
  /** Each: [label, ...node ids]. */
  supernodes: string[][];
  linkType: string;
  clickedId: string;
  sg_pos: string;
  clerps?: [string, string][];
  [key: string]: unknown;
}

export interface GraphJson {
  metadata: GraphJsonMetadata;
  qParams: QParams;
  nodes: GraphJsonNode[];
  links: GraphJsonLink[];
  [key: string]: unknown;
}

export interface FeatureExample {
  tokens: string[];
  tokens_acts_list: number[];
  train_token_ind: number;
  is_repeated_datapoint: boolean;
}

export interface FeatureCard {
  index: number;
  transcoder_id: string;
  layer: number;
  feature: number;
  examples_quantiles: { quantile_name: string; examples: FeatureExample[] }[];
  top_logits: string[];
  bottom_logits: string[];
  top_logit_values: number[];
  bottom_logit_values: number[];
  act_min: number;
  act_max: number;
  quantile_values: number[];
  histogram: number[];
  histogram_max: number;
  activation_frequency: number;
  de_embedding?: { top: string[]; top_values: number[]; bottom: string[]; bottom_values: number[] };
}

/** What a page's data.js may set: embedded graphs, and feature cards keyed "layer/index". */
export interface EmbeddedData {
  graphs?: unknown[];
  features?: Record<string, FeatureCard>;
}

declare global {
  interface Window {
    TRANSCODERS_DATA?: EmbeddedData;
  }
}

/** GET api/health. */
export interface Health {
  ok: true;
  model?: string;
  layers?: number[];
  features?: number[];
  graphs?: boolean;
  jobs?: { running: number; waiting: number };
}

export interface LogitEntry {
  token: string;
  id: number;
  logit: number;
  probability: number;
}

/** POST api/intervene. */
export interface InterveneResult {
  tokens: string[];
  position: number;
  baseline: LogitEntry[];
  intervened: LogitEntry[];
}

/** POST api/steer. */
export interface SteerResult {
  baseline: string;
  steered: string;
}

export type Intervention =
  | { layer: number; position: number; feature: number; value: number }
  | { layer: number; position: number; feature: number; scale: number };

export interface Steering {
  layer: number;
  feature: number;
  value: number;
  position: number | 'new';
}

/** A progress event of POST api/graph's stream. */
export interface GraphProgress {
  stage: string;
  done: number;
  total: number;
}
