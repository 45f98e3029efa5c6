/**
 * The viewer's editable state (pinned nodes, supernodes, the clicked node, edited labels), kept in step
 * with the graph's qParams: every change is written straight into the graph JSON's qParams object, so
 * saving the graph (PUT or download) always writes what the user sees.
 */
import type { QParams } from './types.js';

export interface Supernode {
  label: string;
  ids: string[];
}

export class ViewerState {
  readonly pinned = new Set<string>();
  readonly supernodes: Supernode[] = [];
  /** Edited labels by node id (qParams.clerps); they replace the file's clerp. */
  readonly labels = new Map<string, string>();
  clickedId = '';

  /** Restores the state from `qParams`, which it then keeps up to date. */
  constructor(private readonly qParams: QParams) {
    for (const id of qParams.pinnedIds) this.pinned.add(id);
    for (const [label, ...ids] of qParams.supernodes) {
      if (label !== undefined) this.supernodes.push({ label, ids });
    }
    this.clickedId = qParams.clickedId;
    if (Array.isArray(qParams.clerps)) {
      for (const pair of qParams.clerps as unknown[]) {
        if (Array.isArray(pair) && typeof pair[0] === 'string' && typeof pair[1] === 'string') this.labels.set(pair[0], pair[1]);
      }
    }
  }

  /** The label shown for a node: the edited one, else the file's. */
  labelOf(id: string, fileLabel: string): string {
    return this.labels.get(id) ?? fileLabel;
  }

  setClicked(id: string): void {
    this.clickedId = id;
    this.sync();
  }

  togglePin(id: string): void {
    if (!this.pinned.delete(id)) this.pinned.add(id);
    this.sync();
  }

  clearPins(): void {
    this.pinned.clear();
    this.sync();
  }

  addSupernode(label: string, ids: string[]): void {
    this.supernodes.push({ label, ids: [...new Set(ids)] });
    this.sync();
  }

  removeSupernode(index: number): void {
    this.supernodes.splice(index, 1);
    this.sync();
  }

  /** Sets a node's edited label; an empty one goes back to the file's. */
  setLabel(id: string, label: string): void {
    if (label.trim() === '') this.labels.delete(id);
    else this.labels.set(id, label);
    this.sync();
  }

  private sync(): void {
    const q = this.qParams;
    q.pinnedIds = [...this.pinned];
    q.supernodes = this.supernodes.map((s) => [s.label, ...s.ids]);
    q.clickedId = this.clickedId;
    if (this.labels.size > 0) q.clerps = [...this.labels];
    else delete q.clerps;
  }
}
