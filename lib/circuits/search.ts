/**
 * Greedy path search (paper-method.md §3.5): a beam search from a root node down through its
 * largest contributors. Each iteration expands every path of the beam by its top `branches`
 * children and keeps the `branches` best paths by the contribution of their last node, which is
 * the attribution of the whole path to the root.
 */
import { InvalidArgumentError } from '../errors.js';
import type { Attribution, AttributionNode } from './attribution.js';

/** A path: root first, each node a child of the one before. */
export type Path = AttributionNode[];

/** Which nodes may enter a path (all must hold). */
export interface NodeFilter {
  kinds?: AttributionNode['kind'][];
  minLayer?: number;
  maxLayer?: number;
  positions?: number[];
  features?: number[];
}

export interface SearchOptions {
  /** Iterations (path lengths 2 .. iters + 1; default 3). */
  iters?: number;
  /** Children per node and beam width (default 10). */
  branches?: number;
  /** Ignore attention from the first position (BOS; default true). */
  ignoreBos?: boolean;
  /**
   * "Zero-ablation" mode: a contribution cannot exceed the activation of the last transcoder feature
   * on its path (removing an upstream component can at most switch a ReLU feature off). Off by default
   * (raw attributions); graphs need raw attributions.
   */
  cap?: boolean;
  filter?: NodeFilter;
}

/** The search defaults, shared by the library, `transcoders circuit`, the demo and the bench. */
export const SEARCH_DEFAULTS: Readonly<Required<Pick<SearchOptions, 'iters' | 'branches' | 'ignoreBos' | 'cap'>>> = Object.freeze({
  iters: 3,
  branches: 10,
  ignoreBos: true,
  cap: false,
});

/** `options` with every unset search parameter at its default. */
export function searchParameters(options: SearchOptions = {}): Required<Pick<SearchOptions, 'iters' | 'branches' | 'ignoreBos' | 'cap'>> {
  return {
    iters: options.iters ?? SEARCH_DEFAULTS.iters,
    branches: options.branches ?? SEARCH_DEFAULTS.branches,
    ignoreBos: options.ignoreBos ?? SEARCH_DEFAULTS.ignoreBos,
    cap: options.cap ?? SEARCH_DEFAULTS.cap,
  };
}

export function matches(node: AttributionNode, filter: NodeFilter | undefined): boolean {
  if (!filter) return true;
  if (filter.kinds && !filter.kinds.includes(node.kind)) return false;
  if (filter.minLayer !== undefined && node.layer < filter.minLayer) return false;
  if (filter.maxLayer !== undefined && node.layer > filter.maxLayer) return false;
  if (filter.positions && !filter.positions.includes(node.position)) return false;
  if (filter.features && (node.feature === undefined || !filter.features.includes(node.feature))) return false;
  return true;
}

/** Embedding nodes and layer-0 attention (reading resid_pre of layer 0) have no children. */
export function isTerminal(node: AttributionNode): boolean {
  return node.layer === 0 && node.sublayer === 'resid_pre';
}

/** The cap of zero-ablation mode: the contribution of the path's last transcoder feature. */
function capOf(path: Path): number | undefined {
  for (let i = path.length - 1; i >= 0; i--) if (path[i]!.kind === 'feature') return path[i]!.contrib;
  return undefined;
}

/** Runs the search; returns the beam after each iteration (`iters` lists of paths). */
export async function greedyPaths(attribution: Attribution, root: AttributionNode, options: SearchOptions = {}): Promise<Path[][]> {
  const { iters, branches, ignoreBos, cap } = searchParameters(options);
  if (!Number.isInteger(iters) || iters < 1) throw new InvalidArgumentError(`iters must be a positive integer, got ${iters}`);
  if (!Number.isInteger(branches) || branches < 1) throw new InvalidArgumentError(`branches must be a positive integer, got ${branches}`);
  let beam: Path[] = [[root]];
  const levels: Path[][] = [];
  for (let it = 0; it < iters; it++) {
    const candidates: Path[] = [];
    for (const path of beam) {
      const leaf = path.at(-1)!;
      if (isTerminal(leaf)) continue;
      const limit = cap ? capOf(path) : undefined;
      const kids = await attribution.children(leaf, branches, {
        ignoreBos,
        ...(limit !== undefined ? { cap: limit } : {}),
        keepAll: options.filter !== undefined,
      });
      const kept = kids.filter((k) => matches(k, options.filter)).slice(0, branches);
      for (const kid of kept) candidates.push([...path, kid]);
    }
    // Stable sort keeps candidates of equal contribution in expansion order.
    beam = candidates.sort((a, b) => b.at(-1)!.contrib - a.at(-1)!.contrib).slice(0, branches);
    levels.push(beam);
  }
  return levels;
}
