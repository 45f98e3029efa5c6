/**
 * Feature interventions and steering (circuit-tracer's feature_intervention and generation with
 * interventions): set transcoder features to chosen values and see the logits and the activations
 * that follow. The native core (native/circuits/intervention.cc) adds, at each layer, the change of
 * the transcoder's reconstruction to the MLP output; `freezeAttention` replays the clean run's
 * attention patterns, `directEffects` also its norm scales and MLP outputs (only direct effects
 * remain: what an attribution graph's edges measure).
 */
import { runOnDevice } from '../device-queue.js';
import { InvalidArgumentError, throwIfCancelled } from '../errors.js';
import type { NativeTensor } from '../native.js';
import { Tensor } from '../tensor.js';
import { Rng } from '../util/random.js';
import { softmax } from '../util/softmax.js';
import type { ReplacementModel } from './replacement-model.js';

/** Set feature `feature` of layer `layer`'s transcoder to `value` at `position` (negative: from the end). */
export interface FeatureIntervention {
  layer: number;
  position: number;
  feature: number;
  value: number;
}

export interface InterventionOptions {
  /** Replay the clean run's attention patterns (default true). */
  freezeAttention?: boolean;
  /** Also replay norm scales and MLP outputs: only the interventions' direct effects (default false). */
  directEffects?: boolean;
  /** Layers whose activations stay at the clean run's (except the interventions). */
  constrainedLayers?: number[];
}

export interface InterventionResult {
  tokens: number[];
  /** [T, V] logits after the intervention. */
  logits: Tensor;
  /** Per transcoder layer, the activations [T, m] after the intervention (the intervened values included). */
  activations: Map<number, Tensor>;
  /** Per transcoder layer, the pre-activations [T, m] the intervened run's input gives. */
  preActivations: Map<number, Tensor>;
}

function checkInterventions(interventions: readonly FeatureIntervention[]): void {
  if (!Array.isArray(interventions)) throw new InvalidArgumentError('interventions must be an array of { layer, position, feature, value }');
  interventions.forEach((v, i) => {
    for (const key of ['layer', 'position', 'feature'] as const) {
      if (!Number.isInteger(v?.[key])) throw new InvalidArgumentError(`interventions[${i}].${key} must be an integer, got ${JSON.stringify(v?.[key])}`);
    }
    if (typeof v.value !== 'number' || !Number.isFinite(v.value)) throw new InvalidArgumentError(`interventions[${i}].value must be a finite number, got ${JSON.stringify(v.value)}`);
  });
}

/** Runs `prompt` (text or token ids) with the interventions. */
export async function intervene(
  replacement: ReplacementModel,
  prompt: string | readonly number[],
  interventions: readonly FeatureIntervention[],
  options: InterventionOptions = {},
): Promise<InterventionResult> {
  checkInterventions(interventions);
  const tokens = typeof prompt === 'string' ? replacement.tokenize(prompt) : [...prompt];
  if (tokens.length === 0) throw new InvalidArgumentError('the prompt has no tokens');
  const ids = Tensor.from(Int32Array.from(tokens), [tokens.length]);
  const r = await runOnDevice(replacement.model.device, () =>
    replacement.handle.intervene(ids.handle, interventions.map((v) => ({ ...v })), {
      freezeAttention: options.freezeAttention ?? true,
      directEffects: options.directEffects ?? false,
      constrainedLayers: options.constrainedLayers ?? [],
    }),
  );
  const byLayer = (o: Record<string, NativeTensor>) => new Map(Object.entries(o).map(([l, t]) => [Number(l), new Tensor(t)]));
  return { tokens, logits: new Tensor(r.logits), activations: byLayer(r.activations), preActivations: byLayer(r.preActivations) };
}

/** A steered feature: at fixed prompt positions, or `'new'`: at the last prompt token and every generated one. */
export interface SteeringIntervention {
  layer: number;
  feature: number;
  value: number;
  position: number | 'new';
}

export interface SteerOptions extends InterventionOptions {
  /** Tokens to generate (default 20). */
  maxNewTokens?: number;
  /** 0 (default): greedy; otherwise sampling from softmax(logits / temperature). */
  temperature?: number;
  /** Seed of the sampler (default 0): a run is reproducible. */
  seed?: number;
  /** Stop at this token (default: the model's end-of-sequence token). */
  stopToken?: number | null;
  /** Stops the generation between tokens: a CancelledError. */
  signal?: AbortSignal;
}

export interface SteerStep {
  token: number;
  /** The next-token logits [V] the token was chosen from. */
  logits: Float32Array;
  /** The interventions of this step (positions resolved). */
  interventions: FeatureIntervention[];
}

export interface SteerResult {
  promptTokens: number[];
  tokens: number[];
  steps: SteerStep[];
  /** The generated text (when the model has a tokenizer). */
  text: string | null;
}

/** The interventions of a step: fixed positions as given, 'new' at every position from the last prompt token on. */
export function stepInterventions(steering: readonly SteeringIntervention[], promptLength: number, length: number): FeatureIntervention[] {
  const out: FeatureIntervention[] = [];
  for (const s of steering) {
    if (s.position === 'new') for (let p = promptLength - 1; p < length; p++) out.push({ layer: s.layer, feature: s.feature, value: s.value, position: p });
    else out.push({ layer: s.layer, feature: s.feature, value: s.value, position: s.position < 0 ? s.position + promptLength : s.position });
  }
  return out;
}

/**
 * Generates from `prompt` with features steered, one token at a time (each step reruns the sequence so
 * far with that step's interventions; attention is not frozen unless asked, since it must cover new tokens).
 */
export async function steer(
  replacement: ReplacementModel,
  prompt: string | readonly number[],
  steering: readonly SteeringIntervention[],
  options: SteerOptions = {},
): Promise<SteerResult> {
  const model = replacement.model;
  const promptTokens = typeof prompt === 'string' ? replacement.tokenize(prompt) : [...prompt];
  const maxNew = options.maxNewTokens ?? 20;
  if (!Number.isInteger(maxNew) || maxNew < 1) throw new InvalidArgumentError(`maxNewTokens must be a positive integer, got ${maxNew}`);
  const temperature = options.temperature ?? 0;
  if (!(temperature >= 0) || !Number.isFinite(temperature)) throw new InvalidArgumentError(`temperature must be a non-negative number, got ${temperature}`);
  if (promptTokens.length + maxNew > model.config.nCtx) {
    throw new InvalidArgumentError(`the prompt (${promptTokens.length} tokens) and ${maxNew} new tokens exceed the model's context of ${model.config.nCtx}`);
  }
  steering.forEach((s, i) => {
    if (s.position !== 'new' && !Number.isInteger(s.position)) throw new InvalidArgumentError(`steering[${i}].position must be an integer or 'new'`);
  });
  const stop = options.stopToken === undefined ? model.config.eosTokenId : options.stopToken;
  const rng = new Rng(options.seed ?? 0);
  const tokens = [...promptTokens];
  const steps: SteerStep[] = [];
  const V = model.config.vocabSize;
  for (let i = 0; i < maxNew; i++) {
    throwIfCancelled(options.signal);
    const interventions = stepInterventions(steering, promptTokens.length, tokens.length);
    const r = await intervene(replacement, tokens, interventions, { freezeAttention: false, ...options });
    const logits = r.logits.toFloat32Array().slice((tokens.length - 1) * V, tokens.length * V);
    const token = temperature === 0 ? argmax(logits) : sample(logits, temperature, rng);
    steps.push({ token, logits, interventions });
    tokens.push(token);
    if (stop !== null && token === stop) break;
  }
  const generated = tokens.slice(promptTokens.length);
  return { promptTokens, tokens: generated, steps, text: model.tokenizer ? model.tokenizer.decode(generated) : null };
}

function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i;
  return best;
}

function sample(logits: Float32Array, temperature: number, rng: Rng): number {
  const p = softmax(logits, temperature);
  let u = rng.uniform();
  for (let i = 0; i < p.length; i++) {
    u -= p[i]!;
    if (u <= 0) return i;
  }
  return p.length - 1;
}
