/**
 * Training checkpoints: a folder `step_<N>` per checkpoint holding, per layer (`layer_<L>/`, or `clt/`
 * for a cross-layer transcoder), the transcoder in the native format plus `trainer.safetensors`
 * (Adam moments, dead-feature counters), `state.json`
 * (step, data position, options) and `manifest.json` (every file with its size).
 *
 * No checkpoint is ever lost, whenever the process dies (SIGKILL, power, disk full):
 * - A checkpoint is written completely in a temporary folder `step_<N>.tmp-…`, the manifest last:
 *   a folder is complete exactly when its manifest exists and every file it lists has its size.
 * - It is switched into place by rename. Rewriting an existing step (resuming a finished run)
 *   first renames the old one aside (`step_<N>.old-…`), so at every moment a complete copy of
 *   the step exists under some name; resuming recovers it from there.
 * - Old checkpoints are removed only after the switch, each renamed to `….del-…` first, so a
 *   half-removed folder never looks like a checkpoint.
 * - Leftovers (temporary, aside, half-removed, broken folders) are cleaned at the next start.
 *
 * Failures while writing (ENOSPC, EFBIG, EACCES, ...) remove the temporary folder and become an
 * IoError naming the file; the earlier checkpoints are untouched.
 */
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { randomBytes } from 'node:crypto';
import { FormatError, InvalidArgumentError } from '../errors.js';
import { toIoError, writeFileAtomic } from '../io/atomic.js';
import { checkJsonDepth } from '../io/json.js';
import { loadSafetensorsTensors, readSafetensorsHeader, writeSafetensors } from '../io/safetensors.js';
import { Tensor } from '../tensor.js';
import type { TranscoderConfig } from './config.js';
import { crossLayerParameterShapes, type CrossLayerConfig } from './cross-layer.js';
import { CROSS_LAYER_VERSION, CROSS_LAYER_WEIGHTS_FILE } from './formats/cross-layer.js';
import { CONFIG_FILE, NATIVE_FORMAT, NATIVE_VERSION, WEIGHTS_FILE } from './formats/native.js';
import { parameterNames } from './transcoder.js';

/** The folder of a cross-layer transcoder inside a checkpoint (per-layer transcoders: `layer_<L>`). */
export const CROSS_LAYER_FOLDER = 'clt';

export const TRAINER_STATE_FILE = 'trainer.safetensors';
export const STATE_FILE = 'state.json';
export const MANIFEST_FILE = 'manifest.json';
const MANIFEST_FORMAT = 'transcoders-checkpoint';

/**
 * Fault injection for the kill-and-resume tests: `TRANSCODERS_CHECKPOINT_FAULT=<point>@<n>` makes
 * the process SIGKILL itself at the n-th time (counted from 1 in this process) it reaches `point`:
 * `file` (after each file of a checkpoint is written), `manifest` (the checkpoint is complete but not
 * yet switched in), `aside` (an existing folder of the same step was renamed aside), `switch` (the new
 * checkpoint is in place, the aside copy and the old checkpoints are not yet removed), `prune`
 * (in the middle of removing an old checkpoint: renamed, partly deleted).
 */
export const FAULT_ENV = 'TRANSCODERS_CHECKPOINT_FAULT';
export type FaultPoint = 'file' | 'manifest' | 'aside' | 'switch' | 'prune';
const faultCounts = new Map<string, number>();

function faultPoint(point: FaultPoint): void {
  const spec = process.env[FAULT_ENV];
  if (!spec) return;
  const [at, n] = spec.split('@');
  if (at !== point) return;
  // Counters are per spec, so a process that changes the variable starts counting afresh.
  const count = (faultCounts.get(spec) ?? 0) + 1;
  faultCounts.set(spec, count);
  if (count === Number(n)) process.kill(process.pid, 'SIGKILL');
}

export interface CheckpointState {
  step: number;
  /**
   * Activation rows (token positions) of the data to resume after: exactly the rows trained on
   * without shuffling, the rows read with shuffling (buffered rows are not replayed).
   */
  position: number;
  tokens: number;
  layers: number[];
  /**
   * Training options changed on a resume (`--lr`, `--seed`, ...): from which step each new value
   * applies, oldest first. Carried from checkpoint to checkpoint.
   */
  changes?: { step: number; option: string; from: unknown; to: unknown }[];
  /** Processes of the data-parallel run that wrote it (absent: 1); a run resumes on any number. */
  worldSize?: number;
}

export interface CheckpointLayer {
  /** The layer of a per-layer transcoder (ignored for a cross-layer one, stored under `clt/`). */
  layer: number;
  config: TranscoderConfig | CrossLayerConfig;
  /** Parameters and trainer state, as the native run snapshots them. */
  tensors: Record<string, Tensor>;
}

interface Manifest {
  format: typeof MANIFEST_FORMAT;
  version: 1;
  step: number;
  files: { path: string; size: number }[];
}

export interface Checkpoint {
  dir: string;
  state: CheckpointState;
}

const STEP_DIGITS = 9;
/** `step_<N>` (in place), `step_<N>.tmp-…` (being written), `step_<N>.old-…` (set aside), `step_<N>.del-…` (being removed). */
const NAME = /^step_(\d+)(?:\.(tmp|old|del)-[A-Za-z0-9-]+)?$/;

function stepName(step: number): string {
  return `step_${String(step).padStart(STEP_DIGITS, '0')}`;
}

function unique(): string {
  return `${process.pid}-${randomBytes(4).toString('hex')}`;
}

/** Flushes a folder's entries (new names after renames) to disk; not every file system supports it. */
function syncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch {
    // best effort: the renames themselves are atomic
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Whether `dir` is a complete checkpoint: its state, or why not. */
export function checkCheckpoint(dir: string): { state: CheckpointState } | { reason: string } {
  const file = join(dir, MANIFEST_FILE);
  let manifest: Manifest;
  try {
    manifest = JSON.parse(readFileSync(file, 'utf8')) as Manifest;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return { reason: code === 'ENOENT' ? `no ${MANIFEST_FILE} (not completely written)` : `${MANIFEST_FILE} unreadable (${(err as Error).message})` };
  }
  if (manifest?.format !== MANIFEST_FORMAT || !Array.isArray(manifest.files)) return { reason: `${MANIFEST_FILE} is not a checkpoint manifest` };
  for (const { path, size } of manifest.files) {
    let actual: number;
    try {
      actual = statSync(join(dir, path)).size;
    } catch {
      return { reason: `${path} is missing` };
    }
    if (actual !== size) return { reason: `${path} has ${actual} bytes, the manifest says ${size}` };
  }
  try {
    const state = JSON.parse(readFileSync(join(dir, STATE_FILE), 'utf8')) as CheckpointState;
    checkJsonDepth(state, join(dir, STATE_FILE)); // state.json is written back on resume: no recursion-breaking nesting
    if (!Number.isInteger(state.step) || !Array.isArray(state.layers)) return { reason: `${STATE_FILE} is not a checkpoint state` };
    return { state };
  } catch (err) {
    return { reason: `${STATE_FILE} unreadable (${(err as Error).message})` };
  }
}

interface Entry {
  name: string;
  dir: string;
  step: number;
  kind: 'in place' | 'tmp' | 'old' | 'del';
}

function entries(root: string): Entry[] {
  if (!existsSync(root)) return [];
  let names: string[];
  try {
    names = readdirSync(root);
  } catch (err) {
    throw toIoError(err, root, 'cannot list the checkpoints');
  }
  const out: Entry[] = [];
  for (const name of names) {
    const m = NAME.exec(name);
    if (m) out.push({ name, dir: join(root, name), step: Number(m[1]), kind: (m[2] as 'tmp' | 'old' | 'del' | undefined) ?? 'in place' });
  }
  return out;
}

/** Complete checkpoints in place under `root` (`step_<N>`), oldest first. */
export function listCheckpoints(root: string): Checkpoint[] {
  const out: Checkpoint[] = [];
  for (const e of entries(root).filter((e) => e.kind === 'in place').sort((a, b) => a.step - b.step)) {
    const check = checkCheckpoint(e.dir);
    if ('state' in check) out.push({ dir: e.dir, state: check.state });
  }
  return out;
}

export interface ResumePoint {
  /** The newest complete checkpoint (possibly still under a temporary or aside name), if any. */
  latest?: Checkpoint;
  /** Checkpoints in place, newer than `latest`, that are broken, and why: resuming falls back past them. */
  skipped: { dir: string; step: number; reason: string }[];
}

/**
 * The checkpoint to resume from, without changing anything on disk: the newest complete one,
 * in place or recoverable (a complete copy left under a temporary or aside name by a killed
 * switch), past broken ones.
 */
export function findResumePoint(root: string): ResumePoint {
  const all = entries(root).filter((e) => e.kind !== 'del');
  // Newest step first; within a step, the one in place, then the newer write, then the aside copy.
  const order = { 'in place': 0, tmp: 1, old: 2, del: 3 };
  all.sort((a, b) => b.step - a.step || order[a.kind] - order[b.kind]);
  const skipped: ResumePoint['skipped'] = [];
  for (const e of all) {
    const check = checkCheckpoint(e.dir);
    if ('state' in check) return { latest: { dir: e.dir, state: check.state }, skipped };
    if (e.kind === 'in place') skipped.push({ dir: e.dir, step: e.step, reason: check.reason });
  }
  return { skipped };
}

export interface CleanResult {
  /** Folders removed: temporary, aside and half-removed leftovers, and broken checkpoints. */
  removed: string[];
  /** Complete checkpoints moved back into place from a temporary or aside name. */
  recovered: string[];
}

/**
 * Tidies `root` at the start of a run (with the output folder locked): for each step, a complete
 * checkpoint ends up in place if one exists under any name; every other folder of the step goes.
 */
export function cleanCheckpoints(root: string): CleanResult {
  const result: CleanResult = { removed: [], recovered: [] };
  const byStep = new Map<number, Entry[]>();
  for (const e of entries(root)) byStep.set(e.step, [...(byStep.get(e.step) ?? []), e]);
  const order = { 'in place': 0, tmp: 1, old: 2, del: 3 };
  try {
    for (const group of byStep.values()) {
      group.sort((a, b) => order[a.kind] - order[b.kind]);
      const keep = group.find((e) => e.kind !== 'del' && 'state' in checkCheckpoint(e.dir));
      for (const e of group) {
        if (e === keep) continue;
        rmSync(e.dir, { recursive: true, force: true });
        result.removed.push(e.dir);
      }
      if (keep && keep.kind !== 'in place') {
        const target = join(root, stepName(keep.step));
        renameSync(keep.dir, target);
        result.recovered.push(target);
      }
    }
  } catch (err) {
    throw toIoError(err, root, 'cannot clean up the checkpoints');
  }
  if (result.removed.length || result.recovered.length) syncDir(root);
  return result;
}

/** Removes a checkpoint folder so that no moment of the removal looks like a checkpoint. */
function removeCheckpointDir(root: string, dir: string, step: number): void {
  const doomed = join(root, `${stepName(step)}.del-${unique()}`);
  renameSync(dir, doomed);
  rmSync(join(doomed, MANIFEST_FILE), { force: true });
  faultPoint('prune');
  rmSync(doomed, { recursive: true, force: true });
}

/**
 * Writes one checkpoint under `root` and keeps only the newest `keep`. Throws an IoError naming
 * the file on a write failure, leaving nothing of the new checkpoint behind.
 */
export function writeCheckpoint(root: string, state: CheckpointState, layers: CheckpointLayer[], keep = 2): string {
  if (!Number.isInteger(keep) || keep < 1) throw new InvalidArgumentError(`writeCheckpoint: keep must be a positive whole number, got ${keep}`);
  try {
    mkdirSync(root, { recursive: true });
  } catch (err) {
    throw toIoError(err, root, 'cannot create the checkpoint folder');
  }
  const name = stepName(state.step);
  const final = join(root, name);
  const tmp = join(root, `${name}.tmp-${unique()}`);
  const files: Manifest['files'] = [];
  const written = (path: string) => {
    files.push({ path: relative(tmp, path), size: statSync(path).size });
    faultPoint('file');
  };
  try {
    for (const { layer, config, tensors } of layers) {
      const crossLayer = 'kind' in config && config.kind === 'cross_layer_transcoder';
      const dir = join(tmp, crossLayer ? CROSS_LAYER_FOLDER : `layer_${layer}`);
      mkdirSync(dir, { recursive: true });
      const params = new Set<string>(crossLayer ? Object.keys(crossLayerParameterShapes(config as CrossLayerConfig)) : parameterNames(config as TranscoderConfig));
      const pick = (keep: (name: string) => boolean) => Object.fromEntries(Object.entries(tensors).filter(([k]) => keep(k)));
      const weights = crossLayer ? CROSS_LAYER_WEIGHTS_FILE : WEIGHTS_FILE;
      writeSafetensors(join(dir, weights), pick((k) => params.has(k)), { format: NATIVE_FORMAT });
      written(join(dir, weights));
      writeSafetensors(join(dir, TRAINER_STATE_FILE), pick((k) => !params.has(k)));
      written(join(dir, TRAINER_STATE_FILE));
      const version = crossLayer ? CROSS_LAYER_VERSION : NATIVE_VERSION;
      writeFileAtomic(join(dir, CONFIG_FILE), [JSON.stringify({ format: NATIVE_FORMAT, version, ...config }, null, 2) + '\n']);
      written(join(dir, CONFIG_FILE));
    }
    writeFileAtomic(join(tmp, STATE_FILE), [JSON.stringify(state, null, 2) + '\n']);
    written(join(tmp, STATE_FILE));
    // The manifest last: from here on the folder is a complete checkpoint.
    const manifest: Manifest = { format: MANIFEST_FORMAT, version: 1, step: state.step, files };
    writeFileAtomic(join(tmp, MANIFEST_FILE), [JSON.stringify(manifest, null, 2) + '\n']);
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw toIoError(err, tmp, 'cannot write the checkpoint');
  }
  faultPoint('manifest');
  try {
    // The same step already in place (a finished run resumed): set it aside rather than delete
    // it, so that a complete copy exists at every moment (findResumePoint / cleanCheckpoints
    // bring it back if the process dies before the switch).
    let aside: string | null = null;
    if (existsSync(final)) {
      aside = join(root, `${name}.old-${unique()}`);
      renameSync(final, aside);
      faultPoint('aside');
    }
    renameSync(tmp, final);
    syncDir(root);
    faultPoint('switch');
    if (aside) rmSync(aside, { recursive: true, force: true });
    const complete = listCheckpoints(root);
    for (const old of complete.slice(0, Math.max(0, complete.length - keep))) removeCheckpointDir(root, old.dir, old.state.step);
  } catch (err) {
    // A failed rename leaves the new checkpoint under its temporary name, complete: the next
    // start recovers it or removes it.
    throw toIoError(err, final, 'cannot put the checkpoint in place');
  }
  return final;
}

/** Reads the state of a checkpoint folder, or throws a FormatError naming what is wrong. */
export function readCheckpoint(dir: string): Checkpoint {
  const check = checkCheckpoint(dir);
  if ('reason' in check) throw new FormatError(`${dir}: not a complete checkpoint: ${check.reason}`, dir);
  return { dir, state: check.state };
}

/** The trainer state tensors of one layer of a checkpoint (`'clt'`: of its cross-layer transcoder). */
export async function readTrainerState(checkpointDir: string, layer: number | typeof CROSS_LAYER_FOLDER): Promise<Record<string, Tensor>> {
  const header = readSafetensorsHeader(join(checkpointDir, layer === CROSS_LAYER_FOLDER ? CROSS_LAYER_FOLDER : `layer_${layer}`, TRAINER_STATE_FILE));
  return loadSafetensorsTensors(header);
}
