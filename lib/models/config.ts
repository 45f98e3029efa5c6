/**
 * Model configuration: a Hugging Face config.json (GPT-2 or GPT-NeoX/Pythia) validated and
 * normalised into the fields the forward pass needs. Errors name the file and the field.
 */
import { join } from 'node:path';
import { FormatError } from '../errors.js';
import { describe, readJsonFile } from '../io/json.js';

export type Architecture = 'gpt2' | 'gpt_neox';
export const ARCHITECTURES: readonly Architecture[] = ['gpt2', 'gpt_neox'];

/** MLP nonlinearity: `gelu_tanh` is GPT-2's gelu_new, `gelu` the exact erf form. */
export type Activation = 'gelu_tanh' | 'gelu' | 'relu';

export interface ModelConfig {
  arch: Architecture;
  nLayers: number;
  dModel: number;
  nHeads: number;
  dHead: number;
  dMlp: number;
  /** Longest sequence the model accepts. */
  nCtx: number;
  vocabSize: number;
  lnEps: number;
  activation: Activation;
  /** GPT-NeoX `use_parallel_residual`: attention and MLP both read the block input. */
  parallelResidual: boolean;
  /** Rotary dimensions per head (0 for learned absolute positions). */
  rotaryDim: number;
  rotaryBase: number;
  /** GPT-2 option: attention scores also divided by (layer + 1). */
  scaleAttnByInverseLayerIdx: boolean;
  bosTokenId: number | null;
  eosTokenId: number | null;
  /** Whether prompts get a BOS token by default (TransformerLens convention: GPT-2 yes, Pythia no). */
  defaultPrependBos: boolean;
}

/** A Map, not an object literal, so that a file's `"activation_function": "constructor"` finds nothing. */
const ACTIVATIONS = new Map<string, Activation>([
  ['gelu_new', 'gelu_tanh'],
  ['gelu_pytorch_tanh', 'gelu_tanh'],
  ['gelu_fast', 'gelu_tanh'],
  ['gelu', 'gelu'],
  ['relu', 'relu'],
]);

const MAX_DIM = 2 ** 31 - 1;

/** Validates a parsed config.json. `file` names it in errors. */
export function parseModelConfig(json: unknown, file: string): ModelConfig {
  const fail = (why: string): never => {
    throw new FormatError(`${file}: ${why}`, file);
  };
  if (typeof json !== 'object' || json === null || Array.isArray(json)) fail('not a JSON object');
  // Own properties only: a key the file lacks must read as absent, not as Object.prototype's member.
  const obj = json as Record<string, unknown>;
  const raw: Record<string, unknown> = Object.assign(Object.create(null) as Record<string, unknown>, obj);
  const int = (key: string, fallback?: number): number => {
    const v = raw[key] ?? fallback;
    // Dimensions beyond int32 cannot be real and would only overflow the sizes computed from them.
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0 || v > MAX_DIM) fail(`field '${key}' must be a positive integer, got ${describe(raw[key])}${typeof v === 'number' && v > MAX_DIM ? ' (at most 2^31 - 1)' : ''}`);
    return v as number;
  };
  const num = (key: string, fallback: number): number => {
    const v = raw[key] ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) fail(`field '${key}' must be a non-negative number, got ${describe(raw[key])}`);
    return v as number;
  };
  const bool = (key: string, fallback: boolean): boolean => {
    const v = raw[key] ?? fallback;
    if (typeof v !== 'boolean') fail(`field '${key}' must be true or false, got ${describe(raw[key])}`);
    return v as boolean;
  };
  const tokenId = (key: string): number | null => {
    const v = raw[key];
    if (v === undefined || v === null) return null;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > MAX_DIM) fail(`field '${key}' must be a token id, got ${describe(v)}`);
    return v as number;
  };
  const activation = (key: string, fallback: string): Activation => {
    const v = raw[key] ?? fallback;
    const act = typeof v === 'string' ? ACTIVATIONS.get(v) : undefined;
    if (!act) fail(`field '${key}': unsupported activation ${describe(v)} (supported: ${[...ACTIVATIONS.keys()].join(', ')})`);
    return act as Activation;
  };

  const modelType = raw.model_type;
  let cfg: ModelConfig;
  if (modelType === 'gpt2') {
    const dModel = int('n_embd');
    const nHeads = int('n_head');
    if (raw.scale_attn_weights === false) fail("field 'scale_attn_weights': false is not supported");
    cfg = {
      arch: 'gpt2',
      nLayers: int('n_layer'),
      dModel,
      nHeads,
      dHead: dModel / nHeads,
      dMlp: raw.n_inner == null ? 4 * dModel : int('n_inner'),
      nCtx: int('n_positions', typeof raw.n_ctx === 'number' ? raw.n_ctx : undefined),
      vocabSize: int('vocab_size'),
      lnEps: num('layer_norm_epsilon', 1e-5),
      activation: activation('activation_function', 'gelu_new'),
      parallelResidual: false,
      rotaryDim: 0,
      rotaryBase: 10000,
      scaleAttnByInverseLayerIdx: bool('scale_attn_by_inverse_layer_idx', false),
      bosTokenId: tokenId('bos_token_id'),
      eosTokenId: tokenId('eos_token_id'),
      defaultPrependBos: true,
    };
  } else if (modelType === 'gpt_neox') {
    const dModel = int('hidden_size');
    const nHeads = int('num_attention_heads');
    const dHead = dModel / nHeads;
    const rotaryPct = num('rotary_pct', typeof raw.partial_rotary_factor === 'number' ? raw.partial_rotary_factor : 0.25);
    if (rotaryPct > 1) fail(`field 'rotary_pct' must be in [0, 1], got ${rotaryPct}`);
    if (bool('tie_word_embeddings', false)) fail("field 'tie_word_embeddings': tied GPT-NeoX embeddings are not supported");
    // Hugging Face truncates: rotary_ndims = int(head_size * rotary_pct).
    const rotaryDim = Math.floor(dHead * rotaryPct);
    if (rotaryDim % 2 !== 0) fail(`rotary dimension ${rotaryDim} (head size ${dHead} x rotary_pct ${rotaryPct}) must be even`);
    cfg = {
      arch: 'gpt_neox',
      nLayers: int('num_hidden_layers'),
      dModel,
      nHeads,
      dHead,
      dMlp: raw.intermediate_size == null ? 4 * dModel : int('intermediate_size'),
      nCtx: int('max_position_embeddings'),
      vocabSize: int('vocab_size'),
      lnEps: num('layer_norm_eps', 1e-5),
      activation: activation('hidden_act', 'gelu'),
      parallelResidual: bool('use_parallel_residual', true),
      rotaryDim,
      rotaryBase: num('rotary_emb_base', typeof raw.rope_theta === 'number' ? raw.rope_theta : 10000),
      scaleAttnByInverseLayerIdx: false,
      bosTokenId: tokenId('bos_token_id'),
      eosTokenId: tokenId('eos_token_id'),
      defaultPrependBos: false,
    };
  } else {
    return fail(`unknown architecture: model_type ${describe(modelType)} (supported: ${ARCHITECTURES.join(', ')})`);
  }
  if (!Number.isInteger(cfg.dHead)) fail(`hidden size ${cfg.dModel} is not divisible by the number of heads ${cfg.nHeads}`);
  for (const [key, id] of [['bos_token_id', cfg.bosTokenId], ['eos_token_id', cfg.eosTokenId]] as const) {
    if (id !== null && id >= cfg.vocabSize) fail(`field '${key}' = ${id} is outside the vocabulary of ${cfg.vocabSize}`);
  }
  return cfg;
}

/** Reads and validates `<dir>/config.json`. */
export function readModelConfig(dir: string): ModelConfig {
  const file = join(dir, 'config.json');
  let json: unknown;
  try {
    json = readJsonFile(file);
  } catch (err) {
    if (err instanceof FormatError && /: cannot read \(/.test(err.message)) {
      throw new FormatError(`${err.message}; is ${dir} a Hugging Face model folder?`, file);
    }
    throw err;
  }
  return parseModelConfig(json, file);
}

/** Number of parameters of a model of this configuration (tied GPT-2 unembedding counted once). */
export function parameterCount(c: ModelConfig): number {
  const attn = 4 * c.dModel * c.dModel + 4 * c.dModel;
  const mlp = 2 * c.dModel * c.dMlp + c.dMlp + c.dModel;
  const lns = 4 * c.dModel;
  const embed = c.vocabSize * c.dModel + (c.arch === 'gpt2' ? c.nCtx * c.dModel : c.vocabSize * c.dModel);
  return c.nLayers * (attn + mlp + lns) + embed + 2 * c.dModel;
}
