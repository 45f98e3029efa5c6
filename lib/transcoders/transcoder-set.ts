/**
 * Sets of transcoders from one path: a training output folder (`layer_L/` inside, as `transcoders
 * train` writes), a circuit-tracer set folder (every layer its config.yaml lists, or every
 * `layer_L.safetensors`), or a single transcoder in any format.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { resolveTranscoderSource } from '../io/hf-cache.js';
import { CIRCUIT_TRACER_CONFIG_FILE, readCircuitTracerConfig } from './formats/circuit-tracer.js';
import { detectTranscoderFormat, loadTranscoder } from './formats/index.js';
import type { PlacementOptions, Transcoder } from './transcoder.js';

const LAYER_DIR = /^layer_(\d+)$/;
const LAYER_FILE = /^layer_(\d+)\.safetensors$/;

function isFolder(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/** Layer indices of the entries of `dir` whose names match `pattern`, ascending. */
function layersIn(dir: string, pattern: RegExp): number[] {
  return readdirSync(dir).flatMap((n) => {
    const m = pattern.exec(n);
    return m ? [Number(m[1])] : [];
  }).sort((a, b) => a - b);
}

/**
 * The `layer_L/` folders of a training output folder (`transcoders train` writes one per layer), by
 * layer; empty when `path` is not such a folder (a file, or a folder in a transcoder format).
 */
export function trainingLayerDirs(path: string): Map<number, string> {
  if (!isFolder(path) || detectTranscoderFormat(path) !== null) return new Map();
  return new Map(layersIn(path, LAYER_DIR).filter((l) => isFolder(join(path, `layer_${l}`))).map((l) => [l, join(path, `layer_${l}`)]));
}

/**
 * Every transcoder `path` holds, each knowing its layer. `path` may also be a Hugging Face repo id
 * (`org/name[/subfolder][@revision]`, e.g. `mntss/gemma-scope-transcoders`), read from the local hub
 * cache when no such local path exists (lib/io/hf-cache.ts).
 */
export async function loadTranscoderSet(spec: string, placement: PlacementOptions = {}): Promise<Transcoder[]> {
  const path = resolveTranscoderSource(spec);
  const trained = trainingLayerDirs(path);
  if (trained.size > 0) return Promise.all([...trained].map(([layer, dir]) => loadTranscoder(dir, { ...placement, layer })));
  if (isFolder(path)) {
    const format = detectTranscoderFormat(path);
    if (format === 'circuit-tracer') {
      const config = join(path, CIRCUIT_TRACER_CONFIG_FILE);
      const layers = existsSync(config) ? [...readCircuitTracerConfig(config).layerFiles.keys()].sort((a, b) => a - b) : layersIn(path, LAYER_FILE);
      return Promise.all(layers.map((layer) => loadTranscoder(path, { ...placement, layer })));
    }
  }
  return [await loadTranscoder(path, placement)];
}
