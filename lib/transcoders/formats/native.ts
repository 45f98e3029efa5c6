/**
 * The library's own transcoder format: a folder with `cfg.json` (the TranscoderConfig plus
 * `format` and `version`) and `transcoder.safetensors` (every parameter, lossless, in its dtype).
 * Both files are written atomically.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FormatError } from '../../errors.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { describe, readJsonObjectFile } from '../../io/json.js';
import { loadSafetensorsTensors, readSafetensorsHeader, writeSafetensors } from '../../io/safetensors.js';
import { validateTranscoderConfig, type TranscoderConfig } from '../config.js';
import { parameterNames, PARAMETER_SHAPES, Transcoder, type PlacementOptions } from '../transcoder.js';

export const NATIVE_FORMAT = 'transcoders';
export const NATIVE_VERSION = 1;
export const CONFIG_FILE = 'cfg.json';
export const WEIGHTS_FILE = 'transcoder.safetensors';

/** Writes `transcoder` to the folder `dir` (created if needed). */
export function saveTranscoder(transcoder: Transcoder, dir: string): void {
  mkdirSync(dir, { recursive: true });
  writeSafetensors(join(dir, WEIGHTS_FILE), transcoder.parameters(), { format: NATIVE_FORMAT });
  const cfg = { format: NATIVE_FORMAT, version: NATIVE_VERSION, ...transcoder.config };
  writeFileAtomic(join(dir, CONFIG_FILE), [JSON.stringify(cfg, null, 2) + '\n']);
}

/** Whether `dir` holds a transcoder in the native format. */
export function isNativeTranscoder(dir: string): boolean {
  const file = join(dir, CONFIG_FILE);
  if (!existsSync(file) || !existsSync(join(dir, WEIGHTS_FILE))) return false;
  try {
    return (JSON.parse(readFileSync(file, 'utf8')) as { format?: unknown }).format === NATIVE_FORMAT;
  } catch {
    return false;
  }
}

/** Reads a native-format transcoder folder. */
export async function loadNativeTranscoder(dir: string, options: PlacementOptions = {}): Promise<Transcoder> {
  const cfgFile = join(dir, CONFIG_FILE);
  // Depth-checked and object-checked; values are quoted cut short (see io/json.ts).
  const raw = readJsonObjectFile(cfgFile) as Partial<TranscoderConfig> & { format?: unknown; version?: unknown };
  if (raw.format !== NATIVE_FORMAT) throw new FormatError(`${cfgFile}: 'format' is ${describe(raw.format)}, expected "${NATIVE_FORMAT}"`, cfgFile);
  if (typeof raw.version !== 'number' || raw.version > NATIVE_VERSION) {
    throw new FormatError(`${cfgFile}: unsupported version ${describe(raw.version)} (this library reads up to ${NATIVE_VERSION})`, cfgFile);
  }
  const { format: _format, version: _version, ...fields } = raw;
  let config: TranscoderConfig;
  try {
    config = validateTranscoderConfig(fields, cfgFile);
  } catch (err) {
    throw new FormatError((err as Error).message, cfgFile);
  }
  const weightsFile = join(dir, WEIGHTS_FILE);
  const header = readSafetensorsHeader(weightsFile);
  const names = parameterNames(config);
  for (const name of names) {
    const entry = header.entries.get(name);
    if (!entry) throw new FormatError(`${weightsFile}: missing parameter '${name}'`, weightsFile);
    const shape = PARAMETER_SHAPES[name](config);
    if (entry.shape.join(',') !== shape.join(',')) {
      throw new FormatError(`${weightsFile}: parameter '${name}' has shape [${entry.shape}] but cfg.json implies [${shape}]`, weightsFile);
    }
  }
  for (const key of header.entries.keys()) {
    if (!(names as string[]).includes(key)) throw new FormatError(`${weightsFile}: unexpected tensor '${key}'`, weightsFile);
  }
  const tensors = await loadSafetensorsTensors(header, names);
  return Transcoder.fromParameters(config, tensors, options);
}
