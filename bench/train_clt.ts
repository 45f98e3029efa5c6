/**
 * Cross-layer transcoder training throughput on cached activations: a GPT-2-small-shaped CLT (12
 * layers, d 768, F features per layer, TopK k per layer with AuxK), our CrossLayerTrainer
 * (native/train/cross_layer_trainer.cc over native/transcoder/cross_layer_losses.cc) against a
 * PyTorch baseline of the same algorithm (bench/train_clt_baseline.py: the batched encoder GEMM,
 * per-layer TopK, the sparse decode by embedding_bag, FVU summed over layers, AuxK, autograd, Adam),
 * in alternating rounds of the same run, on the same batches and the same initial weights.
 *
 * A quarter of each layer's features start with a dead counter past the window, so AuxK runs from
 * the first step; on both sides alike. Same algorithm: the losses of every step and the final
 * weights must agree (checked; reported).
 *
 * tokens/s is batch / median step time. GFLOP/s counts the algorithm's work, the same for both
 * sides: the encoder GEMM and its weight gradient (4 N L d F), and for each sparse product (decode,
 * decoder weight gradient, value gradients) 2 N k d per target layer, L (L + 1) / 2 targets,
 * likewise for AuxK over its k_aux. The fraction of peak divides by the machine's measured fp32 GEMM
 * peak (the best of at::mm and torch.mm on 2048^3).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { getNumThreads, setNumThreads, Tensor, torchInfo } from '../lib/index.js';
import { gemmGflops } from '../lib/circuits/connections.js';
import { readSafetensors, writeSafetensors } from '../lib/io/safetensors.js';
import { CrossLayerTranscoder } from '../lib/transcoders/cross-layer.js';
import { CrossLayerTrainer } from '../lib/transcoders/cross-layer-trainer.js';
import { Rng } from '../lib/util/random.js';

const PYTHON = process.env.TRANSCODERS_BENCH_PYTHON ?? '/usr/bin/python3';
const BASELINE = new URL('./train_clt_baseline.py', import.meta.url).pathname;

export interface CrossLayerTrainBenchOptions {
  layers?: number;
  dModel?: number;
  dSae?: number;
  k?: number;
  kAux?: number;
  batch?: number;
  /** Timed steps per round and side. */
  steps?: number;
  rounds?: number;
  threads?: number;
}

export interface CrossLayerTrainBenchSide {
  label: string;
  msMedian: number;
  msAll: number[];
  tokensPerS: number;
  gflops: number;
  fractionOfPeak: number;
}

export interface CrossLayerTrainBenchResult {
  name: string;
  shape: { layers: number; dModel: number; dSae: number; k: number; kAux: number; batch: number; parameters: number };
  threads: number;
  rounds: number;
  stepsPerRound: number;
  torch: { ours: string; python: string };
  loadAverage: number[];
  gemmPeakGflops: { ours: number; pytorch: number; peak: number };
  flopsPerStep: number;
  ours: CrossLayerTrainBenchSide;
  pytorch: CrossLayerTrainBenchSide;
  ratio: number;
  agreement: { steps: number; maxLossRelDiff: number; maxParamRelFrobenius: number; ok: boolean };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

function randomTensor(shape: number[], rng: Rng, scale: number): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = scale * rng.normal();
  return Tensor.from(data, shape);
}

function relFrobenius(a: Tensor, b: Tensor): number {
  const x = a.toFloat32Array();
  const y = b.toFloat32Array();
  let num = 0;
  let den = 0;
  for (let i = 0; i < x.length; i++) {
    num += (x[i]! - y[i]!) ** 2;
    den += y[i]! ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

export async function benchTrainCrossLayer(options: CrossLayerTrainBenchOptions = {}): Promise<CrossLayerTrainBenchResult> {
  const L = options.layers ?? 12;
  const d = options.dModel ?? 768;
  const F = options.dSae ?? 3072;
  const k = options.k ?? 32;
  const kAux = options.kAux ?? 128;
  const N = options.batch ?? 1024;
  const steps = options.steps ?? 3;
  const rounds = options.rounds ?? 2;
  const threads = options.threads ?? getNumThreads();
  setNumThreads(threads);
  const lr = 2e-4;
  const window = 1000;
  const load = [loadavg()[0]!];
  const dir = mkdtempSync(join(tmpdir(), 'transcoders-bench-clt-'));
  try {
    // Cached activations: `steps` distinct batches of every layer's (input, target) rows.
    const rng = new Rng(7);
    const xs = randomTensor([steps, N, L, d], rng, 1);
    const ys = randomTensor([steps, N, L, d], rng, 0.5);
    const dataFile = join(dir, 'data.safetensors');
    writeSafetensors(dataFile, { xs, ys });
    const config = { arch: 'topk' as const, nLayers: L, dIn: d, dOut: d, dSae: F, k };
    const init = await CrossLayerTranscoder.create(config, { seed: 1 });
    const initParams = init.parameters();
    const since = new BigInt64Array(L * F);
    for (let s = 0; s < L; s++) for (let j = 0; j < F / 4; j++) since[s * F + j * 4] = BigInt(window + 1);
    const sinceTensor = Tensor.from(since, [L, F], { dtype: 'int64' });
    const initFile = join(dir, 'init.safetensors');
    writeSafetensors(initFile, { ...initParams, steps_since_fired: sinceTensor });
    const optionsFile = join(dir, 'options.json');
    writeFileSync(optionsFile, JSON.stringify({ k, kAux, auxkAlpha: 1 / 32, deadFeatureWindow: window, lr, steps, threads }));
    const parameters = Object.values(initParams).reduce((a, t) => a + t.size, 0);

    const ours = async () => {
      const clt = await CrossLayerTranscoder.fromParameters(config, initParams);
      const trainer = new CrossLayerTrainer(clt, { lr, auxkAlpha: 1 / 32, kAux, deadFeatureWindow: window });
      const state = trainer.state();
      trainer.setState({ step: 0, tensors: { ...state.tensors, steps_since_fired: sinceTensor } });
      const ms: number[] = [];
      const losses: number[] = [];
      const per = N * L * d;
      const xAll = xs.toFloat32Array();
      const yAll = ys.toFloat32Array();
      for (let s = 0; s < steps; s++) {
        const x = Tensor.from(xAll.subarray(s * per, (s + 1) * per), [1, N, L, d], { share: true });
        const y = Tensor.from(yAll.subarray(s * per, (s + 1) * per), [1, N, L, d], { share: true });
        const t0 = performance.now();
        const [m] = await trainer.run(x, y);
        ms.push(performance.now() - t0);
        losses.push(m!.total);
      }
      return { ms, losses, params: clt.parameters() };
    };
    const pytorch = async () => {
      const outFile = join(dir, 'baseline-out.safetensors');
      const r = spawnSync(PYTHON, [BASELINE, dataFile, initFile, optionsFile, outFile], {
        encoding: 'utf8', maxBuffer: 16 << 20, env: { ...process.env, OMP_WAIT_POLICY: 'PASSIVE', OMP_NUM_THREADS: String(threads) },
      });
      if (r.status !== 0) throw new Error(`train_clt_baseline.py failed (${r.status}): ${r.stderr}`);
      const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { ms: number; total: number });
      return { ms: lines.map((l) => l.ms), losses: lines.map((l) => l.total), params: (await readSafetensors(outFile)).tensors };
    };

    const oursMs: number[] = [];
    const torchMs: number[] = [];
    let agreement = { steps, maxLossRelDiff: 0, maxParamRelFrobenius: 0, ok: false };
    for (let round = 0; round < rounds; round++) {
      const a = await ours();
      load.push(loadavg()[0]!);
      const b = await pytorch();
      load.push(loadavg()[0]!);
      oursMs.push(...a.ms);
      torchMs.push(...b.ms);
      if (round === 0) {
        const lossDiff = Math.max(...a.losses.map((v, i) => Math.abs(v - b.losses[i]!) / Math.max(Math.abs(b.losses[i]!), 1e-12)));
        const paramDiff = Math.max(...Object.keys(b.params).map((name) => relFrobenius(a.params[name]!, b.params[name]!)));
        agreement = { steps, maxLossRelDiff: lossDiff, maxParamRelFrobenius: paramDiff, ok: lossDiff < 1e-4 && paramDiff < 1e-4 };
      }
    }
    const sums = L * (L + 1) / 2;
    const flopsPerStep = 4 * N * L * d * F + 3 * 2 * N * k * d * sums + 2 * 2 * N * Math.min(kAux, F / 4) * d * sums;
    const torchMm = spawnSync(PYTHON, ['-c', `import time, torch
torch.set_num_threads(${threads})
a = torch.randn(2048, 2048); b = torch.randn(2048, 2048); torch.mm(a, b)
t = time.perf_counter()
for _ in range(5): torch.mm(a, b)
print(5 * 2 * 2048 ** 3 / (time.perf_counter() - t) / 1e9)`], { encoding: 'utf8', env: { ...process.env, OMP_WAIT_POLICY: 'PASSIVE' } });
    const peak = { ours: await gemmGflops({ m: 2048, k: 2048, n: 2048, iters: 5 }), pytorch: Number(torchMm.stdout.trim()) || 0 };
    const best = Math.max(peak.ours, peak.pytorch);
    const side = (label: string, ms: number[]): CrossLayerTrainBenchSide => {
      const m = median(ms);
      const gflops = flopsPerStep / (m / 1000) / 1e9;
      return { label, msMedian: m, msAll: ms, tokensPerS: N / (m / 1000), gflops, fractionOfPeak: gflops / best };
    };
    const o = side('ours (CrossLayerTrainer)', oursMs);
    const p = side('PyTorch, the same algorithm (bench/train_clt_baseline.py)', torchMs);
    const python = spawnSync(PYTHON, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' }).stdout.trim();
    return {
      name: `cross-layer transcoder training, ${L} layers x ${F} features, d ${d}, topk k=${k} + AuxK (k_aux ${kAux}), batch ${N}, cached activations`,
      shape: { layers: L, dModel: d, dSae: F, k, kAux, batch: N, parameters },
      threads, rounds, stepsPerRound: steps,
      torch: { ours: torchInfo().version, python },
      loadAverage: load,
      gemmPeakGflops: { ...peak, peak: best },
      flopsPerStep,
      ours: o,
      pytorch: p,
      ratio: o.tokensPerS / p.tokensPerS,
      agreement,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function printTrainCrossLayer(r: CrossLayerTrainBenchResult): void {
  const pct = (x: number) => `${(100 * x).toFixed(0).padStart(3)}% of peak`;
  console.log(`${r.name} (${r.threads} threads; medians of ${r.rounds} rounds x ${r.stepsPerRound} steps; ${(r.shape.parameters / 1e6).toFixed(0)} M parameters; libtorch ${r.torch.ours}, python torch ${r.torch.python}; load average ${r.loadAverage.map((l) => l.toFixed(1)).join(' -> ')})`);
  console.log(`  GEMM peak ${r.gemmPeakGflops.peak.toFixed(0)} GFLOP/s fp32 (at::mm ${r.gemmPeakGflops.ours.toFixed(0)}, torch.mm ${r.gemmPeakGflops.pytorch.toFixed(0)}); ${(r.flopsPerStep / 1e9).toFixed(1)} GFLOP/step counted`);
  for (const s of [r.ours, r.pytorch]) {
    console.log(`    ${s.tokensPerS.toFixed(0).padStart(8)} tokens/s   ${s.msMedian.toFixed(0).padStart(6)} ms/step   ${s.gflops.toFixed(0).padStart(4)} GFLOP/s   ${pct(s.fractionOfPeak)}   ${s.label}`);
  }
  const a = r.agreement;
  console.log(`    ratio ${r.ratio.toFixed(2)}x (ours / PyTorch); agreement over ${a.steps} steps: losses within ${a.maxLossRelDiff.toExponential(1)}, weights within ${a.maxParamRelFrobenius.toExponential(1)} relative Frobenius (${a.ok ? 'ok' : 'FAILED'})`);
}
