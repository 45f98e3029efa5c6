/**
 * One queue per device for heavy native calls (lib/device-queue.ts). The serialisation is checked
 * with the addon's own count of Tasks executing native work (native/core/threads.h), which is kept
 * apart from the queue's bookkeeping, and shown to detect overlap when the queue is bypassed.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { deviceKey, deviceQueueStats, loadModel, mlpHooks, resetDeviceQueueStats, StepTrainer, Tensor, Transcoder, type Model } from '../lib/index.js';
import { runOnDevice } from '../lib/device-queue.js';
import { native } from '../lib/native.js';
import { makeTempModel } from './helpers/fixtures.js';

// Big enough that a forward takes a few milliseconds on 2 cores, so that unqueued calls overlap.
const SPEC = { arch: 'gpt2', nLayers: 2, dModel: 128, nHeads: 4, vocabSize: 512, nCtx: 64, std: 0.2 } as const;
const D = SPEC.dModel;
// The queue is keyed by device; these tests run on the CPU (the queue logic does not depend on it).
const DEVICE = 'cpu';

let model: Model;
let tc: Transcoder;

function rows(seed: number, B = 4, T = 48): number[][] {
  return Array.from({ length: B }, (_, b) => Array.from({ length: T }, (_, t) => (seed * 7919 + b * 131 + t * 17) % SPEC.vocabSize));
}

/** Rejects when `p` has not settled within `ms` (a deadlock would otherwise hang the test run). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms (deadlock?)`)), ms)));
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

function same(a: Tensor, b: Tensor): boolean {
  const x = a.toFloat32Array();
  const y = b.toFloat32Array();
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

beforeAll(async () => {
  model = await loadModel(makeTempModel(SPEC), { device: DEVICE });
  tc = await Transcoder.create({ arch: 'relu', dIn: D, dOut: D, dSae: 256, layer: 0, ...mlpHooks(0) }, { seed: 1, device: DEVICE });
});

afterEach(() => {
  delete process.env.TRANSCODERS_DEVICE_QUEUE;
});

describe('device keys', () => {
  it("normalise names: 'cuda' is 'cuda:0', case and 'cpu:0' do not matter", () => {
    expect(deviceKey('cuda')).toBe('cuda:0');
    expect(deviceKey('CUDA:0')).toBe('cuda:0');
    expect(deviceKey('cuda:1')).toBe('cuda:1');
    expect(deviceKey('cpu:0')).toBe('cpu');
    expect(deviceKey(' CPU ')).toBe('cpu');
  });

  it("'cuda' and 'cuda:0' share one queue (JS jobs: no GPU needed)", async () => {
    let release!: () => void;
    const held = runOnDevice('cuda', () => new Promise<void>((r) => (release = r)));
    let ran = false;
    const second = runOnDevice('cuda:0', async () => void (ran = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(ran).toBe(false);
    release();
    await held;
    await second;
    expect(ran).toBe(true);
  });
});

describe('one queue per device', () => {
  it('(a) 8 concurrent runs give the same results as 8 awaited one by one', async () => {
    const batches = Array.from({ length: 8 }, (_, i) => rows(i));
    const sequential: Tensor[] = [];
    for (const b of batches) sequential.push((await model.run(b, { cache: ['blocks.1.hook_resid_post'] })).cache['blocks.1.hook_resid_post']!);
    const losses: number[] = [];
    for (const b of batches.slice(0, 2)) losses.push(await model.loss(b));
    const concurrent = await Promise.all(batches.map((b) => model.run(b, { cache: ['blocks.1.hook_resid_post'] })));
    const concurrentLosses = await Promise.all(batches.slice(0, 2).map((b) => model.loss(b)));
    // The same native computation on the same shapes and thread count: bit for bit.
    concurrent.forEach((out, i) => expect(same(out.cache['blocks.1.hook_resid_post']!, sequential[i]!), `batch ${i}`).toBe(true));
    expect(concurrentLosses).toEqual(losses);
  });

  it('(b) a replaceMlp callback that calls transcoder.encode and model.run inside does not deadlock', async () => {
    const inner = rows(99, 1, 8);
    const expected = (await model.run(inner)).logits!;
    const clean = await Promise.all([0, 1, 2, 3, 4, 5].map((i) => model.run(rows(i))));
    const seen: number[][] = [];
    // Six at once: more than libuv's four workers, so that runs waiting on their callbacks could
    // starve the nested calls of workers if more than one of them were let in at a time.
    const spliced = within(
      Promise.all([0, 1, 2, 3, 4, 5].map((i) => model.run(rows(i), {
        replaceMlp: {
          0: async (input, original) => {
            const f = await tc.encode(input);
            seen.push(f.shape);
            // A nested forward with its own callback, which itself calls the transcoder.
            const nested = await model.run(inner, { replaceMlp: { 1: async (x, o) => (await tc.forward(x), o) } });
            expect(same(nested.logits!, expected)).toBe(true);
            return original;
          },
        },
      }))),
      60_000,
      'six runs whose callbacks call encode and model.run',
    );
    const out = await spliced;
    // The callbacks returned the original MLP output: the logits are the clean ones.
    out.forEach((o, i) => expect(same(o.logits!, clean[i]!.logits!), `run ${i}`).toBe(true));
    expect(seen).toEqual(Array.from({ length: 6 }, () => [4, 48, 256]));
  });

  it('(c) at most one heavy native job executes at a time, counted natively; bypassing the queue lets them overlap', async () => {
    const trainer = new StepTrainer(tc, { lr: 1e-3, l1Coefficient: 1e-4, schedule: 'constant' });
    const x = Tensor.from(Float32Array.from({ length: 4 * 64 * D }, (_, i) => Math.sin(i)), [4, 64, D]);
    const flat = Tensor.from(Float32Array.from({ length: 256 * D }, (_, i) => Math.cos(i)), [256, D]);
    const workload = () => [
      ...[0, 1, 2, 3, 4, 5].map((i) => model.run(rows(i), { cache: ['blocks.0.ln2.hook_normalized'] })),
      model.loss(rows(6)),
      model.lossPerToken(rows(7)),
      model.run(rows(8), { replaceMlp: { 0: async (input) => tc.forward(input) } }),
      model.run(rows(9), { replaceMlp: { 1: tc } }),
      ...[0, 1, 2, 3].map(() => tc.encode(x)),
      tc.encodeSparse(flat),
      tc.loss(flat, flat, { l1Coefficient: 1e-3 }, { grad: true }),
      trainer.run(x, x),
    ];
    native().resetWorkCounts();
    resetDeviceQueueStats(DEVICE);
    const jobs = workload();
    await Promise.all(jobs);
    const counts = native().workCounts();
    const stats = deviceQueueStats(DEVICE);
    expect(counts.maxExecuting).toBe(1);
    expect(stats.maxExecuting).toBe(1);
    // Every job, plus the nested transcoder forward inside the callback, went through the queue.
    expect(stats.completed).toBe(jobs.length + 1);
    expect(stats.waiting).toBe(0);
    expect(stats.suspended).toBe(0);

    // Control: the same workload without the queue overlaps on libuv's workers, and the native
    // count sees it (so the 1 above is a measurement, not a constant).
    process.env.TRANSCODERS_DEVICE_QUEUE = 'off';
    native().resetWorkCounts();
    await Promise.all(workload());
    expect(native().workCounts().maxExecuting).toBeGreaterThan(1);
  });

  it('(d) work on another device key is not blocked by a busy device', async () => {
    // There is one CPU here, so the second device is simulated: a queue key of its own whose job is
    // a real forward on the CPU model. This shows that keys are independent queues (the ordering
    // logic), not that two physical devices run in parallel.
    let release!: () => void;
    const busy = runOnDevice(DEVICE, () => new Promise<void>((r) => (release = r)));
    const queuedBehind = model.run(rows(1));
    let behindDone = false;
    void queuedBehind.then(() => (behindDone = true));
    const other = await within(runOnDevice('sim:1', () => model.handle.run(Tensor.from(Int32Array.from(rows(2).flat()), [4, 48]).handle, {})), 30_000, 'a job on another key');
    expect(other.logits!.shape).toEqual([4, 48, SPEC.vocabSize]);
    expect(behindDone).toBe(false);
    release();
    await busy;
    await queuedBehind;

    // Two real forwards on two keys do run at the same time (the native count sees both).
    native().resetWorkCounts();
    const big = Tensor.from(Int32Array.from(rows(3, 8, 64).flat()), [8, 64]);
    await Promise.all([
      runOnDevice(DEVICE, () => model.handle.run(big.handle, {})),
      runOnDevice('sim:1', () => model.handle.run(big.handle, {})),
    ]);
    expect(native().workCounts().maxExecuting).toBe(2);
  });
});
