/**
 * Model configuration: a Hugging Face config.json (GPT-2, GPT-NeoX/Pythia, Llama, Mistral, Qwen2,
 * Qwen3, Gemma-2, Gemma-3) validated and normalised into the fields the forward pass needs. Errors
 * name the file and the field.
 */
import { join } from 'node:path';
import { FormatError } from '../errors.js';
import { describe, readJsonFile } from '../io/json.js';

export type Architecture = 'gpt2' | 'gpt_neox' | 'llama' | 'mistral' | 'qwen2' | 'qwen3' | 'gemma2' | 'gemma3';
export const ARCHITECTURES: readonly Architecture[] = ['gpt2', 'gpt_neox', 'llama', 'mistral', 'qwen2', 'qwen3', 'gemma2', 'gemma3'];
/** The families with Llama's weight layout (model.layers.L.self_attn.q_proj, ...): RMSNorm, GQA, gated MLPs. */
export const LLAMA_LAYOUT: readonly Architecture[] = ['llama', 'mistral', 'qwen2', 'qwen3', 'gemma2', 'gemma3'];
/** Whether a model of this architecture has Llama's weight layout. */
export function hasLlamaLayout(arch: Architecture): boolean {
  return LLAMA_LAYOUT.includes(arch);
}

/** MLP nonlinearity: `gelu_tanh` is GPT-2's gelu_new (and Gemma's gelu_pytorch_tanh), `gelu` the exact erf form. */
export type Activation = 'gelu_tanh' | 'gelu' | 'relu' | 'silu';

/** A rotary embedding: Hugging Face's rope_type `default`, `linear` or `llama3` with its parameters. */
export interface RopeSpec {
  type: 'default' | 'linear' | 'llama3';
  base: number;
  /** linear and llama3: the scaling factor (1 otherwise). */
  factor: number;
  /** llama3 only (defaults 1 and 4 elsewhere). */
  lowFreqFactor: number;
  highFreqFactor: number;
  /** llama3 only: `original_max_position_embeddings`. */
  originalMaxPositions: number;
}

export interface ModelConfig {
  arch: Architecture;
  nLayers: number;
  dModel: number;
  nHeads: number;
  /** Key/value heads (grouped-query attention); equal to nHeads without GQA. */
  nKvHeads: number;
  /** Head size (Qwen3 and Gemma: independent of dModel / nHeads). */
  dHead: number;
  dMlp: number;
  /** Longest sequence the model accepts. */
  nCtx: number;
  vocabSize: number;
  /** Epsilon of every norm (layer_norm_epsilon / layer_norm_eps / rms_norm_eps). */
  lnEps: number;
  norm: 'layernorm' | 'rmsnorm';
  /** Gemma: the RMSNorm scales by (1 + weight). */
  normPlusOne: boolean;
  activation: Activation;
  /** SwiGLU / GeGLU MLP: down(act(gate x) * up x). */
  gatedMlp: boolean;
  /** Gemma: norms after attention and after the MLP as well (post_attention / post_feedforward). */
  sandwichNorms: boolean;
  /** Qwen3, Gemma-3: RMSNorm of each query/key head before RoPE. */
  qkNorm: boolean;
  /** GPT-NeoX `use_parallel_residual`: attention and MLP both read the block input. */
  parallelResidual: boolean;
  /** Rotary dimensions per head (0 for learned absolute positions). */
  rotaryDim: number;
  /** The distinct rotary embeddings (empty without rotary). */
  ropes: RopeSpec[];
  /** Per layer: index into `ropes` (Gemma-3's local and global layers differ; empty: all 0). */
  layerRopes: number[];
  /** Per layer: sliding attention window in tokens (0: all earlier tokens); empty: none. */
  slidingWindows: number[];
  /** GPT-2 option: attention scores also divided by (layer + 1). */
  scaleAttnByInverseLayerIdx: boolean;
  /** Factor on q.k (0: 1 / sqrt(dHead)); Gemma: query_pre_attn_scalar^-0.5. */
  attnScale: number;
  /** Gemma-2 attention-logit soft-cap (0: none). */
  attnSoftcap: number;
  /** Gemma final-logit soft-cap (0: none). */
  finalSoftcap: number;
  /** Gemma: embeddings multiplied by sqrt(dModel) (1 elsewhere). */
  embedScale: number;
  /** Which biases the checkpoint has (GPT-2, NeoX: true; Qwen2: q/k/v only). */
  attentionBias: boolean;
  qkvBias: boolean;
  mlpBias: boolean;
  tiedEmbeddings: boolean;
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
  ['silu', 'silu'],
  ['swish', 'silu'],
]);

const MAX_DIM = 2 ** 31 - 1;

/** The fields GPT-2 and GPT-NeoX share: LayerNorm, ungated MLPs, no GQA, every bias. */
const CLASSIC_DEFAULTS = {
  norm: 'layernorm',
  normPlusOne: false,
  gatedMlp: false,
  sandwichNorms: false,
  qkNorm: false,
  layerRopes: [],
  slidingWindows: [],
  attnScale: 0,
  attnSoftcap: 0,
  finalSoftcap: 0,
  embedScale: 1,
  attentionBias: true,
  qkvBias: true,
  mlpBias: true,
} as const satisfies Partial<ModelConfig>;

function defaultRope(base: number): RopeSpec {
  return { type: 'default', base, factor: 1, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 };
}

/** config.json model_type -> architecture, for the families with Llama's layout. */
const LLAMA_MODEL_TYPES = new Map<string, Architecture>([
  ['llama', 'llama'],
  ['mistral', 'mistral'],
  ['qwen2', 'qwen2'],
  ['qwen3', 'qwen3'],
  ['gemma2', 'gemma2'],
  ['gemma3_text', 'gemma3'],
]);

interface FieldReaders {
  int(key: string, fallback?: number): number;
  num(key: string, fallback: number): number;
  bool(key: string, fallback: boolean): boolean;
  fail(why: string): never;
}

/**
 * Llama, Mistral, Qwen2, Qwen3, Gemma-2 and Gemma-3 (text), with each family's Hugging Face
 * defaults (configuration_*.py) for fields a config.json leaves out.
 */
function parseLlamaFamily(arch: Architecture, raw: Record<string, unknown>, r: FieldReaders): ModelConfig {
  const { int, num, bool, fail } = r;
  const gemma = arch === 'gemma2' || arch === 'gemma3';
  const dModel = int('hidden_size');
  const nLayers = int('num_hidden_layers');
  const nHeads = int('num_attention_heads');
  // Absent fields take each configuration class's default, as Hugging Face does.
  const kvDefault = { llama: nHeads, mistral: 8, qwen2: 32, qwen3: 32, gemma2: 4, gemma3: 4 }[arch as 'llama'] ?? nHeads;
  const nKvHeads = raw.num_key_value_heads == null ? kvDefault : int('num_key_value_heads');
  const headDefault = { qwen3: 128, gemma2: 256, gemma3: 256 }[arch as 'qwen3'];
  const dHead = raw.head_dim == null ? (raw.head_dim === undefined && headDefault !== undefined ? headDefault : dModel / nHeads) : int('head_dim');
  if (!Number.isInteger(dHead)) fail(`hidden size ${dModel} is not divisible by the number of heads ${nHeads} (and there is no 'head_dim')`);
  const actKey = gemma ? (raw.hidden_activation != null ? 'hidden_activation' : 'hidden_act') : 'hidden_act';
  const actName = raw[actKey] ?? (gemma ? 'gelu_pytorch_tanh' : 'silu');
  const activation = typeof actName === 'string' ? ACTIVATIONS.get(actName) : undefined;
  if (!activation) fail(`field '${actKey}': unsupported activation ${describe(actName)} (supported: ${[...ACTIVATIONS.keys()].join(', ')})`);
  const partial = num('partial_rotary_factor', 1);
  if (partial <= 0 || partial > 1) fail(`field 'partial_rotary_factor' must be in (0, 1], got ${partial}`);
  const rotaryDim = Math.floor(dHead * partial);
  if (rotaryDim % 2 !== 0) fail(`rotary dimension ${rotaryDim} (head_dim ${dHead} x partial_rotary_factor ${partial}) must be even`);

  // Which layers attend through a sliding window: `layer_types` when given, else each family's rule.
  // Mistral and Gemma default to a 4096-token window when the field is absent (null: none).
  const windowDefault = raw.sliding_window === undefined && (arch === 'mistral' || gemma) ? 4096 : 0;
  const windowSize = raw.sliding_window == null ? windowDefault : int('sliding_window');
  let sliding: boolean[];
  if (Array.isArray(raw.layer_types)) {
    const types = raw.layer_types as unknown[];
    if (types.length !== nLayers) fail(`field 'layer_types' has ${types.length} entries for ${nLayers} layers`);
    sliding = types.map((t, i) => {
      if (t !== 'sliding_attention' && t !== 'full_attention') fail(`field 'layer_types[${i}]': unsupported ${describe(t)} (supported: sliding_attention, full_attention)`);
      return t === 'sliding_attention';
    });
  } else if (arch === 'mistral') {
    sliding = Array.from({ length: nLayers }, () => windowSize > 0);
  } else if (arch === 'qwen2' || arch === 'qwen3') {
    const use = bool('use_sliding_window', false);
    const from = raw.max_window_layers == null ? nLayers : int('max_window_layers');
    sliding = Array.from({ length: nLayers }, (_, i) => use && windowSize > 0 && i >= from);
  } else if (arch === 'gemma2') {
    sliding = Array.from({ length: nLayers }, (_, i) => (i + 1) % 2 !== 0);
  } else if (arch === 'gemma3') {
    const pattern = int('sliding_window_pattern', 6);
    sliding = Array.from({ length: nLayers }, (_, i) => (i + 1) % pattern !== 0);
  } else {
    sliding = Array.from({ length: nLayers }, () => false);
  }
  if (sliding.some(Boolean) && windowSize <= 0) fail(`field 'sliding_window' must be a positive integer when layers use sliding attention, got ${describe(raw.sliding_window)}`);

  // Rotary embeddings: Gemma-3's sliding layers use rope_local_base_freq without scaling.
  const theta = num('rope_theta', arch === 'gemma3' ? 1_000_000 : 10000);
  const ropeParameters = raw.rope_parameters;
  let globalRope: RopeSpec;
  let localRope: RopeSpec | undefined;
  if (typeof ropeParameters === 'object' && ropeParameters !== null && !Array.isArray(ropeParameters)) {
    // transformers 5: rope_parameters, keyed by layer type for Gemma-3.
    const p = ropeParameters as Record<string, unknown>;
    if (typeof p.full_attention === 'object' || typeof p.sliding_attention === 'object') {
      globalRope = parseRope(p.full_attention, 'rope_parameters.full_attention', theta, fail);
      localRope = parseRope(p.sliding_attention, 'rope_parameters.sliding_attention', num('rope_local_base_freq', 10000), fail);
    } else {
      globalRope = parseRope(p, 'rope_parameters', theta, fail);
    }
  } else {
    globalRope = parseRope(raw.rope_scaling, 'rope_scaling', theta, fail);
  }
  if (arch === 'gemma3' && !localRope) localRope = defaultRope(num('rope_local_base_freq', 10000));
  const ropes = localRope ? [globalRope, localRope] : [globalRope];
  const layerRopes = localRope ? sliding.map((s) => (s ? 1 : 0)) : [];

  const attentionBias = bool('attention_bias', false);
  const qkvBias = arch === 'qwen2' || attentionBias;
  const tied = bool('tie_word_embeddings', gemma);
  const softcap = (key: string, fallback: number): number => (raw[key] === null ? 0 : num(key, fallback));
  return {
    arch,
    nLayers,
    dModel,
    nHeads,
    nKvHeads,
    dHead,
    dMlp: int('intermediate_size'),
    nCtx: int('max_position_embeddings'),
    vocabSize: int('vocab_size'),
    lnEps: num('rms_norm_eps', 1e-6),
    norm: 'rmsnorm',
    normPlusOne: gemma,
    activation: activation as Activation,
    gatedMlp: true,
    sandwichNorms: gemma,
    qkNorm: arch === 'qwen3' || arch === 'gemma3',
    parallelResidual: false,
    rotaryDim,
    ropes,
    layerRopes,
    slidingWindows: sliding.some(Boolean) ? sliding.map((s) => (s ? windowSize : 0)) : [],
    scaleAttnByInverseLayerIdx: false,
    attnScale: gemma ? num('query_pre_attn_scalar', 256) ** -0.5 : 0,
    attnSoftcap: arch === 'gemma2' ? softcap('attn_logit_softcapping', 50) : 0,
    finalSoftcap: arch === 'gemma2' ? softcap('final_logit_softcapping', 30) : arch === 'gemma3' ? softcap('final_logit_softcapping', 0) : 0,
    embedScale: gemma ? Math.sqrt(dModel) : 1,
    attentionBias,
    qkvBias,
    mlpBias: bool('mlp_bias', false),
    tiedEmbeddings: tied,
    bosTokenId: null,
    eosTokenId: null,
    // Llama, Mistral and Gemma tokenizers prepend BOS; Qwen's do not (it has no BOS token).
    defaultPrependBos: arch !== 'qwen2' && arch !== 'qwen3',
  };
}

/** A rope_scaling / rope_parameters object (null or absent: plain RoPE with `theta`). */
function parseRope(value: unknown, field: string, theta: number, fail: (why: string) => never): RopeSpec {
  if (value === undefined || value === null) return defaultRope(theta);
  if (typeof value !== 'object' || Array.isArray(value)) fail(`field '${field}' must be an object or null, got ${describe(value)}`);
  const o = Object.assign(Object.create(null) as Record<string, unknown>, value as Record<string, unknown>);
  const type = o.rope_type ?? o.type ?? 'default';
  const base = o.rope_theta ?? theta;
  const positive = (key: string, fallback?: number): number => {
    const v = o[key] ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) fail(`field '${field}.${key}' must be a positive number, got ${describe(o[key])}`);
    return v as number;
  };
  if (typeof base !== 'number' || !(base > 0)) fail(`field '${field}.rope_theta' must be a positive number, got ${describe(base)}`);
  if (type === 'default') return defaultRope(base as number);
  if (type === 'linear') return { ...defaultRope(base as number), type: 'linear', factor: positive('factor') };
  if (type === 'llama3') {
    const rope: RopeSpec = {
      type: 'llama3',
      base: base as number,
      factor: positive('factor'),
      lowFreqFactor: positive('low_freq_factor'),
      highFreqFactor: positive('high_freq_factor'),
      originalMaxPositions: positive('original_max_position_embeddings'),
    };
    if (rope.highFreqFactor <= rope.lowFreqFactor) fail(`field '${field}': high_freq_factor (${rope.highFreqFactor}) must exceed low_freq_factor (${rope.lowFreqFactor})`);
    return rope;
  }
  return fail(`field '${field}.rope_type': unsupported ${describe(type)} (supported: default, linear, llama3)`);
}

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
    // Llama-3 lists several end-of-sequence ids: the first is the main one.
    const v = Array.isArray(raw[key]) ? (raw[key] as unknown[])[0] : raw[key];
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
      ...CLASSIC_DEFAULTS,
      arch: 'gpt2',
      nLayers: int('n_layer'),
      dModel,
      nHeads,
      nKvHeads: nHeads,
      dHead: dModel / nHeads,
      dMlp: raw.n_inner == null ? 4 * dModel : int('n_inner'),
      nCtx: int('n_positions', typeof raw.n_ctx === 'number' ? raw.n_ctx : undefined),
      vocabSize: int('vocab_size'),
      lnEps: num('layer_norm_epsilon', 1e-5),
      activation: activation('activation_function', 'gelu_new'),
      parallelResidual: false,
      rotaryDim: 0,
      ropes: [],
      scaleAttnByInverseLayerIdx: bool('scale_attn_by_inverse_layer_idx', false),
      tiedEmbeddings: true,
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
      ...CLASSIC_DEFAULTS,
      arch: 'gpt_neox',
      nLayers: int('num_hidden_layers'),
      dModel,
      nHeads,
      nKvHeads: nHeads,
      dHead,
      dMlp: raw.intermediate_size == null ? 4 * dModel : int('intermediate_size'),
      nCtx: int('max_position_embeddings'),
      vocabSize: int('vocab_size'),
      lnEps: num('layer_norm_eps', 1e-5),
      activation: activation('hidden_act', 'gelu'),
      parallelResidual: bool('use_parallel_residual', true),
      rotaryDim,
      ropes: [defaultRope(num('rotary_emb_base', typeof raw.rope_theta === 'number' ? raw.rope_theta : 10000))],
      scaleAttnByInverseLayerIdx: false,
      tiedEmbeddings: false,
      bosTokenId: tokenId('bos_token_id'),
      eosTokenId: tokenId('eos_token_id'),
      defaultPrependBos: false,
    };
  } else if (typeof modelType === 'string' && LLAMA_MODEL_TYPES.has(modelType)) {
    cfg = { ...parseLlamaFamily(LLAMA_MODEL_TYPES.get(modelType)!, raw, { int, num, bool, fail }), bosTokenId: tokenId('bos_token_id'), eosTokenId: tokenId('eos_token_id') };
  } else if (modelType === 'gemma3' && typeof raw.text_config === 'object' && raw.text_config !== null) {
    // The multimodal Gemma-3 checkpoints: the language model's config is nested (its weights are
    // read from under language_model.*; the vision tower is ignored).
    const text = { model_type: 'gemma3_text', ...(raw.text_config as Record<string, unknown>) };
    const textConfig = parseModelConfig(text, `${file} (text_config)`);
    return { ...textConfig, bosTokenId: tokenId('bos_token_id') ?? textConfig.bosTokenId, eosTokenId: tokenId('eos_token_id') ?? textConfig.eosTokenId };
  } else {
    return fail(`unknown architecture: model_type ${describe(modelType)} (supported: gpt2, gpt_neox, ${[...LLAMA_MODEL_TYPES.keys()].join(', ')})`);
  }
  if (!Number.isInteger(cfg.dHead)) fail(`hidden size ${cfg.dModel} is not divisible by the number of heads ${cfg.nHeads}`);
  if (cfg.nHeads % cfg.nKvHeads !== 0) fail(`field 'num_key_value_heads': ${cfg.nKvHeads} does not divide the number of attention heads ${cfg.nHeads}`);
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

/** Number of parameters of a model of this configuration (a tied unembedding counted once). */
export function parameterCount(c: ModelConfig): number {
  const d = c.dModel;
  const qkv = d * (c.nHeads + 2 * c.nKvHeads) * c.dHead;
  const attn = qkv + c.nHeads * c.dHead * d + (c.attentionBias || c.qkvBias ? (c.nHeads + 2 * c.nKvHeads) * c.dHead + d : 0) + (c.qkNorm ? 2 * c.dHead : 0);
  const mlp = (c.gatedMlp ? 3 : 2) * d * c.dMlp + (c.mlpBias ? (c.gatedMlp ? 2 : 1) * c.dMlp + d : 0);
  const norms = (c.norm === 'layernorm' ? 2 : 1) * d * (c.sandwichNorms ? 4 : 2);
  const embed = c.vocabSize * d + (c.arch === 'gpt2' ? c.nCtx * d : 0) + (c.tiedEmbeddings ? 0 : c.vocabSize * d);
  return c.nLayers * (attn + mlp + norms) + embed + (c.norm === 'layernorm' ? 2 : 1) * d;
}
