/**
 * Child process of bench/llama.ts: loads MODEL_DIR with the given dtype and prints one JSON line with
 * the load time and this process's peak resident set (VmHWM from /proc/self/status), plus its resident
 * set just before the load (Node.js, tsx and the libtorch libraries).
 *
 * Usage: node --import tsx bench/llama_load.ts MODEL_DIR bfloat16|float32 [THREADS]
 */
import { readFileSync } from 'node:fs';
import { loadModel, setNumThreads } from '../lib/index.js';

function status(field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync('/proc/self/status', 'utf8'));
  if (!m) throw new Error(`/proc/self/status has no ${field}`);
  return Number(m[1]) * 1024;
}

const [dir, dtype, threads] = process.argv.slice(2);
if (!dir || (dtype !== 'bfloat16' && dtype !== 'float32')) {
  console.error('usage: llama_load.ts MODEL_DIR bfloat16|float32 [THREADS]');
  process.exit(2);
}
// Also loads the native addon, so that its libraries count in the "before" figure, not in the load.
setNumThreads(threads ? Number(threads) : 2);
const rssBefore = status('VmRSS');
const start = performance.now();
const model = await loadModel(dir, { dtype });
const loadS = (performance.now() - start) / 1000;
const vmHWM = status('VmHWM');
const rssAfter = status('VmRSS');
model.dispose();
console.log(JSON.stringify({ dtype, loadS, vmHWM, rssBefore, rssAfter }));
