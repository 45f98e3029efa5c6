/**
 * `transcoders features`: feature dashboards for every feature of every layer, from one streaming pass
 * over a corpus, written in the compact layout circuit-tracer's viewer and Neuronpedia read
 * (lib/features/). Resumable: the pass checkpoints into OUT/.pass and `--resume` continues it.
 */
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { collectFeatureStats, writeFeatureCards } from '../features/dashboards.js';
import { FEATURE_INDEX_FILE } from '../features/feature-files.js';
import { InvalidArgumentError } from '../errors.js';
import {
  applyThreads, checkInputPaths, checkModelArgument, checkOutputPaths, checkTranscoderArguments, DEVICE_OPTION, intOption, listOption, THREADS_OPTION, type Command,
} from './command.js';
import { CONTEXT_SIZE_OPTION, parseLayers, withTokenFile } from './data.js';
import { ProgressBar } from './progress.js';
import { loadModelWithTranscoders } from './transcoder-paths.js';

export const PASS_FOLDER = '.pass';

export const featuresCommand: Command = {
  name: 'features',
  summary: 'Feature dashboards: top-activating contexts, quantile examples, histograms and logit effects of every feature.',
  usage: 'features <model-dir> --transcoders PATH --data CORPUS --out DIR [--tokens N] [--examples K] [options]',
  details: 'One pass over the corpus (rows of --context-size tokens are the contexts) computes, per feature of every layer:\n' +
    'the K top-activating contexts, a uniform sample of its activating contexts split into --quantiles buckets (K shown\n' +
    'each), the activation of every token of each context, a histogram, the firing frequency, min/max, the top and bottom\n' +
    'logits (decoder . unembedding) and, for layer 0, the de-embedding. Memory grows with features x examples, not the\n' +
    'corpus. Writes DIR/index.json.gz and DIR/layer_L.bin (circuit-tracer\'s compact feature layout: serve DIR as\n' +
    '/features/), DIR/features.json, and with --json every card as DIR/json/layer_L/F.json. The pass checkpoints into\n' +
    `DIR/${PASS_FOLDER} (removed once the cards are written); --resume continues a stopped run. See docs/features.md.`,
  arguments: [{ name: 'model-dir', required: true }],
  options: {
    transcoders: { type: 'string', value: 'PATH', description: 'transcoders (a train output folder, a set, paths, or a cross-layer transcoder)', multiple: true, required: true },
    data: { type: 'string', value: 'PATH', description: 'text (.txt/.jsonl, files or folders) or a token file', multiple: true, required: true },
    out: { type: 'string', short: 'o', value: 'DIR', description: 'output folder', required: true },
    tokens: { type: 'string', value: 'N', description: 'read at most N tokens of the corpus (default: all)' },
    examples: { type: 'string', value: 'K', description: 'top-activating contexts per feature, and examples per quantile bucket (default 10)' },
    quantiles: { type: 'string', value: 'Q', description: 'quantile buckets below the top examples (default 4)' },
    bins: { type: 'string', value: 'N', description: 'histogram bins, a power of two (default 64)' },
    logits: { type: 'string', value: 'N', description: 'tokens in the top/bottom logit lists (default 10)' },
    layers: { type: 'string', value: 'L,..', description: 'layers to describe (default: every layer with a transcoder)' },
    'context-size': CONTEXT_SIZE_OPTION,
    'batch-rows': { type: 'string', value: 'N', description: 'contexts per model forward (default 8)' },
    scan: { type: 'string', value: 'NAME', description: 'transcoder id for the viewers (default: the model folder name)' },
    seed: { type: 'string', value: 'S', description: 'seed of the quantile sample (default 0)' },
    json: { type: 'boolean', description: 'also write one JSON file per feature' },
    resume: { type: 'boolean', description: 'continue the stopped pass in DIR' },
    processing: { type: 'string', value: 'P', description: 'override the model processing (none, transformerlens)' },
    quiet: { type: 'boolean', short: 'q', description: 'no progress bar' },
    device: DEVICE_OPTION,
    threads: THREADS_OPTION,
  },
  async run(values, positionals) {
    applyThreads(values);
    const modelDir = checkModelArgument(positionals[0], 'model-dir')!;
    checkTranscoderArguments(values, 'transcoders');
    checkInputPaths(values, ['data']);
    checkOutputPaths(values, { out: 'folder' });
    const out = resolve(values.out as string);
    const passDir = join(out, PASS_FOLDER);
    if (values.resume === true && !existsSync(join(passDir, 'pass.json'))) throw new InvalidArgumentError(`--resume: ${out} holds no stopped pass (${passDir}/pass.json)`);
    if (values.resume !== true && existsSync(join(out, FEATURE_INDEX_FILE))) throw new InvalidArgumentError(`${out} already holds feature cards (${FEATURE_INDEX_FILE}); use another folder`);
    const numbers = {
      maxTokens: intOption(values.tokens, 'tokens', 1),
      examples: intOption(values.examples, 'examples', 1),
      quantiles: intOption(values.quantiles, 'quantiles', 1),
      bins: intOption(values.bins, 'bins', 1),
      logits: intOption(values.logits, 'logits', 1),
      batchRows: intOption(values['batch-rows'], 'batch-rows', 1),
      seed: intOption(values.seed, 'seed', 0),
    };
    if (numbers.bins !== undefined && (numbers.bins & (numbers.bins - 1)) !== 0) throw new InvalidArgumentError(`--bins must be a power of two, got ${numbers.bins}`);
    const { replacement, model } = await loadModelWithTranscoders(values, modelDir);
    const layers = values.layers !== undefined ? parseLayers(values.layers as string, model.config.nLayers) : undefined;
    mkdirSync(out, { recursive: true });
    const data = listOption(values, 'data');
    await withTokenFile(model, data, values['context-size'], out, async (tokenFile) => {
      const bar = values.quiet ? null : new ProgressBar('features: pass', 1, ' contexts');
      let barFor: ProgressBar | null = null;
      const controller = new AbortController();
      const onSignal = () => {
        (barFor ?? bar)?.close();
        process.stderr.write('stopping after the current batch (the pass is saved; continue with --resume)...\n');
        controller.abort();
      };
      process.once('SIGINT', onSignal);
      let pass;
      try {
        pass = await collectFeatureStats(replacement, tokenFile, {
          ...(layers ? { layers } : {}),
          ...Object.fromEntries(Object.entries(numbers).filter(([k, v]) => v !== undefined && k !== 'logits')),
          checkpointDir: passDir,
          resume: values.resume === true,
          signal: controller.signal,
          onProgress: (done, total) => {
            if (values.quiet) return;
            barFor ??= new ProgressBar('features: pass', total, ' contexts');
            barFor.update(done);
          },
        });
      } finally {
        process.off('SIGINT', onSignal);
        (barFor ?? bar)?.close();
      }
      if (controller.signal.aborted) {
        console.log(`stopped after ${pass.rows} contexts; continue with --resume`);
        return;
      }
      let cardBar: ProgressBar | null = null;
      await writeFeatureCards(replacement, pass, out, {
        ...(typeof values.scan === 'string' ? { scan: values.scan } : {}),
        ...(numbers.logits !== undefined ? { logits: numbers.logits } : {}),
        json: values.json === true,
        onProgress: (layer, done, total) => {
          if (values.quiet) return;
          cardBar ??= new ProgressBar('features: cards', pass.layers.length * total, ' cards');
          cardBar.update(pass.layers.indexOf(layer) * total + done, `layer ${layer}`);
        },
      });
      (cardBar as ProgressBar | null)?.close();
      // The pass's state (features x examples x context floats) is no longer needed once the cards are written.
      rmSync(passDir, { recursive: true, force: true });
      const features = pass.layers.reduce((a, l) => a + replacement.featureCount(l), 0);
      console.log(`wrote ${features} feature cards (${pass.layers.length} layers, ${pass.rows * pass.context} tokens) to ${out}`);
    });
  },
};
