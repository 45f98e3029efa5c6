/** `transcoders eval`: reconstruction, sparsity and spliced next-token loss of transcoders on a model. */
import { InvalidArgumentError } from '../errors.js';
import { hasLlamaLayout, readModelConfig } from '../models/config.js';
import { resolveModelSource } from '../io/hf-cache.js';
import { loadModel, PROCESSINGS } from '../models/model.js';
import { evaluate } from '../transcoders/evaluate.js';
import { evaluateCrossLayer } from '../transcoders/evaluate-cross-layer.js';
import { crossLayerFolder, loadCrossLayerTranscoder } from '../transcoders/formats/cross-layer.js';
import { DEVICE_OPTION, applyThreads, THREADS_OPTION, checkInputPaths, checkModelArgument, checkTranscoderArguments, choiceOption, intOption, listOption, type Command } from './command.js';
import { CONTEXT_SIZE_OPTION, tokenRowsFor } from './data.js';
import { ProgressBar } from './progress.js';
import { loadModelWithTranscoders } from './transcoder-paths.js';

export const evalCommand: Command = {
  name: 'eval',
  summary: 'Evaluate transcoders: L0, MSE, FVU, dead/dense features, CE loss with the MLPs replaced, CE loss recovered, KL.',
  usage: 'eval <model-dir> --transcoders PATH... --data PATH [--sequences N] [--json]',
  details: 'PATH may be a transcoder in any supported format or a `train` output folder (its layer_L subfolders).\n' +
    'The model is loaded with the processing the transcoders record (default transformerlens).\n' +
    'A cross-layer transcoder (native or circuit-tracer folder, or a train output with clt/) replaces every MLP at once:\n' +
    'per-layer FVU (of each MLP output) and L0 (of each source layer), CE with all replaced, KL.',
  arguments: [{ name: 'model-dir', required: true }],
  options: {
    transcoders: { type: 'string', value: 'PATH', description: 'transcoders to evaluate (repeat or comma-separate)', multiple: true, required: true },
    data: { type: 'string', value: 'PATH', description: 'text (.txt/.jsonl) or a token file', multiple: true, required: true },
    sequences: { type: 'string', value: 'N', description: 'sequences to evaluate on (default 64)' },
    'context-size': CONTEXT_SIZE_OPTION,
    'batch-size': { type: 'string', value: 'N', description: 'sequences per forward pass (default 8)' },
    processing: { type: 'string', value: 'P', description: 'override the model processing' },
    json: { type: 'boolean', description: 'print JSON' },
    device: DEVICE_OPTION,
    threads: THREADS_OPTION,
  },
  async run(values, positionals) {
    applyThreads(values);
    const data = listOption(values, 'data');
    const sequences = intOption(values.sequences, 'sequences', 1) ?? 64;
    const batchSize = intOption(values['batch-size'], 'batch-size', 1) ?? 8;
    choiceOption(values.processing, 'processing', PROCESSINGS); // checked before the transcoders load
    const modelDir = checkModelArgument(positionals[0], 'model-dir')!;
    checkTranscoderArguments(values, 'transcoders');
    checkInputPaths(values, ['data']);
    const paths = listOption(values, 'transcoders');
    const clt = paths.map(crossLayerFolder).find((p) => p !== null);
    if (clt) {
      if (paths.length > 1) throw new InvalidArgumentError(`--transcoders ${clt} is a cross-layer transcoder: it replaces every MLP, so evaluate it alone`);
      await evaluateCrossLayerCommand(values, modelDir, clt, data, sequences, batchSize);
      return;
    }
    const { replacement, model } = await loadModelWithTranscoders(values, modelDir);
    const rows = await tokenRowsFor(model, data, values['context-size'], sequences);
    const bar = values.json ? null : new ProgressBar('evaluating', rows.length, ' sequences');
    const result = await evaluate(replacement, rows, {
      batchSize,
      onProgress: (done) => bar?.update(done),
    }).finally(() => bar?.close());
    if (values.json) {
      console.log(JSON.stringify(result, null, 2));
      return;
    }
    console.log(`${result.sequences} sequences, ${result.tokens} tokens`);
    console.log(`CE loss: clean ${result.ceLossClean.toFixed(4)}, all replaced ${result.ceLossReplaced.toFixed(4)}, zero-ablated ${result.ceLossZeroAblated.toFixed(4)}`);
    console.log(`CE loss recovered ${(100 * result.ceLossRecovered).toFixed(1)}%, KL to the clean model ${result.klDivergence.toFixed(4)} nats`);
    console.log('layer      L0     MSE      FVU   dead%  dense%   CE(alone)  recovered');
    for (const l of result.layers) {
      console.log(`${String(l.layer).padStart(5)} ${l.l0.toFixed(1).padStart(7)} ${l.mse.toExponential(2).padStart(9)} ${l.fvu.toFixed(4).padStart(8)} ` +
        `${(100 * l.deadFraction).toFixed(1).padStart(7)} ${(100 * l.denseFraction).toFixed(1).padStart(7)} ${l.ceLoss.toFixed(4).padStart(11)} ${(100 * l.ceLossRecovered).toFixed(1).padStart(9)}%`);
    }
  },
};

async function evaluateCrossLayerCommand(values: Record<string, unknown>, modelDir: string, dir: string, data: string[], sequences: number, batchSize: number): Promise<void> {
  const device = (values.device as string | undefined) ?? 'cpu';
  const clt = await loadCrossLayerTranscoder(dir, { device });
  const arch = readModelConfig(resolveModelSource(modelDir)).arch;
  const processing = choiceOption(values.processing, 'processing', PROCESSINGS) ?? clt.config.processing ?? (hasLlamaLayout(arch) ? 'none' : 'transformerlens');
  const model = await loadModel(modelDir, { device, processing });
  try {
    const rows = await tokenRowsFor(model, data, values['context-size'], sequences);
    const bar = values.json ? null : new ProgressBar('evaluating', rows.length, ' sequences');
    const result = await evaluateCrossLayer(model, clt, rows, { batchSize, onProgress: (done) => bar?.update(done) }).finally(() => bar?.close());
    if (values.json) {
      console.log(JSON.stringify(result, null, 2));
      return;
    }
    console.log(`cross-layer transcoder ${dir} (${clt.config.arch}, ${clt.config.nLayers} layers x ${clt.config.dSae} features)`);
    console.log(`${result.sequences} sequences, ${result.tokens} tokens`);
    console.log(`CE loss: clean ${result.ceLossClean.toFixed(4)}, every MLP replaced ${result.ceLossReplaced.toFixed(4)}, zero-ablated ${result.ceLossZeroAblated.toFixed(4)}`);
    console.log(`CE loss recovered ${(100 * result.ceLossRecovered).toFixed(1)}%, KL to the clean model ${result.klDivergence.toFixed(4)} nats`);
    console.log('layer      L0     MSE      FVU   dead%  dense%');
    for (const l of result.layers) {
      console.log(`${String(l.layer).padStart(5)} ${l.l0.toFixed(1).padStart(7)} ${l.mse.toExponential(2).padStart(9)} ${l.fvu.toFixed(4).padStart(8)} ` +
        `${(100 * l.deadFraction).toFixed(1).padStart(7)} ${(100 * l.denseFraction).toFixed(1).padStart(7)}`);
    }
  } finally {
    model.dispose();
  }
}
