/**
 * The one writer of circuit graphs: JSON (the schema of graph.ts, documented in docs/circuits.md),
 * Graphviz DOT and a self-contained HTML/SVG page, each written atomically. Output paths are
 * checked by the callers before anything is computed (lib/cli/command.ts checkOutputPaths).
 */
import { writeFileAtomic } from '../io/atomic.js';
import type { CircuitGraph } from './graph.js';
import { toDot, toHtml } from './render.js';

export interface GraphFiles {
  /** JSON file. */
  json?: string;
  /** Graphviz DOT file. */
  dot?: string;
  /** Self-contained HTML/SVG page. */
  html?: string;
  /** Title of the HTML page (default: the root's id). */
  title?: string;
}

/** The graph's JSON text. */
export function graphJson(graph: CircuitGraph, indent = 2): string {
  return JSON.stringify(graph, null, indent) + '\n';
}

/** Writes the graph in every format `files` names. */
export function writeGraph(graph: CircuitGraph, files: GraphFiles): void {
  if (files.json) writeFileAtomic(files.json, [graphJson(graph)]);
  if (files.dot) writeFileAtomic(files.dot, [toDot(graph)]);
  if (files.html) writeFileAtomic(files.html, [toHtml(graph, files.title ?? `Circuit of ${graph.metadata.root}`)]);
}
