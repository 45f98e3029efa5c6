/**
 * Transcoder weights read on demand: the encoder vectors and decoder rows of chosen features, read
 * from a safetensors file with positioned reads of just their byte ranges, for sets too large to hold
 * in memory (a 131k-feature layer of a 2k-wide model is 2 GB in float32). The header is validated as
 * for a full load (lib/io/safetensors.ts); every read is checked to return all its bytes, so a file
 * truncated since is a FormatError, never garbage.
 *
 * Orientation is ours whatever the file's: `encoderVectors(fs)[i]` is W_enc[:, fs[i]] (length dIn, our
 * W_enc is [dIn, dSae]) and `decoderRows(fs)[i]` is W_dec[fs[i], :] (length dOut). Formats storing the
 * encoder feature-major (circuit-tracer `W_enc [F, d]`, sparsify `encoder.weight [F, d]`) give each
 * vector in one read; those storing it [d, F] (native, SAELens, Gemma Scope 2) in one read per input
 * dimension and run of adjacent features. Values are as stored (no export folds, no threshold clamp),
 * widened to float32.
 */
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { FormatError, InvalidArgumentError } from '../errors.js';
import { readSafetensorsHeader, type SafetensorsEntry, type SafetensorsHeader } from '../io/safetensors.js';
import { CIRCUIT_TRACER_CONFIG_FILE, readCircuitTracerConfig } from './formats/circuit-tracer.js';
import { layerHook } from './formats/cross-layer.js';

/** Which layout a lazily read file has, and the keys of its encoder, decoder and encoder bias. */
export type LazyLayout = 'native' | 'saelens' | 'circuit-tracer' | 'sparsify' | 'gemma-scope-2';

interface LayoutKeys {
  enc: string;
  dec: string;
  bias: string;
  threshold?: string;
  /** The encoder is stored [F, d] (one contiguous vector per feature). */
  featureMajor: boolean;
}

const LAYOUTS: Record<LazyLayout, LayoutKeys> = {
  native: { enc: 'W_enc', dec: 'W_dec', bias: 'b_enc', threshold: 'threshold', featureMajor: false },
  saelens: { enc: 'W_enc', dec: 'W_dec', bias: 'b_enc', threshold: 'threshold', featureMajor: false },
  'circuit-tracer': { enc: 'W_enc', dec: 'W_dec', bias: 'b_enc', threshold: 'activation_function.threshold', featureMajor: true },
  sparsify: { enc: 'encoder.weight', dec: 'W_dec', bias: 'encoder.bias', featureMajor: true },
  'gemma-scope-2': { enc: 'w_enc', dec: 'w_dec', bias: 'b_enc', threshold: 'threshold', featureMajor: false },
};

/** The weights files of the folder formats. */
const FOLDER_FILES: [string, LazyLayout][] = [
  ['transcoder.safetensors', 'native'],
  ['sae_weights.safetensors', 'saelens'],
  ['sae.safetensors', 'sparsify'],
  ['params.safetensors', 'gemma-scope-2'],
];

/** A transcoder file whose feature vectors are read on demand; see the module comment. */
export interface LazyTranscoder {
  readonly file: string;
  readonly layout: LazyLayout;
  readonly dIn: number;
  readonly dOut: number;
  readonly dSae: number;
  /** W_enc[:, f] of each feature, as rows of a [features.length, dIn] row-major array. */
  encoderVectors(features: readonly number[]): Float32Array;
  /** W_dec[f, :] of each feature, as rows of a [features.length, dOut] row-major array. */
  decoderRows(features: readonly number[]): Float32Array;
  /** b_enc[f] of each feature. */
  encoderBias(features: readonly number[]): Float32Array;
  /** threshold[f] of each feature (JumpReLU files only; null otherwise). */
  thresholds(features: readonly number[]): Float32Array | null;
}

function isDir(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

function layoutOf(header: SafetensorsHeader, named: LazyLayout | undefined): LazyLayout {
  if (named) return named;
  const has = (k: string) => header.entries.has(k);
  if (has('w_enc') && has('w_dec')) return 'gemma-scope-2';
  if (has('encoder.weight') && has('W_dec')) return 'sparsify';
  if (has('W_enc') && has('W_dec') && has('b_enc')) {
    // circuit-tracer stores W_enc [F, d]: its first dimension is b_enc's length.
    const enc = header.entries.get('W_enc')!;
    const f = header.entries.get('b_enc')!.shape[0];
    if (has('b_dec_out')) return 'native';
    return enc.shape[0] === f && enc.shape[1] !== f ? 'circuit-tracer' : 'saelens';
  }
  throw new FormatError(`${header.path}: not a transcoder weights file this reader knows (expected W_enc/W_dec, w_enc/w_dec or encoder.weight/W_dec tensors)`, header.path);
}

/** float16 bits -> number. */
function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

const BF16_VALUE = new Float32Array(1);
const BF16_BITS = new Uint16Array(BF16_VALUE.buffer);

/** Decodes `count` little-endian elements of `dtype` from `bytes` into `out` at `at`. */
function decode(bytes: Buffer, dtype: string, count: number, out: Float32Array, at: number, stride = 1): void {
  for (let i = 0; i < count; i++) {
    let v: number;
    switch (dtype) {
      case 'F32':
        v = bytes.readFloatLE(4 * i);
        break;
      case 'F64':
        v = bytes.readDoubleLE(8 * i);
        break;
      case 'F16':
        v = halfToFloat(bytes.readUInt16LE(2 * i));
        break;
      default:
        // BF16: the high half of a float32 (this reader, like the files, is little-endian).
        BF16_BITS[1] = bytes.readUInt16LE(2 * i);
        v = BF16_VALUE[0]!;
    }
    out[at + i * stride] = v;
  }
}

const ITEM = { F32: 4, F64: 8, F16: 2, BF16: 2 } as Record<string, number>;

/** Positioned reads of features' rows, entries and columns from the tensors of one safetensors file with `dSae` features. */
function featureReader(file: string, header: SafetensorsHeader, dSae: number, fail: (why: string) => never) {
  const check = (features: readonly number[]): void => {
    if (!Array.isArray(features)) throw new InvalidArgumentError('features must be an array of feature indices');
    features.forEach((f, i) => {
      if (!Number.isInteger(f) || f < 0 || f >= dSae) throw new InvalidArgumentError(`feature ${String(f)} (position ${i}) is out of range [0, ${dSae}) of ${file}`);
    });
  };
  /** Reads `length` bytes at byte `offset` of tensor `e`'s data. */
  const readAt = (fd: number, e: SafetensorsEntry, offset: number, length: number): Buffer => {
    const buf = Buffer.alloc(length);
    const at = header.dataStart + e.begin + offset;
    for (let done = 0; done < length; ) {
      const n = readSync(fd, buf, done, length - done, at + done);
      if (n === 0) fail(`tensor '${e.key}' ends before its bytes ${offset}..${offset + length} (the file was truncated after it was opened?)`);
      done += n;
    }
    return buf;
  };
  const withFile = <T>(fn: (fd: number) => T): T => {
    let fd: number;
    try {
      fd = openSync(file, 'r');
    } catch (err) {
      throw new FormatError(`${file}: cannot open (${(err as NodeJS.ErrnoException).code ?? String(err)})`, file);
    }
    try {
      return fn(fd);
    } finally {
      closeSync(fd);
    }
  };
  /** Rows of a [rows, ...] tensor (everything after the first dimension is one row), one read each. */
  const rows = (e: SafetensorsEntry, features: readonly number[]): Float32Array => {
    check(features);
    const cols = e.shape.slice(1).reduce((a, b) => a * b, 1);
    const item = ITEM[e.dtype]!;
    const out = new Float32Array(features.length * cols);
    withFile((fd) => features.forEach((f, i) => decode(readAt(fd, e, f * cols * item, cols * item), e.dtype, cols, out, i * cols)));
    return out;
  };
  /** Entries of a 1-d tensor, one read per run of adjacent features. */
  const entries1d = (e: SafetensorsEntry, features: readonly number[]): Float32Array => {
    check(features);
    const item = ITEM[e.dtype]!;
    const out = new Float32Array(features.length);
    withFile((fd) => features.forEach((f, i) => decode(readAt(fd, e, f * item, item), e.dtype, 1, out, i)));
    return out;
  };
  /** Columns of a [d, F] tensor as rows: per input row, one read per run of adjacent requested features. */
  const columns = (e: SafetensorsEntry, features: readonly number[]): Float32Array => {
    check(features);
    const [d, F] = e.shape as [number, number];
    const item = ITEM[e.dtype]!;
    const out = new Float32Array(features.length * d);
    // Runs of features adjacent in the file (sorted), each remembering where its values go.
    const order = features.map((f, i) => ({ f, i })).sort((a, b) => a.f - b.f);
    const runs: { start: number; slots: { f: number; i: number }[] }[] = [];
    for (const o of order) {
      const last = runs[runs.length - 1];
      // A gap of up to 16 features is cheaper to read through than to seek over.
      if (last && o.f - last.slots[last.slots.length - 1]!.f <= 16) last.slots.push(o);
      else runs.push({ start: o.f, slots: [o] });
    }
    withFile((fd) => {
      for (let r = 0; r < d; r++) {
        for (const run of runs) {
          const span = run.slots[run.slots.length - 1]!.f - run.start + 1;
          const bytes = readAt(fd, e, (r * F + run.start) * item, span * item);
          const tmp = new Float32Array(span);
          decode(bytes, e.dtype, span, tmp, 0);
          for (const s of run.slots) out[s.i * d + r] = tmp[s.f - run.start]!;
        }
      }
    });
    return out;
  };
  /** A whole (small) tensor, in one read. */
  const whole = (e: SafetensorsEntry): Float32Array => {
    const n = e.shape.reduce((a, b) => a * b, 1);
    const out = new Float32Array(n);
    withFile((fd) => decode(readAt(fd, e, 0, n * ITEM[e.dtype]!), e.dtype, n, out, 0));
    return out;
  };
  return { rows, entries1d, columns, whole };
}

/**
 * Opens a transcoder weights file for reading feature vectors on demand: a safetensors file (native
 * `transcoder.safetensors`, SAELens `sae_weights.safetensors`, circuit-tracer `layer_L.safetensors`,
 * sparsify `sae.safetensors`, Gemma Scope 2 `params.safetensors`) or the folder holding one. Only the
 * header is read now.
 */
export function lazyTranscoder(path: string, options: { layout?: LazyLayout } = {}): LazyTranscoder {
  let file = path;
  let named = options.layout;
  if (isDir(path)) {
    const hit = FOLDER_FILES.find(([f]) => statSafe(join(path, f)));
    if (!hit) throw new FormatError(`${path}: no transcoder weights file (${FOLDER_FILES.map(([f]) => f).join(', ')}) in this folder`, path);
    file = join(path, hit[0]);
    named ??= hit[1];
  }
  const header = readSafetensorsHeader(file);
  const layout = layoutOf(header, named);
  const keys = LAYOUTS[layout];
  const fail = (why: string): never => {
    throw new FormatError(`${file}: ${why}`, file);
  };
  const entry = (key: string, rank: number): SafetensorsEntry => {
    const e = header.entries.get(key);
    if (!e) fail(`missing tensor '${key}' (${layout} layout)`);
    if (!(e!.dtype in ITEM)) fail(`tensor '${key}' has dtype ${e!.dtype}, expected F32, F16, BF16 or F64`);
    if (e!.shape.length !== rank) fail(`tensor '${key}' has shape [${e!.shape}], expected ${rank} dimension${rank > 1 ? 's' : ''}`);
    return e!;
  };
  const enc = entry(keys.enc, 2);
  const dec = entry(keys.dec, 2);
  const bias = entry(keys.bias, 1);
  const dSae = bias.shape[0]!;
  const [dIn, encF] = keys.featureMajor ? [enc.shape[1]!, enc.shape[0]!] : [enc.shape[0]!, enc.shape[1]!];
  if (encF !== dSae) fail(`tensor '${keys.enc}' has shape [${enc.shape}], which does not hold ${dSae} features (from '${keys.bias}')`);
  if (dec.shape[0] !== dSae) fail(`tensor '${keys.dec}' has shape [${dec.shape}], expected [${dSae}, d_out]`);
  const dOut = dec.shape[1]!;
  const threshold = keys.threshold && header.entries.has(keys.threshold) ? entry(keys.threshold, 1) : null;
  if (threshold && threshold.shape[0] !== dSae) fail(`tensor '${keys.threshold}' has shape [${threshold.shape}], expected [${dSae}]`);

  const { rows, entries1d, columns } = featureReader(file, header, dSae, fail);
  return {
    file,
    layout,
    dIn,
    dOut,
    dSae,
    encoderVectors: (features) => (keys.featureMajor ? rows(enc, features) : columns(enc, features)),
    decoderRows: (features) => rows(dec, features),
    encoderBias: (features) => entries1d(bias, features),
    thresholds: (features) => (threshold ? entries1d(threshold, features) : null),
  };
}

function statSafe(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/**
 * A cross-layer transcoder in circuit-tracer's layout (per layer `W_enc_{l}.safetensors`,
 * `W_dec_{l}.safetensors`; docs/cross-layer.md) whose feature vectors are read on demand, for sets too
 * large to load (circuit-tracer's Gemma-2-2B 2.5M CLT is 160 GiB). Only the headers are read when it opens.
 */
export interface LazyCrossLayerTranscoder {
  readonly dir: string;
  readonly nLayers: number;
  readonly dIn: number;
  readonly dOut: number;
  readonly dSae: number;
  /** relu, or jumprelu when the files hold thresholds (circuit-tracer's CLT activations). */
  readonly arch: 'relu' | 'jumprelu';
  /** Per layer, the hook its encoder reads and the one its decoders write (config.yaml's, default hook_resid_mid -> hook_mlp_out). */
  readonly hookIn: readonly string[];
  readonly hookOut: readonly string[];
  readonly modelName: string | null;
  /** W_enc[layer][:, f] of each feature, as rows of a [features.length, dIn] array. */
  encoderVectors(layer: number, features: readonly number[]): Float32Array;
  /** Each feature's decoders into layers layer..L-1, as rows of a [features.length, (L - layer) dOut] array. */
  decoderRows(layer: number, features: readonly number[]): Float32Array;
  encoderBias(layer: number, features: readonly number[]): Float32Array;
  /** JumpReLU thresholds (null for a relu CLT). */
  thresholds(layer: number, features: readonly number[]): Float32Array | null;
  /** b_dec of the layer (length dOut): the output bias every source writes into it with. */
  outputBias(layer: number): Float32Array;
}

/** Opens a circuit-tracer cross-layer transcoder folder for reading feature vectors on demand. */
export function lazyCrossLayer(dir: string): LazyCrossLayerTranscoder {
  const nLayers = (() => {
    let L = 0;
    while (statSafe(join(dir, `W_enc_${L}.safetensors`))) L++;
    return L;
  })();
  if (nLayers === 0) throw new FormatError(`${dir}: no W_enc_0.safetensors (a circuit-tracer cross-layer transcoder folder)`, dir);
  const layers = Array.from({ length: nLayers }, (_, l) => {
    const open = (name: string) => {
      const file = join(dir, name);
      if (!statSafe(file)) throw new FormatError(`${file}: missing (a ${nLayers}-layer cross-layer transcoder has W_enc_0..${nLayers - 1} and W_dec_0..${nLayers - 1})`, file);
      const header = readSafetensorsHeader(file);
      const fail = (why: string): never => {
        throw new FormatError(`${file}: ${why}`, file);
      };
      const entry = (key: string, rank: number): SafetensorsEntry => {
        const e = header.entries.get(key);
        if (!e) fail(`missing tensor '${key}'`);
        if (!(e!.dtype in ITEM)) fail(`tensor '${key}' has dtype ${e!.dtype}, expected F32, F16, BF16 or F64`);
        if (e!.shape.length !== rank) fail(`tensor '${key}' has shape [${e!.shape}], expected ${rank} dimension${rank > 1 ? 's' : ''}`);
        return e!;
      };
      return { file, header, fail, entry };
    };
    const enc = open(`W_enc_${l}.safetensors`);
    const dec = open(`W_dec_${l}.safetensors`);
    const wEnc = enc.entry(`W_enc_${l}`, 2);
    const [F, d] = wEnc.shape as [number, number];
    const bias = enc.entry(`b_enc_${l}`, 1);
    if (bias.shape[0] !== F) enc.fail(`tensor 'b_enc_${l}' has shape [${bias.shape}], expected [${F}]`);
    const threshold = enc.header.entries.has(`threshold_${l}`) ? enc.entry(`threshold_${l}`, 1) : null;
    const bDec = enc.entry(`b_dec_${l}`, 1);
    const wDec = dec.entry(`W_dec_${l}`, 3);
    if (bDec.shape[0] !== wDec.shape[2]) enc.fail(`tensor 'b_dec_${l}' has shape [${bDec.shape}], expected [${wDec.shape[2]}] (d_out of W_dec_${l})`);
    if (wDec.shape[0] !== F || wDec.shape[1] !== nLayers - l) dec.fail(`tensor 'W_dec_${l}' has shape [${wDec.shape}], expected [${F}, ${nLayers - l}, d_out]`);
    return { F, d, dOut: wDec.shape[2]!, wEnc, bias, threshold, wDec, bDec, encReader: featureReader(enc.file, enc.header, F, enc.fail), decReader: featureReader(dec.file, dec.header, F, dec.fail) };
  });
  const first = layers[0]!;
  layers.forEach((x, l) => {
    if (x.F !== first.F || x.d !== first.d || x.dOut !== first.dOut) throw new FormatError(`${dir}: layer ${l} has ${x.F} features of width ${x.d} -> ${x.dOut}, layer 0 ${first.F} of ${first.d} -> ${first.dOut}`, dir);
  });
  if (layers.some((x) => (x.threshold === null) !== (first.threshold === null))) throw new FormatError(`${dir}: some layers have thresholds (threshold_l) and some not`, dir);
  const layer = (l: number) => {
    if (!Number.isInteger(l) || l < 0 || l >= nLayers) throw new InvalidArgumentError(`layer ${String(l)} is out of range [0, ${nLayers}) of ${dir}`);
    return layers[l]!;
  };
  const configFile = join(dir, CIRCUIT_TRACER_CONFIG_FILE);
  const ct = statSafe(configFile) ? readCircuitTracerConfig(configFile) : undefined;
  const hooks = (hook: string) => Array.from({ length: nLayers }, (_, l) => layerHook(hook, l));
  return {
    dir,
    nLayers,
    dIn: first.d,
    dOut: first.dOut,
    dSae: first.F,
    arch: first.threshold ? 'jumprelu' : 'relu',
    hookIn: hooks(ct?.featureInputHook ?? 'hook_resid_mid'),
    hookOut: hooks(ct?.featureOutputHook ?? 'hook_mlp_out'),
    modelName: ct?.modelName ?? null,
    encoderVectors: (l, features) => layer(l).encReader.rows(layer(l).wEnc, features),
    decoderRows: (l, features) => layer(l).decReader.rows(layer(l).wDec, features),
    encoderBias: (l, features) => layer(l).encReader.entries1d(layer(l).bias, features),
    thresholds: (l, features) => (layer(l).threshold ? layer(l).encReader.entries1d(layer(l).threshold!, features) : null),
    outputBias: (l) => layer(l).encReader.whole(layer(l).bDec),
  };
}
