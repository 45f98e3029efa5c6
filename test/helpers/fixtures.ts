/** Test fixtures: tiny random models in exact Hugging Face layout, written to fresh temp folders. */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRandomModel, type RandomModelSpec } from '../../lib/models/random.js';
import type { Tensor } from '../../lib/tensor.js';

/** Device the numeric tests run on: set TRANSCODERS_TEST_DEVICE=cuda on a CUDA machine. */
export const DEVICE = process.env.TRANSCODERS_TEST_DEVICE ?? 'cpu';

/** A new temp folder (removed by the OS; tests do not depend on cleanup). */
export function tempDir(prefix = 'transcoders-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Writes a random model to a new temp folder and returns the folder. */
export function makeTempModel(spec: RandomModelSpec): string {
  return createRandomModel(join(tempDir(), spec.arch), spec);
}

/** Small specs used across tests; std 0.2 makes attention patterns and LayerNorm folding non-trivial. */
export const TINY_GPT2: RandomModelSpec = { arch: 'gpt2', nLayers: 2, dModel: 32, nHeads: 4, vocabSize: 300, nCtx: 32, std: 0.2 };
export const TINY_NEOX: RandomModelSpec = { arch: 'gpt_neox', nLayers: 2, dModel: 64, nHeads: 4, dMlp: 96, vocabSize: 300, nCtx: 32, std: 0.2 };

/** The elements of a tensor as a plain array (numbers, or bigints for int64). */
export function values(t: Tensor): (number | bigint)[] {
  return [...(t.toTypedArray() as Iterable<number | bigint>)];
}
