/**
 * Token packing: documents -> rows of exactly `contextSize` tokens, as the paper's activation store
 * does it (`ActivationsStore.get_batch_tokens`, paper-method.md §2.3).
 *
 * Rules with `bos: 'paper'` (the default), for each document in order:
 * 1. The document becomes `[BOS, ...tokens]` truncated to `maxDocumentTokens` (default 1024)
 *    tokens, the BOS included: TransformerLens `model.to_tokens(text, truncate=True)` for GPT-2.
 *    An empty document is `[BOS]`.
 * 2. Its tokens are appended to the current row. If they fit in the space left
 *    (`length <= contextSize - row.length`), all of them go in, and that is all: the row is NOT
 *    emitted here, even when it is now exactly full.
 * 3. Otherwise the row is filled with the first `space` tokens and emitted, and the rest of the
 *    document, with one extra BOS prepended, is processed again from rule 2 on a new row. (The rest
 *    is never truncated again: a document longer than a row spans several rows, each continuation
 *    starting with BOS.)
 * 4. The quirk that follows from 2 and 3: a row that a document fills exactly stays pending. When the
 *    next document arrives there is no space left, so rule 3 "fills" it with zero tokens, emits it,
 *    and prepends a BOS to that whole document, which therefore starts the next row with two BOS
 *    tokens (`[BOS, BOS, ...]`). This also applies when the exact fit comes from a continuation.
 * 5. Rows start at arbitrary document offsets; nothing is padded.
 *
 * With `bos: 'none'` (models whose convention is no BOS, e.g. Pythia) the same loop runs with no BOS
 * anywhere: the document is `tokens` truncated to `maxDocumentTokens`, nothing is prepended to
 * continuations, and empty documents add nothing. The rows are then a plain chunking of the
 * concatenated (truncated) documents.
 *
 * `storeBatchSize` (optional) reproduces that the paper calls `get_batch_tokens` once per store
 * batch with fresh local state: after every `storeBatchSize`-th row the rest of the document being
 * packed is discarded (including a whole document whose arrival emitted a pending exact-fit row),
 * and the next document starts a fresh row. Without it the documents form one continuous stream.
 *
 * End of input ({@link TokenPacker.flush}): the paper's stream never ends, so this is our choice. A
 * pending row that is exactly full is a complete row and is returned; a partial row is dropped
 * unless `keepPartial` is set.
 *
 * The truncation of rule 1 loses the end of every longer document. The packer counts it
 * ({@link TokenPacker.truncatedDocuments}, {@link TokenPacker.truncatedTokens}) so that callers can
 * report it (tokenizeToFile does) instead of losing the text silently.
 */
import { InvalidArgumentError } from '../errors.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';

export type BosMode = 'paper' | 'none';
export const BOS_MODES: readonly BosMode[] = ['paper', 'none'];

export interface PackOptions {
  /** Tokens per row. At least 2 with `bos: 'paper'` (with 1 the paper's loop never ends). */
  contextSize: number;
  /** 'paper' (default): BOS rules of the paper; 'none': plain concatenation. */
  bos?: BosMode;
  /** Documents are truncated to this many tokens, BOS included (default 1024; Infinity for none). */
  maxDocumentTokens?: number;
  /** Emulate the paper's per-store-batch restarts (see the module comment). Default: continuous. */
  storeBatchSize?: number;
}

export interface TokenPackerOptions extends PackOptions {
  /** Required with `bos: 'paper'`. */
  bosTokenId?: number | null;
}

function checkPositiveInt(name: string, v: number, min = 1): void {
  if (!Number.isSafeInteger(v) || v < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got ${v}`);
}

/** Incremental packer: push documents' token ids (without BOS), get the rows they complete. */
export class TokenPacker {
  readonly contextSize: number;
  readonly bos: BosMode;
  readonly bosTokenId: number | null;
  readonly maxDocumentTokens: number;
  readonly storeBatchSize: number | null;
  private row: number[] = [];
  private emitted = 0;
  private truncatedDocs = 0;
  private droppedTokens = 0;

  constructor(options: TokenPackerOptions) {
    this.bos = options.bos ?? 'paper';
    if (!BOS_MODES.includes(this.bos)) throw new InvalidArgumentError(`bos must be one of ${BOS_MODES.join(', ')}, got ${JSON.stringify(options.bos)}`);
    checkPositiveInt('contextSize', options.contextSize, this.bos === 'paper' ? 2 : 1);
    this.contextSize = options.contextSize;
    this.maxDocumentTokens = options.maxDocumentTokens ?? 1024;
    if (this.maxDocumentTokens !== Infinity) checkPositiveInt('maxDocumentTokens', this.maxDocumentTokens);
    this.storeBatchSize = options.storeBatchSize ?? null;
    if (this.storeBatchSize !== null) checkPositiveInt('storeBatchSize', this.storeBatchSize);
    this.bosTokenId = options.bosTokenId ?? null;
    if (this.bos === 'paper') {
      if (this.bosTokenId === null) throw new InvalidArgumentError(`bos 'paper' needs a bosTokenId (the tokenizer has no BOS token: use bos 'none')`);
      checkPositiveInt('bosTokenId', this.bosTokenId, 0);
    }
  }

  /** Rows emitted so far. */
  get rowsEmitted(): number {
    return this.emitted;
  }

  /** Tokens in the pending row. */
  get pendingTokens(): number {
    return this.row.length;
  }

  /** Documents pushed so far that were longer than `maxDocumentTokens` (BOS included) and were cut. */
  get truncatedDocuments(): number {
    return this.truncatedDocs;
  }

  /** Tokens of those documents cut off by the truncation (not packed into any row). */
  get truncatedTokens(): number {
    return this.droppedTokens;
  }

  /**
   * Adds one document, given as its token ids WITHOUT a BOS (the packer adds BOS and truncates per
   * the rules above), and returns the rows completed by it (often none).
   */
  push(ids: readonly number[]): number[][] {
    const C = this.contextSize;
    const bos = this.bos === 'paper' ? this.bosTokenId! : null;
    const out: number[][] = [];
    // The document as the paper sees it: `lead` BOS tokens followed by ids[pos..end).
    let lead = 0;
    let pos = 0;
    let end: number;
    if (bos !== null) {
      lead = 1;
      end = Math.min(ids.length, this.maxDocumentTokens - 1);
    } else {
      end = Math.min(ids.length, this.maxDocumentTokens);
    }
    if (end < ids.length) {
      this.truncatedDocs++;
      this.droppedTokens += ids.length - end;
    }
    for (;;) {
      const remaining = lead + end - pos;
      if (remaining === 0) break;
      const space = C - this.row.length;
      if (remaining <= space) {
        for (; lead > 0; lead--) this.row.push(bos!);
        for (; pos < end; pos++) this.row.push(ids[pos]!);
        break;
      }
      let take = space;
      for (; lead > 0 && take > 0; lead--, take--) this.row.push(bos!);
      for (; take > 0; take--, pos++) this.row.push(ids[pos]!);
      if (bos !== null) lead++;
      out.push(this.row);
      this.row = [];
      this.emitted++;
      if (this.storeBatchSize !== null && this.emitted % this.storeBatchSize === 0) break;
    }
    return out;
  }

  /**
   * Ends the input and resets the packer. Returns the pending row if it is exactly full (the
   * exact-fit case waiting for a next document), the partial row with `keepPartial`, else null.
   */
  flush(options: { keepPartial?: boolean } = {}): number[] | null {
    const row = this.row;
    this.row = [];
    if (row.length === this.contextSize) {
      this.emitted++;
      return row;
    }
    return options.keepPartial && row.length > 0 ? row : null;
  }
}

/** A document as text, or as an object with a `text` field (what readDocuments yields). */
export type TextDocument = string | { text: string };

/**
 * Tokenises documents (BOS handled by the packer, per `options.bos`) and yields the packed rows,
 * ending with the pending row if it is exactly full. Partial last rows are dropped.
 */
export async function* packDocuments(
  docs: AsyncIterable<TextDocument> | Iterable<TextDocument>,
  tokenizer: Tokenizer,
  options: PackOptions,
): AsyncGenerator<Int32Array> {
  const packer = new TokenPacker({ ...options, bosTokenId: tokenizer.bosTokenId });
  for await (const doc of docs) {
    const text = typeof doc === 'string' ? doc : doc.text;
    for (const row of packer.push(tokenizer.encode(text, { prependBos: false }))) yield Int32Array.from(row);
  }
  const last = packer.flush();
  if (last) yield Int32Array.from(last);
}
