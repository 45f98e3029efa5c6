/**
 * Activation caches: the (input, target) activations of one or more layers written to disk once,
 * so that training runs (hyper-parameter sweeps, other seeds) can read them instead of running the
 * model. Layout: `DIR/layer_L/meta.json` and `DIR/layer_L/shard_00000.safetensors`, ... each shard
 * holding `input` [rows, d_in] and `target` [rows, d_out] (float32 or bfloat16), rows in token order.
 */
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { readTokenFileHeader, readTokenRows } from '../data/token-file.js';
import { FormatError, InvalidArgumentError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { describe, readJsonFile } from '../io/json.js';
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
  const arch = model.config.arch;
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
    const { cache } = await model.run(rows, { cache: layers.flatMap((l) => [mlpHooks(l, arch).hookIn, mlpHooks(l, arch).hookOut]), logits: false });
    for (const s of state) {
      const [x, y] = [cache[mlpHooks(s.layer, arch).hookIn]!, cache[mlpHooks(s.layer, arch).hookOut]!];
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
      format: CACHE_FORMAT, version: 1, model: model.dir, processing: model.processing, layer: s.layer, ...mlpHooks(s.layer, arch),
      dtype, dIn: d, dOut: d, count: s.count, contextSize: header.contextSize, tokenFile: resolve(tokenFile), shards: s.shards,
    };
    writeFileAtomic(join(s.dir, META_FILE), [JSON.stringify(meta, null, 2) + '\n']);
    return meta;
  });
}

/** Widths beyond this are not activations of any model (and would only overflow row sizes). */
const MAX_WIDTH = 1 << 20;
const SHARD_NAME = /^[A-Za-z0-9_.-]+\.safetensors$/;
const DTYPE_CODES = new Map<string, string>([['float32', 'F32'], ['bfloat16', 'BF16']]);

/**
 * Reads a cache folder's meta.json and validates every field (types and ranges, the hooks against
 * the layer, the shard list against the row count), so that a wrong value fails here, naming the
 * file and the field, instead of being mis-read later.
 */
export function readCacheMeta(dir: string): CacheMeta {
  const file = join(dir, META_FILE);
  if (!existsSync(file)) {
    const layers = existsSync(dir) ? readdirSync(dir).filter((n) => /^layer_\d+$/.test(n)) : [];
    const hint = layers.length ? ` (it holds ${layers.join(', ')}: point at one of them)` : '';
    throw new FormatError(`${dir}: not an activation cache folder, no ${META_FILE}${hint}`, dir);
  }
  const raw = readJsonFile(file);
  const fail = (why: string): never => {
    throw new FormatError(`${file}: ${why}`, file);
  };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return fail(`expected a JSON object, got ${describe(raw)}`);
  const m = raw as Record<string, unknown>;
  const get = (key: string): unknown => (Object.hasOwn(m, key) ? m[key] : undefined);
  if (get('format') !== CACHE_FORMAT) fail(`field 'format' is ${describe(get('format'))}, expected "${CACHE_FORMAT}" (not an activation cache meta.json)`);
  if (get('version') !== 1) fail(`field 'version' is ${describe(get('version'))}; this library reads version 1`);
  const int = (key: string, min: number, max: number): number => {
    const v = get(key);
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) fail(`field '${key}' must be an integer in [${min}, ${max}], got ${describe(v)}`);
    return v as number;
  };
  const str = (key: string): string => {
    const v = get(key);
    if (typeof v !== 'string') fail(`field '${key}' must be a string, got ${describe(v)}`);
    return v as string;
  };
  const layer = int('layer', 0, 1_000_000);
  const hookIn = str('hookIn');
  const hookOut = str('hookOut');
  if (!hookIn.startsWith(`blocks.${layer}.`) || !hookOut.startsWith(`blocks.${layer}.`)) {
    fail(`fields 'hookIn'/'hookOut' are ${describe(hookIn)}/${describe(hookOut)}, which are not hooks of layer ${layer}`);
  }
  const folderLayer = /^layer_(\d+)$/.exec(basename(resolve(dir)));
  if (folderLayer && Number(folderLayer[1]) !== layer) fail(`field 'layer' is ${layer} but the folder is ${basename(resolve(dir))}`);
  const dtype = get('dtype');
  if (typeof dtype !== 'string' || !DTYPE_CODES.has(dtype)) fail(`field 'dtype' must be "float32" or "bfloat16", got ${describe(dtype)}`);
  const dIn = int('dIn', 1, MAX_WIDTH);
  const dOut = int('dOut', 1, MAX_WIDTH);
  const count = int('count', 0, Number.MAX_SAFE_INTEGER);
  const contextSize = int('contextSize', 1, MAX_WIDTH);
  if (count % contextSize !== 0) fail(`field 'count' ${count} is not a whole number of rows of contextSize ${contextSize}`);
  const shardsRaw = get('shards');
  if (!Array.isArray(shardsRaw)) return fail(`field 'shards' must be a list, got ${describe(shardsRaw)}`);
  const seen = new Set<string>();
  let total = 0;
  const shards = shardsRaw.map((sh, i) => {
    const at = `shards[${i}]`;
    if (typeof sh !== 'object' || sh === null || Array.isArray(sh)) return fail(`field '${at}' must be an object, got ${describe(sh)}`);
    const f = Object.hasOwn(sh, 'file') ? (sh as Record<string, unknown>).file : undefined;
    const rows = Object.hasOwn(sh, 'rows') ? (sh as Record<string, unknown>).rows : undefined;
    // A bare file name: meta.json must not point outside its folder.
    if (typeof f !== 'string' || !SHARD_NAME.test(f) || f.startsWith('.')) fail(`field '${at}.file' must be a file name ending in .safetensors, got ${describe(f)}`);
    if (seen.has(f as string)) fail(`field '${at}.file' names ${describe(f)} twice`);
    seen.add(f as string);
    if (typeof rows !== 'number' || !Number.isSafeInteger(rows) || rows < 1) fail(`field '${at}.rows' must be a positive integer, got ${describe(rows)}`);
    total += rows as number;
    return { file: f as string, rows: rows as number };
  });
  if (total !== count) fail(`field 'count' is ${count} but the shards hold ${total} rows`);
  return {
    format: CACHE_FORMAT, version: 1, model: str('model'), processing: str('processing'), layer, hookIn, hookOut,
    dtype: dtype as CacheMeta['dtype'], dIn, dOut, count, contextSize, tokenFile: str('tokenFile'), shards,
  };
}

/**
 * The shards of a cache folder in path order, validated against meta.json: each holds `input`
 * [rows, dIn] and `target` [rows, dOut] of meta's dtype, with the row count meta gives it.
 */
export function readCacheShards(dir: string): CacheShard[] {
  const meta = readCacheMeta(dir);
  const code = DTYPE_CODES.get(meta.dtype)!;
  return [...meta.shards].sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0)).map(({ file, rows }) => {
    const path = join(dir, file);
    const header = readSafetensorsHeader(path);
    const input = header.entries.get('input');
    const target = header.entries.get('target');
    if (!input || !target) throw new FormatError(`${path}: a cache shard needs tensors 'input' and 'target'`, path);
    for (const [e, d] of [[input, meta.dIn], [target, meta.dOut]] as const) {
      if (e.dtype !== code) throw new FormatError(`${path}: '${e.key}' has dtype ${e.dtype}, but ${META_FILE} says ${meta.dtype} (${code})`, path);
      if (e.shape.length !== 2 || e.shape[0] !== rows || e.shape[1] !== d) {
        throw new FormatError(`${path}: '${e.key}' has shape [${e.shape}], but ${META_FILE} says [${rows}, ${d}] (rows of this shard, ${e.key === 'input' ? 'dIn' : 'dOut'})`, path);
      }
    }
    if (header.entries.size !== 2) throw new FormatError(`${path}: a cache shard holds only 'input' and 'target', this one has ${[...header.entries.keys()].map((k) => describe(k, 40)).join(', ')}`, path);
    return { path, dataStart: header.dataStart, rows, dIn: meta.dIn, dOut: meta.dOut, entries: [input, target] };
  });
}

/** Several layers of one cache, read in step: row i of every layer is the same token position. */
export interface CacheLayers {
  layers: number[];
  metas: CacheMeta[];
  /** Per layer, its shards in order; shard i holds the same rows in every layer. */
  shards: CacheShard[][];
}

/**
 * The cached layers under `dir`: `dir` itself when it is one layer's folder (it has a meta.json),
 * else its `layer_L` folders (all of them, or those of `layers`). The layers must hold the same rows
 * (one `writeActivationCache` call writes them so): the same token file, row count, context size and
 * shard sizes; otherwise their rows could not be trained on together.
 */
export function readCacheLayers(dir: string, layers?: readonly number[]): CacheLayers {
  let folders: { layer: number; dir: string }[];
  if (existsSync(join(dir, META_FILE))) {
    folders = [{ layer: readCacheMeta(dir).layer, dir }];
  } else {
    let names: string[] = [];
    try {
      names = readdirSync(dir);
    } catch {
      throw new FormatError(`${dir}: no such activation cache folder`, dir);
    }
    folders = names
      .map((n) => /^layer_(\d+)$/.exec(n))
      .filter((m): m is RegExpExecArray => m !== null && existsSync(join(dir, m[0], META_FILE)))
      .map((m) => ({ layer: Number(m[1]), dir: join(dir, m[0]) }))
      .sort((a, b) => a.layer - b.layer);
    if (folders.length === 0) throw new FormatError(`${dir}: not an activation cache (no ${META_FILE}, and no layer_L folders with one)`, dir);
  }
  const have = folders.map((f) => f.layer);
  const wanted = layers ? [...layers] : have;
  const missing = wanted.filter((l) => !have.includes(l));
  if (missing.length > 0) throw new InvalidArgumentError(`${dir}: the cache holds layer${have.length > 1 ? 's' : ''} ${have.join(', ')}, not ${missing.join(', ')}`);
  const chosen = wanted.map((l) => folders.find((f) => f.layer === l)!);
  const metas = chosen.map((f) => readCacheMeta(f.dir));
  const shards = chosen.map((f) => readCacheShards(f.dir));
  const first = metas[0]!;
  metas.forEach((m, i) => {
    const where = join(chosen[i]!.dir, META_FILE);
    const differs = (what: string, a: unknown, b: unknown) => {
      throw new FormatError(`${where}: ${what} ${describe(a)} differs from layer ${first.layer}'s ${describe(b)}: the layers of one run must cache the same rows (write them with one \`transcoders cache\` call)`, where);
    };
    if (m.tokenFile !== first.tokenFile) differs('tokenFile', m.tokenFile, first.tokenFile);
    if (m.count !== first.count) differs('count', m.count, first.count);
    if (m.contextSize !== first.contextSize) differs('contextSize', m.contextSize, first.contextSize);
    const sizes = shards[i]!.map((s) => s.rows).join(',');
    if (sizes !== shards[0]!.map((s) => s.rows).join(',')) differs('the shard sizes', sizes, shards[0]!.map((s) => s.rows).join(','));
  });
  return { layers: wanted, metas, shards };
}
