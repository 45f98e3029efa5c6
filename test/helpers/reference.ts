/**
 * Bridges to the independent Python references in test/reference/ (plain PyTorch through
 * Debian's python3-torch), and small numeric helpers for comparing tensors.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readSafetensors } from '../../lib/io/safetensors.js';
import type { Tensor } from '../../lib/tensor.js';
import { tempDir } from './fixtures.js';

/** Debian's interpreter, which has torch 1.13 (`python3` on PATH may be another one). */
export const PYTHON = process.env.TRANSCODERS_TEST_PYTHON ?? '/usr/bin/python3';
const REFERENCE_DIR = new URL('../reference/', import.meta.url).pathname;

/** Runs a Python script of test/reference with arguments; throws with its stderr on failure. */
export function runPython(script: string, args: string[]): string {
  const r = spawnSync(PYTHON, [join(REFERENCE_DIR, script), ...args], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${script} failed (${r.status}): ${r.stderr || r.error?.message}`);
  return r.stdout;
}

/**
 * logits, loss and every hook of the reference forward of `modelDir` on `tokens` [B][T]:
 * hf_reference.py for GPT-2 and GPT-NeoX, hf_modern_reference.py for the Llama and Gemma families
 * (`dtype` bfloat16: its bf16 forward, returned as float32).
 */
export async function referenceForward(modelDir: string, tokens: number[][], dtype: 'float32' | 'bfloat16' = 'float32'): Promise<Record<string, Tensor>> {
  const dir = tempDir('transcoders-ref-');
  writeFileSync(join(dir, 'tokens.json'), JSON.stringify(tokens));
  const modelType = (JSON.parse(readFileSync(join(modelDir, 'config.json'), 'utf8')) as { model_type?: string }).model_type;
  const classic = modelType === 'gpt2' || modelType === 'gpt_neox';
  if (!classic || dtype !== 'float32') {
    runPython('hf_modern_reference.py', [modelDir, join(dir, 'tokens.json'), join(dir, 'out.safetensors'), '--dtype', dtype]);
  } else {
    runPython('hf_reference.py', [modelDir, join(dir, 'tokens.json'), join(dir, 'out.safetensors')]);
  }
  return (await readSafetensors(join(dir, 'out.safetensors'))).tensors;
}

/** Largest |a - b| and largest |b| over all elements (shapes must match). */
export function maxDiff(a: Tensor | Float32Array, b: Tensor | Float32Array): { diff: number; scale: number } {
  const x = a instanceof Float32Array ? a : a.toFloat32Array();
  const y = b instanceof Float32Array ? b : b.toFloat32Array();
  if (x.length !== y.length) throw new Error(`length mismatch: ${x.length} vs ${y.length}`);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < x.length; i++) {
    diff = Math.max(diff, Math.abs(x[i]! - y[i]!));
    scale = Math.max(scale, Math.abs(y[i]!));
  }
  return { diff, scale };
}

/** Applies `fn` to each row of the last dimension (length `d`) and returns a new array. */
export function mapRows(data: Float32Array, d: number, fn: (row: Float32Array) => Float32Array | number[]): Float32Array {
  const out = new Float32Array(data.length);
  for (let i = 0; i < data.length; i += d) out.set(fn(data.subarray(i, i + d)), i);
  return out;
}

/** Each row minus its mean (what TransformerLens's center_writing_weights does to the residual stream). */
export function centerRows(data: Float32Array, d: number): Float32Array {
  return mapRows(data, d, (row) => {
    const mean = row.reduce((a, b) => a + b, 0) / d;
    return Array.from(row, (v) => v - mean);
  });
}

/** LayerNormPre: centre each row and divide by sqrt(mean(x^2) + eps). */
export function layerNormPre(data: Float32Array, d: number, eps: number): Float32Array {
  return mapRows(centerRows(data, d), d, (row) => {
    const scale = Math.sqrt(row.reduce((a, b) => a + b * b, 0) / d + eps);
    return Array.from(row, (v) => v / scale);
  });
}

/** Row-wise log-softmax. */
export function logSoftmaxRows(data: Float32Array, d: number): Float32Array {
  return mapRows(data, d, (row) => {
    const max = Math.max(...row);
    const lse = max + Math.log(row.reduce((a, v) => a + Math.exp(v - max), 0));
    return Array.from(row, (v) => v - lse);
  });
}

/** x [N, d] @ W [d, V] + b [V], in float64 accumulation. */
export function matmulRows(x: Float32Array, d: number, W: Float32Array, V: number, b?: Float32Array): Float32Array {
  const N = x.length / d;
  const out = new Float32Array(N * V);
  for (let n = 0; n < N; n++) {
    for (let v = 0; v < V; v++) {
      let acc = b ? b[v]! : 0;
      for (let i = 0; i < d; i++) acc += x[n * d + i]! * W[i * V + v]!;
      out[n * V + v] = acc;
    }
  }
  return out;
}
