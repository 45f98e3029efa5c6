/** `transcoders train`: trains transcoders for one or more layers (see lib/transcoders/training-run.ts). */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { readTokenFileHeader } from '../data/token-file.js';
import { joinOptionsFromEnv, ProcessGroup } from '../distributed/process-group.js';
import { LAUNCHED_ENV, launchWorkers } from '../distributed/launch.js';
import { DistributedError, InvalidArgumentError } from '../errors.js';
import { loadModel, PROCESSINGS, type Model } from '../models/model.js';
import { readCacheLayers } from '../transcoders/activation-cache.js';
import { findResumePoint } from '../transcoders/checkpoints.js';
import { TRANSCODER_ARCHS, type TranscoderArch, type TranscoderConfig } from '../transcoders/config.js';
import { loadTranscoder } from '../transcoders/formats/index.js';
import { CONFIG_FILE } from '../transcoders/formats/native.js';
import { CROSS_LAYER_FOLDER } from '../transcoders/checkpoints.js';
import { checkDataParallel, CROSS_LAYER_RUN_ARCHS, isCrossLayerRunArch, trainTranscoders, type CrossLayerRunArch, type TrainRunOptions } from '../transcoders/training-run.js';
import type { Transcoder } from '../transcoders/transcoder.js';
import {
  DEVICE_OPTION, applyThreads, THREADS_OPTION, checkInputPaths, checkModelArgument, checkOutputPaths, choiceOption, intOption, listOption,
  numberOption, rejectOptions, type Command, type OptionValues,
} from './command.js';
import { CONTEXT_SIZE_OPTION, isTokenFile, parseLayers, tokenFileFor, withTokenFile } from './data.js';
import { ProgressBar } from './progress.js';

const SCHEDULES = ['constant', 'constantwithwarmup', 'linearwarmupdecay', 'cosineannealingwarmup'] as const;
const RECIPES = ['paper', 'standard'] as const;
const BIAS_INITS = ['mean', 'geometric_median', 'zeros'] as const;
const DEFAULT_BATCH_SIZE = 4096;
const COMPUTE_DTYPES = ['float32', 'bfloat16'] as const;
const STATE_DTYPES = ['float32', 'bfloat16'] as const;
const CLT_SPARSITIES = ['none', 'l1', 'tanh', 'l0'] as const;
const ARCHS = [...TRANSCODER_ARCHS, ...CROSS_LAYER_RUN_ARCHS] as const;
type RunArch = TranscoderArch | CrossLayerRunArch;

/**
 * Options that only mean something for some architectures (the rest apply to all three): given with
 * another architecture they would be silently ignored, so they are an error.
 */
export const ARCH_SPECIFIC_OPTIONS: Readonly<Record<string, readonly RunArch[]>> = {
  k: ['topk', 'clt-topk', 'clt-batchtopk'],
  'auxk-alpha': ['topk', 'clt-topk', 'clt-batchtopk'],
  l1: ['relu'],
  'ghost-grads': ['relu'],
  // jumprelu and cross-layer transcoders train through autograd in float32 (docs/transcoders.md, the fast step).
  'compute-dtype': ['relu', 'topk'],
  l0: ['jumprelu'],
  bandwidth: ['jumprelu', 'clt-jumprelu'],
  // The sparsity coefficient it ramps is L1 (relu), L0 (jumprelu) or a CLT's penalty; topk has none.
  'l1-warmup-steps': ['relu', 'jumprelu', 'clt-relu', 'clt-jumprelu'],
  recipe: ['relu', 'topk', 'jumprelu'],
  'resample-every': ['relu', 'topk', 'jumprelu'],
  init: ['relu', 'topk', 'jumprelu'],
  // Cross-layer transcoders' penalties (docs/cross-layer.md).
  sparsity: ['clt-relu', 'clt-topk', 'clt-jumprelu', 'clt-batchtopk'],
  'sparsity-coefficient': ['clt-relu', 'clt-topk', 'clt-jumprelu', 'clt-batchtopk'],
  'tanh-scale': ['clt-relu', 'clt-topk', 'clt-jumprelu', 'clt-batchtopk'],
  preact: ['clt-relu', 'clt-topk', 'clt-jumprelu', 'clt-batchtopk'],
};

/** What the train options resolve to before any work: every inconsistency is reported here. */
export interface TrainPlan {
  arch: RunArch;
  dSae: number;
  k?: number;
  batchSize: number;
  recipe: (typeof RECIPES)[number];
}

/**
 * Checks the train options against each other (no files touched): options of another architecture,
 * topk without --k, the paper recipe on topk/jumprelu, a warm-up with a constant schedule, a run
 * shorter than one batch, a shuffle buffer under two batches, model-only options with --activations,
 * and --init / --resume / --bias-init together.
 */
export function planTraining(values: OptionValues): TrainPlan {
  const arch = choiceOption(values.arch, 'arch', ARCHS) ?? 'relu';
  const archText = values.arch === undefined ? `${arch} (the default --arch)` : arch;
  const misplaced = Object.entries(ARCH_SPECIFIC_OPTIONS).filter(([flag, archs]) => values[flag] !== undefined && !archs.includes(arch));
  if (misplaced.length > 0) {
    const parts = misplaced.map(([flag, archs]) => `--${flag} is for --arch ${archs.join(' or ')}`);
    throw new InvalidArgumentError(`${parts.join('; ')}; the architecture is ${archText}`);
  }
  const dSae = intOption(values['d-sae'], 'd-sae', 1);
  if (dSae === undefined) throw new InvalidArgumentError('--d-sae N is required');
  const k = intOption(values.k, 'k', 1);
  if ((arch === 'topk' || arch === 'clt-topk' || arch === 'clt-batchtopk') && k === undefined) throw new InvalidArgumentError(`--arch ${arch} needs --k K (active features per token${arch === 'topk' ? '' : ' and layer'})`);
  const sparsity = choiceOption(values.sparsity, 'sparsity', CLT_SPARSITIES);
  if (sparsity === 'l0' && arch !== 'clt-jumprelu') throw new InvalidArgumentError(`--sparsity l0 trains jumprelu thresholds: it needs --arch clt-jumprelu, not ${archText}`);
  if (values['tanh-scale'] !== undefined && (sparsity ?? (arch === 'clt-jumprelu' ? 'tanh' : 'l1')) !== 'tanh') throw new InvalidArgumentError('--tanh-scale is for --sparsity tanh');
  if (k !== undefined && k > dSae) throw new InvalidArgumentError(`--k ${k} exceeds --d-sae ${dSae}`);
  if (values.bandwidth !== undefined && !(numberOption(values.bandwidth, 'bandwidth')! > 0)) throw new InvalidArgumentError(`--bandwidth must be positive, got '${values.bandwidth}'`);
  const ghost = values['ghost-grads'];
  if (ghost !== undefined && ghost !== 'on' && ghost !== 'off') throw new InvalidArgumentError(`--ghost-grads must be on or off, got '${ghost}'`);

  const recipe = choiceOption(values.recipe, 'recipe', RECIPES) ?? (arch === 'relu' ? 'paper' : 'standard');
  if (recipe === 'paper' && arch !== 'relu') throw new InvalidArgumentError(`--recipe paper trains relu transcoders; use --recipe standard for ${arch}`);
  choiceOption(values['compute-dtype'], 'compute-dtype', COMPUTE_DTYPES);
  choiceOption(values['optimizer-state-dtype'], 'optimizer-state-dtype', STATE_DTYPES);
  const schedule = choiceOption(values['lr-schedule'], 'lr-schedule', SCHEDULES) ?? (recipe === 'paper' ? 'constantwithwarmup' : 'constant');
  if (values['warmup-steps'] !== undefined && schedule === 'constant') {
    const why = values['lr-schedule'] === undefined ? ` (the default of the ${recipe} recipe)` : '';
    throw new InvalidArgumentError(`--warmup-steps does not apply to the constant learning-rate schedule${why}; give --lr-schedule constantwithwarmup, linearwarmupdecay or cosineannealingwarmup`);
  }

  const batchSize = intOption(values['batch-size'], 'batch-size', 1) ?? DEFAULT_BATCH_SIZE;
  const tokens = intOption(values.tokens, 'tokens', 1);
  intOption(values.steps, 'steps', 1);
  if (tokens !== undefined && tokens < batchSize) {
    throw new InvalidArgumentError(`the run is shorter than one batch: --tokens ${tokens} is less than the batch size of ${batchSize} tokens${values['batch-size'] === undefined ? ' (the default --batch-size)' : ''}; give more tokens or a smaller --batch-size`);
  }
  const bufferRows = intOption(values['buffer-rows'], 'buffer-rows', 2);
  if (bufferRows !== undefined && values['no-shuffle'] !== true && bufferRows < 2 * batchSize) {
    throw new InvalidArgumentError(`--buffer-rows ${bufferRows} must hold at least two batches (${2 * batchSize} rows at --batch-size ${batchSize})`);
  }

  if (values.activations !== undefined) {
    rejectOptions(values, ['processing', 'context-size'], 'to training from --activations (they are for the model and its text)');
    rejectOptions(values, ['resample-every'], 'to training from --activations: resampling runs the model (give <model-dir> --data)');
  }
  if (values.resume === true) rejectOptions(values, ['init', 'bias-init'], 'with --resume: the run continues from the weights of its checkpoint');
  const nproc = intOption(values.nproc, 'nproc', 1) ?? 1;
  const launched = Number(joinOptionsFromEnv().worldSize ?? 1);
  const worldSize = nproc > 1 ? nproc : launched;
  if (nproc > 1 && launched > 1) {
    throw new InvalidArgumentError(`--nproc starts its own processes: it cannot run under a launcher that already set WORLD_SIZE=${process.env.WORLD_SIZE}`);
  }
  const sharded = values['shard-features'] === true;
  if (sharded) {
    if (worldSize < 2) throw new InvalidArgumentError('--shard-features splits the features over processes: give --nproc N (N >= 2) or run under a launcher with WORLD_SIZE >= 2');
    if (arch !== 'relu' && arch !== 'topk') throw new InvalidArgumentError(`--shard-features trains relu and topk transcoders, not --arch ${arch}`);
    if (arch === 'relu' && values['ghost-grads'] !== 'off') throw new InvalidArgumentError('--shard-features trains relu without ghost gradients: add --ghost-grads off');
    if (dSae % worldSize !== 0) throw new InvalidArgumentError(`--shard-features: --d-sae ${dSae} does not split over ${worldSize} processes`);
    rejectOptions(values, ['resample-every'], 'with --shard-features');
  } else if (worldSize > 1) {
    const how = nproc > 1 ? `--nproc ${nproc}` : `WORLD_SIZE=${worldSize}`;
    if (isCrossLayerRunArch(arch)) throw new InvalidArgumentError(`${how}: data-parallel training covers per-layer transcoders; train --arch ${arch} in one process`);
    rejectOptions(values, ['resample-every'], `with ${how}: each process would resample from its own rows`);
    if (batchSize % worldSize !== 0) throw new InvalidArgumentError(`${how}: the batch of ${batchSize} rows${values['batch-size'] === undefined ? ' (the default --batch-size)' : ''} does not split over ${worldSize} processes`);
  }
  if (values['dist-timeout'] !== undefined && !(numberOption(values['dist-timeout'], 'dist-timeout')! > 0)) throw new InvalidArgumentError(`--dist-timeout must be a positive number of seconds, got '${values['dist-timeout']}'`);
  if (values.init !== undefined) rejectOptions(values, ['bias-init'], 'with --init: the biases come from the given weights');
  return { arch, dSae, ...(k !== undefined && { k }), batchSize, recipe };
}

/** Throws unless `config` (from `source`) is the transcoder the options describe. */
function checkSameTranscoder(config: Pick<TranscoderConfig, 'arch' | 'dSae' | 'skip' | 'k'> & { kind?: string }, plan: TrainPlan, skip: boolean, source: string): void {
  const differences: string[] = [];
  const arch = config.kind === 'cross_layer_transcoder' ? `clt-${config.arch}` : config.arch;
  if (arch !== plan.arch) differences.push(`it is ${arch}, not --arch ${plan.arch}`);
  if (config.dSae !== plan.dSae) differences.push(`it has ${config.dSae} features, not --d-sae ${plan.dSae}`);
  if (config.skip !== skip) differences.push(config.skip ? 'it has a skip connection (add --skip)' : 'it has no skip connection (drop --skip)');
  if ((plan.arch === 'topk' || plan.arch === 'clt-topk' || plan.arch === 'clt-batchtopk') && (config.arch === 'topk' || (config.arch as string) === 'batchtopk') && config.k !== plan.k) differences.push(`its k is ${config.k}, not --k ${plan.k}`);
  if (differences.length > 0) throw new InvalidArgumentError(`${source}: ${differences.join('; ')}`);
}

async function initialWeights(path: string, layers: number[], plan: TrainPlan, skip: boolean): Promise<Record<number, Transcoder>> {
  const out: Record<number, Transcoder> = {};
  for (const layer of layers) {
    // A folder of per-layer transcoders (a train output), or one transcoder for a single layer.
    const perLayer = join(path, `layer_${layer}`);
    if (existsSync(perLayer)) out[layer] = await loadTranscoder(perLayer, { layer });
    else if (layers.length === 1) out[layer] = await loadTranscoder(path, { layer });
    else throw new InvalidArgumentError(`--init ${path}: no layer_${layer} inside (give a folder of layer_L transcoders when training several layers)`);
    checkSameTranscoder(out[layer]!.config, plan, skip, `--init ${existsSync(perLayer) ? perLayer : path}`);
  }
  return out;
}

/** With --resume: the checkpoint must exist and train these layers with this architecture. */
function checkResumable(out: string, layers: number[], plan: TrainPlan, skip: boolean): void {
  const checkpoints = join(out, 'checkpoints');
  // The checkpoint the run will continue from: the newest complete one (the run warns about broken newer ones).
  const { latest } = findResumePoint(checkpoints);
  if (!latest) throw new InvalidArgumentError(`--resume: no complete checkpoint in ${checkpoints}`);
  if (latest.state.layers.join(',') !== layers.join(',')) {
    throw new InvalidArgumentError(`--resume: the checkpoint ${latest.dir} trains layers ${latest.state.layers.join(',')}, not --layers ${layers.join(',')}`);
  }
  for (const folder of isCrossLayerRunArch(plan.arch) ? [CROSS_LAYER_FOLDER] : layers.map((l) => `layer_${l}`)) {
    const file = join(latest.dir, folder, CONFIG_FILE);
    let config: TranscoderConfig;
    try {
      config = JSON.parse(readFileSync(file, 'utf8')) as TranscoderConfig;
    } catch {
      continue; // an unreadable checkpoint is reported by the training run, with the file named
    }
    checkSameTranscoder(config, plan, skip, `--resume: ${file}`);
  }
}

/** Per-layer metrics of a progress report, compact enough for a terminal line with several layers. */
function progressDetail(metrics: { fvu: number; l0: number }[]): string {
  return `fvu ${metrics.map((m) => m.fvu.toFixed(3)).join(',')} l0 ${metrics.map((m) => m.l0.toFixed(1)).join(',')}`;
}

export const trainCommand: Command = {
  name: 'train',
  summary: 'Train transcoders on a model\'s MLPs (several layers from one forward pass), with checkpoints and resume.',
  usage: 'train (<model-dir> --data PATH | --activations DIR) --layers L,.. --d-sae N (--tokens N | --steps N) --out DIR [options]',
  details:
    '--data takes .txt / .jsonl files or folders (tokenised and packed like the paper, into OUT/tokens.safetensors) or a\n' +
    'token file from `transcoders tokenize`. --activations takes a `transcoders cache` folder (its layers, or those of\n' +
    '--layers, each trained on its own cached rows) or one of its DIR/layer_L folders.\n' +
    'The run writes OUT/layer_L (native format), OUT/train.jsonl (metrics) and OUT/checkpoints/ (resume with --resume).\n' +
    'relu defaults to the paper recipe (normalised MSE, L1, ghost grads, scheduler stepped before the optimizer); topk and\n' +
    'jumprelu to the standard recipe (FVU, AuxK / L0). Options marked "relu:", "topk:" or "jumprelu:" are an error with\n' +
    'another --arch. See docs/transcoders.md.\n' +
    '--arch clt-relu|clt-topk|clt-jumprelu|clt-batchtopk trains one cross-layer transcoder over every layer (--layers 0-<L-1>; --d-sae\n' +
    'features per layer) into OUT/clt: FVU summed over layers, --sparsity l1 (relu default) or tanh (jumprelu default),\n' +
    'weighted by each feature\'s decoder norm, AuxK for clt-topk and clt-batchtopk. See docs/cross-layer.md.',
  arguments: [{ name: 'model-dir', required: { unless: 'activations' } }],
  oneOf: [['data', 'activations'], ['tokens', 'steps']],
  options: {
    data: { type: 'string', value: 'PATH', description: 'text (.txt/.jsonl, files or folders, comma-separated) or a token file', multiple: true },
    activations: { type: 'string', value: 'DIR', description: 'train from an activation cache folder instead of the model' },
    layers: { type: 'string', value: 'L,..', description: 'layers to train, e.g. 0,1,2 or 0-11; with --activations, default every cached layer', required: { unless: 'activations' } },
    arch: { type: 'string', value: 'ARCH', description: 'relu (default), topk, jumprelu; clt-relu, clt-topk, clt-jumprelu, clt-batchtopk (a cross-layer transcoder)' },
    skip: { type: 'boolean', description: 'add a skip connection (skip transcoder)' },
    'd-sae': { type: 'string', value: 'N', description: 'number of features', required: true },
    k: { type: 'string', value: 'K', description: 'topk, clt-topk, clt-batchtopk: active features per token (and layer), required there' },
    sparsity: { type: 'string', value: 'P', description: 'clt: penalty none, l1 (clt-relu default), tanh (clt-jumprelu default) or l0 (clt-jumprelu)' },
    'sparsity-coefficient': { type: 'string', value: 'C', description: 'clt: the penalty\'s coefficient (default 1e-3 l1, 1e-2 tanh, 1e-3 l0)' },
    'tanh-scale': { type: 'string', value: 'C', description: 'clt: c in tanh(c f ||W_dec||) (default 1)' },
    preact: { type: 'string', value: 'C', description: 'clt: pre-activation loss coefficient (default 0)' },
    l1: { type: 'string', value: 'C', description: 'relu: L1 coefficient (default 1.4e-4)' },
    l0: { type: 'string', value: 'C', description: 'jumprelu: L0 coefficient (default 1e-3)' },
    bandwidth: { type: 'string', value: 'B', description: 'jumprelu, clt-jumprelu: width of the threshold\'s straight-through kernel (default 1e-3)' },
    'auxk-alpha': { type: 'string', value: 'A', description: 'topk, clt-topk, clt-batchtopk: AuxK weight (default 1/32)' },
    recipe: { type: 'string', value: 'paper|standard', description: 'training recipe (default: paper for relu, standard otherwise; paper is relu only)' },
    lr: { type: 'string', value: 'R', description: 'learning rate (default 4e-4)' },
    'lr-schedule': { type: 'string', value: 'NAME', description: `${SCHEDULES.join(', ')} (default constantwithwarmup for the paper recipe, else constant)` },
    'warmup-steps': { type: 'string', value: 'N', description: 'learning-rate warm-up steps (needs a warm-up schedule)' },
    'l1-warmup-steps': { type: 'string', value: 'N', description: 'relu, jumprelu: ramp the sparsity coefficient (L1 / L0) over N steps' },
    'max-grad-norm': { type: 'string', value: 'X', description: 'clip the gradient norm' },
    'ghost-grads': { type: 'string', value: 'on|off', description: 'relu: ghost gradients (default on in the paper recipe)' },
    'compute-dtype': { type: 'string', value: 'float32|bfloat16', description: 'relu, topk: precision of the dense matrix products (default float32; weights and optimizer stay float32)' },
    'dead-feature-window': { type: 'string', value: 'N', description: 'steps without firing before a feature counts as dead' },
    'optimizer-state-dtype': { type: 'string', value: 'float32|bfloat16', description: "dtype of Adam's moments (default float32; bfloat16 halves their memory, the update stays float32)" },
    'optimizer-state-device': { type: 'string', value: 'D', description: "device of Adam's moments (default the transcoders'), e.g. cpu while training on cuda" },
    'resample-every': { type: 'string', value: 'N', description: 'resample dead features every N steps (default off; not with --activations)' },
    'batch-size': { type: 'string', value: 'N', description: `activation rows (tokens) per step (default ${DEFAULT_BATCH_SIZE})` },
    tokens: { type: 'string', value: 'N', description: 'tokens to train on (at least one batch)' },
    steps: { type: 'string', value: 'N', description: 'steps to train (instead of --tokens)' },
    'context-size': CONTEXT_SIZE_OPTION,
    'buffer-rows': { type: 'string', value: 'N', description: 'shuffle-buffer rows per layer, at least two batches (default 64 batches)' },
    'no-shuffle': { type: 'boolean', description: 'consume rows in order (replayable batch for batch)' },
    init: { type: 'string', value: 'PATH', description: 'start from these weights (any format; a folder of layer_L for several layers)' },
    'bias-init': { type: 'string', value: 'METHOD', description: 'mean (default), geometric_median or zeros (not with --init or --resume)' },
    'checkpoint-every': { type: 'string', value: 'TOKENS', description: 'checkpoint interval in tokens (default: 10 per run)' },
    resume: { type: 'boolean', description: 'continue from the latest checkpoint in OUT' },
    processing: { type: 'string', value: 'P', description: 'model weight processing (default transformerlens; none for clt-*)' },
    seed: { type: 'string', value: 'S', description: 'seed for initialisation and shuffling (default 0)' },
    out: { type: 'string', short: 'o', value: 'DIR', description: 'output folder', required: true },
    device: DEVICE_OPTION,
    threads: THREADS_OPTION,
    quiet: { type: 'boolean', short: 'q', description: 'no progress bar' },
    'log-every': { type: 'string', value: 'N', description: 'steps between the metrics lines of OUT/train.jsonl (default 10)' },
    nproc: { type: 'string', value: 'N', description: 'data-parallel: train in N local processes (gloo), the batch split among them' },
    'shard-features': { type: 'boolean', description: 'with --nproc (or a launcher): split each transcoder\'s features over the processes instead of the batch (relu, topk)' },
    'dist-timeout': { type: 'string', value: 'S', description: 'data-parallel: seconds a process waits for the others (joining, each step) before failing (default 600)' },
  },
  async run(values, positionals) {
    applyThreads(values);
    const plan = planTraining(values);
    const nproc = intOption(values.nproc, 'nproc', 1) ?? 1;
    if (nproc > 1) {
      checkInputPaths(values, ['data', 'activations', 'init']);
      checkOutputPaths(values, { out: 'folder' });
      await trainInProcesses(nproc, values, plan);
      return;
    }
    // Started by a launcher (ours, torchrun, SLURM): one rank of a data-parallel run.
    const group = await joinLaunchedGroup(values);
    try {
      await trainHere(values, positionals, plan, group);
    } finally {
      group?.leave();
    }
  },
};

/**
 * --nproc N: the same command in N processes (lib/distributed/launch.ts), each with its launcher
 * variables and its share of the threads; throws when a rank fails, naming it.
 */
async function trainInProcesses(nproc: number, values: OptionValues, plan: TrainPlan): Promise<void> {
  // The workers run this process's own command line (the CLI script, as bin/transcoders.js starts it).
  const [script, ...rest] = process.argv.slice(1);
  // This command line without --nproc and --threads (the launcher gives each worker its threads).
  const args: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    if (a === '--nproc' || a === '--threads') {
      i++;
      continue;
    }
    if (a.startsWith('--nproc=') || a.startsWith('--threads=')) continue;
    args.push(a);
  }
  // What can be checked without the model, before starting anything.
  const data = listOption(values, 'data');
  const context = data.length === 1 && isTokenFile(data[0]!) ? readTokenFileHeader(data[0]!).contextSize : null;
  if (values['shard-features'] !== true && (context !== null || values.activations !== undefined)) checkDataParallel({ arch: plan.arch }, plan.batchSize, nproc, context);
  const threads = intOption(values.threads, 'threads', 1);
  const result = await launchWorkers({ nproc, args: [...process.execArgv, script!, ...args], ...(threads && { threadsPerWorker: threads }) });
  if (result.code === 0) return;
  const message = `data-parallel training failed: ${result.failures.join('; ')}`;
  // The ranks' own messages are above; a rank that refused its arguments makes this a usage error too.
  throw result.code === 2 ? new InvalidArgumentError(message) : new DistributedError(message);
}

/** The process group of a launched rank (WORLD_SIZE > 1 in the environment), or null for a single process. */
async function joinLaunchedGroup(values: OptionValues): Promise<ProcessGroup | null> {
  const env = joinOptionsFromEnv();
  if ((env.worldSize ?? 1) <= 1) return null;
  const timeoutMs = Math.round(1000 * (numberOption(values['dist-timeout'], 'dist-timeout') ?? 600));
  return ProcessGroup.join({ ...env, timeoutMs });
}

async function trainHere(values: OptionValues, positionals: string[], plan: TrainPlan, group: ProcessGroup | null): Promise<void> {
  const data = listOption(values, 'data');
  const activations = values.activations as string | undefined;
  if (activations && positionals[0] !== undefined) throw new InvalidArgumentError(`unexpected argument '${positionals[0]}': training from --activations needs no model folder`);
  const modelDir = checkModelArgument(positionals[0], 'model-dir');
  checkInputPaths(values, ['data', 'activations', 'init']);
  checkOutputPaths(values, { out: 'folder' });
  const out = resolve(values.out as string);
  const skip = values.skip === true;
  // One GPU per rank: a launched rank given `--device cuda` takes the GPU of its LOCAL_RANK.
  const given = (values.device as string | undefined) ?? 'cpu';
  const localRank = process.env.LOCAL_RANK;
  const device = group && given === 'cuda' && localRank !== undefined && /^\d+$/.test(localRank) ? `cuda:${localRank}` : given;
  // From a cache: the cached layers, or those of --layers (readCacheLayers names the missing ones).
  const cacheLayers = activations ? readCacheLayers(activations, values.layers ? parseLayers(values.layers as string) : undefined).layers : null;
  let model: Model | null = null;
  if (!activations) {
    // Cross-layer transcoders default to the raw model: circuit-tracer, which serves them, runs it raw.
    const processing = choiceOption(values.processing, 'processing', PROCESSINGS) ?? (isCrossLayerRunArch(plan.arch) ? 'none' : 'transformerlens');
    model = await loadModel(modelDir!, { processing, device });
  }
  const layers = cacheLayers ?? parseLayers(values.layers as string | undefined, model?.config.nLayers);
  if (values.resume === true) checkResumable(out, layers, plan, skip);
  const init = values.init ? await initialWeights(values.init as string, layers, plan, skip) : undefined;

  const options: Omit<TrainRunOptions, 'data'> = {
    layers,
    arch: plan.arch,
    dSae: plan.dSae,
    skip,
    ...(plan.k !== undefined && { k: plan.k }),
    ...(values.bandwidth !== undefined && { bandwidth: numberOption(values.bandwidth, 'bandwidth')! }),
    ...(values.l1 !== undefined && { l1Coefficient: numberOption(values.l1, 'l1')! }),
    ...(values.l0 !== undefined && { l0Coefficient: numberOption(values.l0, 'l0')! }),
    ...(values['auxk-alpha'] !== undefined && { auxkAlpha: numberOption(values['auxk-alpha'], 'auxk-alpha')! }),
    ...(values.sparsity !== undefined && { sparsity: choiceOption(values.sparsity, 'sparsity', CLT_SPARSITIES)! }),
    ...(values['sparsity-coefficient'] !== undefined && { sparsityCoefficient: numberOption(values['sparsity-coefficient'], 'sparsity-coefficient')! }),
    ...(values['tanh-scale'] !== undefined && { tanhScale: numberOption(values['tanh-scale'], 'tanh-scale')! }),
    ...(values.preact !== undefined && { preactCoefficient: numberOption(values.preact, 'preact')! }),
    recipe: plan.recipe,
    ...(values.lr !== undefined && { lr: numberOption(values.lr, 'lr')! }),
    ...(values['lr-schedule'] !== undefined && { schedule: choiceOption(values['lr-schedule'], 'lr-schedule', SCHEDULES)! }),
    ...(values['warmup-steps'] !== undefined && { warmupSteps: intOption(values['warmup-steps'], 'warmup-steps')! }),
    ...(values['l1-warmup-steps'] !== undefined && { sparsityWarmupSteps: intOption(values['l1-warmup-steps'], 'l1-warmup-steps')! }),
    ...(values['max-grad-norm'] !== undefined && { maxGradNorm: numberOption(values['max-grad-norm'], 'max-grad-norm')! }),
    ...(values['ghost-grads'] !== undefined && { ghostGrads: values['ghost-grads'] === 'on' }),
    ...(values['compute-dtype'] !== undefined && { computeDtype: choiceOption(values['compute-dtype'], 'compute-dtype', COMPUTE_DTYPES)! }),
    ...(values['dead-feature-window'] !== undefined && { deadFeatureWindow: intOption(values['dead-feature-window'], 'dead-feature-window', 1)! }),
    ...(values['optimizer-state-dtype'] !== undefined && { optimizerStateDtype: choiceOption(values['optimizer-state-dtype'], 'optimizer-state-dtype', STATE_DTYPES)! }),
    ...(values['optimizer-state-device'] !== undefined && { optimizerStateDevice: values['optimizer-state-device'] as string }),
    ...(values['resample-every'] !== undefined && { resampleEvery: intOption(values['resample-every'], 'resample-every', 1)! }),
    batchSize: plan.batchSize,
    ...(values.steps !== undefined && { steps: intOption(values.steps, 'steps', 1)! }),
    ...(values.tokens !== undefined && { tokens: intOption(values.tokens, 'tokens', 1)! }),
    ...(values['buffer-rows'] !== undefined && { bufferRows: intOption(values['buffer-rows'], 'buffer-rows', 2)! }),
    noShuffle: values['no-shuffle'] === true,
    ...(values['bias-init'] !== undefined && { biasInit: choiceOption(values['bias-init'], 'bias-init', BIAS_INITS)! }),
    ...(values['checkpoint-every'] !== undefined && { checkpointEveryTokens: intOption(values['checkpoint-every'], 'checkpoint-every', 1)! }),
    ...(values['log-every'] !== undefined && { logEvery: intOption(values['log-every'], 'log-every', 1)! }),
    ...(values['shard-features'] === true && { shardFeatures: true }),
    ...(init && { init }),
    resume: values.resume === true,
    seed: intOption(values.seed, 'seed') ?? 0,
    device,
    out,
  };
  const totalSteps = options.steps ?? Math.floor(options.tokens! / plan.batchSize);

  const createdOut = !existsSync(out);
  mkdirSync(out, { recursive: true });
  // Data-parallel: rank 0 shows the progress, the warnings and the result.
  const root = (group?.rank ?? 0) === 0;
  const train = async (data: TrainRunOptions['data']) => {
    const bar = values.quiet || !root ? null : new ProgressBar('training', totalSteps, ' steps');
    const controller = new AbortController();
    const onSignal = () => {
      if (controller.signal.aborted) return;
      bar?.close();
      if (root) process.stderr.write('stopping after the current step (a checkpoint will be written)...\n');
      controller.abort();
    };
    // A worker of --nproc gets a terminal's Ctrl-C twice (from the terminal and passed on by the
    // launcher): only the first counts. A single process: a second Ctrl-C ends it at once.
    if (process.env[LAUNCHED_ENV]) process.on('SIGINT', onSignal);
    else process.once('SIGINT', onSignal);
    try {
      return await trainTranscoders({
        ...options, data, signal: controller.signal, onProgress: (p) => bar?.update(p.step, progressDetail(p.metrics)),
        ...(group && { processGroup: group }),
        // Warnings come before the first progress report (lock, checkpoint selection).
        onWarning: (message) => {
          if (root) process.stderr.write(`transcoders train: warning: ${message}\n`);
        },
      });
    } finally {
      process.off('SIGINT', onSignal);
      bar?.close();
    }
  };
  let result;
  try {
    if (!model) result = await train({ activations: activations! });
    else if (group && !(data.length === 1 && isTokenFile(data[0]!))) {
      // Text is tokenised once, by rank 0, into OUT; the others read that file.
      const tokenFile = root ? (await tokenFileFor(model, data, values['context-size'], out)).file : join(out, 'tokens.safetensors');
      await group.barrier();
      result = await train({ tokenFile, model });
    } else result = await withTokenFile(model, data, values['context-size'], out, (tokenFile) => train({ tokenFile, model: model! }));
  } catch (err) {
    // A run that failed before writing anything leaves no empty output folder behind.
    if (createdOut && readdirSync(out).length === 0) rmdirSync(out);
    throw err;
  }
  if (!root) return;
  const why = result.stopped ? ' (stopped; resume with --resume)' : result.exhausted ? ' (the data ran out)' : '';
  const where = !group ? ''
    : values['shard-features'] === true ? ` with the features sharded over ${group.worldSize} processes (${result.collectiveSeconds.toFixed(2)} s in collectives on rank 0)`
    : ` in ${group.worldSize} processes (${result.collectiveSeconds.toFixed(2)} s in the gradient all-reduce on rank 0)`;
  console.log(`trained ${result.steps} steps, ${result.tokens} tokens${where}${why}`);
  if (result.crossLayer) console.log(`  ${join(out, CROSS_LAYER_FOLDER)}`);
  for (const l of result.crossLayer ? [] : layers) console.log(`  ${join(out, `layer_${l}`)}`);
}
