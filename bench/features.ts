/**
 * Feature-dashboard pass throughput: a GPT-2-small-sized random model with a random relu transcoder on
 * every layer (12 x 24,576 features by default), one streaming pass over random token rows
 * (collectFeatureStats: model forward, every layer's encode, the statistics in C++) against
 * bench/features_baseline.py, the same pass in eager PyTorch, in the same run on the same weights and
 * tokens. Also times writing every card (writeFeatureCards: logit effects, de-embeddings, JSON, deflate).
 *
 * tokens/s is the pass's tokens over its wall time; the work is dominated by the GEMMs: the model
 * forward (~2 x 85 M multiply-adds per token) and the encoders (2 L d F per token), reported as
 * GFLOP/s and as a fraction of the machine's measured fp32 GEMM peak. The 1 M-token time is the
 * measured rate extrapolated (the pass's cost is linear in the tokens).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { getNumThreads, loadModel, setNumThreads, Tensor, torchInfo, Transcoder } from '../lib/index.js';
import { ReplacementModel } from '../lib/circuits/replacement-model.js';
import { gemmGflops } from '../lib/circuits/connections.js';
import { writeTokenFile } from '../lib/data/token-file.js';
import { collectFeatureStats, writeFeatureCards } from '../lib/features/dashboards.js';
import { readSafetensors, writeSafetensors } from '../lib/io/safetensors.js';
import { Rng } from '../lib/util/random.js';
import { benchModel } from './forward.js';

const PYTHON = process.env.TRANSCODERS_BENCH_PYTHON ?? '/usr/bin/python3';
const BASELINE = new URL('./features_baseline.py', import.meta.url).pathname;

export interface FeaturesBenchOptions {
  cacheDir: string;
  dSae?: number;
  tokens?: number;
  context?: number;
  batchRows?: number;
  examples?: number;
  quantiles?: number;
  threads?: number;
  /** Also time writing the cards (default true). */
  cards?: boolean;
  /** Also run the PyTorch baseline on the same tokens (default true; false for the long 1 M-token run). */
  baseline?: boolean;
  /** Called with the pass's rows done (for a progress line on long runs). */
  onProgress?: (rowsDone: number, rowsTotal: number) => void;
}

export interface FeaturesBenchResult {
  name: string;
  shape: { layers: number; dModel: number; dSae: number; tokens: number; context: number; batchRows: number; examples: number; quantiles: number };
  threads: number;
  torch: { ours: string; python: string };
  loadAverage: number[];
  gemmPeakGflops: number;
  flopsPerToken: number;
  ours: { seconds: number; tokensPerS: number; gflops: number; fractionOfPeak: number; millionTokensMinutes: number };
  /** Absent when run without the baseline. */
  pytorch?: { seconds: number; tokensPerS: number; gflops: number; fractionOfPeak: number; millionTokensMinutes: number };
  ratio?: number;
  cards?: { seconds: number; features: number; bytes: number };
  agreement?: { countsEqual: number; topRowsEqual: number };
}

export async function benchFeatures(options: FeaturesBenchOptions): Promise<FeaturesBenchResult> {
  const dSae = options.dSae ?? 24576;
  const context = options.context ?? 64;
  const tokens = options.tokens ?? 4096;
  const batchRows = options.batchRows ?? 8;
  const examples = options.examples ?? 10;
  const quantiles = options.quantiles ?? 4;
  if (options.threads) setNumThreads(options.threads);
  const threads = getNumThreads();
  const dir = benchModel(options.cacheDir);
  const model = await loadModel(dir, { processing: 'none' });
  const { nLayers: L, dModel: d, vocabSize: V } = model.config;
  const work = mkdtempSync(join(options.cacheDir, 'features-'));
  try {
    // Random encoders shared by both sides (kept across runs).
    const weights = join(options.cacheDir, `features-encoders-${L}x${dSae}.safetensors`);
    if (!existsSync(weights)) {
      const rng = new Rng(11);
      const t: Record<string, Tensor> = {};
      for (let l = 0; l < L; l++) {
        // Scaled so that a few percent of the features fire on a token, as trained ones do.
        const wEnc = new Float32Array(d * dSae);
        for (let i = 0; i < wEnc.length; i++) wEnc[i] = rng.normal() / Math.sqrt(d);
        const bEnc = new Float32Array(dSae);
        for (let i = 0; i < dSae; i++) bEnc[i] = -2 + 0.2 * rng.normal();
        t[`W_enc_${l}`] = Tensor.from(wEnc, [d, dSae]);
        t[`b_enc_${l}`] = Tensor.from(bEnc, [dSae]);
      }
      writeSafetensors(weights, t);
      Object.values(t).forEach((x) => x.dispose());
    }
    const w = (await readSafetensors(weights)).tensors;
    const transcoders: Transcoder[] = [];
    const zeros = Tensor.from(new Float32Array(dSae * d), [dSae, d]);
    for (let l = 0; l < L; l++) {
      transcoders.push(await Transcoder.fromParameters(
        { arch: 'relu', dIn: d, dOut: d, dSae, layer: l, hookIn: `blocks.${l}.ln2.hook_normalized`, hookOut: `blocks.${l}.hook_mlp_out`, processing: 'none' },
        { W_enc: w[`W_enc_${l}`]!, b_enc: w[`b_enc_${l}`]!, W_dec: zeros, b_dec: Tensor.from(new Float32Array(d)), b_dec_out: Tensor.from(new Float32Array(d)) },
      ));
    }
    Object.values(w).forEach((x) => x.dispose());
    const rows = Math.ceil(tokens / context);
    const tokenFile = join(work, 'tokens.safetensors');
    const rng = new Rng(5);
    await writeTokenFile(tokenFile, (function* () {
      for (let r = 0; r < rows; r++) yield Int32Array.from({ length: context }, () => rng.int(V));
    })(), { contextSize: context, tokenizer: 'random', bos: 'none', sources: [], documents: rows });
    const replacement = ReplacementModel.create(model, transcoders);
    const peak = await gemmGflops();
    const flopsPerToken = 2 * (12 * d * d * L + 2 * context * d * L + d * V) + 2 * L * d * dSae;
    const load = [loadavg()[0]!];

    const t0 = performance.now();
    const pass = await collectFeatureStats(replacement, tokenFile, { examples, quantiles, batchRows, ...(options.onProgress ? { onProgress: options.onProgress } : {}) });
    const oursS = (performance.now() - t0) / 1000;
    load.push(loadavg()[0]!);
    let cards: FeaturesBenchResult['cards'];
    if (options.cards !== false) {
      const t1 = performance.now();
      const out = join(work, 'cards');
      const entries = await writeFeatureCards(replacement, pass, out, { scan: 'bench' });
      cards = { seconds: (performance.now() - t1) / 1000, features: L * dSae, bytes: [...entries.values()].reduce((a, e) => a + e.offsets.at(-1)!, 0) };
    }
    // Only what the agreement check needs; the state's memory is freed before the baseline runs.
    const ourCounts = pass.layers.map((l) => {
      const t = pass.stats.get(l)!.tensors();
      return { count: Array.from(t.count!.toTypedArray() as BigInt64Array, Number), topRow: Array.from(t.top_row!.toTypedArray() as BigInt64Array, Number) };
    });
    for (const s of pass.stats.values()) s.dispose();
    pass.stats.clear();
    transcoders.length = 0;
    zeros.dispose();
    const side = (seconds: number) => {
      const tps = (rows * context) / seconds;
      const gflops = (tps * flopsPerToken) / 1e9;
      return { seconds, tokensPerS: tps, gflops, fractionOfPeak: gflops / peak, millionTokensMinutes: 1e6 / tps / 60 };
    };
    const common = {
      name: `feature pass, GPT-2-small-sized random model, ${L} x ${dSae} relu features, ${rows * context} tokens`,
      shape: { layers: L, dModel: d, dSae, tokens: rows * context, context, batchRows, examples, quantiles },
      threads,
      gemmPeakGflops: peak,
      flopsPerToken,
      ours: side(oursS),
      ...(cards ? { cards } : {}),
    };
    if (options.baseline === false) return { ...common, torch: { ours: torchInfo().version, python: 'not run' }, loadAverage: load };

    const outFile = join(work, 'baseline.safetensors');
    const r = spawnSync(PYTHON, [BASELINE, dir, weights, tokenFile, outFile, '--examples', String(examples), '--quantiles', String(quantiles), '--batch-rows', String(batchRows), '--threads', String(threads)], {
      encoding: 'utf8', maxBuffer: 1 << 24, env: { ...process.env, OMP_WAIT_POLICY: 'PASSIVE' },
    });
    if (r.status !== 0) throw new Error(`features_baseline.py failed (${r.status}): ${r.stderr}`);
    const baseline = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { seconds: number; torch: string };
    load.push(loadavg()[0]!);
    const theirs = (await readSafetensors(outFile)).tensors;
    let countsEqual = 0;
    let topRowsEqual = 0;
    ourCounts.forEach((s, l) => {
      const c = Array.from(theirs[`count_${l}`]!.toTypedArray() as BigInt64Array, Number);
      const t = Array.from(theirs[`top_row_${l}`]!.toTypedArray() as BigInt64Array, Number);
      for (let f = 0; f < dSae; f++) countsEqual += Number(c[f] === s.count[f]);
      for (let i = 0; i < dSae * examples; i++) topRowsEqual += Number(t[i] === s.topRow[i]);
    });
    return {
      ...common,
      torch: { ours: torchInfo().version, python: baseline.torch },
      loadAverage: load,
      pytorch: side(baseline.seconds),
      ratio: baseline.seconds / oursS,
      agreement: { countsEqual: countsEqual / (L * dSae), topRowsEqual: topRowsEqual / (L * dSae * examples) },
    };
  } finally {
    model.dispose();
    rmSync(work, { recursive: true, force: true });
  }
}

export function printFeatures(r: FeaturesBenchResult): void {
  console.log(`${r.name} (${r.threads} threads; libtorch ${r.torch.ours}, python torch ${r.torch.python}; load average ${r.loadAverage.map((x) => x.toFixed(1)).join(' -> ')})`);
  console.log(`  GEMM peak ${r.gemmPeakGflops.toFixed(0)} GFLOP/s; ${(r.flopsPerToken / 1e9).toFixed(2)} GFLOP per token`);
  const sides = [['ours', r.ours] as const, ...(r.pytorch ? [['PyTorch eager', r.pytorch] as const] : [])];
  for (const [label, s] of sides) {
    const million = r.shape.tokens >= 1e6 ? 'measured' : 'extrapolated';
    console.log(`  ${s.tokensPerS.toFixed(0).padStart(8)} tokens/s   ${s.seconds.toFixed(1).padStart(7)} s   ${s.gflops.toFixed(0).padStart(4)} GFLOP/s   ${(100 * s.fractionOfPeak).toFixed(0).padStart(3)}% of peak   1 M tokens: ${s.millionTokensMinutes.toFixed(0)} min (${million})   ${label}`);
  }
  if (r.ratio !== undefined && r.agreement) console.log(`  ratio    ${r.ratio.toFixed(2)}x (PyTorch time / ours); counts equal for ${(100 * r.agreement.countsEqual).toFixed(2)}% of features, top rows for ${(100 * r.agreement.topRowsEqual).toFixed(2)}% of slots`);
  else console.log('  (PyTorch baseline not run: --features-baseline false)');
  if (r.cards) console.log(`  cards    ${r.cards.seconds.toFixed(1)} s for ${r.cards.features} cards (${(r.cards.bytes / 1e6).toFixed(0)} MB)`);
}
