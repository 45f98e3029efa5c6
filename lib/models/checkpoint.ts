/**
 * Finds and validates a Hugging Face checkpoint (model.safetensors, or shards listed in
 * model.safetensors.index.json): every expected tensor present with the shape the config
 * implies, floating-point dtypes, no unknown tensors. Produces the file list the native loader reads.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { FormatError } from '../errors.js';
import { readJsonObjectFile } from '../io/json.js';
import { readSafetensorsHeader, type SafetensorsEntry } from '../io/safetensors.js';
import { hasLlamaLayout, type ModelConfig } from './config.js';

/** Checkpoint keys (Hugging Face names, GPT-2 without "transformer.") and their shapes. */
export function expectedTensors(c: ModelConfig): { required: Map<string, number[]>; optional: Map<string, number[]> } {
  const required = new Map<string, number[]>();
  const optional = new Map<string, number[]>();
  const d = c.dModel;
  if (c.arch === 'gpt2') {
    required.set('wte.weight', [c.vocabSize, d]);
    required.set('wpe.weight', [c.nCtx, d]);
    for (let l = 0; l < c.nLayers; l++) {
      const p = `h.${l}.`;
      required.set(`${p}ln_1.weight`, [d]).set(`${p}ln_1.bias`, [d]);
      required.set(`${p}attn.c_attn.weight`, [d, 3 * d]).set(`${p}attn.c_attn.bias`, [3 * d]);
      required.set(`${p}attn.c_proj.weight`, [d, d]).set(`${p}attn.c_proj.bias`, [d]);
      required.set(`${p}ln_2.weight`, [d]).set(`${p}ln_2.bias`, [d]);
      required.set(`${p}mlp.c_fc.weight`, [d, c.dMlp]).set(`${p}mlp.c_fc.bias`, [c.dMlp]);
      required.set(`${p}mlp.c_proj.weight`, [c.dMlp, d]).set(`${p}mlp.c_proj.bias`, [d]);
    }
    required.set('ln_f.weight', [d]).set('ln_f.bias', [d]);
    optional.set('lm_head.weight', [c.vocabSize, d]);
  } else if (hasLlamaLayout(c.arch)) {
    const q = c.nHeads * c.dHead;
    const kv = c.nKvHeads * c.dHead;
    required.set('model.embed_tokens.weight', [c.vocabSize, d]);
    for (let l = 0; l < c.nLayers; l++) {
      const p = `model.layers.${l}.`;
      required.set(`${p}input_layernorm.weight`, [d]).set(`${p}post_attention_layernorm.weight`, [d]);
      if (c.sandwichNorms) required.set(`${p}pre_feedforward_layernorm.weight`, [d]).set(`${p}post_feedforward_layernorm.weight`, [d]);
      required.set(`${p}self_attn.q_proj.weight`, [q, d]).set(`${p}self_attn.k_proj.weight`, [kv, d]).set(`${p}self_attn.v_proj.weight`, [kv, d]);
      required.set(`${p}self_attn.o_proj.weight`, [d, q]);
      if (c.qkvBias) required.set(`${p}self_attn.q_proj.bias`, [q]).set(`${p}self_attn.k_proj.bias`, [kv]).set(`${p}self_attn.v_proj.bias`, [kv]);
      if (c.attentionBias) required.set(`${p}self_attn.o_proj.bias`, [d]);
      if (c.qkNorm) required.set(`${p}self_attn.q_norm.weight`, [c.dHead]).set(`${p}self_attn.k_norm.weight`, [c.dHead]);
      required.set(`${p}mlp.gate_proj.weight`, [c.dMlp, d]).set(`${p}mlp.up_proj.weight`, [c.dMlp, d]).set(`${p}mlp.down_proj.weight`, [d, c.dMlp]);
      if (c.mlpBias) required.set(`${p}mlp.gate_proj.bias`, [c.dMlp]).set(`${p}mlp.up_proj.bias`, [c.dMlp]).set(`${p}mlp.down_proj.bias`, [d]);
    }
    required.set('model.norm.weight', [d]);
    if (!c.tiedEmbeddings) required.set('lm_head.weight', [c.vocabSize, d]);
  } else {
    required.set('gpt_neox.embed_in.weight', [c.vocabSize, d]);
    for (let l = 0; l < c.nLayers; l++) {
      const p = `gpt_neox.layers.${l}.`;
      required.set(`${p}input_layernorm.weight`, [d]).set(`${p}input_layernorm.bias`, [d]);
      required.set(`${p}post_attention_layernorm.weight`, [d]).set(`${p}post_attention_layernorm.bias`, [d]);
      required.set(`${p}attention.query_key_value.weight`, [3 * d, d]);
      required.set(`${p}attention.dense.weight`, [d, d]);
      required.set(`${p}mlp.dense_h_to_4h.weight`, [c.dMlp, d]);
      required.set(`${p}mlp.dense_4h_to_h.weight`, [d, c.dMlp]);
      // Biases are absent when the config sets attention_bias / mlp bias to false.
      optional.set(`${p}attention.query_key_value.bias`, [3 * d]).set(`${p}attention.dense.bias`, [d]);
      optional.set(`${p}mlp.dense_h_to_4h.bias`, [c.dMlp]).set(`${p}mlp.dense_4h_to_h.bias`, [d]);
    }
    required.set('gpt_neox.final_layer_norm.weight', [d]).set('gpt_neox.final_layer_norm.bias', [d]);
    required.set('embed_out.weight', [c.vocabSize, d]);
  }
  return { required, optional };
}

/** Buffers some checkpoints carry that the forward pass recomputes. */
const IGNORED = [/\.attn\.(masked_)?bias$/, /\.attention\.(masked_)?bias$/, /\.rotary_emb\.inv_freq$/];

/** Multimodal Gemma-3 checkpoints: the parts that are not the language model. */
const NOT_LANGUAGE_MODEL = [/^(model\.)?vision_tower\./, /^(model\.)?multi_modal_projector\./];

/**
 * The canonical (Hugging Face causal-LM) name of a checkpoint key: GPT-2 keys lose the
 * "transformer." prefix, multimodal Gemma-3 keys their language_model prefix.
 */
function canonicalName(key: string, config: ModelConfig): string {
  if (config.arch === 'gpt2') return key.startsWith('transformer.') ? key.slice('transformer.'.length) : key;
  if (config.arch === 'gemma3') {
    if (key.startsWith('language_model.model.')) return `model.${key.slice('language_model.model.'.length)}`;
    if (key.startsWith('model.language_model.')) return `model.${key.slice('model.language_model.'.length)}`;
    if (key.startsWith('language_model.lm_head.')) return key.slice('language_model.'.length);
  }
  return key;
}

/** One checkpoint tensor to load: its key in the file and the canonical name it maps to. */
export interface CheckpointTensor extends SafetensorsEntry {
  name: string;
}

export interface CheckpointFile {
  path: string;
  dataStart: number;
  entries: CheckpointTensor[];
}

function checkpointShards(dir: string): string[] {
  const single = join(dir, 'model.safetensors');
  if (existsSync(single)) return [single];
  const indexFile = join(dir, 'model.safetensors.index.json');
  if (!existsSync(indexFile)) {
    const hint = existsSync(join(dir, 'pytorch_model.bin')) ? ' (pytorch_model.bin is not supported: convert it to safetensors)' : '';
    throw new FormatError(`${dir}: no model.safetensors or model.safetensors.index.json${hint}`, dir);
  }
  const index = readJsonObjectFile(indexFile);
  const map = Object.hasOwn(index, 'weight_map') ? index.weight_map : undefined;
  if (typeof map !== 'object' || map === null || Object.values(map).some((v) => typeof v !== 'string' || v.includes('/') || v.includes('\\'))) {
    throw new FormatError(`${indexFile}: 'weight_map' must map tensor names to shard file names in the same folder`, indexFile);
  }
  return [...new Set(Object.values(map as Record<string, string>))].sort().map((f) => join(dir, f));
}

/** Locates and validates the checkpoint of `dir` against `config`. */
export function resolveCheckpoint(dir: string, config: ModelConfig): CheckpointFile[] {
  const headers = checkpointShards(dir).map(readSafetensorsHeader);
  // Every layer has several tensors: a corrupt layer count must fail here, not build a table of
  // billions of expected tensors below.
  const count = headers.reduce((n, h) => n + h.entries.size, 0);
  if (config.nLayers > count) {
    throw new FormatError(`${dir}: config.json declares ${config.nLayers} layers but the checkpoint holds only ${count} tensors`, dir);
  }
  const { required, optional } = expectedTensors(config);
  const seen = new Set<string>();
  const files: CheckpointFile[] = [];
  for (const header of headers) {
    const path = header.path;
    const entries: CheckpointTensor[] = [];
    for (const entry of header.entries.values()) {
      const name = canonicalName(entry.key, config);
      if (IGNORED.some((re) => re.test(name)) || NOT_LANGUAGE_MODEL.some((re) => re.test(name))) continue;
      // A tied model ignores a stored lm_head, as Hugging Face ties it to the embedding.
      if (hasLlamaLayout(config.arch) && config.tiedEmbeddings && name === 'lm_head.weight') continue;
      const shape = required.get(name) ?? optional.get(name);
      if (!shape) throw new FormatError(`${path}: unexpected tensor '${entry.key}' for a ${config.arch} model`, path);
      if (seen.has(name)) throw new FormatError(`${path}: tensor '${entry.key}' appears twice in the checkpoint`, path);
      if (entry.shape.length !== shape.length || entry.shape.some((n, i) => n !== shape[i])) {
        throw new FormatError(`${path}: tensor '${entry.key}' has shape [${entry.shape}] but config.json implies [${shape}]`, path);
      }
      if (!['F32', 'F16', 'BF16', 'F64'].includes(entry.dtype)) {
        throw new FormatError(`${path}: tensor '${entry.key}' has dtype ${entry.dtype}; weights must be F32, F16 or BF16`, path);
      }
      seen.add(name);
      entries.push({ ...entry, name });
    }
    files.push({ path, dataStart: header.dataStart, entries });
  }
  for (const name of required.keys()) {
    if (!seen.has(name)) throw new FormatError(`${dir}: missing tensor '${name}' in the checkpoint`, dir);
  }
  return files;
}
