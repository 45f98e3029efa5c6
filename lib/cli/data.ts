/** Command-line data handling shared by train, eval and cache: text or token files in, token file out. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { readTokenFileHeader, readTokenRows } from '../data/token-file.js';
import { tokenizeToFile } from '../data/tokenize.js';
import { InvalidArgumentError } from '../errors.js';
import type { Model } from '../models/model.js';

/** Whether `path` is a token file (rather than text to tokenise). */
export function isTokenFile(path: string): boolean {
  if (!path.endsWith('.safetensors') || !existsSync(path)) return false;
  readTokenFileHeader(path); // throws a FormatError naming the problem when it is not one
  return true;
}

/**
 * A token file for `data`: the file itself, or `data` (.txt/.jsonl files or folders) tokenised
 * with the model's tokenizer and the paper's packing into `workDir/tokens.safetensors`.
 */
export async function tokenFileFor(model: Model, data: string[], contextSize: number, workDir: string, maxRows?: number): Promise<string> {
  if (data.length === 1 && isTokenFile(data[0]!)) return data[0]!;
  if (!model.tokenizer) throw new InvalidArgumentError(`${model.dir} has no tokenizer.json: pass a pre-tokenised token file as --data`);
  const out = join(workDir, 'tokens.safetensors');
  const { rows } = await tokenizeToFile(data, model.tokenizer, out, {
    contextSize,
    bos: model.config.defaultPrependBos ? 'paper' : 'none',
    ...(maxRows !== undefined ? { maxRows } : {}),
    onProgress: ({ rows: n, documents }) => process.stderr.write(`\rtokenizing: ${documents} documents, ${n} rows`),
  });
  process.stderr.write('\n');
  if (rows === 0) throw new InvalidArgumentError(`the data (${data.join(', ')}) gives no full row of ${contextSize} tokens`);
  return out;
}

/** The first `count` rows of a token file as arrays of ids. */
export async function tokenRows(file: string, count: number): Promise<number[][]> {
  const header = readTokenFileHeader(file);
  const n = Math.min(count, header.rows);
  const flat = await readTokenRows(header, 0, n);
  return Array.from({ length: n }, (_, i) => Array.from(flat.subarray(i * header.contextSize, (i + 1) * header.contextSize)));
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
