/**
 * Pre-tokenised token files: a safetensors file holding one tensor `tokens` (I32
 * [rows, contextSize], one packed row per line) and `__metadata__`:
 *   format: "transcoders-tokens", version: "1", contextSize, tokenizer (path or name),
 *   bos ("paper" | "none"), sources (a JSON list of the input paths), documents (count),
 *   maxDocumentTokens (when known).
 * Any safetensors reader opens it; readTokenRows reads row ranges without loading the file.
 */
import { randomBytes } from 'node:crypto';
import { endianness } from 'node:os';
import { open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { FormatError, InvalidArgumentError } from '../errors.js';
import { checkJsonDepth, describe } from '../io/json.js';
import { readSafetensorsHeader, type SafetensorsHeader } from '../io/safetensors.js';
import { BOS_MODES, type BosMode } from './packing.js';

export const TOKEN_FILE_FORMAT = 'transcoders-tokens';
export const TOKEN_FILE_VERSION = '1';

export interface TokenFileMeta {
  contextSize: number;
  /** The tokenizer: its path or name. */
  tokenizer: string;
  bos: BosMode;
  /** Input paths the rows come from. */
  sources: string[];
  /** Number of documents read. A function is called once all rows are written (for counts made while streaming). */
  documents: number | (() => number);
  maxDocumentTokens?: number;
}

export interface TokenFileHeader {
  path: string;
  rows: number;
  contextSize: number;
  tokenizer: string;
  bos: BosMode;
  sources: string[];
  documents: number;
  maxDocumentTokens: number | null;
  /** Absolute byte offset of row 0. */
  dataStart: number;
  /** All `__metadata__` entries as stored. */
  metadata: Record<string, string>;
}

const LITTLE_ENDIAN = endianness() === 'LE';
/** Rows are written in chunks of about this many bytes. */
const WRITE_CHUNK_BYTES = 1 << 20;

function headerJson(rows: number, contextSize: number, metadata: Record<string, string>): string {
  const bytes = rows * contextSize * 4;
  return JSON.stringify({
    __metadata__: metadata,
    tokens: { dtype: 'I32', shape: [rows, contextSize], data_offsets: [0, bytes] },
  });
}

function metadataOf(meta: TokenFileMeta, documents: number): Record<string, string> {
  const out: Record<string, string> = {
    format: TOKEN_FILE_FORMAT,
    version: TOKEN_FILE_VERSION,
    contextSize: String(meta.contextSize),
    tokenizer: meta.tokenizer,
    bos: meta.bos,
    sources: JSON.stringify(meta.sources),
    documents: String(documents),
  };
  if (meta.maxDocumentTokens !== undefined && Number.isFinite(meta.maxDocumentTokens)) out.maxDocumentTokens = String(meta.maxDocumentTokens);
  return out;
}

/**
 * Writes rows (each an Int32Array of `meta.contextSize` tokens) to a token file, streaming: rows are
 * written as they come and never held in memory together.
 *
 * The safetensors header must precede the data, but its content (the row count, the data size and
 * the document count) is known only at the end. Instead of writing the data to a second temp file
 * and copying it after the header (twice the disk traffic), we reserve a header of fixed size: the
 * JSON header with every count set to Number.MAX_SAFE_INTEGER (the widest value any count can
 * have), rounded up to a multiple of 8 so the data stays aligned. The data follows that space; at
 * the end the real header is written into it, right-padded with spaces (the padding the safetensors
 * format allows and its own writers use). Everything goes to a temp file beside `path`, which is
 * flushed and renamed over `path` only when complete: on any error (including one thrown by `rows`)
 * the temp file is removed and `path` is left untouched.
 */
export async function writeTokenFile(
  path: string,
  rows: AsyncIterable<Int32Array> | Iterable<Int32Array>,
  meta: TokenFileMeta,
): Promise<{ rows: number; documents: number }> {
  const C = meta.contextSize;
  if (!Number.isSafeInteger(C) || C < 1) throw new InvalidArgumentError(`writeTokenFile: contextSize must be a positive integer, got ${C}`);
  if (!BOS_MODES.includes(meta.bos)) throw new InvalidArgumentError(`writeTokenFile: bos must be one of ${BOS_MODES.join(', ')}, got ${JSON.stringify(meta.bos)}`);
  const MAX = Number.MAX_SAFE_INTEGER;
  const reserved = Buffer.byteLength(headerJson(MAX, MAX, metadataOf({ ...meta, contextSize: MAX }, MAX)));
  const headerSize = Math.ceil(reserved / 8) * 8;
  const dataStart = 8 + headerSize;

  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fh = await open(tmp, 'w');
  let closed = false;
  try {
    const writeAll = async (bytes: Uint8Array, position: number): Promise<void> => {
      let done = 0;
      while (done < bytes.length) {
        const { bytesWritten } = await fh.write(bytes, done, bytes.length - done, position + done);
        done += bytesWritten;
      }
    };
    const rowBytes = C * 4;
    const rowsPerChunk = Math.max(1, Math.floor(WRITE_CHUNK_BYTES / rowBytes));
    const chunk = new Int32Array(rowsPerChunk * C);
    let inChunk = 0;
    let count = 0;
    let position = dataStart;
    const flushChunk = async (): Promise<void> => {
      if (inChunk === 0) return;
      const view = new Uint8Array(chunk.buffer, 0, inChunk * rowBytes);
      if (!LITTLE_ENDIAN) {
        const dv = new DataView(chunk.buffer);
        for (let i = 0; i < inChunk * C; i++) dv.setInt32(i * 4, chunk[i]!, true);
      }
      await writeAll(view, position);
      position += view.length;
      inChunk = 0;
    };
    for await (const row of rows) {
      if (row.length !== C) {
        throw new InvalidArgumentError(`writeTokenFile: row ${count} has ${row.length} tokens, expected contextSize ${C}`);
      }
      chunk.set(row, inChunk * C);
      inChunk++;
      count++;
      if (inChunk === rowsPerChunk) await flushChunk();
    }
    await flushChunk();
    const documents = typeof meta.documents === 'function' ? meta.documents() : meta.documents;
    if (!Number.isSafeInteger(documents) || documents < 0) throw new InvalidArgumentError(`writeTokenFile: documents must be a non-negative integer, got ${documents}`);
    const json = headerJson(count, C, metadataOf(meta, documents));
    const jsonBytes = Buffer.byteLength(json);
    if (jsonBytes > headerSize) throw new Error(`writeTokenFile: internal error: header of ${jsonBytes} bytes exceeds the reserved ${headerSize}`);
    const header = Buffer.alloc(dataStart, 0x20);
    header.writeBigUInt64LE(BigInt(headerSize), 0);
    header.write(json, 8, 'utf8');
    await writeAll(header, 0);
    await fh.sync();
    await fh.close();
    closed = true;
    await rename(tmp, path);
    return { rows: count, documents };
  } catch (err) {
    if (!closed) await fh.close().catch(() => undefined);
    await rm(tmp, { force: true });
    throw err;
  }
}

/** Reads and validates a token file's header (format, version, one I32 2-D `tokens`, contextSize). */
export function readTokenFileHeader(path: string): TokenFileHeader {
  const st: SafetensorsHeader = readSafetensorsHeader(path);
  const fail = (why: string): never => {
    throw new FormatError(`${path}: not a valid token file: ${why}`, path);
  };
  // Own keys only, so a metadata key never resolves to an Object.prototype member.
  const m: Record<string, string | undefined> = Object.assign(Object.create(null) as Record<string, string>, st.metadata);
  if (m.format !== TOKEN_FILE_FORMAT) fail(`__metadata__.format is ${describe(m.format)}, expected "${TOKEN_FILE_FORMAT}"`);
  if (m.version !== TOKEN_FILE_VERSION) fail(`unsupported version ${describe(m.version)} (this library reads version ${TOKEN_FILE_VERSION})`);
  const tokens = st.entries.get('tokens');
  if (!tokens) fail(`missing tensor 'tokens'`);
  const t = tokens!;
  if (t.dtype !== 'I32') fail(`tensor 'tokens' has dtype ${t.dtype}, expected I32`);
  if (t.shape.length !== 2) fail(`tensor 'tokens' has shape ${describe(t.shape)}, expected [rows, contextSize]`);
  const [rows, contextSize] = t.shape as [number, number];
  const parseCount = (key: string, min: number): number => {
    const raw = m[key];
    const n = raw !== undefined && /^\d+$/.test(raw) ? Number(raw) : NaN;
    if (!Number.isSafeInteger(n) || n < min) fail(`__metadata__.${key} is ${describe(raw)}, expected an integer >= ${min}`);
    return n;
  };
  const metaContext = parseCount('contextSize', 1);
  if (metaContext !== contextSize) fail(`__metadata__.contextSize ${metaContext} does not match the tensor's row length ${contextSize}`);
  const bos = m.bos as BosMode;
  if (!BOS_MODES.includes(bos)) fail(`__metadata__.bos is ${describe(m.bos)}, expected one of ${BOS_MODES.join(', ')}`);
  if (typeof m.tokenizer !== 'string') fail('__metadata__.tokenizer is missing');
  let sources: unknown;
  try {
    sources = JSON.parse(m.sources ?? '');
    checkJsonDepth(sources, path, 2, '__metadata__.sources');
  } catch (err) {
    if (err instanceof FormatError) throw err;
    sources = undefined;
  }
  if (!Array.isArray(sources) || !sources.every((s) => typeof s === 'string')) fail(`__metadata__.sources is not a JSON list of strings`);
  const documents = parseCount('documents', 0);
  const maxDocumentTokens = m.maxDocumentTokens === undefined ? null : parseCount('maxDocumentTokens', 1);
  return {
    path,
    rows,
    contextSize,
    tokenizer: m.tokenizer!,
    bos,
    sources: sources as string[],
    documents,
    maxDocumentTokens,
    dataStart: st.dataStart + t.begin,
    metadata: st.metadata,
  };
}

/**
 * Reads rows [start, start + count) of a token file with positioned reads (the file is never loaded
 * whole). Returns them flattened: `count * contextSize` tokens. Pass a header from
 * readTokenFileHeader to skip re-reading it.
 */
export async function readTokenRows(file: string | TokenFileHeader, start: number, count: number): Promise<Int32Array> {
  const header = typeof file === 'string' ? readTokenFileHeader(file) : file;
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(count) || start < 0 || count < 0 || start + count > header.rows) {
    throw new InvalidArgumentError(`readTokenRows: rows [${start}, ${start} + ${count}) are outside the file's ${header.rows} rows (${header.path})`);
  }
  const out = new Int32Array(count * header.contextSize);
  if (out.length === 0) return out;
  const bytes = new Uint8Array(out.buffer);
  const fh = await open(header.path, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new FormatError(`${header.path}: cannot open (${err.code ?? String(err)})`, header.path);
  });
  try {
    const position = header.dataStart + start * header.contextSize * 4;
    let done = 0;
    while (done < bytes.length) {
      const { bytesRead } = await fh.read(bytes, done, bytes.length - done, position + done);
      if (bytesRead === 0) throw new FormatError(`${header.path}: truncated (rows ${start}..${start + count} run past the end of the file)`, header.path);
      done += bytesRead;
    }
  } finally {
    await fh.close();
  }
  if (!LITTLE_ENDIAN) {
    const dv = new DataView(out.buffer);
    for (let i = 0; i < out.length; i++) out[i] = dv.getInt32(i * 4, true);
  }
  return out;
}
