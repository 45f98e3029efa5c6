/**
 * Transcoder configuration: architecture, sizes, and where it sits in a model (TransformerLens
 * hook names). Stored as the `cfg.json` of the native format; validated with errors naming the field.
 */
import type { Architecture } from '../models/config.js';
import { InvalidArgumentError } from '../errors.js';
import { describe } from '../io/json.js';
import type { Processing } from '../models/model.js';

/**
 * - `relu`: the paper's `f = ReLU((x - b_dec) W_enc + b_enc)`;
 * - `topk`: only the k largest pre-activations per row are kept (then ReLU);
 * - `jumprelu`: `f = pre * H(pre - threshold)` with a learned threshold per feature.
 */
export type TranscoderArch = 'relu' | 'topk' | 'jumprelu';
export const TRANSCODER_ARCHS: readonly TranscoderArch[] = ['relu', 'topk', 'jumprelu'];

export interface TranscoderConfig {
  arch: TranscoderArch;
  dIn: number;
  dOut: number;
  /** Number of features. */
  dSae: number;
  /** Adds a dense skip path `x W_skip` to the output ("skip transcoder"). */
  skip: boolean;
  /** TopK: active features per row. */
  k?: number;
  /** JumpReLU: width of the straight-through kernel around the threshold (training only). */
  bandwidth?: number;
  /** Hook the transcoder reads, e.g. `blocks.8.ln2.hook_normalized`. */
  hookIn: string;
  /** Hook it reconstructs, e.g. `blocks.8.hook_mlp_out`. */
  hookOut: string;
  layer: number;
  /** Model it was trained on, when known. */
  modelName?: string | null;
  /** Weight processing the model must be loaded with for this transcoder to apply. */
  processing?: Processing | null;
  /** Training hyper-parameters, for the record. */
  training?: Record<string, unknown>;
}

/**
 * The conventional hooks of a layer's MLP transcoder for a model architecture: GPT-2 and Pythia
 * the paper's `ln2.hook_normalized` -> `hook_mlp_out`; the modern families the hooks of their
 * released transcoders (circuit-tracer's Llama sets `hook_resid_mid` -> `mlp.hook_out`, Gemma Scope
 * and the Qwen3 sets `mlp.hook_in` -> `mlp.hook_out`).
 */
export function mlpHooks(layer: number, arch: Architecture = 'gpt2'): { hookIn: string; hookOut: string } {
  const p = `blocks.${layer}.`;
  if (arch === 'gpt2' || arch === 'gpt_neox') return { hookIn: `${p}ln2.hook_normalized`, hookOut: `${p}hook_mlp_out` };
  if (arch === 'llama' || arch === 'mistral') return { hookIn: `${p}hook_resid_mid`, hookOut: `${p}mlp.hook_out` };
  return { hookIn: `${p}mlp.hook_in`, hookOut: `${p}mlp.hook_out` };
}

/** Validates a configuration (from a file or a caller); `source` names it in errors. */
export function validateTranscoderConfig(cfg: Partial<TranscoderConfig>, source: string): TranscoderConfig {
  const fail = (why: string): never => {
    throw new InvalidArgumentError(`${source}: ${why}`);
  };
  const positive = (key: keyof TranscoderConfig): number => {
    const v = cfg[key];
    // Bounded by int32: the native core takes sizes as 32-bit ints, and no real width comes near.
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0 || v > 2 ** 31 - 1) fail(`'${key}' must be a positive integer, got ${describe(v)}${typeof v === 'number' && v > 2 ** 31 - 1 ? ' (at most 2^31 - 1)' : ''}`);
    return v as number;
  };
  if (!TRANSCODER_ARCHS.includes(cfg.arch as TranscoderArch)) fail(`'arch' must be one of ${TRANSCODER_ARCHS.join(', ')}, got ${describe(cfg.arch)}`);
  const out: TranscoderConfig = {
    arch: cfg.arch as TranscoderArch,
    dIn: positive('dIn'),
    dOut: positive('dOut'),
    dSae: positive('dSae'),
    skip: cfg.skip ?? false,
    hookIn: cfg.hookIn ?? '',
    hookOut: cfg.hookOut ?? '',
    layer: cfg.layer ?? -1,
    modelName: cfg.modelName ?? null,
    processing: cfg.processing ?? null,
    ...(cfg.training ? { training: cfg.training } : {}),
  };
  if (typeof out.skip !== 'boolean') fail(`'skip' must be true or false`);
  // Checked here, not left to the native core, so a file's wrong type is reported against the file.
  if (typeof out.hookIn !== 'string') fail(`'hookIn' must be a string, got ${describe(cfg.hookIn)}`);
  if (typeof out.hookOut !== 'string') fail(`'hookOut' must be a string, got ${describe(cfg.hookOut)}`);
  if (out.modelName !== null && typeof out.modelName !== 'string') fail(`'modelName' must be a string or null, got ${describe(cfg.modelName)}`);
  if (out.processing !== null && out.processing !== 'none' && out.processing !== 'transformerlens') fail(`'processing' must be "none", "transformerlens" or null, got ${describe(cfg.processing)}`);
  if (out.training !== undefined && (typeof out.training !== 'object' || Array.isArray(out.training))) fail(`'training' must be an object, got ${describe(cfg.training)}`);
  if (!Number.isInteger(out.layer) || out.layer < -1 || out.layer > 2 ** 31 - 1) fail(`'layer' must be a layer index, got ${describe(cfg.layer)}`);
  if (out.arch === 'topk') {
    const k = positive('k');
    if (k > out.dSae) fail(`'k' = ${k} exceeds dSae = ${out.dSae}`);
    out.k = k;
  }
  if (out.arch === 'jumprelu') {
    const bandwidth = cfg.bandwidth ?? 1e-3;
    if (typeof bandwidth !== 'number' || !(bandwidth > 0)) fail(`'bandwidth' must be a positive number`);
    out.bandwidth = bandwidth;
  }
  return out;
}
