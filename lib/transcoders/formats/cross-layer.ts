/**
 * Cross-layer transcoder files, in and out:
 *
 * - native: a folder with `cfg.json` (the CrossLayerConfig plus `format` and `version`) and
 *   `cross_layer_transcoder.safetensors` (every parameter under its own name, lossless, in its dtype);
 * - circuit-tracer (also what Neuronpedia serves): `config.yaml` with `model_kind:
 *   cross_layer_transcoder` and the hooks relative to the layer, and per source layer i
 *   `W_enc_{i}.safetensors` (`W_enc_{i}` [F, d], `b_enc_{i}` [F], `b_dec_{i}` [d], optional
 *   `threshold_{i}` [F] for JumpReLU) and `W_dec_{i}.safetensors` (`W_dec_{i}` [F, L - i, d]).
 *   Its loader counts the `W_enc_*` files for L, reads relu or (with thresholds) jumprelu, applies
 *   no input pre-bias and reads no skip connection: a skip or TopK CLT cannot be written there
 *   without changing its function, so those exports are refused.
 *
 * - Gemma Scope 2 CLTs (in): per source layer l a folder `layer_{l}_...` with `params.safetensors`
 *   (`w_enc` [d, F], `b_enc` [F], `b_dec` [d], `threshold` [F], `w_dec` [F, L, d] of which only the
 *   targets t >= l are used, optional `affine_skip_connection` [d, d]) and a `config.json` naming the
 *   hooks. JumpReLU as Google's reference computes it, (pre > θ) relu(pre): ours for θ >= 0, so
 *   negative thresholds are raised to 0 (as for Gemma Scope's per-layer transcoders).
 * - target-indexed checkpoints of Goreg12345/crosslayer-transcoder (in): target-indexed.ts.
 *
 * Every file is written atomically; config files last, so a folder with one is complete.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { FormatError, InvalidArgumentError } from '../../errors.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { describe, readJsonObjectFile } from '../../io/json.js';
import { loadSafetensorsTensors, writeSafetensors } from '../../io/safetensors.js';
import { Tensor } from '../../tensor.js';
import { crossLayerParameterShapes, CrossLayerTranscoder, validateCrossLayerConfig, type CrossLayerConfig } from '../cross-layer.js';
import type { PlacementOptions } from '../transcoder.js';
import { CIRCUIT_TRACER_CONFIG_FILE, readCircuitTracerConfig, stringifyYaml } from './circuit-tracer.js';
import { exportedModelName, floatData, prepareOutputFolder, readJsonObject, TensorFile, transposeData } from './common.js';
import { GEMMA_SCOPE_2_CONFIG_FILE, GEMMA_SCOPE_2_FILE, hookOfHfHookPoint, layerFromGemmaScopePath } from './gemma-scope.js';
import { NATIVE_FORMAT } from './native.js';
import { isTargetIndexedCrossLayer, loadTargetIndexedCrossLayer } from './target-indexed.js';

export const CROSS_LAYER_CONFIG_FILE = 'cfg.json';
export const CROSS_LAYER_WEIGHTS_FILE = 'cross_layer_transcoder.safetensors';
export const CROSS_LAYER_VERSION = 1;
export const CIRCUIT_TRACER_CLT_KIND = 'cross_layer_transcoder';

const ENC_FILE = /^W_enc_(\d+)\.safetensors$/;

/** Writes `clt` to the folder `dir` in the native format. */
export function saveCrossLayerTranscoder(clt: CrossLayerTranscoder, dir: string): void {
  prepareOutputFolder(dir, 'saveCrossLayerTranscoder');
  writeSafetensors(join(dir, CROSS_LAYER_WEIGHTS_FILE), clt.parameters(), { format: NATIVE_FORMAT, kind: CIRCUIT_TRACER_CLT_KIND });
  const cfg = { format: NATIVE_FORMAT, version: CROSS_LAYER_VERSION, ...clt.config };
  writeFileAtomic(join(dir, CROSS_LAYER_CONFIG_FILE), [JSON.stringify(cfg, null, 2) + '\n']);
}

/** Whether `dir` holds a cross-layer transcoder in the native format. */
export function isNativeCrossLayer(dir: string): boolean {
  const file = join(dir, CROSS_LAYER_CONFIG_FILE);
  if (!existsSync(file) || !existsSync(join(dir, CROSS_LAYER_WEIGHTS_FILE))) return false;
  try {
    const cfg = JSON.parse(readFileSync(file, 'utf8')) as { format?: unknown; kind?: unknown };
    return cfg.format === NATIVE_FORMAT && cfg.kind === CIRCUIT_TRACER_CLT_KIND;
  } catch {
    return false;
  }
}

/** Whether `dir` holds a circuit-tracer cross-layer transcoder (`W_enc_0.safetensors`, and a config.yaml saying so when there is one). */
export function isCircuitTracerCrossLayer(dir: string): boolean {
  if (!existsSync(join(dir, 'W_enc_0.safetensors'))) return false;
  const config = join(dir, CIRCUIT_TRACER_CONFIG_FILE);
  if (!existsSync(config)) return true;
  return new RegExp(`^model_kind\\s*:\\s*["']?${CIRCUIT_TRACER_CLT_KIND}`, 'm').test(readFileSync(config, 'utf8'));
}

async function loadNativeCrossLayer(dir: string, options: PlacementOptions): Promise<CrossLayerTranscoder> {
  const cfgFile = join(dir, CROSS_LAYER_CONFIG_FILE);
  const raw = readJsonObjectFile(cfgFile) as Partial<CrossLayerConfig> & { format?: unknown; version?: unknown };
  if (raw.format !== NATIVE_FORMAT) throw new FormatError(`${cfgFile}: 'format' is ${describe(raw.format)}, expected "${NATIVE_FORMAT}"`, cfgFile);
  if (typeof raw.version !== 'number' || raw.version > CROSS_LAYER_VERSION) {
    throw new FormatError(`${cfgFile}: unsupported version ${describe(raw.version)} (this library reads up to ${CROSS_LAYER_VERSION})`, cfgFile);
  }
  const { format: _format, version: _version, ...fields } = raw;
  let config: CrossLayerConfig;
  try {
    config = validateCrossLayerConfig(fields, cfgFile);
  } catch (err) {
    throw new FormatError((err as Error).message, cfgFile);
  }
  const weights = new TensorFile(join(dir, CROSS_LAYER_WEIGHTS_FILE));
  const shapes = crossLayerParameterShapes(config);
  for (const [name, shape] of Object.entries(shapes)) weights.expect(name, shape, 'from cfg.json');
  weights.rejectUnused();
  const tensors = await loadSafetensorsTensors(weights.header, Object.keys(shapes));
  return CrossLayerTranscoder.fromParameters(config, tensors, options);
}

/** `blocks.L.<hook>` for a hook relative to the layer (absolute names are kept). */
export function layerHook(hook: string, layer: number): string {
  return hook.startsWith('blocks.') ? hook.replace(/^blocks\.\d+\./, `blocks.${layer}.`) : `blocks.${layer}.${hook}`;
}

async function loadCircuitTracerCrossLayer(dir: string, options: PlacementOptions): Promise<CrossLayerTranscoder> {
  const configFile = join(dir, CIRCUIT_TRACER_CONFIG_FILE);
  const ct = existsSync(configFile) ? readCircuitTracerConfig(configFile) : undefined;
  if (ct?.modelKind !== undefined && ct.modelKind !== CIRCUIT_TRACER_CLT_KIND) {
    throw new FormatError(`${configFile}: model_kind ${describe(ct.modelKind)}, expected "${CIRCUIT_TRACER_CLT_KIND}"`, configFile);
  }
  if (ct?.activation !== undefined && ct.activation !== 'relu' && ct.activation !== 'jump_relu' && ct.activation !== 'jumprelu') {
    throw new FormatError(`${configFile}: activation ${describe(ct.activation)} is not one circuit-tracer's CLTs have (relu or jump_relu)`, configFile);
  }
  const layers = readdirSync(dir)
    .map((f) => ENC_FILE.exec(f))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
  const L = layers.length;
  layers.forEach((l, i) => {
    if (l !== i) throw new FormatError(`${dir}: the encoder files must be W_enc_0..W_enc_${L - 1}.safetensors; found W_enc_${l} in place of W_enc_${i}`, dir);
  });
  const first = new TensorFile(join(dir, 'W_enc_0.safetensors'));
  const [F, d] = first.float('W_enc_0', 2).shape as [number, number];
  const jump = first.has('threshold_0');
  const encData = new Float32Array(L * d * F);
  const bEnc = new Float32Array(L * F);
  const threshold = new Float32Array(L * F);
  let bDec: Float32Array | undefined;
  let dOut = 0;
  const params: Record<string, Tensor> = {};
  for (let l = 0; l < L; l++) {
    const enc = new TensorFile(join(dir, `W_enc_${l}.safetensors`));
    enc.expect(`W_enc_${l}`, [F, d], 'the shape of W_enc_0');
    const bDecEntry = enc.float(`b_dec_${l}`, 1);
    if (l === 0) {
      dOut = bDecEntry.shape[0]!;
      bDec = new Float32Array(L * dOut);
    } else if (bDecEntry.shape[0] !== dOut) enc.fail(`tensor 'b_dec_${l}' has shape [${bDecEntry.shape}], expected [${dOut}] (the shape of b_dec_0)`);
    enc.expect(`b_enc_${l}`, [F], 'the features of W_enc');
    if (jump) enc.expect(`threshold_${l}`, [F], 'W_enc_0.safetensors has thresholds');
    enc.rejectUnused();
    const t = await loadSafetensorsTensors(enc.header, [`W_enc_${l}`, `b_enc_${l}`, `b_dec_${l}`, ...(jump ? [`threshold_${l}`] : [])]);
    // circuit-tracer's W_enc_{l} is [F, d] (pre = x W_enc^T); ours is [d, F].
    encData.set(transposeData(Float32Array.from(floatData(t[`W_enc_${l}`]!)), F, d), l * d * F);
    bEnc.set(floatData(t[`b_enc_${l}`]!), l * F);
    bDec!.set(floatData(t[`b_dec_${l}`]!), l * dOut);
    if (jump) threshold.set(floatData(t[`threshold_${l}`]!), l * F);
    Object.values(t).forEach((x) => x.dispose());
    const dec = new TensorFile(join(dir, `W_dec_${l}.safetensors`));
    dec.expect(`W_dec_${l}`, [F, L - l, dOut], `source layer ${l} of ${L} writes into ${L - l} layers`);
    dec.rejectUnused();
    params[`W_dec_${l}`] = (await loadSafetensorsTensors(dec.header, [`W_dec_${l}`]))[`W_dec_${l}`]!;
  }
  params.W_enc = Tensor.from(encData, [L, d, F]);
  params.b_enc = Tensor.from(bEnc, [L, F]);
  params.b_dec = Tensor.from(bDec!, [L, dOut]);
  if (jump) params.threshold = Tensor.from(threshold, [L, F]);
  const hookIn = ct?.featureInputHook ?? 'hook_resid_mid';
  const hookOut = ct?.featureOutputHook ?? 'hook_mlp_out';
  const config: Partial<CrossLayerConfig> = {
    arch: jump ? 'jumprelu' : 'relu',
    nLayers: L,
    dIn: d,
    dOut,
    dSae: F,
    skip: false,
    hookIn: Array.from({ length: L }, (_, l) => layerHook(hookIn, l)),
    hookOut: Array.from({ length: L }, (_, l) => layerHook(hookOut, l)),
    modelName: ct?.modelName ?? null,
    ...(jump ? { bandwidth: 0.1 } : {}),
  };
  try {
    return await CrossLayerTranscoder.fromParameters(config, params, options);
  } finally {
    Object.values(params).forEach((t) => t.dispose());
  }
}

/** Layer -> params.safetensors of a Gemma Scope 2 CLT folder (`layer_{l}_.../params.safetensors` with a 3-d w_dec); empty when it is not one. */
function gemmaScope2CrossLayerFiles(dir: string): Map<number, string> {
  const out = new Map<number, string>();
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const name of names) {
    const layer = layerFromGemmaScopePath(name);
    const file = join(dir, name, GEMMA_SCOPE_2_FILE);
    if (layer === undefined || !existsSync(file)) continue;
    try {
      if (new TensorFile(file).header.entries.get('w_dec')?.shape.length !== 3) continue;
    } catch {
      continue;
    }
    out.set(layer, file);
  }
  return out;
}

/** Whether `dir` holds a Gemma Scope 2 cross-layer transcoder. */
export function isGemmaScope2CrossLayer(dir: string): boolean {
  return gemmaScope2CrossLayerFiles(dir).size > 0;
}

async function loadGemmaScope2CrossLayer(dir: string, options: PlacementOptions): Promise<CrossLayerTranscoder> {
  const files = gemmaScope2CrossLayerFiles(dir);
  const first = new TensorFile(files.get(0) ?? [...files.values()][0]!);
  const wDec0 = first.float('w_dec', 3);
  const [F, L, d] = wDec0.shape as [number, number, number];
  for (let l = 0; l < L; l++) {
    if (!files.has(l)) throw new FormatError(`${dir}: a Gemma Scope 2 cross-layer transcoder of ${L} layers (w_dec [${wDec0.shape}]) needs layer_0..layer_${L - 1}; layer_${l} is missing`, dir);
  }
  if (files.size !== L) throw new FormatError(`${dir}: ${files.size} layer folders, but w_dec says ${L} layers`, dir);
  const dIn = first.float('w_enc', 2).shape[0]!;
  const skip = first.has('affine_skip_connection');
  const wEnc = new Float32Array(L * dIn * F);
  const bEnc = new Float32Array(L * F);
  const bDec = new Float32Array(L * d);
  const threshold = new Float32Array(L * F);
  const wSkip = skip ? new Float32Array(L * dIn * d) : undefined;
  const params: Record<string, Tensor> = {};
  const hookIn: string[] = [];
  const hookOut: string[] = [];
  let modelName: string | null = null;
  for (let l = 0; l < L; l++) {
    const file = files.get(l)!;
    const tf = new TensorFile(file);
    tf.expect('w_enc', [dIn, F], "layer 0's w_enc");
    tf.expect('b_enc', [F], 'F features');
    tf.expect('b_dec', [d], 'd from w_dec');
    tf.expect('threshold', [F], 'F features');
    tf.expect('w_dec', [F, L, d], "layer 0's w_dec");
    if (tf.has('affine_skip_connection') !== skip) tf.fail(`${skip ? 'has no' : 'has an'} 'affine_skip_connection', unlike layer 0`);
    if (skip) tf.expect('affine_skip_connection', [dIn, d], 'd_in x d_out, applied as x · affine_skip_connection');
    tf.rejectUnused();
    const t = await tf.load(['w_enc', 'b_enc', 'b_dec', 'threshold', 'w_dec', ...(skip ? ['affine_skip_connection'] : [])]);
    const finite = Object.entries(t).find(([, x]) => !floatData(x).every(Number.isFinite));
    if (finite) tf.fail(`tensor '${finite[0]}' holds NaN or infinite values`);
    wEnc.set(floatData(t.w_enc!), l * dIn * F);
    bEnc.set(floatData(t.b_enc!), l * F);
    bDec.set(floatData(t.b_dec!), l * d);
    threshold.set(floatData(t.threshold!).map((v) => (v < 0 ? 0 : v)), l * F);
    if (wSkip) wSkip.set(floatData(t.affine_skip_connection!), l * dIn * d);
    // Source layer l writes into layers l..L-1: w_dec[:, l:, :].
    const full = floatData(t.w_dec!);
    const dec = new Float32Array(F * (L - l) * d);
    for (let j = 0; j < F; j++) dec.set(full.subarray((j * L + l) * d, (j + 1) * L * d), j * (L - l) * d);
    params[`W_dec_${l}`] = Tensor.from(dec, [F, L - l, d]);
    Object.values(t).forEach((x) => x.dispose());
    const cfgFile = join(dirname(file), GEMMA_SCOPE_2_CONFIG_FILE);
    const cfg = existsSync(cfgFile) ? readJsonObject(cfgFile) : {};
    const point = (key: string, fallback: string): string => {
      const v = cfg[key];
      if (v === undefined || v === null) return fallback;
      const mapped = typeof v === 'string' ? hookOfHfHookPoint(v) : undefined;
      if (!mapped || mapped.layer !== l) throw new FormatError(`${cfgFile}: '${key}' ${describe(v)} is not a module point of layer ${l} this library maps to a hook`, cfgFile);
      return mapped.hook;
    };
    hookIn.push(point('hf_hook_point_in', `blocks.${l}.mlp.hook_in`));
    hookOut.push(point('hf_hook_point_out', `blocks.${l}.hook_mlp_out`));
    if (typeof cfg.model_name === 'string') modelName = cfg.model_name;
  }
  params.W_enc = Tensor.from(wEnc, [L, dIn, F]);
  params.b_enc = Tensor.from(bEnc, [L, F]);
  params.b_dec = Tensor.from(bDec, [L, d]);
  params.threshold = Tensor.from(threshold, [L, F]);
  if (wSkip) params.W_skip = Tensor.from(wSkip, [L, dIn, d]);
  const config: Partial<CrossLayerConfig> = { arch: 'jumprelu', bandwidth: 0.001, nLayers: L, dIn, dOut: d, dSae: F, skip, hookIn, hookOut, modelName, processing: 'none' };
  try {
    return await CrossLayerTranscoder.fromParameters(config, params, options);
  } finally {
    Object.values(params).forEach((t) => t.dispose());
  }
}

/**
 * The cross-layer transcoder folder `path` names: itself (native or circuit-tracer layout), or the
 * `clt/` of a `transcoders train --arch clt-*` output folder; null when it holds none.
 */
export function crossLayerFolder(path: string): string | null {
  for (const dir of [path, join(path, 'clt')]) {
    if (isNativeCrossLayer(dir) || isCircuitTracerCrossLayer(dir) || isGemmaScope2CrossLayer(dir) || isTargetIndexedCrossLayer(dir)) return dir;
  }
  return null;
}

/** Reads a cross-layer transcoder folder: the native format, circuit-tracer's layout, Gemma Scope 2's, or the target-indexed checkpoints of crosslayer-transcoder (target-indexed.ts). */
export async function loadCrossLayerTranscoder(path: string, options: PlacementOptions = {}): Promise<CrossLayerTranscoder> {
  if (isNativeCrossLayer(path)) return loadNativeCrossLayer(path, options);
  if (isCircuitTracerCrossLayer(path)) return loadCircuitTracerCrossLayer(path, options);
  if (isGemmaScope2CrossLayer(path)) return loadGemmaScope2CrossLayer(path, options);
  if (isTargetIndexedCrossLayer(path)) return loadTargetIndexedCrossLayer(path, options);
  throw new FormatError(`${path}: not a cross-layer transcoder folder (expected ${CROSS_LAYER_CONFIG_FILE} with kind "${CIRCUIT_TRACER_CLT_KIND}", circuit-tracer's W_enc_0.safetensors, Gemma Scope 2's layer_0_*/params.safetensors with a 3-d w_dec, or a crosslayer-transcoder config.yaml + checkpoint.safetensors)`, path);
}

/** The hook of layer 0 relative to its block, checking that every layer uses the same one. */
function relativeHooks(hooks: readonly string[], who: string): string {
  const rel = hooks.map((h, l) => {
    const prefix = `blocks.${l}.`;
    if (!h.startsWith(prefix)) throw new InvalidArgumentError(`${who}: layer ${l}'s hook '${h}' is not inside blocks.${l}`);
    return h.slice(prefix.length);
  });
  if (rel.some((h) => h !== rel[0])) throw new InvalidArgumentError(`${who}: circuit-tracer's config.yaml names one hook for every layer; this CLT uses ${[...new Set(rel)].join(', ')}`);
  return rel[0]!;
}

/**
 * Writes `clt` in circuit-tracer's CLT layout into `dir` (which must not hold other `W_enc_*` /
 * `W_dec_*` files: circuit-tracer counts them). `modelName` goes into config.yaml.
 */
export function exportCircuitTracerCrossLayer(clt: CrossLayerTranscoder, dir: string, options: { modelName?: string } = {}): void {
  const who = 'exportCircuitTracerCrossLayer';
  const c = clt.config;
  if (c.processing === 'transformerlens') throw new InvalidArgumentError(`${who}: this CLT was trained on a TransformerLens-processed model, and circuit-tracer runs the model with raw weights (its residual stream is not centred, its LayerNorm weights not folded); train it on the raw model (transcoders train --processing none)`);
  if (c.skip) throw new InvalidArgumentError(`${who}: circuit-tracer's CLT files carry no skip connection (its loader reads none); this CLT's W_skip would be lost. Save it natively (saveCrossLayerTranscoder)`);
  if (c.arch === 'topk') throw new InvalidArgumentError(`${who}: circuit-tracer's CLTs are relu or jump_relu; a TopK CLT would load there as relu, with every feature active. Save it natively (saveCrossLayerTranscoder)`);
  const hookIn = relativeHooks(c.hookIn, who);
  const hookOut = relativeHooks(c.hookOut, who);
  let stale: string[] = [];
  try {
    stale = readdirSync(dir).filter((f) => /^W_(enc|dec)_(\d+)\.safetensors$/.test(f) && Number(/(\d+)/.exec(f)![1]) >= c.nLayers);
  } catch {
    // no folder yet
  }
  if (stale.length > 0) throw new InvalidArgumentError(`${who}: ${dir} already holds ${stale.join(', ')}, which circuit-tracer would count as layers of this ${c.nLayers}-layer CLT; use an empty folder`);
  prepareOutputFolder(dir, who);
  const p = clt.parameters();
  const L = c.nLayers;
  const F = c.dSae;
  const wEnc = floatData(p.W_enc!);
  const bEnc = floatData(p.b_enc!);
  const bDec = floatData(p.b_dec!);
  const threshold = p.threshold ? floatData(p.threshold) : undefined;
  if (c.arch === 'batchtopk' && threshold!.some((v) => v < 0)) throw new InvalidArgumentError(`${who}: a batchtopk CLT goes to circuit-tracer as jump_relu, which equals it only for thresholds >= 0; this one has negative thresholds`);
  const asTensor = (data: Float32Array | Float64Array, shape: number[]) => Tensor.from(Float32Array.from(data), shape);
  for (let l = 0; l < L; l++) {
    const enc: Record<string, Tensor> = {
      [`W_enc_${l}`]: asTensor(transposeData(Float32Array.from(wEnc.subarray(l * c.dIn * F, (l + 1) * c.dIn * F)), c.dIn, F), [F, c.dIn]),
      [`b_enc_${l}`]: asTensor(bEnc.subarray(l * F, (l + 1) * F), [F]),
      [`b_dec_${l}`]: asTensor(bDec.subarray(l * c.dOut, (l + 1) * c.dOut), [c.dOut]),
      ...(threshold ? { [`threshold_${l}`]: asTensor(threshold.subarray(l * F, (l + 1) * F), [F]) } : {}),
    };
    writeSafetensors(join(dir, `W_enc_${l}.safetensors`), enc);
    Object.values(enc).forEach((t) => t.dispose());
    writeSafetensors(join(dir, `W_dec_${l}.safetensors`), { [`W_dec_${l}`]: p[`W_dec_${l}`]! });
  }
  const modelName = options.modelName ?? exportedModelName(c.modelName);
  const config = {
    model_kind: CIRCUIT_TRACER_CLT_KIND,
    ...(modelName ? { model_name: modelName } : {}),
    feature_input_hook: hookIn,
    feature_output_hook: hookOut,
    // BatchTopK outside training is relu(pre) gated by its threshold: JumpReLU's pre * (pre > θ) for θ >= 0.
    activation: c.arch === 'jumprelu' || c.arch === 'batchtopk' ? 'jump_relu' : 'relu',
  };
  writeFileAtomic(join(resolve(dir), CIRCUIT_TRACER_CONFIG_FILE), [stringifyYaml(config, ' circuit-tracer cross-layer transcoder, written by the transcoders library')]);
}
