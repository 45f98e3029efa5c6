/**
 * Modern-family forward and load (issue 10): a Llama-3.2-1B-sized random model (preset
 * `llama-3.2-1b`: 16 layers, d 2048, 32 query / 8 key-value heads of 64, SwiGLU 8192, vocabulary
 * 128256, tied embeddings, llama3 RoPE scaling), written once as BF16 safetensors (~2.5 GB) into the
 * bench cache.
 *
 * Forward: batch 4 x 256 tokens on the CPU in float32 (loadModel(dir, { dtype: 'float32' })), against
 * the PyTorch eager baseline bench/llama_baseline.py (written from the Hugging Face Llama definition,
 * reading the same safetensors), same threads, alternating rounds. Checks that the logits agree (max
 * abs difference over the logit scale, the largest |logit|, below 1e-3; throws if not), reports tokens/s,
 * the ratio and GFLOP/s against the machine's measured fp32 GEMM peak (best of at::mm and torch.mm on
 * 2048^3, as bench/connections.ts measures it, here in every round and every PyTorch run).
 *
 * Load: loadModel(dir, { dtype: 'bfloat16' }) and, for reference, { dtype: 'float32' }, each in a fresh
 * child process (bench/llama_load.ts), timed, with the process's peak RSS (VmHWM) against the
 * checkpoint's size.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getNumThreads, loadModel, setNumThreads, torchInfo } from '../lib/index.js';
import { gemmGflops } from '../lib/circuits/connections.js';
import { createRandomModel, PRESETS } from '../lib/models/random.js';

/** As in bench/forward.ts: PyTorch as a user runs it, and with libgomp's spinning threads made passive. */
const BASELINES = [
  { label: 'pytorch', env: {} },
  { label: 'pytorch OMP_WAIT_POLICY=PASSIVE', env: { OMP_WAIT_POLICY: 'PASSIVE' } },
] as const;

/** Positions whose logits (every batch row, whole vocabulary) are compared with PyTorch's. */
const COMPARED_POSITIONS = [0, 1, 63, 128, 200, 255];

export interface LlamaLoadRun {
  dtype: 'bfloat16' | 'float32';
  loadS: number;
  /** Peak resident set of the child process (VmHWM), and its resident set before loading. */
  peakRssBytes: number;
  rssBeforeBytes: number;
  /** peakRssBytes / the checkpoint's size; and (peak - before) / size. */
  peakOverFile: number;
  addedOverFile: number;
}

export interface LlamaBenchResult {
  name: string;
  batch: number;
  seq: number;
  threads: number;
  /** Forward FLOPs (matmuls, attention as computed: full T x T), per forward. */
  flopsPerForward: number;
  gemmPeakGflops: { ours: number; pytorch: number; peak: number };
  ours: { tokensPerS: number; msMedian: number; msAll: number[]; gflops: number; fractionOfPeak: number };
  baselines: { label: string; tokensPerS: number; msMedian: number; msAll: number[]; gflops: number; fractionOfPeak: number }[];
  /** ours / the fastest baseline, in tokens per second. */
  ratio: number;
  /** max |ours - PyTorch| over the compared logits, and that over max |logit|. */
  logits: { positions: number[]; maxAbsDiff: number; scale: number; relDiff: number };
  load?: { fileBytes: number; runs: LlamaLoadRun[] };
  loadAverage: number[][];
  torch: { ours: string; python: string };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function loadAverage(): number[] {
  return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).map(Number);
}

/** The benchmark checkpoint, generated once into `cacheDir` (BF16, about 2.5 GB; a few minutes). */
export function llamaModel(cacheDir: string): string {
  const dir = join(cacheDir, 'llama-3.2-1b-random-bf16');
  if (!existsSync(join(dir, 'model.safetensors'))) {
    console.error(`generating ${dir} (Llama-3.2-1B size, random BF16 weights, ~2.5 GB)...`);
    createRandomModel(dir, { ...PRESETS['llama-3.2-1b']!, dtype: 'BF16', seed: 0 });
  }
  return dir;
}

export function llamaTokens(batch: number, seq: number, vocab: number): number[][] {
  return Array.from({ length: batch }, (_, b) => Array.from({ length: seq }, (_, t) => (b * 7919 + t * 104729) % vocab));
}

/** Multiply-adds x 2 of one forward, counting the attention products as computed (dense T x T). */
function forwardFlops(c: { nLayers: number; dModel: number; nHeads: number; nKvHeads: number; dHead: number; dMlp: number; vocabSize: number }, batch: number, seq: number): number {
  const N = batch * seq;
  const perLayer = c.dModel * (c.nHeads + 2 * c.nKvHeads) * c.dHead + c.nHeads * c.dHead * c.dModel + 3 * c.dModel * c.dMlp;
  const attention = 2 * seq * c.nHeads * c.dHead; // QK^T and PV per token
  return 2 * N * (c.nLayers * (perLayer + attention) + c.dModel * c.vocabSize);
}

/** Loads `dir` with `dtype` in a fresh child process; its load time and peak RSS. */
export function measureLoad(dir: string, dtype: 'bfloat16' | 'float32', threads: number): Omit<LlamaLoadRun, 'peakOverFile' | 'addedOverFile'> {
  const child = spawnSync(process.execPath, ['--import', 'tsx', new URL('./llama_load.ts', import.meta.url).pathname, dir, dtype, String(threads)], { encoding: 'utf8' });
  if (child.status !== 0) throw new Error(`llama_load.ts (${dtype}) failed: ${child.stderr}`);
  const r = JSON.parse(child.stdout.trim().split('\n').pop()!) as { loadS: number; vmHWM: number; rssBefore: number };
  return { dtype, loadS: r.loadS, peakRssBytes: r.vmHWM, rssBeforeBytes: r.rssBefore };
}

export async function benchLlama(options: {
  cacheDir: string;
  batch?: number;
  seq?: number;
  iters?: number;
  warmup?: number;
  rounds?: number;
  threads?: number;
  /** Also measure load time and peak RSS (default true). */
  load?: boolean;
}): Promise<LlamaBenchResult> {
  const batch = options.batch ?? 4;
  const seq = options.seq ?? 256;
  const iters = options.iters ?? 2;
  const warmup = options.warmup ?? 1;
  const rounds = options.rounds ?? 2;
  const threads = options.threads ?? getNumThreads();
  setNumThreads(threads);
  const dir = llamaModel(options.cacheDir);
  const loads: number[][] = [loadAverage()];

  // Load first, each in a fresh process, before this process holds 5 GB of float32 weights.
  let load: LlamaBenchResult['load'];
  if (options.load ?? true) {
    const fileBytes = statSync(join(dir, 'model.safetensors')).size;
    // One untimed read so that both measured loads find the file in the page cache alike.
    readFileSync(join(dir, 'config.json'));
    const runs = (['bfloat16', 'float32'] as const).map((dtype) => {
      const r = measureLoad(dir, dtype, threads);
      return { ...r, peakOverFile: r.peakRssBytes / fileBytes, addedOverFile: (r.peakRssBytes - r.rssBeforeBytes) / fileBytes };
    });
    load = { fileBytes, runs };
    loads.push(loadAverage());
  }

  const model = await loadModel(dir, { dtype: 'float32' });
  const c = model.config;
  const V = c.vocabSize;
  const tokens = llamaTokens(batch, seq, V);
  const flops = forwardFlops(c, batch, seq);
  // The peak is measured in every round, on both sides (the best of all): on a shared machine one
  // measurement can land on a busy moment.
  let gemmOurs = 0;

  const logitsFile = join(tmpdir(), `transcoders-bench-llama-logits-${process.pid}.f32`);
  let oursLogits: Float32Array | null = null;
  const ours: number[] = [];
  const theirs: number[][] = BASELINES.map(() => []);
  let pythonTorch = '';
  let gemmPython = 0;
  let compared: LlamaBenchResult['logits'] | null = null;
  for (let round = 0; round < rounds; round++) {
    gemmOurs = Math.max(gemmOurs, await gemmGflops({ m: 2048, k: 2048, n: 2048, iters: 5 }));
    for (let i = 0; i < warmup + iters; i++) {
      const start = performance.now();
      const out = await model.run(tokens);
      const elapsed = performance.now() - start;
      if (oursLogits === null) {
        // The compared positions of every row: [B, P, V].
        const all = out.logits!.toFloat32Array();
        oursLogits = new Float32Array(batch * COMPARED_POSITIONS.length * V);
        for (let b = 0; b < batch; b++) {
          COMPARED_POSITIONS.forEach((p, j) => oursLogits!.set(all.subarray((b * seq + p) * V, (b * seq + p + 1) * V), (b * COMPARED_POSITIONS.length + j) * V));
        }
      }
      out.logits!.dispose();
      if (i >= warmup) ours.push(elapsed);
    }
    loads.push(loadAverage());
    BASELINES.forEach((baseline, b) => {
      const first = round === 0 && b === 0;
      const python = spawnSync(
        process.env.TRANSCODERS_BENCH_PYTHON ?? '/usr/bin/python3',
        [
          new URL('./llama_baseline.py', import.meta.url).pathname, dir, '--batch', String(batch), '--seq', String(seq), '--threads', String(threads),
          '--iters', String(iters), '--warmup', String(warmup),
          '--gemm',
          ...(first ? ['--logits-out', logitsFile, '--logit-positions', COMPARED_POSITIONS.join(',')] : []),
        ],
        { encoding: 'utf8', env: { ...process.env, ...baseline.env } },
      );
      if (python.status !== 0) throw new Error(`llama_baseline.py failed: ${python.stderr}`);
      const py = JSON.parse(python.stdout.trim().split('\n').pop()!) as { ms_per_forward_all: number[]; gemm_gflops: number; torch: string };
      theirs[b]!.push(...py.ms_per_forward_all);
      pythonTorch = py.torch;
      gemmPython = Math.max(gemmPython, py.gemm_gflops);
      if (first) {
        const buf = readFileSync(logitsFile);
        rmSync(logitsFile, { force: true });
        const ref = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
        if (ref.length !== oursLogits!.length) throw new Error(`llama_baseline.py wrote ${ref.length} logits, expected ${oursLogits!.length}`);
        let maxAbsDiff = 0;
        let scale = 0;
        for (let i = 0; i < ref.length; i++) {
          maxAbsDiff = Math.max(maxAbsDiff, Math.abs(ref[i]! - oursLogits![i]!));
          scale = Math.max(scale, Math.abs(ref[i]!));
        }
        compared = { positions: COMPARED_POSITIONS, maxAbsDiff, scale, relDiff: maxAbsDiff / scale };
        if (!(compared.relDiff < 1e-3)) throw new Error(`llama logits disagree with PyTorch: max |diff| ${maxAbsDiff} over logit scale ${scale}`);
      }
    });
    loads.push(loadAverage());
  }
  model.dispose();

  const peak = Math.max(gemmOurs, gemmPython);
  const stats = (ms: number[]) => {
    const m = median(ms);
    const gflops = flops / (m / 1000) / 1e9;
    return { tokensPerS: (batch * seq) / (m / 1000), msMedian: m, msAll: ms, gflops, fractionOfPeak: gflops / peak };
  };
  const oursStats = stats(ours);
  const baselines = BASELINES.map(({ label }, b) => ({ label, ...stats(theirs[b]!) }));
  return {
    name: `forward llama-3.2-1b-sized ${batch}x${seq} cpu float32 (bf16 checkpoint)`,
    batch,
    seq,
    threads,
    flopsPerForward: flops,
    gemmPeakGflops: { ours: gemmOurs, pytorch: gemmPython, peak },
    ours: oursStats,
    baselines,
    ratio: oursStats.tokensPerS / Math.max(...baselines.map((b) => b.tokensPerS)),
    logits: compared!,
    ...(load ? { load } : {}),
    loadAverage: loads,
    torch: { ours: torchInfo().version, python: pythonTorch },
  };
}
