/** Command-line data handling shared by train, eval and cache: text or token files in, token file out. */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { readTokenFileHeader, readTokenRows } from '../data/token-file.js';
import { tokenizeToFile } from '../data/tokenize.js';
import { InvalidArgumentError } from '../errors.js';
import type { Model } from '../models/model.js';
import { intOption, type OptionSpec } from './command.js';
import { StatusLine } from './progress.js';

/** Tokens per packed row when `--context-size` is not given, unless the model's context is shorter. */
export const DEFAULT_CONTEXT_SIZE = 128;

/** The `--context-size N` option of the commands that tokenise text. */
export const CONTEXT_SIZE_OPTION: OptionSpec = {
  type: 'string',
  value: 'N',
  description: `tokens per row when tokenising text (default ${DEFAULT_CONTEXT_SIZE}, or the model's context if shorter)`,
};

/**
 * The row length for tokenising text for a model with context `nCtx`: `--context-size` (at least 2,
 * at most nCtx), else min(128, nCtx).
 */
export function contextSizeFor(value: unknown, nCtx: number): number {
  const given = intOption(value, 'context-size', 2);
  if (given === undefined) return Math.min(DEFAULT_CONTEXT_SIZE, nCtx);
  if (given > nCtx) throw new InvalidArgumentError(`--context-size ${given} exceeds the model's context of ${nCtx} tokens`);
  return given;
}

/** Whether `path` is a token file (rather than text to tokenise). */
export function isTokenFile(path: string): boolean {
  if (!path.endsWith('.safetensors') || !existsSync(path)) return false;
  readTokenFileHeader(path); // throws a FormatError naming the problem when it is not one
  return true;
}

/** Where text was tokenised to (`created`), or the token file the user gave. */
export interface TokenData {
  file: string;
  /** The command wrote `file` (and removes it when the command fails). */
  created: boolean;
}

/**
 * A token file for `data`: the file itself (its rows must fit the model's context, and `--context-size`,
 * when given, must match them), or `data` (.txt/.jsonl files or folders) tokenised with the model's
 * tokenizer and the paper's packing into `workDir/tokens.safetensors`, in rows of
 * {@link contextSizeFor}. Text that gives no full row is an error and writes nothing. The
 * tokenizer's warnings (truncated documents, a .txt file that is one document) go to stderr.
 */
export async function tokenFileFor(model: Model, data: string[], contextSizeValue: unknown, workDir: string, maxRows?: number): Promise<TokenData> {
  const nCtx = model.config.nCtx;
  if (data.length === 1 && isTokenFile(data[0]!)) {
    const { contextSize } = readTokenFileHeader(data[0]!);
    if (contextSize > nCtx) throw new InvalidArgumentError(`--data ${data[0]}: rows of ${contextSize} tokens exceed the model's context of ${nCtx} tokens`);
    const given = intOption(contextSizeValue, 'context-size', 2);
    if (given !== undefined && given !== contextSize) {
      throw new InvalidArgumentError(`--context-size ${given} does not apply to the token file ${data[0]}, whose rows are ${contextSize} tokens`);
    }
    return { file: data[0]!, created: false };
  }
  const contextSize = contextSizeFor(contextSizeValue, nCtx);
  if (!model.tokenizer) throw new InvalidArgumentError(`${model.dir} has no tokenizer.json: pass a pre-tokenised token file as --data`);
  const out = join(workDir, 'tokens.safetensors');
  const status = new StatusLine();
  // Printed once the status line is closed (a warning written under it would be overdrawn).
  const warnings: string[] = [];
  try {
    await tokenizeToFile(data, model.tokenizer, out, {
      contextSize,
      bos: model.config.defaultPrependBos ? 'paper' : 'none',
      minRows: 1,
      ...(maxRows !== undefined ? { maxRows } : {}),
      onProgress: ({ rows, documents }) => status.show(`tokenizing: ${documents} documents, ${rows} rows`),
      onWarning: (message) => warnings.push(message),
    });
  } finally {
    status.close();
    for (const message of warnings) process.stderr.write(`transcoders: warning: ${message}\n`);
  }
  return { file: out, created: true };
}

/**
 * Runs `use` on the token file for `data` (see {@link tokenFileFor}); a token file the command wrote
 * is removed when `use` fails, so that a failed run leaves none behind (a stopped run keeps it).
 */
export async function withTokenFile<T>(
  model: Model,
  data: string[],
  contextSizeValue: unknown,
  workDir: string,
  use: (tokenFile: string) => Promise<T>,
  maxRows?: number,
): Promise<T> {
  const tokens = await tokenFileFor(model, data, contextSizeValue, workDir, maxRows);
  try {
    return await use(tokens.file);
  } catch (err) {
    if (tokens.created) rmSync(tokens.file, { force: true });
    throw err;
  }
}

/** The first `count` rows of a token file as arrays of ids. */
export async function tokenRows(file: string, count: number): Promise<number[][]> {
  const header = readTokenFileHeader(file);
  const n = Math.min(count, header.rows);
  const flat = await readTokenRows(header, 0, n);
  return Array.from({ length: n }, (_, i) => Array.from(flat.subarray(i * header.contextSize, (i + 1) * header.contextSize)));
}

/**
 * The first `count` rows of `data` (a token file, or text tokenised into a temporary folder that is
 * removed before returning).
 */
export async function tokenRowsFor(model: Model, data: string[], contextSizeValue: unknown, count: number): Promise<number[][]> {
  const work = mkdtempSync(join(tmpdir(), 'transcoders-tokens-'));
  try {
    const tokens = await tokenFileFor(model, data, contextSizeValue, work, count);
    return await tokenRows(resolve(tokens.file), count);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** Parses "0,1,5" or "0-3" into layer indices. */
export function parseLayers(text: string | undefined, nLayers?: number): number[] {
  if (!text) throw new InvalidArgumentError('--layers is required, e.g. --layers 0,1,2 or --layers 0-11');
  const layers = text.split(',').flatMap((part) => {
    const range = /^(\d+)-(\d+)$/.exec(part.trim());
    if (range) return Array.from({ length: Number(range[2]) - Number(range[1]) + 1 }, (_, i) => Number(range[1]) + i);
    return [Number(part.trim())];
  });
  for (const l of layers) {
    if (!Number.isInteger(l) || l < 0 || (nLayers !== undefined && l >= nLayers)) {
      throw new InvalidArgumentError(`--layers: '${l}' is not a layer${nLayers !== undefined ? ` (the model has ${nLayers})` : ''}`);
    }
  }
  return [...new Set(layers)];
}
