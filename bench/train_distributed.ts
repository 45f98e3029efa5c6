/**
 * Data-parallel training throughput (docs/distributed.md): the same run, trainTranscoders on the
 * GPT-2-small-sized random model of bench/forward.ts (relu transcoders on layers 0-3, the model
 * forward feeding all four), in 1 process with every core's thread and in 2 processes with one
 * thread each over gloo (bench/train_distributed_worker.ts), on the same global batches.
 *
 * Reported: steady-state model tokens/s of each (step times after the first two), their ratio, and
 * the seconds per step the 2-process run spends in collectives (the bucketed gradient all-reduce,
 * and the small loss-statistic reductions), against torch.distributed's own gloo all-reduce of the
 * same buckets (bench/allreduce_baseline.py: the same engine, so the figures should agree). The two
 * runs' final weights are compared (the benchmark throws beyond 1e-4): they are the same run.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../lib/distributed/launch.js';
import { writeTokenFile } from '../lib/data/token-file.js';
import { loadTranscoder } from '../lib/transcoders/formats/index.js';
import type { Tensor } from '../lib/tensor.js';
import { Rng } from '../lib/util/random.js';
import { benchModel } from './forward.js';

const PYTHON = process.env.TRANSCODERS_BENCH_PYTHON ?? '/usr/bin/python3';
const WORKER = new URL('./train_distributed_worker.ts', import.meta.url).pathname;
const BASELINE = new URL('./allreduce_baseline.py', import.meta.url).pathname;
const ROOT = new URL('..', import.meta.url).pathname;
const BUCKET_BYTES = 32 << 20;

export interface DistributedTrainBenchOptions {
  cacheDir: string;
  layers?: number;
  dSae?: number;
  batch?: number;
  steps?: number;
}

export interface DistributedTrainBenchResult {
  name: string;
  shape: { layers: number; dModel: number; dSae: number; batch: number; steps: number; context: number };
  cores: number;
  loadAverage: number[];
  single: { processes: 1; threads: number; tokensPerS: number; stepSeconds: number };
  parallel: { processes: 2; threadsEach: number; tokensPerS: number; stepSeconds: number; collectiveSecondsPerStep: number; collectiveFraction: number };
  ratio: number;
  gradientBytesPerStep: number;
  torchGlooAllReduceSeconds: number;
  weightsMaxRelDiff: number;
}

function run(command: string, args: string[], env: NodeJS.ProcessEnv): Promise<string> {
  return new Promise((done, fail) => {
    const child = spawn(command, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', (code) => (code === 0 ? done(out) : fail(new Error(`${command} ${args.slice(0, 3).join(' ')} exited ${code}: ${err}`))));
  });
}

/** One run in `processes` processes; rank 0's step timings. */
async function train(spec: object, processes: number, threads: number): Promise<{ stepEnds: number[]; collective: number[] }> {
  const port = await freePort();
  const ranks = Array.from({ length: processes }, (_, rank) => run(process.execPath, ['--import', 'tsx', WORKER, JSON.stringify({ ...spec, threads })], {
    ...process.env, OMP_NUM_THREADS: String(threads),
    ...(processes > 1 && { MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port), RANK: String(rank), WORLD_SIZE: String(processes) }),
  }));
  const outs = await Promise.all(ranks);
  return JSON.parse(outs[0]!.trim().split('\n').at(-1)!);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export async function benchTrainDistributed(options: DistributedTrainBenchOptions): Promise<DistributedTrainBenchResult> {
  const L = options.layers ?? 4;
  const dSae = options.dSae ?? 6144;
  const batch = options.batch ?? 2048;
  const steps = options.steps ?? 8;
  const context = 64;
  const cores = availableParallelism();
  const model = benchModel(options.cacheDir);
  const d = 768;
  const work = mkdtempSync(join(options.cacheDir, 'train-dp-'));
  try {
    const tokenFile = join(work, 'tokens.safetensors');
    const rows = Math.ceil((steps * batch) / context);
    const rng = new Rng(17);
    await writeTokenFile(tokenFile, (function* () {
      for (let r = 0; r < rows; r++) yield Int32Array.from({ length: context }, () => rng.int(50257));
    })(), { contextSize: context, tokenizer: 'random', bos: 'none', sources: [], documents: rows });
    const spec = { model, tokenFile, layers: Array.from({ length: L }, (_, l) => l), dSae, batchSize: batch, steps };
    const load = [loadavg()[0]!];
    const single = await train({ ...spec, out: join(work, 'one') }, 1, cores);
    load.push(loadavg()[0]!);
    const parallel = await train({ ...spec, out: join(work, 'two') }, 2, Math.max(1, Math.floor(cores / 2)));
    load.push(loadavg()[0]!);

    const skip = 2;
    const steady = (ends: number[]) => (ends.at(-1)! - ends[skip - 1]!) / 1000 / (ends.length - skip);
    const singleStep = steady(single.stepEnds);
    const parallelStep = steady(parallel.stepEnds);
    const collective = median(parallel.collective.slice(skip));

    // torch.distributed's all-reduce of the same gradient buckets (per layer: W_enc, b_enc, W_dec,
    // b_dec, b_dec_out, then the fired flags and the step's statistics).
    const sizes = Array.from({ length: L }, () => [d * dSae, dSae, dSae * d, d, d, dSae, 6]).flat();
    const port = await freePort();
    const py = await Promise.all([0, 1].map((rank) => run(PYTHON, [BASELINE, String(port), String(rank), '2', String(BUCKET_BYTES), '6', ...sizes.map(String)], { ...process.env, OMP_NUM_THREADS: '1' })));
    const torchSeconds = (JSON.parse(py[0]!.trim().split('\n').at(-1)!) as { seconds: number }).seconds;

    // The same run: the final weights agree.
    let worst = 0;
    for (let l = 0; l < L; l++) {
      const a = (await loadTranscoder(join(work, 'one', `layer_${l}`))).parameters() as Record<string, Tensor>;
      const b = (await loadTranscoder(join(work, 'two', `layer_${l}`))).parameters() as Record<string, Tensor>;
      for (const [name, t] of Object.entries(a)) {
        const x = t.toFloat32Array();
        const y = b[name]!.toFloat32Array();
        let diff = 0;
        let scale = 0;
        for (let i = 0; i < x.length; i++) {
          diff = Math.max(diff, Math.abs(x[i]! - y[i]!));
          scale = Math.max(scale, Math.abs(x[i]!));
        }
        worst = Math.max(worst, scale > 0 ? diff / scale : diff);
      }
    }
    // Float32 sums split over the ranks round differently, and Adam's first steps scale each
    // gradient by its own size, small ones included: at GPT-2 widths the runs drift apart by ~1e-6
    // per step (1e-7 on the tests' tiny model). Beyond 1e-4 it would be another run.
    if (!(worst < 1e-4)) throw new Error(`the 1- and 2-process runs' weights differ by ${worst.toExponential(2)} (relative): not the same run`);

    return {
      name: `data-parallel training, GPT-2-small-sized random model, relu transcoders on layers 0-${L - 1}, ${dSae} features, batch ${batch}`,
      shape: { layers: L, dModel: d, dSae, batch, steps, context },
      cores,
      loadAverage: load,
      single: { processes: 1, threads: cores, tokensPerS: batch / singleStep, stepSeconds: singleStep },
      parallel: { processes: 2, threadsEach: Math.max(1, Math.floor(cores / 2)), tokensPerS: batch / parallelStep, stepSeconds: parallelStep, collectiveSecondsPerStep: collective, collectiveFraction: collective / parallelStep },
      ratio: singleStep / parallelStep,
      gradientBytesPerStep: 4 * sizes.reduce((a, b) => a + b, 0),
      torchGlooAllReduceSeconds: torchSeconds,
      weightsMaxRelDiff: worst,
    };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

export function printTrainDistributed(r: DistributedTrainBenchResult): void {
  console.log(`${r.name} (${r.cores} cores; load average ${r.loadAverage.map((x) => x.toFixed(1)).join(' -> ')})`);
  console.log(`  ${r.single.tokensPerS.toFixed(0).padStart(8)} tokens/s   ${r.single.stepSeconds.toFixed(2)} s/step   1 process x ${r.single.threads} threads`);
  console.log(`  ${r.parallel.tokensPerS.toFixed(0).padStart(8)} tokens/s   ${r.parallel.stepSeconds.toFixed(2)} s/step   2 processes x ${r.parallel.threadsEach} thread (gloo)`);
  console.log(`  ratio    ${r.ratio.toFixed(2)}x (2 processes / 1); collectives ${(1000 * r.parallel.collectiveSecondsPerStep).toFixed(0)} ms/step (${(100 * r.parallel.collectiveFraction).toFixed(0)}% of the step) for ${(r.gradientBytesPerStep / 1e6).toFixed(0)} MB of gradients; torch.distributed gloo all-reduce of the same buckets ${(1000 * r.torchGlooAllReduceSeconds).toFixed(0)} ms`);
  console.log(`  weights of the two runs agree to ${r.weightsMaxRelDiff.toExponential(1)} (relative)`);
}
