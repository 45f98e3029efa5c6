/** `transcoders run`: one forward pass on a prompt — top next tokens, loss, optional activation dump. */
import { dirname, resolve } from 'node:path';
import { mkdirSync } from 'node:fs';
import { InvalidArgumentError } from '../errors.js';
import { writeSafetensors, type RawTensor } from '../io/safetensors.js';
import { loadModel, MODEL_DTYPES, PROCESSINGS, type Model } from '../models/model.js';
import { DEVICE_OPTION, applyThreads, THREADS_OPTION, checkModelArgument, checkOutputPaths, choiceOption, intOption, type Command } from './command.js';
import { SHIPPED_MODEL_DIR as DEFAULT_MODEL_DIR } from '../models/shipped.js';

export interface Prediction {
  id: number;
  token: string | null;
  prob: number;
  logit: number;
}

/** The `k` most likely next tokens from one row of logits. */
export function topPredictions(logits: Float32Array, k: number, model: Model): Prediction[] {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  let sum = 0;
  for (const v of logits) sum += Math.exp(v - max);
  const order = Array.from(logits.keys()).sort((a, b) => logits[b]! - logits[a]!).slice(0, k);
  const tokenizer = model.tokenizer;
  return order.map((id) => ({
    id,
    token: tokenizer && id < tokenizer.vocabSize ? tokenizer.decode([id]) : null,
    prob: Math.exp(logits[id]! - max) / sum,
    logit: logits[id]!,
  }));
}

function parseTokenList(text: string): number[] {
  const ids = text.split(',').map((s) => s.trim()).filter((s) => s.length > 0).map(Number);
  if (ids.length === 0 || ids.some((n) => !Number.isInteger(n) || n < 0)) {
    throw new InvalidArgumentError(`--tokens must be a comma-separated list of non-negative integers, got '${text}'`);
  }
  return ids;
}

export const runCommand: Command = {
  name: 'run',
  summary: 'Run a model on a prompt: print the top next-token predictions and the loss; optionally save logits and activations.',
  usage: 'run [model-dir] (--prompt TEXT | --tokens 1,2,3) [options]',
  details:
    `model-dir defaults to the shipped model (${DEFAULT_MODEL_DIR}).\n` +
    'Hook names follow TransformerLens (blocks.0.hook_resid_post, blocks.3.ln2.hook_normalized, ...); "*" matches anything,\n' +
    "e.g. --hooks 'blocks.*.hook_mlp_out'. With --out, the file holds 'logits' [T, V] float32 and each hook without its batch dimension.",
  arguments: [{ name: 'model-dir' }],
  oneOf: [['prompt', 'tokens']],
  options: {
    prompt: { type: 'string', short: 'p', value: 'TEXT', description: 'text to run (tokenised with the model\'s tokenizer.json)' },
    tokens: { type: 'string', value: 'IDS', description: 'comma-separated token ids instead of a prompt' },
    'prepend-bos': { type: 'boolean', description: 'prepend the BOS token (default: the model\'s convention, GPT-2 yes, Pythia no)' },
    'no-prepend-bos': { type: 'boolean', description: 'do not prepend the BOS token' },
    processing: { type: 'string', value: 'none|transformerlens', description: 'weight processing (default none)' },
    hooks: { type: 'string', value: 'NAMES', description: 'comma-separated hook names or patterns to save with --out' },
    out: { type: 'string', short: 'o', value: 'FILE', description: 'write logits and hooks to a .safetensors file (its folder is created)' },
    top: { type: 'string', short: 'k', value: 'N', description: 'number of predictions to show (default 10)' },
    json: { type: 'boolean', description: 'print JSON' },
    device: DEVICE_OPTION,
    dtype: { type: 'string', value: 'T', description: 'float32 (default), bfloat16, float16' },
    threads: THREADS_OPTION,
  },
  async run(values, positionals) {
    if (values['prepend-bos'] && values['no-prepend-bos']) throw new InvalidArgumentError('--prepend-bos and --no-prepend-bos contradict each other');
    if (typeof values.tokens === 'string' && (values['prepend-bos'] || values['no-prepend-bos'])) {
      throw new InvalidArgumentError(`--${values['prepend-bos'] ? 'prepend-bos' : 'no-prepend-bos'} does not apply to --tokens (the ids are run as given)`);
    }
    applyThreads(values);
    const top = intOption(values.top, 'top', 1) ?? 10;
    const hookPatterns = typeof values.hooks === 'string' ? values.hooks.split(',').filter((s) => s.trim()) : [];
    if (hookPatterns.length > 0 && !values.out) throw new InvalidArgumentError('--hooks needs --out FILE to write the activations to');
    const processing = choiceOption(values.processing, 'processing', PROCESSINGS) ?? 'none';
    const dtype = choiceOption(values.dtype, 'dtype', MODEL_DTYPES) ?? 'float32';
    const tokenIds = typeof values.tokens === 'string' ? parseTokenList(values.tokens) : null;
    const dir = checkModelArgument(positionals[0], 'model-dir') ?? DEFAULT_MODEL_DIR;
    checkOutputPaths(values, { out: 'file-mkdir' });

    const model = await loadModel(dir, { processing, dtype, device: typeof values.device === 'string' ? values.device : 'cpu' });
    const prependBos = values['prepend-bos'] ? true : values['no-prepend-bos'] ? false : undefined;
    const tokens = tokenIds ?? model.tokenize(values.prompt as string, { prependBos });
    const out = await model.run([tokens], { cache: hookPatterns });
    const logits = out.logits!.toFloat32Array();
    const V = model.config.vocabSize;
    const T = tokens.length;
    const loss = T >= 2 ? await model.loss([tokens]) : null;
    const predictions = topPredictions(logits.subarray((T - 1) * V, T * V), top, model);

    let saved: string | null = null;
    if (typeof values.out === 'string') {
      saved = resolve(values.out);
      const tensors: Record<string, RawTensor> = { logits: { dtype: 'F32', shape: [T, V], bytes: new Uint8Array(logits.buffer, logits.byteOffset, logits.byteLength) } };
      for (const [name, t] of Object.entries(out.cache)) {
        const data = t.toFloat32Array();
        tensors[name] = { dtype: 'F32', shape: t.shape.slice(1), bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
      }
      mkdirSync(dirname(saved), { recursive: true });
      writeSafetensors(saved, tensors, { model: model.dir, processing: model.processing, tokens: JSON.stringify(tokens) });
    }

    const tokenTexts = model.tokenizer ? tokens.map((id) => (id < model.tokenizer!.vocabSize ? model.tokenizer!.decode([id]) : null)) : null;
    if (values.json) {
      console.log(JSON.stringify({ model: model.dir, processing: model.processing, tokens, tokenTexts, loss, predictions, out: saved, hooks: Object.keys(out.cache) }, null, 2));
      return;
    }
    const c = model.config;
    console.log(`model   ${model.dir} (${c.arch}, ${c.nLayers} layers, d_model ${c.dModel}, processing ${model.processing}, ${model.device} ${model.dtype})`);
    console.log(`tokens  ${T}: ${tokenTexts ? tokenTexts.map((s) => JSON.stringify(s)).join(' ') : tokens.join(',')}`);
    console.log(`loss    ${loss === null ? 'n/a (needs 2 tokens)' : `${loss.toFixed(4)} nats/token`}`);
    console.log('next token:');
    predictions.forEach((p, i) => {
      console.log(`  ${String(i + 1).padStart(2)}. ${(100 * p.prob).toFixed(2).padStart(6)}%  ${(p.token === null ? '?' : JSON.stringify(p.token)).padEnd(16)} id ${p.id}`);
    });
    if (saved) console.log(`wrote   ${saved} (logits${Object.keys(out.cache).length ? ` + ${Object.keys(out.cache).length} hooks` : ''})`);
  },
};
