/**
 * The viewer's wiring: finds out whether the page is served by the transcoders service (then graphs,
 * feature cards, new graphs and interventions come from its API) or opened as a file (then graphs come
 * from data.js and from files the user opens), loads the graph the URL's ?slug names, and connects the
 * header, sliders, graph and side panel.
 */
import { computeGraph, detectService, fetchFeatureCard, fetchGraph, listGraphs, saveQParams } from './api.js';
import { byId, h, svgById } from './dom.js';
import { renderFeatureCard, renderFeatureMessage } from './feature-card.js';
import { buildModel, initialThresholds, parseGraphJson, pruneView, type GraphModel, type PrunedView, type ViewNode } from './graph-model.js';
import { InterventionPanel } from './intervene.js';
import { renderNodePanel, renderSubgraphPanel, showTooltip, type PanelActions } from './panels.js';
import { GraphView } from './render-graph.js';
import { ViewerState } from './state.js';
import type { FeatureCard, GraphJson, GraphProgress, Health } from './types.js';

/** Where a graph came from: it decides what Save does (PUT for the service's own graphs, else a download). */
type Source = 'server' | 'embedded' | 'file';

interface Entry {
  key: string;
  label: string;
  source: Source;
  slug: string;
  /** Held for embedded and opened graphs; the service's are fetched when chosen. */
  graph?: GraphJson;
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

class Viewer {
  private readonly entries = new Map<string, Entry>();
  private model: GraphModel | null = null;
  private state: ViewerState | null = null;
  private source: Source = 'file';
  private view: PrunedView = { nodes: [], links: [] };
  private shownNode: ViewNode | null = null;
  /** Count graph and card requests, so a slow answer for an earlier choice is dropped. */
  private openRequest = 0;
  private cardRequest = 0;
  private readonly graphView: GraphView;
  private readonly interventions: InterventionPanel;
  private readonly nodeThreshold = byId<HTMLInputElement>('node-threshold');
  private readonly edgeThreshold = byId<HTMLInputElement>('edge-threshold');
  private readonly graphSelect = byId<HTMLSelectElement>('graph-select');
  private readonly actions: PanelActions = {
    select: (id) => this.select(id),
    togglePin: (id) => this.togglePin(id),
    removeSupernode: (index) => {
      this.state?.removeSupernode(index);
      this.render();
    },
  };

  constructor(private readonly health: Health | null) {
    document.body.dataset.mode = health ? 'served' : 'static';
    byId('mode').textContent = health ? `served${health.model ? ` · ${health.model}` : ''}` : 'static (offline)';
    byId('prompt-form').hidden = !health;
    byId<HTMLButtonElement>('prompt-submit').disabled = !health;
    this.interventions = new InterventionPanel(health !== null);
    this.graphView = new GraphView(svgById('graph-svg'), {
      onHover: (node, event) => showTooltip(this.model, this.state, node, event),
      onClick: (node, event) => (event.shiftKey ? this.togglePin(node.id) : this.select(node.id)),
      onBackgroundClick: () => this.select(''),
    });
    this.wire();
  }

  /** Fills the graph list and opens the graph ?slug names (else the newest). */
  async start(): Promise<void> {
    const wanted = new URLSearchParams(location.search).get('slug');
    if (this.health) {
      try {
        for (const m of await listGraphs()) this.addEntry({ key: `server:${m.slug}`, label: m.slug, source: 'server', slug: m.slug });
      } catch (err) {
        this.showError(`cannot list the service's graphs: ${message(err)}`);
      }
    } else {
      (window.TRANSCODERS_DATA?.graphs ?? []).forEach((raw, i) => {
        try {
          const graph = parseGraphJson(raw);
          this.addEntry({ key: `embedded:${graph.metadata.slug}`, label: graph.metadata.slug, source: 'embedded', slug: graph.metadata.slug, graph });
        } catch (err) {
          this.showError(`data.js graph ${i}: ${message(err)}`);
        }
      });
    }
    const keys = [...this.entries.keys()];
    let key = wanted !== null ? keys.find((k) => this.entries.get(k)!.slug === wanted) : keys.at(-1);
    if (wanted !== null && key === undefined) {
      if (this.health) {
        // Not listed (yet): ask for it all the same; a 404 is shown like any other error.
        key = `server:${wanted}`;
        this.addEntry({ key, label: wanted, source: 'server', slug: wanted });
      } else {
        this.showError(`no graph "${wanted}" in data.js`);
      }
    }
    if (key !== undefined) await this.openEntry(key);
    else this.render();
  }

  private wire(): void {
    const onSlider = () => {
      this.showThresholds();
      this.render();
    };
    this.nodeThreshold.addEventListener('input', onSlider);
    this.edgeThreshold.addEventListener('input', onSlider);
    this.graphSelect.addEventListener('change', () => void this.openEntry(this.graphSelect.value));

    const fileInput = byId<HTMLInputElement>('graph-file');
    fileInput.addEventListener('change', () => {
      const file = fileInput.files?.[0];
      if (file) void this.openFile(file);
      fileInput.value = '';
    });
    // Drag and drop anywhere on the page opens the dropped file.
    const overlay = byId('drop-overlay');
    document.addEventListener('dragover', (event) => {
      if (!event.dataTransfer?.types.includes('Files')) return;
      event.preventDefault();
      overlay.hidden = false;
    });
    document.addEventListener('dragleave', (event) => {
      if (event.relatedTarget === null) overlay.hidden = true;
    });
    document.addEventListener('drop', (event) => {
      event.preventDefault();
      overlay.hidden = true;
      const file = event.dataTransfer?.files[0];
      if (file) void this.openFile(file);
    });

    byId<HTMLFormElement>('prompt-form').addEventListener('submit', (event) => {
      event.preventDefault();
      void this.runPrompt();
    });
    byId('save-qparams').addEventListener('click', () => void this.save());
    byId('pin-node').addEventListener('click', () => {
      if (this.state?.clickedId) this.togglePin(this.state.clickedId);
    });
    byId<HTMLFormElement>('label-form').addEventListener('submit', (event) => {
      event.preventDefault();
      if (!this.state?.clickedId) return;
      this.state.setLabel(this.state.clickedId, byId<HTMLInputElement>('label-input').value);
      this.render();
    });
    byId('clear-pins').addEventListener('click', () => {
      this.state?.clearPins();
      this.render();
    });
    byId<HTMLFormElement>('supernode-form').addEventListener('submit', (event) => {
      event.preventDefault();
      this.groupSupernode();
    });
    document.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && !(event.target instanceof HTMLInputElement || event.target instanceof HTMLTextAreaElement)) this.select('');
    });
    let resizeQueued = false;
    window.addEventListener('resize', () => {
      if (resizeQueued) return;
      resizeQueued = true;
      requestAnimationFrame(() => {
        resizeQueued = false;
        this.render();
      });
    });
  }

  private addEntry(entry: Entry): void {
    this.entries.set(entry.key, entry);
    const option = [...this.graphSelect.options].find((o) => o.value === entry.key) ?? this.graphSelect.appendChild(h('option', { value: entry.key }));
    option.textContent = entry.label;
    this.graphSelect.disabled = false;
  }

  private async openEntry(key: string): Promise<void> {
    const entry = this.entries.get(key);
    if (!entry) return;
    const request = ++this.openRequest;
    this.graphSelect.value = key;
    try {
      const graph = entry.graph ?? parseGraphJson(await fetchGraph(entry.slug));
      if (request === this.openRequest) this.show(graph, entry);
    } catch (err) {
      if (request === this.openRequest) this.showError(`cannot open graph "${entry.slug}": ${message(err)}`);
    }
  }

  private async openFile(file: File): Promise<void> {
    try {
      const graph = parseGraphJson(JSON.parse(await file.text()));
      ++this.openRequest;
      this.show(graph, { key: `file:${graph.metadata.slug}`, label: `${graph.metadata.slug} (${file.name})`, source: 'file', slug: graph.metadata.slug, graph });
      this.clearMessage();
    } catch (err) {
      this.showError(`${file.name}: ${message(err)}`);
    }
  }

  /**
   * Makes `graph` the one shown (and lists its entry), its sliders at its pruning settings and the state
   * from its qParams. Throws, changing nothing, when the graph does not make a model.
   */
  private show(graph: GraphJson, entry: Entry): void {
    const model = buildModel(graph);
    this.addEntry(entry);
    this.model = model;
    this.state = new ViewerState(graph.qParams);
    this.source = entry.source;
    this.shownNode = null;
    this.graphSelect.value = entry.key;
    const t = initialThresholds(graph);
    this.nodeThreshold.value = String(t.node);
    this.edgeThreshold.value = String(t.edge);
    this.showThresholds();
    byId<HTMLButtonElement>('save-qparams').disabled = false;
    byId('save-status').replaceChildren();
    if (model.skippedLinks > 0) this.showError(`${model.skippedLinks} links name nodes the file does not have; they are left out`);
    if (entry.source !== 'file') this.setUrlSlug(model.slug);
    this.render();
  }

  /**
   * Puts ?slug in the address bar so a reload reopens the graph. A file:// page may refuse to change
   * its URL (opaque origin); the graph is shown all the same.
   */
  private setUrlSlug(slug: string): void {
    const url = new URL(location.href);
    if (url.searchParams.get('slug') === slug) return;
    url.searchParams.set('slug', slug);
    try {
      history.replaceState(null, '', url);
    } catch {
      // the address bar keeps its URL
    }
  }

  private showThresholds(): void {
    byId('node-threshold-value').textContent = Number(this.nodeThreshold.value).toFixed(2);
    byId('edge-threshold-value').textContent = Number(this.edgeThreshold.value).toFixed(2);
  }

  /** Prunes with the sliders' values, draws, and refreshes the panels. */
  private render(): void {
    this.view = this.model && this.state ? pruneView(this.model, Number(this.nodeThreshold.value), Number(this.edgeThreshold.value), this.state.pinned) : { nodes: [], links: [] };
    // The count first: its length can rewrap the toolbar, which changes the graph area's height.
    byId('node-count').textContent = `${this.view.nodes.length} nodes, ${this.view.links.length} links`;
    const area = byId('graph-area');
    const width = area.clientWidth;
    const height = area.clientHeight;
    if (!this.model || !this.state) {
      this.graphView.renderEmpty(this.health ? 'No graph yet: choose one above, or attribute a prompt.' : 'No graph loaded: open a graph JSON file (or drop one on the page).', width, height);
    } else {
      this.graphView.render(this.model, this.view, this.state, width, height);
      // A graph wider than the area brings a sideways scrollbar, which takes height: fit what is left.
      if (area.clientHeight < height) this.graphView.render(this.model, this.view, this.state, area.clientWidth, area.clientHeight);
    }
    this.refreshPanels();
  }

  private refreshPanels(): void {
    const node = renderNodePanel(this.model, this.state, this.view, this.actions);
    renderSubgraphPanel(this.model, this.state, this.actions);
    this.interventions.show(node, this.model?.json.metadata.prompt ?? '');
    if (node !== this.shownNode) {
      this.shownNode = node;
      void this.loadFeatureCard(node);
    }
  }

  private select(id: string): void {
    if (!this.state) return;
    this.state.setClicked(this.model?.byId.has(id) ? id : '');
    this.graphView.highlight(this.state);
    this.refreshPanels();
  }

  private togglePin(id: string): void {
    if (!this.state) return;
    this.state.togglePin(id);
    this.render();
  }

  /** Groups the pinned nodes and the selected one into a supernode named by #supernode-label. */
  private groupSupernode(): void {
    const state = this.state;
    const note = byId('supernode-status');
    if (!state) return;
    const ids = [...state.pinned, ...(state.clickedId ? [state.clickedId] : [])];
    if (ids.length === 0) {
      note.textContent = 'pin nodes (or select one) to group them';
      return;
    }
    const input = byId<HTMLInputElement>('supernode-label');
    state.addSupernode(input.value.trim() || `supernode ${state.supernodes.length + 1}`, ids);
    input.value = '';
    note.textContent = '';
    this.render();
  }

  /** Shows the selected feature's card: the service's, or data.js's in static mode. */
  private async loadFeatureCard(node: ViewNode | null): Promise<void> {
    const panel = byId('feature-panel');
    const request = ++this.cardRequest;
    panel.hidden = node?.kind !== 'feature';
    if (!node || node.kind !== 'feature' || node.layer === null || node.featureIndex === null) {
      panel.replaceChildren();
      return;
    }
    const { layer, featureIndex: index } = node;
    let card: FeatureCard | null | undefined;
    if (this.health) {
      renderFeatureMessage(panel, 'loading the feature card…');
      try {
        card = await fetchFeatureCard(layer, index);
      } catch (err) {
        if (request === this.cardRequest) renderFeatureMessage(panel, `cannot load the feature card: ${message(err)}`, true);
        return;
      }
    } else {
      card = window.TRANSCODERS_DATA?.features?.[`${layer}/${index}`];
    }
    if (request !== this.cardRequest) return;
    if (card) {
      try {
        renderFeatureCard(panel, card);
      } catch (err) {
        renderFeatureMessage(panel, `the feature card of layer ${layer} feature ${index} is malformed: ${message(err)}`, true);
      }
    } else renderFeatureMessage(panel, this.health ? `no feature card for layer ${layer} feature ${index}` : `no feature card embedded for layer ${layer} feature ${index} (data.js has none)`);
  }

  /** Save: the service's graphs get their qParams PUT back; any other graph is downloaded with them. */
  private async save(): Promise<void> {
    const model = this.model;
    const status = byId('save-status');
    if (!model) return;
    if (this.health && this.source === 'server') {
      status.replaceChildren('saving…');
      try {
        await saveQParams(model.slug, model.json.qParams);
        status.replaceChildren(h('span', { class: 'ok' }, 'saved'));
      } catch (err) {
        status.replaceChildren(h('span', { class: 'error' }, `not saved: ${message(err)}`));
      }
      return;
    }
    const url = URL.createObjectURL(new Blob([JSON.stringify(model.json)], { type: 'application/json' }));
    const link = h('a', { href: url, download: `${model.slug}.json` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
    status.replaceChildren(h('span', { class: 'ok' }, `downloaded ${model.slug}.json`));
  }

  /** Attributes the prompt box's text on the service, following the stream's progress. */
  private async runPrompt(): Promise<void> {
    const prompt = byId<HTMLTextAreaElement>('prompt-input').value;
    const slug = byId<HTMLInputElement>('prompt-slug').value.trim();
    const submit = byId<HTMLButtonElement>('prompt-submit');
    if (!this.health || prompt.trim() === '') return;
    submit.disabled = true;
    this.showProgress({ stage: 'starting', done: 0, total: 0 });
    let attribution = '';
    try {
      const onProgress = (p: GraphProgress) => {
        if (p.stage === 'attribution') attribution = ` (attribution ${p.done}/${p.total})`;
        this.showProgress(p);
      };
      const graph = parseGraphJson(await computeGraph(prompt, slug || undefined, onProgress));
      const source: Source = this.health.graphs ? 'server' : 'file';
      ++this.openRequest;
      this.show(graph, { key: `${source}:${graph.metadata.slug}`, label: graph.metadata.slug, source, slug: graph.metadata.slug, ...(source === 'file' && { graph }) });
      this.showDone(`done: ${graph.metadata.slug}${attribution}${source === 'server' ? '' : ', not saved by the service'}`);
    } catch (err) {
      this.showError(message(err));
    } finally {
      submit.disabled = false;
    }
  }

  /** The bar, and the stage with its counts when it has several steps ("attribution 12/40", "pruning"). */
  private showProgress(p: GraphProgress): void {
    const bar = h('progress', { max: String(Math.max(1, p.total)), value: String(Math.min(p.done, p.total)) });
    if (p.total <= 1) bar.removeAttribute('value'); // a one-step stage: an indeterminate bar
    byId('progress').hidden = false;
    byId('progress').replaceChildren(bar, h('span', { class: 'progress-text' }, p.total > 1 ? `${p.stage} ${p.done}/${p.total}` : p.stage));
  }

  private showDone(text: string): void {
    byId('progress').hidden = false;
    byId('progress').replaceChildren(h('span', { class: 'progress-text' }, text));
  }

  private showError(text: string): void {
    byId('progress').hidden = false;
    byId('progress').replaceChildren(h('span', { class: 'error' }, text));
  }

  private clearMessage(): void {
    byId('progress').hidden = true;
    byId('progress').replaceChildren();
  }
}

async function main(): Promise<void> {
  const viewer = new Viewer(await detectService());
  await viewer.start();
}

main().catch((err: unknown) => {
  // Only a page that does not match the code gets here; say so on the page, not just in the console.
  document.body.prepend(h('p', { class: 'error fatal' }, `viewer failed: ${message(err)}`));
  console.error(err);
});
