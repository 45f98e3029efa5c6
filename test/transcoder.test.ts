/**
 * Transcoders: the C++ forward, losses and gradients of every architecture against the independent
 * PyTorch reference (test/reference/transcoder_reference.py), the paper trainer step for step,
 * the sparse paths against the dense ones, the native format, and splicing into a model.
 * Tolerances are stated next to each comparison.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel, readSafetensors, Tensor, writeSafetensors } from '../lib/index.js';
import { type TranscoderConfig } from '../lib/transcoders/config.js';
import { loadNativeTranscoder, saveTranscoder } from '../lib/transcoders/formats/native.js';
import { StepTrainer } from '../lib/transcoders/step-trainer.js';
import { geometricMedian, Transcoder } from '../lib/transcoders/transcoder.js';
import { DEVICE, makeTempModel, tempDir, TINY_GPT2 } from './helpers/fixtures.js';
import { maxDiff, runPython } from './helpers/reference.js';
import { Rng } from '../lib/util/random.js';

function randomTensor(shape: number[], rng: Rng, scale = 1): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return Tensor.from(Float32Array.from({ length: n }, () => scale * rng.normal()), shape);
}

const D_IN = 12;
const D_OUT = 12;
const M = 48;

/** A transcoder with random (not freshly initialised) parameters, so that every term is non-trivial. */
async function randomTranscoder(config: Partial<TranscoderConfig>, seed: number): Promise<Transcoder> {
  const rng = new Rng(seed);
  const cfg = { dIn: D_IN, dOut: D_OUT, dSae: M, ...config } as TranscoderConfig;
  const params: Record<string, Tensor> = {
    W_enc: randomTensor([cfg.dIn, cfg.dSae], rng, 0.4),
    b_enc: randomTensor([cfg.dSae], rng, 0.1),
    W_dec: randomTensor([cfg.dSae, cfg.dOut], rng, 0.3),
    b_dec: randomTensor([cfg.dIn], rng, 0.1),
    b_dec_out: randomTensor([cfg.dOut], rng, 0.1),
  };
  if (cfg.skip) params.W_skip = randomTensor([cfg.dIn, cfg.dOut], rng, 0.1);
  if (cfg.arch === 'jumprelu') params.threshold = Tensor.from(Float32Array.from({ length: cfg.dSae }, () => 0.05 + 0.3 * rng.uniform()), [cfg.dSae]);
  return Transcoder.fromParameters(cfg, params, { device: DEVICE });
}

describe('transcoder forward', () => {
  it.each(['relu', 'topk', 'jumprelu'] as const)('%s: sparse encoding and forward agree with the dense path', async (arch) => {
    const tc = await randomTranscoder({ arch, k: 5, skip: true }, 1);
    const x = randomTensor([20, D_IN], new Rng(2));
    const f = (await tc.encode(x)).toFloat32Array();
    const sparse = await tc.encodeSparse(x);
    const offsets = sparse.offsets.toTypedArray() as BigInt64Array;
    const indices = sparse.indices.toTypedArray() as BigInt64Array;
    const values = sparse.values.toFloat32Array();
    const dense = new Float32Array(20 * M);
    for (let n = 0; n < 20; n++) {
      for (let j = Number(offsets[n]); j < Number(offsets[n + 1]); j++) dense[n * M + Number(indices[j])] = values[j]!;
    }
    expect(maxDiff(dense, f).diff).toBe(0);
    if (arch === 'topk') for (let n = 0; n < 20; n++) expect(Number(offsets[n + 1]! - offsets[n]!)).toBeLessThanOrEqual(5);
    const y = await tc.forward(x);
    const viaDecode = await tc.decode(await tc.encode(x), x);
    expect(maxDiff(y, viaDecode).diff).toBeLessThanOrEqual(1e-5);
  });

  // Rows of 2048 and more go through native/transcoder/topk.cc's sampled threshold; the reference
  // selects with torch.topk. float32: the same activations; bfloat16 pre-activations have ties, so
  // there the selected values (sorted per row) must agree, and a NaN input row must give NaN.
  it('topk at width 4096 (the sampled selection) selects what torch.topk selects', async () => {
    const m = 4096;
    const rng = new Rng(21);
    const cfg = { arch: 'topk' as const, dIn: D_IN, dOut: D_OUT, dSae: m, k: 32 };
    const params = {
      W_enc: randomTensor([D_IN, m], rng, 0.4), b_enc: randomTensor([m], rng, 0.1), W_dec: randomTensor([m, D_OUT], rng, 0.3),
      b_dec: randomTensor([D_IN], rng, 0.1), b_dec_out: randomTensor([D_OUT], rng, 0.1),
    };
    const tc = await Transcoder.fromParameters(cfg, params, { device: DEVICE });
    const x = randomTensor([48, D_IN], rng);
    const y = randomTensor([48, D_OUT], rng);
    const ours = await tc.loss(x, y, { reconstruction: 'fvu' });
    const { out } = await reference('forward', tc.parameters(), { arch: 'topk', k: 32, reconstruction: 'fvu' }, { x, y });
    expectRelClose(ours.f!, out.f!, 1e-5, 'f');
    expectRelClose(ours.yHat!, out.y_hat!, 1e-5, 'y_hat');

    const half = await Transcoder.fromParameters(cfg, params, { device: DEVICE, dtype: 'bfloat16' });
    const xs = x.toFloat32Array().slice();
    xs[5 * D_IN + 3] = NaN; // row 5
    const terms = await half.loss(Tensor.from(xs, [48, D_IN]), y, { reconstruction: 'fvu' });
    const f = terms.f!.toFloat32Array();
    const pre = terms.pre!.toFloat32Array();
    expect(terms.pre!.dtype).toBe('bfloat16');
    for (let n = 0; n < 48; n++) {
      const row = Array.from(f.subarray(n * m, (n + 1) * m));
      if (n === 5) {
        expect(row.some(Number.isNaN)).toBe(true);
        continue;
      }
      const chosen = row.filter((v) => v !== 0).sort((a, b) => b - a);
      const best = Array.from(pre.subarray(n * m, (n + 1) * m)).sort((a, b) => b - a).slice(0, 32).filter((v) => v > 0);
      expect(chosen, `row ${n}`).toEqual(best);
    }
  });
});

describe('native format', () => {
  it('round-trips every parameter and the configuration losslessly', async () => {
    for (const arch of ['relu', 'topk', 'jumprelu'] as const) {
      const tc = await randomTranscoder({ arch, k: 4, skip: arch !== 'relu', hookIn: 'blocks.1.ln2.hook_normalized', hookOut: 'blocks.1.hook_mlp_out', layer: 1 }, 3);
      const dir = join(tempDir(), arch);
      saveTranscoder(tc, dir);
      const back = await loadNativeTranscoder(dir);
      expect(back.config).toEqual(tc.config);
      const a = tc.parameters();
      const b = back.parameters();
      expect(Object.keys(b).sort()).toEqual(Object.keys(a).sort());
      for (const name of Object.keys(a) as (keyof typeof a)[]) expect(maxDiff(b[name], a[name]).diff, name).toBe(0);
    }
  });
});

describe('splicing a transcoder into a model', () => {
  it('equals running the model with the MLP output overwritten by hand', async () => {
    const model = await loadModel(makeTempModel(TINY_GPT2), { processing: 'transformerlens', device: DEVICE });
    const tc = await randomTranscoder({ arch: 'relu', dIn: 32, dOut: 32, dSae: 64 }, 4);
    const tokens = [[3, 7, 100, 42, 250, 9, 11]];
    const spliced = await model.run(tokens, { replaceMlp: { 1: tc }, cache: ['blocks.1.hook_mlp_out', 'blocks.1.ln2.hook_normalized'] });
    // By hand: the transcoder's output on the cached MLP input, written in as a fixed value.
    const byHand = await tc.forward(spliced.cache['blocks.1.ln2.hook_normalized']!);
    expect(maxDiff(spliced.cache['blocks.1.hook_mlp_out']!, byHand).diff).toBeLessThanOrEqual(1e-5);
    const overwritten = await model.run(tokens, { replaceMlp: { 1: { value: byHand } } });
    expect(maxDiff(spliced.logits!, overwritten.logits!).diff).toBeLessThanOrEqual(1e-5);
    const loss = await model.loss(tokens, { replaceMlp: { 1: tc } });
    const lossByHand = await model.loss(tokens, { replaceMlp: { 1: { value: byHand } } });
    expect(Math.abs(loss - lossByHand)).toBeLessThanOrEqual(1e-5);
  });
});

// ---- against the independent PyTorch reference ------------------------------------------------

interface RefConfig {
  arch: 'relu' | 'topk' | 'jumprelu';
  k?: number;
  bandwidth?: number;
  reconstruction: 'paper' | 'fvu';
  l1_coefficient?: number;
  l0_coefficient?: number;
  auxk_alpha?: number;
  k_aux?: number;
  ghost_residual?: 'input' | 'target';
  [key: string]: unknown;
}

/** Writes tensors and a config, runs a mode of transcoder_reference.py, reads its output. */
async function reference(mode: 'forward' | 'train', params: Record<string, Tensor>, cfg: RefConfig, data: Record<string, Tensor>) {
  const dir = tempDir('transcoders-tcref-');
  writeSafetensors(join(dir, 'params.safetensors'), params);
  writeFileSync(join(dir, 'cfg.json'), JSON.stringify(cfg));
  writeSafetensors(join(dir, 'data.safetensors'), data);
  const args = [mode, join(dir, 'params.safetensors'), join(dir, 'cfg.json'), join(dir, 'data.safetensors'), join(dir, 'out.safetensors')];
  if (mode === 'train') args.push(join(dir, 'metrics.json'));
  runPython('transcoder_reference.py', args);
  const out = (await readSafetensors(join(dir, 'out.safetensors'))).tensors;
  const metrics = mode === 'train' ? (JSON.parse((await import('node:fs')).readFileSync(join(dir, 'metrics.json'), 'utf8')) as Record<string, number>[]) : [];
  return { out, metrics };
}

function expectRelClose(ours: Tensor, ref: Tensor, tol: number, what: string): void {
  const { diff, scale } = maxDiff(ours, ref);
  expect(diff, `${what}: max diff ${diff} (scale ${scale})`).toBeLessThanOrEqual(tol * Math.max(scale, 1e-3));
}

const FORWARD_CASES: { name: string; tc: Partial<TranscoderConfig>; ref: RefConfig; dead?: boolean }[] = [
  { name: 'relu, paper MSE + L1', tc: { arch: 'relu' }, ref: { arch: 'relu', reconstruction: 'paper', l1_coefficient: 3e-3 } },
  { name: 'relu, FVU + L1, skip', tc: { arch: 'relu', skip: true }, ref: { arch: 'relu', reconstruction: 'fvu', l1_coefficient: 1e-2 } },
  { name: 'relu, ghost grads (paper residual x - y_hat)', tc: { arch: 'relu' }, ref: { arch: 'relu', reconstruction: 'paper', l1_coefficient: 1e-3, ghost_residual: 'input' }, dead: true },
  { name: 'relu, ghost grads (target residual)', tc: { arch: 'relu' }, ref: { arch: 'relu', reconstruction: 'paper', l1_coefficient: 1e-3, ghost_residual: 'target' }, dead: true },
  { name: 'topk, FVU', tc: { arch: 'topk', k: 6 }, ref: { arch: 'topk', k: 6, reconstruction: 'fvu' } },
  { name: 'topk, FVU + AuxK, skip', tc: { arch: 'topk', k: 6, skip: true }, ref: { arch: 'topk', k: 6, reconstruction: 'fvu', auxk_alpha: 0.5, k_aux: 8 }, dead: true },
  { name: 'jumprelu, FVU + L0 (straight-through)', tc: { arch: 'jumprelu', bandwidth: 0.05 }, ref: { arch: 'jumprelu', bandwidth: 0.05, reconstruction: 'fvu', l0_coefficient: 1e-2 } },
];

describe('transcoder losses and gradients match the PyTorch reference (float32, 1e-5 relative)', () => {
  it.each(FORWARD_CASES)('$name', async ({ tc: tcConfig, ref: refConfig, dead }) => {
    const tc = await randomTranscoder(tcConfig, 7);
    const rng = new Rng(8);
    const x = randomTensor([32, D_IN], rng);
    const y = randomTensor([32, D_OUT], rng);
    const deadMask = dead ? Tensor.from(Uint8Array.from({ length: M }, (_, i) => (i % 3 === 0 ? 1 : 0)), [M], { dtype: 'bool' }) : undefined;
    const ours = await tc.loss(x, y, {
      reconstruction: refConfig.reconstruction,
      l1Coefficient: refConfig.l1_coefficient ?? 0,
      l0Coefficient: refConfig.l0_coefficient ?? 0,
      auxkAlpha: refConfig.auxk_alpha ?? 0,
      kAux: refConfig.k_aux ?? 0,
      ghostGrads: dead === true && refConfig.arch === 'relu',
      ghostResidual: refConfig.ghost_residual ?? 'input',
      ...(deadMask ? { dead: deadMask } : {}),
    }, { grad: true });
    const { out } = await reference('forward', tc.parameters(), refConfig, { x, y, ...(deadMask ? { dead: deadMask } : {}) });
    for (const key of ['pre', 'f', 'reconstruction', 'sparsity', 'ghost', 'total']) expectRelClose(ours[key]!, out[key]!, 1e-5, key);
    expectRelClose(ours.yHat!, out.y_hat!, 1e-5, 'y_hat');
    if (dead) expect(Math.abs((refConfig.arch === 'relu' ? ours.ghost! : ours.sparsity!).item())).toBeGreaterThan(0);
    if (refConfig.arch === 'jumprelu') expect(Math.max(...ours['grad.threshold']!.toFloat32Array().map(Math.abs))).toBeGreaterThan(0);
    for (const name of Object.keys(tc.parameters())) expectRelClose(ours[`grad.${name}`]!, out[`grad.${name}`]!, 1e-5, `grad.${name}`);
  });
});

describe('training matches the PyTorch reference trainer step for step', () => {
  const S = 12;
  const N = 24;

  async function compare(tcConfig: Partial<TranscoderConfig>, refConfig: RefConfig, options: ConstructorParameters<typeof StepTrainer>[1], tol: number) {
    const tc = await randomTranscoder(tcConfig, 11);
    // A quarter of the features start with a very negative bias: they never fire, so the
    // dead-feature terms (ghost grads, AuxK) switch on after the window.
    const params = tc.parameters();
    const bEnc = params.b_enc.toFloat32Array().map((v, i) => (i % 4 === 0 ? -50 : v));
    const start = await Transcoder.fromParameters(tc.config, { ...params, b_enc: Tensor.from(bEnc, [M]) }, { device: DEVICE });
    const initial = Object.fromEntries(Object.entries(start.parameters()).map(([k, v]) => [k, Tensor.from(v.toFloat32Array(), v.shape)]));
    const rng = new Rng(12);
    const xs = randomTensor([S, N, D_IN], rng);
    const ys = randomTensor([S, N, D_OUT], rng);

    const trainer = new StepTrainer(start, options);
    const ours = await trainer.run(xs, ys);
    const { out, metrics } = await reference('train', initial, refConfig, { x: xs, y: ys });

    expect(ours.map((m) => m.lr)).toEqual(metrics.map((m) => m.lr).map((v) => expect.closeTo(v!, 12)));
    ours.forEach((m, i) => {
      const r = metrics[i]!;
      for (const [a, b] of [[m.reconstruction, r.mse], [m.sparsity, r.sparsity], [m.ghost, r.ghost], [m.total, r.total], [m.l0, r.l0]] as const) {
        expect(Math.abs(a - b!), `step ${i}: ${a} vs ${b}`).toBeLessThanOrEqual(tol * Math.max(Math.abs(b!), 1e-3));
      }
    });
    const final = start.parameters();
    for (const name of Object.keys(final) as (keyof typeof final)[]) expectRelClose(final[name], out[name]!, tol, name);
    const state = trainer.state();
    expect(state.step).toBe(S);
    expect(Array.from(state.tensors.steps_since_fired!.toTypedArray() as BigInt64Array)).toEqual(Array.from(out.since_fired!.toTypedArray() as BigInt64Array));
    for (const name of Object.keys(final)) {
      expectRelClose(state.tensors[`adam.${name}.exp_avg`]!, out[`adam.${name}.exp_avg`]!, tol, `adam.${name}.exp_avg`);
      expectRelClose(state.tensors[`adam.${name}.exp_avg_sq`]!, out[`adam.${name}.exp_avg_sq`]!, tol, `adam.${name}.exp_avg_sq`);
    }
    return ours;
  }

  it('relu, paper recipe: ghost grads, warm-up with the scheduler stepped first (1e-4 relative)', async () => {
    const metrics = await compare(
      { arch: 'relu' },
      { arch: 'relu', reconstruction: 'paper', l1_coefficient: 2e-3, ghost_residual: 'input', lr: 1e-2, schedule: 'constantwithwarmup', warmup_steps: 5, total_steps: S, dead_feature_window: 3, ghost_grads: true },
      { recipe: 'paper', lr: 1e-2, schedule: 'constantwithwarmup', warmupSteps: 5, l1Coefficient: 2e-3, ghostGrads: true, deadFeatureWindow: 3 },
      1e-4,
    );
    expect(metrics.some((m) => m.ghost !== 0)).toBe(true);
    expect(metrics[0]!.lr).toBeCloseTo(1e-2 * (2 / 5), 12);
  });

  it('topk with AuxK (1e-4 relative)', async () => {
    const metrics = await compare(
      { arch: 'topk', k: 6 },
      { arch: 'topk', k: 6, reconstruction: 'fvu', auxk_alpha: 0.25, k_aux: 8, lr: 5e-3, schedule: 'constant', dead_feature_window: 3, ghost_grads: false },
      { recipe: 'standard', lr: 5e-3, auxkAlpha: 0.25, kAux: 8, deadFeatureWindow: 3 },
      1e-4,
    );
    expect(metrics.some((m) => m.sparsity !== 0)).toBe(true);
  });

  // The hand-written relu step (native/train/fast_step.cc) has two ways to the same gradients: the
  // dense GEMMs, and products over the active features only; sparseBelowDensity 0 / 1 forces each.
  // portableProducts: the sparse products by device-agnostic ATen ops (the CUDA path) instead of the CPU loops.
  it.each([
    ['dense products', 0, false],
    ['sparse products', 1, false],
    ['sparse products by the portable ATen ops', 1, true],
  ] as const)('relu, paper recipe without ghost grads, %s (1e-4 relative)', async (_, sparseBelowDensity, portableProducts) => {
    await compare(
      { arch: 'relu' },
      { arch: 'relu', reconstruction: 'paper', l1_coefficient: 2e-3, ghost_residual: 'input', lr: 1e-2, schedule: 'constantwithwarmup', warmup_steps: 5, total_steps: S, dead_feature_window: 3, ghost_grads: false },
      { recipe: 'paper', lr: 1e-2, schedule: 'constantwithwarmup', warmupSteps: 5, l1Coefficient: 2e-3, ghostGrads: false, deadFeatureWindow: 3, sparseBelowDensity, portableProducts },
      1e-4,
    );
  });

  it.each([
    ['dense products', 0],
    ['sparse products', 1],
  ] as const)('relu with a skip connection, FVU + L1, %s (1e-4 relative)', async (_, sparseBelowDensity) => {
    await compare(
      { arch: 'relu', skip: true },
      { arch: 'relu', reconstruction: 'fvu', l1_coefficient: 5e-3, ghost_residual: 'target', lr: 5e-3, schedule: 'constant', dead_feature_window: 3, ghost_grads: false },
      { recipe: 'standard', lr: 5e-3, l1Coefficient: 5e-3, deadFeatureWindow: 3, sparseBelowDensity },
      1e-4,
    );
  });

  it.each([false, true])('topk with a skip connection and AuxK, portable products %s (1e-4 relative)', async (portableProducts) => {
    const metrics = await compare(
      { arch: 'topk', k: 5, skip: true },
      { arch: 'topk', k: 5, reconstruction: 'fvu', auxk_alpha: 0.5, k_aux: 20, lr: 5e-3, schedule: 'constant', dead_feature_window: 2, ghost_grads: false },
      { recipe: 'standard', lr: 5e-3, auxkAlpha: 0.5, kAux: 20, deadFeatureWindow: 2, portableProducts },
      1e-4,
    );
    // k_aux 20 is more than the 12 dead features: all of them, weighted by 12 / 20.
    expect(metrics.some((m) => m.sparsity !== 0)).toBe(true);
  });

  it('jumprelu with L0 (1e-4 relative)', async () => {
    await compare(
      { arch: 'jumprelu', bandwidth: 0.05 },
      { arch: 'jumprelu', bandwidth: 0.05, reconstruction: 'fvu', l0_coefficient: 1e-2, lr: 5e-3, schedule: 'constant', dead_feature_window: 3, ghost_grads: false },
      { recipe: 'standard', lr: 5e-3, l0Coefficient: 1e-2, deadFeatureWindow: 3 },
      1e-4,
    );
  });
});

describe('geometric median (b_dec initialisation)', () => {
  it('is the centre of symmetric point sets and the middle point of collinear ones', async () => {
    // Points c +- v for c = (1, 2, 3): pairs (0,0,3)/(2,4,3), (-1,0,7)/(3,4,-1), (2,1,1)/(0,3,5).
    const pairs = new Float32Array([0, 0, 3, 2, 4, 3, -1, 0, 7, 3, 4, -1, 2, 1, 1, 0, 3, 5]);
    const centre = (await geometricMedian(Tensor.from(pairs, [6, 3]))).toFloat32Array();
    expect(Array.from(centre).map((v) => Number(v.toFixed(4)))).toEqual([1, 2, 3]);
    // Collinear points at t = -3, -1, 0.5, 4, 40 along (1, 2): the median is the t = 0.5 point, far from the mean.
    const ts = [-3, -1, 0.5, 4, 40];
    const line = Tensor.from(Float32Array.from(ts.flatMap((t) => [t, 2 * t])), [5, 2]);
    const onLine = (await geometricMedian(line)).toFloat32Array();
    expect(onLine[0]).toBeCloseTo(0.5, 3);
    expect(onLine[1]).toBeCloseTo(1, 3);
  });

  it('matches the reference implementation on random points (1e-5; both accumulate in float64)', async () => {
    const points = randomTensor([200, 7], new Rng(21), 2);
    const dir = tempDir();
    writeSafetensors(join(dir, 'points.safetensors'), { points: Tensor.from(Float64Array.from(points.toFloat32Array()), [200, 7]) });
    runPython('transcoder_reference.py', ['geomedian', join(dir, 'points.safetensors'), join(dir, 'out.safetensors')]);
    const ref = (await readSafetensors(join(dir, 'out.safetensors'))).tensors.median!;
    expectRelClose(await geometricMedian(points), ref, 1e-5, 'median');
  });
});

describe('training learns', () => {
  it('a relu transcoder on a small model\'s MLP: FVU falls well below 1, L0 well below d_sae', async () => {
    const model = await loadModel(makeTempModel({ ...TINY_GPT2, std: 0.1 }), { processing: 'transformerlens', device: DEVICE });
    const rng = new Rng(5);
    const tokens = Array.from({ length: 32 }, () => Array.from({ length: 32 }, () => rng.int(TINY_GPT2.vocabSize)));
    const { cache } = await model.run(tokens, { cache: ['blocks.1.ln2.hook_normalized', 'blocks.1.hook_mlp_out'], logits: false });
    const d = TINY_GPT2.dModel;
    const rows = 32 * 32;
    const batch = 64;
    const steps = 300;
    // Batches drawn from the 1024 activation rows in a seeded random order.
    const xAll = cache['blocks.1.ln2.hook_normalized']!.toFloat32Array();
    const yAll = cache['blocks.1.hook_mlp_out']!.toFloat32Array();
    const xs = new Float32Array(steps * batch * d);
    const ys = new Float32Array(steps * batch * d);
    for (let i = 0; i < steps * batch; i++) {
      const r = rng.int(rows);
      xs.set(xAll.subarray(r * d, (r + 1) * d), i * d);
      ys.set(yAll.subarray(r * d, (r + 1) * d), i * d);
    }
    const tc = await Transcoder.create({ arch: 'relu', dIn: d, dOut: d, dSae: 4 * d, layer: 1 }, { seed: 1, device: DEVICE });
    await tc.initializeBiases(Tensor.from(xAll, [rows, d]), Tensor.from(yAll, [rows, d]), 'mean');
    const trainer = new StepTrainer(tc, { lr: 3e-3, l1Coefficient: 1e-4, schedule: 'constant' });
    const started = performance.now();
    const metrics = await trainer.run(Tensor.from(xs, [steps, batch, d]), Tensor.from(ys, [steps, batch, d]));
    const seconds = (performance.now() - started) / 1000;
    const last = metrics.slice(-20);
    const fvu = last.reduce((a, m) => a + m.fvu, 0) / last.length;
    const l0 = last.reduce((a, m) => a + m.l0, 0) / last.length;
    expect(metrics[0]!.fvu).toBeGreaterThan(0.5);
    expect(fvu).toBeLessThan(0.2);
    expect(l0).toBeGreaterThan(1);
    expect(l0).toBeLessThan(0.5 * 4 * d);
    expect(seconds).toBeLessThan(30);
    // The model with its MLP replaced by the trained transcoder stays close to the original.
    const clean = await model.loss(tokens);
    const spliced = await model.loss(tokens, { replaceMlp: { 1: tc } });
    const ablated = await model.loss(tokens, { replaceMlp: { 1: 'zero' } });
    expect(Math.abs(spliced - clean)).toBeLessThan(Math.abs(ablated - clean));
  });

  it('a topk transcoder keeps exactly k features per row', async () => {
    const rng = new Rng(9);
    const tc = await Transcoder.create({ arch: 'topk', k: 4, dIn: D_IN, dOut: D_OUT, dSae: M }, { seed: 2, device: DEVICE });
    const trainer = new StepTrainer(tc, { lr: 1e-2 });
    const xs = randomTensor([50, 32, D_IN], rng);
    const metrics = await trainer.run(xs, xs);
    expect(metrics.every((m) => m.l0 <= 4)).toBe(true);
    expect(metrics.at(-1)!.fvu).toBeLessThan(metrics[0]!.fvu);
  });
});
