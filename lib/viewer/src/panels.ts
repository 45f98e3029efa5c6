/**
 * The side panel's node details, the hover tooltip (both list the same fields), and the list of
 * pinned nodes and supernodes. The elements are index.html's; these functions fill them in.
 */
import { defaultName, tokenAt, type GraphModel, type PrunedView, type ViewLink, type ViewNode } from './graph-model.js';
import { byId, clip, fmt, h } from './dom.js';
import type { ViewerState } from './state.js';

/** How many of a node's strongest input and output links the panel lists. */
const LINKS_LISTED = 6;

/** A node's name in lists: its label, else a name from its kind, with its position. */
export function nodeName(model: GraphModel, state: ViewerState, node: ViewNode): string {
  const label = state.labelOf(node.id, node.json.clerp);
  return `${label || defaultName(model, node)} @${node.position}`;
}

/** The token id in an embedding's id `E_{token}_{pos}` (-1: a positional embedding). */
function embeddingToken(node: ViewNode): string {
  const m = /^E_(-?\d+)_\d+$/.exec(node.id);
  return m && m[1] !== '-1' ? m[1]! : '—';
}

/** The fields shown for a node, in order: the tooltip's and the panel's. */
export function nodeFields(model: GraphModel, state: ViewerState, node: ViewNode): [string, string][] {
  const j = node.json;
  const feature =
    node.kind === 'feature' ? String(node.featureIndex)
    : node.kind === 'logit' ? `token ${j.feature}`
    : node.kind === 'embedding' ? `token ${embeddingToken(node)}`
    : '—';
  const fields: [string, string][] = [
    ['id', node.id],
    ['kind', node.kind],
    ['layer', node.kind === 'logit' ? `logits (${j.layer})` : j.layer],
    ['position', `${node.position} "${tokenAt(model, node.position)}"`],
    ['feature', feature],
    ['activation', fmt(j.activation)],
    ['influence', fmt(j.influence)],
    ['label', state.labelOf(node.id, j.clerp) || '—'],
  ];
  if (node.kind === 'logit') fields.push(['probability', fmt(j.token_prob)]);
  return fields;
}

function fieldList(fields: [string, string][]): Node[] {
  return fields.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]);
}

/** Shows the tooltip for `node` beside the pointer, kept inside the window; null hides it. */
export function showTooltip(model: GraphModel | null, state: ViewerState | null, node: ViewNode | null, event: MouseEvent): void {
  const tooltip = byId('tooltip');
  if (!node || !model || !state) {
    tooltip.hidden = true;
    return;
  }
  tooltip.replaceChildren(h('dl', {}, ...fieldList(nodeFields(model, state, node))));
  tooltip.hidden = false;
  const { innerWidth, innerHeight } = window;
  const rect = tooltip.getBoundingClientRect();
  const x = event.clientX + 14 + rect.width > innerWidth ? event.clientX - 14 - rect.width : event.clientX + 14;
  const y = Math.min(event.clientY + 14, innerHeight - rect.height - 4);
  tooltip.style.left = `${Math.max(4, x)}px`;
  tooltip.style.top = `${Math.max(4, y)}px`;
}

export interface PanelActions {
  select(id: string): void;
  togglePin(id: string): void;
  removeSupernode(index: number): void;
}

/** A button naming a node; clicking it selects the node. */
function nodeButton(model: GraphModel, state: ViewerState, node: ViewNode, actions: PanelActions, extra = ''): HTMLButtonElement {
  const button = h('button', { type: 'button', class: 'node-ref', title: node.id }, clip(nodeName(model, state, node), 40), extra);
  button.addEventListener('click', () => actions.select(node.id));
  return button;
}

function linkList(title: string, links: ViewLink[], other: (l: ViewLink) => ViewNode, model: GraphModel, state: ViewerState, actions: PanelActions): HTMLElement {
  const strongest = [...links].sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, LINKS_LISTED);
  return h('div', { class: 'link-list' },
    h('h4', {}, `${title} (${links.length})`),
    strongest.length === 0 ? h('p', { class: 'muted' }, 'none shown') : h('ul', {}, ...strongest.map((l) =>
      h('li', { class: `node-link-item ${l.weight >= 0 ? 'positive' : 'negative'}` }, h('span', { class: 'weight' }, fmt(l.weight)), nodeButton(model, state, other(l), actions)))),
  );
}

/**
 * Fills #node-panel for the selected node (or its empty message): fields, the pin button's text, the
 * label editor, and the node's strongest visible links. Returns the node shown, if any.
 */
export function renderNodePanel(model: GraphModel | null, state: ViewerState | null, view: PrunedView, actions: PanelActions): ViewNode | null {
  const node = model && state ? model.byId.get(state.clickedId) ?? null : null;
  byId('node-empty').hidden = node !== null;
  byId('node-details').hidden = node === null;
  if (!node || !model || !state) return null;
  byId('node-title').textContent = nodeName(model, state, node);
  byId('node-fields').replaceChildren(...fieldList(nodeFields(model, state, node)));
  const visible = view.nodes.includes(node);
  byId('node-hidden-note').hidden = visible;
  byId('pin-node').textContent = state.pinned.has(node.id) ? 'Unpin' : 'Pin';
  byId<HTMLInputElement>('label-input').value = state.labelOf(node.id, node.json.clerp);
  byId('node-links').replaceChildren(
    linkList('Inputs', view.links.filter((l) => l.target === node), (l) => l.source, model, state, actions),
    linkList('Outputs', view.links.filter((l) => l.source === node), (l) => l.target, model, state, actions),
  );
  return node;
}

/** Fills the pinned-node list and the supernode list. */
export function renderSubgraphPanel(model: GraphModel | null, state: ViewerState | null, actions: PanelActions): void {
  const pinnedList = byId('pinned-list');
  const supernodeList = byId('supernode-list');
  if (!model || !state) {
    pinnedList.replaceChildren();
    supernodeList.replaceChildren();
    return;
  }
  const name = (id: string) => {
    const node = model.byId.get(id);
    return node ? nodeName(model, state, node) : `${id} (not in this graph)`;
  };
  pinnedList.replaceChildren(...[...state.pinned].map((id) => {
    const node = model.byId.get(id);
    const unpin = h('button', { type: 'button', class: 'unpin', title: 'unpin' }, '×');
    unpin.addEventListener('click', () => actions.togglePin(id));
    return h('li', { class: 'pinned-item' }, node ? nodeButton(model, state, node, actions) : h('span', {}, name(id)), unpin);
  }));
  byId('pinned-empty').hidden = state.pinned.size > 0;
  supernodeList.replaceChildren(...state.supernodes.map((sn, i) => {
    const remove = h('button', { type: 'button', class: 'supernode-remove', title: 'remove this supernode' }, '×');
    remove.addEventListener('click', () => actions.removeSupernode(i));
    return h('li', { class: 'supernode' },
      h('span', { class: 'supernode-name' }, sn.label), ' ', h('span', { class: 'muted' }, `(${sn.ids.length})`), remove,
      h('div', { class: 'supernode-members' }, sn.ids.map(name).join(', ')));
  }));
}
