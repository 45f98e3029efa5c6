/**
 * SAELens transcoders: a folder with `cfg.json` and `sae_weights.safetensors`.
 *
 * Architectures read (SAELens `sae_lens/saes/transcoder.py`, `sae.py`):
 * - `transcoder`: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out] (the
 *   OUTPUT bias; no input centring): y = relu(x W_enc + b_enc) W_dec + b_dec;
 * - `skip_transcoder`: + W_skip [d_out, d_in], y += x W_skipᵀ (ours is its transpose);
 * - `jumprelu_transcoder` / `jumprelu_skip_transcoder`: + threshold [d_sae],
 *   f = relu(pre) * (pre > threshold). That equals our `pre * (pre > max(threshold, 0))`, so
 *   thresholds are loaded clamped at 0 (exact);
 * - SAE-style `standard` / `jumprelu` (older SAELens, and the community conversions of the GPT-2
 *   transcoders with `hook_name_out` / `d_out`): with `apply_b_dec_to_input` (SAELens' default for
 *   configs before 6.0) b_dec is both the input pre-bias and the output bias (needs d_out = d_in);
 *   without it b_dec is only the output bias. An extra `b_dec_out` tensor (an unfolded Dunefsky
 *   conversion) makes b_dec the input pre-bias and b_dec_out the output bias.
 *
 * Both cfg.json layouts are read: SAELens 6 (model fields such as model_name, hook_name,
 * hook_name_out, model_from_pretrained_kwargs inside `metadata`) and the older flat one.
 *
 * Formats without an input pre-bias load with our b_dec = 0 (exactly equivalent).
 * `normalize_activations` must be "none"; `model_from_pretrained_kwargs.fold_ln === false` means
 * processing 'none', anything else TransformerLens' default processing.
 */
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { InvalidArgumentError } from '../../errors.js';
import { writeSafetensors, type RawTensor } from '../../io/safetensors.js';
import { readModelConfig, type ModelConfig } from '../../models/config.js';
import type { Processing } from '../../models/model.js';
import type { Tensor } from '../../tensor.js';
import type { TranscoderArch, TranscoderConfig } from '../config.js';
import type { ParameterName, Transcoder } from '../transcoder.js';
import {
  buildTranscoder,
  ConfigReader,
  exportArrays,
  exportedModelName,
  floatData,
  layerOfHook,
  mapped,
  prepareOutputFolder,
  rawF32,
  readJsonObject,
  TensorFile,
  transposeData,
  transposed,
  writeJsonAtomic,
  zeros,
  type ForeignLoadOptions,
  type PreparedExport,
} from './common.js';

export const SAELENS_CONFIG_FILE = 'cfg.json';
export const SAELENS_WEIGHTS_FILE = 'sae_weights.safetensors';

/** SAELens architectures this library reads. */
export const SAELENS_ARCHITECTURES = ['transcoder', 'skip_transcoder', 'jumprelu_transcoder', 'jumprelu_skip_transcoder', 'standard', 'jumprelu'] as const;
export type SaeLensArchitecture = (typeof SAELENS_ARCHITECTURES)[number];

/** Whether `dir` holds a SAELens folder (by its file names). */
export function isSaeLensFolder(dir: string): boolean {
  return existsSync(join(dir, SAELENS_CONFIG_FILE)) && existsSync(join(dir, SAELENS_WEIGHTS_FILE));
}

/** The processing implied by SAELens' `model_from_pretrained_kwargs`. */
function processingOf(kwargs: unknown): Processing {
  return typeof kwargs === 'object' && kwargs !== null && (kwargs as Record<string, unknown>).fold_ln === false ? 'none' : 'transformerlens';
}

/** Reads a SAELens transcoder (or SAE-style transcoder) folder. */
export async function loadSaeLensTranscoder(dir: string, options: ForeignLoadOptions = {}): Promise<Transcoder> {
  const cfgFile = join(dir, SAELENS_CONFIG_FILE);
  const raw = readJsonObject(cfgFile);
  const metadata = typeof raw.metadata === 'object' && raw.metadata !== null && !Array.isArray(raw.metadata) ? (raw.metadata as Record<string, unknown>) : null;
  const cfg = new ConfigReader(cfgFile, raw, metadata);

  const architecture = cfg.get('architecture') ?? 'standard';
  if (typeof architecture !== 'string' || !(SAELENS_ARCHITECTURES as readonly string[]).includes(architecture)) {
    cfg.fail(`unknown or unsupported SAELens 'architecture' ${JSON.stringify(architecture)} (supported: ${SAELENS_ARCHITECTURES.join(', ')})`);
  }
  const arch = architecture as SaeLensArchitecture;
  const isTranscoderClass = arch.endsWith('transcoder');
  const jump = arch.startsWith('jumprelu');
  const skip = arch.includes('skip');

  const norm = cfg.get('normalize_activations');
  if (norm !== undefined && norm !== null && norm !== 'none' && norm !== false) {
    cfg.fail(`'normalize_activations' is ${JSON.stringify(norm)}; only "none" is supported (fold the normalisation into the weights first)`);
  }
  const activation = cfg.optionalString('activation_fn', 'activation_fn_str');
  if (activation !== undefined && activation !== 'relu') cfg.fail(`'activation_fn' is ${JSON.stringify(activation)}; only "relu" is supported for architecture "${arch}"`);
  const headIndex = cfg.get('hook_head_index', 'hook_point_head_index');
  if (headIndex !== undefined && headIndex !== null) cfg.fail(`'hook_head_index' is ${JSON.stringify(headIndex)}; per-head hooks are not supported`);
  if (cfg.optionalBool('finetuning_scaling_factor') === true) cfg.fail(`'finetuning_scaling_factor' is true; fold the scaling factor into W_dec first`);

  const applyBDec = cfg.optionalBool('apply_b_dec_to_input');
  if (isTranscoderClass && applyBDec === true) cfg.fail(`'apply_b_dec_to_input' must be false for architecture "${arch}" (its b_dec has d_out entries)`);

  const dIn = cfg.positiveInt('d_in');
  const dSae = cfg.positiveInt('d_sae');
  const file = new TensorFile(join(dir, SAELENS_WEIGHTS_FILE));
  file.expect('W_enc', [dIn, dSae], `d_in x d_sae from ${SAELENS_CONFIG_FILE}`);
  file.expect('b_enc', [dSae], `d_sae from ${SAELENS_CONFIG_FILE}`);
  const wDec = file.float('W_dec', 2);
  const dOut = cfg.optionalPositiveInt('d_out') ?? wDec.shape[1]!;
  file.expect('W_dec', [dSae, dOut], `d_sae x d_out from ${SAELENS_CONFIG_FILE}`);

  // Where b_dec acts: 'output' (transcoders), 'both' (SAE-style with apply_b_dec_to_input), or
  // 'input' with a separate b_dec_out (an unfolded conversion of the paper's transcoders).
  let biasRole: 'output' | 'both' | 'input';
  if (isTranscoderClass) {
    biasRole = 'output';
  } else if (file.has('b_dec_out')) {
    if (applyBDec === false) file.fail(`has 'b_dec_out' but ${SAELENS_CONFIG_FILE} sets 'apply_b_dec_to_input' to false: the role of 'b_dec' is ambiguous`);
    biasRole = 'input';
  } else {
    biasRole = applyBDec === false ? 'output' : 'both';
  }
  if (biasRole === 'both' && dOut !== dIn) {
    cfg.fail(`'apply_b_dec_to_input' is true (the default for architecture "${arch}") but d_out = ${dOut} differs from d_in = ${dIn}; b_dec cannot be both the input and the output bias`);
  }
  file.expect('b_dec', [biasRole === 'output' ? dOut : dIn], biasRole === 'output' ? 'the output bias, d_out' : 'the input bias, d_in');
  if (biasRole === 'input') file.expect('b_dec_out', [dOut], 'the output bias, d_out');
  if (skip) file.expect('W_skip', [dOut, dIn], `d_out x d_in (SAELens applies x W_skipᵀ)`);
  let thresholdKey: 'threshold' | 'log_threshold' | null = null;
  if (jump) {
    thresholdKey = !file.has('threshold') && file.has('log_threshold') ? 'log_threshold' : 'threshold';
    file.expect(thresholdKey, [dSae], `d_sae from ${SAELENS_CONFIG_FILE}`);
  }
  if (file.has('scaling_factor')) {
    const s = file.expect('scaling_factor', [dSae], 'd_sae');
    const t = (await file.load([s.key]))[s.key]!;
    const ones = floatData(t).every((v) => v === 1);
    t.dispose();
    if (!ones) file.fail(`'scaling_factor' is not all ones; fold it into W_dec first`);
  }
  file.rejectUnused();

  const keys = ['W_enc', 'b_enc', 'W_dec', 'b_dec', ...(biasRole === 'input' ? ['b_dec_out'] : []), ...(skip ? ['W_skip'] : []), ...(thresholdKey ? [thresholdKey] : [])];
  const t = await file.load(keys);
  const params: Partial<Record<ParameterName, Tensor>> = { W_enc: t.W_enc!, b_enc: t.b_enc!, W_dec: t.W_dec! };
  const extra: Tensor[] = [];
  if (biasRole === 'output') {
    params.b_dec = zeros(dIn);
    params.b_dec_out = t.b_dec!;
  } else if (biasRole === 'both') {
    params.b_dec = t.b_dec!;
    params.b_dec_out = t.b_dec!; // copied by fromParameters
  } else {
    params.b_dec = t.b_dec!;
    params.b_dec_out = t.b_dec_out!;
  }
  if (skip) {
    params.W_skip = transposed(t.W_skip!);
    extra.push(t.W_skip!);
  }
  if (thresholdKey) {
    // relu(pre) * (pre > θ) == pre * (pre > max(θ, 0)).
    params.threshold = thresholdKey === 'log_threshold' ? mapped(t.log_threshold!, (v) => Math.exp(v)) : mapped(t.threshold!, (v) => Math.max(v, 0));
    extra.push(t[thresholdKey]!);
  }

  const hookIn = cfg.optionalString('hook_name', 'hook_point') ?? '';
  const hookOut = cfg.optionalString('hook_name_out', 'hook_point_out', 'out_hook_point') ?? hookIn;
  const layerValue = cfg.get('hook_layer', 'hook_point_layer');
  const layer = typeof layerValue === 'number' && Number.isInteger(layerValue) && layerValue >= 0 ? layerValue : (layerOfHook(hookIn) ?? -1);
  const config: Partial<TranscoderConfig> = {
    arch: (jump ? 'jumprelu' : 'relu') as TranscoderArch,
    dIn,
    dOut,
    dSae,
    skip,
    hookIn,
    hookOut,
    layer,
    modelName: cfg.optionalString('model_name') ?? null,
    processing: processingOf(cfg.get('model_from_pretrained_kwargs')),
  };
  return buildTranscoder(cfgFile, config, options, params, extra);
}

/**
 * SAELens' `model_from_pretrained_kwargs` for our processing, always explicit: SAELens' own runner
 * loads models with `HookedTransformer.from_pretrained_no_processing(**kwargs)` (processing off
 * unless the kwargs turn it on), while `HookedTransformer.from_pretrained` in an analysis notebook
 * processes by default. Spelling every flag out makes both load the model the transcoder reads.
 * Processing not recorded counts as raw ('none'), as in the other exports.
 */
function pretrainedKwargs(processing: Processing | null | undefined): Record<string, boolean> {
  const on = processing === 'transformerlens';
  return { fold_ln: on, center_writing_weights: on, center_unembed: on, fold_value_biases: on };
}

/** The SAELens release whose cfg.json layout exportSaeLens writes (6.0 moved the model fields into `metadata`). */
export const SAELENS_LAYOUT_VERSION = '6.0.0';

export interface SaeLensExportOptions {
  /** `metadata.model_name` to write (default: the transcoder's model, a local folder named as in exportedModelName). */
  modelName?: string;
}

/**
 * Writes `tc` as a SAELens 6 folder (`sae_weights.safetensors` then `cfg.json`, float32):
 * architecture transcoder / skip_transcoder / jumprelu_transcoder / jumprelu_skip_transcoder (the
 * names SAELens registers; the last needs a recent SAELens 6 release), top-level d_in, d_out, d_sae,
 * dtype, device, apply_b_dec_to_input (false), normalize_activations, reshape_activations, and
 * `metadata` with model_name, hook_name, hook_name_out, hook_head_index, prepend_bos (when the model
 * folder is at hand), model_from_pretrained_kwargs, sae_lens_version.
 *
 * The weights keep their function unchanged: SAELens runs models through TransformerLens, and
 * `model_from_pretrained_kwargs` says which processing to load with (explicitly, see
 * pretrainedKwargs), so a transcoder of a processed model reads the processed hook there too.
 * Our input pre-bias is folded into b_enc and our output bias becomes SAELens' b_dec. TopK has no
 * SAELens transcoder class, and SAELens' JumpReLU applies a ReLU first, so negative thresholds
 * cannot be represented: both are refused with an InvalidArgumentError before anything is written.
 */
export function exportSaeLens(tc: Transcoder, dir: string, options: SaeLensExportOptions = {}): void {
  prepareSaeLensExport(tc, options).write(dir);
}

/**
 * @internal The validation and arithmetic of {@link exportSaeLens}, so that a caller writing
 * several transcoders can check all of them before writing any; `write(dir)` writes the folder.
 */
export function prepareSaeLensExport(tc: Transcoder, options: SaeLensExportOptions = {}): PreparedExport {
  const who = 'exportSaeLens';
  const a = exportArrays(tc);
  const c = a.config;
  if (c.arch === 'topk') throw new InvalidArgumentError(`${who}: SAELens has no TopK transcoder class; export topk transcoders with exportSparsify or exportCircuitTracer`);
  if (a.threshold) {
    const i = a.threshold.findIndex((v) => v < 0);
    if (i >= 0) {
      throw new InvalidArgumentError(`${who}: threshold[${i}] = ${a.threshold[i]} is negative; SAELens' JumpReLU applies a ReLU before the threshold, so it cannot represent negative thresholds`);
    }
  }
  const architecture = `${c.arch === 'jumprelu' ? 'jumprelu_' : ''}${c.skip ? 'skip_' : ''}transcoder`;
  const tensors: Record<string, RawTensor> = {
    W_enc: rawF32(a.W_enc, [c.dIn, c.dSae]),
    b_enc: rawF32(a.b_enc, [c.dSae]),
    W_dec: rawF32(a.W_dec, [c.dSae, c.dOut]),
    b_dec: rawF32(a.b_dec_out, [c.dOut]),
  };
  if (a.W_skip) tensors.W_skip = rawF32(transposeData(a.W_skip, c.dIn, c.dOut), [c.dOut, c.dIn]);
  if (a.threshold) tensors.threshold = rawF32(a.threshold, [c.dSae]);
  const prependBos = localModelConfig(c.modelName)?.defaultPrependBos;
  const cfg = {
    architecture,
    d_in: c.dIn,
    d_out: c.dOut,
    d_sae: c.dSae,
    dtype: 'float32',
    device: 'cpu',
    apply_b_dec_to_input: false,
    normalize_activations: 'none',
    reshape_activations: 'none',
    metadata: {
      model_name: options.modelName ?? exportedModelName(c.modelName),
      model_class_name: 'HookedTransformer',
      hook_name: c.hookIn,
      hook_name_out: c.hookOut,
      hook_head_index: null,
      ...(prependBos !== undefined ? { prepend_bos: prependBos } : {}),
      model_from_pretrained_kwargs: pretrainedKwargs(c.processing),
      sae_lens_version: SAELENS_LAYOUT_VERSION,
      sae_lens_training_version: null,
      transcoders_export: { trained_on_processing: c.processing ?? 'not recorded' },
    },
  };
  return {
    write(dir: string): void {
      prepareOutputFolder(dir, who);
      writeSafetensors(join(dir, SAELENS_WEIGHTS_FILE), tensors);
      writeJsonAtomic(join(dir, SAELENS_CONFIG_FILE), cfg);
    },
  };
}

/** The config of the model folder `modelName` names, when it is a readable local Hugging Face folder. */
function localModelConfig(modelName: string | null | undefined): ModelConfig | null {
  if (!modelName) return null;
  try {
    return statSync(modelName).isDirectory() ? readModelConfig(modelName) : null;
  } catch {
    return null;
  }
}
