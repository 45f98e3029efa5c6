/**
 * Where nodes go: one column per prompt token, one row per layer (embeddings at the bottom, logits at
 * the top). Columns are as wide as their most crowded cell asks for, within the space there is; a cell
 * with more nodes than fit side by side wraps them onto further lines within its row. Pure geometry,
 * no DOM, so a resize or a slider move just lays out again.
 */
import type { GraphModel, ViewNode } from './graph-model.js';

export interface Point {
  x: number;
  y: number;
}

export interface Column {
  position: number;
  /** Centre and extent in SVG units. */
  x: number;
  left: number;
  width: number;
}

export interface Row {
  label: string;
  y: number;
  top: number;
  height: number;
}

export interface Layout {
  width: number;
  height: number;
  plot: { left: number; right: number; top: number; bottom: number };
  columns: Column[];
  /** Bottom (embeddings) first. */
  rows: Row[];
  positions: Map<string, Point>;
}

/** Room for the layer labels (left), logit labels (top) and the slanted token labels (bottom). */
const MARGIN = { left: 76, right: 16, top: 64, bottom: 84 };
/** Centre-to-centre distance of nodes side by side in a cell. */
const NODE_SPACING = 14;
/** Narrow enough for ~40 tokens in the window; the slanted token labels still clear each other. */
const MIN_COLUMN_WIDTH = 20;
/** Below this the graph scrolls rather than squeezing rows further. */
const MIN_ROW_HEIGHT = 16;
/** Room a cell leaves around its nodes, sideways. */
const CELL_PAD = 8;
/** The share of a row's height a wrapped cell may fill. */
const ROW_FILL = 0.8;

/** The row index of a node: 0 embeddings, 1 + layer for features and errors, the last for logits. */
function rowOf(model: GraphModel, node: ViewNode): number {
  if (node.kind === 'embedding') return 0;
  if (node.kind === 'logit') return model.layers.length + 1;
  return (node.layer ?? 0) + 1;
}

const KIND_ORDER = { embedding: 0, feature: 1, error: 2, logit: 3 } as const;

/** Order within a cell: logits by probability, then features by index, errors last; tokens before positions. */
function cellOrder(a: ViewNode, b: ViewNode): number {
  if (a.kind !== b.kind) return KIND_ORDER[a.kind] - KIND_ORDER[b.kind];
  if (a.kind === 'logit') return (b.json.token_prob ?? 0) - (a.json.token_prob ?? 0);
  if (a.kind === 'feature') return (a.featureIndex ?? 0) - (b.featureIndex ?? 0);
  return a.json.feature === -1 ? 1 : b.json.feature === -1 ? -1 : 0;
}

/**
 * Column widths: each column's `wanted` width (its most crowded cell on one line) when they all fit in
 * `available`, else squeezed towards its `needed` width (the cell wrapped onto as many lines as its row
 * holds); when even those do not fit, the needed widths, and the graph scrolls sideways.
 */
function fitWidths(wanted: number[], needed: number[], available: number): number[] {
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  const totalWanted = sum(wanted);
  const totalNeeded = sum(needed);
  if (totalWanted <= available) return wanted.map((w) => w + (available - totalWanted) / wanted.length);
  if (totalNeeded >= available) return needed;
  const scale = (available - totalNeeded) / (totalWanted - totalNeeded);
  return wanted.map((w, i) => needed[i]! + (w - needed[i]!) * scale);
}

/** Lays out `nodes` (the visible ones) in a `width` x `height` area; the result may be wider when crowded. */
export function layoutGraph(model: GraphModel, nodes: ViewNode[], width: number, height: number): Layout {
  const nColumns = Math.max(model.tokens.length, ...nodes.map((n) => n.position + 1), 1);
  const nRows = model.layers.length + 2;
  const cells = new Map<string, ViewNode[]>();
  for (const node of nodes) {
    const key = `${rowOf(model, node)}:${node.position}`;
    const cell = cells.get(key);
    if (cell) cell.push(node);
    else cells.set(key, [node]);
  }
  const crowd = new Array<number>(nColumns).fill(1);
  for (const [key, cell] of cells) {
    const column = Number(key.slice(key.indexOf(':') + 1));
    crowd[column] = Math.max(crowd[column]!, cell.length);
  }

  const plotHeight = Math.max(nRows * MIN_ROW_HEIGHT, height - MARGIN.top - MARGIN.bottom);
  const rowHeight = plotHeight / nRows;
  const bottom = MARGIN.top + plotHeight;
  const rows: Row[] = Array.from({ length: nRows }, (_, r) => ({
    label: r === 0 ? 'Emb' : r === nRows - 1 ? 'Logits' : `L${r - 1}`,
    y: bottom - (r + 0.5) * rowHeight,
    top: bottom - (r + 1) * rowHeight,
    height: rowHeight,
  }));

  // A line of k nodes takes CELL_PAD + (k - 1) * NODE_SPACING; a row holds maxLines lines.
  const lineWidth = (k: number) => Math.max(MIN_COLUMN_WIDTH, CELL_PAD + (k - 1) * NODE_SPACING);
  const maxLines = Math.floor((rowHeight * ROW_FILL) / NODE_SPACING) + 1;
  const available = Math.max(0, width - MARGIN.left - MARGIN.right);
  const widths = fitWidths(crowd.map(lineWidth), crowd.map((c) => lineWidth(Math.ceil(c / maxLines))), available);
  const columns: Column[] = [];
  let left = MARGIN.left;
  widths.forEach((w, position) => {
    columns.push({ position, x: left + w / 2, left, width: w });
    left += w;
  });

  const positions = new Map<string, Point>();
  for (const [key, cell] of cells) {
    const [r, c] = key.split(':').map(Number) as [number, number];
    const column = columns[c]!;
    const row = rows[r]!;
    cell.sort(cellOrder);
    const perLine = Math.max(1, Math.floor((column.width - CELL_PAD) / NODE_SPACING) + 1);
    const lines = Math.ceil(cell.length / perLine);
    const lineGap = lines > 1 ? Math.min(NODE_SPACING, (row.height * ROW_FILL) / (lines - 1)) : 0;
    cell.forEach((node, i) => {
      const line = Math.floor(i / perLine);
      const inLine = line === lines - 1 ? cell.length - line * perLine : perLine;
      const slot = i - line * perLine;
      positions.set(node.id, {
        x: column.x + (slot - (inLine - 1) / 2) * NODE_SPACING,
        y: row.y + (line - (lines - 1) / 2) * lineGap,
      });
    });
  }
  return {
    width: Math.max(width, left + MARGIN.right),
    height: bottom + MARGIN.bottom,
    plot: { left: MARGIN.left, right: left, top: MARGIN.top, bottom },
    columns,
    rows,
    positions,
  };
}
