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
 * sparsify runs on Hugging Face models (unprocessed weights): processing 'none'.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { InvalidArgumentError } from '../../errors.js';
import { writeSafetensors, type RawTensor } from '../../io/safetensors.js';
import type { Tensor } from '../../tensor.js';
import { mlpHooks, type TranscoderConfig } from '../config.js';
import type { ParameterName, Transcoder } from '../transcoder.js';
import { buildTranscoder, ConfigReader, exportArrays, rawF32, readJsonObject, TensorFile, transposeData, transposed, writeJsonAtomic, zeros, type ForeignLoadOptions } from './common.js';

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
 * Writes a TopK transcoder as a sparsify folder (`cfg.json` + `sae.safetensors`, float32, transcode
 * true). Our input pre-bias is folded into the encoder bias, our output bias becomes b_dec. sparsify
 * has only TopK (and groupmax) coders and sizes b_dec / W_skip by d_in, so other architectures and
 * d_out != d_in are refused (InvalidArgumentError).
 */
export function exportSparsify(tc: Transcoder, dir: string): void {
  const a = exportArrays(tc);
  const c = a.config;
  if (c.arch !== 'topk') throw new InvalidArgumentError(`exportSparsify: sparsify only has TopK coders, this transcoder is ${c.arch}`);
  if (c.dIn !== c.dOut) throw new InvalidArgumentError(`exportSparsify: sparsify transcoders have d_out = d_in, this one has d_in = ${c.dIn} and d_out = ${c.dOut}`);
  const tensors: Record<string, RawTensor> = {
    'encoder.weight': rawF32(transposeData(a.W_enc, c.dIn, c.dSae), [c.dSae, c.dIn]),
    'encoder.bias': rawF32(a.b_enc, [c.dSae]),
    W_dec: rawF32(a.W_dec, [c.dSae, c.dOut]),
    b_dec: rawF32(a.b_dec_out, [c.dOut]),
  };
  if (a.W_skip) tensors.W_skip = rawF32(transposeData(a.W_skip, c.dIn, c.dOut), [c.dOut, c.dIn]);
  mkdirSync(dir, { recursive: true });
  writeSafetensors(join(dir, SPARSIFY_WEIGHTS_FILE), tensors);
  writeJsonAtomic(join(dir, SPARSIFY_CONFIG_FILE), {
    activation: 'topk',
    expansion_factor: Math.max(1, Math.round(c.dSae / c.dIn)),
    normalize_decoder: false,
    num_latents: c.dSae,
    k: c.k,
    multi_topk: false,
    skip_connection: c.skip,
    transcode: true,
    d_in: c.dIn,
  });
}
