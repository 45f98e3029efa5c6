/**
 * A whole training run: transcoders for several layers fed by one model forward per batch of token
 * rows (or by an activation cache), through per-layer shuffle buffers, with the loop in C++
 * (native/train/run.cc). JS starts it, receives progress (callback, JSONL log), writes checkpoints
 * and can stop it. Resuming continues from the latest checkpoint: weights, Adam state, step and
 * data position (activations that were buffered but not yet trained on are not replayed).
 */
import { appendFileSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { readTokenFileHeader, readTokenRows } from '../data/token-file.js';
import { runOnDevice } from '../device-queue.js';
import { InvalidArgumentError } from '../errors.js';
import { loadSafetensorsTensors, readSafetensorsHeader } from '../io/safetensors.js';
import { native, type NativeRunProgress, type NativeRunSnapshot } from '../native.js';
import type { Model } from '../models/model.js';
import { Tensor } from '../tensor.js';
import { readCacheMeta, readCacheShards } from './activation-cache.js';
import { listCheckpoints, readTrainerState, writeCheckpoint, type CheckpointState } from './checkpoints.js';
import { mlpHooks, validateTranscoderConfig, type TranscoderArch, type TranscoderConfig } from './config.js';
import { loadNativeTranscoder, saveTranscoder } from './formats/native.js';
import { StepTrainer, type StepMetrics, type TrainOptions } from './step-trainer.js';
import { Transcoder, type BiasInit, type PlacementOptions } from './transcoder.js';

export interface TrainDataTokens {
  /** A token file (see lib/data/token-file.ts) run through `model`. */
  tokenFile: string;
  model: Model;
}

export interface TrainDataCache {
  /** An activation cache folder of one layer (see cache.ts). */
  activations: string;
}

export interface TrainRunOptions extends TrainOptions, PlacementOptions {
  data: TrainDataTokens | TrainDataCache;
  layers: number[];
  arch: TranscoderArch;
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
  resume?: boolean;
  /** Steps between progress reports and log lines (default 10). */
  logEvery?: number;
  onProgress?: (progress: TrainProgress) => void;
  signal?: AbortSignal;
}

export interface TrainProgress {
  step: number;
  totalSteps: number;
  tokens: number;
  /** One entry per layer, in `layers` order. */
  metrics: (StepMetrics & { layer: number })[];
}

export interface TrainResult {
  transcoders: Transcoder[];
  steps: number;
  tokens: number;
  stopped: boolean;
  /** The data ran out before the step budget. */
  exhausted: boolean;
  out: string;
}

const BIAS_SAMPLE_ROWS = 8192;

/**
 * The first activations of each layer, for the bias initialisation: the rows of the first
 * ceil(8192 / context) sequences, the same rows whether they come from the model or from a cache.
 */
async function sampleActivations(opts: TrainRunOptions, hooks: { input: string; target: string }[]): Promise<{ x: Tensor; y: Tensor }[]> {
  if ('activations' in opts.data) {
    const meta = readCacheMeta(opts.data.activations);
    const rows = Math.min(meta.count, Math.ceil(BIAS_SAMPLE_ROWS / meta.contextSize) * meta.contextSize);
    const xs: Float32Array[] = [];
    const ys: Float32Array[] = [];
    let have = 0;
    for (const shard of readCacheShards(opts.data.activations)) {
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
    return [{ x: join2(xs, meta.dIn), y: join2(ys, meta.dOut) }];
  }
  const { model, tokenFile } = opts.data;
  const header = readTokenFileHeader(tokenFile);
  const sequences = Math.max(1, Math.min(header.rows, Math.ceil(BIAS_SAMPLE_ROWS / header.contextSize)));
  const flat = await readTokenRows(header, 0, sequences);
  const rows = Array.from({ length: sequences }, (_, i) => Array.from(flat.subarray(i * header.contextSize, (i + 1) * header.contextSize)));
  const { cache } = await model.run(rows, { cache: hooks.flatMap((h) => [h.input, h.target]), logits: false });
  return hooks.map((h) => ({ x: cache[h.input]!, y: cache[h.target]! }));
}

/** Trains transcoders for `opts.layers`; resolves when the step budget is reached, the data ends, or the run is stopped. */
export async function trainTranscoders(opts: TrainRunOptions): Promise<TrainResult> {
  const out = resolve(opts.out);
  const batchSize = opts.batchSize ?? 4096;
  const totalSteps = opts.steps ?? (opts.tokens !== undefined ? Math.floor(opts.tokens / batchSize) : undefined);
  if (!totalSteps || !Number.isInteger(totalSteps) || totalSteps < 1) throw new InvalidArgumentError('give the run length as steps or tokens (at least one batch)');
  if (opts.layers.length === 0) throw new InvalidArgumentError('train at least one layer');
  const fromCache = 'activations' in opts.data;
  if (fromCache && opts.layers.length !== 1) throw new InvalidArgumentError('an activation cache holds one layer: train one layer per run from it');
  const model = fromCache ? null : (opts.data as TrainDataTokens).model;
  const width = model?.config.dModel;
  for (const layer of opts.layers) {
    if (!Number.isInteger(layer) || layer < 0 || (model && layer >= model.config.nLayers)) throw new InvalidArgumentError(`layer ${layer} is not a layer of the model`);
  }
  const hooks = opts.layers.map((l) => ({ input: mlpHooks(l).hookIn, target: mlpHooks(l).hookOut }));
  const cacheMeta = fromCache ? readCacheShards((opts.data as TrainDataCache).activations) : null;
  const dIn = width ?? cacheMeta![0]!.dIn;
  const dOut = width ?? cacheMeta![0]!.dOut;
  mkdirSync(out, { recursive: true });
  const checkpointsDir = join(out, 'checkpoints');
  const latest = opts.resume ? listCheckpoints(checkpointsDir).at(-1) : undefined;
  if (opts.resume && !latest) throw new InvalidArgumentError(`--resume: no checkpoint in ${checkpointsDir}`);
  if (latest && latest.state.layers.join(',') !== opts.layers.join(',')) {
    throw new InvalidArgumentError(`--resume: the checkpoint trains layers ${latest.state.layers}, not ${opts.layers}`);
  }

  // Transcoders: from the checkpoint, from --init, or fresh.
  const transcoders: Transcoder[] = [];
  for (const [i, layer] of opts.layers.entries()) {
    const config: Partial<TranscoderConfig> = {
      arch: opts.arch, dIn, dOut, dSae: opts.dSae, skip: opts.skip ?? false, k: opts.k, bandwidth: opts.bandwidth, layer, ...mlpHooks(layer),
      modelName: model ? model.dir : null, processing: model ? model.processing : null,
    };
    validateTranscoderConfig(config, `layer ${layer}`);
    let tc: Transcoder;
    if (latest) tc = await loadNativeTranscoder(join(latest.dir, `layer_${layer}`), opts);
    else if (opts.init?.[layer]) tc = await Transcoder.fromParameters({ ...opts.init[layer]!.config, layer, ...mlpHooks(layer) }, opts.init[layer]!.parameters(), opts);
    else tc = await Transcoder.create(config, { ...opts, seed: (opts.seed ?? 0) + i });
    transcoders.push(tc);
  }
  if (!latest && !opts.init && (opts.biasInit ?? 'mean') !== 'zeros') {
    const samples = await sampleActivations(opts, hooks);
    await Promise.all(transcoders.map((tc, i) => tc.initializeBiases(samples[i]!.x, samples[i]!.y, opts.biasInit ?? 'mean')));
  }
  const trainers = transcoders.map((tc) => new StepTrainer(tc, opts));
  if (latest) {
    for (const [i, layer] of opts.layers.entries()) {
      trainers[i]!.setState({ step: latest.state.step, tensors: await readTrainerState(latest.dir, layer) });
    }
  }
  const recordTraining = (tc: Transcoder, trainer: StepTrainer): TranscoderConfig => ({
    ...tc.config,
    training: { ...trainer.options, batchSize, totalSteps, seed: opts.seed ?? 0, shuffle: !opts.noShuffle, data: fromCache ? (opts.data as TrainDataCache).activations : (opts.data as TrainDataTokens).tokenFile },
  });

  // The activation source.
  let source: object;
  if (fromCache) {
    source = { kind: 'cache', shards: cacheMeta, startRow: latest?.state.position ?? 0 };
  } else {
    const header = readTokenFileHeader((opts.data as TrainDataTokens).tokenFile);
    source = {
      kind: 'model',
      model: model!.handle,
      tokenFile: { path: header.path, dataOffset: header.dataStart, rows: header.rows, context: header.contextSize },
      startRow: latest?.state.position ?? 0,
      hooks,
      sequencesPerForward: opts.sequencesPerForward ?? 8,
    };
  }
  const checkpointEverySteps = Math.max(1, Math.floor((opts.checkpointEveryTokens ?? Math.ceil((totalSteps * batchSize) / 10)) / batchSize));
  const run = new (native().TrainingRun)({
    slots: trainers.map((t) => t.handle),
    layers: opts.layers,
    source,
    options: {
      batchSize,
      totalSteps,
      bufferRows: opts.bufferRows ?? Math.min(262144, 64 * batchSize),
      shuffle: !opts.noShuffle,
      seed: (opts.seed ?? 0) + (latest?.state.step ?? 0),
      logEvery: opts.logEvery ?? 10,
      checkpointEvery: checkpointEverySteps,
    },
  });
  const abort = () => run.stop();
  opts.signal?.addEventListener('abort', abort);
  const log = join(out, 'train.jsonl');
  const onProgress = (p: NativeRunProgress) => {
    const progress: TrainProgress = { step: p.step, totalSteps, tokens: p.step * batchSize, metrics: p.metrics.map((m, i) => ({ ...m, layer: opts.layers[i]! })) };
    appendFileSync(log, progress.metrics.map((m) => JSON.stringify({ time: new Date().toISOString(), tokens: progress.tokens, ...m })).join('\n') + '\n');
    opts.onProgress?.(progress);
  };
  const onCheckpoint = (s: NativeRunSnapshot) => {
    const state: CheckpointState = { step: s.step, position: s.position, tokens: s.step * batchSize, layers: opts.layers };
    writeCheckpoint(checkpointsDir, state, s.slots.map((slot, i) => ({
      layer: opts.layers[i]!,
      config: recordTraining(transcoders[i]!, trainers[i]!),
      tensors: Object.fromEntries(Object.entries(slot).map(([k, v]) => [k, new Tensor(v)])),
    })));
  };
  let result;
  try {
    // The whole run is one job of the transcoders' device queue; its callbacks lend the turn.
    result = await runOnDevice(transcoders[0]!.device, (job) => run.run(job.callback(onProgress), job.callback(onCheckpoint)), { callbacks: true });
  } finally {
    opts.signal?.removeEventListener('abort', abort);
  }
  // The final state is a checkpoint too (so that a stopped run can be resumed) and the result.
  const finalState: CheckpointState = { step: result.steps, position: result.position, tokens: result.steps * batchSize, layers: opts.layers };
  writeCheckpoint(checkpointsDir, finalState, trainers.map((t, i) => {
    const s = t.state();
    return { layer: opts.layers[i]!, config: recordTraining(transcoders[i]!, t), tensors: { ...transcoders[i]!.parameters(), ...s.tensors } };
  }));
  const finals = await Promise.all(transcoders.map(async (tc, i) => {
    const final = await Transcoder.fromParameters(recordTraining(tc, trainers[i]!), tc.parameters(), opts);
    saveTranscoder(final, join(out, `layer_${opts.layers[i]}`));
    return final;
  }));
  return { transcoders: finals, steps: result.steps, tokens: result.steps * batchSize, stopped: result.stopped, exhausted: result.exhausted, out };
}

