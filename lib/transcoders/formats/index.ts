/**
 * Transcoder file formats: detection from the files present, and loading any of them.
 *
 * | format | what is on disk |
 * |---|---|
 * | `native` | folder: `cfg.json` (format "transcoders") + `transcoder.safetensors` (native.ts) |
 * | `saelens` | folder: `cfg.json` + `sae_weights.safetensors` (saelens.ts) |
 * | `sparsify` | folder: `cfg.json` + `sae.safetensors` (sparsify.ts) |
 * | `circuit-tracer` | `layer_{i}.safetensors` (or any safetensors with W_enc, b_enc, W_dec, b_dec), optionally in a folder with `config.yaml` (circuit-tracer.ts) |
 * | `gemma-scope` | Gemma Scope 1: `params.npz` (W_enc, W_dec, b_enc, b_dec, threshold), or its folder (gemma-scope.ts) |
 * | `gemma-scope-2` | Gemma Scope 2: `params.safetensors` (w_enc, w_dec, ..., optional affine_skip_connection) + `config.json`, or its folder (gemma-scope.ts) |
 *
 * Exports to circuit-tracer and sparsify, whose tools run the model with raw weights, re-express
 * transcoders of TransformerLens-processed models on the raw model (raw-model.ts).
 * | `paper-pt` | a `.pt` / `.pth` file (the transcoder paper's pickled checkpoints) |
 */
import { existsSync, statSync } from 'node:fs';
import { basename, dirname, extname } from 'node:path';
import { FormatError } from '../../errors.js';
import { resolveTranscoderSource } from '../../io/hf-cache.js';
import { readSafetensorsHeader } from '../../io/safetensors.js';
import { isNativeTranscoder, loadNativeTranscoder, WEIGHTS_FILE as NATIVE_WEIGHTS_FILE } from './native.js';
import type { Transcoder } from '../transcoder.js';
import { isCircuitTracerFolder, loadCircuitTracerTranscoder, type CircuitTracerLoadOptions } from './circuit-tracer.js';
import type { ForeignLoadOptions } from './common.js';
import { gemmaScopeFolderKind, isGemmaScope2File, loadGemmaScope2Transcoder, loadGemmaScopeTranscoder } from './gemma-scope.js';
import { loadPaperTranscoder } from './paper.js';
import { isSaeLensFolder, loadSaeLensTranscoder, SAELENS_WEIGHTS_FILE } from './saelens.js';
import { isSparsifyFolder, loadSparsifyTranscoder, SPARSIFY_WEIGHTS_FILE } from './sparsify.js';

export type TranscoderFormat = 'native' | 'saelens' | 'circuit-tracer' | 'sparsify' | 'paper-pt' | 'gemma-scope' | 'gemma-scope-2';

export { type ForeignLoadOptions } from './common.js';
export { exportedModelName } from './common.js';
export { type RawModelExportOptions } from './raw-model.js';
export { loadSaeLensTranscoder, exportSaeLens, SAELENS_ARCHITECTURES, SAELENS_LAYOUT_VERSION, type SaeLensArchitecture, type SaeLensExportOptions } from './saelens.js';
export {
  loadCircuitTracerTranscoder,
  exportCircuitTracer,
  exportCircuitTracerSet,
  readCircuitTracerConfig,
  parseYaml,
  stringifyYaml,
  type CircuitTracerLoadOptions,
  type CircuitTracerSetConfig,
  type CircuitTracerSetExportOptions,
  type ParsedYaml,
} from './circuit-tracer.js';
export { loadPaperTranscoder } from './paper.js';
export { loadGemmaScopeTranscoder, loadGemmaScope2Transcoder, layerFromGemmaScopePath, hookOfHfHookPoint } from './gemma-scope.js';
export { loadSparsifyTranscoder, exportSparsify, layerOfHookpoint, sparsifyHookpoint } from './sparsify.js';

const CIRCUIT_TRACER_KEYS = ['W_enc', 'b_enc', 'W_dec', 'b_dec'];

/** The format and the path its loader takes (a folder format's file resolves to its folder). */
function resolveFormat(path: string): { format: TranscoderFormat; path: string } | null {
  let isDir: boolean;
  try {
    isDir = statSync(path).isDirectory();
  } catch {
    return null;
  }
  if (isDir) {
    if (isNativeTranscoder(path)) return { format: 'native', path };
    if (isSaeLensFolder(path)) return { format: 'saelens', path };
    if (isSparsifyFolder(path)) return { format: 'sparsify', path };
    if (isCircuitTracerFolder(path)) return { format: 'circuit-tracer', path };
    const gemma = gemmaScopeFolderKind(path);
    if (gemma) return { format: gemma, path };
    return null;
  }
  const ext = extname(path).toLowerCase();
  if (ext === '.pt' || ext === '.pth') return { format: 'paper-pt', path };
  if (ext === '.npz') return { format: 'gemma-scope', path };
  if (ext !== '.safetensors') return null;
  const dir = dirname(path);
  const name = basename(path);
  if (name === NATIVE_WEIGHTS_FILE && isNativeTranscoder(dir)) return { format: 'native', path: dir };
  if (name === SAELENS_WEIGHTS_FILE && isSaeLensFolder(dir)) return { format: 'saelens', path: dir };
  if (name === SPARSIFY_WEIGHTS_FILE && isSparsifyFolder(dir)) return { format: 'sparsify', path: dir };
  try {
    const header = readSafetensorsHeader(path);
    if (CIRCUIT_TRACER_KEYS.every((k) => header.entries.has(k))) return { format: 'circuit-tracer', path };
    if (isGemmaScope2File(path)) return { format: 'gemma-scope-2', path };
  } catch {
    return null;
  }
  return null;
}

/** Which transcoder format `path` (a file or folder) holds, from the files present; null if none. */
export function detectTranscoderFormat(path: string): TranscoderFormat | null {
  return resolveFormat(path)?.format ?? null;
}

/**
 * Loads a transcoder in any supported format (detected with {@link detectTranscoderFormat}), from a
 * local path or, when no such path exists, a Hugging Face repo path found in the local hub cache.
 * The overrides of ForeignLoadOptions (layer, hooks, model name, processing) apply to the foreign
 * formats; a native folder is loaded as saved. For a circuit-tracer set folder pass `{ layer }`.
 */
export async function loadTranscoder(spec: string, options: ForeignLoadOptions & Pick<CircuitTracerLoadOptions, 'config'> = {}): Promise<Transcoder> {
  // A repo id (`org/name/path/in/repo[@revision]`) that is no local path is read from the hub cache.
  const path = resolveTranscoderSource(spec);
  const found = resolveFormat(path);
  if (!found) {
    if (!existsSync(path)) throw new FormatError(`${path}: no such file or folder`, path);
    throw new FormatError(
      `${path}: not a recognised transcoder (expected a native or SAELens or sparsify folder, a circuit-tracer safetensors file or set folder, a Gemma Scope params.npz or params.safetensors, or a .pt checkpoint)`,
      path,
    );
  }
  switch (found.format) {
    case 'native':
      return loadNativeTranscoder(found.path, { device: options.device, dtype: options.dtype });
    case 'saelens':
      return loadSaeLensTranscoder(found.path, options);
    case 'sparsify':
      return loadSparsifyTranscoder(found.path, options);
    case 'circuit-tracer':
      return loadCircuitTracerTranscoder(found.path, options);
    case 'paper-pt':
      return loadPaperTranscoder(found.path, { device: options.device, dtype: options.dtype });
    case 'gemma-scope':
      return loadGemmaScopeTranscoder(found.path, options);
    case 'gemma-scope-2':
      return loadGemmaScope2Transcoder(found.path, options);
  }
}
