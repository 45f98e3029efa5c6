/**
 * No JS action and no file change crashes the process. Each case runs in a child process, so that a
 * SIGSEGV or SIGBUS is seen as the child's signal instead of killing the test runner:
 * - a tensor whose ArrayBuffer is detached (transferred) and collected: the copy (default) keeps its
 *   data; a shared tensor refuses to be used with an InvalidArgumentError;
 * - a safetensors file truncated while readSafetensors copies it: a FormatError or the full data.
 */
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { ROOT } from './helpers/cli.js';
import { tempDir } from './helpers/fixtures.js';

function child(script: string): { status: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

const lib = JSON.stringify(new URL('../lib/index.ts', import.meta.url).href);

describe('no crash from JS actions on tensor memory', () => {
  it('transferring the ArrayBuffer of a tensor: the copy keeps its data, a shared tensor refuses to be used', () => {
    const r = child(`
      const { Tensor, InvalidArgumentError } = await import(${lib});
      const results = [];
      for (const share of [false, true]) {
        const a = new Float32Array(1 << 22).fill(3);
        const t = Tensor.from(a, [1 << 22], { share });
        structuredClone(a.buffer, { transfer: [a.buffer] }); // detaches a.buffer; the clone is garbage at once
        for (let i = 0; i < 5; i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 10)); }
        try {
          const v = t.toFloat32Array();
          results.push({ share, ok: v[0] === 3 && v[v.length - 1] === 3 });
        } catch (e) {
          results.push({ share, error: e instanceof InvalidArgumentError ? 'InvalidArgumentError' : String(e), message: e.message });
        }
        try { await t.to({ dtype: 'float64' }); results.push({ share, use: 'ok' }); } catch (e) { results.push({ share, use: e.constructor.name }); }
      }
      console.log(JSON.stringify(results));`);
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    const results = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    expect(results[0]).toEqual({ share: false, ok: true });
    expect(results[1]).toEqual({ share: false, use: 'ok' });
    expect(results[2].error).toBe('InvalidArgumentError');
    expect(results[2].message).toMatch(/shares the memory of an ArrayBuffer that has been detached/);
    expect(results[3]).toEqual({ share: true, use: 'InvalidArgumentError' });
  });
});

describe('no crash from files changing under a reader', () => {
  it('truncating a 256 MB safetensors file while it is read gives a FormatError or the whole data, never SIGBUS (8 trials)', () => {
    const dir = tempDir('trunc-');
    const r = child(`
      const { writeSafetensors, readSafetensors, FormatError } = await import(${lib});
      const { truncateSync, copyFileSync } = await import('node:fs');
      const { join } = await import('node:path');
      const original = join(${JSON.stringify(dir)}, 'big.safetensors');
      const n = 64 * 1024 * 1024;
      const bytes = new Uint8Array(new Float32Array(n).fill(1).buffer);
      writeSafetensors(original, { a: { dtype: 'F32', shape: [n / 2], bytes: bytes.subarray(0, 2 * n) }, b: { dtype: 'F32', shape: [n / 2], bytes: bytes.subarray(2 * n) } });
      const outcomes = [];
      for (let trial = 0; trial < 8; trial++) {
        const file = join(${JSON.stringify(dir)}, 'copy.safetensors');
        copyFileSync(original, file);
        const reading = readSafetensors(file);
        await new Promise((r) => setTimeout(r, trial * 3));
        truncateSync(file, 4096);
        try {
          const { tensors } = await reading;
          outcomes.push(tensors.b.toFloat32Array().every((v) => v === 1) ? 'complete' : 'WRONG DATA');
        } catch (e) {
          outcomes.push(e instanceof FormatError && e.file === file ? 'FormatError' : 'other: ' + e);
        }
      }
      console.log(JSON.stringify(outcomes));`);
    expect(r.signal, r.stderr).toBeNull();
    expect(r.status, r.stderr).toBe(0);
    const outcomes: string[] = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    expect(outcomes).toHaveLength(8);
    for (const o of outcomes) expect(['complete', 'FormatError']).toContain(o);
  });
});
