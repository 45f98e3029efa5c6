/** The JS <-> libtorch tensor bridge: sharing and copying, dtypes, devices, disposal, GC finalisation. */
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, Tensor } from '../lib/index.js';
import { values } from './helpers/fixtures.js';

describe('Tensor', () => {
  it('copies a Float32Array by default and shares it on request', () => {
    const data = new Float32Array([1, 2, 3, 4, 5, 6]);
    const shared = Tensor.from(data, [2, 3], { share: true });
    const copied = Tensor.from(data, [2, 3]);
    data[0] = 42;
    expect(shared.toTypedArray()[0]).toBe(42);
    expect(copied.toTypedArray()[0]).toBe(1);
    expect(shared.shape).toEqual([2, 3]);
    expect(shared.dtype).toBe('float32');
    expect(shared.device).toBe('cpu');
  });

  it('takes raw bfloat16 bits from a Uint16Array', () => {
    const bits = new Uint16Array([0x3f80, 0x4000, 0xc040]); // 1, 2, -3 in bfloat16
    const t = Tensor.from(bits, [3], { dtype: 'bfloat16' });
    expect(values(t)).toEqual([1, 2, -3]);
  });

  it('round-trips every dtype', () => {
    expect(values(Tensor.from(new Float64Array([0.1, -2])))).toEqual([0.1, -2]);
    expect(values(Tensor.from(new BigInt64Array([1n, -(2n ** 40n)])))).toEqual([1n, -(2n ** 40n)]);
    expect(values(Tensor.from(new Int32Array([7, -8])))).toEqual([7, -8]);
    expect(values(Tensor.from(new Int16Array([7, -8])))).toEqual([7, -8]);
    expect(values(Tensor.from(new Int8Array([7, -8])))).toEqual([7, -8]);
    expect(values(Tensor.from(new Uint8Array([1, 0, 1]), [3], { dtype: 'bool' }))).toEqual([1, 0, 1]);
    expect(Tensor.from(new Uint8Array([1, 0, 1]), [3], { dtype: 'bool' }).dtype).toBe('bool');
    // float32 -> bfloat16 / float16 conversion rounds to the nearest representable value.
    const bf = Tensor.from(new Float32Array([1.00390625, 3.14159]), [2], { dtype: 'bfloat16' });
    expect(bf.dtype).toBe('bfloat16');
    expect(values(bf)).toEqual([1, 3.140625]);
    const half = Tensor.from(new Float32Array([3.14159]), [1], { dtype: 'float16' });
    expect(half.toTypedArray()[0]).toBeCloseTo(3.140625, 6);
    expect(Tensor.from(new Float32Array([2.5])).item()).toBe(2.5);
  });

  it('converts on a worker with to()', async () => {
    const t = Tensor.from(new Float32Array([1.5, -2.25]));
    const i = await t.to({ dtype: 'int32' });
    expect(values(i)).toEqual([1, -2]);
    expect((await t.to({ device: 'cpu' })).device).toBe('cpu');
  });

  it('throws a clear error after dispose()', () => {
    const t = Tensor.from(new Float32Array(4));
    t.dispose();
    expect(t.disposed).toBe(true);
    expect(() => t.shape).toThrow(InvalidArgumentError);
    expect(() => t.toTypedArray()).toThrow(/disposed/);
    expect(String(t)).toBe('Tensor(disposed)');
  });

  it('frees tensors that are garbage-collected without dispose()', () => {
    // 60 tensors of 40 MB each (2.4 GB if leaked), dropped right away; RSS must stay far below.
    const script = `
      const { Tensor } = await import(${JSON.stringify(new URL('../lib/index.ts', import.meta.url).href)});
      let peak = 0;
      for (let i = 0; i < 60; i++) {
        const t = await Tensor.from(new Float32Array(10), [10]).to({ dtype: 'float32' });
        const big = Tensor.from(new Float32Array(10 * 1024 * 1024), [10 * 1024 * 1024], { share: false });
        globalThis.gc();
        peak = Math.max(peak, process.memoryUsage().rss);
      }
      console.log(peak);`;
    const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(Number(r.stdout.trim())).toBeLessThan(1.2e9);
  });
});
