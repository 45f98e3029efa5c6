/**
 * circuit-tracer per-layer transcoders (PLTs): one safetensors file per layer (`layer_{i}.safetensors`,
 * `SingleLayerTranscoder.to_safetensors`) with
 *
 *   W_enc [F, d_in]   (F.linear layout: ours is its transpose)     b_enc [F]
 *   W_dec [F, d_out]                                                b_dec [d_out]  (OUTPUT bias)
 *   W_skip [d_out, d_in] optional, applied as x W_skipᵀ (ours is its transpose)
 *   activation_function.threshold [F] optional (JumpReLU: pre * (pre > threshold), as ours)
 *   k optional 0-d / 1-element integer (TopK)
 *
 *   y = act(x W_encᵀ + b_enc) W_dec + b_dec (+ x W_skipᵀ);  no input centring, so our b_dec = 0.
 *
 * A transcoder set's `config.yaml` may sit beside the files (model_kind, model_name,
 * feature_input_hook / feature_output_hook relative to `blocks.L`, transcoders, activation, k); a
 * tiny parser reads the subset needed. Models are loaded unprocessed by circuit-tracer, so the
 * processing is 'none'.
 *
 * One semantic difference: circuit-tracer's TopK keeps the k largest pre-activations as they are,
 * ours applies a ReLU to them. They agree whenever the k-th largest pre-activation of a row is
 * >= 0 (always the case in practice for a wide trained TopK transcoder; check before relying on
 * negative activations).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { FormatError, InvalidArgumentError } from '../../errors.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { writeSafetensors, type RawTensor } from '../../io/safetensors.js';
import type { Tensor } from '../../tensor.js';
import { mlpHooks, type TranscoderArch, type TranscoderConfig } from '../config.js';
import type { ParameterName, Transcoder } from '../transcoder.js';
import { buildTranscoder, exportArrays, rawF32, rawI64Scalar, TensorFile, transposeData, transposed, zeros, type ForeignLoadOptions } from './common.js';

export const CIRCUIT_TRACER_CONFIG_FILE = 'config.yaml';
export const THRESHOLD_KEY = 'activation_function.threshold';
const LAYER_FILE = /^layer_(\d+)\.safetensors$/;

// ---------------------------------------------------------------------------------------------
// A tiny YAML subset: top-level `key: value` lines, and under a `key:` line a list of `- value`
// items (or `- k: v` items continued by deeper-indented `k: v` lines). Enough for circuit-tracer's
// config.yaml; anything else is a FormatError naming the line.

export type YamlScalar = string | number | boolean | null;
export type YamlValue = YamlScalar | YamlValue[] | { [key: string]: YamlValue };

function stripComment(line: string): string {
  let quote: string | null = null;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i]!;
    if (quote) {
      if (ch === '\\' && quote === '"') i++;
      else if (ch === quote) quote = null;
    } else if (ch === '"' || ch === "'") {
      quote = ch;
    } else if (ch === '#' && (i === 0 || /\s/.test(line[i - 1]!))) {
      return line.slice(0, i);
    }
  }
  return line;
}

function parseScalar(text: string, where: string, file: string): YamlValue {
  const s = text.trim();
  if (s === '' || s === '~' || s === 'null' || s === 'Null' || s === 'NULL') return null;
  if (s.startsWith('"')) {
    try {
      return JSON.parse(s) as string;
    } catch {
      throw new FormatError(`${where}: cannot parse the quoted string ${s}`, file);
    }
  }
  if (s.startsWith("'")) {
    if (!s.endsWith("'") || s.length < 2) throw new FormatError(`${where}: unterminated quoted string ${s}`, file);
    return s.slice(1, -1).replaceAll("''", "'");
  }
  if (s.startsWith('[') && s.endsWith(']')) {
    const inner = s.slice(1, -1).trim();
    return inner === '' ? [] : inner.split(',').map((part) => parseScalar(part, where, file));
  }
  if (/^(true|True|TRUE)$/.test(s)) return true;
  if (/^(false|False|FALSE)$/.test(s)) return false;
  if (/^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$/.test(s)) return Number(s);
  return s;
}

const KEY_VALUE = /^([A-Za-z_][\w.\-]*)\s*:(?:\s+(.*)|\s*)$/;

/** Parses the YAML subset described above; `file` names the source in errors. */
export function parseSimpleYaml(text: string, file: string): Record<string, YamlValue> {
  const out: Record<string, YamlValue> = {};
  let blockKey: string | null = null;
  let currentItem: Record<string, YamlValue> | null = null;
  let itemIndent = -1;
  const lines = text.split(/\r?\n/);
  for (let n = 0; n < lines.length; n++) {
    const where = `${file}:${n + 1}`;
    const line = stripComment(lines[n]!).replace(/\s+$/, '');
    if (line.trim() === '' || line === '---' || line === '...') continue;
    const indent = line.length - line.trimStart().length;
    const body = line.trimStart();
    const fail = (): never => {
      throw new FormatError(`${where}: cannot parse ${JSON.stringify(lines[n])} (only 'key: value' lines and '- item' lists are understood)`, file);
    };
    if (indent === 0 && !body.startsWith('- ') && body !== '-') {
      const m = KEY_VALUE.exec(body) ?? fail();
      const [, key, value] = m;
      currentItem = null;
      if (value === undefined || value.trim() === '') {
        blockKey = key!;
        out[key!] = null;
      } else {
        blockKey = null;
        out[key!] = parseScalar(value, where, file);
      }
      continue;
    }
    if (blockKey === null) fail();
    if (body === '-' || body.startsWith('- ')) {
      const rest = body.slice(1).trim();
      if (!Array.isArray(out[blockKey!])) out[blockKey!] = [];
      const list = out[blockKey!] as YamlValue[];
      const kv = KEY_VALUE.exec(rest);
      if (kv && !rest.startsWith('"') && !rest.startsWith("'") && !/^[a-z]+:\/\//i.test(rest)) {
        currentItem = { [kv[1]!]: parseScalar(kv[2] ?? '', where, file) };
        itemIndent = indent;
        list.push(currentItem);
      } else {
        currentItem = null;
        list.push(parseScalar(rest, where, file));
      }
      continue;
    }
    const kv = KEY_VALUE.exec(body) ?? fail();
    if (currentItem && indent > itemIndent) {
      currentItem[kv[1]!] = parseScalar(kv[2] ?? '', where, file);
    } else {
      // A nested map under the block key.
      const cur = out[blockKey!];
      const map = cur !== null && typeof cur === 'object' && !Array.isArray(cur) ? cur : (out[blockKey!] = {});
      (map as Record<string, YamlValue>)[kv[1]!] = parseScalar(kv[2] ?? '', where, file);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

/** The fields of a circuit-tracer `config.yaml` this library uses. */
export interface CircuitTracerSetConfig {
  file: string;
  modelKind?: string;
  modelName?: string;
  /** Hooks relative to `blocks.L` (e.g. `ln2.hook_normalized`), or absolute. */
  featureInputHook?: string;
  featureOutputHook?: string;
  /** Layer -> file name (the basename of each listed path or `hf://` URI). */
  layerFiles: Map<number, string>;
  activation?: string;
  k?: number;
}

/** Reads a circuit-tracer `config.yaml`. */
export function readCircuitTracerConfig(file: string): CircuitTracerSetConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new FormatError(`${file}: cannot read (${(err as Error).message})`, file);
  }
  const y = parseSimpleYaml(text, file);
  const str = (key: string): string | undefined => {
    const v = y[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string') throw new FormatError(`${file}: '${key}' must be a string, got ${JSON.stringify(v)}`, file);
    return v;
  };
  const layerFiles = new Map<number, string>();
  const list = y.transcoders;
  if (list !== undefined && list !== null) {
    if (!Array.isArray(list)) throw new FormatError(`${file}: 'transcoders' must be a list`, file);
    list.forEach((entry, i) => {
      // v0.2: a list of paths / hf:// URIs, index = layer; v0.1: {id, layer, filepath}.
      let path: YamlValue | undefined = entry;
      let layer: YamlValue | undefined = i;
      if (entry !== null && typeof entry === 'object' && !Array.isArray(entry)) {
        path = entry.filepath ?? entry.path;
        layer = entry.layer ?? i;
      }
      if (typeof path !== 'string' || typeof layer !== 'number' || !Number.isInteger(layer) || layer < 0) {
        throw new FormatError(`${file}: 'transcoders' entry ${i} is not a path (or {layer, filepath}): ${JSON.stringify(entry)}`, file);
      }
      layerFiles.set(layer, basename(path.split('?')[0]!));
    });
  }
  const k = y.k;
  if (k !== undefined && k !== null && (typeof k !== 'number' || !Number.isInteger(k) || k <= 0)) {
    throw new FormatError(`${file}: 'k' must be a positive integer, got ${JSON.stringify(k)}`, file);
  }
  return {
    file,
    modelKind: str('model_kind'),
    modelName: str('model_name'),
    featureInputHook: str('feature_input_hook'),
    featureOutputHook: str('feature_output_hook'),
    layerFiles,
    activation: str('activation'),
    ...(typeof k === 'number' ? { k } : {}),
  };
}

/** `blocks.L.<hook>` for a hook relative to the layer (absolute names are kept). */
function absoluteHook(hook: string, layer: number): string {
  if (hook.startsWith('blocks.') || hook.startsWith('hook_embed') || hook.startsWith('ln_final')) return hook;
  return layer >= 0 ? `blocks.${layer}.${hook}` : '';
}

function safetensorsFiles(dir: string): string[] {
  return readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort();
}

/** Whether `dir` looks like a circuit-tracer transcoder set. */
export function isCircuitTracerFolder(dir: string): boolean {
  const files = safetensorsFiles(dir);
  return files.some((f) => LAYER_FILE.test(f)) || (existsSync(join(dir, CIRCUIT_TRACER_CONFIG_FILE)) && files.length > 0);
}

/**
 * The activation: the config's `activation` when it gives one (as circuit-tracer does), else what
 * the file's keys imply (a threshold: JumpReLU, `k`: TopK, neither: ReLU). Contradictions fail.
 */
function resolveActivation(file: string, ct: CircuitTracerSetConfig | null, hasThreshold: boolean, fileK: number | undefined): { arch: TranscoderArch; k?: number } {
  const fail = (why: string, where = file): never => {
    throw new FormatError(`${where}: ${why}`, where);
  };
  const activation = ct?.activation;
  if (ct && activation !== undefined) {
    if (activation === 'topk') {
      if (hasThreshold) fail(`has '${THRESHOLD_KEY}' but ${ct.file} sets activation: topk`);
      if (fileK !== undefined && ct.k !== undefined && fileK !== ct.k) fail(`tensor 'k' = ${fileK} disagrees with k = ${ct.k} in ${ct.file}`);
      const k = ct.k ?? fileK;
      if (k === undefined) fail(`activation is topk but neither it nor ${file} gives 'k'`, ct.file);
      return { arch: 'topk', k };
    }
    if (activation === 'relu') {
      if (hasThreshold || fileK !== undefined) fail(`has '${hasThreshold ? THRESHOLD_KEY : 'k'}' but ${ct.file} sets activation: relu`);
      return { arch: 'relu' };
    }
    if (activation === 'jumprelu') {
      if (!hasThreshold) fail(`missing tensor '${THRESHOLD_KEY}' (${ct.file} sets activation: jumprelu)`);
      return { arch: 'jumprelu' };
    }
    fail(`activation ${JSON.stringify(activation)} is not supported (relu, topk, jumprelu)`, ct.file);
  }
  if (hasThreshold && fileK !== undefined) fail(`has both '${THRESHOLD_KEY}' (JumpReLU) and 'k' (TopK)`);
  if (hasThreshold) return { arch: 'jumprelu' };
  return fileK !== undefined ? { arch: 'topk', k: fileK } : { arch: 'relu' };
}

export interface CircuitTracerLoadOptions extends ForeignLoadOptions {
  /** A `config.yaml` to use (default: the one beside the file, if any). `null`: none. */
  config?: string | null;
}

/**
 * Reads one circuit-tracer transcoder: `path` is its safetensors file, or the folder of a set, where
 * `options.layer` picks the config's entry for that layer or `layer_{layer}.safetensors` (without a
 * layer the folder must hold a single safetensors file).
 */
export async function loadCircuitTracerTranscoder(path: string, options: CircuitTracerLoadOptions = {}): Promise<Transcoder> {
  let isDir: boolean;
  try {
    isDir = statSync(path).isDirectory();
  } catch (err) {
    throw new FormatError(`${path}: cannot open (${(err as NodeJS.ErrnoException).code ?? String(err)})`, path);
  }
  const dir = isDir ? path : dirname(path);
  const cfgPath = options.config === undefined ? join(dir, CIRCUIT_TRACER_CONFIG_FILE) : options.config;
  const ct = cfgPath && (options.config !== undefined || existsSync(cfgPath)) ? readCircuitTracerConfig(cfgPath) : null;
  if (ct?.modelKind !== undefined && ct.modelKind !== 'transcoder_set') {
    throw new FormatError(`${ct.file}: model_kind ${JSON.stringify(ct.modelKind)} is not supported (only per-layer transcoders, "transcoder_set")`, ct.file);
  }

  let file: string;
  if (!isDir) {
    file = path;
  } else if (options.layer !== undefined) {
    const listed = ct?.layerFiles.get(options.layer);
    const candidates = [...(listed ? [listed] : []), `layer_${options.layer}.safetensors`].map((f) => join(dir, f));
    const found = candidates.find((f) => existsSync(f));
    if (!found) throw new FormatError(`${dir}: no transcoder for layer ${options.layer} (looked for ${candidates.map((f) => basename(f)).join(', ')})`, dir);
    file = found;
  } else {
    const files = safetensorsFiles(dir);
    if (files.length !== 1) {
      throw new InvalidArgumentError(`${dir} holds ${files.length === 0 ? 'no' : 'several'} transcoder files; pass the file, or { layer } to pick layer_{layer}.safetensors`);
    }
    file = join(dir, files[0]!);
  }

  // Layer: the caller's, else the file name's, else the config's entry for this file.
  const fromName = LAYER_FILE.exec(basename(file));
  let layer = options.layer ?? (fromName ? Number(fromName[1]) : undefined);
  if (layer === undefined && ct) for (const [l, f] of ct.layerFiles) if (f === basename(file)) layer = l;
  layer ??= -1;

  const tf = new TensorFile(file);
  const dSae = tf.float('b_enc', 1).shape[0]!;
  const wEnc = tf.float('W_enc', 2);
  if (wEnc.shape[0] !== dSae) tf.fail(`tensor 'W_enc' has shape [${wEnc.shape}], expected [${dSae}, d_in] (F = ${dSae} from 'b_enc'; circuit-tracer stores W_enc as [F, d])`);
  const dIn = wEnc.shape[1]!;
  const dOut = tf.float('b_dec', 1).shape[0]!;
  tf.expect('W_dec', [dSae, dOut], `F from 'b_enc' x d from 'b_dec'`);
  const skip = tf.has('W_skip');
  if (skip) tf.expect('W_skip', [dOut, dIn], 'd x d, applied as x W_skipᵀ');
  const hasThreshold = tf.has(THRESHOLD_KEY);
  if (hasThreshold) tf.expect(THRESHOLD_KEY, [dSae], `F from 'b_enc'`);
  const fileK = tf.has('k') ? await tf.intScalar('k') : undefined;
  tf.rejectUnused();

  const { arch, k } = resolveActivation(file, ct, hasThreshold, fileK);
  if (k !== undefined && k > dSae) {
    const src = ct?.k !== undefined && ct.activation === 'topk' ? ct.file : file;
    throw new FormatError(`${src}: k = ${k} exceeds the number of features F = ${dSae}`, src);
  }

  const t = await tf.load(['W_enc', 'b_enc', 'W_dec', 'b_dec', ...(skip ? ['W_skip'] : []), ...(arch === 'jumprelu' ? [THRESHOLD_KEY] : [])]);
  const params: Partial<Record<ParameterName, Tensor>> = {
    W_enc: transposed(t.W_enc!),
    b_enc: t.b_enc!,
    W_dec: t.W_dec!,
    b_dec: zeros(dIn),
    b_dec_out: t.b_dec!,
  };
  const extra: Tensor[] = [t.W_enc!];
  if (skip) {
    params.W_skip = transposed(t.W_skip!);
    extra.push(t.W_skip!);
  }
  if (arch === 'jumprelu') params.threshold = t[THRESHOLD_KEY]!;

  const defaults = layer >= 0 ? mlpHooks(layer) : { hookIn: '', hookOut: '' };
  const config: Partial<TranscoderConfig> = {
    arch,
    ...(k !== undefined ? { k } : {}),
    dIn,
    dOut,
    dSae,
    skip,
    layer,
    hookIn: ct?.featureInputHook !== undefined ? absoluteHook(ct.featureInputHook, layer) : defaults.hookIn,
    hookOut: ct?.featureOutputHook !== undefined ? absoluteHook(ct.featureOutputHook, layer) : defaults.hookOut,
    modelName: ct?.modelName ?? null,
    processing: 'none',
  };
  return buildTranscoder(file, config, options, params, extra);
}

function circuitTracerTensors(tc: Transcoder, who: string): Record<string, RawTensor> {
  const a = exportArrays(tc);
  const c = a.config;
  if (c.dIn !== c.dOut) throw new InvalidArgumentError(`${who}: circuit-tracer transcoders map d_model to d_model, this one has d_in = ${c.dIn} and d_out = ${c.dOut}`);
  const tensors: Record<string, RawTensor> = {
    W_enc: rawF32(transposeData(a.W_enc, c.dIn, c.dSae), [c.dSae, c.dIn]),
    b_enc: rawF32(a.b_enc, [c.dSae]),
    W_dec: rawF32(a.W_dec, [c.dSae, c.dOut]),
    b_dec: rawF32(a.b_dec_out, [c.dOut]),
  };
  if (a.W_skip) tensors.W_skip = rawF32(transposeData(a.W_skip, c.dIn, c.dOut), [c.dOut, c.dIn]);
  if (a.threshold) tensors[THRESHOLD_KEY] = rawF32(a.threshold, [c.dSae]);
  if (c.arch === 'topk') tensors.k = rawI64Scalar(c.k!);
  return tensors;
}

/**
 * Writes `tc` as one circuit-tracer layer file (float32; what `SingleLayerTranscoder.to_safetensors`
 * writes). Our input pre-bias is folded into b_enc, our output bias becomes b_dec. TopK: see the
 * module comment (circuit-tracer's TopK has no ReLU).
 */
export function exportCircuitTracer(tc: Transcoder, file: string): void {
  const tensors = circuitTracerTensors(tc, 'exportCircuitTracer');
  mkdirSync(dirname(file), { recursive: true });
  writeSafetensors(file, tensors);
}

function relativeHook(hook: string, layer: number, who: string): string {
  const prefix = `blocks.${layer}.`;
  if (!hook.startsWith(prefix)) throw new InvalidArgumentError(`${who}: hook '${hook}' of the layer-${layer} transcoder is not inside blocks.${layer}`);
  return hook.slice(prefix.length);
}

/**
 * Writes a circuit-tracer transcoder set: `layer_{i}.safetensors` for each transcoder and a
 * `config.yaml` (model_kind transcoder_set, model_name, hooks relative to the layer, activation, k).
 * circuit-tracer needs one transcoder per layer 0..n-1, all with the same hooks, width and activation.
 */
export function exportCircuitTracerSet(transcoders: readonly Transcoder[], dir: string): void {
  const who = 'exportCircuitTracerSet';
  if (transcoders.length === 0) throw new InvalidArgumentError(`${who}: no transcoders given`);
  const sorted = [...transcoders].sort((a, b) => a.config.layer - b.config.layer);
  sorted.forEach((tc, i) => {
    if (tc.config.layer !== i) throw new InvalidArgumentError(`${who}: circuit-tracer needs one transcoder per layer 0..${sorted.length - 1}; got layers ${sorted.map((t) => t.config.layer).join(', ')}`);
  });
  const first = sorted[0]!.config;
  const hookIn = relativeHook(first.hookIn, 0, who);
  const hookOut = relativeHook(first.hookOut, 0, who);
  for (const tc of sorted) {
    const c = tc.config;
    if (relativeHook(c.hookIn, c.layer, who) !== hookIn || relativeHook(c.hookOut, c.layer, who) !== hookOut) throw new InvalidArgumentError(`${who}: layer ${c.layer} uses other hooks than layer 0`);
    if (c.arch !== first.arch || c.k !== first.k || c.dSae !== first.dSae || c.skip !== first.skip) throw new InvalidArgumentError(`${who}: layer ${c.layer} differs from layer 0 in architecture, k, width or skip connection`);
  }
  const files = sorted.map((tc) => circuitTracerTensors(tc, who));
  mkdirSync(dir, { recursive: true });
  files.forEach((tensors, i) => writeSafetensors(join(dir, `layer_${i}.safetensors`), tensors));
  const lines = [
    'model_kind: transcoder_set',
    ...(first.modelName ? [`model_name: ${JSON.stringify(first.modelName)}`] : []),
    `feature_input_hook: ${JSON.stringify(hookIn)}`,
    `feature_output_hook: ${JSON.stringify(hookOut)}`,
    `activation: ${first.arch}`,
    ...(first.arch === 'topk' ? [`k: ${first.k}`] : []),
  ];
  writeFileAtomic(join(dir, CIRCUIT_TRACER_CONFIG_FILE), [lines.join('\n') + '\n']);
}
