/**
 * The service's feature cards: read from a features folder written by `transcoders features`, or,
 * without one, computed on demand: the first request for a layer runs the feature pass over a small
 * corpus for that layer alone (through the job queue, like any heavy job) and writes its cards into a
 * work folder, from which that layer's later requests are read. The corpus is a token file the caller
 * gives, else {@link DEFAULT_CORPUS_ROWS} rows of the demo's templated sentences (lib/demo/tasks.ts),
 * tokenised with the model's tokenizer: enough for top examples and logit effects, not for
 * frequencies a user should quote (docs/service.md says so).
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ReplacementModel } from '../circuits/replacement-model.js';
import { tokenizeToFile } from '../data/tokenize.js';
import { examples } from '../demo/tasks.js';
import { InvalidArgumentError, throwIfCancelled } from '../errors.js';
import { collectFeatureStats, writeFeatureCards } from '../features/dashboards.js';
import { FeatureFiles } from '../features/feature-files.js';

/** Rows of the default on-demand corpus, and their length in tokens. */
export const DEFAULT_CORPUS_ROWS = 128;
export const DEFAULT_CORPUS_CONTEXT = 32;

/** A card that does not exist (the route answers 404 with the message). */
export class NoSuchFeatureError extends InvalidArgumentError {}

export interface OnDemandOptions {
  /** Folder for the corpus and the computed cards (created; the caller removes it). */
  workDir: string;
  /** A token file to compute cards over (default: the templated sentences). */
  tokenFile?: string;
  /** Top examples per feature, and per quantile bucket (default 5). */
  examples?: number;
  scan: string;
}

/** Where cards come from: a folder, or the on-demand pass. */
export interface FeatureCardSource {
  /** 'folder' or 'on-demand'. */
  readonly kind: 'folder' | 'on-demand';
  /** Layers that have (or can compute) cards. */
  readonly layers: number[];
  /** The folder of the compact files circuit-tracer's viewer fetches (a folder source only). */
  readonly folder: FeatureFiles | null;
  /**
   * The card of `feature` of `layer` as stored: zlib-deflated JSON (FeatureFiles.readDeflated);
   * `compute` runs a heavy job (the service's queue). Throws NoSuchFeatureError for a layer or feature
   * that has none.
   */
  card(layer: number, feature: number, compute: <T>(work: (signal: AbortSignal) => Promise<T>) => Promise<T>): Promise<Buffer>;
}

function checkRange(layer: number, feature: number, layers: readonly number[], count: (layer: number) => number): void {
  if (!layers.includes(layer)) throw new NoSuchFeatureError(`no feature cards for layer ${layer} (layers ${layers.join(', ')})`);
  const n = count(layer);
  if (feature >= n) throw new NoSuchFeatureError(`feature ${feature} is out of range [0, ${n}) of layer ${layer}`);
}

/** Cards read from a features folder. */
export function folderCards(dir: string): FeatureCardSource {
  const files = new FeatureFiles(dir);
  return {
    kind: 'folder',
    layers: files.layers,
    folder: files,
    card: async (layer, feature) => {
      checkRange(layer, feature, files.layers, (l) => files.features(l));
      return files.readDeflated(layer, feature);
    },
  };
}

/** Cards computed per layer on first request (see the module comment). */
export function onDemandCards(replacement: ReplacementModel, options: OnDemandOptions): FeatureCardSource {
  const layers = replacement.layers;
  const perLayer = new Map<number, Promise<FeatureFiles>>();
  let corpus: Promise<string> | null = null;
  const tokenFile = (): Promise<string> => (corpus ??= options.tokenFile ? Promise.resolve(options.tokenFile) : writeDefaultCorpus(replacement, options.workDir));

  const computeLayer = (layer: number, compute: <T>(work: (signal: AbortSignal) => Promise<T>) => Promise<T>): Promise<FeatureFiles> => {
    let files = perLayer.get(layer);
    if (!files) {
      files = compute(async (signal) => {
        const file = await tokenFile();
        const pass = await collectFeatureStats(replacement, file, { layers: [layer], examples: options.examples ?? 5, quantiles: 3, signal });
        throwIfCancelled(signal); // a stopped pass returns what it has: not cards to keep
        const dir = join(options.workDir, `layer_${layer}`);
        await writeFeatureCards(replacement, pass, dir, { scan: options.scan });
        return new FeatureFiles(dir);
      });
      perLayer.set(layer, files);
      // A failed or stopped computation is forgotten: the next request tries again.
      files.catch(() => perLayer.delete(layer));
    }
    return files;
  };

  return {
    kind: 'on-demand',
    layers,
    folder: null,
    card: async (layer, feature, compute) => {
      checkRange(layer, feature, layers, (l) => replacement.featureCount(l));
      return (await computeLayer(layer, compute)).readDeflated(layer, feature);
    },
  };
}

/** The default corpus as a token file in `workDir` (rows of DEFAULT_CORPUS_CONTEXT tokens, or the model's context if shorter). */
async function writeDefaultCorpus(replacement: ReplacementModel, workDir: string): Promise<string> {
  const model = replacement.model;
  if (!model.tokenizer) throw new InvalidArgumentError(`${model.dir} has no tokenizer.json: give the service a token file to compute feature cards over (--corpus)`);
  mkdirSync(workDir, { recursive: true });
  const text = join(workDir, 'corpus.jsonl');
  const out = join(workDir, 'corpus.safetensors');
  if (existsSync(out)) return out;
  const contextSize = Math.min(DEFAULT_CORPUS_CONTEXT, model.config.nCtx);
  // More sentences than the rows need (a sentence is 10-20 tokens); tokenizeToFile stops at maxRows.
  const sentences = examples(20261203);
  const lines: string[] = [];
  for (let i = 0; i < DEFAULT_CORPUS_ROWS * 4; i++) lines.push(JSON.stringify({ text: sentences.next().value as string }));
  writeFileSync(text, lines.join('\n') + '\n');
  await tokenizeToFile([text], model.tokenizer, out, {
    contextSize, bos: model.config.defaultPrependBos ? 'paper' : 'none', minRows: 1, maxRows: DEFAULT_CORPUS_ROWS,
  });
  return out;
}
