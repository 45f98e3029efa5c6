/**
 * circuit-tracer per-layer transcoders (PLTs): one safetensors file per layer (`layer_{i}.safetensors`,
 * `SingleLayerTranscoder.to_safetensors`) with
 *
 *   W_enc [F, d_in]   (F.linear layout: ours is its transpose)     b_enc [F]
 *   W_dec [F, d_out]                                                b_dec [d_out]  (OUTPUT bias)
 *   W_skip [d_out, d_in] optional, applied as x W_skipᵀ (ours is its transpose)
 *   activation_function.threshold [F] optional (JumpReLU: pre * (pre > threshold), as ours)
 *   k optional 0-d / 1-element integer (TopK; read, never written: circuit-tracer's strict
 *     load_state_dict refuses it, "Unexpected key(s): k", so exports give k in config.yaml)
 *
 *   y = act(x W_encᵀ + b_enc) W_dec + b_dec (+ x W_skipᵀ);  no input centring, so our b_dec = 0.
 *
 * A transcoder set's `config.yaml` sits beside the files (model_kind, model_name,
 * feature_input_hook / feature_output_hook relative to `blocks.L`, transcoders, activation, k),
 * read and written with the `yaml` package. circuit-tracer runs the model unprocessed
 * (fold_ln, center_writing_weights and center_unembed off), so loaded transcoders get processing
 * 'none', and exports of transcoders trained on a processed model fold the LayerNorm into the
 * encoder (raw-model.ts).
 *
 * Our exports also put `transcoders.activation` (and `transcoders.k`) into the safetensors
 * `__metadata__`, which circuit-tracer ignores, so that a lone layer file still says what it is.
 *
 * One semantic difference: circuit-tracer's TopK keeps the k largest pre-activations as they are,
 * ours applies a ReLU to them. They agree whenever the k-th largest pre-activation of a row is
 * >= 0 (always the case in practice for a wide trained TopK transcoder; check before relying on
 * negative activations).
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { Document, isMap, isScalar, LineCounter, parseDocument, type Node } from 'yaml';
import { FormatError, InvalidArgumentError } from '../../errors.js';
import { resolveHfUri } from '../../io/hf-cache.js';
import { describe } from '../../io/json.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { writeSafetensors, type RawTensor } from '../../io/safetensors.js';
import type { Tensor } from '../../tensor.js';
import { mlpHooks, TRANSCODER_ARCHS, type TranscoderArch, type TranscoderConfig } from '../config.js';
import type { ParameterName, Transcoder } from '../transcoder.js';
import {
  buildTranscoder,
  exportArrays,
  exportedModelName,
  prepareOutputFile,
  prepareOutputFolder,
  rawF32,
  TensorFile,
  transposeData,
  transposed,
  zeros,
  type ForeignLoadOptions,
} from './common.js';
import { isGemmaScope2File, loadGemmaScope2Transcoder, loadGemmaScopeTranscoder } from './gemma-scope.js';
import { describeFold, rawModelInputFold, type InputFold, type RawModelExportOptions } from './raw-model.js';

export const CIRCUIT_TRACER_CONFIG_FILE = 'config.yaml';
export const THRESHOLD_KEY = 'activation_function.threshold';
const LAYER_FILE = /^layer_(\d+)\.safetensors$/;
/** Safetensors `__metadata__` keys of our layer files (circuit-tracer does not read the metadata). */
export const METADATA_ACTIVATION = 'transcoders.activation';
export const METADATA_K = 'transcoders.k';
const METADATA_PROCESSING = 'transcoders.trained_on_processing';
const METADATA_FOLD = 'transcoders.input_fold';
/** The config.yaml key of our export record (circuit-tracer only reads the keys it knows). */
export const EXPORT_RECORD_KEY = 'transcoders_export';

// ---------------------------------------------------------------------------------------------
// YAML

/** A parsed YAML document: its value as plain data, and the line of a top-level key (for errors). */
export interface ParsedYaml {
  value: unknown;
  /** 1-based line of the value (or key) of top-level `key`, when the document is a mapping that has it. */
  lineOf(key: string): number | undefined;
}

/**
 * Parses YAML with the `yaml` package as YAML 1.1, the version PyYAML (circuit-tracer's reader)
 * implements (`yes` / `no` / `on` / `off` are booleans). Syntax errors, duplicate keys, several
 * documents and unresolvable aliases are FormatErrors naming `file` and, where known, the line.
 */
export function parseYaml(text: string, file: string): ParsedYaml {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { version: '1.1', lineCounter, uniqueKeys: true, prettyErrors: false });
  const error = doc.errors[0];
  if (error) {
    const line = error.linePos?.[0]?.line ?? (error.pos ? lineCounter.linePos(error.pos[0]).line : undefined);
    throw new FormatError(`${file}${line ? `:${line}` : ''}: invalid YAML (${error.message.split('\n')[0]})`, file);
  }
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    throw new FormatError(`${file}: invalid YAML (${(err as Error).message})`, file);
  }
  return {
    value,
    lineOf(key: string): number | undefined {
      const contents = doc.contents;
      if (!isMap(contents)) return undefined;
      const pair = contents.items.find((p) => (isScalar(p.key) ? p.key.value : p.key) === key);
      const node = (pair?.value ?? pair?.key) as Node | null | undefined;
      const offset = node?.range?.[0];
      return offset === undefined ? undefined : lineCounter.linePos(offset).line;
    },
  };
}

/** YAML text of `value` (YAML 1.1, so that PyYAML reads back exactly these values), with a leading comment. */
export function stringifyYaml(value: unknown, comment?: string): string {
  const doc = new Document(value, { version: '1.1' });
  if (comment) doc.commentBefore = comment;
  return doc.toString({ lineWidth: 0 });
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
  /** Layer -> the entry as listed (a path, absolute or relative to the config's folder, or an `hf://` URI). */
  layerSources: Map<number, string>;
  activation?: string;
  k?: number;
}

/** Reads a circuit-tracer `config.yaml`; malformed YAML and fields of the wrong type are FormatErrors naming the file, line and field. */
export function readCircuitTracerConfig(file: string): CircuitTracerSetConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new FormatError(`${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, file);
  }
  const { value, lineOf } = parseYaml(text, file);
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new FormatError(`${file}: expected a mapping (model_kind, feature_input_hook, transcoders, ...), got ${Array.isArray(value) ? 'a list' : describe(value)}`, file);
  }
  const y = value as Record<string, unknown>;
  const fail = (key: string, why: string): never => {
    const line = lineOf(key);
    throw new FormatError(`${file}${line ? `:${line}` : ''}: '${key}' ${why}`, file);
  };
  const str = (key: string): string | undefined => {
    const v = y[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string') fail(key, `must be a string, got ${describe(v)}`);
    return v as string;
  };
  const layerFiles = new Map<number, string>();
  const layerSources = new Map<number, string>();
  const list = y.transcoders;
  if (list !== undefined && list !== null) {
    if (!Array.isArray(list)) fail('transcoders', `must be a list of paths (or of {layer, filepath} items), got ${describe(list)}`);
    (list as unknown[]).forEach((entry, i) => {
      // v0.2: a list of paths / hf:// URIs, index = layer; v0.1: {id, layer, filepath}.
      let path: unknown = entry;
      let layer: unknown = i;
      if (entry !== null && typeof entry === 'object' && !Array.isArray(entry)) {
        const item = entry as Record<string, unknown>;
        path = item.filepath ?? item.path;
        layer = item.layer ?? i;
      }
      if (typeof path !== 'string' || path === '' || typeof layer !== 'number' || !Number.isInteger(layer) || layer < 0) {
        fail('transcoders', `entry ${i} is not a path (or {layer, filepath}): ${describe(entry)}`);
      }
      if (layerFiles.has(layer as number)) fail('transcoders', `lists layer ${layer} twice`);
      layerFiles.set(layer as number, basename((path as string).split('?')[0]!));
      layerSources.set(layer as number, path as string);
    });
  }
  const k = y.k;
  if (k !== undefined && k !== null && (typeof k !== 'number' || !Number.isInteger(k) || k <= 0)) fail('k', `must be a positive integer, got ${describe(k)}`);
  return {
    file,
    modelKind: str('model_kind'),
    modelName: str('model_name'),
    featureInputHook: str('feature_input_hook'),
    featureOutputHook: str('feature_output_hook'),
    layerFiles,
    layerSources,
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

/**
 * Whether `dir` looks like a circuit-tracer transcoder set: `layer_L.safetensors` files, or a config.yaml
 * with safetensors beside it or a transcoder-set config of its own (a downloaded set such as
 * `mntss/gemma-scope-transcoders` holds only config.yaml, its `transcoders:` entries pointing elsewhere).
 */
export function isCircuitTracerFolder(dir: string): boolean {
  const files = safetensorsFiles(dir);
  if (files.some((f) => LAYER_FILE.test(f))) return true;
  const config = join(dir, CIRCUIT_TRACER_CONFIG_FILE);
  if (!existsSync(config)) return false;
  if (files.length > 0) return true;
  try {
    return /^(model_kind|transcoders)\s*:/m.test(readFileSync(config, 'utf8'));
  } catch {
    return false;
  }
}

/**
 * The local file of a `transcoders:` entry, offline: an `hf://` URI is looked for beside the config
 * (same path, then same file name when no other entry shares it), then in the Hugging Face hub cache
 * (lib/io/hf-cache.ts); a path is looked for beside the config by name (a set folder moved elsewhere),
 * then as written (relative to the config's folder). Undefined when a path is found nowhere.
 */
function resolveLayerEntry(entry: string, dir: string, ct: CircuitTracerSetConfig): string | undefined {
  if (entry.startsWith('hf://')) {
    const names = [...ct.layerFiles.values()];
    const name = basename(entry.split('?')[0]!);
    return resolveHfUri(entry, dir, { uniqueName: names.filter((n) => n === name).length === 1 });
  }
  const candidates = [join(dir, basename(entry)), resolve(dir, entry)];
  return candidates.find((f) => existsSync(f) && statSync(f).isFile());
}

/** The options whose value is not undefined (so that spreading them does not erase other fields). */
function definedOnly(options: CircuitTracerLoadOptions): ForeignLoadOptions {
  const { config: _config, ...rest } = options;
  return Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== undefined)) as ForeignLoadOptions;
}

/** What our exports record in a layer file's `__metadata__` (absent in circuit-tracer's own files). */
function activationMetadata(tf: TensorFile): { activation?: TranscoderArch; k?: number } {
  const meta = tf.header.metadata;
  const out: { activation?: TranscoderArch; k?: number } = {};
  const activation = meta[METADATA_ACTIVATION];
  if (activation !== undefined) {
    if (!(TRANSCODER_ARCHS as readonly string[]).includes(activation)) tf.fail(`metadata '${METADATA_ACTIVATION}' is ${describe(activation)}, expected ${TRANSCODER_ARCHS.join(', ')}`);
    out.activation = activation as TranscoderArch;
  }
  const k = meta[METADATA_K];
  if (k !== undefined) {
    if (!/^[1-9]\d*$/.test(k)) tf.fail(`metadata '${METADATA_K}' is ${describe(k)}, expected a positive integer`);
    out.k = Number(k);
  }
  return out;
}

/**
 * The activation: the config's `activation` when it gives one (as circuit-tracer does), else the
 * file's metadata (our exports), else what the file's keys imply (a threshold: JumpReLU, `k`: TopK,
 * neither: ReLU). Contradictions fail.
 */
function resolveActivation(
  file: string,
  ct: CircuitTracerSetConfig | null,
  hasThreshold: boolean,
  tensorK: number | undefined,
  meta: { activation?: TranscoderArch; k?: number },
): { arch: TranscoderArch; k?: number } {
  const fail = (why: string, where = file): never => {
    throw new FormatError(`${where}: ${why}`, where);
  };
  if (tensorK !== undefined && meta.k !== undefined && tensorK !== meta.k) fail(`tensor 'k' = ${tensorK} disagrees with its metadata '${METADATA_K}' = ${meta.k}`);
  const fileK = tensorK ?? meta.k;
  const configActivation = ct?.activation;
  if (configActivation !== undefined && meta.activation !== undefined && configActivation !== meta.activation) {
    fail(`its metadata says activation ${meta.activation} but ${ct!.file} sets activation: ${configActivation}`);
  }
  const activation = configActivation ?? meta.activation;
  const from = configActivation !== undefined ? ct!.file : `its metadata '${METADATA_ACTIVATION}'`;
  if (activation !== undefined) {
    if (activation === 'topk') {
      if (hasThreshold) fail(`has '${THRESHOLD_KEY}' but ${from} sets activation: topk`);
      if (fileK !== undefined && ct?.k !== undefined && fileK !== ct.k) fail(`${tensorK !== undefined ? "tensor 'k'" : `metadata '${METADATA_K}'`} = ${fileK} disagrees with k = ${ct.k} in ${ct.file}`);
      const k = ct?.k ?? fileK;
      if (k === undefined) fail(`activation is topk but neither ${ct ? ct.file : 'a config.yaml'} nor ${file} gives 'k'`, ct?.file ?? file);
      return { arch: 'topk', k };
    }
    if (activation === 'relu') {
      if (hasThreshold || fileK !== undefined) fail(`has '${hasThreshold ? THRESHOLD_KEY : 'k'}' but ${from} sets activation: relu`);
      return { arch: 'relu' };
    }
    if (activation === 'jumprelu') {
      if (!hasThreshold) fail(`missing tensor '${THRESHOLD_KEY}' (${from} sets activation: jumprelu)`);
      return { arch: 'jumprelu' };
    }
    fail(`activation ${describe(activation)} is not supported (relu, topk, jumprelu)`, ct!.file);
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
    throw new FormatError(`${ct.file}: model_kind ${describe(ct.modelKind)} is not supported (only per-layer transcoders, "transcoder_set")`, ct.file);
  }

  let file: string;
  if (!isDir) {
    file = path;
  } else if (options.layer !== undefined) {
    const listed = ct?.layerSources.get(options.layer);
    const fromList = listed !== undefined ? resolveLayerEntry(listed, dir, ct!) : undefined;
    const fallback = join(dir, `layer_${options.layer}.safetensors`);
    const found = fromList ?? (existsSync(fallback) ? fallback : undefined);
    if (!found) {
      const looked = [...(listed !== undefined ? [listed] : []), `layer_${options.layer}.safetensors`];
      throw new FormatError(`${dir}: no transcoder for layer ${options.layer} (looked for ${looked.join(', ')})`, dir);
    }
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
  if (layer === undefined && ct) {
    // By file name only when no other entry shares it (Gemma Scope's files are all params.npz).
    const matches = [...ct.layerFiles].filter(([, f]) => f === basename(file));
    if (matches.length === 1) layer = matches[0]![0];
  }
  layer ??= -1;

  // Sets may list other formats' files (circuit-tracer loads Gemma Scope's params.npz and Gemma Scope 2's
  // safetensors with their own loaders); the set's hooks and model name apply to them too.
  if (file.toLowerCase().endsWith('.npz') || isGemmaScope2File(file)) {
    const setFields: ForeignLoadOptions = {
      ...(layer >= 0 ? { layer } : {}),
      ...(ct?.featureInputHook !== undefined && layer >= 0 ? { hookIn: absoluteHook(ct.featureInputHook, layer) } : {}),
      ...(ct?.featureOutputHook !== undefined && layer >= 0 ? { hookOut: absoluteHook(ct.featureOutputHook, layer) } : {}),
      ...(ct?.modelName !== undefined ? { modelName: ct.modelName } : {}),
    };
    const merged = { ...setFields, ...definedOnly(options) };
    return file.toLowerCase().endsWith('.npz') ? loadGemmaScopeTranscoder(file, merged) : loadGemmaScope2Transcoder(file, merged);
  }

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
  const tensorK = tf.has('k') ? await tf.intScalar('k') : undefined;
  tf.rejectUnused();

  const { arch, k } = resolveActivation(file, ct, hasThreshold, tensorK, activationMetadata(tf));
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

// ---------------------------------------------------------------------------------------------
// Exports

/** One layer file, computed (and validated) before anything is written. */
interface LayerFile {
  tensors: Record<string, RawTensor>;
  metadata: Record<string, string>;
  fold: InputFold;
}

function circuitTracerLayer(tc: Transcoder, who: string, options: RawModelExportOptions): LayerFile {
  const c = tc.config;
  const fold = rawModelInputFold(tc, who, 'circuit-tracer', options);
  if (c.dIn !== c.dOut) throw new InvalidArgumentError(`${who}: circuit-tracer transcoders map d_model to d_model, this one has d_in = ${c.dIn} and d_out = ${c.dOut}`);
  const a = exportArrays(tc, fold);
  const tensors: Record<string, RawTensor> = {
    W_enc: rawF32(transposeData(a.W_enc, c.dIn, c.dSae), [c.dSae, c.dIn]),
    b_enc: rawF32(a.b_enc, [c.dSae]),
    W_dec: rawF32(a.W_dec, [c.dSae, c.dOut]),
    b_dec: rawF32(a.b_dec_out, [c.dOut]),
  };
  if (a.W_skip) tensors.W_skip = rawF32(transposeData(a.W_skip, c.dIn, c.dOut), [c.dOut, c.dIn]);
  if (a.threshold) tensors[THRESHOLD_KEY] = rawF32(a.threshold, [c.dSae]);
  const metadata: Record<string, string> = {
    [METADATA_ACTIVATION]: c.arch,
    ...(c.arch === 'topk' ? { [METADATA_K]: String(c.k) } : {}),
    [METADATA_PROCESSING]: c.processing ?? 'not recorded',
    [METADATA_FOLD]: describeFold(fold),
  };
  return { tensors, metadata, fold };
}

/**
 * Writes `tc` as one circuit-tracer layer file (float32; the tensors `SingleLayerTranscoder.to_safetensors`
 * writes, without `k`, see the module comment). Our input pre-bias is folded into b_enc, our output
 * bias becomes b_dec. A transcoder trained on a TransformerLens-processed model needs
 * `options.model` (the raw model) and is re-expressed on the raw model circuit-tracer runs (raw-model.ts).
 * circuit-tracer reads the activation of a TopK file only from a set's config.yaml: use
 * {@link exportCircuitTracerSet} for sets. TopK: see the module comment (circuit-tracer's TopK has no ReLU).
 */
export function exportCircuitTracer(tc: Transcoder, file: string, options: RawModelExportOptions = {}): void {
  const who = 'exportCircuitTracer';
  const layer = circuitTracerLayer(tc, who, options);
  prepareOutputFile(file, who);
  writeSafetensors(file, layer.tensors, layer.metadata);
}

function relativeHook(hook: string, layer: number, who: string): string {
  const prefix = `blocks.${layer}.`;
  if (!hook.startsWith(prefix)) throw new InvalidArgumentError(`${who}: hook '${hook}' of the layer-${layer} transcoder is not inside blocks.${layer}`);
  return hook.slice(prefix.length);
}

export interface CircuitTracerSetExportOptions extends RawModelExportOptions {
  /**
   * Where the `transcoders:` list of config.yaml points: by default the absolute paths of the
   * written files (what circuit-tracer's `load_transcoders(config)` opens on this machine); with a
   * prefix such as `hf://user/repo` the entries are `{prefix}/layer_{i}.safetensors`, for a set
   * uploaded there.
   */
  uriPrefix?: string;
  /** `model_name` to write (default: the transcoders' model, a local folder named as in exportedModelName). */
  modelName?: string;
}

/**
 * Writes a circuit-tracer transcoder set: `layer_{i}.safetensors` for each transcoder, then
 * `config.yaml` (model_kind transcoder_set, model_name, hooks relative to the layer, activation, k,
 * the `transcoders:` list, and our export record under `transcoders_export`, which circuit-tracer
 * ignores). circuit-tracer needs one transcoder per layer 0..n-1, all with the same hooks, width
 * and activation. Everything is validated and computed before the first file is written; the
 * folder must not hold other `layer_*.safetensors` files (circuit-tracer would load them too).
 */
export function exportCircuitTracerSet(transcoders: readonly Transcoder[], dir: string, options: CircuitTracerSetExportOptions = {}): void {
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
  if (options.uriPrefix !== undefined && (typeof options.uriPrefix !== 'string' || options.uriPrefix.trim() === '')) {
    throw new InvalidArgumentError(`${who}: uriPrefix must be a non-empty string such as 'hf://user/repo', got ${JSON.stringify(options.uriPrefix)}`);
  }
  const files = sorted.map((tc) => circuitTracerLayer(tc, who, options));
  let stale: string[] = [];
  try {
    stale = readdirSync(dir).filter((f) => {
      const m = LAYER_FILE.exec(f);
      return m !== null && Number(m[1]) >= files.length;
    });
  } catch {
    // no folder yet
  }
  if (stale.length > 0) throw new InvalidArgumentError(`${who}: ${dir} already holds ${stale.join(', ')}, which circuit-tracer would load as part of this ${files.length}-layer set; use an empty folder`);
  prepareOutputFolder(dir, who);

  const names = files.map((_, i) => `layer_${i}.safetensors`);
  const prefix = options.uriPrefix?.replace(/\/+$/, '');
  const modelName = options.modelName ?? exportedModelName(first.modelName ?? options.model?.dir);
  const folds = files.map((f) => f.fold);
  const config = {
    model_kind: 'transcoder_set',
    ...(modelName ? { model_name: modelName } : {}),
    feature_input_hook: hookIn,
    feature_output_hook: hookOut,
    activation: first.arch,
    ...(first.arch === 'topk' ? { k: first.k } : {}),
    transcoders: names.map((n) => (prefix ? `${prefix}/${n}` : resolve(dir, n))),
    [EXPORT_RECORD_KEY]: {
      trained_on_processing: [...new Set(sorted.map((tc) => tc.config.processing ?? 'not recorded'))].join(', '),
      input_fold: [...new Set(folds.map((f) => f.kind))].join(', '),
      ...(folds.some((f) => f.kind !== 'none') ? { folded: folds.map(describeFold) } : {}),
    },
  };
  files.forEach((f, i) => writeSafetensors(join(dir, names[i]!), f.tensors, f.metadata));
  // config.yaml last: a folder with it is complete (circuit-tracer's own cache relies on the same order).
  writeFileAtomic(join(dir, CIRCUIT_TRACER_CONFIG_FILE), [stringifyYaml(config, ' circuit-tracer transcoder set, written by the transcoders library')]);
}
