/**
 * Training checkpoints: a folder `step_<N>` per checkpoint holding, per layer, the transcoder in the
 * native format plus `trainer.safetensors` (Adam moments, dead-feature counters), and `state.json`
 * (step, data position, options). A checkpoint is assembled in a temporary folder and renamed into
 * place, so a run killed at any moment leaves the previous checkpoints intact; `state.json` is
 * written last inside it, and only folders with one are considered when resuming.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { FormatError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { loadSafetensorsTensors, readSafetensorsHeader, writeSafetensors } from '../io/safetensors.js';
import { Tensor } from '../tensor.js';
import type { TranscoderConfig } from './config.js';
import { CONFIG_FILE, NATIVE_FORMAT, NATIVE_VERSION, WEIGHTS_FILE } from './formats/native.js';
import { parameterNames } from './transcoder.js';

export const TRAINER_STATE_FILE = 'trainer.safetensors';
export const STATE_FILE = 'state.json';

export interface CheckpointState {
  step: number;
  /**
   * Activation rows (token positions) of the data to resume after: exactly the rows trained on
   * without shuffling, the rows read with shuffling (buffered rows are not replayed).
   */
  position: number;
  tokens: number;
  layers: number[];
}

export interface CheckpointLayer {
  layer: number;
  config: TranscoderConfig;
  /** Parameters and trainer state, as the native run snapshots them. */
  tensors: Record<string, Tensor>;
}

function stepDir(root: string, step: number): string {
  return join(root, `step_${String(step).padStart(9, '0')}`);
}

/** Writes one checkpoint under `root` and keeps only the newest `keep`. */
export function writeCheckpoint(root: string, state: CheckpointState, layers: CheckpointLayer[], keep = 2): string {
  mkdirSync(root, { recursive: true });
  const final = stepDir(root, state.step);
  const tmp = `${final}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  for (const { layer, config, tensors } of layers) {
    const dir = join(tmp, `layer_${layer}`);
    mkdirSync(dir, { recursive: true });
    const params = new Set<string>(parameterNames(config));
    const pick = (keep: (name: string) => boolean) => Object.fromEntries(Object.entries(tensors).filter(([k]) => keep(k)));
    writeSafetensors(join(dir, WEIGHTS_FILE), pick((k) => params.has(k)), { format: NATIVE_FORMAT });
    writeSafetensors(join(dir, TRAINER_STATE_FILE), pick((k) => !params.has(k)));
    writeFileAtomic(join(dir, CONFIG_FILE), [JSON.stringify({ format: NATIVE_FORMAT, version: NATIVE_VERSION, ...config }, null, 2) + '\n']);
  }
  writeFileAtomic(join(tmp, STATE_FILE), [JSON.stringify(state, null, 2) + '\n']);
  rmSync(final, { recursive: true, force: true });
  renameSync(tmp, final);
  const all = listCheckpoints(root);
  for (const old of all.slice(0, Math.max(0, all.length - keep))) rmSync(old.dir, { recursive: true, force: true });
  return final;
}

/** Complete checkpoints under `root`, oldest first. */
export function listCheckpoints(root: string): { dir: string; state: CheckpointState }[] {
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .filter((name) => /^step_\d+$/.test(name) && existsSync(join(root, name, STATE_FILE)))
    .sort()
    .map((name) => {
      const file = join(root, name, STATE_FILE);
      try {
        return { dir: join(root, name), state: JSON.parse(readFileSync(file, 'utf8')) as CheckpointState };
      } catch (err) {
        throw new FormatError(`${file}: invalid checkpoint state (${(err as Error).message})`, file);
      }
    });
}

/** The trainer state tensors of one layer of a checkpoint. */
export async function readTrainerState(checkpointDir: string, layer: number): Promise<Record<string, Tensor>> {
  const header = readSafetensorsHeader(join(checkpointDir, `layer_${layer}`, TRAINER_STATE_FILE));
  return loadSafetensorsTensors(header);
}
