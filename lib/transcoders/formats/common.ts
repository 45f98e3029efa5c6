/**
 * Helpers shared by the foreign transcoder formats (SAELens, circuit-tracer, sparsify): strict
 * reading of their config and tensor files (every problem a FormatError naming the file and the
 * key), the layout conversions they need (transposes, folding our input pre-bias into the encoder
 * bias), and the options common to their loaders.
 */
import { accessSync, constants, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { FormatError, InvalidArgumentError } from '../../errors.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { repoIdOfCachePath } from '../../io/hf-cache.js';
import { capReason, describe, readJsonObjectFile } from '../../io/json.js';
import { loadSafetensorsTensors, readSafetensorsHeader, type RawTensor, type SafetensorsEntry, type SafetensorsHeader } from '../../io/safetensors.js';
import type { Processing } from '../../models/model.js';
import { Tensor } from '../../tensor.js';
import { validateTranscoderConfig, type TranscoderConfig } from '../config.js';
import { Transcoder, type ParameterName, type PlacementOptions } from '../transcoder.js';
import type { InputFold } from './raw-model.js';

/**
 * Options of the foreign-format loaders: where the parameters go, and overrides for what the
 * files do not say (or say differently from what the caller wants).
 */
export interface ForeignLoadOptions extends PlacementOptions {
  /** Layer index (otherwise taken from the file or folder name, or the config). */
  layer?: number;
  /** Absolute hook names (e.g. `blocks.8.ln2.hook_normalized`); override the file's. */
  hookIn?: string;
  hookOut?: string;
  modelName?: string | null;
  /** Weight processing the model must be loaded with; overrides the format's default. */
  processing?: Processing | null;
}

export const FLOAT_CODES = ['F32', 'F16', 'BF16', 'F64'] as const;
export const INT_CODES = ['I64', 'I32', 'I16', 'I8', 'U8'] as const;

type JsonObject = Record<string, unknown>;

/** Reads a JSON object from `file` (FormatError when missing, malformed, too deeply nested, or not an object). */
export function readJsonObject(file: string): JsonObject {
  return readJsonObjectFile(file);
}

/** Typed access to the fields of a config object, failing with FormatErrors that name the file and key. */
export class ConfigReader {
  constructor(
    readonly file: string,
    readonly obj: JsonObject,
    /** Looked up when a key is absent at the top level (SAELens 6 nests some fields in `metadata`). */
    readonly fallback: JsonObject | null = null,
  ) {}

  fail(why: string): never {
    throw new FormatError(`${this.file}: ${capReason(why)}`, this.file);
  }

  has(key: string): boolean {
    return this.get(key) !== undefined;
  }

  /** The value of the first present key (null counts as present). */
  get(...keys: string[]): unknown {
    for (const key of keys) {
      if (Object.hasOwn(this.obj, key)) return this.obj[key];
      if (this.fallback && Object.hasOwn(this.fallback, key)) return this.fallback[key];
    }
    return undefined;
  }

  /** A positive integer, or `undefined` when absent (or null, or 0 when `zeroIsAbsent`). */
  optionalPositiveInt(key: string, { zeroIsAbsent = false } = {}): number | undefined {
    const v = this.get(key);
    if (v === undefined || v === null || (zeroIsAbsent && v === 0)) return undefined;
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) this.fail(`'${key}' must be a positive integer, got ${describe(v)}`);
    return v as number;
  }

  positiveInt(key: string): number {
    const v = this.optionalPositiveInt(key);
    if (v === undefined) this.fail(`missing '${key}'`);
    return v as number;
  }

  optionalString(...keys: string[]): string | undefined {
    const v = this.get(...keys);
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string') this.fail(`'${keys[0]}' must be a string, got ${describe(v)}`);
    return v as string;
  }

  optionalBool(key: string): boolean | undefined {
    const v = this.get(key);
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'boolean') this.fail(`'${key}' must be true or false, got ${describe(v)}`);
    return v as boolean;
  }
}

/** A safetensors file whose tensors are checked one by one against what a format expects. */
export class TensorFile {
  readonly header: SafetensorsHeader;
  readonly file: string;
  private readonly used = new Set<string>();

  constructor(file: string) {
    this.file = file;
    this.header = readSafetensorsHeader(file);
  }

  fail(why: string): never {
    throw new FormatError(`${this.file}: ${capReason(why)}`, this.file);
  }

  has(key: string): boolean {
    return this.header.entries.has(key);
  }

  /** The entry of `key`, which must exist and be a floating-point tensor of `rank` dimensions. */
  float(key: string, rank: number): SafetensorsEntry {
    const e = this.header.entries.get(key);
    if (!e) this.fail(`missing tensor '${key}'`);
    if (!(FLOAT_CODES as readonly string[]).includes(e!.dtype)) this.fail(`tensor '${key}' has dtype ${e!.dtype}, expected a floating-point dtype (${FLOAT_CODES.join(', ')})`);
    if (e!.shape.length !== rank) this.fail(`tensor '${key}' has shape [${e!.shape}], expected ${rank} dimension${rank === 1 ? '' : 's'}`);
    this.used.add(key);
    return e!;
  }

  /** Checks that `key` (a float tensor) has exactly `shape`; `why` explains where the shape comes from. */
  expect(key: string, shape: readonly number[], why: string): SafetensorsEntry {
    const e = this.float(key, shape.length);
    if (e.shape.join(',') !== shape.join(',')) this.fail(`tensor '${key}' has shape [${e.shape}], expected [${shape}] (${why})`);
    return e;
  }

  /** An integer scalar stored as a 0-d or 1-element tensor. */
  async intScalar(key: string): Promise<number> {
    const e = this.header.entries.get(key);
    if (!e) this.fail(`missing tensor '${key}'`);
    if (!(INT_CODES as readonly string[]).includes(e!.dtype)) this.fail(`tensor '${key}' has dtype ${e!.dtype}, expected an integer dtype (${INT_CODES.join(', ')})`);
    if (e!.shape.reduce((a, b) => a * b, 1) !== 1 || e!.shape.length > 1) this.fail(`tensor '${key}' has shape [${e!.shape}], expected a single integer`);
    this.used.add(key);
    const t = (await loadSafetensorsTensors(this.header, [key]))[key]!;
    const v = t.item();
    t.dispose();
    return v;
  }

  /** Fails on tensors no check has looked at (their meaning is unknown, so ignoring them could be wrong). */
  rejectUnused(): void {
    for (const key of this.header.entries.keys()) {
      if (!this.used.has(key)) this.fail(`unexpected tensor '${key}' (expected only ${[...this.used].map((k) => `'${k}'`).join(', ')})`);
    }
  }

  /** Loads the named tensors onto the CPU in their stored dtype. */
  async load(keys: readonly string[]): Promise<Record<string, Tensor>> {
    return loadSafetensorsTensors(this.header, keys);
  }
}

/** The elements of a float tensor, widened to float32 (float64 kept). */
export function floatData(t: Tensor): Float32Array | Float64Array {
  return t.dtype === 'float64' ? (t.toTypedArray() as Float64Array) : t.toFloat32Array();
}

/** [rows, cols] row-major -> [cols, rows] row-major (blocked for cache locality). */
export function transposeData<T extends Float32Array | Float64Array>(src: T, rows: number, cols: number): T {
  const dst = new (src.constructor as { new (n: number): T })(src.length);
  const B = 64;
  for (let r0 = 0; r0 < rows; r0 += B) {
    const r1 = Math.min(rows, r0 + B);
    for (let c0 = 0; c0 < cols; c0 += B) {
      const c1 = Math.min(cols, c0 + B);
      for (let r = r0; r < r1; r++) {
        const rowOffset = r * cols;
        for (let c = c0; c < c1; c++) dst[c * rows + r] = src[rowOffset + c]!;
      }
    }
  }
  return dst;
}

/** The transpose of a 2-d float tensor, as a new CPU tensor (float32, or float64 for float64). */
export function transposed(t: Tensor): Tensor {
  const [rows, cols] = t.shape as [number, number];
  return Tensor.from(transposeData(floatData(t), rows, cols), [cols, rows]);
}

/** A new tensor with `fn` applied to every element. */
export function mapped(t: Tensor, fn: (v: number) => number): Tensor {
  const data = floatData(t);
  const out = new (data.constructor as { new (n: number): Float32Array | Float64Array })(data.length);
  for (let i = 0; i < data.length; i++) out[i] = fn(data[i]!);
  return Tensor.from(out, t.shape);
}

export function zeros(n: number): Tensor {
  return Tensor.from(new Float32Array(n), [n]);
}

/** The layer of a TransformerLens hook name (`blocks.8.hook_mlp_out` -> 8), or undefined. */
export function layerOfHook(hook: string | undefined): number | undefined {
  const m = hook ? /^blocks\.(\d+)\./.exec(hook) : null;
  return m ? Number(m[1]) : undefined;
}

/**
 * Builds the transcoder from a configuration read from a file (errors become FormatErrors naming
 * `file`) and its parameters; the given tensors are released afterwards (the transcoder holds copies).
 */
export async function buildTranscoder(
  file: string,
  config: Partial<TranscoderConfig>,
  options: ForeignLoadOptions,
  params: Partial<Record<ParameterName, Tensor>>,
  extra: Tensor[] = [],
): Promise<Transcoder> {
  const merged: Partial<TranscoderConfig> = { ...config };
  if (options.layer !== undefined) merged.layer = options.layer;
  if (options.hookIn !== undefined) merged.hookIn = options.hookIn;
  if (options.hookOut !== undefined) merged.hookOut = options.hookOut;
  if (options.modelName !== undefined) merged.modelName = options.modelName;
  if (options.processing !== undefined) merged.processing = options.processing;
  let cfg: TranscoderConfig;
  try {
    cfg = validateTranscoderConfig(merged, file);
  } catch (err) {
    throw new FormatError((err as Error).message, file);
  }
  try {
    return await Transcoder.fromParameters(cfg, params, { device: options.device, dtype: options.dtype });
  } finally {
    for (const t of [...Object.values(params), ...extra]) if (t && !t.disposed) t.dispose();
  }
}

/** Our parameters as float32 arrays in the layout the exporters need. */
export interface ExportArrays {
  config: TranscoderConfig;
  /** W_enc with the input fold applied (see raw-model.ts); ours when there is none. */
  W_enc: Float32Array;
  /** b_enc with our input pre-bias (and the fold's input shift) folded in, so the pre-activations are unchanged. */
  b_enc: Float32Array;
  W_dec: Float32Array;
  /** Our output bias, plus the skip path's share of the fold's input shift. */
  b_dec_out: Float32Array;
  W_skip?: Float32Array;
  threshold?: Float32Array;
}

/**
 * Reads a transcoder's parameters (copied to the CPU, as float32; arithmetic in float64) for a
 * format without an input pre-bias, optionally re-expressed on another input (`fold`, see
 * raw-model.ts): with the input the transcoder was trained on x = x' M + m (M = I, m = 0 without
 * a fold; M = diag(1/w), m = −b/w to undo a LayerNorm; M = I − 11ᵀ/d, m = 0 to undo centring),
 *
 *   (x − b_dec) W_enc + b_enc = x' (M W_enc) + (b_enc + (m − b_dec) W_enc)
 *   x W_skip + b_dec_out       = x' (M W_skip) + (b_dec_out + m W_skip).
 */
export function exportArrays(tc: Transcoder, fold: InputFold = { kind: 'none' }): ExportArrays {
  if (!(tc instanceof Transcoder)) throw new InvalidArgumentError('expected a Transcoder');
  const c = tc.config;
  const p = tc.parameters();
  const W_enc = p.W_enc.toFloat32Array();
  const b_dec = p.b_dec.toFloat32Array();
  const b_enc = p.b_enc.toFloat32Array();
  const b_dec_out = p.b_dec_out.toFloat32Array();
  const W_skip = c.skip ? p.W_skip.toFloat32Array() : undefined;
  const shift = new Float64Array(c.dIn);
  if (fold.kind === 'layernorm') for (let i = 0; i < c.dIn; i++) shift[i] = -fold.b[i]! / fold.w[i]!;

  const encBias = Float64Array.from(b_enc);
  addRowCombination(encBias, W_enc, c.dIn, c.dSae, (i) => shift[i]! - b_dec[i]!);
  b_enc.set(encBias);
  let outBias = b_dec_out;
  if (W_skip && fold.kind === 'layernorm') {
    const acc = Float64Array.from(b_dec_out);
    addRowCombination(acc, W_skip, c.dIn, c.dOut, (i) => shift[i]!);
    outBias = Float32Array.from(acc);
  }
  return {
    config: c,
    W_enc: applyInputMap(W_enc, c.dIn, c.dSae, fold),
    b_enc,
    W_dec: p.W_dec.toFloat32Array(),
    b_dec_out: outBias,
    ...(W_skip ? { W_skip: applyInputMap(W_skip, c.dIn, c.dOut, fold) } : {}),
    ...(c.arch === 'jumprelu' ? { threshold: p.threshold.toFloat32Array() } : {}),
  };
}

/** acc += Σ_i coef(i) · W[i, :] for W [rows, cols] row-major (zero coefficients skipped). */
function addRowCombination(acc: Float64Array, W: Float32Array, rows: number, cols: number, coef: (i: number) => number): void {
  for (let i = 0; i < rows; i++) {
    const a = coef(i);
    if (a === 0) continue;
    const row = i * cols;
    for (let j = 0; j < cols; j++) acc[j]! += a * W[row + j]!;
  }
}

/** M W for W [rows = d_in, cols], M the fold's linear part (see exportArrays). */
function applyInputMap(W: Float32Array, rows: number, cols: number, fold: InputFold): Float32Array {
  if (fold.kind === 'none') return W;
  const out = new Float32Array(W.length);
  if (fold.kind === 'layernorm') {
    for (let i = 0; i < rows; i++) {
      const inv = 1 / fold.w[i]!;
      const row = i * cols;
      for (let j = 0; j < cols; j++) out[row + j] = W[row + j]! * inv;
    }
    return out;
  }
  const mean = new Float64Array(cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) mean[j]! += W[i * cols + j]!;
  for (let j = 0; j < cols; j++) mean[j]! /= rows;
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[i * cols + j] = W[i * cols + j]! - mean[j]!;
  return out;
}

/**
 * The model name to write into a foreign config: Hugging Face ids are kept; a local folder
 * (ours record the folder a transcoder was trained from) becomes the `_name_or_path` of its
 * config.json when that is an id, else the folder's name (a snapshot of the Hugging Face hub cache:
 * its repo id); other paths their last component.
 */
export function exportedModelName(modelName: string | null | undefined): string | null {
  if (!modelName) return null;
  // A snapshot of the Hugging Face hub cache (what loading `org/name` resolves to) is that repo.
  if (isAbsolute(modelName)) {
    const cached = repoIdOfCachePath(modelName);
    if (cached) return cached;
  }
  const looksLikePath = (s: string) => isAbsolute(s) || s.startsWith('./') || s.startsWith('../') || s.includes('\\');
  let isDir = false;
  try {
    isDir = statSync(modelName).isDirectory();
  } catch {
    // not a local path
  }
  if (isDir) {
    try {
      const cfg = JSON.parse(readFileSync(join(modelName, 'config.json'), 'utf8')) as Record<string, unknown>;
      const id = cfg._name_or_path;
      if (typeof id === 'string' && id !== '' && !looksLikePath(id) && !existsSync(id)) return id;
    } catch {
      // no readable config.json: fall back to the folder's name
    }
    return basename(resolve(modelName));
  }
  return looksLikePath(modelName) ? basename(modelName) : modelName;
}

/** An export whose inputs are validated and whose arrays are computed; `write` only writes. */
export interface PreparedExport {
  write(dir: string): void;
}

/**
 * Checks, before anything is written, that `dir` can be an output folder (absent, or a folder) and
 * creates it; InvalidArgumentError naming the path otherwise.
 */
export function prepareOutputFolder(dir: string, who: string): void {
  let stat;
  try {
    stat = statSync(dir);
  } catch {
    stat = null;
  }
  if (stat && !stat.isDirectory()) throw new InvalidArgumentError(`${who}: ${dir} exists and is not a folder`);
  try {
    mkdirSync(dir, { recursive: true });
    accessSync(dir, constants.W_OK);
  } catch (err) {
    throw new InvalidArgumentError(`${who}: cannot write to the folder ${dir} (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
}

/** Checks that `file` can be written (not a folder; its folder usable, see prepareOutputFolder). */
export function prepareOutputFile(file: string, who: string): void {
  let isDir = false;
  try {
    isDir = statSync(file).isDirectory();
  } catch {
    // absent: fine
  }
  if (isDir) throw new InvalidArgumentError(`${who}: ${file} is a folder; expected the path of a file to write`);
  prepareOutputFolder(dirname(file), who);
}

/** A float32 array as a safetensors tensor. */
export function rawF32(data: Float32Array, shape: number[]): RawTensor {
  return { dtype: 'F32', shape, bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}

/** Writes `obj` as pretty JSON, atomically. */
export function writeJsonAtomic(file: string, obj: unknown): void {
  writeFileAtomic(file, [JSON.stringify(obj, null, 2) + '\n']);
}
