/** `transcoders info <model-dir>`: the parsed configuration of a model folder. */
import { join } from 'node:path';
import { resolveCheckpoint } from '../models/checkpoint.js';
import { parameterCount, readModelConfig } from '../models/config.js';
import { loadFolderTokenizer } from '../tokenizer/tokenizer.js';
import { checkModelArgument, type Command } from './command.js';
import { SHIPPED_MODEL_DIR as DEFAULT_MODEL_DIR } from '../models/shipped.js';

export const infoCommand: Command = {
  name: 'info',
  summary: 'Print the parsed configuration of a Hugging Face model folder and check its checkpoint.',
  usage: 'info [model-dir] [--json]',
  details: `model-dir defaults to the shipped model (${DEFAULT_MODEL_DIR}).`,
  arguments: [{ name: 'model-dir' }],
  options: { json: { type: 'boolean', description: 'print JSON' } },
  async run(values, positionals) {
    const dir = checkModelArgument(positionals[0], 'model-dir') ?? DEFAULT_MODEL_DIR;
    const config = readModelConfig(dir);
    const files = resolveCheckpoint(dir, config);
    const tokenizerPath = join(dir, 'tokenizer.json');
    const tokenizer = loadFolderTokenizer(dir, config);
    const info = {
      dir,
      config,
      parameters: parameterCount(config),
      checkpoint: files.map((f) => ({ file: f.path, tensors: f.entries.length, dtypes: [...new Set(f.entries.map((e) => e.dtype))] })),
      tokenizer: tokenizer ? { file: tokenizerPath, vocabSize: tokenizer.vocabSize, bosTokenId: tokenizer.bosTokenId, bos: tokenizer.bos } : null,
    };
    if (values.json) {
      console.log(JSON.stringify(info, null, 2));
      return;
    }
    console.log(`${dir}`);
    console.log(`  architecture     ${config.arch}${config.parallelResidual ? ' (parallel attention + MLP)' : ''}`);
    console.log(`  parameters       ${(info.parameters / 1e6).toFixed(2)} M`);
    for (const [key, value] of Object.entries(config)) {
      if (key !== 'arch') console.log(`  ${key.padEnd(16)} ${value}`);
    }
    for (const f of info.checkpoint) console.log(`  checkpoint       ${f.file} (${f.tensors} tensors, ${f.dtypes.join('/')})`);
    console.log(`  tokenizer        ${tokenizer ? `${tokenizerPath} (${tokenizer.vocabSize} tokens)` : 'none (token ids only)'}`);
    if (tokenizer) {
      const b = tokenizer.bos;
      console.log(`  prepend BOS      ${b.prependBos ? `yes, ${b.token ?? `id ${b.tokenId}`}` : 'no'} (${b.source})`);
    }
  },
};
