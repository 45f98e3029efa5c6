/** `transcoders tokenize`: text to a token file with the paper's packing. */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { BOS_MODES } from '../data/packing.js';
import { tokenizeToFile } from '../data/tokenize.js';
import { InvalidArgumentError } from '../errors.js';
import { readModelConfig } from '../models/config.js';
import { loadFolderTokenizer } from '../tokenizer/tokenizer.js';
import { checkInputPaths, checkModelArgument, checkOutputPaths, choiceOption, intOption, listOption, type Command } from './command.js';
import { CONTEXT_SIZE_OPTION, contextSizeFor } from './data.js';
import { StatusLine } from './progress.js';

export const tokenizeCommand: Command = {
  name: 'tokenize',
  summary: 'Tokenise .txt/.jsonl text into a token file of fixed-length rows (the paper\'s packing and BOS rules).',
  usage: 'tokenize <model-dir> --data PATH --out FILE.safetensors [--context-size N] [--bos paper|none] [--max-rows N]',
  details: 'The file is written atomically: a failed run leaves no file (and an earlier file at FILE unchanged).',
  arguments: [{ name: 'model-dir', required: true }],
  options: {
    data: { type: 'string', value: 'PATH', description: '.txt / .jsonl files or folders', multiple: true, required: true },
    out: { type: 'string', short: 'o', value: 'FILE', description: 'token file to write (in an existing folder)', required: true },
    'context-size': { ...CONTEXT_SIZE_OPTION, description: 'tokens per row (default 128, or the model\'s context if shorter)' },
    bos: { type: 'string', value: 'MODE', description: 'paper (BOS per document, default for GPT-2) or none (default for Pythia)' },
    'max-rows': { type: 'string', value: 'N', description: 'stop after N rows' },
  },
  async run(values, positionals) {
    const data = listOption(values, 'data');
    const maxRows = intOption(values['max-rows'], 'max-rows', 1);
    const bos = choiceOption(values.bos, 'bos', BOS_MODES);
    const dir = checkModelArgument(positionals[0], 'model-dir')!;
    checkInputPaths(values, ['data']);
    checkOutputPaths(values, { out: 'file' });
    if (!existsSync(join(dir, 'tokenizer.json'))) throw new InvalidArgumentError(`${dir} has no tokenizer.json`);
    const config = readModelConfig(dir);
    const contextSize = contextSizeFor(values['context-size'], config.nCtx);
    const tokenizer = loadFolderTokenizer(dir, config)!;
    const out = resolve(values.out as string);
    const status = new StatusLine();
    let result;
    // Printed once the status line is closed (a warning written under it would be overdrawn).
    const warnings: string[] = [];
    try {
      result = await tokenizeToFile(data, tokenizer, out, {
        contextSize,
        // The same BOS decision as loadModel's (tokenizer_config.json's add_bos_token, else the family's).
        bos: bos ?? (tokenizer.prependBosByDefault ? 'paper' : 'none'),
        tokenizerName: dir,
        minRows: 1,
        ...(maxRows !== undefined && { maxRows }),
        onProgress: ({ documents, rows }) => status.show(`tokenizing: ${documents} documents, ${rows} rows`),
        onWarning: (message) => warnings.push(message),
      });
    } finally {
      status.close();
      for (const message of warnings) process.stderr.write(`transcoders tokenize: warning: ${message}\n`);
    }
    const { truncated } = result;
    const cut = truncated.documents > 0 ? `; ${truncated.documents} document${truncated.documents === 1 ? '' : 's'} truncated (${truncated.tokens} tokens dropped)` : '';
    console.log(`wrote ${result.rows} rows from ${result.documents} document${result.documents === 1 ? '' : 's'} (${contextSize} tokens each) to ${out}${cut}`);
  },
};
