/**
 * Training runs: the shuffle buffer keeps (input, target) pairs intact and mixes sequences; a run
 * fed by the model learns; a run fed by an activation cache replays the model-fed run exactly
 * without shuffling; resuming from a checkpoint continues the uninterrupted run; a killed run leaves
 * its last checkpoint valid; a stopped run reports it.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadModel, Tensor, type Model } from '../lib/index.js';
import { native } from '../lib/native.js';
import { tokenizeToFile } from '../lib/data/tokenize.js';
import { writeActivationCache } from '../lib/transcoders/activation-cache.js';
import { listCheckpoints, readTrainerState } from '../lib/transcoders/checkpoints.js';
import { mlpHooks } from '../lib/transcoders/config.js';
import { Transcoder } from '../lib/transcoders/transcoder.js';
import { loadNativeTranscoder } from '../lib/transcoders/formats/native.js';
import { trainTranscoders, type TrainRunOptions } from '../lib/transcoders/training-run.js';
import { DEVICE, makeTempModel, tempDir, TINY_GPT2 } from './helpers/fixtures.js';
import { maxDiff } from './helpers/reference.js';

let model: Model;
let modelDir: string;
let tokenFile: string;

beforeAll(async () => {
  modelDir = makeTempModel({ ...TINY_GPT2, nCtx: 64, std: 0.1 });
  model = await loadModel(modelDir, { processing: 'transformerlens', device: DEVICE });
  const dir = tempDir();
  const years = Array.from({ length: 400 }, (_, i) => `The war lasted from the year 17${10 + (i % 80)} to the year 17${20 + ((i * 7) % 70)}. When Mary and John went to the store, John gave a drink to Mary.`);
  writeFileSync(join(dir, 'data.txt'), years.join('\n\n'));
  tokenFile = join(dir, 'tokens.safetensors');
  await tokenizeToFile([join(dir, 'data.txt')], model.tokenizer!, tokenFile, { contextSize: 32 });
});

function base(out: string): TrainRunOptions {
  return { data: { tokenFile, model }, layers: [1], arch: 'relu', dSae: 128, batchSize: 64, steps: 40, out, lr: 3e-3, l1Coefficient: 1e-4, schedule: 'constant', noShuffle: true, device: DEVICE };
}

function expectSameParameters(a: Record<string, Tensor>, b: Record<string, Tensor>, tol: number): void {
  expect(Object.keys(a).sort()).toEqual(Object.keys(b).sort());
  for (const k of Object.keys(a)) {
    const { diff, scale } = maxDiff(a[k]!, b[k]!);
    expect(diff, `${k}: ${diff}`).toBeLessThanOrEqual(tol * Math.max(scale, 1e-3));
  }
}

describe('shuffle buffer', () => {
  // Row i carries (i, -i) in its input and (i + 0.5) in its target, so pairs can be checked.
  const n = 500;
  const x = Tensor.from(Float32Array.from({ length: n * 2 }, (_, j) => (j % 2 === 0 ? Math.floor(j / 2) : -Math.floor(j / 2))), [n, 2]);
  const y = Tensor.from(Float32Array.from({ length: n }, (_, i) => i + 0.5), [n, 1]);

  it('keeps every (input, target) pair together, serves each row at most once, and mixes far-apart rows', async () => {
    const { xs, ys } = await native().shuffleBatches(x.handle, y.handle, { capacity: 100, batch: 10, shuffle: true, seed: 3, chunk: 25 });
    const bx = new Tensor(xs).toFloat32Array();
    const by = new Tensor(ys).toFloat32Array();
    const seen = new Set<number>();
    for (let r = 0; r < by.length; r++) {
      const id = bx[2 * r]!;
      expect(bx[2 * r + 1]).toBe(-id);
      expect(by[r]).toBe(id + 0.5);
      expect(seen.has(id)).toBe(false);
      seen.add(id);
    }
    expect(seen.size).toBe(500); // the tail is served when the data ends
    const firstBatch = Array.from({ length: 10 }, (_, r) => bx[2 * r]!);
    expect(Math.max(...firstBatch) - Math.min(...firstBatch)).toBeGreaterThan(25); // rows from several pushes
    expect(firstBatch).not.toEqual([...firstBatch].sort((a, b) => a - b));
  });

  it('serves rows in arrival order without shuffling', async () => {
    const { xs } = await native().shuffleBatches(x.handle, y.handle, { capacity: 100, batch: 10, shuffle: false, chunk: 7 });
    const ids = Array.from(new Tensor(xs).toFloat32Array()).filter((_, j) => j % 2 === 0);
    expect(ids).toEqual(Array.from({ length: 500 }, (_, i) => i));
  });
});

describe('training runs', () => {
  it('learns from model activations, for two layers from one forward, and writes transcoders and a log', async () => {
    const out = tempDir();
    const result = await trainTranscoders({ ...base(out), layers: [0, 1], steps: 120, noShuffle: false, seed: 1 });
    expect(result.steps).toBe(120);
    const log = readFileSync(join(out, 'train.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(log.filter((l) => l.layer === 1).length).toBe(12);
    const last = log.filter((l) => l.step === 119);
    expect(last).toHaveLength(2);
    for (const l of last) expect(l.fvu).toBeLessThan(0.35);
    const saved = await loadNativeTranscoder(join(out, 'layer_1'));
    expect(saved.config).toMatchObject({ layer: 1, hookIn: 'blocks.1.ln2.hook_normalized', hookOut: 'blocks.1.hook_mlp_out', processing: 'transformerlens' });
    expect((saved.config.training as Record<string, unknown>).batchSize).toBe(64);
    const spliced = await model.loss([[1, 2, 3, 4, 5, 6, 7, 8]], { replaceMlp: { 0: result.transcoders[0]!, 1: result.transcoders[1]! } });
    expect(Number.isFinite(spliced)).toBe(true);
  });

  it('is deterministic on the CPU for a given seed (with shuffling): identical weights bit for bit', async () => {
    const a = await trainTranscoders({ ...base(tempDir()), noShuffle: false, seed: 9, steps: 25 });
    const b = await trainTranscoders({ ...base(tempDir()), noShuffle: false, seed: 9, steps: 25 });
    const c = await trainTranscoders({ ...base(tempDir()), noShuffle: false, seed: 10, steps: 25 });
    expectSameParameters(a.transcoders[0]!.parameters(), b.transcoders[0]!.parameters(), 0);
    expect(maxDiff(a.transcoders[0]!.parameters().W_enc, c.transcoders[0]!.parameters().W_enc).diff).toBeGreaterThan(0);
  });

  it('replays the model-fed run exactly from an activation cache (no shuffling)', async () => {
    const viaModel = await trainTranscoders({ ...base(tempDir()), seed: 4 });
    const cacheDir = tempDir();
    const [meta] = await writeActivationCache(model, tokenFile, [1], cacheDir, { shardRows: 500 });
    expect(meta!.shards.length).toBeGreaterThan(2);
    const viaCache = await trainTranscoders({ ...base(tempDir()), data: { activations: join(cacheDir, 'layer_1') }, seed: 4 });
    expectSameParameters(viaModel.transcoders[0]!.parameters(), viaCache.transcoders[0]!.parameters(), 1e-5);
  });

  it('trains several layers from one cache folder, each on its own cached rows, as the model-fed run does', async () => {
    const viaModel = await trainTranscoders({ ...base(tempDir()), layers: [0, 1], seed: 4 });
    const cacheDir = tempDir();
    await writeActivationCache(model, tokenFile, [0, 1], cacheDir, { shardRows: 500 });
    const viaCache = await trainTranscoders({ ...base(tempDir()), layers: [0, 1], data: { activations: cacheDir }, seed: 4 });
    expect(viaCache.transcoders.map((t) => t.config.layer)).toEqual([0, 1]);
    for (const i of [0, 1]) expectSameParameters(viaModel.transcoders[i]!.parameters(), viaCache.transcoders[i]!.parameters(), 1e-5);
  });

  it('resumes from a checkpoint exactly where the uninterrupted run would be', async () => {
    const whole = await trainTranscoders({ ...base(tempDir()), seed: 5 });
    const out = tempDir();
    await trainTranscoders({ ...base(out), steps: 17, seed: 5 });
    const resumed = await trainTranscoders({ ...base(out), steps: 40, seed: 5, resume: true });
    expect(resumed.steps).toBe(40);
    expectSameParameters(whole.transcoders[0]!.parameters(), resumed.transcoders[0]!.parameters(), 1e-5);
  });

  it('stops on request and can be resumed', async () => {
    const controller = new AbortController();
    const out = tempDir();
    const result = await trainTranscoders({ ...base(out), steps: 1000, signal: controller.signal, logEvery: 5, onProgress: (p) => { if (p.step >= 10) controller.abort(); } });
    expect(result.stopped).toBe(true);
    expect(result.steps).toBeLessThan(1000);
    expect(listCheckpoints(join(out, 'checkpoints')).at(-1)!.state.step).toBe(result.steps);
  });

  it('a run killed at any moment leaves its last checkpoint valid', async () => {
    const out = tempDir();
    const script = `
      const { loadModel } = await import(${JSON.stringify(new URL('../lib/index.ts', import.meta.url).href)});
      const { trainTranscoders } = await import(${JSON.stringify(new URL('../lib/transcoders/training-run.ts', import.meta.url).href)});
      const model = await loadModel(${JSON.stringify(modelDir)}, { processing: 'transformerlens' });
      await trainTranscoders({ data: { tokenFile: ${JSON.stringify(tokenFile)}, model }, layers: [1], arch: 'relu', dSae: 128, batchSize: 64,
        steps: 100000, out: ${JSON.stringify(out)}, checkpointEveryTokens: 64 * 3, lr: 1e-3, schedule: 'constant' });`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: 'ignore' });
    const checkpoints = join(out, 'checkpoints');
    const deadline = Date.now() + 60_000;
    while (listCheckpoints(checkpoints).length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 137)); // kill it somewhere in the middle of later writes
    child.kill('SIGKILL');
    await new Promise((r) => child.on('exit', r));
    const all = listCheckpoints(checkpoints);
    expect(all.length).toBeGreaterThanOrEqual(1);
    const latest = all.at(-1)!;
    const tc = await loadNativeTranscoder(join(latest.dir, 'layer_1'));
    expect(tc.config.dSae).toBe(128);
    expect(existsSync(join(latest.dir, 'layer_1', 'trainer.safetensors'))).toBe(true);
    // Incomplete checkpoint folders (killed mid-write) are never listed.
    expect(readdirSync(checkpoints).filter((n) => n.includes('.tmp')).every((n) => !all.some((c) => c.dir.endsWith(n)))).toBe(true);
    const resumed = await trainTranscoders({ ...base(out), noShuffle: false, steps: latest.state.step + 3, resume: true, checkpointEveryTokens: 64 * 3 });
    expect(resumed.steps).toBe(latest.state.step + 3);
  });
});

describe('dead-feature resampling', () => {
  const d = TINY_GPT2.dModel;
  const m = 64;
  const deadSet = Array.from({ length: m }, (_, j) => j % 4 === 0);

  /** A layer-1 transcoder whose every fourth feature can never fire (b_enc = -50). */
  async function withDeadFeatures(): Promise<Transcoder> {
    const fresh = await Transcoder.create({ arch: 'relu', dIn: d, dOut: d, dSae: m, layer: 1, ...mlpHooks(1) }, { seed: 3 });
    const p = fresh.parameters();
    const bEnc = p.b_enc.toFloat32Array().map((v, j) => (deadSet[j] ? -50 : v));
    return Transcoder.fromParameters(fresh.config, { ...p, b_enc: Tensor.from(bEnc, [m]) });
  }

  it('re-initialises dead features towards inputs of high loss increase, with fresh optimizer state', async () => {
    const init = await withDeadFeatures();
    const out = tempDir();
    // 10 steps; the resampling happens after the last one, so its result is what is saved.
    const result = await trainTranscoders({
      ...base(out), dSae: m, steps: 10, init: { 1: init }, deadFeatureWindow: 5, resampleEvery: 10, resampleSequences: 16, resampleWarmupSteps: 5, logEvery: 1,
      onProgress: (pr) => { if (pr.step === 10) expect(pr.metrics[0]!.resampled).toBeGreaterThan(0); },
    });
    const log = readFileSync(join(out, 'train.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const resampled = log.at(-1)!.resampled as number;
    expect(resampled).toBeGreaterThan(0);
    expect(resampled).toBeLessThanOrEqual(m / 4);
    const tc = result.transcoders[0]!;
    const W = tc.parameters().W_enc.toFloat32Array(); // [d, m]
    const Wd = tc.parameters().W_dec.toFloat32Array(); // [m, d]
    const b = tc.parameters().b_enc.toFloat32Array();
    const reset = Array.from({ length: m }, (_, j) => j).filter((j) => deadSet[j] && b[j] === 0);
    expect(reset.length).toBe(resampled);
    // Encoder columns point along input activations of the resampling sequences (the first 16 rows).
    const header = (await import('../lib/data/token-file.js')).readTokenFileHeader(tokenFile);
    const flat = await (await import('../lib/data/token-file.js')).readTokenRows(header, 0, 16);
    const rows = Array.from({ length: 16 }, (_, i) => Array.from(flat.subarray(i * 32, (i + 1) * 32)));
    const { cache } = await model.run(rows, { cache: [mlpHooks(1).hookIn], logits: false });
    const xs = cache[mlpHooks(1).hookIn]!.toFloat32Array();
    const col = (j: number) => Float32Array.from({ length: d }, (_, i) => W[i * m + j]!);
    const norm = (v: Float32Array) => Math.hypot(...v);
    for (const j of reset) {
      const c = col(j);
      let best = 0;
      for (let r = 0; r < xs.length / d; r++) {
        const x = xs.subarray(r * d, (r + 1) * d);
        best = Math.max(best, c.reduce((s, v, i) => s + v * x[i]!, 0) / (norm(c) * norm(x)));
      }
      expect(best).toBeGreaterThan(0.9999);
      expect(norm(Wd.subarray(j * d, (j + 1) * d))).toBeCloseTo(1, 5);
    }
    // Their Adam moments restart from zero (the final checkpoint holds the trainer state).
    const state = await readTrainerState(listCheckpoints(join(out, 'checkpoints')).at(-1)!.dir, 1);
    const avg = state['adam.W_enc.exp_avg']!.toFloat32Array();
    for (const j of reset) for (let i = 0; i < d; i++) expect(avg[i * m + j]).toBe(0);
  });

  it('restarts the learning rate at 1e-4 of its value and ramps it back', async () => {
    const out = tempDir();
    await trainTranscoders({
      ...base(out), dSae: m, init: { 1: await withDeadFeatures() }, steps: 14, lr: 1e-3, deadFeatureWindow: 2, resampleEvery: 10,
      resampleSequences: 8, resampleWarmupSteps: 4, logEvery: 1, bufferRows: 256,
    });
    const log = readFileSync(join(out, 'train.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(log[9].resampled).toBeGreaterThan(0); // after the 10th step
    expect(log.slice(0, 10).every((l) => l.lr === 1e-3)).toBe(true);
    // The next steps ramp from 1e-4 of the rate back to it over 4 steps.
    expect(log[10].lr).toBeCloseTo(1e-3 * 1e-4, 12);
    expect(log[12].lr).toBeCloseTo(1e-3 * (1e-4 + (1 - 1e-4) * 0.5), 12);
    expect(log[13].lr).toBeCloseTo(1e-3 * (1e-4 + (1 - 1e-4) * 0.75), 12);
  });

  it('is refused for activation-cache runs (it needs the model)', async () => {
    const cacheDir = tempDir();
    await writeActivationCache(model, tokenFile, [1], cacheDir, { maxSequences: 20 });
    await expect(trainTranscoders({ ...base(tempDir()), data: { activations: join(cacheDir, 'layer_1') }, resampleEvery: 5 })).rejects.toThrow(/resampling runs the model/);
  });
});
