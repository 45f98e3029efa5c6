/**
 * `transcoders demo`: the whole pipeline on the shipped greater-than model, in minutes on a CPU.
 * 1. load the model; 2. train a transcoder for every layer (or load the shipped ones) and evaluate
 * them; 3. search circuits from a valid-minus-invalid end-year logit difference and from the top
 * feature at the last position; 4. the paper's greater-than experiment; 5. an HTML report.
 */
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { writeGraph } from '../circuits/export.js';
import { attribute, findCircuit, type Circuit } from '../circuits/find-circuit.js';
import { nodeId } from '../circuits/graph.js';
import { formatPaths } from '../circuits/render.js';
import { ReplacementModel } from '../circuits/replacement-model.js';
import { writeTokenFile } from '../data/token-file.js';
import { InvalidArgumentError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { loadModel, type Model } from '../models/model.js';
import { evaluate } from '../transcoders/evaluate.js';
import { loadTranscoder } from '../transcoders/formats/index.js';
import { trainTranscoders, type TrainProgress } from '../transcoders/training-run.js';
import type { Transcoder } from '../transcoders/transcoder.js';
import type { TrainOptions } from '../transcoders/step-trainer.js';
import { greaterThanExperiment } from './ablation.js';
import { greaterThanRows, yearTokenIds } from './greater-than.js';
import { featureCards, type FeatureRef } from './features.js';
import { greaterThanPrompt, packedRows, twoDigits } from './tasks.js';
import { renderReport } from './report.js';
import { writeDemoViewer } from './viewer.js';
import { DEMO_MODEL, validationRows } from './train-model.js';
import type { CircuitResult, DemoResult, DemoStage } from './result.js';
import { SHIPPED_MODEL_DIR } from '../models/shipped.js';

export type { CircuitResult, DemoResult, DemoStage } from './result.js';

/** The shipped model (trained by scripts/train-demo-model.mjs). */
export const DEMO_MODEL_DIR = SHIPPED_MODEL_DIR;

/** How the demo trains its transcoders (also how the shipped ones were trained). */
export interface DemoTranscoderSpec extends Pick<TrainOptions, 'lr' | 'l1Coefficient' | 'schedule' | 'warmupSteps' | 'computeDtype'> {
  dSae: number;
  /** Activation rows per layer. */
  tokens: number;
  batchSize: number;
  seed: number;
}

export const DEMO_TRANSCODERS: DemoTranscoderSpec = {
  dSae: 1024,
  tokens: 600_000,
  batchSize: 1024,
  lr: 1e-3,
  l1Coefficient: 2e-3,
  schedule: 'cosineannealingwarmup',
  warmupSteps: 50,
  seed: 0,
};

export interface DemoProgress {
  stage: DemoStage;
  done: number;
  total: number;
  detail?: string;
}

export interface DemoOptions {
  /** Output folder for the report and everything it is made from. */
  out: string;
  /** Model folder (default the shipped models/greater-than). */
  model?: string;
  /** Load the shipped transcoders (`<model>/transcoders/layer_L`) instead of training. */
  pretrained?: boolean;
  /** Overrides of the transcoder training (e.g. fewer tokens for a quick run). */
  transcoders?: Partial<DemoTranscoderSpec>;
  /** Start year of the prompt whose circuit is searched (default 32: "... from the year 1732 to the year 17"). */
  startYear?: number;
  /**
   * MLP layer whose features the greater-than experiment removes (default: the layer carrying most of
   * the logit circuit's feature attribution, which need not be the last).
   */
  experimentLayer?: number;
  /** Search parameters (default iters 3, branches 10). */
  iters?: number;
  branches?: number;
  /** Held-out sequences for the evaluation (default 128). */
  evalSequences?: number;
  onProgress?: (progress: DemoProgress) => void;
}

function circuitResult({ attribution, levels, graph }: Circuit, rootLabel: string): CircuitResult {
  const deepest = [...levels].reverse().find((l) => l.length > 0) ?? [];
  return {
    rootLabel,
    graph: graph!,
    pathsText: formatPaths(attribution, levels),
    topPaths: deepest.map((p) => ({ nodes: p.map(nodeId), positions: p.map((n) => n.position), contribution: p[p.length - 1]!.contrib })),
  };
}

/**
 * Trains a transcoder for every layer of `model` on `spec.tokens` activations of the task mix (from a
 * data seed the model never trained on) into `out/layer_L` (with the log `out/train.jsonl`); the
 * token file is written to `work/` and removed afterwards, as are the checkpoints.
 */
export async function trainDemoTranscoders(
  model: Model,
  spec: DemoTranscoderSpec,
  out: string,
  work: string,
  onProgress?: (p: DemoProgress) => void,
): Promise<{ transcoders: Transcoder[]; steps: number; seconds: number }> {
  const rowsNeeded = Math.ceil(spec.tokens / DEMO_MODEL.seqLen) + 64;
  const tokenFile = join(work, 'tokens.bin');
  mkdirSync(work, { recursive: true });
  const encode = (t: string) => model.tokenize(t, { prependBos: false });
  const source = packedRows(encode, model.config.bosTokenId!, DEMO_MODEL.seqLen, spec.seed + 7_000_001);
  const rows = function* () {
    for (let i = 0; i < rowsNeeded; i++) {
      yield Int32Array.from(source.next().value as number[]);
      if (i % 1000 === 0) onProgress?.({ stage: 'data', done: i, total: rowsNeeded });
    }
    onProgress?.({ stage: 'data', done: rowsNeeded, total: rowsNeeded });
  };
  await writeTokenFile(tokenFile, rows(), { contextSize: DEMO_MODEL.seqLen, tokenizer: join(model.dir, 'tokenizer.json'), bos: 'paper', sources: ['lib/demo/tasks.ts'], documents: rowsNeeded });
  const started = Date.now();
  const result = await trainTranscoders({
    data: { tokenFile, model },
    layers: Array.from({ length: model.config.nLayers }, (_, l) => l),
    arch: 'relu',
    dSae: spec.dSae,
    tokens: spec.tokens,
    batchSize: spec.batchSize,
    lr: spec.lr,
    l1Coefficient: spec.l1Coefficient,
    schedule: spec.schedule,
    warmupSteps: spec.warmupSteps,
    ...(spec.computeDtype ? { computeDtype: spec.computeDtype } : {}),
    totalSteps: Math.floor(spec.tokens / spec.batchSize),
    seed: spec.seed,
    sequencesPerForward: 32,
    out,
    checkpointEveryTokens: spec.tokens,
    logEvery: 5,
    onProgress: (p: TrainProgress) => onProgress?.({
      stage: 'train', done: p.step, total: p.totalSteps,
      detail: p.metrics.map((m) => `L${m.layer} fvu ${m.fvu.toFixed(3)} l0 ${m.l0.toFixed(1)}`).join(' · '),
    }),
  });
  // Keep the final transcoders only: the checkpoints (with Adam state) and the token file can be remade.
  rmSync(join(out, 'checkpoints'), { recursive: true, force: true });
  rmSync(tokenFile, { force: true });
  return { transcoders: result.transcoders, steps: result.steps, seconds: (Date.now() - started) / 1000 };
}

async function loadOrTrain(model: Model, options: DemoOptions, transcodersDir: string, report: (p: DemoProgress) => void): Promise<{ transcoders: Transcoder[]; training: DemoResult['training'] }> {
  if (options.pretrained) {
    const transcoders: Transcoder[] = [];
    for (let l = 0; l < model.config.nLayers; l++) {
      const path = join(transcodersDir, `layer_${l}`);
      if (!existsSync(path)) throw new InvalidArgumentError(`--pretrained: ${path} does not exist (the model folder has no shipped transcoder for layer ${l})`);
      transcoders.push(await loadTranscoder(path));
    }
    return { transcoders, training: null };
  }
  const spec = { ...DEMO_TRANSCODERS, ...options.transcoders };
  const work = join(options.out, 'work');
  const trained = await trainDemoTranscoders(model, spec, transcodersDir, work, report);
  rmSync(work, { recursive: true, force: true });
  return { transcoders: trained.transcoders, training: { seconds: trained.seconds, steps: trained.steps, tokens: spec.tokens } };
}

/** Runs the demo; returns everything the report shows (also written as `demo.json`). */
export async function runDemo(options: DemoOptions): Promise<DemoResult> {
  const out = resolve(options.out);
  const modelDir = resolve(options.model ?? DEMO_MODEL_DIR);
  const startYear = options.startYear ?? 32;
  if (!Number.isInteger(startYear) || startYear < 2 || startYear > 97) throw new InvalidArgumentError(`startYear must be an integer in 2..97, got ${startYear}`);
  const { experimentLayer: chosen } = options;
  if (chosen !== undefined && !Number.isInteger(chosen)) throw new InvalidArgumentError(`experimentLayer must be a layer index, got ${chosen}`);
  mkdirSync(out, { recursive: true });
  const seconds = Object.fromEntries((['data', 'train', 'evaluate', 'circuit', 'experiment', 'features', 'graph', 'report'] as DemoStage[]).map((s) => [s, 0])) as Record<DemoStage, number>;
  let clock = Date.now();
  let current: DemoStage = 'data';
  const report = (p: DemoProgress) => {
    if (p.stage !== current) {
      seconds[current] += (Date.now() - clock) / 1000;
      clock = Date.now();
      current = p.stage;
    }
    options.onProgress?.(p);
  };

  const model = await loadModel(modelDir, { processing: 'transformerlens' });
  try {
    // Fail before any training when the model cannot take the greater-than prompts.
    yearTokenIds(model);
    greaterThanRows(model);
    if (chosen !== undefined && (chosen < 0 || chosen >= model.config.nLayers)) throw new InvalidArgumentError(`experimentLayer ${chosen} is not a layer of the model (0..${model.config.nLayers - 1})`);
    // 1-2. Transcoders, trained or shipped, and their evaluation.
    const transcodersDir = options.pretrained ? join(modelDir, 'transcoders') : join(out, 'transcoders');
    const { transcoders, training } = await loadOrTrain(model, { ...options, out }, transcodersDir, report);
    const replacement = ReplacementModel.create(model, transcoders);
    const evalRows = validationRows(model, DEMO_MODEL, options.evalSequences ?? 128);
    const evaluation = await evaluate(replacement, evalRows, { batchSize: 32, onProgress: (done, total) => report({ stage: 'evaluate', done, total }) });

    // 3. Circuits on "The war lasted from the year 1732 to the year 17".
    report({ stage: 'circuit', done: 0, total: 2 });
    const prompt = greaterThanPrompt('war', 17, startYear);
    const tokens = model.tokenize(prompt);
    const last = tokens.length - 1;
    const search = { ...(options.iters !== undefined ? { iters: options.iters } : {}), ...(options.branches !== undefined ? { branches: options.branches } : {}) };
    const attribution = await attribute(replacement, tokens);
    // The root compares the model's favourite valid end year with its favourite invalid one.
    const { logits } = await model.run([tokens]);
    const V = model.config.vocabSize;
    const lastLogits = logits!.toFloat32Array().subarray(last * V, (last + 1) * V);
    logits!.dispose();
    const yearIds = yearTokenIds(model);
    const startYearPosition = tokens.lastIndexOf(yearIds[startYear]!);
    const argmax = (ns: number[]) => ns.reduce((a, b) => (lastLogits[yearIds[b]!]! > lastLogits[yearIds[a]!]! ? b : a));
    const valid = argmax(Array.from({ length: 99 - startYear }, (_, i) => startYear + 1 + i));
    const invalid = argmax(Array.from({ length: startYear + 1 }, (_, i) => i));
    const logit = await findCircuit(attribution, { kind: 'logit', token: yearIds[valid]!, minus: yearIds[invalid]!, position: last }, search);
    const logitGraph = logit.graph!;
    const logitCircuit = circuitResult(logit, `logit("${twoDigits(valid)}") - logit("${twoDigits(invalid)}") at position ${last}`);
    report({ stage: 'circuit', done: 1, total: 2 });
    // The top transcoder feature at the last position: the one contributing most to that difference.
    const kids = await attribution.children(logit.root, 200, { ignoreBos: true });
    const topKid = kids.find((n) => n.kind === 'feature' && n.position === last);
    if (!topKid) throw new InvalidArgumentError('no transcoder feature at the last position contributes to the logit difference');
    const feature = await findCircuit(attribution, { kind: 'feature', layer: topKid.layer, feature: topKid.feature!, position: last }, search);
    const featureGraph = feature.graph!;
    const featureCircuit = circuitResult(feature, `feature ${topKid.feature} of the layer-${topKid.layer} transcoder at position ${last}`);
    report({ stage: 'circuit', done: 2, total: 2 });

    // 4. The greater-than experiment, removing features of the MLP layer that carries most of the
    // circuit's attribution (candidates: that layer's graph features and the most active ones at
    // the positions where the graph reads them).
    const graphFeatures = logitGraph.nodes.filter((n) => n.kind === 'feature');
    const weightOf = (l: number) => graphFeatures.filter((n) => n.layer === l).reduce((s, n) => s + Math.abs(n.contribution), 0);
    const layers = transcoders.map((t) => t.config.layer);
    const experimentLayer = options.experimentLayer ?? layers.reduce((a, b) => (weightOf(b) > weightOf(a) ? b : a));
    const inLayer = graphFeatures.filter((n) => n.layer === experimentLayer);
    const experiment = await greaterThanExperiment(replacement, {
      layer: experimentLayer,
      include: [...new Set(inLayer.map((n) => n.feature!))],
      // Where the graph reads the layer, or else the last position.
      ...(inLayer.length > 0 ? { positions: [...new Set(inLayer.map((n) => n.position))] } : {}),
      candidates: 32,
      remove: 8,
      onProgress: (done, total) => report({ stage: 'experiment', done, total }),
    });

    // Feature cards: the features of the logit circuit and the most important ones of the experiment.
    report({ stage: 'features', done: 0, total: 1 });
    const via = (id: string) => {
      const target = logitGraph.edges.find((e) => e.source === id && e.target.startsWith('attn'));
      const node = target && logitGraph.nodes.find((n) => n.id === target.target);
      return node?.head !== undefined ? { viaHead: { layer: node.layer, head: node.head } } : {};
    };
    const refs: FeatureRef[] = [
      ...graphFeatures.sort((a, b) => Math.abs(b.contribution) - Math.abs(a.contribution)).slice(0, 8)
        .map((n) => ({ layer: n.layer, feature: n.feature!, position: n.position, reason: `in the circuit graph (${n.id})`, ...via(n.id) })),
      ...(experiment.ablations.at(-1)?.removed ?? []).map((f, i) => {
        const node = inLayer.find((n) => n.feature === f);
        return { layer: experimentLayer, feature: f, position: node?.position ?? last, reason: `greater-than experiment: importance rank ${i + 1}`, ...(node ? via(node.id) : {}) };
      }),
    ];
    const corpusSource = packedRows((t) => model.tokenize(t, { prependBos: false }), model.config.bosTokenId!, DEMO_MODEL.seqLen, 424_242);
    const corpus = Array.from({ length: 512 }, () => corpusSource.next().value as number[]);
    const features = await featureCards(replacement, refs, { corpus });
    report({ stage: 'features', done: 1, total: 1 });

    report({ stage: 'graph', done: 0, total: 1 });
    const viewer = await writeDemoViewer(replacement, {
      out, tokens, valid: yearIds[valid]!, invalid: yearIds[invalid]!, logitCircuit: logitGraph, corpus, tokenizerFile: join(model.dir, 'tokenizer.json'),
    });
    report({ stage: 'graph', done: 1, total: 1 });

    report({ stage: 'report', done: 0, total: 1 });
    const result: DemoResult = {
      out, report: join(out, 'report.html'), model: modelDir, transcodersDir, pretrained: options.pretrained === true,
      prompt, startYear, tokens: tokens.map((id) => model.decode([id])), startYearPosition,
      evaluation, training, logitCircuit, featureCircuit, experiment, features, viewer, seconds,
    };
    writeGraph(logitGraph, { json: join(out, 'graph.json') });
    writeGraph(featureGraph, { json: join(out, 'feature-graph.json') });
    writeFileAtomic(result.report, [renderReport(result)]);
    seconds.report += (Date.now() - clock) / 1000;
    writeFileAtomic(join(out, 'demo.json'), [JSON.stringify(result, null, 1) + '\n']);
    report({ stage: 'report', done: 1, total: 1 });
    return result;
  } finally {
    model.dispose();
  }
}
