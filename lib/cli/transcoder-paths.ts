/** Resolving --transcoders arguments: single transcoders in any format, or folders of layer_L transcoders. */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { InvalidArgumentError } from '../errors.js';
import { loadModel, PROCESSINGS, type Model, type Processing } from '../models/model.js';
import { detectTranscoderFormat, loadTranscoder } from '../transcoders/formats/index.js';
import type { Transcoder } from '../transcoders/transcoder.js';
import { choiceOption, listOption } from './command.js';

/** Loads every transcoder named by `paths` (a `train` output folder expands to its layer_L subfolders). */
export async function loadTranscoderArgs(paths: string[], placement: { device?: string } = {}): Promise<Transcoder[]> {
  const out: Transcoder[] = [];
  for (const path of paths) {
    const layerDirs = existsSync(path) && statSync(path).isDirectory() && detectTranscoderFormat(path) === null
      ? readdirSync(path).filter((n) => /^layer_\d+$/.test(n)).sort((a, b) => Number(a.slice(6)) - Number(b.slice(6)))
      : [];
    if (layerDirs.length > 0) {
      for (const dir of layerDirs) out.push(await loadTranscoder(join(path, dir), { ...placement, layer: Number(dir.slice(6)) }));
    } else {
      out.push(await loadTranscoder(path, placement));
    }
  }
  return out;
}

/**
 * The `--transcoders` (required), `--device` and `--processing` options of the commands that analyse
 * transcoders: loads the transcoders, then the model with `processing` when the command needs a given
 * one, else `--processing`, else the processing the transcoders record (default transformerlens).
 */
export async function loadModelWithTranscoders(
  values: Record<string, unknown>,
  modelDir: string,
  options: { processing?: Processing } = {},
): Promise<{ model: Model; transcoders: Transcoder[]; paths: string[] }> {
  const paths = listOption(values, 'transcoders');
  if (paths.length === 0) throw new InvalidArgumentError('--transcoders PATH is required');
  const device = (values.device as string | undefined) ?? 'cpu';
  const transcoders = await loadTranscoderArgs(paths, { device });
  const processing = options.processing ?? choiceOption(values.processing, 'processing', PROCESSINGS) ?? transcoders.find((t) => t.config.processing)?.config.processing ?? 'transformerlens';
  const model = await loadModel(modelDir, { processing, device });
  return { model, transcoders, paths };
}
