/**
 * Lazily read transcoder rows (lib/transcoders/lazy.ts) against the full load of the same file: encoder
 * vectors, decoder rows, encoder biases and thresholds of chosen features (unsorted, repeated, adjacent
 * and far apart) from native (float32 and bfloat16), circuit-tracer, SAELens, sparsify and Gemma Scope 2
 * (float16, written by numpy) files; bad indices and files truncated after opening.
 */
import { spawnSync } from 'node:child_process';
import { truncateSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FormatError, InvalidArgumentError } from '../lib/errors.js';
import { mlpHooks } from '../lib/transcoders/config.js';
import { exportCircuitTracer, exportSaeLens, exportSparsify, loadTranscoder } from '../lib/transcoders/formats/index.js';
import { saveTranscoder } from '../lib/transcoders/formats/native.js';
import { lazyTranscoder } from '../lib/transcoders/lazy.js';
import { Transcoder } from '../lib/transcoders/transcoder.js';
import { tempDir } from './helpers/fixtures.js';
import { PYTHON } from './helpers/reference.js';

const FEATURES = [7, 3, 3, 49, 0, 8, 9, 10, 31];
const D = 16;
const F = 50;

/** Row-major [rows, cols] `data`: the given rows, or (columns) the given columns as rows. */
function pick(data: Float32Array, rows: number, cols: number, features: number[], columns: boolean): Float32Array {
  const n = columns ? rows : cols;
  const out = new Float32Array(features.length * n);
  features.forEach((f, i) => {
    for (let j = 0; j < n; j++) out[i * n + j] = columns ? data[j * cols + f]! : data[f * cols + j]!;
  });
  return out;
}

/** The lazy reads of `path` equal the same entries of the full load. */
async function expectSameAsFullLoad(path: string): Promise<void> {
  const lazy = lazyTranscoder(path);
  const full = await loadTranscoder(path);
  const c = full.config;
  const p = full.parameters();
  expect([lazy.dIn, lazy.dOut, lazy.dSae]).toEqual([c.dIn, c.dOut, c.dSae]);
  expect(lazy.encoderVectors(FEATURES)).toEqual(pick(p.W_enc.toFloat32Array(), c.dIn, c.dSae, FEATURES, true));
  expect(lazy.decoderRows(FEATURES)).toEqual(pick(p.W_dec.toFloat32Array(), c.dSae, c.dOut, FEATURES, false));
  const bEnc = p.b_enc.toFloat32Array();
  expect(lazy.encoderBias(FEATURES)).toEqual(Float32Array.from(FEATURES, (f) => bEnc[f]!));
  if (c.arch === 'jumprelu') {
    const th = p.threshold.toFloat32Array();
    expect(lazy.thresholds(FEATURES)).toEqual(Float32Array.from(FEATURES, (f) => th[f]!));
  } else {
    expect(lazy.thresholds(FEATURES)).toBeNull();
  }
}

describe('lazyTranscoder', () => {
  it('reads what the full load holds, from every layout', async () => {
    const work = tempDir('lazy-');
    const jump = await Transcoder.create({ arch: 'jumprelu', dIn: D, dOut: D, dSae: F, skip: true, ...mlpHooks(0), layer: 0, processing: 'none' }, { seed: 3, initThreshold: 0.05 });
    const topk = await Transcoder.create({ arch: 'topk', k: 4, dIn: D, dOut: D, dSae: F, ...mlpHooks(0), layer: 0, processing: 'none' }, { seed: 4 });
    const bf16 = await Transcoder.create({ arch: 'relu', dIn: D, dOut: 12, dSae: F, ...mlpHooks(1), layer: 1 }, { seed: 5, dtype: 'bfloat16' });

    saveTranscoder(jump, join(work, 'native'));
    await expectSameAsFullLoad(join(work, 'native'));
    await expectSameAsFullLoad(join(work, 'native', 'transcoder.safetensors'));
    saveTranscoder(bf16, join(work, 'native-bf16'));
    expect(lazyTranscoder(join(work, 'native-bf16')).layout).toBe('native');
    await expectSameAsFullLoad(join(work, 'native-bf16'));
    exportCircuitTracer(jump, join(work, 'layer_0.safetensors'));
    expect(lazyTranscoder(join(work, 'layer_0.safetensors')).layout).toBe('circuit-tracer');
    await expectSameAsFullLoad(join(work, 'layer_0.safetensors'));
    exportSaeLens(jump, join(work, 'saelens'));
    expect(lazyTranscoder(join(work, 'saelens')).layout).toBe('saelens');
    await expectSameAsFullLoad(join(work, 'saelens'));
    exportSparsify(topk, join(work, 'sparsify'));
    expect(lazyTranscoder(join(work, 'sparsify')).layout).toBe('sparsify');
    await expectSameAsFullLoad(join(work, 'sparsify'));

    // Gemma Scope 2 in float16, written by numpy through the independent safetensors writer.
    const gs2 = join(work, 'layer_2_width_16k');
    const code = `
import sys, os, numpy as np, torch
sys.path.insert(0, ${JSON.stringify(new URL('./reference/', import.meta.url).pathname)})
from safetensors_io import save_file
rng = np.random.default_rng(1)
d, F = ${D}, ${F}
t = {"w_enc": rng.normal(size=(d, F)), "w_dec": rng.normal(size=(F, d)), "b_enc": rng.normal(size=F), "b_dec": rng.normal(size=d), "threshold": np.abs(rng.normal(size=F))}
os.makedirs(sys.argv[1])
save_file({k: torch.from_numpy(v.astype(np.float16)) for k, v in t.items()}, os.path.join(sys.argv[1], "params.safetensors"))
`;
    const r = spawnSync(PYTHON, ['-c', code, gs2], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(lazyTranscoder(gs2).layout).toBe('gemma-scope-2');
    await expectSameAsFullLoad(gs2);
  });

  it('refuses bad feature indices and files truncated after opening', async () => {
    const work = tempDir('lazy-');
    const tc = await Transcoder.create({ arch: 'relu', dIn: D, dOut: D, dSae: F, ...mlpHooks(0), layer: 0 }, { seed: 6 });
    saveTranscoder(tc, join(work, 'native'));
    const lazy = lazyTranscoder(join(work, 'native'));
    expect(() => lazy.decoderRows([F])).toThrow(InvalidArgumentError);
    expect(() => lazy.decoderRows([1, -1])).toThrow(/feature -1 \(position 1\) is out of range \[0, 50\)/);
    expect(() => lazy.encoderVectors([1.5])).toThrow(/feature 1.5/);
    const file = join(work, 'native', 'transcoder.safetensors');
    truncateSync(file, 2000);
    expect(() => lazy.decoderRows([F - 1])).toThrow(FormatError);
    expect(() => lazy.decoderRows([F - 1])).toThrow(/the file was truncated after it was opened/);
    // Opening it again validates the header against the new size.
    expect(() => lazyTranscoder(file)).toThrow(/truncated file\?/);
    expect(() => lazyTranscoder(work)).toThrow(/no transcoder weights file/);
  });
});
