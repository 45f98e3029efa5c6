/**
 * Forward-pass throughput: a GPT-2-small-sized random model, batch 8 x 128 tokens, on the CPU,
 * against the PyTorch eager baseline (bench/forward_baseline.py) on the same weights, in the same
 * run and with the same thread count. Reports tokens/s and the ratio (ours / PyTorch).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { getNumThreads, loadModel, setNumThreads, torchInfo } from '../lib/index.js';
import { createRandomModel, PRESETS } from '../lib/models/random.js';

/**
 * PyTorch is run twice per round: as a user runs it, and with OMP_WAIT_POLICY=PASSIVE, which on a
 * 2-core machine stops libgomp's spinning threads from competing with OpenBLAS's (worth ~1.5x there).
 * The headline ratio is against the faster of the two.
 */
const BASELINES = [
  { label: 'pytorch', env: {} },
  { label: 'pytorch OMP_WAIT_POLICY=PASSIVE', env: { OMP_WAIT_POLICY: 'PASSIVE' } },
] as const;

export interface BaselineResult {
  label: string;
  tokensPerS: number;
  msMedian: number;
}

export interface ForwardBenchResult {
  name: string;
  batch: number;
  seq: number;
  threads: number;
  oursTokensPerS: number;
  oursMsMedian: number;
  baselines: BaselineResult[];
  /** ours / the fastest baseline, in tokens per second. */
  ratio: number;
  torch: { ours: string; python: string };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** The benchmark model, generated once into `cacheDir` (about 500 MB). */
export function benchModel(cacheDir: string): string {
  const dir = join(cacheDir, 'gpt2-small-random');
  if (!existsSync(join(dir, 'model.safetensors'))) {
    console.error(`generating ${dir} (GPT-2 small size, random weights)...`);
    createRandomModel(dir, { ...PRESETS['gpt2-small']!, seed: 0 });
  }
  return dir;
}

/**
 * Alternates rounds of ours and PyTorch (`rounds` each) so that a machine whose speed drifts
 * during the run affects both sides alike; reports medians over all timed iterations.
 */
export async function benchForward(options: {
  cacheDir: string;
  batch?: number;
  seq?: number;
  iters?: number;
  warmup?: number;
  threads?: number;
  rounds?: number;
}): Promise<ForwardBenchResult> {
  const batch = options.batch ?? 8;
  const seq = options.seq ?? 128;
  const iters = options.iters ?? 5;
  const warmup = options.warmup ?? 2;
  const rounds = options.rounds ?? 2;
  const threads = options.threads ?? getNumThreads();
  setNumThreads(threads);
  const dir = benchModel(options.cacheDir);

  const model = await loadModel(dir);
  const V = model.config.vocabSize;
  const tokens = Array.from({ length: batch }, (_, b) => Array.from({ length: seq }, (_, t) => (b * 7919 + t * 104729) % V));
  const ours: number[] = [];
  const theirs: number[][] = BASELINES.map(() => []);
  let pythonTorch = '';
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < warmup + iters; i++) {
      const start = performance.now();
      const out = await model.run(tokens);
      const elapsed = performance.now() - start;
      out.logits!.dispose();
      if (i >= warmup) ours.push(elapsed);
    }
    BASELINES.forEach((baseline, b) => {
      const python = spawnSync(
        process.env.TRANSCODERS_BENCH_PYTHON ?? '/usr/bin/python3',
        [new URL('./forward_baseline.py', import.meta.url).pathname, dir, '--batch', String(batch), '--seq', String(seq), '--threads', String(threads), '--iters', String(iters), '--warmup', String(warmup)],
        { encoding: 'utf8', env: { ...process.env, ...baseline.env } },
      );
      if (python.status !== 0) throw new Error(`forward_baseline.py failed: ${python.stderr}`);
      const py = JSON.parse(python.stdout.trim().split('\n').pop()!) as { ms_per_forward_all: number[]; torch: string };
      theirs[b]!.push(...py.ms_per_forward_all);
      pythonTorch = py.torch;
    });
  }
  model.dispose();
  const tokensPerS = (ms: number) => (batch * seq) / (ms / 1000);
  const oursMs = median(ours);
  const oursTokensPerS = tokensPerS(oursMs);
  const baselines = BASELINES.map(({ label }, b) => ({ label, msMedian: median(theirs[b]!), tokensPerS: tokensPerS(median(theirs[b]!)) }));
  return {
    name: 'forward gpt2-small 8x128 cpu',
    batch,
    seq,
    threads,
    oursTokensPerS,
    oursMsMedian: oursMs,
    baselines,
    ratio: oursTokensPerS / Math.max(...baselines.map((b) => b.tokensPerS)),
    torch: { ours: torchInfo().version, python: pythonTorch },
  };
}
