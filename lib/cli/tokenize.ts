/** `transcoders tokenize`: text to a token file with the paper's packing. */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { BOS_MODES } from '../data/packing.js';
import { tokenizeToFile } from '../data/tokenize.js';
import { InvalidArgumentError } from '../errors.js';
import { readModelConfig } from '../models/config.js';
import { Tokenizer } from '../tokenizer/tokenizer.js';
import { choiceOption, intOption, listOption, type Command } from './command.js';

export const tokenizeCommand: Command = {
  name: 'tokenize',
  summary: 'Tokenise .txt/.jsonl text into a token file of fixed-length rows (the paper\'s packing and BOS rules).',
  usage: 'tokenize <model-dir> --data PATH --out FILE.safetensors [--context-size N] [--bos paper|none] [--max-rows N]',
  options: {
    data: { type: 'string', value: 'PATH', description: '.txt / .jsonl files or folders', multiple: true },
    out: { type: 'string', short: 'o', value: 'FILE', description: 'token file to write' },
    'context-size': { type: 'string', value: 'N', description: 'tokens per row (default 128)' },
    bos: { type: 'string', value: 'MODE', description: 'paper (BOS per document, default for GPT-2) or none (default for Pythia)' },
    'max-rows': { type: 'string', value: 'N', description: 'stop after N rows' },
  },
  async run(values, positionals) {
    const dir = positionals[0];
    if (!dir) throw new InvalidArgumentError('tokenize needs the model folder (for its tokenizer.json)');
    if (!values.out) throw new InvalidArgumentError('--out FILE is required');
    const data = listOption(values, 'data');
    if (data.length === 0) throw new InvalidArgumentError('--data PATH is required');
    if (!existsSync(join(dir, 'tokenizer.json'))) throw new InvalidArgumentError(`${dir} has no tokenizer.json`);
    const config = readModelConfig(dir);
    const tokenizer = Tokenizer.fromFile(join(dir, 'tokenizer.json'), { bosTokenId: config.bosTokenId });
    const maxRows = intOption(values['max-rows'], 'max-rows', 1);
    const result = await tokenizeToFile(data, tokenizer, resolve(values.out as string), {
      contextSize: intOption(values['context-size'], 'context-size', 2) ?? 128,
      bos: choiceOption(values.bos, 'bos', BOS_MODES) ?? (config.defaultPrependBos ? 'paper' : 'none'),
      tokenizerName: dir,
      ...(maxRows !== undefined && { maxRows }),
      onProgress: ({ documents, rows }) => process.stderr.write(`\rtokenizing: ${documents} documents, ${rows} rows`),
    });
    process.stderr.write('\n');
    console.log(`wrote ${result.rows} rows from ${result.documents} documents to ${resolve(values.out as string)}`);
  },
};
