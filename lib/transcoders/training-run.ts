/**
 * A whole training run: transcoders for several layers (or one cross-layer transcoder over all of
 * them, `arch: 'clt-*'`) fed by one model forward per batch of token rows (or by an activation
 * cache), through per-layer shuffle buffers, with the loop in C++
 * (native/train/run.cc). JS starts it, receives progress (callback, JSONL log), writes checkpoints
 * and can stop it. Resuming continues from the latest checkpoint: weights, Adam state, step and
 * data position (activations that were buffered but not yet trained on are not replayed).
 */
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { readTokenFileHeader, readTokenRows } from '../data/token-file.js';
import type { ProcessGroup } from '../distributed/process-group.js';
import { runOnDevice } from '../device-queue.js';
import { InvalidArgumentError } from '../errors.js';
import { appendFileChecked, toIoError } from '../io/atomic.js';
import { lockFolder } from '../io/lock.js';
import { checkMemory, type MemoryPart } from '../util/memory.js';
import { loadSafetensorsTensors, readSafetensorsHeader } from '../io/safetensors.js';
import { native, type NativeCrossLayerTrainer, type NativeRunProgress, type NativeRunSnapshot, type NativeStepTrainer } from '../native.js';
import type { Model } from '../models/model.js';
import { Tensor } from '../tensor.js';
import { readCacheLayers, type CacheLayers } from './activation-cache.js';
import { cleanCheckpoints, CROSS_LAYER_FOLDER, findResumePoint, listCheckpoints, readTrainerState, writeCheckpoint, type CheckpointState } from './checkpoints.js';
import { mlpHooks, validateTranscoderConfig, type TranscoderArch, type TranscoderConfig } from './config.js';
import { CrossLayerTranscoder, validateCrossLayerConfig, type CrossLayerArch, type CrossLayerConfig } from './cross-layer.js';
import { CrossLayerTrainer, type CrossLayerTrainOptions } from './cross-layer-trainer.js';
import { loadCrossLayerTranscoder, saveCrossLayerTranscoder } from './formats/cross-layer.js';
import { loadNativeTranscoder, saveTranscoder } from './formats/native.js';
import { StepTrainer, type StepMetrics, type TrainOptions } from './step-trainer.js';
import { Transcoder, type BiasInit, type PlacementOptions } from './transcoder.js';

export interface TrainDataTokens {
  /** A token file (see lib/data/token-file.ts) run through `model`. */
  tokenFile: string;
  model: Model;
}

export interface TrainDataCache {
  /**
   * An activation cache (activation-cache.ts): one layer's folder, or the folder of several
   * (`layer_L/` inside) whose layers hold the same rows; each trained layer reads its own.
   */
  activations: string;
}

/** A cross-layer transcoder of every layer of the model, with that activation (docs/cross-layer.md). */
export type CrossLayerRunArch = 'clt-relu' | 'clt-topk' | 'clt-jumprelu' | 'clt-batchtopk';
export const CROSS_LAYER_RUN_ARCHS: readonly CrossLayerRunArch[] = ['clt-relu', 'clt-topk', 'clt-jumprelu', 'clt-batchtopk'];

export function isCrossLayerRunArch(arch: string): arch is CrossLayerRunArch {
  return (CROSS_LAYER_RUN_ARCHS as readonly string[]).includes(arch);
}

export interface TrainRunOptions extends TrainOptions, Omit<CrossLayerTrainOptions, keyof TrainOptions>, PlacementOptions {
  data: TrainDataTokens | TrainDataCache;
  /** The layers to train; a cross-layer transcoder spans every layer of the model (0..L-1). */
  layers: number[];
  arch: TranscoderArch | CrossLayerRunArch;
  /** Features per transcoder (a cross-layer transcoder: per source layer). */
  dSae: number;
  k?: number;
  skip?: boolean;
  bandwidth?: number;
  /** Activation rows per step (default 4096). */
  batchSize?: number;
  /** Steps to train (or give `tokens`). */
  steps?: number;
  /** Activation rows to train on; steps = tokens / batchSize. */
  tokens?: number;
  /** Shuffle-buffer rows per layer (default 64 batches, at most 262144). */
  bufferRows?: number;
  /** Serve rows in arrival order (for replaying a run batch for batch). */
  noShuffle?: boolean;
  /** Token rows per model forward (default 8). */
  sequencesPerForward?: number;
  seed?: number;
  /** Starting weights by layer (any transcoder; nothing is re-initialised). */
  init?: Record<number, Transcoder>;
  /** b_dec / b_dec_out initialisation from the first activations (default 'mean'; ignored with init or resume). */
  biasInit?: BiasInit;
  /** Output folder: final transcoders in `layer_L/`, checkpoints in `checkpoints/`, log in `train.jsonl`. */
  out: string;
  /** Checkpoint every this many activation rows (default: 10 checkpoints over the run). */
  checkpointEveryTokens?: number;
  /**
   * Continue from the newest complete checkpoint in `out` (falling back past broken ones, with a
   * warning). The transcoder options (arch, dSae, skip, k, bandwidth) must be the checkpoint's;
   * training options (lr, seed, ...) may change and are recorded from the resumed step on.
   */
  resume?: boolean;
  /** Called with each warning (a stale lock taken over, a broken checkpoint skipped); also in the result. */
  onWarning?: (message: string) => void;
  /** Steps between progress reports and log lines (default 10). */
  logEvery?: number;
  onProgress?: (progress: TrainProgress) => void;
  signal?: AbortSignal;
  /**
   * Data-parallel training (docs/distributed.md): this process is one rank of the group, and every
   * rank calls trainTranscoders with the same options. `batchSize` stays the global batch: each rank
   * trains on its batchSize / worldSize rows of every batch (read from its own slice of the data) and
   * the gradients are summed over the ranks, so the weights are those one process would train on
   * the same global batches. Rank 0 writes the log, the checkpoints and the final transcoders into
   * `out` (with `resume`, every rank reads the checkpoint there: give a folder every rank sees).
   * Per-layer transcoders only; no dead-feature resampling.
   */
  processGroup?: ProcessGroup;
  /** Data-parallel: the size of the gradient all-reduce buckets, in bytes (default 32 MiB). */
  bucketBytes?: number;
  /**
   * With `processGroup`: feature-sharded instead of data-parallel training (docs/distributed.md).
   * Each rank holds dSae / worldSize of every transcoder's features (encoder columns, decoder rows and
   * their Adam state) and trains on the whole batch; the partial reconstructions are summed over the
   * ranks and TopK selects across them. relu (with ghostGrads false) and topk. Checkpoints and the
   * final transcoders are whole (gathered from every rank).
   */
  shardFeatures?: boolean;
}

export interface TrainProgress {
  step: number;
  totalSteps: number;
  tokens: number;
  /** One entry per layer, in `layers` order. */
  metrics: (StepMetrics & { layer: number })[];
  /** Data-parallel: seconds spent in collectives (the gradient all-reduce) since the previous report. */
  collectiveSeconds?: number;
}

export interface TrainResult {
  /** The trained per-layer transcoders (empty for a cross-layer run). */
  transcoders: Transcoder[];
  /** The trained cross-layer transcoder (`arch: 'clt-*'`). */
  crossLayer?: CrossLayerTranscoder;
  steps: number;
  tokens: number;
  stopped: boolean;
  /** The data ran out before the step budget. */
  exhausted: boolean;
  out: string;
  /** With `resume`: the checkpoint continued from, broken newer ones skipped, options changed. */
  resumed?: { from: string; step: number; skipped: { dir: string; step: number; reason: string }[]; changes: NonNullable<CheckpointState['changes']> };
  /** Warnings of the run (also given to `onWarning`). */
  warnings: string[];
  /** Processes that trained (1 without a process group). */
  worldSize: number;
  /** Data-parallel or feature-sharded: seconds this rank spent in collectives over the run. */
  collectiveSeconds: number;
}

const BIAS_SAMPLE_ROWS = 8192;

/** The first rows of one cached layer (as many as sampleActivations takes from the model). */
async function sampleCachedActivations(meta: CacheLayers['metas'][number], shards: CacheLayers['shards'][number]): Promise<{ x: Tensor; y: Tensor }> {
  const rows = Math.min(meta.count, Math.ceil(BIAS_SAMPLE_ROWS / meta.contextSize) * meta.contextSize);
  const xs: Float32Array[] = [];
  const ys: Float32Array[] = [];
  let have = 0;
  for (const shard of shards) {
    if (have >= rows) break;
    const t = await loadSafetensorsTensors(readSafetensorsHeader(shard.path), ['input', 'target']);
    const take = Math.min(rows - have, shard.rows);
    xs.push(t.input!.toFloat32Array().subarray(0, take * meta.dIn));
    ys.push(t.target!.toFloat32Array().subarray(0, take * meta.dOut));
    have += take;
  }
  const join2 = (parts: Float32Array[], d: number) => {
    const out = new Float32Array(have * d);
    let offset = 0;
    for (const p of parts) {
      out.set(p, offset);
      offset += p.length;
    }
    return Tensor.from(out, [have, d]);
  };
  return { x: join2(xs, meta.dIn), y: join2(ys, meta.dOut) };
}

/**
 * The first activations of each layer, for the bias initialisation: the rows of the first
 * ceil(8192 / context) sequences, the same rows whether they come from the model or from a cache.
 */
async function sampleActivations(opts: TrainRunOptions, hooks: { input: string; target: string }[], cached: CacheLayers | null): Promise<{ x: Tensor; y: Tensor }[]> {
  if (cached) return Promise.all(cached.metas.map((meta, i) => sampleCachedActivations(meta, cached.shards[i]!)));
  const { model, tokenFile } = opts.data as TrainDataTokens;
  const header = readTokenFileHeader(tokenFile);
  const sequences = Math.max(1, Math.min(header.rows, Math.ceil(BIAS_SAMPLE_ROWS / header.contextSize)));
  const flat = await readTokenRows(header, 0, sequences);
  const rows = Array.from({ length: sequences }, (_, i) => Array.from(flat.subarray(i * header.contextSize, (i + 1) * header.contextSize)));
  const { cache } = await model.run(rows, { cache: hooks.flatMap((h) => [h.input, h.target]), logits: false });
  return hooks.map((h) => ({ x: cache[h.input]!, y: cache[h.target]! }));
}

/**
 * What a run holds in float32, per trained layer: parameters with their gradients and Adam's two
 * moments (4 copies), its shuffle buffer of (input, target) rows, and one batch's activations
 * (pre-activations, activations and their gradients: ~4 x batch x dSae).
 */
function trainingMemory(opts: TrainRunOptions, dIn: number, dOut: number, batchSize: number): MemoryPart[] {
  const layers = opts.layers.length;
  // A CLT's decoders grow as L^2: layer s writes into L - s layers (L (L + 1) / 2 decoders in all).
  const decoders = isCrossLayerRunArch(opts.arch) ? (layers + 1) / 2 : 1;
  const parameters = opts.dSae * (dIn + decoders * dOut + 2) + dIn + dOut + (opts.skip ? dIn * dOut : 0);
  const bufferRows = opts.bufferRows ?? Math.min(262144, 64 * batchSize);
  return [
    // float32 weights and gradients; Adam's two moments in float32 or bfloat16.
    { what: 'parameters, gradients and Adam state', bytes: layers * (8 + (opts.optimizerStateDtype === 'bfloat16' ? 4 : 8)) * parameters },
    { what: 'shuffle buffers', bytes: layers * 4 * bufferRows * (dIn + dOut) },
    { what: 'batch activations', bytes: 4 * 4 * batchSize * opts.dSae },
  ];
}

/** Trains transcoders for `opts.layers`; resolves when the step budget is reached, the data ends, or the run is stopped. */
export async function trainTranscoders(opts: TrainRunOptions): Promise<TrainResult> {
  const out = resolve(opts.out);
  const batchSize = opts.batchSize ?? 4096;
  if (opts.steps === undefined && opts.tokens === undefined) throw new InvalidArgumentError('give the run length as steps or tokens');
  if (opts.tokens !== undefined && opts.steps === undefined && opts.tokens < batchSize) {
    throw new InvalidArgumentError(`the run of ${opts.tokens} tokens is shorter than one batch of ${batchSize} activation rows: give more tokens or a smaller batch size`);
  }
  const totalSteps = opts.steps ?? Math.floor(opts.tokens! / batchSize);
  if (!Number.isInteger(totalSteps) || totalSteps < 1) throw new InvalidArgumentError(`the run length must be a positive whole number of steps, got ${totalSteps}`);
  if (opts.layers.length === 0) throw new InvalidArgumentError('train at least one layer');
  const fromCache = 'activations' in opts.data;
  const model = fromCache ? null : (opts.data as TrainDataTokens).model;
  // Each trained layer reads its own cached layer; the layers of a cache hold the same rows.
  const cache = fromCache ? readCacheLayers((opts.data as TrainDataCache).activations, opts.layers) : null;
  if (isCrossLayerRunArch(opts.arch)) {
    // From a cache the model's depth is the cached layers' (a CLT spliced into a deeper model is refused there).
    const depth = model?.config.nLayers ?? opts.layers.length;
    const all = Array.from({ length: depth }, (_, l) => l);
    if (opts.layers.join(',') !== all.join(',')) throw new InvalidArgumentError(`a cross-layer transcoder spans every layer of the model: train layers ${all.join(',')}, not ${opts.layers.join(',')}`);
    if (opts.resampleEvery) throw new InvalidArgumentError('dead-feature resampling is for per-layer transcoders; cross-layer transcoders use AuxK (clt-topk, clt-batchtopk) or the pre-activation loss');
  }
  const width = model?.config.dModel;
  for (const layer of opts.layers) {
    if (!Number.isInteger(layer) || layer < 0 || (model && layer >= model.config.nLayers)) throw new InvalidArgumentError(`layer ${layer} is not a layer of the model`);
  }
  // The family's transcoder hooks, or the ones each cached layer was made from.
  const hooksOf = (l: number) => {
    const meta = cache?.metas[cache.layers.indexOf(l)];
    return meta ? { hookIn: meta.hookIn, hookOut: meta.hookOut } : mlpHooks(l, model!.config.arch);
  };
  const hooks = opts.layers.map((l) => ({ input: hooksOf(l).hookIn, target: hooksOf(l).hookOut }));
  const widths = new Set(cache?.metas.map((m) => `${m.dIn}x${m.dOut}`));
  if (widths.size > 1) throw new InvalidArgumentError(`the cached layers have different widths (${[...widths].join(', ')}): train them in separate runs`);
  const dIn = width ?? cache!.metas[0]!.dIn;
  const dOut = width ?? cache!.metas[0]!.dOut;
  const group = opts.processGroup ?? null;
  if (opts.shardFeatures && !group) throw new InvalidArgumentError('shardFeatures needs a processGroup (the ranks that hold the shards)');
  if (group && opts.shardFeatures) checkFeatureShards(opts, group.worldSize);
  else if (group) checkDataParallel(opts, batchSize, group.worldSize, fromCache ? null : readTokenFileHeader((opts.data as TrainDataTokens).tokenFile).contextSize);
  const localBatch = opts.shardFeatures ? batchSize : batchSize / (group?.worldSize ?? 1);
  if ((opts.device ?? 'cpu').startsWith('cpu')) checkMemory(`training ${opts.layers.length} transcoder(s) of ${opts.dSae} features`, trainingMemory(opts, dIn, dOut, localBatch));
  const warnings: string[] = [];
  const warn = (message: string) => {
    warnings.push(message);
    opts.onWarning?.(message);
  };
  const context: RunContext = { out, batchSize, totalSteps, fromCache, model, hooks, hooksOf, cache, dIn, dOut, warnings, warn, group, root: (group?.rank ?? 0) === 0, sharded: opts.shardFeatures === true };
  // Only rank 0 writes into the output folder.
  if (!context.root) return trainLocked(opts, context);
  try {
    mkdirSync(out, { recursive: true });
  } catch (err) {
    throw toIoError(err, out, 'cannot create the output folder');
  }
  // One run per output folder: a second one would interleave its checkpoints with ours.
  const lock = lockFolder(out, 'transcoders train');
  if (lock.tookOver) warn(`${lock.path}: took over the stale lock of process ${lock.tookOver.pid} (${lock.tookOver.what}; no longer running)`);
  try {
    return await trainLocked(opts, context);
  } finally {
    lock.release();
  }
}

/** What feature-sharded training needs: features that split evenly, relu or topk (with k per shard at most its features), no resampling. */
function checkFeatureShards(opts: TrainRunOptions, worldSize: number): void {
  if (opts.dSae % worldSize !== 0) throw new InvalidArgumentError(`the ${opts.dSae} features do not split evenly over ${worldSize} processes: give a dSae that is a multiple of ${worldSize}`);
  if (opts.arch !== 'relu' && opts.arch !== 'topk') throw new InvalidArgumentError(`feature-sharded training runs relu and topk transcoders, not ${opts.arch}`);
  if (opts.arch === 'topk' && opts.k !== undefined && opts.k > opts.dSae / worldSize) throw new InvalidArgumentError(`k ${opts.k} exceeds each process's ${opts.dSae / worldSize} features`);
  if (opts.resampleEvery) throw new InvalidArgumentError('dead-feature resampling is not available in feature-sharded training');
}

/** Rank `rank`'s block of `t` along `dim` (`ranks` equal blocks). */
function featureSlice(t: Tensor, dim: number, rank: number, ranks: number): Tensor {
  const shape = t.shape;
  const data = t.toTypedArray();
  const outer = shape.slice(0, dim).reduce((a, b) => a * b, 1);
  const inner = shape.slice(dim + 1).reduce((a, b) => a * b, 1);
  const n = shape[dim]! / ranks;
  const out = new (data.constructor as new (length: number) => typeof data)(outer * n * inner);
  for (let o = 0; o < outer; o++) {
    const from = (o * shape[dim]! + rank * n) * inner;
    out.set(data.subarray(from, from + n * inner) as never, o * n * inner);
  }
  return Tensor.from(out, shape.map((s, i) => (i === dim ? n : s)), { dtype: t.dtype });
}

/** The dimension along which a transcoder tensor (or its trainer state) holds features; -1 when it has none. */
function featureDim(name: string): number {
  const base = name.startsWith('adam.') ? name.slice(5, name.lastIndexOf('.')) : name;
  if (base === 'W_enc') return 1;
  return ['b_enc', 'W_dec', 'threshold', 'steps_since_fired'].includes(base) ? 0 : -1;
}

/** This rank's share of every tensor that has features; the rest as they are. */
function shardTensors(tensors: Record<string, Tensor>, rank: number, ranks: number): Record<string, Tensor> {
  return Object.fromEntries(Object.entries(tensors).map(([name, t]) => [name, featureDim(name) < 0 ? t : featureSlice(t, featureDim(name), rank, ranks)]));
}

/**
 * What data-parallel training needs of the options: a batch that splits into whole sequences (of
 * `context` tokens, null for an activation cache) per process, per-layer transcoders, no resampling.
 */
export function checkDataParallel(opts: Pick<TrainRunOptions, 'arch' | 'resampleEvery' | 'bucketBytes'>, batchSize: number, worldSize: number, context: number | null): void {
  const per = batchSize / worldSize;
  if (!Number.isInteger(per)) throw new InvalidArgumentError(`the batch of ${batchSize} rows does not split evenly over ${worldSize} processes: give a batch size that is a multiple of ${worldSize}`);
  if (context !== null && per % context !== 0) {
    throw new InvalidArgumentError(`each of the ${worldSize} processes reads whole sequences of ${context} tokens, so the batch size must be a multiple of ${worldSize} x ${context} = ${worldSize * context} (got ${batchSize})`);
  }
  if (isCrossLayerRunArch(opts.arch)) throw new InvalidArgumentError(`data-parallel training covers per-layer transcoders; train --arch ${opts.arch} in one process`);
  if (opts.resampleEvery) throw new InvalidArgumentError('dead-feature resampling is not available in data-parallel training (each process would resample from its own rows)');
  if (opts.bucketBytes !== undefined && !(Number.isInteger(opts.bucketBytes) && opts.bucketBytes >= 1024)) throw new InvalidArgumentError(`bucketBytes must be an integer of at least 1024, got ${opts.bucketBytes}`);
}

interface RunContext {
  out: string;
  batchSize: number;
  totalSteps: number;
  fromCache: boolean;
  model: Model | null;
  hooks: { input: string; target: string }[];
  /** Each layer's transcoder hooks (the model family's, or the activation cache's). */
  hooksOf: (layer: number) => { hookIn: string; hookOut: string };
  /** The cached layers, in the order of opts.layers (null when the model runs). */
  cache: CacheLayers | null;
  dIn: number;
  dOut: number;
  warnings: string[];
  warn: (message: string) => void;
  /** Data-parallel: the group, and whether this process is rank 0 (the one that writes). */
  group: ProcessGroup | null;
  root: boolean;
  /** Feature-sharded (every rank holds a slice of the features) rather than data-parallel. */
  sharded: boolean;
}

/** Transcoder options a resumed run cannot change (the weights are the checkpoint's). */
function checkResumeConflicts(config: TranscoderConfig | CrossLayerConfig, opts: TrainRunOptions, dir: string): void {
  const conflicts: string[] = [];
  const differs = (option: string, flag: string, have: unknown, given: unknown) => {
    if (have !== given) conflicts.push(`${option} (${flag}) is ${JSON.stringify(have ?? null)} in the checkpoint, ${JSON.stringify(given ?? null)} was given`);
  };
  differs('arch', '--arch', 'kind' in config ? `clt-${config.arch}` : config.arch, opts.arch);
  differs('dSae', '--d-sae', config.dSae, opts.dSae);
  differs('skip', '--skip', config.skip, opts.skip ?? false);
  if (opts.k !== undefined || config.arch === 'topk') differs('k', '--k', config.k, opts.k);
  if (opts.bandwidth !== undefined) differs('bandwidth', '--bandwidth', config.bandwidth, opts.bandwidth);
  if (conflicts.length > 0) throw new InvalidArgumentError(`resume from ${dir}: ${conflicts.join('; ')}; resume with the checkpoint's values or start a new run in another folder`);
}

async function trainLocked(opts: TrainRunOptions, ctx: RunContext): Promise<TrainResult> {
  const { out, batchSize, totalSteps, fromCache, model, cache, warnings, warn, group, root, sharded } = ctx;
  // Data-parallel ranks split each batch; feature-sharded ones all read it whole.
  const world = sharded ? 1 : group?.worldSize ?? 1;
  const checkpointsDir = join(out, 'checkpoints');
  // The newest complete checkpoint, past broken ones; then leftovers of killed writes are cleaned
  // (which also moves a complete copy left under a temporary name back into place). Data-parallel:
  // rank 0 chooses and cleans, the others read once it has.
  let point: ReturnType<typeof findResumePoint> = { skipped: [] };
  if (root) {
    if (opts.resume) point = findResumePoint(checkpointsDir);
    for (const s of point.skipped) warn(`--resume: the checkpoint ${s.dir} is broken (${s.reason}); falling back to an older one`);
    cleanCheckpoints(checkpointsDir);
  }
  if (group) await group.barrier();
  if (!root && opts.resume) point = findResumePoint(checkpointsDir);
  const latest = point.latest ? listCheckpoints(checkpointsDir).find((c) => c.state.step === point.latest!.state.step) : undefined;
  if (opts.resume && !latest) throw new InvalidArgumentError(`--resume: no complete checkpoint in ${checkpointsDir}${point.skipped.length ? ` (${point.skipped.length} broken)` : ''}`);
  if (latest && latest.state.layers.join(',') !== opts.layers.join(',')) {
    throw new InvalidArgumentError(`--resume: the checkpoint trains layers ${latest.state.layers}, not ${opts.layers}`);
  }

  const slots = isCrossLayerRunArch(opts.arch) ? [await crossLayerSlot(opts, ctx, latest)] : await perLayerSlots(opts, ctx, latest);
  // Training options changed on this resume (lr, seed, ...): allowed, recorded from this step on.
  const changes: NonNullable<CheckpointState['changes']> = [...(latest?.state.changes ?? [])];
  const newChanges: typeof changes = [];
  if (latest) {
    const before = slots[0]!.loadedTraining ?? {};
    const now = slots[0]!.recorded().training!;
    for (const option of Object.keys(now)) {
      if (option === 'data' || JSON.stringify(before[option]) === JSON.stringify(now[option])) continue;
      newChanges.push({ step: latest.state.step, option, from: before[option] ?? null, to: now[option] });
    }
    changes.push(...newChanges);
  }

  // The activation source.
  let source: object;
  if (fromCache) {
    source = { kind: 'cache', layers: cache!.shards, startRow: latest?.state.position ?? 0 };
  } else {
    const header = readTokenFileHeader((opts.data as TrainDataTokens).tokenFile);
    source = {
      kind: 'model',
      model: model!.handle,
      tokenFile: { path: header.path, dataOffset: header.dataStart, rows: header.rows, context: header.contextSize },
      startRow: latest?.state.position ?? 0,
      sequencesPerForward: opts.sequencesPerForward ?? 8,
    };
  }
  const checkpointEverySteps = Math.max(1, Math.floor((opts.checkpointEveryTokens ?? Math.ceil((totalSteps * batchSize) / 10)) / batchSize));
  // Each slot's transcoder knows its placement: the model source reads the hooks it names.
  // Data-parallel: each rank's batch is its slice of the global one; only rank 0 takes snapshots.
  // Feature-sharded: every rank takes them (they gather the features), rank 0 writes them.
  const localBatch = batchSize / world;
  const run = new (native().TrainingRun)({
    slots: slots.map((t) => t.handle),
    source,
    options: {
      batchSize: localBatch,
      totalSteps,
      bufferRows: opts.bufferRows ?? Math.min(262144, 64 * localBatch),
      shuffle: !opts.noShuffle,
      seed: (opts.seed ?? 0) + (latest?.state.step ?? 0),
      logEvery: opts.logEvery ?? 10,
      checkpointEvery: root || sharded ? checkpointEverySteps : 0,
      ...(group && { processGroup: group.handle(), featureShards: sharded, ...(opts.bucketBytes !== undefined && { bucketBytes: opts.bucketBytes }) }),
    },
  });
  const abort = () => run.stop();
  opts.signal?.addEventListener('abort', abort);
  const log = join(out, 'train.jsonl');
  if (latest && root) {
    appendFileChecked(log, JSON.stringify({ time: new Date().toISOString(), event: 'resume', step: latest.state.step, from: latest.dir, skipped: point.skipped.map((s) => s.dir), changes: newChanges }) + '\n');
  }
  // An error in a callback reaches the native loop as a plain exception: keep ours (an IoError
  // naming the file) to rethrow once the loop has stopped.
  let callbackError: unknown;
  const guarded = <T,>(fn: (arg: T) => void) => (arg: T) => {
    try {
      fn(arg);
    } catch (err) {
      callbackError ??= err;
      throw err;
    }
  };
  const onProgress = guarded((p: NativeRunProgress) => {
    const progress: TrainProgress = {
      step: p.step, totalSteps, tokens: p.step * batchSize, metrics: p.metrics.map((m, i) => ({ ...m, layer: opts.layers[i]! })),
      ...(group && { collectiveSeconds: p.collectiveSeconds }),
    };
    const extra = group ? { collectiveSeconds: p.collectiveSeconds } : {};
    if (root) appendFileChecked(log, progress.metrics.map((m) => JSON.stringify({ time: new Date().toISOString(), tokens: progress.tokens, ...m, ...extra })).join('\n') + '\n');
    opts.onProgress?.(progress);
  });
  const stateOf = (step: number, position: number): CheckpointState => ({
    step, position, tokens: step * batchSize, layers: opts.layers, ...(changes.length && { changes }), ...((group?.worldSize ?? 1) > 1 && { worldSize: group!.worldSize }),
  });
  const onCheckpoint = guarded((s: NativeRunSnapshot) => {
    if (!root) return;
    const state = stateOf(s.step, s.position);
    writeCheckpoint(checkpointsDir, state, s.slots.map((tensors, i) => ({
      layer: slots[i]!.layer,
      config: slots[i]!.recorded(),
      tensors: Object.fromEntries(Object.entries(tensors).map(([k, v]) => [k, new Tensor(v)])),
    })));
  });
  let result;
  try {
    // The whole run is one job of the transcoders' device queue; its callbacks lend the turn.
    result = await runOnDevice(slots[0]!.device, (job) => run.run(job.callback(onProgress), job.callback(onCheckpoint)), { callbacks: true });
  } catch (err) {
    throw callbackError ?? err;
  } finally {
    opts.signal?.removeEventListener('abort', abort);
  }
  // The final state is a checkpoint too (so that a stopped run can be resumed) and the result.
  // Feature-sharded: every rank's features, gathered (every rank takes part).
  const gathered = sharded ? (await run.snapshot(result.steps)).slots.map((t) => Object.fromEntries(Object.entries(t).map(([k, v]) => [k, new Tensor(v)]))) : null;
  const finalTensors = slots.map((slot, i) => gathered?.[i] ?? slot.snapshot());
  if (root) writeCheckpoint(checkpointsDir, stateOf(result.steps, result.position), slots.map((slot, i) => ({ layer: slot.layer, config: slot.recorded(), tensors: finalTensors[i]! })));
  const finals = await Promise.all(slots.map((slot, i) => slot.final(root ? out : null, gathered ? finalTensors[i] : undefined)));
  const resumed = latest ? { from: latest.dir, step: latest.state.step, skipped: point.skipped, changes: newChanges } : undefined;
  const transcoders = finals.filter((t): t is Transcoder => t instanceof Transcoder);
  const crossLayer = finals.find((t): t is CrossLayerTranscoder => t instanceof CrossLayerTranscoder);
  return { transcoders, ...(crossLayer && { crossLayer }), steps: result.steps, tokens: result.steps * batchSize, stopped: result.stopped, exhausted: result.exhausted, out, ...(resumed && { resumed }), warnings, worldSize: group?.worldSize ?? 1, collectiveSeconds: result.collectiveSeconds };
}

/** One slot of the native run: a transcoder and its trainer, as the run, its checkpoints and its result see it. */
interface TrainSlot {
  /** The layer of a per-layer transcoder (-1 for a cross-layer one). */
  layer: number;
  handle: NativeStepTrainer | NativeCrossLayerTrainer;
  device: string;
  /** The training record of the checkpoint resumed from. */
  loadedTraining?: Record<string, unknown>;
  /** The configuration with this run's training record. */
  recorded(): TranscoderConfig | CrossLayerConfig;
  /** Parameters and trainer state now (the final checkpoint). */
  snapshot(): Record<string, Tensor>;
  /**
   * The trained transcoder, also written into the output folder when one is given; from `tensors`
   * when given (the gathered features of a sharded run), else from the slot's own parameters.
   */
  final(out: string | null, tensors?: Record<string, Tensor>): Promise<Transcoder | CrossLayerTranscoder>;
}

/** What a run records about its training in each transcoder's config. */
function trainingRecord(opts: TrainRunOptions, ctx: RunContext, options: Record<string, unknown>): Record<string, unknown> {
  return {
    ...options,
    batchSize: ctx.batchSize,
    totalSteps: ctx.totalSteps,
    seed: opts.seed ?? 0,
    shuffle: !opts.noShuffle,
    data: ctx.fromCache ? (opts.data as TrainDataCache).activations : (opts.data as TrainDataTokens).tokenFile,
  };
}

/** Per-layer transcoders: from the checkpoint, from `init`, or fresh (biases from the first activations). */
async function perLayerSlots(opts: TrainRunOptions, ctx: RunContext, latest: { dir: string; state: CheckpointState } | undefined): Promise<TrainSlot[]> {
  const { model, hooks, hooksOf, dIn, dOut } = ctx;
  const transcoders: Transcoder[] = [];
  for (const [i, layer] of opts.layers.entries()) {
    const config: Partial<TranscoderConfig> = {
      arch: opts.arch as TranscoderArch, dIn, dOut, dSae: opts.dSae, skip: opts.skip ?? false, k: opts.k, bandwidth: opts.bandwidth, layer, ...hooksOf(layer),
      modelName: model ? model.dir : null, processing: model ? model.processing : null,
    };
    validateTranscoderConfig(config, `layer ${layer}`);
    let tc: Transcoder;
    if (latest) {
      tc = await loadNativeTranscoder(join(latest.dir, `layer_${layer}`), opts);
      checkResumeConflicts(tc.config, opts, latest.dir);
    }
    else if (opts.init?.[layer]) tc = await Transcoder.fromParameters({ ...opts.init[layer]!.config, layer, ...hooksOf(layer) }, opts.init[layer]!.parameters(), opts);
    else tc = await Transcoder.create(config, { ...opts, seed: (opts.seed ?? 0) + i });
    transcoders.push(tc);
  }
  if (!latest && !opts.init && (opts.biasInit ?? 'mean') !== 'zeros') {
    const samples = await sampleActivations(opts, hooks, ctx.cache);
    await Promise.all(transcoders.map((tc, i) => tc.initializeBiases(samples[i]!.x, samples[i]!.y, opts.biasInit ?? 'mean')));
  }
  const slots: TrainSlot[] = [];
  const shard = ctx.sharded ? { rank: ctx.group!.rank, ranks: ctx.group!.worldSize } : null;
  for (const [i, layer] of opts.layers.entries()) {
    const whole = transcoders[i]!;
    // Feature-sharded: this rank trains its block of the features (initialised as the whole
    // transcoder would be, so that the run is the unsharded one); the records stay the whole's.
    const tc = shard
      ? await Transcoder.fromParameters({ ...whole.config, dSae: whole.config.dSae / shard.ranks }, shardTensors(whole.parameters(), shard.rank, shard.ranks) as ReturnType<Transcoder['parameters']>, opts)
      : whole;
    const trainer = new StepTrainer(tc, opts);
    if (latest) {
      const state = await readTrainerState(latest.dir, layer);
      trainer.setState({ step: latest.state.step, tensors: shard ? shardTensors(state, shard.rank, shard.ranks) : state });
    }
    const recorded = (): TranscoderConfig => ({ ...whole.config, training: trainingRecord(opts, ctx, trainer.options) });
    slots.push({
      layer,
      handle: trainer.handle,
      device: tc.device,
      loadedTraining: tc.config.training,
      recorded,
      snapshot: () => ({ ...tc.parameters(), ...trainer.state().tensors }),
      final: async (out, tensors) => {
        const params = tensors ? Object.fromEntries(Object.keys(tc.parameters()).map((k) => [k, tensors[k]!])) as ReturnType<Transcoder['parameters']> : tc.parameters();
        const final = await Transcoder.fromParameters(recorded(), params, opts);
        if (out === null) return final;
        const dir = join(out, `layer_${layer}`);
        try {
          saveTranscoder(final, dir);
        } catch (err) {
          throw toIoError(err, dir, 'cannot write the transcoder');
        }
        return final;
      },
    });
  }
  return slots;
}

/**
 * A cross-layer transcoder over every layer: from the checkpoint, from `init[0]` (a
 * CrossLayerTranscoder given as `crossLayerInit`), or fresh with each layer's output bias at the
 * mean of its first targets.
 */
async function crossLayerSlot(opts: TrainRunOptions, ctx: RunContext, latest: { dir: string; state: CheckpointState } | undefined): Promise<TrainSlot> {
  const { model, hooks, hooksOf, dIn, dOut } = ctx;
  const L = opts.layers.length;
  const config = validateCrossLayerConfig({
    arch: (opts.arch as CrossLayerRunArch).slice('clt-'.length) as CrossLayerArch, nLayers: L, dIn, dOut, dSae: opts.dSae, skip: opts.skip ?? false, k: opts.k, bandwidth: opts.bandwidth,
    hookIn: opts.layers.map((l) => hooksOf(l).hookIn), hookOut: opts.layers.map((l) => hooksOf(l).hookOut),
    modelName: model ? model.dir : null, processing: model ? model.processing : null,
  }, 'cross-layer transcoder');
  let clt: CrossLayerTranscoder;
  if (latest) {
    clt = await loadCrossLayerTranscoder(join(latest.dir, CROSS_LAYER_FOLDER), opts);
    checkResumeConflicts(clt.config, opts, latest.dir);
  } else {
    clt = await CrossLayerTranscoder.create(config, { ...opts, seed: opts.seed ?? 0 });
    if ((opts.biasInit ?? 'mean') !== 'zeros') {
      // b_dec[t] = the mean of layer t's targets (the encoders have no input bias to initialise).
      const samples = await sampleActivations(opts, hooks, ctx.cache);
      const bDec = new Float32Array(L * dOut);
      samples.forEach(({ y }, t) => {
        const data = y.toFloat32Array();
        const rows = data.length / dOut;
        for (let r = 0; r < rows; r++) for (let i = 0; i < dOut; i++) bDec[t * dOut + i]! += data[r * dOut + i]! / rows;
      });
      clt = await CrossLayerTranscoder.fromParameters(config, { ...clt.parameters(), b_dec: Tensor.from(bDec, [L, dOut]) }, opts);
    }
  }
  const trainer = new CrossLayerTrainer(clt, opts);
  if (latest) trainer.setState({ step: latest.state.step, tensors: await readTrainerState(latest.dir, CROSS_LAYER_FOLDER) });
  const recorded = (): CrossLayerConfig => ({ ...clt.config, training: trainingRecord(opts, ctx, trainer.options) });
  return {
    layer: -1,
    handle: trainer.handle,
    device: clt.device,
    loadedTraining: clt.config.training,
    recorded,
    snapshot: () => ({ ...clt.parameters(), ...trainer.state().tensors }),
    final: async (out, _tensors) => {
      const final = await CrossLayerTranscoder.fromParameters(recorded(), clt.parameters(), opts);
      if (out === null) return final;
      const dir = join(out, CROSS_LAYER_FOLDER);
      try {
        saveCrossLayerTranscoder(final, dir);
      } catch (err) {
        throw toIoError(err, dir, 'cannot write the cross-layer transcoder');
      }
      return final;
    },
  };
}

