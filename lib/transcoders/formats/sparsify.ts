/**
 * EleutherAI sparsify sparse coders: a folder (usually named after the hookpoint, e.g.
 * `layers.8.mlp`) with `cfg.json` and `sae.safetensors`:
 *
 *   encoder.weight [M, d_in] (nn.Linear: ours W_enc is its transpose)   encoder.bias [M]
 *   W_dec [M, d_out]    b_dec [d_out] (output bias)    W_skip [d_out, d_in] optional (x W_skipᵀ)
 *
 *   transcode: y = topk(relu(x encᵀ + b)) W_dec + b_dec (+ x W_skipᵀ)   (no input centring: our b_dec = 0)
 *   SAE mode (transcode false): the encoder reads x - b_dec, which becomes our input pre-bias too.
 *
 * cfg.json: activation ("topk"; "groupmax" is not supported), k, num_latents / expansion_factor,
 * transcode, skip_connection, normalize_decoder, d_in. Hooks come from the options, else
 * `mlpHooks(layer)` when the folder name holds a layer index, else layer -1 with empty hooks.
 * sparsify runs on Hugging Face models (unprocessed weights): processing 'none'. Exports of
 * transcoders trained on a TransformerLens-processed model fold the LayerNorm into the encoder
 * (raw-model.ts).
 */
import { existsSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { InvalidArgumentError } from '../../errors.js';
import { writeSafetensors, type RawTensor } from '../../io/safetensors.js';
import type { Tensor } from '../../tensor.js';
import { mlpHooks, type TranscoderConfig } from '../config.js';
import type { ParameterName, Transcoder } from '../transcoder.js';
import type { Architecture } from '../../models/config.js';
import {
  buildTranscoder,
  ConfigReader,
  exportArrays,
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
import { describeFold, rawModelInputFold, type RawModelExportOptions } from './raw-model.js';

export const SPARSIFY_CONFIG_FILE = 'cfg.json';
export const SPARSIFY_WEIGHTS_FILE = 'sae.safetensors';

/** Whether `dir` holds a sparsify folder (by its file names). */
export function isSparsifyFolder(dir: string): boolean {
  return existsSync(join(dir, SPARSIFY_CONFIG_FILE)) && existsSync(join(dir, SPARSIFY_WEIGHTS_FILE));
}

/** The layer index in a sparsify hookpoint name (`layers.8.mlp`, `h.3.mlp`, `gpt_neox.layers.2`), or undefined. */
export function layerOfHookpoint(name: string): number | undefined {
  const m = /(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)(?:\.|$)/.exec(name);
  return m ? Number(m[1]) : undefined;
}

/** Reads a sparsify folder (a TopK transcoder, or a TopK SAE when `transcode` is false). */
export async function loadSparsifyTranscoder(dir: string, options: ForeignLoadOptions = {}): Promise<Transcoder> {
  const cfgFile = join(dir, SPARSIFY_CONFIG_FILE);
  const cfg = new ConfigReader(cfgFile, readJsonObject(cfgFile));
  const activation = cfg.get('activation') ?? 'topk';
  if (activation === 'groupmax') cfg.fail(`'activation' is "groupmax", which is not supported (only "topk")`);
  if (activation !== 'topk') cfg.fail(`unknown 'activation' ${JSON.stringify(activation)} (only "topk" is supported)`);
  for (const flag of ['embed_skip', 'gram_lookup']) {
    if (cfg.optionalBool(flag) === true) cfg.fail(`'${flag}' is true, which is not supported`);
  }
  const transcode = cfg.optionalBool('transcode') ?? false;
  const skip = cfg.optionalBool('skip_connection') ?? false;
  cfg.optionalBool('normalize_decoder');
  const k = cfg.optionalPositiveInt('k') ?? 32;

  const file = new TensorFile(join(dir, SPARSIFY_WEIGHTS_FILE));
  const enc = file.float('encoder.weight', 2);
  const dIn = cfg.optionalPositiveInt('d_in') ?? enc.shape[1]!;
  const numLatents = cfg.optionalPositiveInt('num_latents', { zeroIsAbsent: true });
  const expansion = cfg.optionalPositiveInt('expansion_factor');
  const m = numLatents ?? (expansion !== undefined ? dIn * expansion : enc.shape[0]!);
  const mWhy = numLatents !== undefined ? 'num_latents' : expansion !== undefined ? 'd_in x expansion_factor' : 'the encoder';
  file.expect('encoder.weight', [m, dIn], `M = ${m} from ${mWhy}, d_in = ${dIn}`);
  file.expect('encoder.bias', [m], `M = ${m} from ${mWhy}`);
  const dOut = file.float('W_dec', 2).shape[1]!;
  file.expect('W_dec', [m, dOut], `M = ${m} from ${mWhy}`);
  if (!transcode && dOut !== dIn) file.fail(`tensor 'W_dec' has ${dOut} columns but a sparse autoencoder (transcode false) reconstructs its d_in = ${dIn} inputs`);
  file.expect('b_dec', [dOut], 'd_out from W_dec');
  if (skip) file.expect('W_skip', [dOut, dIn], 'd_out x d_in, applied as x W_skipᵀ');
  else if (file.has('W_skip')) file.fail(`has tensor 'W_skip' but ${SPARSIFY_CONFIG_FILE} sets 'skip_connection' to false`);
  file.rejectUnused();
  if (k > m) cfg.fail(`'k' = ${k} exceeds the number of latents ${m}`);

  const t = await file.load(['encoder.weight', 'encoder.bias', 'W_dec', 'b_dec', ...(skip ? ['W_skip'] : [])]);
  const params: Partial<Record<ParameterName, Tensor>> = {
    W_enc: transposed(t['encoder.weight']!),
    b_enc: t['encoder.bias']!,
    W_dec: t.W_dec!,
    b_dec: transcode ? zeros(dIn) : t.b_dec!,
    b_dec_out: t.b_dec!,
  };
  const extra: Tensor[] = [t['encoder.weight']!];
  if (skip) {
    params.W_skip = transposed(t.W_skip!);
    extra.push(t.W_skip!);
  }
  const layer = layerOfHookpoint(basename(resolve(dir)));
  const hooks = layer !== undefined ? mlpHooks(layer) : { hookIn: '', hookOut: '' };
  const config: Partial<TranscoderConfig> = { arch: 'topk', k, dIn, dOut, dSae: m, skip, layer: layer ?? -1, ...hooks, modelName: null, processing: 'none' };
  return buildTranscoder(cfgFile, config, options, params, extra);
}

/**
 * The sparsify hookpoint of a layer's MLP, which sparsify transcoders hook (input and output of one
 * module): `h.L.mlp` in GPT-2, `layers.L.mlp` in GPT-NeoX (module names of the Hugging Face base
 * model, as sparsify's trainer names its output folders). Unknown architectures get `layers.L.mlp`.
 */
export function sparsifyHookpoint(layer: number, arch?: Architecture | null): string {
  return arch === 'gpt2' ? `h.${layer}.mlp` : `layers.${layer}.mlp`;
}

/** The key of our export record in cfg.json (sparsify drops unknown keys when it loads). */
export const SPARSIFY_EXPORT_RECORD_KEY = 'transcoders_export';

/**
 * Writes a TopK transcoder as a sparsify folder (`sae.safetensors` then `cfg.json`, float32,
 * transcode true). Our input pre-bias is folded into the encoder bias, our output bias becomes
 * b_dec. sparsify hooks the Hugging Face modules (raw weights): a transcoder trained on a
 * TransformerLens-processed model needs `options.model` (the raw model) and is re-expressed on the
 * raw MLP input (raw-model.ts); cfg.json records that under `transcoders_export`. sparsify has only
 * TopK (and groupmax) coders, sizes b_dec / W_skip by d_in, and a transcoder reads and writes one
 * module (the MLP), so other architectures, d_out != d_in and other hooks are refused
 * (InvalidArgumentError), before anything is written.
 */
export function exportSparsify(tc: Transcoder, dir: string, options: RawModelExportOptions = {}): void {
  prepareSparsifyExport(tc, options).write(dir);
}

/**
 * @internal The validation and arithmetic of {@link exportSparsify}, so that a caller writing
 * several transcoders can check all of them before writing any; `write(dir)` writes the folder.
 */
export function prepareSparsifyExport(tc: Transcoder, options: RawModelExportOptions = {}): PreparedExport {
  const who = 'exportSparsify';
  const c = tc.config;
  if (c.arch !== 'topk') throw new InvalidArgumentError(`${who}: sparsify only has TopK coders, this transcoder is ${c.arch}`);
  if (c.dIn !== c.dOut) throw new InvalidArgumentError(`${who}: sparsify transcoders have d_out = d_in, this one has d_in = ${c.dIn} and d_out = ${c.dOut}`);
  if ((c.hookIn !== '' || c.hookOut !== '') && c.layer >= 0) {
    const mlp = mlpHooks(c.layer);
    if (c.hookIn !== mlp.hookIn || c.hookOut !== mlp.hookOut) {
      throw new InvalidArgumentError(`${who}: a sparsify transcoder reads and writes the MLP module (${mlp.hookIn} -> ${mlp.hookOut}); this one maps ${c.hookIn} -> ${c.hookOut}`);
    }
  }
  const fold = rawModelInputFold(tc, who, 'sparsify', options);
  const a = exportArrays(tc, fold);
  const tensors: Record<string, RawTensor> = {
    'encoder.weight': rawF32(transposeData(a.W_enc, c.dIn, c.dSae), [c.dSae, c.dIn]),
    'encoder.bias': rawF32(a.b_enc, [c.dSae]),
    W_dec: rawF32(a.W_dec, [c.dSae, c.dOut]),
    b_dec: rawF32(a.b_dec_out, [c.dOut]),
  };
  if (a.W_skip) tensors.W_skip = rawF32(transposeData(a.W_skip, c.dIn, c.dOut), [c.dOut, c.dIn]);
  const cfg = {
    activation: 'topk',
    expansion_factor: Math.max(1, Math.round(c.dSae / c.dIn)),
    normalize_decoder: false,
    num_latents: c.dSae,
    k: c.k,
    multi_topk: false,
    skip_connection: c.skip,
    transcode: true,
    d_in: c.dIn,
    [SPARSIFY_EXPORT_RECORD_KEY]: { trained_on_processing: c.processing ?? 'not recorded', input_fold: describeFold(fold), hook_in: c.hookIn, hook_out: c.hookOut },
  };
  return {
    write(dir: string): void {
      prepareOutputFolder(dir, who);
      writeSafetensors(join(dir, SPARSIFY_WEIGHTS_FILE), tensors);
      writeJsonAtomic(join(dir, SPARSIFY_CONFIG_FILE), cfg);
    },
  };
}
