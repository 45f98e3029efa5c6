/** `transcoders cache`: writes the activations of some layers to disk once, for training runs to read. */
import { mkdirSync } from 'node:fs';
import { resolve } from 'node:path';
import { InvalidArgumentError } from '../errors.js';
import { loadModel, PROCESSINGS } from '../models/model.js';
import { writeActivationCache } from '../transcoders/activation-cache.js';
import { DEVICE_OPTION, applyThreads, THREADS_OPTION, choiceOption, intOption, listOption, type Command } from './command.js';
import { parseLayers, tokenFileFor } from './data.js';
import { ProgressBar } from './progress.js';

export const cacheCommand: Command = {
  name: 'cache',
  summary: 'Cache (input, target) MLP activations of some layers as safetensors shards, for training without the model.',
  usage: 'cache <model-dir> --layers L,.. --data PATH --out DIR [--dtype float32|bfloat16] [--sequences N]',
  details: 'Writes DIR/layer_L/meta.json and DIR/layer_L/shard_NNNNN.safetensors (tensors `input` and `target`, [rows, d]).\n' +
    'Train from it with: transcoders train --activations DIR/layer_L ...',
  options: {
    layers: { type: 'string', value: 'L,..', description: 'layers to cache' },
    data: { type: 'string', value: 'PATH', description: 'text (.txt/.jsonl) or a token file', multiple: true },
    out: { type: 'string', short: 'o', value: 'DIR', description: 'output folder' },
    dtype: { type: 'string', value: 'T', description: 'float32 (default) or bfloat16' },
    sequences: { type: 'string', value: 'N', description: 'use only the first N sequences' },
    'context-size': { type: 'string', value: 'N', description: 'tokens per sequence when tokenising text (default 128)' },
    'shard-rows': { type: 'string', value: 'N', description: 'rows per shard (default 65536)' },
    processing: { type: 'string', value: 'P', description: 'model weight processing (default transformerlens)' },
    device: DEVICE_OPTION,
    threads: THREADS_OPTION,
  },
  async run(values, positionals) {
    applyThreads(values);
    if (!positionals[0]) throw new InvalidArgumentError('cache needs the model folder: transcoders cache <model-dir> --layers ... --data ... --out DIR');
    if (!values.out) throw new InvalidArgumentError('--out DIR is required');
    const data = listOption(values, 'data');
    if (data.length === 0) throw new InvalidArgumentError('--data PATH is required');
    const out = resolve(values.out as string);
    mkdirSync(out, { recursive: true });
    const model = await loadModel(positionals[0], {
      processing: choiceOption(values.processing, 'processing', PROCESSINGS) ?? 'transformerlens',
      device: (values.device as string | undefined) ?? 'cpu',
    });
    const layers = parseLayers(values.layers as string | undefined, model.config.nLayers);
    const sequences = intOption(values.sequences, 'sequences', 1);
    const tokenFile = await tokenFileFor(model, data, intOption(values['context-size'], 'context-size', 2) ?? 128, out, sequences);
    let bar: ProgressBar | null = null;
    const metas = await writeActivationCache(model, tokenFile, layers, out, {
      dtype: choiceOption(values.dtype, 'dtype', ['float32', 'bfloat16'] as const) ?? 'float32',
      ...(sequences !== undefined && { maxSequences: sequences }),
      ...(values['shard-rows'] !== undefined && { shardRows: intOption(values['shard-rows'], 'shard-rows', 1)! }),
      onProgress: (done, total) => {
        bar ??= new ProgressBar('caching', total, ' sequences');
        bar.update(done);
      },
    });
    for (const m of metas) console.log(`layer ${m.layer}: ${m.count} rows in ${m.shards.length} shards (${m.dtype}) -> ${resolve(out, `layer_${m.layer}`)}`);
  },
};
