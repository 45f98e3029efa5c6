/**
 * No NaN passes silently: training stops at the first non-finite loss, gradient or update with the
 * step and layer named and the last checkpoint intact; weights holding NaN or infinity are reported
 * when a model loads (a warning by default, an error on request).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadModel, NumericalError, readSafetensorsHeader, Tensor, tokenizeToFile, type Model } from '../lib/index.js';
import { listCheckpoints } from '../lib/transcoders/checkpoints.js';
import { mlpHooks } from '../lib/transcoders/config.js';
import { loadNativeTranscoder } from '../lib/transcoders/formats/native.js';
import { StepTrainer } from '../lib/transcoders/step-trainer.js';
import { Transcoder } from '../lib/transcoders/transcoder.js';
import { trainTranscoders } from '../lib/transcoders/training-run.js';
import { makeTempModel, tempDir, TINY_GPT2 } from './helpers/fixtures.js';

let modelDir: string;
let model: Model;
let tokenFile: string;

beforeAll(async () => {
  modelDir = makeTempModel({ ...TINY_GPT2, nCtx: 64, std: 0.1 });
  model = await loadModel(modelDir, { processing: 'transformerlens' });
  const dir = tempDir();
  writeFileSync(join(dir, 'data.txt'), Array.from({ length: 200 }, (_, i) => `Sentence number ${i} of the data set, with words.`).join('\n\n'));
  tokenFile = join(dir, 'tokens.safetensors');
  await tokenizeToFile([join(dir, 'data.txt')], model.tokenizer!, tokenFile, { contextSize: 32 });
});

describe('training stops at the first non-finite number', () => {
  it('a batch with NaN rows: the loss is named with its step and layer, the parameters are left as they were', async () => {
    const d = TINY_GPT2.dModel;
    const tc = await Transcoder.create({ arch: 'relu', dIn: d, dOut: d, dSae: 16, layer: 1, ...mlpHooks(1) }, { seed: 1 });
    const trainer = new StepTrainer(tc, { lr: 1e-3 });
    const x = Float32Array.from({ length: 2 * 8 * d }, (_, i) => Math.sin(i));
    for (let i = 0; i < 10; i++) x[8 * d + i * 3] = Number.NaN; // NaN in the second batch
    const before = tc.parameters().W_enc.toFloat32Array().slice();
    const err = await trainer.run(Tensor.from(x, [2, 8, d]), Tensor.from(x, [2, 8, d])).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(NumericalError);
    expect((err as Error).message).toMatch(/training stopped at step 1 of the layer-1 transcoder: the loss is nan/);
    // The first batch trained, the second did not touch the weights.
    const after = tc.parameters().W_enc.toFloat32Array();
    expect(after.every(Number.isFinite)).toBe(true);
    expect(after.some((v, i) => v !== before[i])).toBe(true);
  });

  it('a learning rate of 1e30: the run stops with a NumericalError and its last checkpoint loads with finite weights', async () => {
    const out = tempDir();
    const err = await trainTranscoders({
      data: { tokenFile, model }, layers: [1], arch: 'relu', dSae: 32, batchSize: 32, steps: 60, out, lr: 1e30, schedule: 'constant',
      noShuffle: true, checkpointEveryTokens: 32,
    }).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(NumericalError);
    expect((err as Error).message).toMatch(/training stopped at step \d+ of the layer-1 transcoder: .*(not finite|the loss is (nan|inf))/);
    expect((err as Error).message).toMatch(/the last checkpoint written before this step is intact/);
    const step = Number(/at step (\d+)/.exec((err as Error).message)![1]);
    const checkpoints = listCheckpoints(join(out, 'checkpoints'));
    expect(checkpoints.length).toBeGreaterThan(0);
    const latest = checkpoints.at(-1)!;
    expect(latest.state.step).toBeLessThanOrEqual(step);
    const tc = await loadNativeTranscoder(join(latest.dir, 'layer_1'));
    for (const t of Object.values(tc.parameters())) expect(t.toFloat32Array().every(Number.isFinite)).toBe(true);
    // No final transcoder was written from the broken state.
    expect(() => readFileSync(join(out, 'layer_1', 'cfg.json'))).toThrow();
  });
});

describe('loading weights with NaN or infinity', () => {
  it('warns by default and refuses with nonFinite: "error", naming the folder and the weight', async () => {
    const dir = makeTempModel({ ...TINY_GPT2 });
    const file = join(dir, 'model.safetensors');
    const header = readSafetensorsHeader(file);
    const entry = header.entries.get('h.0.mlp.c_fc.bias') ?? header.entries.get('transformer.h.0.mlp.c_fc.bias')!;
    const bytes = readFileSync(file);
    new DataView(bytes.buffer, bytes.byteOffset).setFloat32(header.dataStart + entry.begin + 4, Number.NaN, true);
    writeFileSync(file, bytes);
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.message);
    process.on('warning', onWarning);
    try {
      const m = await loadModel(dir);
      await new Promise((r) => setImmediate(r));
      expect(warnings.join('\n')).toMatch(/1 weight holds NaN or infinite values \(blocks\.0\.mlp\.b_in\)/);
      m.dispose();
    } finally {
      process.off('warning', onWarning);
    }
    await expect(loadModel(dir, { nonFinite: 'error' })).rejects.toThrow(NumericalError);
    await expect(loadModel(dir, { nonFinite: 'error' })).rejects.toThrow(/blocks\.0\.mlp\.b_in/);
  });
});
