/**
 * Draws the pruned graph into the page's SVG: axes (token columns, layer rows), links coloured by sign
 * and as thick as their |weight|, nodes shaped by kind, supernode boxes and a few labels. Selection,
 * pins and highlighting are classes toggled on the drawn elements, so a click does not lay out again.
 */
import { defaultName, logitToken, type GraphModel, type PrunedView, type ViewLink, type ViewNode } from './graph-model.js';
import { clip, s } from './dom.js';
import { layoutGraph, type Layout, type Point } from './layout.js';
import type { ViewerState } from './state.js';

export interface GraphViewHandlers {
  onHover(node: ViewNode | null, event: MouseEvent): void;
  onClick(node: ViewNode, event: MouseEvent): void;
  /** A click on the background: clears the selection. */
  onBackgroundClick(): void;
}

const NODE_RADIUS = 5;
const MAX_LINK_WIDTH = 4;
const MIN_LINK_WIDTH = 0.4;

/** The node's shape, centred on `p`: features circles, errors squares, embeddings and logits diamonds. */
function nodeShape(node: ViewNode, p: Point): SVGElement {
  const r = NODE_RADIUS;
  if (node.kind === 'feature') return s('circle', { cx: p.x, cy: p.y, r });
  if (node.kind === 'error') return s('rect', { x: p.x - r + 0.5, y: p.y - r + 0.5, width: 2 * r - 1, height: 2 * r - 1 });
  const d = r + 1;
  return s('path', { d: `M${p.x},${p.y - d}L${p.x + d},${p.y}L${p.x},${p.y + d}L${p.x - d},${p.y}Z` });
}

export class GraphView {
  /** The drawn nodes by id, and their elements. */
  private nodes = new Map<string, ViewNode>();
  private nodeElements = new Map<string, SVGElement>();
  private linkElements: { link: ViewLink; el: SVGLineElement }[] = [];

  constructor(
    private readonly svg: SVGSVGElement,
    handlers: GraphViewHandlers,
  ) {
    const nodeOf = (event: Event): ViewNode | null => {
      const el = (event.target as Element | null)?.closest?.('.node');
      const id = el?.getAttribute('data-node-id');
      return id ? (this.nodes.get(id) ?? null) : null;
    };
    svg.addEventListener('mousemove', (event) => handlers.onHover(nodeOf(event), event));
    svg.addEventListener('mouseleave', (event) => handlers.onHover(null, event));
    svg.addEventListener('click', (event) => {
      const node = nodeOf(event);
      if (node) handlers.onClick(node, event);
      else handlers.onBackgroundClick();
    });
  }

  /** Replaces the drawing with a message (no graph loaded). */
  renderEmpty(message: string, width: number, height: number): void {
    this.nodes.clear();
    this.nodeElements.clear();
    this.linkElements = [];
    this.setSize(width, height);
    this.svg.replaceChildren(s('text', { class: 'empty-message', x: width / 2, y: height / 2, 'text-anchor': 'middle' }, message));
  }

  /** Lays out and draws `view` in a `width` x `height` area, then applies the state's classes. */
  render(model: GraphModel, view: PrunedView, state: ViewerState, width: number, height: number): void {
    const layout = layoutGraph(model, view.nodes, width, height);
    this.setSize(layout.width, layout.height);
    this.nodes = new Map(view.nodes.map((n) => [n.id, n]));
    this.nodeElements.clear();

    const axes = this.drawAxes(model, layout);
    const maxWeight = Math.max(1e-12, ...view.links.map((l) => Math.abs(l.weight)));
    const linkGroup = s('g', { class: 'links' });
    // Weakest first, so strong links are drawn on top.
    this.linkElements = [...view.links].reverse().map((link) => {
      const a = layout.positions.get(link.source.id)!;
      const b = layout.positions.get(link.target.id)!;
      const width = MIN_LINK_WIDTH + (MAX_LINK_WIDTH - MIN_LINK_WIDTH) * Math.sqrt(Math.abs(link.weight) / maxWeight);
      const el = s('line', {
        class: `link ${link.weight >= 0 ? 'positive' : 'negative'}`,
        x1: a.x, y1: a.y, x2: b.x, y2: b.y,
        'stroke-width': width.toFixed(2),
        'data-source': link.source.id,
        'data-target': link.target.id,
      });
      linkGroup.append(el);
      return { link, el };
    });

    const supernodeGroup = this.drawSupernodes(state, layout);
    const nodeGroup = s('g', { class: 'nodes' });
    for (const node of view.nodes) {
      const el = nodeShape(node, layout.positions.get(node.id)!);
      el.setAttribute('class', 'node');
      el.setAttribute('data-node-id', node.id);
      el.setAttribute('data-kind', node.kind);
      nodeGroup.append(el);
      this.nodeElements.set(node.id, el);
    }
    const labels = this.drawLabels(model, view.nodes, state, layout);
    this.svg.replaceChildren(axes, supernodeGroup, linkGroup, nodeGroup, labels);
    this.highlight(state);
  }

  /**
   * Applies the state: pinned and selected nodes, and with a selection its direct upstream and
   * downstream links and nodes highlighted, everything else dimmed.
   */
  highlight(state: ViewerState): void {
    for (const [id, el] of this.nodeElements) {
      el.classList.toggle('pinned', state.pinned.has(id));
      el.classList.toggle('selected', id === state.clickedId);
      el.classList.remove('upstream', 'downstream');
    }
    const selected = this.nodeElements.has(state.clickedId) ? state.clickedId : '';
    this.svg.classList.toggle('has-selection', selected !== '');
    for (const { link, el } of this.linkElements) {
      const up = link.target.id === selected;
      const down = link.source.id === selected;
      el.classList.toggle('active', up || down);
      if (up) this.nodeElements.get(link.source.id)?.classList.add('upstream');
      if (down) this.nodeElements.get(link.target.id)?.classList.add('downstream');
    }
  }

  private setSize(width: number, height: number): void {
    this.svg.setAttribute('width', String(width));
    this.svg.setAttribute('height', String(height));
    this.svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  }

  private drawAxes(model: GraphModel, layout: Layout): SVGGElement {
    const { plot } = layout;
    const g = s('g', { class: 'axes' });
    for (const row of layout.rows) {
      g.append(
        s('rect', { class: 'row-band', x: plot.left, y: row.top, width: plot.right - plot.left, height: row.height }),
        s('text', { class: 'layer-label', x: plot.left - 8, y: row.y + 4, 'text-anchor': 'end' }, row.label),
      );
    }
    for (const col of layout.columns) {
      if (col.position > 0) g.append(s('line', { class: 'column-line', x1: col.left, y1: plot.top, x2: col.left, y2: plot.bottom }));
      const token = model.tokens[col.position] ?? '';
      const y = plot.bottom + 12;
      g.append(
        s('text', { class: 'token-label', x: col.x, y, 'text-anchor': 'end', transform: `rotate(-40 ${col.x} ${y})` },
          s('title', {}, `${col.position}: ${token}`), clip(token, 13)),
      );
    }
    return g;
  }

  /** A dashed box around each supernode's visible members, with its label. */
  private drawSupernodes(state: ViewerState, layout: Layout): SVGGElement {
    const g = s('g', { class: 'supernodes' });
    for (const sn of state.supernodes) {
      const points = sn.ids.map((id) => layout.positions.get(id)).filter((p): p is Point => p !== undefined);
      if (points.length === 0) continue;
      const pad = NODE_RADIUS + 4;
      const x0 = Math.min(...points.map((p) => p.x)) - pad;
      const x1 = Math.max(...points.map((p) => p.x)) + pad;
      const y0 = Math.min(...points.map((p) => p.y)) - pad;
      const y1 = Math.max(...points.map((p) => p.y)) + pad;
      g.append(
        s('rect', { class: 'supernode-box', x: x0, y: y0, width: x1 - x0, height: y1 - y0, rx: 6 }),
        s('text', { class: 'supernode-title', x: x0 + 2, y: y0 - 3 }, clip(sn.label, 24)),
      );
    }
    return g;
  }

  /**
   * Logits get their token (slanted, above them); features and errors their label when it was edited
   * or the node is pinned, so that a file full of labels does not bury the graph in text.
   */
  private drawLabels(model: GraphModel, nodes: ViewNode[], state: ViewerState, layout: Layout): SVGGElement {
    const g = s('g', { class: 'labels' });
    for (const node of nodes) {
      const p = layout.positions.get(node.id)!;
      const label = state.labelOf(node.id, node.json.clerp);
      if (node.kind === 'logit') {
        const text = state.labels.has(node.id) ? label : logitToken(label) || defaultName(model, node);
        const y = p.y - NODE_RADIUS - 4;
        g.append(s('text', { class: 'node-label logit-label', x: p.x, y, transform: `rotate(-50 ${p.x} ${y})` }, clip(text, 14)));
      } else if (node.kind !== 'embedding' && label !== '' && (state.labels.has(node.id) || state.pinned.has(node.id))) {
        g.append(s('text', { class: 'node-label', x: p.x + NODE_RADIUS + 2, y: p.y + 3 }, clip(label, 22)));
      }
    }
    return g;
  }
}
