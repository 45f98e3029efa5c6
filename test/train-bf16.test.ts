/**
 * bfloat16 compute (TrainOptions.computeDtype): the same training run of the shipped model's
 * transcoders (the demo's recipe, on the same activations and seed) in float32 and with the dense
 * GEMMs in bf16 reaches, layer by layer, an FVU within 2% (relative) of the float32 run's, both
 * measured in float32 on held-out sequences. Also: bf16 parameters are not what it means (the
 * weights stay float32).
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel, ReplacementModel } from '../lib/index.js';
import { DEMO_MODEL_DIR, DEMO_TRANSCODERS, trainDemoTranscoders } from '../lib/demo/demo.js';
import { DEMO_MODEL, validationRows } from '../lib/demo/train-model.js';
import { evaluate } from '../lib/transcoders/evaluate.js';
import { StepTrainer } from '../lib/transcoders/step-trainer.js';
import { Transcoder } from '../lib/transcoders/transcoder.js';
import { tempDir } from './helpers/fixtures.js';

describe('bf16 training', () => {
  it('reaches the FVU of float32 training within 2% on the shipped model (the demo run: 600k rows per layer)', async () => {
    const model = await loadModel(DEMO_MODEL_DIR, { processing: 'transformerlens' });
    try {
      const spec = { ...DEMO_TRANSCODERS, tokens: DEMO_TRANSCODERS.tokens };
      const rows = validationRows(model, DEMO_MODEL, 64);
      const fvus: Record<string, number[]> = {};
      for (const computeDtype of ['float32', 'bfloat16'] as const) {
        const dir = tempDir(`train-${computeDtype}`);
        const { transcoders } = await trainDemoTranscoders(model, { ...spec, computeDtype }, join(dir, 'out'), join(dir, 'work'));
        for (const tc of transcoders) expect(tc.parameters().W_enc.dtype).toBe('float32');
        const evaluation = await evaluate(ReplacementModel.create(model, transcoders), rows, { batchSize: 32 });
        fvus[computeDtype] = evaluation.layers.map((l) => l.fvu);
      }
      const [fp32, bf16] = [fvus.float32!, fvus.bfloat16!];
      console.log(`FVU by layer: float32 ${fp32.map((f) => f.toFixed(4)).join(" ")}; bf16 GEMMs ${bf16.map((f) => f.toFixed(4)).join(" ")}`);
      expect(fp32).toHaveLength(model.config.nLayers);
      fp32.forEach((f, l) => {
        // A trained transcoder (well below 1), and bf16 within 2% of it.
        expect(f, `layer ${l} fp32 FVU`).toBeLessThan(0.5);
        expect(Math.abs(bf16[l]! - f) / f, `layer ${l}: bf16 FVU ${bf16[l]} vs fp32 ${f}`).toBeLessThanOrEqual(0.02);
      });
      // Not the same numbers: the bf16 products did run.
      expect(bf16).not.toEqual(fp32);
    } finally {
      model.dispose();
    }
  }, 240_000);

  it('refuses a compute dtype other than float32 or bfloat16', async () => {
    const tc = await Transcoder.create({ arch: 'relu', dIn: 8, dOut: 8, dSae: 16 }, { seed: 0 });
    expect(() => new StepTrainer(tc, { computeDtype: 'float16' as never })).toThrow(/computeDtype must be 'float32' or 'bfloat16', got 'float16'/);
  });
});
