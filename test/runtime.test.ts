/** Runtime behaviour: thread settings reach the worker threads, and heavy work never blocks the JS thread. */
import { describe, expect, it } from 'vitest';
import { getNumThreads, loadModel, setNumThreads, torchInfo, workerNumThreads } from '../lib/index.js';
import { makeTempModel } from './helpers/fixtures.js';

describe('runtime', () => {
  it('reports the libtorch it was built against', () => {
    const info = torchInfo();
    expect(info.version).toMatch(/^\d+\.\d+/);
    expect(typeof info.cudaAvailable).toBe('boolean');
  });

  it('applies setNumThreads on the worker threads that run the work', async () => {
    const before = getNumThreads();
    try {
      setNumThreads(1);
      expect(await workerNumThreads()).toBe(1);
      setNumThreads(2);
      expect(getNumThreads()).toBe(2);
      // Several calls land on different libuv workers: each must see the setting.
      const seen = await Promise.all(Array.from({ length: 8 }, () => workerNumThreads()));
      expect(new Set(seen)).toEqual(new Set([2]));
    } finally {
      setNumThreads(before);
    }
    expect(() => setNumThreads(0)).toThrow(/positive integer/);
  });

  it('keeps the event loop responsive during a forward pass', async () => {
    const dir = makeTempModel({ arch: 'gpt2', nLayers: 4, dModel: 256, nHeads: 8, vocabSize: 2048, nCtx: 256 });
    const model = await loadModel(dir);
    const tokens = Array.from({ length: 8 }, (_, b) => Array.from({ length: 256 }, (_, t) => (b * 31 + t * 7) % 2048));
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const started = performance.now();
    await model.run(tokens, { cache: ['blocks.*.hook_resid_post'] });
    const elapsed = performance.now() - started;
    clearInterval(timer);
    // The forward takes tens of milliseconds; a blocked loop would see no tick at all.
    expect(elapsed).toBeGreaterThan(5);
    expect(ticks).toBeGreaterThan(0);
  });
});
