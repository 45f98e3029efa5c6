/**
 * Activation caches: the (input, target) activations of one or more layers written to disk once,
 * so that training runs (hyper-parameter sweeps, other seeds) can read them instead of running the
 * model. Layout: `DIR/layer_L/meta.json` and `DIR/layer_L/shard_00000.safetensors`, ... each shard
 * holding `input` [rows, d_in] and `target` [rows, d_out] (float32 or bfloat16), rows in token order.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { readTokenFileHeader, readTokenRows } from '../data/token-file.js';
import { FormatError, InvalidArgumentError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { readSafetensorsHeader, writeSafetensors, type RawTensor, type SafetensorsEntry } from '../io/safetensors.js';
import type { Model } from '../models/model.js';
import { mlpHooks } from './config.js';

export const CACHE_FORMAT = 'transcoders-activations';
export const META_FILE = 'meta.json';

export interface CacheMeta {
  format: typeof CACHE_FORMAT;
  version: 1;
  model: string;
  processing: string;
  layer: number;
  hookIn: string;
  hookOut: string;
  dtype: 'float32' | 'bfloat16';
  dIn: number;
  dOut: number;
  /** Total rows (token positions). */
  count: number;
  contextSize: number;
  tokenFile: string;
  shards: { file: string; rows: number }[];
}

/** A shard as the native trainer reads it. */
export interface CacheShard {
  path: string;
  dataStart: number;
  rows: number;
  dIn: number;
  dOut: number;
  entries: SafetensorsEntry[];
}

export interface CacheOptions {
  /** Token rows per model forward (default 8). */
  sequencesPerForward?: number;
  /** Rows per shard (default 65536). */
  shardRows?: number;
  dtype?: 'float32' | 'bfloat16';
  /** Use only the first this-many token rows. */
  maxSequences?: number;
  onProgress?: (done: number, total: number) => void;
}

/** Writes the activation cache of `layers` for the rows of a token file. */
export async function writeActivationCache(model: Model, tokenFile: string, layers: number[], out: string, options: CacheOptions = {}): Promise<CacheMeta[]> {
  const header = readTokenFileHeader(tokenFile);
  const total = Math.min(header.rows, options.maxSequences ?? Infinity);
  const perForward = options.sequencesPerForward ?? 8;
  const shardRows = options.shardRows ?? 65536;
  const dtype = options.dtype ?? 'float32';
  if (layers.length === 0) throw new InvalidArgumentError('cache at least one layer');
  for (const l of layers) if (!Number.isInteger(l) || l < 0 || l >= model.config.nLayers) throw new InvalidArgumentError(`layer ${l} is not a layer of the model`);
  const d = model.config.dModel;
  const state = layers.map((layer) => {
    const dir = join(resolve(out), `layer_${layer}`);
    mkdirSync(dir, { recursive: true });
    return { layer, dir, pending: [] as { input: Uint8Array; target: Uint8Array; rows: number }[], pendingRows: 0, shards: [] as { file: string; rows: number }[], count: 0 };
  });
  const flush = (s: (typeof state)[number]) => {
    if (s.pendingRows === 0) return;
    const file = `shard_${String(s.shards.length).padStart(5, '0')}.safetensors`;
    const concat = (parts: Uint8Array[]) => Buffer.concat(parts);
    const code = dtype === 'float32' ? 'F32' : 'BF16';
    const tensors: Record<string, RawTensor> = {
      input: { dtype: code, shape: [s.pendingRows, d], bytes: concat(s.pending.map((p) => p.input)) },
      target: { dtype: code, shape: [s.pendingRows, d], bytes: concat(s.pending.map((p) => p.target)) },
    };
    writeSafetensors(join(s.dir, file), tensors);
    s.shards.push({ file, rows: s.pendingRows });
    s.count += s.pendingRows;
    s.pending = [];
    s.pendingRows = 0;
  };
  for (let start = 0; start < total; start += perForward) {
    const n = Math.min(perForward, total - start);
    const flat = await readTokenRows(header, start, n);
    const rows = Array.from({ length: n }, (_, i) => Array.from(flat.subarray(i * header.contextSize, (i + 1) * header.contextSize)));
    const { cache } = await model.run(rows, { cache: layers.flatMap((l) => [mlpHooks(l).hookIn, mlpHooks(l).hookOut]), logits: false });
    for (const s of state) {
      const [x, y] = [cache[mlpHooks(s.layer).hookIn]!, cache[mlpHooks(s.layer).hookOut]!];
      const bytes = async (t: typeof x) => (dtype === 'float32' ? t.handle.rawBytes() : (await t.to({ dtype: 'bfloat16', device: 'cpu' })).handle.rawBytes());
      s.pending.push({ input: await bytes(x), target: await bytes(y), rows: n * header.contextSize });
      s.pendingRows += n * header.contextSize;
      if (s.pendingRows >= shardRows) flush(s);
    }
    options.onProgress?.(start + n, total);
  }
  return state.map((s) => {
    flush(s);
    const meta: CacheMeta = {
      format: CACHE_FORMAT, version: 1, model: model.dir, processing: model.processing, layer: s.layer, ...mlpHooks(s.layer),
      dtype, dIn: d, dOut: d, count: s.count, contextSize: header.contextSize, tokenFile: resolve(tokenFile), shards: s.shards,
    };
    writeFileAtomic(join(s.dir, META_FILE), [JSON.stringify(meta, null, 2) + '\n']);
    return meta;
  });
}

/** Reads a cache folder's meta.json. */
export function readCacheMeta(dir: string): CacheMeta {
  const file = join(dir, META_FILE);
  if (!existsSync(file)) {
    const layers = existsSync(dir) ? readdirSync(dir).filter((n) => /^layer_\d+$/.test(n)) : [];
    const hint = layers.length ? ` (it holds ${layers.join(', ')}: point at one of them)` : '';
    throw new FormatError(`${dir}: not an activation cache folder, no ${META_FILE}${hint}`, dir);
  }
  let meta: CacheMeta;
  try {
    meta = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new FormatError(`${file}: invalid JSON (${(err as Error).message})`, file);
  }
  if (meta.format !== CACHE_FORMAT || !Array.isArray(meta.shards)) throw new FormatError(`${file}: not a ${CACHE_FORMAT} meta.json`, file);
  return meta;
}

/** The shards of a cache folder in path order, validated (dtype, shapes, row counts). */
export function readCacheShards(dir: string): CacheShard[] {
  const meta = readCacheMeta(dir);
  return meta.shards.map((s) => s.file).sort().map((file) => {
    const path = join(dir, file);
    const header = readSafetensorsHeader(path);
    const input = header.entries.get('input');
    const target = header.entries.get('target');
    if (!input || !target) throw new FormatError(`${path}: a cache shard needs tensors 'input' and 'target'`, path);
    if (input.shape.length !== 2 || target.shape.length !== 2 || input.shape[0] !== target.shape[0]) {
      throw new FormatError(`${path}: 'input' [${input.shape}] and 'target' [${target.shape}] must be [rows, d] with the same rows`, path);
    }
    for (const e of [input, target]) {
      if (!['F32', 'BF16', 'F16'].includes(e.dtype)) throw new FormatError(`${path}: '${e.key}' has dtype ${e.dtype}, expected F32 or BF16`, path);
    }
    return { path, dataStart: header.dataStart, rows: input.shape[0]!, dIn: input.shape[1]!, dOut: target.shape[1]!, entries: [input, target] };
  });
}
