/** `transcoders cache`: writes the activations of some layers to disk once, for training runs to read. */
import { existsSync, mkdirSync, readdirSync, rmdirSync } from 'node:fs';
import { resolve } from 'node:path';
import { loadModel, PROCESSINGS } from '../models/model.js';
import { writeActivationCache } from '../transcoders/activation-cache.js';
import {
  DEVICE_OPTION, applyThreads, THREADS_OPTION, checkInputPaths, checkModelArgument, checkOutputPaths, choiceOption, intOption, listOption, type Command,
} from './command.js';
import { CONTEXT_SIZE_OPTION, parseLayers, withTokenFile } from './data.js';
import { ProgressBar } from './progress.js';

const DTYPES = ['float32', 'bfloat16'] as const;

export const cacheCommand: Command = {
  name: 'cache',
  summary: 'Cache (input, target) MLP activations of some layers as safetensors shards, for training without the model.',
  usage: 'cache <model-dir> --layers L,.. --data PATH --out DIR [--dtype float32|bfloat16] [--sequences N]',
  details: 'Writes DIR/layer_L/meta.json and DIR/layer_L/shard_NNNNN.safetensors (tensors `input` and `target`, [rows, d]).\n' +
    'Train from it with: transcoders train --activations DIR/layer_L ...',
  arguments: [{ name: 'model-dir', required: true }],
  options: {
    layers: { type: 'string', value: 'L,..', description: 'layers to cache', required: true },
    data: { type: 'string', value: 'PATH', description: 'text (.txt/.jsonl) or a token file', multiple: true, required: true },
    out: { type: 'string', short: 'o', value: 'DIR', description: 'output folder', required: true },
    dtype: { type: 'string', value: 'T', description: 'float32 (default) or bfloat16' },
    sequences: { type: 'string', value: 'N', description: 'use only the first N sequences' },
    'context-size': CONTEXT_SIZE_OPTION,
    'shard-rows': { type: 'string', value: 'N', description: 'rows per shard (default 65536)' },
    processing: { type: 'string', value: 'P', description: 'model weight processing (default transformerlens)' },
    device: DEVICE_OPTION,
    threads: THREADS_OPTION,
  },
  async run(values, positionals) {
    applyThreads(values);
    const data = listOption(values, 'data');
    const dtype = choiceOption(values.dtype, 'dtype', DTYPES) ?? 'float32';
    const processing = choiceOption(values.processing, 'processing', PROCESSINGS) ?? 'transformerlens';
    const sequences = intOption(values.sequences, 'sequences', 1);
    const shardRows = intOption(values['shard-rows'], 'shard-rows', 1);
    const modelDir = checkModelArgument(positionals[0], 'model-dir');
    checkInputPaths(values, ['data']);
    checkOutputPaths(values, { out: 'folder' });
    const out = resolve(values.out as string);
    const model = await loadModel(modelDir!, { processing, device: (values.device as string | undefined) ?? 'cpu' });
    const layers = parseLayers(values.layers as string | undefined, model.config.nLayers);
    const createdOut = !existsSync(out);
    mkdirSync(out, { recursive: true });
    let bar: ProgressBar | null = null;
    let metas;
    try {
      metas = await withTokenFile(model, data, values['context-size'], out, (tokenFile) => writeActivationCache(model, tokenFile, layers, out, {
        dtype,
        ...(sequences !== undefined && { maxSequences: sequences }),
        ...(shardRows !== undefined && { shardRows }),
        onProgress: (done, total) => {
          bar ??= new ProgressBar('caching', total, ' sequences');
          bar.update(done);
        },
      }), sequences);
    } catch (err) {
      // A run that failed before writing anything leaves no empty output folder behind.
      if (createdOut && readdirSync(out).length === 0) rmdirSync(out);
      throw err;
    } finally {
      (bar as ProgressBar | null)?.close();
    }
    for (const m of metas) console.log(`layer ${m.layer}: ${m.count} rows in ${m.shards.length} shards (${m.dtype}) -> ${resolve(out, `layer_${m.layer}`)}`);
  },
};
