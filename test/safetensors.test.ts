/**
 * Safetensors I/O against the independent Python reader/writer (test/reference/safetensors_io.py):
 * files we write are read back identically there, and files it writes are read identically here.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readSafetensors, readSafetensorsHeader, Tensor, writeSafetensors } from '../lib/index.js';
import { tempDir, values } from './helpers/fixtures.js';
import { PYTHON } from './helpers/reference.js';
import { spawnSync } from 'node:child_process';

const REF = new URL('./reference/', import.meta.url).pathname;

function python(code: string): string {
  const r = spawnSync(PYTHON, ['-c', `import sys; sys.path.insert(0, ${JSON.stringify(REF)})\n${code}`], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  return r.stdout;
}

describe('safetensors', () => {
  it('writes files the independent reader decodes exactly (all dtypes, metadata, atomically)', () => {
    const dir = tempDir();
    const file = join(dir, 'x.safetensors');
    writeSafetensors(
      file,
      {
        f32: Tensor.from(new Float32Array([1.5, -2, 3.25, 4, 5, 6]), [2, 3]),
        bf16: Tensor.from(new Float32Array([1, -0.5, 65280]), [3], { dtype: 'bfloat16' }),
        f16: Tensor.from(new Float32Array([0.25, -8]), [2, 1], { dtype: 'float16' }),
        i64: Tensor.from(new BigInt64Array([-(2n ** 40n), 7n])),
        i32: Tensor.from(new Int32Array([-3, 9])),
        flag: Tensor.from(new Uint8Array([1, 0]), [2], { dtype: 'bool' }),
        scalar: Tensor.from(new Float32Array([9]), []),
      },
      { note: 'hello' },
    );
    const out = python(`
import json
from safetensors_io import load_file
t = load_file(${JSON.stringify(file)})
print(json.dumps({k: {"dtype": str(v.dtype), "shape": list(v.shape), "values": v.float().flatten().tolist()} for k, v in t.items()}))`);
    const got = JSON.parse(out);
    expect(got.f32).toEqual({ dtype: 'torch.float32', shape: [2, 3], values: [1.5, -2, 3.25, 4, 5, 6] });
    expect(got.bf16).toEqual({ dtype: 'torch.bfloat16', shape: [3], values: [1, -0.5, 65280] });
    expect(got.f16).toEqual({ dtype: 'torch.float16', shape: [2, 1], values: [0.25, -8] });
    expect(got.i64.values).toEqual([-(2 ** 40), 7]);
    expect(got.i32).toEqual({ dtype: 'torch.int32', shape: [2], values: [-3, 9] });
    expect(got.flag).toEqual({ dtype: 'torch.bool', shape: [2], values: [1, 0] });
    expect(got.scalar).toEqual({ dtype: 'torch.float32', shape: [], values: [9] });
    expect(readSafetensorsHeader(file).metadata).toEqual({ note: 'hello' });
    // The header length keeps the data 8-byte aligned.
    expect(Number(readFileSync(file).readBigUInt64LE(0)) % 8).toBe(0);
  });

  it('reads files the independent writer produced', async () => {
    const dir = tempDir();
    const file = join(dir, 'py.safetensors');
    python(`
import torch
from safetensors_io import save_file
save_file({"a": torch.arange(12, dtype=torch.float32).reshape(3, 4) / 3, "b": torch.tensor([1.5, -2.0]).to(torch.bfloat16),
           "c": torch.tensor([[5, -6]], dtype=torch.int64)}, ${JSON.stringify(file)}, metadata={"format": "pt"})`);
    const { tensors, metadata } = await readSafetensors(file);
    expect(metadata).toEqual({ format: 'pt' });
    expect(tensors.a!.shape).toEqual([3, 4]);
    expect(Array.from(tensors.a!.toFloat32Array())).toEqual(Array.from({ length: 12 }, (_, i) => Math.fround(i / 3)));
    expect(tensors.b!.dtype).toBe('bfloat16');
    expect(values(tensors.b!)).toEqual([1.5, -2]);
    expect(values(tensors.c!)).toEqual([5n, -6n]);
  });

  it('leaves no temporary file behind and replaces the target in one step', () => {
    const dir = tempDir();
    const file = join(dir, 'y.safetensors');
    writeFileSync(file, 'old');
    writeSafetensors(file, { x: Tensor.from(new Float32Array([1])) });
    expect(readSafetensorsHeader(file).entries.get('x')!.shape).toEqual([1]);
    expect(spawnSync('ls', ['-A', dir], { encoding: 'utf8' }).stdout.trim()).toBe('y.safetensors');
  });
});
