/**
 * All-pairs top-k connections between two 24576-feature transcoders of a GPT-2-small-sized model
 * (d = 768, k = 10): for every source feature i the top-10 target features by W_dec[i] . W_enc[:, j]
 * (2 * 24576^2 * 768 = 0.93 TFLOP per full pass), ours (lib/circuits/connections.ts, blocks of 4096)
 * against a PyTorch baseline doing the same blocked computation (bench/connections_baseline.py:
 * torch.mm per block + torch.topk merge), in the same run, with the same thread count, alternating.
 * Also reported: ours with the at::topk merge (the baseline's algorithm, in C++), the machine's fp32
 * GEMM peak (best of at::mm / torch.mm on 2048^3), the fraction of it each side reaches, and the
 * agreement of our top-10 sets with PyTorch's.
 *
 * The weights are random normal (seeded), written once to <cacheDir>/connections-24576x768/ as raw
 * float32 so both sides read the same numbers. `rows` < 24576 times a prefix of the source rows against
 * all targets (the cost is linear in rows) and scales to the full pass.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { getNumThreads, setNumThreads, Tensor, torchInfo } from '../lib/index.js';
import { gemmGflops, topkConnections } from '../lib/circuits/connections.js';
import { Rng } from '../lib/util/random.js';

const BASELINES = [
  { label: 'pytorch', env: {} },
  { label: 'pytorch OMP_WAIT_POLICY=PASSIVE', env: { OMP_WAIT_POLICY: 'PASSIVE' } },
] as const;

export interface ConnectionsRun {
  label: string;
  /** Median seconds for the timed source rows. */
  sMedian: number;
  /** Median seconds scaled to the full pass (all source rows). */
  fullPassS: number;
  gflops: number;
  /** gflops / the measured GEMM peak. */
  fractionOfPeak: number;
}

export interface ConnectionsBenchResult {
  name: string;
  m: number;
  d: number;
  k: number;
  blockSize: number;
  /** Source rows timed per pass (the full pass is m rows; times are scaled by m / rows). */
  rows: number;
  threads: number;
  flopsFullPass: number;
  ours: ConnectionsRun;
  oursTopkMerge: ConnectionsRun;
  baselines: ConnectionsRun[];
  /** PyTorch time / ours, against the fastest PyTorch run. */
  ratio: number;
  gemmPeakGflops: { ours: number; pytorch: number; peak: number };
  /** Fraction of source rows whose top-k index set equals PyTorch's. */
  agreement: number;
  torch: { ours: string; python: string };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** The two weight files, generated once (seeded normal entries, scaled by 1/sqrt(d)). */
function weightFiles(cacheDir: string, m: number, d: number): { dec: string; enc: string } {
  const dir = join(cacheDir, `connections-${m}x${d}`);
  const dec = join(dir, 'W_dec.f32');
  const enc = join(dir, 'W_enc.f32');
  const bytes = m * d * 4;
  const ok = (f: string) => existsSync(f) && statSync(f).size === bytes;
  if (ok(dec) && ok(enc)) return { dec, enc };
  console.error(`generating ${dir} (two random ${m}x${d} float32 matrices)...`);
  mkdirSync(dir, { recursive: true });
  const scale = 1 / Math.sqrt(d);
  for (const [file, seed] of [[dec, 1], [enc, 2]] as const) {
    const rng = new Rng(seed);
    const data = new Float32Array(m * d);
    for (let i = 0; i < data.length; i++) data[i] = scale * rng.normal();
    writeFileSync(`${file}.tmp`, new Uint8Array(data.buffer));
    renameSync(`${file}.tmp`, file);
  }
  return { dec, enc };
}

function readF32(file: string): Float32Array {
  const buf = readFileSync(file);
  return new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
}

export async function benchConnections(options: {
  cacheDir: string;
  m?: number;
  d?: number;
  k?: number;
  blockSize?: number;
  rows?: number;
  iters?: number;
  rounds?: number;
  threads?: number;
}): Promise<ConnectionsBenchResult> {
  const m = options.m ?? 24576;
  const d = options.d ?? 768;
  const k = options.k ?? 10;
  const blockSize = options.blockSize ?? 4096;
  const rows = Math.min(options.rows ?? m, m);
  const iters = options.iters ?? 2;
  const rounds = options.rounds ?? 2;
  const threads = options.threads ?? getNumThreads();
  setNumThreads(threads);
  const files = weightFiles(options.cacheDir, m, d);
  const indicesFile = join(options.cacheDir, `connections-${m}x${d}`, 'pytorch-indices.i64');

  const dec = Tensor.from(readF32(files.dec), [m, d]);
  const enc = Tensor.from(readF32(files.enc), [d, m]);
  // A contiguous prefix of the source rows (a view would do too; a copy keeps the timing honest).
  const src = rows === m ? dec : Tensor.from(readF32(files.dec).slice(0, rows * d), [rows, d]);

  const run = async (merge: 'scan' | 'topk') => {
    const start = performance.now();
    const r = await topkConnections(src, enc, { k, blockSize, merge });
    const s = (performance.now() - start) / 1000;
    return { s, r };
  };
  // Warm-up: one block row of each of ours (first touches of the weights, BLAS buffers).
  const warmSrc = Tensor.from(readF32(files.dec).slice(0, Math.min(blockSize, rows) * d), [Math.min(blockSize, rows), d]);
  await topkConnections(warmSrc, enc, { k, blockSize, merge: 'scan' });
  await topkConnections(warmSrc, enc, { k, blockSize, merge: 'topk' });

  const gemmOurs = await gemmGflops({ m: 2048, k: 2048, n: 2048, iters: 5 });
  const ours: number[] = [];
  const oursTopk: number[] = [];
  const theirs: number[][] = BASELINES.map(() => []);
  let pythonTorch = '';
  let gemmPython = 0;
  let ourIndices: BigInt64Array | null = null;
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < iters; i++) {
      const { s, r } = await run('scan');
      ours.push(s);
      ourIndices = r.indices.toTypedArray() as BigInt64Array;
      r.indices.dispose();
      r.values.dispose();
    }
    for (let i = 0; i < iters; i++) {
      const { s, r } = await run('topk');
      oursTopk.push(s);
      r.indices.dispose();
      r.values.dispose();
    }
    BASELINES.forEach((baseline, b) => {
      const args = [
        new URL('./connections_baseline.py', import.meta.url).pathname,
        '--dec', files.dec, '--enc', files.enc, '--m', String(m), '--d', String(d), '--rows', String(rows),
        '--k', String(k), '--block', String(blockSize), '--threads', String(threads), '--iters', String(iters),
        '--warmup-rows', String(Math.min(blockSize, rows)),
        ...(round === 0 && b === 0 ? ['--indices-out', indicesFile] : []),
      ];
      const python = spawnSync(process.env.TRANSCODERS_BENCH_PYTHON ?? '/usr/bin/python3', args, { encoding: 'utf8', env: { ...process.env, ...baseline.env } });
      if (python.status !== 0) throw new Error(`connections_baseline.py failed: ${python.stderr}`);
      const py = JSON.parse(python.stdout.trim().split('\n').pop()!) as { seconds_all: number[]; gemm_gflops: number; torch: string };
      theirs[b]!.push(...py.seconds_all);
      gemmPython = Math.max(gemmPython, py.gemm_gflops);
      pythonTorch = py.torch;
    });
  }
  const gemmPeak = Math.max(gemmOurs, gemmPython);

  // Agreement of the top-k sets (random data: ties have probability ~0).
  const buf = readFileSync(indicesFile);
  const theirIndices = new BigInt64Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
  let same = 0;
  for (let r = 0; r < rows; r++) {
    const a = new Set(ourIndices!.subarray(r * k, (r + 1) * k));
    if (theirIndices.subarray(r * k, (r + 1) * k).every((x) => a.has(x))) same++;
  }

  const flopsFullPass = 2 * m * m * d;
  const scale = m / rows;
  const summarize = (label: string, times: number[]): ConnectionsRun => {
    const sMedian = median(times);
    const gflops = (2 * rows * m * d) / sMedian / 1e9;
    return { label, sMedian, fullPassS: sMedian * scale, gflops, fractionOfPeak: gflops / gemmPeak };
  };
  const oursRun = summarize('ours', ours);
  const baselines = BASELINES.map(({ label }, b) => summarize(label, theirs[b]!));
  return {
    name: `all-pairs top-${k} connections ${m}x${m} features, d ${d}, cpu`,
    m,
    d,
    k,
    blockSize,
    rows,
    threads,
    flopsFullPass,
    ours: oursRun,
    oursTopkMerge: summarize('ours, at::topk merge', oursTopk),
    baselines,
    ratio: Math.min(...baselines.map((b) => b.sMedian)) / oursRun.sMedian,
    gemmPeakGflops: { ours: gemmOurs, pytorch: gemmPython, peak: gemmPeak },
    agreement: same / rows,
    torch: { ours: torchInfo().version, python: pythonTorch },
  };
}
