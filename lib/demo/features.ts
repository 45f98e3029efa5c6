/**
 * What a reader needs to check a feature: the text where it fires most, the tokens that drive it
 * directly (de-embedding), the tokens it promotes (logit effects), and on the greater-than prompts
 * its activation as a function of the start year and its direct effect on every end-year token.
 */
import { deEmbedding, logitEffects, logitEffectsOn, type TokenEffects } from '../circuits/connections.js';
import type { ReplacementModel } from '../circuits/replacement-model.js';
import { greaterThanRows, yearTokenIds } from './greater-than.js';

export interface FeatureRef {
  layer: number;
  feature: number;
  /** Position in the greater-than prompt where the feature is read (default: the last). */
  position?: number;
  /** Why the feature is shown, e.g. "in the circuit graph". */
  reason?: string;
  /** The attention head that moves the feature's output to the last position (for its end-year effects). */
  viaHead?: { layer: number; head: number };
}

export interface ActivatingExample {
  /** Tokens from the start of the example to just after the activating one. */
  tokens: string[];
  /** Index into `tokens` of the activating token. */
  index: number;
  activation: number;
}

export interface FeatureCard extends Required<Pick<FeatureRef, 'layer' | 'feature' | 'position'>>, Pick<FeatureRef, 'viaHead'> {
  reasons: string[];
  topExamples: ActivatingExample[];
  deEmbedding: TokenEffects;
  logitEffects: TokenEffects;
  /** Mean activation at `position` of the greater-than prompts, for start years 02..98. */
  byStartYear: { startYears: number[]; activation: number[] };
  /**
   * Effect on each end-year token ZZ = 00..99 without LayerNorms: direct, W_dec[f] . W_U[:, "ZZ"],
   * or through `viaHead`'s OV circuit, W_dec[f] W_V W_O . W_U[:, "ZZ"].
   */
  endYearEffects: number[];
}

export interface FeatureCardOptions {
  /** Token rows to find the top activating examples in (each starting with BOS). */
  corpus: readonly (readonly number[])[];
  /** Examples per card (default 5). */
  examples?: number;
  /** Tokens per de-embedding / logit-effect list (default 8). */
  k?: number;
}

/**
 * Runs `rows` in batches (equal lengths) and hands each batch's activations of the requested layers,
 * row-major [batch, T, dSae], to `visit` with the index of the batch's first row; nothing is kept.
 */
async function forEachBatch(
  replacement: ReplacementModel,
  layers: number[],
  rows: readonly (readonly number[])[],
  visit: (first: number, acts: ReadonlyMap<number, Float32Array>) => void,
): Promise<void> {
  const hooks = layers.map((l) => replacement.placement(l).hookIn);
  for (let start = 0; start < rows.length; start += 64) {
    const { cache } = await replacement.model.run(rows.slice(start, start + 64), { cache: hooks, logits: false });
    const acts = new Map<number, Float32Array>();
    for (const l of layers) {
      const f = await replacement.transcoder(l).encode(cache[replacement.placement(l).hookIn]!);
      acts.set(l, f.toFloat32Array());
      f.dispose();
    }
    for (const t of Object.values(cache)) t.dispose();
    visit(start, acts);
  }
}

/** Cards for `refs` (merged when the same feature is asked for twice). */
export async function featureCards(replacement: ReplacementModel, refs: readonly FeatureRef[], options: FeatureCardOptions): Promise<FeatureCard[]> {
  const { model } = replacement;
  const exampleCount = options.examples ?? 5;
  const k = options.k ?? 8;
  const gt = greaterThanRows(model);
  const T = gt.rows[0]!.length;
  const unique = new Map<string, FeatureCard>();
  for (const ref of refs) {
    const position = ref.position ?? T - 1;
    const key = `${ref.layer}:${ref.feature}@${position}`;
    const existing = unique.get(key);
    if (existing) {
      if (ref.reason && !existing.reasons.includes(ref.reason)) existing.reasons.push(ref.reason);
      continue;
    }
    unique.set(key, {
      layer: ref.layer, feature: ref.feature, position, ...(ref.viaHead ? { viaHead: ref.viaHead } : {}), reasons: ref.reason ? [ref.reason] : [], topExamples: [],
      deEmbedding: { top: [], bottom: [] }, logitEffects: { top: [], bottom: [] }, byStartYear: { startYears: gt.startYears, activation: [] }, endYearEffects: [],
    });
  }
  const cards = [...unique.values()];
  const layers = [...new Set(cards.map((c) => c.layer))];
  const years = yearTokenIds(model);
  const text = (id: number) => model.decode([id]);

  // One pass over the corpus: the best position of each row, per card.
  const best = new Map(cards.map((c) => [c, [] as { row: number; pos: number; activation: number }[]]));
  const L = options.corpus[0]?.length ?? 0;
  await forEachBatch(replacement, layers, options.corpus, (first, acts) => {
    for (const card of cards) {
      const m = replacement.transcoder(card.layer).config.dSae;
      const a = acts.get(card.layer)!;
      for (let b = 0; b < a.length / (L * m); b++) {
        let top = { row: first + b, pos: 0, activation: 0 };
        for (let t = 0; t < L; t++) {
          const v = a[(b * L + t) * m + card.feature]!;
          if (v > top.activation) top = { row: first + b, pos: t, activation: v };
        }
        if (top.activation > 0) best.get(card)!.push(top);
      }
    }
  });
  // One pass over the greater-than prompts: the activation at each card's position, averaged over events.
  const events = gt.rows.length / gt.startYears.length;
  const sums = new Map(cards.map((c) => [c, new Float64Array(gt.startYears.length)]));
  await forEachBatch(replacement, layers, gt.rows, (first, acts) => {
    for (const card of cards) {
      const m = replacement.transcoder(card.layer).config.dSae;
      const a = acts.get(card.layer)!;
      const sum = sums.get(card)!;
      for (let b = 0; b < a.length / (T * m); b++) sum[Math.floor((first + b) / events)]! += a[(b * T + card.position) * m + card.feature]! / events;
    }
  });

  for (const card of cards) {
    card.topExamples = best.get(card)!.sort((a, b) => b.activation - a.activation).slice(0, exampleCount).map(({ row, pos, activation }) => {
      const ids = options.corpus[row]!;
      let from = pos;
      while (from > 0 && ids[from] !== model.config.bosTokenId) from--;
      return { tokens: ids.slice(from, Math.min(ids.length, pos + 3)).map(text), index: pos - from, activation };
    });
    card.byStartYear.activation = [...sums.get(card)!];

    card.endYearEffects = await logitEffectsOn(replacement, card.layer, card.feature, years, card.viaHead ? { head: card.viaHead } : {});
    card.deEmbedding = await deEmbedding(replacement, card.layer, card.feature, { k });
    card.logitEffects = await logitEffects(replacement, card.layer, card.feature, { k });
  }
  return cards;
}
