/**
 * Target-indexed cross-layer transcoder checkpoints, in: the layout of Goreg12345/crosslayer-transcoder
 * (a PyTorch Lightning CLT trainer). A folder with `config.yaml` (`model:` with `class_path:
 * ...CrossLayerTranscoder` and the `init_args` of its encoder, decoder, nonlinearity and standardizers,
 * plus `is_folded`) and `checkpoint.safetensors` (the module's state dict):
 *
 * - `encoder.W` [L, d, F], `encoder.b` [L, F]: pre_l = x_l W[l] + b[l];
 * - `decoder.W_{t}` [t + 1, F, d] per TARGET layer t (`CrosslayerDecoder`): y_t = sum_{s <= t} f_s W_{t}[s] + b[t],
 *   where circuit-tracer and this library index the same decoders by source layer (W_dec_s [F, L - s, d]);
 *   or `decoder.W` [L, F, d] (`Decoder`, a per-layer transcoder set trained jointly), read here as a
 *   CLT whose decoders into later layers are zero; `decoder.b` [L, d];
 * - nonlinearities: `ReLU`; `JumpReLU` (`nonlinearity.theta` [1, L, F]; pre where pre > theta and
 *   pre > 0, so negative thresholds act as 0); `PerLayerTopK` (k from the config); `BatchTopK`
 *   (one `threshold` [1]) and `PerLayerBatchTopK` (`threshold` [L]), which outside training keep pre
 *   where pre > max(0, threshold): our batchtopk (further training selects per layer);
 * - standardizers, unless folded: `Dimensionwise*` (`mean`, `std` [L, d]) or `Layerwise*` ([L]), the
 *   input standardised as (x - mean) / std and the output de-standardised as y std + mean. They are
 *   folded into the weights on load exactly as the project's own `fold()` does (in float64), so the
 *   CLT reads raw activations and writes raw MLP outputs. `SamplewiseInputStandardizer` normalises each
 *   row by its own statistics (not an affine map of the input) and is refused.
 *
 * The project reads GPT-2's `ln_2` input and `mlp` output: hooks `hook_resid_mid` -> `hook_mlp_out`
 * unless the caller names others.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FormatError } from '../../errors.js';
import { describe } from '../../io/json.js';
import { Tensor } from '../../tensor.js';
import { CrossLayerTranscoder, type CrossLayerArch, type CrossLayerConfig } from '../cross-layer.js';
import type { PlacementOptions } from '../transcoder.js';
import { parseYaml } from './circuit-tracer.js';
import { floatData, TensorFile } from './common.js';

export const TARGET_INDEXED_CONFIG_FILE = 'config.yaml';
export const TARGET_INDEXED_WEIGHTS_FILE = 'checkpoint.safetensors';

/** Options of {@link loadTargetIndexedCrossLayer}: placement and the hooks, relative to the block. */
export interface TargetIndexedLoadOptions extends PlacementOptions {
  /** Default `hook_resid_mid` (GPT-2's `ln_2` input, what the project trains on). */
  hookIn?: string;
  /** Default `hook_mlp_out`. */
  hookOut?: string;
}

/** Whether `dir` holds a checkpoint of Goreg12345/crosslayer-transcoder (config.yaml naming a CrossLayerTranscoder + checkpoint.safetensors). */
export function isTargetIndexedCrossLayer(dir: string): boolean {
  const config = join(dir, TARGET_INDEXED_CONFIG_FILE);
  if (!existsSync(config) || !existsSync(join(dir, TARGET_INDEXED_WEIGHTS_FILE))) return false;
  try {
    return /class_path\s*:\s*\S*\.CrossLayerTranscoder\s*$/m.test(readFileSync(config, 'utf8'));
  } catch {
    return false;
  }
}

type Obj = Record<string, unknown>;

/** One `{class_path, init_args}` module entry of the config: its class name (the last dotted part) and arguments. */
interface ModuleEntry {
  name: string;
  args: Obj;
}

interface Standardizer {
  /** [L, d] per dimension, or [L] one value per layer (broadcast over d). */
  mean: Float32Array | Float64Array;
  std: Float32Array | Float64Array;
  perDimension: boolean;
}

export async function loadTargetIndexedCrossLayer(dir: string, options: TargetIndexedLoadOptions = {}): Promise<CrossLayerTranscoder> {
  const configFile = join(dir, TARGET_INDEXED_CONFIG_FILE);
  const fail = (why: string): never => {
    throw new FormatError(`${configFile}: ${why}`, configFile);
  };
  const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
  const root = parseYaml(readFileSync(configFile, 'utf8'), configFile).value;
  if (!isObj(root) || !isObj(root.model)) fail("expected a mapping with a 'model' entry (the project's save_pretrained layout)");
  const model = (root as { model: Obj }).model;
  const entry = (v: unknown, where: string): ModuleEntry | null => {
    if (v === null || v === undefined) return null;
    if (!isObj(v) || typeof v.class_path !== 'string') return fail(`'${where}' must be a {class_path, init_args} entry or null, got ${describe(v)}`);
    const args = v.init_args ?? {};
    if (!isObj(args)) return fail(`'${where}.init_args' must be a mapping, got ${describe(args)}`);
    return { name: v.class_path.split('.').pop()!, args };
  };
  const top = entry(model, 'model')!;
  if (top.name !== 'CrossLayerTranscoder') fail(`'model.class_path' names ${describe(top.name)}; this reader takes the project's CrossLayerTranscoder (encoder + decoder modules)`);
  const encoder = entry(top.args.encoder, 'model.init_args.encoder') ?? fail("missing 'model.init_args.encoder'");
  const decoder = entry(top.args.decoder, 'model.init_args.decoder') ?? fail("missing 'model.init_args.decoder'");
  const nonlinearity = entry(top.args.nonlinearity, 'model.init_args.nonlinearity') ?? fail("missing 'model.init_args.nonlinearity'");
  const int = (e: ModuleEntry, key: string, where: string): number => {
    const v = e.args[key];
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) fail(`'${where}.init_args.${key}' must be a positive integer, got ${describe(v)}`);
    return v as number;
  };
  const L = int(encoder, 'n_layers', 'encoder');
  const d = int(encoder, 'd_acts', 'encoder');
  const F = int(encoder, 'd_features', 'encoder');
  for (const key of ['n_layers', 'd_acts', 'd_features']) {
    if (int(decoder, key, 'decoder') !== int(encoder, key, 'encoder')) fail(`the decoder's ${key} (${describe(decoder.args[key])}) differs from the encoder's (${describe(encoder.args[key])})`);
  }
  if (decoder.name !== 'CrosslayerDecoder' && decoder.name !== 'Decoder') fail(`decoder ${describe(decoder.name)} is not one this reader knows (CrosslayerDecoder, Decoder)`);
  const crossLayer = decoder.name === 'CrosslayerDecoder';

  let arch: CrossLayerArch;
  let k: number | undefined;
  switch (nonlinearity.name) {
    case 'ReLU':
      arch = 'relu';
      break;
    case 'JumpReLU':
      arch = 'jumprelu';
      break;
    case 'PerLayerTopK':
      arch = 'topk';
      k = int(nonlinearity, 'k', 'nonlinearity');
      break;
    case 'BatchTopK':
    case 'PerLayerBatchTopK':
      arch = 'batchtopk';
      k = int(nonlinearity, 'k', 'nonlinearity');
      break;
    default:
      return fail(`nonlinearity ${describe(nonlinearity.name)} is not one this reader knows (ReLU, JumpReLU, PerLayerTopK, BatchTopK, PerLayerBatchTopK)`);
  }
  if (k !== undefined && k > F) fail(`the nonlinearity's k = ${k} exceeds d_features = ${F}`);
  const folded = model.is_folded ?? false;
  if (typeof folded !== 'boolean') fail(`'model.is_folded' must be true or false, got ${describe(model.is_folded)}`);

  const weights = new TensorFile(join(dir, TARGET_INDEXED_WEIGHTS_FILE));
  const read = async (key: string): Promise<Float32Array | Float64Array> => {
    const t = (await weights.load([key]))[key]!;
    try {
      const data = floatData(t);
      if (!data.every(Number.isFinite)) weights.fail(`tensor '${key}' holds NaN or infinite values`);
      return data;
    } finally {
      t.dispose();
    }
  };
  weights.expect('encoder.W', [L, d, F], 'n_layers x d_acts x d_features from config.yaml');
  weights.expect('encoder.b', [L, F], 'n_layers x d_features');
  weights.expect('decoder.b', [L, d], 'n_layers x d_acts');
  if (crossLayer) for (let t = 0; t < L; t++) weights.expect(`decoder.W_${t}`, [t + 1, F, d], `target layer ${t} reads source layers 0..${t}`);
  else weights.expect('decoder.W', [L, F, d], 'n_layers x d_features x d_acts (a per-layer Decoder)');
  if (nonlinearity.name === 'JumpReLU') {
    weights.expect('nonlinearity.theta', [1, L, F], 'one threshold per layer and feature');
    if (weights.has('nonlinearity.bandwidth')) weights.expect('nonlinearity.bandwidth', [], 'a scalar buffer');
  }
  if (nonlinearity.name === 'BatchTopK') weights.expect('nonlinearity.threshold', [1], 'one threshold for every layer');
  if (nonlinearity.name === 'PerLayerBatchTopK') weights.expect('nonlinearity.threshold', [L], 'one threshold per layer');

  // Standardizers (none when folded or absent: then the weights already read raw activations).
  const standardizer = async (side: 'input' | 'output'): Promise<Standardizer | null> => {
    const e = entry(top.args[`${side}_standardizer`], `model.init_args.${side}_standardizer`);
    const prefix = `${side}_standardizer`;
    if (e === null || e.name === 'Standardizer') {
      if (weights.has(`${prefix}.mean`)) weights.fail(`tensor '${prefix}.mean' is present, but config.yaml names no ${side} standardizer`);
      return null;
    }
    if (folded) fail(`'is_folded' is true, yet an ${side} standardizer (${e.name}) is configured`);
    const kinds: Record<string, boolean> = side === 'input'
      ? { DimensionwiseInputStandardizer: true, LayerwiseInputStandardizer: false }
      : { DimensionwiseOutputStandardizer: true, LayerwiseOutputStandardizer: false };
    if (e.name === 'SamplewiseInputStandardizer') fail("the SamplewiseInputStandardizer normalises each row by its own mean and std, which is not an affine map of the input: it cannot be folded into the encoder, and circuit tracing needs a linear reading of the residual stream");
    if (!(e.name in kinds)) fail(`${side} standardizer ${describe(e.name)} is not one this reader knows (${Object.keys(kinds).join(', ')})`);
    const perDimension = kinds[e.name]!;
    const shape = perDimension ? [L, d] : [L];
    weights.expect(`${prefix}.mean`, shape, `${e.name}`);
    weights.expect(`${prefix}.std`, shape, `${e.name}`);
    const std = await read(`${prefix}.std`);
    if (std.some((v) => v === 0)) weights.fail(`tensor '${prefix}.std' has zeros (the project clamps it to >= 1e-8)`);
    return { mean: await read(`${prefix}.mean`), std, perDimension };
  };
  const input = await standardizer('input');
  const output = await standardizer('output');
  weights.rejectUnused();
  const stdAt = (s: Standardizer | null, l: number, i: number, which: 'mean' | 'std'): number => {
    if (!s) return which === 'std' ? 1 : 0;
    return s[which][s.perDimension ? l * d + i : l]!;
  };

  // Encoder: W' = W / std_in, b' = b - (mean_in / std_in) W  (the project's Encoder.fold).
  const wEncRaw = await read('encoder.W');
  const bEncRaw = await read('encoder.b');
  const wEnc = new Float32Array(L * d * F);
  const bEnc = new Float32Array(L * F);
  for (let l = 0; l < L; l++) {
    const bias = Float64Array.from(bEncRaw.subarray(l * F, (l + 1) * F));
    for (let i = 0; i < d; i++) {
      const inv = 1 / stdAt(input, l, i, 'std');
      const shift = stdAt(input, l, i, 'mean') * inv;
      const row = (l * d + i) * F;
      for (let j = 0; j < F; j++) {
        wEnc[row + j] = wEncRaw[row + j]! * inv;
        bias[j] = bias[j]! - shift * wEncRaw[row + j]!;
      }
    }
    bEnc.set(bias, l * F);
  }
  // Decoder: re-indexed from target to source layer, W_dec_s[j, t - s] = W_{t}[s, j] std_out[t]; b' = b std_out + mean_out.
  const wDec = Array.from({ length: L }, (_, s) => new Float32Array(F * (L - s) * d));
  for (let t = 0; t < L; t++) {
    const w = await read(crossLayer ? `decoder.W_${t}` : 'decoder.W');
    const sources = crossLayer ? t + 1 : 1;
    for (let si = 0; si < sources; si++) {
      const s = crossLayer ? si : t;
      const src = crossLayer ? si * F * d : t * F * d;
      for (let j = 0; j < F; j++) {
        const to = (j * (L - s) + (t - s)) * d;
        for (let i = 0; i < d; i++) wDec[s]![to + i] = w[src + j * d + i]! * stdAt(output, t, i, 'std');
      }
    }
  }
  const bDecRaw = await read('decoder.b');
  const bDec = Float32Array.from(bDecRaw, (v, n) => v * stdAt(output, Math.floor(n / d), n % d, 'std') + stdAt(output, Math.floor(n / d), n % d, 'mean'));

  const params: Record<string, Tensor> = { W_enc: Tensor.from(wEnc, [L, d, F]), b_enc: Tensor.from(bEnc, [L, F]), b_dec: Tensor.from(bDec, [L, d]) };
  wDec.forEach((w, s) => (params[`W_dec_${s}`] = Tensor.from(w, [F, L - s, d])));
  let bandwidth: number | undefined;
  if (nonlinearity.name === 'JumpReLU') {
    // (pre > theta) and (pre > 0) is our pre * (pre > max(theta, 0)).
    params.threshold = Tensor.from(Float32Array.from(await read('nonlinearity.theta'), (v) => Math.max(v, 0)), [L, F]);
    bandwidth = weights.has('nonlinearity.bandwidth') ? (await read('nonlinearity.bandwidth'))[0] : undefined;
    if (bandwidth !== undefined && !(bandwidth > 0)) weights.fail(`tensor 'nonlinearity.bandwidth' is ${bandwidth}, expected a positive number`);
  }
  if (arch === 'batchtopk') {
    const thr = await read('nonlinearity.threshold');
    params.threshold = Tensor.from(Float32Array.from({ length: L * F }, (_, n) => Math.max(0, thr[thr.length === 1 ? 0 : Math.floor(n / F)]!)), [L, F]);
  }
  const hookIn = options.hookIn ?? 'hook_resid_mid';
  const hookOut = options.hookOut ?? 'hook_mlp_out';
  const config: Partial<CrossLayerConfig> = {
    arch,
    nLayers: L,
    dIn: d,
    dOut: d,
    dSae: F,
    skip: false,
    ...(k !== undefined ? { k } : {}),
    ...(bandwidth !== undefined ? { bandwidth } : {}),
    hookIn: Array.from({ length: L }, (_, l) => `blocks.${l}.${hookIn}`),
    hookOut: Array.from({ length: L }, (_, l) => `blocks.${l}.${hookOut}`),
    modelName: null,
    processing: 'none',
  };
  try {
    return await CrossLayerTranscoder.fromParameters(config, params, { device: options.device, dtype: options.dtype });
  } finally {
    Object.values(params).forEach((t) => t.dispose());
  }
}
