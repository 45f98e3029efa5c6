/**
 * The paper's greater-than experiment with transcoders in place of MLPs: how well the spliced model
 * keeps the behaviour, and which features carry it, measured by removing them. A feature's
 * importance is how much the mean probability difference falls when that one feature is zeroed (at
 * every position) in the spliced model; the most important ones are then removed cumulatively.
 */
import type { MlpReplacement, Model } from '../models/model.js';
import { Tensor } from '../tensor.js';
import type { Transcoder } from '../transcoders/transcoder.js';
import { greaterThan, greaterThanRows, type GreaterThanOptions, type GreaterThanResult } from './greater-than.js';
import { EVENTS } from './tasks.js';

/** The transcoder as an MLP replacement with some of its features forced to zero at every position. */
export function withoutFeatures(transcoder: Transcoder, features: readonly number[]): MlpReplacement {
  if (features.length === 0) return transcoder;
  const m = transcoder.config.dSae;
  return async (input: Tensor) => {
    const acts = await transcoder.encode(input);
    const values = acts.toFloat32Array();
    acts.dispose();
    for (let row = 0; row < values.length / m; row++) for (const f of features) values[row * m + f] = 0;
    const f = Tensor.from(values, input.shape.slice(0, -1).concat(m));
    const out = await transcoder.decode(f, input);
    f.dispose();
    return out;
  };
}

/** Mean activation of every feature of `transcoder` over `positions` of the greater-than prompts, [dSae]. */
export async function meanActivations(model: Model, transcoder: Transcoder, positions: readonly number[], options: Pick<GreaterThanOptions, 'events'> = {}): Promise<Float64Array> {
  const { rows } = greaterThanRows(model, options);
  const m = transcoder.config.dSae;
  const T = rows[0]!.length;
  const mean = new Float64Array(m);
  const hook = transcoder.config.hookIn;
  const n = rows.length * positions.length;
  for (let start = 0; start < rows.length; start += 256) {
    const batch = rows.slice(start, start + 256);
    const { cache } = await model.run(batch, { cache: [hook], logits: false });
    const acts = await transcoder.encode(cache[hook]!);
    const values = acts.toFloat32Array();
    acts.dispose();
    cache[hook]!.dispose();
    for (let b = 0; b < batch.length; b++) for (const t of positions) for (let f = 0; f < m; f++) mean[f]! += values[(b * T + t) * m + f]! / n;
  }
  return mean;
}

export interface AblationStep {
  /** Features removed so far (most important first). */
  removed: number[];
  result: GreaterThanResult;
}

export interface GreaterThanExperiment {
  /** The layer whose features are removed. */
  layer: number;
  original: GreaterThanResult;
  /** Each MLP replaced alone by its transcoder. */
  splicedByLayer: { layer: number; result: GreaterThanResult }[];
  /** Every MLP replaced at once. */
  splicedAll: GreaterThanResult;
  /** Candidates with the drop of the mean probability difference when each alone is removed, most important first. */
  importance: { feature: number; meanActivation: number; drop: number }[];
  /** `layer` replaced, with the top 1, 2, ... features removed. */
  ablations: AblationStep[];
}

export interface ExperimentOptions extends Pick<GreaterThanOptions, 'events'> {
  /** Layer whose features are removed (default the last). */
  layer?: number;
  /** Features to try besides the most active ones (e.g. those of a circuit graph). */
  include?: readonly number[];
  /** Prompt positions where "most active" is measured (default the last). */
  positions?: readonly number[];
  /** Candidates tried one by one (default 24). */
  candidates?: number;
  /** Features removed cumulatively (default 6). */
  remove?: number;
  /** Events used to rank the candidates (default: the first 5 of `events`). */
  rankingEvents?: readonly string[];
  onProgress?: (done: number, total: number) => void;
}

/** Runs the experiment with `transcoders` (one per layer, all layers). */
export async function greaterThanExperiment(model: Model, transcoders: ReadonlyMap<number, Transcoder>, options: ExperimentOptions = {}): Promise<GreaterThanExperiment> {
  const layers = [...transcoders.keys()].sort((a, b) => a - b);
  const layer = options.layer ?? layers[layers.length - 1]!;
  const transcoder = transcoders.get(layer)!;
  const candidates = options.candidates ?? 24;
  const remove = Math.min(options.remove ?? 6, candidates);
  const events = options.events ?? EVENTS;
  const rankingEvents = options.rankingEvents ?? events.slice(0, 5);
  const total = 2 + layers.length + candidates + remove;
  let done = 0;
  const tick = () => options.onProgress?.(++done, total);

  const original = await greaterThan(model, { events });
  tick();
  const splicedByLayer: GreaterThanExperiment['splicedByLayer'] = [];
  for (const l of layers) {
    splicedByLayer.push({ layer: l, result: await greaterThan(model, { events, replaceMlp: { [l]: transcoders.get(l)! } }) });
    tick();
  }
  const splicedAll = await greaterThan(model, { events, replaceMlp: Object.fromEntries(layers.map((l) => [l, transcoders.get(l)!])) });
  tick();

  const T = greaterThanRows(model, { events: events.slice(0, 1) }).rows[0]!.length;
  const activation = await meanActivations(model, transcoder, options.positions ?? [T - 1], { events });
  const mostActive = [...activation.keys()].filter((f) => activation[f]! > 0).sort((a, b) => activation[b]! - activation[a]!);
  const tried = [...new Set([...(options.include ?? []), ...mostActive])].slice(0, candidates);
  const replaced = (features: readonly number[], evts: readonly string[]) => greaterThan(model, { events: evts, replaceMlp: { [layer]: withoutFeatures(transcoder, features) } });
  const baseline = (await replaced([], rankingEvents)).meanProbDiff;
  tick();
  const importance: GreaterThanExperiment['importance'] = [];
  for (const feature of tried) {
    importance.push({ feature, meanActivation: activation[feature]!, drop: baseline - (await replaced([feature], rankingEvents)).meanProbDiff });
    tick();
  }
  importance.sort((a, b) => b.drop - a.drop);
  const ablations: AblationStep[] = [];
  for (let i = 1; i <= Math.min(remove, importance.length); i++) {
    const removed = importance.slice(0, i).map((x) => x.feature);
    ablations.push({ removed, result: await replaced(removed, events) });
    tick();
  }
  options.onProgress?.(total, total);
  return { layer, original, splicedByLayer, splicedAll, importance, ablations };
}
