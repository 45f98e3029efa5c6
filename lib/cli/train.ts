/** `transcoders train`: trains transcoders for one or more layers (see lib/transcoders/train.ts). */
import { existsSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { InvalidArgumentError } from '../errors.js';
import { loadModel, PROCESSINGS, type Model } from '../models/model.js';
import { readCacheMeta } from '../transcoders/activation-cache.js';
import { TRANSCODER_ARCHS } from '../transcoders/config.js';
import { loadTranscoder } from '../transcoders/formats/index.js';
import { trainTranscoders, type TrainRunOptions } from '../transcoders/training-run.js';
import type { Transcoder } from '../transcoders/transcoder.js';
import { DEVICE_OPTION, applyThreads, THREADS_OPTION, choiceOption, intOption, numberOption, listOption, type Command } from './command.js';
import { parseLayers, tokenFileFor } from './data.js';
import { ProgressBar } from './progress.js';

const SCHEDULES = ['constant', 'constantwithwarmup', 'linearwarmupdecay', 'cosineannealingwarmup'] as const;

async function initialWeights(path: string, layers: number[]): Promise<Record<number, Transcoder>> {
  const out: Record<number, Transcoder> = {};
  for (const layer of layers) {
    // A folder of per-layer transcoders (a train output), or one transcoder for a single layer.
    const perLayer = join(path, `layer_${layer}`);
    if (existsSync(perLayer)) out[layer] = await loadTranscoder(perLayer, { layer });
    else if (layers.length === 1) out[layer] = await loadTranscoder(path, { layer });
    else throw new InvalidArgumentError(`--init ${path}: no layer_${layer} inside (give a folder of layer_L transcoders when training several layers)`);
  }
  return out;
}

export const trainCommand: Command = {
  name: 'train',
  summary: 'Train transcoders on a model\'s MLPs (several layers from one forward pass), with checkpoints and resume.',
  usage: 'train (<model-dir> --data PATH | --activations DIR) --layers L,.. --arch relu|topk|jumprelu --d-sae N --out DIR [options]',
  details:
    '--data takes .txt / .jsonl files or folders (tokenised and packed like the paper, into OUT/tokens.safetensors) or a\n' +
    'token file from `transcoders tokenize`. --activations takes one layer of a `transcoders cache` folder (DIR/layer_L).\n' +
    'The run writes OUT/layer_L (native format), OUT/train.jsonl (metrics) and OUT/checkpoints/ (resume with --resume).\n' +
    'relu defaults to the paper recipe (normalised MSE, L1, ghost grads, scheduler stepped before the optimizer); topk and\n' +
    'jumprelu to the standard recipe (FVU, AuxK / L0). See docs/transcoders.md.',
  options: {
    data: { type: 'string', value: 'PATH', description: 'text (.txt/.jsonl, files or folders, comma-separated) or a token file', multiple: true },
    activations: { type: 'string', value: 'DIR', description: 'train from an activation cache folder instead of the model' },
    layers: { type: 'string', value: 'L,..', description: 'layers to train, e.g. 0,1,2 or 0-11' },
    arch: { type: 'string', value: 'ARCH', description: 'relu (default), topk or jumprelu' },
    skip: { type: 'boolean', description: 'add a skip connection (skip transcoder)' },
    'd-sae': { type: 'string', value: 'N', description: 'number of features' },
    k: { type: 'string', value: 'K', description: 'topk: active features per token' },
    l1: { type: 'string', value: 'C', description: 'relu: L1 coefficient (default 1.4e-4)' },
    l0: { type: 'string', value: 'C', description: 'jumprelu: L0 coefficient (default 1e-3)' },
    'auxk-alpha': { type: 'string', value: 'A', description: 'topk: AuxK weight (default 1/32)' },
    recipe: { type: 'string', value: 'paper|standard', description: 'training recipe (default: paper for relu, standard otherwise)' },
    lr: { type: 'string', value: 'R', description: 'learning rate (default 4e-4)' },
    'lr-schedule': { type: 'string', value: 'NAME', description: `${SCHEDULES.join(', ')}` },
    'warmup-steps': { type: 'string', value: 'N', description: 'learning-rate warm-up steps' },
    'l1-warmup-steps': { type: 'string', value: 'N', description: 'ramp the sparsity coefficient over N steps' },
    'max-grad-norm': { type: 'string', value: 'X', description: 'clip the gradient norm' },
    'ghost-grads': { type: 'string', value: 'on|off', description: 'relu: ghost gradients (default on in the paper recipe)' },
    'dead-feature-window': { type: 'string', value: 'N', description: 'steps without firing before a feature counts as dead' },
    'resample-every': { type: 'string', value: 'N', description: 'resample dead features every N steps (default off)' },
    'batch-size': { type: 'string', value: 'N', description: 'activation rows (tokens) per step (default 4096)' },
    tokens: { type: 'string', value: 'N', description: 'tokens to train on' },
    steps: { type: 'string', value: 'N', description: 'steps to train (instead of --tokens)' },
    'context-size': { type: 'string', value: 'N', description: 'tokens per packed row when tokenising text (default 128)' },
    'buffer-rows': { type: 'string', value: 'N', description: 'shuffle-buffer rows per layer (default 64 batches)' },
    'no-shuffle': { type: 'boolean', description: 'consume rows in order (replayable batch for batch)' },
    init: { type: 'string', value: 'PATH', description: 'start from these weights (any format; a folder of layer_L for several layers)' },
    'bias-init': { type: 'string', value: 'METHOD', description: 'mean (default), geometric_median or zeros' },
    'checkpoint-every': { type: 'string', value: 'TOKENS', description: 'checkpoint interval in tokens (default: 10 per run)' },
    resume: { type: 'boolean', description: 'continue from the latest checkpoint in OUT' },
    processing: { type: 'string', value: 'P', description: 'model weight processing (default transformerlens)' },
    seed: { type: 'string', value: 'S', description: 'seed for initialisation and shuffling (default 0)' },
    out: { type: 'string', short: 'o', value: 'DIR', description: 'output folder' },
    device: DEVICE_OPTION,
    threads: THREADS_OPTION,
    quiet: { type: 'boolean', short: 'q', description: 'no progress bar' },
  },
  async run(values, positionals) {
    applyThreads(values);
    if (!values.out) throw new InvalidArgumentError('--out DIR is required');
    const out = resolve(values.out as string);
    mkdirSync(out, { recursive: true });
    const data = listOption(values, 'data');
    const activations = values.activations as string | undefined;
    if ((data.length > 0) === (activations !== undefined)) throw new InvalidArgumentError('give exactly one of --data PATH (with a model folder) or --activations DIR');
    const device = (values.device as string | undefined) ?? 'cpu';
    let model: Model | null = null;
    if (data.length > 0) {
      if (!positionals[0]) throw new InvalidArgumentError('training from --data needs the model folder: transcoders train <model-dir> --data ...');
      model = await loadModel(positionals[0], { processing: choiceOption(values.processing, 'processing', PROCESSINGS) ?? 'transformerlens', device });
    }
    const layers = activations ? [readCacheMeta(activations).layer] : parseLayers(values.layers as string | undefined, model?.config.nLayers);
    if (activations && values.layers && parseLayers(values.layers as string).join() !== layers.join()) {
      throw new InvalidArgumentError(`--layers ${values.layers} does not match the cache's layer ${layers[0]}`);
    }
    const dSae = intOption(values['d-sae'], 'd-sae', 1);
    if (!dSae) throw new InvalidArgumentError('--d-sae N is required (e.g. 32 x the model width)');
    const ghost = values['ghost-grads'];
    if (ghost !== undefined && ghost !== 'on' && ghost !== 'off') throw new InvalidArgumentError(`--ghost-grads must be on or off, got '${ghost}'`);
    const tokenFile = model ? await tokenFileFor(model, data, intOption(values['context-size'], 'context-size', 2) ?? 128, out) : null;
    const options: TrainRunOptions = {
      data: tokenFile ? { tokenFile, model: model! } : { activations: activations! },
      layers,
      arch: choiceOption(values.arch, 'arch', TRANSCODER_ARCHS) ?? 'relu',
      dSae,
      skip: values.skip === true,
      ...(values.k !== undefined && { k: intOption(values.k, 'k', 1)! }),
      ...(values.l1 !== undefined && { l1Coefficient: numberOption(values.l1, 'l1')! }),
      ...(values.l0 !== undefined && { l0Coefficient: numberOption(values.l0, 'l0')! }),
      ...(values['auxk-alpha'] !== undefined && { auxkAlpha: numberOption(values['auxk-alpha'], 'auxk-alpha')! }),
      ...(values.recipe !== undefined && { recipe: choiceOption(values.recipe, 'recipe', ['paper', 'standard'] as const)! }),
      ...(values.lr !== undefined && { lr: numberOption(values.lr, 'lr')! }),
      ...(values['lr-schedule'] !== undefined && { schedule: choiceOption(values['lr-schedule'], 'lr-schedule', SCHEDULES)! }),
      ...(values['warmup-steps'] !== undefined && { warmupSteps: intOption(values['warmup-steps'], 'warmup-steps')! }),
      ...(values['l1-warmup-steps'] !== undefined && { sparsityWarmupSteps: intOption(values['l1-warmup-steps'], 'l1-warmup-steps')! }),
      ...(values['max-grad-norm'] !== undefined && { maxGradNorm: numberOption(values['max-grad-norm'], 'max-grad-norm')! }),
      ...(ghost !== undefined && { ghostGrads: ghost === 'on' }),
      ...(values['dead-feature-window'] !== undefined && { deadFeatureWindow: intOption(values['dead-feature-window'], 'dead-feature-window', 1)! }),
      ...(values['resample-every'] !== undefined && { resampleEvery: intOption(values['resample-every'], 'resample-every', 1)! }),
      batchSize: intOption(values['batch-size'], 'batch-size', 1) ?? 4096,
      ...(values.steps !== undefined && { steps: intOption(values.steps, 'steps', 1)! }),
      ...(values.tokens !== undefined && { tokens: intOption(values.tokens, 'tokens', 1)! }),
      ...(values['buffer-rows'] !== undefined && { bufferRows: intOption(values['buffer-rows'], 'buffer-rows', 2)! }),
      noShuffle: values['no-shuffle'] === true,
      ...(values['bias-init'] !== undefined && { biasInit: choiceOption(values['bias-init'], 'bias-init', ['mean', 'geometric_median', 'zeros'] as const)! }),
      ...(values['checkpoint-every'] !== undefined && { checkpointEveryTokens: intOption(values['checkpoint-every'], 'checkpoint-every', 1)! }),
      resume: values.resume === true,
      seed: intOption(values.seed, 'seed') ?? 0,
      device,
      out,
    };
    if (options.steps === undefined && options.tokens === undefined) throw new InvalidArgumentError('give the run length: --tokens N or --steps N');
    if (values.init) options.init = await initialWeights(values.init as string, layers);
    const totalSteps = options.steps ?? Math.floor(options.tokens! / options.batchSize!);
    const bar = values.quiet ? null : new ProgressBar('training', totalSteps, ' steps');
    const controller = new AbortController();
    const onSignal = () => {
      process.stderr.write('\nstopping after the current step (a checkpoint will be written)...\n');
      controller.abort();
    };
    process.once('SIGINT', onSignal);
    try {
      const result = await trainTranscoders({
        ...options,
        signal: controller.signal,
        onProgress: (p) => bar?.update(p.step, p.metrics.map((m) => `L${m.layer} fvu ${m.fvu.toFixed(3)} l0 ${m.l0.toFixed(1)}`).join(' ')),
      });
      const why = result.stopped ? ' (stopped; resume with --resume)' : result.exhausted ? ' (the data ran out)' : '';
      console.log(`trained ${result.steps} steps, ${result.tokens} tokens${why}`);
      for (const l of layers) console.log(`  ${join(out, `layer_${l}`)}`);
    } finally {
      process.off('SIGINT', onSignal);
    }
  },
};
