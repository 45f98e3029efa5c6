/**
 * Text -> token file: reads documents (text-source), packs them (packing) and streams the rows to a
 * token file (token-file), all without holding the corpus or the rows in memory.
 */
import { InvalidArgumentError } from '../errors.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import { TokenPacker, type BosMode } from './packing.js';
import { readDocuments } from './text-source.js';
import { writeTokenFile } from './token-file.js';

export interface TokenizeToFileOptions {
  contextSize: number;
  /** Default 'paper' (see packing.ts). 'paper' needs a tokenizer with a BOS token. */
  bos?: BosMode;
  /** Truncation of each document, BOS included (default 1024, as the paper's to_tokens). */
  maxDocumentTokens?: number;
  /** Emulate the paper's per-store-batch restarts (see packing.ts). Default: continuous stream. */
  storeBatchSize?: number;
  /** Stop after this many rows (reading stops there too). */
  maxRows?: number;
  /**
   * Fail (InvalidArgumentError, nothing written) when the data gives fewer rows than this (default 0:
   * any number, an empty file included).
   */
  minRows?: number;
  /** Recorded as the file's `tokenizer` metadata (default: the tokenizer's path). */
  tokenizerName?: string;
  /** Called about every 200 ms while running and once at the end. */
  onProgress?: (info: { documents: number; rows: number }) => void;
  /**
   * Called with each warning as it arises (also listed in the result): documents truncated to
   * `maxDocumentTokens` (once, with the counts, when reading ends), a `.txt` file of several lines
   * without a blank line, which is read as a single document.
   */
  onWarning?: (message: string) => void;
}

export interface TokenizeResult {
  rows: number;
  documents: number;
  /**
   * Documents longer than `maxDocumentTokens` (BOS included), cut to it as the paper's
   * `to_tokens(truncate=True)` does, and the tokens cut off them (in no row).
   */
  truncated: { documents: number; tokens: number };
  /** The warnings given to `onWarning`, in order. */
  warnings: string[];
}

/**
 * Tokenises `.txt` / `.jsonl` files or folders of them (see readDocuments) into a token file at
 * `out` (written atomically: a failed run leaves no file behind, and an earlier file at `out` untouched).
 * Returns the number of rows written and of documents read, the documents truncated to
 * `maxDocumentTokens` with the tokens that lost, and the warnings; with `maxRows`, the counts are of
 * the documents read before the limit was reached.
 */
export async function tokenizeToFile(
  inputs: string[],
  tokenizer: Tokenizer,
  out: string,
  options: TokenizeToFileOptions,
): Promise<TokenizeResult> {
  const bos = options.bos ?? 'paper';
  const maxRows = options.maxRows ?? Infinity;
  if (maxRows !== Infinity && (!Number.isSafeInteger(maxRows) || maxRows < 0)) {
    throw new InvalidArgumentError(`maxRows must be a non-negative integer, got ${maxRows}`);
  }
  const minRows = options.minRows ?? 0;
  if (!Number.isSafeInteger(minRows) || minRows < 0) throw new InvalidArgumentError(`minRows must be a non-negative integer, got ${minRows}`);
  if (inputs.length === 0) throw new InvalidArgumentError('tokenizeToFile: no inputs');
  const maxDocumentTokens = options.maxDocumentTokens ?? 1024;
  const packer = new TokenPacker({
    contextSize: options.contextSize,
    bos,
    maxDocumentTokens,
    ...(options.storeBatchSize !== undefined ? { storeBatchSize: options.storeBatchSize } : {}),
    bosTokenId: tokenizer.bosTokenId,
  });
  let documents = 0;
  let rows = 0;
  const warnings: string[] = [];
  const warn = (message: string): void => {
    warnings.push(message);
    options.onWarning?.(message);
  };
  let truncationReported = false;
  const reportTruncation = (): void => {
    if (truncationReported) return;
    truncationReported = true;
    const n = packer.truncatedDocuments;
    if (n === 0) return;
    warn(
      `${n} of ${documents} document${documents === 1 ? '' : 's'} ${n === 1 ? 'was' : 'were'} longer than ${maxDocumentTokens} tokens` +
        `${bos === 'paper' ? ' (BOS included)' : ''} and ${n === 1 ? 'was' : 'were'} truncated to ${maxDocumentTokens}, as the paper's to_tokens(truncate=True) does: ` +
        `${packer.truncatedTokens} token${packer.truncatedTokens === 1 ? '' : 's'} dropped`,
    );
  };
  let lastReport = Date.now();
  const report = (force: boolean): void => {
    if (!options.onProgress) return;
    const now = Date.now();
    if (!force && now - lastReport < 200) return;
    lastReport = now;
    options.onProgress({ documents, rows });
  };

  async function* generate(): AsyncGenerator<Int32Array> {
    if (rows >= maxRows) return;
    for await (const doc of readDocuments(inputs, { onWarning: warn })) {
      documents++;
      for (const row of packer.push(tokenizer.encode(doc.text, { prependBos: false }))) {
        rows++;
        yield Int32Array.from(row);
        if (rows >= maxRows) return;
      }
      report(false);
    }
    const last = packer.flush();
    if (last) {
      rows++;
      yield Int32Array.from(last);
    }
    reportTruncation();
    // Thrown inside the row stream, so that writeTokenFile removes its temp file and leaves `out` alone.
    if (rows < minRows) {
      throw new InvalidArgumentError(
        `${inputs.join(', ')}: the text gives ${rows} full row${rows === 1 ? '' : 's'} of ${options.contextSize} tokens (${documents} document${documents === 1 ? '' : 's'}), fewer than the ${minRows} needed`,
      );
    }
  }

  const result = await writeTokenFile(out, generate(), {
    contextSize: options.contextSize,
    tokenizer: options.tokenizerName ?? tokenizer.path,
    bos,
    sources: inputs,
    documents: () => documents,
    maxDocumentTokens,
  });
  report(true);
  reportTruncation(); // when maxRows ended the reading
  return { ...result, truncated: { documents: packer.truncatedDocuments, tokens: packer.truncatedTokens }, warnings };
}
