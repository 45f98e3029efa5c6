/**
 * Transcoder training throughput on cached activations (768 -> 24576, batch 4096 by default), our
 * StepTrainer (lib/transcoders/step-trainer.ts, loop in native/train/step_trainer.cc) against PyTorch
 * baselines written from the published definitions (bench/train_baseline.py), in alternating rounds
 * of the same run, on the same data and the same initial weights:
 *
 * - `relu`, the paper recipe, against the paper's training step (normalised MSE + L1, unit-norm
 *   decoder rows, gradient projection, Adam). Same algorithm: the losses of every step and the
 *   final weights must agree (checked; the benchmark throws otherwise). From fresh weights about
 *   half the features are active, so our step runs the same five dense GEMMs.
 * - `relu-trained`: the same, from weights whose features fire as rarely as a trained transcoder's
 *   (L0 ~ 100): our step then uses the sparse products (native/train/fast_step.cc); the PyTorch
 *   paper step does the same dense work as ever. Checked for agreement like `relu`.
 * - `topk` (k = 32, AuxK), the standard recipe, against sparsify's TopK step for a transcoder (TopK
 *   encode with a sparse encoder backward, decode of the k active rows, AuxK as sparsify defines it).
 *   The algorithms differ in details (sparsify: no input pre-bias, no decoder renormalisation for a
 *   transcoder, AuxK normalised by the variance of y and training the decoder only), so the
 *   agreement check runs the baseline's sparse step switched to our algorithm (`--match-ours`) for
 *   a few steps from the same weights; those steps are timed too and reported.
 *   A quarter of the features start with b_enc = -0.3 and a dead counter past the window, so AuxK
 *   has dead features (k_aux = 384) from the first step, as late in a run; on both sides alike.
 *
 * Ours also runs with computeDtype 'bfloat16' (the dense GEMMs in bf16, float32 master weights) in
 * the same rounds; its losses are reported against our fp32 run, its speed against the fp32 PyTorch
 * step (PyTorch 1.13 on the CPU has no bf16 autocast worth using for these ops).
 *
 * Each side's tokens/s is batch / median step time. GFLOP/s counts the GEMM work the algorithm
 * needs, the same count for both sides of a comparison: relu 5 dense N x d x m GEMMs (encoder,
 * decoder, decoder weight gradient, gradient of f, encoder weight gradient); topk the dense encoder
 * GEMM plus 2 N k d for each sparse product (decode, value gradients, decoder and encoder weight
 * gradients) and AuxK's decode and decoder gradient over k_aux. The fraction of peak divides by the
 * machine's measured fp32 GEMM peak: the best of at::mm / torch.mm on 2048^3 (as bench/connections.ts)
 * and at the encoder's N x d x m shape, measured at the start and after each arch (the machine is shared).
 *
 * The end-to-end rate: trainTranscoders on the GPT-2-small-sized random model of bench/forward.ts,
 * training a transcoder at each of the 12 layers from one model forward per batch (shuffle buffer of
 * two batches), reported as model tokens/s in the steady state (step times after the first).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { getNumThreads, loadModel, setNumThreads, StepTrainer, Tensor, torchInfo, Transcoder } from '../lib/index.js';
import { gemmGflops } from '../lib/circuits/connections.js';
import { writeTokenFile } from '../lib/data/token-file.js';
import { readSafetensors, writeSafetensors } from '../lib/io/safetensors.js';
import type { TrainOptions } from '../lib/transcoders/step-trainer.js';
import { trainTranscoders } from '../lib/transcoders/training-run.js';
import { Rng } from '../lib/util/random.js';
import { benchModel } from './forward.js';

const PYTHON = process.env.TRANSCODERS_BENCH_PYTHON ?? '/usr/bin/python3';
const BASELINE = new URL('./train_baseline.py', import.meta.url).pathname;
/** Bump when the generated data changes meaning. */
const DATA_VERSION = 1;
/**
 * As in bench/forward.ts: PyTorch as a user runs it, and with OMP_WAIT_POLICY=PASSIVE, which stops
 * libgomp's spinning threads from competing with OpenBLAS's on a 2-core machine (worth up to 2x
 * there when the machine is busy). Ratios are against the faster of the two.
 */
const BASELINES = [
  { label: 'pytorch', env: {} },
  { label: 'pytorch OMP_WAIT_POLICY=PASSIVE', env: { OMP_WAIT_POLICY: 'PASSIVE' } },
] as const;

/**
 * `relu-trained`: the relu paper recipe from weights whose features fire as sparsely as a trained
 * relu transcoder's (each on ~0.4% of tokens, L0 ~ 100 of 24576: each b_enc is minus its feature's
 * 99.6th percentile pre-activation on the first batch); ours then runs its sparse products. The
 * PyTorch paper step is dense whatever the activations, as every PyTorch trainer is.
 */
export type TrainArch = 'relu' | 'relu-trained' | 'topk';

export interface SideResult {
  label: string;
  msMedian: number;
  msAll: number[];
  tokensPerS: number;
  gflops: number;
  fractionOfPeak: number;
}

export interface Agreement {
  /** What was compared. */
  what: string;
  steps: number;
  /** Largest relative difference of a per-step loss term (total, reconstruction, sparsity). */
  maxLossRelDiff: number;
  /** Per parameter: ||ours - theirs|| / ||theirs|| (Frobenius) and the largest absolute difference. */
  params: Record<string, { relFrobenius: number; maxAbs: number }>;
  /** Features whose "steps since fired" counter differs. */
  sinceFiredMismatches: number;
  tolerance: { loss: number; params: number };
  ok: boolean;
}

export interface TrainArchResult {
  arch: TrainArch;
  /** The FLOP count GFLOP/s is computed from (per step). */
  flopsPerStep: number;
  /** GEMM FLOPs our step executes (the dense products autograd runs), per step. */
  oursExecutedFlopsPerStep: number;
  ours: SideResult;
  /** Ours with computeDtype 'bfloat16' (the dense GEMMs in bf16), timed in the same rounds. */
  oursBf16: SideResult;
  /** bf16 against our fp32 trainer on the same steps: largest relative difference of a loss term. */
  bf16LossRelDiff: number;
  /** Mean active features per row over the timed steps (ours, fp32). */
  l0: number;
  /** PyTorch as a user runs it, and with OMP_WAIT_POLICY=PASSIVE (see BASELINES). */
  baselines: SideResult[];
  /** ours tokens/s / the faster baseline's tokens/s (fp32 both). */
  ratio: number;
  /** ours bf16 tokens/s / the faster (fp32) baseline's. */
  ratioBf16: number;
  agreements: Agreement[];
  /** topk: the baseline's sparse step switched to our algorithm (timed during the agreement check). */
  baselineMatched?: SideResult;
}

export interface EndToEndResult {
  layers: number;
  dSae: number;
  arch: TrainArch;
  batch: number;
  steps: number;
  /** Steady-state step times (after the first), ms. */
  stepMsAll: number[];
  /** Model tokens per second (each feeds all layers' transcoders). */
  tokensPerS: number;
  /** Activation rows trained per second, all layers together (tokensPerS x layers). */
  layerTokensPerS: number;
  /** Median ms of the model forward alone for one batch of tokens (same rows per forward). */
  forwardMs: number;
}

export interface TrainBenchResult {
  name: string;
  shape: { dIn: number; dSae: number; batch: number; k: number; kAux: number };
  threads: number;
  rounds: number;
  stepsPerRound: number;
  /** Best measurements (GFLOP/s): fp32 2048^3 and the encoder's N x d x m shape, each side; peak = the best of all. */
  gemmPeakGflops: { ours: number; pytorch: number; oursStepShape: number; pytorchStepShape: number; peak: number };
  archs: TrainArchResult[];
  /** Ratios for the goals, fp32 and bf16 (ours in bf16 against the same fp32 PyTorch step). */
  goals: {
    reluVsPaper: { fp32: number; bf16: number } | null;
    reluTrainedVsPaper: { fp32: number; bf16: number } | null;
    topkVsRelu: { fp32: number; bf16: number } | null;
    topkVsSparsify: { fp32: number; bf16: number } | null;
    met: Record<string, boolean>;
  };
  endToEnd?: EndToEndResult;
  loadAverage: number[];
  torch: { ours: string; python: string };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** The baseline script's `serve` process: one JSON line per command. */
class Baseline {
  private readonly child: ChildProcess;
  private readonly lines: string[] = [];
  private waiting: ((line: string | null) => void) | null = null;
  private stderr = '';
  private closed = false;

  constructor(args: string[], env: Record<string, string> = {}) {
    this.child = spawn(PYTHON, [BASELINE, 'serve', ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    this.child.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      if (this.waiting) {
        const w = this.waiting;
        this.waiting = null;
        w(line);
      } else this.lines.push(line);
    });
    this.child.on('exit', () => {
      this.closed = true;
      if (this.waiting) this.waiting(null);
    });
  }

  private next(): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const take = (line: string | null) => (line === null ? reject(new Error(`train_baseline.py exited: ${this.stderr}`)) : resolve(JSON.parse(line) as Record<string, unknown>));
      if (this.lines.length > 0) take(this.lines.shift()!);
      else if (this.closed) take(null);
      else this.waiting = take;
    });
  }

  ready(): Promise<Record<string, unknown>> {
    return this.next();
  }

  send(command: string): Promise<Record<string, unknown>> {
    this.child.stdin!.write(command + '\n');
    return this.next();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    const exited = new Promise((r) => this.child.on('exit', r));
    this.child.stdin!.end('quit\n');
    await exited;
  }
}

interface Batches {
  xs: Tensor[];
  ys: Tensor[];
}

/** Random cached activations, generated once by the baseline script (so both sides read the same file). */
async function dataFile(cacheDir: string, count: number, batch: number, d: number): Promise<{ file: string; batches: Batches }> {
  const file = join(cacheDir, `train-data-v${DATA_VERSION}-${count}x${batch}x${d}.safetensors`);
  if (!existsSync(file)) {
    console.error(`generating ${file} (${count} batches of random activations)...`);
    await new Promise<void>((resolve, reject) => {
      const child = spawn(PYTHON, [BASELINE, 'generate', '--out', file, '--steps', String(count), '--batch', String(batch), '--d-in', String(d), '--d-out', String(d)], { stdio: ['ignore', 'inherit', 'inherit'] });
      child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`train_baseline.py generate failed (${code})`))));
    });
  }
  const { tensors } = await readSafetensors(file);
  const batches: Batches = { xs: [], ys: [] };
  for (let i = 0; i < count; i++) {
    batches.xs.push(Tensor.from(tensors[`x.${i}`]!.toFloat32Array(), [1, batch, d]));
    batches.ys.push(Tensor.from(tensors[`y.${i}`]!.toFloat32Array(), [1, batch, d]));
  }
  return { file, batches };
}

/** Our trainer on batches start, start + 1, ... (cycling); per-step ms and metrics. */
async function oursSteps(trainer: StepTrainer, batches: Batches, start: number, count: number) {
  const ms: number[] = [];
  const metrics: { total: number; reconstruction: number; sparsity: number; l0: number }[] = [];
  for (let i = 0; i < count; i++) {
    const b = (start + i) % batches.xs.length;
    const t0 = performance.now();
    const [m] = await trainer.run(batches.xs[b]!, batches.ys[b]!);
    ms.push(performance.now() - t0);
    metrics.push(m!);
  }
  return { ms, metrics };
}

function relDiff(a: number, b: number): number {
  return Math.abs(a - b) / Math.max(Math.abs(b), 1e-12);
}

async function compare(
  what: string,
  oursMetrics: { total: number; reconstruction: number; sparsity: number }[],
  theirMetrics: { total: number; reconstruction: number; sparsity: number }[],
  ours: { params: Record<string, Tensor>; sinceFired: BigInt64Array },
  theirFile: string,
  tolerance: { loss: number; params: number },
): Promise<Agreement> {
  if (oursMetrics.length !== theirMetrics.length) throw new Error(`agreement (${what}): ${oursMetrics.length} steps of ours against ${theirMetrics.length}`);
  let maxLossRelDiff = 0;
  oursMetrics.forEach((m, i) => {
    const t = theirMetrics[i]!;
    for (const key of ['total', 'reconstruction', 'sparsity'] as const) {
      // A term that is 0 on both sides (AuxK without dead features) agrees exactly.
      if (m[key] === 0 && t[key] === 0) continue;
      maxLossRelDiff = Math.max(maxLossRelDiff, relDiff(m[key], t[key]));
    }
  });
  const { tensors } = await readSafetensors(theirFile);
  const params: Agreement['params'] = {};
  for (const name of Object.keys(ours.params)) {
    const a = ours.params[name]!.toFloat32Array();
    const b = tensors[name]!.toFloat32Array();
    if (a.length !== b.length) throw new Error(`agreement (${what}): ${name} has ${a.length} entries in ours, ${b.length} in PyTorch's`);
    let diff2 = 0;
    let ref2 = 0;
    let maxAbs = 0;
    for (let i = 0; i < a.length; i++) {
      const d = a[i]! - b[i]!;
      diff2 += d * d;
      ref2 += b[i]! * b[i]!;
      maxAbs = Math.max(maxAbs, Math.abs(d));
    }
    params[name] = { relFrobenius: ref2 > 0 ? Math.sqrt(diff2 / ref2) : Math.sqrt(diff2), maxAbs };
  }
  const theirSince = tensors.since_fired!.toTypedArray() as BigInt64Array;
  let sinceFiredMismatches = 0;
  for (let i = 0; i < theirSince.length; i++) if (theirSince[i] !== ours.sinceFired[i]) sinceFiredMismatches++;
  const worst = Math.max(...Object.values(params).map((p) => p.relFrobenius));
  const ok = maxLossRelDiff <= tolerance.loss && worst <= tolerance.params && sinceFiredMismatches === 0;
  return { what, steps: oursMetrics.length, maxLossRelDiff, params, sinceFiredMismatches, tolerance, ok };
}

function side(label: string, ms: number[], batch: number, flops: number, peak: number): SideResult {
  const msMedian = median(ms);
  const gflops = flops / (msMedian / 1000) / 1e9;
  return { label, msMedian, msAll: ms, tokensPerS: batch / (msMedian / 1000), gflops, fractionOfPeak: gflops / peak };
}

export interface TrainBenchOptions {
  cacheDir: string;
  archs?: TrainArch[];
  dIn?: number;
  dSae?: number;
  batch?: number;
  k?: number;
  /** Timed steps per side and round (default 3). */
  steps?: number;
  /** Alternations of ours and PyTorch (default 2). */
  rounds?: number;
  /** Untimed steps per side before the first round (default 1). */
  warmup?: number;
  /** topk: steps of the agreement check against the baseline switched to our algorithm (default 3). */
  checkSteps?: number;
  threads?: number;
  /** End-to-end run: steps (0: skip; default 4), transcoder width (default 3072) and batch (default the benchmark's). */
  e2eSteps?: number;
  e2eDSae?: number;
  e2eBatch?: number;
  /** Default 1e-4 relative (losses) and 1e-3 (weights, relative Frobenius norm). */
  tolerance?: { loss: number; params: number };
}

/**
 * Encoder biases under which each feature fires on about `rate` of the rows of `x` [1, N, d]: minus
 * its pre-activation at that quantile (b_dec = 0, as initialised).
 */
async function trainedBiases(tc: Transcoder, x: Tensor, rate: number): Promise<Tensor> {
  const [, N, d] = x.shape as [number, number, number];
  const rows = Math.min(N, 1024);
  const f = (await tc.encode(Tensor.from(x.toFloat32Array().subarray(0, rows * d), [rows, d]))).toFloat32Array();
  const m = f.length / rows;
  const rank = Math.max(1, Math.round(rate * rows));
  const column = new Float32Array(rows);
  const bias = new Float32Array(m);
  for (let j = 0; j < m; j++) {
    for (let n = 0; n < rows; n++) column[n] = f[n * m + j]!;
    column.sort();
    bias[j] = -column[rows - rank]!;
  }
  return Tensor.from(bias, [m]);
}

export async function benchTrain(options: TrainBenchOptions): Promise<TrainBenchResult> {
  const archs = options.archs ?? ['relu', 'relu-trained', 'topk'];
  const dIn = options.dIn ?? 768;
  const dSae = options.dSae ?? 24576;
  const N = options.batch ?? 4096;
  const k = options.k ?? 32;
  const kAux = Math.floor(dIn / 2);
  const steps = options.steps ?? 3;
  const rounds = options.rounds ?? 2;
  const warmup = options.warmup ?? 1;
  const checkSteps = options.checkSteps ?? 3;
  const threads = options.threads ?? getNumThreads();
  const tolerance = options.tolerance ?? { loss: 1e-4, params: 1e-3 };
  const lr = 4e-4;
  const deadWindow = 1000;
  setNumThreads(threads);
  const load: number[] = [loadavg()[0]!];
  const work = mkdtempSync(join(options.cacheDir, 'train-'));
  const nBatches = Math.max(2, Math.min(4, warmup + steps * rounds));
  const { file: data, batches } = await dataFile(options.cacheDir, nBatches, N, dIn);

  // The GEMM peak: the best of several measurements (the machine may be shared): at::mm and
  // torch.mm on 2048^3, and at the encoder's shape, at the start and after each arch's rounds.
  let gemmOurs = 0;
  let gemmOursStep = 0;
  const measureOurs = async () => {
    gemmOurs = Math.max(gemmOurs, await gemmGflops({ m: 2048, k: 2048, n: 2048, iters: 5 }));
    gemmOursStep = Math.max(gemmOursStep, await gemmGflops({ m: N, k: dIn, n: dSae, iters: 2 }));
  };
  await measureOurs();
  let gemmPython = 0;
  let gemmPythonStep = 0;
  let pythonTorch = '';

  const results: TrainArchResult[] = [];
  try {
    for (const arch of archs) {
      // Initial weights: ours, exported for the baseline.
      const relu = arch !== 'topk';
      const config = { arch: relu ? 'relu' as const : 'topk' as const, dIn, dOut: dIn, dSae, ...(relu ? {} : { k }) };
      let init = await Transcoder.create(config, { seed: 0 });
      const sinceFired = new BigInt64Array(dSae);
      if (arch === 'topk') {
        const p = init.parameters();
        const bEnc = p.b_enc.toFloat32Array().map((v, j) => (j % 4 === 0 ? -0.3 : v));
        init = await Transcoder.fromParameters(config, { ...p, b_enc: Tensor.from(bEnc, [dSae]) });
        for (let j = 0; j < dSae; j += 4) sinceFired[j] = BigInt(deadWindow + 1);
      }
      if (arch === 'relu-trained') {
        const p = init.parameters();
        init = await Transcoder.fromParameters(config, { ...p, b_enc: await trainedBiases(init, batches.xs[0]!, 0.004) });
      }
      const initFile = join(work, `init-${arch}.safetensors`);
      writeSafetensors(initFile, { ...init.parameters(), since_fired: Tensor.from(sinceFired, [dSae]) });
      const trainOptions: TrainOptions = relu
        ? { recipe: 'paper', lr, l1Coefficient: 1.4e-4 }
        : { recipe: 'standard', lr, auxkAlpha: 1 / 32, kAux, deadFeatureWindow: deadWindow };
      const fresh = async (computeDtype: 'float32' | 'bfloat16' = 'float32') => {
        const tc = await Transcoder.fromParameters(config, init.parameters());
        const trainer = new StepTrainer(tc, { ...trainOptions, computeDtype });
        const state = trainer.state();
        trainer.setState({ step: 0, tensors: { ...state.tensors, steps_since_fired: Tensor.from(sinceFired, [dSae]) } });
        return { tc, trainer };
      };
      const baselineArgs = (algo: string, extra: string[] = []) => [
        '--algo', algo, '--data', data, '--init', initFile, '--threads', String(threads), '--lr', String(lr),
        '--l1', '1.4e-4', '--k', String(k), '--auxk-alpha', String(1 / 32), '--dead-window', String(deadWindow), ...extra,
      ];
      const G = 2 * N * dIn * dSae;
      const sparse = (rows: number) => 2 * N * rows * dIn;
      const flopsPerStep = relu ? 5 * G : G + 4 * sparse(k) + 2 * sparse(kAux);
      // What our step executes (native/train/fast_step.cc): relu the 5 dense GEMMs while more than 2%
      // of the activations are non-zero, else the encoder GEMM and 4 sparse products over the
      // active features (counted after the run from the measured L0); topk what is counted.
      let oursExecutedFlopsPerStep = relu ? 5 * G : flopsPerStep;

      // Timed rounds: ours, then each PyTorch variant, alternating. relu: the same algorithm on
      // both sides, from the same weights on the same batches, so the run itself is the agreement
      // check (for every variant).
      const ours = await fresh();
      const finalFile = (b: number) => join(work, `final-${arch}-${b}.safetensors`);
      const oursBf16 = await fresh('bfloat16');
      const bases = BASELINES.map((v, b) => new Baseline(baselineArgs(relu ? 'paper' : 'sparsify', ['--out', finalFile(b)]), v.env));
      for (const base of bases) pythonTorch = String((await base.ready()).torch);
      for (const base of bases) {
        const peak = await base.send('peak');
        gemmPython = Math.max(gemmPython, Number(peak.gemm_2048));
        gemmPythonStep = Math.max(gemmPythonStep, Number(peak.gemm_step));
      }
      type Metrics = { total: number; reconstruction: number; sparsity: number };
      const oursMs: number[] = [];
      const oursMetrics: (Metrics & { l0: number })[] = [];
      const bf16Ms: number[] = [];
      const bf16Metrics: Metrics[] = [];
      const theirMs: number[][] = bases.map(() => []);
      const theirMetrics: Metrics[][] = bases.map(() => []);
      let position = 0;
      for (let round = 0; round < rounds; round++) {
        const untimed = round === 0 ? warmup : 0;
        const o = await oursSteps(ours.trainer, batches, position, untimed + steps);
        oursMs.push(...o.ms.slice(untimed));
        oursMetrics.push(...o.metrics);
        const h = await oursSteps(oursBf16.trainer, batches, position, untimed + steps);
        bf16Ms.push(...h.ms.slice(untimed));
        bf16Metrics.push(...h.metrics);
        const report = [`ours ${o.ms.map((x) => x.toFixed(0)).join(' ')}`, `ours bf16 ${h.ms.map((x) => x.toFixed(0)).join(' ')}`];
        for (const [b, base] of bases.entries()) {
          const t = (await base.send(`run ${untimed + steps}`)) as { ms: number[]; metrics: Metrics[] };
          theirMs[b]!.push(...t.ms.slice(untimed));
          theirMetrics[b]!.push(...t.metrics);
          report.push(`${BASELINES[b]!.label} ${t.ms.map((x) => x.toFixed(0)).join(' ')}`);
        }
        position += untimed + steps;
        console.error(`  train ${arch} round ${round + 1}/${rounds} (ms): ${report.join('; ')}`);
      }
      load.push(loadavg()[0]!);
      await measureOurs();
      const peak = Math.max(gemmOurs, gemmPython, gemmOursStep, gemmPythonStep);
      const fastest = theirMs.map(median).reduce((best, ms, b) => (ms < median(theirMs[best]!) ? b : best), 0);
      const oursState = (t: { tc: Transcoder; trainer: StepTrainer }) => ({ params: t.tc.parameters(), sinceFired: t.trainer.state().tensors.steps_since_fired!.toTypedArray() as BigInt64Array });
      const agreements: Agreement[] = [];
      let baselineMatched: SideResult | undefined;
      if (relu) {
        for (const [b, base] of bases.entries()) {
          await base.send('save');
          await base.close();
          agreements.push(await compare(`${arch}: ours vs the PyTorch paper step (${BASELINES[b]!.label}), every step of the timed run`, oursMetrics, theirMetrics[b]!, oursState(ours), finalFile(b), tolerance));
        }
      } else {
        for (const base of bases) await base.close();
        // The agreement check: the baseline's sparse step with our TopK algorithm (in the
        // environment of the faster timed variant).
        const check = await fresh();
        const matched = new Baseline(baselineArgs('sparsify', ['--match-ours', '--out', finalFile(0)]), BASELINES[fastest]!.env);
        await matched.ready();
        const o = await oursSteps(check.trainer, batches, 0, checkSteps);
        const t = (await matched.send(`run ${checkSteps}`)) as { ms: number[]; metrics: Metrics[] };
        await matched.send('save');
        await matched.close();
        console.error(`  train topk check (ms): ours ${o.ms.map((x) => x.toFixed(0)).join(' ')}; pytorch, our algorithm ${t.ms.map((x) => x.toFixed(0)).join(' ')}`);
        agreements.push(await compare('topk: ours vs the PyTorch sparse step switched to our algorithm (--match-ours)', o.metrics, t.metrics, oursState(check), finalFile(0), tolerance));
        baselineMatched = side(`pytorch sparse step, our algorithm (--match-ours; ${BASELINES[fastest]!.label}; untimed first step)`, t.ms.length > 1 ? t.ms.slice(1) : t.ms, N, flopsPerStep, peak);
      }
      const l0 = oursMetrics.reduce((a, m) => a + m.l0, 0) / oursMetrics.length;
      if (relu && l0 < 0.02 * dSae) oursExecutedFlopsPerStep = G + 4 * sparse(l0);
      const oursSide = side(`ours (${relu ? 'paper' : 'standard'} recipe)`, oursMs, N, flopsPerStep, peak);
      const bf16Side = side(`ours, bf16 GEMMs (${relu ? 'paper' : 'standard'} recipe)`, bf16Ms, N, flopsPerStep, peak);
      let bf16LossRelDiff = 0;
      bf16Metrics.forEach((m, i) => {
        for (const key of ['total', 'reconstruction', 'sparsity'] as const) if (m[key] !== 0 || oursMetrics[i]![key] !== 0) bf16LossRelDiff = Math.max(bf16LossRelDiff, relDiff(m[key], oursMetrics[i]![key]));
      });
      const step = relu ? 'pytorch paper step' : 'pytorch sparsify-style TopK step';
      const baselines = BASELINES.map((v, b) => side(`${step} (${v.label})`, theirMs[b]!, N, flopsPerStep, peak));
      const ratio = oursSide.tokensPerS / baselines[fastest]!.tokensPerS;
      const ratioBf16 = bf16Side.tokensPerS / baselines[fastest]!.tokensPerS;
      results.push({ arch, flopsPerStep, oursExecutedFlopsPerStep, ours: oursSide, oursBf16: bf16Side, bf16LossRelDiff, l0, baselines, ratio, ratioBf16, agreements, ...(baselineMatched ? { baselineMatched } : {}) });
      for (const a of agreements) if (!a.ok) throw new Error(`train benchmark: ${a.what}: results disagree beyond the tolerance: ${JSON.stringify(a)}`);
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }

  // Every fraction against the final peak (the best measurement of the whole run).
  const peak = Math.max(gemmOurs, gemmPython, gemmOursStep, gemmPythonStep);
  for (const r of results) for (const s of [r.ours, r.oursBf16, ...r.baselines, ...(r.baselineMatched ? [r.baselineMatched] : [])]) s.fractionOfPeak = s.gflops / peak;
  const relu = results.find((r) => r.arch === 'relu');
  const reluTrained = results.find((r) => r.arch === 'relu-trained');
  const topk = results.find((r) => r.arch === 'topk');
  const both = (r: TrainArchResult | undefined) => (r ? { fp32: r.ratio, bf16: r.ratioBf16 } : null);
  const topkVsRelu = relu && topk ? { fp32: topk.ours.tokensPerS / relu.ours.tokensPerS, bf16: topk.oursBf16.tokensPerS / relu.oursBf16.tokensPerS } : null;
  const best = (r: { fp32: number; bf16: number }) => Math.max(r.fp32, r.bf16);
  const goals = {
    reluVsPaper: both(relu),
    reluTrainedVsPaper: both(reluTrained),
    topkVsRelu,
    topkVsSparsify: both(topk),
    met: {
      ...(relu ? { 'relu >= 1.5x the PyTorch paper step (fp32 or bf16 GEMMs, from the dense start)': best(both(relu)!) >= 1.5 } : {}),
      ...(reluTrained ? { 'relu >= 1.5x the PyTorch paper step at trained sparsity': best(both(reluTrained)!) >= 1.5 } : {}),
      ...(topkVsRelu !== null ? { 'topk >= 3x our relu step (same precision, dense relu start)': best(topkVsRelu) >= 3 } : {}),
      ...(topk ? { 'topk >= 1.5x the PyTorch TopK step': best(both(topk)!) >= 1.5 } : {}),
    },
  };

  const e2eSteps = options.e2eSteps ?? 4;
  const endToEnd = e2eSteps > 0 ? await benchEndToEnd({ cacheDir: options.cacheDir, steps: e2eSteps, dSae: options.e2eDSae ?? 3072, batch: options.e2eBatch ?? N }) : undefined;
  load.push(loadavg()[0]!);

  return {
    name: `train transcoder ${dIn} -> ${dSae}, batch ${N}, cpu`,
    shape: { dIn, dSae, batch: N, k, kAux },
    threads,
    rounds,
    stepsPerRound: steps,
    gemmPeakGflops: { ours: gemmOurs, pytorch: gemmPython, oursStepShape: gemmOursStep, pytorchStepShape: gemmPythonStep, peak },
    archs: results,
    goals,
    ...(endToEnd ? { endToEnd } : {}),
    loadAverage: load,
    torch: { ours: torchInfo().version, python: pythonTorch },
  };
}

/**
 * trainTranscoders on the GPT-2-small-sized random model at all 12 layers (relu, paper recipe) from
 * the model's own activations on random tokens; steady-state model tokens/s.
 */
export async function benchEndToEnd(options: { cacheDir: string; steps: number; dSae: number; batch: number }): Promise<EndToEndResult> {
  const dir = benchModel(options.cacheDir);
  const model = await loadModel(dir, { processing: 'transformerlens' });
  const layers = Array.from({ length: model.config.nLayers }, (_, i) => i);
  const context = 128;
  const sequencesPerForward = Math.max(1, Math.floor(options.batch / context));
  const work = mkdtempSync(join(options.cacheDir, 'train-e2e-'));
  try {
    // Enough random token rows for the bias initialisation and every step (plus the buffer's fill).
    const rows = Math.ceil((options.batch * (options.steps + 2)) / context) + 64;
    const rng = new Rng(7);
    const V = model.config.vocabSize;
    const tokenFile = join(work, 'tokens.safetensors');
    await writeTokenFile(tokenFile, (function* () {
      for (let r = 0; r < rows; r++) yield Int32Array.from({ length: context }, () => rng.int(V));
    })(), { contextSize: context, tokenizer: 'random', bos: 'none', sources: [], documents: rows });
    const times: number[] = [];
    await trainTranscoders({
      data: { tokenFile, model }, layers, arch: 'relu', dSae: options.dSae, batchSize: options.batch, steps: options.steps,
      out: join(work, 'run'), bufferRows: 2 * options.batch, sequencesPerForward, logEvery: 1,
      checkpointEveryTokens: options.batch * (options.steps + 1),
      onProgress: () => times.push(performance.now()),
    });
    const stepMsAll = times.slice(1).map((t, i) => t - times[i]!);
    const ms = median(stepMsAll);
    // The model forward alone, for the split.
    const forwardMs: number[] = [];
    const seqs = Array.from({ length: sequencesPerForward }, () => Array.from({ length: context }, () => rng.int(V)));
    for (let i = 0; i < 2; i++) {
      const t0 = performance.now();
      await model.run(seqs, { cache: layers.flatMap((l) => [`blocks.${l}.ln2.hook_normalized`, `blocks.${l}.hook_mlp_out`]), logits: false });
      forwardMs.push(performance.now() - t0);
    }
    return {
      layers: layers.length, dSae: options.dSae, arch: 'relu', batch: options.batch, steps: options.steps, stepMsAll,
      tokensPerS: options.batch / (ms / 1000), layerTokensPerS: (layers.length * options.batch) / (ms / 1000), forwardMs: Math.min(...forwardMs),
    };
  } finally {
    model.dispose();
    rmSync(work, { recursive: true, force: true });
  }
}
