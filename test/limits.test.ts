/**
 * Memory and time bounded by the input: work whose size follows from its options is refused up front
 * with the figure (a transcoder far too wide, a random model far too large), and a replaceMlp callback
 * that never settles is timed out without holding the device's queue.
 */
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError, loadModel, trainTranscoders, type Model } from '../lib/index.js';
import { createRandomModel } from '../lib/models/random.js';
import { checkMemory, formatBytes } from '../lib/util/memory.js';
import { makeTempModel, tempDir, TINY_GPT2 } from './helpers/fixtures.js';

let model: Model;

beforeAll(async () => {
  model = await loadModel(makeTempModel(TINY_GPT2));
});

describe('memory estimated before allocating', () => {
  it('checkMemory sums the parts and names them with the machine figure', () => {
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(3 * 2 ** 30)).toBe('3.0 GiB');
    expect(() => checkMemory('a task', [{ what: 'weights', bytes: 600 }, { what: 'buffers', bytes: 500 }], 1000)).toThrow(
      /^a task needs about 1\.1 KiB of memory \(weights 600 B, buffers 500 B\); this machine has 1000 B$/,
    );
    expect(() => checkMemory('a task', [{ what: 'weights', bytes: 600 }], 1000)).not.toThrow();
  });

  it('a transcoder of 1e9 features is refused before anything is allocated or written', async () => {
    const out = join(tempDir(), 'run');
    const started = Date.now();
    const err = await trainTranscoders({
      data: { tokenFile: join(tempDir(), 'none.safetensors'), model }, layers: [0], arch: 'relu', dSae: 1e9, steps: 10, out,
    }).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as Error).message).toMatch(/^training 1 transcoder\(s\) of 1000000000 features needs about \d+(\.\d)? [GT]iB of memory \(parameters, gradients and Adam state .*\); this machine has/);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it('a random model with d_model 1e6 is refused at once, naming the shape', () => {
    const started = Date.now();
    expect(() => createRandomModel(join(tempDir(), 'm'), { ...TINY_GPT2, dModel: 1e6 })).toThrow(/largest weight would have .* entries \(d_model 1000000, d_mlp 4000000/);
    expect(Date.now() - started).toBeLessThan(1000);
  });
});

describe('replaceMlp callbacks are timed out', () => {
  it('a callback that never settles rejects the run, and the queue serves the next one', async () => {
    const never = () => new Promise<never>(() => {});
    await expect(model.run([[1, 2, 3]], { replaceMlp: { 0: never }, callbackTimeoutMs: 200 })).rejects.toThrow(
      /the replaceMlp callback of layer 0 did not settle within 200 ms/,
    );
    const { logits } = await model.run([[1, 2, 3]]);
    expect(logits!.shape).toEqual([1, 3, TINY_GPT2.vocabSize]);
    await expect(model.run([[1, 2, 3]], { replaceMlp: { 0: never }, callbackTimeoutMs: 0 })).rejects.toThrow(/callbackTimeoutMs must be a positive number/);
  });
});
