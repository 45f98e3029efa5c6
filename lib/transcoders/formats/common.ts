/**
 * Helpers shared by the foreign transcoder formats (SAELens, circuit-tracer, sparsify): strict
 * reading of their config and tensor files (every problem a FormatError naming the file and the
 * key), the layout conversions they need (transposes, folding our input pre-bias into the encoder
 * bias), and the options common to their loaders.
 */
import { readFileSync } from 'node:fs';
import { FormatError, InvalidArgumentError } from '../../errors.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { loadSafetensorsTensors, readSafetensorsHeader, type RawTensor, type SafetensorsEntry, type SafetensorsHeader } from '../../io/safetensors.js';
import type { Processing } from '../../models/model.js';
import { Tensor } from '../../tensor.js';
import { validateTranscoderConfig, type TranscoderConfig } from '../config.js';
import { Transcoder, type ParameterName, type PlacementOptions } from '../transcoder.js';

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

/** Reads a JSON object from `file` (FormatError when missing, malformed, or not an object). */
export function readJsonObject(file: string): JsonObject {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new FormatError(`${file}: ${(err as NodeJS.ErrnoException).code ? 'cannot read' : 'invalid JSON'} (${(err as Error).message})`, file);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new FormatError(`${file}: expected a JSON object`, file);
  return raw as JsonObject;
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
    throw new FormatError(`${this.file}: ${why}`, this.file);
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
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) this.fail(`'${key}' must be a positive integer, got ${JSON.stringify(v)}`);
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
    if (typeof v !== 'string') this.fail(`'${keys[0]}' must be a string, got ${JSON.stringify(v)}`);
    return v as string;
  }

  optionalBool(key: string): boolean | undefined {
    const v = this.get(key);
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'boolean') this.fail(`'${key}' must be true or false, got ${JSON.stringify(v)}`);
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
    throw new FormatError(`${this.file}: ${why}`, this.file);
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
  W_enc: Float32Array;
  /** b_enc with our input pre-bias folded in: b_enc - b_dec W_enc (so the pre-activations are unchanged). */
  b_enc: Float32Array;
  W_dec: Float32Array;
  b_dec_out: Float32Array;
  W_skip?: Float32Array;
  threshold?: Float32Array;
}

/**
 * Reads a transcoder's parameters (copied to the CPU, as float32) and folds the input pre-bias
 * b_dec into the encoder bias: (x - b_dec) W_enc + b_enc = x W_enc + (b_enc - b_dec W_enc). The skip
 * path reads the raw x, so it is unaffected.
 */
export function exportArrays(tc: Transcoder): ExportArrays {
  if (!(tc instanceof Transcoder)) throw new InvalidArgumentError('expected a Transcoder');
  const c = tc.config;
  const p = tc.parameters();
  const W_enc = p.W_enc.toFloat32Array();
  const b_dec = p.b_dec.toFloat32Array();
  const b_enc = p.b_enc.toFloat32Array();
  if (b_dec.some((v) => v !== 0)) {
    const acc = Float64Array.from(b_enc);
    for (let i = 0; i < c.dIn; i++) {
      const bi = b_dec[i]!;
      if (bi === 0) continue;
      const row = i * c.dSae;
      for (let j = 0; j < c.dSae; j++) acc[j]! -= bi * W_enc[row + j]!;
    }
    b_enc.set(acc);
  }
  return {
    config: c,
    W_enc,
    b_enc,
    W_dec: p.W_dec.toFloat32Array(),
    b_dec_out: p.b_dec_out.toFloat32Array(),
    ...(c.skip ? { W_skip: p.W_skip.toFloat32Array() } : {}),
    ...(c.arch === 'jumprelu' ? { threshold: p.threshold.toFloat32Array() } : {}),
  };
}

/** A float32 array as a safetensors tensor. */
export function rawF32(data: Float32Array, shape: number[]): RawTensor {
  return { dtype: 'F32', shape, bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}

/** A 0-d int64 tensor (what `torch.tensor(k)` saves). */
export function rawI64Scalar(v: number): RawTensor {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigInt64(0, BigInt(v), true);
  return { dtype: 'I64', shape: [], bytes };
}

/** Writes `obj` as pretty JSON, atomically. */
export function writeJsonAtomic(file: string, obj: unknown): void {
  writeFileAtomic(file, [JSON.stringify(obj, null, 2) + '\n']);
}
