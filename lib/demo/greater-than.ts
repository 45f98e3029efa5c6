/**
 * The paper's greater-than metric on the demo model. A prompt "The war lasted from the year 17YY
 * to the year 17" asks for an end year; the model is right when it puts its probability on
 * two-digit tokens above YY. The probability difference is
 *   p(end > YY) - p(end <= YY),
 * summing the next-token probabilities of the tokens "00".."99"; it is averaged over events and
 * given for every start year YY = 02..98.
 */
import { InvalidArgumentError } from '../errors.js';
import type { MlpReplacement, Model } from '../models/model.js';
import { EVENTS, FIRST_START_YEAR, LAST_START_YEAR, greaterThanPrompt, twoDigits } from './tasks.js';

export interface GreaterThanOptions {
  /** Events to average over (default all of the training events). */
  events?: readonly string[];
  /** Century of both years (default 17). */
  century?: number;
  /** Which phrasing of tasks.ts (default 0: "lasted from the year ... to the year ..."). */
  phrasing?: number;
  /** MLP replacements during the runs (a transcoder, an ablation, ...). */
  replaceMlp?: Readonly<Record<number, MlpReplacement>>;
  /** Prompts per forward pass (default 256). */
  batchSize?: number;
}

export interface GreaterThanResult {
  /** YY = 2..98. */
  startYears: number[];
  /** Mean over events of p(end > YY) - p(end <= YY), one per start year. */
  probDiff: number[];
  /** Mean over events of p(end > YY): the probability mass on valid end years. */
  validMass: number[];
  /** Mean over events of the mass on any two-digit token. */
  yearMass: number[];
  /** Averages over start years. */
  meanProbDiff: number;
  meanValidMass: number;
  meanYearMass: number;
}

/** Ids of the two-digit tokens "00".."99" (index = the number). */
export function yearTokenIds(model: Model): number[] {
  return Array.from({ length: 100 }, (_, n) => {
    const ids = model.tokenize(twoDigits(n), { prependBos: false });
    if (ids.length !== 1) throw new InvalidArgumentError(`${model.dir}: "${twoDigits(n)}" is not a single token, so the greater-than metric does not apply to this model`);
    return ids[0]!;
  });
}

/** Tokenized prompts, one row per (start year, event), start years outermost. */
export function greaterThanRows(model: Model, options: Pick<GreaterThanOptions, 'events' | 'century' | 'phrasing'> = {}): { rows: number[][]; startYears: number[] } {
  const events = options.events ?? EVENTS;
  const century = options.century ?? 17;
  const startYears = Array.from({ length: LAST_START_YEAR - FIRST_START_YEAR + 1 }, (_, i) => FIRST_START_YEAR + i);
  const rows = startYears.flatMap((yy) => events.map((e) => model.tokenize(greaterThanPrompt(e, century, yy, options.phrasing ?? 0))));
  const length = rows[0]!.length;
  const odd = rows.find((r) => r.length !== length);
  if (odd) throw new InvalidArgumentError(`greater-than prompts must all have the same length; "${model.decode(odd)}" has ${odd.length} tokens, not ${length}`);
  return { rows, startYears };
}

/** Runs the greater-than prompts and measures the probability difference per start year. */
export async function greaterThan(model: Model, options: GreaterThanOptions = {}): Promise<GreaterThanResult> {
  const events = options.events ?? EVENTS;
  if (events.length === 0) throw new InvalidArgumentError('greaterThan needs at least one event');
  const { rows, startYears } = greaterThanRows(model, options);
  const years = yearTokenIds(model);
  const V = model.config.vocabSize;
  const T = rows[0]!.length;
  const batchSize = options.batchSize ?? 256;
  const probs: Float64Array[] = []; // per row: p over "00".."99"
  for (let start = 0; start < rows.length; start += batchSize) {
    const batch = rows.slice(start, start + batchSize);
    const { logits } = await model.run(batch, options.replaceMlp ? { replaceMlp: options.replaceMlp } : {});
    const values = logits!.toFloat32Array();
    logits!.dispose();
    for (let b = 0; b < batch.length; b++) {
      const offset = (b * T + T - 1) * V;
      let max = -Infinity;
      for (let v = 0; v < V; v++) max = Math.max(max, values[offset + v]!);
      let sum = 0;
      for (let v = 0; v < V; v++) sum += Math.exp(values[offset + v]! - max);
      probs.push(Float64Array.from(years, (id) => Math.exp(values[offset + id]! - max) / sum));
    }
  }
  const probDiff: number[] = [];
  const validMass: number[] = [];
  const yearMass: number[] = [];
  startYears.forEach((yy, i) => {
    let diff = 0;
    let valid = 0;
    let all = 0;
    for (let e = 0; e < events.length; e++) {
      const p = probs[i * events.length + e]!;
      p.forEach((q, zz) => {
        all += q;
        if (zz > yy) {
          valid += q;
          diff += q;
        } else diff -= q;
      });
    }
    probDiff.push(diff / events.length);
    validMass.push(valid / events.length);
    yearMass.push(all / events.length);
  });
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  return { startYears, probDiff, validMass, yearMass, meanProbDiff: mean(probDiff), meanValidMass: mean(validMass), meanYearMass: mean(yearMass) };
}
