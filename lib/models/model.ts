/**
 * Language models from local Hugging Face folders: loadModel(dir) -> Model, whose run() gives
 * logits and TransformerLens-named activations, with MLP outputs optionally replaced (ablation,
 * a fixed value, or a callback such as a transcoder).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { runOnDevice } from '../device-queue.js';
import { InvalidArgumentError, NumericalError } from '../errors.js';
import { resolveModelSource } from '../io/hf-cache.js';
import { native, type NativeCrossLayerTranscoder, type NativeMlpReplacement, type NativeModel, type NativeRunResult, type NativeTranscoder } from '../native.js';
import { Tensor, type DType } from '../tensor.js';
import { loadFolderTokenizer, type Tokenizer } from '../tokenizer/tokenizer.js';
import { resolveCheckpoint } from './checkpoint.js';
import { readModelConfig, type ModelConfig } from './config.js';
import { selectHooks } from './hooks.js';

/**
 * `'transformerlens'`: TransformerLens's default weight processing (fold_ln,
 * center_writing_weights, center_unembed, fold_value_biases), which the paper's GPT-2
 * transcoders expect. `'none'`: raw Hugging Face numerics.
 */
export type Processing = 'none' | 'transformerlens';
export const PROCESSINGS: readonly Processing[] = ['none', 'transformerlens'];

/** Floating-point types a model can compute in (float16 needs CUDA on libtorch 1.13). */
export type ModelDType = Extract<DType, 'float32' | 'bfloat16' | 'float16'>;
export const MODEL_DTYPES: readonly ModelDType[] = ['float32', 'bfloat16', 'float16'];

export interface LoadModelOptions {
  /** `'cpu'` (default), `'cuda'`, `'cuda:N'`. */
  device?: string;
  /** Weight and compute dtype (default float32). */
  dtype?: ModelDType;
  /** Default `'none'`. */
  processing?: Processing;
  /**
   * Weights holding NaN or infinity (every logit would be NaN): `'warn'` (default) emits a process
   * warning naming them, `'error'` refuses the model with a NumericalError.
   */
  nonFinite?: 'warn' | 'error';
}

/** A module the native forward runs in place of an MLP: a Transcoder (lib/transcoders/transcoder.ts). */
export interface NativeMlpModule {
  readonly config: object;
  /** @internal */
  readonly handle: NativeTranscoder;
}

/**
 * A replacement of one layer's MLP output (`blocks.L.hook_mlp_out`):
 * - `'zero'`: zero-ablation;
 * - `'mean'`: the mean output over this batch's real (unpadded) positions; `{ mean }`: a given mean vector [d];
 * - `{ value }`: a fixed tensor broadcastable to [B, T, d];
 * - a callback `(input, original, layer) => Tensor` receiving the MLP input
 *   (`mlp.hook_in` = `ln2.hook_normalized`, [B, T, d]) and the original output; it may return a Promise;
 * - a Transcoder, run natively inside the forward on what its `hookIn` names: the MLP input, or the
 *   residual stream before the MLP's LayerNorm (`hook_resid_mid`, `hook_resid_pre` in parallel blocks);
 * - `{ module, keep }`: a Transcoder with only the features of `keep` (bool or 0/1 [dSae]) active.
 * {@link ReplacementModel} builds these for its transcoders.
 */
export type MlpReplacement =
  | 'zero'
  | 'mean'
  | { mean: Tensor }
  | { value: Tensor }
  | NativeMlpModule
  | { module: NativeMlpModule; keep?: Tensor }
  | ((input: Tensor, original: Tensor, layer: number) => Tensor | Promise<Tensor>);

/** The default of {@link RunOptions.callbackTimeoutMs}. */
export const DEFAULT_CALLBACK_TIMEOUT_MS = 60_000;

/** `value` (a Promise or not), or an InvalidArgumentError naming `what` once `ms` pass without it settling. */
async function settleWithin<T>(value: T | Promise<T>, ms: number, what: string): Promise<T> {
  if (!(value instanceof Promise)) return value;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new InvalidArgumentError(`${what} did not settle within ${ms} ms (RunOptions.callbackTimeoutMs)`)), ms);
  });
  try {
    return await Promise.race([value, late]);
  } finally {
    clearTimeout(timer);
  }
}

function isNativeModule(spec: unknown): spec is NativeMlpModule {
  return typeof spec === 'object' && spec !== null && 'handle' in spec && 'config' in spec && typeof (spec as NativeMlpModule).handle?.forward === 'function';
}

/** What {@link RunOptions.crossLayer} accepts: a CrossLayerTranscoder (lib/transcoders/cross-layer.ts). */
export interface NativeCrossLayerModule {
  readonly config: { kind: 'cross_layer_transcoder' };
  /** @internal */
  readonly handle: NativeCrossLayerTranscoder;
}

/**
 * Token ids: one sequence (number[] / Int32Array), a batch of sequences (rows of different lengths
 * are padded: see {@link RunOptions.padding}), or a Tensor [T] / [B, T] (every position real).
 */
export type TokensInput = readonly number[] | readonly (readonly number[])[] | Int32Array | Tensor;

export interface RunOptions {
  /** Activations to return: hook names or `*` patterns (see {@link Model.hookNames}). */
  cache?: readonly string[];
  /** MLP output replacements by layer index. */
  replaceMlp?: Readonly<Record<number, MlpReplacement>>;
  /**
   * A cross-layer transcoder in place of every MLP of the model (each layer's output is what the
   * features of that layer and of every earlier one write into it); `keep` (bool or 0/1 [L, dSae])
   * leaves only those features active. Not combinable with `replaceMlp` on the same layers.
   */
  crossLayer?: NativeCrossLayerModule | { module: NativeCrossLayerModule; keep?: Tensor };
  /** Record autograd history (default false). */
  grad?: boolean;
  /** Compute the logits (default true). */
  logits?: boolean;
  /**
   * Where a batch whose rows differ in length is padded up to its longest row T (default
   * `'right'`): after each row's tokens, or before them. Either way pads are masked out of
   * attention and each row's real tokens get positions 0..n-1 (learned and rotary positions alike,
   * as Hugging Face derives position ids from the attention mask), so a row's logits and
   * activations at its real positions equal those of the row run alone. Values at pad positions
   * are unspecified (finite: a pad query attends to itself); {@link RunOutput.lengths} says which
   * positions are real.
   */
  padding?: Padding;
  /**
   * How long a `replaceMlp` callback may take to settle, in milliseconds (default 60000): past that
   * the run rejects with an InvalidArgumentError naming the layer, and the device's queue moves on
   * (a callback whose Promise never settles no longer holds the run, its worker or the process).
   */
  callbackTimeoutMs?: number;
}

export type Padding = 'right' | 'left';
export const PADDINGS: readonly Padding[] = ['right', 'left'];

export interface RunOutput {
  /** [B, T, V] in the model dtype; absent with `logits: false`. */
  logits?: Tensor;
  /** Requested activations by hook name, each with a leading batch dimension. */
  cache: Record<string, Tensor>;
  /**
   * Real tokens of each row: row b's are at positions 0..lengths[b]-1 with right padding, at
   * T-lengths[b]..T-1 with left padding; every other position is a pad. All T when nothing is padded.
   */
  lengths: number[];
  /** The padding side used ({@link RunOptions.padding}). */
  padding: Padding;
}

/** A token batch as the native forward takes it. */
interface TokenBatch {
  tokens: Tensor;
  lengths: number[];
  /** Some row is shorter than T. */
  padded: boolean;
  padding: Padding;
}

export class Model {
  readonly dir: string;
  readonly config: ModelConfig;
  readonly processing: Processing;
  readonly device: string;
  readonly dtype: ModelDType;
  /** Present when the folder has a tokenizer.json. */
  readonly tokenizer: Tokenizer | null;
  /** Every hook name of this model, in forward order. */
  readonly hookNames: readonly string[];
  /** @internal */
  readonly handle: NativeModel;

  /** @internal use {@link loadModel}. */
  constructor(init: {
    dir: string;
    config: ModelConfig;
    processing: Processing;
    device: string;
    dtype: ModelDType;
    tokenizer: Tokenizer | null;
    handle: NativeModel;
  }) {
    this.dir = init.dir;
    this.config = init.config;
    this.processing = init.processing;
    this.device = init.device;
    this.dtype = init.dtype;
    this.tokenizer = init.tokenizer;
    this.handle = init.handle;
    this.hookNames = Object.freeze(init.handle.hookNames());
  }

  /**
   * Token ids of `text` with this model's BOS convention: tokenizer_config.json's `add_bos_token` when
   * present, else the family's (GPT-2: BOS first; Pythia: none); `tokenizer.bos` says which applied.
   */
  tokenize(text: string, options: { prependBos?: boolean } = {}): number[] {
    if (!this.tokenizer) throw new InvalidArgumentError(`${this.dir} has no tokenizer.json: pass token ids instead of text`);
    return this.tokenizer.encode(text, options);
  }

  /** Text of token ids. */
  decode(ids: readonly number[]): string {
    if (!this.tokenizer) throw new InvalidArgumentError(`${this.dir} has no tokenizer.json`);
    return this.tokenizer.decode(ids);
  }

  /**
   * Runs the model (off the JS thread, in this device's queue: see docs/models.md, "Concurrency").
   * Rows of different lengths are padded ({@link RunOptions.padding}).
   */
  async run(tokens: TokensInput | string, options: RunOptions = {}): Promise<RunOutput> {
    const batch = this.tokenBatch(tokens, options.padding);
    const result = await this.forward(batch, options);
    return {
      ...(result.logits ? { logits: new Tensor(result.logits) } : {}),
      cache: Object.fromEntries(Object.entries(result.cache).map(([k, v]) => [k, new Tensor(v)])),
      lengths: batch.lengths,
      padding: batch.padding,
    };
  }

  /**
   * Mean next-token cross-entropy in nats over all predictions of a real token from a real token
   * (all B x (T - 1) when nothing is padded; every row needs at least 2 tokens).
   */
  async loss(tokens: TokensInput | string, options: Omit<RunOptions, 'logits'> = {}): Promise<number> {
    const result = await this.forward(this.lossBatch(tokens, options.padding), options, 'mean');
    const loss = new Tensor(result.loss!);
    const value = loss.item();
    loss.dispose();
    result.logits?.dispose();
    return value;
  }

  /**
   * Next-token cross-entropy of every prediction, [B, T - 1] float32: entry t of a row is the loss
   * of predicting its token t+1 from position t of the (padded) batch. Entries that read or predict
   * a pad are NaN (so a sum over them cannot silently include pads); with left padding a row of n
   * tokens has its n - 1 losses at the end.
   */
  async lossPerToken(tokens: TokensInput | string, options: Omit<RunOptions, 'logits'> = {}): Promise<Tensor> {
    const result = await this.forward(this.lossBatch(tokens, options.padding), options, 'per-token');
    result.logits?.dispose();
    return new Tensor(result.loss!);
  }

  /** One native forward in this device's queue; JS callbacks lend the turn while they run. */
  private forward(batch: TokenBatch, options: RunOptions, loss?: 'mean' | 'per-token'): Promise<NativeRunResult> {
    const native = this.nativeOptions(options);
    const padding = batch.padded ? { lengths: Tensor.from(Int32Array.from(batch.lengths)).handle, padding: batch.padding } : {};
    return runOnDevice(
      this.device,
      (job) => this.handle.run(batch.tokens.handle, {
        ...native,
        mlp: native.mlp.map((m) => (m.fn ? { ...m, fn: job.callback(m.fn) } : m)),
        ...padding,
        ...(loss ? { loss } : {}),
      }),
      { callbacks: native.mlp.some((m) => m.fn !== undefined) },
    );
  }

  private lossBatch(tokens: TokensInput | string, padding: Padding | undefined): TokenBatch {
    const batch = this.tokenBatch(tokens, padding);
    const short = batch.lengths.findIndex((n) => n < 2);
    // Unpadded rows shorter than 2 (T = 1) get the native message, which says why.
    if (short >= 0 && batch.padded) throw new InvalidArgumentError(`the loss needs at least 2 tokens per row, row ${short} has ${batch.lengths[short]}`);
    return batch;
  }

  /** Names of the weights, TransformerLens style (`blocks.0.attn.W_Q`, `unembed.W_U`, ...). */
  weightNames(): string[] {
    return this.handle.weightNames();
  }

  /** A weight by TransformerLens name (shares memory with the model: do not modify). */
  weight(name: string): Tensor {
    return new Tensor(this.handle.weight(name));
  }

  /**
   * Trains the model itself: one Adam step per batch of `batches` ([S][B][T] token ids or an int
   * tensor [S, B, T]) on the mean next-token cross-entropy, backpropagated through the same forward
   * pass. Updates the weights in place and returns each step's loss. The first call fixes Adam's
   * betas and eps; later calls continue its state. Needs a model loaded with processing 'none'.
   */
  async train(batches: readonly (readonly (readonly number[])[])[] | Tensor, options: { lr: number; beta1?: number; beta2?: number; eps?: number; maxGradNorm?: number }): Promise<number[]> {
    if (this.processing !== 'none') throw new InvalidArgumentError("training a model needs its raw weights: load it with processing 'none'");
    if (!(options.lr > 0)) throw new InvalidArgumentError(`lr must be positive, got ${options.lr}`);
    let tokens: Tensor;
    if (batches instanceof Tensor) tokens = batches;
    else {
      const S = batches.length;
      const B = batches[0]?.length ?? 0;
      const T = batches[0]?.[0]?.length ?? 0;
      if (S === 0 || B === 0 || T < 2) throw new InvalidArgumentError('train needs [steps][batch][tokens] with at least 2 tokens per row');
      const flat = new Int32Array(S * B * T);
      batches.forEach((batch, s) => batch.forEach((row, b) => {
        if (batch.length !== B || row.length !== T) throw new InvalidArgumentError(`train: batch ${s} row ${b} does not have the shape [${B}][${T}] of the first batch`);
        row.forEach((id, t) => {
          if (!Number.isInteger(id) || id < 0 || id >= this.config.vocabSize) throw new InvalidArgumentError(`token id ${id} (batch ${s}, row ${b}, position ${t}) is out of range [0, ${this.config.vocabSize})`);
          flat[(s * B + b) * T + t] = id;
        });
      }));
      tokens = Tensor.from(flat, [S, B, T]);
    }
    return runOnDevice(this.device, () => this.handle.train(tokens.handle, options));
  }

  /** The weights under their Hugging Face checkpoint names (raw-weight models only). */
  huggingFaceWeights(): Record<string, Tensor> {
    return Object.fromEntries(Object.entries(this.handle.huggingFaceWeights()).map(([k, v]) => [k, new Tensor(v)]));
  }

  /** Releases the weights now. */
  dispose(): void {
    this.handle.dispose();
  }

  private tokenBatch(tokens: TokensInput | string, padding: Padding = 'right'): TokenBatch {
    if (!PADDINGS.includes(padding)) throw new InvalidArgumentError(`padding must be 'right' or 'left', got ${typeof padding === 'string' ? `'${padding}'` : String(padding)}`);
    if (typeof tokens === 'string') tokens = this.tokenize(tokens);
    const whole = (t: Tensor): TokenBatch => {
      // A tensor is rectangular: every position is real. A shape the forward refuses, or a disposed
      // tensor, gets no lengths: the native side then says what is wrong with it.
      const s = t.disposed ? [] : t.shape;
      const lengths = s.length === 1 ? [s[0]!] : s.length === 2 ? Array.from({ length: s[0]! }, () => s[1]!) : [];
      return { tokens: t, lengths, padded: false, padding };
    };
    if (tokens instanceof Tensor) return whole(tokens);
    if (tokens instanceof Int32Array) return whole(Tensor.from(tokens, [1, tokens.length], { share: false }));
    if (!Array.isArray(tokens)) {
      const got = typeof tokens === 'object' && tokens !== null ? tokens.constructor?.name ?? 'object' : String(tokens);
      throw new InvalidArgumentError(`tokens must be a string, an array of ids, an array of rows, an Int32Array or a Tensor; got ${got}`);
    }
    const rows: readonly (readonly number[])[] = tokens.length > 0 && Array.isArray(tokens[0]) ? (tokens as readonly (readonly number[])[]) : [tokens as readonly number[]];
    rows.forEach((row, b) => {
      if (!Array.isArray(row)) throw new InvalidArgumentError(`tokens: row ${b} is not an array of token ids (got ${row === null ? 'null' : typeof row})`);
    });
    const lengths = rows.map((row) => row.length);
    const T = Math.max(0, ...lengths);
    if (rows.length === 0 || T === 0) throw new InvalidArgumentError('tokens must not be empty');
    const empty = lengths.indexOf(0);
    if (empty >= 0) throw new InvalidArgumentError(`tokens: row ${empty} is empty (every row of a batch needs at least one token)`);
    // Pads hold id 0 (any valid id would do: they are masked out).
    const flat = new Int32Array(rows.length * T);
    rows.forEach((row, b) => {
      const offset = padding === 'left' ? T - row.length : 0;
      row.forEach((id, t) => {
        if (!Number.isInteger(id)) {
          throw new InvalidArgumentError(`token id ${typeof id === 'number' ? id : JSON.stringify(id)} (row ${b}, position ${t}) is not an integer`);
        }
        if (id < 0 || id >= this.config.vocabSize) {
          throw new InvalidArgumentError(`token id ${id} (row ${b}, position ${t}) is out of range [0, ${this.config.vocabSize})`);
        }
        flat[b * T + offset + t] = id;
      });
    });
    return { tokens: Tensor.from(flat, [rows.length, T]), lengths, padded: lengths.some((n) => n < T), padding };
  }

  private nativeOptions(options: RunOptions): { hooks: string[]; mlp: NativeMlpReplacement[]; grad: boolean; logits: boolean } {
    const mlp: NativeMlpReplacement[] = [];
    const timeout = options.callbackTimeoutMs ?? DEFAULT_CALLBACK_TIMEOUT_MS;
    if (!(timeout > 0) || !Number.isFinite(timeout)) throw new InvalidArgumentError(`callbackTimeoutMs must be a positive number of milliseconds, got ${String(options.callbackTimeoutMs)}`);
    for (const [key, spec] of Object.entries(options.replaceMlp ?? {})) {
      const layer = Number(key);
      if (!Number.isInteger(layer) || layer < 0 || layer >= this.config.nLayers) {
        throw new InvalidArgumentError(`replaceMlp: layer ${key} does not exist (the model has ${this.config.nLayers} layers)`);
      }
      if (spec === 'zero' || spec === 'mean') mlp.push({ layer, kind: spec });
      else if (isNativeModule(spec)) mlp.push({ layer, kind: 'transcoder', transcoder: spec.handle });
      else if (typeof spec === 'object' && spec !== null && 'module' in spec && isNativeModule(spec.module)) {
        if (spec.keep !== undefined && !(spec.keep instanceof Tensor)) throw new InvalidArgumentError(`replaceMlp[${layer}].keep must be a Tensor [dSae]`);
        mlp.push({ layer, kind: 'transcoder', transcoder: spec.module.handle, ...(spec.keep ? { keep: spec.keep.handle } : {}) });
      } else if (typeof spec === 'function') {
        mlp.push({
          layer,
          kind: 'callback',
          fn: async (input, original, l) => {
            const out = await settleWithin(spec(new Tensor(input), new Tensor(original!), l), timeout, `the replaceMlp callback of layer ${l}`);
            if (!(out instanceof Tensor)) throw new InvalidArgumentError(`the replaceMlp callback of layer ${l} must return a Tensor`);
            return out.handle;
          },
        });
      } else if (typeof spec === 'object' && spec !== null && 'mean' in spec && spec.mean instanceof Tensor) mlp.push({ layer, kind: 'mean', value: spec.mean.handle });
      else if (typeof spec === 'object' && spec !== null && 'value' in spec && spec.value instanceof Tensor) mlp.push({ layer, kind: 'value', value: spec.value.handle });
      else {
        const got = typeof spec === 'string' ? `'${spec}'` : spec === null ? 'null' : typeof spec;
        throw new InvalidArgumentError(`replaceMlp[${layer}]: expected 'zero', 'mean', { mean: Tensor }, { value: Tensor }, a Transcoder, { module: Transcoder, keep } or a function, got ${got}`);
      }
    }
    if (options.crossLayer !== undefined) {
      const spec = options.crossLayer;
      const module = 'module' in spec ? spec.module : spec;
      const keep = 'module' in spec ? spec.keep : undefined;
      if (module?.config?.kind !== 'cross_layer_transcoder') throw new InvalidArgumentError('crossLayer must be a CrossLayerTranscoder or { module: CrossLayerTranscoder, keep }');
      if (keep !== undefined && !(keep instanceof Tensor)) throw new InvalidArgumentError('crossLayer.keep must be a Tensor [nLayers, dSae]');
      mlp.push({ layer: 0, kind: 'crossLayer', transcoder: module.handle, ...(keep ? { keep: keep.handle } : {}) });
    }
    return {
      hooks: selectHooks(options.cache ?? [], this.hookNames),
      mlp,
      grad: options.grad ?? false,
      logits: options.logits ?? true,
    };
  }
}

/**
 * Loads a GPT-2 or GPT-NeoX/Pythia model from a local Hugging Face folder (config.json,
 * model.safetensors or sharded safetensors, tokenizer.json), or from the local Hugging Face hub cache
 * when `dir` is a repo id (`org/name[@revision]`) and no such local path exists (offline; see
 * lib/io/hf-cache.ts). Validation errors name the file and field; the weights are read off the JS thread.
 */
export async function loadModel(dir: string, options: LoadModelOptions = {}): Promise<Model> {
  const folder = resolveModelSource(dir);
  const processing = options.processing ?? 'none';
  const dtype = options.dtype ?? 'float32';
  const device = options.device ?? 'cpu';
  if (!PROCESSINGS.includes(processing)) throw new InvalidArgumentError(`processing must be one of ${PROCESSINGS.join(', ')}, got '${processing}'`);
  if (typeof device !== 'string') throw new InvalidArgumentError(`device must be a string ('cpu', 'cuda' or 'cuda:N'), got ${JSON.stringify(device)}`);
  if (!MODEL_DTYPES.includes(dtype)) throw new InvalidArgumentError(`dtype must be one of ${MODEL_DTYPES.join(', ')}, got '${dtype}'`);
  if (!existsSync(folder)) throw new InvalidArgumentError(`model folder ${folder} does not exist`);
  const config = readModelConfig(folder);
  const files = resolveCheckpoint(folder, config);
  // BOS: tokenizer_config.json's add_bos_token when it says, else the family's default (see BosDecision).
  const tokenizer = loadFolderTokenizer(folder, config);
  if (options.nonFinite !== undefined && options.nonFinite !== 'warn' && options.nonFinite !== 'error') {
    throw new InvalidArgumentError(`nonFinite must be 'warn' or 'error', got '${String(options.nonFinite)}'`);
  }
  const handle = await native().Model.load({ config, files, device, dtype, processing, source: folder });
  const bad = handle.nonFiniteWeights();
  if (bad.length > 0) {
    const message = `${folder}: ${bad.length} weight${bad.length > 1 ? 's hold' : ' holds'} NaN or infinite values (${bad.slice(0, 5).join(', ')}${bad.length > 5 ? ', ...' : ''}): every output that reads them will be NaN`;
    if (options.nonFinite === 'error') {
      handle.dispose();
      throw new NumericalError(message);
    }
    process.emitWarning(message, { code: 'TRANSCODERS_NON_FINITE_WEIGHTS' });
  }
  return new Model({ dir: folder, config, processing, device, dtype, tokenizer, handle });
}
