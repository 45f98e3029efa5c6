/**
 * The intervention and steering forms for the selected feature (served mode only): set or scale its
 * activation at a position and compare the top logits at the last position, or steer generation with
 * it and compare the continuations.
 */
import { intervene, steer } from './api.js';
import { byId, fmt, h, visibleToken } from './dom.js';
import type { ViewNode } from './graph-model.js';
import type { Intervention, LogitEntry } from './types.js';

const TOP_K = 10;

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function logitColumn(title: string, className: string, entries: LogitEntry[]): HTMLElement {
  return h('div', { class: 'intervene-column' },
    h('h4', {}, title),
    h('ol', { class: className }, ...entries.map((e) =>
      h('li', { title: `token id ${e.id}, logit ${fmt(e.logit)}` },
        h('span', { class: 'tok' }, visibleToken(e.token)),
        h('span', { class: 'value' }, `${fmt(e.probability * 100)}%`)))),
  );
}

export class InterventionPanel {
  private node: ViewNode | null = null;
  private prompt = '';
  private readonly mode = byId<HTMLSelectElement>('intervene-mode');
  private readonly value = byId<HTMLInputElement>('intervene-value');
  private readonly position = byId<HTMLInputElement>('intervene-position');
  private readonly steerValue = byId<HTMLInputElement>('steer-value');
  private readonly steerTokens = byId<HTMLInputElement>('steer-tokens');
  private readonly steerPosition = byId<HTMLSelectElement>('steer-position');

  /** `enabled`: the page is served (the forms stay hidden in static mode). */
  constructor(private readonly enabled: boolean) {
    this.mode.addEventListener('change', () => this.resetValue());
    byId<HTMLFormElement>('intervene-form').addEventListener('submit', (event) => {
      event.preventDefault();
      void this.runIntervention();
    });
    byId<HTMLFormElement>('steer-form').addEventListener('submit', (event) => {
      event.preventDefault();
      void this.runSteering();
    });
  }

  /** Shows the forms for a feature node (with its defaults) and hides them otherwise. */
  show(node: ViewNode | null, prompt: string): void {
    const feature = this.enabled && node?.kind === 'feature' ? node : null;
    byId('intervene-section').hidden = feature === null;
    if (feature === this.node && prompt === this.prompt) return;
    this.node = feature;
    this.prompt = prompt;
    byId('intervene-result').replaceChildren();
    byId('steer-result').replaceChildren();
    if (!feature) return;
    byId('intervene-target').textContent = `layer ${feature.layer}, feature ${feature.featureIndex}`;
    this.position.value = String(feature.position);
    this.mode.value = 'scale';
    this.resetValue();
    this.steerValue.value = fmt(this.twiceActivation());
    this.steerPosition.replaceChildren(
      h('option', { value: 'new' }, 'last prompt token and every new one'),
      h('option', { value: String(feature.position) }, `the node's position (${feature.position})`),
    );
  }

  private twiceActivation(): number {
    const a = this.node?.json.activation;
    return typeof a === 'number' ? 2 * a : 0;
  }

  /** Each mode's default: scale 0 ablates the feature; set doubles its activation. */
  private resetValue(): void {
    this.value.value = this.mode.value === 'scale' ? '0' : fmt(this.twiceActivation());
  }

  private async runIntervention(): Promise<void> {
    const node = this.node;
    const result = byId('intervene-result');
    const value = Number(this.value.value);
    const position = Number(this.position.value);
    if (!node || node.layer === null || node.featureIndex === null) return;
    if (!Number.isFinite(value) || !Number.isInteger(position) || position < 0) {
      result.replaceChildren(h('p', { class: 'error' }, 'give a number and a position (a whole number from 0)'));
      return;
    }
    const base = { layer: node.layer, position, feature: node.featureIndex };
    const intervention: Intervention = this.mode.value === 'scale' ? { ...base, scale: value } : { ...base, value };
    const submit = byId<HTMLButtonElement>('intervene-submit');
    submit.disabled = true;
    result.replaceChildren(h('p', { class: 'muted' }, 'running…'));
    try {
      const r = await intervene(this.prompt, [intervention], TOP_K);
      if (node !== this.node) return;
      result.replaceChildren(
        h('p', { class: 'muted' }, `top logits after "${visibleToken(r.tokens[r.position] ?? '')}" (position ${r.position})`),
        h('div', { class: 'intervene-columns' }, logitColumn('baseline', 'intervene-baseline', r.baseline), logitColumn('intervened', 'intervene-intervened', r.intervened)),
      );
    } catch (err) {
      if (node === this.node) result.replaceChildren(h('p', { class: 'error' }, errorText(err)));
    } finally {
      submit.disabled = false;
    }
  }

  private async runSteering(): Promise<void> {
    const node = this.node;
    const result = byId('steer-result');
    const value = Number(this.steerValue.value);
    const tokens = Number(this.steerTokens.value);
    if (!node || node.layer === null || node.featureIndex === null) return;
    if (!Number.isFinite(value) || !Number.isInteger(tokens) || tokens < 1) {
      result.replaceChildren(h('p', { class: 'error' }, 'give a steering value and a number of tokens (at least 1)'));
      return;
    }
    const position = this.steerPosition.value === 'new' ? 'new' : Number(this.steerPosition.value);
    const submit = byId<HTMLButtonElement>('steer-submit');
    submit.disabled = true;
    result.replaceChildren(h('p', { class: 'muted' }, 'generating…'));
    try {
      const r = await steer(this.prompt, [{ layer: node.layer, feature: node.featureIndex, value, position }], tokens);
      if (node !== this.node) return;
      result.replaceChildren(
        h('h4', {}, 'without steering'), h('p', { class: 'steer-baseline continuation' }, r.baseline),
        h('h4', {}, 'steered'), h('p', { class: 'steer-steered continuation' }, r.steered),
      );
    } catch (err) {
      if (node === this.node) result.replaceChildren(h('p', { class: 'error' }, errorText(err)));
    } finally {
      submit.disabled = false;
    }
  }
}
