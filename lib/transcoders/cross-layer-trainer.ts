/**
 * Training a cross-layer transcoder from batches of every layer's (input, target) activations of the
 * same rows. The step runs in C++ (native/train/cross_layer_trainer.cc, autograd over
 * native/transcoder/cross_layer_losses.cc); JS hands over chunks of batches and receives metrics.
 *
 * Defaults by architecture: relu trains with the L1 penalty weighted by each feature's decoder norm,
 * jumprelu with the tanh penalty of Anthropic's CLTs, topk and batchtopk with AuxK (batchtopk also
 * estimates the threshold it uses outside training); the reconstruction loss is the
 * sum over layers of each layer's fraction of variance unexplained.
 */
import { runOnDevice } from '../device-queue.js';
import { InvalidArgumentError } from '../errors.js';
import { native, type NativeCrossLayerStepMetrics, type NativeCrossLayerTrainer } from '../native.js';
import { Tensor } from '../tensor.js';
import type { CrossLayerTranscoder } from './cross-layer.js';
import { optimizerStateOptions, readTrainerHandleState, writeTrainerHandleState, type ScheduleName, type TrainerState, type TrainOptions } from './step-trainer.js';

export interface CrossLayerTrainOptions extends Pick<TrainOptions, 'optimizerStateDtype' | 'optimizerStateDevice'> {
  /** Base learning rate (default 2e-4). */
  lr?: number;
  schedule?: ScheduleName;
  warmupSteps?: number;
  totalSteps?: number;
  lrEndFactor?: number;
  reconstruction?: 'fvu' | 'paper';
  /** Default: `l1` for relu, `tanh` for jumprelu, `none` for topk. */
  sparsity?: 'none' | 'l1' | 'tanh' | 'l0';
  /** λ of the sparsity penalty (default 1e-3 for l1, 1e-2 tanh, 1e-3 l0). */
  sparsityCoefficient?: number;
  /** c in tanh(c f ||W_dec||) (default 1). */
  tanhScale?: number;
  /** Penalty on negative pre-activations (default 0). */
  preactCoefficient?: number;
  /** topk: AuxK weight (default 1/32). */
  auxkAlpha?: number;
  /** topk: dead features per row and layer AuxK uses (default dIn / 2). */
  kAux?: number;
  sparsityWarmupSteps?: number;
  maxGradNorm?: number;
  deadFeatureWindow?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
}

export type CrossLayerStepMetrics = NativeCrossLayerStepMetrics;

const DEFAULT_COEFFICIENT = { none: 0, l1: 1e-3, tanh: 1e-2, l0: 1e-3 } as const;

/** Resolves defaults; the result is what the native trainer receives (and what cfg.json records). */
export function resolveCrossLayerTrainOptions(clt: CrossLayerTranscoder, options: CrossLayerTrainOptions = {}): Record<string, unknown> {
  const arch = clt.config.arch;
  for (const [key, value] of Object.entries(options)) {
    if (typeof value === 'number' && !(Number.isFinite(value) && value >= 0)) throw new InvalidArgumentError(`train option '${key}' must be a non-negative number, got ${value}`);
  }
  const sparsity = options.sparsity ?? (arch === 'relu' ? 'l1' : arch === 'jumprelu' ? 'tanh' : 'none');  // topk, batchtopk: none
  if (!(sparsity in DEFAULT_COEFFICIENT)) throw new InvalidArgumentError(`sparsity must be none, l1, tanh or l0, got '${String(sparsity)}'`);
  if (sparsity === 'l0' && arch !== 'jumprelu') throw new InvalidArgumentError(`the l0 penalty trains jumprelu thresholds; a ${arch} cross-layer transcoder uses l1 or tanh`);
  const reconstruction = options.reconstruction ?? 'fvu';
  if (reconstruction !== 'fvu' && reconstruction !== 'paper') throw new InvalidArgumentError(`reconstruction must be 'fvu' or 'paper', got '${String(reconstruction)}'`);
  return {
    lr: options.lr ?? 2e-4,
    beta1: options.beta1 ?? 0.9,
    beta2: options.beta2 ?? 0.999,
    eps: options.eps ?? 1e-8,
    ...optimizerStateOptions(options),
    schedule: { kind: options.schedule ?? 'constant', warmupSteps: options.warmupSteps ?? 0, totalSteps: options.totalSteps ?? 1, endFactor: options.lrEndFactor ?? 0.1 },
    loss: {
      reconstruction,
      sparsity,
      sparsityCoefficient: options.sparsityCoefficient ?? DEFAULT_COEFFICIENT[sparsity],
      tanhScale: options.tanhScale ?? 1,
      preactCoefficient: options.preactCoefficient ?? 0,
      auxkAlpha: arch === 'topk' || arch === 'batchtopk' ? (options.auxkAlpha ?? 1 / 32) : 0,
      kAux: options.kAux ?? 0,
    },
    sparsityWarmupSteps: options.sparsityWarmupSteps ?? 0,
    maxGradNorm: options.maxGradNorm ?? 0,
    deadFeatureWindow: options.deadFeatureWindow ?? 1000,
  };
}

export class CrossLayerTrainer {
  readonly transcoder: CrossLayerTranscoder;
  readonly options: Record<string, unknown>;
  /** @internal */
  readonly handle: NativeCrossLayerTrainer;

  constructor(transcoder: CrossLayerTranscoder, options: CrossLayerTrainOptions = {}) {
    this.transcoder = transcoder;
    this.options = resolveCrossLayerTrainOptions(transcoder, options);
    this.handle = new (native().CrossLayerTrainer)(transcoder.handle, this.options);
  }

  /** Runs one step per batch: xs [S, N, L, dIn], ys [S, N, L, dOut] (off the JS thread). */
  async run(xs: Tensor, ys: Tensor): Promise<CrossLayerStepMetrics[]> {
    return runOnDevice(this.transcoder.device, () => this.handle.run(xs.handle, ys.handle));
  }

  /** Optimizer and dead-feature state, for checkpoints: tensors by name plus the step count. */
  state(): TrainerState {
    return readTrainerHandleState(this.handle);
  }

  /** Restores {@link state} (for resuming). */
  setState(state: TrainerState): void {
    writeTrainerHandleState(this.handle, state);
  }
}
