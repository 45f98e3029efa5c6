/**
 * Loads the native addon (build/Release/transcoders.node, built by scripts/build-native.mjs at
 * install time) and types its surface. Everything else reaches libtorch through this module.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { DistributedError, FormatError, InvalidArgumentError, NativeLoadError, NumericalError, TorchError } from './errors.js';
import type { ModelConfig } from './models/config.js';

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
  kind: 'zero' | 'mean' | 'value' | 'callback' | 'transcoder' | 'crossLayer';
  value?: NativeTensor;
  /** 'crossLayer': one entry replaces every layer of the model (its `layer` is ignored). */
  transcoder?: NativeTranscoder | NativeCrossLayerTranscoder;
  /** Transcoders: bool [dSae], the features kept active (the others are zeroed before decoding). */
  keep?: NativeTensor;
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
  /** Names of the weights holding a NaN or an infinity. */
  nonFiniteWeights(): string[];
}

/** One tensor of a checkpoint file: its byte range and the Hugging Face name it maps to. */
export interface NativeCheckpointEntry {
  key: string;
  name: string;
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

/** What the native loader reads: the parsed config and the checkpoint's safetensors entries. */
export interface NativeModelSpec {
  config: ModelConfig;
  files: { path: string; dataStart: number; entries: NativeCheckpointEntry[] }[];
  device: string;
  dtype: string;
  processing: string;
  /** The folder, named in errors. */
  source: string;
}

export interface NativeModelClass {
  load(spec: NativeModelSpec): Promise<NativeModel>;
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

export interface NativeCrossLayerTranscoder {
  encode(x: NativeTensor): Promise<NativeTensor>;
  forward(x: NativeTensor): Promise<NativeTensor>;
  loss(x: NativeTensor, y: NativeTensor, options: object, flags: { grad: boolean }): Promise<Record<string, NativeTensor>>;
  parameters(): Record<string, NativeTensor>;
  batchStats(x: NativeTensor, y: NativeTensor): Promise<{
    rows: number;
    sumSquaredError: NativeTensor;
    sumSquaredY: NativeTensor;
    sumY: NativeTensor;
    activeSum: NativeTensor;
    fireCounts: NativeTensor;
  }>;
}

export interface NativeCrossLayerTranscoderClass {
  create(spec: object, options: object): Promise<NativeCrossLayerTranscoder>;
  fromParams(spec: object, params: Record<string, NativeTensor>, options: object): Promise<NativeCrossLayerTranscoder>;
}

/** A cross-layer step's metrics: the summary (FVU averaged over layers, L0 per source layer averaged) and per layer. */
export interface NativeCrossLayerStepMetrics extends NativeStepMetrics {
  layerFvu: number[];
  layerL0: number[];
}

export interface NativeCrossLayerTrainer {
  run(xs: NativeTensor, ys: NativeTensor): Promise<NativeCrossLayerStepMetrics[]>;
  state(): Record<string, NativeTensor> & { step: number };
  setState(state: Record<string, NativeTensor | number>): void;
}

export interface NativeCrossLayerTrainerClass {
  new (transcoder: NativeCrossLayerTranscoder, options: object): NativeCrossLayerTrainer;
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
  /** Data-parallel: seconds in collectives since the previous report. */
  collectiveSeconds: number;
}

export interface NativeRunSnapshot {
  step: number;
  position: number;
  slots: Record<string, NativeTensor>[];
}

export interface NativeTrainingRunResult {
  steps: number;
  position: number;
  exhausted: boolean;
  stopped: boolean;
  collectiveSeconds: number;
}

export interface NativeTrainingRun {
  run(onProgress: (p: NativeRunProgress) => void | Promise<void>, onCheckpoint: (s: NativeRunSnapshot) => void | Promise<void>): Promise<NativeTrainingRunResult>;
  /** Every slot's state after the run (feature-sharded: gathered, a collective on every rank). */
  snapshot(step: number): Promise<NativeRunSnapshot>;
  stop(): void;
}

export interface NativeTrainingRunClass {
  new (spec: object): NativeTrainingRun;
}

/** Where a transcoder sits in a model (see native/circuits/replacement_model.h). */
export interface NativePlacement {
  layer: number;
  hookIn: string;
  hookOut: string;
  /** 'mlp': the MLP's input (its LayerNorm's output); 'residual': the residual stream before that LayerNorm. */
  input: 'mlp' | 'residual';
}

/** The native replacement model handle (see native/bindings/replacement_model_wrap.h). */
export interface NativeReplacementModel {
  placements(): NativePlacement[];
  intervene(
    tokens: NativeTensor,
    interventions: { layer: number; position: number; feature: number; value: number }[],
    options: { freezeAttention: boolean; directEffects: boolean; constrainedLayers: number[] },
  ): Promise<{ logits: NativeTensor; activations: Record<string, NativeTensor>; preActivations: Record<string, NativeTensor> }>;
}

export interface NativeReplacementModelClass {
  create(model: NativeModel, transcoders: NativeTranscoder[]): NativeReplacementModel;
  createCrossLayer(model: NativeModel, crossLayer: NativeCrossLayerTranscoder): NativeReplacementModel;
}

/** Where a direction is read on the residual stream of a layer. */
export type NativeSublayer = 'resid_pre' | 'resid_mid' | 'resid_post';

/** A node of a decomposition as the native attribution returns it (see native/circuits/attribution.h). */
export interface NativeAttributionNode {
  /** `logit` only occurs as a root. */
  kind: 'feature' | 'attention' | 'embedding' | 'logit';
  layer: number;
  position: number;
  /** Transcoder feature index (kind 'feature'). */
  feature?: number;
  /** Attention head (kind 'attention'); `position` is then the source position. */
  head?: number;
  /** Logit roots: the token (minus the other token, for a logit difference). */
  token?: number;
  minus?: number;
  contrib: number;
  /**
   * The part of `contrib` that no upstream component explains: LayerNorm and value biases read along
   * the node, a feature's encoder bias (0 for attention on processed models).
   */
  bias: number;
  /** The contribution was clipped to the path's cap ("zero-ablation" mode). */
  capped: boolean;
  sublayer: NativeSublayer;
  /** [d] on the residual stream at (layer, sublayer, position). */
  vector: NativeTensor;
}

/** The native attribution context of one prompt (see native/bindings/attribution_wrap.h). */
export interface NativeAttribution {
  lnConstant(layer: number, position: number, ln2: boolean): number;
  residual(layer: number, sublayer: NativeSublayer): NativeTensor;
  activations(layer: number): NativeTensor;
  activation(layer: number, position: number, feature: number): number;
  transcoderOutput(layer: number): NativeTensor;
  featureContributions(v: NativeTensor, layer: number, position: number): Promise<NativeTensor>;
  attentionContributions(v: NativeTensor, layer: number, position: number): NativeTensor;
  embeddingContribution(v: NativeTensor, position: number): number;
  transcoderError(v: NativeTensor, layer: number, position: number): number;
  featureBias(layer: number, feature: number): number;
  featureRoot(layer: number, feature: number, position: number): NativeAttributionNode;
  logitRoot(position: number, token: number, minus?: number): NativeAttributionNode;
  children(
    node: { vector: NativeTensor; layer: number; sublayer: NativeSublayer; position: number },
    k: number,
    ignoreBos: boolean,
    cap: number | null,
    keepAll: boolean,
  ): Promise<NativeAttributionNode[]>;
}

export interface NativeAttributionClass {
  create(replacement: NativeReplacementModel, tokens: NativeTensor): Promise<NativeAttribution>;
}

/** A row target of an attribution graph (native/circuits/graph.h). Position -1: the last token. */
export type NativeGraphTarget =
  | { kind: 'feature'; layer: number; position: number; index: number }
  | { kind: 'logit'; position: number; index: number }
  | { kind: 'direction'; position: number; direction: NativeTensor };

/** Rows in compressed form (columns ascending within a row). */
export interface NativeGraphRows {
  rowStart: NativeTensor;
  columns: NativeTensor;
  values: NativeTensor;
  targetValues: NativeTensor;
  droppedMass: NativeTensor;
}

export interface NativeAttributionGraphInfo {
  length: number;
  nLayers: number;
  numSources: number;
  numFeatures: number;
  errorOffset: number;
  tokenOffset: number;
  /** null without learned positional embeddings. */
  positionalOffset: number | null;
  biasOffset: number;
  features: { layer: NativeTensor; position: NativeTensor; index: NativeTensor; activation: NativeTensor };
  lastLogits: NativeTensor;
  errorNorms: NativeTensor;
}

export interface NativeAttributionGraph {
  info(): NativeAttributionGraphInfo;
  rows(targets: NativeGraphTarget[], options: { threshold?: number; topK?: number }): Promise<NativeGraphRows>;
  dispose(): void;
}

export interface NativeAttributionGraphClass {
  create(replacement: NativeReplacementModel, tokens: NativeTensor, options: { batchSize: number }): Promise<NativeAttributionGraph>;
}

/** A list of connections as the native code returns it. */
export interface NativeConnectionList {
  layer: number;
  attnLayer?: number;
  head?: number;
  indices: number[];
  values: number[];
}

export interface NativeTopK {
  indices: number[];
  values: number[];
}

/** The input-invariant connections (see native/bindings/connections_wrap.h). */
/** Options of the feature statistics (native/features/feature_stats.h). */
export interface NativeFeatureStatsOptions {
  features: number;
  context: number;
  examples: number;
  samples: number;
  bins: number;
  seed: number;
  layer: number;
  portable?: boolean;
  device?: string;
}

export interface NativeFeatures {
  featureStatsInit(options: NativeFeatureStatsOptions): Record<string, NativeTensor>;
  /** Takes over `state` (some tensors are updated in place) and resolves to the new one. */
  featureStatsUpdate(state: Record<string, NativeTensor>, acts: NativeTensor, rows: NativeTensor, options: NativeFeatureStatsOptions): Promise<Record<string, NativeTensor>>;
}

export interface NativeConnections {
  featureConnections(rm: NativeReplacementModel, layer: number, feature: number, options: { k: number; throughAttention: boolean }): Promise<{ upstream: NativeConnectionList[]; downstream: NativeConnectionList[] }>;
  deEmbedding(rm: NativeReplacementModel, layer: number, feature: number, options: { k: number; attnLayer: number; head: number }): Promise<{ top: NativeTopK; bottom: NativeTopK }>;
  logitEffects(rm: NativeReplacementModel, layer: number, feature: number, options: { k: number }): Promise<{ top: NativeTopK; bottom: NativeTopK }>;
  logitEffectsOn(rm: NativeReplacementModel, layer: number, feature: number, tokens: NativeTensor, options: { attnLayer: number; head: number }): Promise<NativeTensor>;
  topkConnections(
    src: NativeTranscoder | NativeTensor,
    dst: NativeTranscoder | NativeTensor,
    options: { k: number; blockSize: number; direction: 'downstream' | 'upstream'; merge: 'auto' | 'scan' | 'topk' },
  ): Promise<{ indices: NativeTensor; values: NativeTensor }>;
  gemmGflops(options: { m: number; k: number; n: number; iters: number }): Promise<number>;
}

export interface TorchInfo {
  version: string;
  cudaAvailable: boolean;
  cudaDeviceCount: number;
  cxx11Abi: boolean;
  parallelInfo: string;
}

/** A joined c10d process group (native/distributed/process_group.h). */
export interface NativeProcessGroup {
  handle: unknown;
  rank: number;
  worldSize: number;
}

export type ReduceOpName = 'sum' | 'max' | 'min' | 'product';

export interface NativeDistributed {
  join(options: { host: string; port: number; rank: number; worldSize: number; timeoutMs: number }): Promise<NativeProcessGroup>;
  allReduce(handle: unknown, tensor: NativeTensor, op: ReduceOpName): Promise<NativeTensor>;
  broadcast(handle: unknown, tensor: NativeTensor, root: number): Promise<NativeTensor>;
  barrier(handle: unknown): Promise<void>;
  leave(handle: unknown): void;
}

interface Addon {
  Tensor: NativeTensorClass;
  Model: NativeModelClass;
  Transcoder: NativeTranscoderClass;
  StepTrainer: NativeStepTrainerClass;
  CrossLayerTranscoder: NativeCrossLayerTranscoderClass;
  CrossLayerTrainer: NativeCrossLayerTrainerClass;
  /** Every layer's activations [..., d] of the same rows as one [rows, L, d] tensor. */
  stackLayers(tensors: NativeTensor[]): Promise<NativeTensor>;
  TrainingRun: NativeTrainingRunClass;
  ReplacementModel: NativeReplacementModelClass;
  Attribution: NativeAttributionClass;
  AttributionGraph: NativeAttributionGraphClass;
  Connections: NativeConnections;
  Features: NativeFeatures;
  Distributed: NativeDistributed;
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
    addon.registerErrorClasses({ TorchError, InvalidArgumentError, FormatError, NumericalError, DistributedError });
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
