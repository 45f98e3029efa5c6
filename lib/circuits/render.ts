/** Text, Graphviz DOT and self-contained HTML/SVG renderings of search paths and circuit graphs. */
import type { Attribution } from './attribution.js';
import { nodeId, type CircuitGraph, type GraphNode } from './graph.js';
import type { Path } from './search.js';

function short(x: number): string {
  return Math.abs(x) >= 100 || (Math.abs(x) < 0.01 && x !== 0) ? x.toExponential(2) : x.toFixed(3);
}

/** One line per path: `mlp8[89]@9: 7.570 <- attn2.h2@8: 0.350 <- embed@8: 0.170`, with token texts. */
export function formatPaths(attribution: Attribution, levels: Path[][]): string {
  const tokenizer = attribution.model.tokenizer;
  const text = (pos: number) => (tokenizer ? JSON.stringify(tokenizer.decode([attribution.tokens[pos]!])) : String(attribution.tokens[pos]));
  const lines: string[] = [];
  levels.forEach((paths, i) => {
    lines.push(`--- paths of length ${i + 2} ---`);
    paths.forEach((path, j) => {
      lines.push(`[${i}][${j}] ${path.map((n) => `${nodeId(n)} ${text(n.position)}: ${short(n.contrib)}${n.capped ? ' (capped)' : ''}`).join(' <- ')}`);
    });
  });
  return lines.join('\n');
}

function label(n: GraphNode): string {
  const token = n.token === null ? '' : ` ${JSON.stringify(n.token)}`;
  return `${n.id}${token}\n${short(n.contribution)}`;
}

/** Graphviz DOT: nodes ranked by layer, edges from contributor to contributee, pen width by weight. */
export function toDot(graph: CircuitGraph): string {
  const max = Math.max(1e-12, ...graph.edges.map((e) => Math.abs(e.weight)));
  const esc = (s: string) => s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
  const lines = ['digraph circuit {', '  rankdir=BT;', '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];'];
  const fill: Record<GraphNode['kind'], string> = { feature: '#c8f7c5', attention: '#c5dcf7', embedding: '#f7e7c5', error: '#eeeeee', logit: '#f7c5c5', direction: '#f7c5c5' };
  for (const n of graph.nodes) lines.push(`  "${esc(n.id)}" [label="${esc(label(n))}", fillcolor="${fill[n.kind]}"];`);
  for (const e of graph.edges) {
    const width = (0.5 + (3 * Math.abs(e.weight)) / max).toFixed(2);
    lines.push(`  "${esc(e.source)}" -> "${esc(e.target)}" [penwidth=${width}, color="${e.weight < 0 ? '#cc3333' : '#333333'}", label="${short(e.weight)}", fontsize=8];`);
  }
  lines.push('}');
  return lines.join('\n') + '\n';
}

export const escapeHtml = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/**
 * The graph as an inline SVG: x = layer (+0.5 for nodes read between attention and MLP, -0.25 for
 * error nodes), nodes spread vertically within a column, green intensity by contribution, edges with
 * width by |weight| (red when negative), hover titles. `errors: false` leaves out the error nodes.
 */
export function graphSvg(graph: CircuitGraph, options: { errors?: boolean } = {}): string {
  if (options.errors === false) {
    const kept = graph.nodes.filter((n) => n.kind !== 'error');
    const ids = new Set(kept.map((n) => n.id));
    graph = { ...graph, nodes: kept, edges: graph.edges.filter((e) => ids.has(e.source) && ids.has(e.target)) };
  }
  const column = (n: GraphNode) => n.layer + (n.kind === 'error' ? -0.25 : n.kind === 'feature' ? 0.5 : 0) + (n.kind === 'logit' || n.kind === 'direction' ? 1 : 0);
  const columns = new Map<number, GraphNode[]>();
  for (const n of graph.nodes) columns.set(column(n), [...(columns.get(column(n)) ?? []), n]);
  const xs = [...columns.keys()].sort((a, b) => a - b);
  const width = 140 * Math.max(2, xs.length) + 80;
  const height = 70 * Math.max(2, ...[...columns.values()].map((c) => c.length)) + 80;
  const pos = new Map<string, { x: number; y: number }>();
  xs.forEach((x, ci) => {
    const nodes = columns.get(x)!.sort((a, b) => a.position - b.position || b.contribution - a.contribution);
    nodes.forEach((n, k) => pos.set(n.id, { x: 60 + ci * 140, y: 40 + ((k + 0.5) * (height - 80)) / nodes.length }));
  });
  const maxNode = Math.max(1e-12, ...graph.nodes.map((n) => Math.abs(n.contribution)));
  const maxEdge = Math.max(1e-12, ...graph.edges.map((e) => Math.abs(e.weight)));
  const edges = graph.edges.map((e) => {
    const a = pos.get(e.source)!;
    const b = pos.get(e.target)!;
    const w = (0.5 + (5 * Math.abs(e.weight)) / maxEdge).toFixed(2);
    return `<line x1="${a.x}" y1="${a.y}" x2="${b.x}" y2="${b.y}" stroke="${e.weight < 0 ? '#cc3333' : '#555'}" stroke-opacity="0.7" stroke-width="${w}" marker-end="url(#arrow)"><title>${escapeHtml(`${e.source} -> ${e.target}: ${short(e.weight)}`)}</title></line>`;
  });
  const nodes = graph.nodes.map((n) => {
    const p = pos.get(n.id)!;
    const g = Math.round(255 - 200 * Math.min(1, Math.abs(n.contribution) / maxNode));
    const fill = n.kind === 'error' ? '#dddddd' : n.contribution < 0 ? `rgb(255,${g},${g})` : `rgb(${g},255,${g})`;
    const tip = `${n.id}${n.token === null ? '' : ` ${JSON.stringify(n.token)}`}\ncontribution ${short(n.contribution)}${n.activation !== undefined ? `\nactivation ${short(n.activation)}` : ''}`;
    return `<g><circle cx="${p.x}" cy="${p.y}" r="13" fill="${fill}" stroke="#333"/><text x="${p.x}" y="${p.y + 26}" font-size="10" text-anchor="middle">${escapeHtml(n.id)}</text><title>${escapeHtml(tip)}</title></g>`;
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="26" refY="5" markerUnits="userSpaceOnUse" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>
${edges.join('\n')}
${nodes.join('\n')}
</svg>`;
}

/** The prompt's tokens, separated, with their positions as hover titles. */
export function tokensHtml(graph: CircuitGraph): string {
  return graph.metadata.tokenTexts.map((t, i) => `<span title="position ${i}">${escapeHtml(t ?? String(graph.metadata.tokens[i]))}</span>`).join('<span class="sep">|</span>');
}

/** A self-contained HTML page (inline SVG, no scripts from elsewhere) showing the graph. */
export function toHtml(graph: CircuitGraph, title = 'Circuit'): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<style>body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#222}.sep{color:#bbb;margin:0 2px}code{background:#f4f4f4;padding:1px 4px}</style></head>
<body><h1>${escapeHtml(title)}</h1>
<p>Root <code>${escapeHtml(graph.metadata.root)}</code> · model <code>${escapeHtml(graph.metadata.model)}</code> · search iters ${graph.metadata.search.iters}, branches ${graph.metadata.search.branches}</p>
<p>${tokensHtml(graph)}</p>
${graphSvg(graph)}
<p>Edges point from a contributing component to the node it contributes to; width ∝ |attribution|, red when negative. Hover for values.</p>
</body></html>
`;
}
