/**
 * Cross-layer transcoders: the C++ forward, every loss term and every gradient against the
 * independent PyTorch reference (test/reference/clt_reference.py, float64), the sparse TopK
 * forward against the dense one, splicing into a model (the spliced forward's MLP outputs equal the
 * CLT's own outputs of the inputs that run recorded), training, and the file layouts. Tolerances
 * are stated next to each comparison.
 */
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel, readSafetensors, Tensor, writeSafetensors } from '../lib/index.js';
import { readTokenFileHeader, readTokenRows } from '../lib/data/token-file.js';
import { tokenizeToFile } from '../lib/data/tokenize.js';
import { trainTranscoders, type TrainRunOptions } from '../lib/transcoders/training-run.js';
import { writeActivationCache } from '../lib/transcoders/activation-cache.js';
import { crossLayerHooks, CrossLayerTranscoder, stackLayers, type CrossLayerConfig, type CrossLayerLossOptions } from '../lib/transcoders/cross-layer.js';
import { CrossLayerTrainer } from '../lib/transcoders/cross-layer-trainer.js';
import { evaluateCrossLayer } from '../lib/transcoders/evaluate-cross-layer.js';
import { exportCircuitTracerCrossLayer, loadCrossLayerTranscoder, saveCrossLayerTranscoder } from '../lib/transcoders/formats/cross-layer.js';
import { Rng } from '../lib/util/random.js';
import { lazyCrossLayer } from '../lib/transcoders/lazy.js';
import { DEVICE, makeTempModel, tempDir, TINY_GPT2 } from './helpers/fixtures.js';
import { maxDiff, runPython } from './helpers/reference.js';

const L = 3;
const D = 10;
const F = 24;
const N = 40;

function randomTensor(shape: number[], rng: Rng, scale = 1): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return Tensor.from(Float32Array.from({ length: n }, () => scale * rng.normal()), shape);
}

/** A CLT with random (not freshly initialised) parameters, so that every term is non-trivial. */
async function randomClt(config: Partial<CrossLayerConfig>, seed: number, nLayers = L): Promise<CrossLayerTranscoder> {
  const rng = new Rng(seed);
  const cfg = { nLayers, dIn: D, dOut: D, dSae: F, ...crossLayerHooks(nLayers), ...config } as CrossLayerConfig;
  const params: Record<string, Tensor> = { W_enc: randomTensor([nLayers, D, F], rng, 0.4), b_enc: randomTensor([nLayers, F], rng, 0.1) };
  for (let s = 0; s < nLayers; s++) params[`W_dec_${s}`] = randomTensor([F, nLayers - s, D], rng, 0.3);
  params.b_dec = randomTensor([nLayers, D], rng, 0.1);
  if (cfg.skip) params.W_skip = randomTensor([nLayers, D, D], rng, 0.1);
  if (cfg.arch === 'jumprelu') params.threshold = Tensor.from(Float32Array.from({ length: nLayers * F }, () => 0.05 + 0.3 * rng.uniform()), [nLayers, F]);
  if (cfg.arch === 'batchtopk') params.threshold = Tensor.from(new Float32Array(nLayers * F), [nLayers, F]);
  return CrossLayerTranscoder.fromParameters(cfg, params, { device: DEVICE });
}

/** Runs clt_reference.py on the CLT's parameters and (x, y, dead); returns its output tensors. */
async function reference(clt: CrossLayerTranscoder, options: Record<string, unknown>, data: Record<string, Tensor>): Promise<Record<string, Tensor>> {
  const dir = tempDir('transcoders-cltref-');
  // BatchTopK's threshold is for use outside training: the training loss does not read it.
  const params = Object.fromEntries(Object.entries(clt.parameters()).filter(([name]) => !(clt.config.arch === 'batchtopk' && name === 'threshold')));
  writeSafetensors(join(dir, 'in.safetensors'), { ...params, ...data });
  writeFileSync(join(dir, 'options.json'), JSON.stringify(options));
  runPython('clt_reference.py', [join(dir, 'in.safetensors'), join(dir, 'options.json'), join(dir, 'out.safetensors')]);
  return (await readSafetensors(join(dir, 'out.safetensors'))).tensors;
}

function expectRelClose(ours: Tensor, ref: Tensor, tol: number, what: string): void {
  const { diff, scale } = maxDiff(ours, ref);
  expect(diff, `${what}: max diff ${diff} (scale ${scale})`).toBeLessThanOrEqual(tol * Math.max(scale, 1e-3));
}

/** Dead features: all of layer 0 but three, five of layer 1, none of layer 2 (AuxK's k_s = min(kAux, dead)). */
function deadMask(): Tensor {
  const dead = new Uint8Array(L * F);
  for (let j = 3; j < F; j++) dead[j] = 1;
  for (const j of [1, 4, 7, 10, 13]) dead[F + j] = 1;
  return Tensor.from(dead, [L, F], { dtype: 'uint8' });
}

const CASES: { name: string; clt: Partial<CrossLayerConfig>; loss: CrossLayerLossOptions; dead?: boolean }[] = [
  { name: 'relu, FVU + decoder-norm L1 + pre-activation loss, skip', clt: { arch: 'relu', skip: true }, loss: { sparsity: 'l1', sparsityCoefficient: 3e-2, preactCoefficient: 1e-2 } },
  { name: 'relu, paper MSE + tanh penalty', clt: { arch: 'relu' }, loss: { reconstruction: 'paper', sparsity: 'tanh', sparsityCoefficient: 5e-2, tanhScale: 2 } },
  { name: 'jumprelu, FVU + tanh + pre-activation loss', clt: { arch: 'jumprelu', bandwidth: 0.2 }, loss: { sparsity: 'tanh', sparsityCoefficient: 1e-1, tanhScale: 0.7, preactCoefficient: 2e-2 } },
  { name: 'jumprelu, FVU + L0 (straight-through), skip', clt: { arch: 'jumprelu', bandwidth: 0.2, skip: true }, loss: { sparsity: 'l0', sparsityCoefficient: 3e-2 } },
  { name: 'topk, FVU + AuxK over dead features', clt: { arch: 'topk', k: 5 }, loss: { auxkAlpha: 0.25, kAux: 6 }, dead: true },
  { name: 'topk, paper MSE, skip', clt: { arch: 'topk', k: 4, skip: true }, loss: { reconstruction: 'paper' } },
  { name: 'batchtopk (training selection), FVU + AuxK, skip', clt: { arch: 'batchtopk', k: 5, skip: true }, loss: { auxkAlpha: 0.25, kAux: 6 }, dead: true },
];

describe('cross-layer transcoder maths against the PyTorch reference', () => {
  it.each(CASES)('$name: forward, loss terms and gradients (1e-5 relative)', async ({ clt: cfg, loss, dead }) => {
    const clt = await randomClt(cfg, 11);
    const rng = new Rng(12);
    const x = randomTensor([N, L, D], rng);
    const y = randomTensor([N, L, D], rng, 0.7);
    const options = { ...loss, ...(dead ? { dead: deadMask() } : {}) };
    const ours = await clt.loss(x, y, options, { grad: true });
    const ref = await reference(
      clt,
      { arch: cfg.arch, skip: cfg.skip ?? false, ...(cfg.k ? { k: cfg.k } : {}), ...(cfg.bandwidth ? { bandwidth: cfg.bandwidth } : {}), ...loss },
      { x, y, ...(dead ? { dead: deadMask() } : {}) },
    );
    expectRelClose(ours.pre!, ref.pre!, 1e-5, 'pre');
    expectRelClose(ours.f!, ref.f!, 1e-5, 'f');
    expectRelClose(ours.yHat!, ref.y_hat!, 1e-5, 'y_hat');
    expectRelClose(ours.omega!, ref.omega!, 1e-5, 'omega');
    for (const term of ['reconstruction', 'sparsity', 'preact', 'auxk', 'total']) {
      const a = ours[term]!.item();
      const b = ref[`loss.${term}`]!.item();
      expect(Math.abs(a - b), `${term}: ${a} vs ${b}`).toBeLessThanOrEqual(1e-5 * Math.max(Math.abs(b), 1e-3));
    }
    // Every term that should bite does: the comparison is not of zeros.
    if (loss.sparsity && loss.sparsity !== 'none') expect(ours.sparsity!.item()).toBeGreaterThan(0);
    if (loss.preactCoefficient) expect(ours.preact!.item()).toBeGreaterThan(0);
    if (dead) expect(ours.auxk!.item()).toBeGreaterThan(0);
    for (const name of Object.keys(clt.parameters())) {
      if (cfg.arch === 'batchtopk' && name === 'threshold') continue;
      expect(ref[`grad.${name}`], `reference gradient of ${name}`).toBeDefined();
      expectRelClose(ours[`grad.${name}`]!, ref[`grad.${name}`]!, 1e-5, `grad.${name}`);
    }
    // forward() (TopK's sparse decode) is the loss's dense decode; BatchTopK's forward uses its threshold instead (below).
    if (cfg.arch !== 'batchtopk') expectRelClose(await clt.forward(x), ref.y_hat!, 1e-5, 'forward');
  });
});

describe('cross-layer transcoder in a model', () => {
  it('the spliced forward writes, at every layer, what the CLT computes from the inputs that run recorded (1e-5)', async () => {
    const dir = makeTempModel({ ...TINY_GPT2, nLayers: 3 });
    const model = await loadModel(dir, { device: DEVICE });
    const d = model.config.dModel;
    for (const [arch, extra] of [['relu', { skip: true }], ['topk', { k: 4 }], ['jumprelu', {}]] as const) {
      const rng = new Rng(5);
      const cfg = { arch, nLayers: 3, dIn: d, dOut: d, dSae: F, ...crossLayerHooks(3), ...extra } as CrossLayerConfig;
      const params: Record<string, Tensor> = { W_enc: randomTensor([3, d, F], rng, 0.3), b_enc: randomTensor([3, F], rng, 0.05) };
      for (let s = 0; s < 3; s++) params[`W_dec_${s}`] = randomTensor([F, 3 - s, d], rng, 0.2);
      params.b_dec = randomTensor([3, d], rng, 0.05);
      if (cfg.skip) params.W_skip = randomTensor([3, d, d], rng, 0.05);
      if (arch === 'jumprelu') params.threshold = Tensor.from(new Float32Array(3 * F).fill(0.1), [3, F]);
      const clt = await CrossLayerTranscoder.fromParameters(cfg, params, { device: DEVICE });
      const tokens = [[1, 5, 9, 2, 7, 3], [4, 4, 8, 1, 0, 6]];
      const run = await model.run(tokens, { crossLayer: clt, cache: [...cfg.hookIn, ...cfg.hookOut] });
      const x = await stackLayers(cfg.hookIn.map((h) => run.cache[h]!));
      const written = await stackLayers(cfg.hookOut.map((h) => run.cache[h]!));
      expectRelClose(written, await clt.forward(x), 1e-5, `${arch}: MLP outputs`);
      // The replaced run differs from the clean one, and a second run gives the same logits.
      const clean = await model.run(tokens);
      expect(maxDiff(run.logits!, clean.logits!).diff).toBeGreaterThan(1e-3);
      expect(maxDiff((await model.run(tokens, { crossLayer: clt })).logits!, run.logits!).diff).toBe(0);
    }
    model.dispose();
  });

  it('keeps features by mask, and refuses a CLT of another depth or an MLP replaced twice', async () => {
    const dir = makeTempModel({ ...TINY_GPT2, nLayers: 3 });
    const model = await loadModel(dir, { device: DEVICE });
    const clt = await CrossLayerTranscoder.create({ arch: 'relu', nLayers: 3, dIn: model.config.dModel, dOut: model.config.dModel, dSae: 16 }, { seed: 3 });
    const none = Tensor.from(new Uint8Array(3 * 16), [3, 16], { dtype: 'uint8' });
    const zeroed = await model.run([[1, 2, 3]], { crossLayer: { module: clt, keep: none }, cache: ['blocks.1.hook_mlp_out'] });
    const bias = clt.parameters().b_dec!.toFloat32Array().subarray(model.config.dModel, 2 * model.config.dModel);
    const out = zeroed.cache['blocks.1.hook_mlp_out']!.toFloat32Array();
    for (let i = 0; i < out.length; i++) expect(out[i]).toBeCloseTo(bias[i % bias.length]!, 6);
    const shallow = await CrossLayerTranscoder.create({ arch: 'relu', nLayers: 2, dIn: model.config.dModel, dOut: model.config.dModel, dSae: 16 });
    await expect(model.run([[1, 2]], { crossLayer: shallow })).rejects.toThrow(/2 layers, but the model has 3/);
    await expect(model.run([[1, 2]], { crossLayer: clt, replaceMlp: { 1: 'zero' } })).rejects.toThrow(/layer 1's MLP is replaced twice/);
    model.dispose();
  });

  it('evaluateCrossLayer: per-layer FVU and L0 from the batch statistics, CE with every MLP replaced', async () => {
    const dir = makeTempModel({ ...TINY_GPT2, nLayers: 3 });
    const model = await loadModel(dir, { device: DEVICE });
    const d = model.config.dModel;
    const clt = await CrossLayerTranscoder.create({ arch: 'relu', nLayers: 3, dIn: d, dOut: d, dSae: 32 }, { seed: 4 });
    const rows = [[1, 5, 9, 2, 7, 3, 8, 8], [4, 4, 8, 1, 0, 6, 2, 2], [9, 8, 7, 6, 5, 4, 3, 2]];
    const ev = await evaluateCrossLayer(model, clt, rows, { batchSize: 2 });
    // The same numbers computed directly from one batch of everything.
    const run = await model.run(rows, { cache: [...clt.config.hookIn, ...clt.config.hookOut] });
    const x = await stackLayers(clt.config.hookIn.map((h) => run.cache[h]!));
    const y = (await stackLayers(clt.config.hookOut.map((h) => run.cache[h]!))).toFloat32Array();
    const yHat = (await clt.forward(x)).toFloat32Array();
    const f = (await clt.encode(x)).toFloat32Array();
    const rowsN = 24;
    for (let l = 0; l < 3; l++) {
      let sse = 0;
      let ss = 0;
      const mean = new Float64Array(d);
      for (let n = 0; n < rowsN; n++) for (let i = 0; i < d; i++) mean[i]! += y[(n * 3 + l) * d + i]! / rowsN;
      for (let n = 0; n < rowsN; n++) {
        for (let i = 0; i < d; i++) {
          const k = (n * 3 + l) * d + i;
          sse += (yHat[k]! - y[k]!) ** 2;
          ss += (y[k]! - mean[i]!) ** 2;
        }
      }
      let active = 0;
      for (let n = 0; n < rowsN; n++) for (let j = 0; j < 32; j++) active += f[(n * 3 + l) * 32 + j]! > 0 ? 1 : 0;
      expect(ev.layers[l]!.fvu).toBeCloseTo(sse / ss, 4);
      expect(ev.layers[l]!.l0).toBeCloseTo(active / rowsN, 6);
    }
    expect(ev.ceLossReplaced).toBeCloseTo(await model.loss(rows, { crossLayer: clt }), 5);
    expect(ev.ceLossClean).toBeCloseTo(await model.loss(rows), 5);
    expect(ev.tokens).toBe(24);
    model.dispose();
  });
});

describe('cross-layer training', () => {
  it('lowers the loss, is deterministic, and resumes exactly from its state', async () => {
    const rng = new Rng(8);
    const xs = randomTensor([6, 64, L, D], rng);
    const ys = randomTensor([6, 64, L, D], rng, 0.5);
    const train = async (steps: [Tensor, Tensor][]) => {
      const clt = await randomClt({ arch: 'relu' }, 21);
      const trainer = new CrossLayerTrainer(clt, { lr: 1e-2, sparsityCoefficient: 1e-3 });
      const metrics = [];
      for (const [x, y] of steps) metrics.push(...(await trainer.run(x, y)));
      return { clt, trainer, metrics };
    };
    const a = await train([[xs, ys]]);
    expect(a.metrics).toHaveLength(6);
    expect(a.metrics[5]!.total).toBeLessThan(a.metrics[0]!.total);
    expect(a.metrics[0]!.layerFvu).toHaveLength(L);
    expect(a.metrics[0]!.fvu).toBeCloseTo(a.metrics[0]!.layerFvu.reduce((s, v) => s + v, 0) / L, 10);
    const b = await train([[xs, ys]]);
    for (const [name, t] of Object.entries(a.clt.parameters())) expect(maxDiff(t, b.clt.parameters()[name]!).diff, name).toBe(0);
    // Resume: 3 steps, state + parameters into a fresh trainer, 3 more = 6 uninterrupted.
    const first = await randomClt({ arch: 'relu' }, 21);
    const t1 = new CrossLayerTrainer(first, { lr: 1e-2, sparsityCoefficient: 1e-3 });
    await t1.run(stepsOf(xs, 0, 3), stepsOf(ys, 0, 3));
    const resumed = await CrossLayerTranscoder.fromParameters(first.config, first.parameters());
    const t2 = new CrossLayerTrainer(resumed, { lr: 1e-2, sparsityCoefficient: 1e-3 });
    t2.setState(t1.state());
    await t2.run(stepsOf(xs, 3, 6), stepsOf(ys, 3, 6));
    for (const [name, t] of Object.entries(a.clt.parameters())) expect(maxDiff(t, resumed.parameters()[name]!).diff, `resumed ${name}`).toBe(0);
  });

  it('stops with a NumericalError naming the step on non-finite data, and rejects bad shapes', async () => {
    const clt = await randomClt({ arch: 'topk', k: 3 }, 2);
    const trainer = new CrossLayerTrainer(clt);
    const x = randomTensor([1, 16, L, D], new Rng(1)).toFloat32Array().slice();
    x[7] = NaN;
    await expect(trainer.run(Tensor.from(x, [1, 16, L, D]), randomTensor([1, 16, L, D], new Rng(2)))).rejects.toThrow(/step 0 of the cross-layer transcoder: the loss is nan/);
    await expect(trainer.run(randomTensor([1, 16, L + 1, D], new Rng(1)), randomTensor([1, 16, L + 1, D], new Rng(2)))).rejects.toThrow(/xs \[S, N, 3, d_in\]/);
  });
});

/** Steps from..to of [S, ...] batches (a copy). */
function stepsOf(t: Tensor, from: number, to: number): Tensor {
  const [, ...rest] = t.shape;
  const per = rest.reduce((a, b) => a * b, 1);
  return Tensor.from(t.toFloat32Array().slice(from * per, to * per), [to - from, ...rest]);
}

describe('cross-layer transcoder files', () => {
  it('native format: round trip of every architecture, losslessly', async () => {
    for (const cfg of [{ arch: 'relu', skip: true }, { arch: 'topk', k: 5 }, { arch: 'jumprelu', bandwidth: 0.05 }] as const) {
      const clt = await randomClt({ ...cfg, modelName: 'tiny', training: { lr: 1 } }, 31);
      const dir = join(tempDir(), cfg.arch);
      saveCrossLayerTranscoder(clt, dir);
      const back = await loadCrossLayerTranscoder(dir);
      expect(back.config).toEqual(clt.config);
      for (const [name, t] of Object.entries(clt.parameters())) expect(maxDiff(back.parameters()[name]!, t).diff, name).toBe(0);
    }
  });

  it("circuit-tracer layout: read the way circuit-tracer's loader reads it, same outputs; round trip and cross-layout conversion identical", async () => {
    for (const cfg of [{ arch: 'relu' }, { arch: 'jumprelu', bandwidth: 0.1 }] as const) {
      const clt = await randomClt({ ...cfg, modelName: 'tiny' }, 41);
      const dir = join(tempDir(), `ct-${cfg.arch}`);
      exportCircuitTracerCrossLayer(clt, dir);
      expect(readdirSync(dir).sort()).toEqual(['W_dec_0.safetensors', 'W_dec_1.safetensors', 'W_dec_2.safetensors', 'W_enc_0.safetensors', 'W_enc_1.safetensors', 'W_enc_2.safetensors', 'config.yaml']);
      const x = randomTensor([N, L, D], new Rng(42));
      const ours = await clt.forward(x);
      writeSafetensors(join(dir, '..', `x-${cfg.arch}.safetensors`), { x });
      runPython('circuit_tracer_clt.py', [dir, join(dir, '..', `x-${cfg.arch}.safetensors`), join(dir, '..', `y-${cfg.arch}.safetensors`)]);
      const theirs = (await readSafetensors(join(dir, '..', `y-${cfg.arch}.safetensors`))).tensors.y!;
      expectRelClose(ours, theirs, 1e-5, `${cfg.arch}: circuit-tracer's reading`);
      const back = await loadCrossLayerTranscoder(dir);
      expect(back.config.arch).toBe(cfg.arch);
      expect(back.config.hookIn).toEqual(clt.config.hookIn);
      for (const [name, t] of Object.entries(clt.parameters())) expect(maxDiff(back.parameters()[name]!, t).diff, name).toBe(0);
      // circuit-tracer -> native -> circuit-tracer: the same outputs bit for bit.
      const nativeDir = join(tempDir(), 'native');
      saveCrossLayerTranscoder(back, nativeDir);
      const again = await loadCrossLayerTranscoder(nativeDir);
      expect(maxDiff(await again.forward(x), ours).diff).toBe(0);
    }
  });

  it('refuses exports that would change the function, and names the file of a corrupt folder', async () => {
    const skip = await randomClt({ arch: 'relu', skip: true }, 1);
    expect(() => exportCircuitTracerCrossLayer(skip, join(tempDir(), 'a'))).toThrow(/no skip connection/);
    const topk = await randomClt({ arch: 'topk', k: 3 }, 1);
    expect(() => exportCircuitTracerCrossLayer(topk, join(tempDir(), 'b'))).toThrow(/TopK CLT would load there as relu/);
    const relu = await randomClt({ arch: 'relu' }, 1);
    const dir = join(tempDir(), 'c');
    exportCircuitTracerCrossLayer(relu, dir);
    const dec = join(dir, 'W_dec_1.safetensors');
    writeSafetensors(dec, { W_dec_1: randomTensor([F, 3, D], new Rng(1)) });
    await expect(loadCrossLayerTranscoder(dir)).rejects.toThrow(/W_dec_1\.safetensors: tensor 'W_dec_1' has shape \[24,3,10\], expected \[24,2,10\]/);
    await expect(loadCrossLayerTranscoder(tempDir())).rejects.toThrow(/not a cross-layer transcoder folder/);
  });
});

describe('cross-layer training run (model-fed, the C++ loop)', () => {
  async function setup() {
    const modelDir = makeTempModel({ ...TINY_GPT2, nLayers: 3, nCtx: 64, std: 0.1 });
    const model = await loadModel(modelDir, { device: DEVICE });
    const dir = tempDir();
    const text = Array.from({ length: 200 }, (_, i) => `The war lasted from the year 17${10 + (i % 80)} to the year 17${20 + ((i * 7) % 70)}. Mary gave John a drink.`);
    writeFileSync(join(dir, 'data.txt'), text.join('\n\n'));
    const tokenFile = join(dir, 'tokens.safetensors');
    await tokenizeToFile([join(dir, 'data.txt')], model.tokenizer!, tokenFile, { contextSize: 32 });
    const base = (out: string): TrainRunOptions => ({
      data: { tokenFile, model }, layers: [0, 1, 2], arch: 'clt-relu', dSae: 64, batchSize: 64, steps: 20, out, lr: 3e-3, sparsityCoefficient: 1e-4, noShuffle: true, device: DEVICE,
    });
    return { model, tokenFile, base };
  }

  it('trains on the rows the model serves, step for step as the in-memory trainer; resumes exactly; logs every layer', async () => {
    const { model, tokenFile, base } = await setup();
    const out = tempDir();
    const run = await trainTranscoders({ ...base(out), steps: 2, biasInit: 'zeros', seed: 3 });
    expect(run.crossLayer).toBeDefined();
    expect(run.transcoders).toHaveLength(0);
    // The same two batches by hand: rows 0..63 and 64..127 of the token file (no shuffling), every layer's hooks.
    const header = readTokenFileHeader(tokenFile);
    const flat = await readTokenRows(header, 0, 4);
    const seqs = Array.from({ length: 4 }, (_, i) => Array.from(flat.subarray(i * 32, (i + 1) * 32)));
    const cfg = run.crossLayer!.config;
    const cache = (await model.run(seqs, { cache: [...cfg.hookIn, ...cfg.hookOut] })).cache;
    const xs = await stackLayers(cfg.hookIn.map((h) => cache[h]!));
    const ys = await stackLayers(cfg.hookOut.map((h) => cache[h]!));
    const fresh = await CrossLayerTranscoder.create({ ...cfg, training: undefined }, { seed: 3 });
    const trainer = new CrossLayerTrainer(fresh, { lr: 3e-3, sparsityCoefficient: 1e-4 });
    await trainer.run(Tensor.from(xs.toFloat32Array(), [2, 64, 3, cfg.dIn]), Tensor.from(ys.toFloat32Array(), [2, 64, 3, cfg.dOut]));
    for (const [name, t] of Object.entries(fresh.parameters())) expectRelClose(run.crossLayer!.parameters()[name]!, t, 1e-5, `step-for-step ${name}`);

    // Resume: 8 steps, then on to 20 = 20 uninterrupted (rows in order, so a resumed run replays them; checkpoints every 4 steps).
    const whole = await trainTranscoders({ ...base(tempDir()), seed: 7 });
    const part = tempDir();
    await trainTranscoders({ ...base(part), seed: 7, steps: 8, checkpointEveryTokens: 4 * 64 });
    expect(existsSync(join(part, 'checkpoints'))).toBe(true);
    const resumed = await trainTranscoders({ ...base(part), seed: 7, resume: true });
    expect(resumed.steps).toBe(20);
    for (const [name, t] of Object.entries(whole.crossLayer!.parameters())) expectRelClose(resumed.crossLayer!.parameters()[name]!, t, 1e-5, `resumed ${name}`);
    const log = readFileSync(join(part, 'train.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const last = log.filter((l) => l.step === 19);
    expect(last.map((l) => l.layer)).toEqual([0, 1, 2]);
    expect(new Set(last.map((l) => l.total)).size).toBe(1);
    expect(new Set(last.map((l) => l.fvu)).size).toBe(3);
    const saved = await loadCrossLayerTranscoder(join(part, 'clt'));
    expect(saved.config.training).toMatchObject({ batchSize: 64, totalSteps: 20 });
    expect(whole.crossLayer!.config.hookIn).toEqual(['blocks.0.ln2.hook_normalized', 'blocks.1.ln2.hook_normalized', 'blocks.2.ln2.hook_normalized']);
    model.dispose();
  });

  it('trains from an activation cache of every layer exactly as from the model, and resumes there', async () => {
    const { model, tokenFile, base } = await setup();
    const viaModel = await trainTranscoders({ ...base(tempDir()), arch: 'clt-topk', k: 6, seed: 2 });
    const cacheDir = tempDir();
    // The whole token file: the bias initialisation reads the same first rows as from the model.
    const metas = await writeActivationCache(model, tokenFile, [0, 1, 2], cacheDir, { shardRows: 500 });
    expect(metas[0]!.shards.length).toBeGreaterThan(2);
    const fromCache = (out: string, extra: Partial<TrainRunOptions> = {}) =>
      trainTranscoders({ ...base(out), arch: 'clt-topk', k: 6, seed: 2, data: { activations: cacheDir }, ...extra });
    const viaCache = await fromCache(tempDir());
    expect(viaCache.crossLayer!.config.hookIn).toEqual(viaModel.crossLayer!.config.hookIn);
    for (const [name, t] of Object.entries(viaModel.crossLayer!.parameters())) expectRelClose(viaCache.crossLayer!.parameters()[name]!, t, 1e-5, `cache vs model ${name}`);
    // Resume mid-shard (8 steps of 64 rows = row 512 of 500-row shards), then on to 20.
    const part = tempDir();
    await fromCache(part, { steps: 8, checkpointEveryTokens: 4 * 64 });
    const resumed = await fromCache(part, { resume: true });
    expect(resumed.steps).toBe(20);
    for (const [name, t] of Object.entries(viaModel.crossLayer!.parameters())) expectRelClose(resumed.crossLayer!.parameters()[name]!, t, 1e-5, `resumed from the cache ${name}`);
    // Layers cached from different rows cannot be trained together.
    const other = tempDir();
    await writeActivationCache(model, tokenFile, [0, 1, 2], other, { shardRows: 500, maxSequences: 40 });
    const { cpSync } = await import('node:fs');
    cpSync(join(other, 'layer_2'), join(cacheDir, 'layer_2'), { recursive: true, force: true });
    await expect(fromCache(tempDir())).rejects.toThrow(new RegExp(`layer_2/meta\\.json: count 1280 differs from layer 0's ${metas[0]!.count}`));
    await expect(trainTranscoders({ ...base(tempDir()), layers: [0, 1, 2, 3], data: { activations: other } })).rejects.toThrow(/holds layers 0, 1, 2, not 3/);
    model.dispose();
  });

  it('learns (FVU falls), and is refused on a subset of layers, a folder that is no cache, or with resampling', async () => {
    const { model, base } = await setup();
    const out = tempDir();
    const run = await trainTranscoders({ ...base(out), arch: 'clt-topk', k: 8, steps: 60, noShuffle: false, logEvery: 5 });
    const log = readFileSync(join(out, 'train.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number; fvu: number; l0: number });
    const first = log.filter((l) => l.step === 4);
    const last = log.filter((l) => l.step === 59);
    for (let l = 0; l < 3; l++) {
      expect(last[l]!.fvu).toBeLessThan(first[l]!.fvu);
      expect(last[l]!.l0).toBeLessThanOrEqual(8);
    }
    expect(run.crossLayer!.config).toMatchObject({ arch: 'topk', k: 8, nLayers: 3 });
    // BatchTopK from the model: it learns too, and leaves a positive threshold for use outside training.
    const batch = await trainTranscoders({ ...base(tempDir()), arch: 'clt-batchtopk', k: 8, steps: 30 });
    expect(batch.crossLayer!.config.arch).toBe('batchtopk');
    expect(Math.min(...batch.crossLayer!.parameters().threshold!.toFloat32Array())).toBeGreaterThan(0);
    await expect(trainTranscoders({ ...base(tempDir()), layers: [0, 1] })).rejects.toThrow(/spans every layer of the model: train layers 0,1,2/);
    await expect(trainTranscoders({ ...base(tempDir()), data: { activations: tempDir() } })).rejects.toThrow(/not an activation cache/);
    await expect(trainTranscoders({ ...base(tempDir()), resampleEvery: 10 })).rejects.toThrow(/resampling is for per-layer transcoders/);
    model.dispose();
  });
});

describe('Gemma Scope 2 cross-layer transcoders', () => {
  it.each([false, true])('read as Google defines them, skip %s: forward equals the numpy reference from the raw arrays (1e-5)', async (skip) => {
    const root = tempDir();
    const dir = join(root, 'clt');
    runPython('gemma_scope_reference.py', ['clt', dir, '5', '4', '12', '20', ...(skip ? ['--skip'] : [])]);
    const clt = await loadCrossLayerTranscoder(dir);
    expect(clt.config).toMatchObject({ arch: 'jumprelu', nLayers: 4, dIn: 12, dOut: 12, dSae: 20, skip, processing: 'none', modelName: 'google/gemma-3-270m' });
    expect(clt.config.hookIn[2]).toBe('blocks.2.mlp.hook_in');
    expect(clt.config.hookOut[3]).toBe('blocks.3.hook_mlp_out');
    const ref = (await readSafetensors(join(root, 'reference-clt-5.safetensors'))).tensors;
    expectRelClose(await clt.forward(ref.x!), ref.y!, 1e-5, 'y');
    // It converts to the native and circuit-tracer layouts like any CLT (skip: native only).
    const native = join(root, 'native');
    saveCrossLayerTranscoder(clt, native);
    expect(maxDiff(await (await loadCrossLayerTranscoder(native)).forward(ref.x!), await clt.forward(ref.x!)).diff).toBe(0);
  });

  it('names the missing layer folder', async () => {
    const root = tempDir();
    const dir = join(root, 'clt');
    runPython('gemma_scope_reference.py', ['clt', dir, '6', '3', '8', '10']);
    const { rmSync } = await import('node:fs');
    rmSync(join(dir, 'layer_1_width_10_clt'), { recursive: true });
    await expect(loadCrossLayerTranscoder(dir)).rejects.toThrow(/needs layer_0\.\.layer_2; layer_1 is missing/);
  });
});

describe('target-indexed cross-layer transcoders (crosslayer-transcoder checkpoints)', () => {
  /** Writes a checkpoint with test/reference/crosslayer_transcoder_reference.py; returns its folder and the reference's x and y. */
  async function fixture(args: string[], seed = 3): Promise<{ dir: string; x: Tensor; y: Tensor }> {
    const dir = join(tempDir(), 'ckpt');
    runPython('crosslayer_transcoder_reference.py', [dir, String(seed), '4', '9', '16', '30', ...args]);
    const ref = (await readSafetensors(`${dir}.reference.safetensors`)).tensors;
    return { dir, x: ref.x!, y: ref.y! };
  }
  const VARIANTS: { name: string; args: string[]; arch: string; convertible: boolean }[] = [
    { name: 'relu, no standardizers', args: ['--nonlinearity', 'relu'], arch: 'relu', convertible: true },
    { name: 'jumprelu (negative thresholds), dimension-wise standardizers folded on load', args: ['--nonlinearity', 'jumprelu', '--standardizer', 'dimensionwise'], arch: 'jumprelu', convertible: true },
    { name: 'per-layer topk, layer-wise standardizers, float16 weights', args: ['--nonlinearity', 'topk', '--k', '3', '--standardizer', 'layerwise', '--dtype', 'float16'], arch: 'topk', convertible: false },
    { name: 'batchtopk, standardizers folded by the project', args: ['--nonlinearity', 'batchtopk', '--k', '3', '--standardizer', 'dimensionwise', '--folded'], arch: 'batchtopk', convertible: true },
    { name: 'per-layer batchtopk (a threshold below 0), layer-wise folded', args: ['--nonlinearity', 'perlayerbatchtopk', '--k', '3', '--standardizer', 'layerwise', '--folded'], arch: 'batchtopk', convertible: true },
    { name: 'per-layer Decoder (a jointly trained per-layer set), dimension-wise', args: ['--nonlinearity', 'relu', '--decoder', 'perlayer', '--standardizer', 'dimensionwise'], arch: 'relu', convertible: true },
  ];
  it.each(VARIANTS)('$name: outputs equal the reference from the raw checkpoint (1e-5); native and circuit-tracer conversions give identical outputs', async ({ args, arch, convertible }) => {
    const { dir, x, y } = await fixture(args);
    const clt = await loadCrossLayerTranscoder(dir);
    expect(clt.config).toMatchObject({ arch, nLayers: 4, dIn: 9, dOut: 9, dSae: 16, skip: false, processing: 'none' });
    expect(clt.config.hookIn[2]).toBe('blocks.2.hook_resid_mid');
    expect(clt.config.hookOut[3]).toBe('blocks.3.hook_mlp_out');
    const ours = await clt.forward(x);
    expectRelClose(ours, y, 1e-5, 'y');
    const native = join(tempDir(), 'native');
    saveCrossLayerTranscoder(clt, native);
    expect(maxDiff(await (await loadCrossLayerTranscoder(native)).forward(x), ours).diff).toBe(0);
    if (convertible) {
      const ct = join(tempDir(), 'ct');
      exportCircuitTracerCrossLayer(clt, ct);
      expect(maxDiff(await (await loadCrossLayerTranscoder(ct)).forward(x), ours).diff).toBe(0);
    }
  });

  it('refuses what it cannot read faithfully, naming the file and the field', async () => {
    const { dir } = await fixture(['--nonlinearity', 'relu', '--standardizer', 'dimensionwise']);
    const config = join(dir, 'config.yaml');
    const text = readFileSync(config, 'utf8');
    writeFileSync(config, text.replace('DimensionwiseInputStandardizer', 'SamplewiseInputStandardizer'));
    await expect(loadCrossLayerTranscoder(dir)).rejects.toThrow(/config\.yaml: the SamplewiseInputStandardizer normalises each row/);
    writeFileSync(config, text.replace('jumprelu.ReLU', 'topk.MatryoshkaTopK'));
    await expect(loadCrossLayerTranscoder(dir)).rejects.toThrow(/nonlinearity "MatryoshkaTopK" is not one this reader knows/);
    writeFileSync(config, text.replace(/d_features: 16/g, 'd_features: 17'));
    await expect(loadCrossLayerTranscoder(dir)).rejects.toThrow(/checkpoint\.safetensors: tensor 'encoder\.W' has shape \[4,9,16\], expected \[4,9,17\]/);
    writeFileSync(config, text);
    const ckpt = join(dir, 'checkpoint.safetensors');
    const t = (await readSafetensors(ckpt)).tensors;
    const w = t['decoder.W_2']!.toFloat32Array().slice();
    w[5] = Number.NaN;
    writeSafetensors(ckpt, { ...t, 'decoder.W_2': Tensor.from(w, [3, 16, 9]) });
    await expect(loadCrossLayerTranscoder(dir)).rejects.toThrow(/checkpoint\.safetensors: tensor 'decoder\.W_2' holds NaN/);
    const { 'decoder.W_2': _dropped, ...rest } = t;
    writeSafetensors(ckpt, rest);
    await expect(loadCrossLayerTranscoder(dir)).rejects.toThrow(/missing tensor 'decoder\.W_2'/);
  });
});

describe('cross-layer optimizer state in bfloat16', () => {
  it('halves the moments, trains within 1% of float32 moments over 6 steps, and keeps them bfloat16 in its state (what checkpoints hold)', async () => {
    const rng = new Rng(8);
    const xs = randomTensor([6, 64, L, D], rng);
    const ys = randomTensor([6, 64, L, D], rng, 0.5);
    const run = async (optimizerStateDtype: 'float32' | 'bfloat16') => {
      const clt = await randomClt({ arch: 'relu' }, 21);
      const trainer = new CrossLayerTrainer(clt, { lr: 1e-2, sparsityCoefficient: 1e-3, optimizerStateDtype });
      return { metrics: await trainer.run(xs, ys), state: trainer.state(), clt };
    };
    const f32 = await run('float32');
    const bf16 = await run('bfloat16');
    expect(bf16.state.tensors['adam.W_dec_0.exp_avg']!.dtype).toBe('bfloat16');
    expect(f32.state.tensors['adam.W_dec_0.exp_avg']!.dtype).toBe('float32');
    expect(bf16.clt.parameters().W_enc!.dtype).toBe('float32');
    f32.metrics.forEach((m, i) => expect(Math.abs(bf16.metrics[i]!.total - m.total) / m.total, `step ${i}`).toBeLessThan(1e-2));
    expect(bf16.metrics[5]!.total).toBeLessThan(bf16.metrics[0]!.total);
    // Not the same numbers: the bf16 moments did round.
    expect(bf16.metrics[5]!.total).not.toBe(f32.metrics[5]!.total);
    expect(() => new CrossLayerTrainer(bf16.clt, { optimizerStateDtype: 'float16' as never })).toThrow(/optimizerStateDtype must be 'float32' or 'bfloat16'/);
  });
});

describe('cross-layer BatchTopK outside training', () => {
  it('estimates each layer\'s threshold from the smallest activation the batch kept, and gates by it afterwards', async () => {
    const clt = await randomClt({ arch: 'batchtopk', k: 4 }, 13);
    const rng = new Rng(14);
    const x = randomTensor([N, L, D], rng);
    const y = randomTensor([N, L, D], rng, 0.5);
    // The first step's selection, from the initial parameters.
    const f = (await clt.loss(x, y)).f!.toFloat32Array();
    const minima = Array.from({ length: L }, (_, l) => {
      let m = Infinity;
      for (let n = 0; n < N; n++) for (let j = 0; j < F; j++) {
        const v = f[(n * L + l) * F + j]!;
        if (v > 0) m = Math.min(m, v);
      }
      return m;
    });
    // N k kept per layer over the batch (no ties in random data).
    for (let l = 0; l < L; l++) {
      let kept = 0;
      for (let n = 0; n < N; n++) for (let j = 0; j < F; j++) kept += f[(n * L + l) * F + j]! > 0 ? 1 : 0;
      expect(kept).toBeLessThanOrEqual(N * 4);
    }
    const trainer = new CrossLayerTrainer(clt, { lr: 0 });
    await trainer.run(Tensor.from(x.toFloat32Array(), [1, N, L, D]), Tensor.from(y.toFloat32Array(), [1, N, L, D]));
    const theta = clt.parameters().threshold!.toFloat32Array();
    for (let l = 0; l < L; l++) for (let j = 0; j < F; j++) expect(theta[l * F + j]).toBeCloseTo(minima[l]!, 5);
    // Outside training: relu(pre) where pre > θ, at every row independently of the batch.
    const pre = (await clt.loss(x, y)).pre!.toFloat32Array();
    const gated = (await clt.encode(x)).toFloat32Array();
    for (let i = 0; i < pre.length; i++) {
      const l = Math.floor(i / F) % L;
      expect(gated[i]).toBeCloseTo(pre[i]! > minima[l]! ? pre[i]! : 0, 5);
    }
    const one = (await clt.encode(Tensor.from(x.toFloat32Array().subarray(0, L * D), [1, L, D]))).toFloat32Array();
    expect(maxDiff(one, gated.subarray(0, L * F)).diff).toBeLessThan(1e-5);
  });
});

describe('cross-layer transcoders read lazily', () => {
  it("reads chosen features' encoder vectors, decoders, biases and thresholds from a circuit-tracer folder, exactly as a full load", async () => {
    const clt = await randomClt({ arch: 'jumprelu', bandwidth: 0.1 }, 51);
    const dir = join(tempDir(), 'ct');
    exportCircuitTracerCrossLayer(clt, dir);
    const lazy = lazyCrossLayer(dir);
    expect([lazy.nLayers, lazy.dIn, lazy.dOut, lazy.dSae]).toEqual([L, D, D, F]);
    const p = clt.parameters();
    const wEnc = p.W_enc!.toFloat32Array();
    const features = [7, 0, 23, 8, 9];
    for (let l = 0; l < L; l++) {
      const enc = lazy.encoderVectors(l, features);
      const dec = lazy.decoderRows(l, features);
      const dec3 = p[`W_dec_${l}`]!.toFloat32Array();
      const width = (L - l) * D;
      features.forEach((f, i) => {
        for (let q = 0; q < D; q++) expect(enc[i * D + q]).toBe(wEnc[(l * D + q) * F + f]);
        for (let q = 0; q < width; q++) expect(dec[i * width + q]).toBe(dec3[f * width + q]);
      });
      expect(Array.from(lazy.encoderBias(l, features))).toEqual(features.map((f) => p.b_enc!.toFloat32Array()[l * F + f]));
      expect(Array.from(lazy.thresholds(l, features)!)).toEqual(features.map((f) => p.threshold!.toFloat32Array()[l * F + f]));
    }
    expect(() => lazy.decoderRows(L, [0])).toThrow(/layer 3 is out of range \[0, 3\)/);
    expect(() => lazy.encoderVectors(0, [F])).toThrow(/feature 24 \(position 0\) is out of range/);
  });
});
