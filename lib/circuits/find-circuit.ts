/**
 * The circuit pipeline of the paper's method in one call: prompt -> tokens -> attribution on the
 * replacement model -> root -> greedy path search -> graph. `transcoders circuit`, the demo and the
 * bench all go through here (and through {@link writeGraph} for files), with the search defaults of
 * search.ts.
 */
import { InvalidArgumentError } from '../errors.js';
import { Attribution, type AttributionNode } from './attribution.js';
import { pathsToGraph, type CircuitGraph } from './graph.js';
import type { ReplacementModel } from './replacement-model.js';
import { greedyPaths, searchParameters, type Path, type SearchOptions } from './search.js';

/** What a search starts from. Positions may be negative (-1: the last token; default -1). */
export type CircuitRoot =
  | { kind: 'feature'; layer: number; feature: number; position?: number }
  | { kind: 'logit'; token: number; minus?: number; position?: number };

export interface CircuitOptions extends SearchOptions {
  /** Build the graph (default true; impossible with `cap`, which changes the attributions). */
  graph?: boolean;
}

export interface Circuit {
  attribution: Attribution;
  root: AttributionNode;
  /** The beam after each iteration. */
  levels: Path[][];
  /** The graph of the paths, with error nodes; null with `graph: false` or `cap`. */
  graph: CircuitGraph | null;
}

/** The attribution context of a prompt (text, tokenized with the model's BOS convention, or ids). */
export async function attribute(replacement: ReplacementModel, prompt: string | readonly number[]): Promise<Attribution> {
  const tokens = typeof prompt === 'string' ? replacement.tokenize(prompt) : [...prompt];
  if (tokens.length === 0) throw new InvalidArgumentError('the prompt has no tokens');
  return Attribution.create(replacement, tokens);
}

function resolvePosition(position: number | undefined, length: number): number {
  const p = position ?? -1;
  const resolved = p < 0 ? p + length : p;
  if (!Number.isInteger(p) || resolved < 0 || resolved >= length) throw new InvalidArgumentError(`position ${p} is outside the prompt (${length} tokens)`);
  return resolved;
}

/** The root node of `root` on this prompt. */
export function rootNode(attribution: Attribution, root: CircuitRoot): AttributionNode {
  const position = resolvePosition(root.position, attribution.tokens.length);
  if (root.kind === 'feature') return attribution.featureRoot(root.layer, root.feature, position);
  return attribution.logitRoot(position, root.token, root.minus);
}

/**
 * Searches the circuit of `root` on a prompt (text or token ids) or on an existing attribution
 * context, and builds its graph.
 */
export async function findCircuit(
  source: Attribution | { replacement: ReplacementModel; prompt: string | readonly number[] },
  root: CircuitRoot | AttributionNode,
  options: CircuitOptions = {},
): Promise<Circuit> {
  const attribution = source instanceof Attribution ? source : await attribute(source.replacement, source.prompt);
  const node = 'kind' in root && (root.kind === 'feature' || root.kind === 'logit') && !('vector' in root) ? rootNode(attribution, root as CircuitRoot) : (root as AttributionNode);
  const search = searchParameters(options);
  const levels = await greedyPaths(attribution, node, { ...options, ...search });
  const wantGraph = options.graph ?? true;
  const prompt = !(source instanceof Attribution) && typeof source.prompt === 'string' ? source.prompt : null;
  const graph = wantGraph && !search.cap ? pathsToGraph(attribution, levels, { prompt, search }) : null;
  return { attribution, root: node, levels, graph };
}
