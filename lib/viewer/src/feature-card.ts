/**
 * A feature card (circuit-tracer's feature JSON) as HTML: summary numbers, the activation histogram,
 * the top and bottom logits, and the example contexts by quantile with each token shaded by its
 * activation relative to the feature's maximum.
 */
import { clip, fmt, h, s, visibleToken } from './dom.js';
import type { FeatureCard, FeatureExample } from './types.js';

const HISTOGRAM_WIDTH = 340;
const HISTOGRAM_HEIGHT = 90;
/** Top-activation sections open, the rest folded: a card can hold hundreds of contexts. */
const OPEN_SECTIONS = 1;

/** A context: one span per token, its background alpha activation / act_max; the peak token marked. */
function exampleRow(example: FeatureExample, actMax: number): HTMLElement {
  const row = h('div', { class: 'feature-example' });
  if (example.is_repeated_datapoint) row.classList.add('repeated');
  example.tokens.forEach((token, i) => {
    const act = example.tokens_acts_list[i] ?? 0;
    const span = h('span', { class: 'tok', title: `${visibleToken(token)}: ${fmt(act)}` }, visibleToken(token));
    const alpha = actMax > 0 ? Math.max(0, Math.min(1, act / actMax)) : 0;
    span.style.backgroundColor = `rgba(255, 140, 0, ${alpha.toFixed(3)})`;
    if (i === example.train_token_ind) span.classList.add('peak');
    row.append(span);
  });
  return row;
}

/** The histogram of activations as bars over [0, histogram_max), with the axis ends written. */
function histogram(card: FeatureCard): SVGSVGElement {
  const counts = card.histogram;
  const max = Math.max(1, ...counts);
  const barWidth = HISTOGRAM_WIDTH / Math.max(1, counts.length);
  const plotHeight = HISTOGRAM_HEIGHT - 16;
  const svg = s('svg', { id: 'feature-histogram', width: HISTOGRAM_WIDTH, height: HISTOGRAM_HEIGHT, viewBox: `0 0 ${HISTOGRAM_WIDTH} ${HISTOGRAM_HEIGHT}`, role: 'img' });
  svg.append(s('title', {}, `activation histogram, 0 to ${fmt(card.histogram_max)}`));
  counts.forEach((count, i) => {
    // sqrt heights: the zero-heavy first bins would otherwise flatten the rest.
    const height = count > 0 ? Math.max(1, plotHeight * Math.sqrt(count / max)) : 0;
    const lo = (card.histogram_max * i) / counts.length;
    const hi = (card.histogram_max * (i + 1)) / counts.length;
    svg.append(s('rect', { class: 'bar', x: i * barWidth, y: plotHeight - height, width: Math.max(0.5, barWidth - 0.5), height }, s('title', {}, `${fmt(lo)}–${fmt(hi)}: ${count}`)));
  });
  svg.append(
    s('line', { class: 'axis', x1: 0, y1: plotHeight + 0.5, x2: HISTOGRAM_WIDTH, y2: plotHeight + 0.5 }),
    s('text', { class: 'axis-label', x: 0, y: HISTOGRAM_HEIGHT - 3 }, '0'),
    s('text', { class: 'axis-label', x: HISTOGRAM_WIDTH, y: HISTOGRAM_HEIGHT - 3, 'text-anchor': 'end' }, fmt(card.histogram_max)),
  );
  return svg;
}

function logitList(title: string, className: string, tokens: string[], values: number[]): HTMLElement {
  return h('div', { class: `logit-list ${className}` },
    h('h4', {}, title),
    h('ol', {}, ...tokens.map((t, i) => h('li', {}, h('span', { class: 'tok' }, visibleToken(t)), h('span', { class: 'value' }, fmt(values[i]))))),
  );
}

/** Renders `card` into `container`, replacing what was there. */
export function renderFeatureCard(container: HTMLElement, card: FeatureCard): void {
  const stats = h('dl', { class: 'feature-stats' },
    h('dt', {}, 'activation frequency'), h('dd', { id: 'feature-frequency' }, `${fmt(card.activation_frequency * 100)}%`),
    h('dt', {}, 'min / max activation'), h('dd', {}, `${fmt(card.act_min)} / ${fmt(card.act_max)}`),
    h('dt', {}, 'transcoder'), h('dd', {}, card.transcoder_id),
  );
  const logits = h('div', { id: 'feature-logits' },
    logitList('Top logits', 'top-logits', card.top_logits, card.top_logit_values),
    logitList('Bottom logits', 'bottom-logits', card.bottom_logits, card.bottom_logit_values),
  );
  const deEmbedding = card.de_embedding
    ? h('div', { class: 'feature-de-embedding' },
        logitList('Top input tokens', 'top-embeddings', card.de_embedding.top, card.de_embedding.top_values),
        logitList('Bottom input tokens', 'bottom-embeddings', card.de_embedding.bottom, card.de_embedding.bottom_values))
    : null;
  const sections = card.examples_quantiles.map((q, i) => {
    const details = h('details', { class: 'feature-quantile' },
      h('summary', {}, `${clip(q.quantile_name, 60)} (${q.examples.length})`),
      ...q.examples.map((e) => exampleRow(e, card.act_max)));
    details.open = i < OPEN_SECTIONS;
    return details;
  });
  container.replaceChildren(
    h('h3', {}, `Feature ${card.feature} of layer ${card.layer}`),
    stats,
    h('h4', {}, 'Activations'),
    histogram(card),
    logits,
    ...(deEmbedding ? [deEmbedding] : []),
    h('h4', {}, 'Examples'),
    ...sections,
  );
}

/** Replaces the card area with a message (no card for the feature, or none embedded). */
export function renderFeatureMessage(container: HTMLElement, message: string, isError = false): void {
  container.replaceChildren(h('p', { class: isError ? 'feature-message error' : 'feature-message' }, message));
}
