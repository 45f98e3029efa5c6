/**
 * Google DeepMind's Gemma Scope transcoders (JumpReLU, per layer), as released:
 *
 * - **Gemma Scope 1** (Gemma 2, `google/gemma-scope-2b-pt-transcoders`):
 *   `layer_{L}/width_16k/average_l0_{N}/params.npz`, a zip of `.npy` arrays
 *     W_enc [d, F]   W_dec [F, d]   b_enc [F]   b_dec [d] (output bias)   threshold [F]
 * - **Gemma Scope 2** (Gemma 3, `google/gemma-scope-2-*`): e.g.
 *   `transcoder_all/layer_{L}_width_16k_l0_small_affine/params.safetensors` with
 *     w_enc [d, F]   w_dec [F, d]   b_enc [F]   b_dec [d]   threshold [F]   affine_skip_connection [d, d] (optional)
 *   and a `config.json` beside it (`hf_hook_point_in`, `hf_hook_point_out`, `width`, `model_name`,
 *   `architecture`, `affine_connection`, `type`, `l0`).
 *
 * Both compute, in Google's reference code (the Gemma Scope tutorials' `JumpReLUSAE`):
 *
 *   pre = x W_enc + b_enc;   f = (pre > threshold) · relu(pre);   y = f W_dec + b_dec (+ x affine_skip_connection)
 *
 * No input centring, so our b_dec (input pre-bias) is 0 and their b_dec is our b_dec_out. The skip is
 * applied as x · A with A = affine_skip_connection [d_in, d_out], which is exactly our W_skip (circuit-tracer's
 * `load_gemma_scope_2_transcoder` stores Aᵀ as its W_skip and applies x · W_skipᵀ: the same product).
 * Our JumpReLU is pre · (pre > threshold), without the ReLU; the two agree for thresholds ≥ 0 (every
 * released threshold is positive), and loading clamps thresholds at 0 so that they agree for any file.
 *
 * Hooks: Gemma Scope 1 reads the MLP's input, `blocks.L.mlp.hook_in` (the pre-feedforward RMSNorm's
 * output with its gain; TransformerLens's `ln2.hook_normalized` of an RMSNorm is taken before the gain,
 * so on the raw model that name is not the MLP input); Gemma Scope 2's `config.json` names the Hugging Face module
 * output `pre_feedforward_layernorm.output`, the normed MLP input with its gain, mapped to
 * `blocks.L.mlp.hook_in` (exactly what the MLP receives). Both write `blocks.L.hook_mlp_out`, the MLP
 * output after Gemma's post-MLP norm (`post_feedforward_layernorm.output`; Gemma Scope 1 as `mlp.hook_out`). A set's config.yaml
 * overrides these. Transcoders apply to the model unprocessed (processing `none`), as Gemma Scope and
 * circuit-tracer run it.
 */
import { existsSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { FormatError } from '../../errors.js';
import { repoIdOfCachePath } from '../../io/hf-cache.js';
import { capReason, describe } from '../../io/json.js';
import { hasNonFinite, readNpz, type NpyArray } from '../../io/npy.js';
import { readSafetensorsHeader } from '../../io/safetensors.js';
import { Tensor } from '../../tensor.js';
import { mlpHooks, type TranscoderConfig } from '../config.js';
import type { ParameterName, Transcoder } from '../transcoder.js';
import { buildTranscoder, mapped, readJsonObject, TensorFile, zeros, type ForeignLoadOptions } from './common.js';

export const GEMMA_SCOPE_FILE = 'params.npz';
export const GEMMA_SCOPE_2_FILE = 'params.safetensors';
export const GEMMA_SCOPE_2_CONFIG_FILE = 'config.json';
/** The Gemma Scope paper's JumpReLU bandwidth (training only; recorded for completeness). */
const GEMMA_SCOPE_BANDWIDTH = 0.001;
const GEMMA_SCOPE_2_KEYS = ['w_enc', 'w_dec', 'b_enc', 'b_dec', 'threshold'];

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/** Whether `file` is a safetensors file with Gemma Scope 2's keys (lower-case w_enc, w_dec, ...). */
export function isGemmaScope2File(file: string): boolean {
  try {
    const header = readSafetensorsHeader(file);
    return GEMMA_SCOPE_2_KEYS.every((k) => header.entries.has(k));
  } catch {
    return false;
  }
}

/** Whether `dir` holds a Gemma Scope 1 (`params.npz`) or 2 (`params.safetensors`) transcoder. */
export function gemmaScopeFolderKind(dir: string): 'gemma-scope' | 'gemma-scope-2' | null {
  if (isFile(join(dir, GEMMA_SCOPE_FILE))) return 'gemma-scope';
  if (isGemmaScope2File(join(dir, GEMMA_SCOPE_2_FILE))) return 'gemma-scope-2';
  return null;
}

/** The layer a Gemma Scope path names (`layer_12/...` or `layer_12_width_16k_...`), innermost first; undefined if none. */
export function layerFromGemmaScopePath(path: string): number | undefined {
  const parts = path.split(/[\\/]/).reverse();
  for (const p of parts) {
    const m = /^layer_(\d+)(?:_|$)/.exec(p);
    if (m) return Number(m[1]);
  }
  return undefined;
}

/** The Gemma 2 model of a Gemma Scope 1 repo in the hub cache (`google/gemma-scope-2b-pt-transcoders` -> `google/gemma-2-2b`). */
function modelOfGemmaScopeRepo(file: string): string | null {
  const repo = repoIdOfCachePath(file);
  const m = repo ? /^google\/gemma-scope-(\d+b)-(pt|it)-/.exec(repo) : null;
  return m ? `google/gemma-2-${m[1]}${m[2] === 'it' ? '-it' : ''}` : null;
}

function tensorOf(a: NpyArray): Tensor {
  if (a.dtype === 'float16') return Tensor.from(a.data as Uint16Array, a.shape, { dtype: 'float16' });
  return Tensor.from(a.data as Float32Array | Float64Array, a.shape);
}

/** threshold, with negative entries raised to 0 (see the module comment). */
function clampedThreshold(t: Tensor): Tensor {
  const out = mapped(t, (v) => (v < 0 ? 0 : v));
  t.dispose();
  return out;
}

function layerOrFail(file: string, options: ForeignLoadOptions, fromFile?: number): number {
  const layer = options.layer ?? fromFile ?? layerFromGemmaScopePath(file);
  if (layer === undefined) {
    throw new FormatError(`${file}: cannot tell which layer this Gemma Scope transcoder belongs to (no layer_N in its path): pass { layer } (CLI: --layer)`, file);
  }
  return layer;
}

/**
 * Loads a Gemma Scope 1 transcoder: `path` is its `params.npz` or the folder holding it. The layer
 * comes from `options.layer`, else from the path (`layer_{L}/...`).
 */
export async function loadGemmaScopeTranscoder(path: string, options: ForeignLoadOptions = {}): Promise<Transcoder> {
  const file = isFile(path) ? path : join(path, GEMMA_SCOPE_FILE);
  if (!existsSync(file)) throw new FormatError(`${file}: no such file (a Gemma Scope transcoder is a ${GEMMA_SCOPE_FILE})`, file);
  const arrays = readNpz(file);
  const fail = (why: string): never => {
    throw new FormatError(`${file}: ${capReason(why)}`, file);
  };
  // Gemma Scope's SAE releases spell the weights w_enc / w_dec; the transcoders W_enc / W_dec. Either is read.
  const pick = (...names: string[]): [string, NpyArray] => {
    const found = names.filter((n) => arrays.has(n));
    if (found.length === 0) fail(`missing array '${names[0]}' (expected ${['W_enc', 'W_dec', 'b_enc', 'b_dec', 'threshold'].join(', ')})`);
    if (found.length > 1) fail(`has both '${found[0]}' and '${found[1]}'`);
    return [found[0]!, arrays.get(found[0]!)!];
  };
  const [encName, wEnc] = pick('W_enc', 'w_enc');
  const [decName, wDec] = pick('W_dec', 'w_dec');
  const [, bEnc] = pick('b_enc');
  const [, bDec] = pick('b_dec');
  const [, threshold] = pick('threshold');
  const used = new Set([encName, decName, 'b_enc', 'b_dec', 'threshold']);
  for (const name of arrays.keys()) if (!used.has(name)) fail(`unexpected array '${name}' (a Gemma Scope transcoder has only ${[...used].join(', ')})`);
  const shape = (name: string, a: NpyArray, expected: number[], why: string) => {
    if (a.shape.join(',') !== expected.join(',')) fail(`array '${name}' has shape [${a.shape}], expected [${expected}] (${why})`);
  };
  if (wEnc.shape.length !== 2) fail(`array '${encName}' has shape [${wEnc.shape}], expected [d_model, F]`);
  const [dIn, dSae] = wEnc.shape as [number, number];
  if (dIn === 0 || dSae === 0) fail(`array '${encName}' has an empty shape [${wEnc.shape}]`);
  if (bDec.shape.length !== 1) fail(`array 'b_dec' has shape [${bDec.shape}], expected [d_model]`);
  const dOut = bDec.shape[0]!;
  shape('b_enc', bEnc, [dSae], `F = ${dSae} from '${encName}' [d_model, F]`);
  shape(decName, wDec, [dSae, dOut], `F from '${encName}' x d from 'b_dec'`);
  shape('threshold', threshold, [dSae], `F = ${dSae} from '${encName}'`);
  for (const [name, a] of [[encName, wEnc], [decName, wDec], ['b_enc', bEnc], ['b_dec', bDec], ['threshold', threshold]] as const) {
    if (hasNonFinite(a)) fail(`array '${name}' holds NaN or infinite values`);
  }
  const layer = layerOrFail(file, options);
  const params: Partial<Record<ParameterName, Tensor>> = {
    W_enc: tensorOf(wEnc),
    b_enc: tensorOf(bEnc),
    W_dec: tensorOf(wDec),
    b_dec: zeros(dIn),
    b_dec_out: tensorOf(bDec),
    threshold: clampedThreshold(tensorOf(threshold)),
  };
  const config: Partial<TranscoderConfig> = {
    arch: 'jumprelu',
    bandwidth: GEMMA_SCOPE_BANDWIDTH,
    dIn,
    dOut,
    dSae,
    skip: false,
    layer,
    ...mlpHooks(layer, 'gemma2'),
    modelName: modelOfGemmaScopeRepo(file),
    processing: 'none',
  };
  return buildTranscoder(file, config, options, params);
}

/** Gemma 3 module points of a Gemma Scope 2 config.json and our hooks for them. */
const HF_HOOK_POINTS: readonly [RegExp, (layer: number) => string][] = [
  // The normed MLP input, gain included: exactly what the MLP receives (TransformerLens's RMSNorm
  // hook_normalized is taken before the gain, so ln2.hook_normalized would be ambiguous here).
  [/^model\.layers\.(\d+)\.pre_feedforward_layernorm\.output$/, (l) => `blocks.${l}.mlp.hook_in`],
  [/^model\.layers\.(\d+)\.post_feedforward_layernorm\.output$/, (l) => `blocks.${l}.hook_mlp_out`],
  [/^model\.layers\.(\d+)\.mlp\.input$/, (l) => `blocks.${l}.mlp.hook_in`],
  [/^model\.layers\.(\d+)\.output$/, (l) => `blocks.${l}.hook_resid_post`],
];

/** Our hook and its layer for a Gemma Scope 2 `hf_hook_point_*` value, or undefined when unknown. */
export function hookOfHfHookPoint(point: string): { hook: string; layer: number } | undefined {
  for (const [pattern, hook] of HF_HOOK_POINTS) {
    const m = pattern.exec(point);
    if (m) return { hook: hook(Number(m[1])), layer: Number(m[1]) };
  }
  return undefined;
}

/**
 * Loads a Gemma Scope 2 transcoder: `path` is its `params.safetensors` (or another safetensors file with
 * w_enc, w_dec, b_enc, b_dec, threshold) or the folder holding it; a `config.json` beside the file, when
 * present, gives the hooks, the layer and the model, and is checked against the tensors.
 */
export async function loadGemmaScope2Transcoder(path: string, options: ForeignLoadOptions = {}): Promise<Transcoder> {
  const file = isFile(path) ? path : join(path, GEMMA_SCOPE_2_FILE);
  const tf = new TensorFile(file);
  const dSae = tf.float('b_enc', 1).shape[0]!;
  const wEnc = tf.float('w_enc', 2);
  if (wEnc.shape[1] !== dSae) tf.fail(`tensor 'w_enc' has shape [${wEnc.shape}], expected [d_in, ${dSae}] (F = ${dSae} from 'b_enc'; Gemma Scope 2 stores w_enc as [d, F])`);
  const dIn = wEnc.shape[0]!;
  const dOut = tf.float('b_dec', 1).shape[0]!;
  tf.expect('w_dec', [dSae, dOut], `F from 'b_enc' x d from 'b_dec'`);
  tf.expect('threshold', [dSae], `F from 'b_enc'`);
  const skip = tf.has('affine_skip_connection');
  if (skip) tf.expect('affine_skip_connection', [dIn, dOut], 'd_in x d_out, applied as x · affine_skip_connection');
  tf.rejectUnused();

  // config.json: optional, but what it says must agree with the tensors.
  const cfgFile = join(dirname(file), GEMMA_SCOPE_2_CONFIG_FILE);
  let hookIn: string | undefined;
  let hookOut: string | undefined;
  let layerFromConfig: number | undefined;
  let modelName: string | null = null;
  if (basename(file) === GEMMA_SCOPE_2_FILE && existsSync(cfgFile)) {
    const cfg = readJsonObject(cfgFile);
    const fail = (why: string): never => {
      throw new FormatError(`${cfgFile}: ${capReason(why)}`, cfgFile);
    };
    const field = (key: string): unknown => (Object.hasOwn(cfg, key) ? cfg[key] : undefined);
    const width = field('width');
    if (width !== undefined && width !== dSae) fail(`'width' is ${describe(width)} but ${file} has ${dSae} features`);
    const affine = field('affine_connection');
    if (affine !== undefined && affine !== skip) fail(`'affine_connection' is ${describe(affine)} but ${file} ${skip ? 'has' : 'has no'} 'affine_skip_connection'`);
    const arch = field('architecture');
    if (arch !== undefined && arch !== 'jump_relu' && arch !== 'jumprelu') fail(`'architecture' ${describe(arch)} is not supported (jump_relu)`);
    const name = field('model_name');
    if (name !== undefined && typeof name !== 'string') fail(`'model_name' must be a string, got ${describe(name)}`);
    modelName = (name as string | undefined) ?? null;
    const point = (key: string): { hook: string; layer: number } | undefined => {
      const v = field(key);
      if (v === undefined || v === null) return undefined;
      if (typeof v !== 'string') fail(`'${key}' must be a string, got ${describe(v)}`);
      const mapped = hookOfHfHookPoint(v as string);
      // An unknown point is only an error when the caller does not say where the transcoder sits.
      if (!mapped && (key === 'hf_hook_point_in' ? options.hookIn : options.hookOut) === undefined) {
        fail(`'${key}' ${describe(v)} is not a module point this library maps to a hook (known: model.layers.N.pre_feedforward_layernorm.output, model.layers.N.post_feedforward_layernorm.output, model.layers.N.output): pass { hookIn, hookOut }`);
      }
      return mapped;
    };
    const pin = point('hf_hook_point_in');
    const pout = point('hf_hook_point_out');
    if (pin && pout && pin.layer !== pout.layer) fail(`'hf_hook_point_in' is in layer ${pin.layer} but 'hf_hook_point_out' in layer ${pout.layer}`);
    hookIn = pin?.hook;
    hookOut = pout?.hook ?? (pin && field('type') !== 'transcoder' ? pin.hook : undefined);
    layerFromConfig = pin?.layer ?? pout?.layer;
  }
  const layer = layerOrFail(file, options, layerFromConfig);
  if (options.layer !== undefined && layerFromConfig !== undefined && layerFromConfig !== options.layer && options.hookIn === undefined) {
    throw new FormatError(`${cfgFile}: names layer ${layerFromConfig}, but layer ${options.layer} was asked for`, cfgFile);
  }

  const t = await tf.load(['w_enc', 'w_dec', 'b_enc', 'b_dec', 'threshold', ...(skip ? ['affine_skip_connection'] : [])]);
  for (const [key, tensor] of Object.entries(t)) {
    if (hasNonFinite({ data: tensor.toFloat32Array(), dtype: 'float32' })) {
      for (const x of Object.values(t)) x.dispose();
      tf.fail(`tensor '${key}' holds NaN or infinite values`);
    }
  }
  const params: Partial<Record<ParameterName, Tensor>> = {
    W_enc: t.w_enc!,
    b_enc: t.b_enc!,
    W_dec: t.w_dec!,
    b_dec: zeros(dIn),
    b_dec_out: t.b_dec!,
    threshold: clampedThreshold(t.threshold!),
    ...(skip ? { W_skip: t.affine_skip_connection! } : {}),
  };
  const defaults = { hookIn: `blocks.${layer}.mlp.hook_in`, hookOut: `blocks.${layer}.hook_mlp_out` };
  const config: Partial<TranscoderConfig> = {
    arch: 'jumprelu',
    bandwidth: GEMMA_SCOPE_BANDWIDTH,
    dIn,
    dOut,
    dSae,
    skip,
    layer,
    hookIn: hookIn ?? defaults.hookIn,
    hookOut: hookOut ?? defaults.hookOut,
    modelName,
    processing: 'none',
  };
  return buildTranscoder(file, config, options, params);
}
