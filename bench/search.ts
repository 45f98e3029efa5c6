/**
 * Greedy path search (paper-method.md §3.5) on the GPT-2-small-sized random model of
 * bench/forward.ts with a random ReLU transcoder of 24576 features at every layer: one ~20-token
 * prompt, the most active layer-8 feature at the last position as the root, 3 iterations x 15
 * branches, raw attributions. Times the setup (Attribution.create: the cached forward and every
 * transcoder) and the search (greedyPaths) separately, against the PyTorch eager baseline
 * (bench/search_baseline.py) on the same weights, in alternating rounds with the same thread count,
 * and checks that both find the same final beam, and the same beam at every earlier iteration
 * (same node ids in the same order, contributions within 1e-3 relative); throws if not.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { nodeId } from '../lib/circuits/graph.js';
import { attribute, findCircuit } from '../lib/circuits/find-circuit.js';
import { ReplacementModel } from '../lib/circuits/replacement-model.js';
import { isTerminal, type Path } from '../lib/circuits/search.js';
import { getNumThreads, loadModel, setNumThreads, Tensor, torchInfo, type Model } from '../lib/index.js';
import { loadSafetensorsTensors, readSafetensorsHeader, writeSafetensors } from '../lib/io/safetensors.js';
import { mlpHooks, type TranscoderConfig } from '../lib/transcoders/config.js';
import { Transcoder } from '../lib/transcoders/transcoder.js';
import { Rng } from '../lib/util/random.js';
import { benchModel } from './forward.js';

/** As in bench/forward.ts: PyTorch as a user runs it, and with libgomp's spinning threads made passive. */
const BASELINES = [
  { label: 'pytorch', env: {} },
  { label: 'pytorch OMP_WAIT_POLICY=PASSIVE', env: { OMP_WAIT_POLICY: 'PASSIVE' } },
] as const;

/** Bump when the generated files change meaning, so stale caches are regenerated. */
const FILES_VERSION = 2;
const TRANSCODER_PARAMS = ['W_enc', 'b_enc', 'W_dec', 'b_dec', 'b_dec_out'] as const;

export interface SearchBaselineResult {
  label: string;
  setupMs: number;
  searchMs: number;
  /** Every timed repeat. */
  setupMsAll: number[];
  searchMsAll: number[];
}

export interface SearchBenchResult {
  name: string;
  threads: number;
  iters: number;
  branches: number;
  dSae: number;
  tokens: number[];
  root: string;
  /** Mean number of active transcoder features per token and layer on the prompt. */
  activePerToken: number;
  /** children() calls per search. */
  childrenCalls: number;
  /** Medians: Attribution.create (forward, caches, every transcoder) and featureRoot + greedyPaths. */
  oursSetupMs: number;
  oursSearchMs: number;
  /** Every timed repeat. */
  oursSetupMsAll: number[];
  oursSearchMsAll: number[];
  baselines: SearchBaselineResult[];
  /** The fastest baseline's times. */
  pytorchSetupMs: number;
  pytorchSearchMs: number;
  /** PyTorch search time / ours (> 1: ours is faster), against the fastest baseline. */
  ratio: number;
  /** The same for the setup. */
  setupRatio: number;
  /** Both sides found the same beams, the final one and every earlier one (the benchmark throws otherwise). */
  beamsMatch: true;
  /** Largest relative difference of a beam node's contribution between the two sides. */
  maxRelDiff: number;
  /** The final beam: node ids root first, and the path's attribution. */
  beam: { path: string[]; contrib: number }[];
  torch: { ours: string; python: string };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function transcoderConfig(model: Model, layer: number, dSae: number): Partial<TranscoderConfig> {
  const d = model.config.dModel;
  return { arch: 'relu', dIn: d, dOut: d, dSae, layer, ...mlpHooks(layer), processing: 'transformerlens' };
}

interface FilesSpec {
  version: number;
  dSae: number;
  activePerToken: number;
  tokens: number[];
}

/**
 * Writes the baseline's inputs into `dir` once: the processed model's weights under TransformerLens
 * names, its config, and random transcoders (Transcoder.create's init) whose encoder bias is shifted
 * down so that about `activePerToken` features per token are active on the prompt, and whose decoder
 * is scaled so that the transcoder's output has the norm of the MLP output it stands for (as a trained
 * transcoder's would; with unit decoder rows the features' contributions are negligible next to
 * attention's and no search path would go through a feature).
 */
async function ensureFiles(dir: string, model: Model, spec: FilesSpec): Promise<void> {
  const specPath = join(dir, 'spec.json');
  if (existsSync(specPath) && readFileSync(specPath, 'utf8') === JSON.stringify(spec)) return;
  console.error(`writing ${dir} (the search benchmark's model and ${model.config.nLayers} transcoders of ${spec.dSae} features)...`);
  mkdirSync(dir, { recursive: true });
  const c = model.config;
  writeSafetensors(join(dir, 'model.safetensors'), Object.fromEntries(model.weightNames().map((n) => [n, model.weight(n)])));
  writeFileSync(join(dir, 'cfg.json'), JSON.stringify({
    n_layers: c.nLayers, d_model: c.dModel, n_heads: c.nHeads, d_head: c.dHead, d_mlp: c.dMlp, n_ctx: c.nCtx, vocab: c.vocabSize, eps: c.lnEps,
  }));
  const hooks = Array.from({ length: c.nLayers }, (_, l) => mlpHooks(l));
  const { cache } = await model.run([spec.tokens], { cache: hooks.flatMap((h) => [h.hookIn, h.hookOut]), logits: false });
  const T = spec.tokens.length;
  const d = c.dModel;
  const m = spec.dSae;
  const tensors: Record<string, Tensor> = {};
  for (let l = 0; l < c.nLayers; l++) {
    const tc = await Transcoder.create(transcoderConfig(model, l, spec.dSae), { seed: 1000 + l });
    const p = tc.parameters();
    // With f0 = relu(pre + b0), b_enc = b0 - thr keeps the features with pre + b0 > thr: the top
    // activePerToken x T of the prompt's (pre + b0) values, so activePerToken per token on average.
    const f0 = (await tc.encode(cache[hooks[l]!.hookIn]!)).toFloat32Array();
    const sorted = Float32Array.from(f0).sort().reverse();
    const thr = sorted[spec.activePerToken * T]!;
    if (!(thr > 0)) throw new Error(`layer ${l}: fewer than ${spec.activePerToken} features per token are active at init`);
    const b0 = p.b_enc.toFloat32Array();
    tensors[`${l}.b_enc`] = Tensor.from(Float32Array.from(b0, (b) => b - thr), [m]);
    // The shifted transcoder's activations are relu(f0 - thr); its output (b_dec_out = 0) is f W_dec.
    const Wdec = p.W_dec.toFloat32Array();
    const mlpOut = cache[hooks[l]!.hookOut]!.toFloat32Array();
    let outNorm = 0;
    let mlpNorm = 0;
    for (let t = 0; t < T; t++) {
      const out = new Float64Array(d);
      for (let i = 0; i < m; i++) {
        const a = f0[t * m + i]! - thr;
        if (a > 0) for (let j = 0; j < d; j++) out[j]! += a * Wdec[i * d + j]!;
      }
      outNorm += Math.hypot(...out);
      mlpNorm += Math.hypot(...mlpOut.subarray(t * d, (t + 1) * d));
    }
    const scale = mlpNorm / outNorm;
    console.error(`  layer ${l}: encoder bias shifted by -${thr.toPrecision(3)}, decoder scaled by ${scale.toPrecision(3)}`);
    tensors[`${l}.W_dec`] = Tensor.from(Wdec.map((w) => w * scale), [m, d]);
    for (const name of TRANSCODER_PARAMS) if (name !== 'b_enc' && name !== 'W_dec') tensors[`${l}.${name}`] = p[name];
  }
  writeSafetensors(join(dir, 'transcoders.safetensors'), tensors);
  for (const t of Object.values(cache)) t.dispose();
  writeFileSync(specPath, JSON.stringify(spec));
}

async function loadTranscoders(path: string, model: Model, dSae: number): Promise<Transcoder[]> {
  const header = readSafetensorsHeader(path);
  const out: Transcoder[] = [];
  for (let l = 0; l < model.config.nLayers; l++) {
    const t = await loadSafetensorsTensors(header, TRANSCODER_PARAMS.map((n) => `${l}.${n}`));
    out.push(await Transcoder.fromParameters(transcoderConfig(model, l, dSae), Object.fromEntries(TRANSCODER_PARAMS.map((n) => [n, t[`${l}.${n}`]!]))));
    for (const x of Object.values(t)) x.dispose();
  }
  return out;
}

type PyPath = [string, number][];

/** Same node ids in the same order, contributions within `tol` relative; returns the largest relative difference. */
function compareBeams(ours: Path[], theirs: PyPath[], tol: number, what: string): number {
  const show = (p: string[]) => p.join(' <- ');
  if (ours.length !== theirs.length) throw new Error(`search beams differ (${what}): ours has ${ours.length} paths, PyTorch ${theirs.length}`);
  let maxRel = 0;
  ours.forEach((path, i) => {
    const a = path.map(nodeId);
    const b = theirs[i]!.map(([id]) => id);
    if (show(a) !== show(b)) throw new Error(`search beams differ (${what}) at path ${i}:\n  ours    ${show(a)}\n  pytorch ${show(b)}`);
    path.forEach((n, j) => {
      const x = n.contrib;
      const y = theirs[i]![j]![1];
      const rel = Math.abs(x - y) / Math.max(Math.abs(x), Math.abs(y), 1e-12);
      if (rel > tol) throw new Error(`search beams differ (${what}) at path ${i}, node ${a[j]}: contribution ${x} (ours) vs ${y} (PyTorch)`);
      maxRel = Math.max(maxRel, rel);
    });
  });
  return maxRel;
}

/**
 * Alternates rounds of ours and PyTorch (`rounds` each; each round: `warmup` + `repeats` setups
 * and searches) and reports medians over all timed repeats.
 */
export async function benchSearch(options: {
  cacheDir: string;
  iters?: number;
  branches?: number;
  threads?: number;
  rounds?: number;
  repeats?: number;
  warmup?: number;
  /** Transcoder width (default 24576, 32 x d_model). */
  dSae?: number;
  /** Layer of the root feature (default 8). */
  rootLayer?: number;
  /** Prompt length (default 20). */
  seq?: number;
}): Promise<SearchBenchResult> {
  const iters = options.iters ?? 3;
  const branches = options.branches ?? 15;
  const rounds = options.rounds ?? 2;
  const repeats = options.repeats ?? 5;
  const warmup = options.warmup ?? 1;
  const dSae = options.dSae ?? 24576;
  const seq = options.seq ?? 20;
  const threads = options.threads ?? getNumThreads();
  setNumThreads(threads);

  const model = await loadModel(benchModel(options.cacheDir), { processing: 'transformerlens' });
  const rootLayer = Math.min(options.rootLayer ?? 8, model.config.nLayers - 1);
  // A fixed prompt: BOS, then random token ids.
  const rng = new Rng(20240611);
  const tokens = [model.config.bosTokenId ?? 0, ...Array.from({ length: seq - 1 }, () => rng.int(model.config.vocabSize))];
  const dir = join(options.cacheDir, `search-gpt2-small-random-tc${dSae}`);
  await ensureFiles(dir, model, { version: FILES_VERSION, dSae, activePerToken: 50, tokens });
  const replacement = ReplacementModel.create(model, await loadTranscoders(join(dir, 'transcoders.safetensors'), model, dSae));

  // The root: the most active feature of the root layer at the last position.
  const position = tokens.length - 1;
  const first = await attribute(replacement, tokens);
  const acts = first.activations(rootLayer).toFloat32Array();
  let feature = 0;
  for (let i = 1; i < dSae; i++) if (acts[position * dSae + i]! > acts[position * dSae + feature]!) feature = i;
  let active = 0;
  for (let l = 0; l < model.config.nLayers; l++) active += first.activations(l).toFloat32Array().reduce((n, a) => n + (a > 0 ? 1 : 0), 0);
  const activePerToken = active / (model.config.nLayers * tokens.length);

  const setupMs: number[] = [];
  const searchMs: number[] = [];
  const theirs = BASELINES.map(() => ({ setup: [] as number[], search: [] as number[] }));
  let levels: Path[][] = [];
  let pythonTorch = '';
  let maxRelDiff = 0;
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < warmup + repeats; i++) {
      const t0 = performance.now();
      const attribution = await attribute(replacement, tokens);
      const t1 = performance.now();
      levels = (await findCircuit(attribution, { kind: 'feature', layer: rootLayer, feature, position }, { iters, branches, graph: false })).levels;
      const t2 = performance.now();
      if (i >= warmup) {
        setupMs.push(t1 - t0);
        searchMs.push(t2 - t1);
      }
    }
    BASELINES.forEach((baseline, b) => {
      const python = spawnSync(
        process.env.TRANSCODERS_BENCH_PYTHON ?? '/usr/bin/python3',
        [
          new URL('./search_baseline.py', import.meta.url).pathname,
          join(dir, 'model.safetensors'), join(dir, 'cfg.json'), join(dir, 'transcoders.safetensors'),
          '--tokens', tokens.join(','), '--layer', String(rootLayer), '--feature', String(feature), '--position', String(position),
          '--iters', String(iters), '--branches', String(branches), '--threads', String(threads),
          '--warmup', String(warmup), '--repeats', String(repeats),
        ],
        { encoding: 'utf8', env: { ...process.env, ...baseline.env }, maxBuffer: 64 * 1024 * 1024 },
      );
      if (python.status !== 0) throw new Error(`search_baseline.py failed: ${python.stderr}`);
      const py = JSON.parse(python.stdout.trim().split('\n').pop()!) as { ms_forward_and_cache_all: number[]; ms_search_all: number[]; paths: PyPath[]; levels: PyPath[][]; torch: string };
      theirs[b]!.setup.push(...py.ms_forward_and_cache_all);
      theirs[b]!.search.push(...py.ms_search_all);
      pythonTorch = py.torch;
      // The final beam as the benchmark defines it, and every earlier iteration's beam as well.
      maxRelDiff = Math.max(maxRelDiff, compareBeams(levels.at(-1)!, py.paths, 1e-3, 'final beam'));
      levels.forEach((beam, it) => (maxRelDiff = Math.max(maxRelDiff, compareBeams(beam, py.levels[it] ?? [], 1e-3, `iteration ${it + 1}`))));
    });
  }
  model.dispose();

  // children() calls per search: the root, then every non-terminal leaf of each beam but the last.
  const childrenCalls = 1 + levels.slice(0, -1).reduce((n, beam) => n + beam.filter((p) => !isTerminal(p.at(-1)!)).length, 0);
  const baselines = BASELINES.map(({ label }, b) => ({
    label, setupMs: median(theirs[b]!.setup), searchMs: median(theirs[b]!.search), setupMsAll: theirs[b]!.setup, searchMsAll: theirs[b]!.search,
  }));
  const pytorchSetupMs = Math.min(...baselines.map((b) => b.setupMs));
  const pytorchSearchMs = Math.min(...baselines.map((b) => b.searchMs));
  const oursSetupMs = median(setupMs);
  const oursSearchMs = median(searchMs);
  return {
    name: `greedy search gpt2-small + 12x${dSae} transcoders, ${tokens.length} tokens, ${iters} iters x ${branches} branches, cpu`,
    threads,
    iters,
    branches,
    dSae,
    tokens,
    root: `mlp${rootLayer}[${feature}]@${position}`,
    activePerToken,
    childrenCalls,
    oursSetupMs,
    oursSearchMs,
    oursSetupMsAll: setupMs,
    oursSearchMsAll: searchMs,
    baselines,
    pytorchSetupMs,
    pytorchSearchMs,
    ratio: pytorchSearchMs / oursSearchMs,
    setupRatio: pytorchSetupMs / oursSetupMs,
    beamsMatch: true,
    maxRelDiff,
    beam: levels.at(-1)!.map((p) => ({ path: p.map(nodeId), contrib: p.at(-1)!.contrib })),
    torch: { ours: torchInfo().version, python: pythonTorch },
  };
}
