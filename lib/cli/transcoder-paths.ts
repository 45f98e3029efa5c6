/** Resolving --transcoders arguments: single transcoders in any format, or folders of layer_L transcoders. */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { detectTranscoderFormat, loadTranscoder } from '../transcoders/formats/index.js';
import type { Transcoder } from '../transcoders/transcoder.js';

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
