/**
 * Loads the native addon (build/Release/transcoders.node, built by scripts/build-native.mjs at
 * install time) and types its surface. Everything else reaches libtorch through this module.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { FormatError, InvalidArgumentError, NativeLoadError, TorchError } from './errors.js';

/** The native tensor handle (see native/tensor/tensor_wrap.h). */
export interface NativeTensor {
  readonly shape: number[];
  readonly dtype: string;
  readonly device: string;
  readonly disposed: boolean;
  toTypedArray(): Float32Array | Float64Array | BigInt64Array | Int32Array | Int16Array | Int8Array | Uint8Array;
  rawBytes(): Uint8Array;
  to(device: string | null, dtype: string | null): Promise<NativeTensor>;
  dispose(): void;
}

export interface NativeTensorClass {
  fromTypedArray(data: ArrayBufferView, shape: number[], dtype: string, share: boolean): NativeTensor;
}

/** One replacement of an MLP output as the native forward understands it. */
export interface NativeMlpReplacement {
  layer: number;
  kind: 'zero' | 'mean' | 'value' | 'callback' | 'transcoder';
  value?: NativeTensor;
  transcoder?: NativeTranscoder;
  fn?: (input: NativeTensor, original: NativeTensor | null, layer: number) => NativeTensor | Promise<NativeTensor>;
}

export interface NativeRunOptions {
  hooks?: string[];
  mlp?: NativeMlpReplacement[];
  grad?: boolean;
  logits?: boolean;
  loss?: 'mean' | 'per-token';
  /** Padded batches: real tokens per row (int [B]) and the padding side (default right). */
  lengths?: NativeTensor;
  padding?: 'right' | 'left';
}

export interface NativeRunResult {
  logits?: NativeTensor;
  loss?: NativeTensor;
  cache: Record<string, NativeTensor>;
}

/** The native model handle (see native/model/model_wrap.h). */
export interface NativeModel {
  run(tokens: NativeTensor, options: NativeRunOptions): Promise<NativeRunResult>;
  hookNames(): string[];
  weightNames(): string[];
  weight(name: string): NativeTensor;
  dispose(): void;
  train(tokens: NativeTensor, options: { lr: number; beta1?: number; beta2?: number; eps?: number; maxGradNorm?: number }): Promise<number[]>;
  huggingFaceWeights(): Record<string, NativeTensor>;
}

export interface NativeModelClass {
  load(spec: unknown): Promise<NativeModel>;
}

/** The native transcoder handle (see native/transcoder/transcoder_wrap.h). */
export interface NativeTranscoder {
  encode(x: NativeTensor): Promise<NativeTensor>;
  encodeSparse(x: NativeTensor): Promise<Record<'offsets' | 'indices' | 'values', NativeTensor>>;
  decode(f: NativeTensor, x?: NativeTensor): Promise<NativeTensor>;
  forward(x: NativeTensor): Promise<NativeTensor>;
  loss(x: NativeTensor, y: NativeTensor, options: object, flags: { grad: boolean }): Promise<Record<string, NativeTensor>>;
  parameters(): Record<string, NativeTensor>;
  initializeBiases(x: NativeTensor, y: NativeTensor, method: string): Promise<void>;
  batchStats(x: NativeTensor, y: NativeTensor): Promise<{
    rows: number;
    sumSquaredError: number;
    sumSquaredY: number;
    activeSum: number;
    sumY: NativeTensor;
    fireCounts: NativeTensor;
  }>;
}

export interface NativeTranscoderClass {
  create(spec: object, options: object): Promise<NativeTranscoder>;
  fromParams(spec: object, params: Record<string, NativeTensor>, options: object): Promise<NativeTranscoder>;
}

/** Per-step metrics of the native trainer. */
export interface NativeStepMetrics {
  step: number;
  lr: number;
  total: number;
  reconstruction: number;
  sparsity: number;
  ghost: number;
  fvu: number;
  l0: number;
  deadFraction: number;
  /** Features re-initialised by dead-feature resampling after this step (training runs only). */
  resampled?: number;
}

export interface NativeStepTrainer {
  run(xs: NativeTensor, ys: NativeTensor): Promise<NativeStepMetrics[]>;
  state(): Record<string, NativeTensor> & { step: number };
  setState(state: Record<string, NativeTensor | number>): void;
}

export interface NativeStepTrainerClass {
  new (transcoder: NativeTranscoder, options: object): NativeStepTrainer;
}

export interface NativeRunProgress {
  step: number;
  position: number;
  metrics: NativeStepMetrics[];
}

export interface NativeRunSnapshot {
  step: number;
  position: number;
  slots: Record<string, NativeTensor>[];
}

export interface NativeRunResult {
  steps: number;
  position: number;
  exhausted: boolean;
  stopped: boolean;
}

export interface NativeTrainingRun {
  run(onProgress: (p: NativeRunProgress) => void | Promise<void>, onCheckpoint: (s: NativeRunSnapshot) => void | Promise<void>): Promise<NativeRunResult>;
  stop(): void;
}

export interface NativeTrainingRunClass {
  new (spec: object): NativeTrainingRun;
}

export interface TorchInfo {
  version: string;
  cudaAvailable: boolean;
  cudaDeviceCount: number;
  cxx11Abi: boolean;
  parallelInfo: string;
}

interface Addon {
  Tensor: NativeTensorClass;
  Model: NativeModelClass;
  Transcoder: NativeTranscoderClass;
  StepTrainer: NativeStepTrainerClass;
  TrainingRun: NativeTrainingRunClass;
  /** See lib/circuits/attribution.ts for its typed surface. */
  Attribution: unknown;
  /** See lib/circuits/connections.ts for its typed surface. */
  Connections: unknown;
  setNumThreads(n: number): void;
  getNumThreads(): number;
  workerNumThreads(): Promise<number>;
  torchInfo(): TorchInfo;
  /** Native Tasks executing work now, and the most at once since resetWorkCounts (for tests). */
  workCounts(): { executing: number; maxExecuting: number };
  resetWorkCounts(): void;
  shuffleBatches(x: NativeTensor, y: NativeTensor, options: { capacity: number; batch: number; shuffle: boolean; seed?: number; chunk?: number }): Promise<{ xs: NativeTensor; ys: NativeTensor }>;
  klDivergence(referenceLogits: NativeTensor, logits: NativeTensor): Promise<number>;
  geometricMedian(points: NativeTensor, options: { maxIter?: number; ftol?: number; eps?: number }): Promise<NativeTensor>;
  loadSafetensors(
    path: string,
    dataStart: number,
    entries: { key: string; dtype: string; shape: number[]; begin: number; end: number }[],
  ): Promise<Record<string, NativeTensor>>;
  registerErrorClasses(classes: Record<string, unknown>): void;
}

function addonPath(): string {
  const override = process.env.TRANSCODERS_NATIVE;
  if (override) return override;
  return fileURLToPath(new URL('../build/Release/transcoders.node', import.meta.url));
}

function loadAddon(): Addon {
  const path = addonPath();
  if (!existsSync(path)) {
    throw new NativeLoadError(
      `the native addon is not built (${path} is missing). Run \`npm rebuild transcoders\` ` +
        '(or `npm run build` in a clone); it needs libtorch: see the README, section "Installing".',
    );
  }
  try {
    const addon = createRequire(import.meta.url)(path) as Addon;
    addon.registerErrorClasses({ TorchError, InvalidArgumentError, FormatError });
    return addon;
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    const hint = /undefined symbol/.test(reason)
      ? 'The addon was built against another libtorch (or C++ ABI) than the one it now loads: run `npm rebuild transcoders`.'
      : /libtorch|libc10|cannot open shared object/.test(reason)
        ? 'libtorch\'s libraries are not found at run time: install libtorch-dev, or rebuild with LIBTORCH set so the addon records its path.'
        : 'Run `npm rebuild transcoders` to rebuild it.';
    throw new NativeLoadError(`cannot load the native addon ${path}: ${reason}\n${hint}`);
  }
}

let cached: Addon | undefined;

/** The addon, loaded on first use. */
export function native(): Addon {
  cached ??= loadAddon();
  return cached;
}
