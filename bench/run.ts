/**
 * `npm run bench`: runs every benchmark against its PyTorch baseline in the same run and writes
 * bench/results/latest.json. Options: --iters N (timed forwards per round), --rounds N (alternations
 * of ours and PyTorch), --threads N, --cache DIR (where generated
 * benchmark models are kept; default .cache/bench), --only forward|concurrency|connections|search,
 * --connections-rows N (source rows timed by the connections benchmark; default all 24576),
 * --connections-iters N (timed passes per round; default 2), --search-repeats N (timed setups and
 * searches per round of the greedy search benchmark; default 5), --concurrency-calls N (calls fired at once
 * by the concurrency benchmark; default 20), --llama-load false (skip the llama benchmark's load
 * measurement), --graph-part a|b (only one part of the attribution-graph benchmark).
 *
 * Cross-layer training (--only train-clt, bench/train_clt.ts): a GPT-2-small-shaped 12-layer TopK CLT against
 * the same algorithm in PyTorch; --train-d-sae (features per layer, default 3072), --train-batch (default 1024),
 * --train-steps, --rounds.
 * Service overhead (--only service, bench/service.ts): graphs and feature cards through the HTTP routes against the
 * library calls, on the shipped model; --rounds.
 * Feature dashboards (--only features, bench/features.ts): the streaming pass over GPT-2-small with 12 x 24576 relu
 * features against bench/features_baseline.py; --features-tokens (default 4096), --features-d-sae, --features-cards false,
 * --features-baseline false (ours only: the 1 M-token run, --features-tokens 1000000).
 * Data-parallel training (--only train-distributed, bench/train_distributed.ts): the same run in 1 and 2 processes
 * over gloo, the all-reduce time per step against torch.distributed's; --train-steps, --train-d-sae, --train-batch.
 * `--only llama`, `--only graph`, `--only train-clt`, `--only features` and `--only train-distributed` are not part of a plain `npm run bench` (they need ~2.5 GB of disk
 * and ~12 GB of memory, and several minutes each): name them.
 * Training benchmark (--only train, bench/train.ts): --train-archs relu,relu-trained,topk, --train-d-sae N (default
 * 24576), --train-batch N (default 4096), --train-steps N (timed steps per side and round; default 3;
 * --rounds sets the rounds, default 2), --train-check-steps N (topk agreement check; default 3),
 * --e2e-steps N (end-to-end run on the 12-layer model; 0 skips it; default 4), --e2e-d-sae N (its
 * transcoder width; default 3072), --e2e-batch N (its batch; default --train-batch). A quick run: --train-d-sae 3072 --train-batch 1024 --train-steps 2 --e2e-steps 0.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { benchConcurrency } from './concurrency.js';
import { benchConnections } from './connections.js';
import { benchForward } from './forward.js';
import { benchGraph, printGraph } from './graph.js';
import { benchLlama } from './llama.js';
import { benchSearch } from './search.js';
import { benchTrain, type TrainArch } from './train.js';
import { benchTrainCrossLayer, printTrainCrossLayer } from './train_clt.js';
import { benchFeatures, printFeatures } from './features.js';
import { benchTrainDistributed, printTrainDistributed } from './train_distributed.js';
import { benchService, printService } from './service.js';

const { values } = parseArgs({
  options: {
    iters: { type: 'string' },
    rounds: { type: 'string' },
    threads: { type: 'string' },
    cache: { type: 'string' },
    only: { type: 'string' },
    'connections-rows': { type: 'string' },
    'connections-iters': { type: 'string' },
    'search-repeats': { type: 'string' },
    'concurrency-calls': { type: 'string' },
    'llama-load': { type: 'string' },
    'graph-part': { type: 'string' },
    'train-archs': { type: 'string' },
    'train-d-sae': { type: 'string' },
    'train-batch': { type: 'string' },
    'train-steps': { type: 'string' },
    'train-check-steps': { type: 'string' },
    'e2e-steps': { type: 'string' },
    'e2e-d-sae': { type: 'string' },
    'e2e-batch': { type: 'string' },
    'features-tokens': { type: 'string' },
    'features-d-sae': { type: 'string' },
    'features-cards': { type: 'string' },
    'features-baseline': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (values.help) {
  console.log('Usage: npm run bench -- [--iters N] [--rounds N] [--threads N] [--cache DIR] [--only forward|concurrency|connections|search|train|service|llama|graph|train-clt|features|train-distributed] [--connections-rows N] [--connections-iters N] [--search-repeats N] [--concurrency-calls N] [--llama-load false] [--graph-part a|b] [--train-archs relu,relu-trained,topk] [--train-d-sae N] [--train-batch N] [--train-steps N] [--train-check-steps N] [--e2e-steps N] [--e2e-d-sae N] [--e2e-batch N] [--features-tokens N] [--features-d-sae N] [--features-cards false] [--features-baseline false]');
  process.exit(0);
}
const root = new URL('..', import.meta.url).pathname;
const cacheDir = values.cache ?? join(root, '.cache', 'bench');
mkdirSync(cacheDir, { recursive: true });

const BENCHES = ['forward', 'concurrency', 'connections', 'search', 'train', 'service'];
/** Run only when named with --only. */
const HEAVY = ['llama', 'graph', 'train-clt', 'features', 'train-distributed'];
if (values.only !== undefined && !BENCHES.includes(values.only) && !HEAVY.includes(values.only)) {
  console.error(`--only must be one of ${[...BENCHES, ...HEAVY].join(', ')}, got '${values.only}'`);
  process.exit(2);
}
const wants = (name: string) => (values.only === undefined && !HEAVY.includes(name)) || values.only === name;

const forward = wants('forward')
  ? await benchForward({
      cacheDir,
      ...(values.iters ? { iters: Number(values.iters) } : {}),
      ...(values.threads ? { threads: Number(values.threads) } : {}),
      ...(values.rounds ? { rounds: Number(values.rounds) } : {}),
    })
  : undefined;
if (forward) {
  console.log(`${forward.name} (${forward.threads} threads; libtorch ${forward.torch.ours}, python torch ${forward.torch.python})`);
  console.log(`  ${forward.oursTokensPerS.toFixed(0).padStart(8)} tokens/s   ${forward.oursMsMedian.toFixed(1)} ms/forward   ours`);
  for (const b of forward.baselines) {
    console.log(`  ${b.tokensPerS.toFixed(0).padStart(8)} tokens/s   ${b.msMedian.toFixed(1)} ms/forward   ${b.label} (ours: ${(forward.oursTokensPerS / b.tokensPerS).toFixed(2)}x)`);
  }
  console.log(`  ratio    ${forward.ratio.toFixed(2)}x (ours / the fastest PyTorch eager)`);
}

const concurrency = wants('concurrency')
  ? await benchConcurrency({
      cacheDir,
      ...(values['concurrency-calls'] ? { calls: Number(values['concurrency-calls']) } : {}),
      ...(values.threads ? { threads: Number(values.threads) } : {}),
      ...(values.rounds ? { rounds: Number(values.rounds) } : {}),
    })
  : undefined;
if (concurrency) {
  const c = concurrency;
  console.log(`${c.name} (${c.threads} threads; medians of ${c.rounds} rounds; libtorch ${c.torch}; load average ${c.loadAverage.map((l) => l.toFixed(1)).join(' -> ')})`);
  console.log(`  ${c.sequentialMs.toFixed(0).padStart(8)} ms   ${c.cpuMs.sequential.toFixed(0).padStart(8)} ms CPU   one by one`);
  console.log(`  ${c.queuedMs.toFixed(0).padStart(8)} ms   ${c.cpuMs.queued.toFixed(0).padStart(8)} ms CPU   concurrent, per-device queue (${c.ratio.toFixed(2)}x; goal <= 1.05x)`);
  console.log(`  ${c.bypassedMs.toFixed(0).padStart(8)} ms   ${c.cpuMs.bypassed.toFixed(0).padStart(8)} ms CPU   concurrent, queue bypassed (${c.bypassedRatio.toFixed(2)}x)`);
  console.log(`  rounds (ms): one by one ${c.raw.sequential.map((x) => x.toFixed(0)).join(' ')}; queued ${c.raw.queued.map((x) => x.toFixed(0)).join(' ')}; bypassed ${c.raw.bypassed.map((x) => x.toFixed(0)).join(' ')}`);
}

const connections = wants('connections')
  ? await benchConnections({
      cacheDir,
      ...(values['connections-rows'] ? { rows: Number(values['connections-rows']) } : {}),
      ...(values['connections-iters'] ? { iters: Number(values['connections-iters']) } : {}),
      ...(values.threads ? { threads: Number(values.threads) } : {}),
      ...(values.rounds ? { rounds: Number(values.rounds) } : {}),
    })
  : undefined;
if (connections) {
  const c = connections;
  const timed = c.rows === c.m ? 'full pass' : `first ${c.rows} of ${c.m} source rows timed, scaled to the full pass`;
  console.log(`${c.name}, k ${c.k}, blocks of ${c.blockSize} (${c.threads} threads; ${timed}; ${(c.flopsFullPass / 1e12).toFixed(2)} TFLOP)`);
  console.log(`  GEMM peak ${c.gemmPeakGflops.peak.toFixed(0)} GFLOP/s (at::mm ${c.gemmPeakGflops.ours.toFixed(0)}, torch.mm ${c.gemmPeakGflops.pytorch.toFixed(0)}; fp32 2048^3)`);
  for (const r of [c.ours, c.oursTopkMerge, ...c.baselines]) {
    const vs = r === c.ours ? '' : ` (ours: ${(r.sMedian / c.ours.sMedian).toFixed(2)}x)`;
    console.log(`  ${r.fullPassS.toFixed(2).padStart(8)} s/pass   ${r.gflops.toFixed(0).padStart(5)} GFLOP/s   ${(100 * r.fractionOfPeak).toFixed(0).padStart(3)}% of peak   ${r.label}${vs}`);
  }
  console.log(`  ratio    ${c.ratio.toFixed(2)}x (fastest PyTorch time / ours); top-${c.k} sets agree with PyTorch on ${(100 * c.agreement).toFixed(2)}% of rows`);
}

const search = wants('search')
  ? await benchSearch({
      cacheDir,
      iters: 3,
      branches: 15,
      ...(values['search-repeats'] ? { repeats: Number(values['search-repeats']) } : {}),
      ...(values.threads ? { threads: Number(values.threads) } : {}),
      ...(values.rounds ? { rounds: Number(values.rounds) } : {}),
    })
  : undefined;
if (search) {
  const s = search;
  console.log(`${s.name} (${s.threads} threads; root ${s.root}, ${s.activePerToken.toFixed(0)} active features/token, ${s.childrenCalls} children() calls; libtorch ${s.torch.ours}, python torch ${s.torch.python})`);
  console.log(`  ${s.oursSetupMs.toFixed(1).padStart(8)} ms setup   ${s.oursSearchMs.toFixed(1).padStart(8)} ms search   ours`);
  for (const b of s.baselines) {
    console.log(`  ${b.setupMs.toFixed(1).padStart(8)} ms setup   ${b.searchMs.toFixed(1).padStart(8)} ms search   ${b.label} (ours: ${(b.setupMs / s.oursSetupMs).toFixed(2)}x setup, ${(b.searchMs / s.oursSearchMs).toFixed(2)}x search)`);
  }
  console.log(`  ratio    ${s.ratio.toFixed(2)}x search, ${s.setupRatio.toFixed(2)}x setup (fastest PyTorch time / ours); final beams match (max relative difference ${s.maxRelDiff.toExponential(1)})`);
}

const llama = wants('llama')
  ? await benchLlama({
      cacheDir,
      load: values['llama-load'] !== 'false',
      ...(values.iters ? { iters: Number(values.iters) } : {}),
      ...(values.threads ? { threads: Number(values.threads) } : {}),
      ...(values.rounds ? { rounds: Number(values.rounds) } : {}),
    })
  : undefined;
const train = wants('train')
  ? await benchTrain({
      cacheDir,
      ...(values['train-archs'] ? { archs: values['train-archs'].split(',') as TrainArch[] } : {}),
      ...(values['train-d-sae'] ? { dSae: Number(values['train-d-sae']) } : {}),
      ...(values['train-batch'] ? { batch: Number(values['train-batch']) } : {}),
      ...(values['train-steps'] ? { steps: Number(values['train-steps']) } : {}),
      ...(values['train-check-steps'] ? { checkSteps: Number(values['train-check-steps']) } : {}),
      ...(values['e2e-steps'] !== undefined ? { e2eSteps: Number(values['e2e-steps']) } : {}),
      ...(values['e2e-d-sae'] ? { e2eDSae: Number(values['e2e-d-sae']) } : {}),
      ...(values['e2e-batch'] ? { e2eBatch: Number(values['e2e-batch']) } : {}),
      ...(values.threads ? { threads: Number(values.threads) } : {}),
      ...(values.rounds ? { rounds: Number(values.rounds) } : {}),
    })
  : undefined;
if (llama) {
  const l = llama;
  const loads = l.loadAverage.map((x) => x[0]!.toFixed(1));
  console.log(`${l.name} (${l.threads} threads; libtorch ${l.torch.ours}, python torch ${l.torch.python}; load average ${loads.join(' -> ')})`);
  console.log(`  GEMM peak ${l.gemmPeakGflops.peak.toFixed(0)} GFLOP/s (at::mm ${l.gemmPeakGflops.ours.toFixed(0)}, torch.mm ${l.gemmPeakGflops.pytorch.toFixed(0)}; fp32 2048^3); ${(l.flopsPerForward / 1e12).toFixed(2)} TFLOP per forward`);
  for (const [label, r] of [['ours', l.ours] as const, ...l.baselines.map((b) => [b.label, b] as const)]) {
    const vs = label === 'ours' ? '' : ` (ours: ${(l.ours.tokensPerS / r.tokensPerS).toFixed(2)}x)`;
    console.log(`  ${r.tokensPerS.toFixed(1).padStart(8)} tokens/s   ${r.msMedian.toFixed(0).padStart(6)} ms/forward   ${r.gflops.toFixed(0).padStart(4)} GFLOP/s   ${(100 * r.fractionOfPeak).toFixed(0).padStart(3)}% of peak   ${label}${vs}`);
  }
  console.log(`  ratio    ${l.ratio.toFixed(2)}x (ours / the fastest PyTorch eager); logits agree: max |diff| ${l.logits.maxAbsDiff.toExponential(2)}, ${l.logits.relDiff.toExponential(2)} of the logit scale ${l.logits.scale.toFixed(2)}`);
  if (l.load) {
    const gb = (b: number) => (b / 1e9).toFixed(2);
    for (const r of l.load.runs) {
      console.log(`  load ${r.dtype.padEnd(8)} ${r.loadS.toFixed(1).padStart(5)} s   peak RSS ${gb(r.peakRssBytes)} GB = ${r.peakOverFile.toFixed(2)}x the ${gb(l.load.fileBytes)} GB checkpoint (${r.addedOverFile.toFixed(2)}x above the ${gb(r.rssBeforeBytes)} GB before loading)`);
    }
  }
}

const graph = wants('graph')
  ? await benchGraph({
      cacheDir,
      ...(values['graph-part'] === 'a' || values['graph-part'] === 'b' ? { part: values['graph-part'] } : {}),
      ...(values.threads ? { threads: Number(values.threads) } : {}),
      ...(values.rounds ? { rounds: Number(values.rounds) } : {}),
    })
  : undefined;
if (graph) printGraph(graph);

const trainClt = wants('train-clt')
  ? await benchTrainCrossLayer({
      ...(values['train-d-sae'] ? { dSae: Number(values['train-d-sae']) } : {}),
      ...(values['train-batch'] ? { batch: Number(values['train-batch']) } : {}),
      ...(values['train-steps'] ? { steps: Number(values['train-steps']) } : {}),
      ...(values.threads ? { threads: Number(values.threads) } : {}),
      ...(values.rounds ? { rounds: Number(values.rounds) } : {}),
    })
  : undefined;
if (trainClt) printTrainCrossLayer(trainClt);

const features = wants('features')
  ? await benchFeatures({
      cacheDir,
      ...(values['features-tokens'] ? { tokens: Number(values['features-tokens']) } : {}),
      ...(values['features-d-sae'] ? { dSae: Number(values['features-d-sae']) } : {}),
      ...(values['features-cards'] === 'false' ? { cards: false } : {}),
      ...(values['features-baseline'] === 'false' ? { baseline: false } : {}),
      // A line per ~2% of the pass, so a long run (--features-tokens 1000000) shows where it is.
      onProgress: (() => {
        const t0 = performance.now();
        let next = 0;
        return (done: number, total: number) => {
          if (done < next && done < total) return;
          next = done + Math.max(1, Math.floor(total / 50));
          console.error(`features pass: ${done}/${total} rows, ${((performance.now() - t0) / 1000).toFixed(0)} s`);
        };
      })(),
      ...(values.threads ? { threads: Number(values.threads) } : {}),
    })
  : undefined;
if (features) printFeatures(features);
const trainDistributed = wants('train-distributed')
  ? await benchTrainDistributed({ cacheDir, ...(values['train-steps'] ? { steps: Number(values['train-steps']) } : {}), ...(values['train-d-sae'] ? { dSae: Number(values['train-d-sae']) } : {}), ...(values['train-batch'] ? { batch: Number(values['train-batch']) } : {}) })
  : undefined;
if (trainDistributed) printTrainDistributed(trainDistributed);

const service = wants('service') ? await benchService({ ...(values.rounds ? { rounds: Number(values.rounds) } : {}) }) : undefined;
if (service) printService(service);

if (train) {
  const t = train;
  const pct = (x: number) => `${(100 * x).toFixed(0).padStart(3)}% of peak`;
  console.log(`${t.name} (${t.threads} threads; medians of ${t.rounds} rounds x ${t.stepsPerRound} steps; libtorch ${t.torch.ours}, python torch ${t.torch.python}; load average ${t.loadAverage.map((l) => l.toFixed(1)).join(' -> ')})`);
  const gp = t.gemmPeakGflops;
  console.log(`  GEMM peak ${gp.peak.toFixed(0)} GFLOP/s, fp32, best measurement of the run (2048^3: at::mm ${gp.ours.toFixed(0)}, torch.mm ${gp.pytorch.toFixed(0)}; ${t.shape.batch}x${t.shape.dIn}x${t.shape.dSae}: at::mm ${gp.oursStepShape.toFixed(0)}, torch.mm ${gp.pytorchStepShape.toFixed(0)})`);
  for (const a of t.archs) {
    console.log(`  ${a.arch}: ${(a.flopsPerStep / 1e9).toFixed(1)} GFLOP/step counted (ours executes ${(a.oursExecutedFlopsPerStep / 1e9).toFixed(1)}); L0 ${a.l0.toFixed(1)}`);
    for (const s of [a.ours, a.oursBf16, ...a.baselines, ...(a.baselineMatched ? [a.baselineMatched] : [])]) {
      console.log(`    ${s.tokensPerS.toFixed(0).padStart(8)} tokens/s   ${s.msMedian.toFixed(0).padStart(6)} ms/step   ${s.gflops.toFixed(0).padStart(4)} GFLOP/s   ${pct(s.fractionOfPeak)}   ${s.label}`);
    }
    console.log(`    ratio ${a.ratio.toFixed(2)}x fp32, ${a.ratioBf16.toFixed(2)}x with bf16 GEMMs (ours / the faster PyTorch, fp32); bf16 losses within ${a.bf16LossRelDiff.toExponential(1)} of our fp32 run`);
    for (const g of a.agreements) {
      const worst = Math.max(...Object.values(g.params).map((p) => p.relFrobenius));
      console.log(`    agreement, ${g.what}: ${g.steps} steps, losses within ${g.maxLossRelDiff.toExponential(1)} relative, weights within ${worst.toExponential(1)} (relative Frobenius), ${g.sinceFiredMismatches} dead-counter mismatches (${g.ok ? 'ok' : 'FAILED'}; tolerance ${g.tolerance.loss} / ${g.tolerance.params})`);
    }
  }
  for (const [goal, met] of Object.entries(t.goals.met)) console.log(`  goal ${goal}: ${met ? 'met' : 'NOT met'}`);
  if (t.goals.topkVsRelu !== null) console.log(`  topk / relu (ours, dense relu start) ${t.goals.topkVsRelu.fp32.toFixed(2)}x fp32, ${t.goals.topkVsRelu.bf16.toFixed(2)}x bf16`);
  if (t.endToEnd) {
    const e = t.endToEnd;
    console.log(`  end to end: ${e.tokensPerS.toFixed(0)} model tokens/s (${e.layerTokensPerS.toFixed(0)} activation rows/s over ${e.layers} layers; ${e.arch} d_sae ${e.dSae}, batch ${e.batch}; steps ${e.stepMsAll.map((x) => x.toFixed(0)).join(' ')} ms; the model forward alone ${e.forwardMs.toFixed(0)} ms)`);
  }
}

const resultsDir = join(root, 'bench', 'results');
mkdirSync(resultsDir, { recursive: true });
// With --only, the other benchmark's last result is kept.
const latest = join(resultsDir, 'latest.json');
const previous = values.only !== undefined && existsSync(latest) ? (JSON.parse(readFileSync(latest, 'utf8')) as Record<string, unknown>) : {};
writeFileSync(latest, JSON.stringify({ ...previous, date: new Date().toISOString(), ...(forward ? { forward } : {}), ...(concurrency ? { concurrency } : {}), ...(connections ? { connections } : {}), ...(search ? { search } : {}), ...(train ? { train } : {}), ...(llama ? { llama } : {}), ...(graph ? { graph: { ...previous.graph as object, ...graph } } : {}), ...(trainClt ? { trainCrossLayer: trainClt } : {}), ...(features ? { features } : {}), ...(trainDistributed ? { trainDistributed } : {}), ...(service ? { service } : {}) }, null, 2));
