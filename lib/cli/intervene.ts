/**
 * `transcoders intervene` (set features, show the next-token distribution before and after) and
 * `transcoders steer` (generate with features steered), over lib/circuits/interventions.ts.
 */
import { InvalidArgumentError } from '../errors.js';
import { intervene, steer, type FeatureIntervention, type SteeringIntervention } from '../circuits/interventions.js';
import { applyThreads, checkInputArgument, checkInputPaths, DEVICE_OPTION, intOption, listOption, numberOption, THREADS_OPTION, type Command, type OptionSpec } from './command.js';
import { topPredictions } from './run.js';
import { loadModelWithTranscoders } from './transcoder-paths.js';

/** Parses `L:F@POS=VALUE` (POS may be negative; with `allowNew`, POS may be omitted: every new token). */
export function parseSetting(text: string, allowNew: boolean): SteeringIntervention {
  const m = /^(\d+):(\d+)(?:@(-?\d+))?=(-?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)$/i.exec(text);
  if (!m || (m[3] === undefined && !allowNew)) {
    throw new InvalidArgumentError(`--set must look like L:F@POS=VALUE${allowNew ? ' or L:F=VALUE (every new token)' : ''} (e.g. 1:42@-1=5), got '${text}'`);
  }
  return { layer: Number(m[1]), feature: Number(m[2]), position: m[3] === undefined ? 'new' : Number(m[3]), value: Number(m[4]) };
}

const COMMON: Record<string, OptionSpec> = {
  transcoders: { type: 'string', value: 'PATH', description: 'transcoders (a train output folder of layer_L, a circuit-tracer set, or paths)', multiple: true, required: true },
  prompt: { type: 'string', short: 'p', value: 'TEXT', description: 'the prompt (BOS prepended by the model\'s convention)', required: true },
  set: { type: 'string', value: 'L:F@POS=VALUE', description: 'set feature F of layer L at position POS to VALUE (repeatable)', multiple: true, required: true },
  processing: { type: 'string', value: 'P', description: 'override the model processing (none, transformerlens)' },
  json: { type: 'boolean', description: 'print JSON' },
  device: DEVICE_OPTION,
  threads: THREADS_OPTION,
};

export const interveneCommand: Command = {
  name: 'intervene',
  summary: 'Set transcoder features to values and show the next-token distribution before and after.',
  usage: 'intervene <model-dir> --transcoders PATH --prompt TEXT --set L:F@POS=VALUE [--set ...] [options]',
  details: 'Attention patterns are frozen at the clean run\'s by default (--live-attention recomputes them); --direct-effects also\n' +
    'freezes norm scales and MLP outputs, leaving only the features\' direct effects (what attribution-graph edges measure).',
  arguments: [{ name: 'model-dir', required: true }],
  options: {
    ...COMMON,
    'live-attention': { type: 'boolean', description: 'recompute attention patterns instead of freezing them' },
    'direct-effects': { type: 'boolean', description: 'freeze norm scales and MLP outputs too (direct effects only)' },
    constrain: { type: 'string', value: 'L,L', description: 'layers whose activations stay at the clean run\'s' },
    top: { type: 'string', value: 'N', description: 'next tokens to show (default 10)' },
  },
  async run(values, positionals) {
    applyThreads(values);
    const [dir] = positionals as [string];
    checkInputArgument(dir, 'model-dir');
    checkInputPaths(values, ['transcoders']);
    const settings = listOption(values, 'set').map((s) => parseSetting(s, false)) as (SteeringIntervention & { position: number })[];
    const top = intOption(values.top, 'top', 1) ?? 10;
    const constrained = typeof values.constrain === 'string' ? values.constrain.split(',').map((s) => intOption(s.trim(), 'constrain', 0)!) : [];
    const { replacement, model } = await loadModelWithTranscoders(values, dir);
    const tokens = model.tokenize(values.prompt as string);
    const interventions: FeatureIntervention[] = settings.map(({ layer, feature, value, position }) => ({ layer, feature, value, position }));
    const options = { freezeAttention: values['live-attention'] !== true, directEffects: values['direct-effects'] === true, constrainedLayers: constrained };
    const [before, after] = [await intervene(replacement, tokens, [], options), await intervene(replacement, tokens, interventions, options)];
    const V = model.config.vocabSize;
    const last = (t: typeof before) => t.logits.toFloat32Array().slice((tokens.length - 1) * V, tokens.length * V);
    const report = { tokens: tokens.length, interventions, options, before: topPredictions(last(before), top, model), after: topPredictions(last(after), top, model) };
    if (values.json) {
      console.log(JSON.stringify(report, null, 2));
      return;
    }
    const line = (r: { id: number; token: string | null; prob: number }) => `${JSON.stringify(r.token ?? `#${r.id}`).padEnd(16)} ${r.prob.toFixed(4)}`;
    console.log('before'.padEnd(24) + ' | after');
    for (let i = 0; i < top; i++) console.log(`${report.before[i] ? line(report.before[i]!) : ''}`.padEnd(24) + ` | ${report.after[i] ? line(report.after[i]!) : ''}`);
  },
};

export const steerCommand: Command = {
  name: 'steer',
  summary: 'Generate text with transcoder features steered (set on every new token, or at fixed prompt positions).',
  usage: 'steer <model-dir> --transcoders PATH --prompt TEXT --set L:F[@POS]=VALUE [--set ...] [options]',
  details: '--set L:F=VALUE steers the feature at the last prompt token and every generated one; L:F@POS=VALUE at one prompt position.\n' +
    'Greedy by default; --temperature T samples, reproducibly for a --seed.',
  arguments: [{ name: 'model-dir', required: true }],
  options: {
    ...COMMON,
    'max-new-tokens': { type: 'string', value: 'N', description: 'tokens to generate (default 20)' },
    temperature: { type: 'string', value: 'T', description: 'sampling temperature (default 0: greedy)' },
    seed: { type: 'string', value: 'S', description: 'sampling seed (default 0)' },
  },
  async run(values, positionals) {
    applyThreads(values);
    const [dir] = positionals as [string];
    checkInputArgument(dir, 'model-dir');
    checkInputPaths(values, ['transcoders']);
    const steering = listOption(values, 'set').map((s) => parseSetting(s, true));
    const maxNewTokens = intOption(values['max-new-tokens'], 'max-new-tokens', 1) ?? 20;
    const temperature = numberOption(values.temperature, 'temperature') ?? 0;
    if (temperature < 0) throw new InvalidArgumentError(`--temperature must be non-negative, got ${temperature}`);
    const seed = intOption(values.seed, 'seed', 0) ?? 0;
    const { replacement } = await loadModelWithTranscoders(values, dir);
    const prompt = values.prompt as string;
    const options = { maxNewTokens, temperature, seed };
    const [plain, steered] = [await steer(replacement, prompt, [], options), await steer(replacement, prompt, steering, options)];
    const text = (r: typeof plain) => r.text ?? r.tokens.map((t) => `#${t}`).join(' ');
    if (values.json) {
      console.log(JSON.stringify({ prompt, steering, options, unsteered: { tokens: plain.tokens, text: plain.text }, steered: { tokens: steered.tokens, text: steered.text } }, null, 2));
      return;
    }
    console.log(`unsteered: ${JSON.stringify(prompt)} + ${JSON.stringify(text(plain))}`);
    console.log(`steered:   ${JSON.stringify(prompt)} + ${JSON.stringify(text(steered))}`);
  },
};
