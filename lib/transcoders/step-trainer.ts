/**
 * Training a transcoder from batches of (input, target) activations. The loop runs in C++
 * (native/train/step_trainer.cc; relu and topk steps by native/train/fast_step.cc, see
 * docs/transcoders.md): JS hands over chunks of batches and receives per-step metrics.
 *
 * Recipes:
 * - `paper` (default for relu): the transcoder paper's trainer step for step — normalised MSE
 *   `(y_hat - y)^2 / ||y||`, L1 on f, ghost gradients with the paper's residual (x - y_hat),
 *   unit-norm decoder rows with the parallel gradient removed, Adam, and the scheduler stepped
 *   before the optimizer (step n trains with lambda(n + 1)). See docs/transcoders.md.
 * - `standard` (default for topk/jumprelu): fraction of variance unexplained, the schedule
 *   evaluated at the step itself, AuxK (topk) or L0 (jumprelu), target-referenced ghost residual.
 */
import { runOnDevice } from '../device-queue.js';
import { InvalidArgumentError } from '../errors.js';
import { native, type NativeStepMetrics, type NativeStepTrainer } from '../native.js';
import { Tensor } from '../tensor.js';
import type { Transcoder } from './transcoder.js';

export type Recipe = 'paper' | 'standard';
export type ScheduleName = 'constant' | 'constantwithwarmup' | 'linearwarmupdecay' | 'cosineannealingwarmup';

export interface TrainOptions {
  recipe?: Recipe;
  /** Base learning rate (default 4e-4, the paper's GPT-2 value). */
  lr?: number;
  schedule?: ScheduleName;
  warmupSteps?: number;
  /** Total steps, for decaying schedules. */
  totalSteps?: number;
  /** Decay target as a fraction of lr (default 0.1). */
  lrEndFactor?: number;
  /** relu: L1 coefficient (default 1.4e-4). */
  l1Coefficient?: number;
  /** jumprelu: L0 coefficient (default 1e-3). */
  l0Coefficient?: number;
  /** topk: AuxK weight (default 1/32). */
  auxkAlpha?: number;
  /** topk: dead features AuxK uses (default dIn / 2). */
  kAux?: number;
  /** Ramp the sparsity coefficient from 0 over this many steps (default 0). */
  sparsityWarmupSteps?: number;
  /** relu: ghost gradients for dead features (default true in the paper recipe). */
  ghostGrads?: boolean;
  /** Steps without firing after which a feature counts as dead (default 5000 paper, 1000 standard). */
  deadFeatureWindow?: number;
  /** Clip the global gradient norm (default: off). */
  maxGradNorm?: number;
  /**
   * Dead-feature resampling every this many steps (default 0: off; needs a model-fed training run).
   * Dead features are re-initialised towards inputs where the transcoder raises the model's loss most
   * (docs/transcoders.md); the learning rate then ramps back from 1e-4 of its value.
   */
  resampleEvery?: number;
  /** Sequences run to choose resampling inputs (default 64). */
  resampleSequences?: number;
  /** Encoder norm of resampled features relative to the alive ones (default 0.2). */
  resampleScale?: number;
  /** Steps over which the learning rate ramps back after resampling (default 10000, the paper's). */
  resampleWarmupSteps?: number;
  /**
   * Precision of the dense matrix products of a relu or topk step (default `float32`). `bfloat16`
   * runs them on bf16 copies (faster on GPUs and on CPUs with avx512_bf16); parameters, gradients,
   * the sparse products and Adam stay float32. Other steps (jumprelu, relu with active ghost
   * gradients) always run in float32.
   */
  computeDtype?: 'float32' | 'bfloat16';
  /**
   * relu: decode and back-propagate through the active features only (as topk always does) when
   * fewer than this fraction of the batch's activations are non-zero (default 0.02; a trained relu
   * transcoder is well below it, its first steps above).
   */
  sparseBelowDensity?: number;
  /**
   * Run the sparse products with the device-agnostic ATen ops (the CUDA path) on the CPU too,
   * instead of the CPU's own loops: slower; for tests of the GPU path on a machine without one.
   */
  portableProducts?: boolean;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /**
   * Dtype of Adam's two moments (default `float32`). `bfloat16` halves their memory (16 -> 12 bytes a
   * parameter in training); the update is still computed in float32.
   */
  optimizerStateDtype?: 'float32' | 'bfloat16';
  /** Device of Adam's moments (default: the parameters'), e.g. `'cpu'` while training on a GPU. */
  optimizerStateDevice?: string;
}

/** The optimizer-state options as the native trainers take them (checked). */
export function optimizerStateOptions(options: Pick<TrainOptions, 'optimizerStateDtype' | 'optimizerStateDevice'>): Record<string, unknown> {
  const dtype = options.optimizerStateDtype ?? 'float32';
  if (dtype !== 'float32' && dtype !== 'bfloat16') throw new InvalidArgumentError(`optimizerStateDtype must be 'float32' or 'bfloat16', got '${String(dtype)}'`);
  if (options.optimizerStateDevice !== undefined && typeof options.optimizerStateDevice !== 'string') throw new InvalidArgumentError('optimizerStateDevice must be a device name such as "cpu" or "cuda:1"');
  return { optimizerStateDtype: dtype, ...(options.optimizerStateDevice !== undefined ? { optimizerStateDevice: options.optimizerStateDevice } : {}) };
}

export type StepMetrics = NativeStepMetrics;

/** Resolves defaults; the result is what the native trainer receives (and what cfg.json records). */
export function resolveTrainOptions(transcoder: Transcoder, options: TrainOptions = {}): Record<string, unknown> {
  const arch = transcoder.config.arch;
  const recipe = options.recipe ?? (arch === 'relu' ? 'paper' : 'standard');
  if (recipe !== 'paper' && recipe !== 'standard') throw new InvalidArgumentError(`recipe must be 'paper' or 'standard', got '${recipe}'`);
  if (recipe === 'paper' && arch !== 'relu') throw new InvalidArgumentError(`the paper recipe trains relu transcoders, not ${arch}`);
  const paper = recipe === 'paper';
  const computeDtype = options.computeDtype ?? 'float32';
  if (computeDtype !== 'float32' && computeDtype !== 'bfloat16') throw new InvalidArgumentError(`computeDtype must be 'float32' or 'bfloat16', got '${String(computeDtype)}'`);
  for (const [key, value] of Object.entries(options)) {
    if (typeof value === 'number' && !(Number.isFinite(value) && value >= 0)) throw new InvalidArgumentError(`train option '${key}' must be a non-negative number, got ${value}`);
  }
  return {
    recipe,
    lr: options.lr ?? 4e-4,
    beta1: options.beta1 ?? 0.9,
    beta2: options.beta2 ?? 0.999,
    eps: options.eps ?? 1e-8,
    ...optimizerStateOptions(options),
    schedule: {
      kind: options.schedule ?? (paper ? 'constantwithwarmup' : 'constant'),
      warmupSteps: options.warmupSteps ?? 0,
      totalSteps: options.totalSteps ?? 1,
      endFactor: options.lrEndFactor ?? 0.1,
    },
    schedulerBeforeStep: paper,
    loss: {
      reconstruction: paper ? 'paper' : 'fvu',
      l1Coefficient: options.l1Coefficient ?? 1.4e-4,
      l0Coefficient: options.l0Coefficient ?? 1e-3,
      auxkAlpha: options.auxkAlpha ?? 1 / 32,
      kAux: options.kAux ?? 0,
      ghostGrads: options.ghostGrads ?? paper,
      ghostResidual: paper ? 'input' : 'target',
    },
    sparsityWarmupSteps: options.sparsityWarmupSteps ?? 0,
    maxGradNorm: options.maxGradNorm ?? 0,
    normalizeDecoder: true,
    deadFeatureWindow: options.deadFeatureWindow ?? (paper ? 5000 : 1000),
    resampleEvery: options.resampleEvery ?? 0,
    resampleSequences: options.resampleSequences ?? 64,
    resampleScale: options.resampleScale ?? 0.2,
    resampleWarmupSteps: options.resampleWarmupSteps ?? 10000,
    computeDtype,
    sparseBelowDensity: options.sparseBelowDensity ?? 0.02,
    portableProducts: options.portableProducts ?? false,
  };
}

/** A trainer's optimizer and dead-feature state: tensors by name plus the step count (what checkpoints hold). */
export interface TrainerState {
  step: number;
  tensors: Record<string, Tensor>;
}

/** The native trainer state behind `handle` as a {@link TrainerState} (copies). */
export function readTrainerHandleState(handle: Pick<NativeStepTrainer, 'state'>): TrainerState {
  const { step, ...rest } = handle.state();
  return { step, tensors: Object.fromEntries(Object.entries(rest).map(([k, v]) => [k, new Tensor(v as never)])) };
}

/** Restores a {@link TrainerState} into the native trainer behind `handle`. */
export function writeTrainerHandleState(handle: Pick<NativeStepTrainer, 'setState'>, state: TrainerState): void {
  handle.setState({ step: state.step, ...Object.fromEntries(Object.entries(state.tensors).map(([k, v]) => [k, v.handle])) });
}

export class StepTrainer {
  readonly transcoder: Transcoder;
  readonly options: Record<string, unknown>;
  /** @internal */
  readonly handle: NativeStepTrainer;

  constructor(transcoder: Transcoder, options: TrainOptions = {}) {
    this.transcoder = transcoder;
    this.options = resolveTrainOptions(transcoder, options);
    this.handle = new (native().StepTrainer)(transcoder.handle, this.options);
  }

  /** Runs one step per batch: xs [S, N, dIn], ys [S, N, dOut] (off the JS thread). */
  async run(xs: Tensor, ys: Tensor): Promise<StepMetrics[]> {
    return runOnDevice(this.transcoder.device, () => this.handle.run(xs.handle, ys.handle));
  }

  /** Optimizer and dead-feature state, for checkpoints: tensors by name plus the step count. */
  state(): TrainerState {
    return readTrainerHandleState(this.handle);
  }

  /** Restores {@link state} (for resuming a run). */
  setState(state: TrainerState): void {
    writeTrainerHandleState(this.handle, state);
  }
}
