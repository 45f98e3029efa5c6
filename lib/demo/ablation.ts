/**
 * The paper's greater-than experiment with transcoders in place of MLPs: how well the spliced model
 * keeps the behaviour, and which features carry it.
 * - Removal: a feature's importance is how much the mean probability difference falls when that one
 *   feature is zeroed (at every position) in the spliced model; the most important ones are then
 *   removed cumulatively.
 * - Sparsity (the paper's curve): the MLP is replaced by only its k features of highest activation
 *   variance at the last position, for growing k, against the MLP keeping only its k neurons of highest
 *   variance. Few features should do what takes many neurons.
 */
import { InvalidArgumentError } from '../errors.js';
import type { ReplacementModel } from '../circuits/replacement-model.js';
import type { MlpReplacement, Model } from '../models/model.js';
import { Tensor } from '../tensor.js';
import type { Transcoder } from '../transcoders/transcoder.js';
import { greaterThan, greaterThanRows, type GreaterThanOptions, type GreaterThanResult } from './greater-than.js';
import { EVENTS } from './tasks.js';

/** Layer `layer`'s transcoder as an MLP replacement with `features` forced to zero at every position. */
export function withoutFeatures(replacement: ReplacementModel, layer: number, features: readonly number[]): MlpReplacement {
  return replacement.replacements({ layers: [layer], remove: { [layer]: features } })[layer]!;
}

/** Layer `layer`'s transcoder with only `features` active: sum_i f_i W_dec[i] + b_dec_out (the paper's eval_tc_on_num). */
export function onlyFeatures(replacement: ReplacementModel, layer: number, features: readonly number[]): MlpReplacement {
  return replacement.replacements({ layers: [layer], keep: { [layer]: features } })[layer]!;
}

const GELU_C = Math.sqrt(2 / Math.PI);
const ACTIVATIONS: Record<string, (x: number) => number> = {
  gelu_tanh: (x) => 0.5 * x * (1 + Math.tanh(GELU_C * (x + 0.044715 * x * x * x))),
  relu: (x) => Math.max(0, x),
};

/**
 * The layer's own MLP with only `neurons` kept: act(x W_in + b_in)[:, neurons] W_out[neurons] + b_out,
 * computed from the model's weights on the MLP input (the paper's eval_mlp_on_num).
 */
export function onlyNeurons(model: Model, layer: number, neurons: readonly number[]): MlpReplacement {
  const act = ACTIVATIONS[model.config.activation];
  if (!act) throw new InvalidArgumentError(`onlyNeurons: activation ${model.config.activation} is not supported (gelu_tanh, relu)`);
  const Win = model.weight(`blocks.${layer}.mlp.W_in`).toFloat32Array();
  const bin = model.weight(`blocks.${layer}.mlp.b_in`).toFloat32Array();
  const Wout = model.weight(`blocks.${layer}.mlp.W_out`).toFloat32Array();
  const bout = model.weight(`blocks.${layer}.mlp.b_out`).toFloat32Array();
  const d = model.config.dModel;
  const dMlp = bin.length;
  return (input: Tensor) => {
    const x = input.toFloat32Array();
    const rows = x.length / d;
    const out = new Float32Array(rows * d);
    for (let r = 0; r < rows; r++) {
      out.set(bout, r * d);
      for (const n of neurons) {
        let pre = bin[n]!;
        for (let i = 0; i < d; i++) pre += x[r * d + i]! * Win[i * dMlp + n]!;
        const post = act(pre);
        for (let i = 0; i < d; i++) out[r * d + i]! += post * Wout[n * d + i]!;
      }
    }
    return Tensor.from(out, input.shape);
  };
}

/**
 * Mean and variance over the greater-than prompts of each unit's activation at `positions`: the
 * transcoder's features (`source` a Transcoder) or the MLP's neurons (`source` a layer: its
 * `mlp.hook_post`).
 */
export async function activationStats(model: Model, source: Transcoder | number, positions: readonly number[], options: Pick<GreaterThanOptions, 'events'> = {}): Promise<{ mean: Float64Array; variance: Float64Array }> {
  const { rows } = greaterThanRows(model, options);
  const T = rows[0]!.length;
  if (positions.length === 0 || positions.some((t) => !Number.isInteger(t) || t < 0 || t >= T)) throw new InvalidArgumentError(`positions must be a non-empty list of prompt positions in 0..${T - 1}, got [${positions.join(', ')}]`);
  const hook = typeof source === 'number' ? `blocks.${source}.mlp.hook_post` : source.config.hookIn;
  const sum = new Float64Array(typeof source === 'number' ? model.config.dMlp : source.config.dSae);
  const squares = new Float64Array(sum.length);
  const m = sum.length;
  for (let start = 0; start < rows.length; start += 256) {
    const batch = rows.slice(start, start + 256);
    const { cache } = await model.run(batch, { cache: [hook], logits: false });
    let values: Float32Array;
    if (typeof source === 'number') values = cache[hook]!.toFloat32Array();
    else {
      const acts = await source.encode(cache[hook]!);
      values = acts.toFloat32Array();
      acts.dispose();
    }
    cache[hook]!.dispose();
    for (let b = 0; b < batch.length; b++) {
      for (const t of positions) {
        for (let f = 0; f < m; f++) {
          const v = values[(b * T + t) * m + f]!;
          sum[f]! += v;
          squares[f]! += v * v;
        }
      }
    }
  }
  const n = rows.length * positions.length;
  const mean = sum.map((s) => s / n);
  return { mean, variance: squares.map((q, f) => Math.max(0, q / n - mean[f]! ** 2)) };
}

/** Indices of `scores` from the highest down. */
const ranked = (scores: Float64Array) => [...scores.keys()].sort((a, b) => scores[b]! - scores[a]!);

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
  /**
   * The paper's sparsity curve for `layer`: mean probability difference with the MLP replaced by only
   * its top-k features (by activation variance at the last position), and with the MLP keeping only its
   * top-k neurons (same ranking on `mlp.hook_post`).
   */
  topK: { k: number[]; features: number[]; neurons: number[] };
}

export interface ExperimentOptions extends Pick<GreaterThanOptions, 'events'> {
  /** Layer whose features are removed (default the last). */
  layer?: number;
  /** Features to try besides the most active ones (e.g. those of a circuit graph). */
  include?: readonly number[];
  /** Prompt positions where "most active" and the variance ranking are measured (default the last). */
  positions?: readonly number[];
  /** Candidates tried one by one (default 24). */
  candidates?: number;
  /** Features removed cumulatively (default 6). */
  remove?: number;
  /** Events used to rank the candidates and for the top-k curve (default: the first 5 of `events`). */
  rankingEvents?: readonly string[];
  /** k values of the top-k curve (default 0, 1, 2, 4, ..., 128 and everything). */
  topK?: readonly number[];
  onProgress?: (done: number, total: number) => void;
}

/** Runs the experiment with the replacement model's transcoders. */
export async function greaterThanExperiment(replacement: ReplacementModel, options: ExperimentOptions = {}): Promise<GreaterThanExperiment> {
  const { model } = replacement;
  const layers = replacement.layers;
  const layer = options.layer ?? layers[layers.length - 1]!;
  const transcoder = replacement.transcoder(layer);
  const candidates = options.candidates ?? 24;
  const remove = Math.min(options.remove ?? 6, candidates);
  const events = options.events ?? EVENTS;
  const rankingEvents = options.rankingEvents ?? events.slice(0, 5);
  const ks = options.topK ?? [0, 1, 2, 4, 8, 16, 32, 64, 128];
  const total = 3 + layers.length + candidates + remove + 2 * ks.length;
  let done = 0;
  const tick = () => options.onProgress?.(++done, total);

  const original = await greaterThan(model, { events });
  tick();
  const splicedByLayer: GreaterThanExperiment['splicedByLayer'] = [];
  for (const l of layers) {
    splicedByLayer.push({ layer: l, result: await greaterThan(model, { events, replaceMlp: replacement.replacements({ layers: [l] }) }) });
    tick();
  }
  const splicedAll = await greaterThan(model, { events, replaceMlp: replacement.replacements() });
  tick();

  const T = greaterThanRows(model, { events: events.slice(0, 1) }).rows[0]!.length;
  const activation = (await activationStats(model, transcoder, options.positions ?? [T - 1], { events })).mean;
  const mostActive = [...activation.keys()].filter((f) => activation[f]! > 0).sort((a, b) => activation[b]! - activation[a]!);
  const tried = [...new Set([...(options.include ?? []), ...mostActive])].slice(0, candidates);
  const replaced = (features: readonly number[], evts: readonly string[]) => greaterThan(model, { events: evts, replaceMlp: { [layer]: withoutFeatures(replacement, layer, features) } });
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

  const positions = options.positions ?? [T - 1];
  const byFeature = ranked((await activationStats(model, transcoder, positions, { events: rankingEvents })).variance);
  const byNeuron = ranked((await activationStats(model, layer, positions, { events: rankingEvents })).variance);
  const topK: GreaterThanExperiment['topK'] = { k: [...ks], features: [], neurons: [] };
  for (const k of ks) {
    topK.features.push((await greaterThan(model, { events: rankingEvents, replaceMlp: { [layer]: onlyFeatures(replacement, layer, byFeature.slice(0, k)) } })).meanProbDiff);
    tick();
    topK.neurons.push((await greaterThan(model, { events: rankingEvents, replaceMlp: { [layer]: onlyNeurons(model, layer, byNeuron.slice(0, k)) } })).meanProbDiff);
    tick();
  }
  if (done < total) options.onProgress?.(total, total);
  return { layer, original, splicedByLayer, splicedAll, importance, ablations, topK };
}
