/**
 * evaluate(): reconstruction metrics against the independent PyTorch transcoder reference run on the
 * model's cached activations, the clean loss against the independent model reference, spliced losses
 * against the model run with the reference's reconstruction written in, and KL computed in JS.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ReplacementModel } from '../lib/circuits/replacement-model.js';
import { loadModel, readSafetensors, Tensor, writeSafetensors, type Model } from '../lib/index.js';
import { mlpHooks } from '../lib/transcoders/config.js';
import { evaluate } from '../lib/transcoders/evaluate.js';
import { Transcoder } from '../lib/transcoders/transcoder.js';
import { StepTrainer } from '../lib/transcoders/step-trainer.js';
import { Rng } from '../lib/util/random.js';
import { DEVICE, makeTempModel, tempDir, TINY_GPT2 } from './helpers/fixtures.js';
import { logSoftmaxRows, referenceForward, runPython } from './helpers/reference.js';

const d = TINY_GPT2.dModel;
const V = TINY_GPT2.vocabSize;
let model: Model;
let modelDir: string;
let rows: number[][];
const transcoders: Transcoder[] = [];

/** A transcoder trained briefly on the layer's activations, so that it is neither trivial nor perfect. */
async function trainedTranscoder(layer: number, seed: number): Promise<Transcoder> {
  const rng = new Rng(seed);
  const data = Array.from({ length: 16 }, () => Array.from({ length: 16 }, () => rng.int(V)));
  const { cache } = await model.run(data, { cache: [mlpHooks(layer).hookIn, mlpHooks(layer).hookOut], logits: false });
  const x = cache[mlpHooks(layer).hookIn]!.toFloat32Array();
  const y = cache[mlpHooks(layer).hookOut]!.toFloat32Array();
  const tc = await Transcoder.create({ arch: 'relu', dIn: d, dOut: d, dSae: 96, layer, ...mlpHooks(layer), processing: 'transformerlens' }, { seed, device: DEVICE });
  await tc.initializeBiases(Tensor.from(x, [256, d]), Tensor.from(y, [256, d]));
  await new StepTrainer(tc, { lr: 3e-3, l1Coefficient: 3e-4, schedule: 'constant' }).run(Tensor.from(x, [8, 32, d]), Tensor.from(y, [8, 32, d]));
  return tc;
}

beforeAll(async () => {
  modelDir = makeTempModel({ ...TINY_GPT2, std: 0.1 });
  model = await loadModel(modelDir, { processing: 'transformerlens', device: DEVICE });
  const rng = new Rng(3);
  rows = Array.from({ length: 7 }, () => Array.from({ length: 12 }, () => rng.int(V)));
  transcoders.push(await trainedTranscoder(0, 1), await trainedTranscoder(1, 2));
});

async function referenceReconstruction(tc: Transcoder, x: Tensor, y: Tensor) {
  const dir = tempDir();
  writeSafetensors(join(dir, 'p.safetensors'), tc.parameters());
  writeFileSync(join(dir, 'cfg.json'), JSON.stringify({ arch: 'relu', reconstruction: 'fvu' }));
  writeSafetensors(join(dir, 'd.safetensors'), { x, y });
  runPython('transcoder_reference.py', ['forward', join(dir, 'p.safetensors'), join(dir, 'cfg.json'), join(dir, 'd.safetensors'), join(dir, 'o.safetensors')]);
  return (await readSafetensors(join(dir, 'o.safetensors'))).tensors;
}

describe('evaluate', () => {
  it('one layer: metrics agree with independent computations', async () => {
    const tc = transcoders[1]!;
    const result = await evaluate(ReplacementModel.create(model, [tc]), rows, { batchSize: 3 });
    expect(result.sequences).toBe(7);
    expect(result.tokens).toBe(7 * 12);
    const { cache } = await model.run(rows, { cache: [mlpHooks(1).hookIn, mlpHooks(1).hookOut] });
    const x = Tensor.from(cache[mlpHooks(1).hookIn]!.toFloat32Array(), [7 * 12, d]);
    const y = Tensor.from(cache[mlpHooks(1).hookOut]!.toFloat32Array(), [7 * 12, d]);
    const ref = await referenceReconstruction(tc, x, y);
    const layer = result.layers[0]!;
    // FVU over the whole data set equals the reference's FVU on all rows at once (1e-4 relative).
    expect(Math.abs(layer.fvu - ref.reconstruction!.item())).toBeLessThanOrEqual(1e-4 * ref.reconstruction!.item());
    const f = ref.f!.toFloat32Array();
    const yHat = ref.y_hat!.toFloat32Array();
    const yv = y.toFloat32Array();
    const mse = yHat.reduce((s, v, i) => s + (v - yv[i]!) ** 2, 0) / yv.length;
    expect(layer.mse).toBeCloseTo(mse, 6);
    const active = f.map((v) => (v > 0 ? 1 : 0));
    expect(layer.l0).toBeCloseTo(active.reduce((a, b) => a + b, 0) / (7 * 12), 6);
    const fires = Array.from({ length: 96 }, (_, j) => active.filter((_, i) => i % 96 === j).reduce((a, b) => a + b, 0));
    expect(layer.deadFraction).toBeCloseTo(fires.filter((c) => c === 0).length / 96, 10);
    expect(layer.denseFraction).toBeCloseTo(fires.filter((c) => c / 84 > 0.1).length / 96, 10);
    expect(layer.explainedVariance).toBeCloseTo(1 - layer.fvu, 12);

    // Clean loss: the independent model reference. Spliced loss: the model with the reference's
    // reconstruction written in as the MLP output.
    const modelRef = await referenceForward(modelDir, rows);
    expect(Math.abs(result.ceLossClean - modelRef.loss!.item())).toBeLessThanOrEqual(1e-4);
    const written = await model.loss(rows, { replaceMlp: { 1: { value: Tensor.from(yHat, [7, 12, d]) } } });
    expect(Math.abs(result.ceLossReplaced - written)).toBeLessThanOrEqual(1e-4);
    expect(Math.abs(layer.ceLoss - written)).toBeLessThanOrEqual(1e-4);
    const zero = await model.loss(rows, { replaceMlp: { 1: 'zero' } });
    expect(Math.abs(result.ceLossZeroAblated - zero)).toBeLessThanOrEqual(1e-4);
    expect(result.ceLossRecovered).toBeCloseTo((zero - written) / (zero - result.ceLossClean), 3);

    // KL(clean || spliced), computed in JS from the two runs' logits.
    const p = logSoftmaxRows((await model.run(rows)).logits!.toFloat32Array(), V);
    const q = logSoftmaxRows((await model.run(rows, { replaceMlp: { 1: tc } })).logits!.toFloat32Array(), V);
    let kl = 0;
    for (let i = 0; i < p.length; i++) kl += Math.exp(p[i]!) * (p[i]! - q[i]!);
    expect(Math.abs(result.klDivergence - kl / (7 * 12))).toBeLessThanOrEqual(1e-5);
  });

  it('several layers: joint replacement and each layer alone', async () => {
    const result = await evaluate(ReplacementModel.create(model, transcoders), rows, { batchSize: 4 });
    expect(result.layers.map((l) => l.layer)).toEqual([0, 1]);
    const joint = await model.loss(rows, { replaceMlp: { 0: transcoders[0]!, 1: transcoders[1]! } });
    expect(Math.abs(result.ceLossReplaced - joint)).toBeLessThanOrEqual(1e-4);
    const single = await evaluate(ReplacementModel.create(model, [transcoders[0]!]), rows);
    expect(Math.abs(result.layers[0]!.ceLoss - single.ceLossReplaced)).toBeLessThanOrEqual(1e-4);
    expect(result.layers[0]!.fvu).toBeCloseTo(single.layers[0]!.fvu, 5);
  });

  it('a hook_resid_mid transcoder is spliced on the residual it reads (the MLP output replaced by its output there)', async () => {
    const rng = new Rng(11);
    const mat = (a: number, b: number) => Tensor.from(Float32Array.from({ length: a * b }, () => 0.2 * rng.normal()), [a, b]);
    const tc = await Transcoder.fromParameters(
      { arch: 'relu', dIn: d, dOut: d, dSae: 16, layer: 0, hookIn: 'blocks.0.hook_resid_mid', hookOut: 'blocks.0.hook_mlp_out', processing: 'transformerlens' },
      { W_enc: mat(d, 16), b_enc: Tensor.from(new Float32Array(16), [16]), W_dec: mat(16, d), b_dec: Tensor.from(new Float32Array(d), [d]), b_dec_out: Tensor.from(new Float32Array(d), [d]) },
    );
    const result = await evaluate(ReplacementModel.create(model, [tc]), rows);
    // By hand: layer 0's resid_mid does not depend on its MLP, so its transcoder output is a fixed value.
    const { cache } = await model.run(rows, { cache: ['blocks.0.hook_resid_mid'] });
    const residMid = cache['blocks.0.hook_resid_mid']!.toFloat32Array();
    const p = tc.parameters();
    const Wenc = p.W_enc.toFloat32Array();
    const Wdec = p.W_dec.toFloat32Array();
    const y = new Float32Array(residMid.length);
    for (let r = 0; r < residMid.length / d; r++) {
      for (let j = 0; j < 16; j++) {
        let pre = 0;
        for (let i = 0; i < d; i++) pre += residMid[r * d + i]! * Wenc[i * 16 + j]!;
        if (pre > 0) for (let i = 0; i < d; i++) y[r * d + i]! += pre * Wdec[j * d + i]!;
      }
    }
    const byHand = await model.loss(rows, { replaceMlp: { 0: { value: Tensor.from(y, [rows.length, rows[0]!.length, d]) } } });
    expect(Math.abs(result.ceLossReplaced - byHand)).toBeLessThanOrEqual(1e-4);
  });
});
