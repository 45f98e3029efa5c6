/**
 * Trains the demo language model from scratch with the project's own runtime: a GPT-2-architecture
 * model in Hugging Face layout, Adam on the next-token cross-entropy backpropagated through the same
 * forward pass that inference uses (Model.train), on the templated task text of tasks.ts.
 * Deterministic from the seed: the initial weights, the data and the schedule all derive from it.
 */
import { join } from 'node:path';
import { InvalidArgumentError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { loadModel, type Model } from '../models/model.js';
import { createRandomModel } from '../models/random.js';
import { saveModel } from '../models/save.js';
import { getNumThreads } from '../runtime.js';
import { greaterThan } from './greater-than.js';
import { packedRows } from './tasks.js';
import { demoTokenizerJson } from './tokenizer.js';

export interface DemoModelSpec {
  nLayers: number;
  dModel: number;
  nHeads: number;
  dMlp: number;
  /** Context length of the model (n_positions). */
  nCtx: number;
  /** Tokens per training row. */
  seqLen: number;
  /** Rows per Adam step. */
  batchSize: number;
  steps: number;
  /** Peak learning rate, reached after `warmupSteps`, then cosine decay to `lr * minLrFraction`. */
  lr: number;
  warmupSteps: number;
  minLrFraction: number;
  maxGradNorm: number;
  seed: number;
}

/** The shipped model (models/greater-than). */
export const DEMO_MODEL: DemoModelSpec = {
  nLayers: 3,
  dModel: 128,
  nHeads: 4,
  dMlp: 512,
  nCtx: 64,
  seqLen: 32,
  batchSize: 64,
  steps: 3000,
  lr: 3e-3,
  warmupSteps: 100,
  minLrFraction: 0.1,
  maxGradNorm: 1,
  seed: 1,
};

export interface TrainingLog {
  spec: DemoModelSpec;
  vocabSize: number;
  threads: number;
  /** Mean training loss over each `logEvery` steps, at the last step of the window. */
  curve: { step: number; loss: number; lr: number }[];
  /** Greater-than metrics and held-out loss at evaluation steps. */
  evals: { step: number; validationLoss: number; meanProbDiff: number; meanValidMass: number }[];
  seconds: number;
}

export interface TrainDemoModelOptions {
  /** Steps between curve points (default 25). */
  logEvery?: number;
  /** Steps between evaluations (default 250; the last step is always evaluated). */
  evalEvery?: number;
  onProgress?: (step: number, totalSteps: number, loss: number) => void;
}

/** Learning rate at `step` (0-based): linear warm-up, then cosine decay. */
export function learningRate(spec: DemoModelSpec, step: number): number {
  if (step < spec.warmupSteps) return (spec.lr * (step + 1)) / spec.warmupSteps;
  const progress = (step - spec.warmupSteps) / Math.max(1, spec.steps - spec.warmupSteps);
  const cosine = 0.5 * (1 + Math.cos(Math.PI * Math.min(1, progress)));
  return spec.lr * (spec.minLrFraction + (1 - spec.minLrFraction) * cosine);
}

/** Held-out rows (a data seed the training never uses). */
export function validationRows(model: Model, spec: DemoModelSpec, count = 256): number[][] {
  const rows: number[][] = [];
  for (const row of packedRows((t) => model.tokenize(t, { prependBos: false }), model.config.bosTokenId!, spec.seqLen, spec.seed + 1_000_003)) {
    rows.push(row);
    if (rows.length === count) break;
  }
  return rows;
}

/**
 * Creates `dir` (config.json, tokenizer.json, model.safetensors, training.json) and trains the model
 * in it. Returns the training log (also written to `training.json`).
 */
export async function trainDemoModel(dir: string, spec: DemoModelSpec = DEMO_MODEL, options: TrainDemoModelOptions = {}): Promise<TrainingLog> {
  if (spec.seqLen > spec.nCtx) throw new InvalidArgumentError(`seqLen ${spec.seqLen} exceeds nCtx ${spec.nCtx}`);
  const logEvery = options.logEvery ?? 25;
  const evalEvery = options.evalEvery ?? 250;
  const started = Date.now();
  const tokenizer = demoTokenizerJson() as { model: { vocab: object } };
  createRandomModel(dir, {
    arch: 'gpt2',
    nLayers: spec.nLayers,
    dModel: spec.dModel,
    nHeads: spec.nHeads,
    dMlp: spec.dMlp,
    nCtx: spec.nCtx,
    vocabSize: Object.keys(tokenizer.model.vocab).length,
    activation: 'gelu_new',
    tokenizer,
    init: 'gpt2',
    seed: spec.seed,
  });
  const model = await loadModel(dir);
  try {
    const encode = (text: string) => model.tokenize(text, { prependBos: false });
    const data = packedRows(encode, model.config.bosTokenId!, spec.seqLen, spec.seed);
    const validation = validationRows(model, spec);
    const log: TrainingLog = { spec, vocabSize: model.config.vocabSize, threads: getNumThreads(), curve: [], evals: [], seconds: 0 };
    const evaluateAt = async (step: number) => {
      const gt = await greaterThan(model);
      log.evals.push({ step, validationLoss: await model.loss(validation), meanProbDiff: gt.meanProbDiff, meanValidMass: gt.meanValidMass });
    };
    let window: number[] = [];
    for (let step = 0; step < spec.steps; step++) {
      const batch = Array.from({ length: spec.batchSize }, () => data.next().value as number[]);
      const lr = learningRate(spec, step);
      const [loss] = await model.train([batch], { lr, maxGradNorm: spec.maxGradNorm, beta1: 0.9, beta2: 0.99 });
      window.push(loss!);
      if ((step + 1) % logEvery === 0 || step + 1 === spec.steps) {
        log.curve.push({ step: step + 1, loss: window.reduce((a, b) => a + b, 0) / window.length, lr });
        window = [];
      }
      if ((step + 1) % evalEvery === 0 || step + 1 === spec.steps) await evaluateAt(step + 1);
      options.onProgress?.(step + 1, spec.steps, loss!);
    }
    saveModel(model, dir);
    log.seconds = (Date.now() - started) / 1000;
    writeFileAtomic(join(dir, 'training.json'), [JSON.stringify(log, null, 1) + '\n']);
    return log;
  } finally {
    model.dispose();
  }
}

